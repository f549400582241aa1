//! Route pricing: a method and a path pattern map to a fixed price in USDC, and a request is
//! priced the way the API behind the gateway would route it (DESIGN §3.5).
//!
//! Patterns are literal segments, `:name` or `{name}` for exactly one segment (the two
//! spellings mean the same; Express and the README use `:id`), and a trailing `*` for any rest:
//! `"GET /v1/models/:id"`, `"POST /v1/files/*"`. Anything else (`<id>`, `[id]`, `*` mid-path,
//! `%`, `;`, an empty or dot segment) is refused when the table is built. The first matching
//! route wins, so list specific routes before general ones.
//!
//! A request is priced as an API that ignores case, percent-decodes and routes `HEAD` to `GET`
//! would route it: methods and segments compare case-insensitively, segments after
//! percent-decoding, `HEAD` as `GET`, a trailing slash ignored. A path with no single normal
//! form (an encoded `/` or `\`, a `.` or `..` segment, `//`, a `;` path parameter, a control
//! character such as an encoded `\n`, or trailing whitespace) is refused
//! ([`Resolution::Refused`]) when, read leniently, it lands on a priced prefix; elsewhere it
//! passes untouched. A priced request is forwarded with the path that was priced
//! ([`Resolution::Priced::path`]), so the API serves exactly what was charged.

use opentab_core::Usdc;

/// Why a pricing entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    /// The route is not `METHOD /path`.
    #[error("route {0:?} must be \"METHOD /path\", e.g. \"POST /v1/chat/completions\"")]
    Route(String),
    /// A segment of the path pattern is not a literal, a parameter or a final `*`.
    #[error(
        "route {route:?}: segment {segment:?} is not a literal (letters, digits and - . _ ~ ! $ & ' + , = @), \
         a parameter (`:id` or `{{id}}`) or a final `*`"
    )]
    Segment {
        /// The route.
        route: String,
        /// The segment at fault.
        segment: String,
    },
    /// The price is not a USDC amount.
    #[error("price of {route:?}: {source}")]
    Price {
        /// The route.
        route: String,
        /// Why.
        source: opentab_core::Error,
    },
}

/// One priced route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedRoute {
    /// HTTP method, upper case.
    pub method: String,
    /// The pattern as written.
    pub pattern: String,
    segments: Vec<Segment>,
    /// What one call costs.
    pub price: Usdc,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// Compared case-insensitively; kept as written for the forwarded path.
    Literal {
        written: String,
        folded: String,
    },
    Param,
    Rest,
}

/// How the gateway treats one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution<'a> {
    /// No priced route: it passes through untouched, unpaid.
    Free,
    /// Priced by `route`; forward it with `path` (the pattern's literals as written, the
    /// parameters re-encoded) so the API serves what was priced.
    Priced {
        /// The route that prices it.
        route: &'a PricedRoute,
        /// The path to forward.
        path: String,
    },
    /// On a priced prefix, but with no single normal form: answer 400, forward nothing.
    Refused(&'static str),
}

/// The priced routes, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pricing {
    routes: Vec<PricedRoute>,
}

impl Pricing {
    /// Builds the table from `("POST /v1/chat/completions", "0.002")`-style entries; prices in
    /// whole USDC (`"$0.002"` is accepted too).
    pub fn new<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, PricingError> {
        let routes = entries.into_iter().map(|(route, price)| parse_route(route, price)).collect::<Result<_, _>>()?;
        Ok(Self { routes })
    }

