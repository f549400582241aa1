//! Reading the TOML file of `opentab serve` and `opentab proxy`: before anything starts, every
//! missing, invalid or unknown field is named at once, with its line and what it expects (serde
//! alone stops at the first problem). `opentab config init` writes a file that passes.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use opentab_core::{Address, Usdc};
use serde::de::DeserializeOwned;

/// Which command reads the file: they need different fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reader {
    Serve,
    Proxy,
}

/// Who cannot do without a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Both commands.
    Both,
    /// `opentab serve` only (the proxy ignores it).
    Serve,
    /// Nobody: it has a default.
    Optional,
}

/// One setting of the file.
struct Field {
    /// Dotted, as in the file: `proxy.listen`.
    path: &'static str,
    need: Need,
    /// What a valid value looks like, for the error.
    expects: &'static str,
    check: fn(&toml::Value) -> Result<(), String>,
}

const fn field(
    path: &'static str,
    need: Need,
    expects: &'static str,
    check: fn(&toml::Value) -> Result<(), String>,
) -> Field {
    Field { path, need, expects, check }
}

/// Every setting either command reads, with its type.
const FIELDS: &[Field] = &[
    field("listen", Need::Optional, "host:port to listen on, e.g. \"127.0.0.1:8402\"", is::<SocketAddr>),
    field("database_url", Need::Both, "a database URL: postgres://user@host/db or sqlite://path", database_url),
    field("rpc_url", Need::Both, "the chain's JSON-RPC endpoint: http(s):// or ws(s)://", rpc_url),
    field("validator", Need::Both, "the SessionKeyValidator contract's address (0x and 40 hex digits)", is::<Address>),
    field("deployed_at_block", Need::Optional, "the validator's deployment block, a whole number", is::<u64>),
    field("payee", Need::Both, "the payee's address (0x and 40 hex digits)", is::<Address>),
    field("domain", Need::Serve, "the host[:port] users reach the API at, e.g. \"api.example.com\"", is::<String>),
    field("confirmations", Need::Optional, "blocks to wait before trusting an event, a whole number", is::<u64>),
    field("secure_cookies", Need::Optional, "true or false", is::<bool>),
    field("webhook_url", Need::Optional, "an http(s):// URL to deliver webhooks to", http_url),
    field("settle_every_secs", Need::Optional, "seconds between settlement rounds, a whole number", is::<u64>),
    field("settle_lease_secs", Need::Optional, "seconds a settlement worker's lease holds, a whole number", is::<u64>),
    field("settle_tx_timeout_secs", Need::Optional, "seconds to await a settlement's receipt", is::<u64>),
    field("settle_confirmations", Need::Optional, "blocks before a settlement is final", is::<u64>),
    field("rule_guardian", Need::Optional, "an address (0x and 40 hex digits)", is::<Address>),
    field("smtp_url", Need::Optional, "an SMTP relay, smtp://host:port", smtp_url),
    field("alert_email", Need::Optional, "who receives alert email, e.g. \"ops@example.com\"", is::<String>),
    field("relay_daily_quota", Need::Optional, "relayed transactions per owner a day, a whole number", is::<u64>),
    field("relay_min_tab", Need::Optional, "USDC as a decimal string, e.g. \"1\" or \"0.5\"", decimal_usdc),
    field("rate_limits", Need::Optional, "a table: [rate_limits]", is::<toml::Table>),
    field("rate_limits.sign_in_per_ip", Need::Optional, "requests a minute, a whole number", is::<u32>),
    field("rate_limits.relays_per_ip", Need::Optional, "requests a minute, a whole number", is::<u32>),
    field("rate_limits.relays_per_owner", Need::Optional, "requests a minute, a whole number", is::<u32>),
    field("rate_limits.sessions_per_owner", Need::Optional, "requests a minute, a whole number", is::<u32>),
    field("rate_limits.trust_forwarded_for", Need::Optional, "true or false", is::<bool>),
    field("proxy", Need::Optional, "a table: [proxy]", is::<toml::Table>),
    field("proxy.listen", Need::Optional, "host:port to listen on, e.g. \"127.0.0.1:8403\"", is::<SocketAddr>),
    field("proxy.upstream", Need::Optional, "your API, http://host:port (no path)", upstream),
    field(
        "proxy.redis_url",
        Need::Optional,
        "a Redis URL: redis://host:port, or redis+cluster://host:port,… for a Redis Cluster",
        redis_url,
    ),
    field("proxy.redis_prefix", Need::Optional, "a key prefix, e.g. \"opentab\"", is::<String>),
    field("proxy.timeout_secs", Need::Optional, "seconds, a whole number", is::<u64>),
    field("proxy.max_body_bytes", Need::Optional, "bytes, a whole number", is::<u64>),
    field("proxy.spool_dir", Need::Optional, "a directory for voids the database cannot take yet", is::<String>),
    field("proxy.rules", Need::Optional, "\"enforce\", \"shadow\" or \"off\"", is::<opentab_core::rules::RuleMode>),
    field("proxy.routes", Need::Optional, "entries \"METHOD /path\" = \"price in USDC\" under [proxy.routes]", routes),
];

