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
//! `POST /gateway/v1/void` with `{ "chargeId" }` answers `200 { "status": "voided" }`, or `404`
//! if the charge is unknown, already voided, or older than ten minutes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::gateway::{CounterStore, KeyDirectory, UsageLedger};
use crate::layer::{Authorized, Charge, Gateway, PaymentHeaders};
use crate::pricing::Pricing;

/// How long a charge can be voided: longer than any handler runs. Every successful charge stays
/// in memory this long, so it is kept short.
const VOID_WINDOW: Duration = Duration::from_secs(600);

/// How often expired charges are dropped (not on every call: that would scan them all).
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The charge API's routes (`/gateway/v1/charge`, `/gateway/v1/void`), charging through
/// `gateway` (share it with any [`PaymentLayer`](crate::PaymentLayer) of the same process, so
/// there is one set of counters).
pub fn charge_api<D, C, L>(gateway: Arc<Gateway<D, C, L>>, secret: impl Into<String>) -> Router
where
    D: KeyDirectory + 'static,
    C: CounterStore + 'static,
    L: UsageLedger + 'static,
{
    let state = Arc::new(ApiState {
        gateway,
        secret: secret.into(),
        open: Mutex::new(OpenCharges { charges: HashMap::new(), swept: Instant::now() }),
    });
    Router::new()
        .route("/gateway/v1/charge", post(charge::<D, C, L>))
        .route("/gateway/v1/void", post(void::<D, C, L>))
        .with_state(state)
}

struct ApiState<D, C, L> {
    gateway: Arc<Gateway<D, C, L>>,
    secret: String,
    open: Mutex<OpenCharges>,
}

/// Charges that may still be voided, by id, with when they were taken.
struct OpenCharges {
    charges: HashMap<String, (Charge, Instant)>,
    swept: Instant,
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
            let id = charge_id(&state.secret, &charge);
            let body = json!({
                "status": "paid",
                "chargeId": id,
                "paymentResponse": charge.receipt_header(),
                "receipt": charge.paid.response,
            });
            if let Ok(mut open) = state.open.lock() {
                let now = Instant::now();
                if now.duration_since(open.swept) >= SWEEP_EVERY {
                    open.charges.retain(|_, (_, at)| now.duration_since(*at) < VOID_WINDOW);
                    open.swept = now;
                }
                open.charges.insert(id, (*charge, now));
            }
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
    // Taken out of the map: a charge is voided once.
    let open = state.open.lock().ok().and_then(|mut open| open.charges.remove(&req.charge_id));
    match open {
        Some((charge, at)) if at.elapsed() < VOID_WINDOW => {
            state.gateway.void(&charge).await;
            Json(json!({ "status": "voided", "chargeId": req.charge_id })).into_response()
        }
        _ => (
            StatusCode::NOT_FOUND,
            Json(json!({
                "error": "unknown_charge",
                "message": format!("no open charge {:?}: unknown, voided already, or older than ten minutes", req.charge_id),
            })),
        )
            .into_response(),
    }
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

/// An id nobody can guess without the secret.
fn charge_id(secret: &str, charge: &Charge) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    let seed = format!("{secret}|{n}|{nanos}|{}|{}", charge.paid.key, charge.request_id);
    format!("chg_{:x}", opentab_core::keccak256(seed.as_bytes()))
}
