//! The usage ledger: the gateway's charges and voids, appended in group commits, and the
//! per-key served totals, best vouchers and live idempotency keys read back from it.

use std::str::FromStr;

use opentab_core::{Address, B256, U256, Usdc};
use sqlx::Row;
use sqlx::any::AnyRow;

use opentab_core::charge::CounterEpoch;

use crate::rows::{KeyUsage, LiveIdempotency, Recorded, UsageEntry, UsageKind, UsageTotal};
use crate::store::{address, get_u64, hex, opt_u64, secs, units};
use crate::{Error, Result, Store};

impl Store {
    /// Appends one charge or void to the usage ledger and moves the key's served total, in one
    /// transaction committed when this returns.
    pub async fn record_usage(&self, entry: &UsageEntry) -> Result<Recorded> {
        let outcome = self.record_usage_batch(std::slice::from_ref(entry)).await?;
        Ok(outcome.first().copied().unwrap_or(Recorded::Held(None)))
    }

    /// Appends charges and voids to the usage ledger and moves their keys' served totals, all
    /// in one transaction committed when this returns (the gateway's group commit: one disk
    /// flush for every call that arrived while the previous batch was committing). What became
    /// of each entry, in order:
    ///
    /// - a charge whose key is frozen or revoked when the batch commits is refused
    ///   ([`Recorded::KeyStopped`]), whatever a gateway's cache believed, so a freeze committed
    ///   on any node stops every call whose row commits after it;
    /// - a charge taken on counters older than the epochs the ledger holds is refused
    ///   ([`Recorded::Fenced`]): a rebuild read the ledger without it;
    /// - a void of a charge voided already moves nothing ([`Recorded::AlreadyVoided`]);
    /// - the rest are held. An entry that named an epoch is told the epochs the ledger holds.
    ///
    /// The epochs are read under the rows' locks ([`Store::usage_for_rebuild`] raises them
    /// under the same locks), so a rebuild and a batch touching one key are ordered: either
    /// the rebuild reads the batch's rows, or the batch sees the raised epoch.
    pub async fn record_usage_batch(&self, entries: &[UsageEntry]) -> Result<Vec<Recorded>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        // The keys' totals move first, as if every entry were held: that statement takes the
        // rows' locks (and SQLite's write lock: a transaction that read first would have to
        // upgrade, which fails at once while another connection writes) and says the epochs.
        let key_epochs = add_to_totals(&mut tx, entries.iter(), 1).await?;
        let owners = entries.iter().filter(|e| e.epoch.is_some()).map(|e| e.owner);
        let owner_epochs = self.owner_epochs(&mut tx, owners).await?;
        let charged = entries.iter().filter(|e| e.kind == UsageKind::Charge).map(|e| e.session_key);
        let stopped = self.stopped_keys(&mut tx, charged).await?;
        let mut outcomes: Vec<Recorded> = entries
            .iter()
            .map(|entry| {
                let held = entry.epoch.map(|_| CounterEpoch {
                    key: key_epochs.get(&entry.session_key).copied().unwrap_or(0),
                    owner: owner_epochs.get(&entry.owner).copied().unwrap_or(0),
                });
                match (entry.kind, entry.epoch, held) {
                    (UsageKind::Charge, _, _) if stopped.contains(&entry.session_key) => Recorded::KeyStopped,
                    (UsageKind::Charge, Some(taken), Some(held))
                        if taken.key < held.key || taken.owner < held.owner =>
                    {
                        Recorded::Fenced(held)
                    }
                    _ => Recorded::Held(held),
                }
            })
            .collect();
        let kept: Vec<&UsageEntry> = entries
            .iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| matches!(outcome, Recorded::Held(_)))
            .map(|(entry, _)| entry)
            .collect();
        let inserted = insert_rows(&mut tx, &kept).await?;
        // A void recorded again (a retry whose first answer was lost, or twice in this batch)
        // inserts nothing: each inserted void counts for the first entry naming its charge.
        let mut voided: std::collections::HashSet<B256> = inserted.iter().filter_map(|row| row.void_of).collect();
        for (entry, outcome) in entries.iter().zip(outcomes.iter_mut()) {
            let again = entry.kind == UsageKind::Void && entry.void_of.is_some_and(|of| !voided.remove(&of));
            if again && matches!(outcome, Recorded::Held(_)) {
                *outcome = Recorded::AlreadyVoided;
            }
        }
        // What was counted and not written is taken back (rare: a refusal, a void repeated).
        let unwritten = entries.iter().zip(&outcomes).filter(|(_, o)| !matches!(o, Recorded::Held(_))).map(|(e, _)| e);
        add_to_totals(&mut tx, unwritten, -1).await?;
        tx.commit().await?;
        Ok(outcomes)
    }

    /// The epoch of each of `owners`' served total, share-locked on PostgreSQL (a rebuild of
    /// the total raises it under an exclusive lock: one waits for the other). An owner without
    /// a row is at epoch 0: a charge naming an owner's epoch was taken on a total a rebuild
    /// restored, and that rebuild made the row.
    async fn owner_epochs(
        &self,
        tx: &mut sqlx::AnyConnection,
        owners: impl Iterator<Item = Address>,
    ) -> Result<std::collections::HashMap<Address, u64>> {
        let owners: Vec<Address> = owners.collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        let lock = match self.backend() {
            crate::Backend::Postgres => " FOR SHARE",
            crate::Backend::Sqlite => "",
        };
        let mut epochs = std::collections::HashMap::with_capacity(owners.len());
        for chunk in owners.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "SELECT owner, epoch FROM owner_epochs WHERE owner IN ({}){lock}",
                placeholders(1, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for owner in chunk {
                query = query.bind(hex(*owner));
            }
            for row in query.fetch_all(&mut *tx).await? {
                epochs.insert(address(&row.try_get::<String, _>("owner")?, "owner")?, get_u64(&row, "epoch")?);
            }
        }
        Ok(epochs)
    }

    /// Which of `keys` are frozen (off-chain or on-chain) or revoked, read inside `tx`. On
    /// PostgreSQL the rows are share-locked: a freeze committed before is seen, one under way
    /// is waited for and seen, one after waits for this commit (the charge came first). On
    /// SQLite a transaction that writes holds the database's one write lock.
    async fn stopped_keys(
        &self,
        tx: &mut sqlx::AnyConnection,
        keys: impl Iterator<Item = Address>,
    ) -> Result<std::collections::BTreeSet<Address>> {
        let keys: Vec<Address> = keys.collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        let lock = match self.backend() {
            crate::Backend::Postgres => " FOR SHARE",
            crate::Backend::Sqlite => "",
        };
        let mut stopped = std::collections::BTreeSet::new();
        for chunk in keys.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "SELECT address FROM session_keys WHERE address IN ({}) \
                 AND (frozen_offchain_at IS NOT NULL OR frozen_at IS NOT NULL OR revoked_at IS NOT NULL){lock}",
                placeholders(1, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for key in chunk {
                query = query.bind(hex(*key));
            }
            for row in query.fetch_all(&mut *tx).await? {
                stopped.insert(address(&row.try_get::<String, _>("address")?, "address")?);
            }
        }
        Ok(stopped)
    }

    /// What the counters of `key` (and, `with_owner`, its owner's served total) are rebuilt
    /// from when a counter store lost them: the key's usage, its live idempotency keys and the
    /// owner's total, read in one transaction that first raises the epochs (see
    /// [`Store::record_usage_batch`]), with the raised epochs. A charge taken on the lost
    /// counters that commits after this read is refused; one that committed before is read.
    pub async fn usage_for_rebuild(
        &self,
        key: Address,
        owner: Address,
        with_owner: bool,
        idempotent_since: u64,
    ) -> Result<RebuildRead> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "INSERT INTO key_usage (session_key, owner, served, calls, epoch) VALUES ($1, $2, 0, 0, 1) \
             ON CONFLICT (session_key) DO UPDATE SET epoch = key_usage.epoch + 1 RETURNING epoch",
        )
        .bind(hex(key))
        .bind(hex(owner))
        .fetch_one(&mut *tx)
        .await?;
        let mut epoch = CounterEpoch { key: get_u64(&row, "epoch")?, owner: 0 };
        let mut owner_served = None;
        if with_owner {
            let row = sqlx::query(
                "INSERT INTO owner_epochs (owner, epoch) VALUES ($1, 1) \
                 ON CONFLICT (owner) DO UPDATE SET epoch = owner_epochs.epoch + 1 RETURNING epoch",
            )
            .bind(hex(owner))
            .fetch_one(&mut *tx)
            .await?;
            epoch.owner = get_u64(&row, "epoch")?;
            owner_served = Some(owner_served_in(&mut tx, owner).await?);
        }
        let total = totals_in(&mut tx, Some(key)).await?.pop();
        let idempotency = match total {
            Some(_) => live_idempotency_in(&mut tx, Some(key), idempotent_since).await?,
            None => Vec::new(),
        };
        tx.commit().await?;
        Ok(RebuildRead { total, owner_served, epoch, idempotency })
    }

    /// Every key's usage according to the ledger: served (charges less voids) and the best
    /// voucher with its signature. What the gateway's counters are rebuilt from.
    pub async fn usage_totals(&self) -> Result<Vec<UsageTotal>> {
        let mut conn = self.pool.acquire().await?;
        totals_in(&mut conn, None).await
    }

    /// One key's usage according to the ledger (zero if it was never charged).
    pub async fn usage_total(&self, key: Address) -> Result<Option<UsageTotal>> {
        let mut conn = self.pool.acquire().await?;
        Ok(totals_in(&mut conn, Some(key)).await?.pop())
    }

    /// The idempotency keys charged since `since` (Unix seconds) and not voided, of one key
    /// or (with `None`) of every key: what rebuilt counters must still refuse to charge again.
    pub async fn live_idempotency(&self, key: Option<Address>, since: u64) -> Result<Vec<LiveIdempotency>> {
        let mut conn = self.pool.acquire().await?;
        live_idempotency_in(&mut conn, key, since).await
    }

    /// What the gateway served all of `owner`'s keys (charges less voids).
    pub async fn owner_served(&self, owner: Address) -> Result<Usdc> {
        let mut conn = self.pool.acquire().await?;
        owner_served_in(&mut conn, owner).await
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

    /// What the ledger holds for each request of `key`: the amount charged less the amount
    /// voided, by request id (an audit: `opentab chaos` checks every call a client was served
    /// against it).
    pub async fn standing_by_request(&self, key: Address) -> Result<std::collections::HashMap<String, i64>> {
        let rows = sqlx::query(
            "SELECT request_id, CAST(SUM(CASE WHEN kind = 'charge' THEN amount ELSE -amount END) AS BIGINT) AS net \
             FROM usage_ledger WHERE session_key = $1 GROUP BY request_id",
        )
        .bind(hex(key))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| Ok((row.try_get("request_id")?, row.try_get::<i64, _>("net")?))).collect()
    }

    /// What the gateway served one key.
    pub async fn served(&self, key: Address) -> Result<Usdc> {
        Ok(self.key_usage(key).await?.served)
    }
}

