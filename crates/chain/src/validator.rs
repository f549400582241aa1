//! Typed calls for every `SessionKeyValidator` function, each waiting for its receipt.

use alloy::contract::{CallBuilder, CallDecoder};
use alloy::primitives::{Address, B256, Bytes, TxHash, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use opentab_core::eip712::{
    self, FreezeSessionKey, RegisterSessionKey, RegisterSessionKeys, RevokeSessionKey, SetSettler, UnfreezeSessionKey,
};
use opentab_core::{ContractDomain, SessionKey, Signature, SigningKey, SkipReason, Tab, Usdc};

use crate::bindings::SessionKeyValidator::{self, SessionKeyValidatorInstance};
use crate::bindings::TestUSDC::{self, TestUSDCInstance};
use crate::sender::{Sender, ValidatorProvider};
use crate::{Error, Result};

/// A read-only provider for `rpc_url`.
pub fn read_provider(rpc_url: &str) -> Result<DynProvider> {
    let url = rpc_url.parse().map_err(|_| Error::InvalidRpcUrl(opentab_core::redact_url(rpc_url)))?;
    install_tls_provider();
    Ok(ProviderBuilder::new().connect_http(url).erased())
}

/// Chooses rustls' ring provider for the process: https RPC endpoints (Polygon, Amoy) and any
/// other reqwest client need one before the first client is built. Idempotent; the provider
/// functions call it themselves, and binaries call it first thing.
pub fn install_tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The `alloy` signer for a core [`SigningKey`] (owners and relayers send transactions).
pub fn tx_signer(key: &SigningKey) -> Result<PrivateKeySigner> {
    PrivateKeySigner::from_bytes(&key.to_bytes()).map_err(|_| Error::Core(opentab_core::Error::InvalidPrivateKey))
}

/// What a mined transaction reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxOutcome {
    /// Its hash.
    pub tx_hash: TxHash,
    /// The block it was mined in.
    pub block_number: u64,
    /// Gas it used, the 21 000 intrinsic gas included.
    pub gas_used: u64,
}

/// The terms of a session key, as registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyTerms {
    /// The key's address.
    pub session_key: Address,
    /// The one address it may pay.
    pub payee: Address,
    /// The most it may ever spend.
    pub limit: Usdc,
    /// Unix time from which it may be served.
    pub valid_after: u64,
    /// Unix time from which it may no longer be served.
    pub valid_until: u64,
}

/// A voucher to settle (for [`Validator::settle_batch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The session key that signed it.
    pub session_key: Address,
    /// What the key promised in total.
    pub cumulative_amount: U256,
    /// Its signature.
    pub signature: Signature,
}

/// What one `settle` or `settleBatch` transaction did, read from its receipt's logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettleOutcome {
    /// The mined transaction.
    pub tx: TxOutcome,
    /// Each key that was paid: what this transaction paid and the key's settled total after it.
    /// A short tab pays less than the voucher's increase; the rest stays claimable.
    pub paid: Vec<(Address, Usdc, Usdc)>,
    /// Each claim the batch skipped, and why (a single `settle` reverts instead).
    pub skipped: Vec<(Address, SkipReason)>,
}

impl SettleOutcome {
    /// What this transaction paid for `key`, if it paid anything.
    pub fn paid_for(&self, key: Address) -> Option<(Usdc, Usdc)> {
        self.paid.iter().find(|(k, ..)| *k == key).map(|&(_, amount, settled)| (amount, settled))
    }

    /// Why the batch skipped `key`'s claim, if it did.
    pub fn skipped_for(&self, key: Address) -> Option<SkipReason> {
        self.skipped.iter().find(|(k, _)| *k == key).map(|&(_, reason)| reason)
    }
}

