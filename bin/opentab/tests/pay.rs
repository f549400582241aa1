//! The 402 flow end to end as a user runs it: `opentab dev`, then `opentab pay` paying the
//! demo API with the demo session key; a freeze stops payments at once and settles what the
//! key owes (announced by signed webhooks to a real receiver); the client's signed total
//! survives a restart of the client, and what was served survives a restart of the server
//! (the usage ledger). The Rust client, as a `reqwest_middleware` middleware, pays requests
//! of any shape, concurrently, and reports refusals and its cap as typed errors.

mod common;

use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use common::{Running, TestResult};
use opentab_accumulator::WebhookSecret;

/// Webhooks received: (type, whether the signature verified).
type Received = Arc<Mutex<Vec<(String, bool)>>>;

async fn webhook_receiver(secret: WebhookSecret) -> TestResult<(String, Received)> {
    let received: Received = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hooks",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let (secret, sink) = (secret.clone(), sink.clone());
            async move {
                let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                let timestamp = header("webhook-timestamp").parse().unwrap_or(0);
                let valid = opentab_accumulator::verify(
                    &secret,
                    &header("webhook-id"),
                    timestamp,
                    &body,
                    &header("webhook-signature"),
                );
                let kind = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|b| b["type"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                if let Ok(mut sink) = sink.lock() {
                    sink.push((kind, valid));
                }
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hooks", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, received))
}

/// Polls `check` every 100 ms for up to 20 s.
async fn eventually(what: &str, mut check: impl FnMut() -> TestResult<bool>) -> TestResult {
    for _ in 0..200 {
        if check()? {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Err(format!("timed out waiting until {what}").into())
}

fn opentab(args: &[&str]) -> TestResult<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_opentab")).args(args).env_remove("OPENTAB_OWNER_KEY").output()?)
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test]
async fn paying_freezing_and_resuming_through_the_gateway() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().to_string_lossy().into_owned();
    let secret = WebhookSecret::generate();
    let (hooks, received) = webhook_receiver(secret.clone()).await?;
    let dev = Running::start(
        &["dev", "--port", "0", "--anvil-port", "0", "--data-dir", &data_dir, "--webhook-url", &hooks],
        &[("OPENTAB_WEBHOOK_SECRET", &secret.to_string())],
        "ready",
    )?;
    let url = dev.field("url").ok_or("no url")?;
    let demo = dir.path().join("demo.json").to_string_lossy().into_owned();
    let demo_json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&demo)?)?;
    assert_eq!(demo_json["routes"][0]["price"], "2000");
    assert_eq!(demo_json["url"], url.as_str());
    let key = demo_json["sessionKey"]["address"].as_str().ok_or("demo key")?.to_owned();

    let out = opentab(&["pay", "--demo", &demo, "--count", "3"])?;
    assert!(out.status.success(), "{}", text(&out));
    let printed = text(&out);
    assert!(printed.contains("call 3: HTTP 200 charged 0.002 USDC, served 0.006 USDC"), "{printed}");

    // The owner sees the usage the gateway recorded.
    let owner_args = ["--url", url.as_str(), "--data-dir", data_dir.as_str()];
    let out = opentab(&[&["keys", "show", key.as_str(), "--json"][..], &owner_args[..]].concat())?;
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", text(&out)))?;
    assert_eq!(shown["usage"]["served"], "6000", "{shown}");
    assert_eq!(shown["usage"]["pending"], "6000", "served, not settled yet");
    assert_eq!(shown["usage"]["remaining"], "49994000");

    // A new client process continues from the persisted total: it never re-signs a lower one.
    let out = opentab(&["pay", "--demo", &demo, "--count", "1"])?;
    let printed = text(&out);
    assert!(printed.contains("served 0.008 USDC") && printed.contains("8000 base units"), "{printed}");

    // The owner freezes the key: the very next call is refused with key_frozen.
    let out = opentab(&[&["keys", "freeze", key.as_str()][..], &owner_args[..]].concat())?;
    assert!(out.status.success(), "{}", text(&out));
    let out = opentab(&["pay", "--demo", &demo])?;
    assert!(!out.status.success());
    assert!(text(&out).contains("key_frozen"), "{}", text(&out));

    // A frozen key is settled at once, under the threshold: 0.008 USDC reaches the payee, and
    // the receiver hears of the freeze and the settlement, signed.
    let settlements = || opentab(&["settlements", "list", "--json", "--data-dir", &data_dir]);
    eventually("the frozen key is settled", || {
        let listed: serde_json::Value = serde_json::from_slice(&settlements()?.stdout)?;
        Ok(listed[0]["status"] == "succeeded")
    })
    .await?;
    let listed: serde_json::Value = serde_json::from_slice(&settlements()?.stdout)?;
    assert_eq!(
        (listed[0]["amount"].as_str(), listed[0]["reason"].as_str()),
        (Some("8000"), Some("frozen")),
        "{listed}"
    );
    assert!(listed[0]["txHash"].is_string(), "{listed}");
    eventually("both webhooks arrive", || {
        let got = received.lock().map_err(|_| "poisoned")?.clone();
        Ok(["key.frozen", "settlement.succeeded"].iter().all(|k| got.iter().any(|(kind, _)| kind == k)))
    })
    .await?;
    assert!(received.lock().map_err(|_| "poisoned")?.iter().all(|(_, valid)| *valid), "every signature verifies");
    let out = opentab(&["settlements", "retry", "1", "--data-dir", &data_dir])?;
    assert!(text(&out).contains("not dead-lettered"), "{}", text(&out));

    let out = opentab(&[&["keys", "unfreeze", key.as_str()][..], &owner_args[..]].concat())?;
    assert!(out.status.success(), "{}", text(&out));
    let out = opentab(&["pay", "--demo", &demo])?;
    assert!(out.status.success(), "{}", text(&out));

    // A cap below the next total is refused before anything is signed.
    let out = opentab(&["pay", "--demo", &demo, "--cap", "0.001"])?;
    assert!(!out.status.success());
    assert!(text(&out).contains("past the cap"), "{}", text(&out));

    // Restart opentab dev on the same data: the usage ledger restores what was served (five
    // charged calls), so the next call continues from there instead of from zero.
    assert!(dev.stop("INT")?.success());
    let dev = Running::start(&["dev", "--port", "0", "--anvil-port", "0", "--data-dir", &data_dir], &[], "ready")?;
    let restarted: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&demo)?)?;
    assert_eq!(restarted["sessionKey"]["address"].as_str(), Some(key.as_str()), "the demo key is reused");
    let out = opentab(&["pay", "--demo", &demo])?;
    assert!(text(&out).contains("served 0.012 USDC"), "{}", text(&out));
    drop(dev);
    Ok(())
}

