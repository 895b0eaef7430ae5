//! The limits decision engine: rolling-window counters, budgets, request and
//! token rate limits, concurrency leases and the enforcement decision.
//!
//! Everything here is pure and synchronous. Time comes in as a parameter
//! ([`Nanos`]) and state comes in as `&mut` [`SubjectState`]s that a store
//! loaded; nothing here reads a clock, touches a file or a socket, or knows
//! about protobuf.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod adjust;
pub mod alerts;
pub mod calendar;
pub mod enforcement;
pub mod engine;
pub mod headers;
pub mod hit;
pub mod limits;
pub mod money;
pub mod scope;
pub mod state;
pub mod time;
pub mod undo;
pub mod window;
mod window_set;

pub use adjust::{Adjustment, adjust, undo_adjust};
pub use alerts::{Crossing, Fired, Thresholds};
pub use calendar::{Calendar, CalendarError, Period};
pub use enforcement::{Action, Attempt, EnforcementMode, ModelPrice, Policy, Pricing, queue_wait};
pub use engine::{
    AcquireOutcome, Admission, CheckOutcome, CheckRequest, Denial, Progress, RecordOutcome,
    RecordRequest, Verdict, acquire, check, record, release, usage,
};
pub use limits::{
    DIMENSIONS, Dimension, LimitKind, LimitStatus, LimitTable, Resource, SLOTS, Subject,
    SubjectLimits,
};
pub use money::{MoneyError, NanoUsd};
pub use scope::{ModelScope, ModelScopes, ScopeError};
pub use state::{Held, Hold, LeaseSlot, Settled, SubjectState};
pub use time::Nanos;
pub use window::{BUCKETS, RollingWindow, WindowRef};
pub use window_set::Windows;
