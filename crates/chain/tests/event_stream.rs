//! The event stream on a real anvil: confirmation depth, resuming from a saved cursor, and a
//! reorg (made with anvil's `evm_snapshot` / `evm_revert`) reported as a rollback.

mod common;

use std::borrow::Cow;

use alloy::providers::Provider;
use common::{TestResult, chain};
use opentab_chain::bindings::SessionKeyValidator::SessionKeyValidatorEvents as Ev;
use opentab_chain::{Cursor, EventStream, StreamConfig, U256, Update};
use opentab_core::Usdc;

async fn mine(c: &common::Chain, blocks: u64) -> TestResult {
    let provider = c.relayer.provider();
    let _: serde_json::Value = provider.raw_request(Cow::Borrowed("anvil_mine"), (U256::from(blocks),)).await?;
    Ok(())
}

fn registered(update: &Update) -> Vec<opentab_chain::Address> {
    update
        .events
        .iter()
        .filter_map(|e| match &e.event {
            Ev::SessionKeyRegistered(r) => Some(r.sessionKey),
            _ => None,
        })
        .collect()
}

/// Polls until the stream has caught up with the confirmed tip, merging the updates.
async fn drain(stream: &mut EventStream) -> TestResult<Update> {
    let mut merged = Update { rollback_to: None, events: Vec::new(), cursor: stream.cursor().clone() };
    while let Some(update) = stream.poll().await? {
        merged.rollback_to = merged.rollback_to.or(update.rollback_to);
        merged.events.extend(update.events);
        merged.cursor = update.cursor;
    }
    Ok(merged)
}

#[tokio::test]
async fn events_wait_for_confirmations_and_resume_from_a_saved_cursor() -> TestResult {
    let c = chain().await?;
    let config = StreamConfig { confirmations: 2, max_range: 3 };
    let start = Cursor::starting_at(c.deployment.deployed_at_block);
    let mut stream = EventStream::new(c.relayer.provider().clone(), c.deployment.validator, start, config);
    drain(&mut stream).await?;

    let key = c.new_key(Usdc::ONE).await?;
    assert!(registered(&drain(&mut stream).await?).is_empty(), "not confirmed yet");
    mine(&c, 2).await?;
    let update = drain(&mut stream).await?;
    assert_eq!(registered(&update), vec![key.address()]);

    // Persist, stop, change the chain, resume: exactly the new event, no repeat.
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("cursor.json");
    update.cursor.save(&path)?;
    drop(stream);
    c.owner.freeze(key.address()).await?;
    mine(&c, 2).await?;
    let resumed = Cursor::load(&path)?.ok_or("cursor file missing")?;
    let mut stream = EventStream::new(c.relayer.provider().clone(), c.deployment.validator, resumed, config);
    let update = drain(&mut stream).await?;
    assert_eq!(update.events.len(), 1, "{:?}", update.events);
    assert!(matches!(&update.events[0].event, Ev::SessionKeyFrozen(f) if f.sessionKey == key.address()));
    assert_eq!(update.rollback_to, None);
    Ok(())
}

#[tokio::test]
async fn a_reorg_is_reported_as_a_rollback_and_the_new_branch_is_read() -> TestResult {
    let c = chain().await?;
    let provider = c.relayer.provider().clone();
    let config = StreamConfig { confirmations: 0, max_range: 100 };
    let mut stream = EventStream::new(
        provider.clone(),
        c.deployment.validator,
        Cursor::starting_at(c.deployment.deployed_at_block),
        config,
    );
    drain(&mut stream).await?;
    let fork_point = provider.get_block_number().await?;

    let snapshot: U256 = provider.raw_request(Cow::Borrowed("evm_snapshot"), ()).await?;
    let orphaned = c.new_key(Usdc::ONE).await?;
    assert_eq!(registered(&drain(&mut stream).await?), vec![orphaned.address()]);

    // Replace the block that held the registration with one holding another.
    let reverted: bool = provider.raw_request(Cow::Borrowed("evm_revert"), (snapshot,)).await?;
    assert!(reverted);
    let survivor = c.new_key(Usdc::ONE).await?;
    let update = drain(&mut stream).await?;
    assert_eq!(update.rollback_to, Some(fork_point), "roll back to the last common block");
    assert_eq!(registered(&update), vec![survivor.address()]);
    assert!(c.relayer.session_key(orphaned.address()).await?.is_none(), "the orphaned key is gone on-chain too");
    Ok(())
}
