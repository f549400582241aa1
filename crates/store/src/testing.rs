//! Fresh databases for tests (feature `test-utils`): a new PostgreSQL database per call, or a
//! SQLite file in a temporary directory. PostgreSQL comes from `OPENTAB_TEST_POSTGRES` (an
//! admin URL; default `postgres://postgres@127.0.0.1:5432/postgres`); `scripts/test.sh` starts
//! one of its own when none answers.

use crate::{Result, Store};

/// The admin URL test databases are created through.
pub fn postgres_admin_url() -> String {
    std::env::var("OPENTAB_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A new, migrated PostgreSQL database, unique to this process and call.
pub async fn fresh_postgres() -> Result<Store> {
    Store::connect(&fresh_postgres_url().await?).await
}

/// The URL of a new, empty PostgreSQL database, unique to this process and call.
pub async fn fresh_postgres_url() -> Result<String> {
    crate::create_postgres_database(&postgres_admin_url(), "opentab_test").await
}

/// A new, migrated SQLite database in `dir`.
pub async fn fresh_sqlite(dir: &std::path::Path) -> Result<Store> {
    Store::connect(&format!("sqlite://{}", dir.join("opentab.db").display())).await
}
