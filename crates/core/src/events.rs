//! What the validator contract reports, as domain events, and how they fold into state.
//!
//! The chain adapter turns contract logs into [`ValidatorEvent`]s; storage keeps them in order
//! and derives each key's and each owner's state by folding them with [`SessionKey::apply`] and
//! [`Escrow::apply`]. Folding from the events (rather than patching rows) is what makes a reorg
//! safe: drop the orphaned events, fold again.

use alloy_primitives::Address;
use serde::{Deserialize, Serialize};

use crate::{SessionKey, Usdc};

/// One state change of `SessionKeyValidator`, with its block time where the contract records one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ValidatorEvent {
    /// `Deposited`.
    Deposited {
        /// Whose escrow grew.
        owner: Address,
        /// By how much.
        amount: Usdc,
    },
    /// `SessionKeyRegistered`.
    Registered {
        /// The owner.
        owner: Address,
        /// The new key.
        session_key: Address,
        /// Its only payee.
        payee: Address,
        /// Its spend limit.
        limit: Usdc,
        /// Served from.
        valid_after: u64,
        /// Served until.
        valid_until: u64,
    },
    /// `SessionKeyFrozen`.
    Frozen {
        /// The owner.
        owner: Address,
        /// The key.
        session_key: Address,
        /// Who froze it (the owner, or the owner's guardian).
        by: Address,
        /// Block time of the freeze.
        at: u64,
    },
    /// `SessionKeyUnfrozen`.
    Unfrozen {
        /// The owner.
        owner: Address,
        /// The key.
        session_key: Address,
    },
    /// `SessionKeyRevoked`.
    Revoked {
        /// The owner.
        owner: Address,
        /// The key.
        session_key: Address,
        /// Block time of the revocation.
        at: u64,
    },
    /// `Settled`.
    Settled {
        /// Whose escrow paid.
        owner: Address,
        /// The key whose voucher settled.
        session_key: Address,
        /// Who was paid.
        payee: Address,
        /// Paid by this settlement.
        amount: Usdc,
        /// The voucher's cumulative amount (now the key's settled total).
        cumulative: Usdc,
    },
    /// `GuardianSet`.
    GuardianSet {
        /// The owner.
        owner: Address,
        /// The new guardian (zero: none).
        guardian: Address,
    },
    /// `WithdrawalRequested`.
    WithdrawalRequested {
        /// The owner.
        owner: Address,
        /// Requested amount.
        amount: Usdc,
        /// When it may leave.
        ready_at: u64,
    },
    /// `WithdrawalCancelled`.
    WithdrawalCancelled {
        /// The owner.
        owner: Address,
    },
    /// `Withdrawn`.
    Withdrawn {
        /// The owner.
        owner: Address,
        /// What left the escrow.
        amount: Usdc,
    },
}

impl ValidatorEvent {
    /// The owner the event concerns (every event concerns exactly one).
    pub const fn owner(&self) -> Address {
        match self {
            Self::Deposited { owner, .. }
            | Self::Registered { owner, .. }
            | Self::Frozen { owner, .. }
            | Self::Unfrozen { owner, .. }
            | Self::Revoked { owner, .. }
            | Self::Settled { owner, .. }
            | Self::GuardianSet { owner, .. }
            | Self::WithdrawalRequested { owner, .. }
            | Self::WithdrawalCancelled { owner }
            | Self::Withdrawn { owner, .. } => *owner,
        }
    }

    /// The session key the event concerns, if it concerns one.
    pub const fn session_key(&self) -> Option<Address> {
        match self {
            Self::Registered { session_key, .. }
            | Self::Frozen { session_key, .. }
            | Self::Unfrozen { session_key, .. }
            | Self::Revoked { session_key, .. }
            | Self::Settled { session_key, .. } => Some(*session_key),
            _ => None,
        }
    }

    /// A short stable name (`registered`, `settled`, …) for logs, audit and webhooks.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Deposited { .. } => "deposited",
            Self::Registered { .. } => "registered",
            Self::Frozen { .. } => "frozen",
            Self::Unfrozen { .. } => "unfrozen",
            Self::Revoked { .. } => "revoked",
            Self::Settled { .. } => "settled",
            Self::GuardianSet { .. } => "guardian_set",
            Self::WithdrawalRequested { .. } => "withdrawal_requested",
            Self::WithdrawalCancelled { .. } => "withdrawal_cancelled",
            Self::Withdrawn { .. } => "withdrawn",
        }
    }
}

impl SessionKey {
    /// Folds one event into the key's state. `None` before registration; events of other keys
    /// leave it unchanged.
    pub fn apply(state: Option<Self>, event: &ValidatorEvent) -> Option<Self> {
        if let ValidatorEvent::Registered { owner, session_key, payee, limit, valid_after, valid_until } = *event {
            return Some(state.unwrap_or(Self {
                address: session_key,
                owner,
                payee,
                limit,
                valid_after,
                valid_until,
                frozen_at: None,
                revoked_at: None,
                settled: Usdc::ZERO,
            }));
        }
        let mut key = state?;
        if event.session_key() != Some(key.address) {
            return Some(key);
        }
        match *event {
            ValidatorEvent::Frozen { at, .. } => key.frozen_at = Some(at),
            ValidatorEvent::Unfrozen { .. } => key.frozen_at = None,
            ValidatorEvent::Revoked { at, .. } => key.revoked_at = Some(at),
            // The contract only ever raises `settled`; a lower value would be a stale replay.
            ValidatorEvent::Settled { cumulative, .. } => key.settled = key.settled.max(cumulative),
            _ => {}
        }
        Some(key)
    }
}

