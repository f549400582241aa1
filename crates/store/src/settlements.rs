//! Settlement intents and the webhook outbox.
//!
//! An intent is written before its transaction is sent; every change of its state writes the
//! webhook announcing it in the same transaction, so a crash loses neither. Workers lease
//! intents (`lease_owner`, `lease_until`): one key settles in one place at a time, and a worker
//! that dies frees its lease when it runs out.

use opentab_core::{Address, B256, Signature, U256, Usdc};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::store::{address, get_u64, hex, opt_u64, secs, units};
use crate::{Error, KeyRecord, Result, Store};

/// Where a settlement stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettlementStatus {
    /// Waiting for (another) attempt.
    Pending,
    /// Settled on-chain.
    Succeeded,
    /// Retries spent: waits for someone to retry it by hand.
    Dead,
    /// Mined, then dropped by a reorganisation before it was final: the key is planned again
    /// from what the chain holds.
    Reverted,
}

impl SettlementStatus {
    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Dead => "dead",
            Self::Reverted => "reverted",
        }
    }

    fn parse(text: &str) -> Result<Self> {
        match text {
            "pending" => Ok(Self::Pending),
            "succeeded" => Ok(Self::Succeeded),
            "dead" => Ok(Self::Dead),
            "reverted" => Ok(Self::Reverted),
            other => Err(Error::Corrupt { column: "status", value: other.to_owned() }),
        }
    }
}

/// A settlement to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSettlement {
    /// The key whose voucher is settled.
    pub session_key: Address,
    /// Its owner.
    pub owner: Address,
    /// Its payee.
    pub payee: Address,
    /// The voucher's cumulative amount.
    pub voucher: U256,
    /// Its signature.
    pub signature: Signature,
    /// What it moves: the voucher less what was settled.
    pub amount: Usdc,
    /// Why now (`threshold`, `frozen`, …).
    pub reason: String,
}

/// A stored settlement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// Its id.
    pub id: u64,
    /// What was asked.
    pub intent: NewSettlement,
    /// Where it stands.
    pub status: SettlementStatus,
    /// Attempts that failed.
    pub attempts: u32,
    /// Not retried before this time.
    pub next_attempt_at: u64,
    /// The transaction that settled it (none if it was found settled already).
    pub tx_hash: Option<B256>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was written.
    pub created_at: u64,
    /// When it last changed.
    pub updated_at: u64,
}

/// A settlement as one worker holds it: what records an attempt, which counts only while that
/// worker still holds the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leased<'a> {
    /// The settlement.
    pub id: u64,
    /// The worker holding its lease.
    pub worker: &'a str,
}

/// A webhook to announce, written with the change it announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWebhook {
    /// `webhook-id`: the same change always gets the same id, so it is announced once.
    pub event_id: String,
    /// `settlement.succeeded`, `key.frozen`, …
    pub event_type: String,
    /// The JSON body.
    pub payload: String,
}

/// A webhook waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Row id.
    pub id: u64,
    /// What it announces.
    pub webhook: NewWebhook,
    /// Failed deliveries so far.
    pub attempts: u32,
    /// When it was written.
    pub created_at: u64,
}

/// A key served more than is settled, with what the planner needs to decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owed {
    /// The key.
    pub key: KeyRecord,
    /// Charges less voids.
    pub served: Usdc,
    /// The owner has a withdrawal pending from the key's tab.
    pub withdrawal_pending: bool,
}

const SETTLEMENT_COLUMNS: &str = "id, session_key, owner, payee, voucher, signature, amount, reason, status, attempts, \
     next_attempt_at, tx_hash, last_error, created_at, updated_at";

