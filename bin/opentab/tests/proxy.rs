//! The production topology end to end on anvil: `opentab serve` (PostgreSQL, chain listener,
//! settlement worker) and `opentab proxy` in front of a plain HTTP API. 10,000 paid calls from
//! five keys, concurrent and out of order, one in ten answered 500 by the API (voided). Run
//! with in-process counters, and with Redis counters whose data is flushed mid-traffic.
//!
//! Afterwards: every charge and void is in the ledger exactly once, nothing was served beyond
//! the highest signed voucher (replays buy exactly the calls signed for but voided, no more),
//! one settlement per key happened, the payee holds exactly what was served less what is
//! still pending (under the threshold), and no voided call was paid.
//!
//! And: a request retried under the same idempotency key is not charged twice, even when
//! Redis lost everything between the two tries (the ledger keeps the key with the charge).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use common::{Running, TestResult, wait_until};
use opentab_chain::{Anvil, AnvilConfig, KeyTerms, Validator, deploy_dev_contracts, signing_provider};
use opentab_core::{SETTLEMENT_THRESHOLD, SigningKey, U256, Usdc, Voucher};
use opentab_gateway::protocol::{
    PAYMENT_RESPONSE, PAYMENT_SIGNATURE, PaymentPayload, PaymentRequired, Requirements, SessionPayload, X402_VERSION,
    encode_header,
};
use opentab_store::{SettlementStatus, Store};

const KEYS: usize = 5;
const CALLS_PER_KEY: u64 = 2_000;
const PRICE: u64 = 10_000; // 0.01 USDC
const CONCURRENCY: usize = 32;
/// The proxy's request-body limit in these tests: 6 MiB.
const MAX_BODY: usize = 6 << 20;

