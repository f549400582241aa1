//! The charge rule of the HTTP 402 gateway (DESIGN §3), as a pure function over counters.
//!
//! Per key the gateway keeps `served` (everything charged so far) and `best` (the highest
//! voucher seen, with its signature). Per owner it keeps `owner_served`, the sum of `served`
//! over the owner's keys that pay this gateway's payee (a gateway serves one payee, so these are
//! all the keys drawing on the owner's tab with it). A call costing `price` is accepted iff
//!
//! - `max(best, voucher) >= served + price`: someone signed for everything served, this call
//!   included (vouchers may arrive out of order: an older, lower one is fine while `best`
//!   covers the call; a replayed one buys nothing because `served` has moved on);
//! - `served + price <= limit`;
//! - the owner's tab with the payee covers the price: `tab_available − unsettled >= price`,
//!   where `tab_available` is the tab less its pending withdrawal and `unsettled =
//!   owner_served − owner_settled`.
//!
//! `owner_settled` comes from the chain with the tab, in one consistent read: a settlement (a
//! partial one too) lowers the tab and raises `owner_settled` by the same amount, so the
//! counters are never
//! touched after a settlement (DESIGN §4: never `SET 0`; calls served meanwhile survive).
//!
//! The counter stores (in-process, Redis) run exactly this inside their atomic section.

use alloy_primitives::{B256, U256};

use crate::{Signature, Usdc};

/// A key's gateway counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyCounters {
    /// Everything charged to the key so far.
    pub served: Usdc,
    /// The highest voucher amount seen (vouchers are uint256 on-chain).
    pub best: U256,
    /// The signature of that voucher.
    pub best_signature: Option<Signature>,
}

/// What a charge needs besides the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChargeRequest {
    /// The route's price.
    pub price: Usdc,
    /// The voucher's cumulative amount.
    pub voucher: U256,
    /// The voucher's (already verified) signature.
    pub signature: Signature,
    /// The key's spend limit.
    pub limit: Usdc,
    /// The owner's tab with this payee, less its pending withdrawal.
    pub tab_available: Usdc,
    /// What the chain has settled across the owner's keys with this payee.
    pub owner_settled: Usdc,
    /// The request's idempotency key (hashed with the session key), if it sent one: the counter
    /// stores refuse a second charge under it with [`ChargeRefused::DuplicatePayment`] until
    /// the first is voided. [`charge`] itself does not look at it.
    pub idempotency: Option<B256>,
}

impl ChargeRequest {
    /// What the owner may have served in all: `tab_available + owner_settled`.
    pub fn owner_budget(&self) -> Usdc {
        self.tab_available.saturating_add(self.owner_settled)
    }
}

/// An accepted charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charged {
    /// What this call cost.
    pub charged: Usdc,
    /// The key's `served` after it.
    pub served: Usdc,
    /// Limit left after it.
    pub remaining: Usdc,
    /// The counters it was taken on, where a store can lose them and rebuild them from the
    /// ledger while serving (Redis); `None` where they are only rebuilt before serving.
    pub epoch: Option<CounterEpoch>,
    /// The key's charges in the last minute, this one included, where the store counts them
    /// for every gateway sharing it (Redis): the rate rule sees a key spread over many nodes
    /// whole. `None` where one gateway sees all its calls (it counts them itself).
    pub recent_calls: Option<u32>,
}

/// Which rebuild of a key's counters, and of its owner's total, a charge was taken on.
///
/// A counter store that lost its counters rebuilds them from the durable ledger while other
/// gateways are still committing charges they took on the lost ones: such a charge, committed
/// after the rebuild read the ledger, would be in neither count. So every rebuild raises the
/// epochs in the ledger's database as it reads, and the ledger refuses a charge taken on an
/// older epoch; a void or an undo changes only counters of the epoch that holds the charge
/// (a rebuild since then counted from the ledger already).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CounterEpoch {
    /// Rebuilds of the key's counters.
    pub key: u64,
    /// Rebuilds of the owner's served total.
    pub owner: u64,
}