/// An owner's escrow as the contract holds it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Escrow {
    /// Held in escrow, the pending withdrawal included.
    pub balance: Usdc,
    /// The pending withdrawal, if any: amount and the unix time it may leave.
    pub pending_withdrawal: Option<(Usdc, u64)>,
    /// The guardian allowed to freeze the owner's keys.
    pub guardian: Option<Address>,
}

impl Escrow {
    /// Folds one event of this owner into the escrow. Amounts saturate rather than wrap: the
    /// contract cannot go below zero, so a saturation would only mean a missed event.
    pub fn apply(mut self, event: &ValidatorEvent) -> Self {
        match *event {
            ValidatorEvent::Deposited { amount, .. } => {
                self.balance = Usdc::from_base_units(self.balance.base_units().saturating_add(amount.base_units()));
            }
            ValidatorEvent::Settled { amount, .. } => self.balance = self.balance.saturating_sub(amount),
            ValidatorEvent::Withdrawn { amount, .. } => {
                self.balance = self.balance.saturating_sub(amount);
                self.pending_withdrawal = None;
            }
            ValidatorEvent::WithdrawalRequested { amount, ready_at, .. } => {
                self.pending_withdrawal = Some((amount, ready_at));
            }
            ValidatorEvent::WithdrawalCancelled { .. } => self.pending_withdrawal = None,
            ValidatorEvent::GuardianSet { guardian, .. } => {
                self.guardian = (guardian != Address::ZERO).then_some(guardian);
            }
            _ => {}
        }
        self
    }

    /// What the gateway may still charge against: the balance less the pending withdrawal.
    pub fn available(&self) -> Usdc {
        self.balance.saturating_sub(self.pending_withdrawal.map_or(Usdc::ZERO, |(amount, _)| amount))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: Address = Address::repeat_byte(1);
    const KEY: Address = Address::repeat_byte(2);
    const PAYEE: Address = Address::repeat_byte(3);

    fn usdc(units: u64) -> Usdc {
        Usdc::from_base_units(units)
    }

    fn registered() -> ValidatorEvent {
        ValidatorEvent::Registered {
            owner: OWNER,
            session_key: KEY,
            payee: PAYEE,
            limit: usdc(100),
            valid_after: 0,
            valid_until: 1_000,
        }
    }

    #[test]
    fn a_key_folds_from_its_events() {
        let events = [
            registered(),
            ValidatorEvent::Settled {
                owner: OWNER,
                session_key: KEY,
                payee: PAYEE,
                amount: usdc(40),
                cumulative: usdc(40),
            },
            ValidatorEvent::Frozen { owner: OWNER, session_key: KEY, by: OWNER, at: 50 },
            ValidatorEvent::Unfrozen { owner: OWNER, session_key: KEY },
            ValidatorEvent::Revoked { owner: OWNER, session_key: KEY, at: 70 },
        ];
        let key = events.iter().fold(None, SessionKey::apply);
        let key = key.as_ref();
        assert_eq!(key.map(|k| k.settled), Some(usdc(40)));
        assert_eq!(key.and_then(|k| k.frozen_at), None);
        assert_eq!(key.and_then(|k| k.revoked_at), Some(70));
    }

    #[test]
    fn events_before_registration_or_of_other_keys_change_nothing() {
        let frozen = ValidatorEvent::Frozen { owner: OWNER, session_key: KEY, by: OWNER, at: 5 };
        assert_eq!(SessionKey::apply(None, &frozen), None);
        let key = SessionKey::apply(None, &registered());
        let other = ValidatorEvent::Frozen { owner: OWNER, session_key: PAYEE, by: OWNER, at: 5 };
        assert_eq!(SessionKey::apply(key.clone(), &other), key);
    }

    #[test]
    fn settled_never_goes_down() {
        let key = SessionKey::apply(None, &registered());
        let high = ValidatorEvent::Settled {
            owner: OWNER,
            session_key: KEY,
            payee: PAYEE,
            amount: usdc(9),
            cumulative: usdc(9),
        };
        let low = ValidatorEvent::Settled {
            owner: OWNER,
            session_key: KEY,
            payee: PAYEE,
            amount: usdc(3),
            cumulative: usdc(3),
        };
        let key = [high, low].iter().fold(key, SessionKey::apply);
        assert_eq!(key.map(|k| k.settled), Some(usdc(9)));
    }

    #[test]
    fn escrow_folds_deposits_settlements_and_withdrawals() {
        let events = [
            ValidatorEvent::Deposited { owner: OWNER, amount: usdc(100) },
            ValidatorEvent::Settled {
                owner: OWNER,
                session_key: KEY,
                payee: PAYEE,
                amount: usdc(30),
                cumulative: usdc(30),
            },
            ValidatorEvent::WithdrawalRequested { owner: OWNER, amount: usdc(50), ready_at: 9 },
            ValidatorEvent::GuardianSet { owner: OWNER, guardian: PAYEE },
        ];
        let escrow = events.iter().fold(Escrow::default(), Escrow::apply);
        assert_eq!(escrow.balance, usdc(70));
        assert_eq!(escrow.available(), usdc(20));
        assert_eq!(escrow.guardian, Some(PAYEE));
        let escrow = escrow.apply(&ValidatorEvent::Withdrawn { owner: OWNER, amount: usdc(50) });
        assert_eq!((escrow.balance, escrow.pending_withdrawal), (usdc(20), None));
    }
}