/// A plain API: `/v1/work` answers 200 and reports what reached it, `/v1/fail` answers 500
/// (the charge must be voided), `/v1/slow` answers after 3 s (past the proxy's deadline).
async fn upstream() -> TestResult<String> {
    use axum::http::HeaderMap;
    use axum::routing::post;
    let work = |headers: HeaderMap, body: axum::body::Bytes| async move {
        let custom = headers.get("x-custom").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let saw_payment = headers.contains_key(PAYMENT_SIGNATURE);
        let json = serde_json::json!({ "echo": body.len(), "custom": custom, "sawPayment": saw_payment });
        ([("x-upstream", "yes")], json.to_string())
    };
    let app = axum::Router::new()
        .route("/v1/work", post(work))
        .route("/v1/fail", post(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "model crashed") }))
        .route(
            "/v1/slow",
            post(|| async {
                tokio::time::sleep(std::time::Duration::from_secs(3)).await;
                "too late"
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(16 << 20));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// A Redis of the test's own, so `FLUSHALL` hurts nobody else.
struct OwnRedis {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl OwnRedis {
    fn start() -> TestResult<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = tempfile::tempdir()?;
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server (Debian's redis-server package; scripts/test.sh installs it): {e}"))?;
        let url = format!("redis://127.0.0.1:{port}");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Self { child, url, _dir: dir });
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Err("redis-server did not start".into())
    }

    async fn flushall(&self) -> TestResult {
        let client = redis::Client::open(self.url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await?;
        Ok(())
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Call {
    key: usize,
    /// The voucher this call carries: its place in the key's sequence times the price.
    voucher: u64,
    fail: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_calls_through_the_proxy_with_in_process_counters() -> TestResult {
    ten_thousand_calls(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_calls_through_the_proxy_with_redis_flushed_mid_traffic() -> TestResult {
    let redis = OwnRedis::start()?;
    ten_thousand_calls(Some(&redis)).await
}

/// anvil with an owner (a 500 USDC tab with the payee) and `keys` keys paying one payee; `opentab serve`
/// (listener + settlement worker as the payee) and `opentab proxy` in front of [`upstream`],
/// sharing one PostgreSQL database; the keys mirrored; the requirements read from a 402.
struct Topology {
    _anvil: Anvil,
    _serve: Running,
    _proxy: Running,
    _dir: tempfile::TempDir,
    config: String,
    url: String,
    database_url: String,
    store: Store,
    owner: Validator,
    deployment: opentab_chain::Deployment,
    payee: opentab_core::Address,
    keys: Vec<SigningKey>,
    accepted: Requirements,
    client: reqwest::Client,
}

async fn topology(keys: usize, redis: Option<&OwnRedis>, timeout_secs: u64) -> TestResult<Topology> {
    topology_with(keys, redis, timeout_secs, "").await
}

/// [`topology`], with `settings` (lines of serve's file) added at its top level.
async fn topology_with(
    keys: usize,
    redis: Option<&OwnRedis>,
    timeout_secs: u64,
    settings: &str,
) -> TestResult<Topology> {
    let anvil = Anvil::spawn(AnvilConfig::default())?;
    let rpc = anvil.endpoint();
    let deployer = signing_provider(&rpc, anvil.signer(0)?)?;
    let deployment = deploy_dev_contracts(&deployer, &rpc, 86_400).await?;
    let owner = Validator::connect(signing_provider(&rpc, anvil.signer(1)?)?, deployment.validator).await?;
    let payee = anvil.signer(2)?.address();
    owner.mint_test_usdc(anvil.signer(1)?.address(), Usdc::parse_decimal("500")?).await?;
    owner.deposit(payee, Usdc::parse_decimal("500")?).await?;
    let keys: Vec<SigningKey> = (0..keys).map(|_| SigningKey::random()).collect();
    for key in &keys {
        let terms = KeyTerms {
            session_key: key.address(),
            payee,
            limit: Usdc::parse_decimal("100")?,
            valid_after: 0,
            valid_until: 4_000_000_000,
        };
        owner.register_session_key(&terms).await?;
    }

    let database_url = opentab_store::testing::fresh_postgres_url().await?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("opentab.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndatabase_url = \"{database_url}\"\nrpc_url = \"{rpc}\"\n\
             validator = \"{:#x}\"\ndeployed_at_block = {}\npayee = \"{payee:#x}\"\ndomain = \"127.0.0.1\"\n\
             confirmations = 0\nsettle_every_secs = 1\n{settings}\n[proxy]\nlisten = \"127.0.0.1:0\"\ntimeout_secs = {timeout_secs}\nrules = \"shadow\"\nmax_body_bytes = {MAX_BODY}\n\n\
             [proxy.routes]\n\"POST /v1/work\" = \"0.01\"\n\"POST /v1/fail\" = \"0.01\"\n\"POST /v1/slow\" = \"0.01\"\n",
            deployment.validator, deployment.deployed_at_block
        ),
    )?;
    let config = config.to_string_lossy().into_owned();
    let payee_key = format!("{:#x}", anvil.keys()[2]);
    let serve =
        Running::start(&["serve", "--config", &config], &[("OPENTAB_SETTLER_KEY", &payee_key)], "opentab serving")?;
    let upstream = upstream().await?;
    let mut args = vec!["proxy", "--config", &config, "--upstream", &upstream];
    if let Some(redis) = redis {
        args.extend(["--redis-url", &redis.url]);
    }
    let proxy = Running::start(&args, &[], "ready")?;
    let url = proxy.field("url").ok_or("no proxy url")?;

    let store = Store::connect(&database_url).await?;
    for key in &keys {
        let address = key.address();
        wait_until("the listener mirrors the keys", || {
            let store = store.clone();
            async move {
                let record = store.key(address).await?;
                Ok(record.is_some_and(|k| k.chain_status == opentab_store::ChainStatus::Registered))
            }
        })
        .await?;
    }

    let client = common::client();
    let challenge = client.post(format!("{url}/v1/work")).body("{}").send().await?;
    assert_eq!(challenge.status(), 402);
    let required: PaymentRequired = serde_json::from_str(&challenge.text().await?)?;
    let accepted = required.accepts.first().ok_or("no requirements")?.clone();
    Ok(Topology {
        _anvil: anvil,
        _serve: serve,
        _proxy: proxy,
        _dir: dir,
        config,
        url,
        database_url,
        store,
        owner,
        deployment,
        payee,
        keys,
        accepted,
        client,
    })
}

/// Issue 12: a void must be as durable as the charge. The database goes away while the API works
/// on a paid call, which then fails: the proxy cannot write the void, so it flushes it to its
/// spool on disk before answering, and records it once the database is back; the counters then
/// give the price back. (Before, the void was only logged: the ledger kept the charge of a call
/// that failed, and settlement collected for it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_void_the_database_cannot_take_waits_on_disk_and_lands_when_it_is_back() -> TestResult {
    let redis = OwnRedis::start()?;
    let t = topology(1, Some(&redis), 2).await?;
    let key = t.keys[0].address();
    // A second proxy on the same Redis reaches the database through a link the test cuts.
    let target = t.database_url.split_once('@').and_then(|(_, rest)| rest.split('/').next()).ok_or("no host")?;
    let link = opentab_topology::Link::start(target).await?;
    let state = tempfile::tempdir()?;
    let state_dir = state.path().to_string_lossy().into_owned();
    let upstream = upstream().await?;
    let through_link = link.rewrite(&t.database_url)?;
    let proxy = Running::start(
        &[
            "proxy",
            "--config",
            &t.config,
            "--port",
            "0",
            "--upstream",
            &upstream,
            "--redis-url",
            &redis.url,
            "--database-url",
            &through_link,
        ],
        &[("XDG_STATE_HOME", &state_dir)],
        "ready",
    )?;
    let url = proxy.field("url").ok_or("no url")?;

    // The API takes 3 s, past the proxy's 2 s deadline: a 504, voided. The database goes away
    // once the charge's row is in.
    let call = {
        let (client, key, accepted, deployment) =
            (t.client.clone(), t.keys[0].clone(), t.accepted.clone(), t.deployment.clone());
        let payee = t.payee;
        tokio::spawn(async move { pay(&client, &url, &key, &accepted, &deployment, payee, PRICE, "slow").await })
    };
    wait_until("the charge is in the ledger", || {
        let store = t.store.clone();
        async move { Ok(store.served(key).await? == Usdc::from_base_units(PRICE)) }
    })
    .await?;
    link.cut();
    let answer = call.await?.map_err(|e| e.to_string())?;
    assert_eq!(answer.status(), 504);
    assert!(!answer.headers().contains_key(PAYMENT_RESPONSE), "not charged");
    let spooled = std::fs::read_to_string(state.path().join("opentab/spool/voids-0.jsonl"))?;
    assert_eq!(spooled.lines().count(), 1, "the void waits on disk: {spooled}");
    assert_eq!(t.store.served(key).await?, Usdc::from_base_units(PRICE), "the database has not got it yet");

    link.restore();
    wait_until("the spooled void reaches the ledger", || {
        let store = t.store.clone();
        async move { Ok(store.served(key).await? == Usdc::ZERO) }
    })
    .await?;
    // The counters gave the price back too: the voided voucher pays a call.
    let again = pay(&t.client, &t.url, &t.keys[0], &t.accepted, &t.deployment, t.payee, PRICE, "work")
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(again.status(), 200);
    assert_eq!(t.store.served(key).await?, Usdc::from_base_units(PRICE));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_forwards_faithfully_and_voids_what_the_upstream_fails_to_answer() -> TestResult {
    // Redis counters: the second proxy below (its upstream down) shares them with the first.
    let redis = OwnRedis::start()?;
    let t = topology(1, Some(&redis), 1).await?;
    let key = &t.keys[0];
    let send = |url: String, path: &'static str, voucher: u64, body: reqwest::Body| {
        let (client, key, accepted, deployment) =
            (t.client.clone(), key.clone(), t.accepted.clone(), t.deployment.clone());
        let payee = t.payee;
        async move {
            let domain = opentab_core::ContractDomain::opentab(deployment.chain_id, deployment.validator);
            let amount = U256::from(voucher);
            let signature = key.sign_digest(&domain.digest(&Voucher::new(key.address(), payee, amount)));
            let payment = PaymentPayload {
                x402_version: X402_VERSION,
                accepted,
                payload: SessionPayload { session_key: key.address(), cumulative_amount: amount, signature },
                extensions: None,
            };
            TestResult::Ok(
                client
                    .post(format!("{url}/v1/{path}"))
                    .header(PAYMENT_SIGNATURE, encode_header(&payment))
                    .header("x-custom", "hello")
                    .body(body)
                    .send()
                    .await?,
            )
        }
    };

    // Past the deadline: 504, no receipt, and the charge is voided, so the voucher pays again.
    let slow = send(t.url.clone(), "slow", PRICE, vec![].into()).await?;
    assert_eq!(slow.status(), 504);
    assert!(!slow.headers().contains_key(PAYMENT_RESPONSE));
    // 5 MB through and back; custom headers pass, the payment does not reach the upstream.
    let ok = send(t.url.clone(), "work", PRICE, vec![b'x'; 5 << 20].into()).await?;
    assert_eq!(ok.status(), 200, "the voided voucher pays the next call");
    assert_eq!(ok.headers().get("x-upstream").map(|v| v.as_bytes()), Some(&b"yes"[..]));
    assert!(ok.headers().contains_key(PAYMENT_RESPONSE));
    let seen: serde_json::Value = serde_json::from_str(&ok.text().await?)?;
    assert_eq!(seen, serde_json::json!({ "echo": 5 << 20, "custom": "hello", "sawPayment": false }));

    // An upstream that is down: 502, voided.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dead = Running::start(
        &[
            "proxy",
            "--config",
            &t.config,
            "--port",
            "0",
            "--upstream",
            &format!("http://127.0.0.1:{closed}"),
            "--redis-url",
            &redis.url,
        ],
        &[],
        "ready",
    )?;
    let dead_url = dead.field("url").ok_or("no url")?;
    let down = send(dead_url, "work", 2 * PRICE, vec![].into()).await?;
    assert_eq!(down.status(), 502);
    assert!(down.text().await?.contains("\"charged\":false"));
    assert_eq!(send(t.url.clone(), "work", 2 * PRICE, vec![].into()).await?.status(), 200, "voided, so it pays again");

    // Request bodies over the limit: one byte over with its length declared is refused before
    // any charge; streamed without a length, it is cut off at the limit and the charge voided.
    // Either way the voucher pays the next call. Exactly the limit passes.
    // (Raw requests, sending nothing the proxy will not read: a client still writing a body
    // the proxy refused may see the connection reset before it reads the answer.)
    let (url, payment) = (t.url.clone(), payment_header(&t, 3 * PRICE));
    let over = tokio::task::spawn_blocking(move || raw_post(&url, "/v1/work", &payment, true, MAX_BODY + 1)).await??;
    assert!(over.starts_with("HTTP/1.1 413"), "one byte over, declared: {over}");
    assert!(!over.to_ascii_lowercase().contains(&PAYMENT_RESPONSE.to_ascii_lowercase()), "{over}");
    let (url, payment) = (t.url.clone(), payment_header(&t, 3 * PRICE));
    let streamed =
        tokio::task::spawn_blocking(move || raw_post(&url, "/v1/work", &payment, false, MAX_BODY + 1)).await??;
    assert!(streamed.starts_with("HTTP/1.1 413"), "one byte over, streamed without a length: {streamed}");
    let exact = send(t.url.clone(), "work", 3 * PRICE, vec![b'x'; MAX_BODY].into()).await?;
    assert_eq!(exact.status(), 200, "exactly the limit passes, and the refused calls were not charged");
    let usage = t.store.usage_total(key.address()).await?.ok_or("no usage")?;
    assert_eq!(usage.served, Usdc::from_base_units(3 * PRICE), "only the three answered calls are paid");
    Ok(())
}

/// The `PAYMENT-SIGNATURE` of key 0 of `t` for voucher `voucher`.
fn payment_header(t: &Topology, voucher: u64) -> String {
    let key = &t.keys[0];
    let domain = opentab_core::ContractDomain::opentab(t.deployment.chain_id, t.deployment.validator);
    let amount = U256::from(voucher);
    let signature = key.sign_digest(&domain.digest(&Voucher::new(key.address(), t.payee, amount)));
    encode_header(&PaymentPayload {
        x402_version: X402_VERSION,
        accepted: t.accepted.clone(),
        payload: SessionPayload { session_key: key.address(), cumulative_amount: amount, signature },
        extensions: None,
    })
}

/// A raw `POST` whose body is `body` bytes: declared with `Content-Length` and not sent (the
/// proxy must refuse on the declaration alone), or streamed chunked with no declared length and
/// no final chunk (the proxy must stop reading at its limit). Either way the proxy has read all
/// that was sent when it answers, so its close cannot reset the answer away. The raw answer.
fn raw_post(url: &str, path: &str, payment: &str, declared: bool, body: usize) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(url.trim_start_matches("http://"))?;
    let framing = if declared { format!("Content-Length: {body}") } else { "Transfer-Encoding: chunked".to_owned() };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: proxy\r\n{PAYMENT_SIGNATURE}: {payment}\r\n{framing}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes())?;
    if !declared {
        let mut left = body;
        while left > 0 {
            let size = left.min(1 << 20);
            stream.write_all(format!("{size:x}\r\n").as_bytes())?;
            stream.write_all(&vec![b'x'; size])?;
            stream.write_all(b"\r\n")?;
            left -= size;
        }
    }
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// A paid `POST /v1/{path}` with key 0 of `t`, voucher `voucher`, under `idempotency`.
async fn paid_call(t: &Topology, path: &str, voucher: u64, idempotency: &str) -> TestResult<reqwest::Response> {
    Ok(t.client
        .post(format!("{}/v1/{path}", t.url))
        .header(PAYMENT_SIGNATURE, payment_header(t, voucher))
        .header("idempotency-key", idempotency)
        .body("{}")
        .send()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_not_charged_twice_even_after_redis_lost_everything() -> TestResult {
    let redis = OwnRedis::start()?;
    let t = topology(1, Some(&redis), 10).await?;
    let served = || async { TestResult::Ok(t.store.usage_total(t.keys[0].address()).await?.map(|u| u.served)) };

    assert_eq!(paid_call(&t, "work", PRICE, "order-1").await?.status(), 200);
    // The API fails this one: voided, so its key is free again.
    assert_eq!(paid_call(&t, "fail", 2 * PRICE, "order-2").await?.status(), 500);
    let retry = paid_call(&t, "work", PRICE, "order-1").await?;
    assert_eq!(retry.status(), 409, "a retry of a paid call is refused while Redis remembers it");

    redis.flushall().await?;
    let retry = paid_call(&t, "work", PRICE, "order-1").await?;
    assert_eq!(retry.status(), 409, "and still after Redis lost it: the ledger kept the key");
    assert!(retry.text().await?.contains("duplicate_payment"));
    assert_eq!(served().await?, Some(Usdc::from_base_units(PRICE)), "charged once");

    // The failed call's retry is charged (its void freed the key), on rebuilt counters.
    let retried = paid_call(&t, "work", 2 * PRICE, "order-2").await?;
    assert_eq!(retried.status(), 200);
    assert_eq!(served().await?, Some(Usdc::from_base_units(2 * PRICE)));
    assert_eq!(paid_call(&t, "work", 2 * PRICE, "order-2").await?.status(), 409);
    Ok(())
}

/// Issue 11: a freeze made on one node (here the API node's database connection, as `POST
/// /api/session-keys/{key}/freeze` makes it) refuses the very next call on the proxy, another
/// process, without waiting for its key cache to hear of it: the ledger refuses, inside the
/// commit, a charge of a key frozen by then. The API's answer is withheld and nothing is
/// charged; unfrozen, the key pays again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freeze_made_on_one_node_refuses_the_next_call_on_another() -> TestResult {
    let t = topology(1, None, 10).await?;
    let key = t.keys[0].address();
    let served = || async { TestResult::Ok(t.store.usage_total(key).await?.map(|u| u.served)) };
    assert_eq!(paid_call(&t, "work", PRICE, "before").await?.status(), 200);

    assert!(t.store.freeze_offchain(key, 1).await?);
    let refused = paid_call(&t, "work", 2 * PRICE, "next").await?;
    assert_eq!(refused.status(), 402, "the very next call");
    let body = refused.text().await?;
    assert!(body.contains("key_frozen") && !body.contains("echo"), "{body}");
    assert_eq!(served().await?, Some(Usdc::from_base_units(PRICE)), "nothing charged after the freeze");
    assert_eq!(paid_call(&t, "work", 2 * PRICE, "again").await?.status(), 402, "and every call after it");

    assert!(t.store.unfreeze_offchain(key, 2).await?);
    wait_until("the unfrozen key pays again", || {
        let t = &t;
        async move { Ok(paid_call(t, "work", 2 * PRICE, "after").await?.status() == 200) }
    })
    .await?;
    assert_eq!(served().await?, Some(Usdc::from_base_units(2 * PRICE)));
    Ok(())
}

/// Issue 11: a proxy links no mail client. The rule engine on the proxy leaves an alert's email
/// in the outbox, in the alert's transaction; `opentab serve`, configured with an SMTP relay,
/// sends it. (The topology's rules run in shadow mode: the burst alerts without freezing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_fired_on_a_proxy_is_emailed_by_serve() -> TestResult {
    let (smtp, mails) = opentab_accumulator::testing::smtp_listener().await?;
    let settings = format!("smtp_url = \"{smtp}\"\nalert_email = \"ops@example.com\"\n");
    let t = topology_with(1, None, 10, &settings).await?;
    for n in 1..=101 {
        assert_eq!(paid_call(&t, "work", n * PRICE, &format!("call-{n}")).await?.status(), 200);
    }
    let key = t.keys[0].address();
    wait_until("serve mails the alert", || {
        let mails = mails.clone();
        async move { Ok(!mails.lock().map_err(|_| "poisoned")?.is_empty()) }
    })
    .await?;
    let mail = mails.lock().map_err(|_| "poisoned")?.clone();
    assert_eq!(mail.len(), 1, "one crossing, one email: {mail:?}");
    assert!(mail[0].contains("opentab alert: rate") && mail[0].contains(&format!("{key:#x}")), "{}", mail[0]);
    let alerts = t.store.alerts_of(key, 10).await?;
    assert_eq!((alerts.len(), alerts[0].alert.rule.as_str()), (1, "rate"));
    Ok(())
}

async fn ten_thousand_calls(redis: Option<&OwnRedis>) -> TestResult {
    let t = topology(KEYS, redis, 10).await?;
    let (client, url, keys, accepted, deployment, payee, store, owner) =
        (&t.client, &t.url, &t.keys, &t.accepted, &t.deployment, t.payee, &t.store, &t.owner);
    // Unpriced paths pass through untouched, unpaid.
    assert_eq!(client.get(format!("{url}/unpriced")).send().await?.status(), 404);

    // Each key's vouchers 1..=2000 × price, every 10th call one the API fails; all shuffled.
    let mut calls: Vec<Call> = (0..KEYS)
        .flat_map(|key| (1..=CALLS_PER_KEY).map(move |i| Call { key, voucher: i * PRICE, fail: i % 10 == 0 }))
        .collect();
    shuffle(&mut calls);
    let total = calls.len();
    let (first, second) = calls.split_at(total / 2);
    let ok = Arc::new(AtomicU32::new(0));
    let voided = Arc::new(AtomicU32::new(0));
    let started = std::time::Instant::now();
    send_all(client, url, keys, accepted, deployment, payee, first, &ok, &voided).await?;
    if let Some(redis) = redis {
        // Redis loses everything mid-traffic: the counters come back from the ledger.
        redis.flushall().await?;
    }
    send_all(client, url, keys, accepted, deployment, payee, second, &ok, &voided).await?;
    let elapsed = started.elapsed();
    eprintln!("{total} paid calls through the proxy in {elapsed:?} ({:.0}/s)", total as f64 / elapsed.as_secs_f64());
    assert_eq!(ok.load(Ordering::Relaxed), (KEYS as u64 * CALLS_PER_KEY * 9 / 10) as u32, "every good call served");
    assert_eq!(voided.load(Ordering::Relaxed), (KEYS as u64 * CALLS_PER_KEY / 10) as u32, "every failing call voided");

    // The rule engine saw the burst (over 100 calls a minute per key) but, in shadow mode, only
    // alerted: no key was frozen and every call above was served.
    for key in keys {
        let alerts = store.alerts_of(key.address(), 10).await?;
        assert!(
            alerts.iter().any(|a| a.alert.rule == "rate" && a.alert.mode == "shadow" && !a.alert.froze),
            "{alerts:?}"
        );
    }

    // The ledger: each charge and void exactly once; served never beyond the best voucher.
    let served_per_key = Usdc::from_base_units(CALLS_PER_KEY * 9 / 10 * PRICE);
    for key in keys {
        let usage = store.usage_total(key.address()).await?.ok_or("no usage")?;
        assert_eq!(usage.served, served_per_key, "nothing lost, nothing charged twice");
        assert_eq!(usage.best, U256::from(CALLS_PER_KEY * PRICE));
        assert!(usage.served.to_u256() <= usage.best);
    }

    // Settlement: 18 USDC served per key crosses the 10 USDC threshold once, so one settlement
    // per key; then less than the threshold is pending.
    wait_until("every key is settled once", || {
        let store = store.clone();
        async move { Ok(store.settlements(Some(SettlementStatus::Succeeded), None, 100).await?.len() == KEYS) }
    })
    .await?;
    assert!(store.settlements(Some(SettlementStatus::Pending), None, 100).await?.is_empty());
    assert!(store.settlements(Some(SettlementStatus::Dead), None, 100).await?.is_empty());
    let mut settled_total = 0;
    let mut pending_total = 0;
    for key in keys {
        let settled = owner.session_key(key.address()).await?.ok_or("not on-chain")?.settled;
        assert!(settled <= served_per_key, "a voided call was paid for");
        let pending = served_per_key.saturating_sub(settled);
        assert!(pending < SETTLEMENT_THRESHOLD, "{} still pending", pending.display());
        settled_total += settled.base_units();
        pending_total += pending.base_units();
    }
    let balance: u64 = owner.usdc_balance(payee).await?.saturating_to();
    assert_eq!(balance, settled_total);
    assert_eq!(balance, KEYS as u64 * served_per_key.base_units() - pending_total, "charged minus pending");

    // The voided calls left 200 calls signed for but not served: old vouchers (replays) buy
    // exactly those, and not one more, whatever Redis went through.
    let headroom = CALLS_PER_KEY / 10;
    for n in 0..=headroom {
        let replay =
            pay(client, url, &keys[0], accepted, deployment, payee, PRICE, "work").await.map_err(|e| e.to_string())?;
        if n < headroom {
            assert_eq!(replay.status(), 200, "replay {n} is within what the key signed");
        } else {
            assert_eq!(replay.status(), 402);
            assert!(replay.text().await?.contains("voucher_too_low"));
        }
    }
    drop(t);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn send_all(
    client: &reqwest::Client,
    url: &str,
    keys: &[SigningKey],
    accepted: &Requirements,
    deployment: &opentab_chain::Deployment,
    payee: opentab_core::Address,
    calls: &[Call],
    ok: &Arc<AtomicU32>,
    voided: &Arc<AtomicU32>,
) -> TestResult {
    let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for call in calls {
        let permit = permits.clone().acquire_owned().await?;
        let (client, url, key, accepted) = (client.clone(), url.to_owned(), keys[call.key].clone(), accepted.clone());
        let (deployment, ok, voided) = (deployment.clone(), ok.clone(), voided.clone());
        let (voucher, fail) = (call.voucher, call.fail);
        tasks.spawn(async move {
            let _permit = permit;
            let path = if fail { "fail" } else { "work" };
            // The gateway fails closed: while lost counters are being rebuilt a call may get 503,
            // charged nothing, and is sent again with the same voucher.
            let mut response = pay(&client, &url, &key, &accepted, &deployment, payee, voucher, path).await?;
            for _ in 0..100 {
                if response.status() != 503 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                response = pay(&client, &url, &key, &accepted, &deployment, payee, voucher, path).await?;
            }
            match (response.status().as_u16(), fail) {
                (200, false) if response.headers().contains_key(PAYMENT_RESPONSE) => ok.fetch_add(1, Ordering::Relaxed),
                (500, true) if !response.headers().contains_key(PAYMENT_RESPONSE) => {
                    voided.fetch_add(1, Ordering::Relaxed)
                }
                (status, _) => {
                    return Err(
                        format!("{path} with voucher {voucher}: HTTP {status}: {}", response.text().await?).into()
                    );
                }
            };
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        });
    }
    while let Some(outcome) = tasks.join_next().await {
        outcome?.map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn pay(
    client: &reqwest::Client,
    url: &str,
    key: &SigningKey,
    accepted: &Requirements,
    deployment: &opentab_chain::Deployment,
    payee: opentab_core::Address,
    voucher: u64,
    path: &str,
) -> Result<reqwest::Response, Box<dyn std::error::Error + Send + Sync>> {
    let domain = opentab_core::ContractDomain::opentab(deployment.chain_id, deployment.validator);
    let amount = U256::from(voucher);
    let signature = key.sign_digest(&domain.digest(&Voucher::new(key.address(), payee, amount)));
    let payment = PaymentPayload {
        x402_version: X402_VERSION,
        accepted: accepted.clone(),
        payload: SessionPayload { session_key: key.address(), cumulative_amount: amount, signature },
        extensions: None,
    };
    Ok(client
        .post(format!("{url}/v1/{path}"))
        .header(PAYMENT_SIGNATURE, encode_header(&payment))
        .body(r#"{"prompt":"hello"}"#)
        .send()
        .await?)
}

/// A deterministic Fisher–Yates shuffle (the order differs run to run only in timing).
fn shuffle<T>(items: &mut [T]) {
    let mut seed = 0x0bad_5eed_u64;
    for i in (1..items.len()).rev() {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        items.swap(i, (seed >> 33) as usize % (i + 1));
    }
}
