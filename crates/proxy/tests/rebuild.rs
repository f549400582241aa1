//! Redis loses its counters while a charge taken on them is still committing (issue 12): the
//! rebuild that follows reads a ledger without that charge. Two gateway nodes on one real Redis
//! and one database (PostgreSQL and SQLite): node A takes a charge, Redis is emptied, node B's
//! next call rebuilds the counters from the ledger, then A's row reaches the ledger. It must be
//! refused (503, try again) and nothing given back, so the ledger and the counters agree and no
//! call is served beyond the best voucher. (Before epochs, A's row committed: the counters
//! missed one call for good, and the next voucher paid for one call less than was served.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::http::StatusCode;
use opentab_core::x402::{PaymentPayload, SessionPayload, encode_header};
use opentab_core::{Address, ContractDomain, SessionKey, SigningKey, U256, Usdc, Voucher};
use opentab_gateway::pricing::{PricedRoute, Pricing};
use opentab_gateway::{
    Authorized, Gateway, GatewayConfig, KeyDirectory, KeyInfo, PaymentHeaders, RedisCounters, Unavailable,
};
use opentab_proxy::{StoreCounterSource, StoreLedger};
use opentab_store::Store;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;
type Node = Gateway<Arc<Fixed>, RedisCounters, StoreLedger>;

const PAYEE: Address = Address::repeat_byte(0x0e);
const OWNER: Address = Address::repeat_byte(0x01);
const PRICE: u64 = 2_000;

/// The one key both nodes serve (the key cache is not what this is about).
#[derive(Debug)]
struct Fixed(KeyInfo);

impl KeyDirectory for Fixed {
    async fn key(&self, key: Address) -> Result<Option<KeyInfo>, Unavailable> {
        Ok((key == self.0.key.address).then(|| self.0.clone()))
    }
}

