//! One behavioural suite for both counter stores: in-process, and Redis for real (a fresh key
//! prefix per test; `OPENTAB_TEST_REDIS`, default `redis://127.0.0.1:6379`; `scripts/test.sh`
//! starts a Redis of its own when none answers). Includes many concurrent out-of-order
//! vouchers for one key and a replay storm.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use opentab_core::charge::{ChargeRefused, ChargeRequest, KeyCounters};
use opentab_core::{Address, B256, Signature, SigningKey, U256, Usdc};
use opentab_gateway::{CounterError, CounterStore, InProcessCounters, RedisCounters, Unavailable};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

const OWNER: Address = Address::repeat_byte(0x01);
const PRICE: u64 = 2_000;

/// Reading counters back, for assertions.
trait Probe: CounterStore + 'static {
    fn counters(&self, key: Address) -> impl std::future::Future<Output = Result<KeyCounters, Unavailable>> + Send;
    fn owed(&self) -> impl std::future::Future<Output = Result<Usdc, Unavailable>> + Send;
}

impl Probe for InProcessCounters {
    async fn counters(&self, key: Address) -> Result<KeyCounters, Unavailable> {
        self.key(key)
    }
    async fn owed(&self) -> Result<Usdc, Unavailable> {
        self.owner_served(OWNER)
    }
}

impl Probe for RedisCounters {
    async fn counters(&self, key: Address) -> Result<KeyCounters, Unavailable> {
        self.key(key, OWNER).await
    }
    async fn owed(&self) -> Result<Usdc, Unavailable> {
        self.owner_served(OWNER).await
    }
}

async fn redis() -> TestResult<RedisCounters> {
    static N: AtomicU32 = AtomicU32::new(0);
    let url = std::env::var("OPENTAB_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos();
    let prefix = format!("opentab-test:{}:{}:{nanos}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    Ok(RedisCounters::connect(&url, &prefix).await?)
}

fn sig(n: u64) -> Signature {
    SigningKey::from_bytes(&B256::with_last_byte(1))
        .map(|k| k.sign_digest(&B256::from(U256::from(n))))
        .unwrap_or_else(|_| unreachable!())
}

fn req(price: u64, voucher: U256, limit: u64, tab: u64) -> ChargeRequest {
    ChargeRequest {
        price: Usdc::from_base_units(price),
        voucher,
        signature: sig(voucher.saturating_to::<u64>()),
        limit: Usdc::from_base_units(limit),
        tab_available: Usdc::from_base_units(tab),
        owner_settled: Usdc::ZERO,
        idempotency: None,
    }
}

macro_rules! on_both_stores {
    ($($test:ident),* $(,)?) => {
        mod in_process {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() -> super::TestResult {
                super::$test(std::sync::Arc::new(opentab_gateway::InProcessCounters::default())).await
            })*
        }
        mod redis_store {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() -> super::TestResult { super::$test(std::sync::Arc::new(super::redis().await?)).await })*
        }
    };
}

on_both_stores!(
    an_idempotency_key_is_charged_once_until_voided,
    a_settlement_moves_budget_from_the_tab_to_settled,
    charges_follow_the_rule_and_refusals_change_nothing,
    the_owner_tab_bounds_all_its_keys,
    voids_give_back_but_keep_the_best_voucher,
    huge_vouchers_compare_by_number,
    concurrent_out_of_order_vouchers_never_overserve,
    a_replay_storm_buys_one_call,
    an_id_is_claimed_once,
);

async fn an_id_is_claimed_once<S: Probe>(s: Arc<S>) -> TestResult {
    let (a, b) = (B256::repeat_byte(0xa), B256::repeat_byte(0xb));
    // Many at once (as two gateway nodes voiding the same charge would): exactly one wins.
    let mut claims = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let s = s.clone();
        claims.spawn(async move { s.claim(OWNER, a, 60).await });
    }
    let mut won = 0;
    while let Some(claimed) = claims.join_next().await {
        won += u32::from(claimed??);
    }
    assert_eq!(won, 1);
    assert!(!s.claim(OWNER, a, 60).await?, "claimed already");
    assert!(s.claim(OWNER, b, 60).await?, "another id is its own");
    // A claim given back (its void failed) can be claimed again, once.
    s.release(OWNER, a).await?;
    assert!(s.claim(OWNER, a, 60).await?, "released, claimable again");
    assert!(!s.claim(OWNER, a, 60).await?);
    Ok(())
}

