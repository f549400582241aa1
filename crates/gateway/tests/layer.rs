//! The payment layer in front of a real axum router (in-process, no socket): the 402
//! challenge, a paid call and its receipt, every refusal code of DESIGN §3, the void of a
//! failed call, failing closed, and concurrent out-of-order vouchers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::{get, post};
use base64::Engine;
use http_body_util::BodyExt;
use opentab_core::{Address, ContractDomain, SessionKey, SigningKey, U256, Usdc, Voucher};
use opentab_gateway::Recorded;
use opentab_gateway::pricing::Pricing;
use opentab_gateway::protocol::{PAYMENT_REQUIRED, PAYMENT_RESPONSE, PAYMENT_SIGNATURE, X_PAYMENT};
use opentab_gateway::{
    Cause, Gateway, GatewayConfig, InProcessCounters, KeyDirectory, KeyInfo, PaymentLayer, Unavailable, UsageKind,
    UsageLedger, UsageRecord, charge_api,
};
use serde_json::{Value, json};
use tower::ServiceExt;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

const PAYEE: Address = Address::repeat_byte(0x0e);
const OWNER: Address = Address::repeat_byte(0x01);
const PRICE: u64 = 2_000;

#[derive(Debug, Default)]
struct Directory {
    keys: Mutex<HashMap<Address, KeyInfo>>,
    down: Mutex<bool>,
    /// Lookups made (each a database round trip in production).
    lookups: std::sync::atomic::AtomicU32,
}

impl KeyDirectory for Directory {
    async fn key(&self, key: Address) -> Result<Option<KeyInfo>, Unavailable> {
        self.lookups.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if *self.down.lock().map_err(|_| Unavailable::Directory(Cause::msg("poisoned")))? {
            return Err(Unavailable::Directory(Cause::msg("database is down")));
        }
        Ok(self.keys.lock().map_err(|_| Unavailable::Directory(Cause::msg("poisoned")))?.get(&key).cloned())
    }
}

/// The ledger port's in-memory twin (the real one is the database; see opentab-service).
#[derive(Debug, Default)]
struct Ledger {
    records: Mutex<Vec<UsageRecord>>,
    down: Mutex<bool>,
    /// Keys the database knows are frozen (another node froze them; this one's cache has not
    /// heard yet).
    stopped: Mutex<Vec<Address>>,
    /// While set, a record waits for a permit of it (a commit that takes its time).
    held: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
}

impl UsageLedger for Ledger {
    async fn record(&self, record: UsageRecord) -> Result<Recorded, Unavailable> {
        let held = self.held.lock().map_err(|_| Unavailable::Ledger(Cause::msg("poisoned")))?.clone();
        if let Some(gate) = held {
            gate.acquire().await.map_err(|_| Unavailable::Ledger(Cause::msg("closed")))?.forget();
        }
        if *self.down.lock().map_err(|_| Unavailable::Ledger(Cause::msg("poisoned")))? {
            return Err(Unavailable::Ledger(Cause::msg("ledger is down")));
        }
        let stopped =
            self.stopped.lock().map_err(|_| Unavailable::Ledger(Cause::msg("poisoned")))?.contains(&record.key);
        if stopped && record.kind == UsageKind::Charge {
            return Ok(Recorded::KeyStopped);
        }
        self.records.lock().map_err(|_| Unavailable::Ledger(Cause::msg("poisoned")))?.push(record);
        Ok(Recorded::Held(None))
    }

    async fn stands(&self, key: Address, id: opentab_core::B256) -> Result<bool, Unavailable> {
        let records = self.records.lock().map_err(|_| Unavailable::Ledger(Cause::msg("poisoned")))?;
        let count =
            |kind| records.iter().filter(|r| r.key == key && r.idempotency == Some(id) && r.kind == kind).count();
        Ok(count(UsageKind::Charge) > count(UsageKind::Void))
    }
}

type TestGateway = Gateway<Arc<Directory>, Arc<InProcessCounters>, Arc<Ledger>>;

struct World {
    gateway: Arc<TestGateway>,
    ledger: Arc<Ledger>,
    app: Router,
    config: GatewayConfig,
    directory: Arc<Directory>,
    counters: Arc<InProcessCounters>,
    metrics: Arc<opentab_gateway::GatewayMetrics>,
}