/// Reads `path` for `reader` and deserializes it, or fails naming every problem in it.
pub(crate) fn read<T: DeserializeOwned>(path: &Path, reader: Reader) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let problems = problems(&text, reader).map_err(|err| anyhow::anyhow!("{}: {err}", path.display()))?;
    if !problems.is_empty() {
        let mut message = format!(
            "{} has {} problem{} (`opentab config init` writes a complete example):",
            path.display(),
            problems.len(),
            if problems.len() == 1 { "" } else { "s" }
        );
        for problem in &problems {
            let _ = write!(message, "\n  {problem}");
        }
        anyhow::bail!(message);
    }
    toml::from_str(&text).with_context(|| format!("{}", path.display()))
}

/// Every problem of the file for `reader`, in line order (missing fields last); a TOML syntax
/// error is returned as is (it says where).
fn problems(text: &str, reader: Reader) -> Result<Vec<String>, toml::de::Error> {
    let values: toml::Table = toml::from_str(text)?;
    let spans = toml::de::DeTable::parse(text)?;
    let line_of = |path: &str| key_offset(spans.get_ref(), path).map(|offset| line(text, offset));
    let mut found: Vec<(usize, String)> = Vec::new();
    let mut missing = Vec::new();
    for field in FIELDS {
        match lookup(&values, field.path) {
            Some(value) => {
                if let Err(why) = (field.check)(value) {
                    let at = line_of(field.path).unwrap_or(0);
                    found.push((at, format!("line {at}: {}: {why}; expects {}", field.path, field.expects)));
                }
            }
            None => {
                let needed = match field.need {
                    Need::Both => true,
                    Need::Serve => reader == Reader::Serve,
                    Need::Optional => false,
                };
                if needed {
                    missing.push(format!("{}: missing; expects {}", field.path, field.expects));
                }
            }
        }
    }
    for (path, at) in unknown_keys(&values, spans.get_ref(), text) {
        let hint = closest(&path).map(|known| format!("; did you mean `{known}`?")).unwrap_or_default();
        found.push((at, format!("line {at}: {path}: not a setting{hint}")));
    }
    found.sort_by_key(|(at, _)| *at);
    Ok(found.into_iter().map(|(_, problem)| problem).chain(missing).collect())
}

/// The value at a dotted path.
fn lookup<'a>(table: &'a toml::Table, path: &str) -> Option<&'a toml::Value> {
    let mut parts = path.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

/// Where the key at a dotted path starts in the text.
fn key_offset(table: &toml::de::DeTable<'_>, path: &str) -> Option<usize> {
    let (first, rest) = path.split_once('.').map_or((path, None), |(a, b)| (a, Some(b)));
    let (key, value) = table.iter().find(|(key, _)| key.get_ref() == first)?;
    match rest {
        None => Some(key.span().start),
        Some(rest) => key_offset(value.get_ref().as_table()?, rest),
    }
}

fn line(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(0, |before| before.matches('\n').count()) + 1
}

/// Keys of the file that are no setting, with their lines (route names are free).
fn unknown_keys(values: &toml::Table, spans: &toml::de::DeTable<'_>, text: &str) -> Vec<(String, usize)> {
    fn walk(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
        for (key, value) in table {
            let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
            if !FIELDS.iter().any(|f| f.path == path) {
                out.push(path);
            } else if let Some(inner) = value.as_table()
                && path != "proxy.routes"
            {
                walk(&path, inner, out);
            }
        }
    }
    let mut unknown = Vec::new();
    walk("", values, &mut unknown);
    unknown
        .into_iter()
        .map(|path| {
            let at = key_offset(spans, &path).map_or(0, |offset| line(text, offset));
            (path, at)
        })
        .collect()
}

/// The known setting nearest to a misspelt one, if any is near.
fn closest(path: &str) -> Option<&'static str> {
    FIELDS
        .iter()
        .map(|f| (distance(f.path, path), f.path))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, known)| known)
}

/// Levenshtein distance.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

fn is<T: DeserializeOwned>(value: &toml::Value) -> Result<(), String> {
    value.clone().try_into::<T>().map(drop).map_err(|err| err.message().to_owned())
}

fn string(value: &toml::Value) -> Result<&str, String> {
    value.as_str().ok_or_else(|| format!("{} is not a string", value.type_str()))
}

fn with_scheme(value: &toml::Value, schemes: &[&str]) -> Result<(), String> {
    let text = string(value)?;
    if schemes.iter().any(|scheme| text.starts_with(scheme)) {
        Ok(())
    } else {
        Err(format!("{text:?} does not start with {}", schemes.join(" or ")))
    }
}

fn database_url(value: &toml::Value) -> Result<(), String> {
    with_scheme(value, &["postgres://", "postgresql://", "sqlite:"])
}

