//! opentab's rule engine (DESIGN §4).
//!
//! - [`RuleEngine`] consumes the gateway's charge events ([`opentab_gateway::ChargeObserver`]):
//!   it keeps each key's activity in memory, loaded for every key at once when it starts, and
//!   applies the rules of [`opentab_core::rules`] to every charge, in the charge path, under the
//!   key's settings (the deployment's seed, its owner's defaults, the key's overrides, kept in
//!   memory and refreshed from the store's change feed). A spike
//!   or a burst freezes the key (in `enforce` mode) before the call's answer leaves, so the
//!   key's next call is refused; low balance only warns. Each crossing is recorded with its
//!   numbers, in one transaction with its webhook, its email and (for owners who made this
//!   deployment their guardian) an on-chain freeze, all three left in the outbox.
//! - [`Guardian`] carries out the on-chain freezes from the outbox, each within a timeout, in
//!   the process that holds the guardian's key.
//!
//! - [`sim`] drives the engine with simulated agents over simulated time (`opentab rules-sim`),
//!   to measure its false positives and how fast it stops what went wrong.
//!
//! Email is sent by `opentab_accumulator::EmailSender`, in the process configured with an SMTP
//! relay: a gateway node links no mail client.

mod engine;
mod guardian;
mod settings;
pub mod sim;

pub use engine::{Crossing, RuleEngine};
pub use guardian::Guardian;

/// What can stop the engine or the guardian.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] opentab_store::Error),
    /// The engine's key table was poisoned by a panic.
    #[error("the rule engine's key table is poisoned")]
    Poisoned,
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Unix seconds now.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