/// One deployed validator, driven by the provider's signer.
#[derive(Debug, Clone)]
pub struct Validator {
    contract: SessionKeyValidatorInstance<DynProvider>,
    usdc: TestUSDCInstance<DynProvider>,
    domain: ContractDomain,
    grace: u64,
    /// Set when the provider signs: every transaction takes the account's turn.
    sender: Option<Sender>,
}

impl Validator {
    /// Connects to the validator at `address`, reading its chain id, token, domain and grace.
    pub async fn connect(provider: impl ValidatorProvider, address: Address) -> Result<Self> {
        let (provider, sender) = provider.into_parts();
        let contract = SessionKeyValidator::new(address, provider.clone());
        let chain_id = provider.get_chain_id().await?;
        let usdc = contract.USDC().call().await?;
        let grace = contract.GRACE().call().await?;
        let domain = contract.eip712Domain().call().await?;
        Ok(Self {
            usdc: TestUSDC::new(usdc, provider),
            domain: ContractDomain::new(domain.name, domain.version, chain_id, address),
            grace: u64::try_from(grace).unwrap_or(u64::MAX),
            contract,
            sender,
        })
    }

    /// The validator's address.
    pub fn address(&self) -> Address {
        *self.contract.address()
    }

    /// The address of the token tabs hold.
    pub fn usdc(&self) -> Address {
        *self.usdc.address()
    }

    /// The EIP-712 domain vouchers and owner actions are signed in.
    pub const fn domain(&self) -> &ContractDomain {
        &self.domain
    }

    /// The grace window in seconds.
    pub const fn grace(&self) -> u64 {
        self.grace
    }

    /// The provider (and signer) this handle sends with.
    pub fn provider(&self) -> &DynProvider {
        self.contract.provider()
    }

    /// This handle bound to another provider (another signer), same deployment.
    pub fn with_provider(&self, provider: impl ValidatorProvider) -> Self {
        let (provider, sender) = provider.into_parts();
        Self {
            contract: SessionKeyValidator::new(self.address(), provider.clone()),
            usdc: TestUSDC::new(self.usdc(), provider),
            domain: self.domain.clone(),
            grace: self.grace,
            sender,
        }
    }

    // -------------------------------------------------------------------- tabs

    /// Approves the validator for `amount` and deposits it into the sender's tab with `payee`.
    pub async fn deposit(&self, payee: Address, amount: Usdc) -> Result<TxOutcome> {
        self.transact(self.usdc.approve(self.address(), amount.to_u256())).await?;
        self.transact(self.contract.deposit(payee, amount.to_u256())).await
    }

    /// Mints test USDC to `to` (dev chain only: [`TestUSDC`] lets anyone mint).
    pub async fn mint_test_usdc(&self, to: Address, amount: Usdc) -> Result<TxOutcome> {
        self.transact(self.usdc.mint(to, amount.to_u256())).await
    }

    /// The USDC balance of `account`.
    pub async fn usdc_balance(&self, account: Address) -> Result<U256> {
        Ok(self.usdc.balanceOf(account).call().await?)
    }

    /// Asks to withdraw `amount` from the sender's tab with `payee` once the payee's grace has
    /// passed.
    pub async fn request_withdrawal(&self, payee: Address, amount: Usdc) -> Result<TxOutcome> {
        self.transact(self.contract.requestWithdrawal(payee, amount.to_u256())).await
    }

    /// Drops the sender's pending withdrawal from its tab with `payee`.
    pub async fn cancel_withdrawal(&self, payee: Address) -> Result<TxOutcome> {
        self.transact(self.contract.cancelWithdrawal(payee)).await
    }

    /// Completes the sender's pending withdrawal from its tab with `payee`.
    pub async fn withdraw(&self, payee: Address) -> Result<TxOutcome> {
        self.transact(self.contract.withdraw(payee)).await
    }

    /// Lets `guardian` freeze the sender's keys.
    pub async fn set_guardian(&self, guardian: Address) -> Result<TxOutcome> {
        self.transact(self.contract.setGuardian(guardian)).await
    }

