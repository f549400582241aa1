//! `opentab bench` end to end, in a short form: its own chain, upstream and proxies; a plain and
//! a paid run on SQLite; the figures in its JSON; the paid run's ledger conserved (what the
//! receipts charged, and no key served beyond its best voucher). The figures themselves are
//! not asserted: speed is the benchmark's business, not a test's.

use std::process::Command;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

#[test]
fn the_benchmark_runs_and_checks_the_ledger() -> TestResult {
    let dir = tempfile::tempdir()?;
    let json = dir.path().join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_opentab"))
        .args(["bench", "--calls", "300", "--concurrency", "4", "--keys", "2", "--ledgers", "sqlite"])
        .args(["--modes", "plain,in-process", "--json"])
        .arg(&json)
        .output()?;
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{printed}");
    assert!(
        printed.contains("| mode | ledger | calls/s |") && printed.contains("| in-process | sqlite |"),
        "{printed}"
    );
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    let runs = report["runs"].as_array().ok_or("runs")?;
    assert_eq!(runs.len(), 2, "{report}");
    assert_eq!((runs[0]["mode"].as_str(), runs[1]["mode"].as_str()), (Some("plain"), Some("in-process")));
    assert_eq!(runs[1]["conservation"], true, "{report}");
    assert!(runs[1]["ratio_to_plain"].as_f64().is_some_and(|r| r > 0.0), "{report}");
    // Accumulation is read from the proxy's own histogram: a bucket bound for the paid run.
    assert!(runs[1]["accumulation_p99_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{report}");
    assert!(runs[0]["accumulation_p99_ms"].is_null(), "a plain run records nothing: {report}");
    for run in runs {
        assert_eq!(run["calls"], 300);
        let (p50, p99, p999) = (run["p50_ms"].as_f64(), run["p99_ms"].as_f64(), run["p999_ms"].as_f64());
        assert!(matches!((p50, p99, p999), (Some(a), Some(b), Some(c)) if 0.0 < a && a <= b && b <= c), "{run}");
        assert!(run["proxy_cpu_us_per_call"].as_f64().is_some(), "{run}");
    }
    assert!(report["machine"]["cores"].as_u64().is_some_and(|c| c >= 1));
    Ok(())
}
