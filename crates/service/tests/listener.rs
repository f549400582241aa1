//! The chain listener against a real anvil and real databases: state changes on-chain
//! converge into storage, across a listener restart and a reorg.

use std::borrow::Cow;

use alloy::providers::Provider;
use opentab_chain::{Anvil, AnvilConfig, KeyTerms, U256, Validator, deploy_dev_contracts, signing_provider};
use opentab_core::{SigningKey, Usdc, Voucher};
use opentab_service::{ChainListener, ListenerConfig};
use opentab_store::{ChainStatus, Store};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

struct World {
    _anvil: Anvil,
    owner: Validator,
    owner_key: SigningKey,
    relayer: Validator,
    payee: opentab_chain::Address,
    start_block: u64,
}

async fn world() -> TestResult<World> {
    let anvil = Anvil::spawn(AnvilConfig::default())?;
    let rpc = anvil.endpoint();
    let provider = signing_provider(&rpc, anvil.signer(0)?)?;
    let deployment = deploy_dev_contracts(&provider, &rpc, 86_400).await?;
    let relayer = Validator::connect(provider, deployment.validator).await?;
    let owner = relayer.with_provider(signing_provider(&rpc, anvil.signer(1)?)?);
    let owner_key = SigningKey::from_bytes(&anvil.keys()[1])?;
    let payee = anvil.signer(2)?.address();
    // The payee lets the relayer settle for it.
    relayer
        .with_provider(signing_provider(&rpc, anvil.signer(2)?)?)
        .set_settler(anvil.signer(0)?.address(), true)
        .await?;
    Ok(World { _anvil: anvil, owner, owner_key, relayer, payee, start_block: deployment.deployed_at_block })
}

fn config() -> ListenerConfig {
    ListenerConfig {
        stream: opentab_chain::StreamConfig { confirmations: 0, max_range: 50 },
        ..ListenerConfig::default()
    }
}

async fn listener(w: &World, store: &Store) -> TestResult<ChainListener> {
    Ok(ChainListener::new(store.clone(), w.relayer.provider().clone(), w.relayer.address(), w.start_block, config())
        .await?)
}

async fn converges_across_restart_and_reorg(store: Store) -> TestResult {
    let w = world().await?;
    let metrics = std::sync::Arc::new(opentab_service::ServiceMetrics::default());
    let mut l = listener(&w, &store).await?.with_payee(w.payee, metrics.clone());

    w.owner.mint_test_usdc(w.owner_key.address(), Usdc::parse_decimal("30")?).await?;
    w.owner.deposit(w.payee, Usdc::parse_decimal("30")?).await?;
    let key = SigningKey::random();
    let terms = KeyTerms {
        session_key: key.address(),
        payee: w.payee,
        limit: Usdc::parse_decimal("20")?,
        valid_after: 0,
        valid_until: 4_000_000_000,
    };
    w.owner.register_session_key(&terms).await?;
    let voucher = Voucher::new(key.address(), w.payee, U256::from(12_000_000u64));
    let signature = key.sign_digest(&w.relayer.domain().digest(&voucher));
    w.relayer.settle(key.address(), voucher.cumulativeAmount, &signature).await?;
    l.catch_up().await?;

    let record = store.key(key.address()).await?.ok_or("key not mirrored")?;
    assert_eq!(record.chain_status, ChainStatus::Registered);
    assert_eq!(record.key.settled, Usdc::from_base_units(12_000_000));
    assert_eq!(store.tab(w.owner_key.address(), w.payee).await?.balance, Usdc::from_base_units(18_000_000));
    // That settlement was sent straight to the chain, not by this deployment's worker: the
    // listener counts it as foreign (another deployment sharing the payee would look the same).
    assert_eq!(metrics.foreign_settlements.load(std::sync::atomic::Ordering::Relaxed), 1);

    // Restart: a new listener resumes from the cursor in storage and sees only what is new.
    drop(l);
    w.owner.freeze(key.address()).await?;
    let mut l = listener(&w, &store).await?;
    l.catch_up().await?;
    assert!(store.key(key.address()).await?.and_then(|r| r.key.frozen_at).is_some(), "freeze mirrored");
    assert_eq!(store.key_events(key.address()).await?.len(), 3, "registered, settled, frozen: no repeats");

    // Reorg: the unfreeze is mined, seen, then replaced by a branch where the key is revoked.
    let provider = w.relayer.provider();
    let snapshot: U256 = provider.raw_request(Cow::Borrowed("evm_snapshot"), ()).await?;
    w.owner.unfreeze(key.address()).await?;
    l.catch_up().await?;
    assert_eq!(store.key(key.address()).await?.and_then(|r| r.key.frozen_at), None, "unfreeze mirrored");
    let _: bool = provider.raw_request(Cow::Borrowed("evm_revert"), (snapshot,)).await?;
    w.owner.revoke(key.address()).await?;
    l.catch_up().await?;
    let record = store.key(key.address()).await?.ok_or("key vanished")?;
    assert!(record.key.frozen_at.is_some(), "the orphaned unfreeze is undone");
    assert!(record.key.revoked_at.is_some(), "the new branch's revoke is applied");
    let kinds: Vec<&str> = store.key_events(key.address()).await?.iter().map(|e| e.event.kind()).collect();
    assert_eq!(kinds, ["registered", "settled", "frozen", "revoked"]);
    Ok(())
}