impl World {
    /// `opentab_gateway_unavailable_total` for `dependency`, as `/metrics` shows it.
    fn unavailable(&self, dependency: &str) -> u64 {
        let mut text = String::new();
        self.metrics.render(&mut text);
        let line = format!("opentab_gateway_unavailable_total{{dependency=\"{dependency}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&line)).and_then(|n| n.parse().ok()).unwrap_or(u64::MAX)
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

fn world() -> TestResult<World> {
    let config = GatewayConfig {
        domain: ContractDomain::opentab(31337, Address::repeat_byte(0x77)),
        asset: Address::repeat_byte(0x05),
        pay_to: PAYEE,
        max_timeout_seconds: 60,
    };
    let pricing = Pricing::new([
        ("POST /v1/chat", "0.002"),
        ("GET /v1/broken", "0.002"),
        ("GET /v1/panics", "0.002"),
        ("POST /v1/watched", "0.002"),
    ])?;
    let directory = Arc::new(Directory::default());
    let counters = Arc::new(InProcessCounters::default());
    let ledger = Arc::new(Ledger::default());
    let layer = PaymentLayer::new(Gateway {
        config: config.clone(),
        pricing,
        directory: directory.clone(),
        counters: counters.clone(),
        ledger: ledger.clone(),
        observer: None,
    });
    let gateway = layer.gateway().clone();
    let metrics = layer.metrics().clone();
    let app = Router::new()
        .route("/v1/chat", post(|| async { "the answer" }))
        .route("/v1/broken", get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "model crashed") }))
        .route("/free", get(|| async { "free" }))
        .route("/v1/panics", get(panics))
        .route("/v1/watched", post(watched))
        .layer(layer);
    Ok(World { gateway, ledger, app, config, directory, counters, metrics })
}

/// Calls `/v1/watched` has answered, across tests.
static WATCHED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

async fn watched() -> &'static str {
    WATCHED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    "watched"
}

async fn panics() -> &'static str {
    panic!("the model crashed hard")
}

impl World {
    fn add_key(&self, limit: u64, tab: u64) -> TestResult<SigningKey> {
        let key = SigningKey::random();
        let info = KeyInfo {
            key: SessionKey {
                address: key.address(),
                owner: OWNER,
                payee: PAYEE,
                limit: Usdc::from_base_units(limit),
                valid_after: 0,
                valid_until: now() + 3_600,
                frozen_at: None,
                revoked_at: None,
                settled: Usdc::ZERO,
            },
            frozen_offchain: false,
            tab_available: Usdc::from_base_units(tab),
            owner_settled: Usdc::ZERO,
        };
        self.directory.keys.lock().map_err(|_| "poisoned")?.insert(key.address(), info);
        Ok(key)
    }

    fn edit(&self, key: &SigningKey, f: impl FnOnce(&mut KeyInfo)) -> TestResult {
        let mut keys = self.directory.keys.lock().map_err(|_| "poisoned")?;
        f(keys.get_mut(&key.address()).ok_or("no such key")?);
        Ok(())
    }

    fn payment(&self, key: &SigningKey, cumulative: u64, route: &str) -> TestResult<Value> {
        let pricing = Pricing::new([(route, "0.002")])?;
        let voucher = Voucher::new(key.address(), PAYEE, U256::from(cumulative));
        let signature = key.sign_digest(&self.config.domain.digest(&voucher));
        Ok(json!({
            "x402Version": 2,
            "accepted": self.config.requirements(&pricing.routes()[0]),
            "payload": { "sessionKey": key.address(), "cumulativeAmount": cumulative.to_string(), "signature": signature.to_string() },
        }))
    }

    async fn send(
        &self,
        method: &str,
        uri: &str,
        header: Option<(&str, String)>,
    ) -> TestResult<(StatusCode, Value, Option<Value>)> {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some((name, value)) = header {
            req = req.header(name, value);
        }
        let res = self.app.clone().oneshot(req.body(Body::empty())?).await?;
        let status = res.status();
        let name = if status == StatusCode::PAYMENT_REQUIRED { PAYMENT_REQUIRED } else { PAYMENT_RESPONSE };
        let header = decode_header(res.headers(), name);
        let bytes = res.into_body().collect().await?.to_bytes();
        let body =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Ok((status, body, header))
    }

