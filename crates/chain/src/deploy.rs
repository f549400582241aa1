//! Deploys the dev-chain contracts: a test USDC and a `SessionKeyValidator` bound to it.

use alloy::primitives::{Address, U256};
use alloy::providers::Provider;
use opentab_core::eip712::{DOMAIN_NAME, DOMAIN_VERSION};
use serde::{Deserialize, Serialize};

use crate::bindings::{SessionKeyValidator, TestUSDC};
use crate::{Error, Result, SigningProvider};

/// Where the contracts live; what `opentab chain up` writes as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    /// The chain, as an EIP-155 id (CAIP-2 `eip155:<chainId>`).
    pub chain_id: u64,
    /// The JSON-RPC endpoint it was deployed through.
    pub rpc_url: String,
    /// The token tabs hold.
    pub usdc: Address,
    /// The `SessionKeyValidator`.
    pub validator: Address,
    /// The validator's grace window in seconds.
    pub grace_seconds: u64,
    /// The block the validator was deployed in: where an event stream starts.
    pub deployed_at_block: u64,
}

impl Deployment {
    /// The CAIP-2 name of the chain, e.g. `eip155:31337`.
    pub fn network(&self) -> String {
        format!("eip155:{}", self.chain_id)
    }
}

/// Deploys [`TestUSDC`] and a validator with opentab's EIP-712 domain and `grace_seconds`,
/// from the provider's signer.
pub async fn deploy_dev_contracts(signing: &SigningProvider, rpc_url: &str, grace_seconds: u64) -> Result<Deployment> {
    let provider = signing.provider();
    let usdc = TestUSDC::deploy_builder(provider).send().await?;
    let usdc = receipt_address(usdc, "TestUSDC").await?.0;
    let validator = SessionKeyValidator::deploy_builder(
        provider,
        DOMAIN_NAME.to_owned(),
        DOMAIN_VERSION.to_owned(),
        usdc,
        U256::from(grace_seconds),
    )
    .send()
    .await?;
    let (validator, deployed_at_block) = receipt_address(validator, "SessionKeyValidator").await?;
    Ok(Deployment {
        chain_id: provider.get_chain_id().await?,
        rpc_url: rpc_url.to_owned(),
        usdc,
        validator,
        grace_seconds,
        deployed_at_block,
    })
}

async fn receipt_address(
    pending: alloy::providers::PendingTransactionBuilder<alloy::network::Ethereum>,
    name: &'static str,
) -> Result<(Address, u64)> {
    let tx = *pending.tx_hash();
    let receipt = pending.get_receipt().await.map_err(|source| Error::Pending { tx, source })?;
    let address = receipt.contract_address.ok_or(Error::NoContractAddress(name))?;
    Ok((address, receipt.block_number.unwrap_or_default()))
}
