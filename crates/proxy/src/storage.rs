//! The gateway's ports backed by storage: its view of keys, cached in memory and kept current by
//! the store's change feed (known once the registration is confirmed on-chain; tab available =
//! the confirmed tab with the key's payee less its pending withdrawal), its
//! durable usage ledger, and rebuilding the counters (and the idempotency keys whose charges
//! stand) from that ledger: the in-process ones on start, Redis's when it lost them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use opentab_core::Address;
use opentab_core::Usdc;
use opentab_core::charge::KeyCounters;
use opentab_gateway::{
    Cause, CounterSource, IDEMPOTENCY_TTL_SECS, InProcessCounters, KeyDirectory, KeyInfo, Recorded, Restored,
    SourceFuture, Unavailable, UsageLedger, UsageRecord,
};
use opentab_store::{ChainStatus, KeyChange, Store, UsageEntry};

use crate::spool::VoidSpool;

/// [`KeyDirectory`] over the store, with the state of the keys in use cached in memory: a paid
/// call reads no database once its key has been seen (or, [`StoreDirectory::preloaded`], at
/// all). The cache follows [`Store::on_key_change`]: a change to a key or to its owner's tabs,
/// made by any process on the database, drops the owner's entries. Entries not refreshed for
/// 60 s are read again, in case a change went unheard. Unknown and pending keys are never
/// cached (their registration must be seen as soon as it is confirmed). (A freeze does not
/// wait for the cache: the usage ledger refuses a stopped key's charge at commit.)
#[derive(Debug, Clone)]
pub struct StoreDirectory {
    store: Store,
    cache: Arc<Cache>,
}

/// How long a cached key is trusted without hearing of a change.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(60);

impl StoreDirectory {
    /// A directory reading `store`, caching what it read. Must be made on a tokio runtime: it
    /// starts a task following the store's changes (it ends with the directory).
    pub fn new(store: Store) -> Self {
        let cache = Arc::new(Cache::default());
        let weak = Arc::downgrade(&cache);
        // Inline: a change this process made is forgotten before the write that made it returns.
        store.on_key_change(move |change| weak.upgrade().map(|cache| cache.forget(change)).is_some());
        Self { store, cache }
    }

    /// [`StoreDirectory::new`], with every key registered to pay `payee` and every tab at
    /// `payee` read at once, in two queries, and read again in bulk every 30 s in
    /// the background: a paid call reads no database, even with 100,000 keys each called less
    /// than once a minute (read one by one, each such call was a cache miss).
    pub async fn preloaded(store: Store, payee: Address) -> Result<Self, opentab_store::Error> {
        let directory = Self::new(store);
        // The change feed says "everything may have changed" once it listens: a load made
        // before that would be forgotten at once. Wait for it (briefly: it is a connection).
        let waiting = Instant::now();
        while directory.cache.generation() == 0 && waiting.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A change heard during the read voids it (it may hold the old row): try again.
        for _ in 0..5 {
            if directory.load(payee).await? {
                break;
            }
        }
        let weak = Arc::downgrade(&directory.cache);
        let store = directory.store.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(MAX_AGE / 2).await;
                let Some(cache) = weak.upgrade() else { return };
                let again = Self { store: store.clone(), cache };
                if let Err(err) = again.load(payee).await {
                    tracing::warn!(error = %err, "could not refresh the key cache; keys are read one by one meanwhile");
                }
            }
        });
        Ok(directory)
    }

    /// Reads every key of `payee` and their tabs into the cache; false if a change was heard
    /// meanwhile (nothing is cached then).
    async fn load(&self, payee: Address) -> Result<bool, opentab_store::Error> {
        let started = self.cache.generation();
        let budgets: HashMap<Address, (Usdc, Usdc)> = self
            .store
            .gateway_budgets(payee)
            .await?
            .into_iter()
            .map(|(owner, tab, settled)| (owner, (tab.available(), settled)))
            .collect();
        let keys = self.store.registered_keys_of_payee(payee).await?;
        let infos: Vec<KeyInfo> = keys
            .into_iter()
            .map(|record| {
                let (tab_available, owner_settled) = budgets.get(&record.key.owner).copied().unwrap_or_default();
                let frozen_offchain = record.frozen_offchain_at.is_some();
                KeyInfo { frozen_offchain, tab_available, owner_settled, key: record.key }
            })
            .collect();
        let budgets = budgets.into_iter().map(|(owner, budget)| ((owner, payee), budget));
        Ok(self.cache.insert_all(infos.into_iter(), budgets, started))
    }

    /// How many keys are cached now.
    pub fn cache_size(&self) -> usize {
        self.cache.state.read().map_or(0, |state| state.keys.len())
    }

    /// Calls answered from memory, and calls that read the database, so far.
    pub fn cache_stats(&self) -> (u64, u64) {
        (self.cache.hits.load(Ordering::Relaxed), self.cache.misses.load(Ordering::Relaxed))
    }

    async fn read(&self, key: Address, started: u64) -> Result<Option<KeyInfo>, Unavailable> {
        let unavailable = |e: opentab_store::Error| Unavailable::Directory(Cause::new(e));
        let Some(record) = self.store.key(key).await.map_err(unavailable)? else { return Ok(None) };
        if record.chain_status != ChainStatus::Registered {
            return Ok(None);
        }
        // The budget is the owner's, shared by all its keys with this payee: read once for them
        // all (it sums what their keys settled, which grows with the number of keys).
        let tab = (record.key.owner, record.key.payee);
        let (tab_available, owner_settled) = match self.cache.budget(tab) {
            Some(budget) => budget,
            None => {
                let (balance, settled) = self.store.gateway_budget(tab.0, tab.1).await.map_err(unavailable)?;
                let budget = (balance.available(), settled);
                self.cache.insert_budget(tab, budget, started);
                budget
            }
        };
        Ok(Some(KeyInfo {
            frozen_offchain: record.frozen_offchain_at.is_some(),
            tab_available,
            owner_settled,
            key: record.key,
        }))
    }
}

