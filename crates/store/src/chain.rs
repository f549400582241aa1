//! Chain folding: the listener's updates stored as events (the orphaned ones deleted after a
//! reorg), the key, tab and guardian rows folded again from them with the core's pure folds,
//! and the listener's cursor.

use std::collections::BTreeSet;
use std::str::FromStr;

use opentab_core::{Address, B256, SessionKey, Tab, ValidatorEvent};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::owners::upsert_owner;
use crate::rows::{ChainStatus, StoredEvent};
use crate::store::{address, get_u64, hex, secs, units};
use crate::{Error, Result, Store};

/// What a chain update touched (see [`Store::apply_chain_update`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    /// Owners whose tabs or keys may have changed.
    pub owners: Vec<Address>,
    /// Keys whose state may have changed.
    pub keys: Vec<Address>,
}

impl Store {
    /// Applies one update of the chain listener in a single transaction: undoes events after
    /// `rollback_to`, stores `events` (replays are ignored), folds every touched key, tab and
    /// owner again, and saves the listener's `cursor` (opaque JSON). Returns the owners and keys whose
    /// state may have changed.
    pub async fn apply_chain_update(
        &self,
        validator: Address,
        rollback_to: Option<u64>,
        events: &[StoredEvent],
        cursor: &str,
        now: u64,
    ) -> Result<Touched> {
        let mut tx = self.pool.begin().await?;
        let mut keys = BTreeSet::new();
        let mut owners = BTreeSet::new();
        let mut tabs = BTreeSet::new();

        if let Some(block) = rollback_to {
            let orphaned = sqlx::query("SELECT owner, payee, session_key FROM chain_events WHERE block_number > $1")
                .bind(secs(block)?)
                .fetch_all(&mut *tx)
                .await?;
            for row in &orphaned {
                let owner = row.try_get::<String, _>("owner")?;
                if let Some(payee) = row.try_get::<Option<String>, _>("payee")? {
                    tabs.insert((owner.clone(), payee));
                }
                owners.insert(owner);
                if let Some(key) = row.try_get::<Option<String>, _>("session_key")? {
                    keys.insert(key);
                }
            }
            sqlx::query("DELETE FROM chain_events WHERE block_number > $1")
                .bind(secs(block)?)
                .execute(&mut *tx)
                .await?;
            tracing::info!(block, orphaned = orphaned.len(), "rolled back chain events after a reorg");
        }

        for stored in events {
            let event = &stored.event;
            let payload =
                serde_json::to_string(event).map_err(|e| Error::Corrupt { column: "payload", value: e.to_string() })?;
            let (owner, payee) = event_parties(&mut tx, event).await?;
            sqlx::query(
                "INSERT INTO chain_events (block_number, log_index, block_hash, tx_hash, kind, owner, payee, \
                 session_key, payload) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (block_number, log_index) DO NOTHING",
            )
            .bind(secs(stored.block_number)?)
            .bind(secs(stored.log_index)?)
            .bind(format!("{:#x}", stored.block_hash))
            .bind(format!("{:#x}", stored.tx_hash))
            .bind(event.kind())
            .bind(&owner)
            .bind(payee.as_deref())
            .bind(event.session_key().map(hex))
            .bind(payload)
            .execute(&mut *tx)
            .await?;
            if let Some(payee) = payee {
                tabs.insert((owner.clone(), payee));
            }
            // Only owners: a payee's settler choice and an unknown key's skipped claim are filed
            // under an address that owns nothing.
            if !matches!(event, ValidatorEvent::SettlerSet { .. } | ValidatorEvent::ClaimSkipped { .. }) {
                owners.insert(owner);
            }
            if let Some(key) = event.session_key() {
                keys.insert(hex(key));
            }
            if let Some(webhook) = key_webhook(stored, now) {
                crate::settlements::enqueue(&mut tx, &webhook, now).await?;
            }
        }

        for owner in &owners {
            upsert_owner(&mut tx, address(owner, "owner")?, now).await?;
            refold_guardian(&mut tx, owner).await?;
        }
        for (owner, payee) in &tabs {
            refold_tab(&mut tx, owner, payee, now).await?;
        }
        for key in &keys {
            refold_key(&mut tx, key, now).await?;
        }

        sqlx::query(
            "INSERT INTO chain_cursor (validator, cursor, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (validator) DO UPDATE SET cursor = excluded.cursor, updated_at = excluded.updated_at",
        )
        .bind(hex(validator))
        .bind(cursor)
        .bind(secs(now)?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let touched = Touched {
            owners: owners.iter().map(|o| address(o, "owner")).collect::<Result<_>>()?,
            keys: keys.iter().map(|k| address(k, "session_key")).collect::<Result<_>>()?,
        };
        for owner in touched.owners.iter().copied().chain(tabs.iter().filter_map(|(o, _)| o.parse().ok())) {
            self.announce(crate::KeyChange::Owner(owner));
        }
        for key in &touched.keys {
            self.announce(crate::KeyChange::Key(*key));
        }
        Ok(touched)
    }

    /// The listener's saved cursor for `validator` (opaque JSON), if any.
    pub async fn chain_cursor(&self, validator: Address) -> Result<Option<String>> {
        let row = sqlx::query("SELECT cursor FROM chain_cursor WHERE validator = $1")
            .bind(hex(validator))
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("cursor")).transpose()?)
    }

    /// The confirmed events of one key, in chain order.
    pub async fn key_events(&self, key: Address) -> Result<Vec<StoredEvent>> {
        let rows = sqlx::query(
            "SELECT block_number, log_index, block_hash, tx_hash, payload FROM chain_events \
             WHERE session_key = $1 ORDER BY block_number, log_index",
        )
        .bind(hex(key))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let hash = |col: &'static str| -> Result<B256> {
                    let text: String = row.try_get(col)?;
                    B256::from_str(&text).map_err(|_| Error::Corrupt { column: col, value: text })
                };
                Ok(StoredEvent {
                    block_number: get_u64(row, "block_number")?,
                    log_index: get_u64(row, "log_index")?,
                    block_hash: hash("block_hash")?,
                    tx_hash: hash("tx_hash")?,
                    event: payload(row)?,
                })
            })
            .collect()
    }
}