    async fn pay(&self, key: &SigningKey, cumulative: u64) -> TestResult<(StatusCode, Value, Option<Value>)> {
        let header = b64(&self.payment(key, cumulative, "POST /v1/chat")?);
        self.send("POST", "/v1/chat", Some((PAYMENT_SIGNATURE, header))).await
    }

    async fn refusal(&self, key: &SigningKey, cumulative: u64) -> TestResult<String> {
        let (status, body, _) = self.pay(key, cumulative).await?;
        assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{body}");
        Ok(body["error"].as_str().unwrap_or_default().to_owned())
    }
}

fn decode_header(headers: &axum::http::HeaderMap, name: &str) -> Option<Value> {
    let text = headers.get(name)?.to_str().ok()?;
    serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(text).ok()?).ok()
}

fn b64(value: &Value) -> String {
    base64::engine::general_purpose::STANDARD.encode(value.to_string())
}

#[tokio::test]
async fn an_unpaid_call_gets_the_challenge_and_a_paid_one_the_receipt() -> TestResult {
    let w = world()?;
    let (status, body, header) = w.send("POST", "/v1/chat", None).await?;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(header.as_ref(), Some(&body), "the body repeats the header");
    assert_eq!(body["accepts"][0]["amount"], "2000");
    assert_eq!(body["accepts"][0]["network"], "eip155:31337");
    assert!(body.get("error").is_none(), "a plain challenge carries no error");

    let key = w.add_key(1_000_000, 10_000_000)?;
    let (status, body, receipt) = w.pay(&key, PRICE).await?;
    assert_eq!((status, body), (StatusCode::OK, Value::String("the answer".into())));
    let receipt = receipt.ok_or("no PAYMENT-RESPONSE")?;
    assert_eq!(receipt["success"], true);
    assert_eq!(receipt["payer"], format!("{OWNER:#x}"));
    assert_eq!(receipt["receipt"]["charged"], "2000");
    assert_eq!(receipt["receipt"]["served"], "2000");
    assert_eq!(receipt["receipt"]["remaining"], "998000");

    let (status, body, _) = w.send("GET", "/free", None).await?;
    assert_eq!((status, body), (StatusCode::OK, Value::String("free".into())), "unpriced routes pass");
    Ok(())
}

#[tokio::test]
async fn every_refusal_has_its_code_and_charges_nothing() -> TestResult {
    let w = world()?;
    let key = w.add_key(5_000, 10_000_000)?;

    assert!(w.pay(&key, PRICE).await?.0.is_success());
    assert_eq!(w.refusal(&key, PRICE).await?, "voucher_too_low", "a replayed voucher buys nothing");
    assert!(w.pay(&key, 2 * PRICE).await?.0.is_success());
    assert_eq!(w.refusal(&key, 3 * PRICE).await?, "limit_exceeded");

    let poor = w.add_key(1_000_000, 1_000)?;
    assert_eq!(w.refusal(&poor, PRICE).await?, "insufficient_funds");

    let stranger = SigningKey::random();
    assert_eq!(w.refusal(&stranger, PRICE).await?, "unknown_key");

    // Signed by another key than the one named.
    let named = w.add_key(1_000_000, 10_000_000)?;
    let mut forged = w.payment(&stranger, PRICE, "POST /v1/chat")?;
    forged["payload"]["sessionKey"] = json!(named.address());
    let lookups = w.directory.lookups.load(std::sync::atomic::Ordering::SeqCst);
    let (_, body, _) = w.send("POST", "/v1/chat", Some((PAYMENT_SIGNATURE, b64(&forged)))).await?;
    assert_eq!(body["error"], "invalid_signature");
    // Refused before any lookup: a junk signature costs the server no I/O.
    assert_eq!(w.directory.lookups.load(std::sync::atomic::Ordering::SeqCst), lookups, "no lookup for a bad signature");

    let mut wrong_network = w.payment(&named, PRICE, "POST /v1/chat")?;
    wrong_network["accepted"]["network"] = json!("eip155:137");
    let (_, body, _) = w.send("POST", "/v1/chat", Some((PAYMENT_SIGNATURE, b64(&wrong_network)))).await?;
    assert_eq!(body["error"], "wrong_network");

    let mut wrong_payee = w.payment(&named, PRICE, "POST /v1/chat")?;
    wrong_payee["accepted"]["payTo"] = json!(Address::repeat_byte(0x99));
    let (_, body, _) = w.send("POST", "/v1/chat", Some((PAYMENT_SIGNATURE, b64(&wrong_payee)))).await?;
    assert_eq!(body["error"], "wrong_payee");
    let elsewhere = w.add_key(1_000_000, 10_000_000)?;
    w.edit(&elsewhere, |k| k.key.payee = Address::repeat_byte(0x99))?;
    assert_eq!(w.refusal(&elsewhere, PRICE).await?, "wrong_payee", "the key may only pay its own payee");

    let (_, body, _) = w.send("POST", "/v1/chat", Some((PAYMENT_SIGNATURE, "not base64!".into()))).await?;
    assert_eq!(body["error"], "malformed_payment");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("base64")), "{body}");

    for (edit, code) in [
        (Box::new(|k: &mut KeyInfo| k.frozen_offchain = true) as Box<dyn FnOnce(&mut KeyInfo)>, "key_frozen"),
        (Box::new(|k: &mut KeyInfo| k.key.frozen_at = Some(1)), "key_frozen"),
        (Box::new(|k: &mut KeyInfo| k.key.revoked_at = Some(1)), "key_revoked"),
        (Box::new(|k: &mut KeyInfo| k.key.valid_until = 1), "key_expired"),
        (Box::new(|k: &mut KeyInfo| k.key.valid_after = now() + 600), "key_expired"),
    ] {
        let k = w.add_key(1_000_000, 10_000_000)?;
        w.edit(&k, edit)?;
        assert_eq!(w.refusal(&k, PRICE).await?, code);
        assert_eq!(w.counters.key(k.address())?.served, Usdc::ZERO, "{code}: nothing charged");
    }
    assert_eq!(w.counters.key(key.address())?.served, Usdc::from_base_units(2 * PRICE));
    Ok(())
}

