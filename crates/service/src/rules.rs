//! The rule engine (DESIGN §4): watches every charge the gateway records and applies the rules
//! of `opentab_core::rules`. A spike or a burst freezes the key off-chain at once (in
//! `enforce` mode) and, when the owner made this service's [`Guardian`] their guardian, on-chain
//! too; every crossing is recorded with its numbers, announced by webhook (`key.alert`,
//! `key.alert_recovered`) and, with a mailer, by email.
//!
//! [`RuledLedger`] wraps the gateway's usage ledger: the charge is recorded first, then the
//! rules run (an engine failure is logged; it never fails a charge that is already durable).
//! Per-key activity (calls, served, the last minute's calls) is kept in memory, seeded from the
//! database the first time a key is seen; with several gateway nodes each sees its share of a
//! key's rate. Each key has its own lock: a key's rules run one charge at a time (a crossing
//! must fire once), other keys' charges do not wait for it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use opentab_chain::Validator;
use opentab_core::rules::{Activity, Rule, RuleConfig, Transition, evaluate, transitions};
use opentab_core::{Address, Usdc};
use opentab_gateway::{Unavailable, UsageKind, UsageLedger, UsageRecord};
use opentab_store::{AuditEntry, NewAlert, NewWebhook, Store};
use serde_json::json;
use tokio::sync::Mutex;

use crate::{Change, Notifier};

/// How long sending one alert email may take.
const SMTP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Sends alert email through an SMTP relay, off the charge path, within [`SMTP_TIMEOUT`].
#[derive(Clone)]
pub struct Mailer {
    transport: lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
    from: lettre::message::Mailbox,
    to: lettre::message::Mailbox,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer").field("from", &self.from).field("to", &self.to).finish_non_exhaustive()
    }
}

impl Mailer {
    /// A mailer for `smtp://host:port` (plain SMTP: a relay on localhost or a private network)
    /// writing from `from` to `to`.
    pub fn new(smtp_url: &str, from: &str, to: &str) -> crate::Result<Self> {
        let bad = |what: String| crate::Error::Config(what);
        let rest =
            smtp_url.strip_prefix("smtp://").ok_or_else(|| bad(format!("{smtp_url:?} is not smtp://host:port")))?;
        let (host, port) = rest.rsplit_once(':').unwrap_or((rest, "25"));
        let port: u16 = port.trim_end_matches('/').parse().map_err(|_| bad(format!("bad port in {smtp_url:?}")))?;
        let transport = lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .timeout(Some(SMTP_TIMEOUT))
            .build();
        Ok(Self {
            transport,
            from: from.parse().map_err(|e| bad(format!("alert sender {from:?}: {e}")))?,
            to: to.parse().map_err(|e| bad(format!("alert recipient {to:?}: {e}")))?,
        })
    }

    async fn send(&self, subject: &str, body: String) -> Result<(), String> {
        use lettre::AsyncTransport;
        let message = lettre::Message::builder()
            .from(self.from.clone())
            .to(self.to.clone())
            .subject(subject)
            .body(body)
            .map_err(|e| e.to_string())?;
        self.transport.send(message).await.map(|_| ()).map_err(|e| e.to_string())
    }
}

const FROZEN_BY_GUARDIAN: &str = "The key is frozen, at the gateway and (through your guardian) on-chain: no \
                                  call is served with it until its owner unfreezes it.";
const FROZEN_AT_GATEWAY: &str =
    "The key is frozen at the gateway: no call is served with it until its owner unfreezes it.";

/// The account the rule engine freezes keys on-chain with, for the owners who chose it as
/// their guardian (`setGuardian`). The contract lets a guardian freeze, never unfreeze: the
/// owner stays the only one who can restart spending.
#[derive(Debug, Clone)]
pub struct Guardian {
    validator: Validator,
    address: Address,
}

impl Guardian {
    /// `validator` must send from `address` (a provider signing with the guardian's key).
    pub const fn new(validator: Validator, address: Address) -> Self {
        Self { validator, address }
    }

    /// The guardian's account.
    pub const fn address(&self) -> Address {
        self.address
    }

    /// Sends `freeze(key)` in the background: the charge that broke the rule does not wait for
    /// a block. The gateway's own freeze already holds; a failure here is logged and audited.
    fn freeze_in_background(&self, store: Store, key: Address, rule: Rule) {
        let (validator, guardian) = (self.validator.clone(), self.address);
        tokio::spawn(async move {
            let (action, detail) = match validator.freeze(key).await {
                Ok(outcome) => {
                    tracing::warn!(%key, tx = %outcome.tx_hash, rule = rule.as_str(), "guardian froze the key on-chain");
                    ("key.guardian_freeze", json!({ "rule": rule.as_str(), "tx": outcome.tx_hash }))
                }
                Err(err) => {
                    tracing::warn!(%key, error = %err, "the guardian could not freeze the key on-chain; the gateway's freeze holds");
                    ("key.guardian_freeze_failed", json!({ "rule": rule.as_str(), "error": err.to_string() }))
                }
            };
            let entry = AuditEntry::about_key(crate::unix_now(), guardian, action, key, &detail);
            if let Err(err) = store.audit(&entry).await {
                tracing::warn!(%key, error = %err, "could not audit the guardian's freeze");
            }
        });
    }
}

