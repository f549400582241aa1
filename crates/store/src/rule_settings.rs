//! The rule settings owners chose: an owner's defaults and per-key overrides
//! ([`RuleOverrides`]), each change recorded in the audit log in the same transaction and
//! announced to the gateways' rule engines like a change to a key.

use opentab_core::Address;
use opentab_core::rules::RuleOverrides;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::store::{address, hex, secs};
use crate::{Error, KeyChange, Result, Store};

/// Settings an owner stored: their defaults (`key: None`) or one key's overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRuleSettings {
    /// Whose.
    pub owner: Address,
    /// The key they override, or `None` for the owner's defaults.
    pub key: Option<Address>,
    /// What is set.
    pub overrides: RuleOverrides,
}

/// The audit action of a change made through the settings themselves.
pub const RULES_SET: &str = "rules.set";

impl Store {
    /// Every owner's stored settings: what a rule engine loads when it starts.
    pub async fn all_rule_settings(&self) -> Result<Vec<StoredRuleSettings>> {
        let rows = sqlx::query("SELECT owner, session_key, overrides FROM rule_settings").fetch_all(&self.pool).await?;
        rows.iter().map(stored).collect()
    }

    /// `owner`'s stored settings: their defaults and every key's overrides.
    pub async fn rule_settings_of(&self, owner: Address) -> Result<Vec<StoredRuleSettings>> {
        let rows = sqlx::query("SELECT owner, session_key, overrides FROM rule_settings WHERE owner = $1")
            .bind(hex(owner))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(stored).collect()
    }

    /// Replaces `owner`'s defaults (`key: None`) or one key's overrides with `overrides`
    /// (nothing set: removed) and records `action` by `owner` in the audit log, with what was
    /// set before and after, in one transaction. Returns what was set before.
    pub async fn set_rule_settings(
        &self,
        owner: Address,
        key: Option<Address>,
        overrides: &RuleOverrides,
        action: &str,
        now: u64,
    ) -> Result<RuleOverrides> {
        let key_column = key.map(hex).unwrap_or_default();
        let json = |o: &RuleOverrides| serde_json::to_string(o).map_err(|_| Error::OutOfRange("overrides"));
        let mut tx = self.pool.begin().await?;
        let before = sqlx::query(
            "SELECT owner, session_key, overrides FROM rule_settings WHERE owner = $1 AND session_key = $2",
        )
        .bind(hex(owner))
        .bind(&key_column)
        .fetch_optional(&mut *tx)
        .await?
        .map(|row| stored(&row))
        .transpose()?
        .map(|s| s.overrides)
        .unwrap_or_default();
        if overrides.is_empty() {
            sqlx::query("DELETE FROM rule_settings WHERE owner = $1 AND session_key = $2")
                .bind(hex(owner))
                .bind(&key_column)
                .execute(&mut *tx)
                .await?;
        } else {
            sqlx::query(
                "INSERT INTO rule_settings (owner, session_key, overrides, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (owner, session_key) DO UPDATE SET overrides = $3, updated_at = $4",
            )
            .bind(hex(owner))
            .bind(&key_column)
            .bind(json(overrides)?)
            .bind(secs(now)?)
            .execute(&mut *tx)
            .await?;
        }
        let detail = format!(r#"{{"before":{},"after":{}}}"#, json(&before)?, json(overrides)?);
        sqlx::query("INSERT INTO audit_log (at, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5)")
            .bind(secs(now)?)
            .bind(hex(owner))
            .bind(action)
            .bind(if key_column.is_empty() { hex(owner) } else { key_column })
            .bind(detail)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.announce(KeyChange::Owner(owner));
        Ok(before)
    }

    /// The most charges `key` took in any 60 seconds since `since` (0 if none): what a
    /// calls-per-minute setting for it is suggested from. Reads at most the last 200,000.
    pub async fn busiest_minute(&self, key: Address, since: u64) -> Result<u32> {
        let rows = sqlx::query(
            "SELECT at FROM (SELECT at, id FROM usage_ledger WHERE session_key = $1 AND kind = 'charge' AND at >= $2 \
             ORDER BY id DESC LIMIT 200000) recent ORDER BY at",
        )
        .bind(hex(key))
        .bind(secs(since)?)
        .fetch_all(&self.pool)
        .await?;
        let mut window = std::collections::VecDeque::new();
        let mut most = 0;
        for row in &rows {
            let at = crate::store::get_u64(row, "at")?;
            while window.front().is_some_and(|&first: &u64| first + 60 <= at) {
                window.pop_front();
            }
            window.push_back(at);
            most = most.max(window.len());
        }
        Ok(u32::try_from(most).unwrap_or(u32::MAX))
    }
}

fn stored(row: &AnyRow) -> Result<StoredRuleSettings> {
    let key: String = row.try_get("session_key")?;
    let text: String = row.try_get("overrides")?;
    Ok(StoredRuleSettings {
        owner: address(&row.try_get::<String, _>("owner")?, "owner")?,
        key: if key.is_empty() { None } else { Some(address(&key, "session_key")?) },
        overrides: serde_json::from_str(&text).map_err(|_| Error::Corrupt { column: "overrides", value: text })?,
    })
}
