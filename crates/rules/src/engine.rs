//! The engine: per-key activity in memory, the rules applied to each charge event under the
//! key's settings, crossings recorded with their effects in one transaction.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Mutex;

use opentab_core::rules::{Activity, Breach, Rule, RuleMode, RuleSettings, Transition, evaluate, transitions};
use opentab_core::{Address, Usdc};
use opentab_gateway::{ChargeEvent, ChargeObserver, UsageKind};
use opentab_store::{EffectKind, NewAlert, NewEffect, NewWebhook, Store};
use serde_json::json;

use crate::settings::SettingsCache;
use crate::{Error, Result};

const FROZEN_BY_GUARDIAN: &str = "The key is frozen, at the gateway and (through your guardian) on-chain: no \
                                  call is served with it until its owner unfreezes it.";
const FROZEN_AT_GATEWAY: &str =
    "The key is frozen at the gateway: no call is served with it until its owner unfreezes it.";

/// What the engine remembers of one key. The average is judged on the charges this node sees
/// (with several nodes, its share of a key's calls); the rate, where the counters are shared
/// (Redis), on every node's charges, counted in the charge script; the limit on the counters'
/// served total, exact either way.
#[derive(Debug, Default)]
struct KeyStats {
    /// Charges less voids.
    calls: u64,
    /// What those charges came to (the spike rule's running average is `served / calls`).
    served: Usdc,
    /// Unix seconds of the charges in the last minute.
    recent: VecDeque<u64>,
    /// Per route: charges less voids, and what they came to (the spike rule by route).
    routes: HashMap<String, (u64, Usdc)>,
    firing: Vec<Rule>,
    /// Unix seconds of its last charge or void.
    last_at: u64,
}

/// A key with no rule firing that has not been charged for this long is forgotten; its history
/// is read back from the ledger if it is charged again.
const FORGET_AFTER_SECS: u64 = 3_600;

/// How often (in event time) idle keys are looked for.
const SWEEP_EVERY_SECS: u64 = 60;

/// One crossing to record, with the numbers that decided it.
#[derive(Debug)]
struct Decided {
    transition: Transition,
    activity: Activity,
}

/// A crossing the engine recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crossing {
    /// What changed.
    pub transition: Transition,
    /// Whether the key was frozen for it (a freezing rule fired in `enforce` mode).
    pub froze: bool,
}

/// Told of each crossing recorded, with the key's owner and the key (the web UI's live feed).
type Listener = std::sync::Arc<dyn Fn(Address, Address) + Send + Sync>;

/// The rule engine (see the crate docs). Share it as an `Arc<dyn ChargeObserver>`.
pub struct RuleEngine {
    store: Store,
    /// Every owner's settings, over the deployment's seed.
    settings: SettingsCache,
    guardian: Option<Address>,
    listener: Option<Listener>,
    /// Never held across an await: a key's rules run whole between two charges of it.
    keys: Mutex<HashMap<Address, KeyStats>>,
    /// When idle keys were last forgotten (event time).
    swept_at: std::sync::atomic::AtomicU64,
    /// How long an idle key is remembered.
    forget_after: u64,
}

impl RuleEngine {
    /// An engine recording to `store`, its memory loaded from it: every key's calls and served
    /// total (overall and per route), the last minute's charges, the rules firing and every
    /// owner's settings, in a handful of queries (not five per key on its first charge, which at
    /// 100,000 keys was the gateway's bottleneck). `seed` is the deployment's settings, which
    /// owners' own defaults and keys' overrides are laid over; a change to those reaches the
    /// engine through the store's change feed, before the next charge it judges.
    pub async fn start(store: Store, seed: RuleSettings) -> Result<Self> {
        let now = crate::unix_now();
        let settings = SettingsCache::start(&store, seed).await?;
        let mut keys: HashMap<Address, KeyStats> = HashMap::new();
        for activity in store.rule_activity(now.saturating_sub(59)).await? {
            keys.insert(
                activity.key,
                KeyStats {
                    calls: activity.calls,
                    served: activity.served,
                    recent: activity.recent.into(),
                    routes: activity
                        .routes
                        .into_iter()
                        .map(|(route, calls, served)| (route, (calls, served)))
                        .collect(),
                    firing: Vec::new(),
                    last_at: now,
                },
            );
        }
        for (key, rule) in store.open_alerts(None).await? {
            if let Ok(rule) = rule.parse() {
                keys.entry(key).or_default().firing.push(rule);
            }
        }
        Ok(Self {
            store,
            settings,
            guardian: None,
            listener: None,
            keys: Mutex::new(keys),
            swept_at: std::sync::atomic::AtomicU64::new(0),
            forget_after: FORGET_AFTER_SECS,
        })
    }

