//! Fresh databases for tests (feature `test-utils`): a new PostgreSQL database per call, or a
//! SQLite file in a temporary directory. PostgreSQL comes from `OPENTAB_TEST_POSTGRES` (an
//! admin URL; default `postgres://postgres@127.0.0.1:5432/postgres`); `scripts/test.sh` starts
//! one of its own when none answers.

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::any::AnyPoolOptions;

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
    static N: AtomicU32 = AtomicU32::new(0);
    sqlx::any::install_default_drivers();
    let admin_url = postgres_admin_url();
    let admin = AnyPoolOptions::new().max_connections(1).connect(&admin_url).await?;
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let name = format!("opentab_test_{}_{}_{nanos}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await?;
    admin.close().await;
    let base = admin_url.rsplit_once('/').map_or(admin_url.as_str(), |(base, _)| base);
    Ok(format!("{base}/{name}"))
}

/// A new, migrated SQLite database in `dir`.
pub async fn fresh_sqlite(dir: &std::path::Path) -> Result<Store> {
    Store::connect(&format!("sqlite://{}", dir.join("opentab.db").display())).await
}
