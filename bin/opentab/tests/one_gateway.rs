//! Issue 10, finding 2: a proxy started beside `opentab dev` on dev's own database kept counters
//! of its own, so the two gateways disagreed on what was served (a receipt said 6,000 while
//! `opentab keys show` said 10,000) and each let a key spend its whole limit. Now a gateway with
//! in-process counters runs alone for its payee: the proxy is refused, with the reason and what
//! to do instead, whatever its counters; once dev has stopped, it starts.

mod common;

use std::process::Command;

use common::{Running, TestResult};

#[tokio::test]
async fn a_second_gateway_on_devs_database_is_refused_and_says_what_to_do() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().to_string_lossy().into_owned();
    let dev = Running::start(&["dev", "--port", "0", "--anvil-port", "0", "--data-dir", &data_dir], &[], "ready")?;
    let dev_url = dev.field("url").ok_or("no url")?;
    let chain: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("chain.json"))?)?;
    let field = |name: &str| chain[name].as_str().map(str::to_owned).ok_or(format!("chain.json has no {name}"));
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "database_url = \"sqlite://{}\"\nrpc_url = \"{}\"\nvalidator = \"{}\"\npayee = \"{}\"\ndomain = \"127.0.0.1\"\n\n\
             [proxy]\nlisten = \"127.0.0.1:0\"\n\n[proxy.routes]\n\"POST /v1/x\" = \"0.002\"\n",
            dir.path().join("opentab.db").display(),
            field("rpcUrl")?,
            field("validator")?,
            field("demoPayee")?,
        ),
    )?;
    let config = config.to_string_lossy().into_owned();
    let proxy = |extra: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_opentab"));
        command.args(["proxy", "--config", &config, "--upstream", "http://127.0.0.1:9"]).args(extra);
        command
    };

    let redis = std::env::var("OPENTAB_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    for extra in [&[][..], &["--redis-url", &redis][..]] {
        let mut child =
            proxy(extra).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn()?;
        // Refused at start-up; a proxy still running after 60 s was let in.
        let mut waited = 0;
        while child.try_wait()?.is_none() && waited < 600 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            waited += 1;
        }
        if child.try_wait()?.is_none() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("a second gateway started beside dev ({extra:?})").into());
        }
        let out = child.wait_with_output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(&format!("opentab dev at {dev_url} (in-process counters)")), "names dev: {stderr}");
        assert!(stderr.contains("each let a key spend its whole limit"), "says why: {stderr}");
        assert!(stderr.contains("Redis"), "says what to do instead: {stderr}");
        assert!(stderr.contains("opentab dev --upstream http://"), "or how to front an API with dev: {stderr}");
    }

    // Dev stopped, and said so on the database: another gateway may take over at once (its
    // anvil is gone with it, so the claim is made here directly).
    assert!(dev.stop("INT")?.success());
    let store = opentab_store::Store::connect(&format!("sqlite://{}", dir.path().join("opentab.db").display())).await?;
    let claim = opentab_store::GatewayClaim {
        id: "next".into(),
        payee: field("demoPayee")?.parse()?,
        shared: false,
        description: "the next gateway".into(),
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    assert_eq!(store.claim_gateway(&claim, now, now - 30).await?, Ok(()));
    Ok(())
}
