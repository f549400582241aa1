//! The rule engine's alerts: fired (and the key frozen off-chain, when the rule freezes) and
//! announced by webhook in one transaction, with the alert's other effects (email, on-chain
//! guardian freeze) left in the `rule_effects` outbox; recovered the same way. And what the
//! engine loads when it starts: every key's activity and the rules firing.

use opentab_core::{Address, Usdc};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::Error;
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

/// What a fired rule must do outside the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EffectKind {
    /// Email the alert (payload `{"subject", "body"}`).
    Email,
    /// Freeze the key on-chain as the owner's guardian (payload `{}`).
    GuardianFreeze,
}

impl EffectKind {
    /// The `kind` column's value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::GuardianFreeze => "guardian_freeze",
        }
    }
}

/// An effect to leave in the outbox with its alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEffect {
    /// What to do.
    pub kind: EffectKind,
    /// Its JSON payload.
    pub payload: String,
}

/// An effect taken from the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effect {
    /// Row id.
    pub id: u64,
    /// The key whose alert it belongs to.
    pub session_key: Address,
    /// The rule that fired.
    pub rule: String,
    /// Its JSON payload.
    pub payload: String,
    /// Failed attempts so far.
    pub attempts: u32,
    /// `pending`, `done` or `dead`.
    pub status: String,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// When the alert left it (unix seconds).
    pub created_at: u64,
}

/// One key's activity as the ledger has it: what the rule engine starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyActivity {
    /// The key.
    pub key: Address,
    /// Charges less voids.
    pub calls: u64,
    /// What it was served.
    pub served: Usdc,
    /// When it was charged since the time asked for (unix seconds, oldest first).
    pub recent: Vec<u64>,
    /// Per route (`METHOD /pattern`): charges less voids, and what they came to.
    pub routes: Vec<(String, u64, Usdc)>,
}

impl KeyActivity {
    /// A key never charged.
    fn none(key: Address) -> Self {
        Self { key, calls: 0, served: Usdc::ZERO, recent: Vec::new(), routes: Vec::new() }
    }
}

