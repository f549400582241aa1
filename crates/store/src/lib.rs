//! opentab's storage: one repository over PostgreSQL (production) or SQLite (the embedded
//! default), through sqlx's `Any` driver so both run the same queries.
//!
//! - owners, session keys (on-chain state mirrored from events, plus opentab's own pending /
//!   off-chain-freeze / deleted marks), tabs per (owner, payee), the chain events and listener
//!   cursor, an append-only audit log, the usage ledger, settlement intents and the webhook
//!   outbox, and the rule settings owners chose;
//! - a feed of what changed about keys and tabs ([`Store::on_key_change`]), for gateway caches;
//! - versioned migrations per backend under `migrations/{postgres,sqlite}`, embedded in the
//!   binary and applied by [`Store::connect`].
//!
//! Feature `test-utils`: [`testing`], fresh PostgreSQL and SQLite databases for tests.
//!
//! Chain events are stored in order and the mirrored rows are folded from them with the core's
//! pure folds, so undoing a reorg is: delete the orphaned events, fold again.

mod alerts;
mod audit;
mod auth;
mod chain;
mod changes;
mod error;
mod gateways;
mod keys;
mod migrations;
mod owners;
mod rows;
mod rule_settings;
mod settlements;
mod store;
mod tabs;
#[cfg(feature = "test-utils")]
pub mod testing;
mod usage;
pub use usage::RebuildRead;

pub use alerts::{Alert, Effect, EffectKind, KeyActivity, NewAlert, NewEffect};
pub use audit::RELAY_SENT;
pub use chain::Touched;
pub use changes::{KeyChange, POLL_EVERY};
pub use error::{Error, Result};
pub use gateways::{GatewayClaim, LiveGateway};
pub use rows::{
    AuditEntry, ChainStatus, KeyRecord, KeyUsage, LiveIdempotency, NewKey, Recorded, StoredEvent, UsageEntry,
    UsageKind, UsageTotal,
};
pub use rule_settings::{RULES_SET, StoredRuleSettings};
pub use settlements::{Leased, NewSettlement, NewWebhook, OutboxEntry, Owed, Settlement, SettlementStatus};
pub use store::{Backend, Store, create_postgres_database};