#[derive(Debug)]
struct KeyStats {
    owner: Address,
    limit: Usdc,
    calls: u64,
    served: Usdc,
    /// Unix seconds of the charges in the last minute.
    recent: VecDeque<u64>,
    firing: Vec<Rule>,
}

/// The rule engine (see the module docs).
#[derive(Debug)]
pub struct RuleEngine {
    store: Store,
    config: RuleConfig,
    notifier: Notifier,
    mailer: Option<Mailer>,
    guardian: Option<Guardian>,
    keys: std::sync::Mutex<HashMap<Address, Arc<Mutex<Option<KeyStats>>>>>,
}

impl RuleEngine {
    /// An engine recording to `store`, announcing changes through `notifier`.
    pub fn new(store: Store, config: RuleConfig, notifier: Notifier, mailer: Option<Mailer>) -> Self {
        Self { store, config, notifier, mailer, guardian: None, keys: std::sync::Mutex::default() }
    }

    /// Freezes on-chain with `guardian` too, for owners who made it their guardian.
    #[must_use]
    pub fn with_guardian(mut self, guardian: Guardian) -> Self {
        self.guardian = Some(guardian);
        self
    }

    /// Applies the rules to `record`, which the ledger holds already; returns what changed.
    pub async fn observe(&self, record: &UsageRecord, now: u64) -> crate::Result<Vec<Transition>> {
        let slot = {
            let mut keys = self.keys.lock().map_err(|_| crate::Error::Poisoned("the rule engine's key table"))?;
            keys.entry(record.key).or_default().clone()
        };
        let mut slot = slot.lock().await;
        let stats = match &mut *slot {
            Some(stats) => stats,
            empty => empty.insert(self.seed(record).await?),
        };
        if record.kind == UsageKind::Void {
            stats.calls = stats.calls.saturating_sub(1);
            stats.served = stats.served.saturating_sub(record.amount);
            return Ok(Vec::new());
        }
        while stats.recent.front().is_some_and(|&t| t + 60 <= now) {
            stats.recent.pop_front();
        }
        stats.recent.push_back(now);
        let activity = Activity {
            charge: record.amount,
            calls_before: stats.calls,
            served_before: stats.served,
            calls_last_minute: u32::try_from(stats.recent.len()).unwrap_or(u32::MAX),
            limit: stats.limit,
            served_after: stats.served.saturating_add(record.amount),
        };
        stats.calls += 1;
        stats.served = activity.served_after;
        let changes = transitions(&stats.firing, &evaluate(&activity, &self.config));
        for change in &changes {
            match change {
                Transition::Fired { rule, reason } => {
                    stats.firing.push(*rule);
                    self.fire(record, stats.owner, *rule, reason, &activity, now).await?;
                }
                Transition::Recovered { rule } => {
                    stats.firing.retain(|r| r != rule);
                    self.recover(record.key, stats.owner, *rule, now).await?;
                }
            }
        }
        Ok(changes)
    }

    /// The key's state before `record` (which the ledger already holds).
    async fn seed(&self, record: &UsageRecord) -> crate::Result<KeyStats> {
        let key = self.store.key(record.key).await?;
        let usage = self.store.key_usage(record.key).await?;
        let calls = self.store.charge_count(record.key).await?;
        let (calls, served) = match record.kind {
            UsageKind::Charge => (calls.saturating_sub(1), usage.served.saturating_sub(record.amount)),
            UsageKind::Void => (calls.saturating_add(1), usage.served.saturating_add(record.amount)),
        };
        let firing = self.store.firing_rules(record.key).await?.iter().filter_map(|r| r.parse().ok()).collect();
        // The last minute as the ledger has it, less this record (observe adds it).
        let mut recent: VecDeque<u64> =
            self.store.recent_charges(record.key, record.at.saturating_sub(59)).await?.into();
        if record.kind == UsageKind::Charge
            && let Some(i) = recent.iter().rposition(|&t| t == record.at)
        {
            recent.remove(i);
        }
        Ok(KeyStats {
            owner: record.owner,
            limit: key.map(|k| k.key.limit).unwrap_or_default(),
            calls,
            served,
            recent,
            firing,
        })
    }

