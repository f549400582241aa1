//! The schema migrations, embedded so the binary needs no files beside it.

use std::borrow::Cow;

use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

use crate::Backend;

macro_rules! embed {
    ($dir:literal: $($version:literal $name:literal),* $(,)?) => {
        &[$(($version, $name, include_str!(concat!("../migrations/", $dir, "/", $name, ".sql")))),*]
    };
}

type Embedded = &'static [(i64, &'static str, &'static str)];

const POSTGRES: Embedded = embed!("postgres":
    1 "0001_owners", 2 "0002_session_keys", 3 "0003_escrows", 4 "0004_chain", 5 "0005_audit_log",
    6 "0006_auth", 7 "0007_usage_ledger", 8 "0008_key_usage", 9 "0009_settlements", 10 "0010_webhook_outbox", 11 "0011_key_last_activity", 12 "0012_rule_alerts");
const SQLITE: Embedded = embed!("sqlite":
    1 "0001_owners", 2 "0002_session_keys", 3 "0003_escrows", 4 "0004_chain", 5 "0005_audit_log",
    6 "0006_auth", 7 "0007_usage_ledger", 8 "0008_key_usage", 9 "0009_settlements", 10 "0010_webhook_outbox", 11 "0011_key_last_activity", 12 "0012_rule_alerts");

#[derive(Debug)]
struct Source(Embedded);

impl MigrationSource<'static> for Source {
    fn resolve(self) -> futures_core::future::BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|&(version, name, sql)| {
                    Migration::new(version, Cow::Borrowed(name), MigrationType::Simple, Cow::Borrowed(sql), false)
                })
                .collect())
        })
    }
}

/// The migrator for `backend`.
pub(crate) async fn migrator(backend: Backend) -> Result<Migrator, sqlx::migrate::MigrateError> {
    Migrator::new(Source(match backend {
        Backend::Postgres => POSTGRES,
        Backend::Sqlite => SQLITE,
    }))
    .await
}
