//! A session key's state as the contract holds it, and what that state allows at a moment.

use alloy_primitives::Address;
use serde::{Deserialize, Serialize};

use crate::Usdc;

/// The grace window opentab deploys with: vouchers stay settleable for a day after a key stops.
pub const GRACE_DEFAULT_SECS: u64 = 24 * 60 * 60;

/// A session key mirrored from `SessionKeyValidator` (times are unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionKey {
    /// The key's address (the agent signs vouchers with it).
    pub address: Address,
    /// Whose tab with the payee pays.
    pub owner: Address,
    /// The one address the key may pay.
    pub payee: Address,
    /// The most the key may ever spend.
    pub limit: Usdc,
    /// Nothing is served before this time.
    pub valid_after: u64,
    /// Nothing is served from this time on.
    pub valid_until: u64,
    /// When the key was frozen, if it is frozen now.
    pub frozen_at: Option<u64>,
    /// When the key was revoked, if it was.
    pub revoked_at: Option<u64>,
    /// What has been paid out on-chain for this key so far.
    pub settled: Usdc,
}

/// Whether a key may be served now, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    /// Registered, inside its validity window, neither frozen nor revoked.
    Active,
    /// Registered, but `validAfter` has not come yet.
    NotYetValid,
    /// Frozen by its owner or the owner's guardian; can be unfrozen.
    Frozen,
    /// Revoked for good.
    Revoked,
    /// `validUntil` has passed.
    Expired,
}

impl SessionKey {
    /// The key's status at `now`. Revocation outranks a freeze, which outranks expiry.
    pub fn status(&self, now: u64) -> KeyStatus {
        if self.revoked_at.is_some() {
            KeyStatus::Revoked
        } else if self.frozen_at.is_some() {
            KeyStatus::Frozen
        } else if now >= self.valid_until {
            KeyStatus::Expired
        } else if now < self.valid_after {
            KeyStatus::NotYetValid
        } else {
            KeyStatus::Active
        }
    }

    /// When the key stopped being servable (the earliest of freeze, revoke and expiry), as
    /// the contract computes it.
    pub fn stopped_at(&self) -> u64 {
        [self.frozen_at, self.revoked_at].into_iter().flatten().fold(self.valid_until, u64::min)
    }

    /// Whether the contract would accept a settlement at `now` with grace window `grace`:
    /// after `validAfter`, and no later than `grace` seconds after the key stopped.
    pub fn settleable_at(&self, now: u64, grace: u64) -> bool {
        now >= self.valid_after && now <= self.stopped_at().saturating_add(grace)
    }

    /// How much of the limit is still unspent, given `served` so far.
    pub fn remaining(&self, served: Usdc) -> Usdc {
        self.limit.saturating_sub(served)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SessionKey {
        SessionKey {
            address: Address::repeat_byte(1),
            owner: Address::repeat_byte(2),
            payee: Address::repeat_byte(3),
            limit: Usdc::from_base_units(100),
            valid_after: 100,
            valid_until: 1_000,
            frozen_at: None,
            revoked_at: None,
            settled: Usdc::ZERO,
        }
    }

    #[test]
    fn status_follows_the_window() {
        let k = key();
        assert_eq!(k.status(99), KeyStatus::NotYetValid);
        assert_eq!(k.status(100), KeyStatus::Active);
        assert_eq!(k.status(999), KeyStatus::Active);
        assert_eq!(k.status(1_000), KeyStatus::Expired);
    }

    #[test]
    fn revoked_outranks_frozen_outranks_expired() {
        let mut k = key();
        k.frozen_at = Some(500);
        assert_eq!(k.status(2_000), KeyStatus::Frozen);
        k.revoked_at = Some(600);
        assert_eq!(k.status(550), KeyStatus::Revoked);
    }

    #[test]
    fn settlement_window_closes_grace_after_the_earliest_stop() {
        let mut k = key();
        assert!(!k.settleable_at(99, 50), "before validAfter nothing was served");
        assert!(k.settleable_at(1_050, 50));
        assert!(!k.settleable_at(1_051, 50));
        k.frozen_at = Some(400);
        k.revoked_at = Some(700);
        assert_eq!(k.stopped_at(), 400);
        assert!(k.settleable_at(450, 50));
        assert!(!k.settleable_at(451, 50));
    }

    #[test]
    fn remaining_never_goes_negative() {
        let k = key();
        assert_eq!(k.remaining(Usdc::from_base_units(30)), Usdc::from_base_units(70));
        assert_eq!(k.remaining(Usdc::from_base_units(300)), Usdc::ZERO);
    }
}