    // ---------------------------------------------------------------- settlers

    /// Lets `settler` settle vouchers payable to the sender (the payee), or stops it.
    pub async fn set_settler(&self, settler: Address, allowed: bool) -> Result<TxOutcome> {
        self.transact(self.contract.setSettler(settler, allowed)).await
    }

    /// Signs, as `payee` with its current nonce, its consent to let `settler` settle for it
    /// (or stop it), for a relayer to submit with [`Validator::set_settler_with_sig`].
    pub async fn sign_set_settler(
        &self,
        payee: &SigningKey,
        settler: Address,
        allowed: bool,
        deadline: u64,
    ) -> Result<(SetSettler, Signature)> {
        let nonce = self.nonce_of(payee.address()).await?;
        let message = SetSettler { payee: payee.address(), settler, allowed, nonce, deadline: U256::from(deadline) };
        let signature = payee.sign_digest(&self.domain.digest(&message));
        Ok((message, signature))
    }

    /// Relays a payee-signed `SetSettler` (the sender pays the gas).
    pub async fn set_settler_with_sig(&self, message: &SetSettler, signature: &Signature) -> Result<TxOutcome> {
        self.transact(self.contract.setSettlerWithSig(
            message.payee,
            message.settler,
            message.allowed,
            message.nonce,
            message.deadline,
            sig_bytes(signature),
        ))
        .await
    }

    /// Whether `settler` may settle vouchers payable to `payee` (the payee itself always may).
    pub async fn is_settler(&self, payee: Address, settler: Address) -> Result<bool> {
        Ok(settler == payee || self.contract.isSettler(payee, settler).call().await?)
    }

    // ------------------------------------------------------------ registration

    /// Registers a key for the sender.
    pub async fn register_session_key(&self, terms: &KeyTerms) -> Result<TxOutcome> {
        let (after, until) = window(terms)?;
        self.transact(self.contract.registerSessionKey(
            terms.session_key,
            terms.payee,
            u128::from(terms.limit.base_units()),
            after,
            until,
        ))
        .await
    }

    /// Registers many keys for the sender in one transaction, all or nothing (a fleet of agents;
    /// about 71,000 gas a key, against 71,600 plus a transaction's 21,000 one by one).
    pub async fn register_session_keys(&self, keys: &[KeyTerms]) -> Result<TxOutcome> {
        let keys = keys.iter().map(|terms| Ok(contract_terms(&signed_terms(terms)?))).collect::<Result<Vec<_>>>()?;
        self.transact(self.contract.registerSessionKeys(keys)).await
    }

    /// The message an owner signs to have a relayer register all of `keys`, in this order, in
    /// one transaction.
    pub fn registrations_message(
        &self,
        owner: Address,
        keys: &[KeyTerms],
        nonce: U256,
        deadline: u64,
    ) -> Result<RegisterSessionKeys> {
        Ok(RegisterSessionKeys {
            owner,
            keys: keys.iter().map(signed_terms).collect::<Result<_>>()?,
            nonce,
            deadline: U256::from(deadline),
        })
    }

    /// Signs `keys` as `owner` (reading its current nonce) for one relayed batch registration.
    pub async fn sign_registrations(
        &self,
        owner: &SigningKey,
        keys: &[KeyTerms],
        deadline: u64,
    ) -> Result<(RegisterSessionKeys, Signature)> {
        let nonce = self.nonce_of(owner.address()).await?;
        let message = self.registrations_message(owner.address(), keys, nonce, deadline)?;
        let signature = owner.sign_digest(&self.domain.digest(&message));
        Ok((message, signature))
    }