    /// Calls `listener(owner, key)` after each crossing it records.
    #[must_use]
    pub fn with_listener(mut self, listener: impl Fn(Address, Address) + Send + Sync + 'static) -> Self {
        self.listener = Some(std::sync::Arc::new(listener));
        self
    }

    /// Freezes on-chain too, through `guardian`, for the owners who made it their guardian: the
    /// freeze is left in the outbox for [`crate::Guardian`] to send.
    #[must_use]
    pub fn with_guardian(mut self, guardian: Address) -> Self {
        self.guardian = Some(guardian);
        self
    }

    /// Remembers idle keys for ever instead of recalling them from the ledger: for the traffic
    /// simulator (`opentab rules-sim`), which keeps no ledger to recall them from.
    #[must_use]
    pub fn remembering_idle_keys(mut self) -> Self {
        self.forget_after = u64::MAX;
        self
    }

    /// How many keys the engine remembers.
    pub fn keys_known(&self) -> usize {
        self.keys.lock().map_or(0, |keys| keys.len())
    }

    /// The settings in force for `owner`'s `key` now.
    pub async fn settings_of(&self, owner: Address, key: Address) -> Result<RuleSettings> {
        self.settings.effective(&self.store, owner, key).await
    }

    /// Applies the rules to `event`, which the ledger holds already, under its key's settings,
    /// and records what crossed; returns the crossings. A crossing that could not be recorded
    /// is forgotten, so the key's next charge decides it again.
    pub async fn apply(&self, event: &ChargeEvent) -> Result<Vec<Crossing>> {
        // A key charged before that the engine does not know was forgotten while idle (or so
        // far charged only on other gateways): its history comes back from the ledger.
        if event.kind == UsageKind::Charge && event.served > event.amount && !self.knows(event.key)? {
            self.recall(event).await?;
        }
        let settings = self.settings_of(event.owner, event.key).await?;
        let decided = self.decide(event, &settings)?;
        let mut crossed = Vec::with_capacity(decided.len());
        let mut failure = None;
        for d in decided {
            if failure.is_none() {
                let (recorded, froze) = match &d.transition {
                    Transition::Fired { rule, breach } => {
                        let froze = rule.freezes() && settings.mode(*rule) == RuleMode::Enforce;
                        (self.fire(event, *rule, breach, &d.activity, &settings, froze).await, froze)
                    }
                    Transition::Recovered { rule } => (self.recover(event, *rule).await, false),
                };
                match recorded {
                    Ok(()) => {
                        if let Some(listener) = &self.listener {
                            listener(event.owner, event.key);
                        }
                        crossed.push(Crossing { transition: d.transition, froze });
                        continue;
                    }
                    Err(err) => failure = Some(err),
                }
            }
            self.forget(event.key, &d.transition);
        }
        if let Some(err) = failure {
            return Err(err);
        }
        Ok(crossed)
    }

    fn knows(&self, key: Address) -> Result<bool> {
        Ok(self.keys.lock().map_err(|_| Error::Poisoned)?.contains_key(&key))
    }

    /// Reads `event`'s key's history back from the store (the ledger holds `event` already:
    /// it is taken out, so the key is judged on what came before it).
    async fn recall(&self, event: &ChargeEvent) -> Result<()> {
        let activity = self.store.rule_activity_of(event.key, event.at.saturating_sub(59)).await?;
        let firing: Vec<Rule> = self
            .store
            .open_alerts(Some(event.key))
            .await?
            .into_iter()
            .filter_map(|(_, rule)| rule.parse().ok())
            .collect();
        let mut recent: VecDeque<u64> = activity.recent.into();
        if let Some(this) = recent.iter().rposition(|&at| at == event.at) {
            recent.remove(this);
        }
        let mut routes: HashMap<String, (u64, Usdc)> =
            activity.routes.into_iter().map(|(route, calls, served)| (route, (calls, served))).collect();
        if let Some((calls, served)) = routes.get_mut(&event.route) {
            *calls = calls.saturating_sub(1);
            *served = served.saturating_sub(event.amount);
        }
        let stats = KeyStats {
            calls: activity.calls.saturating_sub(1),
            served: activity.served.saturating_sub(event.amount),
            recent,
            routes,
            firing,
            last_at: event.at,
        };
        self.keys.lock().map_err(|_| Error::Poisoned)?.entry(event.key).or_insert(stats);
        Ok(())
    }

