//! The two implementations of the charge rule cannot drift (issue 11): the in-process counters
//! (`opentab_core::charge`) and Redis's Lua script take the same random walks of charges,
//! voids, idempotent retries and settlements, with vouchers and prices at the boundaries, and
//! must answer every step alike and end with the same counters. Every step also keeps the money
//! invariants: nothing served beyond the best voucher, the key's limit or the owner's budget.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

use opentab_core::charge::{ChargeRequest, Charged, KeyCounters};
use opentab_core::{Address, B256, Signature, SigningKey, U256, Usdc};
use opentab_gateway::{CounterStore, InProcessCounters, RedisCounters};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

const OWNER: Address = Address::repeat_byte(0x0a);
const KEYS: [Address; 3] = [Address::repeat_byte(0xa1), Address::repeat_byte(0xa2), Address::repeat_byte(0xa3)];
const LIMITS: [u64; 3] = [9_000, 40_000, 1_000_000];
const PRICES: [u64; 4] = [1, 999, 2_000, 5_000];

/// splitmix64: a seeded walk that replays exactly.
struct Walk(u64);

impl Walk {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

fn sig(n: U256) -> Signature {
    SigningKey::from_bytes(&B256::with_last_byte(1))
        .map(|k| k.sign_digest(&B256::from(n)))
        .unwrap_or_else(|_| unreachable!())
}

async fn redis() -> TestResult<RedisCounters> {
    static N: AtomicU32 = AtomicU32::new(0);
    let url = std::env::var("OPENTAB_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos();
    let prefix = format!("opentab-walk:{}:{}:{nanos}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    Ok(RedisCounters::connect(&url, &prefix).await?)
}

/// A charge that went through, to void later.
#[derive(Debug, Clone, Copy)]
struct Taken {
    key: Address,
    price: Usdc,
    idempotency: Option<B256>,
}

async fn walk(seed: u64, steps: usize) -> TestResult {
    let (model, redis) = (InProcessCounters::default(), redis().await?);
    let mut w = Walk(seed);
    // The owner's tab as the chain has it: settlements move budget from it to `settled`.
    let (mut tab, mut settled) = (Usdc::from_base_units(60_000), Usdc::ZERO);
    let mut taken: Vec<Taken> = Vec::new();
    let mut outcomes: HashMap<&'static str, u32> = HashMap::new();
    for step in 0..steps {
        let roll = w.below(100);
        if roll < 70 {
            let k = w.below(KEYS.len() as u64) as usize;
            let key = KEYS[k];
            let price = Usdc::from_base_units(w.pick(&PRICES));
            let now = model.key(key)?;
            let due = now.served.to_u256() + price.to_u256();
            // Vouchers at the boundary (exactly due, one short), behind, ahead, and, rarely (it
            // covers the key for good), huge.
            let voucher = match w.below(50) {
                0 => U256::from(1) << 200,
                1..=15 => due,
                16..=28 => due - U256::from(1),
                29..=35 => now.best,
                36..=42 => due + U256::from(w.below(5_000)),
                _ => U256::from(w.below(60_000)),
            };
            let idempotency = (w.below(5) == 0).then(|| B256::with_last_byte(w.below(4) as u8));
            let request = ChargeRequest {
                price,
                voucher,
                signature: sig(voucher),
                limit: Usdc::from_base_units(LIMITS[k]),
                tab_available: tab,
                owner_settled: settled,
                idempotency,
            };
            let expected = model.charge(key, OWNER, request).await?;
            // Redis also counts the key's last minute of charges (for the rate rule): not a rule.
            let got = redis.charge(key, OWNER, request).await?.map(|c| Charged { recent_calls: None, ..c });
            assert_eq!(got, expected, "seed {seed} step {step}: charge {request:?} of {key}");
            let outcome = match &expected {
                Ok(_) => "charged",
                Err(refused) => refused_name(refused),
            };
            *outcomes.entry(outcome).or_default() += 1;
            if expected.is_ok() {
                taken.push(Taken { key, price, idempotency });
            }
        } else if roll < 85 {
            if taken.is_empty() {
                continue;
            }
            let t = taken.swap_remove(w.below(taken.len() as u64) as usize);
            model.void(t.key, OWNER, t.price, t.idempotency, None).await?;
            redis.void(t.key, OWNER, t.price, t.idempotency, None).await?;
            *outcomes.entry("voided").or_default() += 1;
        } else {
            // A settlement of part of what is served and unsettled.
            let unsettled = model.owner_served(OWNER)?.saturating_sub(settled);
            let amount = Usdc::from_base_units(w.below(unsettled.base_units() + 1));
            tab = tab.saturating_sub(amount);
            settled = settled.saturating_add(amount);
        }
        for (k, key) in KEYS.iter().enumerate() {
            let (a, b) = (model.key(*key)?, redis.key(*key, OWNER).await?);
            assert_eq!(counters(&a), counters(&b), "seed {seed} step {step}: counters of {key}");
            assert!(a.served.to_u256() <= a.best, "served beyond the best voucher");
            assert!(a.served <= Usdc::from_base_units(LIMITS[k]), "served beyond the limit");
        }
        let owed = model.owner_served(OWNER)?;
        assert_eq!(owed, redis.owner_served(OWNER).await?, "seed {seed} step {step}: owner served");
        assert!(owed <= tab.saturating_add(settled), "served beyond the owner's budget");
    }
    // The walk reached every outcome, so the comparison covered them all.
    for outcome in ["charged", "voided", "voucher_too_low", "limit_exceeded", "insufficient_funds", "duplicate"] {
        assert!(outcomes.get(outcome).is_some_and(|n| *n > 0), "seed {seed}: never {outcome}: {outcomes:?}");
    }
    Ok(())
}

fn counters(c: &KeyCounters) -> (Usdc, U256, Option<Signature>) {
    (c.served, c.best, c.best_signature)
}

fn refused_name(refused: &opentab_core::charge::ChargeRefused) -> &'static str {
    use opentab_core::charge::ChargeRefused;
    match refused {
        ChargeRefused::VoucherTooLow { .. } => "voucher_too_low",
        ChargeRefused::LimitExceeded { .. } => "limit_exceeded",
        ChargeRefused::InsufficientFunds { .. } => "insufficient_funds",
        ChargeRefused::DuplicatePayment => "duplicate",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lua_script_and_the_core_rule_take_the_same_walks() -> TestResult {
    for seed in [1, 7, 2026] {
        walk(seed, 600).await?;
    }
    Ok(())
}
