//! The rule engine on a real ledger (SQLite) with a real SMTP listener and a real chain (anvil):
//! it consumes charge events the way the gateway hands them over (after the ledger row is
//! durable); a burst freezes the key at once and alerts by webhook and, from the outbox, by
//! email, once per crossing, then recovers; a spike freezes; low balance warns without
//! freezing; shadow mode only alerts; a restarted engine judges with the history it loaded;
//! the guardian sends the on-chain freeze from the outbox.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use opentab_accumulator::testing::smtp_listener;
use opentab_accumulator::{EmailSender, Mailer};
use opentab_chain::{Anvil, AnvilConfig, KeyTerms, Validator, deploy_dev_contracts, signing_provider};
use opentab_core::rules::{RuleMode, RuleSettings};
use opentab_core::{Address, B256, SigningKey, U256, Usdc, ValidatorEvent};
use opentab_gateway::{ChargeEvent, UsageKind, UsageLedger, UsageRecord};
use opentab_proxy::StoreLedger;
use opentab_rules::{Guardian, RuleEngine};
use opentab_store::{EffectKind, Store, StoredEvent};
type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

const OWNER: Address = Address::repeat_byte(0xa1);
const PAYEE: Address = Address::repeat_byte(0xee);

struct World {
    _dir: tempfile::TempDir,
    store: Store,
    ledger: StoreLedger,
    engine: RuleEngine,
    /// What the counters would say each key was served.
    served: Mutex<HashMap<Address, Usdc>>,
    blocks: std::sync::atomic::AtomicU64,
}

async fn world(mode: RuleMode) -> TestResult<World> {
    let dir = tempfile::tempdir()?;
    let store = opentab_store::testing::fresh_sqlite(dir.path()).await?;
    World::on(dir, store, mode).await
}

impl World {
    async fn on(dir: tempfile::TempDir, store: Store, mode: RuleMode) -> TestResult<Self> {
        let engine = RuleEngine::start(store.clone(), RuleSettings::default().with_mode(mode)).await?;
        Ok(Self {
            _dir: dir,
            ledger: StoreLedger::new(store.clone()),
            store,
            engine,
            served: Mutex::default(),
            blocks: std::sync::atomic::AtomicU64::new(10),
        })
    }

    /// The same database, with a new engine (a restarted gateway).
    async fn restarted(self, mode: RuleMode) -> TestResult<Self> {
        let mut again = Self::on(self._dir, self.store, mode).await?;
        again.served = self.served;
        again.blocks = self.blocks;
        Ok(again)
    }

    async fn apply(&self, event: ValidatorEvent) -> TestResult {
        let block = self.blocks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stored = StoredEvent {
            block_number: block,
            log_index: 0,
            block_hash: B256::with_last_byte(block as u8),
            tx_hash: B256::with_last_byte(block as u8),
            event,
        };
        self.store.apply_chain_update(Address::repeat_byte(0x77), None, &[stored], "{}", 1).await?;
        Ok(())
    }

    async fn key(&self, limit: &str) -> TestResult<Address> {
        let key = SigningKey::random().address();
        self.register(key, OWNER, limit).await?;
        Ok(key)
    }

    async fn register(&self, key: Address, owner: Address, limit: &str) -> TestResult {
        self.apply(ValidatorEvent::Registered {
            owner,
            session_key: key,
            payee: PAYEE,
            limit: Usdc::parse_decimal(limit)?,
            valid_after: 0,
            valid_until: 4_000_000_000,
        })
        .await
    }

    /// What the gateway does with a charge: the ledger row first, then the event.
    async fn charge(&self, key: Address, price: &str, voucher: u64, at: u64) -> TestResult {
        self.charge_on(key, "POST /v1/chat", price, voucher, at).await
    }

