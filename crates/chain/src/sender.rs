//! Transactions from one account, one at a time: the nonce of every transaction this process
//! sends from an account is chosen under that account's lock, read from the node, and held until
//! the node has the transaction.
//!
//! Why a lock: the relayer, the rule engine's guardian and the settlement worker may share an
//! account, and each sends whenever it needs to. Reading the node's nonce in each of them at
//! once gives two transactions the same nonce; one is refused ("nonce too low") or replaces the
//! other. Why the node's count rather than a counter kept here: a transaction the node never
//! took (a failed send), or one a reorganisation dropped, leaves a counter ahead of the chain,
//! and every later transaction would wait behind the gap. The node's pending count is where
//! the account really stands, so each send resynchronises by itself.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use alloy::contract::{CallBuilder, CallDecoder};
use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::primitives::Address;
use alloy::providers::{DynProvider, PendingTransactionBuilder, Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;

use crate::{Error, Result};

/// A provider that signs as one account, with the turn every send from that account takes.
#[derive(Debug, Clone)]
pub struct SigningProvider {
    provider: DynProvider,
    sender: Sender,
}

/// The right to send from an account, shared by every [`SigningProvider`] of the account on the
/// same RPC endpoint in this process.
#[derive(Debug, Clone)]
pub struct Sender {
    account: Address,
    turn: Turn,
}

/// One lock per (RPC endpoint, account): handles made apart (the relayer's, the guardian's,
/// the settler's) still take turns.
static TURNS: LazyLock<Mutex<HashMap<(String, Address), Turn>>> = LazyLock::new(Mutex::default);

/// An account's turn: held from reading its nonce until the node has the transaction.
type Turn = Arc<tokio::sync::Mutex<()>>;

/// A provider that signs transactions with `signer`, talking JSON-RPC over HTTP to `rpc_url`;
/// its sends through a [`crate::Validator`] take the account's turn (see the module docs).
pub fn signing_provider(rpc_url: &str, signer: PrivateKeySigner) -> Result<SigningProvider> {
    let url = rpc_url.parse().map_err(|_| Error::InvalidRpcUrl(opentab_core::redact_url(rpc_url)))?;
    crate::install_tls_provider();
    let account = signer.address();
    let provider = ProviderBuilder::new()
        .disable_recommended_fillers()
        .with_gas_estimation()
        // Only for transactions sent around the turn (contract deployment): reads the node's
        // count each time, never a cached one.
        .with_simple_nonce_management()
        .fetch_chain_id()
        .wallet(EthereumWallet::from(signer))
        .connect_http(url)
        .erased();
    let turn = {
        // A poisoned map only means another thread panicked while inserting: the map is fine.
        let mut turns = TURNS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        turns.entry((rpc_url.to_owned(), account)).or_default().clone()
    };
    Ok(SigningProvider { provider, sender: Sender { account, turn } })
}

impl SigningProvider {
    /// The account it signs as.
    pub const fn account(&self) -> Address {
        self.sender.account
    }

    /// The underlying provider.
    pub const fn provider(&self) -> &DynProvider {
        &self.provider
    }
}

/// A provider a [`crate::Validator`] can be bound to: read-only ([`DynProvider`]), or one that
/// signs ([`SigningProvider`], whose sends take the account's turn).
pub trait ValidatorProvider {
    /// The provider, and the sender when it signs.
    fn into_parts(self) -> (DynProvider, Option<Sender>);
}

impl ValidatorProvider for DynProvider {
    fn into_parts(self) -> (DynProvider, Option<Sender>) {
        (self, None)
    }
}

impl ValidatorProvider for SigningProvider {
    fn into_parts(self) -> (DynProvider, Option<Sender>) {
        (self.provider, Some(self.sender))
    }
}

impl Sender {
    /// Sends `call` from this account: gas is estimated first (a call that would revert fails
    /// here and takes no nonce), then, in the account's turn, the nonce is read from the node
    /// and the transaction handed to it.
    pub(crate) async fn send<D: CallDecoder>(
        &self,
        call: CallBuilder<&DynProvider, D>,
    ) -> Result<PendingTransactionBuilder<alloy::network::Ethereum>> {
        let call = call.from(self.account);
        let gas = call.estimate_gas().await?;
        let provider = call.provider;
        let _turn = self.turn.lock().await;
        let nonce = provider.get_transaction_count(self.account).pending().await?;
        let mut request = call.into_transaction_request();
        request.set_nonce(nonce);
        request.set_gas_limit(gas);
        Ok(provider.send_transaction(request).await?)
    }
}
