//! The anvil launcher: free ports, readiness, kill on drop, clear errors.

use alloy::providers::Provider;
use opentab_chain::{Anvil, AnvilConfig, Error, read_provider};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[tokio::test]
async fn two_chains_run_side_by_side_and_stop_when_dropped() -> TestResult {
    let a = Anvil::spawn(AnvilConfig::default())?;
    let b = Anvil::spawn(AnvilConfig { chain_id: Some(80002), ..Default::default() })?;
    assert_ne!(a.port(), b.port());
    assert_eq!(a.keys().len(), 10, "anvil's ten prefunded accounts");

    let provider_a = read_provider(&a.endpoint())?;
    let provider_b = read_provider(&b.endpoint())?;
    assert_eq!(provider_a.get_chain_id().await?, 31337);
    assert_eq!(provider_b.get_chain_id().await?, 80002);
    assert_eq!(b.chain_id(), 80002);

    drop(a);
    assert!(provider_a.get_chain_id().await.is_err(), "the dropped chain no longer answers");
    assert_eq!(provider_b.get_chain_id().await?, 80002);
    Ok(())
}

#[test]
fn a_missing_binary_is_a_clear_error() {
    let Err(err) = Anvil::spawn(AnvilConfig { binary: Some("/nonexistent/anvil".into()), ..Default::default() }) else {
        panic!("a missing binary must not start");
    };
    assert!(matches!(err, Error::AnvilSpawn { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/anvil"), "{err}");
}

#[test]
fn a_binary_that_exits_is_reported_with_its_stderr() {
    // `false` exits at once without a banner.
    let Err(err) = Anvil::spawn(AnvilConfig { binary: Some("false".into()), ..Default::default() }) else {
        panic!("`false` is no anvil");
    };
    assert!(matches!(err, Error::AnvilStart { reason: "exited", .. }), "{err:?}");
}

#[tokio::test]
async fn https_endpoints_are_supported() {
    // Nothing listens on port 1: the request must fail connecting, not for want of TLS support.
    let provider = read_provider("https://127.0.0.1:1").expect("an https URL is accepted");
    let err = provider.get_chain_id().await.expect_err("nothing listens there");
    let text = format!("{err:?}").to_lowercase();
    assert!(!text.contains("scheme"), "{err:?}");
    assert!(text.contains("connect"), "{err:?}");
}
