//! The gRPC services and what stands in front of them.

pub mod admin;
pub mod auth;
pub mod codec;
pub mod convert;
pub mod guard;
pub mod limits;
pub mod queue;
pub mod rls;

pub use self::admin::AdminSvc;
pub use self::limits::{LimitsSvc, Shared};
pub use self::rls::RlsSvc;
