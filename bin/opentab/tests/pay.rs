//! The 402 flow end to end as a user runs it: `opentab dev`, then `opentab pay` paying the
//! demo API with the demo session key; a freeze stops payments at once and settles what the
//! key owes (announced by signed webhooks to a real receiver); the client's signed total
//! survives a restart of the client, and what was served survives a restart of the server
//! (the usage ledger).

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
