//! `opentab chain up` as a user runs it: a real process, a real anvil, the JSON it writes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use opentab_chain::{U256, Validator, read_provider};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[tokio::test]
async fn chain_up_deploys_funds_and_writes_the_addresses() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_opentab"))
        .args(["chain", "up", "--anvil-port", "0", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut printed = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        printed.push_str(&line);
        printed.push('\n');
        if line.trim_start().starts_with("chain.json") {
            break;
        }
    }
    assert!(printed.contains("SessionKeyValidator 0x"), "{printed}");

    let chain: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("chain.json"))?)?;
    let rpc = chain["rpcUrl"].as_str().ok_or("rpcUrl")?;
    let validator = chain["validator"].as_str().ok_or("validator")?.parse()?;
    let owner = chain["demoOwner"]["address"].as_str().ok_or("demoOwner")?.parse()?;
    assert_eq!(chain["network"], "eip155:31337");
    assert!(printed.contains(&format!("{validator}")), "the printed address is the written one");

    // The chain is live while the command runs: the demo owner's tab with the demo payee holds
    // 100 USDC, and the payee authorised the dev settlement worker (anvil #4) to settle for it.
    let payee = chain["demoPayee"].as_str().ok_or("demoPayee")?.parse()?;
    let v = Validator::connect(read_provider(rpc)?, validator).await?;
    assert_eq!(v.tab_of(owner, payee).await?.balance, opentab_core::Usdc::from_base_units(100_000_000));
    let settler = "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65".parse()?; // anvil #4
    assert!(v.is_settler(payee, settler).await?, "the dev settler is authorised");
    assert_eq!(v.usdc_balance(owner).await?, U256::from(900_000_000u64));

    // Ctrl-C stops it cleanly, anvil with it.
    let status = Command::new("kill").arg("-INT").arg(child.id().to_string()).status()?;
    assert!(status.success());
    assert!(child.wait()?.success());
    assert!(v.tab_of(owner, payee).await.is_err(), "anvil stopped with the command");
    Ok(())
}

#[test]
fn bad_amounts_are_refused_before_anything_starts() -> TestResult {
    let dir = tempfile::tempdir()?;
    let out = Command::new(env!("CARGO_BIN_EXE_opentab"))
        .args(["chain", "up", "--anvil-port", "0", "--exit", "--mint", "1.2345678", "--data-dir"])
        .arg(dir.path())
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--mint") && stderr.contains("at most 6 decimals"), "{stderr}");
    Ok(())
}
