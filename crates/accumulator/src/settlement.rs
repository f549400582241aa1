//! The settlement worker: plan intents, lease them, check the chain, send, record.

use std::time::Duration;

use opentab_chain::{Claim, SettleOutcome, Validator};
use opentab_core::settlement::{KeyOwed, MAX_RETRIES, due, retry_delay};
use opentab_core::{Address, B256, SkipReason, U256, Usdc};
use opentab_store::{Leased, NewSettlement, NewWebhook, Settlement, Store};
use serde_json::json;

use crate::Result;

/// How a [`SettlementWorker`] behaves.
#[derive(Debug, Clone)]
pub struct SettlementConfig {
    /// The payee whose keys this worker settles.
    pub payee: Address,
    /// This worker's name in leases (unique among the workers sharing a database).
    pub worker_id: String,
    /// Pause between rounds.
    pub poll_interval: Duration,
    /// The first retry waits about this long; each next one twice as long.
    pub retry_base: Duration,
    /// How long a lease holds an intent once taken, and past each transaction's wait for its
    /// receipt once renewed: a worker renews every lease it holds before each transaction it
    /// sends, so another worker takes an intent over only from a worker that stopped.
    pub lease: Duration,
    /// How long to wait for a receipt before counting the attempt as failed (the next attempt
    /// checks the chain first, so a late receipt is not paid twice).
    pub tx_timeout: Duration,
    /// Most claims in one `settleBatch`.
    pub batch_max: u32,
    /// Blocks on top of a settlement's block before it is final: until then a reorganisation
    /// may drop it, and the worker checks that the chain still holds it.
    pub confirmations: u64,
}

impl SettlementConfig {
    /// Defaults for `payee`: a round every 2 s, retries from 30 s, 2-minute leases, receipts
    /// awaited 60 s, up to 20 claims a batch.
    pub fn new(payee: Address) -> Self {
        Self {
            payee,
            worker_id: format!("worker-{:016x}", rand::random::<u64>()),
            poll_interval: Duration::from_secs(2),
            retry_base: Duration::from_secs(30),
            lease: Duration::from_secs(120),
            tx_timeout: Duration::from_secs(60),
            batch_max: 20,
            confirmations: 12,
        }
    }
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Intents written.
    pub planned: u32,
    /// Settlements that succeeded (sent, or found settled on-chain already).
    pub succeeded: u32,
    /// Attempts that failed and will be retried.
    pub failed: u32,
    /// Settlements dead-lettered.
    pub dead_lettered: u32,
    /// Transactions sent.
    pub transactions: u32,
    /// Settlements a reorganisation dropped: no longer counted as paid.
    pub reverted: u32,
}

/// Settles what keys owe (see the crate docs).
#[derive(Debug, Clone)]
pub struct SettlementWorker {
    store: Store,
    validator: Validator,
    config: SettlementConfig,
}

impl SettlementWorker {
    /// A worker writing intents to `store` and sending through `validator` (whose provider
    /// signs: that account pays the gas).
    pub fn new(store: Store, validator: Validator, config: SettlementConfig) -> Self {
        Self { store, validator, config }
    }

