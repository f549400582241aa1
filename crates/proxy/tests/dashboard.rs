//! The Grafana dashboard of the gateway's metrics (`docs/grafana-gateway.json`).

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// `docs/grafana-gateway.json` charts only metrics the gateway exports: a renamed metric fails
/// here, not on an operator's empty panel.
#[test]
fn the_dashboard_charts_what_the_gateway_exports() -> TestResult {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/grafana-gateway.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let mut exported = String::new();
    opentab_gateway::GatewayMetrics::default().render(&mut exported);
    exported.push_str("opentab_gateway_key_cache_hits_total\nopentab_gateway_key_cache_misses_total\n");
    exported.push_str("opentab_http_responses_total\n");
    let mut charted = 0;
    for panel in dashboard["panels"].as_array().ok_or("panels")? {
        for target in panel["targets"].as_array().ok_or("targets")? {
            let expr = target["expr"].as_str().ok_or("expr")?;
            for name in
                expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("opentab_"))
            {
                let base = name.trim_end_matches("_bucket");
                assert!(exported.contains(base), "{name} is charted but not exported");
                charted += 1;
            }
        }
    }
    assert!(charted >= 10, "{charted}");
    Ok(())
}
