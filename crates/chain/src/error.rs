//! The chain adapter's error type.

use std::path::PathBuf;

use alloy::primitives::Address;

use crate::bindings::SessionKeyValidator::SessionKeyValidatorErrors;

/// Everything that can go wrong talking to the chain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No anvil binary was found.
    #[error("anvil not found: run `npm ci --prefix contracts` (scripts/setup.sh does) or set OPENTAB_ANVIL")]
    AnvilNotFound,
    /// The anvil binary could not be started.
    #[error("could not start anvil at {binary}")]
    AnvilSpawn {
        /// The binary that was tried.
        binary: PathBuf,
        /// Why the OS refused.
        #[source]
        source: std::io::Error,
    },
    /// anvil started but never became ready.
    #[error("anvil at {binary} {reason}; its stderr said: {stderr}")]
    AnvilStart {
        /// The binary that was started.
        binary: PathBuf,
        /// What happened.
        reason: &'static str,
        /// The first lines anvil wrote to stderr.
        stderr: String,
    },
    /// anvil has fewer prefunded accounts than asked for.
    #[error("anvil has no prefunded account #{0}")]
    NoSuchAccount(usize),
    /// An RPC URL did not parse.
    #[error("invalid RPC URL {0:?}")]
    InvalidRpcUrl(String),
    /// The JSON-RPC endpoint failed or is unreachable.
    #[error("RPC request failed: {0}")]
    Rpc(#[from] alloy::transports::TransportError),
    /// The validator refused a call with one of its own errors.
    #[error("SessionKeyValidator reverted: {0:?}")]
    Reverted(SessionKeyValidatorErrors),
    /// A contract call failed for another reason (revert without a known error, encoding, RPC).
    #[error("contract call failed: {0}")]
    Contract(alloy::contract::Error),
    /// A transaction was sent but its receipt could not be obtained.
    #[error("transaction {tx} was sent but not confirmed: {source}")]
    Pending {
        /// The transaction hash.
        tx: alloy::primitives::TxHash,
        /// Why waiting failed.
        #[source]
        source: alloy::providers::PendingTransactionError,
    },
    /// A mined transaction reverted.
    #[error("transaction {0} reverted")]
    TxReverted(alloy::primitives::TxHash),
    /// A contract deployment produced no address.
    #[error("deployment of {0} produced no contract address")]
    NoContractAddress(&'static str),
    /// The chain reorganised deeper than the blocks the event stream remembers.
    #[error("reorg deeper than the {depth} remembered blocks below block {below}; resync from an earlier cursor")]
    ReorgTooDeep {
        /// How many block hashes the cursor keeps.
        depth: usize,
        /// The block whose hash no longer matches.
        below: u64,
    },
    /// A log from the validator did not decode as one of its events.
    #[error("undecodable log from {address} in block {block}: {reason}")]
    UndecodableLog {
        /// The emitting contract.
        address: Address,
        /// The block of the log.
        block: u64,
        /// Why it failed.
        reason: String,
    },
    /// A block the node reported a moment ago is gone (a reorg in progress).
    #[error("block {0} is missing from the node")]
    MissingBlock(u64),
    /// Reading or writing a cursor or deployment file failed.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// A cursor or deployment file holds invalid JSON.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: serde_json::Error,
    },
    /// An amount does not fit the range the contract or the core accepts.
    #[error(transparent)]
    Core(#[from] opentab_core::Error),
}

impl From<alloy::contract::Error> for Error {
    fn from(err: alloy::contract::Error) -> Self {
        match err.as_decoded_interface_error::<SessionKeyValidatorErrors>() {
            Some(decoded) => Self::Reverted(decoded),
            None => Self::Contract(err),
        }
    }
}

/// `Result` with the chain [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;
