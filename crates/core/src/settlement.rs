//! When a key is settled, and how failed settlements are retried (DESIGN §4).
//!
//! What a key owes is `served − settled`. It is settled once that reaches
//! [`SETTLEMENT_THRESHOLD`], or at once, whatever the amount, when the key stops (frozen,
//! revoked, expired) or its owner asks to withdraw: then the payee must claim before the grace
//! window closes or the tab empties.
//!
//! A voucher is cumulative, so settling one moves `voucher − settled`. The voucher settled is
//! the highest signed one **not above `served`**: a voided call is never paid for, even though
//! its voucher was signed.

use core::time::Duration;

use crate::{KeyStatus, SETTLEMENT_THRESHOLD, SessionKey, Usdc};

/// Retries after the first failed attempt; then the settlement is dead-lettered.
pub const MAX_RETRIES: u32 = 3;

/// Why a key is being settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleReason {
    /// `served − settled` reached the threshold.
    Threshold,
    /// The key was frozen (on-chain, or off-chain by its owner or the rule engine).
    Frozen,
    /// The key was revoked.
    Revoked,
    /// The key's validity ended.
    Expired,
    /// The owner asked to withdraw from the tab.
    Withdrawal,
}

impl SettleReason {
    /// The stored / displayed name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Threshold => "threshold",
            Self::Frozen => "frozen",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::Withdrawal => "withdrawal",
        }
    }
}

impl core::str::FromStr for SettleReason {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        Ok(match text {
            "threshold" => Self::Threshold,
            "frozen" => Self::Frozen,
            "revoked" => Self::Revoked,
            "expired" => Self::Expired,
            "withdrawal" => Self::Withdrawal,
            _ => return Err(()),
        })
    }
}

/// What the settlement planner knows about one key.
#[derive(Debug, Clone, Copy)]
pub struct KeyOwed<'a> {
    /// The key's on-chain state.
    pub key: &'a SessionKey,
    /// Frozen off-chain ahead of the chain.
    pub frozen_offchain: bool,
    /// Everything the gateway served it (charges less voids).
    pub served: Usdc,
    /// What is settled: on-chain, or by a settlement that succeeded but is not confirmed yet.
    pub settled: Usdc,
    /// Its owner has a withdrawal pending.
    pub withdrawal_pending: bool,
}

/// Why the key should be settled now, or `None` if it can wait.
pub fn due(owed: &KeyOwed<'_>, now: u64) -> Option<SettleReason> {
    let unsettled = owed.served.saturating_sub(owed.settled);
    if unsettled == Usdc::ZERO {
        return None;
    }
    match owed.key.status(now) {
        KeyStatus::Revoked => return Some(SettleReason::Revoked),
        KeyStatus::Frozen => return Some(SettleReason::Frozen),
        KeyStatus::Expired => return Some(SettleReason::Expired),
        KeyStatus::Active | KeyStatus::NotYetValid => {}
    }
    if owed.frozen_offchain {
        Some(SettleReason::Frozen)
    } else if owed.withdrawal_pending {
        Some(SettleReason::Withdrawal)
    } else if unsettled >= SETTLEMENT_THRESHOLD {
        Some(SettleReason::Threshold)
    } else {
        None
    }
}

/// How long to wait before retry number `retry` (1-based): `base · 2^(retry−1)`, of which the
/// second half is jittered by `jitter` in `[0, 1)` so workers that failed together do not retry
/// together.
pub fn retry_delay(base: Duration, retry: u32, jitter: f64) -> Duration {
    let full = base.saturating_mul(1 << retry.saturating_sub(1).min(16));
    let half = full / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Address;

    fn key() -> SessionKey {
        SessionKey {
            address: Address::repeat_byte(1),
            owner: Address::repeat_byte(2),
            payee: Address::repeat_byte(3),
            limit: Usdc::from_base_units(100_000_000),
            valid_after: 0,
            valid_until: 1_000,
            frozen_at: None,
            revoked_at: None,
            settled: Usdc::ZERO,
        }
    }

    fn owed(key: &SessionKey, served: u64, settled: u64) -> KeyOwed<'_> {
        KeyOwed {
            key,
            frozen_offchain: false,
            served: Usdc::from_base_units(served),
            settled: Usdc::from_base_units(settled),
            withdrawal_pending: false,
        }
    }

    #[test]
    fn an_active_key_waits_for_the_threshold() {
        let k = key();
        assert_eq!(due(&owed(&k, 9_999_999, 0), 10), None);
        assert_eq!(due(&owed(&k, 10_000_000, 0), 10), Some(SettleReason::Threshold));
        assert_eq!(due(&owed(&k, 25_000_000, 16_000_000), 10), None, "only what is unsettled counts");
        assert_eq!(due(&owed(&k, 5, 5), 10), None, "nothing owed, nothing to do");
    }

    #[test]
    fn a_stopping_key_or_a_withdrawal_settles_at_once() {
        let mut k = key();
        assert_eq!(due(&owed(&k, 2_000, 0), 1_000), Some(SettleReason::Expired));
        let mut o = owed(&k, 2_000, 0);
        o.frozen_offchain = true;
        assert_eq!(due(&o, 10), Some(SettleReason::Frozen));
        o.frozen_offchain = false;
        o.withdrawal_pending = true;
        assert_eq!(due(&o, 10), Some(SettleReason::Withdrawal));
        k.frozen_at = Some(5);
        assert_eq!(due(&owed(&k, 2_000, 0), 10), Some(SettleReason::Frozen));
        k.revoked_at = Some(6);
        assert_eq!(due(&owed(&k, 2_000, 0), 10), Some(SettleReason::Revoked));
        assert_eq!(due(&owed(&k, 2_000, 2_000), 10), None);
    }

    #[test]
    fn retries_back_off_exponentially_with_bounded_jitter() {
        let base = Duration::from_secs(2);
        assert_eq!(retry_delay(base, 1, 0.0), Duration::from_secs(1));
        assert_eq!(retry_delay(base, 1, 1.0), Duration::from_secs(2));
        assert_eq!(retry_delay(base, 3, 0.0), Duration::from_secs(4));
        assert_eq!(retry_delay(base, 3, 0.5), Duration::from_secs(6));
        assert!(retry_delay(base, 1_000, 1.0) <= base * 65_536, "no overflow on absurd counts");
    }

    #[test]
    fn reasons_round_trip_through_their_names() {
        for r in [
            SettleReason::Threshold,
            SettleReason::Frozen,
            SettleReason::Revoked,
            SettleReason::Expired,
            SettleReason::Withdrawal,
        ] {
            assert_eq!(r.as_str().parse(), Ok(r));
        }
        assert_eq!("soon".parse::<SettleReason>(), Err(()));
    }
}