    /// [`Self::charge`] of a call to `route`.
    async fn charge_on(&self, key: Address, route: &str, price: &str, voucher: u64, at: u64) -> TestResult {
        let amount = Usdc::parse_decimal(price)?;
        let terms = self.store.key(key).await?.ok_or("no key")?.key;
        let (owner, limit) = (terms.owner, terms.limit);
        let record = UsageRecord {
            at,
            key,
            owner,
            kind: UsageKind::Charge,
            amount,
            route: route.into(),
            request_id: format!("r{voucher}"),
            voucher: U256::from(voucher),
            signature: Some(SigningKey::random().sign_digest(&B256::repeat_byte(1))),
            idempotency: None,
            void_of: None,
            epoch: None,
        };
        self.ledger.record(record).await?;
        let served = {
            let mut served = self.served.lock().map_err(|_| "poisoned")?;
            let total = served.entry(key).or_default();
            *total = total.saturating_add(amount);
            *total
        };
        let route = route.to_owned();
        let event =
            ChargeEvent { at, key, owner, kind: UsageKind::Charge, amount, route, served, limit, recent_calls: None };
        self.engine.apply(&event).await?;
        Ok(())
    }

    async fn frozen(&self, key: Address) -> TestResult<bool> {
        Ok(self.store.key(key).await?.ok_or("no key")?.frozen_offchain_at.is_some())
    }
}

/// Sends the outbox's email through `smtp` until one went out (or gives up).
async fn mail_out(store: &Store, smtp: &str, mails: &Arc<Mutex<Vec<String>>>) -> TestResult<Vec<String>> {
    let sender = EmailSender::new(store.clone(), Mailer::new(smtp, "opentab <opentab@localhost>", "ops@example.com")?);
    for _ in 0..50 {
        sender.tick(now()).await?;
        if !mails.lock().map_err(|_| "poisoned")?.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(mails.lock().map_err(|_| "poisoned")?.clone())
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[tokio::test]
async fn a_burst_freezes_at_once_alerts_by_webhook_and_email_once_then_recovers() -> TestResult {
    let (smtp, mails) = smtp_listener().await?;
    let w = world(RuleMode::Enforce).await?;
    let key = w.key("100").await?;
    // Real times: the email sender does not mail alerts older than a day.
    let t = now() - 60;
    for n in 1..=100 {
        w.charge(key, "0.002", n, t).await?;
    }
    assert!(!w.frozen(key).await?, "100 calls in a minute are allowed");
    w.charge(key, "0.002", 101, t + 30).await?;
    assert!(w.frozen(key).await?, "the 101st freezes the key off-chain before its event is handled");
    for n in 102..=120 {
        w.charge(key, "0.002", n, t + 31).await?;
    }
    let alerts = w.store.alerts_of(key, 10).await?;
    assert_eq!(alerts.len(), 1, "one alert per crossing");
    assert_eq!((alerts[0].alert.rule.as_str(), alerts[0].alert.froze), ("rate", true));
    assert_eq!(alerts[0].alert.reason, "101 calls in the last minute, more than 100");
    let inputs: serde_json::Value = serde_json::from_str(&alerts[0].alert.inputs)?;
    assert_eq!(inputs["callsLastMinute"], 101);
    assert_eq!(w.store.webhooks_of_type("key.alert").await?.len(), 1);
    // The email is in the outbox, once; the sender mails it.
    assert_eq!(w.store.effects_of(key, EffectKind::Email).await?.len(), 1);
    let mail = mail_out(&w.store, &smtp, &mails).await?;
    assert_eq!(mail.len(), 1, "{mail:?}");
    assert!(mail[0].contains("opentab alert: rate") && mail[0].contains("The key is frozen"), "{}", mail[0]);
    let sent = w.store.effects_of(key, EffectKind::Email).await?;
    assert_eq!(sent[0].status, "done");
    // Nothing for the guardian: this engine has none.
    assert!(w.store.effects_of(key, EffectKind::GuardianFreeze).await?.is_empty());

    // A quiet minute later the condition clears: recovered, announced once.
    w.charge(key, "0.002", 121, t + 200).await?;
    let alerts = w.store.alerts_of(key, 10).await?;
    assert_eq!(alerts[0].recovered_at, Some(t + 200));
    assert_eq!(w.store.webhooks_of_type("key.alert_recovered").await?.len(), 1);
    Ok(())
}

/// Issue 11: the alert email was sent under the key's lock with no timeout, so an SMTP relay
/// that never answers held the charge that fired the rule (and every later call of the key).
/// Now the engine only leaves the email in the outbox: charges never wait for the relay, and
/// the sender gives a dead relay up within its timeout and tries again later.
#[tokio::test]
async fn a_dead_smtp_relay_holds_no_charge_and_its_email_is_retried() -> TestResult {
    // Accepts connections and never says a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("smtp://127.0.0.1:{}", listener.local_addr()?.port());
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            if let Ok(mut keep) = keep.lock() {
                keep.push(socket);
            }
        }
    });
    let w = world(RuleMode::Enforce).await?;
    let key = w.key("100").await?;
    let t = now();
    for n in 1..=102 {
        // Far below the SMTP timeout: a charge waiting for the relay would not make it.
        tokio::time::timeout(std::time::Duration::from_secs(5), w.charge(key, "0.002", n, t))
            .await
            .map_err(|_| format!("charge {n} waited for the SMTP relay"))??;
    }
    assert!(w.frozen(key).await?, "the burst froze the key");
    assert_eq!(w.store.webhooks_of_type("key.alert").await?.len(), 1, "the webhook is in the outbox");
    // Now the sender meets the dead relay: it gives up within its timeout, and keeps the email.
    let sender =
        EmailSender::new(w.store.clone(), Mailer::new(&url, "opentab <opentab@localhost>", "ops@example.com")?);
    let started = std::time::Instant::now();
    assert_eq!(sender.tick(now()).await?, 0, "nothing was sent");
    let waited = started.elapsed();
    assert!(waited < opentab_accumulator::SMTP_TIMEOUT * 2, "the relay held the sender {waited:?}");
    assert!(!held.lock().map_err(|_| "poisoned")?.is_empty(), "the email was attempted");
    let effects = w.store.effects_of(key, EffectKind::Email).await?;
    assert_eq!((effects.len(), effects[0].status.as_str(), effects[0].attempts), (1, "pending", 1), "{effects:?}");
    assert!(effects[0].last_error.is_some());
    Ok(())
}

