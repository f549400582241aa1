//! A tower `Layer` that puts the gateway in front of any axum/hyper service: unpaid calls to a
//! priced route get `402 Payment Required`; paid ones are charged before the handler runs and
//! voided if it answers with a status >= 400; unpriced routes pass through untouched. A request
//! with an idempotency key (`Idempotency-Key`, or x402's `payment-identifier` extension) that
//! was charged already is answered `409` with `duplicate_payment` and not charged again.

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use base64::Engine;
use futures_util::FutureExt;
use tower::{Layer, Service};

use crate::error::Dependency;
use crate::gateway::{
    ChargeEvent, ChargeObserver, CounterStore, Decision, GatewayConfig, KeyDirectory, Paid, Recorded, Refusal,
    UsageKind, UsageLedger, UsageRecord, decide, unix_now,
};
use crate::metrics::GatewayMetrics;
use crate::pricing::{PricedRoute, Pricing, Resolution};
use crate::protocol::{
    ErrorCode, IDEMPOTENCY_KEY, PAYMENT_REQUIRED, PAYMENT_RESPONSE, PAYMENT_SIGNATURE, X_PAYMENT,
    check_idempotency_key, decode_payment, decode_payment_v1, encode_header,
};

/// Everything a gateway needs: who is paid, what costs what, where keys, counters and the
/// usage ledger live.
#[derive(Debug)]
pub struct Gateway<D, C, L> {
    /// Payee, chain and validator.
    pub config: GatewayConfig,
    /// Priced routes.
    pub pricing: Pricing,
    /// Key state.
    pub directory: D,
    /// Counters.
    pub counters: C,
    /// The durable usage ledger.
    pub ledger: L,
    /// Told of every durable charge and void (the rule engine), if anyone listens.
    pub observer: Option<Arc<dyn ChargeObserver>>,
}

/// The layer; clone it freely (the gateway is shared).
#[derive(Debug)]
pub struct PaymentLayer<D, C, L> {
    gateway: Arc<Gateway<D, C, L>>,
    metrics: Arc<GatewayMetrics>,
}

impl<D, C, L> Clone for PaymentLayer<D, C, L> {
    fn clone(&self) -> Self {
        Self { gateway: self.gateway.clone(), metrics: self.metrics.clone() }
    }
}

impl<D, C, L> PaymentLayer<D, C, L> {
    /// A layer charging through `gateway`.
    pub fn new(gateway: Gateway<D, C, L>) -> Self {
        Self { gateway: Arc::new(gateway), metrics: Arc::default() }
    }

    /// The shared gateway (to read counters in tests and metrics).
    pub fn gateway(&self) -> &Arc<Gateway<D, C, L>> {
        &self.gateway
    }

    /// What the layer counted (for `/metrics`).
    pub fn metrics(&self) -> &Arc<GatewayMetrics> {
        &self.metrics
    }
}

impl<S, D, C, L> Layer<S> for PaymentLayer<D, C, L> {
    type Service = PaymentService<S, D, C, L>;

    fn layer(&self, inner: S) -> Self::Service {
        PaymentService { inner, gateway: self.gateway.clone(), metrics: self.metrics.clone() }
    }
}

/// The service the layer wraps around `S`.
#[derive(Debug)]
pub struct PaymentService<S, D, C, L> {
    inner: S,
    gateway: Arc<Gateway<D, C, L>>,
    metrics: Arc<GatewayMetrics>,
}

impl<S: Clone, D, C, L> Clone for PaymentService<S, D, C, L> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), gateway: self.gateway.clone(), metrics: self.metrics.clone() }
    }
}

