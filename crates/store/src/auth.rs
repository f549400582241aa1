//! Sign-in: the deployment's shared server secrets, spent SIWE nonces and owner sessions.

use opentab_core::Address;
use sqlx::Row;

use crate::owners::upsert_owner;
use crate::store::{address, get_u64, hex, secs};
use crate::{Result, Store};

impl Store {
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
}