    /// How `method path` is treated (see the module docs). `path` is the request target's path
    /// as received, still percent-encoded, without the query.
    pub fn resolve(&self, method: &str, path: &str) -> Resolution<'_> {
        let method = if method.eq_ignore_ascii_case("HEAD") { "GET" } else { method };
        let routes = || self.routes.iter().filter(|r| r.method.eq_ignore_ascii_case(method));
        match strict_segments(path) {
            Some(parts) => {
                let folded: Vec<String> = parts.iter().map(|p| p.to_lowercase()).collect();
                routes()
                    .find(|r| matches(&r.segments, &folded))
                    .map_or(Resolution::Free, |route| Resolution::Priced { route, path: forwarded(route, &parts) })
            }
            None => {
                // Read it the ways servers do (leniently normalised, or segment by segment with the
                // odd ones kept, as a router hands `.` or `a/b` to a parameter): does any reading
                // land on a priced prefix? A route that starts with a parameter or `*` covers them
                // all.
                let readings = [lenient_segments(path), raw_segments(path)]
                    .map(|r| r.iter().map(|p| p.to_lowercase()).collect::<Vec<String>>());
                let on_priced_prefix = self.routes.iter().any(|r| {
                    readings.iter().any(|parts| {
                        matches(&r.segments, parts)
                            || match r.segments.first() {
                                Some(Segment::Literal { folded, .. }) => parts.first() == Some(folded),
                                Some(Segment::Param | Segment::Rest) => true,
                                None => false,
                            }
                    })
                });
                if on_priced_prefix {
                    Resolution::Refused(
                        "the path has no single normal form (an encoded / or \\, a . or .. segment, // or a ;, a \
                         control character or trailing whitespace): send the plain path",
                    )
                } else {
                    Resolution::Free
                }
            }
        }
    }

    /// The route that prices `method path`, if any: [`Pricing::resolve`] without the details.
    pub fn find(&self, method: &str, path: &str) -> Option<&PricedRoute> {
        match self.resolve(method, path) {
            Resolution::Priced { route, .. } => Some(route),
            Resolution::Free | Resolution::Refused(_) => None,
        }
    }

    /// All routes, in order.
    pub fn routes(&self) -> &[PricedRoute] {
        &self.routes
    }
}

fn parse_route(route: &str, price: &str) -> Result<PricedRoute, PricingError> {
    let (method, pattern) = route
        .trim()
        .split_once(' ')
        .map(|(m, p)| (m, p.trim()))
        .filter(|(m, p)| !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic()) && p.starts_with('/'))
        .ok_or_else(|| PricingError::Route(route.to_owned()))?;
    let price = Usdc::parse_decimal(price).map_err(|source| PricingError::Price { route: route.to_owned(), source })?;
    let body = pattern.strip_prefix('/').unwrap_or(pattern);
    let body = body.strip_suffix('/').unwrap_or(body);
    let parts: Vec<&str> = if body.is_empty() { Vec::new() } else { body.split('/').collect() };
    let bad = |segment: &str| PricingError::Segment { route: route.to_owned(), segment: segment.to_owned() };
    let mut segments = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let name = part.strip_prefix(':').or_else(|| part.strip_prefix('{').and_then(|p| p.strip_suffix('}')));
        segments.push(match (*part, name) {
            ("*", _) if i + 1 == parts.len() => Segment::Rest,
            (_, Some(name)) if is_identifier(name) => Segment::Param,
            (literal, None) if is_literal(literal) => {
                Segment::Literal { written: literal.to_owned(), folded: literal.to_lowercase() }
            }
            _ => return Err(bad(part)),
        });
    }
    Ok(PricedRoute { method: method.to_ascii_uppercase(), pattern: pattern.to_owned(), segments, price })
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_literal(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && segment.chars().all(|c| c.is_alphanumeric() || "-._~!$&'+,=@".contains(c))
}

/// The decoded segments of a path with a single normal form (a trailing slash ignored), or
/// `None` when it has none: an encoded `/` or `\`, a `.` or `..` segment (plain or encoded),
/// an empty segment (`//`), or a `;` path parameter.
fn strict_segments(path: &str) -> Option<Vec<String>> {
    let body = path.strip_prefix('/')?;
    let body = body.strip_suffix('/').unwrap_or(body);
    if body.is_empty() {
        return Some(Vec::new());
    }
    body.split('/')
        .map(|raw| {
            let decoded = percent_decode(raw);
            let ambiguous = decoded.is_empty()
                || decoded == "."
                || decoded == ".."
                || decoded.contains(['/', '\\', ';'])
                || raw.contains('\\')
                // Control characters and trailing whitespace: Python's `$` matches before a final
                // `\n` (Starlette serves `/v1/chat%0A` as `/v1/chat`), and servers trim.
                || decoded.contains(char::is_control)
                || decoded.ends_with(char::is_whitespace);
            (!ambiguous).then_some(decoded)
        })
        .collect()
}

