//! The live API against its own OpenAPI document: schemathesis (PyPI) generates requests for
//! every documented operation against a real `opentab dev` and checks that nothing answers 5xx
//! and every answer matches the document. `scripts/test.sh` installs schemathesis and points
//! `OPENTAB_SCHEMATHESIS` at it.

mod common;

use std::process::Command;

use common::{Running, TestResult};
use opentab_core::SigningKey;

#[tokio::test]
async fn the_live_api_matches_its_openapi_document() -> TestResult {
    let schemathesis = std::env::var("OPENTAB_SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".into());
    let version = Command::new(&schemathesis).arg("--version").output();
    assert!(
        version.as_ref().is_ok_and(|o| o.status.success()),
        "schemathesis is not runnable as {schemathesis:?}: run scripts/test.sh (it installs it) or set OPENTAB_SCHEMATHESIS"
    );

    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().to_string_lossy().into_owned();
    let dev = Running::start(&["dev", "--port", "0", "--anvil-port", "0", "--data-dir", &data_dir], &[], "ready")?;
    let url = dev.field("url").ok_or("no url printed")?;
    let chain: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("chain.json"))?)?;
    let owner: SigningKey = chain["demoOwner"]["privateKey"].as_str().ok_or("demo owner key")?.parse()?;
    let token = common::sign_in(&url, &owner).await?;

    let workdir = dir.path().to_owned();
    let run = tokio::task::spawn_blocking(move || {
        Command::new(&schemathesis)
            .current_dir(workdir) // it keeps a cache of examples in the working directory
            .args(["run", &format!("{url}/api/openapi.json")])
            .args(["--header", &format!("Authorization: Bearer {token}")])
            .args(["--checks", "all"])
            // Valid-looking but unsigned or random data is rightly refused (401/404/422): that
            // is not a failure to accept valid data.
            .args(["--exclude-checks", "positive_data_acceptance"])
            // Logging out would end the run's own session; the event stream never ends.
            .args(["--exclude-path", "/api/auth/logout", "--exclude-path", "/api/session-keys/events"])
            .args(["--max-examples", "50", "--seed", "1", "--request-timeout", "10", "--workers", "1"])
            .env("NO_COLOR", "1")
            .output()
    })
    .await??;
    let report = format!("{}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "schemathesis found problems:\n{report}");
    assert!(report.contains("passed"), "schemathesis ran no test:\n{report}");
    drop(dev);
    Ok(())
}
