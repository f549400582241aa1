//! Issue 10: `opentab dev --upstream URL --route "METHOD /path=PRICE"` fronts your own API with
//! dev's one gateway, so the receipts, `opentab keys show` and the settlement agree on what was
//! served (finding 2 saw a proxy beside dev keep counters of its own: a receipt said 6,000, the
//! key 10,000, and a freeze settled 4,000 of 6,000 served).

mod common;

use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Running, TestResult};

fn opentab(args: &[&str]) -> TestResult<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_opentab")).args(args).env_remove("OPENTAB_OWNER_KEY").output()?)
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The user's API: a priced echo, a priced route that fails, a priced `:id` route and a free
/// one. Counts the calls that reached it.
async fn upstream() -> TestResult<(String, Arc<AtomicUsize>)> {
    use axum::routing::{get, post};
    let reached = Arc::new(AtomicUsize::new(0));
    let count = |reached: &Arc<AtomicUsize>| {
        let reached = reached.clone();
        move || {
            reached.fetch_add(1, Ordering::SeqCst);
        }
    };
    let (echo, fail, item) = (count(&reached), count(&reached), count(&reached));
    let app = axum::Router::new()
        .route(
            "/v1/x",
            post(move |body: String| async move {
                echo();
                axum::Json(serde_json::json!({ "echo": body }))
            }),
        )
        .route(
            "/v1/fail",
            post(move || async move {
                fail();
                (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "the model crashed")
            }),
        )
        .route(
            "/items/{id}",
            get(move |axum::extract::Path(id): axum::extract::Path<String>| async move {
                item();
                format!("item {id}")
            }),
        )
        .route("/free", get(|| async { "free" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, reached))
}

// Multi-threaded: the API answers while the test waits on `opentab pay` processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_fronts_your_api_with_one_set_of_counters_and_settles_what_it_served() -> TestResult {
    let (api, reached) = upstream().await?;
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().to_string_lossy().into_owned();
    let dev = Running::start(
        &[
            "dev",
            "--port",
            "0",
            "--anvil-port",
            "0",
            "--proxy-port",
            "0",
            "--data-dir",
            &data_dir,
            "--upstream",
            &api,
            "--route",
            "POST /v1/x=0.002",
            "--route",
            "POST /v1/fail=0.002",
            "--route",
            "GET /items/:id=0.001",
        ],
        &[],
        "ready",
    )?;
    let url = dev.field("url").ok_or("no url")?;
    let paid = dev.field("your API").ok_or(format!("no `your API` line:\n{}", dev.printed))?;
    assert_ne!(paid, url, "the API has a port of its own");
    assert!(dev.printed.contains(&format!("forwarded to {api}")), "{}", dev.printed);
    assert!(dev.printed.contains(&format!("GET {paid}/items/:id = 0.001 USDC")), "{}", dev.printed);
    let demo_path = dir.path().join("demo.json").to_string_lossy().into_owned();
    let demo: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&demo_path)?)?;
    assert_eq!(demo["paidUrl"].as_str(), Some(paid.as_str()), "{demo}");
    assert_eq!(demo["routes"].as_array().map(Vec::len), Some(3), "{demo}");
    let key = demo["sessionKey"]["address"].as_str().ok_or("demo key")?.to_owned();

    // Unpaid: 402, and the API never hears of it. Free routes pass through, unpaid; so does
    // the demo route dev serves without --upstream (it is not priced here: the API's 404).
    let client = common::client();
    let unpaid = client.post(format!("{paid}/v1/x")).body("{}").send().await?;
    assert_eq!(unpaid.status(), 402);
    let unpaid = client.get(format!("{paid}/ITEMS/7")).send().await?;
    assert_eq!(unpaid.status(), 402, "matched as the gateway matches everywhere");
    assert_eq!(reached.load(Ordering::SeqCst), 0);
    let free = client.get(format!("{paid}/free")).send().await?;
    assert_eq!((free.status().as_u16(), free.text().await?), (200, "free".to_owned()));
    let demo_route = client.post(format!("{paid}/v1/chat/completions")).body("{}").send().await?;
    assert_eq!(demo_route.status(), 404);

    // Paying through it with the demo key: three echoes, one failure (voided), one item.
    let pay = |target: &str, method: &str, count: &str| -> TestResult<String> {
        let out = opentab(&[
            "pay",
            "--demo",
            &demo_path,
            "--url",
            &format!("{paid}{target}"),
            "--method",
            method,
            "--count",
            count,
        ])?;
        Ok(text(&out))
    };
    let printed = pay("/v1/x", "POST", "3")?;
    assert!(printed.contains("call 3: HTTP 200 charged 0.002 USDC, served 0.006 USDC"), "{printed}");
    let printed = pay("/v1/fail", "POST", "1")?;
    assert!(printed.contains("call 1: HTTP 500"), "{printed}");
    let printed = pay("/items/42", "GET", "1")?;
    assert!(
        printed.contains("call 1: HTTP 200 charged 0.001 USDC, served 0.007 USDC"),
        "the failure was voided: {printed}"
    );
    assert_eq!(reached.load(Ordering::SeqCst), 5, "every paid call reached the API once");

    // The owner sees what the receipts said.
    let owner_args = ["--url", url.as_str(), "--data-dir", data_dir.as_str()];
    let out = opentab(&[&["keys", "show", key.as_str(), "--json"][..], &owner_args[..]].concat())?;
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", text(&out)))?;
    assert_eq!(shown["usage"]["served"], "7000", "{shown}");

    // The charge API on dev's own port (for Express and Python apps) charges on the same
    // counters. A client that forgot its total signs 0.002: the voided call's slack in the best
    // voucher (0.009 signed, 0.007 served) covers it once, and the receipt continues from what
    // the proxy served; the same voucher again buys nothing; the next one of a client that
    // remembers is taken above it.
    let secret = demo["gateway"]["secret"].as_str().ok_or("gateway secret")?;
    let charge = |payment: Option<String>| {
        client
            .post(format!("{url}/gateway/v1/charge"))
            .bearer_auth(secret)
            .json(&serde_json::json!({ "route": "POST /v1/x", "price": "0.002", "payment": payment }))
            .send()
    };
    let challenge = opentab_client::read_challenge(charge(None).await?.headers())?;
    let trust = opentab_client::Trust {
        payee: demo["payee"].as_str().ok_or("payee")?.parse()?,
        network: format!("eip155:{}", demo["chainId"].as_u64().ok_or("chainId")?),
        validator: demo["validator"].as_str().ok_or("validator")?.parse()?,
        max_price: opentab_core::Usdc::parse_decimal("0.002")?,
    };
    let signer = |totals: Option<std::path::PathBuf>| -> TestResult<opentab_client::Payer> {
        let key: opentab_core::SigningKey = demo["sessionKey"]["privateKey"].as_str().ok_or("key")?.parse()?;
        Ok(opentab_client::Payer::new(key, opentab_core::Usdc::ONE, totals)?.trust(&url, trust.clone()))
    };
    let served_by = |body: &serde_json::Value| body["receipt"]["receipt"]["served"].as_str().map(str::to_owned);
    let forgetful = opentab_core::x402::encode_header(&signer(None)?.answer(&url, challenge.clone())?);
    let taken: serde_json::Value = serde_json::from_str(&charge(Some(forgetful.clone())).await?.text().await?)?;
    assert_eq!(served_by(&taken).as_deref(), Some("9000"), "{taken}");
    let replayed = charge(Some(forgetful)).await?;
    assert_eq!(replayed.status(), 402, "max(0.009 signed) does not cover 0.011");
    let next = signer(Some(dir.path().join("client-totals.json")))?.answer(&url, challenge)?;
    let taken: serde_json::Value =
        serde_json::from_str(&charge(Some(opentab_core::x402::encode_header(&next))).await?.text().await?)?;
    assert_eq!(served_by(&taken).as_deref(), Some("11000"), "{taken}");

    // Freeze: the next call is refused, and what is settled is exactly what was served.
    let out = opentab(&[&["keys", "freeze", key.as_str()][..], &owner_args[..]].concat())?;
    assert!(out.status.success(), "{}", text(&out));
    let printed = pay("/v1/x", "POST", "1")?;
    assert!(printed.contains("key_frozen"), "{printed}");
    assert_eq!(reached.load(Ordering::SeqCst), 5);
    let settlements = || -> TestResult<serde_json::Value> {
        let out = opentab(&["settlements", "list", "--json", "--data-dir", &data_dir])?;
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    common::wait_until("the frozen key is settled", || async { Ok(settlements()?[0]["status"] == "succeeded") })
        .await?;
    let listed = settlements()?;
    assert_eq!(listed[0]["amount"].as_str(), Some("11000"), "{listed}");
    // What the gateway counted: the paid calls through the proxy port (the charge API's are
    // its app's to count), the voided one, the refusal after the freeze; keys came from memory.
    let metrics = client.get(format!("{url}/metrics")).send().await?.text().await?;
    for line in [
        "opentab_gateway_paid_total 4\n",
        "opentab_gateway_voided_total 1\n",
        "opentab_gateway_refused_total{code=\"key_frozen\"} 1\n",
        "opentab_gateway_upstream_seconds_count 5\n",
    ] {
        assert!(metrics.contains(line), "{line:?} not in:\n{metrics}");
    }
    let hits = metrics
        .lines()
        .find_map(|l| l.strip_prefix("opentab_gateway_key_cache_hits_total "))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(hits.is_some_and(|n| n > 0), "{metrics}");
    let validator = opentab_chain::Validator::connect(
        opentab_chain::read_provider(demo["rpcUrl"].as_str().ok_or("rpcUrl")?)?,
        demo["validator"].as_str().ok_or("validator")?.parse()?,
    )
    .await?;
    let on_chain = validator.session_key(key.parse()?).await?.ok_or("registered")?;
    assert_eq!(on_chain.settled.base_units(), 11_000, "settled on-chain == served, through both doors");
    drop(dev);
    Ok(())
}

#[test]
fn bad_upstream_arguments_are_refused_before_anything_starts() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().to_string_lossy().into_owned();
    let dev = |extra: &[&str]| {
        opentab(&[&["dev", "--port", "0", "--anvil-port", "0", "--data-dir", &data_dir][..], extra].concat())
    };
    for (extra, expected) in [
        (&["--upstream", "http://127.0.0.1:9", "--route", "POST /v1/x"][..], "must read \"METHOD /path=PRICE\""),
        (&["--upstream", "http://127.0.0.1:9", "--route", "POST /v1/x=free"][..], "--route"),
        (&["--upstream", "http://127.0.0.1:9", "--route", "POST /v1/(x)=0.002"][..], "/v1/(x)"),
        (&["--upstream", "https://api.example", "--route", "POST /v1/x=0.002"][..], "must be http://host:port"),
        (&["--upstream", "http://127.0.0.1:9"][..], "--route"),
        (&["--route", "POST /v1/x=0.002"][..], "--upstream"),
    ] {
        let out = dev(extra)?;
        assert!(!out.status.success() && text(&out).contains(expected), "{extra:?}: {}", text(&out));
        assert!(!dir.path().join("chain.json").exists(), "{extra:?}: refused before the chain started");
    }
    Ok(())
}