/// The path as the most lenient server would read it: decoded, split on `/` and `\` (encoded or
/// not), empty and `.` segments dropped, `..` resolved, `;` parameters cut off.
fn lenient_segments(path: &str) -> Vec<String> {
    let decoded = percent_decode(path);
    let mut out: Vec<String> = Vec::new();
    for segment in decoded.split(['/', '\\']) {
        let segment = segment.split(';').next().unwrap_or_default();
        let segment = segment.trim_matches(|c: char| c.is_control() || c.is_whitespace());
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s.to_owned()),
        }
    }
    out
}

/// The path split on its literal `/`s only, each segment decoded and kept as it is (`.`, `..`,
/// empty, or holding a decoded `/`): how a router hands segments to parameters.
fn raw_segments(path: &str) -> Vec<String> {
    let body = path.strip_prefix('/').unwrap_or(path);
    let body = body.strip_suffix('/').unwrap_or(body);
    body.split('/').map(percent_decode).collect()
}

/// Percent-decodes `raw`; a `%` not followed by two hex digits stays as it is, and bytes that are
/// not UTF-8 become U+FFFD (which no literal contains).
fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, ..) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes a decoded segment for the forwarded path: everything but unreserved
/// characters and the sub-delimiters a segment may carry.
fn percent_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for &b in segment.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The path to forward for `parts` priced by `route`: literals as the route writes them,
/// parameters and the rest re-encoded.
fn forwarded(route: &PricedRoute, parts: &[String]) -> String {
    let mut path = String::new();
    for (i, part) in parts.iter().enumerate() {
        path.push('/');
        match route.segments.get(i) {
            Some(Segment::Literal { written, .. }) => path.push_str(written),
            _ => path.push_str(&percent_encode(part)),
        }
    }
    if path.is_empty() {
        path.push('/');
    }
    path
}

