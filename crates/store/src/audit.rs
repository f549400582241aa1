//! The append-only audit log, and the relay quota counted from it.

use opentab_core::Address;
use sqlx::Row;

use crate::rows::AuditEntry;
use crate::store::{get_u64, hex, secs};
use crate::{Result, Store};

/// The audit action each relayed transaction is recorded under before it is sent; the relay
/// quota counts them.
pub const RELAY_SENT: &str = "relay.sent";

impl Store {
    /// Appends to the audit log.
    pub async fn audit(&self, entry: &AuditEntry) -> Result<()> {
        sqlx::query("INSERT INTO audit_log (at, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5)")
            .bind(secs(entry.at)?)
            .bind(&entry.actor)
            .bind(&entry.action)
            .bind(&entry.subject)
            .bind(&entry.detail)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// How many transactions the API relayed for `owner` since `since`: its [`RELAY_SENT`]
    /// entries (key creations, on-chain unfreezes and deletions, each recorded before it is
    /// sent; freezes are free, and so is lifting a gateway-only freeze).
    pub async fn relayed_since(&self, owner: Address, since: u64) -> Result<u64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM audit_log WHERE actor = $1 AND action = $2 AND at >= $3")
            .bind(hex(owner))
            .bind(RELAY_SENT)
            .bind(secs(since)?)
            .fetch_one(&self.pool)
            .await?;
        get_u64(&row, "n")
    }

    /// The audit log of one subject, oldest first.
    pub async fn audit_of(&self, subject: &str) -> Result<Vec<AuditEntry>> {
        let rows =
            sqlx::query("SELECT at, actor, action, subject, detail FROM audit_log WHERE subject = $1 ORDER BY id")
                .bind(subject)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditEntry {
                    at: get_u64(row, "at")?,
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    subject: row.try_get("subject")?,
                    detail: row.try_get("detail")?,
                })
            })
            .collect()
    }
}
