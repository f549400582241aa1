//! The gateway's HTTP charge API, for middleware written in other languages
//! (`packages/express`): the app asks the gateway to charge a call before serving it, and to
//! void the charge if it answered >= 400. Both need `Authorization: Bearer <secret>`.
//!
//! `POST /gateway/v1/charge` with
//! `{ "route": "POST /v1/chat", "price": "0.002", "url": "…", "payment": "<PAYMENT-SIGNATURE>",
//! "paymentV1": "<X-PAYMENT>", "idempotencyKey": "…", "requestId": "…" }` (only `route` and
//! `price` are required) answers
//! - `200 { "status": "paid", "chargeId", "paymentResponse": "<PAYMENT-RESPONSE value>", "receipt" }`;
//! - or the answer the app must give its client instead, verbatim: `402` with the challenge
//!   (body and `PAYMENT-REQUIRED` header), `409` `duplicate_payment`, `503` when the gateway
//!   cannot charge (fail closed);
//! - `400` / `401` when the app's request itself is wrong (a bug or a bad secret, not the
//!   client's fault).
//!
//! `POST /gateway/v1/void` with `{ "chargeId" }` answers `200 { "status": "voided" }`, `404` if
//! the charge is unknown, already voided, or older than ten minutes, or `503` if the counter
//! store cannot record the void (retry).
//!
//! Nothing is kept per charge: the charge id is a ticket that carries the charge, sealed with
//! a keyed hash of the secret, so any gateway node holding the secret can void it (nodes scale
//! out behind a load balancer). That it is voided once is claimed in the counter store (Redis
//! across nodes), in the same slot as the owner's counters.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use opentab_core::B256;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::gateway::{CounterStore, KeyDirectory, UsageLedger, unix_now};
use crate::layer::{Authorized, Charge, Gateway, PaymentHeaders};
use crate::pricing::Pricing;

/// How long a charge can be voided: longer than any handler runs.
const VOID_WINDOW_SECS: u64 = 600;

/// The charge API's routes (`/gateway/v1/charge`, `/gateway/v1/void`), charging through
/// `gateway` (share it with any [`PaymentLayer`](crate::PaymentLayer) of the same process, so
/// there is one set of counters).
pub fn charge_api<D, C, L>(gateway: Arc<Gateway<D, C, L>>, secret: impl Into<String>) -> Router
where
    D: KeyDirectory + 'static,
    C: CounterStore + 'static,
    L: UsageLedger + 'static,
{
    let state = Arc::new(ApiState { gateway, secret: secret.into() });
    Router::new()
        .route("/gateway/v1/charge", post(charge::<D, C, L>))
        .route("/gateway/v1/void", post(void::<D, C, L>))
        .with_state(state)
}

struct ApiState<D, C, L> {
    gateway: Arc<Gateway<D, C, L>>,
    secret: String,
}

