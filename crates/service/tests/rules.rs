//! The rule engine behind a real ledger (SQLite) with a real SMTP listener: a burst freezes
//! the key at once and alerts by webhook and email, once per crossing, then recovers; a
//! spike freezes; low balance warns without freezing; shadow mode only alerts.

use std::sync::{Arc, Mutex};

use opentab_core::rules::{RuleConfig, RuleMode};
use opentab_core::{Address, B256, SigningKey, U256, Usdc, ValidatorEvent};
use opentab_gateway::{UsageKind, UsageLedger, UsageRecord};
use opentab_service::{Mailer, Notifier, RuleEngine, RuledLedger, StoreLedger};
use opentab_store::{Store, StoredEvent};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

const OWNER: Address = Address::repeat_byte(0xa1);
const PAYEE: Address = Address::repeat_byte(0xee);

/// A minimal SMTP server on a real socket: accepts every message and keeps its DATA.
async fn smtp_listener() -> TestResult<(String, Arc<Mutex<Vec<String>>>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("smtp://127.0.0.1:{}", listener.local_addr()?.port());
    let mails: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = mails.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let sink = sink.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                let _ = write.write_all(b"220 test ESMTP\r\n").await;
                let (mut data, mut in_data) = (String::new(), false);
                while let Ok(Some(line)) = lines.next_line().await {
                    if in_data {
                        if line == "." {
                            in_data = false;
                            if let Ok(mut sink) = sink.lock() {
                                sink.push(std::mem::take(&mut data));
                            }
                            let _ = write.write_all(b"250 queued\r\n").await;
                        } else {
                            data.push_str(&line);
                            data.push('\n');
                        }
                        continue;
                    }
                    let verb = line.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" | "HELO" => b"250 test\r\n",
                        "DATA" => {
                            in_data = true;
                            b"354 go on\r\n"
                        }
                        "QUIT" => {
                            let _ = write.write_all(b"221 bye\r\n").await;
                            break;
                        }
                        _ => b"250 ok\r\n",
                    };
                    let _ = write.write_all(reply).await;
                }
            });
        }
    });
    Ok((url, mails))
}

struct World {
    _dir: tempfile::TempDir,
    store: Store,
    ledger: RuledLedger<StoreLedger>,
}

async fn world(mode: RuleMode, mailer: Option<Mailer>) -> TestResult<World> {
    let dir = tempfile::tempdir()?;
    let store = opentab_store::testing::fresh_sqlite(dir.path()).await?;
    let engine =
        RuleEngine::new(store.clone(), RuleConfig { mode, ..RuleConfig::default() }, Notifier::default(), mailer);
    let ledger = RuledLedger::new(StoreLedger::new(store.clone(), Notifier::default()), Arc::new(engine));
    Ok(World { _dir: dir, store, ledger })
}

impl World {
    async fn key(&self, limit: &str, block: u64) -> TestResult<Address> {
        let key = SigningKey::random().address();
        let event = ValidatorEvent::Registered {
            owner: OWNER,
            session_key: key,
            payee: PAYEE,
            limit: Usdc::parse_decimal(limit)?,
            valid_after: 0,
            valid_until: 4_000_000_000,
        };
        let stored = StoredEvent {
            block_number: block,
            log_index: 0,
            block_hash: B256::with_last_byte(block as u8),
            tx_hash: B256::with_last_byte(block as u8),
            event,
        };
        self.store.apply_chain_update(Address::repeat_byte(0x77), None, &[stored], "{}", 1).await?;
        Ok(key)
    }

    async fn charge(&self, key: Address, price: &str, voucher: u64, at: u64) -> TestResult {
        let record = UsageRecord {
            at,
            key,
            owner: OWNER,
            kind: UsageKind::Charge,
            amount: Usdc::parse_decimal(price)?,
            route: "POST /v1/chat".into(),
            request_id: format!("r{voucher}"),
            voucher: U256::from(voucher),
            signature: Some(SigningKey::random().sign_digest(&B256::repeat_byte(1))),
            idempotency: None,
            void_of: None,
        };
        self.ledger.record(record).await?;
        Ok(())
    }

    async fn frozen(&self, key: Address) -> TestResult<bool> {
        Ok(self.store.key(key).await?.ok_or("no key")?.frozen_offchain_at.is_some())
    }
}