#[tokio::test]
async fn sqlite_converges_across_restart_and_reorg() -> TestResult {
    let dir = tempfile::tempdir()?;
    converges_across_restart_and_reorg(opentab_store::testing::fresh_sqlite(dir.path()).await?).await
}

#[tokio::test]
async fn postgres_converges_across_restart_and_reorg() -> TestResult {
    converges_across_restart_and_reorg(opentab_store::testing::fresh_postgres().await?).await
}

#[tokio::test]
async fn an_unreachable_rpc_is_an_error_and_nothing_is_applied() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = opentab_store::testing::fresh_sqlite(dir.path()).await?;
    let w = world().await?;
    let validator = w.relayer.address();
    let dead = opentab_chain::read_provider("http://127.0.0.1:1")?;
    let mut l = ChainListener::new(store.clone(), dead, validator, 0, config()).await?;
    let err = l.step().await.err().ok_or("stepping without an RPC must fail")?;
    assert!(matches!(err, opentab_service::Error::Chain(_)), "{err:?}");
    assert_eq!(store.chain_cursor(validator).await?, None, "the cursor did not move");
    Ok(())
}

/// Issue 12's known defect: when an update could not be stored and storage could not say where
/// it stood either (the database away), the listener rewound to the deployment block, a full
/// rescan exactly when the database is unhealthy. It now rewinds to where storage stood after
/// its last update.
#[tokio::test]
async fn a_database_away_rewinds_the_listener_to_its_last_stored_cursor_not_the_deployment() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = opentab_store::testing::fresh_sqlite(dir.path()).await?;
    let w = world().await?;
    let mut l = listener(&w, &store).await?;
    w.owner.mint_test_usdc(w.owner_key.address(), Usdc::parse_decimal("10")?).await?;
    w.owner.deposit(w.payee, Usdc::parse_decimal("10")?).await?;
    l.catch_up().await?;
    let stored = l.cursor().clone();
    assert!(stored.last().is_some_and(|b| b.number > w.start_block), "{stored:?}");

    // Something new on the chain, and the database is gone.
    w.owner.mint_test_usdc(w.owner_key.address(), Usdc::parse_decimal("1")?).await?;
    w.owner.deposit(w.payee, Usdc::parse_decimal("1")?).await?;
    store.close().await;
    for _ in 0..3 {
        if l.step().await.is_err() {
            break;
        }
    }
    assert_eq!(l.cursor(), &stored, "rewound to the last cursor storage held, not block {}", w.start_block);
    Ok(())
}
