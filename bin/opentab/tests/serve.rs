//! `opentab serve --config` against a real PostgreSQL and an external (anvil) RPC endpoint:
//! ready while both answer, not ready when the RPC goes away, clean stop on SIGTERM; and a
//! settler the payee has not authorised is reported until `opentab settlements authorize`.

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
    // The session cookie is `Secure` unless the config says otherwise.
    let owner = opentab_core::SigningKey::random();
    let nonce: serde_json::Value = serde_json::from_str(&nonce)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let text = opentab_core::siwe::SiweMessage::compose(
        "api.example.com",
        "https://api.example.com",
        owner.address(),
        anvil.chain_id(),
        nonce["nonce"].as_str().ok_or("nonce")?,
        now,
        now + 600,
    );
    let signature = owner.sign_digest(&opentab_core::eip191_hash_message(&text)).to_string();
    let login = common::client()
        .post(format!("{url}/api/auth/login"))
        .header("content-type", "application/json")
        .body(serde_json::json!({ "message": text, "signature": signature }).to_string())
        .send()
        .await?;
    let cookie = login.headers().get("set-cookie").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert!(login.status().is_success() && cookie.contains("; Secure"), "{cookie}");

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
    assert!(stderr.contains("line 2: unknown_setting: not a setting") && stderr.contains("bad.toml"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn an_unauthorised_settler_is_reported_until_the_payee_authorises_it() -> TestResult {
    let anvil = Anvil::spawn(AnvilConfig::default())?;
    let rpc = anvil.endpoint();
    let deployment = deploy_dev_contracts(&signing_provider(&rpc, anvil.signer(0)?)?, &rpc, 86_400).await?;
    let database_url = opentab_store::testing::fresh_postgres_url().await?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("opentab.toml");
    let payee = anvil.signer(2)?.address();
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndatabase_url = \"{database_url}\"\nrpc_url = \"{rpc}\"\nvalidator = \"{}\"\n\
             deployed_at_block = {}\npayee = \"{payee}\"\ndomain = \"api.example.com\"\n",
            deployment.validator, deployment.deployed_at_block,
        ),
    )?;
    let config = config.to_string_lossy().into_owned();
    // The worker settles as anvil #4, which the payee (#2) has not authorised.
    let settler_key = format!("{:#x}", anvil.keys()[4]);
    let settler = anvil.signer(4)?.address();
    let serve = |key: &str| {
        Running::start(&["serve", "--config", &config], &[("OPENTAB_SETTLER_KEY", key)], "opentab serving on")
    };
    let metric = |server: &Running| {
        let url = server.printed.split_whitespace().find(|w| w.starts_with("http://")).map(str::to_owned);
        async move {
            let (_, text) = get(&format!("{}/metrics", url.ok_or("no url")?)).await?;
            TestResult::Ok(text.lines().find(|l| l.starts_with("opentab_settler_authorized ")).map(str::to_owned))
        }
    };
    let server = serve(&settler_key)?;
    assert_eq!(metric(&server).await?.as_deref(), Some("opentab_settler_authorized 0"));
    assert!(server.stop("TERM")?.success());

    // The payee only signs (its key stays cold); the relayer (#0) sends the transaction.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_opentab"))
        .args(["settlements", "authorize", &format!("{settler:#x}"), "--relay", "--rpc-url", &rpc])
        .args(["--validator", &format!("{:#x}", deployment.validator)])
        .env("OPENTAB_PAYEE_KEY", format!("{:#x}", anvil.keys()[2]))
        .env("OPENTAB_RELAYER_KEY", format!("{:#x}", anvil.keys()[0]))
        .output()?;
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed}{}", String::from_utf8_lossy(&out.stderr));
    assert!(printed.contains("may now settle vouchers payable to"), "{printed}");

    let server = serve(&settler_key)?;
    assert_eq!(metric(&server).await?.as_deref(), Some("opentab_settler_authorized 1"));
    assert!(server.stop("TERM")?.success());

    // The payee withdraws the authorisation itself (it sends and pays the gas this time).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_opentab"))
        .args(["settlements", "authorize", &format!("{settler:#x}"), "--revoke", "--rpc-url", &rpc])
        .args(["--validator", &format!("{:#x}", deployment.validator)])
        .env("OPENTAB_PAYEE_KEY", format!("{:#x}", anvil.keys()[2]))
        .output()?;
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && printed.contains("may no longer settle"), "{printed}");
    let validator =
        opentab_chain::Validator::connect(opentab_chain::read_provider(&rpc)?, deployment.validator).await?;
    assert!(!validator.is_settler(payee, settler).await?);
    Ok(())
}

#[tokio::test]
async fn a_password_in_a_redis_url_is_never_printed() -> TestResult {
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
             deployed_at_block = {}\npayee = \"{}\"\ndomain = \"127.0.0.1\"\n\n[proxy]\nlisten = \"127.0.0.1:0\"\n\n\
             [proxy.routes]\n\"POST /v1/chat\" = \"0.002\"\n",
            deployment.validator,
            deployment.deployed_at_block,
            anvil.signer(2)?.address(),
        ),
    )?;
    // A Redis that wants a password: the proxy connects with it, and never prints it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let redis_dir = tempfile::tempdir()?;
    let mut redis = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--requirepass", "hunter2-secret"])
        .arg("--dir")
        .arg(redis_dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let config = config.to_string_lossy().into_owned();
    let redis_url = format!("redis://:hunter2-secret@127.0.0.1:{port}/0");
    let proxy = Running::start(
        &["proxy", "--config", &config, "--upstream", "http://127.0.0.1:9", "--redis-url", &redis_url],
        &[],
        "ready",
    );
    let _ = redis.kill();
    let _ = redis.wait();
    let proxy = proxy?;
    assert!(proxy.printed.contains(&format!("redis://:***@127.0.0.1:{port}/0")), "{}", proxy.printed);
    assert!(!proxy.printed.contains("hunter2-secret"), "the password leaked: {}", proxy.printed);
    // A wrong password fails with an error that does not repeat the URL's secret either.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_opentab"))
        .args(["proxy", "--config", &config, "--upstream", "http://127.0.0.1:9"])
        .args(["--redis-url", "redis://:hunter2-secret@127.0.0.1:1/0"])
        .output()?;
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{printed}");
    assert!(!printed.contains("hunter2-secret"), "the password leaked: {printed}");
    Ok(())
}