    /// Relays an owner-signed batch registration, all or nothing (the sender pays the gas:
    /// about 71,600 a key, one signature check and one nonce for the batch).
    pub async fn register_session_keys_with_sig(
        &self,
        message: &RegisterSessionKeys,
        signature: &Signature,
    ) -> Result<TxOutcome> {
        self.transact(self.contract.registerSessionKeysWithSig(
            message.keys.iter().map(contract_terms).collect(),
            message.owner,
            message.nonce,
            message.deadline,
            sig_bytes(signature),
        ))
        .await
    }

    /// The message an owner signs to have a relayer register `terms` for it.
    pub fn registration_message(
        &self,
        owner: Address,
        terms: &KeyTerms,
        nonce: U256,
        deadline: u64,
    ) -> Result<RegisterSessionKey> {
        let (valid_after, valid_until) = window(terms)?;
        Ok(RegisterSessionKey {
            owner,
            sessionKey: terms.session_key,
            payee: terms.payee,
            limit: u128::from(terms.limit.base_units()),
            validAfter: valid_after,
            validUntil: valid_until,
            nonce,
            deadline: U256::from(deadline),
        })
    }

    /// Signs `terms` as `owner` (reading its current nonce) for a relayed registration.
    pub async fn sign_registration(
        &self,
        owner: &SigningKey,
        terms: &KeyTerms,
        deadline: u64,
    ) -> Result<(RegisterSessionKey, Signature)> {
        let nonce = self.nonce_of(owner.address()).await?;
        let message = self.registration_message(owner.address(), terms, nonce, deadline)?;
        let signature = owner.sign_digest(&self.domain.digest(&message));
        Ok((message, signature))
    }

    /// Relays an owner-signed registration (the sender pays the gas).
    pub async fn register_session_key_with_sig(
        &self,
        message: &RegisterSessionKey,
        signature: &Signature,
    ) -> Result<TxOutcome> {
        self.transact(self.contract.registerSessionKeyWithSig(
            message.sessionKey,
            message.payee,
            message.limit,
            message.validAfter,
            message.validUntil,
            message.owner,
            message.nonce,
            message.deadline,
            sig_bytes(signature),
        ))
        .await
    }

    // ------------------------------------------------------- freeze and revoke

    /// Freezes `key` (sender: its owner or the owner's guardian).
    pub async fn freeze(&self, key: Address) -> Result<TxOutcome> {
        self.transact(self.contract.freeze(key)).await
    }

    /// Lifts a freeze (sender: the owner).
    pub async fn unfreeze(&self, key: Address) -> Result<TxOutcome> {
        self.transact(self.contract.unfreeze(key)).await
    }

    /// Revokes `key` for good (sender: the owner).
    pub async fn revoke(&self, key: Address) -> Result<TxOutcome> {
        self.transact(self.contract.revoke(key)).await
    }

    /// Signs a relayed key action as `owner` with its current nonce: returns (nonce, signature).
    pub async fn sign_key_action(
        &self,
        owner: &SigningKey,
        action: KeyAction,
        key: Address,
        deadline: u64,
    ) -> Result<(U256, Signature)> {
        let nonce = self.nonce_of(owner.address()).await?;
        let deadline = U256::from(deadline);
        let digest = match action {
            KeyAction::Freeze => self.domain.digest(&FreezeSessionKey { sessionKey: key, nonce, deadline }),
            KeyAction::Unfreeze => self.domain.digest(&UnfreezeSessionKey { sessionKey: key, nonce, deadline }),
            KeyAction::Revoke => self.domain.digest(&RevokeSessionKey { sessionKey: key, nonce, deadline }),
        };
        Ok((nonce, owner.sign_digest(&digest)))
    }

    /// Relays an owner-signed freeze, unfreeze or revoke.
    pub async fn relay_key_action(
        &self,
        action: KeyAction,
        key: Address,
        nonce: U256,
        deadline: u64,
        signature: &Signature,
    ) -> Result<TxOutcome> {
        let (deadline, sig) = (U256::from(deadline), sig_bytes(signature));
        match action {
            KeyAction::Freeze => self.transact(self.contract.freezeWithSig(key, nonce, deadline, sig)).await,
            KeyAction::Unfreeze => self.transact(self.contract.unfreezeWithSig(key, nonce, deadline, sig)).await,
            KeyAction::Revoke => self.transact(self.contract.revokeWithSig(key, nonce, deadline, sig)).await,
        }
    }

