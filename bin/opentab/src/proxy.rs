//! `opentab proxy --config FILE --upstream URL`: the HTTP 402 gateway as a reverse proxy in
//! front of an API written in any language. Priced routes are charged before they are
//! forwarded and voided when the upstream answers >= 400 (or fails, or times out); everything
//! else passes through. Bodies stream both ways; hop-by-hop and payment headers stay here.
//!
//! With `OPENTAB_GUARDIAN_KEY` set, a key that breaks a spike or burst rule is frozen on-chain
//! too (as that account), for owners who made it their guardian; set serve's `rule_guardian`
//! to its address so owners are shown it.
//!
//! It answers `/healthz`, `/readyz` (the database answers) and `/metrics` itself (paid, refused
//! by code, voided and failed-closed calls, charge and upstream latency histograms, the key
//! cache's hits and misses): an upstream route of one of these names is not reachable through
//! it. `docs/grafana-gateway.json` is a dashboard for them.
//!
//! With `OPENTAB_GATEWAY_SECRET` set it also serves the charge API (`/gateway/v1/charge` and
//! `/void`) that `packages/express` calls, on the same counters; `--upstream` is then optional.
//!
//! It reads the same file as `opentab serve` (whose chain listener keeps the database in step
//! with the chain: run one `serve`, and as many proxies as you like), plus a `[proxy]` table:
//!
//! ```toml
//! database_url = "postgres://opentab@db/opentab"
//! rpc_url = "https://polygon-amoy.example/rpc"
//! validator = "0x…"
//! payee = "0x…"
//! # (… the rest of serve's settings)
//!
//! [proxy]
//! listen = "127.0.0.1:8403"                  # default
//! upstream = "http://127.0.0.1:9000"         # or --upstream
//! redis_url = "redis://127.0.0.1:6379"       # counters shared by every proxy; without it,
//!                                            # in-process counters (then it must be the only
//!                                            # gateway of its payee on the database: checked)
//! redis_prefix = "opentab"                   # default; key names also carry the payee, so
//!                                            # gateways of different payees may share a Redis
//! timeout_secs = 60                          # upstream answer deadline (default 60)
//! max_body_bytes = 16777216                  # request bodies over this are refused with 413
//!                                            # (default 16 MiB; checked as they stream)
//! rules = "enforce"                          # the rule engine: enforce (default) or shadow
//!
//! [proxy.routes]
//! "POST /v1/chat/completions" = "0.002"
//! "GET /v1/models/:id" = "0.0001"
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, Response, StatusCode, Uri, header};
use clap::Args;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentab_chain::{Address, Validator, read_provider, signing_provider, tx_signer};
use opentab_core::SigningKey;
use opentab_core::rules::{RuleConfig, RuleMode};
use opentab_gateway::pricing::Pricing;
use opentab_gateway::protocol::{PAYMENT_SIGNATURE, X_PAYMENT};
use opentab_gateway::{
    CounterStore, Gateway, GatewayConfig, InProcessCounters, KeyDirectory, PaymentLayer, RedisCounters, UsageLedger,
    charge_api,
};
use opentab_service::{
    ExtraMetrics, Guardian, Metrics, Notifier, Ops, RuleEngine, RuledLedger, StoreCounterSource, StoreDirectory,
    StoreLedger, gateway_metrics, restore_counters, with_ops,
};
use opentab_store::Store;
use serde::Deserialize;

use crate::server::shutdown_signal;

#[derive(Debug, Args)]
pub(crate) struct ProxyArgs {
    /// The TOML configuration file (serve's, with a `[proxy]` table).
    #[arg(long, env = "OPENTAB_CONFIG")]
    config: PathBuf,
    /// The API to forward paid calls to (`http://host:port`); overrides `proxy.upstream`.
    #[arg(long, env = "OPENTAB_UPSTREAM")]
    upstream: Option<String>,
    /// Overrides the port of `proxy.listen` (0 picks a free one).
    #[arg(long, env = "OPENTAB_PROXY_PORT")]
    port: Option<u16>,
    /// Overrides `proxy.redis_url`.
    #[arg(long, env = "OPENTAB_REDIS_URL")]
    redis_url: Option<String>,
    /// Overrides `database_url`.
    #[arg(long, env = "OPENTAB_DATABASE_URL")]
    database_url: Option<String>,
    /// Overrides `rpc_url`.
    #[arg(long, env = "OPENTAB_RPC_URL")]
    rpc_url: Option<String>,
    /// Serve the charge API (`/gateway/v1/…`) to apps holding this secret.
    #[arg(long, env = "OPENTAB_GATEWAY_SECRET", hide_env_values = true)]
    gateway_secret: Option<String>,
    /// The private key the rule engine freezes keys on-chain with (owners choose it as their
    /// guardian). Without it rules freeze at the gateway only.
    #[arg(long, env = "OPENTAB_GUARDIAN_KEY", hide_env_values = true)]
    guardian_key: Option<String>,
}