async fn charges_follow_the_rule_and_refusals_change_nothing<S: Probe>(s: Arc<S>) -> TestResult {
    let key = Address::repeat_byte(0xa1);
    let ok = s.charge(key, OWNER, req(PRICE, U256::from(PRICE), 5_000, 1_000_000)).await??;
    assert_eq!((ok.served, ok.remaining), (Usdc::from_base_units(PRICE), Usdc::from_base_units(3_000)));
    let replay = s.charge(key, OWNER, req(PRICE, U256::from(PRICE), 5_000, 1_000_000)).await?;
    assert_eq!(
        replay,
        Err(ChargeRefused::VoucherTooLow { needed: Usdc::from_base_units(4_000), signed: U256::from(PRICE) })
    );
    s.charge(key, OWNER, req(PRICE, U256::from(2 * PRICE), 5_000, 1_000_000)).await??;
    let over = s.charge(key, OWNER, req(PRICE, U256::from(3 * PRICE), 5_000, 1_000_000)).await?;
    assert_eq!(
        over,
        Err(ChargeRefused::LimitExceeded { needed: Usdc::from_base_units(6_000), limit: Usdc::from_base_units(5_000) })
    );
    let c = s.counters(key).await?;
    assert_eq!(
        (c.served, c.best, c.best_signature),
        (Usdc::from_base_units(4_000), U256::from(4_000), Some(sig(4_000)))
    );
    assert_eq!(s.owed().await?, Usdc::from_base_units(4_000));
    Ok(())
}

async fn the_owner_tab_bounds_all_its_keys<S: Probe>(s: Arc<S>) -> TestResult {
    let (a, b) = (Address::repeat_byte(0xa2), Address::repeat_byte(0xb2));
    s.charge(a, OWNER, req(7_000, U256::from(7_000), 1_000_000, 10_000)).await??;
    let refused = s.charge(b, OWNER, req(4_000, U256::from(4_000), 1_000_000, 10_000)).await?;
    assert_eq!(
        refused,
        Err(ChargeRefused::InsufficientFunds {
            available: Usdc::from_base_units(3_000),
            needed: Usdc::from_base_units(4_000)
        })
    );
    s.charge(b, OWNER, req(3_000, U256::from(3_000), 1_000_000, 10_000)).await??;
    assert_eq!(s.owed().await?, Usdc::from_base_units(10_000));
    Ok(())
}

async fn a_settlement_moves_budget_from_the_tab_to_settled<S: Probe>(s: Arc<S>) -> TestResult {
    let key = Address::repeat_byte(0xa7);
    s.charge(key, OWNER, req(6_000, U256::from(6_000), 1_000_000, 10_000)).await??;
    // 6_000 settles: the tab drops to 4_000, the owner's settled rises to 6_000. Still 4_000
    // free, no more, and the counters were never reset.
    let mut r = req(4_001, U256::from(10_001), 1_000_000, 4_000);
    r.owner_settled = Usdc::from_base_units(6_000);
    assert_eq!(
        s.charge(key, OWNER, r).await?,
        Err(ChargeRefused::InsufficientFunds {
            available: Usdc::from_base_units(4_000),
            needed: Usdc::from_base_units(4_001)
        })
    );
    r.price = Usdc::from_base_units(4_000);
    s.charge(key, OWNER, r).await??;
    assert_eq!(s.owed().await?, Usdc::from_base_units(10_000), "served in all");
    Ok(())
}

