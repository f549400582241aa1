//! opentab's domain core: the rules of the product with no I/O.
//!
//! - [`Usdc`]: amounts in USDC base units (6 decimals), checked arithmetic, decimal-string serde.
//! - [`SessionKey`]: the on-chain state of a session key mirrored off-chain, and its
//!   [`KeyStatus`] and settlement window, computed exactly as `SessionKeyValidator` does.
//! - [`eip712`]: the typed messages the contract verifies (vouchers, registration, key actions)
//!   and their EIP-712 digests, identical to the contract's.
//! - [`ValidatorEvent`]: the contract's state changes as domain events, folded into
//!   [`SessionKey`] and [`Tab`] state (storage re-folds after a reorg).
//! - [`siwe`]: Sign-In with Ethereum (EIP-4361) message parsing and verification.
//! - [`charge`]: the gateway's charge rule (served / best voucher / limit / owner's tab) as a
//!   pure function the counter stores run atomically.
//! - [`rules`]: the rule engine's rules (spike, rate, low balance), each firing once per
//!   crossing.
//! - [`settlement`]: when a key is settled (threshold, or at once when it stops) and how
//!   failed settlements back off.
//! - [`signature`]: secp256k1 signing and recovery through libsecp256k1 (the gateway's hot path).
//! - [`x402`]: the HTTP 402 wire format (x402 v2, `session` scheme) shared by the gateway and
//!   the paying clients.
//!
//! Nothing here touches a network, a clock or a database: callers pass `now` and state in.

mod amount;
pub mod charge;
pub mod eip712;
mod error;
mod events;
pub mod rules;
mod session_key;
pub mod settlement;
pub mod signature;
pub mod siwe;
pub mod x402;

pub use alloy_primitives::{Address, B256, U256, address, eip191_hash_message, keccak256};
pub use amount::{SETTLEMENT_THRESHOLD, Usdc, UsdcDisplay};
pub use eip712::{ContractDomain, Voucher};
pub use error::{Error, Result};
pub use events::{SkipReason, Tab, ValidatorEvent};
pub use session_key::{GRACE_DEFAULT_SECS, KeyStatus, SessionKey};
pub use signature::{Signature, SigningKey};
pub use siwe::format_rfc3339;