#[tokio::test]
async fn a_spike_freezes_and_low_balance_only_warns() -> TestResult {
    let w = world(RuleMode::Enforce).await?;
    let spiky = w.key("100").await?;
    for n in 1..=5 {
        w.charge(spiky, "0.002", n, 1_000 + n * 60).await?;
    }
    w.charge(spiky, "0.02", 6, 2_000).await?;
    assert!(!w.frozen(spiky).await?, "exactly 10× the average is not a spike");
    w.charge(spiky, "0.3", 7, 2_100).await?;
    assert!(w.frozen(spiky).await?);
    assert_eq!(w.store.alerts_of(spiky, 10).await?[0].alert.rule, "spike");

    let small = w.key("0.01").await?;
    for n in 1..=4 {
        w.charge(small, "0.002", n, 1_000 + n * 60).await?;
    }
    assert!(w.store.alerts_of(small, 10).await?.is_empty(), "20% left is fine");
    w.charge(small, "0.0015", 5, 1_500).await?;
    let alerts = w.store.alerts_of(small, 10).await?;
    assert_eq!((alerts[0].alert.rule.as_str(), alerts[0].alert.froze), ("low_balance", false));
    assert!(alerts[0].alert.reason.contains("0.0005 USDC of the 0.01 USDC limit left"), "{}", alerts[0].alert.reason);
    assert!(!w.frozen(small).await?, "low balance warns, it does not freeze");
    let email = w.store.effects_of(small, EffectKind::Email).await?;
    assert!(email[0].payload.contains("No action was taken"), "{}", email[0].payload);
    Ok(())
}

#[tokio::test]
async fn shadow_mode_alerts_without_freezing_and_a_new_engine_remembers_what_fires() -> TestResult {
    let w = world(RuleMode::Shadow).await?;
    let key = w.key("100").await?;
    // Real times: a restarted engine loads the last minute of the real clock.
    let t = now() - 5;
    for n in 1..=101 {
        w.charge(key, "0.002", n, t).await?;
    }
    assert!(!w.frozen(key).await?);
    let alerts = w.store.alerts_of(key, 10).await?;
    assert_eq!(
        (alerts[0].alert.rule.as_str(), alerts[0].alert.mode.as_str(), alerts[0].alert.froze),
        ("rate", "shadow", false)
    );

    // A restarted gateway loads what fires: the open alert is not fired again.
    let w = w.restarted(RuleMode::Shadow).await?;
    for n in 102..=210 {
        w.charge(key, "0.002", n, t + 1).await?;
    }
    assert_eq!(w.store.alerts_of(key, 10).await?.len(), 1, "still the one crossing");
    Ok(())
}