async fn an_idempotency_key_is_charged_once_until_voided<S: Probe>(s: Arc<S>) -> TestResult {
    let key = Address::repeat_byte(0xa8);
    let id = opentab_gateway::idempotency_hash(key, "retry-me-123");
    let with_id =
        |voucher: u64| ChargeRequest { idempotency: Some(id), ..req(PRICE, U256::from(voucher), 1_000_000, 1_000_000) };
    s.charge(key, OWNER, with_id(PRICE)).await??;
    // The client retries the same request (it never saw the answer): not charged again.
    assert_eq!(s.charge(key, OWNER, with_id(2 * PRICE)).await?, Err(ChargeRefused::DuplicatePayment));
    assert_eq!(s.counters(key).await?.served, Usdc::from_base_units(PRICE), "a duplicate changes nothing");
    // Another key's request with the same id text is its own.
    let other = Address::repeat_byte(0xa9);
    let other_id = opentab_gateway::idempotency_hash(other, "retry-me-123");
    let mut r = req(PRICE, U256::from(PRICE), 1_000_000, 1_000_000);
    r.idempotency = Some(other_id);
    s.charge(other, OWNER, r).await??;
    // The call failed and was voided: its retry is charged.
    s.void(key, OWNER, Usdc::from_base_units(PRICE), Some(id), None).await?;
    s.charge(key, OWNER, with_id(2 * PRICE)).await??;
    assert_eq!(s.counters(key).await?.served, Usdc::from_base_units(PRICE));
    Ok(())
}

async fn voids_give_back_but_keep_the_best_voucher<S: Probe>(s: Arc<S>) -> TestResult {
    let key = Address::repeat_byte(0xa3);
    s.charge(key, OWNER, req(PRICE, U256::from(PRICE), 1_000_000, 1_000_000)).await??;
    s.void(key, OWNER, Usdc::from_base_units(PRICE), None, None).await?;
    let c = s.counters(key).await?;
    assert_eq!((c.served, c.best), (Usdc::ZERO, U256::from(PRICE)));
    assert_eq!(s.owed().await?, Usdc::ZERO);
    s.void(key, OWNER, Usdc::from_base_units(PRICE), None, None).await?;
    assert_eq!(s.counters(key).await?.served, Usdc::ZERO, "a stray void never goes below zero");
    s.charge(key, OWNER, req(PRICE, U256::from(PRICE), 1_000_000, 1_000_000)).await??;
    Ok(())
}

async fn huge_vouchers_compare_by_number<S: Probe>(s: Arc<S>) -> TestResult {
    let key = Address::repeat_byte(0xa4);
    s.charge(key, OWNER, req(PRICE, U256::MAX, 1_000_000, 1_000_000)).await??;
    // A 9-digit voucher after a 78-digit one: best stays the larger.
    s.charge(key, OWNER, req(PRICE, U256::from(999_999_999u64), 1_000_000, 1_000_000)).await??;
    assert_eq!(s.counters(key).await?.best, U256::MAX);
    Ok(())
}

async fn concurrent_out_of_order_vouchers_never_overserve<S: Probe>(s: Arc<S>) -> TestResult {
    let key = Address::repeat_byte(0xa5);
    let mut amounts: Vec<u64> = (1..=150u64).map(|i| i * PRICE).collect();
    amounts.sort_by_key(|a| (a.wrapping_mul(2_654_435_761) >> 5) % 101);
    let tasks: Vec<_> = amounts
        .into_iter()
        .map(|amount| {
            let s = s.clone();
            tokio::spawn(async move {
                s.charge(key, OWNER, req(PRICE, U256::from(amount), u64::MAX / 4, u64::MAX / 4)).await
            })
        })
        .collect();
    let mut ok = 0u64;
    for task in tasks {
        ok += u64::from(matches!(task.await?, Ok(Ok(_))));
    }
    let c = s.counters(key).await?;
    assert_eq!(c.served, Usdc::from_base_units(ok * PRICE), "each success charged once");
    assert!(c.served.to_u256() <= c.best);
    assert_eq!(c.best, U256::from(150 * PRICE));
    Ok(())
}

