//! Rate limits on what is cheap to ask and costly to answer. Sign-in (a nonce, a login) and
//! relayed actions (each one a transaction the relayer pays gas for) are limited per client IP
//! by a `tower_governor` layer, before any handler runs; relayed transactions and new sessions
//! are also limited per owner, once the owner is known. A refusal is a 429 problem with
//! `Retry-After`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, Response};
use axum::response::IntoResponse;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use opentab_core::Address;
use tower_governor::GovernorError;
use tower_governor::governor::{GovernorConfig, GovernorConfigBuilder};
use tower_governor::key_extractor::KeyExtractor;

use super::ApiError;

/// Requests a minute, each limit on its own; `0` turns a limit off. In `serve`'s TOML, the
/// `[rate_limits]` table (any field left out keeps its default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    /// `GET /api/auth/nonce` and `POST /api/auth/login` per client IP (default 30).
    pub sign_in_per_ip: u32,
    /// Requests that relay a transaction or prepare one (creating, freezing, unfreezing,
    /// deleting keys) per client IP (default 30).
    pub relays_per_ip: u32,
    /// Relayed transactions per owner, freezes aside (default 6; the daily quota bounds the
    /// rest).
    pub relays_per_owner: u32,
    /// Sessions opened per owner (default 10).
    pub sessions_per_owner: u32,
    /// Take the client IP from the last `X-Forwarded-For` hop (set it only behind a reverse
    /// proxy that appends it; otherwise clients could pick their own bucket). Default off: the
    /// peer address.
    pub trust_forwarded_for: bool,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            sign_in_per_ip: 30,
            relays_per_ip: 30,
            relays_per_owner: 6,
            sessions_per_owner: 10,
            trust_forwarded_for: false,
        }
    }
}

/// Who a request comes from, for the per-IP limits.
#[derive(Debug, Clone, Copy)]
pub(super) struct ClientIp {
    trust_forwarded_for: bool,
}

impl KeyExtractor for ClientIp {
    type Key = IpAddr;

    fn extract<T>(&self, req: &Request<T>) -> Result<IpAddr, GovernorError> {
        let forwarded = || {
            let hops = req.headers().get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok());
            // The last hop is the one our own proxy appended; earlier ones are the client's word.
            hops.flat_map(|v| v.split(',')).last().and_then(|hop| hop.trim().parse().ok())
        };
        let peer = || req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        let ip = if self.trust_forwarded_for { forwarded().or_else(peer) } else { peer() };
        // A request with no socket (an in-process caller) shares one bucket.
        Ok(ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)))
    }
}

/// A per-IP limit, ready to layer onto routes.
pub(super) type IpLimit = Arc<GovernorConfig<ClientIp, governor::middleware::NoOpMiddleware>>;

/// The per-IP limiters and the per-owner ones, shared by every handler.
#[derive(Debug, Clone)]
pub(super) struct Limiters {
    pub(super) sign_in: Option<IpLimit>,
    pub(super) relays: Option<IpLimit>,
    relays_per_owner: Option<Arc<DefaultKeyedRateLimiter<Address>>>,
    sessions_per_owner: Option<Arc<DefaultKeyedRateLimiter<Address>>>,
}

impl Limiters {
    pub(super) fn new(limits: &RateLimits) -> Self {
        let client = ClientIp { trust_forwarded_for: limits.trust_forwarded_for };
        let per_ip = |per_minute: u32, methods: Option<Vec<Method>>| {
            let per_minute = NonZeroU32::new(per_minute)?;
            let mut builder = GovernorConfigBuilder::default().key_extractor(client);
            builder.period(Duration::from_secs(60) / per_minute.get()).burst_size(per_minute.get());
            if let Some(methods) = methods {
                builder.methods(methods);
            }
            builder.finish().map(Arc::new)
        };
        let per_owner =
            |per_minute: u32| NonZeroU32::new(per_minute).map(|n| Arc::new(RateLimiter::keyed(Quota::per_minute(n))));
        Self {
            sign_in: per_ip(limits.sign_in_per_ip, None),
            // Reading keys is not limited; what sends a transaction, or prepares one, is.
            relays: per_ip(limits.relays_per_ip, Some(vec![Method::POST, Method::DELETE])),
            relays_per_owner: per_owner(limits.relays_per_owner),
            sessions_per_owner: per_owner(limits.sessions_per_owner),
        }
    }

    /// Refuses a relayed transaction beyond the owner's rate.
    pub(super) fn relay(&self, owner: Address) -> Result<(), ApiError> {
        check(self.relays_per_owner.as_deref(), owner, "relayed transactions for this owner")
    }

    /// Refuses a new session beyond the owner's rate.
    pub(super) fn session(&self, owner: Address) -> Result<(), ApiError> {
        check(self.sessions_per_owner.as_deref(), owner, "sign-ins for this owner")
    }

    /// Forgets the buckets that are full again, so memory follows the recent callers only.
    pub(super) fn forget_idle(&self) {
        for limit in [&self.sign_in, &self.relays].into_iter().flatten() {
            limit.limiter().retain_recent();
        }
        for limit in [&self.relays_per_owner, &self.sessions_per_owner].into_iter().flatten() {
            limit.retain_recent();
        }
    }
}

fn check(limiter: Option<&DefaultKeyedRateLimiter<Address>>, owner: Address, what: &str) -> Result<(), ApiError> {
    let Some(limiter) = limiter else { return Ok(()) };
    limiter.check_key(&owner).map_err(|not_until| {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(limiter.clock()));
        ApiError::rate_limited(wait.as_secs().max(1), what)
    })
}

/// The per-IP layer's refusals in the API's problem+json.
pub(super) fn refusal(error: GovernorError) -> Response<Body> {
    match error {
        GovernorError::TooManyRequests { wait_time, .. } => {
            ApiError::rate_limited(wait_time.max(1), "requests from your address").into_response()
        }
        // Our key extractor never fails; should that change, say so rather than serve unlimited.
        other => ApiError::internal(&other).into_response(),
    }
}