/// Issue 11: the engine used to read five queries per key on its first charge; now it loads
/// every key's calls and served total when it starts. A restarted engine must judge a spike
/// against that history, exactly at the boundary: 10× the running average is allowed, one base
/// unit more freezes.
#[tokio::test]
async fn a_restarted_engine_judges_a_spike_on_the_history_it_loaded() -> TestResult {
    let w = world(RuleMode::Enforce).await?;
    let key = w.key("100").await?;
    let other = w.key("100").await?;
    for n in 1..=5 {
        w.charge(key, "0.002", n, 1_000 + n * 60).await?;
        w.charge(other, "0.002", n, 1_000 + n * 60).await?;
    }
    let w = w.restarted(RuleMode::Enforce).await?;
    assert!(w.engine.keys_known() >= 2, "{}", w.engine.keys_known());
    // The average is 0.002: 0.02 is exactly 10×, allowed.
    w.charge(key, "0.02", 6, 2_000).await?;
    assert!(!w.frozen(key).await?, "exactly 10× the loaded average is not a spike");
    // 0.02 + one base unit over the loaded average of `other` (0.002) freezes.
    w.charge(other, "0.020001", 6, 2_000).await?;
    assert!(w.frozen(other).await?, "one base unit over 10× the loaded average freezes");
    // A fresh engine that had loaded nothing would have seen no history and frozen nothing.
    Ok(())
}

/// Issue 12: the engine's per-key memory was never forgotten. A key idle for an hour with no
/// rule firing is forgotten; charged again, it is judged on the history the ledger holds (a
/// fresh memory would have judged no average at all).
#[tokio::test]
async fn an_idle_key_is_forgotten_and_judged_on_its_ledger_history_when_it_returns() -> TestResult {
    let w = world(RuleMode::Enforce).await?;
    let (over, exact, busy) = (w.key("100").await?, w.key("100").await?, w.key("100").await?);
    for n in 1..=5 {
        w.charge(over, "0.002", n, 1_000 + n * 60).await?;
        w.charge(exact, "0.002", n, 1_000 + n * 60).await?;
    }
    w.charge(busy, "0.002", 1, 1_400).await?;
    assert_eq!(w.engine.keys_known(), 3);
    // An hour and more later, another key's charge: the idle ones are forgotten.
    w.charge(busy, "0.002", 2, 1_300 + 3_600 + 60).await?;
    assert_eq!(w.engine.keys_known(), 1, "only the key in use is remembered");
    // They come back: the average (0.002) is read from the ledger. Exactly 10× passes, one
    // base unit more freezes.
    w.charge(exact, "0.02", 6, 5_100).await?;
    assert!(!w.frozen(exact).await?, "exactly 10× the recalled average is not a spike");
    w.charge(over, "0.020001", 6, 5_100).await?;
    assert!(w.frozen(over).await?, "one base unit over 10× the recalled average freezes");
    assert_eq!(w.engine.keys_known(), 3);
    Ok(())
}

/// Where the counters are shared (Redis), the charge script counts a key's last minute over
/// every gateway: the rate rule fires on that count, even when this node saw few of the calls.
#[tokio::test]
async fn the_rate_rule_judges_the_shared_count_of_every_gateway() -> TestResult {
    let w = world(RuleMode::Enforce).await?;
    let key = w.key("100").await?;
    let terms = w.store.key(key).await?.ok_or("no key")?.key;
    let event = |recent: u32, served: &str| -> TestResult<ChargeEvent> {
        Ok(ChargeEvent {
            at: 2_000,
            key,
            owner: terms.owner,
            kind: UsageKind::Charge,
            amount: Usdc::parse_decimal("0.001")?,
            route: "POST /v1/chat".to_owned(),
            served: Usdc::parse_decimal(served)?,
            limit: terms.limit,
            recent_calls: Some(recent),
        })
    };
    // Exactly 100 in the minute, counted over four proxies: allowed.
    w.engine.apply(&event(100, "0.1")?).await?;
    assert!(!w.frozen(key).await?, "100 calls a minute is the limit, not past it");
    w.engine.apply(&event(101, "0.101")?).await?;
    assert!(w.frozen(key).await?, "the 101st call of the minute, across nodes, freezes");
    Ok(())
}

