//! The usage ledger's group commit on both databases: many calls recorded at once all land,
//! each exactly once, with idempotency keys kept; when the database is gone every caller is
//! told (so the gateway undoes each charge) and nothing is half written.

use opentab_core::{Address, B256, SigningKey, U256, Usdc};
use opentab_gateway::{Recorded, UsageKind, UsageLedger, UsageRecord};
use opentab_proxy::StoreLedger;
use opentab_store::Store;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn record(key: &SigningKey, n: u64, kind: UsageKind) -> UsageRecord {
    UsageRecord {
        at: 1_000 + n,
        key: key.address(),
        owner: Address::repeat_byte(0xa1),
        kind,
        amount: Usdc::from_base_units(10),
        route: "POST /v1/chat".into(),
        request_id: format!("r{n}"),
        voucher: U256::from(n * 10),
        signature: (kind == UsageKind::Charge).then(|| key.sign_digest(&B256::with_last_byte(n as u8))),
        idempotency: Some(B256::with_last_byte(n as u8)),
        void_of: None,
        epoch: None,
    }
}

async fn many_calls_at_once_each_land_once(store: Store) -> TestResult {
    let ledger = StoreLedger::new(store.clone());
    let (a, b) = (SigningKey::random(), SigningKey::random());
    // 300 charges over two keys and 30 voids, all in flight together: more than one batch.
    let mut calls = tokio::task::JoinSet::new();
    for n in 1..=150 {
        for key in [&a, &b] {
            let (ledger, record) = (ledger.clone(), record(key, n, UsageKind::Charge));
            calls.spawn(async move { ledger.record(record).await });
        }
    }
    for n in 1..=30 {
        let (ledger, record) = (ledger.clone(), record(&a, n, UsageKind::Void));
        calls.spawn(async move { ledger.record(record).await });
    }
    while let Some(done) = calls.join_next().await {
        done??;
    }
    let total = |key: &SigningKey| {
        let store = store.clone();
        let key = key.address();
        async move { TestResult::Ok(store.usage_total(key).await?.map(|t| t.served)) }
    };
    assert_eq!(total(&a).await?, Some(Usdc::from_base_units(120 * 10)));
    assert_eq!(total(&b).await?, Some(Usdc::from_base_units(150 * 10)));
    assert_eq!(store.served(a.address()).await?, Usdc::from_base_units(120 * 10), "the running total agrees");
    let standing = store.live_idempotency(Some(a.address()), 0).await?;
    assert_eq!(standing.len(), 120, "the voided calls' keys are free again");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_many_calls_at_once_each_land_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    many_calls_at_once_each_land_once(opentab_store::testing::fresh_sqlite(dir.path()).await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_many_calls_at_once_each_land_once() -> TestResult {
    many_calls_at_once_each_land_once(opentab_store::testing::fresh_postgres().await?).await
}

#[tokio::test]
async fn a_database_gone_fails_every_caller_and_writes_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = opentab_store::testing::fresh_sqlite(dir.path()).await?;
    let ledger = StoreLedger::new(store.clone());
    let key = SigningKey::random();
    ledger.record(record(&key, 1, UsageKind::Charge)).await?;
    store.close().await;
    let mut calls = tokio::task::JoinSet::new();
    for n in 2..=20 {
        let (ledger, record) = (ledger.clone(), record(&key, n, UsageKind::Charge));
        calls.spawn(async move { ledger.record(record).await });
    }
    let mut refused = 0;
    while let Some(done) = calls.join_next().await {
        let err = done?.err().ok_or("a record was accepted by a closed database")?;
        assert_eq!(err.dependency(), opentab_gateway::Dependency::Ledger, "{err}");
        assert!(err.to_string().contains("closed"), "{err}");
        refused += 1;
    }
    assert_eq!(refused, 19);
    let reopened = opentab_store::testing::fresh_sqlite(dir.path()).await?;
    assert_eq!(reopened.served(key.address()).await?, Usdc::from_base_units(10), "only the first call");
    Ok(())
}

/// Issue 11: a freeze committed on one node (the API's) must stop the next call on every
/// other, even before their caches hear of it: the ledger refuses, inside the commit, a charge
/// of a key that is frozen or revoked by then. Charges of other keys in the same batches land;
/// voids of the frozen key still land (a void is owed to the user); unfrozen, it pays again.
async fn a_key_frozen_on_another_node_stops_at_the_ledger(url: &str) -> TestResult {
    let api = Store::connect(url).await?;
    let gateway = Store::connect(url).await?;
    let (frozen, other) = (SigningKey::random(), SigningKey::random());
    for (block, key) in [(1_u64, &frozen), (2, &other)] {
        let registered = opentab_core::ValidatorEvent::Registered {
            owner: Address::repeat_byte(0xa1),
            session_key: key.address(),
            payee: Address::repeat_byte(0xee),
            limit: Usdc::ONE,
            valid_after: 0,
            valid_until: 4_000_000_000,
        };
        let stored = opentab_store::StoredEvent {
            block_number: block,
            log_index: 0,
            block_hash: B256::with_last_byte(block as u8),
            tx_hash: B256::with_last_byte(block as u8),
            event: registered,
        };
        api.apply_chain_update(Address::repeat_byte(0x77), None, &[stored], "{}", 1).await?;
    }
    let ledger = StoreLedger::new(gateway.clone());
    assert_eq!(ledger.record(record(&frozen, 1, UsageKind::Charge)).await?, Recorded::Held(None));

    api.freeze_offchain(frozen.address(), 2).await?;
    // Right after the freeze commits, many calls at once, both keys mixed in the same batches.
    let mut calls = tokio::task::JoinSet::new();
    for n in 2..=41 {
        let key = if n % 2 == 0 { frozen.clone() } else { other.clone() };
        let (ledger, record) = (ledger.clone(), record(&key, n, UsageKind::Charge));
        calls.spawn(async move { (key.address(), ledger.record(record).await) });
    }
    while let Some(done) = calls.join_next().await {
        let (key, recorded) = done?;
        let expected = if key == frozen.address() { Recorded::KeyStopped } else { Recorded::Held(None) };
        assert_eq!(recorded?, expected, "{key}");
    }
    let mut void = record(&frozen, 1, UsageKind::Void);
    void.void_of = Some(B256::repeat_byte(0x01));
    assert_eq!(ledger.record(void).await?, Recorded::Held(None), "a void is always held");
    assert_eq!(gateway.served(frozen.address()).await?, Usdc::ZERO, "one charge, voided; none after the freeze");
    assert_eq!(gateway.served(other.address()).await?, Usdc::from_base_units(200), "the other key's 20 calls");

    api.unfreeze_offchain(frozen.address(), 3).await?;
    assert_eq!(ledger.record(record(&frozen, 50, UsageKind::Charge)).await?, Recorded::Held(None), "unfrozen, it pays");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_key_frozen_on_another_node_stops_at_the_ledger() -> TestResult {
    a_key_frozen_on_another_node_stops_at_the_ledger(&opentab_store::testing::fresh_postgres_url().await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_key_frozen_on_another_node_stops_at_the_ledger() -> TestResult {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("opentab.db").display());
    a_key_frozen_on_another_node_stops_at_the_ledger(&url).await
}