fn key_usage(row: &AnyRow) -> Result<KeyUsage> {
    // A stray void can take the sum below zero; served never is.
    let served = u64::try_from(row.try_get::<i64, _>("served")?).unwrap_or(0);
    Ok(KeyUsage { served: Usdc::from_base_units(served), last_at: opt_u64(row, "last_at")? })
}

/// What [`Store::usage_for_rebuild`] read, in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebuildRead {
    /// The key's usage (none if it was never charged).
    pub total: Option<UsageTotal>,
    /// The owner's served total, when it was asked for.
    pub owner_served: Option<Usdc>,
    /// The epochs the read raised: the key's, and the owner's when its total was read.
    pub epoch: CounterEpoch,
    /// The key's idempotency keys whose charges stand.
    pub idempotency: Vec<LiveIdempotency>,
}

/// Most rows one statement writes: under the databases' limits on bound parameters.
const ROWS_PER_STATEMENT: usize = 256;

/// `($first, …), (…)`: `rows` tuples of `columns` placeholders each.
fn values(rows: usize, columns: usize) -> String {
    (0..rows).map(|row| format!("({})", placeholders(row * columns + 1, columns))).collect::<Vec<_>>().join(", ")
}

/// `$first, $first+1, …`: `count` placeholders.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count).map(|n| format!("${n}")).collect::<Vec<_>>().join(", ")
}

