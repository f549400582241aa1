//! `opentab rules-sim` as a user runs it: a small plan, its tables and its verdict on the 5% bar.

use std::process::Command;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

#[test]
fn rules_sim_prints_each_tunings_tables_and_the_verdict_on_the_bar() -> TestResult {
    let out = Command::new(env!("CARGO_BIN_EXE_opentab"))
        .args(["rules-sim", "--agents", "2", "--duration", "3h", "--seed", "3"])
        .env_remove("RUST_LOG")
        .output()?;
    let (stdout, stderr) = (String::from_utf8(out.stdout)?, String::from_utf8(out.stderr)?);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stderr.is_empty(), "the engine's own logs stay quiet: {stderr}");
    for heading in ["#### the seed's rules", "#### shipped defaults", "#### per-key settings"] {
        assert_eq!(stdout.matches(heading).count(), 1, "{heading}:\n{stdout}");
    }
    for row in ["| spike (freezes) |", "| rate (freezes) |", "| any freeze |", "| runaway retry loop |", "| bursty"] {
        assert_eq!(stdout.matches(row).count(), 3, "{row} once per tuning:\n{stdout}");
    }
    let verdict = stdout.lines().last().ok_or("no output")?;
    assert!(verdict.starts_with("The seed's fixed rules froze ") && verdict.contains("the 5% bar"), "{verdict}");

    // --fail-above turns the verdict into an exit code.
    let gate = Command::new(env!("CARGO_BIN_EXE_opentab"))
        .args(["rules-sim", "--agents", "2", "--duration", "3h", "--seed", "3", "--fail-above", "0"])
        .output()?;
    let seed_froze_some = !verdict.contains("froze 0.0%");
    assert_eq!(gate.status.success(), !seed_froze_some, "{}", String::from_utf8_lossy(&gate.stderr));
    let bad = Command::new(env!("CARGO_BIN_EXE_opentab")).args(["rules-sim", "--agents", "0"]).output()?;
    assert!(!bad.status.success() && String::from_utf8(bad.stderr)?.contains("--agents must be at least 1"));
    Ok(())
}
