//! opentab's domain core: the rules of the product with no I/O.
//!
//! - [`Usdc`]: amounts in USDC base units (6 decimals), checked arithmetic, decimal-string serde.
//! - [`SessionKey`]: the on-chain state of a session key mirrored off-chain, and its
//!   [`KeyStatus`] and settlement window, computed exactly as `SessionKeyValidator` does.
//! - [`eip712`]: the typed messages the contract verifies (vouchers, registration, key actions)
//!   and their EIP-712 digests, identical to the contract's.
//! - [`ValidatorEvent`]: the contract's state changes as domain events, folded into
//!   [`SessionKey`] and [`Tab`] state (storage re-folds after a reorg).
//! - [`siwe`]: Sign-In with Ethereum (EIP-4361) message parsing and verification.
//! - [`charge`]: the gateway's charge rule (served / best voucher / limit / owner's tab) as a
//!   pure function the counter stores run atomically.
//! - [`rules`]: the rule engine's rules (spike, rate, low balance), each firing once per
//!   crossing.
//! - [`settlement`]: when a key is settled (threshold, or at once when it stops) and how
//!   failed settlements back off.
//! - [`signature`]: secp256k1 signing and recovery through libsecp256k1 (the gateway's hot path).
//! - [`x402`]: the HTTP 402 wire format (x402 v2, `session` scheme) shared by the gateway and
//!   the paying clients.
//!
//! Nothing here touches a network, a clock or a database: callers pass `now` and state in.

mod amount;
pub mod charge;
pub mod eip712;
mod error;
mod events;
pub mod rules;
mod session_key;
pub mod settlement;
pub mod signature;
pub mod siwe;
pub mod x402;

pub use alloy_primitives::{Address, B256, U256, address, eip191_hash_message, keccak256};
pub use amount::{SETTLEMENT_THRESHOLD, Usdc, UsdcDisplay};
pub use eip712::{ContractDomain, Voucher};
pub use error::{Error, Result};
pub use events::{SkipReason, Tab, ValidatorEvent};
pub use session_key::{GRACE_DEFAULT_SECS, KeyStatus, SessionKey};
pub use signature::{Signature, SigningKey};
pub use siwe::format_rfc3339;

/// `url` with any credentials in it replaced by `***`: the password of `user:password@`, a
/// bare `token@`, path segments that look like API keys (16 or more letters, digits, `-` and
/// `_`, with both letters and digits: RPC providers put keys there, `/v2/<key>`), and the values
/// of query parameters named like `password`, `secret`, `token` or `key`. For logs, printed
/// settings and error messages, which must never carry a secret.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("***@{host}"),
        },
        None => authority.to_owned(),
    };
    let looks_like_key = |segment: &str| {
        segment.len() >= 16
            && segment.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && segment.bytes().any(|b| b.is_ascii_digit())
            && segment.bytes().any(|b| b.is_ascii_alphabetic())
    };
    let (path, rest) = tail.find(['?', '#']).map_or((tail, ""), |i| tail.split_at(i));
    let path: Vec<&str> = path.split('/').map(|s| if looks_like_key(s) { "***" } else { s }).collect();
    let tail = format!("{}{rest}", path.join("/"));
    let tail = tail.as_str();
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = query.split_once('#').map_or((query, None), |(q, f)| (q, Some(f)));
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _))
                        if ["password", "secret", "token", "key"]
                            .iter()
                            .any(|s| name.to_ascii_lowercase().contains(s)) =>
                    {
                        format!("{name}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            let fragment = fragment.map(|f| format!("#{f}")).unwrap_or_default();
            format!("{path}?{}{fragment}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod redact_tests {
    use super::redact_url;

    #[test]
    fn credentials_never_survive_redaction() {
        assert_eq!(redact_url("redis://:hunter2@cache:6379/0"), "redis://:***@cache:6379/0");
        assert_eq!(redact_url("redis://default:hunter2@cache:6379"), "redis://default:***@cache:6379");
        assert_eq!(redact_url("rediss://tok3n@cache"), "rediss://***@cache");
        assert_eq!(
            redact_url("postgres://opentab@db/opentab?sslmode=require&password=hunter2"),
            "postgres://***@db/opentab?sslmode=require&password=***"
        );
        assert_eq!(redact_url("https://rpc.example/v2?apiKey=abc#x"), "https://rpc.example/v2?apiKey=***#x");
        assert_eq!(
            redact_url("https://polygon-mainnet.g.alchemy.com/v2/aB3dE5fG7hI9jK1lM3nO5"),
            "https://polygon-mainnet.g.alchemy.com/v2/***"
        );
        assert_eq!(redact_url("http://127.0.0.1:8545/"), "http://127.0.0.1:8545/", "short segments stay");
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379", "nothing to hide");
        assert_eq!(redact_url("not a url"), "not a url");
        for url in ["redis://:hunter2@h", "redis://u:hunter2@h/?password=hunter2"] {
            assert!(!redact_url(url).contains("hunter2"), "{url}");
        }
    }
}
