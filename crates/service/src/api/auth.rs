//! Sign-In with Ethereum: a server nonce, a signed EIP-4361 message, then a session held in an
//! HttpOnly, SameSite cookie (browsers) or sent as a bearer token (scripts).

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use opentab_core::siwe::{SiweError, SiweMessage};
use opentab_core::{Address, Signature, keccak256};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiJson, AppState, now};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "opentab_session";

/// `GET /api/auth/nonce` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NonceResponse {
    /// Put this in the message's `Nonce:` line; it works once, within its lifetime. Asking for
    /// one stores nothing: it is sealed with the deployment's key.
    pub nonce: String,
    /// The `domain` the message must name.
    pub domain: String,
    /// The `Chain ID` the message must name.
    #[serde(rename = "chainId")]
    pub chain_id: u64,
}

/// `POST /api/auth/login` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The EIP-4361 message text.
    pub message: String,
    /// Its `personal_sign` signature, `0x`-hex.
    pub signature: String,
}

/// `POST /api/auth/login` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoginResponse {
    /// Who is signed in.
    #[schema(value_type = String)]
    pub owner: Address,
    /// Bearer token for scripts (`Authorization: Bearer …`); browsers use the cookie.
    pub token: String,
    /// Unix time the session ends.
    pub expires_at: u64,
}

#[utoipa::path(get, path = "/api/auth/nonce", tag = "auth",
    responses((status = 200, body = NonceResponse), (status = 429, body = super::Problem, content_type = "application/problem+json"), (status = 503, body = super::Problem, content_type = "application/problem+json")))]
pub(super) async fn nonce(State(state): State<AppState>) -> Result<Json<NonceResponse>, ApiError> {
    let now = now();
    let nonce = state.nonces.issue(now).await?;
    purge_now_and_then(&state, now).await;
    Ok(Json(NonceResponse { nonce, domain: state.config.domain.clone(), chain_id: state.config.chain_id }))
}

/// Every sign-in leaves a spent nonce and a session behind; at most once a minute, whoever
/// asks for a nonce also forgets those that can no longer sign in, and the rate limiters forget
/// idle callers. A failure only waits for the next.
async fn purge_now_and_then(state: &AppState, now: u64) {
    use std::sync::atomic::Ordering;
    let last = state.purged_at.load(Ordering::Relaxed);
    if now < last + 60 || state.purged_at.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err() {
        return;
    }
    state.limiters.forget_idle();
    let issued_before = now.saturating_sub(state.config.nonce_ttl_secs);
    match state.store.purge_auth(issued_before, now).await {
        Ok((0, 0)) => {}
        Ok((nonces, sessions)) => tracing::debug!(nonces, sessions, "purged expired sign-in nonces and sessions"),
        Err(err) => tracing::warn!(error = %err, "could not purge expired sign-in nonces and sessions"),
    }
}

#[utoipa::path(post, path = "/api/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = LoginResponse, description = "signed in; also sets the session cookie"),
        (status = 400, body = super::Problem, content_type = "application/problem+json"), (status = 401, body = super::Problem, content_type = "application/problem+json"),
        (status = 429, body = super::Problem, content_type = "application/problem+json"), (status = 503, body = super::Problem, content_type = "application/problem+json")))]
pub(super) async fn login(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<Response, ApiError> {
    let config = &state.config;
    let message = SiweMessage::parse(&body.message).map_err(|e| ApiError::invalid("message", e.to_string()))?;
    let signature: Signature =
        body.signature.parse().map_err(|e: opentab_core::Error| ApiError::invalid("signature", e.to_string()))?;
    let now = now();
    message.verify(&body.message, &signature, &config.domain, config.chain_id, now, 60).map_err(|e| {
        let code = match e {
            SiweError::Malformed(_) => "invalid_message",
            SiweError::WrongDomain { .. } => "wrong_domain",
            SiweError::WrongChain { .. } => "wrong_chain",
            SiweError::Expired => "message_expired",
            SiweError::NotYetValid => "message_not_yet_valid",
            SiweError::BadSignature(_) => "invalid_signature",
        };
        ApiError::sign_in_refused(code, e.to_string())
    })?;
    let refused =
        || ApiError::sign_in_refused("invalid_nonce", "the nonce is unknown, used already or expired; get a new one");
    let issued_at = state.nonces.issued_at(&message.nonce).await?.ok_or_else(refused)?;
    // A minute of clock skew between nodes is tolerated, as for the message's own times.
    if issued_at > now + 60 || issued_at.saturating_add(config.nonce_ttl_secs) < now {
        return Err(refused());
    }
    // Counted before the nonce is spent: a refused sign-in can be retried with the same one.
    state.limiters.session(message.address)?;
    if !state.store.spend_nonce(&message.nonce, issued_at, now).await? {
        return Err(refused());
    }
    let token = alloy_hex(&rand::random::<[u8; 32]>());
    let expires_at = now + config.session_ttl_secs;
    state.store.create_session(&token_hash(&token), message.address, now, expires_at).await?;
    let cookie = format!(
        "{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
        config.session_ttl_secs,
        if config.secure_cookies { "; Secure" } else { "" }
    );
    let mut response = Json(LoginResponse { owner: message.address, token, expires_at }).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

#[utoipa::path(post, path = "/api/auth/logout", tag = "auth",
    responses((status = 204, description = "signed out"), (status = 503, body = super::Problem, content_type = "application/problem+json")))]
pub(super) async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(token) = session_token(&headers) {
        state.store.delete_session(&token_hash(token)).await?;
    }
    let clear = format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, clear)]).into_response())
}

/// The signed-in owner, from the session cookie or a bearer token. Every owner route takes it.
#[derive(Debug, Clone, Copy)]
pub struct SignedIn(pub Address);

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = session_token(&parts.headers).ok_or_else(ApiError::unauthenticated)?;
        let owner = state.store.session_owner(&token_hash(token), now()).await?;
        owner.map(SignedIn).ok_or_else(ApiError::unauthenticated)
    }
}

fn session_token(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    bearer.or_else(|| {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| pair.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='))
    })
}

/// Sessions are stored by hash: a leaked database holds no usable token.
fn token_hash(token: &str) -> String {
    format!("{:x}", keccak256(token.as_bytes()))
}

fn alloy_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