/// Why a charge was refused; nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChargeRefused {
    /// No voucher covers `served + price`.
    #[error("the voucher covers {signed} base units but {needed} are due; sign a higher cumulative amount")]
    VoucherTooLow {
        /// What must be signed at least.
        needed: Usdc,
        /// The highest amount signed so far.
        signed: U256,
    },
    /// The call would take the key past its limit.
    #[error("the call would bring the key to {needed} base units, past its limit of {limit}")]
    LimitExceeded {
        /// `served + price`.
        needed: Usdc,
        /// The key's limit.
        limit: Usdc,
    },
    /// The request's idempotency key was charged already (and not voided): a retry of a call
    /// that was paid for. Only the counter stores answer this.
    #[error("this request's idempotency key was charged already; nothing was charged again")]
    DuplicatePayment,
    /// The owner's tab with the payee cannot pay for it.
    #[error("the owner's tab with this payee has {available} base units free, {needed} are needed")]
    InsufficientFunds {
        /// Tab available less what is served and unsettled.
        available: Usdc,
        /// The price.
        needed: Usdc,
    },
}

/// Whether a usage-ledger row charged a call or voided a charge (the gateway records them, the
/// store keeps them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageKind {
    /// A call was charged.
    Charge,
    /// A charge was voided (the handler answered an error).
    Void,
}

/// Applies the charge rule; on success `key.served` and `owner_served` grow by the price
/// and `best` rises to the voucher if it is higher. On refusal nothing changes.
pub fn charge(key: &mut KeyCounters, owner_served: &mut Usdc, req: &ChargeRequest) -> Result<Charged, ChargeRefused> {
    let overflow = ChargeRefused::LimitExceeded { needed: Usdc::from_base_units(u64::MAX), limit: req.limit };
    let needed = key.served.checked_add(req.price).map_err(|_| overflow)?;
    let best = key.best.max(req.voucher);
    if best < needed.to_u256() {
        return Err(ChargeRefused::VoucherTooLow { needed, signed: best });
    }
    if needed > req.limit {
        return Err(ChargeRefused::LimitExceeded { needed, limit: req.limit });
    }
    let free = req.owner_budget().saturating_sub(*owner_served);
    if free < req.price {
        return Err(ChargeRefused::InsufficientFunds { available: free, needed: req.price });
    }
    key.served = needed;
    if req.voucher > key.best || (key.best_signature.is_none() && req.voucher == key.best) {
        key.best = req.voucher;
        key.best_signature = Some(req.signature);
    }
    *owner_served = owner_served.checked_add(req.price).map_err(|_| overflow)?;
    Ok(Charged {
        charged: req.price,
        served: needed,
        remaining: req.limit.saturating_sub(needed),
        epoch: None,
        recent_calls: None,
    })
}