fn redis_url() -> String {
    std::env::var("OPENTAB_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A key name prefix no other test uses.
fn prefix() -> TestResult<String> {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos();
    Ok(format!("opentab-test-rebuild:{}:{}:{nanos}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)))
}

/// Every name of `counters` gone, as `FLUSHALL` or a failover to an empty replica leaves it.
async fn lose_everything(counters: &RedisCounters) -> TestResult {
    let mut conn = redis::Client::open(redis_url())?.get_multiplexed_async_connection().await?;
    let names: Vec<String> = redis::cmd("KEYS").arg(counters.pattern()).query_async(&mut conn).await?;
    assert!(!names.is_empty(), "the counters were in Redis");
    let _: () = redis::cmd("DEL").arg(names).query_async(&mut conn).await?;
    Ok(())
}

struct World {
    a: Node,
    b: Node,
    key: SigningKey,
    route: PricedRoute,
    store: Store,
}

async fn node(store: &Store, prefix: &str, key: &KeyInfo, config: &GatewayConfig) -> TestResult<Node> {
    let counters = RedisCounters::connect(&redis_url(), prefix)
        .await?
        .with_source(Arc::new(StoreCounterSource::new(store.clone())));
    Ok(Gateway {
        config: config.clone(),
        pricing: Pricing::new([("POST /v1/chat", "0.002")])?,
        directory: Arc::new(Fixed(key.clone())),
        counters,
        ledger: StoreLedger::new(store.clone()),
        observer: None,
    })
}

async fn world(store: Store) -> TestResult<World> {
    let config = GatewayConfig {
        domain: ContractDomain::opentab(31337, Address::repeat_byte(0x77)),
        asset: Address::repeat_byte(0x05),
        pay_to: PAYEE,
        max_timeout_seconds: 60,
    };
    let key = SigningKey::random();
    let info = KeyInfo {
        key: SessionKey {
            address: key.address(),
            owner: OWNER,
            payee: PAYEE,
            limit: Usdc::from_base_units(1_000_000),
            valid_after: 0,
            valid_until: u64::MAX / 2,
            frozen_at: None,
            revoked_at: None,
            settled: Usdc::ZERO,
        },
        frozen_offchain: false,
        tab_available: Usdc::from_base_units(1_000_000),
        owner_settled: Usdc::ZERO,
    };
    let prefix = prefix()?;
    let a = node(&store, &prefix, &info, &config).await?;
    let b = node(&store, &prefix, &info, &config).await?;
    let route = a.pricing.routes()[0].clone();
    Ok(World { a, b, key, route, store })
}

impl World {
    fn payment(&self, cumulative: u64) -> PaymentHeaders {
        let voucher = Voucher::new(self.key.address(), PAYEE, U256::from(cumulative));
        let payload = PaymentPayload {
            x402_version: 2,
            accepted: self.a.config.requirements(&self.route),
            payload: SessionPayload {
                session_key: self.key.address(),
                cumulative_amount: U256::from(cumulative),
                signature: self.key.sign_digest(&self.a.config.domain.digest(&voucher)),
            },
            extensions: None,
        };
        PaymentHeaders { v2: Some(encode_header(&payload)), ..PaymentHeaders::default() }
    }

    async fn served_everywhere(&self) -> TestResult<(Usdc, Usdc, Usdc)> {
        let key = self.key.address();
        Ok((
            self.store.served(key).await?,
            self.a.counters.key(key, OWNER).await?.served,
            self.a.counters.owner_served(OWNER).await?,
        ))
    }
}

async fn a_charge_committed_after_a_rebuild_is_refused_and_the_counts_agree(store: Store) -> TestResult {
    let w = world(store).await?;
    let url = "/v1/chat";
    // Node A takes a charge; its row is not committed yet (the API is still working).
    let in_flight = w.a.take(&w.route, url, w.payment(PRICE)).await.map_err(|a| a.body)?;
    lose_everything(&w.a.counters).await?;
    // Node B's call finds the counters gone and rebuilds them from the ledger, which does not
    // hold A's charge yet.
    let Authorized::Paid(_) = w.b.authorize(&w.route, url, w.payment(2 * PRICE)).await else {
        return Err("node B's call was refused".into());
    };
    // A's row arrives after the rebuild: refused, not served, nothing given back.
    let refused = w.a.record_or_undo(&in_flight, &w.route, url).await;
    let answer = refused.err().ok_or("a charge the rebuilt counters never counted was served")?;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    let price = Usdc::from_base_units(PRICE);
    assert_eq!(w.served_everywhere().await?, (price, price, price), "ledger, key and owner agree");

    // The client tries again: served, and the ledger never runs past the best voucher signed.
    let Authorized::Paid(charge) = w.a.authorize(&w.route, url, w.payment(2 * PRICE)).await else {
        return Err("the retry was refused".into());
    };
    assert_eq!(charge.paid.response.receipt.served, Usdc::from_base_units(2 * PRICE));
    let served = Usdc::from_base_units(2 * PRICE);
    assert_eq!(w.served_everywhere().await?, (served, served, served));
    let best = w.store.usage_total(w.key.address()).await?.ok_or("no usage")?.best;
    assert!(served.to_u256() <= best, "served {served} beyond the best voucher {best}");
    Ok(())
}

/// A void whose counters were rebuilt between its charge and its ledger row: the rebuild counted
/// the charge (it was committed), the void row came after. The counters of the ledger's epoch
/// give the price back; a second void of the same charge moves nothing.
async fn a_void_after_a_rebuild_gives_back_to_the_rebuilt_counters(store: Store) -> TestResult {
    let w = world(store).await?;
    let url = "/v1/chat";
    let Authorized::Paid(charge) = w.a.authorize(&w.route, url, w.payment(PRICE)).await else {
        return Err("the first call was refused".into());
    };
    lose_everything(&w.a.counters).await?;
    let Authorized::Paid(_) = w.b.authorize(&w.route, url, w.payment(2 * PRICE)).await else {
        return Err("node B's call was refused".into());
    };
    // The first call's API failed: its void reaches node A's counters, rebuilt since.
    w.a.void_durably(&charge).await?;
    let price = Usdc::from_base_units(PRICE);
    assert_eq!(w.served_everywhere().await?, (price, price, price));
    w.b.void_durably(&charge).await?;
    assert_eq!(w.served_everywhere().await?, (price, price, price), "voided once");
    Ok(())
}

/// Issue 12 (found by `opentab chaos`, a proxy killed mid-charge): a proxy that dies between
/// taking a charge and recording it leaves the request's idempotency key in Redis, and the
/// client's retry was refused as a duplicate (409, "paid already") though no charge stood. The
/// ledger now decides: a retry whose first attempt may still be recording gets 503 (nothing
/// charged); once the key is older than a gateway could take to record, the key and the
/// counters that may hold that charge are dropped and the retry is charged, once.
async fn a_retry_whose_first_attempt_died_unrecorded_is_charged_once(store: Store) -> TestResult {
    let w = world(store).await?;
    let url = "/v1/chat";
    let with_id = |cumulative: u64| PaymentHeaders { idempotency_key: Some("retry-7".into()), ..w.payment(cumulative) };
    // Node A takes the charge and dies before recording it.
    let _lost = w.a.take(&w.route, url, with_id(PRICE)).await.map_err(|a| a.body)?;
    // Node B gets the retry at once: the first attempt may still be recording.
    let Authorized::Answer(answer) = w.b.authorize(&w.route, url, with_id(2 * PRICE)).await else {
        return Err("a retry was charged while its first attempt could still be recording".into());
    };
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{}", answer.body);
    assert_eq!(w.store.served(w.key.address()).await?, Usdc::ZERO, "nothing charged");
    // A minute on (here: the idempotency key's time moved back), the key is stale.
    let mut conn = redis::Client::open(redis_url())?.get_multiplexed_async_connection().await?;
    let pattern = w.b.counters.pattern().replace('*', "*:idem:*");
    let idem: Vec<String> = redis::cmd("KEYS").arg(pattern).query_async(&mut conn).await?;
    assert_eq!(idem.len(), 1);
    let _: () = redis::cmd("SET").arg(&idem[0]).arg("0").query_async(&mut conn).await?;
    let Authorized::Paid(_) = w.b.authorize(&w.route, url, with_id(2 * PRICE)).await else {
        return Err("the retry of a call nobody recorded was not charged".into());
    };
    let price = Usdc::from_base_units(PRICE);
    assert_eq!(w.served_everywhere().await?, (price, price, price), "charged once, counted once");
    // Now it is a duplicate for real.
    let Authorized::Answer(again) = w.b.authorize(&w.route, url, with_id(3 * PRICE)).await else {
        return Err("a paid request was charged twice".into());
    };
    assert_eq!(again.status, StatusCode::CONFLICT);
    Ok(())
}

macro_rules! on_both_databases {
    ($($test:ident),* $(,)?) => {
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() -> super::TestResult {
                super::$test(opentab_store::testing::fresh_postgres().await?).await
            })*
        }
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() -> super::TestResult {
                let dir = tempfile::tempdir()?;
                super::$test(opentab_store::testing::fresh_sqlite(dir.path()).await?).await
            })*
        }
    };
}

on_both_databases!(
    a_charge_committed_after_a_rebuild_is_refused_and_the_counts_agree,
    a_void_after_a_rebuild_gives_back_to_the_rebuilt_counters,
    a_retry_whose_first_attempt_died_unrecorded_is_charged_once,
);