impl KeyDirectory for StoreDirectory {
    async fn key(&self, key: Address) -> Result<Option<KeyInfo>, Unavailable> {
        if let Some(info) = self.cache.get(key) {
            return Ok(Some(info));
        }
        let started = self.cache.generation();
        let info = self.read(key, started).await?;
        if let Some(info) = &info {
            self.cache.insert(key, info.clone(), started);
        }
        Ok(info)
    }
}

/// The cached keys, indexed by owner (a change names an owner).
#[derive(Debug, Default)]
struct Cache {
    state: RwLock<CacheState>,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Debug, Default)]
struct CacheState {
    keys: HashMap<Address, (KeyInfo, Instant)>,
    by_owner: HashMap<Address, HashSet<Address>>,
    /// Per (owner, payee): the tab available and what the owner's keys settled.
    budgets: HashMap<(Address, Address), ((Usdc, Usdc), Instant)>,
    /// Bumped by every change heard: a read that started before one may have seen the old
    /// row, so what the change concerns is not cached from it.
    generation: u64,
    /// The latest changes heard, with the generation each made (at most [`RECENT_CHANGES`]).
    recent: VecDeque<(u64, KeyChange)>,
}

/// How many changes the cache remembers, to tell a read which of its rows they concern.
const RECENT_CHANGES: usize = 4_096;

/// Owners and keys changed since a read started.
#[derive(Debug, Default)]
struct Changed {
    owners: HashSet<Address>,
    keys: HashSet<Address>,
}

impl CacheState {
    /// What changed since generation `started`; `None` if anything may have (everything was
    /// forgotten, or more changes went by than are remembered).
    fn changed_since(&self, started: u64) -> Option<Changed> {
        let mut changed = Changed::default();
        if started == self.generation {
            return Some(changed);
        }
        let oldest = self.recent.front().map(|(generation, _)| *generation)?;
        if oldest > started.wrapping_add(1) {
            return None;
        }
        for (generation, change) in &self.recent {
            if *generation <= started {
                continue;
            }
            match change {
                KeyChange::Owner(owner) => {
                    changed.owners.insert(*owner);
                }
                KeyChange::Key(key) => {
                    changed.keys.insert(*key);
                }
                KeyChange::Everything => return None,
            }
        }
        Some(changed)
    }
}