/// What a charge id carries: the charge, and when it was taken (Unix seconds).
#[derive(Debug, Serialize, Deserialize)]
struct Ticket {
    charge: Charge,
    at: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ChargeRequest {
    route: String,
    price: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    payment: Option<String>,
    #[serde(default)]
    payment_v1: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    request_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct VoidRequest {
    charge_id: String,
}

async fn charge<D, C, L>(
    State(state): State<Arc<ApiState<D, C, L>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response
where
    D: KeyDirectory + 'static,
    C: CounterStore + 'static,
    L: UsageLedger + 'static,
{
    if !authenticated(&headers, &state.secret) {
        return unauthorized();
    }
    let req: ChargeRequest = match serde_json::from_slice(&body) {
        Ok(req) => req,
        Err(err) => {
            return bad_request(&format!("the charge request is not valid JSON of the documented shape: {err}"));
        }
    };
    let pricing = match Pricing::new([(req.route.as_str(), req.price.as_str())]) {
        Ok(pricing) => pricing,
        Err(err) => return bad_request(&format!("route {:?} at price {:?}: {err}", req.route, req.price)),
    };
    let Some(route) = pricing.routes().first() else { return bad_request("no route") };
    let url = req.url.unwrap_or_else(|| route.pattern.clone());
    let payment = PaymentHeaders {
        v2: req.payment,
        v1: req.payment_v1,
        idempotency_key: req.idempotency_key,
        request_id: req.request_id,
    };
    match state.gateway.authorize(route, &url, payment).await {
        Authorized::Answer(answer) => answer.into_response(),
        Authorized::Paid(charge) => {
            let body = json!({
                "status": "paid",
                "paymentResponse": charge.receipt_header(),
                "receipt": charge.paid.response,
                "chargeId": seal(&state.secret, &Ticket { charge: *charge, at: unix_now() }),
            });
            Json(body).into_response()
        }
    }
}

async fn void<D, C, L>(
    State(state): State<Arc<ApiState<D, C, L>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response
where
    D: KeyDirectory + 'static,
    C: CounterStore + 'static,
    L: UsageLedger + 'static,
{
    if !authenticated(&headers, &state.secret) {
        return unauthorized();
    }
    let req: VoidRequest = match serde_json::from_slice(&body) {
        Ok(req) => req,
        Err(err) => return bad_request(&format!("the void request is not {{\"chargeId\": \"…\"}}: {err}")),
    };
    // The charge id carries the voucher and its signature: never echoed back.
    let unknown = || {
        let message = "no open charge with this id: unknown, voided already, or older than ten minutes";
        (StatusCode::NOT_FOUND, Json(json!({ "error": "unknown_charge", "message": message }))).into_response()
    };
    let unavailable = || {
        let message = "the gateway cannot void right now; nothing was voided, retry";
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": "unavailable", "message": message }))).into_response()
    };
    let Some((ticket, seal)) = unseal(&state.secret, &req.charge_id) else { return unknown() };
    if unix_now().saturating_sub(ticket.at) >= VOID_WINDOW_SECS {
        return unknown();
    }
    // Voided once, whichever node is asked (and however often the app retries).
    match state.gateway.counters.claim(ticket.charge.paid.owner, seal, VOID_WINDOW_SECS).await {
        Ok(true) => {}
        Ok(false) => return unknown(),
        Err(err) => {
            tracing::error!(error = %err, "cannot claim the void: refusing it, the app may retry");
            return unavailable();
        }
    }
    if let Err(err) = state.gateway.void_durably(&ticket.charge).await {
        // Nothing was voided: give the claim back so the app's retry can void it.
        tracing::error!(error = %err, route = %ticket.charge.route, "cannot record the void: refusing it, the app may retry");
        if let Err(err) = state.gateway.counters.release(ticket.charge.paid.owner, seal).await {
            tracing::error!(error = %err, "cannot release the void's claim: a retry will find the charge voided");
        }
        return unavailable();
    }
    Json(json!({ "status": "voided" })).into_response()
}

fn authenticated(headers: &HeaderMap, secret: &str) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compared in constant time: the secret is the only thing between anyone and free calls.
    let same =
        given.len() == secret.len() && given.bytes().zip(secret.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    same && !secret.is_empty()
}

fn unauthorized() -> Response {
    let message = "the charge API needs Authorization: Bearer <the gateway secret>";
    (StatusCode::UNAUTHORIZED, Json(json!({ "error": "unauthorized", "message": message }))).into_response()
}

fn bad_request(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": "bad_request", "message": message }))).into_response()
}

/// The charge id: `chg_<base64url of the ticket's JSON>.<its seal>`, the seal being a keyed
/// hash of the secret and the ticket (Keccak-256 over `secret | ticket`: a sponge hash, so no
/// length extension); nobody can make or alter one without the secret.
fn seal(secret: &str, ticket: &Ticket) -> String {
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(ticket).unwrap_or_default());
    format!("chg_{body}.{:x}", seal_of(secret, &body))
}

/// The ticket of a charge id this gateway's secret sealed, and its seal.
fn unseal(secret: &str, id: &str) -> Option<(Ticket, B256)> {
    let (body, given) = id.strip_prefix("chg_")?.split_once('.')?;
    let expected = seal_of(secret, body);
    let given: B256 = given.parse().ok()?;
    // Compared in constant time, like the secret itself.
    if given.iter().zip(expected.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) != 0 {
        return None;
    }
    let json = URL_SAFE_NO_PAD.decode(body).ok()?;
    Some((serde_json::from_slice(&json).ok()?, expected))
}

fn seal_of(secret: &str, body: &str) -> B256 {
    opentab_core::keccak256(format!("opentab-charge-ticket|{secret}|{body}").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentab_core::Address;

    #[test]
    fn a_charge_id_opens_only_with_its_secret_and_unaltered() {
        let charge: Charge = serde_json::from_value(json!({
            "paid": {
                "voucher": "0x7d0", "signature": format!("0x{}1b", "11".repeat(64)),
                "key": Address::repeat_byte(1), "owner": Address::repeat_byte(2), "price": "2000",
                "idempotency": null,
                "response": { "success": true, "payer": Address::repeat_byte(2), "network": "eip155:1",
                    "receipt": { "sessionKey": Address::repeat_byte(1), "charged": "2000", "served": "2000", "remaining": "0" } },
            },
            "route": "POST /v1/chat", "request_id": "r1",
        }))
        .unwrap();
        let id = seal("s3cret", &Ticket { charge, at: 1_000 });
        let (ticket, _) = unseal("s3cret", &id).expect("its own secret opens it");
        assert_eq!((ticket.at, ticket.charge.paid.price.base_units()), (1_000, 2_000));
        assert!(unseal("other", &id).is_none(), "another secret does not");
        let (body, mac) = id.split_once('.').unwrap();
        let forged = format!("{}A.{mac}", body);
        assert!(unseal("s3cret", &forged).is_none(), "an altered ticket does not");
        assert!(unseal("s3cret", "chg_nonsense").is_none());
        assert!(unseal("s3cret", "").is_none());
    }
}