    /// Forgets keys idle for [`FORGET_AFTER_SECS`] (unless told otherwise) with no rule firing
    /// (but `current`, whose event is being judged), at most once every [`SWEEP_EVERY_SECS`],
    /// and gives back what bursts left in the others' memory.
    fn sweep(&self, keys: &mut HashMap<Address, KeyStats>, current: Address, now: u64) {
        use std::sync::atomic::Ordering;
        let last = self.swept_at.load(Ordering::Relaxed);
        if now < last.saturating_add(SWEEP_EVERY_SECS) {
            return;
        }
        self.swept_at.store(now, Ordering::Relaxed);
        keys.retain(|key, stats| {
            *key == current || !stats.firing.is_empty() || stats.last_at.saturating_add(self.forget_after) > now
        });
        for stats in keys.values_mut() {
            if stats.recent.capacity() > 4 * stats.recent.len().max(16) {
                stats.recent.shrink_to_fit();
            }
        }
    }

    /// The rules' verdict on `event` under `settings`, the key's memory moved past it (pure,
    /// under the lock).
    fn decide(&self, event: &ChargeEvent, settings: &RuleSettings) -> Result<Vec<Decided>> {
        let mut keys = self.keys.lock().map_err(|_| Error::Poisoned)?;
        self.sweep(&mut keys, event.key, event.at);
        let stats = keys.entry(event.key).or_default();
        stats.last_at = stats.last_at.max(event.at);
        if event.kind == UsageKind::Void {
            stats.calls = stats.calls.saturating_sub(1);
            stats.served = stats.served.saturating_sub(event.amount);
            if let Some((calls, served)) = stats.routes.get_mut(&event.route) {
                *calls = calls.saturating_sub(1);
                *served = served.saturating_sub(event.amount);
            }
            return Ok(Vec::new());
        }
        while stats.recent.front().is_some_and(|&t| t + 60 <= event.at) {
            stats.recent.pop_front();
        }
        stats.recent.push_back(event.at);
        let (route_calls_before, route_served_before) = stats.routes.get(&event.route).copied().unwrap_or_default();
        let activity = Activity {
            charge: event.amount,
            calls_before: stats.calls,
            served_before: stats.served,
            route_calls_before,
            route_served_before,
            // Shared counters count every gateway's charges; alone, this node sees them all.
            calls_last_minute: event.recent_calls.unwrap_or(u32::try_from(stats.recent.len()).unwrap_or(u32::MAX)),
            limit: event.limit,
            // The counters' total: exact across gateway nodes.
            served_after: event.served,
        };
        stats.calls += 1;
        stats.served = stats.served.saturating_add(event.amount);
        match stats.routes.get_mut(&event.route) {
            Some((calls, served)) => {
                *calls += 1;
                *served = served.saturating_add(event.amount);
            }
            None => {
                stats.routes.insert(event.route.clone(), (1, event.amount));
            }
        }
        let changes = transitions(&stats.firing, &evaluate(&activity, &event.route, settings));
        for change in &changes {
            match change {
                Transition::Fired { rule, .. } => stats.firing.push(*rule),
                Transition::Recovered { rule } => stats.firing.retain(|r| r != rule),
            }
        }
        Ok(changes.into_iter().map(|transition| Decided { transition, activity }).collect())
    }

    /// Undoes `transition` in memory (it could not be recorded).
    fn forget(&self, key: Address, transition: &Transition) {
        let Ok(mut keys) = self.keys.lock() else { return };
        let Some(stats) = keys.get_mut(&key) else { return };
        match transition {
            Transition::Fired { rule, .. } => stats.firing.retain(|r| r != rule),
            Transition::Recovered { rule } => stats.firing.push(*rule),
        }
    }