fn rpc_url(value: &toml::Value) -> Result<(), String> {
    with_scheme(value, &["http://", "https://", "ws://", "wss://"])
}

fn http_url(value: &toml::Value) -> Result<(), String> {
    with_scheme(value, &["http://", "https://"])
}

fn smtp_url(value: &toml::Value) -> Result<(), String> {
    with_scheme(value, &["smtp://"])
}

fn redis_url(value: &toml::Value) -> Result<(), String> {
    with_scheme(value, &["redis://", "rediss://", opentab_gateway::CLUSTER_SCHEME])
}

fn upstream(value: &toml::Value) -> Result<(), String> {
    opentab_proxy::Upstream::parse(string(value)?).map(drop).map_err(|err| err.to_string())
}

fn decimal_usdc(value: &toml::Value) -> Result<(), String> {
    Usdc::parse_decimal(string(value)?).map(drop).map_err(|err| err.to_string())
}

/// Each route's pattern and price (all of them: the first bad one does not hide the next).
fn routes(value: &toml::Value) -> Result<(), String> {
    let table = value.as_table().ok_or_else(|| format!("{} is not a table", value.type_str()))?;
    let bad: Vec<String> = table
        .iter()
        .filter_map(|(route, price)| {
            let Some(price) = price.as_str() else {
                return Some(format!("{route:?}: the price must be a string, e.g. \"0.002\""));
            };
            opentab_gateway::pricing::Pricing::new([(route.as_str(), price)]).err().map(|err| format!("{err}"))
        })
        .collect();
    if bad.is_empty() { Ok(()) } else { Err(bad.join("; ")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
database_url = "sqlite:///tmp/x.db"
rpc_url = "http://127.0.0.1:8545"
validator = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
payee = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
domain = "127.0.0.1"

[proxy.routes]
"POST /v1/x" = "0.002"
"#;

    #[test]
    fn a_valid_file_has_no_problem() {
        assert_eq!(problems(VALID, Reader::Serve).map_err(|e| e.to_string()), Ok(vec![]));
    }

    #[test]
    fn every_problem_is_named_at_once_with_its_line() {
        let text = r#"database_url = "mysql://db"
rpc_url = 8545
validator = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
domian = "api.example.com"

[proxy]
listen = "nowhere"
rules = "strict"

[proxy.routes]
"POST /v1/x" = "free"
"GET /v1/(x)" = "0.1"
"#;
        let found = problems(text, Reader::Serve).map_err(|e| e.to_string());
        let found = found.as_deref().unwrap_or_default();
        let expected_starts = [
            "line 1: database_url: \"mysql://db\" does not start with postgres:// or postgresql:// or sqlite:; expects a database URL",
            "line 2: rpc_url: integer is not a string; expects the chain's JSON-RPC endpoint",
            "line 4: domian: not a setting; did you mean `domain`?",
            "line 7: proxy.listen: ",
            "line 8: proxy.rules: unknown variant `strict`, expected one of `enforce`, `shadow`, `off`; expects \"enforce\", \"shadow\" or \"off\"",
            "line 10: proxy.routes: ",
            "payee: missing; expects the payee's address",
            "domain: missing; expects the host[:port]",
        ];
        assert_eq!(found.len(), expected_starts.len(), "{found:#?}");
        for (problem, start) in found.iter().zip(expected_starts) {
            assert!(problem.starts_with(start), "{problem:?} should start with {start:?}");
        }
        assert!(found[5].contains("\"POST /v1/x\"") || found[5].contains("free"), "{}", found[5]);
        assert!(found[5].contains("/v1/(x)"), "both bad routes are named: {}", found[5]);
    }

    #[test]
    fn the_proxy_needs_no_domain_and_serve_does() {
        let without = VALID.replace("domain = \"127.0.0.1\"\n", "");
        assert_eq!(problems(&without, Reader::Proxy).map_err(|e| e.to_string()), Ok(vec![]));
        let serve = problems(&without, Reader::Serve).map_err(|e| e.to_string());
        assert_eq!(serve.as_deref().map(<[String]>::len), Ok(1), "{serve:?}");
    }

    #[test]
    fn one_off_and_exact_values_at_the_boundary_of_each_type() {
        // u32 limits: the largest fits, one more does not.
        let at = |value: &str| problems(&format!("{VALID}\n[rate_limits]\nrelays_per_ip = {value}\n"), Reader::Serve);
        assert_eq!(at("4294967295").map(|p| p.len()).map_err(|e| e.to_string()), Ok(0));
        assert_eq!(at("4294967296").map(|p| p.len()).map_err(|e| e.to_string()), Ok(1));
        assert_eq!(at("-1").map(|p| p.len()).map_err(|e| e.to_string()), Ok(1));
    }

    #[test]
    fn distances() {
        assert_eq!(distance("domain", "domian"), 2);
        assert_eq!(distance("payee", "payee"), 0);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(closest("rpc-url"), Some("rpc_url"));
        assert_eq!(closest("something_else"), None);
    }
}