impl Store {
    /// Records `alert` and its `webhook`, freezes the key off-chain if `alert.froze`, and leaves
    /// `effects` in the outbox, in one transaction. Returns false (and changes nothing) if that
    /// rule is already firing.
    pub async fn fire_alert(
        &self,
        alert: &NewAlert,
        webhook: &NewWebhook,
        effects: &[NewEffect],
        now: u64,
    ) -> Result<bool> {
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
        if inserted {
            for effect in effects {
                sqlx::query(
                    "INSERT INTO rule_effects (kind, session_key, rule, payload, status, attempts, next_attempt_at, \
                     created_at) VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5)",
                )
                .bind(effect.kind.as_str())
                .bind(hex(alert.session_key))
                .bind(&alert.rule)
                .bind(&effect.payload)
                .bind(secs(now)?)
                .execute(&mut *tx)
                .await?;
            }
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

    /// Takes up to `limit` effects of `kind` due at `now`, each leased for `lease_secs`: another
    /// worker takes it only once the lease ran out (its sender died), never meanwhile.
    pub async fn take_effects(&self, kind: EffectKind, now: u64, lease_secs: u64, limit: u32) -> Result<Vec<Effect>> {
        let rows = sqlx::query(
            "SELECT id, session_key, rule, payload, attempts, status, last_error, created_at, next_attempt_at \
             FROM rule_effects WHERE kind = $1 AND status = 'pending' AND next_attempt_at <= $2 ORDER BY id LIMIT $3",
        )
        .bind(kind.as_str())
        .bind(secs(now)?)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut taken = Vec::with_capacity(rows.len());
        for row in &rows {
            let effect = effect(row)?;
            // Only the worker whose update moves the due time owns the effect.
            let leased = sqlx::query(
                "UPDATE rule_effects SET next_attempt_at = $3 WHERE id = $1 AND status = 'pending' \
                 AND next_attempt_at = $2",
            )
            .bind(secs(effect.id)?)
            .bind(row.try_get::<i64, _>("next_attempt_at")?)
            .bind(secs(now.saturating_add(lease_secs))?)
            .execute(&self.pool)
            .await?
            .rows_affected()
                == 1;
            if leased {
                taken.push(effect);
            }
        }
        Ok(taken)
    }

    /// Marks an effect carried out.
    pub async fn effect_done(&self, id: u64, now: u64) -> Result<()> {
        sqlx::query("UPDATE rule_effects SET status = 'done', done_at = $2 WHERE id = $1")
            .bind(secs(id)?)
            .bind(secs(now)?)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records a failed attempt: tried again from `next_attempt_at`, or never again if `dead`.
    pub async fn effect_failed(&self, id: u64, error: &str, next_attempt_at: u64, dead: bool) -> Result<()> {
        sqlx::query(
            "UPDATE rule_effects SET attempts = attempts + 1, last_error = $2, next_attempt_at = $3, status = $4 \
             WHERE id = $1",
        )
        .bind(secs(id)?)
        .bind(error)
        .bind(secs(next_attempt_at)?)
        .bind(if dead { "dead" } else { "pending" })
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// `key`'s effects of `kind`, oldest first.
    pub async fn effects_of(&self, key: Address, kind: EffectKind) -> Result<Vec<Effect>> {
        let rows = sqlx::query(
            "SELECT id, session_key, rule, payload, attempts, status, last_error, created_at FROM rule_effects \
             WHERE session_key = $1 AND kind = $2 ORDER BY id",
        )
        .bind(hex(key))
        .bind(kind.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(effect).collect()
    }

    /// Every key's calls and served total (overall and per route), with its charges since
    /// `recent_since`: the rule engine's memory when it starts, in three reads whatever the
    /// number of keys.
    pub async fn rule_activity(&self, recent_since: u64) -> Result<Vec<KeyActivity>> {
        self.activity(None, recent_since).await
    }

    /// One key's calls, served total and charges since `recent_since` (zero if never charged):
    /// what the rule engine recalls of a key it forgot while the key was idle.
    pub async fn rule_activity_of(&self, key: Address, recent_since: u64) -> Result<KeyActivity> {
        let found = self.activity(Some(key), recent_since).await?.pop();
        Ok(found.unwrap_or_else(|| KeyActivity::none(key)))
    }

    async fn activity(&self, key: Option<Address>, recent_since: u64) -> Result<Vec<KeyActivity>> {
        let only = key.map(hex).unwrap_or_default();
        let mut keys: std::collections::BTreeMap<Address, KeyActivity> = std::collections::BTreeMap::new();
        let usage = sqlx::query("SELECT session_key, served, calls FROM key_usage WHERE $1 = '' OR session_key = $1")
            .bind(&only)
            .fetch_all(&self.pool)
            .await?;
        for row in usage {
            let key = address(&row.try_get::<String, _>("session_key")?, "session_key")?;
            // Stray voids can take the sums below zero; neither ever is.
            let served = u64::try_from(row.try_get::<i64, _>("served")?).unwrap_or(0);
            let calls = u64::try_from(row.try_get::<i64, _>("calls")?).unwrap_or(0);
            keys.insert(key, KeyActivity { calls, served: Usdc::from_base_units(served), ..KeyActivity::none(key) });
        }
        let recent = sqlx::query(
            "SELECT session_key, at FROM usage_ledger WHERE at >= $1 AND kind = 'charge' \
             AND ($2 = '' OR session_key = $2) ORDER BY at, id",
        )
        .bind(secs(recent_since)?)
        .bind(&only)
        .fetch_all(&self.pool)
        .await?;
        for row in &recent {
            let key = address(&row.try_get::<String, _>("session_key")?, "session_key")?;
            let at = get_u64(row, "at")?;
            keys.entry(key).or_insert_with(|| KeyActivity::none(key)).recent.push(at);
        }
        // What the spike rule judges a charge by route against (one pass over the ledger).
        let routes = sqlx::query(
            "SELECT session_key, route, CAST(SUM(CASE WHEN kind = 'charge' THEN 1 ELSE -1 END) AS BIGINT) AS calls, \
             CAST(SUM(CASE WHEN kind = 'charge' THEN amount ELSE -amount END) AS BIGINT) AS served \
             FROM usage_ledger WHERE $1 = '' OR session_key = $1 GROUP BY session_key, route",
        )
        .bind(&only)
        .fetch_all(&self.pool)
        .await?;
        for row in &routes {
            let key = address(&row.try_get::<String, _>("session_key")?, "session_key")?;
            let calls = u64::try_from(row.try_get::<i64, _>("calls")?).unwrap_or(0);
            let served = u64::try_from(row.try_get::<i64, _>("served")?).unwrap_or(0);
            if calls > 0 {
                let route = row.try_get::<String, _>("route")?;
                let routes = &mut keys.entry(key).or_insert_with(|| KeyActivity::none(key)).routes;
                routes.push((route, calls, Usdc::from_base_units(served)));
            }
        }
        Ok(keys.into_values().collect())
    }

    /// Every (key, rule) firing now (of one key, with `Some`).
    pub async fn open_alerts(&self, key: Option<Address>) -> Result<Vec<(Address, String)>> {
        let rows = sqlx::query(
            "SELECT session_key, rule FROM rule_alerts WHERE recovered_at IS NULL AND ($1 = '' OR session_key = $1)",
        )
        .bind(key.map(hex).unwrap_or_default())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((address(&row.try_get::<String, _>("session_key")?, "session_key")?, row.try_get("rule")?)))
            .collect()
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
}

fn effect(row: &AnyRow) -> Result<Effect> {
    let attempts = get_u64(row, "attempts")?;
    Ok(Effect {
        id: get_u64(row, "id")?,
        session_key: address(&row.try_get::<String, _>("session_key")?, "session_key")?,
        rule: row.try_get("rule")?,
        payload: row.try_get("payload")?,
        attempts: u32::try_from(attempts)
            .map_err(|_| Error::Corrupt { column: "attempts", value: attempts.to_string() })?,
        status: row.try_get("status")?,
        last_error: row.try_get("last_error")?,
        created_at: get_u64(row, "created_at")?,
    })
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
