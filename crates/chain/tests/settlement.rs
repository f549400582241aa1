//! The Rust core signs, the contract on a real anvil settles: the two sides agree on every
//! digest, and the contract's own errors come back decoded.

mod common;

use common::{TestResult, chain, now};
use opentab_chain::bindings::SessionKeyValidator::SessionKeyValidatorErrors as E;
use opentab_chain::{Claim, Error, KeyAction, U256};
use opentab_core::{SigningKey, Usdc, Voucher};

fn voucher_sig(c: &common::Chain, key: &SigningKey, amount: u64) -> opentab_core::Signature {
    let voucher = Voucher::new(key.address(), c.payee, U256::from(amount));
    key.sign_digest(&c.relayer.domain().digest(&voucher))
}

#[tokio::test]
async fn a_voucher_signed_in_rust_settles_on_anvil() -> TestResult {
    let c = chain().await?;
    c.fund_owner(Usdc::parse_decimal("50")?).await?;
    let key = c.new_key(Usdc::parse_decimal("20")?).await?;
    let payee_before = c.relayer.usdc_balance(c.payee).await?;

    // Same digest on both sides.
    let amount = U256::from(12_500_000u64);
    let core_digest = c.relayer.domain().digest(&Voucher::new(key.address(), c.payee, amount));
    assert_eq!(c.relayer.voucher_digest(key.address(), c.payee, amount).await?, core_digest);

    // Only the payee and its settlers settle: the owner (or a leaked key's holder) cannot.
    let by_owner = c.owner.settle(key.address(), amount, &voucher_sig(&c, &key, 12_500_000)).await;
    assert!(matches!(by_owner, Err(Error::Reverted(E::NotSettler(_)))), "{by_owner:?}");

    // The payee's settler (here the relayer) settles; the payee is paid, the tab and key record it.
    let first = c.relayer.settle(key.address(), amount, &voucher_sig(&c, &key, 12_500_000)).await?;
    assert!(first.tx.gas_used < 90_000, "settle used {} gas in all", first.tx.gas_used);
    assert_eq!(
        first.paid_for(key.address()),
        Some((Usdc::from_base_units(12_500_000), Usdc::from_base_units(12_500_000)))
    );
    assert_eq!(c.relayer.usdc_balance(c.payee).await? - payee_before, amount);
    assert_eq!(c.relayer.tab_of(c.owner_key.address(), c.payee).await?.balance, Usdc::from_base_units(37_500_000));

    // Cumulative: the next voucher pays only the difference.
    c.relayer.settle(key.address(), U256::from(15_000_000u64), &voucher_sig(&c, &key, 15_000_000)).await?;
    assert_eq!(c.relayer.usdc_balance(c.payee).await? - payee_before, U256::from(15_000_000u64));
    let state = c.relayer.session_key(key.address()).await?.ok_or("key vanished")?;
    assert_eq!(state.settled, Usdc::from_base_units(15_000_000));
    assert_eq!(state.owner, c.owner_key.address());

    // Replaying the older voucher buys nothing, and says why.
    let replay = c.relayer.settle(key.address(), amount, &voucher_sig(&c, &key, 12_500_000)).await;
    assert!(matches!(replay, Err(Error::Reverted(E::NothingToSettle(_)))), "{replay:?}");
    Ok(())
}

#[tokio::test]
async fn bad_vouchers_are_refused_with_the_contract_reason() -> TestResult {
    let c = chain().await?;
    c.fund_owner(Usdc::parse_decimal("5")?).await?;
    let key = c.new_key(Usdc::parse_decimal("10")?).await?;

    let above_limit =
        c.relayer.settle(key.address(), U256::from(11_000_000u64), &voucher_sig(&c, &key, 11_000_000)).await;
    assert!(matches!(above_limit, Err(Error::Reverted(E::VoucherAboveLimit(_)))), "{above_limit:?}");

    let stranger = SigningKey::random();
    let forged = c.relayer.settle(key.address(), U256::from(1_000u64), &voucher_sig(&c, &stranger, 1_000)).await;
    assert!(matches!(forged, Err(Error::Reverted(E::InvalidVoucherSignature(_)))), "{forged:?}");

    let unknown = c.relayer.settle(stranger.address(), U256::from(1_000u64), &voucher_sig(&c, &stranger, 1_000)).await;
    assert!(matches!(unknown, Err(Error::Reverted(E::UnknownSessionKey(_)))), "{unknown:?}");
    let tab = c.relayer.tab_of(c.owner_key.address(), c.payee).await?;
    assert_eq!(tab.balance, Usdc::from_base_units(5_000_000), "nothing moved");
    Ok(())
}

