//! The storage error type.

/// Everything storage can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database URL names no supported backend.
    #[error("unsupported database URL {0:?}: use postgres://… or sqlite://…")]
    UnsupportedUrl(String),
    /// The database is unreachable or a query failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A row holds a value opentab never writes (a corrupt or foreign database).
    #[error("corrupt {column} in the database: {value:?}")]
    Corrupt {
        /// The column.
        column: &'static str,
        /// What was found.
        value: String,
    },
    /// A value is out of the range the database column holds.
    #[error("{0} is out of range for the database")]
    OutOfRange(&'static str),
    /// A key with this address already exists.
    #[error("session key {0} already exists")]
    KeyExists(opentab_core::Address),
}

/// `Result` with the storage [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;
