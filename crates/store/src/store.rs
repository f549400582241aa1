//! The repository: every query opentab runs, written once for both backends.

use std::collections::BTreeSet;
use std::str::FromStr;

use opentab_core::{Address, B256, SessionKey, Tab, U256, Usdc, ValidatorEvent};
use sqlx::AnyConnection;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::rows::{
    AuditEntry, ChainStatus, KeyRecord, KeyUsage, LiveIdempotency, NewKey, StoredEvent, UsageEntry, UsageKind,
    UsageTotal,
};
use crate::{Error, Result};

/// What a chain update touched (see [`Store::apply_chain_update`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    /// Owners whose tabs or keys may have changed.
    pub owners: Vec<Address>,
    /// Keys whose state may have changed.
    pub keys: Vec<Address>,
}

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

/// The audit action each relayed transaction is recorded under before it is sent; the relay
/// quota counts them.
pub const RELAY_SENT: &str = "relay.sent";

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

pub(crate) const KEY_COLUMNS: &str = "address, owner, payee, limit_units, valid_after, valid_until, chain_status, frozen_at, \
     revoked_at, settled_units, frozen_offchain_at, deleted_at, created_at, updated_at";

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

    // ------------------------------------------------------------------ owners

    /// Records `owner` if new.
    pub async fn upsert_owner(&self, owner: Address, now: u64) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        upsert_owner(&mut conn, owner, now).await
    }

    // ------------------------------------------------------------ session keys

    /// Stores a key opentab is registering, as pending. Refuses an address already stored.
    pub async fn insert_pending_key(&self, key: &NewKey, now: u64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        upsert_owner(&mut tx, key.owner, now).await?;
        let inserted = sqlx::query(
            "INSERT INTO session_keys (address, owner, payee, limit_units, valid_after, valid_until, chain_status, \
             settled_units, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $8) \
             ON CONFLICT (address) DO NOTHING",
        )
        .bind(hex(key.address))
        .bind(hex(key.owner))
        .bind(hex(key.payee))
        .bind(units(key.limit)?)
        .bind(secs(key.valid_after)?)
        .bind(secs(key.valid_until)?)
        .bind(ChainStatus::Pending.as_str())
        .bind(secs(now)?)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(Error::KeyExists(key.address));
        }
        tx.commit().await?;
        Ok(())
    }

    /// Forgets a key whose registration never reached the chain. Registered keys stay.
    pub async fn delete_pending_key(&self, address: Address) -> Result<()> {
        sqlx::query("DELETE FROM session_keys WHERE address = $1 AND chain_status = $2")
            .bind(hex(address))
            .bind(ChainStatus::Pending.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// One key, whoever owns it (callers check ownership).
    pub async fn key(&self, address: Address) -> Result<Option<KeyRecord>> {
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM session_keys WHERE address = $1"))
            .bind(hex(address))
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(key_record).transpose()
    }

    /// An owner's keys, newest first; deleted ones only when asked.
    pub async fn keys_of(&self, owner: Address, include_deleted: bool) -> Result<Vec<KeyRecord>> {
        let filter = if include_deleted { "" } else { " AND deleted_at IS NULL" };
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM session_keys WHERE owner = $1{filter} ORDER BY created_at DESC, address"
        ))
        .bind(hex(owner))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_record).collect()
    }

    /// Marks a key frozen off-chain at `now` (the gateway stops serving it at once). Returns
    /// false if the key is unknown.
    pub async fn freeze_offchain(&self, address: Address, now: u64) -> Result<bool> {
        let mut conn = self.pool.acquire().await?;
        let frozen = freeze_offchain(&mut conn, address, now).await?;
        self.announce(crate::KeyChange::Key(address));
        Ok(frozen)
    }

    /// Lifts an off-chain freeze. Returns false if the key is unknown.
    pub async fn unfreeze_offchain(&self, address: Address, now: u64) -> Result<bool> {
        let done = sqlx::query("UPDATE session_keys SET frozen_offchain_at = NULL, updated_at = $2 WHERE address = $1")
            .bind(hex(address))
            .bind(secs(now)?)
            .execute(&self.pool)
            .await?;
        self.announce(crate::KeyChange::Key(address));
        Ok(done.rows_affected() == 1)
    }

    /// Hides a key from its owner's default list. Returns false if the key is unknown.
    pub async fn mark_deleted(&self, address: Address, now: u64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE session_keys SET deleted_at = COALESCE(deleted_at, $2), updated_at = $2 WHERE address = $1",
        )
        .bind(hex(address))
        .bind(secs(now)?)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The owner's tab with `payee` as folded from confirmed events (empty if none).
    pub async fn tab(&self, owner: Address, payee: Address) -> Result<Tab> {
        Ok(self.gateway_budget(owner, payee).await?.0)
    }

    /// Every tab `owner` has had, by payee (folded from confirmed events).
    pub async fn tabs_of(&self, owner: Address) -> Result<Vec<(Address, Tab)>> {
        let rows = sqlx::query(
            "SELECT payee, balance_units, withdrawal_units, withdrawal_grace_ends_at FROM tabs WHERE owner = $1 \
             ORDER BY payee",
        )
        .bind(hex(owner))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| Ok((address(&row.try_get::<String, _>("payee")?, "payee")?, tab_of_row(row)?))).collect()
    }

    /// The guardian `owner` chose on-chain, if any.
    pub async fn guardian(&self, owner: Address) -> Result<Option<Address>> {
        let row = sqlx::query("SELECT guardian FROM owners WHERE address = $1")
            .bind(hex(owner))
            .fetch_optional(&self.pool)
            .await?;
        let guardian: Option<String> = match row {
            Some(row) => row.try_get("guardian")?,
            None => None,
        };
        guardian.map(|g| address(&g, "guardian")).transpose()
    }

    /// What the gateway can still charge on `owner`'s tab with `payee`: the tab's available
    /// amount plus what settled from it, less what its keys were served (floored at zero).
    pub async fn tab_free(&self, owner: Address, payee: Address) -> Result<Usdc> {
        let (tab, settled) = self.gateway_budget(owner, payee).await?;
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(CASE WHEN u.served > k.settled_units THEN u.served ELSE k.settled_units END), 0) \
             AS BIGINT) AS served FROM session_keys k LEFT JOIN key_usage u ON u.session_key = k.address \
             WHERE k.owner = $1 AND k.payee = $2",
        )
        .bind(hex(owner))
        .bind(hex(payee))
        .fetch_one(&self.pool)
        .await?;
        let served = Usdc::from_base_units(get_u64(&row, "served")?);
        Ok(tab.available().saturating_add(settled).saturating_sub(served))
    }

    /// `owner`'s tab with `payee` and what the chain has settled across its keys that pay
    /// `payee`, in one read: together they bound what the gateway may serve (see
    /// `opentab_core::charge`), so they must come from the same moment.
    pub async fn gateway_budget(&self, owner: Address, payee: Address) -> Result<(Tab, Usdc)> {
        // No tab row means nothing was ever deposited, so nothing can have been settled.
        let row = sqlx::query(
            "SELECT balance_units, withdrawal_units, withdrawal_grace_ends_at, \
             (SELECT CAST(COALESCE(SUM(settled_units), 0) AS BIGINT) FROM session_keys \
              WHERE owner = $1 AND payee = $2) AS settled \
             FROM tabs WHERE owner = $1 AND payee = $2",
        )
        .bind(hex(owner))
        .bind(hex(payee))
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok((Tab::default(), Usdc::ZERO)) };
        Ok((tab_of_row(&row)?, Usdc::from_base_units(get_u64(&row, "settled")?)))
    }

    // ----------------------------------------------------------------- chain

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

    // ------------------------------------------------------------------- usage

    /// Appends one charge or void to the usage ledger and moves the key's served total, in one
    /// transaction committed when this returns.
    pub async fn record_usage(&self, entry: &UsageEntry) -> Result<()> {
        self.record_usage_batch(std::slice::from_ref(entry)).await
    }

    /// Appends charges and voids to the usage ledger and moves their keys' served totals, all
    /// in one transaction committed when this returns (the gateway's group commit: one disk
    /// flush for every call that arrived while the previous batch was committing).
    pub async fn record_usage_batch(&self, entries: &[UsageEntry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        // One statement for the whole batch (one round trip, not one per call), in chunks that
        // stay under the databases' limits on bound parameters.
        const COLUMNS: usize = 11;
        const ROWS_PER_STATEMENT: usize = 256;
        let mut tx = self.pool.begin().await?;
        // Per key: the served delta and the latest time of the rows actually inserted (a void
        // recorded again, after a retry whose first answer was lost, inserts nothing).
        let mut per_key: std::collections::BTreeMap<Address, (Address, i64, u64)> = std::collections::BTreeMap::new();
        for chunk in entries.chunks(ROWS_PER_STATEMENT) {
            let mut sql = String::from(
                "INSERT INTO usage_ledger (at, session_key, owner, kind, amount, route, request_id, voucher, \
                 signature, idempotency, void_of) VALUES ",
            );
            for row in 0..chunk.len() {
                let first = row * COLUMNS + 1;
                let placeholders: Vec<String> = (first..first + COLUMNS).map(|n| format!("${n}")).collect();
                sql.push_str(if row == 0 { "(" } else { ", (" });
                sql.push_str(&placeholders.join(", "));
                sql.push(')');
            }
            sql.push_str(" ON CONFLICT DO NOTHING RETURNING session_key, owner, kind, amount, at");
            let mut query = sqlx::query(&sql);
            for entry in chunk {
                query = query
                    .bind(secs(entry.at)?)
                    .bind(hex(entry.session_key))
                    .bind(hex(entry.owner))
                    .bind(match entry.kind {
                        UsageKind::Charge => "charge",
                        UsageKind::Void => "void",
                    })
                    .bind(units(entry.amount)?)
                    .bind(entry.route.clone())
                    .bind(entry.request_id.clone())
                    .bind(format!("{:0>78}", entry.voucher))
                    .bind(entry.signature.map(|s| s.to_string()).unwrap_or_default())
                    .bind(entry.idempotency.map(|id| format!("{id:#x}")))
                    .bind(entry.void_of.map(|id| format!("{id:#x}")));
            }
            for row in query.fetch_all(&mut *tx).await? {
                let key = address(&row.try_get::<String, _>("session_key")?, "session_key")?;
                let owner = address(&row.try_get::<String, _>("owner")?, "owner")?;
                let amount: i64 = row.try_get("amount")?;
                let delta = if row.try_get::<String, _>("kind")? == "void" { -amount } else { amount };
                let at = get_u64(&row, "at")?;
                let slot = per_key.entry(key).or_insert((owner, 0, at));
                slot.1 += delta;
                slot.2 = slot.2.max(at);
            }
        }
        for (key, (owner, delta, at)) in per_key {
            sqlx::query(
                "INSERT INTO key_usage (session_key, owner, served, last_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (session_key) DO UPDATE SET served = key_usage.served + excluded.served, \
                 last_at = excluded.last_at",
            )
            .bind(hex(key))
            .bind(hex(owner))
            .bind(delta)
            .bind(secs(at)?)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every key's usage according to the ledger: served (charges less voids) and the best
    /// voucher with its signature. What the gateway's counters are rebuilt from.
    pub async fn usage_totals(&self) -> Result<Vec<UsageTotal>> {
        self.totals(None).await
    }

    /// One key's usage according to the ledger (zero if it was never charged): what the
    /// gateway rebuilds that key's counters from when Redis lost them.
    pub async fn usage_total(&self, key: Address) -> Result<Option<UsageTotal>> {
        Ok(self.totals(Some(key)).await?.pop())
    }

    /// The idempotency keys charged since `since` (Unix seconds) and not voided, of one key
    /// or (with `None`) of every key: what rebuilt counters must still refuse to charge again.
    pub async fn live_idempotency(&self, key: Option<Address>, since: u64) -> Result<Vec<LiveIdempotency>> {
        let rows = sqlx::query(
            "SELECT session_key, idempotency, MAX(at) AS charged_at FROM usage_ledger \
             WHERE idempotency IS NOT NULL AND at >= $1 AND ($2 = '' OR session_key = $2) \
             GROUP BY session_key, idempotency \
             HAVING SUM(CASE WHEN kind = 'charge' THEN 1 ELSE -1 END) > 0",
        )
        .bind(secs(since)?)
        .bind(key.map(hex).unwrap_or_default())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("idempotency")?;
                Ok(LiveIdempotency {
                    session_key: address(&row.try_get::<String, _>("session_key")?, "session_key")?,
                    id: B256::from_str(&id).map_err(|_| Error::Corrupt { column: "idempotency", value: id })?,
                    charged_at: get_u64(row, "charged_at")?,
                })
            })
            .collect()
    }

    /// What the gateway served all of `owner`'s keys (charges less voids).
    pub async fn owner_served(&self, owner: Address) -> Result<Usdc> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(CASE WHEN served > 0 THEN served ELSE 0 END), 0) AS BIGINT) AS served \
             FROM key_usage WHERE owner = $1",
        )
        .bind(hex(owner))
        .fetch_one(&self.pool)
        .await?;
        Ok(Usdc::from_base_units(get_u64(&row, "served")?))
    }

    async fn totals(&self, key: Option<Address>) -> Result<Vec<UsageTotal>> {
        let rows = sqlx::query(
            "SELECT session_key, owner, \
             CAST(SUM(CASE WHEN kind = 'charge' THEN amount ELSE 0 END) AS BIGINT) AS charged, \
             CAST(SUM(CASE WHEN kind = 'void' THEN amount ELSE 0 END) AS BIGINT) AS voided, \
             MAX(voucher) AS best FROM usage_ledger WHERE ($1 = '' OR session_key = $1) \
             GROUP BY session_key, owner ORDER BY session_key",
        )
        .bind(key.map(hex).unwrap_or_default())
        .fetch_all(&self.pool)
        .await?;
        let mut totals = Vec::with_capacity(rows.len());
        for row in &rows {
            let key: String = row.try_get("session_key")?;
            let best: String = row.try_get("best")?;
            let signature: Option<String> =
                sqlx::query("SELECT signature FROM usage_ledger WHERE session_key = $1 AND voucher = $2 AND signature <> '' LIMIT 1")
                    .bind(&key)
                    .bind(&best)
                    .fetch_optional(&self.pool)
                    .await?
                    .map(|r| r.try_get("signature"))
                    .transpose()?;
            let corrupt = |column: &'static str, value: &str| Error::Corrupt { column, value: value.to_owned() };
            let served = get_u64(row, "charged")?.saturating_sub(get_u64(row, "voided")?);
            totals.push(UsageTotal {
                session_key: address(&key, "session_key")?,
                owner: address(&row.try_get::<String, _>("owner")?, "owner")?,
                served: Usdc::from_base_units(served),
                best: U256::from_str_radix(&best, 10).map_err(|_| corrupt("voucher", &best))?,
                best_signature: signature.map(|s| s.parse().map_err(|_| corrupt("signature", &s))).transpose()?,
            });
        }
        Ok(totals)
    }

    /// What the gateway served each of `owner`'s keys (charges less voids) and when, by key.
    pub async fn usage_by_key(&self, owner: Address) -> Result<std::collections::HashMap<Address, KeyUsage>> {
        let rows = sqlx::query("SELECT session_key, served, last_at FROM key_usage WHERE owner = $1")
            .bind(hex(owner))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| Ok((address(&row.try_get::<String, _>("session_key")?, "session_key")?, key_usage(row)?)))
            .collect()
    }

    /// What the gateway served one key, and when it last did.
    pub async fn key_usage(&self, key: Address) -> Result<KeyUsage> {
        let row = sqlx::query("SELECT served, last_at FROM key_usage WHERE session_key = $1")
            .bind(hex(key))
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(key_usage).transpose().map(Option::unwrap_or_default)
    }

    /// What the gateway served one key.
    pub async fn served(&self, key: Address) -> Result<Usdc> {
        Ok(self.key_usage(key).await?.served)
    }

    // -------------------------------------------------------------------- auth

    /// The deployment's secret named `name`: made from `fresh` by the first server to ask,
    /// the same for every server after.
    pub async fn server_secret(&self, name: &str, fresh: &str) -> Result<String> {
        sqlx::query("INSERT INTO server_secrets (name, secret) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(fresh)
            .execute(&self.pool)
            .await?;
        let row =
            sqlx::query("SELECT secret FROM server_secrets WHERE name = $1").bind(name).fetch_one(&self.pool).await?;
        Ok(row.try_get("secret")?)
    }

    /// Spends a sign-in nonce issued at `issued_at`: true the first time, false ever after (a
    /// nonce signs in once). Nonces are checked before (they are sealed), so only spent ones
    /// are stored.
    pub async fn spend_nonce(&self, nonce: &str, issued_at: u64, now: u64) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO siwe_nonces (nonce, created_at, used_at) VALUES ($1, $2, $3) ON CONFLICT (nonce) DO NOTHING",
        )
        .bind(nonce)
        .bind(secs(issued_at)?)
        .bind(secs(now)?)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// How many spent nonces are kept (they go once too old to sign in).
    pub async fn spent_nonces(&self) -> Result<u64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM siwe_nonces").fetch_one(&self.pool).await?;
        get_u64(&row, "n")
    }

    /// Opens a session for `owner` under a token hash.
    pub async fn create_session(&self, token_hash: &str, owner: Address, now: u64, expires_at: u64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        upsert_owner(&mut tx, owner, now).await?;
        sqlx::query("INSERT INTO sessions (token_hash, owner, created_at, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(token_hash)
            .bind(hex(owner))
            .bind(secs(now)?)
            .bind(secs(expires_at)?)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The owner of an unexpired session.
    pub async fn session_owner(&self, token_hash: &str, now: u64) -> Result<Option<Address>> {
        let row = sqlx::query("SELECT owner FROM sessions WHERE token_hash = $1 AND expires_at > $2")
            .bind(token_hash)
            .bind(secs(now)?)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| address(&r.try_get::<String, _>("owner")?, "owner")).transpose()
    }

    /// Ends a session.
    pub async fn delete_session(&self, token_hash: &str) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE token_hash = $1").bind(token_hash).execute(&self.pool).await?;
        Ok(())
    }

    /// Forgets spent nonces issued before `issued_before` (too old to sign in anyway)
    /// and sessions expired by `now`. Returns how many of each went.
    pub async fn purge_auth(&self, issued_before: u64, now: u64) -> Result<(u64, u64)> {
        let nonces = sqlx::query("DELETE FROM siwe_nonces WHERE created_at < $1")
            .bind(secs(issued_before)?)
            .execute(&self.pool)
            .await?;
        let sessions =
            sqlx::query("DELETE FROM sessions WHERE expires_at <= $1").bind(secs(now)?).execute(&self.pool).await?;
        Ok((nonces.rows_affected(), sessions.rows_affected()))
    }

    // ------------------------------------------------------------------- audit

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

