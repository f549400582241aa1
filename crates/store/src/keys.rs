//! Session keys: opentab's pending registrations, reading keys back, and opentab's own marks
//! on them (off-chain freeze, deleted). Their on-chain state is folded from events in `chain`.

use opentab_core::{Address, SessionKey, Usdc};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::owners::upsert_owner;
use crate::rows::{ChainStatus, KeyRecord, NewKey};
use crate::store::{address, get_u64, hex, opt_u64, secs, units};
use crate::{Error, Result, Store};

pub(crate) const KEY_COLUMNS: &str = "address, owner, payee, limit_units, valid_after, valid_until, chain_status, frozen_at, \
     revoked_at, settled_units, frozen_offchain_at, deleted_at, created_at, updated_at";

impl Store {
    /// Stores a key opentab is registering, as pending. Refuses an address already stored.
    pub async fn insert_pending_key(&self, key: &NewKey, now: u64) -> Result<()> {
        self.insert_pending_keys(std::slice::from_ref(key), now).await
    }

    /// Stores keys opentab is registering together (a batch), as pending, in one transaction:
    /// all or none. Refuses the batch if an address is stored already, naming the first.
    pub async fn insert_pending_keys(&self, keys: &[NewKey], now: u64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let mut owners = std::collections::BTreeSet::new();
        for key in keys {
            if owners.insert(key.owner) {
                upsert_owner(&mut tx, key.owner, now).await?;
            }
            let inserted = sqlx::query(
                "INSERT INTO session_keys (address, owner, payee, limit_units, valid_after, valid_until, \
                 chain_status, settled_units, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $8) \
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
        }
        tx.commit().await?;
        Ok(())
    }

    /// Forgets a key whose registration never reached the chain. Registered keys stay.
    pub async fn delete_pending_key(&self, address: Address) -> Result<()> {
        self.delete_pending_keys(&[address]).await
    }

    /// Forgets keys whose registration never reached the chain, in one transaction.
    /// Registered keys stay.
    pub async fn delete_pending_keys(&self, addresses: &[Address]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for address in addresses {
            sqlx::query("DELETE FROM session_keys WHERE address = $1 AND chain_status = $2")
                .bind(hex(*address))
                .bind(ChainStatus::Pending.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
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

    /// Every key registered on-chain to pay `payee` (a gateway loads them all when it starts).
    pub async fn registered_keys_of_payee(&self, payee: Address) -> Result<Vec<KeyRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM session_keys WHERE payee = $1 AND chain_status = 'registered'"
        ))
        .bind(hex(payee))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_record).collect()
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
