//! Tabs: the escrow each owner holds per payee, as folded from confirmed events, and what the
//! gateway may still charge against it.

use opentab_core::{Address, Tab, Usdc};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::store::{address, get_u64, hex, opt_u64};
use crate::{Result, Store};

impl Store {
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

    /// [`Store::gateway_budget`] of every owner with a tab at `payee`, in one read (a gateway
    /// loads them all when it starts). Owners without a tab row have nothing to spend.
    pub async fn gateway_budgets(&self, payee: Address) -> Result<Vec<(Address, Tab, Usdc)>> {
        let rows = sqlx::query(
            "SELECT t.owner, t.balance_units, t.withdrawal_units, t.withdrawal_grace_ends_at, \
             (SELECT CAST(COALESCE(SUM(k.settled_units), 0) AS BIGINT) FROM session_keys k \
              WHERE k.owner = t.owner AND k.payee = t.payee) AS settled \
             FROM tabs t WHERE t.payee = $1",
        )
        .bind(hex(payee))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let owner = address(&row.try_get::<String, _>("owner")?, "owner")?;
                Ok((owner, tab_of_row(row)?, Usdc::from_base_units(get_u64(row, "settled")?)))
            })
            .collect()
    }
}

fn tab_of_row(row: &AnyRow) -> Result<Tab> {
    let withdrawal = match (opt_u64(row, "withdrawal_units")?, opt_u64(row, "withdrawal_grace_ends_at")?) {
        (Some(amount), Some(at)) => Some((Usdc::from_base_units(amount), at)),
        _ => None,
    };
    Ok(Tab { balance: Usdc::from_base_units(get_u64(row, "balance_units")?), pending_withdrawal: withdrawal })
}