    // -------------------------------------------------------------- settlement

    /// Settles one voucher (sender: the key's payee or a settler it authorised). The payee
    /// receives the voucher's increase over what was settled, or what the tab holds if less.
    pub async fn settle(&self, key: Address, cumulative_amount: U256, signature: &Signature) -> Result<SettleOutcome> {
        self.transact_logged(self.contract.settle(key, cumulative_amount, sig_bytes(signature))).await
    }

    /// Settles vouchers of keys payable to `payee` in one transaction (sender: the payee or a
    /// settler it authorised). Best-effort: a claim that cannot pay is skipped (see
    /// [`SettleOutcome::skipped`]) and the others still settle.
    pub async fn settle_batch(&self, payee: Address, claims: &[Claim]) -> Result<SettleOutcome> {
        let claims = claims
            .iter()
            .map(|c| SessionKeyValidator::Claim {
                sessionKey: c.session_key,
                cumulativeAmount: c.cumulative_amount,
                signature: sig_bytes(&c.signature),
            })
            .collect();
        self.transact_logged(self.contract.settleBatch(payee, claims)).await
    }

    // ------------------------------------------------------------------- views

    /// The key's on-chain state, or `None` if it was never registered.
    pub async fn session_key(&self, key: Address) -> Result<Option<SessionKey>> {
        let k = self.contract.sessionKeyOf(key).call().await?;
        if k.owner == Address::ZERO {
            return Ok(None);
        }
        let nonzero = |t: u64| (t != 0).then_some(t);
        Ok(Some(SessionKey {
            address: key,
            owner: k.owner,
            payee: k.payee,
            limit: Usdc::try_from(U256::from(k.limit))?,
            valid_after: k.validAfter.to::<u64>(),
            valid_until: k.validUntil.to::<u64>(),
            frozen_at: nonzero(k.frozenAt.to::<u64>()),
            revoked_at: nonzero(k.revokedAt.to::<u64>()),
            settled: Usdc::try_from(U256::from(k.settled))?,
        }))
    }

    /// The owner's tab with `payee`, as the contract holds it now.
    pub async fn tab_of(&self, owner: Address, payee: Address) -> Result<Tab> {
        let t = self.contract.tabOf(owner, payee).call().await?;
        let withdrawing = U256::from(t.withdrawing);
        Ok(Tab {
            balance: Usdc::try_from(U256::from(t.balance))?,
            pending_withdrawal: if withdrawing == U256::ZERO {
                None
            } else {
                Some((Usdc::try_from(withdrawing)?, t.graceEndsAt.to::<u64>()))
            },
        })
    }

    /// The owner's guardian (zero if none).
    pub async fn guardian_of(&self, owner: Address) -> Result<Address> {
        Ok(self.contract.guardianOf(owner).call().await?)
    }

    /// The nonce the owner's next signed action must carry.
    pub async fn nonce_of(&self, owner: Address) -> Result<U256> {
        Ok(self.contract.nonces(owner).call().await?)
    }

    /// The digest the contract computes for a batch registration (to cross-check off-chain
    /// hashing).
    pub async fn registrations_digest(&self, message: &RegisterSessionKeys) -> Result<B256> {
        let keys = message.keys.iter().map(contract_terms).collect();
        Ok(self.contract.registrationsDigest(message.owner, keys, message.nonce, message.deadline).call().await?)
    }

    /// The digest the contract computes for a voucher (to cross-check off-chain hashing).
    pub async fn voucher_digest(&self, key: Address, payee: Address, cumulative_amount: U256) -> Result<B256> {
        Ok(self.contract.voucherDigest(key, payee, cumulative_amount).call().await?)
    }
}

