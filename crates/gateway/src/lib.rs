//! opentab's HTTP 402 gateway (DESIGN §3), growing with the payment-path issue.
//!
//! - [`protocol`]: the x402 v2 HTTP transport with opentab's `session` scheme: the
//!   `PAYMENT-REQUIRED` challenge, the `PAYMENT-SIGNATURE` (and v1 `X-PAYMENT`) payload, the
//!   `PAYMENT-RESPONSE` receipt, base64-encoded JSON headers and the stable error codes.
//! - [`pricing`]: which routes cost what (`"POST /v1/chat/completions" = "0.002"`).
//! - [`decide`]: one paid request's decision (key state, voucher signature, atomic charge),
//!   over the [`KeyDirectory`] and [`CounterStore`] ports; [`InProcessCounters`] for the
//!   embedded default, [`RedisCounters`] (Lua scripts, owner hash tags) for production.
//! - [`PaymentLayer`]: the tower layer for axum/hyper services (402 challenge, charge before
//!   the handler, void on an error answer, `PAYMENT-RESPONSE` receipt), over
//!   [`Gateway::authorize`] and [`Gateway::void`].
//! - [`UsageLedger`]: the durable ledger port; a charge's answer waits for its row, which the
//!   ledger refuses ([`Recorded::KeyStopped`]) if its key was frozen meanwhile on any node.
//! - [`ChargeObserver`]: told of every durable charge and void before the answer leaves (the
//!   rule engine, `opentab-rules`, plugs in here).
//! - [`Unavailable`]: which dependency failed ([`Dependency`]) and why; the gateway then fails
//!   closed with a 503.
//! - [`GatewayMetrics`]: what the layer counts, for `/metrics`.
//! - [`charge_api`]: the same as an authenticated HTTP API (`charge` / `void`) for middleware in
//!   other languages (`packages/express`).

mod api;
mod counters;
mod error;
mod gateway;
mod layer;
mod metrics;
pub mod pricing;
/// The x402 wire format, from the core (clients use it without the gateway).
pub use opentab_core::x402 as protocol;
mod redis_counters;

pub use api::charge_api;
pub use counters::InProcessCounters;
pub use error::{Cause, CounterError, Dependency};
pub use gateway::{
    ChargeEvent, ChargeObserver, CounterStore, Decision, GatewayConfig, IDEMPOTENCY_TTL_SECS, KeyDirectory, KeyInfo,
    Paid, Recorded, Refusal, Unavailable, UsageKind, UsageLedger, UsageRecord, decide, idempotency_hash,
};
pub use layer::{Answer, Authorized, Charge, Gateway, PaymentHeaders, PaymentLayer, PaymentService, STALE_IDEMPOTENCY};
pub use metrics::{GatewayMetrics, Histogram};
pub use opentab_core::charge::CounterEpoch;
pub use redis_counters::{CLUSTER_SCHEME, CounterSource, RedisCounters, Restored, SourceFuture};
