//! The gateway's key cache across nodes (issue 11): two stores on one database stand for two
//! processes (a REST API node and a gateway node). The gateway's directory answers from memory
//! once it has seen a key, and a change made on the other node, an off-chain freeze or a
//! deposit, reaches it through the database (PostgreSQL `NOTIFY`, SQLite's `key_changes`).

use std::time::{Duration, Instant};

use opentab_core::{Address, B256, Usdc, ValidatorEvent};
use opentab_gateway::KeyDirectory;
use opentab_proxy::StoreDirectory;
use opentab_store::{NewKey, Store, StoredEvent};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

const OWNER: Address = Address::repeat_byte(0xa1);
const PAYEE: Address = Address::repeat_byte(0xee);
const VALIDATOR: Address = Address::repeat_byte(0x77);

fn at(block: u64, event: ValidatorEvent) -> StoredEvent {
    StoredEvent {
        block_number: block,
        log_index: 0,
        block_hash: B256::with_last_byte(block as u8),
        tx_hash: B256::with_last_byte(block as u8),
        event,
    }
}

fn deposit(block: u64, units: u64) -> StoredEvent {
    at(block, ValidatorEvent::Deposited { owner: OWNER, payee: PAYEE, amount: Usdc::from_base_units(units) })
}

/// Polls the gateway's directory until `check` holds, for up to 10 s; how long it took.
async fn until(
    directory: &StoreDirectory,
    key: Address,
    what: &str,
    check: impl Fn(&opentab_gateway::KeyInfo) -> bool,
) -> TestResult<Duration> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if directory.key(key).await?.as_ref().is_some_and(&check) {
            return Ok(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Err(format!("the gateway's node never saw {what}").into())
}

async fn a_change_on_one_node_reaches_the_cache_of_another(url: &str) -> TestResult {
    let api = Store::connect(url).await?;
    let gateway = Store::connect(url).await?;
    let key = NewKey {
        address: Address::repeat_byte(0x0b),
        owner: OWNER,
        payee: PAYEE,
        limit: Usdc::ONE,
        valid_after: 0,
        valid_until: 2_000_000_000,
    };
    api.insert_pending_key(&key, 100).await?;
    let directory = StoreDirectory::new(gateway.clone());
    // Pending: unknown to the gateway, and not remembered as unknown.
    assert_eq!(directory.key(key.address).await?, None);
    let registered = ValidatorEvent::Registered {
        owner: OWNER,
        session_key: key.address,
        payee: PAYEE,
        limit: key.limit,
        valid_after: key.valid_after,
        valid_until: key.valid_until,
    };
    api.apply_chain_update(VALIDATOR, None, &[deposit(1, 500_000), at(2, registered)], "{}", 100).await?;
    let seen = directory.key(key.address).await?.ok_or("registered, so known at once")?;
    assert_eq!((seen.frozen_offchain, seen.tab_available), (false, Usdc::from_base_units(500_000)));

    // Served from memory from now on. (The feed forgets everything once when it starts
    // listening, since it cannot know what changed before: a round may see that miss.)
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let (hits, misses) = directory.cache_stats();
        for _ in 0..100 {
            directory.key(key.address).await?;
        }
        let (hits_after, misses_after) = directory.cache_stats();
        rounds.push((hits_after - hits, misses_after - misses));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rounds.contains(&(100, 0)), "no database read for a key in use: {rounds:?}");
    let (_, misses) = directory.cache_stats();

    // An owner freezes the key through the API node: the gateway's node hears of it.
    api.freeze_offchain(key.address, 200).await?;
    let waited = until(&directory, key.address, "the freeze", |k| k.frozen_offchain).await?;
    eprintln!("the freeze reached the other node's cache in {waited:?}");
    // A deposit (the chain listener, on the API node) raises the budget there too.
    api.apply_chain_update(VALIDATOR, None, &[deposit(3, 250_000)], "{}", 300).await?;
    until(&directory, key.address, "the deposit", |k| k.tab_available == Usdc::from_base_units(750_000)).await?;
    let (_, misses_after) = directory.cache_stats();
    assert!(misses_after > misses, "each change was read again from the database");

    // In the process that made the change, the next call sees it: no waiting at all (the
    // gateway's pool of `opentab dev` shares the API's change feed).
    let local = StoreDirectory::new(api.another_pool().await?);
    assert_eq!(local.key(key.address).await?.ok_or("known")?.tab_available, Usdc::from_base_units(750_000));
    api.unfreeze_offchain(key.address, 400).await?;
    assert!(!local.key(key.address).await?.ok_or("known")?.frozen_offchain, "unfrozen on the very next call");
    api.freeze_offchain(key.address, 401).await?;
    assert!(local.key(key.address).await?.ok_or("known")?.frozen_offchain, "frozen on the very next call");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_change_on_one_node_reaches_the_cache_of_another() -> TestResult {
    a_change_on_one_node_reaches_the_cache_of_another(&opentab_store::testing::fresh_postgres_url().await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_change_on_one_node_reaches_the_cache_of_another() -> TestResult {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("opentab.db").display());
    a_change_on_one_node_reaches_the_cache_of_another(&url).await
}

/// Issue 11: with 100,000 keys each called less than once a minute, every call read the
/// database (an entry lived 60 s, and was read one key at a time). A preloaded directory has
/// every registered key of its payee, and its owner's budget, in memory before the first call;
/// a key of another payee is not loaded; a key registered later is read once, then cached; a
/// freeze made on another node still reaches it.
async fn a_preloaded_directory_answers_first_calls_from_memory(url: &str) -> TestResult {
    let api = Store::connect(url).await?;
    let mut events = vec![deposit(1, 900_000)];
    let keys: Vec<Address> = (1..=50u8).map(Address::repeat_byte).collect();
    for (i, key) in keys.iter().enumerate() {
        let registered = ValidatorEvent::Registered {
            owner: OWNER,
            session_key: *key,
            payee: PAYEE,
            limit: Usdc::ONE,
            valid_after: 0,
            valid_until: 2_000_000_000,
        };
        events.push(at(2 + i as u64, registered));
    }
    let elsewhere = Address::repeat_byte(0xcc);
    events.push(at(
        100,
        ValidatorEvent::Registered {
            owner: OWNER,
            session_key: elsewhere,
            payee: Address::repeat_byte(0xdd),
            limit: Usdc::ONE,
            valid_after: 0,
            valid_until: 2_000_000_000,
        },
    ));
    api.apply_chain_update(VALIDATOR, None, &events, "{}", 100).await?;

    let gateway = Store::connect(url).await?;
    let directory = StoreDirectory::preloaded(gateway.clone(), PAYEE).await?;
    assert_eq!(directory.cache_size(), keys.len(), "every key of the payee, and only those");
    for key in &keys {
        let info = directory.key(*key).await?.ok_or("a registered key")?;
        assert_eq!(info.tab_available, Usdc::from_base_units(900_000));
    }
    assert_eq!(directory.cache_stats(), (keys.len() as u64, 0), "no first call read the database");

    // Registered after the load: read once, then from memory.
    let late = Address::repeat_byte(0x99);
    let registered = ValidatorEvent::Registered {
        owner: OWNER,
        session_key: late,
        payee: PAYEE,
        limit: Usdc::ONE,
        valid_after: 0,
        valid_until: 2_000_000_000,
    };
    api.apply_chain_update(VALIDATOR, None, &[at(101, registered)], "{}", 200).await?;
    until(&directory, late, "the late key", |_| true).await?;
    // The other node's announcement of the registration may arrive after that read, and drop
    // it: let it arrive, read once more, then it stays.
    tokio::time::sleep(Duration::from_millis(300)).await;
    directory.key(late).await?;
    let (_, misses) = directory.cache_stats();
    directory.key(late).await?;
    assert_eq!(directory.cache_stats().1, misses, "the late key is cached once read");

    // A freeze on the API node reaches the preloaded cache.
    api.freeze_offchain(keys[7], 300).await?;
    until(&directory, keys[7], "the freeze", |k| k.frozen_offchain).await?;
    assert!(!directory.key(keys[8]).await?.ok_or("known")?.frozen_offchain, "only that key");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_preloaded_directory_answers_first_calls_from_memory() -> TestResult {
    a_preloaded_directory_answers_first_calls_from_memory(&opentab_store::testing::fresh_postgres_url().await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_preloaded_directory_answers_first_calls_from_memory() -> TestResult {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("opentab.db").display());
    a_preloaded_directory_answers_first_calls_from_memory(&url).await
}