#[tokio::test]
async fn the_reqwest_middleware_pays_whatever_the_client_sends() -> TestResult {
    use opentab_client::{Error, Payer, PaymentMiddleware, Trust, Untrusted, receipt_of, refusal_of};
    use opentab_core::{SigningKey, U256, Usdc};

    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().to_string_lossy().into_owned();
    let dev = Running::start(&["dev", "--port", "0", "--anvil-port", "0", "--data-dir", &data_dir], &[], "ready")?;
    let demo: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("demo.json"))?)?;
    let url = format!("{}/v1/chat/completions", demo["url"].as_str().ok_or("url")?);
    let payee: opentab_core::Address = demo["payee"].as_str().ok_or("payee")?.parse()?;
    let key: SigningKey = demo["sessionKey"]["privateKey"].as_str().ok_or("key")?.parse()?;
    let totals = dir.path().join("totals.json");
    let origin = demo["url"].as_str().ok_or("url")?.trim_end_matches('/').to_owned();
    let trust = Trust {
        payee,
        network: format!("eip155:{}", demo["chainId"].as_u64().ok_or("chainId")?),
        validator: demo["validator"].as_str().ok_or("validator")?.parse()?,
        max_price: Usdc::parse_decimal("0.002")?,
    };
    let client_at = |origin: &str, key: SigningKey, cap: &str, file: &std::path::Path| -> TestResult<_> {
        let payer = Payer::new(key, Usdc::parse_decimal(cap)?, Some(file.to_owned()))?.trust(origin, trust.clone());
        Ok(reqwest_middleware::ClientBuilder::new(common::client()).with(PaymentMiddleware::new(payer)).build())
    };
    let client = |key: SigningKey, cap: &str, file: &std::path::Path| client_at(&origin, key, cap, file);
    let agent = client(key.clone(), "1", &totals)?;

    // A plain request, built as with reqwest: the body reaches the API on the paid retry.
    let response = agent
        .post(&url)
        .header("content-type", "application/json")
        .body(r#"{"messages":[{"role":"user","content":"hello"}]}"#)
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let receipt = receipt_of(&response).ok_or("a paid call has a receipt")?.receipt;
    assert_eq!((receipt.charged, receipt.served), (Usdc::from_base_units(2_000), Usdc::from_base_units(2_000)));
    let answer = response.text().await?;
    assert!(answer.contains("You said 5 characters"), "{answer}");

    // Eight at once: each signs its own total, they reach the gateway in any order, and every
    // one is served exactly once.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..8 {
        calls.spawn(agent.post(&url).body("{}").header("content-type", "application/json").send());
    }
    let mut served = Vec::new();
    while let Some(response) = calls.join_next().await {
        let response = response??;
        assert_eq!(response.status(), 200);
        served.push(receipt_of(&response).ok_or("receipt")?.receipt.served.base_units());
    }
    served.sort_unstable();
    assert_eq!(served, (2..=9).map(|n| n * 2_000).collect::<Vec<_>>());

    // A free route is passed through, nothing signed.
    let health = agent.get(format!("{}/healthz", demo["url"].as_str().ok_or("url")?)).send().await?;
    assert_eq!((health.status().as_u16(), receipt_of(&health).is_none()), (200, true));

    // A restarted agent reads its total back and continues above it.
    drop(agent);
    let agent = client(key.clone(), "1", &totals)?;
    let response = agent.post(&url).body("{}").send().await?;
    assert_eq!(receipt_of(&response).ok_or("receipt")?.receipt.served.base_units(), 20_000);

    // The cap: nothing is signed past it, and the error says why.
    drop(agent);
    let capped = client(key.clone(), "0.021", &totals)?;
    let err = Error::from(capped.post(&url).body("{}").send().await.err().ok_or("the cap must refuse")?);
    assert!(matches!(err, Error::CapExceeded { total, .. } if total == U256::from(22_000)), "{err}");
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&totals)?)?;
    let slot = format!("{:#x}->{payee:#x}", key.address());
    assert_eq!(saved[&slot], "20000", "a refused cap raises nothing: {saved}");

    // A hostile 402 at a trusted origin (the real payee and validator, a price of the whole
    // cap): refused with a typed error, nothing signed, the saved total untouched. So are
    // another payee, another chain and another validator, and any origin nobody trusted.
    let real = agent_challenge(&url).await?;
    for (name, tamper) in [
        ("price", Box::new(|r: &mut opentab_core::x402::Requirements| r.amount = Usdc::ONE) as Box<dyn Fn(&mut _)>),
        (
            "payee",
            Box::new(|r: &mut opentab_core::x402::Requirements| r.pay_to = opentab_core::Address::repeat_byte(7)),
        ),
        ("network", Box::new(|r: &mut opentab_core::x402::Requirements| r.network = "eip155:1".into())),
        (
            "validator",
            Box::new(|r: &mut opentab_core::x402::Requirements| {
                r.extra.validator = opentab_core::Address::repeat_byte(6)
            }),
        ),
    ] {
        let mut hostile = real.clone();
        for offer in &mut hostile.accepts {
            tamper(offer);
        }
        let page = hostile_page(hostile).await?;
        let victim = client_at(&page, key.clone(), "1", &totals)?;
        let err =
            Error::from(victim.post(format!("{page}/v1/chat/completions")).body("{}").send().await.err().ok_or(name)?);
        assert!(matches!(err, Error::Untrusted(_)), "{name}: {err}");
        let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&totals)?)?;
        assert_eq!(saved[&slot], "20000", "{name}: nothing signed: {saved}");
    }
    let page = hostile_page(real).await?;
    let err = Error::from(
        client(key.clone(), "1", &totals)?
            .post(format!("{page}/v1/chat/completions"))
            .body("{}")
            .send()
            .await
            .err()
            .ok_or("origin")?,
    );
    assert!(matches!(err, Error::Untrusted(Untrusted::Origin { .. })), "{err}");
    // A trusted origin that redirects to another one: the 402 came from elsewhere, refused.
    let redirect = redirect_to(format!("{page}/v1/chat/completions")).await?;
    let err = Error::from(
        client_at(&redirect, key.clone(), "1", &totals)?
            .post(format!("{redirect}/v1/chat/completions"))
            .body("{}")
            .send()
            .await
            .err()
            .ok_or("redirect")?,
    );
    assert!(matches!(&err, Error::Untrusted(Untrusted::Origin { origin }) if *origin == page), "{err}");
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&totals)?)?;
    assert_eq!(saved[&slot], "20000", "nothing signed for a redirect: {saved}");

    // A key the service does not know: the gateway's refusal comes back as a readable 402.
    let stranger = client(SigningKey::random(), "1", &dir.path().join("stranger.json"))?;
    let response = stranger.post(&url).body("{}").send().await?;
    let (code, message) = refusal_of(&response).ok_or("a refusal")?;
    assert_eq!(code, "unknown_key", "{message}");

    // A retry under the same idempotency key is refused (409), not charged, and still is
    // after a restart: the in-process counters come back from the ledger with the key.
    let agent = client(key.clone(), "1", &totals)?;
    let job = |url: String| agent.post(url).header("idempotency-key", "job-7").body("{}").send();
    assert_eq!(job(url.clone()).await?.status(), 200);
    assert_eq!(job(url.clone()).await?.status(), 409);
    assert!(dev.stop("INT")?.success());
    let dev = Running::start(&["dev", "--port", "0", "--anvil-port", "0", "--data-dir", &data_dir], &[], "ready")?;
    let origin = dev.field("url").ok_or("no url")?;
    let url = format!("{origin}/v1/chat/completions");
    // Restarted on another port: another origin, trusted anew.
    let agent = client_at(&origin, key.clone(), "1", &totals)?;
    let job = |url: String| agent.post(url).header("idempotency-key", "job-7").body("{}").send();
    let retry = job(url.clone()).await?;
    assert_eq!(retry.status(), 409, "{}", retry.text().await?);
    let next = agent.post(&url).body("{}").send().await?;
    assert_eq!(receipt_of(&next).ok_or("receipt")?.receipt.served.base_units(), 24_000, "job-7 was paid once");
    drop(dev);
    Ok(())
}