#[tokio::test]
async fn a_burst_freezes_at_once_alerts_by_webhook_and_email_once_then_recovers() -> TestResult {
    let (smtp, mails) = smtp_listener().await?;
    let mailer = Mailer::new(&smtp, "opentab <opentab@localhost>", "ops@example.com")?;
    let w = world(RuleMode::Enforce, Some(mailer)).await?;
    let key = w.key("100", 10).await?;
    for n in 1..=100 {
        w.charge(key, "0.002", n, 1_000).await?;
    }
    assert!(!w.frozen(key).await?, "100 calls in a minute are allowed");
    w.charge(key, "0.002", 101, 1_030).await?;
    assert!(w.frozen(key).await?, "the 101st freezes the key off-chain at once");
    for n in 102..=120 {
        w.charge(key, "0.002", n, 1_031).await?;
    }
    let alerts = w.store.alerts_of(key, 10).await?;
    assert_eq!(alerts.len(), 1, "one alert per crossing");
    assert_eq!((alerts[0].alert.rule.as_str(), alerts[0].alert.froze), ("rate", true));
    assert_eq!(alerts[0].alert.reason, "101 calls in the last minute, more than 100");
    let inputs: serde_json::Value = serde_json::from_str(&alerts[0].alert.inputs)?;
    assert_eq!(inputs["callsLastMinute"], 101);
    assert_eq!(w.store.webhooks_of_type("key.alert").await?.len(), 1);
    // The email leaves off the charge path: wait for it.
    for _ in 0..500 {
        if !mails.lock().map_err(|_| "poisoned")?.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let mail = mails.lock().map_err(|_| "poisoned")?.clone();
    assert_eq!(mail.len(), 1, "{mail:?}");
    assert!(mail[0].contains("opentab alert: rate") && mail[0].contains("The key is frozen"), "{}", mail[0]);

    // A quiet minute later the condition clears: recovered, announced once.
    w.charge(key, "0.002", 121, 1_200).await?;
    let alerts = w.store.alerts_of(key, 10).await?;
    assert_eq!(alerts[0].recovered_at, Some(1_200));
    assert_eq!(w.store.webhooks_of_type("key.alert_recovered").await?.len(), 1);
    Ok(())
}

/// Issue 11: the alert email was sent under the key's lock with no timeout, so an SMTP relay
/// that never answers held the charge that fired the rule (and every later call of the key).
/// Now the freeze and the webhook are durable when the charge returns, and the email is on its
/// own, within a timeout.
#[tokio::test]
async fn a_dead_smtp_relay_holds_no_charge() -> TestResult {
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
    let mailer = Mailer::new(&url, "opentab <opentab@localhost>", "ops@example.com")?;
    let w = world(RuleMode::Enforce, Some(mailer)).await?;
    let key = w.key("100", 10).await?;
    for n in 1..=102 {
        // Far below the SMTP timeout: a charge waiting for the relay would not make it.
        tokio::time::timeout(std::time::Duration::from_secs(5), w.charge(key, "0.002", n, 1_000))
            .await
            .map_err(|_| format!("charge {n} waited for the SMTP relay"))??;
    }
    assert!(w.frozen(key).await?, "the burst froze the key");
    assert_eq!(w.store.webhooks_of_type("key.alert").await?.len(), 1, "the webhook is in the outbox");
    assert!(!held.lock().map_err(|_| "poisoned")?.is_empty(), "the email was attempted");
    Ok(())
}

#[tokio::test]
async fn a_spike_freezes_and_low_balance_only_warns() -> TestResult {
    let w = world(RuleMode::Enforce, None).await?;
    let spiky = w.key("100", 10).await?;
    for n in 1..=5 {
        w.charge(spiky, "0.002", n, 1_000 + n * 60).await?;
    }
    w.charge(spiky, "0.02", 6, 2_000).await?;
    assert!(!w.frozen(spiky).await?, "exactly 10× the average is not a spike");
    w.charge(spiky, "0.3", 7, 2_100).await?;
    assert!(w.frozen(spiky).await?);
    assert_eq!(w.store.alerts_of(spiky, 10).await?[0].alert.rule, "spike");

    let small = w.key("0.01", 11).await?;
    for n in 1..=4 {
        w.charge(small, "0.002", n, 1_000 + n * 60).await?;
    }
    assert!(w.store.alerts_of(small, 10).await?.is_empty(), "20% left is fine");
    w.charge(small, "0.0015", 5, 1_500).await?;
    let alerts = w.store.alerts_of(small, 10).await?;
    assert_eq!((alerts[0].alert.rule.as_str(), alerts[0].alert.froze), ("low_balance", false));
    assert!(alerts[0].alert.reason.contains("0.0005 USDC of the 0.01 USDC limit left"), "{}", alerts[0].alert.reason);
    assert!(!w.frozen(small).await?, "low balance warns, it does not freeze");
    Ok(())
}

#[tokio::test]
async fn shadow_mode_alerts_without_freezing_and_a_new_engine_remembers_what_fires() -> TestResult {
    let w = world(RuleMode::Shadow, None).await?;
    let key = w.key("100", 10).await?;
    for n in 1..=101 {
        w.charge(key, "0.002", n, 1_000).await?;
    }
    assert!(!w.frozen(key).await?);
    let alerts = w.store.alerts_of(key, 10).await?;
    assert_eq!(
        (alerts[0].alert.rule.as_str(), alerts[0].alert.mode.as_str(), alerts[0].alert.froze),
        ("rate", "shadow", false)
    );

    // A restarted gateway seeds from the database: the open alert is not fired again.
    let engine = RuleEngine::new(w.store.clone(), RuleConfig::default(), Notifier::default(), None);
    let again = RuledLedger::new(StoreLedger::new(w.store.clone(), Notifier::default()), Arc::new(engine));
    for n in 102..=210 {
        again
            .record(UsageRecord {
                at: 1_001,
                key,
                owner: OWNER,
                kind: UsageKind::Charge,
                amount: Usdc::parse_decimal("0.002")?,
                route: "POST /v1/chat".into(),
                request_id: format!("r{n}"),
                voucher: U256::from(n),
                signature: Some(SigningKey::random().sign_digest(&B256::repeat_byte(1))),
                idempotency: None,
                void_of: None,
            })
            .await?;
    }
    assert_eq!(w.store.alerts_of(key, 10).await?.len(), 1, "still the one crossing");
    Ok(())
}