impl Store {
    /// Keys paying `payee` whose served total is above what the chain settled.
    pub async fn owed(&self, payee: Address) -> Result<Vec<Owed>> {
        let rows = sqlx::query(&format!(
            "SELECT {}, u.served AS served, e.withdrawal_units AS withdrawal_units \
             FROM key_usage u JOIN session_keys k ON k.address = u.session_key \
             LEFT JOIN tabs e ON e.owner = k.owner AND e.payee = k.payee \
             WHERE k.payee = $1 AND k.chain_status = 'registered' AND u.served > k.settled_units \
             ORDER BY k.owner, k.address",
            crate::keys::KEY_COLUMNS.split(", ").map(|c| format!("k.{c}")).collect::<Vec<_>>().join(", ")
        ))
        .bind(hex(payee))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Owed {
                    key: crate::keys::key_record(row)?,
                    served: Usdc::from_base_units(get_u64(row, "served")?),
                    withdrawal_pending: opt_u64(row, "withdrawal_units")?.is_some_and(|w| w > 0),
                })
            })
            .collect()
    }

    /// The highest voucher `key` signed for a charge that is not above `at_most`, with its
    /// signature: what can be settled without charging for a voided call.
    pub async fn claimable_voucher(&self, key: Address, at_most: Usdc) -> Result<Option<(U256, Signature)>> {
        let row = sqlx::query(
            "SELECT voucher, signature FROM usage_ledger WHERE session_key = $1 AND kind = 'charge' \
             AND voucher <= $2 AND signature <> '' ORDER BY voucher DESC LIMIT 1",
        )
        .bind(hex(key))
        .bind(format!("{:0>78}", at_most.base_units()))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| Ok((voucher(&row)?, signature(&row)?))).transpose()
    }

    /// The highest settled total of `key` that a succeeded settlement reported (the chain may
    /// not show it yet): the voucher, or less where a short tab paid part of it.
    pub async fn settled_voucher(&self, key: Address) -> Result<Option<U256>> {
        let row = sqlx::query(
            "SELECT MAX(COALESCE(settled_total, voucher)) AS voucher FROM settlements \
             WHERE session_key = $1 AND status = 'succeeded'",
        )
        .bind(hex(key))
        .fetch_one(&self.pool)
        .await?;
        let text: Option<String> = row.try_get("voucher")?;
        text.map(|t| U256::from_str_radix(&t, 10).map_err(|_| Error::Corrupt { column: "voucher", value: t }))
            .transpose()
    }

    /// Whether this deployment sent (or is sending) the settlement of `key` mined in `tx`: a
    /// settlement row with that transaction, or one still open for the key (its worker may see
    /// the receipt after the listener sees the event).
    pub async fn settlement_sent(&self, key: Address, tx: B256) -> Result<bool> {
        let row = sqlx::query(
            "SELECT 1 AS one FROM settlements WHERE session_key = $1 AND (tx_hash = $2 OR status = 'pending') LIMIT 1",
        )
        .bind(hex(key))
        .bind(format!("{tx:#x}"))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// Writes an intent unless the key has one open (pending, or dead-lettered and waiting for
    /// a person) or a succeeded settlement covers its voucher already (another worker settled
    /// it while this one was planning; a settlement a short tab paid in part covers only what
    /// it paid); returns its id, or `None`.
    pub async fn insert_settlement(&self, new: &NewSettlement, now: u64) -> Result<Option<u64>> {
        let row = sqlx::query(
            "INSERT INTO settlements (session_key, owner, payee, voucher, signature, amount, reason, status, \
             attempts, next_attempt_at, created_at, updated_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8, $8, $8 WHERE NOT EXISTS \
             (SELECT 1 FROM settlements WHERE session_key = $1 AND status = 'succeeded' \
              AND COALESCE(settled_total, voucher) >= $4) \
             ON CONFLICT DO NOTHING RETURNING id",
        )
        .bind(hex(new.session_key))
        .bind(hex(new.owner))
        .bind(hex(new.payee))
        .bind(format!("{:0>78}", new.voucher))
        .bind(new.signature.to_string())
        .bind(units(new.amount)?)
        .bind(&new.reason)
        .bind(secs(now)?)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| get_u64(&r, "id")).transpose()
    }

    /// Drops a pending intent `worker` holds and never sent, because a succeeded settlement
    /// covers its voucher already: it would only record the same money twice.
    pub async fn drop_superseded_settlement(&self, id: u64, worker: &str) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM settlements WHERE id = $1 AND status = 'pending' AND attempts = 0 AND lease_owner = $2",
        )
        .bind(secs(id)?)
        .bind(worker)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Leases up to `limit` due intents to `worker` until `until`; returns them. An intent
    /// leased by another worker whose lease has not run out is left alone.
    pub async fn lease_settlements(&self, worker: &str, now: u64, until: u64, limit: u32) -> Result<Vec<Settlement>> {
        let rows = sqlx::query(&format!(
            "UPDATE settlements SET lease_owner = $1, lease_until = $2 \
             WHERE id IN (SELECT id FROM settlements WHERE status = 'pending' AND next_attempt_at <= $3 \
                          AND (lease_until IS NULL OR lease_until < $3) ORDER BY id LIMIT $4) \
             AND status = 'pending' AND (lease_until IS NULL OR lease_until < $3) RETURNING {SETTLEMENT_COLUMNS}"
        ))
        .bind(worker)
        .bind(secs(until)?)
        .bind(secs(now)?)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut leased = rows.iter().map(settlement).collect::<Result<Vec<_>>>()?;
        leased.sort_by_key(|s| s.id);
        Ok(leased)
    }

    /// Extends `worker`'s leases of `ids` to `until`; returns the ids it still holds (pending and
    /// leased to it), in order. A worker renews what it holds before each transaction it
    /// sends, so a lease outlasts the send and its wait for a receipt however long the round
    /// has run, and it sends nothing for an intent another worker has taken over.
    pub async fn renew_settlement_leases(&self, worker: &str, ids: &[u64], until: u64) -> Result<Vec<u64>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders: Vec<String> = (3..ids.len() + 3).map(|n| format!("${n}")).collect();
        let sql = format!(
            "UPDATE settlements SET lease_until = $2 WHERE lease_owner = $1 AND status = 'pending' \
             AND id IN ({}) RETURNING id",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(&sql).bind(worker).bind(secs(until)?);
        for id in ids {
            query = query.bind(secs(*id)?);
        }
        let mut held =
            query.fetch_all(&self.pool).await?.iter().map(|row| get_u64(row, "id")).collect::<Result<Vec<_>>>()?;
        held.sort_unstable();
        Ok(held)
    }

    /// Marks a leased settlement settled by `tx_hash` (none if it was found settled already) and writes
    /// `webhook`, in one transaction. Returns false if it was no longer pending, or no longer
    /// the worker's: a lease that ran out and was taken over belongs to the new holder, which
    /// checks the chain before it sends and records what it finds.
    ///
    /// `settled_total` is the key's settled total after it: the voucher, or less when a short
    /// tab paid part of it (the rest stays claimable and is planned again).
    pub async fn settlement_succeeded(
        &self,
        leased: Leased<'_>,
        tx_hash: Option<B256>,
        settled_total: U256,
        webhook: &NewWebhook,
        now: u64,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE settlements SET status = 'succeeded', tx_hash = $2, lease_owner = NULL, lease_until = NULL, \
             updated_at = $3, settled_total = $4 WHERE id = $1 AND status = 'pending' AND lease_owner = $5",
        )
        .bind(secs(leased.id)?)
        .bind(tx_hash.map(|h| format!("{h:#x}")))
        .bind(secs(now)?)
        .bind(format!("{settled_total:0>78}"))
        .bind(leased.worker)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        announce_if(tx, done, webhook, now).await
    }

    /// Records a failed attempt of a leased settlement: retried from `next_attempt_at`, or
    /// dead-lettered when `dead`; `webhook` announces it, in the same transaction. Returns false
    /// if it was no longer pending, or no longer the worker's (its attempt is not counted: the new
    /// holder may be sending it right now, and a failure announced then would be false).
    pub async fn settlement_failed(
        &self,
        leased: Leased<'_>,
        error: &str,
        next_attempt_at: u64,
        dead: bool,
        webhook: &NewWebhook,
        now: u64,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE settlements SET attempts = attempts + 1, last_error = $2, next_attempt_at = $3, status = $4, \
             lease_owner = NULL, lease_until = NULL, updated_at = $5 \
             WHERE id = $1 AND status = 'pending' AND lease_owner = $6",
        )
        .bind(secs(leased.id)?)
        .bind(error)
        .bind(secs(next_attempt_at)?)
        .bind(if dead { "dead" } else { "pending" })
        .bind(secs(now)?)
        .bind(leased.worker)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        announce_if(tx, done, webhook, now).await
    }

    /// Succeeded settlements paid by a transaction that is not final yet, oldest first: the
    /// worker checks each against the chain until its block is deep enough.
    pub async fn unconfirmed_settlements(&self, payee: Address, limit: u32) -> Result<Vec<Settlement>> {
        let rows = sqlx::query(&format!(
            "SELECT {SETTLEMENT_COLUMNS} FROM settlements WHERE payee = $1 AND status = 'succeeded' \
             AND tx_hash IS NOT NULL AND confirmed_at IS NULL ORDER BY id LIMIT $2"
        ))
        .bind(hex(payee))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(settlement).collect()
    }

    /// Marks settlement `id` final: its transaction's block is deep enough.
    pub async fn settlement_confirmed(&self, id: u64, now: u64) -> Result<()> {
        sqlx::query("UPDATE settlements SET confirmed_at = $2 WHERE id = $1 AND status = 'succeeded'")
            .bind(secs(id)?)
            .bind(secs(now)?)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records that the chain dropped the transaction `tx` that paid settlement `id` (a
    /// reorganisation): it no longer counts as paid, and `webhook` announces it, in one
    /// transaction. Returns false if it was not a succeeded settlement paid by `tx`.
    pub async fn settlement_reverted(&self, id: u64, tx: B256, webhook: &NewWebhook, now: u64) -> Result<bool> {
        let mut db = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE settlements SET status = 'reverted', updated_at = $3 \
             WHERE id = $1 AND status = 'succeeded' AND tx_hash = $2",
        )
        .bind(secs(id)?)
        .bind(format!("{tx:#x}"))
        .bind(secs(now)?)
        .execute(&mut *db)
        .await?
        .rows_affected()
            == 1;
        announce_if(db, done, webhook, now).await
    }

    /// Puts a dead-lettered settlement back in the queue with fresh retries. Returns false if
    /// it is not dead.
    pub async fn retry_settlement(&self, id: u64, now: u64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE settlements SET status = 'pending', attempts = 0, next_attempt_at = $2, updated_at = $2 \
             WHERE id = $1 AND status = 'dead'",
        )
        .bind(secs(id)?)
        .bind(secs(now)?)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// One settlement.
    pub async fn settlement(&self, id: u64) -> Result<Option<Settlement>> {
        let row = sqlx::query(&format!("SELECT {SETTLEMENT_COLUMNS} FROM settlements WHERE id = $1"))
            .bind(secs(id)?)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(settlement).transpose()
    }

    /// Settlements, newest first, optionally only those in `status` or of `key`.
    pub async fn settlements(
        &self,
        status: Option<SettlementStatus>,
        key: Option<Address>,
        limit: u32,
    ) -> Result<Vec<Settlement>> {
        let rows = sqlx::query(&format!(
            "SELECT {SETTLEMENT_COLUMNS} FROM settlements WHERE ($1 = '' OR status = $1) \
             AND ($2 = '' OR session_key = $2) ORDER BY id DESC LIMIT $3"
        ))
        .bind(status.map_or("", SettlementStatus::as_str))
        .bind(key.map(hex).unwrap_or_default())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(settlement).collect()
    }

    // ---------------------------------------------------------------- outbox

    /// Webhooks due for delivery, oldest first.
    pub async fn due_webhooks(&self, now: u64, limit: u32) -> Result<Vec<OutboxEntry>> {
        let rows = sqlx::query(
            "SELECT id, event_id, event_type, payload, attempts, created_at FROM webhook_outbox \
             WHERE status = 'pending' AND next_attempt_at <= $1 ORDER BY id LIMIT $2",
        )
        .bind(secs(now)?)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(outbox_entry).collect()
    }

    /// Takes up to `limit` due webhooks, oldest first, for `lease_secs`: their due time moves
    /// past the lease in the same statement, so another sender (another `serve` node) skips
    /// them; a sender that dies mid-delivery leaves them due again once the lease is over.
    pub async fn take_webhooks(&self, now: u64, lease_secs: u64, limit: u32) -> Result<Vec<OutboxEntry>> {
        let rows = sqlx::query(
            "UPDATE webhook_outbox SET next_attempt_at = $2 \
             WHERE id IN (SELECT id FROM webhook_outbox WHERE status = 'pending' AND next_attempt_at <= $1 \
                          ORDER BY id LIMIT $3) \
             AND status = 'pending' AND next_attempt_at <= $1 \
             RETURNING id, event_id, event_type, payload, attempts, created_at",
        )
        .bind(secs(now)?)
        .bind(secs(now.saturating_add(lease_secs))?)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut taken = rows.iter().map(outbox_entry).collect::<Result<Vec<_>>>()?;
        taken.sort_by_key(|e| e.id);
        Ok(taken)
    }

    /// Marks a webhook delivered.
    pub async fn webhook_delivered(&self, id: u64, now: u64) -> Result<()> {
        sqlx::query("UPDATE webhook_outbox SET status = 'delivered', delivered_at = $2 WHERE id = $1")
            .bind(secs(id)?)
            .bind(secs(now)?)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records a failed delivery: retried from `next_attempt_at`, or given up when `dead`.
    pub async fn webhook_failed(&self, id: u64, error: &str, next_attempt_at: u64, dead: bool) -> Result<()> {
        sqlx::query(
            "UPDATE webhook_outbox SET attempts = attempts + 1, last_error = $2, next_attempt_at = $3, status = $4 \
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

    /// Every webhook of `event_type` in the outbox, whatever its state, oldest first.
    pub async fn webhooks_of_type(&self, event_type: &str) -> Result<Vec<NewWebhook>> {
        let rows =
            sqlx::query("SELECT event_id, event_type, payload FROM webhook_outbox WHERE event_type = $1 ORDER BY id")
                .bind(event_type)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|row| {
                Ok(NewWebhook {
                    event_id: row.try_get("event_id")?,
                    event_type: row.try_get("event_type")?,
                    payload: row.try_get("payload")?,
                })
            })
            .collect()
    }
}

/// Ends `tx`: when `changed`, with `webhook` added to the outbox, so a change and its
/// announcement commit together. Returns `changed`.
pub(crate) async fn announce_if(
    mut tx: sqlx::Transaction<'_, sqlx::Any>,
    changed: bool,
    webhook: &NewWebhook,
    now: u64,
) -> Result<bool> {
    if changed {
        enqueue(&mut tx, webhook, now).await?;
    }
    tx.commit().await?;
    Ok(changed)
}

/// Adds `webhook` to the outbox inside `tx`; a webhook with the same id is there already.
pub(crate) async fn enqueue(tx: &mut sqlx::AnyConnection, webhook: &NewWebhook, now: u64) -> Result<()> {
    sqlx::query(
        "INSERT INTO webhook_outbox (event_id, event_type, payload, status, attempts, next_attempt_at, created_at) \
         VALUES ($1, $2, $3, 'pending', 0, $4, $4) ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(&webhook.event_id)
    .bind(&webhook.event_type)
    .bind(&webhook.payload)
    .bind(secs(now)?)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

fn outbox_entry(row: &AnyRow) -> Result<OutboxEntry> {
    Ok(OutboxEntry {
        id: get_u64(row, "id")?,
        webhook: NewWebhook {
            event_id: row.try_get("event_id")?,
            event_type: row.try_get("event_type")?,
            payload: row.try_get("payload")?,
        },
        attempts: u32::try_from(get_u64(row, "attempts")?).unwrap_or(u32::MAX),
        created_at: get_u64(row, "created_at")?,
    })
}

fn voucher(row: &AnyRow) -> Result<U256> {
    let text: String = row.try_get("voucher")?;
    U256::from_str_radix(&text, 10).map_err(|_| Error::Corrupt { column: "voucher", value: text })
}

fn signature(row: &AnyRow) -> Result<Signature> {
    let text: String = row.try_get("signature")?;
    text.parse().map_err(|_| Error::Corrupt { column: "signature", value: text })
}

fn settlement(row: &AnyRow) -> Result<Settlement> {
    let text = |col: &'static str| -> Result<String> { Ok(row.try_get(col)?) };
    let tx_hash: Option<String> = row.try_get("tx_hash")?;
    Ok(Settlement {
        id: get_u64(row, "id")?,
        intent: NewSettlement {
            session_key: address(&text("session_key")?, "session_key")?,
            owner: address(&text("owner")?, "owner")?,
            payee: address(&text("payee")?, "payee")?,
            voucher: voucher(row)?,
            signature: signature(row)?,
            amount: Usdc::from_base_units(get_u64(row, "amount")?),
            reason: text("reason")?,
        },
        status: SettlementStatus::parse(&text("status")?)?,
        attempts: u32::try_from(get_u64(row, "attempts")?).unwrap_or(u32::MAX),
        next_attempt_at: get_u64(row, "next_attempt_at")?,
        tx_hash: tx_hash.map(|h| h.parse().map_err(|_| Error::Corrupt { column: "tx_hash", value: h })).transpose()?,
        last_error: row.try_get("last_error")?,
        created_at: get_u64(row, "created_at")?,
        updated_at: get_u64(row, "updated_at")?,
    })
}
