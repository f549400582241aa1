//! Route pricing (`opentab_gateway::pricing`): `Pricing::resolve` on any method and path, over
//! the routes of `testdata/routes/bypass-corpus.json` plus a `*` route and a mixed-case one.
//! Run: `scripts/fuzz.sh route_matching`.
//!
//! The input is `METHOD PATH` (split at the first space; no space means `GET` and the whole
//! input as the path). Properties:
//! - `resolve` does not panic, and `find` agrees with it;
//! - `HEAD` resolves as `GET`, and the method's case does not matter;
//! - the path a priced request is forwarded with resolves to the same route and to itself
//!   (the canonical form is a fixed point);
//! - changing the path's ASCII case changes neither the outcome nor the route (the forwarded
//!   paths differ in case only), and neither does percent-encoding one letter or digit, or
//!   adding a trailing slash;
//! - no bypass: when the path, read as the most lenient server reads it (decoded, split on `/`
//!   and `\`, `.` `..` `//` resolved, `;` parameters cut), lands on a priced route, the path
//!   itself is priced or refused, never free.
#![no_main]

use std::collections::BTreeMap;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use opentab_gateway::pricing::{Pricing, Resolution};

/// Routes beyond the corpus's: a final `*` and a mixed-case literal (forwarded as written).
const EXTRA_ROUTES: [(&str, &str); 2] = [("POST /v1/uploads/*", "0.05"), ("GET /v1/Reports/{id}/PDF", "0.002")];

static PRICING: LazyLock<Pricing> = LazyLock::new(|| {
    let corpus: serde_json::Value = match serde_json::from_str(include_str!("../../testdata/routes/bypass-corpus.json"))
    {
        Ok(corpus) => corpus,
        Err(e) => panic!("testdata/routes/bypass-corpus.json: {e}"),
    };
    // In key order, as crates/gateway/tests/bypass_corpus.rs builds the table.
    let corpus_routes: BTreeMap<String, String> = match serde_json::from_value(corpus["routes"].clone()) {
        Ok(routes) => routes,
        Err(e) => panic!("testdata/routes/bypass-corpus.json: routes: {e}"),
    };
    assert!(!corpus_routes.is_empty(), "testdata/routes/bypass-corpus.json has no routes");
    let routes = corpus_routes.iter().map(|(route, price)| (route.as_str(), price.as_str())).chain(EXTRA_ROUTES);
    match Pricing::new(routes) {
        Ok(pricing) => pricing,
        Err(e) => panic!("the route table: {e}"),
    }
});

fuzz_target!(|input: &str| {
    let (method, path) = input.split_once(' ').unwrap_or(("GET", input));
    let pricing = &*PRICING;
    let resolved = pricing.resolve(method, path);
    let priced_route = match &resolved {
        Resolution::Priced { route, .. } => Some(*route),
        Resolution::Free | Resolution::Refused(_) => None,
    };
    assert_eq!(pricing.find(method, path), priced_route);

    // Methods.
    if method.eq_ignore_ascii_case("HEAD") {
        assert_eq!(resolved, pricing.resolve("GET", path), "HEAD is GET");
    }
    assert_eq!(pricing.resolve(&method.to_ascii_lowercase(), path), resolved);
    assert_eq!(pricing.resolve(&method.to_ascii_uppercase(), path), resolved);

    // The forwarded path is canonical.
    if let Resolution::Priced { route, path: forwarded } = &resolved {
        match pricing.resolve(method, forwarded) {
            Resolution::Priced { route: again, path: forwarded_again } => {
                assert_eq!(again.pattern, route.pattern, "{path:?} forwarded as {forwarded:?}");
                assert_eq!(&forwarded_again, forwarded, "{path:?} forwarded as {forwarded:?}");
            }
            other => {
                panic!("{path:?} is priced by {route:?} and forwarded as {forwarded:?}, which resolves to {other:?}")
            }
        }
    }

    // Spellings of the same path.
    for cased in [path.to_ascii_uppercase(), path.to_ascii_lowercase()] {
        let again = pricing.resolve(method, &cased);
        let same = match (&resolved, &again) {
            (Resolution::Priced { route: a, path: p }, Resolution::Priced { route: b, path: q }) => {
                a == b && p.eq_ignore_ascii_case(q)
            }
            (a, b) => a == b,
        };
        assert!(same, "{path:?} resolves to {resolved:?}, {cased:?} to {again:?}");
    }
    if let Some(encoded) = percent_encode_one(path) {
        assert_eq!(pricing.resolve(method, &encoded), resolved, "{path:?} and {encoded:?} differ");
    }
    if path.starts_with('/') && !path.ends_with('/') {
        assert_eq!(pricing.resolve(method, &format!("{path}/")), resolved, "{path:?} and {path:?}/ differ");
    }

    // No bypass.
    let lenient = lenient_path(path);
    if matches!(pricing.resolve(method, &lenient), Resolution::Priced { .. }) {
        assert_ne!(resolved, Resolution::Free, "{path:?} is free, yet read leniently it is {lenient:?}, priced");
    }
});

/// `path` with one ASCII letter or digit that is not part of a `%XX` escape percent-encoded
/// (the `len % count`-th such, so mutations move it), if it has one.
fn percent_encode_one(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let escaped = |i: usize| (i >= 1 && is_escape(&bytes[i - 1..])) || (i >= 2 && is_escape(&bytes[i - 2..]));
    let eligible: Vec<usize> = (0..bytes.len()).filter(|&i| bytes[i].is_ascii_alphanumeric() && !escaped(i)).collect();
    let &at = eligible.get(path.len() % eligible.len().max(1))?;
    Some(format!("{}%{:02X}{}", &path[..at], bytes[at], &path[at + 1..]))
}

fn is_escape(bytes: &[u8]) -> bool {
    matches!(bytes, [b'%', hi, lo, ..] if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit())
}

/// The path as the most lenient server reads it, written plainly (every byte but letters,
/// digits and `-._~` encoded): decoded once, split on `/` and `\`, empty and `.` segments
/// dropped, `..` going up, `;` parameters cut. Written independently of `pricing.rs`.
fn lenient_path(path: &str) -> String {
    let mut decoded = Vec::with_capacity(path.len());
    let mut rest = path.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' && is_escape(rest) {
            let hex = std::str::from_utf8(&rest[1..3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
            decoded.push(hex.unwrap_or(b'%'));
            rest = &rest[3..];
        } else {
            decoded.push(b);
            rest = tail;
        }
    }
    let decoded = String::from_utf8_lossy(&decoded);
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split(['/', '\\']) {
        match segment.split(';').next().unwrap_or_default() {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::new();
    for segment in segments {
        out.push('/');
        for &b in segment.as_bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}