fn matches(segments: &[Segment], parts: &[String]) -> bool {
    match (segments.first(), parts.first()) {
        (Some(Segment::Rest), _) => true,
        (None, None) => true,
        (Some(Segment::Literal { folded, .. }), Some(p)) if folded == p => matches(&segments[1..], &parts[1..]),
        (Some(Segment::Param), Some(_)) => matches(&segments[1..], &parts[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Result<Pricing, PricingError> {
        Pricing::new([
            ("POST /v1/chat/completions", "0.002"),
            ("GET /v1/models/:id", "$0.0001"),
            ("GET /v1/files/{name}", "0.003"),
            ("POST /v1/files/*", "0.01"),
        ])
    }

    #[test]
    fn routes_match_by_method_literals_params_and_rest() -> Result<(), PricingError> {
        let pricing = table()?;
        let price = |m, p| pricing.find(m, p).map(|r| r.price.base_units());
        assert_eq!(price("POST", "/v1/chat/completions"), Some(2_000));
        assert_eq!(price("post", "/v1/chat/completions/"), Some(2_000));
        assert_eq!(price("GET", "/v1/chat/completions"), None, "another method is free");
        assert_eq!(price("GET", "/v1/models/gpt-4"), Some(100), "`:id` is a parameter (it was free before)");
        assert_eq!(price("GET", "/v1/files/a.pdf"), Some(3_000), "`{{name}}` is one too");
        assert_eq!(price("GET", "/v1/models"), None);
        assert_eq!(price("GET", "/v1/models/a/b"), None);
        assert_eq!(price("POST", "/v1/files/a/b/c"), Some(10_000));
        assert_eq!(price("POST", "/v1/files"), Some(10_000));
        Ok(())
    }

    #[test]
    fn case_encoding_and_head_are_priced_as_the_api_would_route_them() -> Result<(), PricingError> {
        let pricing = table()?;
        let price = |m, p| pricing.find(m, p).map(|r| r.price.base_units());
        assert_eq!(price("POST", "/V1/Chat/COMPLETIONS"), Some(2_000));
        assert_eq!(price("POST", "/v1/%63hat/completions"), Some(2_000));
        assert_eq!(price("POST", "/v1/%43HAT/completions"), Some(2_000));
        assert_eq!(price("HEAD", "/v1/models/gpt-4"), Some(100));
        assert_eq!(price("head", "/V1/MODELS/x"), Some(100));
        Ok(())
    }

    #[test]
    fn a_priced_request_forwards_the_path_that_was_priced() -> Result<(), PricingError> {
        let pricing = table()?;
        let forwarded = |m, p| match pricing.resolve(m, p) {
            Resolution::Priced { path, .. } => Some(path),
            _ => None,
        };
        assert_eq!(forwarded("POST", "/V1/%63HAT/completions/").as_deref(), Some("/v1/chat/completions"));
        assert_eq!(forwarded("GET", "/V1/Models/GPT%2D4").as_deref(), Some("/v1/models/GPT-4"), "params keep case");
        assert_eq!(forwarded("GET", "/v1/models/a%20b").as_deref(), Some("/v1/models/a%20b"));
        assert_eq!(forwarded("POST", "/v1/files/a/%62").as_deref(), Some("/v1/files/a/b"));
        Ok(())
    }

    #[test]
    fn paths_without_a_single_normal_form_are_refused_on_priced_prefixes_only() -> Result<(), PricingError> {
        let pricing = table()?;
        let refused = |m, p| matches!(pricing.resolve(m, p), Resolution::Refused(_));
        for path in [
            "/v1%2Fchat/completions",
            "/v1/chat%2fcompletions",
            "//v1/chat/completions",
            "/v1//chat/completions",
            "/v1/./chat/completions",
            "/v1/x/../chat/completions",
            "/v1/x/%2E%2E/chat/completions",
            "/v1/chat/completions;x=1",
            "/v1%5Cchat/completions",
            "/v1\\chat/completions",
            "/v1/models/a%2Fb",
            "/v1/anything//else",
        ] {
            assert!(refused("POST", path) || refused("GET", path), "{path} must be refused");
        }
        // Outside every priced prefix such paths are the API's business.
        assert_eq!(pricing.resolve("GET", "/static//a.css"), Resolution::Free);
        assert_eq!(pricing.resolve("GET", "/docs/../index.html"), Resolution::Free);
        Ok(())
    }

    #[test]
    fn a_route_starting_with_a_parameter_covers_every_ambiguous_path() -> Result<(), PricingError> {
        let pricing = Pricing::new([("GET /:tenant/report", "0.001")])?;
        let refused = |p| matches!(pricing.resolve("GET", p), Resolution::Refused(_));
        // A router hands `.` or `a/b` to `:tenant` and serves these: they must not be free.
        for path in ["/./report", "/a%2Fb/report", "/x/../y/report", "//report", "/t;x/report"] {
            assert!(refused(path), "{path} must be refused");
        }
        assert!(matches!(pricing.resolve("GET", "/acme/REPORT"), Resolution::Priced { .. }));
        Ok(())
    }

    #[test]
    fn bad_entries_say_what_is_wrong() {
        assert!(matches!(Pricing::new([("/v1/chat", "1")]), Err(PricingError::Route(_))));
        assert!(matches!(Pricing::new([("POST v1/chat", "1")]), Err(PricingError::Route(_))));
        for pattern in [
            "/a/*/b",
            "/v1/<id>",
            "/v1/[id]",
            "/v1/{id",
            "/v1/id}",
            "/v1/:",
            "/v1/{}",
            "/v1/:1d",
            "/v1//chat",
            "/v1/./chat",
            "/v1/%63hat",
            "/v1/chat;x",
            "/v1/a b",
            "/v1/(.*)",
            "/v1/chat?",
        ] {
            let route = format!("GET {pattern}");
            let err = Pricing::new([(route.as_str(), "1")]).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("is not a literal") && err.contains(pattern), "{pattern}: {err}");
        }
        let err = Pricing::new([("POST /v1/chat", "0.0000001")]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("POST /v1/chat") && err.contains("6 decimals"), "{err}");
    }
}
