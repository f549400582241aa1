//! What the store reads and writes, as typed records.

use opentab_core::charge::CounterEpoch;
use opentab_core::{Address, B256, SessionKey, Signature, U256, Usdc, ValidatorEvent};
use serde::Serialize;

/// Whether the chain has confirmed a key's registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainStatus {
    /// Requested through opentab; the registration is not (or no longer) confirmed.
    Pending,
    /// The registration event is confirmed.
    Registered,
}

impl ChainStatus {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Registered => "registered",
        }
    }
}

/// A key opentab is about to register (before the chain confirms it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewKey {
    /// The key's address.
    pub address: Address,
    /// Its owner.
    pub owner: Address,
    /// Its only payee.
    pub payee: Address,
    /// Its spend limit.
    pub limit: Usdc,
    /// Served from (unix seconds).
    pub valid_after: u64,
    /// Served until (unix seconds).
    pub valid_until: u64,
}

/// A session key as stored: the mirrored on-chain state and opentab's own marks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRecord {
    /// On-chain state (as requested, while pending).
    #[serde(flatten)]
    pub key: SessionKey,
    /// Whether the registration is confirmed.
    pub chain_status: ChainStatus,
    /// When an off-chain freeze took effect (before or without a mined transaction).
    pub frozen_offchain_at: Option<u64>,
    /// When the owner deleted it from the default list.
    pub deleted_at: Option<u64>,
    /// When opentab first stored it.
    pub created_at: u64,
    /// When it last changed.
    pub updated_at: u64,
}

/// A confirmed validator event with its position in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Block number.
    pub block_number: u64,
    /// Index of the log in the block.
    pub log_index: u64,
    /// Block hash.
    pub block_hash: B256,
    /// Emitting transaction.
    pub tx_hash: B256,
    /// The event.
    pub event: ValidatorEvent,
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// Unix seconds.
    pub at: u64,
    /// Who acted: an owner address, `chain`, `rules`, …
    pub actor: String,
    /// What was done: `key.create`, `key.freeze`, `chain.registered`, …
    pub action: String,
    /// What it was done to (usually a key address).
    pub subject: String,
    /// Free-form detail (JSON).
    pub detail: String,
}

impl AuditEntry {
    /// What `actor` did to session key `key` at `at`, with `detail`.
    pub fn about_key(at: u64, actor: Address, action: &str, key: Address, detail: &impl std::fmt::Display) -> Self {
        Self {
            at,
            actor: format!("{actor:#x}"),
            action: action.to_owned(),
            subject: format!("{key:#x}"),
            detail: detail.to_string(),
        }
    }
}

/// Whether a ledger row charged or voided (one type with the gateway's).
pub use opentab_core::charge::UsageKind;

/// What the usage ledger did with an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Committed. For an entry that named the counters' epoch: the epochs the ledger held as it
    /// committed (a void gives its price back to the counters of these epochs).
    Held(Option<CounterEpoch>),
    /// Not written: a charge whose key was frozen or revoked when its batch committed.
    KeyStopped,
    /// Not written: a charge taken on counters that were rebuilt from the ledger before its
    /// batch committed (the rebuild read a ledger without it). The epochs the ledger holds.
    Fenced(CounterEpoch),
    /// Not written: a void of a charge the ledger holds a void of already (a retry, or a
    /// spooled void replayed); it moves nothing.
    AlreadyVoided,
}

/// One row of the usage ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageEntry {
    /// Unix seconds.
    pub at: u64,
    /// The paying key.
    pub session_key: Address,
    /// Its owner.
    pub owner: Address,
    /// Charge or void.
    pub kind: UsageKind,
    /// The price charged or voided.
    pub amount: Usdc,
    /// `METHOD /pattern` of the route.
    pub route: String,
    /// The request it belongs to.
    pub request_id: String,
    /// The voucher presented (charges).
    pub voucher: U256,
    /// Its signature (charges).
    pub signature: Option<Signature>,
    /// The request's idempotency key, hashed with the session key (the gateway's
    /// `idempotency_hash`), if it had one.
    pub idempotency: Option<B256>,
    /// For a void, the id of the charge it undoes: a second void of the same charge is not
    /// recorded (and moves nothing).
    pub void_of: Option<B256>,
    /// The counters' epoch the charge was taken on (counters that rebuild while serving: Redis).
    /// A charge is refused if the ledger holds a later one; a void is told the epochs the
    /// ledger holds.
    pub epoch: Option<CounterEpoch>,
}

/// An idempotency key whose charge stands (not voided): a retry must still be refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveIdempotency {
    /// The session key it was charged to.
    pub session_key: Address,
    /// The hashed idempotency key.
    pub id: B256,
    /// When it was last charged (Unix seconds).
    pub charged_at: u64,
}

/// A key's running usage (kept with the ledger, cheap to read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyUsage {
    /// Charges less voids.
    pub served: Usdc,
    /// When it was last charged or voided (unix seconds).
    pub last_at: Option<u64>,
}

/// A key's usage as the ledger has it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UsageTotal {
    /// The key.
    pub session_key: Address,
    /// Its owner.
    pub owner: Address,
    /// Charges less voids.
    pub served: Usdc,
    /// The highest voucher presented.
    pub best: U256,
    /// Its signature.
    pub best_signature: Option<Signature>,
}
