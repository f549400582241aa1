//! What the validator contract reports, as domain events, and how they fold into state.
//!
//! The chain adapter turns contract logs into [`ValidatorEvent`]s; storage keeps them in order
//! and derives each key's state and each (owner, payee) tab by folding them with
//! [`SessionKey::apply`] and [`Tab::apply`]. Folding from the events (rather than patching rows)
//! is what makes a reorg safe: drop the orphaned events, fold again.

use alloy_primitives::Address;
use serde::{Deserialize, Serialize};

use crate::{SessionKey, Usdc};

/// Why the contract's best-effort `settleBatch` skipped a claim (`SkipReason` in Solidity; the
/// discriminants are the contract's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The key was never registered.
    UnknownKey = 1,
    /// The key pays another payee than the batch's.
    WrongPayee = 2,
    /// Before the key's `validAfter`.
    NotYetValid = 3,
    /// Past the key's grace window.
    WindowClosed = 4,
    /// The voucher is above the key's limit.
    AboveLimit = 5,
    /// The voucher is not above what was settled.
    NothingToSettle = 6,
    /// The voucher's signature is not the key's.
    InvalidSignature = 7,
    /// The owner's tab with the payee holds nothing.
    EmptyTab = 8,
}

impl SkipReason {
    /// The reason for the contract's discriminant, if it is one.
    pub const fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::UnknownKey,
            2 => Self::WrongPayee,
            3 => Self::NotYetValid,
            4 => Self::WindowClosed,
            5 => Self::AboveLimit,
            6 => Self::NothingToSettle,
            7 => Self::InvalidSignature,
            8 => Self::EmptyTab,
            _ => return None,
        })
    }

    /// Whether the same claim may pay later without a new voucher: an empty tab can be refilled
    /// and a key may not be valid yet; every other reason is final for this voucher.
    pub const fn is_retryable(self) -> bool {
        matches!(self, Self::EmptyTab | Self::NotYetValid)
    }

    /// A short stable name for logs and webhooks.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::UnknownKey => "unknown_key",
            Self::WrongPayee => "wrong_payee",
            Self::NotYetValid => "not_yet_valid",
            Self::WindowClosed => "window_closed",
            Self::AboveLimit => "above_limit",
            Self::NothingToSettle => "nothing_to_settle",
            Self::InvalidSignature => "invalid_signature",
            Self::EmptyTab => "empty_tab",
        }
    }
}

/// One state change of `SessionKeyValidator`, with its block time where the contract records one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ValidatorEvent {
    /// `Deposited`.
    Deposited {
        /// Whose tab grew.
        owner: Address,
        /// The payee the tab is with.
        payee: Address,
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
    /// `Settled`: the key's owner's tab with the key's payee paid the payee. The contract leaves
    /// owner and payee out of the log (they are the key's); storage looks them up.
    Settled {
        /// The key whose voucher settled.
        session_key: Address,
        /// Paid by this settlement (less than the voucher's increase when the tab was short).
        amount: Usdc,
        /// The key's settled total after it.
        settled: Usdc,
    },
    /// `ClaimSkipped`: `settleBatch` could not pay one claim; the others settled.
    ClaimSkipped {
        /// The claim's key.
        session_key: Address,
        /// Why.
        reason: SkipReason,
    },
    /// `SettlerSet`.
    SettlerSet {
        /// The payee.
        payee: Address,
        /// Who may (or may no longer) settle for it.
        settler: Address,
        /// Whether it may.
        allowed: bool,
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
        /// The payee the tab is with.
        payee: Address,
        /// Requested amount.
        amount: Usdc,
        /// The last second of the payee's grace; the withdrawal completes after it.
        grace_ends_at: u64,
    },
    /// `WithdrawalCancelled`.
    WithdrawalCancelled {
        /// The owner.
        owner: Address,
        /// The payee the tab is with.
        payee: Address,
    },
    /// `Withdrawn`.
    Withdrawn {
        /// The owner.
        owner: Address,
        /// The payee the tab is with.
        payee: Address,
        /// What left the tab.
        amount: Usdc,
    },
}

