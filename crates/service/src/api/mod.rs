//! The REST API: Sign-In with Ethereum and the signed-in owner's session keys and tabs.
//! `router` builds it apart from any socket, so tests drive it with `oneshot`.

mod actions;
mod auth;
mod error;
mod events;
mod keys;
mod limits;
mod nonces;
mod openapi;
mod rules;
pub use openapi::spec as openapi_spec;

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::routing::{get, post};
use axum::{Json, Router};
use opentab_core::{Address, Usdc};
use opentab_store::Store;

use crate::Notifier;
use crate::unix_now as now;
use serde::de::DeserializeOwned;

pub use actions::{
    BatchRegistrationMessage, ChainAccess, CreateBatch, CreateKey, KeyTermsMessage, MAX_BATCH_KEYS, PrepareBatch,
    PrepareKey, PreparedBatch, PreparedBatchKey, PreparedKey, RegistrationMessage, Relayed, RelayedBatch, SignedAction,
};
pub use auth::{LoginRequest, LoginResponse, NonceResponse, SESSION_COOKIE, SignedIn};
pub use error::{ApiError, Problem};
pub use keys::{AlertView, KeyDetail, KeyView, ListQuery, SettlementView, TabView, TabsView, Usage};
pub use limits::RateLimits;
pub use rules::{RulesView, SettingChange, Suggestion};

/// What the API needs to know about its deployment.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The `domain` sign-in messages must name (`host[:port]` users reach opentab at).
    pub domain: String,
    /// The chain sign-in messages must name, and the validator's chain.
    pub chain_id: u64,
    /// The validator contract.
    pub validator: Address,
    /// How long a session lasts (default 7 days).
    pub session_ttl_secs: u64,
    /// How long an issued nonce stays usable (default 10 minutes).
    pub nonce_ttl_secs: u64,
    /// Mark the session cookie `Secure` (serve over HTTPS).
    pub secure_cookies: bool,
    /// The account the rule engine freezes keys on-chain with, for owners who chose it as
    /// their guardian (`None`: rules freeze off-chain only).
    pub rule_guardian: Option<Address>,
    /// The payee this service's gateway charges for: the tab its API draws on.
    pub payee: Option<Address>,
    /// The token tabs hold (approve it for the validator before a deposit).
    pub usdc: Option<Address>,
    /// The validator's grace window in seconds (a withdrawal waits this long).
    pub grace_secs: u64,
    /// Transactions the relayer sends for one owner in 24 hours, at most (key creations,
    /// on-chain unfreezes and deletions; freezes are never refused). Default 20.
    pub relay_daily_quota: u64,
    /// Key creations and unfreezes are relayed only for owners whose tab with this payee has
    /// at least this much free (its balance less any pending withdrawal): the relayer's gas is
    /// spent for paying customers. Default 1 USDC; zero turns the check off.
    pub relay_min_tab: Usdc,
    /// Requests a minute per client IP and per owner.
    pub rate_limits: RateLimits,
    /// The rule settings of this deployment's gateways, which owners' defaults and keys'
    /// overrides are laid over (shown by the rules endpoints).
    pub rule_seed: opentab_core::rules::RuleSettings,
}

impl ApiConfig {
    /// Defaults for `domain`, `chain_id` and `validator`: 7-day sessions, 10-minute nonces,
    /// cookies without `Secure` (plain-HTTP local use).
    pub fn new(domain: impl Into<String>, chain_id: u64, validator: Address) -> Self {
        Self {
            domain: domain.into(),
            chain_id,
            validator,
            session_ttl_secs: 7 * 24 * 3600,
            nonce_ttl_secs: 600,
            secure_cookies: false,
            rule_guardian: None,
            payee: None,
            usdc: None,
            grace_secs: opentab_core::GRACE_DEFAULT_SECS,
            relay_daily_quota: 20,
            relay_min_tab: Usdc::from_base_units(1_000_000),
            rate_limits: RateLimits::default(),
            rule_seed: opentab_core::rules::RuleSettings::default(),
        }
    }
}

/// Shared state of the handlers.
#[derive(Debug, Clone)]
pub struct AppState {
    store: Store,
    config: Arc<ApiConfig>,
    chain: Option<Arc<ChainAccess>>,
    notifier: Notifier,
    /// When expired nonces and sessions were last purged (Unix seconds).
    purged_at: Arc<std::sync::atomic::AtomicU64>,
    limiters: limits::Limiters,
    nonces: nonces::NonceSealer,
    /// Taken while an owner's relay is counted against the daily quota, so two requests at
    /// once cannot both take the last one.
    quota_lock: Arc<tokio::sync::Mutex<()>>,
}

impl AppState {
    /// State over `store` with `config`; on-chain actions answer 503 until [`Self::with_chain`].
    pub fn new(store: Store, config: ApiConfig) -> Self {
        Self {
            limiters: limits::Limiters::new(&config.rate_limits),
            nonces: nonces::NonceSealer::new(store.clone()),
            store,
            config: Arc::new(config),
            chain: None,
            notifier: Notifier::default(),
            purged_at: Arc::default(),
            quota_lock: Arc::default(),
        }
    }

    /// Enables on-chain actions through `chain`'s relayer.
    pub fn with_chain(mut self, chain: ChainAccess) -> Self {
        self.chain = Some(Arc::new(chain));
        self
    }

    /// Where changes are announced to the owners' event streams; hand it to the chain listener.
    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    fn chain(&self) -> Result<&ChainAccess, ApiError> {
        self.chain.as_deref().ok_or_else(ApiError::no_chain)
    }
}

/// The API's routes.
pub fn router(state: AppState) -> Router {
    let sign_in = Router::new().route("/api/auth/nonce", get(auth::nonce)).route("/api/auth/login", post(auth::login));
    let relays = Router::new()
        .route("/api/session-keys", get(keys::list).post(actions::create))
        .route("/api/session-keys/prepare", post(actions::prepare))
        .route("/api/session-keys/batch", post(actions::create_batch))
        .route("/api/session-keys/batch/prepare", post(actions::prepare_batch))
        .route("/api/session-keys/{key}", get(keys::get).delete(actions::delete))
        .route("/api/session-keys/{key}/rules", get(rules::key_get).put(rules::key_put))
        .route("/api/session-keys/{key}/{action}", get(actions::action_typed_data).post(actions::act));
    Router::new()
        .merge(limited(sign_in, state.limiters.sign_in.as_ref()))
        .merge(limited(relays, state.limiters.relays.as_ref()))
        .route("/api/auth/logout", post(auth::logout))
        .route("/api/session-keys/events", get(events::events))
        .route("/api/tabs", get(keys::tabs))
        .route("/api/rules", get(rules::owner_get).put(rules::owner_put))
        .route("/api/openapi.json", get(openapi::document))
        // Unknown API routes answer problem+json; everything outside /api is the host's (the UI).
        .route("/api/{*rest}", axum::routing::any(|| async { ApiError::not_found("no such route") }))
        .with_state(state)
}

/// `routes` behind a per-IP limit, if there is one.
fn limited<S: Clone + Send + Sync + 'static>(routes: Router<S>, limit: Option<&limits::IpLimit>) -> Router<S> {
    match limit {
        Some(limit) => {
            routes.route_layer(tower_governor::GovernorLayer::new(Arc::clone(limit)).error_handler(limits::refusal))
        }
        None => routes,
    }
}

/// `Json` whose rejections are problem+json like every other error.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::bad_body(match rejection {
                JsonRejection::MissingJsonContentType(_) => "send the body as application/json".to_owned(),
                other => other.body_text(),
            })),
        }
    }
}
