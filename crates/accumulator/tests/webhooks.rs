//! Webhook delivery to a real HTTP receiver that verifies Standard Webhooks signatures and
//! fails the first delivery: the webhook is retried with backoff and arrives once, intact.

use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use opentab_accumulator::{WebhookConfig, WebhookSecret, WebhookSender, verify};
use opentab_core::{Address, B256, Usdc, ValidatorEvent};
use opentab_store::{Store, StoredEvent};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

#[derive(Default)]
struct Receiver {
    /// Every delivery: (webhook-id, signature valid, body).
    seen: Vec<(String, bool, String)>,
    /// Answer 503 to this many deliveries first.
    fail_first: usize,
}

async fn receiver(secret: WebhookSecret, state: Arc<Mutex<Receiver>>) -> TestResult<String> {
    let app = axum::Router::new().route(
        "/hooks",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let (secret, state) = (secret.clone(), state.clone());
            async move {
                let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                let id = header("webhook-id");
                let timestamp: u64 = header("webhook-timestamp").parse().unwrap_or(0);
                let valid = verify(&secret, &id, timestamp, &body, &header("webhook-signature"));
                let Ok(mut state) = state.lock() else { return StatusCode::INTERNAL_SERVER_ERROR };
                state.seen.push((id, valid, body));
                if state.fail_first > 0 {
                    state.fail_first -= 1;
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                if valid { StatusCode::NO_CONTENT } else { StatusCode::UNAUTHORIZED }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hooks", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

fn event(block: u64, event: ValidatorEvent) -> StoredEvent {
    StoredEvent {
        block_number: block,
        log_index: 0,
        block_hash: B256::with_last_byte(block as u8),
        tx_hash: B256::repeat_byte(block as u8),
        event,
    }
}

#[tokio::test]
async fn webhooks_arrive_signed_and_are_retried_until_accepted() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("db").display())).await?;
    let (owner, key) = (Address::repeat_byte(0xa1), Address::repeat_byte(0xb2));
    let events = [
        event(
            10,
            ValidatorEvent::Registered {
                owner,
                session_key: key,
                payee: Address::repeat_byte(0xee),
                limit: Usdc::from_base_units(1),
                valid_after: 0,
                valid_until: 10,
            },
        ),
        event(11, ValidatorEvent::Frozen { owner, session_key: key, by: owner, at: 5 }),
        event(12, ValidatorEvent::Revoked { owner, session_key: key, at: 6 }),
    ];
    store.apply_chain_update(Address::repeat_byte(0x77), None, &events, "{}", 100).await?;

    let secret = WebhookSecret::generate();
    let state = Arc::new(Mutex::new(Receiver { fail_first: 1, ..Receiver::default() }));
    let url = receiver(secret.clone(), state.clone()).await?;
    let sender = WebhookSender::new(store.clone(), WebhookConfig::new(url, secret.to_string().parse()?))?;

    // Both go out together; the first to arrive is refused and waits its backoff.
    assert_eq!(sender.tick(1_000).await?, 1);
    assert_eq!(sender.tick(1_000).await?, 0, "not retried before its backoff");
    assert_eq!(sender.tick(1_100).await?, 1);
    assert_eq!(sender.tick(1_200).await?, 0, "each delivered once");

    let seen = state.lock().map_err(|_| "poisoned")?.seen.clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.iter().all(|(_, valid, _)| *valid), "every signature verifies");
    assert_eq!(seen[0].0, seen[2].0, "the retry carries the same webhook-id, so receivers can dedupe");
    let mut types: Vec<String> = seen[1..]
        .iter()
        .map(|(_, _, body)| serde_json::from_str::<serde_json::Value>(body).map(|b| b["type"].to_string()))
        .collect::<Result<_, _>>()?;
    types.sort();
    assert_eq!(types, ["\"key.frozen\"", "\"key.revoked\""]);
    Ok(())
}

/// A receiver that takes its time (300 ms a delivery), counting deliveries under way at once.
#[derive(Default)]
struct Slow {
    ids: Vec<String>,
    in_flight: u32,
    most_at_once: u32,
}