async fn a_replay_storm_buys_one_call<S: Probe>(s: Arc<S>) -> TestResult {
    let key = Address::repeat_byte(0xa6);
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.charge(key, OWNER, req(PRICE, U256::from(PRICE), 1_000_000, 1_000_000)).await })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        ok += u32::from(matches!(task.await?, Ok(Ok(_))));
    }
    assert_eq!(ok, 1, "one voucher, one call");
    assert_eq!(s.counters(key).await?.served, Usdc::from_base_units(PRICE));
    Ok(())
}

#[tokio::test]
async fn an_unreachable_redis_fails_closed() {
    let outcome = RedisCounters::connect("redis://127.0.0.1:1", "x").await;
    assert!(matches!(outcome, Err(Unavailable::Counters(CounterError::Redis(_)))), "{outcome:?}");
}

/// A ledger twin for rebuilds: what each key was served, and how often the owner's total (a
/// sum over all its keys, costly at 100,000 keys) was asked for.
#[derive(Debug, Default)]
struct Ledger {
    served: std::sync::Mutex<std::collections::HashMap<Address, u64>>,
    owner_reads: AtomicU32,
    key_reads: AtomicU32,
}

impl opentab_gateway::CounterSource for Ledger {
    fn counters(&self, key: Address, _owner: Address, with_owner: bool) -> opentab_gateway::SourceFuture<'_> {
        Box::pin(async move {
            let served = self.served.lock().map_err(|_| CounterError::Poisoned)?.clone();
            // Each read raises the epochs, as the ledger's does.
            let epoch = u64::from(self.key_reads.fetch_add(1, Ordering::SeqCst)) + 1;
            if with_owner {
                self.owner_reads.fetch_add(1, Ordering::SeqCst);
            }
            let of_key = served.get(&key).copied().unwrap_or(0);
            Ok(opentab_gateway::Restored {
                counters: KeyCounters { served: Usdc::from_base_units(of_key), ..KeyCounters::default() },
                owner_served: with_owner.then(|| Usdc::from_base_units(served.values().sum())),
                idempotency: Vec::new(),
                epoch: opentab_gateway::CounterEpoch { key: epoch, owner: epoch },
            })
        })
    }
}

/// Issue 11: with 100,000 keys, each key's first charge on a fresh Redis rebuilt its counters
/// and summed the owner's whole ledger too. Now the owner's total is read only when Redis lacks
/// it: the first key of an owner reads it, the next keys do not; after a flush it is read once
/// again and the owner's budget still bounds all its keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_reads_the_owners_total_only_when_it_is_missing() -> TestResult {
    let ledger = Arc::new(Ledger::default());
    let s = redis().await?.with_source(ledger.clone());
    let keys: Vec<Address> = (1..=5u8).map(Address::repeat_byte).collect();
    for key in &keys {
        s.charge(*key, OWNER, req(PRICE, U256::from(PRICE), 1_000_000, 10 * PRICE)).await??;
        ledger.served.lock().map_err(|_| "poisoned")?.insert(*key, PRICE);
    }
    assert_eq!(ledger.key_reads.load(Ordering::SeqCst), 5, "each new key is rebuilt");
    assert_eq!(ledger.owner_reads.load(Ordering::SeqCst), 1, "the owner's total once");
    assert_eq!(s.owed().await?, Usdc::from_base_units(5 * PRICE));

    // Redis loses everything: the next charge rebuilds the owner's total from the ledger, and
    // the budget (10 × PRICE) still counts what the other keys were served.
    let url = std::env::var("OPENTAB_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
    let names: Vec<String> = redis::cmd("KEYS").arg(s.pattern()).query_async(&mut conn).await?;
    for name in names {
        let _: () = redis::cmd("DEL").arg(name).query_async(&mut conn).await?;
    }
    let refused = s.charge(keys[0], OWNER, req(6 * PRICE, U256::from(7 * PRICE), 1_000_000, 10 * PRICE)).await?;
    assert!(matches!(refused, Err(ChargeRefused::InsufficientFunds { .. })), "{refused:?}");
    assert_eq!(ledger.owner_reads.load(Ordering::SeqCst), 2, "read again once it was lost");
    s.charge(keys[0], OWNER, req(5 * PRICE, U256::from(6 * PRICE), 1_000_000, 10 * PRICE)).await??;
    assert_eq!(s.owed().await?, Usdc::from_base_units(10 * PRICE), "exactly the budget");
    Ok(())
}