#[tokio::test]
async fn a_failed_call_is_voided_and_the_same_voucher_pays_the_retry() -> TestResult {
    let w = world()?;
    let key = w.add_key(1_000_000, 10_000_000)?;
    let header = b64(&w.payment(&key, PRICE, "GET /v1/broken")?);
    let (status, _, receipt) = w.send("GET", "/v1/broken", Some((PAYMENT_SIGNATURE, header))).await?;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(receipt.is_none(), "no receipt for a call that was not paid for");
    assert_eq!(w.counters.key(key.address())?.served, Usdc::ZERO);
    assert_eq!(w.counters.owner_served(OWNER)?, Usdc::ZERO);
    assert!(w.pay(&key, PRICE).await?.0.is_success(), "the voided voucher still pays");
    let kinds: Vec<UsageKind> = w.ledger.records.lock().map_err(|_| "poisoned")?.iter().map(|r| r.kind).collect();
    assert_eq!(kinds, [UsageKind::Charge, UsageKind::Void, UsageKind::Charge], "a void is a new ledger row");
    Ok(())
}

#[tokio::test]
async fn a_charge_the_ledger_cannot_hold_is_undone_and_not_served() -> TestResult {
    let w = world()?;
    let key = w.add_key(1_000_000, 10_000_000)?;
    *w.ledger.down.lock().map_err(|_| "poisoned")? = true;
    let (status, body, _) = w.pay(&key, PRICE).await?;
    assert_eq!((status, body["error"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")));
    assert_eq!(w.counters.key(key.address())?.served, Usdc::ZERO, "the charge was undone");
    // Counted against the dependency that failed (typed errors, not a string).
    assert_eq!((w.unavailable("ledger"), w.unavailable("directory"), w.unavailable("counters")), (1, 0, 0));
    *w.ledger.down.lock().map_err(|_| "poisoned")? = false;
    assert!(w.pay(&key, PRICE).await?.0.is_success(), "the same voucher pays once the ledger is back");
    Ok(())
}

/// Issue 11: a freeze made on another node reached this node's database before its cache. The
/// charge is taken on the stale cache, but the ledger refuses to commit a charge of a stopped
/// key: the call is answered 402 `key_frozen`, the API's answer is withheld, the counters are
/// given back, and the refusal is counted. The key's next call is refused the same way.
#[tokio::test]
async fn a_key_frozen_on_another_node_is_refused_when_its_charge_commits() -> TestResult {
    let w = world()?;
    let key = w.add_key(1_000_000, 10_000_000)?;
    assert!(w.pay(&key, PRICE).await?.0.is_success());
    w.ledger.stopped.lock().map_err(|_| "poisoned")?.push(key.address());
    let (status, body, _) = w.pay(&key, 2 * PRICE).await?;
    assert_eq!((status, body["error"].as_str()), (StatusCode::PAYMENT_REQUIRED, Some("key_frozen")), "{body}");
    assert!(!body.to_string().contains("the answer"), "the API's answer is withheld: {body}");
    assert_eq!(w.counters.key(key.address())?.served, Usdc::from_base_units(PRICE), "the charge was given back");
    assert_eq!(w.ledger.records.lock().map_err(|_| "poisoned")?.len(), 1, "only the first call is in the ledger");
    let mut text = String::new();
    w.metrics.render(&mut text);
    assert!(text.contains("opentab_gateway_refused_total{code=\"key_frozen\"} 1\n"), "{text}");
    assert_eq!(w.refusal(&key, 2 * PRICE).await?, "key_frozen");
    Ok(())
}

/// Issue 11: the ledger commit runs while the API works on the call, and the answer leaves only
/// once the charge is durable; a commit that fails turns the answer into a 503 and undoes the
/// charge, although the API did the work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_commits_while_the_api_works_and_the_answer_waits_for_it() -> TestResult {
    let w = Arc::new(world()?);
    let key = w.add_key(1_000_000, 10_000_000)?;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    *w.ledger.held.lock().map_err(|_| "poisoned")? = Some(gate.clone());
    let before = WATCHED.load(std::sync::atomic::Ordering::SeqCst);
    let call = |cumulative: u64| -> TestResult<_> {
        let header = b64(&w.payment(&key, cumulative, "POST /v1/watched")?);
        let req = Request::builder().method("POST").uri("/v1/watched").header(PAYMENT_SIGNATURE, header);
        Ok(tokio::spawn(w.app.clone().oneshot(req.body(Body::empty())?)))
    };
    let read = |res: axum::response::Response| async move {
        let (status, receipt) = (res.status(), res.headers().contains_key(PAYMENT_RESPONSE));
        let bytes = res.into_body().collect().await?.to_bytes();
        TestResult::Ok((status, String::from_utf8_lossy(&bytes).into_owned(), receipt))
    };
    let answer = call(PRICE)?;
    // The API answers while the commit is still held...
    for _ in 0..500 {
        if WATCHED.load(std::sync::atomic::Ordering::SeqCst) > before {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    assert!(WATCHED.load(std::sync::atomic::Ordering::SeqCst) > before, "the API worked during the commit");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(!answer.is_finished(), "the answer waits for the commit");
    assert!(w.ledger.records.lock().map_err(|_| "poisoned")?.is_empty());
    // ...and the answer leaves once the row is durable.
    gate.add_permits(1);
    let (status, body, receipt) = read(answer.await??).await?;
    assert_eq!((status, body.as_str(), receipt), (StatusCode::OK, "watched", true), "with its receipt");
    assert_eq!(w.ledger.records.lock().map_err(|_| "poisoned")?.len(), 1);

    // A commit that fails: the API worked, the client gets 503 and is not charged.
    *w.ledger.down.lock().map_err(|_| "poisoned")? = true;
    let worked = WATCHED.load(std::sync::atomic::Ordering::SeqCst);
    let answer = call(2 * PRICE)?;
    gate.add_permits(1);
    let (status, body, _) = read(answer.await??).await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("\"unavailable\""), "{body}");
    assert!(WATCHED.load(std::sync::atomic::Ordering::SeqCst) > worked, "the API did the work");
    assert_eq!(w.counters.key(key.address())?.served, Usdc::from_base_units(PRICE), "the charge was undone");
    Ok(())
}

#[tokio::test]
async fn when_key_state_is_unknown_the_gateway_fails_closed() -> TestResult {
    let w = world()?;
    let key = w.add_key(1_000_000, 10_000_000)?;
    *w.directory.down.lock().map_err(|_| "poisoned")? = true;
    let (status, body, _) = w.pay(&key, PRICE).await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "unavailable");
    assert!(!body.to_string().contains("database is down"), "the cause is logged, never sent: {body}");
    assert_eq!(w.counters.key(key.address())?.served, Usdc::ZERO);
    assert_eq!((w.unavailable("directory"), w.unavailable("ledger"), w.unavailable("counters")), (1, 0, 0));
    Ok(())
}

#[tokio::test]
async fn v1_x_payment_pays_too() -> TestResult {
    let w = world()?;
    let key = w.add_key(1_000_000, 10_000_000)?;
    let v2 = w.payment(&key, PRICE, "POST /v1/chat")?;
    let v1 = json!({ "x402Version": 1, "scheme": "session", "network": "eip155:31337", "payload": v2["payload"] });
    let (status, _, receipt) = w.send("POST", "/v1/chat", Some((X_PAYMENT, b64(&v1)))).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(receipt.map(|r| r["receipt"]["served"].clone()), Some(json!("2000")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_out_of_order_vouchers_never_serve_beyond_what_was_signed() -> TestResult {
    let w = Arc::new(world()?);
    let key = Arc::new(w.add_key(u64::MAX / 4, u64::MAX / 4)?);
    // 200 calls whose vouchers (1..=200 × price) arrive in a scrambled order, plus 100 replays.
    let mut amounts: Vec<u64> = (1..=200u64).map(|i| i * PRICE).collect();
    amounts.extend((1..=100u64).map(|i| i * PRICE));
    amounts.sort_by_key(|a| (a.wrapping_mul(2_654_435_761) >> 7) % 997);
    let mut tasks = Vec::new();
    for amount in amounts {
        let (w, key) = (w.clone(), key.clone());
        tasks.push(tokio::spawn(
            async move { w.pay(&key, amount).await.map(|r| r.0 == StatusCode::OK).unwrap_or(false) },
        ));
    }
    let mut paid = 0u64;
    for task in tasks {
        paid += u64::from(task.await?);
    }
    let counters = w.counters.key(key.address())?;
    assert_eq!(counters.served, Usdc::from_base_units(paid * PRICE), "every success was charged exactly once");
    assert!(
        counters.served.to_u256() <= counters.best,
        "served {} beyond the best voucher {}",
        counters.served,
        counters.best
    );
    assert!(paid <= 200, "never more calls than the highest voucher covers");
    assert_eq!(counters.best, U256::from(200 * PRICE));
    Ok(())
}

#[tokio::test]
async fn an_idempotency_key_makes_a_retry_free_of_a_second_charge() -> TestResult {
    let w = world()?;
    let key = w.add_key(1_000_000, 10_000_000)?;
    let send = |payment: Value, id: Option<&'static str>| {
        let app = w.app.clone();
        async move {
            let mut req = Request::builder().method("POST").uri("/v1/chat").header(PAYMENT_SIGNATURE, b64(&payment));
            if let Some(id) = id {
                req = req.header("idempotency-key", id);
            }
            let res = app.oneshot(req.body(Body::empty())?).await?;
            let status = res.status();
            let bytes = res.into_body().collect().await?.to_bytes();
            TestResult::Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
        }
    };
    assert_eq!(send(w.payment(&key, PRICE, "POST /v1/chat")?, Some("req-0001")).await?.0, StatusCode::OK);
    // The client lost the answer and retries with the same key (and the next voucher).
    let (status, body) = send(w.payment(&key, 2 * PRICE, "POST /v1/chat")?, Some("req-0001")).await?;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.contains("duplicate_payment"), "{body}");
    assert_eq!(w.counters.key(key.address())?.served, Usdc::from_base_units(PRICE), "charged once");
    // The x402 payment-identifier extension works the same.
    let mut payment = w.payment(&key, 2 * PRICE, "POST /v1/chat")?;
    payment["extensions"] =
        json!({ "payment-identifier": { "info": { "id": "pay_7d5d747be160e280504c099d984bcfe0" } } });
    assert_eq!(send(payment.clone(), None).await?.0, StatusCode::OK);
    assert_eq!(send(payment, None).await?.0, StatusCode::CONFLICT);
    // A malformed key is refused before anything is charged.
    let (status, body) = send(w.payment(&key, 3 * PRICE, "POST /v1/chat")?, Some("no spaces allowed")).await?;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert!(body.contains("malformed_payment") && body.contains("idempotency key"), "{body}");
    assert_eq!(w.counters.key(key.address())?.served, Usdc::from_base_units(2 * PRICE));
    Ok(())
}

#[tokio::test]
async fn the_charge_api_charges_voids_and_refuses_strangers() -> TestResult {
    let w = world()?;
    let api = charge_api(w.gateway.clone(), "s3cret-s3cret");
    let call = |path: &'static str, auth: Option<&'static str>, body: Value| {
        let api = api.clone();
        async move {
            let mut req = Request::builder().method("POST").uri(path).header("content-type", "application/json");
            if let Some(auth) = auth {
                req = req.header("authorization", auth);
            }
            let res = api.oneshot(req.body(Body::from(body.to_string()))?).await?;
            let status = res.status();
            let required = res.headers().contains_key(PAYMENT_REQUIRED);
            let bytes = res.into_body().collect().await?.to_bytes();
            TestResult::Ok((status, serde_json::from_slice::<Value>(&bytes)?, required))
        }
    };
    let auth = Some("Bearer s3cret-s3cret");
    let key = w.add_key(1_000_000, 10_000_000)?;

    // Strangers and malformed requests are the app's bug, not a payment answer.
    let (status, body, _) = call("/gateway/v1/charge", Some("Bearer wrong"), json!({})).await?;
    assert_eq!((status, body["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")));
    let (status, body, _) = call("/gateway/v1/charge", auth, json!({ "route": "POST /v1/chat" })).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body, _) =
        call("/gateway/v1/charge", auth, json!({ "route": "POST /v1/chat", "price": "lots" })).await?;
    assert!(
        status == StatusCode::BAD_REQUEST && body["message"].as_str().is_some_and(|m| m.contains("lots")),
        "{body}"
    );

    // No payment: the challenge to relay, header included.
    let (status, body, required) =
        call("/gateway/v1/charge", auth, json!({ "route": "POST /v1/chat", "price": "$0.002" })).await?;
    assert_eq!((status, required, &body["accepts"][0]["amount"]), (StatusCode::PAYMENT_REQUIRED, true, &json!("2000")));

    // Paid: a charge id and the receipt; voiding it gives the money back, once.
    let payment = b64(&w.payment(&key, PRICE, "POST /v1/chat")?);
    let charge = json!({ "route": "POST /v1/chat", "price": "0.002", "payment": payment });
    let (status, paid, _) = call("/gateway/v1/charge", auth, charge.clone()).await?;
    assert_eq!((status, paid["status"].as_str()), (StatusCode::OK, Some("paid")), "{paid}");
    assert_eq!(paid["receipt"]["receipt"]["served"], "2000");
    assert_eq!(w.counters.key(key.address())?.served, Usdc::from_base_units(PRICE));
    let void = json!({ "chargeId": paid["chargeId"] });
    let (status, _, _) = call("/gateway/v1/void", None, void.clone()).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The ledger is away: nothing is voided, the app is told to retry, and its retry works
    // once the ledger is back (the claim was given back, not spent).
    *w.ledger.down.lock().map_err(|_| "poisoned")? = true;
    let (status, body, _) = call("/gateway/v1/void", auth, void.clone()).await?;
    assert_eq!((status, body["error"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")));
    assert_eq!(w.counters.key(key.address())?.served, Usdc::from_base_units(PRICE), "nothing voided");
    *w.ledger.down.lock().map_err(|_| "poisoned")? = false;
    let (status, body, _) = call("/gateway/v1/void", auth, void.clone()).await?;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("voided")));
    let charge_id = paid["chargeId"].as_str().ok_or("a charge id")?;
    assert!(!body.to_string().contains(charge_id), "the charge id (voucher, signature) is not echoed: {body}");
    assert_eq!(w.counters.key(key.address())?.served, Usdc::ZERO);
    let (status, body, _) = call("/gateway/v1/void", auth, void).await?;
    assert_eq!((status, body["error"].as_str()), (StatusCode::NOT_FOUND, Some("unknown_charge")));
    assert!(!body.to_string().contains(charge_id), "not in a refusal either: {body}");
    let kinds: Vec<UsageKind> = w.ledger.records.lock().map_err(|_| "poisoned")?.iter().map(|r| r.kind).collect();
    assert_eq!(kinds, [UsageKind::Charge, UsageKind::Void]);

    // The voided voucher pays again; a replay of it then is refused with the code to relay.
    assert_eq!(call("/gateway/v1/charge", auth, charge.clone()).await?.0, StatusCode::OK);
    let (status, body, _) = call("/gateway/v1/charge", auth, charge).await?;
    assert_eq!((status, body["error"].as_str()), (StatusCode::PAYMENT_REQUIRED, Some("voucher_too_low")));
    Ok(())
}

#[tokio::test]
async fn any_node_voids_a_charge_once_and_nobody_forges_one() -> TestResult {
    let w = world()?;
    // A second gateway node: its own process state, the same counter store (Redis in
    // production), ledger and secret.
    let other = Arc::new(Gateway {
        config: w.config.clone(),
        pricing: Pricing::new([("POST /v1/chat", "0.002")])?,
        directory: w.directory.clone(),
        counters: w.counters.clone(),
        ledger: w.ledger.clone(),
        observer: None,
    });
    let (node_a, node_b) = (charge_api(w.gateway.clone(), "s3cret-s3cret"), charge_api(other, "s3cret-s3cret"));
    let call_as = |secret: &'static str, node: &Router, path: &'static str, body: Value| {
        let node = node.clone();
        async move {
            let req = Request::builder()
                .method("POST")
                .uri(path)
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {secret}"))
                .body(Body::from(body.to_string()))?;
            let res = node.oneshot(req).await?;
            let status = res.status();
            let bytes = res.into_body().collect().await?.to_bytes();
            TestResult::Ok((status, serde_json::from_slice::<Value>(&bytes)?))
        }
    };
    let call = |node: &Router, path: &'static str, body: Value| call_as("s3cret-s3cret", node, path, body);
    let key = w.add_key(1_000_000, 10_000_000)?;
    let payment = b64(&w.payment(&key, PRICE, "POST /v1/chat")?);
    let (status, paid) =
        call(&node_a, "/gateway/v1/charge", json!({ "route": "POST /v1/chat", "price": "0.002", "payment": payment }))
            .await?;
    assert_eq!(status, StatusCode::OK, "{paid}");
    let id = paid["chargeId"].as_str().ok_or("a charge id")?.to_owned();

    // Altered, or sealed with another secret: not a charge of ours.
    let forged = id.replacen("chg_", "chg_x", 1);
    assert_eq!(call(&node_b, "/gateway/v1/void", json!({ "chargeId": forged })).await?.0, StatusCode::NOT_FOUND);
    let stranger = charge_api(w.gateway.clone(), "another-secret");
    let payment = b64(&w.payment(&key, 2 * PRICE, "POST /v1/chat")?);
    let charge = json!({ "route": "POST /v1/chat", "price": "0.002", "payment": payment });
    let (_, theirs) = call_as("another-secret", &stranger, "/gateway/v1/charge", charge).await?;
    let theirs = json!({ "chargeId": theirs["chargeId"] });
    assert_eq!(call(&node_b, "/gateway/v1/void", theirs).await?.0, StatusCode::NOT_FOUND);
    assert_eq!(w.counters.key(key.address())?.served, Usdc::from_base_units(2 * PRICE), "nothing voided yet");

    // Node B voids what node A charged; after that neither node voids it again.
    let (status, body) = call(&node_b, "/gateway/v1/void", json!({ "chargeId": id })).await?;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("voided")));
    assert_eq!(w.counters.key(key.address())?.served, Usdc::from_base_units(PRICE));
    for node in [&node_a, &node_b] {
        let (status, body) = call(node, "/gateway/v1/void", json!({ "chargeId": id })).await?;
        assert_eq!((status, body["error"].as_str()), (StatusCode::NOT_FOUND, Some("unknown_charge")));
    }
    assert_eq!(w.counters.key(key.address())?.served, Usdc::from_base_units(PRICE), "voided once");
    Ok(())
}

#[tokio::test]
async fn a_handler_that_panics_is_not_paid_for() -> TestResult {
    let w = world()?;
    let key = w.add_key(1_000_000, 10_000_000)?;
    let header = b64(&w.payment(&key, PRICE, "GET /v1/panics")?);
    let (status, body, receipt) = w.send("GET", "/v1/panics", Some((PAYMENT_SIGNATURE, header))).await?;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["error"], "internal");
    assert!(receipt.is_none());
    assert_eq!(w.counters.key(key.address())?.served, Usdc::ZERO, "voided");
    let kinds: Vec<UsageKind> = w.ledger.records.lock().map_err(|_| "poisoned")?.iter().map(|r| r.kind).collect();
    assert_eq!(kinds, [UsageKind::Charge, UsageKind::Void]);
    Ok(())
}