impl Cache {
    fn get(&self, key: Address) -> Option<KeyInfo> {
        let found =
            self.state.read().ok().and_then(|state| {
                state.keys.get(&key).filter(|(_, at)| at.elapsed() < MAX_AGE).map(|(i, _)| i.clone())
            });
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    fn budget(&self, tab: (Address, Address)) -> Option<(Usdc, Usdc)> {
        let state = self.state.read().ok()?;
        state.budgets.get(&tab).filter(|(_, at)| at.elapsed() < MAX_AGE).map(|(budget, _)| *budget)
    }

    /// Caches a budget, read since `started`, unless a change was heard meanwhile.
    /// Caches a budget, read since `started`, unless its owner changed meanwhile.
    fn insert_budget(&self, tab: (Address, Address), budget: (Usdc, Usdc), started: u64) {
        let Ok(mut state) = self.state.write() else { return };
        if state.changed_since(started).is_some_and(|changed| !changed.owners.contains(&tab.0)) {
            state.budgets.insert(tab, (budget, Instant::now()));
        }
    }

    fn generation(&self) -> u64 {
        self.state.read().map_or(u64::MAX, |state| state.generation)
    }

    /// Caches `info`, read since `started`, unless a change to it was heard meanwhile.
    fn insert(&self, key: Address, info: KeyInfo, started: u64) {
        let Ok(mut state) = self.state.write() else { return };
        let Some(changed) = state.changed_since(started) else { return };
        if changed.owners.contains(&info.key.owner) || changed.keys.contains(&key) {
            return;
        }
        state.by_owner.entry(info.key.owner).or_default().insert(key);
        state.keys.insert(key, (info, Instant::now()));
    }

    /// Caches every key and budget given, read since `started`, but those a change heard
    /// meanwhile concerns (they are read again on their next call); false if anything may have
    /// changed (nothing is cached then).
    fn insert_all(
        &self,
        keys: impl Iterator<Item = KeyInfo>,
        budgets: impl Iterator<Item = ((Address, Address), (Usdc, Usdc))>,
        started: u64,
    ) -> bool {
        let Ok(mut state) = self.state.write() else { return false };
        let Some(changed) = state.changed_since(started) else { return false };
        let now = Instant::now();
        for info in keys {
            let key = info.key.address;
            if changed.owners.contains(&info.key.owner) || changed.keys.contains(&key) {
                continue;
            }
            state.by_owner.entry(info.key.owner).or_default().insert(key);
            state.keys.insert(key, (info, now));
        }
        for (tab, budget) in budgets {
            if !changed.owners.contains(&tab.0) {
                state.budgets.insert(tab, (budget, now));
            }
        }
        true
    }

    fn forget(&self, change: KeyChange) {
        let Ok(mut state) = self.state.write() else { return };
        state.generation = state.generation.wrapping_add(1);
        let generation = state.generation;
        state.recent.push_back((generation, change));
        if state.recent.len() > RECENT_CHANGES {
            state.recent.pop_front();
        }
        match change {
            KeyChange::Owner(owner) => {
                for key in state.by_owner.remove(&owner).unwrap_or_default() {
                    state.keys.remove(&key);
                }
                state.budgets.retain(|(o, _), _| *o != owner);
            }
            KeyChange::Key(key) => {
                if let Some((info, _)) = state.keys.remove(&key)
                    && let Some(keys) = state.by_owner.get_mut(&info.key.owner)
                {
                    keys.remove(&key);
                }
            }
            KeyChange::Everything => {
                state.keys.clear();
                state.by_owner.clear();
                state.budgets.clear();
            }
        }
    }
}

/// The most records one ledger transaction takes.
const MAX_BATCH: usize = 256;

/// [`UsageLedger`] in the `usage_ledger` table, with group commit: records go to one writer
/// task, which commits everything queued while its previous transaction was committing in one
/// transaction (one disk flush for many calls). Each `record` still returns only once its row
/// is committed, so a charge the ledger does not hold is never served; then, with an
/// announcer, it is announced (`opentab dev` feeds the owner's live event stream with it).
///
/// With a [`VoidSpool`], a void the database cannot take is flushed to the spool instead
/// ([`Recorded::Spooled`]) and [`StoreLedger::drain_spool`] records it once the database
/// answers: a void is then as durable as the charge it undoes.
#[derive(Debug, Clone)]
pub struct StoreLedger {
    queue: tokio::sync::mpsc::Sender<Pending>,
    store: Store,
    spool: Arc<std::sync::OnceLock<Arc<VoidSpool>>>,
}

/// A spooled void the ledger took at last: the counters of `epoch` (any, if `None`) give its
/// price back now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainedVoid {
    /// The key the voided charge was taken from.
    pub key: Address,
    /// Its owner.
    pub owner: Address,
    /// The price given back.
    pub amount: Usdc,
    /// The charge's idempotency key (free again).
    pub idempotency: Option<opentab_core::B256>,
    /// The epochs the ledger held as it committed the void.
    pub epoch: Option<opentab_core::charge::CounterEpoch>,
}