/// Folds one key's events into its row (inserting the row for keys registered outside opentab).
async fn refold_key(conn: &mut AnyConnection, key: &str, now: u64) -> Result<()> {
    let rows = sqlx::query("SELECT payload FROM chain_events WHERE session_key = $1 ORDER BY block_number, log_index")
        .bind(key)
        .fetch_all(&mut *conn)
        .await?;
    let mut state = None;
    for row in &rows {
        state = SessionKey::apply(state, &payload(row)?);
    }
    let Some(k) = state else {
        // The registration itself was rolled back: the key is pending again (its transaction
        // may be mined anew), with nothing of the orphaned branch left.
        sqlx::query(
            "UPDATE session_keys SET chain_status = $2, frozen_at = NULL, revoked_at = NULL, settled_units = 0, \
             updated_at = $3 WHERE address = $1",
        )
        .bind(key)
        .bind(ChainStatus::Pending.as_str())
        .bind(secs(now)?)
        .execute(&mut *conn)
        .await?;
        return Ok(());
    };
    sqlx::query(
        "INSERT INTO session_keys (address, owner, payee, limit_units, valid_after, valid_until, chain_status, \
         frozen_at, revoked_at, settled_units, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) \
         ON CONFLICT (address) DO UPDATE SET owner = excluded.owner, payee = excluded.payee, \
         limit_units = excluded.limit_units, valid_after = excluded.valid_after, valid_until = excluded.valid_until, \
         chain_status = excluded.chain_status, frozen_at = excluded.frozen_at, revoked_at = excluded.revoked_at, \
         settled_units = excluded.settled_units, updated_at = excluded.updated_at",
    )
    .bind(key)
    .bind(hex(k.owner))
    .bind(hex(k.payee))
    .bind(units(k.limit)?)
    .bind(secs(k.valid_after)?)
    .bind(secs(k.valid_until)?)
    .bind(ChainStatus::Registered.as_str())
    .bind(k.frozen_at.map(secs).transpose()?)
    .bind(k.revoked_at.map(secs).transpose()?)
    .bind(units(k.settled)?)
    .bind(secs(now)?)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The owner and payee an event is stored under: the (owner, payee) tab it changes, the
/// owner alone for owner-wide events, and for the key-only events (`Settled`, `ClaimSkipped`)
/// the key's registration, stored before them (a key is registered before it settles; an
/// unregistered key's skipped claim is filed under the zero address).
async fn event_parties(conn: &mut AnyConnection, event: &ValidatorEvent) -> Result<(String, Option<String>)> {
    if let Some((owner, payee)) = event.tab() {
        return Ok((hex(owner), Some(hex(payee))));
    }
    match *event {
        ValidatorEvent::Registered { owner, payee, .. } => Ok((hex(owner), Some(hex(payee)))),
        ValidatorEvent::SettlerSet { payee, .. } => Ok((hex(payee), None)),
        _ => match (event.account(), event.session_key()) {
            (Some(owner), _) => Ok((hex(owner), None)),
            (None, Some(key)) => {
                let row = sqlx::query(
                    "SELECT owner, payee FROM chain_events WHERE session_key = $1 AND kind = 'registered' \
                     ORDER BY block_number, log_index LIMIT 1",
                )
                .bind(hex(key))
                .fetch_optional(&mut *conn)
                .await?;
                match (row, event) {
                    (Some(row), _) => Ok((row.try_get("owner")?, row.try_get("payee")?)),
                    // A payment from a key never seen registered would leave its tab over-stated
                    // (and the gateway serving against money that left): stop, loudly.
                    (None, ValidatorEvent::Settled { .. }) => Err(Error::Corrupt {
                        column: "chain_events",
                        value: format!(
                            "a settlement of {key:#x}, whose registration was never read: \
                             is deployed_at_block later than the validator's deployment?"
                        ),
                    }),
                    (None, _) => Ok((hex(Address::ZERO), None)),
                }
            }
            (None, None) => Ok((hex(Address::ZERO), None)),
        },
    }
}

/// Folds one (owner, payee) tab's events (deposits, withdrawals, and its keys' settlements)
/// into its row.
async fn refold_tab(conn: &mut AnyConnection, owner: &str, payee: &str, now: u64) -> Result<()> {
    let rows = sqlx::query(
        "SELECT payload FROM chain_events WHERE owner = $1 AND payee = $2 ORDER BY block_number, log_index",
    )
    .bind(owner)
    .bind(payee)
    .fetch_all(&mut *conn)
    .await?;
    let mut tab = Tab::default();
    for row in &rows {
        tab = tab.apply(&payload(row)?);
    }
    let (withdrawal, grace_ends_at) = match tab.pending_withdrawal {
        Some((amount, at)) => (Some(units(amount)?), Some(secs(at)?)),
        None => (None, None),
    };
    sqlx::query(
        "INSERT INTO tabs (owner, payee, balance_units, withdrawal_units, withdrawal_grace_ends_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (owner, payee) DO UPDATE SET \
         balance_units = excluded.balance_units, withdrawal_units = excluded.withdrawal_units, \
         withdrawal_grace_ends_at = excluded.withdrawal_grace_ends_at, updated_at = excluded.updated_at",
    )
    .bind(owner)
    .bind(payee)
    .bind(units(tab.balance)?)
    .bind(withdrawal)
    .bind(grace_ends_at)
    .bind(secs(now)?)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Sets the owner's guardian from its latest `GuardianSet` event (none if it never set one).
async fn refold_guardian(conn: &mut AnyConnection, owner: &str) -> Result<()> {
    let row = sqlx::query(
        "SELECT payload FROM chain_events WHERE owner = $1 AND kind = 'guardian_set' \
         ORDER BY block_number DESC, log_index DESC LIMIT 1",
    )
    .bind(owner)
    .fetch_optional(&mut *conn)
    .await?;
    let guardian = match row.map(|row| payload(&row)).transpose()? {
        Some(ValidatorEvent::GuardianSet { guardian, .. }) if guardian != Address::ZERO => Some(hex(guardian)),
        _ => None,
    };
    sqlx::query("UPDATE owners SET guardian = $2 WHERE address = $1")
        .bind(owner)
        .bind(guardian)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

fn payload(row: &AnyRow) -> Result<ValidatorEvent> {
    let text: String = row.try_get("payload")?;
    serde_json::from_str(&text).map_err(|_| Error::Corrupt { column: "payload", value: text })
}

/// The webhook announcing a confirmed key freeze, unfreeze or revocation. Its id is the log's
/// place in the chain, so a replayed event announces nothing new.
fn key_webhook(stored: &StoredEvent, now: u64) -> Option<crate::NewWebhook> {
    let (event_type, owner, key) = match stored.event {
        ValidatorEvent::Frozen { owner, session_key, .. } => ("key.frozen", owner, session_key),
        ValidatorEvent::Unfrozen { owner, session_key } => ("key.unfrozen", owner, session_key),
        ValidatorEvent::Revoked { owner, session_key, .. } => ("key.revoked", owner, session_key),
        _ => return None,
    };
    let payload = serde_json::json!({
        "type": event_type,
        "timestamp": opentab_core::format_rfc3339(now),
        "data": {
            "sessionKey": key,
            "owner": owner,
            "txHash": stored.tx_hash,
            "blockNumber": stored.block_number,
        },
    });
    Some(crate::NewWebhook {
        event_id: format!("msg_{:x}_{}", stored.block_hash, stored.log_index),
        event_type: event_type.to_owned(),
        payload: payload.to_string(),
    })
}
