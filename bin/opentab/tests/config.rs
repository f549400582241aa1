//! Issue 10, finding 3: writing the proxy's config was guesswork. `opentab config init` writes a
//! complete, commented one; `--from` fills it from a running `opentab dev`, and serve and the
//! proxy start on it as written, the proxy asking for dev's payee.

mod common;

use std::process::Command;

use common::{Running, TestResult};

fn opentab(args: &[&str]) -> TestResult<std::process::Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_opentab")).args(args).output()?)
}

#[tokio::test]
async fn a_config_made_from_dev_starts_serve_and_the_proxy_as_written() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().to_string_lossy().into_owned();
    let _dev = Running::start(&["dev", "--port", "0", "--anvil-port", "0", "--data-dir", &data_dir], &[], "ready")?;
    let chain: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("chain.json"))?)?;
    let file = dir.path().join("opentab.toml");
    let file_text = file.to_string_lossy().into_owned();

    let out = opentab(&["config", "init", "--from", &data_dir, "--out", &file_text])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let written = std::fs::read_to_string(&file)?;
    for line in ["database_url = \"sqlite://", "[proxy]", "[proxy.routes]", "[rate_limits]", "REQUIRED"] {
        assert!(written.contains(line), "{line:?} missing:\n{written}");
    }
    let rpc = chain["rpcUrl"].as_str().ok_or("rpcUrl")?;
    assert!(written.contains(&format!("rpc_url = \"{rpc}\"")), "{written}");
    // It never overwrites.
    let again = opentab(&["config", "init", "--from", &data_dir, "--out", &file_text])?;
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("must not exist yet"));

    let _serve = Running::start(&["serve", "--config", &file_text, "--port", "0"], &[], "opentab serving")?;
    let proxy = Running::start(
        &["proxy", "--config", &file_text, "--port", "0", "--upstream", "http://127.0.0.1:9"],
        &[],
        "ready",
    )?;
    let url = proxy.field("url").ok_or("no proxy url")?;
    let challenge = common::client().post(format!("{url}/v1/chat/completions")).body("{}").send().await?;
    assert_eq!(challenge.status(), 402);
    let body: serde_json::Value = serde_json::from_str(&challenge.text().await?)?;
    let pay_to = body["accepts"][0]["payTo"].as_str().ok_or("payTo")?.to_lowercase();
    assert_eq!(pay_to, chain["demoPayee"].as_str().ok_or("demoPayee")?.to_lowercase(), "dev's payee");
    // The proxy answers its operations routes itself (its upstream is not even there).
    for (path, expected) in [("/healthz", "ok"), ("/readyz", "ready"), ("/metrics", "opentab_gateway_paid_total 0")] {
        let (status, text) = common::get(&format!("{url}{path}")).await?;
        assert!(status == 200 && text.contains(expected), "{path}: {status} {text}");
    }
    Ok(())
}

#[test]
fn a_blank_config_marks_what_is_required() -> TestResult {
    let out = opentab(&["config", "init"])?;
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout)?;
    for field in ["database_url", "rpc_url", "validator", "payee", "domain"] {
        let marked =
            text.lines().collect::<Vec<_>>().windows(2).any(|w| w[0].contains("REQUIRED") && w[1].starts_with(field));
        assert!(marked, "{field} is not marked REQUIRED:\n{text}");
    }
    Ok(())
}

/// Issue 10, finding 3: errors came one field at a time, always at `line 1, column 1`. Now
/// serve and the proxy name every missing, invalid or unknown field at once, each with its line
/// and what it expects, and start nothing.
#[test]
fn a_broken_config_is_refused_with_every_problem_and_its_line() -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("broken.toml");
    std::fs::write(
        &file,
        "database_url = \"mysql://db\"\n\
         rpc_url = 8545\n\
         payee = \"0x1234\"\n\
         domian = \"api.example.com\"\n\
         \n\
         [proxy.routes]\n\
         \"POST /v1/x\" = \"free\"\n",
    )?;
    let file = file.to_string_lossy().into_owned();
    for (command, extra) in [("serve", &[][..]), ("proxy", &["--upstream", "http://127.0.0.1:9"][..])] {
        let out = opentab(&[&[command, "--config", &file][..], extra].concat())?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command}: {stderr}");
        for expected in [
            "line 1: database_url: \"mysql://db\" does not start with postgres://",
            "line 2: rpc_url: integer is not a string; expects the chain's JSON-RPC endpoint",
            "line 3: payee: ",
            "line 4: domian: not a setting; did you mean `domain`?",
            "line 6: proxy.routes: price of \"POST /v1/x\"",
            "validator: missing; expects the SessionKeyValidator contract's address",
            "`opentab config init` writes a complete example",
        ] {
            assert!(stderr.contains(expected), "{command}: {expected:?} not in:\n{stderr}");
        }
        // Only serve needs a domain.
        assert_eq!(stderr.contains("domain: missing"), command == "serve", "{command}: {stderr}");
    }
    Ok(())
}

/// Alert email needs both the relay and a recipient: serve says so before starting anything,
/// and names a relay that is not `smtp://` with its line.
#[test]
fn alert_email_settings_are_checked_before_serve_starts() -> TestResult {
    let dir = tempfile::tempdir()?;
    let base = "database_url = \"postgres://nobody@127.0.0.1:9/none\"\nrpc_url = \"http://127.0.0.1:9\"\n\
                validator = \"0x0000000000000000000000000000000000000001\"\n\
                payee = \"0x0000000000000000000000000000000000000002\"\ndomain = \"api.example.com\"\n";
    for (extra, expected) in [
        ("smtp_url = \"smtp://127.0.0.1:25\"\n", "smtp_url and alert_email go together"),
        ("alert_email = \"ops@example.com\"\n", "smtp_url and alert_email go together"),
        ("smtp_url = \"http://mail\"\nalert_email = \"ops@example.com\"\n", "line 6: smtp_url:"),
        ("smtp_url = \"smtp://127.0.0.1:25\"\nalert_email = \"not an address\"\n", "alert recipient"),
    ] {
        let file = dir.path().join("serve.toml");
        std::fs::write(&file, format!("{base}{extra}"))?;
        let out = opentab(&["serve", "--config", &file.to_string_lossy()])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra}: {stderr}");
        assert!(stderr.contains(expected), "{extra}: {expected:?} not in:\n{stderr}");
        assert!(!stderr.contains("connecting to the database"), "refused before connecting: {stderr}");
    }
    Ok(())
}
