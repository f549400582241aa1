//! Why the gateway could not charge: which dependency failed, and how. The gateway then fails
//! closed (503, nothing served); the cause is logged and counted by dependency, never sent.

use std::sync::Arc;

use opentab_core::Address;

/// The dependency a paid call could not go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dependency {
    /// Key state and tab budgets (the database, behind the key cache).
    Directory,
    /// The counter store (in-process or Redis).
    Counters,
    /// The durable usage ledger.
    Ledger,
}

impl Dependency {
    /// Every dependency, in a fixed order (for metrics).
    pub const ALL: [Self; 3] = [Self::Directory, Self::Counters, Self::Ledger];

    /// Its name in metrics and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Directory => "directory",
            Self::Counters => "counters",
            Self::Ledger => "ledger",
        }
    }
}

/// An underlying error, shared (one ledger commit answers every call of its batch) with its
/// source chain kept.
#[derive(Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync>);

impl Cause {
    /// Wraps `err`.
    pub fn new(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(err))
    }

    /// A cause that is only a message.
    pub fn msg(text: impl Into<String>) -> Self {
        Self(Arc::new(Message(text.into())))
    }
}

impl std::fmt::Debug for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&*self.0, f)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

/// A dependency did not answer, or answered nonsense: the call is refused (503), never served
/// unpaid.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unavailable {
    /// Key state could not be read.
    #[error("the key directory did not answer: {0}")]
    Directory(Cause),
    /// The counter store failed.
    #[error("the counters failed: {0}")]
    Counters(#[from] CounterError),
    /// The usage ledger did not commit (or could not be read to rebuild counters).
    #[error("the usage ledger failed: {0}")]
    Ledger(Cause),
}

impl Unavailable {
    /// Which dependency failed.
    pub const fn dependency(&self) -> Dependency {
        match self {
            Self::Directory(_) => Dependency::Directory,
            Self::Counters(_) => Dependency::Counters,
            Self::Ledger(_) => Dependency::Ledger,
        }
    }
}

/// How a counter store failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CounterError {
    /// The Redis URL cannot be used.
    #[error("redis URL {url:?} is invalid: {reason}")]
    BadUrl {
        /// The URL, its password redacted.
        url: String,
        /// Why.
        reason: String,
    },
    /// Redis did not answer, or refused a command.
    #[error("redis: {0}")]
    Redis(Cause),
    /// A script or a stored value was not what the gateway writes.
    #[error("unexpected counter data: {0}")]
    Unexpected(String),
    /// A panic held the in-process counters' lock.
    #[error("the in-process counters are poisoned (a panic held their lock)")]
    Poisoned,
    /// An owner's served total would not fit.
    #[error("owner {0}'s served total overflows")]
    Overflow(Address),
    /// Lost counters are being rebuilt by another gateway, and not back yet.
    #[error("the counters are being rebuilt from the ledger by another gateway")]
    Rebuilding,
}
