//! The rule engine's alerts: fired (and the key frozen off-chain, when the rule freezes) and
//! announced by webhook in one transaction; recovered the same way.

use opentab_core::Address;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::keys::freeze_offchain;
use crate::settlements::announce_if;
use crate::store::{address, get_u64, hex, opt_u64, secs};
use crate::{NewWebhook, Result, Store};

/// An alert to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAlert {
    /// The key.
    pub session_key: Address,
    /// Its owner.
    pub owner: Address,
    /// `spike`, `rate` or `low_balance`.
    pub rule: String,
    /// `enforce` or `shadow`.
    pub mode: String,
    /// Why, for people.
    pub reason: String,
    /// The numbers the rule saw (JSON).
    pub inputs: String,
    /// Whether the key was frozen for it.
    pub froze: bool,
}

/// A recorded alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// Row id.
    pub id: u64,
    /// What fired.
    pub alert: NewAlert,
    /// When.
    pub fired_at: u64,
    /// When the condition cleared, if it has.
    pub recovered_at: Option<u64>,
}

impl Store {
    /// Records `alert` and its `webhook`, and freezes the key off-chain if `alert.froze`, in one
    /// transaction. Returns false (and changes nothing) if that rule is already firing.
    pub async fn fire_alert(&self, alert: &NewAlert, webhook: &NewWebhook, now: u64) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO rule_alerts (session_key, owner, rule, mode, reason, inputs, froze, fired_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        )
        .bind(hex(alert.session_key))
        .bind(hex(alert.owner))
        .bind(&alert.rule)
        .bind(&alert.mode)
        .bind(&alert.reason)
        .bind(&alert.inputs)
        .bind(i64::from(alert.froze))
        .bind(secs(now)?)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if inserted && alert.froze {
            freeze_offchain(&mut tx, alert.session_key, now).await?;
        }
        let fired = announce_if(tx, inserted, webhook, now).await?;
        if fired && alert.froze {
            self.announce(crate::KeyChange::Key(alert.session_key));
        }
        Ok(fired)
    }

    /// Closes the open alert of `rule` on `key` and writes `webhook`. Returns false if none was open.
    pub async fn recover_alert(&self, key: Address, rule: &str, webhook: &NewWebhook, now: u64) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE rule_alerts SET recovered_at = $3 WHERE session_key = $1 AND rule = $2 AND recovered_at IS NULL",
        )
        .bind(hex(key))
        .bind(rule)
        .bind(secs(now)?)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        announce_if(tx, done, webhook, now).await
    }

    /// The rules firing for `key` now.
    pub async fn firing_rules(&self, key: Address) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT rule FROM rule_alerts WHERE session_key = $1 AND recovered_at IS NULL")
            .bind(hex(key))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("rule")?)).collect()
    }

    /// `key`'s alerts, newest first.
    pub async fn alerts_of(&self, key: Address, limit: u32) -> Result<Vec<Alert>> {
        let rows = sqlx::query(
            "SELECT id, session_key, owner, rule, mode, reason, inputs, froze, fired_at, recovered_at FROM rule_alerts \
             WHERE session_key = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(hex(key))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(alert).collect()
    }

    /// When `key` was charged since `since` (unix seconds, oldest first): the rule engine's
    /// sliding minute after a restart.
    pub async fn recent_charges(&self, key: Address, since: u64) -> Result<Vec<u64>> {
        let rows = sqlx::query(
            "SELECT at FROM usage_ledger WHERE session_key = $1 AND kind = 'charge' AND at >= $2 ORDER BY at",
        )
        .bind(hex(key))
        .bind(secs(since)?)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| get_u64(r, "at")).collect()
    }

    /// How many charges (less voids) the ledger holds for `key`: the rule engine's call count.
    pub async fn charge_count(&self, key: Address) -> Result<u64> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(CASE WHEN kind = 'charge' THEN 1 ELSE -1 END), 0) AS BIGINT) AS calls \
             FROM usage_ledger WHERE session_key = $1",
        )
        .bind(hex(key))
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(row.try_get::<i64, _>("calls")?).unwrap_or(0))
    }
}

fn alert(row: &AnyRow) -> Result<Alert> {
    let text = |col: &'static str| -> Result<String> { Ok(row.try_get(col)?) };
    Ok(Alert {
        id: get_u64(row, "id")?,
        alert: NewAlert {
            session_key: address(&text("session_key")?, "session_key")?,
            owner: address(&text("owner")?, "owner")?,
            rule: text("rule")?,
            mode: text("mode")?,
            reason: text("reason")?,
            inputs: text("inputs")?,
            froze: row.try_get::<i64, _>("froze")? != 0,
        },
        fired_at: get_u64(row, "fired_at")?,
        recovered_at: opt_u64(row, "recovered_at")?,
    })
}