/// Undoes a charge of `price` (the handler answered an error: the user never pays for one).
/// `best` stays: a signed promise does not shrink.
pub fn void(key: &mut KeyCounters, owner_served: &mut Usdc, price: Usdc) {
    key.served = key.served.saturating_sub(price);
    *owner_served = owner_served.saturating_sub(price);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(n: u8) -> Signature {
        let mut bytes = [n; 65];
        bytes[64] = 27;
        Signature::from_slice(&bytes).unwrap_or_else(|_| unreachable!())
    }

    fn usdc(units: u64) -> Usdc {
        Usdc::from_base_units(units)
    }

    fn req(price: u64, voucher: u64) -> ChargeRequest {
        ChargeRequest {
            price: usdc(price),
            voucher: U256::from(voucher),
            signature: sig(voucher as u8),
            limit: usdc(1_000),
            tab_available: usdc(10_000),
            owner_settled: Usdc::ZERO,
            idempotency: None,
        }
    }

    #[test]
    fn each_call_needs_a_voucher_covering_everything_served() {
        let (mut key, mut owed) = (KeyCounters::default(), Usdc::ZERO);
        assert_eq!(charge(&mut key, &mut owed, &req(10, 10)).map(|c| c.served), Ok(usdc(10)));
        assert_eq!(charge(&mut key, &mut owed, &req(10, 20)).map(|c| c.served), Ok(usdc(20)));
        // Replaying the 20 voucher buys nothing more.
        assert_eq!(
            charge(&mut key, &mut owed, &req(10, 20)),
            Err(ChargeRefused::VoucherTooLow { needed: usdc(30), signed: U256::from(20) })
        );
        assert_eq!((key.served, owed), (usdc(20), usdc(20)), "a refusal changes nothing");
    }

    #[test]
    fn out_of_order_vouchers_are_fine_while_best_covers_the_call() {
        let (mut key, mut owed) = (KeyCounters::default(), Usdc::ZERO);
        // The 20 voucher arrives first, the 10 voucher second: both calls are covered by 20.
        assert!(charge(&mut key, &mut owed, &req(10, 20)).is_ok());
        assert!(charge(&mut key, &mut owed, &req(10, 10)).is_ok());
        assert_eq!((key.served, key.best), (usdc(20), U256::from(20)));
        assert_eq!(key.best_signature, Some(sig(20)), "the best voucher's signature is kept for settlement");
        assert!(charge(&mut key, &mut owed, &req(10, 10)).is_err(), "a third call needs a new voucher");
    }

    #[test]
    fn the_limit_and_the_tab_bound_every_charge() {
        let (mut key, mut owed) = (KeyCounters::default(), Usdc::ZERO);
        let mut r = req(600, 2_000);
        assert!(charge(&mut key, &mut owed, &r).is_ok());
        assert_eq!(
            charge(&mut key, &mut owed, &r),
            Err(ChargeRefused::LimitExceeded { needed: usdc(1_200), limit: usdc(1_000) })
        );
        // Another key of the same owner has 9_500 unsettled: only 500 of 10_000 are free.
        let mut other = KeyCounters::default();
        owed = usdc(9_500);
        r.price = usdc(501);
        assert_eq!(
            charge(&mut other, &mut owed, &r),
            Err(ChargeRefused::InsufficientFunds { available: usdc(500), needed: usdc(501) })
        );
        r.price = usdc(500);
        assert_eq!(charge(&mut other, &mut owed, &r).map(|c| c.remaining), Ok(usdc(500)));
        assert_eq!(owed, usdc(10_000));
    }

    #[test]
    fn the_limit_and_the_tab_are_exact_to_the_base_unit() {
        // Exactly the limit is accepted; one base unit past it is refused.
        let (mut key, mut owed) = (KeyCounters::default(), Usdc::ZERO);
        assert!(charge(&mut key, &mut owed, &req(999, 1_000)).is_ok());
        assert_eq!(charge(&mut key, &mut owed, &req(1, 1_000)).map(|c| c.remaining), Ok(Usdc::ZERO));
        assert_eq!(
            charge(&mut key, &mut owed, &req(1, 1_001)),
            Err(ChargeRefused::LimitExceeded { needed: usdc(1_001), limit: usdc(1_000) })
        );
        // Exactly what the tab has free is accepted; one base unit more is refused.
        let (mut key, mut owed) = (KeyCounters::default(), usdc(9_990));
        assert_eq!(
            charge(&mut key, &mut owed, &req(11, 11)),
            Err(ChargeRefused::InsufficientFunds { available: usdc(10), needed: usdc(11) })
        );
        assert!(charge(&mut key, &mut owed, &req(10, 10)).is_ok());
        assert_eq!(owed, usdc(10_000));
    }

    #[test]
    fn the_first_signature_of_the_best_voucher_is_kept() {
        let (mut key, mut owed) = (KeyCounters::default(), Usdc::ZERO);
        let first = ChargeRequest { signature: sig(1), ..req(10, 20) };
        assert!(charge(&mut key, &mut owed, &first).is_ok());
        // The same amount again with another signature: the first one stays.
        let again = ChargeRequest { signature: sig(2), ..req(10, 20) };
        assert!(charge(&mut key, &mut owed, &again).is_ok());
        assert_eq!((key.best, key.best_signature), (U256::from(20), Some(sig(1))));
    }

    #[test]
    fn counters_restored_without_a_signature_take_the_next_equal_voucher_and_never_a_lower_one() {
        // Rebuilt counters may know the best amount but not its signature yet.
        let mut key = KeyCounters { served: usdc(10), best: U256::from(30), best_signature: None };
        let mut owed = usdc(10);
        let lower = ChargeRequest { signature: sig(2), ..req(10, 25) };
        assert!(charge(&mut key, &mut owed, &lower).is_ok());
        assert_eq!((key.best, key.best_signature), (U256::from(30), None), "a lower voucher never becomes best");
        let equal = ChargeRequest { signature: sig(3), ..req(10, 30) };
        assert!(charge(&mut key, &mut owed, &equal).is_ok());
        assert_eq!(
            (key.best, key.best_signature),
            (U256::from(30), Some(sig(3))),
            "the equal one brings its signature"
        );
    }

    #[test]
    fn a_settlement_frees_nothing_and_loses_nothing() {
        // 10_000 in the tab, 10_000 served: nothing free.
        let (mut key, mut owed) = (KeyCounters::default(), usdc(10_000));
        let mut r = req(10, 10_010);
        assert!(matches!(charge(&mut key, &mut owed, &r), Err(ChargeRefused::InsufficientFunds { .. })));
        // 4_000 of it settles: the tab drops by 4_000 and the owner's settled rises by 4_000,
        // so still nothing is free; the counters were not touched.
        (r.tab_available, r.owner_settled) = (usdc(6_000), usdc(4_000));
        assert!(matches!(charge(&mut key, &mut owed, &r), Err(ChargeRefused::InsufficientFunds { .. })));
        // A new deposit of 10 frees exactly 10.
        r.tab_available = usdc(6_010);
        assert!(charge(&mut key, &mut owed, &r).is_ok());
        assert_eq!(owed, usdc(10_010));
    }

    #[test]
    fn a_void_returns_the_price_but_keeps_the_best_voucher() {
        let (mut key, mut owed) = (KeyCounters::default(), Usdc::ZERO);
        assert!(charge(&mut key, &mut owed, &req(10, 10)).is_ok());
        void(&mut key, &mut owed, usdc(10));
        assert_eq!((key.served, owed, key.best), (Usdc::ZERO, Usdc::ZERO, U256::from(10)));
        // The same voucher pays for the retried call.
        assert!(charge(&mut key, &mut owed, &req(10, 10)).is_ok());
    }

    #[test]
    fn in_any_order_nothing_is_served_beyond_the_best_voucher_or_the_limit() {
        // A deterministic pseudo-random walk of charges, voids and vouchers.
        let mut seed = 0x5eed_u64;
        let mut next = move |n: u64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        let (mut key, mut owed) = (KeyCounters::default(), Usdc::ZERO);
        for _ in 0..10_000 {
            let price = next(50) + 1;
            let voucher = next(1_200);
            let before = key.clone();
            let outcome = charge(&mut key, &mut owed, &req(price, voucher));
            assert!(key.served.to_u256() <= key.best, "served {} beyond best {}", key.served, key.best);
            assert!(key.served <= usdc(1_000));
            assert!(key.best >= before.best, "best never goes down");
            if outcome.is_err() {
                assert_eq!(key, before, "a refusal changes nothing");
            } else if next(10) == 0 {
                void(&mut key, &mut owed, usdc(price));
            }
            assert_eq!(owed, key.served, "one key: the owner's served equals the key's");
        }
    }
}
