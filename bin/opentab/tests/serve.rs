//! `opentab serve --config` against a real PostgreSQL and an external (anvil) RPC endpoint:
//! ready while both answer, not ready when the RPC goes away, clean stop on SIGTERM.

mod common;

use common::{Running, TestResult, get};
use opentab_chain::{Anvil, AnvilConfig, deploy_dev_contracts, signing_provider};

#[tokio::test]
async fn serve_reads_its_config_and_reports_readiness() -> TestResult {
    let anvil = Anvil::spawn(AnvilConfig::default())?;
    let rpc = anvil.endpoint();
    let deployment = deploy_dev_contracts(&signing_provider(&rpc, anvil.signer(0)?)?, &rpc, 86_400).await?;
    let database_url = opentab_store::testing::fresh_postgres_url().await?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("opentab.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndatabase_url = \"{database_url}\"\nrpc_url = \"{rpc}\"\nvalidator = \"{}\"\n\
             deployed_at_block = {}\npayee = \"{}\"\ndomain = \"api.example.com\"\n",
            deployment.validator,
            deployment.deployed_at_block,
            anvil.signer(2)?.address(),
        ),
    )?;
    let relayer_key = format!("{:#x}", anvil.keys()[0]);
    let config_path = config.to_string_lossy().into_owned();
    let server = Running::start(
        &["serve", "--config", &config_path],
        &[("OPENTAB_RELAYER_KEY", &relayer_key)],
        "opentab serving on",
    )?;
    let url = server.printed.split_whitespace().find(|w| w.starts_with("http://")).ok_or("no url")?.to_owned();

    assert_eq!(get(&format!("{url}/readyz")).await?.0, 200);
    let (status, nonce) = get(&format!("{url}/api/auth/nonce")).await?;
    assert_eq!(status, 200);
    assert!(nonce.contains("\"domain\":\"api.example.com\""), "{nonce}");

    // The RPC endpoint goes away: not ready (503), yet alive.
    drop(anvil);
    let (status, body) = get(&format!("{url}/readyz")).await?;
    assert_eq!((status, body.as_str()), (503, "chain RPC unavailable\n"));
    assert_eq!(get(&format!("{url}/healthz")).await?.0, 200);

    assert!(server.stop("TERM")?.success());
    Ok(())
}

#[test]
fn a_bad_config_is_refused_with_the_reason() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "database_url = \"postgres://x\"\nunknown_setting = 1\n")?;
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_opentab")).arg("serve").arg("--config").arg(&config).output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown field") && stderr.contains("bad.toml"), "{stderr}");
    Ok(())
}
