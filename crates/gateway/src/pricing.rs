//! Route pricing: a method and a path pattern map to a fixed price in USDC.
//!
//! Patterns are literal segments, `{name}` for exactly one segment, and a trailing `*` for
//! any rest: `"GET /v1/models/{id}"`, `"POST /v1/files/*"`. The first matching route wins, so
//! list specific routes before general ones.

use opentab_core::Usdc;

/// Why a pricing entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    /// The route is not `METHOD /path`.
    #[error("route {0:?} must be \"METHOD /path\", e.g. \"POST /v1/chat/completions\"")]
    Route(String),
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
    Literal(String),
    Param,
    Rest,
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
        let routes = entries
            .into_iter()
            .map(|(route, price)| {
                let (method, pattern) = route
                    .trim()
                    .split_once(' ')
                    .filter(|(m, p)| !m.is_empty() && p.starts_with('/'))
                    .ok_or_else(|| PricingError::Route(route.to_owned()))?;
                let price = Usdc::parse_decimal(price)
                    .map_err(|source| PricingError::Price { route: route.to_owned(), source })?;
                let parts: Vec<&str> = pattern.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
                let mut segments = Vec::with_capacity(parts.len());
                for (i, part) in parts.iter().enumerate() {
                    segments.push(match *part {
                        "*" if i + 1 == parts.len() => Segment::Rest,
                        "*" => return Err(PricingError::Route(route.to_owned())),
                        p if p.starts_with('{') && p.ends_with('}') => Segment::Param,
                        p => Segment::Literal(p.to_owned()),
                    });
                }
                Ok(PricedRoute { method: method.to_ascii_uppercase(), pattern: pattern.to_owned(), segments, price })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { routes })
    }

    /// The route that prices `method path`, if any (an unpriced request passes through free).
    pub fn find(&self, method: &str, path: &str) -> Option<&PricedRoute> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
        self.routes.iter().find(|r| r.method.eq_ignore_ascii_case(method) && matches(&r.segments, &parts))
    }

    /// All routes, in order.
    pub fn routes(&self) -> &[PricedRoute] {
        &self.routes
    }
}

fn matches(segments: &[Segment], parts: &[&str]) -> bool {
    match (segments.first(), parts.first()) {
        (Some(Segment::Rest), _) => true,
        (None, None) => true,
        (Some(Segment::Literal(l)), Some(p)) if l == p => matches(&segments[1..], &parts[1..]),
        (Some(Segment::Param), Some(_)) => matches(&segments[1..], &parts[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_by_method_literals_params_and_rest() -> Result<(), PricingError> {
        let pricing = Pricing::new([
            ("POST /v1/chat/completions", "0.002"),
            ("GET /v1/models/{id}", "$0.0001"),
            ("POST /v1/files/*", "0.01"),
        ])?;
        let price = |m, p| pricing.find(m, p).map(|r| r.price.base_units());
        assert_eq!(price("POST", "/v1/chat/completions"), Some(2_000));
        assert_eq!(price("post", "/v1/chat/completions/"), Some(2_000));
        assert_eq!(price("GET", "/v1/chat/completions"), None, "another method is free");
        assert_eq!(price("GET", "/v1/models/gpt"), Some(100));
        assert_eq!(price("GET", "/v1/models"), None);
        assert_eq!(price("GET", "/v1/models/a/b"), None);
        assert_eq!(price("POST", "/v1/files/a/b/c"), Some(10_000));
        assert_eq!(price("POST", "/v1/files"), Some(10_000));
        Ok(())
    }

    #[test]
    fn bad_entries_say_what_is_wrong() {
        assert!(matches!(Pricing::new([("/v1/chat", "1")]), Err(PricingError::Route(_))));
        assert!(matches!(Pricing::new([("POST v1/chat", "1")]), Err(PricingError::Route(_))));
        assert!(matches!(Pricing::new([("POST /a/*/b", "1")]), Err(PricingError::Route(_))));
        let err = Pricing::new([("POST /v1/chat", "0.0000001")]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("POST /v1/chat") && err.contains("6 decimals"), "{err}");
    }
}