#[tokio::test]
async fn a_short_tab_pays_what_it_holds_and_the_rest_stays_claimable() -> TestResult {
    let c = chain().await?;
    c.fund_owner(Usdc::parse_decimal("5")?).await?;
    let key = c.new_key(Usdc::parse_decimal("10")?).await?;

    // The voucher says 6, the tab holds 5: the payee gets 5 now, and settled says 5.
    let sig = voucher_sig(&c, &key, 6_000_000);
    let short = c.relayer.settle(key.address(), U256::from(6_000_000u64), &sig).await?;
    assert_eq!(
        short.paid_for(key.address()),
        Some((Usdc::from_base_units(5_000_000), Usdc::from_base_units(5_000_000)))
    );
    assert_eq!(c.relayer.tab_of(c.owner_key.address(), c.payee).await?.balance, Usdc::ZERO);

    // Nothing left: the same voucher is refused with the tab's reason, not lost.
    let empty = c.relayer.settle(key.address(), U256::from(6_000_000u64), &sig).await;
    assert!(matches!(empty, Err(Error::Reverted(E::EmptyTab(_)))), "{empty:?}");

    // A deposit later, the same voucher pays the missing unit of 1 USDC.
    c.fund_owner(Usdc::parse_decimal("2")?).await?;
    let rest = c.relayer.settle(key.address(), U256::from(6_000_000u64), &sig).await?;
    assert_eq!(rest.paid_for(key.address()), Some((Usdc::ONE, Usdc::from_base_units(6_000_000))));
    Ok(())
}

#[tokio::test]
async fn relayed_registration_and_key_actions_need_the_owner_signature() -> TestResult {
    let c = chain().await?;
    let key = SigningKey::random();
    let terms = c.terms(&key, Usdc::parse_decimal("3")?);
    let deadline = now() + 600;

    // The owner signs off-chain; the relayer pays the gas.
    let (message, signature) = c.relayer.sign_registration(&c.owner_key, &terms, deadline).await?;
    c.relayer.register_session_key_with_sig(&message, &signature).await?;
    let state = c.relayer.session_key(key.address()).await?.ok_or("not registered")?;
    assert_eq!(
        (state.owner, state.payee, state.limit),
        (c.owner_key.address(), c.payee, Usdc::ONE.checked_add(Usdc::parse_decimal("2")?)?)
    );

    // The same signature cannot be relayed twice (its nonce is spent).
    let again = c.relayer.register_session_key_with_sig(&message, &signature).await;
    assert!(matches!(again, Err(Error::Reverted(E::InvalidAccountNonce(_)))), "{again:?}");

    // A registration signed by someone else is refused.
    let other = SigningKey::random();
    let (forged, forged_sig) =
        c.relayer.sign_registration(&other, &c.terms(&SigningKey::random(), Usdc::ONE), deadline).await?;
    let mut forged = forged;
    forged.owner = c.owner_key.address();
    forged.nonce = c.relayer.nonce_of(c.owner_key.address()).await?;
    let refused = c.relayer.register_session_key_with_sig(&forged, &forged_sig).await;
    assert!(matches!(refused, Err(Error::Reverted(E::InvalidOwnerSignature(_)))), "{refused:?}");

    // Freeze, unfreeze and revoke, each signed by the owner and relayed.
    for (action, check) in
        [(KeyAction::Freeze, "frozen"), (KeyAction::Unfreeze, "active"), (KeyAction::Revoke, "revoked")]
    {
        let (nonce, sig) = c.relayer.sign_key_action(&c.owner_key, action, key.address(), deadline).await?;
        c.relayer.relay_key_action(action, key.address(), nonce, deadline, &sig).await?;
        let state = c.relayer.session_key(key.address()).await?.ok_or("key vanished")?;
        let seen = match (state.frozen_at, state.revoked_at) {
            (_, Some(_)) => "revoked",
            (Some(_), None) => "frozen",
            (None, None) => "active",
        };
        assert_eq!(seen, check, "after {action:?}");
    }

    // A freeze signature cannot be replayed as an unfreeze (own typehash, spent nonce).
    let (nonce, freeze_sig) =
        c.relayer.sign_key_action(&c.owner_key, KeyAction::Freeze, key.address(), deadline).await?;
    let swapped = c.relayer.relay_key_action(KeyAction::Unfreeze, key.address(), nonce, deadline, &freeze_sig).await;
    assert!(matches!(swapped, Err(Error::Reverted(E::InvalidOwnerSignature(_)))), "{swapped:?}");
    Ok(())
}