/// The settings the proxy reads from serve's file; the rest of it is serve's business.
#[derive(Debug, Deserialize)]
struct File {
    database_url: String,
    rpc_url: String,
    validator: Address,
    payee: Address,
    #[serde(default)]
    rule_guardian: Option<Address>,
    #[serde(default)]
    proxy: Section,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Section {
    #[serde(default = "default_listen")]
    listen: SocketAddr,
    upstream: Option<String>,
    redis_url: Option<String>,
    #[serde(default = "default_prefix")]
    redis_prefix: String,
    #[serde(default = "default_timeout")]
    timeout_secs: u64,
    #[serde(default = "default_max_body")]
    max_body_bytes: u64,
    #[serde(default)]
    rules: RuleMode,
    #[serde(default)]
    routes: BTreeMap<String, String>,
}

impl Default for Section {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            upstream: None,
            redis_url: None,
            redis_prefix: default_prefix(),
            timeout_secs: default_timeout(),
            max_body_bytes: default_max_body(),
            rules: RuleMode::default(),
            routes: BTreeMap::new(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8403))
}

/// The largest request body forwarded by default (16 MiB).
pub(crate) const DEFAULT_MAX_BODY: usize = 16 << 20;

/// How long the upstream may take to answer by default.
pub(crate) const DEFAULT_TIMEOUT_SECS: u64 = 60;

const fn default_max_body() -> u64 {
    DEFAULT_MAX_BODY as u64
}

fn default_prefix() -> String {
    "opentab".to_owned()
}

const fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_SECS
}

pub(crate) async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let mut file: File = crate::config_file::read(&args.config, crate::config_file::Reader::Proxy)?;
    let section = &mut file.proxy;
    if let Some(port) = args.port {
        section.listen.set_port(port);
    }
    let upstream = args.upstream.or(section.upstream.take());
    anyhow::ensure!(
        upstream.is_some() || args.gateway_secret.is_some(),
        "no upstream: pass --upstream http://host:port (the API to put behind the gateway), set proxy.upstream, \
         or set OPENTAB_GATEWAY_SECRET to serve only the charge API"
    );
    let upstream = upstream.as_deref().map(Upstream::parse).transpose()?;
    anyhow::ensure!(
        upstream.is_none() || !section.routes.is_empty(),
        "{} prices no routes: add a [proxy.routes] table, e.g. \"POST /v1/chat/completions\" = \"0.002\"",
        args.config.display()
    );
    let pricing = Pricing::new(section.routes.iter().map(|(route, price)| (route.as_str(), price.as_str())))
        .with_context(|| format!("{} [proxy.routes]", args.config.display()))?;
    let database_url = args.database_url.unwrap_or(file.database_url);
    let rpc_url = args.rpc_url.unwrap_or(file.rpc_url);
    let redis_url = args.redis_url.or(section.redis_url.take());

    let store = Store::connect(&database_url).await.context("connecting to the database")?;
    let validator =
        Validator::connect(read_provider(&rpc_url)?, file.validator).await.context("reaching the validator")?;
    let config = GatewayConfig {
        domain: validator.domain().clone(),
        asset: validator.usdc(),
        pay_to: file.payee,
        max_timeout_seconds: section.timeout_secs,
    };
    let directory = StoreDirectory::new(store.clone());
    // Nobody subscribes to a proxy's notifier: live updates come from `serve`. The rules'
    // mode: `enforce` freezes on a spike or a burst, `shadow` only alerts (for load tests, or
    // to watch the rules before trusting them).
    let rules = RuleConfig { mode: section.rules, ..RuleConfig::default() };
    let mut engine = RuleEngine::new(store.clone(), rules, Notifier::default(), None);
    if let Some(key) = &args.guardian_key {
        let key: SigningKey = key.parse().context("OPENTAB_GUARDIAN_KEY is not a private key")?;
        let signer = tx_signer(&key)?;
        if file.rule_guardian != Some(signer.address()) {
            tracing::warn!(guardian = %signer.address(), "OPENTAB_GUARDIAN_KEY is not the file's rule_guardian: owners are shown another guardian");
        }
        let as_guardian = validator.with_provider(signing_provider(&rpc_url, signer.clone())?);
        engine = engine.with_guardian(Guardian::new(as_guardian, signer.address()));
    }
    let ledger = RuledLedger::new(StoreLedger::new(store.clone(), Notifier::default()), Arc::new(engine));
    let max_body = usize::try_from(section.max_body_bytes).unwrap_or(usize::MAX);
    let forward = upstream.clone().map(|u| Forward::new(u, Duration::from_secs(section.timeout_secs), max_body));
    let secret = args.gateway_secret.as_deref();
    let ((app, gateway_metrics), counters) = match &redis_url {
        Some(url) => {
            // Budgets are per (owner, payee): an owner's served total at one payee's gateways must
            // never count against its tab with another payee sharing the Redis.
            let prefix = format!("{}:{:#x}", section.redis_prefix, file.payee);
            let counters = RedisCounters::connect(url, &prefix)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))
                .context("connecting to Redis")?
                .with_source(Arc::new(StoreCounterSource::new(store.clone())));
            (
                app(config, pricing, directory.clone(), counters, ledger, forward, secret),
                format!("Redis {}", opentab_core::redact_url(url)),
            )
        }
        None => {
            let counters = InProcessCounters::default();
            let restored = restore_counters(&store, &counters).await.context("rebuilding counters from the ledger")?;
            tracing::info!(keys = restored, "in-process counters rebuilt from the usage ledger");
            let app = app(config, pricing, directory.clone(), counters, ledger, forward, secret);
            (app, "in-process (the only gateway of this payee on the database)".to_owned())
        }
    };

    // /healthz, /readyz (the database answers) and /metrics, answered by the proxy itself.
    let ops = Ops::new(store.clone(), None, Arc::new(Metrics::default())).with_metrics(gateway_metrics);
    let app = with_ops(app, ops);
    let socket =
        tokio::net::TcpListener::bind(section.listen).await.with_context(|| format!("binding {}", section.listen))?;
    let addr = socket.local_addr()?;
    let presence = crate::presence::Presence::claim(
        &store,
        file.payee,
        redis_url.is_some(),
        format!("opentab proxy at http://{addr}"),
    )
    .await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "opentab proxy")?;
    writeln!(out, "  url         http://{addr}")?;
    match &upstream {
        Some(upstream) => writeln!(out, "  upstream    {}", upstream.base)?,
        None => writeln!(out, "  upstream    none: charge API only")?,
    }
    if secret.is_some() {
        writeln!(out, "  charge API  http://{addr}/gateway/v1/charge and /void")?;
    }
    writeln!(out, "  counters    {counters}")?;
    writeln!(out, "  ops         http://{addr}/healthz /readyz /metrics (answered by the proxy, not forwarded)")?;
    for (route, price) in &section.routes {
        writeln!(out, "  priced      {route} = {price} USDC")?;
    }
    writeln!(out, "ready; Ctrl-C stops after the calls under way")?;
    out.flush()?;
    drop(out);
    // An upstream call may take up to the timeout; shutdown lets it finish and be answered.
    let drain = crate::server::drain_for(Duration::from_secs(section.timeout_secs));
    crate::server::serve(socket, app, shutdown_signal(), drain).await?;
    presence.release().await;
    store.close().await;
    Ok(())
}

