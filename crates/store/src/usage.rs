//! The usage ledger: the gateway's charges and voids, appended in group commits, and the
//! per-key served totals, best vouchers and live idempotency keys read back from it.

use std::str::FromStr;

use opentab_core::{Address, B256, U256, Usdc};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::rows::{KeyUsage, LiveIdempotency, Recorded, UsageEntry, UsageKind, UsageTotal};
use crate::store::{address, get_u64, hex, opt_u64, secs, units};
use crate::{Error, Result, Store};

impl Store {
    /// Appends one charge or void to the usage ledger and moves the key's served total, in one
    /// transaction committed when this returns.
    pub async fn record_usage(&self, entry: &UsageEntry) -> Result<Recorded> {
        let outcome = self.record_usage_batch(std::slice::from_ref(entry)).await?;
        Ok(outcome.first().copied().unwrap_or(Recorded::Held))
    }

    /// Appends charges and voids to the usage ledger and moves their keys' served totals, all
    /// in one transaction committed when this returns (the gateway's group commit: one disk
    /// flush for every call that arrived while the previous batch was committing). What became
    /// of each entry, in order: a charge whose key is frozen or revoked when the batch commits
    /// is refused ([`Recorded::KeyStopped`]), whatever a gateway's cache believed, so a freeze
    /// committed on any node stops every call whose row commits after it. Voids are always held.
    pub async fn record_usage_batch(&self, entries: &[UsageEntry]) -> Result<Vec<Recorded>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        // One statement for the whole batch (one round trip, not one per call), in chunks that
        // stay under the databases' limits on bound parameters.
        const COLUMNS: usize = 11;
        const ROWS_PER_STATEMENT: usize = 256;
        let mut tx = self.pool.begin().await?;
        // Per key: the served delta and the latest time of the rows actually inserted (a void
        // recorded again, after a retry whose first answer was lost, inserts nothing).
        let mut per_key: std::collections::BTreeMap<Address, (Address, i64, i64, u64)> =
            std::collections::BTreeMap::new();
        // (id, key, owner, is a void, amount, at) of each row inserted.
        let mut inserted: Vec<(i64, Address, Address, bool, i64, u64)> = Vec::with_capacity(entries.len());
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
            sql.push_str(" ON CONFLICT DO NOTHING RETURNING id, session_key, owner, kind, amount, at");
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
                let id: i64 = row.try_get("id")?;
                let key = address(&row.try_get::<String, _>("session_key")?, "session_key")?;
                let owner = address(&row.try_get::<String, _>("owner")?, "owner")?;
                let amount: i64 = row.try_get("amount")?;
                let void = row.try_get::<String, _>("kind")? == "void";
                inserted.push((id, key, owner, void, amount, get_u64(&row, "at")?));
            }
        }
        let stopped = self.stopped_keys(&mut tx, inserted.iter().filter(|row| !row.3).map(|row| row.1)).await?;
        let refused: Vec<i64> =
            inserted.iter().filter(|row| !row.3 && stopped.contains(&row.1)).map(|row| row.0).collect();
        for chunk in refused.chunks(ROWS_PER_STATEMENT) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|n| format!("${n}")).collect();
            let sql = format!("DELETE FROM usage_ledger WHERE id IN ({})", placeholders.join(", "));
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(*id);
            }
            query.execute(&mut *tx).await?;
        }
        for (_, key, owner, void, amount, at) in inserted {
            if !void && stopped.contains(&key) {
                continue;
            }
            let (delta, calls) = if void { (-amount, -1) } else { (amount, 1) };
            let slot = per_key.entry(key).or_insert((owner, 0, 0, at));
            slot.1 += delta;
            slot.2 += calls;
            slot.3 = slot.3.max(at);
        }
        // Every key's totals in one statement per chunk (one per key made a batch spread over
        // many keys cost a round trip each: 1,000 keys halved the gateway's throughput).
        let per_key: Vec<_> = per_key.into_iter().collect();
        for chunk in per_key.chunks(ROWS_PER_STATEMENT) {
            let rows: Vec<String> = (0..chunk.len())
                .map(|row| {
                    let first = row * 5 + 1;
                    format!("(${}, ${}, ${}, ${}, ${})", first, first + 1, first + 2, first + 3, first + 4)
                })
                .collect();
            let sql = format!(
                "INSERT INTO key_usage (session_key, owner, served, calls, last_at) VALUES {} \
                 ON CONFLICT (session_key) DO UPDATE SET served = key_usage.served + excluded.served, \
                 calls = key_usage.calls + excluded.calls, last_at = excluded.last_at",
                rows.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for (key, (owner, delta, calls, at)) in chunk {
                query = query.bind(hex(*key)).bind(hex(*owner)).bind(*delta).bind(*calls).bind(secs(*at)?);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(entries
            .iter()
            .map(|entry| match entry.kind {
                UsageKind::Charge if stopped.contains(&entry.session_key) => Recorded::KeyStopped,
                _ => Recorded::Held,
            })
            .collect())
    }

    /// Which of `keys` are frozen (off-chain or on-chain) or revoked, read inside `tx` after its
    /// rows were written. On PostgreSQL the rows are share-locked: a freeze committed before is
    /// seen, one under way is waited for and seen, one after waits for this commit (the charge
    /// came first). On SQLite the batch's writes already hold the database's one write lock.
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
        for chunk in keys.chunks(256) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|n| format!("${n}")).collect();
            let sql = format!(
                "SELECT address FROM session_keys WHERE address IN ({}) \
                 AND (frozen_offchain_at IS NOT NULL OR frozen_at IS NOT NULL OR revoked_at IS NOT NULL){lock}",
                placeholders.join(", ")
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
}

fn key_usage(row: &AnyRow) -> Result<KeyUsage> {
    // A stray void can take the sum below zero; served never is.
    let served = u64::try_from(row.try_get::<i64, _>("served")?).unwrap_or(0);
    Ok(KeyUsage { served: Usdc::from_base_units(served), last_at: opt_u64(row, "last_at")? })
}
