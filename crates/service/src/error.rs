//! The service's error type.

/// Everything the service can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Talking to the chain failed.
    #[error(transparent)]
    Chain(#[from] opentab_chain::Error),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] opentab_store::Error),
    /// The cursor saved in storage is not valid JSON of a cursor.
    #[error("the chain cursor saved in storage is corrupt: {0}")]
    CorruptCursor(serde_json::Error),
    /// In-memory state was left half-updated by a panic.
    #[error("{0} was poisoned by an earlier panic")]
    Poisoned(&'static str),
    /// A setting is not usable.
    #[error("configuration: {0}")]
    Config(String),
}

/// `Result` with the service [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;
