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
    6 "0006_auth", 7 "0007_usage_ledger", 8 "0008_key_usage", 9 "0009_settlements", 10 "0010_webhook_outbox",
    11 "0011_key_last_activity", 12 "0012_rule_alerts", 13 "0013_usage_idempotency",
    14 "0014_tabs", 15 "0015_void_once", 16 "0016_sealed_nonces_relay_count", 17 "0017_gateways",
    18 "0018_key_changes", 19 "0019_rule_effects", 20 "0020_counter_epochs",
    21 "0021_settlement_confirmations", 22 "0022_rule_settings");
const SQLITE: Embedded = embed!("sqlite":
    1 "0001_owners", 2 "0002_session_keys", 3 "0003_escrows", 4 "0004_chain", 5 "0005_audit_log",
    6 "0006_auth", 7 "0007_usage_ledger", 8 "0008_key_usage", 9 "0009_settlements", 10 "0010_webhook_outbox",
    11 "0011_key_last_activity", 12 "0012_rule_alerts", 13 "0013_usage_idempotency",
    14 "0014_tabs", 15 "0015_void_once", 16 "0016_sealed_nonces_relay_count", 17 "0017_gateways",
    18 "0018_key_changes", 19 "0019_rule_effects", 20 "0020_counter_epochs",
    21 "0021_settlement_confirmations", 22 "0022_rule_settings");

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file under `migrations/<backend>` is embedded, in order, with its number: a file
    /// added without its line here would silently never run.
    #[test]
    fn every_migration_file_is_embedded_in_order() {
        for (dir, embedded) in [("postgres", POSTGRES), ("sqlite", SQLITE)] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations").join(dir);
            let mut files: Vec<String> = std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().trim_end_matches(".sql").to_owned())
                .collect();
            files.sort();
            let names: Vec<&str> = embedded.iter().map(|&(_, name, _)| name).collect();
            assert_eq!(names, files, "migrations/{dir}");
            for (i, &(version, name, _)) in embedded.iter().enumerate() {
                assert_eq!(version, i as i64 + 1, "{name}");
                assert!(name.starts_with(&format!("{version:04}_")), "{name} is numbered {version}");
            }
        }
    }
}
