//! Forwarding to the upstream API: every request goes on to it, the priced ones through the
//! payment layer (charged first, voided when the upstream answers >= 400, fails or times out).
//! Bodies stream both ways; hop-by-hop and payment headers stay here.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, Response, StatusCode, Uri, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentab_gateway::protocol::{PAYMENT_SIGNATURE, X_PAYMENT};
use opentab_gateway::{CounterStore, KeyDirectory, PaymentLayer, UsageLedger};

use crate::Error;

/// The largest request body forwarded by default (16 MiB).
pub const DEFAULT_MAX_BODY: usize = 16 << 20;

/// How long the upstream may take to answer by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Every request forwarded to the upstream, priced ones through `layer` (charged first, voided
/// when the upstream answers >= 400 or not at all). `opentab dev --upstream` serves this too.
pub fn forwarding<D, C, L>(layer: PaymentLayer<D, C, L>, forward: Forward) -> Router
where
    D: KeyDirectory + 'static,
    C: CounterStore + 'static,
    L: UsageLedger + 'static,
{
    let max_body = forward.max_body;
    // Refused before the payment layer: a body declared too large is never charged.
    Router::new().fallback(proxy).with_state(forward).layer(layer).layer(axum::middleware::from_fn(
        move |req: Request, next: axum::middleware::Next| refuse_declared_oversize(max_body, req, next),
    ))
}

/// The upstream's scheme and authority.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `http://host:port`.
    pub base: String,
    authority: axum::http::uri::Authority,
}

impl Upstream {
    /// `http://host:port`, or why not.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::Config(format!("upstream {text:?} {why}"));
        let uri: Uri = text.parse().map_err(|e| bad(&format!("is not a URL: {e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad(
                "must be http://host:port (the proxy sits beside the API; terminate TLS in front of the proxy)",
            ));
        }
        let authority = uri.authority().cloned().ok_or_else(|| bad("has no host"))?;
        if !(uri.path() == "/" || uri.path().is_empty()) {
            return Err(bad("must not have a path: requests keep theirs"));
        }
        Ok(Self { base: format!("http://{authority}"), authority })
    }
}

/// Where and how requests are forwarded.
#[derive(Debug, Clone)]
pub struct Forward {
    client: Client<HttpConnector, Body>,
    upstream: Upstream,
    timeout: Duration,
    /// The largest request body forwarded, in bytes.
    max_body: usize,
}

impl Forward {
    /// Forwards to `upstream`, which must answer within `timeout`; request bodies over
    /// `max_body` bytes are refused with 413.
    pub fn new(upstream: Upstream, timeout: Duration, max_body: usize) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        Self { client: Client::builder(TokioExecutor::new()).build(connector), upstream, timeout, max_body }
    }
}

/// Headers that belong to one connection (RFC 9110 §7.6.1), and the payment, which is ours.
const NOT_FORWARDED: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    PAYMENT_SIGNATURE,
    X_PAYMENT,
];

async fn proxy(State(forward): State<Forward>, req: Request) -> Response<Body> {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string());
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = match Uri::builder()
        .scheme("http")
        .authority(forward.upstream.authority.clone())
        .path_and_query(path)
        .build()
    {
        Ok(uri) => uri,
        Err(err) => return error(StatusCode::BAD_REQUEST, &format!("cannot forward {path:?}: {err}")),
    };
    let host = parts.headers.get(header::HOST).cloned();
    for name in NOT_FORWARDED {
        parts.headers.remove(name);
    }
    if let Some(host) = host {
        parts.headers.insert(HeaderName::from_static("x-forwarded-host"), host);
    }
    if let Some(peer) = peer.and_then(|p| HeaderValue::from_str(&p).ok()) {
        parts.headers.append(HeaderName::from_static("x-forwarded-for"), peer);
    }
    parts.headers.insert(HeaderName::from_static("x-forwarded-proto"), HeaderValue::from_static("http"));
    if let Ok(value) = HeaderValue::from_str(forward.upstream.authority.as_str()) {
        parts.headers.insert(header::HOST, value);
    }
    parts.uri = uri;
    // A body without a declared length is counted as it streams and cut off past the limit.
    let request = Request::from_parts(parts, Body::new(http_body_util::Limited::new(body, forward.max_body)));
    match tokio::time::timeout(forward.timeout, forward.client.request(request)).await {
        Ok(Ok(response)) => {
            let (mut parts, body) = response.into_parts();
            for name in NOT_FORWARDED {
                parts.headers.remove(name);
            }
            Response::from_parts(parts, Body::new(body))
        }
        Ok(Err(err)) if caused_by::<http_body_util::LengthLimitError>(&err) => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the request body is over the limit of {} bytes", forward.max_body),
        ),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, upstream = %forward.upstream.base, "upstream unreachable");
            error(StatusCode::BAD_GATEWAY, &format!("the upstream API did not answer: {err}"))
        }
        Err(_) => {
            error(StatusCode::GATEWAY_TIMEOUT, &format!("the upstream API did not answer within {:?}", forward.timeout))
        }
    }
}

/// 413 for a request whose declared length is over `max_body`, before anything is charged.
async fn refuse_declared_oversize(max_body: usize, req: Request, next: axum::middleware::Next) -> Response<Body> {
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_body as u64) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the request body is over the limit of {max_body} bytes"),
        );
    }
    next.run(req).await
}

/// Whether `err`, or an error it was caused by, is an `E`.
fn caused_by<E: std::error::Error + 'static>(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.is::<E>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// A JSON error of the proxy itself (>= 400, so any charge is voided).
fn error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": "upstream", "message": message, "charged": false }).to_string();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