/// The proxy's routes, and what its payment layer counts.
fn app<C, L>(
    config: GatewayConfig,
    pricing: Pricing,
    directory: StoreDirectory,
    counters: C,
    ledger: L,
    forward: Option<Forward>,
    secret: Option<&str>,
) -> (Router, ExtraMetrics)
where
    C: CounterStore + 'static,
    L: UsageLedger + 'static,
{
    let layer = PaymentLayer::new(Gateway { config, pricing, directory: directory.clone(), counters, ledger });
    let metrics = gateway_metrics(layer.metrics().clone(), directory);
    let api = secret.map(|secret| charge_api(layer.gateway().clone(), secret));
    let mut router = match forward {
        Some(forward) => forwarding(layer, forward),
        None => Router::new(),
    };
    if let Some(api) = api {
        router = router.merge(api);
    }
    (router, metrics)
}

/// Every request forwarded to the upstream, priced ones through `layer` (charged first, voided
/// when the upstream answers >= 400 or not at all). `opentab dev --upstream` serves this too.
pub(crate) fn forwarding<D, C, L>(layer: PaymentLayer<D, C, L>, forward: Forward) -> Router
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
pub(crate) struct Upstream {
    pub(crate) base: String,
    authority: axum::http::uri::Authority,
}

impl Upstream {
    pub(crate) fn parse(text: &str) -> anyhow::Result<Self> {
        let uri: Uri = text.parse().with_context(|| format!("upstream {text:?} is not a URL"))?;
        anyhow::ensure!(
            uri.scheme_str() == Some("http"),
            "upstream {text:?} must be http://host:port (the proxy sits beside the API; terminate TLS in front of the proxy)"
        );
        let authority = uri.authority().cloned().with_context(|| format!("upstream {text:?} has no host"))?;
        anyhow::ensure!(
            uri.path() == "/" || uri.path().is_empty(),
            "upstream {text:?} must not have a path: requests keep theirs"
        );
        Ok(Self { base: format!("http://{authority}"), authority })
    }
}

/// Where and how requests are forwarded.
#[derive(Debug, Clone)]
pub(crate) struct Forward {
    client: Client<HttpConnector, Body>,
    upstream: Upstream,
    timeout: Duration,
    /// The largest request body forwarded, in bytes.
    max_body: usize,
}

impl Forward {
    pub(crate) fn new(upstream: Upstream, timeout: Duration, max_body: usize) -> Self {
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
