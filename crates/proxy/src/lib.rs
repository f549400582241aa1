//! opentab's gateway node (DESIGN §4): the HTTP 402 gateway as a reverse proxy in front of an
//! API written in any language, and the storage-backed parts every gateway runs on.
//!
//! - [`ProxyNode`]: a proxy put together from [`ProxySettings`] (what `opentab proxy` runs).
//! - [`StoreDirectory`]: key state and tab budgets from memory, loaded in bulk and kept current
//!   by the store's change feed (PostgreSQL `LISTEN/NOTIFY`, or SQLite's change table), so a
//!   freeze made on any node refuses the next call on every node.
//! - [`StoreLedger`]: the durable usage ledger with group commit; [`StoreCounterSource`] and
//!   [`restore_counters`] rebuild counters from it; [`VoidSpool`] keeps on disk the voids the
//!   database could not take, until it can.
//! - [`forwarding`]: every request forwarded to the upstream, priced ones charged first.
//! - [`with_ops`]: `/healthz`, `/readyz` and Prometheus `/metrics`.
//! - [`Presence`]: a gateway announcing itself, so two sets of counters never charge one payee.
//!
//! The rule engine is `opentab-rules`, plugged in as the gateway's charge observer. This crate
//! links no REST API, mail client or OpenAPI generator: alert email leaves through the outbox
//! and is sent by `opentab serve`.

mod forward;
mod node;
mod ops;
mod presence;
mod spool;
mod storage;

pub use forward::{DEFAULT_MAX_BODY, DEFAULT_TIMEOUT, Forward, Upstream, forwarding};
pub use node::{ProxyNode, ProxySettings, gateway_app, keep_draining};
pub use ops::{ExtraMetrics, Metrics, Ops, gateway_metrics, with_ops};
pub use presence::Presence;
pub use spool::VoidSpool;
pub use storage::{DrainedVoid, StoreCounterSource, StoreDirectory, StoreLedger, restore_counters};

/// What can stop a proxy from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database failed.
    #[error("the database: {0}")]
    Store(#[from] opentab_store::Error),
    /// The chain could not be reached, or a key is unusable.
    #[error("the chain: {0}")]
    Chain(#[from] opentab_chain::Error),
    /// The void spool's directory cannot be used.
    #[error("the void spool in {}: {source}", dir.display())]
    Spool {
        /// The directory.
        dir: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The rule engine could not load.
    #[error("the rule engine: {0}")]
    Rules(#[from] opentab_rules::Error),
    /// The counter store could not be reached.
    #[error("the counters: {0}")]
    Counters(opentab_gateway::Unavailable),
    /// The voids spooled by an earlier run could not be recorded.
    #[error("recording the spooled voids: {0}")]
    Spooled(opentab_gateway::Unavailable),
    /// A setting is unusable.
    #[error("{0}")]
    Config(String),
    /// Another gateway with other counters charges this payee's keys.
    #[error("{0}")]
    AnotherGateway(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Unix seconds now.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