/// Voids give a charge back to the running average and the call count.
#[tokio::test]
async fn a_voided_charge_leaves_the_average_as_if_it_never_happened() -> TestResult {
    let w = world(RuleMode::Enforce).await?;
    let key = w.key("100").await?;
    for n in 1..=5 {
        w.charge(key, "0.002", n, 1_000 + n * 60).await?;
    }
    // A large charge the API failed on is voided: it must not lift the average.
    w.charge(key, "0.01", 6, 1_500).await?;
    let terms = w.store.key(key).await?.ok_or("no key")?.key;
    let void = ChargeEvent {
        at: 1_501,
        key,
        owner: terms.owner,
        kind: UsageKind::Void,
        amount: Usdc::parse_decimal("0.01")?,
        route: "POST /v1/chat".to_owned(),
        served: Usdc::ZERO,
        limit: terms.limit,
        recent_calls: None,
    };
    w.engine.apply(&void).await?;
    // Average back to 0.002: 0.020001 is a spike.
    w.charge(key, "0.020001", 7, 2_000).await?;
    assert!(w.frozen(key).await?, "the void's amount did not count in the average");
    Ok(())
}

/// The guardian sends the on-chain freeze the engine left in the outbox, on a real chain; a
/// guardian the owner never chose is refused by the contract, retried, then given up and
/// audited, while the gateway's own freeze holds.
#[tokio::test]
async fn the_guardian_freezes_on_chain_from_the_outbox() -> TestResult {
    let anvil = Anvil::spawn(AnvilConfig::default())?;
    let rpc = anvil.endpoint();
    let deployer = signing_provider(&rpc, anvil.signer(0)?)?;
    let deployment = deploy_dev_contracts(&deployer, &rpc, 86_400).await?;
    let owner_key = SigningKey::from_bytes(&anvil.keys()[1])?;
    let as_owner = Validator::connect(signing_provider(&rpc, anvil.signer(1)?)?, deployment.validator).await?;
    let guardian_signer = anvil.signer(3)?;
    let as_guardian =
        Validator::connect(signing_provider(&rpc, guardian_signer.clone())?, deployment.validator).await?;
    let stranger_signer = anvil.signer(4)?;
    let as_stranger =
        Validator::connect(signing_provider(&rpc, stranger_signer.clone())?, deployment.validator).await?;
    as_owner.set_guardian(guardian_signer.address()).await?;
    let owner = owner_key.address();
    let (guarded, unguarded) = (SigningKey::random().address(), SigningKey::random().address());
    for key in [guarded, unguarded] {
        let terms = KeyTerms {
            session_key: key,
            payee: PAYEE,
            limit: Usdc::parse_decimal("100")?,
            valid_after: 0,
            valid_until: 4_000_000_000,
        };
        as_owner.register_session_key(&terms).await?;
    }

    let dir = tempfile::tempdir()?;
    let store = opentab_store::testing::fresh_sqlite(dir.path()).await?;
    let mut w = World::on(dir, store, RuleMode::Enforce).await?;
    w.apply(ValidatorEvent::GuardianSet { owner, guardian: guardian_signer.address() }).await?;
    w.register(guarded, owner, "100").await?;
    w.register(unguarded, owner, "100").await?;
    w.engine =
        RuleEngine::start(w.store.clone(), RuleSettings::default()).await?.with_guardian(guardian_signer.address());
    for n in 1..=101 {
        w.charge(guarded, "0.002", n, 1_000).await?;
    }
    assert!(w.frozen(guarded).await?, "frozen at the gateway at once");
    assert_eq!(w.store.effects_of(guarded, EffectKind::GuardianFreeze).await?.len(), 1);
    let webhook = &w.store.webhooks_of_type("key.alert").await?[0];
    assert!(webhook.payload.contains(r#""guardianFreezeSent":true"#), "{}", webhook.payload);

    let guardian = Guardian::new(w.store.clone(), as_guardian.clone(), guardian_signer.address());
    assert_eq!(guardian.tick(now()).await?, 1);
    let on_chain = as_guardian.session_key(guarded).await?.ok_or("not on chain")?;
    assert!(on_chain.frozen_at.is_some(), "frozen on-chain by the guardian");
    assert_eq!(w.store.effects_of(guarded, EffectKind::GuardianFreeze).await?[0].status, "done");
    let audit = w.store.audit_of(&format!("{guarded:#x}")).await?;
    assert!(audit.iter().any(|e| e.action == "key.guardian_freeze"), "{audit:?}");
    assert_eq!(guardian.tick(now()).await?, 0, "sent once");

    // An account the owner never chose: the contract refuses it, three times, then it is given up.
    w.engine =
        RuleEngine::start(w.store.clone(), RuleSettings::default()).await?.with_guardian(stranger_signer.address());
    w.apply(ValidatorEvent::GuardianSet { owner, guardian: stranger_signer.address() }).await?;
    for n in 1..=101 {
        w.charge(unguarded, "0.002", n, 1_000).await?;
    }
    assert!(w.frozen(unguarded).await?);
    let stranger = Guardian::new(w.store.clone(), as_stranger, stranger_signer.address());
    let mut at = now();
    for _ in 0..3 {
        assert_eq!(stranger.tick(at).await?, 0);
        at += 3_600;
    }
    let effect = &w.store.effects_of(unguarded, EffectKind::GuardianFreeze).await?[0];
    assert_eq!((effect.status.as_str(), effect.attempts), ("dead", 3), "{effect:?}");
    let audit = w.store.audit_of(&format!("{unguarded:#x}")).await?;
    assert!(audit.iter().any(|e| e.action == "key.guardian_freeze_failed"), "{audit:?}");
    assert!(as_guardian.session_key(unguarded).await?.ok_or("not on chain")?.frozen_at.is_none());
    assert!(w.frozen(unguarded).await?, "the gateway's freeze holds");
    Ok(())
}

/// An SMTP relay configured today does not mail last month's alerts: an email older than a day
/// when the sender first sees it is given up, unsent, and says why.
#[tokio::test]
async fn an_alert_older_than_a_day_is_not_mailed_when_a_relay_appears() -> TestResult {
    let (smtp, mails) = smtp_listener().await?;
    let w = world(RuleMode::Enforce).await?;
    let key = w.key("100").await?;
    let long_ago = now() - 2 * 24 * 3600;
    for n in 1..=101 {
        w.charge(key, "0.002", n, long_ago).await?;
    }
    assert_eq!(w.store.effects_of(key, EffectKind::Email).await?.len(), 1);
    let sender =
        EmailSender::new(w.store.clone(), Mailer::new(&smtp, "opentab <opentab@localhost>", "ops@example.com")?);
    assert_eq!(sender.tick(now()).await?, 0);
    assert!(mails.lock().map_err(|_| "poisoned")?.is_empty(), "nothing mailed");
    let effect = &w.store.effects_of(key, EffectKind::Email).await?[0];
    assert_eq!(effect.status, "dead", "{effect:?}");
    assert!(effect.last_error.as_deref().is_some_and(|e| e.contains("too old")), "{effect:?}");
    Ok(())
}

/// Issue 13: settings per owner and per key, changed in the store, are what the engine judges
/// the very next charge by; the alert records the setting in force and the least that would
/// not have fired.
#[tokio::test]
async fn owner_defaults_and_key_overrides_are_honoured_on_the_next_charge() -> TestResult {
    use opentab_core::rules::{RuleOverrides, Setting};
    let w = world(RuleMode::Enforce).await?;
    let (tuned, other) = (w.key("100").await?, w.key("100").await?);
    let three = RuleOverrides { calls_per_minute: Some(3), ..RuleOverrides::default() };
    w.store.set_rule_settings(OWNER, Some(tuned), &three, opentab_store::RULES_SET, 900).await?;
    for n in 1..=3 {
        w.charge(tuned, "0.002", n, 1_000).await?;
        w.charge(other, "0.002", n, 1_000).await?;
    }
    assert!(!w.frozen(tuned).await?, "3 calls a minute is the key's setting, not past it");
    w.charge(tuned, "0.002", 4, 1_001).await?;
    w.charge(other, "0.002", 4, 1_001).await?;
    assert!(w.frozen(tuned).await?, "the 4th call of the minute freezes the tuned key");
    assert!(!w.frozen(other).await?, "its sibling keeps the seed's 100");
    let alert = &w.store.alerts_of(tuned, 1).await?[0].alert;
    assert_eq!(alert.reason, "4 calls in the last minute, more than 3");
    let inputs: serde_json::Value = serde_json::from_str(&alert.inputs)?;
    assert_eq!(inputs["threshold"], serde_json::to_value(Setting::CallsPerMinute(3))?);
    assert_eq!(inputs["wouldNotFire"], serde_json::to_value(Setting::CallsPerMinute(4))?);
    assert_eq!(inputs["route"], "POST /v1/chat");

    // The owner's defaults: the rate rule in shadow for all their keys; the tuned key's own
    // setting still wins where it has one (its threshold), and the mode comes from the owner.
    let shadow = RuleOverrides { rate_mode: Some(RuleMode::Shadow), ..RuleOverrides::default() };
    w.store.set_rule_settings(OWNER, None, &shadow, opentab_store::RULES_SET, 1_100).await?;
    let settings = w.engine.settings_of(OWNER, tuned).await?;
    assert_eq!((settings.calls_per_minute, settings.rate_mode), (3, RuleMode::Shadow));
    let third = w.key("100").await?;
    for n in 1..=101 {
        w.charge(third, "0.002", n, 2_000).await?;
    }
    assert!(!w.frozen(third).await?, "shadow alerts, never freezes");
    let alert = &w.store.alerts_of(third, 1).await?[0].alert;
    assert_eq!((alert.rule.as_str(), alert.mode.as_str(), alert.froze), ("rate", "shadow", false));

    // Off: not judged at all; back to inherit: judged again.
    let off = RuleOverrides { rate_mode: Some(RuleMode::Off), ..RuleOverrides::default() };
    w.store.set_rule_settings(OWNER, None, &off, opentab_store::RULES_SET, 1_200).await?;
    let fourth = w.key("100").await?;
    for n in 1..=150 {
        w.charge(fourth, "0.002", n, 3_000).await?;
    }
    assert!(w.store.alerts_of(fourth, 1).await?.is_empty(), "the rate rule is off");
    w.store.set_rule_settings(OWNER, None, &RuleOverrides::default(), opentab_store::RULES_SET, 1_300).await?;
    w.charge(fourth, "0.002", 151, 3_001).await?;
    assert!(w.frozen(fourth).await?, "back to the seed's enforced rate rule");

    // Every change is in the audit log, with what it replaced.
    let audit = w.store.audit_of(&format!("{OWNER:#x}")).await?;
    let details: Vec<&str> = audit.iter().filter(|e| e.action == "rules.set").map(|e| e.detail.as_str()).collect();
    assert_eq!(
        details,
        [
            r#"{"before":{},"after":{"rateMode":"shadow"}}"#,
            r#"{"before":{"rateMode":"shadow"},"after":{"rateMode":"off"}}"#,
            r#"{"before":{"rateMode":"off"},"after":{}}"#,
        ]
    );
    assert_eq!(
        w.store.audit_of(&format!("{tuned:#x}")).await?[0].detail,
        r#"{"before":{},"after":{"callsPerMinute":3}}"#
    );
    Ok(())
}

/// A setting changed through another connection (another node's API) reaches the engine
/// through the database's change feed.
#[tokio::test]
async fn a_setting_changed_by_another_node_reaches_the_engine() -> TestResult {
    use opentab_core::rules::RuleOverrides;
    let w = world(RuleMode::Enforce).await?;
    let key = w.key("100").await?;
    assert_eq!(w.engine.settings_of(OWNER, key).await?.spike_multiple, 10);
    let elsewhere =
        opentab_store::Store::connect(&format!("sqlite://{}", w._dir.path().join("opentab.db").display())).await?;
    let twenty = RuleOverrides { spike_multiple: Some(20), ..RuleOverrides::default() };
    elsewhere.set_rule_settings(OWNER, Some(key), &twenty, opentab_store::RULES_SET, 1).await?;
    let mut seen = 0;
    for _ in 0..100 {
        seen = w.engine.settings_of(OWNER, key).await?.spike_multiple;
        if seen == 20 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(seen, 20, "the engine heard of the change");
    Ok(())
}

/// The spike rule judges a charge by its route's own history (the shipped default), and a
/// restarted engine loads that history from the ledger: an image route that was in use before
/// the restart is not judged against the cheap calls' average after it.
#[tokio::test]
async fn a_restarted_engine_judges_each_route_on_the_history_it_loaded() -> TestResult {
    let w = world(RuleMode::Enforce).await?;
    let key = w.key("100").await?;
    let mut voucher = 0;
    let mut at = 1_000;
    let mut call = |route: &'static str, price: &'static str| {
        voucher += 1;
        at += 10;
        (route, price, voucher, at)
    };
    let mut calls = Vec::new();
    for _ in 0..5 {
        calls.push(call("POST /v1/images", "0.04"));
    }
    for _ in 0..150 {
        calls.push(call("POST /v1/chat", "0.002"));
    }
    for (route, price, voucher, at) in calls {
        w.charge_on(key, route, price, voucher, at).await?;
    }
    assert!(!w.frozen(key).await?);
    let w = w.restarted(RuleMode::Enforce).await?;
    // 0.04 is 12× the key's average of 0.0032, and the image route's own average.
    w.charge_on(key, "POST /v1/images", "0.04", 156, 2_000).await?;
    assert!(!w.frozen(key).await?, "judged against the image route's history, loaded at start");
    // A chat call at 0.0201 is over 10× chat's average: a spike.
    w.charge_on(key, "POST /v1/chat", "0.0201", 157, 2_010).await?;
    assert!(w.frozen(key).await?, "judged against the chat route's history");
    let alert = &w.store.alerts_of(key, 1).await?[0].alert;
    assert_eq!(alert.reason, "a charge of 0.0201 USDC is more than 10× the average on POST /v1/chat of 0.002 USDC");
    let inputs: serde_json::Value = serde_json::from_str(&alert.inputs)?;
    assert_eq!((inputs["average"].as_str(), inputs["averageOf"].as_str()), (Some("2000"), Some("route")));
    Ok(())
}

/// The same on PostgreSQL, where the change arrives by `NOTIFY` from the settings table's trigger.
#[tokio::test]
async fn a_setting_changed_on_postgres_by_another_node_reaches_the_engine() -> TestResult {
    use opentab_core::rules::RuleOverrides;
    let url = opentab_store::testing::fresh_postgres_url().await?;
    let store = opentab_store::Store::connect(&url).await?;
    let engine = RuleEngine::start(store.clone(), RuleSettings::default()).await?;
    let key = Address::repeat_byte(0x42);
    assert_eq!(engine.settings_of(OWNER, key).await?.calls_per_minute, 100);
    // Let the feed's listening connection start (it rereads everything when it does): what
    // follows must arrive as a notification, not be picked up by that first read.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(engine.settings_of(OWNER, key).await?.calls_per_minute, 100);
    let elsewhere = opentab_store::Store::connect(&url).await?;
    let owner_wide = RuleOverrides { calls_per_minute: Some(250), ..RuleOverrides::default() };
    elsewhere.set_rule_settings(OWNER, None, &owner_wide, opentab_store::RULES_SET, 1).await?;
    let mut seen = 0;
    for _ in 0..100 {
        seen = engine.settings_of(OWNER, key).await?.calls_per_minute;
        if seen == 250 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(seen, 250, "the engine heard of the owner's new default");
    Ok(())
}
