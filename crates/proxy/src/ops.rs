//! Operations endpoints beside the API: `/healthz` (the process answers), `/readyz` (database
//! and chain answer) and Prometheus `/metrics`.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use opentab_chain::DynProvider;
use opentab_chain::alloy_provider::Provider;
use opentab_store::Store;

/// HTTP answers by status class, exported at `/metrics`. Cheap to share; relaxed atomics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// 2xx, 3xx, 4xx, 5xx.
    responses: [AtomicU64; 4],
}

impl Metrics {
    fn record(&self, status: StatusCode) {
        let class = (status.as_u16() / 100).clamp(2, 5) as usize - 2;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP opentab_http_responses_total HTTP responses by status class.");
        let _ = writeln!(out, "# TYPE opentab_http_responses_total counter");
        for (i, class) in ["2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
            let n = self.responses[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "opentab_http_responses_total{{class=\"{class}\"}} {n}");
        }
        out
    }
}

/// More metrics exported beside [`Metrics`] (a gateway's counters, its key cache, the chain
/// listener's progress), written in the Prometheus text format.
#[derive(Clone)]
pub struct ExtraMetrics(Arc<dyn Fn(&mut String) + Send + Sync>);

impl ExtraMetrics {
    /// Metrics written by `render`.
    pub fn new(render: impl Fn(&mut String) + Send + Sync + 'static) -> Self {
        Self(Arc::new(render))
    }
}

impl std::fmt::Debug for ExtraMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExtraMetrics")
    }
}

/// A gateway's counters and its key cache's hits and misses, for [`Ops::with_metrics`].
pub fn gateway_metrics(
    metrics: Arc<opentab_gateway::GatewayMetrics>,
    directory: crate::StoreDirectory,
) -> ExtraMetrics {
    ExtraMetrics::new(move |out| {
        metrics.render(out);
        let (hits, misses) = directory.cache_stats();
        for (name, help, value) in [
            ("opentab_gateway_key_cache_hits_total", "Paid calls whose key state came from memory.", hits),
            ("opentab_gateway_key_cache_misses_total", "Paid calls that read key state from the database.", misses),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        }
    })
}

/// What the readiness probe checks.
#[derive(Debug, Clone)]
pub struct Ops {
    store: Store,
    chain: Option<DynProvider>,
    metrics: Arc<Metrics>,
    extra: Vec<ExtraMetrics>,
}

impl Ops {
    /// Probes `store` and, if given, the chain behind `chain`.
    pub fn new(store: Store, chain: Option<DynProvider>) -> Self {
        Self { store, chain, metrics: Arc::default(), extra: Vec::new() }
    }

    /// Exports `extra` at `/metrics` too.
    #[must_use]
    pub fn with_metrics(mut self, extra: ExtraMetrics) -> Self {
        self.extra.push(extra);
        self
    }
}

/// `api` with the operations routes added and every answer counted.
pub fn with_ops(api: Router, ops: Ops) -> Router {
    let metrics = ops.metrics.clone();
    let ops_routes = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(ops);
    api.merge(ops_routes).layer(axum::middleware::from_fn(move |req: Request, next: Next| {
        let metrics = metrics.clone();
        async move {
            let response = next.run(req).await;
            metrics.record(response.status());
            response
        }
    }))
}

async fn readyz(State(ops): State<Ops>) -> Response {
    if let Err(err) = ops.store.ping().await {
        tracing::warn!(error = %err, "not ready: database");
        return (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response();
    }
    if let Some(chain) = &ops.chain
        && let Err(err) = chain.get_block_number().await
    {
        tracing::warn!(error = %err, "not ready: chain");
        return (StatusCode::SERVICE_UNAVAILABLE, "chain RPC unavailable\n").into_response();
    }
    (StatusCode::OK, "ready\n").into_response()
}

async fn metrics_text(State(ops): State<Ops>) -> Response {
    let mut text = ops.metrics.render();
    for extra in &ops.extra {
        (extra.0)(&mut text);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