    async fn fire(
        &self,
        record: &UsageRecord,
        owner: Address,
        rule: Rule,
        reason: &str,
        activity: &Activity,
        now: u64,
    ) -> crate::Result<()> {
        let froze = rule.freezes() && self.config.mode == opentab_core::rules::RuleMode::Enforce;
        let guardian = match &self.guardian {
            Some(g) if froze && self.store.guardian(owner).await? == Some(g.address) => Some(g),
            _ => None,
        };
        let inputs = json!({
            "charge": activity.charge,
            "callsBefore": activity.calls_before,
            "servedBefore": activity.served_before,
            "callsLastMinute": activity.calls_last_minute,
            "limit": activity.limit,
            "servedAfter": activity.served_after,
        });
        let alert = NewAlert {
            session_key: record.key,
            owner,
            rule: rule.as_str().to_owned(),
            mode: self.config.mode.as_str().to_owned(),
            reason: reason.to_owned(),
            inputs: inputs.to_string(),
            froze,
        };
        let data = json!({
            "sessionKey": record.key, "owner": owner, "rule": rule.as_str(), "mode": self.config.mode.as_str(),
            "reason": reason, "froze": froze, "guardianFreezeSent": guardian.is_some(), "inputs": inputs,
        });
        let webhook = webhook("key.alert", record.key, rule, now, data);
        if !self.store.fire_alert(&alert, &webhook, now).await? {
            return Ok(());
        }
        if froze {
            tracing::warn!(key = %record.key, rule = rule.as_str(), reason, "rule engine froze the key");
            if let Some(guardian) = guardian {
                guardian.freeze_in_background(self.store.clone(), record.key, rule);
            }
        } else {
            tracing::info!(key = %record.key, rule = rule.as_str(), reason, "rule alert");
        }
        self.notifier.publish(Change { owner, key: Some(record.key) });
        if let Some(mailer) = &self.mailer {
            let subject = format!("opentab alert: {} on key {:#x}", rule.as_str(), record.key);
            let body = format!(
                "Session key {:#x} (owner {owner:#x}) broke the {} rule: {reason}.\n{}\n",
                record.key,
                rule.as_str(),
                match (froze, guardian) {
                    (true, Some(_)) => FROZEN_BY_GUARDIAN,
                    (true, None) => FROZEN_AT_GATEWAY,
                    (false, _) => "No action was taken.",
                }
            );
            // Off the charge path: a slow or dead SMTP relay must not hold the key's next call
            // (the alert is durable already, and its webhook is in the outbox).
            let (mailer, key) = (mailer.clone(), record.key);
            tokio::spawn(async move {
                let sent = tokio::time::timeout(SMTP_TIMEOUT, mailer.send(&subject, body)).await;
                match sent {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => {
                        tracing::warn!(error = %err, %key, "alert email not sent (the webhook carries the alert)");
                    }
                    Err(_) => tracing::warn!(%key, "alert email timed out (the webhook carries the alert)"),
                }
            });
        }
        Ok(())
    }

    async fn recover(&self, key: Address, owner: Address, rule: Rule, now: u64) -> crate::Result<()> {
        let data = json!({ "sessionKey": key, "owner": owner, "rule": rule.as_str() });
        let webhook = webhook("key.alert_recovered", key, rule, now, data);
        if self.store.recover_alert(key, rule.as_str(), &webhook, now).await? {
            self.notifier.publish(Change { owner, key: Some(key) });
        }
        Ok(())
    }
}

fn webhook(kind: &str, key: Address, rule: Rule, now: u64, data: serde_json::Value) -> NewWebhook {
    NewWebhook {
        event_id: format!("msg_{}_{key:x}_{}_{now}", kind.replace('.', "_"), rule.as_str()),
        event_type: kind.to_owned(),
        payload: json!({ "type": kind, "timestamp": opentab_core::format_rfc3339(now), "data": data }).to_string(),
    }
}

/// The gateway's ledger with the rule engine behind it.
#[derive(Debug, Clone)]
pub struct RuledLedger<L> {
    inner: L,
    engine: Arc<RuleEngine>,
}

impl<L> RuledLedger<L> {
    /// `inner`, then `engine` on every record.
    pub fn new(inner: L, engine: Arc<RuleEngine>) -> Self {
        Self { inner, engine }
    }
}

impl<L: UsageLedger> UsageLedger for RuledLedger<L> {
    async fn record(&self, record: UsageRecord) -> Result<(), Unavailable> {
        self.inner.record(record.clone()).await?;
        if let Err(err) = self.engine.observe(&record, record.at).await {
            tracing::warn!(error = %err, key = %record.key, "rule engine could not check a charge");
        }
        Ok(())
    }
}