type Pending = (UsageEntry, tokio::sync::oneshot::Sender<Result<Recorded, Cause>>);

/// Told `(owner, key)` of each key whose usage a committed batch moved.
type Announcer = Box<dyn Fn(Address, Address) + Send + Sync>;

impl StoreLedger {
    /// A ledger writing to `store`. Starts the writer task on the current tokio runtime; it
    /// ends when the last clone of this ledger is dropped.
    pub fn new(store: Store) -> Self {
        Self::start(store, None)
    }

    /// [`StoreLedger::new`], calling `announce(owner, key)` for each key whose usage moved, once
    /// its rows are committed.
    pub fn announcing(store: Store, announce: impl Fn(Address, Address) + Send + Sync + 'static) -> Self {
        Self::start(store, Some(Box::new(announce)))
    }

    fn start(store: Store, announce: Option<Announcer>) -> Self {
        let (queue, pending) = tokio::sync::mpsc::channel(4 * MAX_BATCH);
        let spool = Arc::new(std::sync::OnceLock::new());
        tokio::spawn(write_batches(store.clone(), announce, spool.clone(), pending));
        Self { queue, store, spool }
    }

    /// Keeps voids the database cannot take in `spool` (see the type's docs); set once.
    #[must_use]
    pub fn with_spool(self, spool: Arc<VoidSpool>) -> Self {
        if self.spool.set(spool).is_err() {
            tracing::warn!("the ledger has a void spool already; the second is ignored");
        }
        self
    }

    /// Records the spooled voids in the ledger, if there are any and the database takes them;
    /// returns those it took now (a void the ledger held already moves nothing and is not
    /// returned). Whoever holds the counters gives each price back.
    pub async fn drain_spool(&self) -> Result<Vec<DrainedVoid>, Unavailable> {
        let Some(spool) = self.spool.get() else { return Ok(Vec::new()) };
        let spool_error = |e: std::io::Error| Unavailable::Ledger(Cause::new(e));
        let pending = spool.pending().map_err(spool_error)?;
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let recorded = self.store.record_usage_batch(&pending).await.map_err(|e| Unavailable::Ledger(Cause::new(e)))?;
        spool.forget(pending.len()).map_err(spool_error)?;
        tracing::info!(voids = pending.len(), "spooled voids recorded in the usage ledger");
        Ok(pending
            .into_iter()
            .zip(recorded)
            .filter_map(|(entry, recorded)| match recorded {
                opentab_store::Recorded::Held(epoch) => Some(DrainedVoid {
                    key: entry.session_key,
                    owner: entry.owner,
                    amount: entry.amount,
                    idempotency: entry.idempotency,
                    epoch,
                }),
                _ => None,
            })
            .collect())
    }
}

