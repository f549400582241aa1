//! Accumulation latency: from a charge accepted to it being counted for good. A paid call is
//! counted twice before it is served: in the counter store (the atomic charge) and in the
//! durable usage ledger (one committed row). This measures each, per call:
//!
//! - `counters_in_process` / `counters_redis`: the atomic charge (Redis: one Lua script round
//!   trip; skipped when `OPENTAB_TEST_REDIS`, default 127.0.0.1:6379, does not answer);
//! - `ledger_sqlite` / `ledger_postgres`: one ledger row committed, one call at a time
//!   (PostgreSQL from `OPENTAB_TEST_POSTGRES`, skipped when it does not answer);
//! - `ledger_*_64_at_once`: 64 calls recorded concurrently, as under load: the ledger's group
//!   commit puts the rows that queue up meanwhile into one transaction (time per 64 rows).
//!
//! `cargo bench -p opentab-proxy --bench accumulation`

use std::sync::atomic::{AtomicU64, Ordering};

use divan::Bencher;
use opentab_core::charge::ChargeRequest;
use opentab_core::{Address, B256, SigningKey, U256, Usdc};
use opentab_gateway::{CounterStore, InProcessCounters, RedisCounters, UsageKind, UsageLedger, UsageRecord};
use opentab_proxy::StoreLedger;

fn main() {
    divan::main();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("runtime: {e}"))
}

/// The n-th charge of one key: price 1, voucher n.
fn request(n: u64, signature: opentab_core::Signature) -> ChargeRequest {
    ChargeRequest {
        price: Usdc::from_base_units(1),
        voucher: U256::from(n),
        signature,
        limit: Usdc::from_base_units(u64::MAX / 4),
        tab_available: Usdc::from_base_units(u64::MAX / 4),
        owner_settled: Usdc::ZERO,
        idempotency: None,
    }
}

fn signature() -> opentab_core::Signature {
    SigningKey::random().sign_digest(&B256::repeat_byte(7))
}

#[divan::bench]
fn counters_in_process(bencher: Bencher) {
    let rt = runtime();
    let counters = InProcessCounters::default();
    let (key, owner, sig) = (Address::repeat_byte(1), Address::repeat_byte(2), signature());
    let n = AtomicU64::new(0);
    bencher.bench_local(|| {
        let n = n.fetch_add(1, Ordering::Relaxed) + 1;
        rt.block_on(counters.charge(key, owner, request(n, sig))).map(|r| r.is_ok())
    });
}

#[divan::bench]
fn counters_redis(bencher: Bencher) {
    let rt = runtime();
    let url = std::env::var("OPENTAB_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("opentab-bench-{}", std::process::id());
    let Ok(counters) = rt.block_on(RedisCounters::connect(&url, &prefix)) else {
        eprintln!("counters_redis: no Redis at {url}; skipped");
        return;
    };
    let (key, owner, sig) = (Address::repeat_byte(1), Address::repeat_byte(2), signature());
    let n = AtomicU64::new(0);
    bencher.bench_local(|| {
        let n = n.fetch_add(1, Ordering::Relaxed) + 1;
        rt.block_on(counters.charge(key, owner, request(n, sig))).map(|r| r.is_ok())
    });
}

fn record(n: u64, sig: opentab_core::Signature) -> UsageRecord {
    UsageRecord {
        at: 1,
        key: Address::repeat_byte(1),
        owner: Address::repeat_byte(2),
        kind: UsageKind::Charge,
        amount: Usdc::from_base_units(1),
        route: "POST /v1/chat/completions".into(),
        request_id: format!("bench-{n}"),
        voucher: U256::from(n),
        signature: Some(sig),
        idempotency: None,
        void_of: None,
        epoch: None,
    }
}

fn bench_ledger(bencher: Bencher, rt: &tokio::runtime::Runtime, store: opentab_store::Store, at_once: u64) {
    // The writer task lives on this runtime (driven by each block_on below).
    let ledger = rt.block_on(async { StoreLedger::new(store) });
    let (sig, n) = (signature(), AtomicU64::new(0));
    bencher.counter(divan::counter::ItemsCount::new(at_once)).bench_local(|| {
        let first = n.fetch_add(at_once, Ordering::Relaxed) + 1;
        let calls = (first..first + at_once).map(|i| ledger.record(record(i, sig)));
        rt.block_on(futures_util::future::join_all(calls)).iter().all(Result::is_ok)
    });
}

fn sqlite_store(rt: &tokio::runtime::Runtime) -> (opentab_store::Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let store = rt.block_on(opentab_store::testing::fresh_sqlite(dir.path())).unwrap_or_else(|e| panic!("sqlite: {e}"));
    (store, dir)
}

fn postgres_store(rt: &tokio::runtime::Runtime, bench: &str) -> Option<opentab_store::Store> {
    let store = rt.block_on(opentab_store::testing::fresh_postgres()).ok();
    if store.is_none() {
        eprintln!("{bench}: no PostgreSQL at {}; skipped", opentab_store::testing::postgres_admin_url());
    }
    store
}

#[divan::bench]
fn ledger_sqlite(bencher: Bencher) {
    let rt = runtime();
    let (store, _dir) = sqlite_store(&rt);
    bench_ledger(bencher, &rt, store, 1);
}

#[divan::bench]
fn ledger_sqlite_64_at_once(bencher: Bencher) {
    let rt = runtime();
    let (store, _dir) = sqlite_store(&rt);
    bench_ledger(bencher, &rt, store, 64);
}

#[divan::bench]
fn ledger_postgres(bencher: Bencher) {
    let rt = runtime();
    if let Some(store) = postgres_store(&rt, "ledger_postgres") {
        bench_ledger(bencher, &rt, store, 1);
    }
}

#[divan::bench]
fn ledger_postgres_64_at_once(bencher: Bencher) {
    let rt = runtime();
    if let Some(store) = postgres_store(&rt, "ledger_postgres_64_at_once") {
        bench_ledger(bencher, &rt, store, 64);
    }
}
