//! The repository: the [`Store`] handle (its pool, its backend, its migrations) and the
//! column conversions every query module shares. The queries live beside it, one module per
//! concern: owners, keys, tabs, chain, usage, auth, audit, settlements, alerts, gateways.

use std::str::FromStr;

use opentab_core::{Address, Usdc};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::{Error, Result};

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL: production.
    Postgres,
    /// SQLite: the embedded default.
    Sqlite,
}

impl Backend {
    /// The backend a database URL names.
    pub fn of_url(url: &str) -> Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else {
            Err(Error::UnsupportedUrl(opentab_core::redact_url(url)))
        }
    }
}

/// Creates a new, empty PostgreSQL database beside `admin_url`'s (whose user may create
/// databases), named `prefix` with this process and a counter; its URL. For tests and
/// `opentab bench`, which each need a database of their own.
pub async fn create_postgres_database(admin_url: &str, prefix: &str) -> Result<String> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    if Backend::of_url(admin_url)? != Backend::Postgres {
        return Err(Error::UnsupportedUrl(opentab_core::redact_url(admin_url)));
    }
    sqlx::any::install_default_drivers();
    let admin = AnyPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(admin_url)
        .await?;
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let name = format!("{prefix}_{}_{}_{nanos}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await?;
    admin.close().await;
    let base = admin_url.rsplit_once('/').map_or(admin_url, |(base, _)| base);
    Ok(format!("{base}/{name}"))
}

/// The repository. Cheap to clone (a pool handle).
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    backend: Backend,
    pub(crate) feed: std::sync::Arc<crate::changes::Feed>,
}

/// Unix seconds now.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Store {
    /// Connects to `url` (`postgres://…` or `sqlite://path`, created if missing) and applies
    /// the migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        let backend = Backend::of_url(url)?;
        sqlx::any::install_default_drivers();
        let (url, max) = match backend {
            Backend::Postgres => (url.to_owned(), 10),
            // One writer at a time is all SQLite allows; an in-memory database exists once per
            // connection, so it gets exactly one.
            Backend::Sqlite if url.contains(":memory:") => (url.to_owned(), 1),
            Backend::Sqlite if url.contains("mode=") => (url.to_owned(), 4),
            Backend::Sqlite => (format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' }), 4),
        };
        // Fail fast when the database is away: callers fail closed rather than wait.
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(&url)
            .await?;
        crate::migrations::migrator(backend).await?.run(&pool).await?;
        Ok(Self { pool, backend, feed: std::sync::Arc::new(crate::changes::Feed::new(&url)) })
    }

    /// Another pool on the same database that shares this store's change feed: a change made
    /// through either is announced at once to the listeners of both. For work that must never
    /// wait for the other's connections (the gateway beside the API in `opentab dev`).
    pub async fn another_pool(&self) -> Result<Self> {
        let other = Self::connect(&self.feed.url).await?;
        Ok(Self { feed: self.feed.clone(), ..other })
    }

    /// The backend in use.
    pub const fn backend(&self) -> Backend {
        self.backend
    }

    /// Answers when the database does (for `/readyz`).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes the pool, waiting for connections in use.
    pub async fn close(&self) {
        self.feed.close().await;
        self.pool.close().await;
    }
}

/// Addresses are stored as lowercase `0x` hex.
pub(crate) fn hex(address: Address) -> String {
    format!("{address:#x}")
}

pub(crate) fn address(text: &str, column: &'static str) -> Result<Address> {
    Address::from_str(text).map_err(|_| Error::Corrupt { column, value: text.to_owned() })
}

/// Amounts and times live in BIGINT columns (i64): checked on the way in and out.
pub(crate) fn units(amount: Usdc) -> Result<i64> {
    i64::try_from(amount.base_units()).map_err(|_| Error::OutOfRange("amount"))
}

pub(crate) fn secs(value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::OutOfRange("integer"))
}

pub(crate) fn get_u64(row: &AnyRow, column: &'static str) -> Result<u64> {
    let value: i64 = row.try_get(column)?;
    u64::try_from(value).map_err(|_| Error::Corrupt { column, value: value.to_string() })
}

pub(crate) fn opt_u64(row: &AnyRow, column: &'static str) -> Result<Option<u64>> {
    let value: Option<i64> = row.try_get(column)?;
    value.map(|v| u64::try_from(v).map_err(|_| Error::Corrupt { column, value: v.to_string() })).transpose()
}