/// The one writer. (Four writers on PostgreSQL, so that a row would wait for about one commit
/// rather than two, measured the same here: accumulation p99 in the same 5–10 ms bucket with a
/// 50 ms upstream, and throughput within the noise with an instant one.)
async fn write_batches(
    store: Store,
    announce: Option<Announcer>,
    spool: Arc<std::sync::OnceLock<Arc<VoidSpool>>>,
    mut pending: tokio::sync::mpsc::Receiver<Pending>,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    while pending.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (entries, replies): (Vec<UsageEntry>, Vec<_>) = batch.drain(..).unzip();
        let outcome = store.record_usage_batch(&entries).await.map_err(Cause::new);
        if let (Ok(recorded), Some(announce)) = (&outcome, &announce) {
            let mut announced = std::collections::BTreeSet::new();
            for (entry, recorded) in entries.iter().zip(recorded) {
                if matches!(recorded, opentab_store::Recorded::Held(_))
                    && announced.insert((entry.owner, entry.session_key))
                {
                    announce(entry.owner, entry.session_key);
                }
            }
        }
        for (i, reply) in replies.into_iter().enumerate() {
            let mine = match &outcome {
                Ok(recorded) => Ok(match recorded.get(i) {
                    Some(opentab_store::Recorded::KeyStopped) => Recorded::KeyStopped,
                    Some(opentab_store::Recorded::Fenced(held)) => Recorded::Fenced(*held),
                    Some(opentab_store::Recorded::AlreadyVoided) => Recorded::AlreadyVoided,
                    Some(opentab_store::Recorded::Held(epoch)) => Recorded::Held(*epoch),
                    None => Recorded::Held(None),
                }),
                // A void the database did not take is kept on disk, if there is a spool.
                Err(cause) => match (entries[i].kind, spool.get()) {
                    (opentab_core::charge::UsageKind::Void, Some(spool)) => match spool.keep(&entries[i]) {
                        Ok(()) => {
                            tracing::warn!(error = %cause, key = %entries[i].session_key, spool = %spool.path().display(), "the database did not take a void: spooled");
                            Ok(Recorded::Spooled)
                        }
                        Err(err) => {
                            tracing::error!(error = %err, "could not spool a void either");
                            Err(cause.clone())
                        }
                    },
                    _ => Err(cause.clone()),
                },
            };
            // A caller that went away (its request was dropped) needs no answer.
            let _ = reply.send(mine);
        }
    }
}

impl UsageLedger for StoreLedger {
    async fn record(&self, record: UsageRecord) -> Result<Recorded, Unavailable> {
        let entry = UsageEntry {
            at: record.at,
            session_key: record.key,
            owner: record.owner,
            kind: record.kind,
            amount: record.amount,
            route: record.route,
            request_id: record.request_id,
            voucher: record.voucher,
            signature: record.signature,
            idempotency: record.idempotency,
            void_of: record.void_of,
            epoch: record.epoch,
        };
        let stopped = || Unavailable::Ledger(Cause::msg("the usage ledger's writer stopped"));
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.queue.send((entry, reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?.map_err(Unavailable::Ledger)
    }

    async fn stands(&self, key: Address, id: opentab_core::B256) -> Result<bool, Unavailable> {
        let since = crate::unix_now().saturating_sub(IDEMPOTENCY_TTL_SECS);
        let live =
            self.store.live_idempotency(Some(key), since).await.map_err(|e| Unavailable::Ledger(Cause::new(e)))?;
        Ok(live.iter().any(|l| l.id == id))
    }
}

/// [`CounterSource`] over the usage ledger: what Redis counters are rebuilt from when Redis
/// lost them.
#[derive(Debug, Clone)]
pub struct StoreCounterSource {
    store: Store,
}

impl StoreCounterSource {
    /// A source reading `store`'s ledger.
    pub const fn new(store: Store) -> Self {
        Self { store }
    }
}

impl CounterSource for StoreCounterSource {
    fn counters(&self, key: Address, owner: Address, with_owner: bool) -> SourceFuture<'_> {
        Box::pin(async move {
            let since = crate::unix_now().saturating_sub(IDEMPOTENCY_TTL_SECS);
            // One transaction: raises the epochs, then reads (a key never charged, most keys the
            // first time a fresh Redis sees them, costs an index probe beside the epoch's row).
            let read = self
                .store
                .usage_for_rebuild(key, owner, with_owner, since)
                .await
                .map_err(|e| Unavailable::Ledger(Cause::new(e)))?;
            let counters = read
                .total
                .map(|t| KeyCounters { served: t.served, best: t.best, best_signature: t.best_signature })
                .unwrap_or_default();
            let idempotency =
                read.idempotency.into_iter().map(|l| (l.id, l.charged_at + IDEMPOTENCY_TTL_SECS)).collect();
            Ok(Restored { counters, owner_served: read.owner_served, idempotency, epoch: read.epoch })
        })
    }
}

/// Rebuilds `counters` from the usage ledger; returns how many keys were restored. Run before
/// serving.
pub async fn restore_counters(store: &Store, counters: &InProcessCounters) -> crate::Result<usize> {
    let totals = store.usage_totals().await?;
    for total in &totals {
        let key = KeyCounters { served: total.served, best: total.best, best_signature: total.best_signature };
        counters.restore(total.session_key, total.owner, key).map_err(crate::Error::Counters)?;
    }
    for (id, expires) in standing_idempotency(store, None).await? {
        counters.restore_idempotency(id, expires).map_err(crate::Error::Counters)?;
    }
    Ok(totals.len())
}

/// The idempotency keys (of `key`, or of every key) whose charges stand, with when each
/// expires: a retry within the window must still be refused after counters are rebuilt.
async fn standing_idempotency(
    store: &Store,
    key: Option<Address>,
) -> Result<Vec<(opentab_core::B256, u64)>, opentab_store::Error> {
    let since = crate::unix_now().saturating_sub(IDEMPOTENCY_TTL_SECS);
    let live = store.live_idempotency(key, since).await?;
    Ok(live.into_iter().map(|l| (l.id, l.charged_at + IDEMPOTENCY_TTL_SECS)).collect())
}

#[cfg(test)]
mod tests {
    use opentab_core::SessionKey;