impl<S, D, C, L> Service<Request<Body>> for PaymentService<S, D, C, L>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    D: KeyDirectory + 'static,
    C: CounterStore + 'static,
    L: UsageLedger + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // Call the instance that was polled ready, leave a fresh clone for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (gateway, metrics) = (self.gateway.clone(), self.metrics.clone());
        Box::pin(async move {
            let (route, path) = match gateway.pricing.resolve(req.method().as_str(), req.uri().path()) {
                Resolution::Free => return inner.call(req).await,
                Resolution::Refused(reason) => return Ok(refused(reason)),
                Resolution::Priced { route, path } => (route.clone(), path),
            };
            // The API sees the path that was priced, whatever spelling the client used.
            let mut req = req;
            // Most requests already spell the priced path: rebuild the URI only when it differs.
            if req.uri().path() != path
                && let Some(uri) = with_path(req.uri(), &path)
            {
                *req.uri_mut() = uri;
            }
            let payment = PaymentHeaders {
                v2: header_text(&req, PAYMENT_SIGNATURE),
                v1: header_text(&req, X_PAYMENT),
                idempotency_key: header_text(&req, IDEMPOTENCY_KEY),
                request_id: header_text(&req, "x-request-id"),
            };
            let taking = Instant::now();
            let url = req.uri().to_string();
            let taken = gateway.take(&route, &url, payment).await;
            metrics.charge_latency.observe(taking.elapsed());
            let charge = match taken {
                Ok(charge) => charge,
                Err(answer) => {
                    match (answer.error, answer.unavailable) {
                        (Some(code), _) => metrics.refused(code),
                        (None, Some(dependency)) => metrics.unavailable(dependency),
                        // A plain challenge: no payment was sent.
                        (None, None) => {}
                    }
                    return Ok(answer.into_response());
                }
            };
            // The ledger commit runs while the API works on the call; the answer leaves only once
            // the charge is durable. A task of its own: it completes (or undoes the charge) even
            // if the client goes away meanwhile.
            let recording = {
                let (gateway, charge, metrics, route) =
                    (gateway.clone(), charge.clone(), metrics.clone(), route.clone());
                tokio::spawn(async move {
                    let recording = Instant::now();
                    let recorded = gateway.record_or_undo(&charge, &route, &url).await;
                    metrics.ledger_latency.observe(recording.elapsed());
                    recorded
                })
            };
            // A handler that panics answered nothing: the charge is voided like any error.
            let serving = Instant::now();
            let response = AssertUnwindSafe(inner.call(req)).catch_unwind().await;
            metrics.upstream_latency.observe(serving.elapsed());
            match recording.await {
                Ok(Ok(())) => {}
                Ok(Err(answer)) => {
                    match answer.error {
                        // The key was stopped on another node before the row could commit.
                        Some(code) => metrics.refused(code),
                        None => metrics.unavailable(answer.unavailable.unwrap_or(Dependency::Ledger)),
                    }
                    return Ok(answer.into_response());
                }
                Err(_) => {
                    // The recording task panicked: the ledger's side.
                    metrics.unavailable(Dependency::Ledger);
                    return Ok(unavailable(Dependency::Ledger).into_response());
                }
            }
            let mut response = match response {
                Ok(response) => response?,
                Err(_) => {
                    tracing::error!(key = %charge.paid.key, route = %charge.route, "the handler panicked; the charge is voided");
                    let mut response = Response::new(Body::from(
                        r#"{"error":"internal","message":"the API failed on this call; it was not charged"}"#,
                    ));
                    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    response
                }
            };
            if response.status().as_u16() >= 400 {
                // The user never pays for an error.
                gateway.void(&charge).await;
                metrics.voided();
            } else {
                metrics.paid();
                if let Ok(value) = HeaderValue::from_str(&charge.receipt_header()) {
                    response.headers_mut().insert(PAYMENT_RESPONSE, value);
                }
            }
            Ok(response)
        })
    }
}

/// The payment headers of a request, as the gateway reads them.
#[derive(Debug, Clone, Default)]
pub struct PaymentHeaders {
    /// `PAYMENT-SIGNATURE` (x402 v2).
    pub v2: Option<String>,
    /// `X-PAYMENT` (x402 v1).
    pub v1: Option<String>,
    /// `Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// `X-Request-Id`, kept in the ledger.
    pub request_id: Option<String>,
}

/// A charge taken and recorded: serve the call, then [`Gateway::void`] it if the call fails.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Charge {
    /// What was charged, to whom.
    pub paid: Paid,
    /// `METHOD /pattern` of the route.
    pub route: String,
    /// The request's id in the ledger.
    pub request_id: String,
    /// This charge's own id, which its void names so that it is recorded once.
    #[serde(default)]
    pub id: Option<opentab_core::B256>,
}

impl Charge {
    /// The `PAYMENT-RESPONSE` header value.
    pub fn receipt_header(&self) -> String {
        encode_header(&self.paid.response)
    }
}

/// An answer the gateway gives instead of serving the call.
#[derive(Debug, Clone)]
pub struct Answer {
    /// 402 (payment required or refused), 409 (duplicate payment) or 503 (cannot charge).
    pub status: StatusCode,
    /// The JSON body, serialized once (the header carries the same JSON in base64).
    pub body: String,
    /// The `PAYMENT-REQUIRED` header value, on a 402.
    pub payment_required: Option<String>,
    /// Why the payment was refused, if it was (none for a plain challenge or a 503).
    pub error: Option<ErrorCode>,
    /// On a 503: the dependency that failed.
    pub unavailable: Option<Dependency>,
}

