//! opentab's session-key service.
//!
//! - [`ChainListener`]: follows the validator's events from the cursor saved in storage, a
//!   confirmation depth behind the tip, and applies each update (reorg rollbacks included)
//!   to storage in one transaction together with the new cursor.
//! - [`api`]: the REST API (`/api/auth/*`, `/api/session-keys`, `/api/tabs`) with
//!   Sign-In with Ethereum; every route serves the signed-in owner's data only.
//! - [`Notifier`]: the owners' live event streams (the web UI's updates).
//! - [`ServiceMetrics`]: the listener's and the settler's figures for `/metrics`.
//!
//! The gateway node (key cache, usage ledger, rule engine, `/metrics`) is `opentab-proxy`.

pub mod api;
mod error;
mod listener;
mod metrics;
mod notify;

pub use error::{Error, Result};
pub use listener::{ChainListener, ListenerConfig};
pub use metrics::ServiceMetrics;
pub use notify::{Change, MAX_STREAMS_PER_OWNER, Notifier, TooManyStreams};

/// Unix seconds now: the one clock of this crate (the core takes `now` as an argument).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
