//! The bypass corpus (`testdata/routes/bypass-corpus.json`) against the tower layer: every
//! variant of a priced route, sent without a payment, is charged (402) or refused (400/404/405),
//! never served free.
//!
//! The API behind the layer is as lenient as the most forgiving real servers together: it
//! percent-decodes, ignores case, collapses `//`, resolves `.` and `..`, cuts `;` parameters,
//! ignores a trailing slash and runs GET handlers for HEAD. What it would serve, the gateway must
//! have priced.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use opentab_core::{Address, ContractDomain};
use opentab_gateway::Recorded;
use opentab_gateway::pricing::Pricing;
use opentab_gateway::{
    Cause, Gateway, GatewayConfig, InProcessCounters, KeyDirectory, KeyInfo, PaymentLayer, Unavailable, UsageLedger,
    UsageRecord,
};
use serde::Deserialize;
use tower::ServiceExt;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

#[derive(Debug, Deserialize)]
struct Corpus {
    routes: std::collections::BTreeMap<String, String>,
    variants: Vec<Variant>,
}

#[derive(Debug, Deserialize)]
struct Variant {
    method: String,
    path: String,
    targets: String,
    class: String,
}

fn corpus() -> TestResult<Corpus> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/routes/bypass-corpus.json");
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

struct NoKeys;

impl KeyDirectory for NoKeys {
    async fn key(&self, _key: Address) -> Result<Option<KeyInfo>, Unavailable> {
        Ok(None)
    }
}

struct NoLedger;

impl UsageLedger for NoLedger {
    async fn record(&self, _record: UsageRecord) -> Result<Recorded, Unavailable> {
        Err(Unavailable::Ledger(Cause::msg("no call should ever be charged here")))
    }

    async fn stands(&self, _key: opentab_core::Address, _id: opentab_core::B256) -> Result<bool, Unavailable> {
        Err(Unavailable::Ledger(Cause::msg("no call should ever be charged here")))
    }
}

/// Percent-decodes `raw` (a `%` without two hex digits stays as it is).
fn decode(raw: &str) -> String {
    let raw = raw.as_bytes();
    let mut bytes = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        let hex = |b: Option<&u8>| b.and_then(|&b| (b as char).to_digit(16));
        match (raw[i], hex(raw.get(i + 1)), hex(raw.get(i + 2))) {
            (b'%', Some(hi), Some(lo)) => {
                bytes.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, ..) => {
                bytes.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&bytes).to_lowercase()
}

fn method_of(method: &str) -> String {
    if method.eq_ignore_ascii_case("HEAD") { "GET".to_owned() } else { method.to_ascii_uppercase() }
}

/// The most lenient reading of a request: (method, lower-case decoded segments, with `//`,
/// `.`, `..`, `\` and `;` parameters normalised away).
fn lenient(method: &str, path_and_query: &str) -> (String, Vec<String>) {
    let path = path_and_query.split('?').next().unwrap_or_default();
    let mut segments: Vec<String> = Vec::new();
    for segment in decode(path).split(['/', '\\']) {
        match segment.split(';').next().unwrap_or_default() {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s.to_owned()),
        }
    }
    (method_of(method), segments)
}

/// The reading of a router that hands segments to parameters as they are: the path split on
/// its literal `/`s, each segment decoded and kept (`.`, empty, `a/b`).
fn raw_reading(path_and_query: &str) -> Vec<String> {
    let path = path_and_query.split('?').next().unwrap_or_default();
    let body = path.strip_prefix('/').unwrap_or(path);
    let body = body.strip_suffix('/').unwrap_or(body);
    body.split('/').map(decode).collect()
}

/// Whether the lenient API routes (method, segments) to the corpus route `route`.
fn routes_to(route: &str, method: &str, segments: &[String]) -> bool {
    let Some((route_method, pattern)) = route.split_once(' ') else { return false };
    let parts: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    route_method == method
        && parts.len() == segments.len()
        && parts.iter().zip(segments).all(|(p, s)| p.starts_with(':') || p.starts_with('{') || p.to_lowercase() == *s)
}

/// The API behind the layer: serves (200, counted) whatever either reading (lenient, or
/// segment by segment) routes to a corpus route; 404 otherwise.
fn lenient_api(routes: Vec<String>, served: Arc<AtomicU32>) -> Router {
    Router::new().fallback(move |req: Request<Body>| {
        let (routes, served) = (routes.clone(), served.clone());
        async move {
            let target = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
            let (method, segments) = lenient(req.method().as_str(), &target);
            let raw = raw_reading(&target);
            if routes.iter().any(|r| routes_to(r, &method, &segments) || routes_to(r, &method, &raw)) {
                served.fetch_add(1, Ordering::SeqCst);
                (StatusCode::OK, format!("served {method} {target}"))
            } else {
                (StatusCode::NOT_FOUND, "no such route".to_owned())
            }
        }
    })
}

#[tokio::test]
async fn every_variant_is_charged_or_refused_never_served_free() -> TestResult {
    let corpus = corpus()?;
    let pricing = Pricing::new(corpus.routes.iter().map(|(r, p)| (r.as_str(), p.as_str())))?;
    let config = GatewayConfig {
        domain: ContractDomain::opentab(31337, Address::repeat_byte(0x77)),
        asset: Address::repeat_byte(0x05),
        pay_to: Address::repeat_byte(0x0e),
        max_timeout_seconds: 60,
    };
    let served = Arc::new(AtomicU32::new(0));
    let layer = PaymentLayer::new(Gateway {
        config,
        pricing,
        directory: Arc::new(NoKeys),
        counters: Arc::new(InProcessCounters::default()),
        ledger: Arc::new(NoLedger),
        observer: None,
    });
    let app = lenient_api(corpus.routes.keys().cloned().collect(), served.clone()).layer(layer);

    let mut charged = 0;
    let mut refused = 0;
    for v in &corpus.variants {
        let Ok(request) = Request::builder().method(v.method.as_str()).uri(v.path.as_str()).body(Body::empty()) else {
            // Not even a valid request line (a raw backslash): no server routes it.
            refused += 1;
            continue;
        };
        let before = served.load(Ordering::SeqCst);
        let status = app.clone().oneshot(request).await?.status();
        assert_eq!(served.load(Ordering::SeqCst), before, "{} {} ({}) was served free", v.method, v.path, v.class);
        assert!(
            [402, 400, 404, 405].contains(&status.as_u16()),
            "{} {} ({}, aimed at {}): {status}",
            v.method,
            v.path,
            v.class,
            v.targets
        );
        // What the lenient API would route must have been charged or refused by the gateway.
        let (method, segments) = lenient(&v.method, &v.path);
        let raw = raw_reading(&v.path);
        if corpus.routes.keys().any(|r| routes_to(r, &method, &segments) || routes_to(r, &method, &raw)) {
            assert!(
                status == StatusCode::PAYMENT_REQUIRED || status == StatusCode::BAD_REQUEST,
                "{} {} ({}) reaches {} on a lenient API but got {status}",
                v.method,
                v.path,
                v.class,
                v.targets
            );
        }
        match status.as_u16() {
            402 => charged += 1,
            _ => refused += 1,
        }
    }
    // The corpus exercises both outcomes; a price table that priced nothing would fail above.
    assert!(charged >= 20 && refused >= 10, "{charged} charged, {refused} refused");
    Ok(())
}