impl Answer {
    /// As an HTTP response.
    pub fn into_response(self) -> Response<Body> {
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() = self.status;
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(value) = self.payment_required.and_then(|v| HeaderValue::from_str(&v).ok()) {
            response.headers_mut().insert(PAYMENT_REQUIRED, value);
        }
        response
    }
}

/// What [`Gateway::authorize`] decided.
#[derive(Debug)]
pub enum Authorized {
    /// Charged and recorded: serve the call.
    Paid(Box<Charge>),
    /// Answer this instead.
    Answer(Answer),
}

impl<D: KeyDirectory, C: CounterStore, L: UsageLedger> Gateway<D, C, L> {
    /// Charges a call to `route` (requested as `url`) with the payment in `headers`: decodes it,
    /// decides, and records the charge in the ledger before returning, so nothing served is
    /// ever missing from it. The HTTP charge API's path (its app serves the call afterwards).
    pub async fn authorize(&self, route: &PricedRoute, url: &str, headers: PaymentHeaders) -> Authorized {
        let charge = match self.take(route, url, headers).await {
            Ok(charge) => charge,
            Err(answer) => return Authorized::Answer(answer),
        };
        match self.record_or_undo(&charge, route, url).await {
            Ok(()) => Authorized::Paid(Box::new(charge)),
            Err(answer) => Authorized::Answer(answer),
        }
    }

    /// Decodes the payment and charges the counters, without recording the charge yet: the
    /// caller must [`Gateway::record_or_undo`] it before the call's answer leaves.
    pub async fn take(&self, route: &PricedRoute, url: &str, headers: PaymentHeaders) -> Result<Charge, Answer> {
        let config = &self.config;
        // The ledger keeps the client's request id; a bounded one.
        let request_id = headers.request_id.map(|id| id.chars().take(128).collect()).unwrap_or_else(request_id);
        let payment = match (headers.v2, headers.v1) {
            (Some(v2), _) => decode_payment(&v2),
            (None, Some(v1)) => decode_payment_v1(&v1, &config.requirements(route)),
            (None, None) => return Err(challenge(config, route, url, None)),
        };
        let payment = match payment {
            Ok(payment) => payment,
            Err(malformed) => {
                let refusal = Refusal { code: ErrorCode::MalformedPayment, message: malformed.0 };
                return Err(challenge(config, route, url, Some(&refusal)));
            }
        };
        let idempotency = headers.idempotency_key.or_else(|| payment.payment_identifier().map(str::to_owned));
        if let Some(Err(malformed)) = idempotency.as_deref().map(check_idempotency_key) {
            let refusal = Refusal { code: ErrorCode::MalformedPayment, message: malformed.0 };
            return Err(challenge(config, route, url, Some(&refusal)));
        }
        let decide =
            || decide(config, &self.directory, &self.counters, route, &payment, idempotency.as_deref(), unix_now());
        let mut decision = decide().await;
        if let (Decision::Refused(refusal), Some(id)) = (&decision, idempotency.as_deref())
            && refusal.code == ErrorCode::DuplicatePayment
        {
            match self.duplicate(payment.payload.session_key, id).await {
                // A charge a dead gateway left unrecorded: its key is gone, charge this one.
                Ok(Duplicate::Dropped) => decision = decide().await,
                Ok(Duplicate::Paid) => {}
                Ok(Duplicate::Recording) => return Err(recording()),
                Err(err) => decision = Decision::Unavailable(err),
            }
        }
        let paid = match decision {
            Decision::Paid(paid) => paid,
            Decision::Refused(refusal) => {
                let mut answer = challenge(config, route, url, Some(&refusal));
                if refusal.code == ErrorCode::DuplicatePayment {
                    // Not a payment problem: the call was paid for already.
                    answer.status = StatusCode::CONFLICT;
                    answer.payment_required = None;
                }
                return Err(answer);
            }
            Decision::Unavailable(err) => {
                tracing::error!(error = %err, dependency = err.dependency().as_str(), "cannot charge: failing closed");
                return Err(unavailable(err.dependency()));
            }
        };
        let id = Some(charge_id(&paid));
        Ok(Charge { paid: *paid, route: format!("{} {}", route.method, route.pattern), request_id, id })
    }