    use super::*;

    fn info(key: u8, owner: u8) -> KeyInfo {
        KeyInfo {
            key: SessionKey {
                address: Address::repeat_byte(key),
                owner: Address::repeat_byte(owner),
                payee: Address::repeat_byte(0xee),
                limit: Usdc::ONE,
                valid_after: 0,
                valid_until: u64::MAX,
                frozen_at: None,
                revoked_at: None,
                settled: Usdc::ZERO,
            },
            frozen_offchain: false,
            tab_available: Usdc::ONE,
            owner_settled: Usdc::ZERO,
        }
    }

    /// A read that started before a change caches what the change does not concern (under a
    /// steady stream of settlements, the bulk refresh must still land), never what it does; an
    /// `Everything`, or more changes than are remembered, voids the read.
    #[test]
    fn a_read_older_than_a_change_caches_only_what_the_change_does_not_concern() {
        let cache = Cache::default();
        let started = cache.generation();
        cache.forget(KeyChange::Owner(Address::repeat_byte(0xa1)));
        cache.forget(KeyChange::Key(Address::repeat_byte(3)));
        let keys = [info(1, 0xa1), info(2, 0xa2), info(3, 0xa2)];
        let budgets = [
            ((Address::repeat_byte(0xa1), Address::ZERO), (Usdc::ONE, Usdc::ZERO)),
            ((Address::repeat_byte(0xa2), Address::ZERO), (Usdc::ONE, Usdc::ZERO)),
        ];
        assert!(cache.insert_all(keys.into_iter(), budgets.into_iter(), started));
        assert!(cache.get(Address::repeat_byte(1)).is_none(), "its owner changed");
        assert!(cache.get(Address::repeat_byte(2)).is_some(), "untouched");
        assert!(cache.get(Address::repeat_byte(3)).is_none(), "it changed");
        assert!(cache.budget((Address::repeat_byte(0xa1), Address::ZERO)).is_none());
        assert!(cache.budget((Address::repeat_byte(0xa2), Address::ZERO)).is_some());

        let started = cache.generation();
        cache.insert(Address::repeat_byte(4), info(4, 0xa3), started);
        assert!(cache.get(Address::repeat_byte(4)).is_some(), "no change since the read");
        let started = cache.generation();
        cache.forget(KeyChange::Everything);
        assert!(!cache.insert_all([info(5, 0xa4)].into_iter(), std::iter::empty(), started));
        cache.insert(Address::repeat_byte(5), info(5, 0xa4), started);
        assert!(cache.get(Address::repeat_byte(5)).is_none(), "anything may have changed");

        let started = cache.generation();
        for n in 0..=RECENT_CHANGES {
            cache.forget(KeyChange::Key(Address::with_last_byte((n % 200) as u8)));
        }
        cache.insert(Address::repeat_byte(6), info(6, 0xa5), started);
        assert!(cache.get(Address::repeat_byte(6)).is_none(), "more changes than remembered");
    }
}