async fn slow_receiver(state: Arc<Mutex<Slow>>) -> TestResult<String> {
    let app = axum::Router::new().route(
        "/hooks",
        axum::routing::post(move |headers: HeaderMap| {
            let state = state.clone();
            async move {
                let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                if let Ok(mut s) = state.lock() {
                    s.in_flight += 1;
                    s.most_at_once = s.most_at_once.max(s.in_flight);
                    s.ids.push(id);
                }
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                if let Ok(mut s) = state.lock() {
                    s.in_flight -= 1;
                }
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hooks", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// `n` webhooks in the outbox (one `key.unfrozen` per key).
async fn outbox_of(n: u8) -> TestResult<(tempfile::TempDir, Store)> {
    let dir = tempfile::tempdir()?;
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("db").display())).await?;
    let events: Vec<StoredEvent> = (1..=n)
        .map(|k| {
            let (owner, key) = (Address::repeat_byte(0xa1), Address::repeat_byte(k));
            event(u64::from(k), ValidatorEvent::Unfrozen { owner, session_key: key })
        })
        .collect();
    store.apply_chain_update(Address::repeat_byte(0x77), None, &events, "{}", 100).await?;
    assert_eq!(store.due_webhooks(1_000, 100).await?.len(), usize::from(n));
    Ok((dir, store))
}

/// Issue 12: the sender delivered one webhook at a time, so a slow receiver held a round for
/// up to 50 × 10 s. Deliveries now go out side by side, several at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_gets_its_deliveries_side_by_side() -> TestResult {
    let (_dir, store) = outbox_of(16).await?;
    let state = Arc::new(Mutex::new(Slow::default()));
    let url = slow_receiver(state.clone()).await?;
    let sender = WebhookSender::new(store.clone(), WebhookConfig::new(url, WebhookSecret::generate()))?;
    assert_eq!(sender.tick(1_000).await?, 16);
    let state = state.lock().map_err(|_| "poisoned")?;
    assert_eq!(state.ids.len(), 16);
    assert!(state.most_at_once > 1, "deliveries went out one at a time");
    assert!(state.most_at_once <= opentab_accumulator::CONCURRENT_DELIVERIES, "{}", state.most_at_once);
    Ok(())
}

/// Two `serve` nodes each run a sender over one outbox: every webhook is delivered once, by
/// one of them (each takes what it delivers under a lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_senders_on_one_outbox_deliver_each_webhook_once() -> TestResult {
    let (_dir, store) = outbox_of(24).await?;
    let state = Arc::new(Mutex::new(Slow::default()));
    let url = slow_receiver(state.clone()).await?;
    let secret = WebhookSecret::generate();
    let one = WebhookSender::new(store.clone(), WebhookConfig::new(url.clone(), secret.clone()))?;
    let two = WebhookSender::new(store.clone(), WebhookConfig::new(url, secret))?;
    let (a, b) = tokio::join!(one.tick(1_000), two.tick(1_000));
    assert_eq!(a? + b?, 24);
    let mut ids = state.lock().map_err(|_| "poisoned")?.ids.clone();
    assert_eq!(ids.len(), 24, "no webhook went out twice");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 24);
    assert!(store.due_webhooks(1_000_000, 100).await?.is_empty(), "all delivered");
    Ok(())
}

#[tokio::test]
async fn an_unreachable_receiver_is_retried_then_given_up() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("db").display())).await?;
    let (owner, key) = (Address::repeat_byte(0xa1), Address::repeat_byte(0xb3));
    store
        .apply_chain_update(
            Address::repeat_byte(0x77),
            None,
            &[event(11, ValidatorEvent::Unfrozen { owner, session_key: key })],
            "{}",
            100,
        )
        .await?;
    let mut config = WebhookConfig::new("http://127.0.0.1:1/hooks", WebhookSecret::generate());
    config.max_attempts = 3;
    let sender = WebhookSender::new(store.clone(), config)?;
    let mut t = 1_000;
    for _ in 0..3 {
        assert_eq!(sender.tick(t).await?, 0);
        t += 3_600;
    }
    assert!(store.due_webhooks(t + 86_400, 10).await?.is_empty(), "given up after 3 attempts");
    Ok(())
}