/// A row [`insert_rows`] inserted.
struct InsertedRow {
    void_of: Option<B256>,
}

/// Adds `sign` × each entry's amount to its key's served total (a void counts negative), its
/// calls likewise, and moves `last_at`, in one statement per chunk (one per key made a batch
/// spread over many keys cost a round trip each: 1,000 keys halved the gateway's throughput);
/// a key with no row gets one. Returns each key's counters' epoch, read under the row's lock.
async fn add_to_totals<'a>(
    tx: &mut sqlx::AnyConnection,
    entries: impl Iterator<Item = &'a UsageEntry>,
    sign: i64,
) -> Result<std::collections::HashMap<Address, u64>> {
    // Per key: owner, served delta, calls delta, latest time.
    let mut per_key: std::collections::BTreeMap<Address, (Address, i64, i64, u64)> = std::collections::BTreeMap::new();
    for entry in entries {
        let amount = units(entry.amount)?;
        let (delta, calls) = match entry.kind {
            UsageKind::Charge => (amount, 1),
            UsageKind::Void => (-amount, -1),
        };
        let slot = per_key.entry(entry.session_key).or_insert((entry.owner, 0, 0, entry.at));
        slot.1 += sign * delta;
        slot.2 += sign * calls;
        slot.3 = slot.3.max(entry.at);
    }
    let per_key: Vec<_> = per_key.into_iter().collect();
    let mut epochs = std::collections::HashMap::with_capacity(per_key.len());
    for chunk in per_key.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO key_usage (session_key, owner, served, calls, last_at) VALUES {} \
             ON CONFLICT (session_key) DO UPDATE SET served = key_usage.served + excluded.served, \
             calls = key_usage.calls + excluded.calls, last_at = excluded.last_at RETURNING session_key, epoch",
            values(chunk.len(), 5)
        );
        let mut query = sqlx::query(&sql);
        for (key, (owner, delta, calls, at)) in chunk {
            query = query.bind(hex(*key)).bind(hex(*owner)).bind(*delta).bind(*calls).bind(secs(*at)?);
        }
        for row in query.fetch_all(&mut *tx).await? {
            let key = address(&row.try_get::<String, _>("session_key")?, "session_key")?;
            epochs.insert(key, get_u64(&row, "epoch")?);
        }
    }
    Ok(epochs)
}

