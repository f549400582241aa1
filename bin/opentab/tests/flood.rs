//! Finding 7c: in `opentab dev` the API and the gateway shared one small SQLite pool, so a
//! flood of API requests made paid calls wait for a connection and fail with 503. Here a
//! flood of sign-in nonces and signed-in API requests (each a few queries) runs while an agent
//! pays for calls: every paid call is served, and the API keeps answering too.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Running, TestResult};
use opentab_core::SigningKey;

/// Requests in flight at once, all the time the agent pays.
const FLOOD: usize = 96;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paid_calls_are_served_through_a_flood_of_api_requests() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().to_string_lossy().into_owned();
    let dev = Running::start(&["dev", "--port", "0", "--anvil-port", "0", "--data-dir", &data_dir], &[], "ready")?;
    let url = dev.field("url").ok_or("no url")?;
    let chain: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("chain.json"))?)?;
    let owner: SigningKey = chain["demoOwner"]["privateKey"].as_str().ok_or("demo owner key")?.parse()?;
    let token = common::sign_in(&url, &owner).await?;

    // The flood: nonces, the signed-in owner's key list and tabs, over and over, from many
    // connections (most nonces are refused by the per-IP limit: that is the point of it).
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let client = common::client();
    let mut flood = Vec::new();
    for n in 0..FLOOD {
        let (stop, answered, failed, client) = (stop.clone(), answered.clone(), failed.clone(), client.clone());
        let uri = format!("{url}/api/{}", ["session-keys", "tabs", "auth/nonce"][n % 3]);
        let token = token.clone();
        flood.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.get(&uri).bearer_auth(&token).send().await {
                    Ok(res) if res.status().is_success() => answered.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let demo = dir.path().join("demo.json").to_string_lossy().into_owned();
    let started = Instant::now();
    let paid = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_opentab")).args(["pay", "--demo", &demo, "--count", "20"]).output()
    });
    let out = tokio::time::timeout(Duration::from_secs(120), paid).await???;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for task in flood {
        task.await?;
    }
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(printed.matches("HTTP 200 charged").count(), 20, "{printed}");
    let (answered, failed) = (answered.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("20 paid calls in {elapsed:?} while the API answered {answered} requests ({failed} failed)");
    assert!(answered > 0, "the flood reached the API");
    assert!(dev.stop("INT")?.success());
    Ok(())
}
