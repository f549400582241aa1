//! In-process counters for the embedded default: one lock around every key's and owner's
//! counters, so each charge and void is one critical section (sub-microsecond).

use std::collections::HashMap;
use std::sync::Mutex;

use opentab_core::charge::{self, ChargeRefused, ChargeRequest, Charged, CounterEpoch, KeyCounters};
use opentab_core::{Address, B256, Usdc};

use crate::error::CounterError;
use crate::gateway::{CounterStore, Unavailable};

#[derive(Debug, Default)]
struct State {
    keys: HashMap<Address, KeyCounters>,
    /// Per owner: Σ served over its keys.
    owner_served: HashMap<Address, Usdc>,
    /// Idempotency keys charged, with when they expire.
    idempotency: HashMap<B256, u64>,
    /// Claimed ids (voids of the charge API), with when they expire.
    claims: HashMap<B256, u64>,
    /// When expired idempotency keys and claims were last swept.
    swept_at: u64,
}

impl State {
    /// Drops expired idempotency keys and claims now and then (not on every call: that would
    /// scan them all under the lock every charge takes), so the maps hold about a TTL's worth.
    fn sweep(&mut self, now: u64) {
        if now >= self.swept_at + 60 {
            self.idempotency.retain(|_, expires| *expires > now);
            self.claims.retain(|_, expires| *expires > now);
            self.swept_at = now;
        }
    }
}

/// Counters held in this process. Lost on exit: the durable ledger rebuilds them.
#[derive(Debug, Default)]
pub struct InProcessCounters {
    state: Mutex<State>,
}

impl InProcessCounters {
    /// A key's counters (zero if it was never charged).
    pub fn key(&self, key: Address) -> Result<KeyCounters, Unavailable> {
        let state = self.lock()?;
        Ok(state.keys.get(&key).cloned().unwrap_or_default())
    }

    /// What an owner's keys have been served in all.
    pub fn owner_served(&self, owner: Address) -> Result<Usdc, Unavailable> {
        Ok(self.lock()?.owner_served.get(&owner).copied().unwrap_or_default())
    }

    /// Restores a key's counters (from the durable ledger on start). Replaces what the key
    /// had, so restoring twice counts once.
    pub fn restore(&self, key: Address, owner: Address, counters: KeyCounters) -> Result<(), Unavailable> {
        let mut state = self.lock()?;
        let before = state.keys.get(&key).map(|k| k.served).unwrap_or_default();
        let owner_total = state.owner_served.entry(owner).or_default();
        *owner_total = owner_total
            .saturating_sub(before)
            .checked_add(counters.served)
            .map_err(|_| CounterError::Overflow(owner))?;
        state.keys.insert(key, counters);
        Ok(())
    }

    /// Restores an idempotency key whose charge stands (from the durable ledger on start),
    /// refused as a duplicate until `expires` (Unix seconds).
    pub fn restore_idempotency(&self, id: B256, expires: u64) -> Result<(), Unavailable> {
        let mut state = self.lock()?;
        let slot = state.idempotency.entry(id).or_default();
        *slot = (*slot).max(expires);
        Ok(())
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, Unavailable> {
        // A poisoned lock means a panic mid-charge: refuse rather than guess the counters.
        self.state.lock().map_err(|_| CounterError::Poisoned.into())
    }
}

impl CounterStore for InProcessCounters {
    async fn charge(
        &self,
        key: Address,
        owner: Address,
        request: ChargeRequest,
    ) -> Result<Result<Charged, ChargeRefused>, Unavailable> {
        let mut guard = self.lock()?;
        let state = &mut *guard;
        let now = crate::gateway::unix_now();
        if let Some(id) = request.idempotency
            && state.idempotency.get(&id).is_some_and(|&expires| expires > now)
        {
            return Ok(Err(ChargeRefused::DuplicatePayment));
        }
        let counters = state.keys.entry(key).or_default();
        let owner_served = state.owner_served.entry(owner).or_default();
        let outcome = charge::charge(counters, owner_served, &request);
        if let (Ok(_), Some(id)) = (&outcome, request.idempotency) {
            state.idempotency.insert(id, now + crate::gateway::IDEMPOTENCY_TTL_SECS);
            state.sweep(now);
        }
        Ok(outcome)
    }

    async fn void(
        &self,
        key: Address,
        owner: Address,
        price: Usdc,
        idempotency: Option<B256>,
        _at: Option<CounterEpoch>,
    ) -> Result<(), Unavailable> {
        // Rebuilt only before serving: every charge is in these counters.
        let mut guard = self.lock()?;
        let state = &mut *guard;
        if let Some(id) = idempotency {
            state.idempotency.remove(&id);
        }
        let counters = state.keys.entry(key).or_default();
        let owner_served = state.owner_served.entry(owner).or_default();
        charge::void(counters, owner_served, price);
        Ok(())
    }

    async fn claim(&self, _owner: Address, id: B256, ttl_secs: u64) -> Result<bool, Unavailable> {
        let mut state = self.lock()?;
        let now = crate::gateway::unix_now();
        state.sweep(now);
        if state.claims.get(&id).is_some_and(|&expires| expires > now) {
            return Ok(false);
        }
        state.claims.insert(id, now + ttl_secs);
        Ok(true)
    }

    async fn release(&self, _owner: Address, id: B256) -> Result<(), Unavailable> {
        self.lock()?.claims.remove(&id);
        Ok(())
    }

    async fn drop_stale_idempotency(
        &self,
        _key: Address,
        _owner: Address,
        _id: B256,
        _older_than: std::time::Duration,
    ) -> Result<bool, Unavailable> {
        // Rebuilt from the ledger's standing charges at start, and an unrecorded charge is
        // undone with its key: an idempotency key here always has its charge under way or held.
        Ok(false)
    }
}
