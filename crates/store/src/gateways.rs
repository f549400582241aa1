//! Which gateways charge on this database. Each running gateway keeps a row fresh; one whose
//! counters are its own (in-process) may only run alone for its payee, and gateways with shared
//! counters (Redis) only with each other. Two sets of counters would disagree on what was
//! served, and each let a key spend its whole limit.

use opentab_core::Address;
use sqlx::Row;

use crate::store::{get_u64, hex, secs};
use crate::{Result, Store};

/// A gateway announcing itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayClaim {
    /// Unique per running gateway.
    pub id: String,
    /// The payee it charges for.
    pub payee: Address,
    /// Its counters are shared with other gateways (Redis), not its own.
    pub shared: bool,
    /// What it is, for the message another gateway prints (`opentab dev at http://…`).
    pub description: String,
}

/// A live gateway that stands in the way of another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveGateway {
    /// Its counters are shared.
    pub shared: bool,
    /// What it is.
    pub description: String,
    /// When it last said it runs (unix seconds).
    pub seen_at: u64,
}

impl Store {
    /// Records `claim` as running at `now`, unless a gateway seen since `live_since` for the
    /// same payee cannot run beside it: then nothing is recorded and those gateways are returned.
    pub async fn claim_gateway(
        &self,
        claim: &GatewayClaim,
        now: u64,
        live_since: u64,
    ) -> Result<std::result::Result<(), Vec<LiveGateway>>> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT shared, description, seen_at FROM gateways WHERE payee = $1 AND seen_at >= $2 AND id <> $3 \
             ORDER BY seen_at DESC",
        )
        .bind(hex(claim.payee))
        .bind(secs(live_since)?)
        .bind(&claim.id)
        .fetch_all(&mut *tx)
        .await?;
        let mut live = Vec::with_capacity(rows.len());
        for row in &rows {
            live.push(LiveGateway {
                shared: get_u64(row, "shared")? == 1,
                description: row.try_get("description")?,
                seen_at: get_u64(row, "seen_at")?,
            });
        }
        // Alone is always fine; otherwise everyone's counters must be shared.
        let blocking: Vec<LiveGateway> = live.into_iter().filter(|other| !(claim.shared && other.shared)).collect();
        if !blocking.is_empty() {
            return Ok(Err(blocking));
        }
        sqlx::query(
            "INSERT INTO gateways (id, payee, shared, description, seen_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at",
        )
        .bind(&claim.id)
        .bind(hex(claim.payee))
        .bind(i64::from(claim.shared))
        .bind(&claim.description)
        .bind(secs(now)?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// The gateway `id` still runs at `now`.
    pub async fn gateway_seen(&self, id: &str, now: u64) -> Result<()> {
        sqlx::query("UPDATE gateways SET seen_at = $2 WHERE id = $1")
            .bind(id)
            .bind(secs(now)?)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The gateway `id` stopped.
    pub async fn release_gateway(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM gateways WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
    }
}