#[tokio::test]
async fn a_batch_registration_signed_in_rust_registers_every_key_on_anvil() -> TestResult {
    let c = chain().await?;
    let keys: Vec<SigningKey> = (0..5).map(|_| SigningKey::random()).collect();
    let limit = Usdc::parse_decimal("2")?;
    let terms: Vec<_> = keys.iter().map(|k| c.terms(k, limit)).collect();
    let deadline = now() + 600;

    // Same digest on both sides: the core's EIP-712 of an array of structs is the contract's.
    let (message, signature) = c.relayer.sign_registrations(&c.owner_key, &terms, deadline).await?;
    assert_eq!(c.relayer.registrations_digest(&message).await?, c.relayer.domain().digest(&message));

    let nonce = c.relayer.nonce_of(c.owner_key.address()).await?;
    let outcome = c.relayer.register_session_keys_with_sig(&message, &signature).await?;
    for key in &keys {
        let state = c.relayer.session_key(key.address()).await?.ok_or("not registered")?;
        assert_eq!((state.owner, state.payee), (c.owner_key.address(), c.payee));
    }
    assert_eq!(c.relayer.nonce_of(c.owner_key.address()).await?, nonce + U256::from(1), "one nonce for the batch");
    // About 71,600 a key, plus the transaction, its calldata, one signature check and the nonce.
    assert!(outcome.gas_used < 5 * 90_000, "5 keys used {} gas in all", outcome.gas_used);

    // Relayed twice: the nonce is spent.
    let again = c.relayer.register_session_keys_with_sig(&message, &signature).await;
    assert!(matches!(again, Err(Error::Reverted(E::InvalidAccountNonce(_)))), "{again:?}");

    // Signed by someone else for the owner: refused.
    let fresh = [SigningKey::random(), SigningKey::random()];
    let fresh_terms = [c.terms(&fresh[0], Usdc::ONE), c.terms(&fresh[1], Usdc::ONE)];
    let (mut forged, forged_sig) = c.relayer.sign_registrations(&SigningKey::random(), &fresh_terms, deadline).await?;
    forged.owner = c.owner_key.address();
    forged.nonce = c.relayer.nonce_of(c.owner_key.address()).await?;
    let refused = c.relayer.register_session_keys_with_sig(&forged, &forged_sig).await;
    assert!(matches!(refused, Err(Error::Reverted(E::InvalidOwnerSignature(_)))), "{refused:?}");

    // One key registered before sinks the batch: all or nothing.
    let mixed = [fresh_terms[0], terms[2], fresh_terms[1]];
    let (message, signature) = c.relayer.sign_registrations(&c.owner_key, &mixed, deadline).await?;
    let exists = c.relayer.register_session_keys_with_sig(&message, &signature).await;
    assert!(matches!(exists, Err(Error::Reverted(E::SessionKeyExists(_)))), "{exists:?}");
    assert_eq!(c.relayer.session_key(fresh[0].address()).await?, None, "nothing registered");

    // An empty batch is refused as such.
    let (message, signature) = c.relayer.sign_registrations(&c.owner_key, &[], deadline).await?;
    let empty = c.relayer.register_session_keys_with_sig(&message, &signature).await;
    assert!(matches!(empty, Err(Error::Reverted(E::EmptyBatch(_)))), "{empty:?}");
    Ok(())
}

