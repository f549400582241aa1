//! Serving a router on a socket until a shutdown signal, for `dev`, `serve` and `proxy`, with the
//! limits that keep hostile clients from taking the process down: a deadline for reading a
//! request's headers (slowloris), and a cap on open connections below the process's file
//! descriptor limit (past it, further connections wait in the listen backlog until one closes).
//!
//! `OPENTAB_HEADER_READ_TIMEOUT_SECS` (default 10) and `OPENTAB_MAX_CONNECTIONS` (default half
//! the process's open-file limit, between 64 and 4,096) override them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::ConnectInfo;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tower::ServiceExt;

/// How long draining in-flight requests may take at shutdown, at least.
pub(crate) const DRAIN: Duration = Duration::from_secs(30);

/// How long to drain a server whose requests may each take up to `longest`: cutting a paid
/// call short at shutdown would leave it charged and unanswered, so the drain outlasts it.
pub(crate) fn drain_for(longest: Duration) -> Duration {
    DRAIN.max(longest.saturating_add(Duration::from_secs(5)))
}

/// The connection limits of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// A request's headers must arrive within this, or the connection is closed.
    pub(crate) header_read_timeout: Duration,
    /// At most this many connections are open at once.
    pub(crate) max_connections: usize,
}

impl Limits {
    /// The defaults, overridden from the environment.
    pub(crate) fn from_env() -> anyhow::Result<Self> {
        let number = |name: &str| -> anyhow::Result<Option<u64>> {
            std::env::var(name)
                .ok()
                .map(|text| {
                    text.trim().parse::<u64>().with_context(|| format!("{name}={text:?} is not a whole number"))
                })
                .transpose()
        };
        let header_read_timeout = Duration::from_secs(number("OPENTAB_HEADER_READ_TIMEOUT_SECS")?.unwrap_or(10).max(1));
        let max_connections = match number("OPENTAB_MAX_CONNECTIONS")? {
            Some(n) => usize::try_from(n.max(1)).unwrap_or(usize::MAX),
            None => open_file_limit().map_or(512, |limit| (limit / 2).clamp(64, 4_096)),
        };
        Ok(Self { header_read_timeout, max_connections })
    }
}

/// The process's soft limit on open files, where the platform tells (Linux's /proc).
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets in-flight requests finish
/// for up to `drain`. Each request carries the peer's address (`ConnectInfo<SocketAddr>`).
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> anyhow::Result<()> {
    let limits = Limits::from_env()?;
    tracing::debug!(?limits, "serving");
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        // Wait for a free slot before accepting: a client over the cap stays in the backlog.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.context("the connection limit closed")?,
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors or a connection reset before accept: back off.
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            app.clone().oneshot(req.map(axum::body::Body::new))
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain) => tracing::warn!("requests still running after {drain:?}; stopping anyway"),
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drain_outlasts_the_longest_request() {
        assert_eq!(
            drain_for(Duration::from_secs(60)),
            Duration::from_secs(65),
            "the proxy's default upstream deadline"
        );
        assert_eq!(drain_for(Duration::from_secs(1)), DRAIN, "never shorter than the default");
        assert_eq!(drain_for(Duration::MAX), Duration::MAX);
    }
}