    /// What a duplicate the counters found is: paid (the ledger holds its charge), a charge a
    /// gateway that died left unrecorded (dropped now, after [`STALE_IDEMPOTENCY`]), or one
    /// still being recorded (or undone) by a gateway that runs.
    async fn duplicate(&self, session_key: opentab_core::Address, id: &str) -> Result<Duplicate, crate::Unavailable> {
        let hash = crate::gateway::idempotency_hash(session_key, id);
        if self.ledger.stands(session_key, hash).await? {
            return Ok(Duplicate::Paid);
        }
        let Some(info) = self.directory.key(session_key).await? else { return Ok(Duplicate::Paid) };
        let dropped =
            self.counters.drop_stale_idempotency(session_key, info.key.owner, hash, STALE_IDEMPOTENCY).await?;
        Ok(if dropped { Duplicate::Dropped } else { Duplicate::Recording })
    }

    /// Records a [`Gateway::take`]n charge (of `route`, requested as `url`) durably, then hands
    /// it to the observer. If the ledger cannot take it, undoes it in the counters and gives the
    /// 503 to answer instead of the call (a charge the ledger does not hold is never served).
    /// If the key was frozen or revoked before the row could commit (on another node, whose
    /// change this node's cache had not heard yet), undoes it and gives the `key_frozen` 402.
    /// If the counters it was taken on were rebuilt before the row could commit (Redis lost
    /// them), the rebuilt counters never counted it: nothing is given back, and the client is
    /// told to try again (503).
    pub async fn record_or_undo(&self, charge: &Charge, route: &PricedRoute, url: &str) -> Result<(), Answer> {
        let row = record(charge, UsageKind::Charge);
        let at = row.at;
        let p = &charge.paid;
        let (answer, undo) = match self.ledger.record(row).await {
            // (The last two only answer voids.)
            Ok(Recorded::Held(_) | Recorded::AlreadyVoided | Recorded::Spooled) => {
                self.tell(charge, UsageKind::Charge, at).await;
                return Ok(());
            }
            Ok(Recorded::KeyStopped) => {
                tracing::warn!(key = %p.key, "the key was stopped before its charge committed: refused");
                let message = format!("session key {} is frozen or revoked", p.key);
                let refusal = Refusal { code: ErrorCode::KeyFrozen, message };
                (challenge(&self.config, route, url, Some(&refusal)), (p.price, p.epoch))
            }
            // Counters older than the ledger's epochs are rebuilt; those of its epochs never
            // held this charge: a zero price only brings them up to date.
            Ok(Recorded::Fenced(held)) => {
                tracing::warn!(key = %p.key, "the counters were rebuilt before the charge committed: refused, try again");
                (unavailable(Dependency::Counters), (opentab_core::Usdc::ZERO, Some(held)))
            }
            Err(err) => {
                tracing::error!(error = %err, dependency = err.dependency().as_str(), "cannot record the charge: failing closed");
                (unavailable(err.dependency()), (p.price, p.epoch))
            }
        };
        if let Err(err) = self.counters.void(p.key, p.owner, undo.0, p.idempotency, undo.1).await {
            tracing::error!(error = %err, key = %p.key, "could not undo an unrecorded charge");
        }
        Err(answer)
    }

    /// Voids `charge` (the call failed: the user never pays for an error), durable first: the
    /// ledger's void row, then the counters of the epoch the ledger names. When the ledger
    /// cannot take it, nothing changed and the error says so (the charge API answers 503 and
    /// the app retries). Counters that fail after the ledger has the void over-count the key
    /// until they are rebuilt from the ledger: they may refuse a call, never serve one unpaid.
    pub async fn void_durably(&self, charge: &Charge) -> Result<(), crate::Unavailable> {
        let p = &charge.paid;
        let row = record(charge, UsageKind::Void);
        let at = row.at;
        let epoch = match self.ledger.record(row).await? {
            Recorded::Held(epoch) => epoch,
            Recorded::AlreadyVoided => return Ok(()),
            Recorded::Spooled => {
                self.tell(charge, UsageKind::Void, at).await;
                return Ok(());
            }
            // Only charges are refused.
            Recorded::KeyStopped | Recorded::Fenced(_) => p.epoch,
        };
        if let Err(err) = self.counters.void(p.key, p.owner, p.price, p.idempotency, epoch).await {
            tracing::error!(error = %err, key = %p.key, price = %p.price, "the ledger has a void the counters missed");
        }
        self.tell(charge, UsageKind::Void, at).await;
        Ok(())
    }

