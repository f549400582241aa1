//! opentab's session-key service.
//!
//! - [`ChainListener`]: follows the validator's events from the cursor saved in storage, a
//!   confirmation depth behind the tip, and applies each update (reorg rollbacks included)
//!   to storage in one transaction together with the new cursor.
//! - [`api`]: the REST API (`/api/auth/*`, `/api/session-keys`, `/api/tabs`) with
//!   Sign-In with Ethereum; every route serves the signed-in owner's data only.
//! - [`StoreDirectory`], [`StoreLedger`], [`restore_counters`]: the gateway's key lookups,
//!   durable usage ledger and counter rebuild, backed by storage.
//! - [`RuleEngine`], [`RuledLedger`], [`Guardian`]: the rule engine behind the gateway's
//!   ledger (spike and burst freeze a key at once, on-chain too through a guardian; low
//!   balance warns; webhooks and email).
//! - [`with_ops`]: `/healthz`, `/readyz` and Prometheus `/metrics` beside the API.

pub mod api;
mod directory;
mod error;
mod listener;
mod notify;
mod ops;
mod rules;

pub use directory::{StoreCounterSource, StoreDirectory, StoreLedger, restore_counters};
pub use error::{Error, Result};
pub use listener::{ChainListener, ListenerConfig};
pub use notify::{Change, MAX_STREAMS_PER_OWNER, Notifier, TooManyStreams};
pub use ops::{ExtraMetrics, Metrics, Ops, gateway_metrics, with_ops};
pub use rules::{Guardian, Mailer, RuleEngine, RuledLedger};

/// Unix seconds now: the one clock of this crate (the core takes `now` as an argument).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
