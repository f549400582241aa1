//! Owners: the accounts that hold tabs and keys, recorded when first seen, and the guardian
//! each chose on-chain.

use opentab_core::Address;
use sqlx::{AnyConnection, Row};

use crate::store::{address, hex, secs};
use crate::{Result, Store};

impl Store {
    /// Records `owner` if new.
    pub async fn upsert_owner(&self, owner: Address, now: u64) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        upsert_owner(&mut conn, owner, now).await
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
}

pub(crate) async fn upsert_owner(conn: &mut AnyConnection, owner: Address, now: u64) -> Result<()> {
    sqlx::query("INSERT INTO owners (address, created_at) VALUES ($1, $2) ON CONFLICT (address) DO NOTHING")
        .bind(hex(owner))
        .bind(secs(now)?)
        .execute(conn)
        .await?;
    Ok(())
}
