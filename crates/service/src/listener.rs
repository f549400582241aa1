//! The chain listener: contract events → storage, resumable and reorg-safe.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use opentab_chain::{Address, Cursor, DynProvider, EventStream, StreamConfig, Update};
use opentab_store::{Store, StoredEvent};

use crate::{Change, Error, Notifier, Result, ServiceMetrics};

/// How the listener follows the chain.
#[derive(Debug, Clone, Copy)]
pub struct ListenerConfig {
    /// Confirmation depth and `eth_getLogs` range.
    pub stream: StreamConfig,
    /// Pause between polls when the chain has nothing new.
    pub poll_interval: Duration,
    /// Longest pause after repeated failures (RPC or database away).
    pub max_backoff: Duration,
}

impl Default for ListenerConfig {
    /// 2 confirmations, 2 000 blocks per request, a poll a second, backing off to 30 s.
    fn default() -> Self {
        Self {
            stream: StreamConfig::default(),
            poll_interval: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Follows one validator's events into storage.
#[derive(Debug)]
pub struct ChainListener {
    store: Store,
    provider: DynProvider,
    validator: Address,
    start_block: u64,
    config: ListenerConfig,
    stream: EventStream,
    /// The cursor storage held after this listener's last update: where to rewind to when an
    /// update fails and storage cannot be asked.
    stored: Cursor,
    notifier: Notifier,
    /// This deployment's payee: settlements to it that its own worker did not send are counted
    /// and warned about.
    payee: Option<Address>,
    metrics: Arc<ServiceMetrics>,
}

impl ChainListener {
    /// A listener for `validator`, resuming from the cursor saved in `store`, or from
    /// `start_block` (the deployment block) on first run.
    pub async fn new(
        store: Store,
        provider: DynProvider,
        validator: Address,
        start_block: u64,
        config: ListenerConfig,
    ) -> Result<Self> {
        let cursor = saved_cursor(&store, validator, start_block).await?;
        let stream = EventStream::new(provider.clone(), validator, cursor.clone(), config.stream);
        Ok(Self {
            store,
            provider,
            validator,
            start_block,
            config,
            stream,
            stored: cursor,
            notifier: Notifier::default(),
            payee: None,
            metrics: Arc::default(),
        })
    }

    /// Watches for settlements to `payee` that this deployment's settlement worker did not send,
    /// counting them in `metrics` (`opentab_foreign_settlements_total`) with a warning: two
    /// deployments sharing a payee address share its tabs and can over-commit them.
    pub fn with_payee(mut self, payee: Address, metrics: Arc<ServiceMetrics>) -> Self {
        self.payee = Some(payee);
        self.metrics = metrics;
        self
    }

    /// Publishes what each applied update changed to `notifier` (live updates for owners).
    pub fn with_notifier(mut self, notifier: Notifier) -> Self {
        self.notifier = notifier;
        self
    }

    /// Polls once and applies what it found. Returns whether anything was applied.
    pub async fn step(&mut self) -> Result<bool> {
        let Some(update) = self.stream.poll().await? else { return Ok(false) };
        if let Err(err) = self.apply(&update).await {
            // The stream's cursor ran ahead of what storage holds: rewind it to storage's. When
            // storage cannot say (the database is away), to the cursor it held after this
            // listener's last update, never to the deployment block: a full rescan is the last
            // thing an unhealthy database needs.
            let cursor = match saved_cursor(&self.store, self.validator, self.start_block).await {
                Ok(cursor) => cursor,
                Err(_) => self.stored.clone(),
            };
            self.stream = EventStream::new(self.provider.clone(), self.validator, cursor, self.config.stream);
            return Err(err);
        }
        Ok(true)
    }

    /// Where the listener reads from next.
    pub fn cursor(&self) -> &Cursor {
        self.stream.cursor()
    }

    /// Steps until the chain has nothing new (tests and start-up catch-up).
    pub async fn catch_up(&mut self) -> Result<()> {
        while self.step().await? {}
        Ok(())
    }

    /// Runs until `shutdown` resolves. Failures (RPC or database away) are logged and retried
    /// with exponential backoff; nothing is skipped, because the cursor only moves with storage.
    pub async fn run(mut self, metrics: Arc<ServiceMetrics>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = self.config.poll_interval;
        loop {
            let pause = match self.step().await {
                Ok(true) => {
                    metrics.listener_updates.fetch_add(1, Ordering::Relaxed);
                    if let Some(block) = self.stream.cursor().last() {
                        metrics.listener_block.store(block.number, Ordering::Relaxed);
                    }
                    backoff = self.config.poll_interval;
                    Duration::ZERO
                }
                Ok(false) => self.config.poll_interval,
                Err(err) => {
                    metrics.listener_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %err, retry_in = ?backoff, "chain listener step failed");
                    let pause = backoff;
                    backoff = (backoff * 2).min(self.config.max_backoff);
                    pause
                }
            };
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    async fn apply(&mut self, update: &Update) -> Result<()> {
        let events = update
            .events
            .iter()
            .map(|logged| {
                Ok(StoredEvent {
                    block_number: logged.block_number,
                    log_index: logged.log_index,
                    block_hash: logged.block_hash,
                    tx_hash: logged.tx_hash,
                    event: logged.to_domain()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let cursor = serde_json::to_string(&update.cursor).map_err(Error::CorruptCursor)?;
        let touched = self
            .store
            .apply_chain_update(self.validator, update.rollback_to, &events, &cursor, crate::unix_now())
            .await?;
        self.stored = update.cursor.clone();
        for owner in &touched.owners {
            self.notifier.publish(Change { owner: *owner, key: None });
        }
        for key in &touched.keys {
            if let Some(record) = self.store.key(*key).await? {
                self.notifier.publish(Change { owner: record.key.owner, key: Some(*key) });
            }
        }
        if let Some(payee) = self.payee {
            self.watch_foreign_settlements(payee, &events).await?;
        }
        if !events.is_empty() || update.rollback_to.is_some() {
            tracing::debug!(events = events.len(), rollback_to = ?update.rollback_to, "applied chain update");
        }
        Ok(())
    }
}

impl ChainListener {
    async fn watch_foreign_settlements(&self, payee: Address, events: &[StoredEvent]) -> Result<()> {
        for stored in events {
            let opentab_core::ValidatorEvent::Settled { session_key, amount, .. } = stored.event else { continue };
            let ours = match self.store.key(session_key).await? {
                Some(record) => record.key.payee == payee,
                None => false,
            };
            if ours && !self.store.settlement_sent(session_key, stored.tx_hash).await? {
                self.metrics.foreign_settlements.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    key = %session_key, tx = %stored.tx_hash, amount = %amount.display(), payee = %payee,
                    "a settlement to this payee that this deployment did not send: if another deployment uses the \
                     same payee address, the two share its tabs and can over-commit them; give each its own payee"
                );
            }
        }
        Ok(())
    }
}

async fn saved_cursor(store: &Store, validator: Address, start_block: u64) -> Result<Cursor> {
    match store.chain_cursor(validator).await? {
        Some(json) => serde_json::from_str(&json).map_err(Error::CorruptCursor),
        None => Ok(Cursor::starting_at(start_block)),
    }
}
