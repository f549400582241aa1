//! opentab's chain adapter: everything that talks JSON-RPC to the chain, through alloy.
//!
//! - [`bindings`]: `SessionKeyValidator` and `TestUSDC` generated from the committed artifacts.
//! - [`deploy_dev_contracts`]: the dev chain's contracts, described by a [`Deployment`].
//! - [`Validator`]: a typed call for every contract function, each waiting for its receipt,
//!   reverts decoded into the contract's own errors.
//! - [`signing_provider`]: a provider that signs as one account; the transactions this process
//!   sends from an account take turns, each with the nonce the node gives it.
//! - [`EventStream`]: the contract's events from a persisted [`Cursor`], a confirmation depth
//!   behind the tip, with reorgs reported as rollbacks.
//! - [`Anvil`]: a local anvil child process on a free port, killed on drop.

mod anvil;
pub mod bindings;
mod deploy;
mod error;
mod events;
mod sender;
mod validator;

pub use alloy::primitives::{Address, B256, TxHash, U256};
pub use alloy::providers::{self as alloy_provider, DynProvider};
pub use anvil::{ANVIL_ENV, Anvil, AnvilConfig, find_anvil};
pub use deploy::{Deployment, deploy_dev_contracts};
pub use error::{Error, Result};
pub use events::{BlockRef, Cursor, EventStream, LoggedEvent, StreamConfig, TRAIL_LEN, Update};
pub use sender::{Sender, SigningProvider, ValidatorProvider, signing_provider};
pub use validator::{
    Claim, KeyAction, KeyTerms, SettleOutcome, TxOutcome, Validator, install_tls_provider, read_provider, tx_signer,
};