    /// Hands a durable charge or void to the observer.
    async fn tell(&self, charge: &Charge, kind: UsageKind, at: u64) {
        let Some(observer) = &self.observer else { return };
        let p = &charge.paid;
        let served = p.response.receipt.served;
        let recent_calls = if kind == UsageKind::Charge { p.recent_calls } else { None };
        let event = ChargeEvent {
            at,
            key: p.key,
            owner: p.owner,
            kind,
            amount: p.price,
            route: charge.route.clone(),
            served,
            limit: p.limit,
            recent_calls,
        };
        observer.observe(event).await;
    }

    /// [`Gateway::void_durably`] for the layer, which has no one to retry: a failure is logged.
    pub async fn void(&self, charge: &Charge) {
        if let Err(err) = self.void_durably(charge).await {
            let p = &charge.paid;
            tracing::error!(error = %err, key = %p.key, price = %p.price, "could not record a void for a failed call");
        }
    }
}

fn record(charge: &Charge, kind: UsageKind) -> UsageRecord {
    let paid = &charge.paid;
    UsageRecord {
        at: unix_now(),
        key: paid.key,
        owner: paid.owner,
        kind,
        amount: paid.price,
        route: charge.route.clone(),
        request_id: charge.request_id.clone(),
        voucher: paid.voucher,
        signature: (kind == UsageKind::Charge).then_some(paid.signature),
        idempotency: paid.idempotency,
        void_of: if kind == UsageKind::Void { charge.id } else { None },
        epoch: paid.epoch,
    }
}

/// An id for one charge: its voucher's signature (which a voided voucher can reuse) with this
/// process's counter and clock, hashed.
fn charge_id(paid: &Paid) -> opentab_core::B256 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mut bytes = paid.signature.as_bytes().to_vec();
    bytes.extend_from_slice(&n.to_be_bytes());
    bytes.extend_from_slice(&nanos.to_be_bytes());
    bytes.extend_from_slice(&std::process::id().to_be_bytes());
    opentab_core::keccak256(bytes)
}

/// A request id unique within this process when the client sent none.
fn request_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("gw-{}-{n}", SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or_default())
}

fn header_text(req: &Request<Body>, name: &str) -> Option<String> {
    req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn challenge(config: &GatewayConfig, route: &PricedRoute, url: &str, refusal: Option<&Refusal>) -> Answer {
    let json = serde_json::to_string(&config.challenge(route, url, refusal)).unwrap_or_default();
    Answer {
        status: StatusCode::PAYMENT_REQUIRED,
        payment_required: Some(base64::engine::general_purpose::STANDARD.encode(&json)),
        body: json,
        error: refusal.map(|r| r.code),
        unavailable: None,
    }
}

/// `uri` with its path replaced by `path` (query kept).
fn with_path(uri: &axum::http::Uri, path: &str) -> Option<axum::http::Uri> {
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    axum::http::Uri::from_parts(parts).ok()
}

/// 400 for a request on a priced prefix whose path has no single normal form.
fn refused(reason: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": "ambiguous_path", "message": reason }).to_string();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// How old an idempotency key whose charge the ledger does not hold must be before it is taken
/// for one a dead gateway left: a gateway that runs records or undoes its charge well within it
/// (a ledger commit that lasts a minute is the one case it could land after, and the retry then
/// be charged too).
pub const STALE_IDEMPOTENCY: std::time::Duration = std::time::Duration::from_secs(60);

/// A duplicate request, as the ledger sees it.
enum Duplicate {
    /// Its charge stands.
    Paid,
    /// Left by a gateway that died before recording it: dropped.
    Dropped,
    /// Being recorded or undone by a gateway that runs.
    Recording,
}

/// 503 for a retry whose first attempt is still being recorded: try again shortly.
fn recording() -> Answer {
    Answer {
        status: StatusCode::SERVICE_UNAVAILABLE,
        body: r#"{"error":"unavailable","message":"an earlier attempt of this request is still being recorded; nothing was charged now, try again shortly"}"#.to_owned(),
        payment_required: None,
        error: None,
        unavailable: Some(Dependency::Ledger),
    }
}

fn unavailable(dependency: Dependency) -> Answer {
    Answer {
        status: StatusCode::SERVICE_UNAVAILABLE,
        body: r#"{"error":"unavailable","message":"payments cannot be checked right now; nothing was charged, try again shortly"}"#
            .to_owned(),
        payment_required: None,
        error: None,
        unavailable: Some(dependency),
    }
}