    async fn fire(
        &self,
        event: &ChargeEvent,
        rule: Rule,
        breach: &Breach,
        activity: &Activity,
        settings: &RuleSettings,
        froze: bool,
    ) -> Result<()> {
        let reason = breach.reason.as_str();
        let by_guardian = match self.guardian {
            Some(guardian) if froze => self.store.guardian(event.owner).await? == Some(guardian),
            _ => false,
        };
        let mut inputs = json!({
            "charge": activity.charge,
            "route": event.route,
            "callsBefore": activity.calls_before,
            "servedBefore": activity.served_before,
            "callsLastMinute": activity.calls_last_minute,
            "limit": activity.limit,
            "servedAfter": activity.served_after,
            "threshold": breach.threshold,
            "wouldNotFire": breach.would_not_fire,
        });
        if let (Rule::Spike, Some((average, by_route))) = (rule, activity.spike_average(settings)) {
            inputs["average"] = json!(average);
            inputs["averageOf"] = json!(if by_route { "route" } else { "key" });
        }
        let (key, owner, mode) = (event.key, event.owner, settings.mode(rule).as_str());
        let alert = NewAlert {
            session_key: key,
            owner,
            rule: rule.as_str().to_owned(),
            mode: mode.to_owned(),
            reason: reason.to_owned(),
            inputs: inputs.to_string(),
            froze,
        };
        let data = json!({
            "sessionKey": key, "owner": owner, "rule": rule.as_str(), "mode": mode,
            "reason": reason, "froze": froze, "guardianFreezeSent": by_guardian, "inputs": inputs,
        });
        let webhook = webhook("key.alert", key, rule, event.at, data);
        let outcome = match (froze, by_guardian) {
            (true, true) => FROZEN_BY_GUARDIAN,
            (true, false) => FROZEN_AT_GATEWAY,
            (false, _) => "No action was taken.",
        };
        let email = json!({
            "subject": format!("opentab alert: {} on key {key:#x}", rule.as_str()),
            "body": format!(
                "Session key {key:#x} (owner {owner:#x}) broke the {} rule: {reason}.\n{outcome}\n",
                rule.as_str()
            ),
        });
        let mut effects = vec![NewEffect { kind: EffectKind::Email, payload: email.to_string() }];
        if by_guardian {
            effects.push(NewEffect { kind: EffectKind::GuardianFreeze, payload: "{}".to_owned() });
        }
        if self.store.fire_alert(&alert, &webhook, &effects, event.at).await? {
            if froze {
                tracing::warn!(%key, rule = rule.as_str(), reason, "rule engine froze the key");
            } else {
                tracing::info!(%key, rule = rule.as_str(), reason, "rule alert");
            }
        }
        Ok(())
    }

    async fn recover(&self, event: &ChargeEvent, rule: Rule) -> Result<()> {
        let data = json!({ "sessionKey": event.key, "owner": event.owner, "rule": rule.as_str() });
        let webhook = webhook("key.alert_recovered", event.key, rule, event.at, data);
        self.store.recover_alert(event.key, rule.as_str(), &webhook, event.at).await?;
        Ok(())
    }
}

impl std::fmt::Debug for RuleEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleEngine")
            .field("settings", &self.settings)
            .field("guardian", &self.guardian)
            .field("keys", &self.keys_known())
            .finish_non_exhaustive()
    }
}

impl ChargeObserver for RuleEngine {
    fn observe(&self, event: ChargeEvent) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            // The charge is durable already: an engine failure is logged, never the call's.
            if let Err(err) = self.apply(&event).await {
                tracing::warn!(error = %err, key = %event.key, "rule engine could not check a charge");
            }
        })
    }
}

fn webhook(kind: &str, key: Address, rule: Rule, now: u64, data: serde_json::Value) -> NewWebhook {
    NewWebhook {
        event_id: format!("msg_{}_{key:x}_{}_{now}", kind.replace('.', "_"), rule.as_str()),
        event_type: kind.to_owned(),
        payload: json!({ "type": kind, "timestamp": opentab_core::format_rfc3339(now), "data": data }).to_string(),
    }
}
