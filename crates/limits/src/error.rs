//! What the library answers instead of a decision.

use limits_store::StoreError;

/// Why a call was not decided. A denial is not an error: it is a
/// [`Decision`](crate::Decision).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request is wrong; `field` names the part that is (as a path:
    /// `subjects[1].id`). Nothing was changed.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field at fault.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A reservation or lease id that was never issued (with this secret),
    /// or a runtime entry that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A runtime entry that exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The call needs something the subject does not have (a limit to
    /// raise, an entry to match). Nothing was changed.
    #[error("{0}")]
    FailedPrecondition(String),
    /// An etag that no longer matches: the entry changed since it was read.
    /// Nothing was changed.
    #[error("{0}")]
    Aborted(String),
    /// The store could not decide: full (`Full`, `CountersFull`), unable to
    /// answer (`Unavailable`, transient), or answering what cannot be read
    /// (`Internal`, never a reason to allow). Nothing was changed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Error {
    /// An invalid argument naming `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