/// Inserts `entries` into the ledger (one statement per chunk: one round trip, not one per
/// call); returns the rows inserted (a void of a charge voided already inserts nothing).
async fn insert_rows(tx: &mut sqlx::AnyConnection, entries: &[&UsageEntry]) -> Result<Vec<InsertedRow>> {
    const COLUMNS: usize = 11;
    let mut inserted = Vec::with_capacity(entries.len());
    for chunk in entries.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO usage_ledger (at, session_key, owner, kind, amount, route, request_id, voucher, \
             signature, idempotency, void_of) VALUES {} ON CONFLICT DO NOTHING \
             RETURNING void_of",
            values(chunk.len(), COLUMNS)
        );
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
            let void_of: Option<String> = row.try_get("void_of")?;
            let void_of = void_of
                .map(|id| B256::from_str(&id).map_err(|_| Error::Corrupt { column: "void_of", value: id }))
                .transpose()?;
            inserted.push(InsertedRow { void_of });
        }
    }
    Ok(inserted)
}

async fn live_idempotency_in(
    conn: &mut sqlx::AnyConnection,
    key: Option<Address>,
    since: u64,
) -> Result<Vec<LiveIdempotency>> {
    let rows = sqlx::query(
        "SELECT session_key, idempotency, MAX(at) AS charged_at FROM usage_ledger \
         WHERE idempotency IS NOT NULL AND at >= $1 AND ($2 = '' OR session_key = $2) \
         GROUP BY session_key, idempotency \
         HAVING SUM(CASE WHEN kind = 'charge' THEN 1 ELSE -1 END) > 0",
    )
    .bind(secs(since)?)
    .bind(key.map(hex).unwrap_or_default())
    .fetch_all(&mut *conn)
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

async fn owner_served_in(conn: &mut sqlx::AnyConnection, owner: Address) -> Result<Usdc> {
    let row = sqlx::query(
        "SELECT CAST(COALESCE(SUM(CASE WHEN served > 0 THEN served ELSE 0 END), 0) AS BIGINT) AS served \
         FROM key_usage WHERE owner = $1",
    )
    .bind(hex(owner))
    .fetch_one(&mut *conn)
    .await?;
    Ok(Usdc::from_base_units(get_u64(&row, "served")?))
}

async fn totals_in(conn: &mut sqlx::AnyConnection, key: Option<Address>) -> Result<Vec<UsageTotal>> {
    let rows = sqlx::query(
        "SELECT session_key, owner, \
         CAST(SUM(CASE WHEN kind = 'charge' THEN amount ELSE 0 END) AS BIGINT) AS charged, \
         CAST(SUM(CASE WHEN kind = 'void' THEN amount ELSE 0 END) AS BIGINT) AS voided, \
         MAX(voucher) AS best FROM usage_ledger WHERE ($1 = '' OR session_key = $1) \
         GROUP BY session_key, owner ORDER BY session_key",
    )
    .bind(key.map(hex).unwrap_or_default())
    .fetch_all(&mut *conn)
    .await?;
    let mut totals = Vec::with_capacity(rows.len());
    for row in &rows {
        let key: String = row.try_get("session_key")?;
        let best: String = row.try_get("best")?;
        let signature: Option<String> = sqlx::query(
            "SELECT signature FROM usage_ledger WHERE session_key = $1 AND voucher = $2 AND signature <> '' LIMIT 1",
        )
        .bind(&key)
        .bind(&best)
        .fetch_optional(&mut *conn)
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