#[tokio::test]
async fn owner_guardian_and_withdrawal_calls_round_trip() -> TestResult {
    let c = chain().await?;
    c.fund_owner(Usdc::parse_decimal("10")?).await?;
    let key = c.new_key(Usdc::parse_decimal("10")?).await?;
    let guardian = c.anvil.signer(0)?.address();

    c.owner.set_guardian(guardian).await?;
    assert_eq!(c.relayer.guardian_of(c.owner_key.address()).await?, guardian);
    c.relayer.freeze(key.address()).await?; // the relayer is the guardian here
    let unfreeze_by_guardian = c.relayer.unfreeze(key.address()).await;
    assert!(matches!(unfreeze_by_guardian, Err(Error::Reverted(E::NotKeyOwner(_)))), "{unfreeze_by_guardian:?}");
    c.owner.unfreeze(key.address()).await?;
    c.owner.revoke(key.address()).await?;

    c.owner.request_withdrawal(c.payee, Usdc::parse_decimal("4")?).await?;
    let tab = c.relayer.tab_of(c.owner_key.address(), c.payee).await?;
    let (amount, grace_ends_at) = tab.pending_withdrawal.ok_or("no pending withdrawal")?;
    assert_eq!(amount, Usdc::parse_decimal("4")?);
    assert!(grace_ends_at >= now() + c.relayer.grace() - 60);
    assert_eq!(tab.available(), Usdc::parse_decimal("6")?);
    let early = c.owner.withdraw(c.payee).await;
    assert!(matches!(early, Err(Error::Reverted(E::WithdrawalNotReady(_)))), "{early:?}");
    c.owner.cancel_withdrawal(c.payee).await?;
    assert_eq!(c.relayer.tab_of(c.owner_key.address(), c.payee).await?.pending_withdrawal, None);
    Ok(())
}

#[tokio::test]
async fn settle_batch_pays_ten_keys_in_one_transaction() -> TestResult {
    let c = chain().await?;
    c.fund_owner(Usdc::parse_decimal("100")?).await?;
    let mut claims = Vec::new();
    for i in 1..=10u64 {
        let key = c.new_key(Usdc::parse_decimal("10")?).await?;
        claims.push(Claim {
            session_key: key.address(),
            cumulative_amount: U256::from(i * 100_000),
            signature: voucher_sig(&c, &key, i * 100_000),
        });
    }
    // One bad claim (a replay of the third key's voucher under another key's address) does not
    // sink the batch: it is skipped with its reason and the ten good ones settle.
    let mut bad = claims[2];
    bad.session_key = claims[3].session_key;
    claims.push(bad);
    let before = c.relayer.usdc_balance(c.payee).await?;
    let outcome = c.relayer.settle_batch(c.payee, &claims).await?;
    assert_eq!(c.relayer.usdc_balance(c.payee).await? - before, U256::from(5_500_000u64));
    assert!(outcome.tx.gas_used < 11 * 60_000, "batch of 11 used {} gas", outcome.tx.gas_used);
    assert_eq!(outcome.paid.len(), 10);
    assert_eq!(outcome.skipped, vec![(claims[3].session_key, opentab_core::SkipReason::NothingToSettle)]);
    Ok(())
}

#[tokio::test]
async fn a_payee_authorises_a_settler_with_a_relayed_signature() -> TestResult {
    let c = chain().await?;
    let payee = SigningKey::from_bytes(&c.anvil.keys()[2])?;
    let worker = SigningKey::random().address();
    assert!(!c.relayer.is_settler(c.payee, worker).await?);
    let (message, signature) = c.relayer.sign_set_settler(&payee, worker, true, now() + 600).await?;
    c.relayer.set_settler_with_sig(&message, &signature).await?;
    assert!(c.relayer.is_settler(c.payee, worker).await?);
    // The same signature cannot be relayed twice, nor a signature of someone else's.
    let again = c.relayer.set_settler_with_sig(&message, &signature).await;
    assert!(matches!(again, Err(Error::Reverted(E::InvalidAccountNonce(_)))), "{again:?}");
    let (forged, forged_sig) = c.relayer.sign_set_settler(&SigningKey::random(), worker, false, now() + 600).await?;
    let mut forged = forged;
    forged.payee = c.payee;
    forged.nonce = c.relayer.nonce_of(c.payee).await?;
    let refused = c.relayer.set_settler_with_sig(&forged, &forged_sig).await;
    assert!(matches!(refused, Err(Error::Reverted(E::InvalidPayeeSignature(_)))), "{refused:?}");
    Ok(())
}

#[tokio::test]
async fn a_dead_rpc_endpoint_is_a_clear_error() -> TestResult {
    let c = chain().await?;
    let validator = c.relayer.clone();
    drop(c.anvil);
    let err = validator.tab_of(c.payee, c.payee).await;
    assert!(matches!(err, Err(Error::Contract(_)) | Err(Error::Rpc(_))), "{err:?}");
    let text = err.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(text.contains("failed"), "{text}");
    Ok(())
}