/// An owner action a relayer can submit with the owner's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAction {
    /// `freezeWithSig`.
    Freeze,
    /// `unfreezeWithSig`.
    Unfreeze,
    /// `revokeWithSig`.
    Revoke,
}

type U48 = alloy::primitives::Uint<48, 1>;

fn window(terms: &KeyTerms) -> Result<(U48, U48)> {
    let t = |secs: u64| U48::try_from(secs).map_err(|_| Error::Core(opentab_core::Error::AmountOverflow));
    Ok((t(terms.valid_after)?, t(terms.valid_until)?))
}

/// `terms` as an entry of the signed `RegisterSessionKeys`.
fn signed_terms(terms: &KeyTerms) -> Result<eip712::KeyTerms> {
    let (valid_after, valid_until) = window(terms)?;
    Ok(eip712::KeyTerms {
        sessionKey: terms.session_key,
        payee: terms.payee,
        limit: u128::from(terms.limit.base_units()),
        validAfter: valid_after,
        validUntil: valid_until,
    })
}

/// A signed entry as the contract's `KeyTerms` argument (same fields, another generated type).
fn contract_terms(k: &eip712::KeyTerms) -> SessionKeyValidator::KeyTerms {
    SessionKeyValidator::KeyTerms {
        sessionKey: k.sessionKey,
        payee: k.payee,
        limit: k.limit,
        validAfter: k.validAfter,
        validUntil: k.validUntil,
    }
}

fn sig_bytes(signature: &Signature) -> Bytes {
    Bytes::copy_from_slice(signature.as_bytes())
}

impl Validator {
    /// [`Validator::transact`], then reads what the settlement paid and skipped from the
    /// receipt's logs.
    async fn transact_logged<D: CallDecoder>(&self, call: CallBuilder<&DynProvider, D>) -> Result<SettleOutcome> {
        use alloy::sol_types::SolEvent;
        let (tx, logs) = self.transact_receipt(call).await?;
        let mut outcome = SettleOutcome { tx, paid: Vec::new(), skipped: Vec::new() };
        for log in &logs {
            if let Ok(e) = SessionKeyValidator::Settled::decode_log_data(&log.inner.data) {
                outcome.paid.push((e.sessionKey, Usdc::try_from(e.amount)?, Usdc::try_from(e.settled)?));
            } else if let Ok(e) = SessionKeyValidator::ClaimSkipped::decode_log_data(&log.inner.data)
                && let Some(reason) = SkipReason::from_code(e.reason)
            {
                outcome.skipped.push((e.sessionKey, reason));
            }
        }
        Ok(outcome)
    }

    /// Sends a call (in the account's turn, when this handle signs), waits for its receipt and
    /// checks that it succeeded. Reverts caught while estimating gas come back decoded as
    /// [`Error::Reverted`].
    async fn transact<D: CallDecoder>(&self, call: CallBuilder<&DynProvider, D>) -> Result<TxOutcome> {
        Ok(self.transact_receipt(call).await?.0)
    }

    async fn transact_receipt<D: CallDecoder>(
        &self,
        call: CallBuilder<&DynProvider, D>,
    ) -> Result<(TxOutcome, Vec<alloy::rpc::types::Log>)> {
        let pending = match &self.sender {
            Some(sender) => sender.send(call).await?,
            None => call.send().await?,
        };
        let tx = *pending.tx_hash();
        let receipt = pending.get_receipt().await.map_err(|source| Error::Pending { tx, source })?;
        if !receipt.status() {
            return Err(Error::TxReverted(tx));
        }
        let outcome = TxOutcome {
            tx_hash: tx,
            block_number: receipt.block_number.unwrap_or_default(),
            gas_used: receipt.gas_used,
        };
        Ok((outcome, receipt.inner.logs().to_vec()))
    }
}