    /// Rounds until `shutdown` resolves.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tracing::info!(payee = %self.config.payee, worker = %self.config.worker_id, "settlement worker started");
        crate::run_rounds("settlement", self.config.poll_interval, shutdown, || async {
            let report = self.tick(crate::now()).await?;
            if report != TickReport::default() {
                tracing::info!(?report, "settlement round");
            }
            Ok(())
        })
        .await;
    }

    /// One round at `now`: check the settlements not final yet, plan, then settle what is due.
    pub async fn tick(&self, now: u64) -> Result<TickReport> {
        // The chain being away must not stop the planning, which reads the database only.
        let reverted = self.reconcile(now).await.unwrap_or_else(|err| {
            tracing::warn!(error = %err, "could not check recent settlements against the chain");
            0
        });
        let planned = self.plan(now).await?;
        let mut report = self.settle_due(now).await?;
        report.planned = planned;
        report.reverted = reverted;
        Ok(report)
    }

    /// Checks the settlements paid by transactions that are not final yet: one whose block is
    /// [`SettlementConfig::confirmations`] deep is final; one the chain no longer holds (a
    /// reorganisation dropped it, and it is not waiting in the pool to be mined again) no longer
    /// counts as paid, so its key is planned again from what the chain holds, and a
    /// `settlement.reverted` webhook says so. Returns how many were reverted.
    pub async fn reconcile(&self, now: u64) -> Result<u32> {
        use opentab_chain::alloy_provider::Provider;
        let unconfirmed = self.store.unconfirmed_settlements(self.config.payee, 50).await?;
        if unconfirmed.is_empty() {
            return Ok(0);
        }
        let provider = self.validator.provider();
        let rpc = |e| crate::Error::Chain(opentab_chain::Error::Rpc(e));
        let head = provider.get_block_number().await.map_err(rpc)?;
        let mut reverted = 0;
        for s in unconfirmed {
            let Some(tx) = s.tx_hash else { continue };
            match provider.get_transaction_receipt(tx).await.map_err(rpc)? {
                Some(receipt) => {
                    if receipt.block_number.is_some_and(|b| head.saturating_sub(b) >= self.config.confirmations) {
                        self.store.settlement_confirmed(s.id, now).await?;
                    }
                }
                None if provider.get_transaction_by_hash(tx).await.map_err(rpc)?.is_some() => {}
                None => {
                    let webhook = self.webhook(&s, "settlement.reverted", now, json!({ "txHash": tx }));
                    if self.store.settlement_reverted(s.id, tx, &webhook, now).await? {
                        tracing::warn!(id = s.id, key = %s.intent.session_key, %tx,
                            "the chain dropped a settlement (a reorganisation): its key is settled again");
                        reverted += 1;
                    }
                }
            }
        }
        Ok(reverted)
    }

    /// Writes an intent for each key that is due and has none open; returns how many.
    pub async fn plan(&self, now: u64) -> Result<u32> {
        let mut planned = 0;
        for owed in self.store.owed(self.config.payee).await? {
            let key = &owed.key.key;
            let mut state = KeyOwed {
                key,
                frozen_offchain: owed.key.frozen_offchain_at.is_some(),
                served: owed.served,
                settled: key.settled,
                withdrawal_pending: owed.withdrawal_pending,
            };
            // Most keys owe less than the threshold: decide on the chain's figure first, and only
            // then count a settlement that succeeded but is not confirmed by the listener yet
            // (it can only make the key owe less).
            if due(&state, now).is_none() {
                continue;
            }
            let recorded = self.store.settled_voucher(key.address).await?.unwrap_or_default();
            state.settled = key.settled.max(Usdc::try_from(recorded).unwrap_or(key.settled));
            let settled = state.settled;
            let Some(reason) = due(&state, now) else { continue };
            let Some((voucher, signature)) = self.store.claimable_voucher(key.address, owed.served).await? else {
                continue;
            };
            let Ok(voucher_units) = Usdc::try_from(voucher) else { continue };
            if voucher_units <= settled {
                continue;
            }
            let intent = NewSettlement {
                session_key: key.address,
                owner: key.owner,
                payee: key.payee,
                voucher,
                signature,
                amount: voucher_units.saturating_sub(settled),
                reason: reason.as_str().to_owned(),
            };
            if let Some(id) = self.store.insert_settlement(&intent, now).await? {
                tracing::info!(id, key = %key.address, amount = %intent.amount.display(), reason = reason.as_str(), "settlement planned");
                planned += 1;
            }
        }
        Ok(planned)
    }

    /// Leases due intents and settles them: those already settled on-chain are recorded as
    /// such; first attempts go out together in one `settleBatch`, retries one by one.
    pub async fn settle_due(&self, now: u64) -> Result<TickReport> {
        let round = Round { started: now, at: std::time::Instant::now() };
        let until = now + self.config.lease.as_secs().max(1);
        let leased = self.store.lease_settlements(&self.config.worker_id, now, until, self.config.batch_max).await?;
        let mut report = TickReport::default();
        let mut fresh = Vec::new();
        let mut retries = Vec::new();
        for s in leased {
            // Restart-safe: an earlier attempt may have landed after its worker gave up on it.
            let on_chain = match self.validator.session_key(s.intent.session_key).await {
                Ok(Some(k)) => k.settled,
                Ok(None) => {
                    self.failed(&s, "the key is not registered on-chain", now, &mut report).await?;
                    continue;
                }
                Err(err) => {
                    self.failed(&s, &err.to_string(), now, &mut report).await?;
                    continue;
                }
            };
            if on_chain.to_u256() >= s.intent.voucher {
                let recorded = self.store.settled_voucher(s.intent.session_key).await?;
                if s.attempts == 0 && recorded.is_some_and(|v| v >= s.intent.voucher) {
                    // Planned in the instant another worker's settlement of it succeeded:
                    // nothing was sent for this one, and that one is recorded and announced.
                    self.store.drop_superseded_settlement(s.id, &self.config.worker_id).await?;
                    continue;
                }
                tracing::info!(id = s.id, key = %s.intent.session_key, "already settled on-chain");
                self.succeeded(&s, None, Usdc::ZERO, s.intent.voucher, now, &mut report).await?;
            } else if s.attempts == 0 {
                fresh.push((s, on_chain));
            } else {
                retries.push((s, on_chain));
            }
        }
        if fresh.len() > 1 {
            // Every lease of the round is renewed, not only the batch's: the retries wait for it.
            let all: Vec<u64> = fresh.iter().chain(&retries).map(|(s, _)| s.id).collect();
            let held = self.renew(&all, &round).await?;
            fresh.retain(|(s, _)| held.contains(&s.id));
            retries.retain(|(s, _)| held.contains(&s.id));
        }
        if fresh.len() > 1 {
            let claims: Vec<Claim> = fresh
                .iter()
                .map(|(s, _)| Claim {
                    session_key: s.intent.session_key,
                    cumulative_amount: s.intent.voucher,
                    signature: s.intent.signature,
                })
                .collect();
            report.transactions += 1;
            match self.send(self.validator.settle_batch(self.config.payee, &claims)).await {
                Ok(outcome) => {
                    // Best-effort on-chain: every claim that could pay did; the others are
                    // retried like a failed attempt, with the contract's reason.
                    for (s, _) in &fresh {
                        self.record(s, &outcome, round.now(), &mut report).await?;
                    }
                    return Ok(report.merge(self.settle_each(retries, &round).await?));
                }
                Err(err) => {
                    // The whole transaction failed (RPC, gas, an unauthorised settler): try them
                    // one by one, so each claim is charged its own attempt.
                    tracing::warn!(error = %err, claims = fresh.len(), "settleBatch failed; settling one by one");
                }
            }
        }
        fresh.append(&mut retries);
        let each = self.settle_each(fresh, &round).await?;
        Ok(report.merge(each))
    }

    /// Renews this worker's leases of `ids` to cover one more transaction and its receipt;
    /// returns those it still holds.
    async fn renew(&self, ids: &[u64], round: &Round) -> Result<Vec<u64>> {
        let until = round.now() + self.config.tx_timeout.as_secs() + self.config.lease.as_secs().max(1);
        let held = self.store.renew_settlement_leases(&self.config.worker_id, ids, until).await?;
        if held.len() < ids.len() {
            tracing::warn!(worker = %self.config.worker_id, lost = ids.len() - held.len(), "leases taken over by another worker: not sending those");
        }
        Ok(held)
    }

    async fn settle_each(&self, due: Vec<(Settlement, Usdc)>, round: &Round) -> Result<TickReport> {
        let mut report = TickReport::default();
        let mut ids: Vec<u64> = due.iter().map(|(s, _)| s.id).collect();
        for (s, _) in due {
            // Before each send, every lease this round still holds is renewed.
            let held = self.renew(&ids, round).await?;
            ids.retain(|id| *id != s.id && held.contains(id));
            if !held.contains(&s.id) {
                continue;
            }
            report.transactions += 1;
            let sent =
                self.send(self.validator.settle(s.intent.session_key, s.intent.voucher, &s.intent.signature)).await;
            match sent {
                Ok(outcome) => self.record(&s, &outcome, round.now(), &mut report).await?,
                Err(err) => self.failed(&s, &err, round.now(), &mut report).await?,
            }
        }
        Ok(report)
    }

    /// Records what a mined settlement did for `s`: paid in full, paid in part by a short tab
    /// (the rest is planned again), or skipped by the batch (retried).
    async fn record(&self, s: &Settlement, outcome: &SettleOutcome, now: u64, report: &mut TickReport) -> Result<()> {
        let tx = Some(outcome.tx.tx_hash);
        let key = s.intent.session_key;
        if let Some((paid, settled_total)) = outcome.paid_for(key) {
            return self.succeeded(s, tx, paid, settled_total.to_u256(), now, report).await;
        }
        let reason = outcome.skipped_for(key).map_or("the transaction paid nothing for this claim", SkipReason::as_str);
        let error = format!("claim skipped: {reason}");
        self.failed(s, &error, now, report).await
    }

    /// Sends and waits for the receipt, at most `tx_timeout`.
    async fn send(
        &self,
        call: impl std::future::Future<Output = opentab_chain::Result<SettleOutcome>>,
    ) -> Result<SettleOutcome, String> {
        match tokio::time::timeout(self.config.tx_timeout, call).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err(format!("no receipt within {:?}", self.config.tx_timeout)),
        }
    }

    async fn succeeded(
        &self,
        s: &Settlement,
        tx: Option<B256>,
        amount: Usdc,
        settled_total: U256,
        now: u64,
        report: &mut TickReport,
    ) -> Result<()> {
        // A short tab paid part of the voucher: announced as such; the rest stays claimable.
        let partial = settled_total < s.intent.voucher;
        let kind = if partial { "settlement.partial" } else { "settlement.succeeded" };
        let mut extra = json!({ "txHash": tx, "settled": amount, "settledTotal": settled_total.to_string() });
        if partial {
            let short = Usdc::try_from(s.intent.voucher - settled_total).unwrap_or(Usdc::ZERO);
            extra["unpaid"] = json!(short);
        }
        let webhook = self.webhook(s, kind, now, extra);
        if self.store.settlement_succeeded(self.leased(s), tx, settled_total, &webhook, now).await? {
            if partial {
                tracing::warn!(id = s.id, key = %s.intent.session_key, tx = ?tx, amount = %amount.display(),
                    "settled in part: the owner's tab is short; the rest stays claimable");
            } else {
                tracing::info!(id = s.id, key = %s.intent.session_key, tx = ?tx, amount = %amount.display(), "settled");
            }
            report.succeeded += 1;
        }
        Ok(())
    }

    async fn failed(&self, s: &Settlement, error: &str, now: u64, report: &mut TickReport) -> Result<()> {
        let failures = s.attempts.saturating_add(1);
        let dead = failures > MAX_RETRIES;
        let delay = retry_delay(self.config.retry_base, failures, rand::random::<f64>());
        let next = now + delay.as_secs().max(1);
        let kind = if dead { "settlement.dead_lettered" } else { "settlement.failed" };
        let webhook = self.webhook(s, kind, now, json!({ "error": error, "attempts": failures }));
        if !self.store.settlement_failed(self.leased(s), error, next, dead, &webhook, now).await? {
            return Ok(());
        }
        if dead {
            // The alert: an operator must look (`opentab settlements retry ID` once fixed).
            tracing::error!(id = s.id, key = %s.intent.session_key, error, attempts = failures,
                "settlement dead-lettered after {MAX_RETRIES} retries; retry it with `opentab settlements retry {}`", s.id);
            report.dead_lettered += 1;
        } else {
            tracing::warn!(id = s.id, key = %s.intent.session_key, error, attempts = failures, retry_in = ?delay, "settlement failed");
            report.failed += 1;
        }
        Ok(())
    }

    fn leased(&self, s: &Settlement) -> Leased<'_> {
        Leased { id: s.id, worker: &self.config.worker_id }
    }

    fn webhook(&self, s: &Settlement, kind: &str, now: u64, extra: serde_json::Value) -> NewWebhook {
        let mut data = json!({
            "settlementId": s.id,
            "sessionKey": s.intent.session_key,
            "owner": s.intent.owner,
            "payee": s.intent.payee,
            "voucher": s.intent.voucher.to_string(),
            "amount": s.intent.amount,
            "reason": s.intent.reason,
        });
        if let (Some(data), serde_json::Value::Object(extra)) = (data.as_object_mut(), extra) {
            data.extend(extra);
        }
        NewWebhook {
            // Unique per change: a settlement changes state once per attempt.
            event_id: format!(
                "msg_settlement_{}_{}_{}_{now}",
                s.id,
                kind.rsplit('.').next().unwrap_or(kind),
                s.attempts
            ),
            event_type: kind.to_owned(),
            payload: json!({ "type": kind, "timestamp": opentab_core::format_rfc3339(now), "data": data }).to_string(),
        }
    }
}

/// The clock of one round: `tick`'s `now` when it began, moved on by the time the round has
/// taken (tests pass a `now` of their own; leases renewed mid-round must follow it).
#[derive(Debug, Clone, Copy)]
struct Round {
    started: u64,
    at: std::time::Instant,
}

impl Round {
    fn now(&self) -> u64 {
        self.started + self.at.elapsed().as_secs()
    }
}

impl TickReport {
    /// Adds the counts of `other`.
    fn merge(mut self, other: Self) -> Self {
        self.succeeded += other.succeeded;
        self.reverted += other.reverted;
        self.failed += other.failed;
        self.dead_lettered += other.dead_lettered;
        self.transactions += other.transactions;
        self
    }
}