async fn upsert_owner(conn: &mut AnyConnection, owner: Address, now: u64) -> Result<()> {
    sqlx::query("INSERT INTO owners (address, created_at) VALUES ($1, $2) ON CONFLICT (address) DO NOTHING")
        .bind(hex(owner))
        .bind(secs(now)?)
        .execute(conn)
        .await?;
    Ok(())
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

fn tab_of_row(row: &AnyRow) -> Result<Tab> {
    let withdrawal = match (opt_u64(row, "withdrawal_units")?, opt_u64(row, "withdrawal_grace_ends_at")?) {
        (Some(amount), Some(at)) => Some((Usdc::from_base_units(amount), at)),
        _ => None,
    };
    Ok(Tab { balance: Usdc::from_base_units(get_u64(row, "balance_units")?), pending_withdrawal: withdrawal })
}

pub(crate) fn key_record(row: &AnyRow) -> Result<KeyRecord> {
    let text = |col: &'static str| -> Result<String> { Ok(row.try_get(col)?) };
    let chain_status = match text("chain_status")?.as_str() {
        "pending" => ChainStatus::Pending,
        "registered" => ChainStatus::Registered,
        other => return Err(Error::Corrupt { column: "chain_status", value: other.to_owned() }),
    };
    Ok(KeyRecord {
        key: SessionKey {
            address: address(&text("address")?, "address")?,
            owner: address(&text("owner")?, "owner")?,
            payee: address(&text("payee")?, "payee")?,
            limit: Usdc::from_base_units(get_u64(row, "limit_units")?),
            valid_after: get_u64(row, "valid_after")?,
            valid_until: get_u64(row, "valid_until")?,
            frozen_at: opt_u64(row, "frozen_at")?,
            revoked_at: opt_u64(row, "revoked_at")?,
            settled: Usdc::from_base_units(get_u64(row, "settled_units")?),
        },
        chain_status,
        frozen_offchain_at: opt_u64(row, "frozen_offchain_at")?,
        deleted_at: opt_u64(row, "deleted_at")?,
        created_at: get_u64(row, "created_at")?,
        updated_at: get_u64(row, "updated_at")?,
    })
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

fn key_usage(row: &AnyRow) -> Result<KeyUsage> {
    // A stray void can take the sum below zero; served never is.
    let served = u64::try_from(row.try_get::<i64, _>("served")?).unwrap_or(0);
    Ok(KeyUsage { served: Usdc::from_base_units(served), last_at: opt_u64(row, "last_at")? })
}

/// Marks a key frozen off-chain (keeping an earlier freeze's time), inside `conn`'s transaction
/// if it has one. Returns false if the key is unknown.
pub(crate) async fn freeze_offchain(conn: &mut AnyConnection, address: Address, now: u64) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE session_keys SET frozen_offchain_at = COALESCE(frozen_offchain_at, $2), updated_at = $2 \
         WHERE address = $1",
    )
    .bind(hex(address))
    .bind(secs(now)?)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
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