/// The 402 a paid route answers without payment.
async fn agent_challenge(url: &str) -> TestResult<opentab_core::x402::PaymentRequired> {
    let response = common::client().post(url).body("{}").send().await?;
    Ok(opentab_client::read_challenge(response.headers())?)
}

/// A page that answers every request with `challenge` as its 402; its origin.
async fn hostile_page(challenge: opentab_core::x402::PaymentRequired) -> TestResult<String> {
    let header = opentab_core::x402::encode_header(&challenge);
    let app = axum::Router::new().fallback(move || {
        let header = header.clone();
        async move { (axum::http::StatusCode::PAYMENT_REQUIRED, [("payment-required", header)], "pay up") }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let origin = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(origin)
}

/// A page that answers every request with a 307 to `target`; its origin.
async fn redirect_to(target: String) -> TestResult<String> {
    let app = axum::Router::new().fallback(move || {
        let target = target.clone();
        async move { (axum::http::StatusCode::TEMPORARY_REDIRECT, [("location", target)], "moved") }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let origin = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(origin)
}

/// A fresh `opentab dev` with its demo file read.
struct Dev {
    _running: Running,
    _dir: tempfile::TempDir,
    data_dir: String,
    url: String,
    demo_path: String,
    demo: serde_json::Value,
    /// The demo session key's address.
    key: String,
}

impl Dev {
    fn start() -> TestResult<Self> {
        let dir = tempfile::tempdir()?;
        let data_dir = dir.path().to_string_lossy().into_owned();
        let running =
            Running::start(&["dev", "--port", "0", "--anvil-port", "0", "--data-dir", &data_dir], &[], "ready")?;
        let url = running.field("url").ok_or("no url")?;
        let demo_path = dir.path().join("demo.json").to_string_lossy().into_owned();
        let demo: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&demo_path)?)?;
        let key = demo["sessionKey"]["address"].as_str().ok_or("demo key")?.to_owned();
        Ok(Self { _running: running, _dir: dir, data_dir, url, demo_path, demo, key })
    }

    /// `--url` and `--data-dir` for the owner commands (`keys`, `tab`).
    fn owner_args(&self) -> [&str; 4] {
        ["--url", &self.url, "--data-dir", &self.data_dir]
    }
}

/// Reads whether `key` is frozen on-chain, every 100 ms for up to 20 s, until it reads `want`.
async fn frozen_on_chain(demo: &serde_json::Value, key: &str, want: bool) -> TestResult<bool> {
    let rpc = demo["rpcUrl"].as_str().ok_or("rpcUrl")?;
    let validator = opentab_chain::Validator::connect(
        opentab_chain::read_provider(rpc)?,
        demo["validator"].as_str().ok_or("validator")?.parse()?,
    )
    .await?;
    let key = key.parse()?;
    let mut frozen = false;
    for _ in 0..200 {
        frozen = validator.session_key(key).await?.ok_or("the key is registered")?.frozen_at.is_some();
        if frozen == want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(frozen)
}

#[tokio::test]
async fn a_burst_is_frozen_on_chain_by_the_guardian_the_owner_chose() -> TestResult {
    let dev = Dev::start()?;
    let (demo, demo_path, key) = (&dev.demo, dev.demo_path.as_str(), dev.key.as_str());
    let owner_args = dev.owner_args();

    // The demo owner chose opentab's rule guardian on first start.
    let out = opentab(&[&["tab", "show"][..], &owner_args[..]].concat())?;
    assert!(text(&out).contains("opentab's rule engine, which freezes on-chain"), "{}", text(&out));

    // 101 calls within a minute break the burst rule: the key is frozen at the gateway at once
    // (call 102 is refused) and on-chain by the guardian.
    let out = opentab(&["pay", "--demo", demo_path, "--count", "102"])?;
    let printed = text(&out);
    assert!(printed.contains("call 101: HTTP 200") && printed.contains("key_frozen"), "{printed}");
    assert!(frozen_on_chain(demo, key, true).await?, "the guardian froze the key on-chain");
    let shown = opentab(&[&["keys", "show", key, "--json"][..], &owner_args[..]].concat())?;
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout)?;
    assert_eq!((shown["status"].as_str(), shown["alerts"][0]["rule"].as_str()), (Some("frozen"), Some("rate")));

    // Only the owner restarts spending: a relayed unfreeze on-chain.
    let out = opentab(&[&["keys", "unfreeze", key][..], &owner_args[..]].concat())?;
    assert!(out.status.success() && text(&out).contains("(mined)"), "{}", text(&out));
    assert!(!frozen_on_chain(demo, key, false).await?);
    let out = opentab(&["pay", "--demo", demo_path])?;
    assert!(out.status.success(), "{}", text(&out));
    Ok(())
}

#[tokio::test]
async fn without_a_guardian_rules_freeze_at_the_gateway_and_unfreezing_needs_no_transaction() -> TestResult {
    let dev = Dev::start()?;
    let (demo, demo_path, key) = (&dev.demo, dev.demo_path.as_str(), dev.key.as_str());
    let owner_args = dev.owner_args();

    let out = opentab(&[&["tab", "guardian", "--clear"][..], &owner_args[..]].concat())?;
    assert!(text(&out).contains("has no guardian now"), "{}", text(&out));
    eventually("opentab sees the guardian go", || {
        let out = opentab(&[&["tab", "show"][..], &owner_args[..]].concat())?;
        Ok(text(&out).contains("rules freeze at the gateway only"))
    })
    .await?;

    let out = opentab(&["pay", "--demo", demo_path, "--count", "102"])?;
    assert!(text(&out).contains("key_frozen"), "{}", text(&out));
    // Give a (wrongly) spawned guardian transaction the time to be mined before looking.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert!(!frozen_on_chain(demo, key, false).await?, "nobody may freeze it on-chain but its owner");

    // The contract would refuse an unfreeze of a key it never froze: lifting the gateway's
    // freeze is all it takes, and paying works again at once.
    let out = opentab(&[&["keys", "unfreeze", key][..], &owner_args[..]].concat())?;
    let printed = text(&out);
    assert!(out.status.success() && printed.contains("none needed") && printed.contains("active"), "{printed}");
    let out = opentab(&["pay", "--demo", demo_path])?;
    assert!(out.status.success(), "{}", text(&out));

    // Choosing the rule guardian again takes its address from opentab.
    let out = opentab(&[&["tab", "guardian"][..], &owner_args[..]].concat())?;
    assert!(text(&out).contains("may now freeze the keys of"), "{}", text(&out));
    Ok(())
}

/// Issue 10, finding 4: `opentab pay` read only demo.json. It now pays any URL with a key from
/// a file, signing for the payee, validator and chain it is told, with no demo.json at all; and
/// says what is missing when it cannot know.
#[tokio::test]
async fn pay_goes_where_it_is_pointed() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().to_string_lossy().into_owned();
    let dev = Running::start(&["dev", "--port", "0", "--anvil-port", "0", "--data-dir", &data_dir], &[], "ready")?;
    let url = dev.field("url").ok_or("no url")?;
    let demo: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("demo.json"))?)?;
    let field = |path: &[&str]| {
        path.iter().try_fold(&demo, |v, k| v.get(k)).map(ToString::to_string).map(|s| s.trim_matches('"').to_owned())
    };
    let elsewhere = tempfile::tempdir()?;
    let key_file = elsewhere.path().join("agent.key");
    std::fs::write(&key_file, format!("{}\n", field(&["sessionKey", "privateKey"]).ok_or("key")?))?;
    let (payee, validator, chain) = (
        field(&["payee"]).ok_or("payee")?,
        field(&["validator"]).ok_or("validator")?,
        field(&["chainId"]).ok_or("chain")?,
    );
    let no_demo = elsewhere.path().join("nothing-here.json").to_string_lossy().into_owned();
    let totals = elsewhere.path().join("totals.json").to_string_lossy().into_owned();
    let target = format!("{url}/v1/chat/completions");
    let base = [
        "pay",
        "--demo",
        &no_demo,
        "--url",
        &target,
        "--method",
        "post",
        "--body",
        r#"{"messages":[]}"#,
        "--key-file",
        key_file.to_str().ok_or("path")?,
        "--totals",
        &totals,
        "--count",
        "2",
    ];
    let out =
        opentab(&[&base[..], &["--payee", &payee, "--validator", &validator, "--chain-id", &chain][..]].concat())?;
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    assert!(printed.contains("call 2: HTTP 200 charged 0.002 USDC, served 0.004 USDC"), "{printed}");
    assert!(std::fs::read_to_string(&totals)?.contains("4000"), "the totals went where they were told");

    // Told another payee: the 402 is refused unsigned.
    let other = format!("{:#x}", opentab_core::Address::repeat_byte(0x99));
    let out =
        opentab(&[&base[..], &["--payee", &other, "--validator", &validator, "--chain-id", &chain][..]].concat())?;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("payee"), "{}", text(&out));
    // Without demo.json and without --payee, it says what is missing and where it looked.
    let out = opentab(&base)?;
    let printed = text(&out);
    assert!(
        !out.status.success() && printed.contains("--payee is not given") && printed.contains("nothing-here.json"),
        "{printed}"
    );
    // A key file that holds no key is named, and not echoed.
    std::fs::write(&key_file, "not a key\n")?;
    let out =
        opentab(&[&base[..], &["--payee", &payee, "--validator", &validator, "--chain-id", &chain][..]].concat())?;
    let printed = text(&out);
    assert!(printed.contains("does not hold a private key") && !printed.contains("not a key"), "{printed}");
    Ok(())
}
