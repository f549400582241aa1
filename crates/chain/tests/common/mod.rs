//! A fresh anvil with the contracts deployed and three funded roles, for each test.

#![allow(dead_code, unreachable_pub)]

use std::time::{SystemTime, UNIX_EPOCH};

use opentab_chain::{
    Address, Anvil, AnvilConfig, Deployment, KeyTerms, Validator, deploy_dev_contracts, signing_provider,
};
use opentab_core::{SigningKey, Usdc};

pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// anvil's first three accounts: relayer/deployer, owner, payee.
pub struct Chain {
    pub anvil: Anvil,
    pub deployment: Deployment,
    pub relayer: Validator,
    pub owner: Validator,
    pub owner_key: SigningKey,
    pub payee: Address,
}

pub async fn chain() -> TestResult<Chain> {
    let anvil = Anvil::spawn(AnvilConfig::default())?;
    let rpc = anvil.endpoint();
    let relayer_provider = signing_provider(&rpc, anvil.signer(0)?)?;
    let deployment = deploy_dev_contracts(&relayer_provider, &rpc, 86_400).await?;
    let relayer = Validator::connect(relayer_provider, deployment.validator).await?;
    let owner_key = SigningKey::from_bytes(&anvil.keys()[1])?;
    let owner = relayer.with_provider(signing_provider(&rpc, anvil.signer(1)?)?);
    let payee = anvil.signer(2)?.address();
    // The payee lets the relayer settle for it (only the payee and its settlers may settle).
    let as_payee = relayer.with_provider(signing_provider(&rpc, anvil.signer(2)?)?);
    as_payee.set_settler(anvil.signer(0)?.address(), true).await?;
    Ok(Chain { anvil, deployment, relayer, owner, owner_key, payee })
}

impl Chain {
    /// Mints `amount` to the owner and deposits it into its tab with the payee.
    pub async fn fund_owner(&self, amount: Usdc) -> TestResult {
        self.owner.mint_test_usdc(self.owner_key.address(), amount).await?;
        self.owner.deposit(self.payee, amount).await?;
        Ok(())
    }

    /// Registers a fresh session key for the owner paying the payee.
    pub async fn new_key(&self, limit: Usdc) -> TestResult<SigningKey> {
        let key = SigningKey::random();
        self.owner.register_session_key(&self.terms(&key, limit)).await?;
        Ok(key)
    }

    pub fn terms(&self, key: &SigningKey, limit: Usdc) -> KeyTerms {
        KeyTerms { session_key: key.address(), payee: self.payee, limit, valid_after: 0, valid_until: now() + 3_600 }
    }
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}