impl ValidatorEvent {
    /// The account the event is about: the owner, or for `SettlerSet` the payee. `None` for the
    /// key-only events (`Settled`, `ClaimSkipped`), whose owner is the key's.
    pub const fn account(&self) -> Option<Address> {
        match self {
            Self::Deposited { owner, .. }
            | Self::Registered { owner, .. }
            | Self::Frozen { owner, .. }
            | Self::Unfrozen { owner, .. }
            | Self::Revoked { owner, .. }
            | Self::GuardianSet { owner, .. }
            | Self::WithdrawalRequested { owner, .. }
            | Self::WithdrawalCancelled { owner, .. }
            | Self::Withdrawn { owner, .. } => Some(*owner),
            Self::SettlerSet { payee, .. } => Some(*payee),
            Self::Settled { .. } | Self::ClaimSkipped { .. } => None,
        }
    }

    /// The (owner, payee) tab the event changes, where the event itself names both.
    /// `Settled` changes its key's tab, which storage finds through the key.
    pub const fn tab(&self) -> Option<(Address, Address)> {
        match self {
            Self::Deposited { owner, payee, .. }
            | Self::WithdrawalRequested { owner, payee, .. }
            | Self::WithdrawalCancelled { owner, payee }
            | Self::Withdrawn { owner, payee, .. } => Some((*owner, *payee)),
            _ => None,
        }
    }

    /// The session key the event concerns, if it concerns one.
    pub const fn session_key(&self) -> Option<Address> {
        match self {
            Self::Registered { session_key, .. }
            | Self::Frozen { session_key, .. }
            | Self::Unfrozen { session_key, .. }
            | Self::Revoked { session_key, .. }
            | Self::Settled { session_key, .. }
            | Self::ClaimSkipped { session_key, .. } => Some(*session_key),
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
            Self::ClaimSkipped { .. } => "claim_skipped",
            Self::SettlerSet { .. } => "settler_set",
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
            ValidatorEvent::Settled { settled, .. } => key.settled = key.settled.max(settled),
            _ => {}
        }
        Some(key)
    }
}

/// An owner's tab with one payee, as the contract holds it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tab {
    /// Held for the payee, the pending withdrawal included.
    pub balance: Usdc,
    /// The pending withdrawal, if any: amount and the last second of the payee's grace (the
    /// withdrawal completes strictly after it).
    pub pending_withdrawal: Option<(Usdc, u64)>,
}