/// Issue 12: the rate rule must see a key whole when it is spread over several proxies. The
/// charge script counts the key's charges of the last minute in Redis, whichever gateway took
/// them: two gateways on one Redis, 30 charges each, and the 60th reports 60.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_minute_of_a_key_is_counted_across_gateways() -> TestResult {
    let one = redis().await?;
    let url = std::env::var("OPENTAB_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let two = RedisCounters::connect(&url, one.prefix()).await?;
    let key = Address::repeat_byte(0xc1);
    let mut last = None;
    for n in 1..=60u64 {
        let node = if n % 2 == 0 { &one } else { &two };
        let charged = node.charge(key, OWNER, req(PRICE, U256::from(n * PRICE), u64::MAX / 4, u64::MAX / 4)).await??;
        assert_eq!(charged.recent_calls, Some(n as u32), "charge {n}");
        last = Some(charged);
    }
    assert_eq!(last.and_then(|c| c.recent_calls), Some(60));
    // Another key has its own count.
    let other =
        one.charge(Address::repeat_byte(0xc2), OWNER, req(PRICE, U256::from(PRICE), 10_000, u64::MAX / 4)).await??;
    assert_eq!(other.recent_calls, Some(1));
    // In-process counters leave the count to the one gateway that sees every call.
    let alone =
        InProcessCounters::default().charge(key, OWNER, req(PRICE, U256::from(PRICE), 10_000, 10_000)).await??;
    assert_eq!(alone.recent_calls, None);
    Ok(())
}

/// Issue 12 (found by `opentab chaos`, a proxy cut off from Redis): a counter script that gets
/// no answer may have run or not. Here a void's script fails while the link to Redis is cut:
/// the ledger has the void, the counters do not. Once Redis answers again, the key's counters
/// are dropped and rebuilt from the ledger, so the voided call's voucher pays again. (Before,
/// the counters kept the voided price for good: the same voucher was refused as too low.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_a_script_left_unsure_are_rebuilt_from_the_ledger() -> TestResult {
    let url = std::env::var("OPENTAB_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let target = url.trim_start_matches("redis://").trim_end_matches('/').to_owned();
    let link = opentab_topology::Link::start(&target).await?;
    let ledger = Arc::new(Ledger::default());
    let prefix = redis().await?.prefix().to_owned();
    let s = RedisCounters::connect(&format!("redis://{}", link.addr()), &prefix).await?.with_source(ledger.clone());
    let key = Address::repeat_byte(0xd1);
    s.charge(key, OWNER, req(PRICE, U256::from(PRICE), 1_000_000, 1_000_000)).await??;
    ledger.served.lock().map_err(|_| "poisoned")?.insert(key, PRICE);

    // The call fails; its void reaches the ledger, not Redis.
    link.cut();
    ledger.served.lock().map_err(|_| "poisoned")?.insert(key, 0);
    let void = s.void(key, OWNER, Usdc::from_base_units(PRICE), None, None).await;
    assert!(void.is_err(), "Redis was unreachable");
    link.restore();

    // Once Redis answers, the counters are rebuilt from the ledger: the voucher pays again.
    let mut charged = None;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if let Ok(Ok(c)) = s.charge(key, OWNER, req(PRICE, U256::from(PRICE), 1_000_000, 1_000_000)).await {
            charged = Some(c);
            break;
        }
    }
    let charged = charged.ok_or("the voided call's voucher never paid again: the counters kept its price")?;
    assert_eq!(charged.served, Usdc::from_base_units(PRICE));
    Ok(())
}
