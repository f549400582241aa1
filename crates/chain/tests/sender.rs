//! One account, many senders: the relayer, the guardian and the settler may share an account,
//! each sending whenever it must. Their transactions take turns and each gets the nonce the
//! node gives it, so none is refused or replaced, and a reorganisation that drops one does not
//! stall the account.

mod common;

use std::borrow::Cow;

use common::{TestResult, chain};
use opentab_chain::alloy_provider::Provider;
use opentab_chain::{Address, Error, U256, Validator, signing_provider};
use opentab_core::Usdc;

/// Three handles on account #0, each made apart, as `opentab serve` makes its relayer, its
/// guardian and its settler.
fn three_roles(c: &common::Chain) -> TestResult<Vec<Validator>> {
    let rpc = c.anvil.endpoint();
    (0..3).map(|_| Ok(c.relayer.with_provider(signing_provider(&rpc, c.anvil.signer(0)?)?))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transactions_sent_at_once_from_one_account_by_separate_handles_all_land() -> TestResult {
    let c = chain().await?;
    let roles = three_roles(&c)?;
    let stranger = Address::repeat_byte(0x5e);
    let sends = (0..18u8).map(|n| {
        let role = roles[usize::from(n) % roles.len()].clone();
        async move {
            if n == 9 {
                // One that reverts while its gas is estimated: it must take no nonce.
                return match role.freeze(Address::repeat_byte(0x77)).await {
                    Err(Error::Reverted(_)) => Ok(None),
                    other => Err(format!("freezing an unknown key: {other:?}")),
                };
            }
            role.mint_test_usdc(stranger, Usdc::from_base_units(u64::from(n) + 1))
                .await
                .map(|outcome| Some(outcome.tx_hash))
                .map_err(|err| format!("send {n}: {err}"))
        }
    });
    // All at once, on the runtime's threads.
    let tasks: Vec<_> = sends.map(tokio::spawn).collect();
    let mut hashes = Vec::new();
    for task in tasks {
        hashes.extend(task.await??);
    }
    assert_eq!(hashes.len(), 17, "every mint landed");
    // 1 + 2 + … + 18, less the 10 of the one that reverted.
    assert_eq!(c.relayer.usdc_balance(stranger).await?, U256::from((1..=18u64).sum::<u64>() - 10));
    // No nonce was skipped: one more transaction lands at once.
    let next = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        roles[0].mint_test_usdc(stranger, Usdc::from_base_units(1)),
    )
    .await??;
    assert!(next.block_number > 0);
    Ok(())
}

#[tokio::test]
async fn a_transaction_dropped_by_a_reorganisation_does_not_stall_the_account() -> TestResult {
    let c = chain().await?;
    let roles = three_roles(&c)?;
    let provider = c.relayer.provider();
    let stranger = Address::repeat_byte(0x5f);
    let snapshot: U256 = provider.raw_request(Cow::Borrowed("evm_snapshot"), ()).await?;
    roles[0].mint_test_usdc(stranger, Usdc::from_base_units(5)).await?;
    roles[1].mint_test_usdc(stranger, Usdc::from_base_units(6)).await?;
    // The chain forgets both blocks: the account's nonce goes back by two.
    let reverted: bool = provider.raw_request(Cow::Borrowed("evm_revert"), (snapshot,)).await?;
    assert!(reverted);
    assert_eq!(c.relayer.usdc_balance(stranger).await?, U256::ZERO);
    // Every handle sends on from where the chain stands, not from where it was.
    for (n, role) in roles.iter().enumerate() {
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            role.mint_test_usdc(stranger, Usdc::from_base_units(n as u64 + 1)),
        )
        .await??;
    }
    assert_eq!(c.relayer.usdc_balance(stranger).await?, U256::from(6u64));
    Ok(())
}
