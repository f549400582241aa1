//! `opentab dev` as a user runs it: one process, real sockets, a real chain and SQLite.

mod common;

use common::{Running, TestResult, get};
use opentab_core::SigningKey;

#[tokio::test]
async fn dev_serves_the_api_and_health_and_stops_cleanly() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().to_string_lossy().into_owned();
    let dev = Running::start(&["dev", "--port", "0", "--anvil-port", "0", "--data-dir", &data_dir], &[], "ready")?;
    let url = dev.field("url").ok_or("no url printed")?;

    assert_eq!(get(&format!("{url}/healthz")).await?, (200, "ok\n".into()));
    assert_eq!(get(&format!("{url}/readyz")).await?.0, 200);

    // Sign in over a real socket as the demo owner, then list its keys.
    let chain: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("chain.json"))?)?;
    let owner: SigningKey = chain["demoOwner"]["privateKey"].as_str().ok_or("demo owner key")?.parse()?;
    let (status, nonce) = get(&format!("{url}/api/auth/nonce")).await?;
    assert_eq!(status, 200);
    let nonce: serde_json::Value = serde_json::from_str(&nonce)?;
    assert_eq!(
        nonce["domain"].as_str().map(|d| format!("http://{d}")),
        Some(url.clone()),
        "SIWE names the address users reach"
    );
    let token = common::sign_in(&url, &owner).await?;
    let token = token.as_str();
    let client = common::client();
    // The demo owner holds the demo session key that demo.json names.
    let demo: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("demo.json"))?)?;
    let keys = client.get(format!("{url}/api/session-keys")).bearer_auth(token).send().await?;
    let keys: serde_json::Value = serde_json::from_str(&keys.text().await?)?;
    assert_eq!(keys.as_array().map(Vec::len), Some(1), "{keys}");
    assert_eq!(keys[0]["address"], demo["sessionKey"]["address"].as_str().map(str::to_lowercase).ok_or("demo key")?);
    assert_eq!(keys[0]["status"], "active");
    // The listener mirrors the demo deposit within a few polls.
    let mut balance = serde_json::Value::Null;
    for _ in 0..50 {
        let tabs = client.get(format!("{url}/api/tabs")).bearer_auth(token).send().await?;
        balance = serde_json::from_str::<serde_json::Value>(&tabs.text().await?)?["tabs"][0]["balance"].clone();
        if balance == "100000000" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(balance, "100000000", "the listener mirrored the demo deposit");

    let (_, metrics) = get(&format!("{url}/metrics")).await?;
    assert!(metrics.contains("opentab_http_responses_total{class=\"2xx\"}"), "{metrics}");
    assert!(metrics.contains("opentab_listener_updates_total"), "{metrics}");

    // An open event stream (the UI's live view) ends at Ctrl-C instead of holding the
    // shutdown until the drain deadline (30 s).
    let mut stream = client.get(format!("{url}/api/session-keys/events")).bearer_auth(token).send().await?;
    assert_eq!(stream.status(), 200);
    let first = stream.chunk().await?.ok_or("the stream ended before `ready`")?;
    assert!(String::from_utf8_lossy(&first).contains("event: ready"), "{first:?}");
    let stopping = tokio::task::spawn_blocking(move || dev.stop("INT").map_err(|e| e.to_string()));
    let ended = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while stream.chunk().await.is_ok_and(|chunk| chunk.is_some()) {}
    })
    .await;
    assert!(ended.is_ok(), "the event stream was still open 20 s after Ctrl-C");
    assert!(stopping.await??.success(), "Ctrl-C is a clean exit");
    assert!(get(&format!("{url}/healthz")).await.is_err(), "the server is gone");
    Ok(())
}