impl Tab {
    /// Folds one event of this tab into it (the caller feeds only this tab's events, its keys'
    /// settlements included). Amounts saturate rather than wrap: the contract cannot go below
    /// zero, so a saturation would only mean a missed event.
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
            ValidatorEvent::WithdrawalRequested { amount, grace_ends_at, .. } => {
                self.pending_withdrawal = Some((amount, grace_ends_at));
            }
            ValidatorEvent::WithdrawalCancelled { .. } => self.pending_withdrawal = None,
            _ => {}
        }
        self
    }

    /// What the payee's gateway may still charge against: the balance less the pending
    /// withdrawal.
    pub fn available(&self) -> Usdc {
        self.balance.saturating_sub(self.pending_withdrawal.map_or(Usdc::ZERO, |(amount, _)| amount))
    }

    /// The first unix second at which the pending withdrawal can complete, if there is one.
    pub fn withdrawal_ready_at(&self) -> Option<u64> {
        self.pending_withdrawal.map(|(_, grace_ends_at)| grace_ends_at.saturating_add(1))
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

    fn settled(amount: u64, total: u64) -> ValidatorEvent {
        ValidatorEvent::Settled { session_key: KEY, amount: usdc(amount), settled: usdc(total) }
    }

    #[test]
    fn a_key_folds_from_its_events() {
        let frozen = [registered(), ValidatorEvent::Frozen { owner: OWNER, session_key: KEY, by: OWNER, at: 50 }];
        assert_eq!(frozen.iter().fold(None, SessionKey::apply).and_then(|k| k.frozen_at), Some(50));
        let events = [
            registered(),
            settled(40, 40),
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
        let key = [settled(9, 9), settled(3, 3)].iter().fold(key, SessionKey::apply);
        assert_eq!(key.map(|k| k.settled), Some(usdc(9)));
    }

    #[test]
    fn a_partial_settlement_raises_settled_by_what_was_paid() {
        // The voucher said 30, the tab held 25: the key's settled total is 25, not 30.
        let key = SessionKey::apply(None, &registered());
        let key = SessionKey::apply(key, &settled(25, 25));
        assert_eq!(key.map(|k| k.settled), Some(usdc(25)));
    }

    #[test]
    fn a_tab_folds_deposits_settlements_and_withdrawals() {
        let events = [
            ValidatorEvent::Deposited { owner: OWNER, payee: PAYEE, amount: usdc(100) },
            settled(30, 30),
            ValidatorEvent::WithdrawalRequested { owner: OWNER, payee: PAYEE, amount: usdc(50), grace_ends_at: 9 },
        ];
        let tab = events.iter().fold(Tab::default(), Tab::apply);
        assert_eq!(tab.balance, usdc(70));
        assert_eq!(tab.available(), usdc(20));
        assert_eq!(tab.withdrawal_ready_at(), Some(10), "strictly after the grace's last second");
        let tab = tab.apply(&ValidatorEvent::Withdrawn { owner: OWNER, payee: PAYEE, amount: usdc(50) });
        assert_eq!((tab.balance, tab.pending_withdrawal), (usdc(20), None));
        let cancelled = events
            .iter()
            .fold(Tab::default(), Tab::apply)
            .apply(&ValidatorEvent::WithdrawalCancelled { owner: OWNER, payee: PAYEE });
        assert_eq!((cancelled.available(), cancelled.withdrawal_ready_at()), (usdc(70), None));
    }

    #[test]
    fn events_name_their_tab_account_and_key() {
        let deposit = ValidatorEvent::Deposited { owner: OWNER, payee: PAYEE, amount: usdc(1) };
        assert_eq!((deposit.tab(), deposit.account()), (Some((OWNER, PAYEE)), Some(OWNER)));
        assert_eq!((settled(1, 1).tab(), settled(1, 1).account()), (None, None));
        assert_eq!(settled(1, 1).session_key(), Some(KEY));
        let settler = ValidatorEvent::SettlerSet { payee: PAYEE, settler: OWNER, allowed: true };
        assert_eq!((settler.account(), settler.tab()), (Some(PAYEE), None));
    }

    #[test]
    fn events_and_skip_reasons_have_stable_names() {
        // Stored in the database and sent in webhooks: these names must not change.
        let named = [
            (ValidatorEvent::Deposited { owner: OWNER, payee: PAYEE, amount: usdc(1) }, "deposited"),
            (registered(), "registered"),
            (ValidatorEvent::Frozen { owner: OWNER, session_key: KEY, by: OWNER, at: 1 }, "frozen"),
            (ValidatorEvent::Unfrozen { owner: OWNER, session_key: KEY }, "unfrozen"),
            (ValidatorEvent::Revoked { owner: OWNER, session_key: KEY, at: 1 }, "revoked"),
            (settled(1, 1), "settled"),
            (ValidatorEvent::ClaimSkipped { session_key: KEY, reason: SkipReason::EmptyTab }, "claim_skipped"),
            (ValidatorEvent::SettlerSet { payee: PAYEE, settler: OWNER, allowed: true }, "settler_set"),
            (ValidatorEvent::GuardianSet { owner: OWNER, guardian: PAYEE }, "guardian_set"),
            (
                ValidatorEvent::WithdrawalRequested { owner: OWNER, payee: PAYEE, amount: usdc(1), grace_ends_at: 1 },
                "withdrawal_requested",
            ),
            (ValidatorEvent::WithdrawalCancelled { owner: OWNER, payee: PAYEE }, "withdrawal_cancelled"),
            (ValidatorEvent::Withdrawn { owner: OWNER, payee: PAYEE, amount: usdc(1) }, "withdrawn"),
        ];
        for (event, name) in named {
            assert_eq!(event.kind(), name);
        }
        let reasons = [
            "unknown_key",
            "wrong_payee",
            "not_yet_valid",
            "window_closed",
            "above_limit",
            "nothing_to_settle",
            "invalid_signature",
            "empty_tab",
        ];
        for (code, name) in (1..=8u8).zip(reasons) {
            assert_eq!(SkipReason::from_code(code).map(SkipReason::as_str), Some(name));
        }
    }

    #[test]
    fn skip_reasons_round_trip_the_contract_codes() {
        for code in 1..=8u8 {
            let reason = SkipReason::from_code(code).map(|r| r as u8);
            assert_eq!(reason, Some(code));
        }
        assert_eq!(SkipReason::from_code(0), None);
        assert_eq!(SkipReason::from_code(9), None);
        assert!(SkipReason::EmptyTab.is_retryable());
        assert!(!SkipReason::NothingToSettle.is_retryable());
    }
}
