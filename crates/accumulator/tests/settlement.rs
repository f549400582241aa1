//! The settlement worker against a real anvil and real databases: threshold and batch, a
//! frozen key settled at once, voids never paid, retries then a dead letter then a retry by
//! hand, a restart that finds its transaction already mined, and two workers sharing a queue.

use opentab_accumulator::{SettlementConfig, SettlementWorker, TickReport};
use opentab_chain::alloy_provider::Provider;
use opentab_chain::{Anvil, AnvilConfig, KeyTerms, Validator, deploy_dev_contracts, signing_provider};
use opentab_core::{Address, SigningKey, U256, Usdc, Voucher};
use opentab_service::{ChainListener, ListenerConfig};
use opentab_store::{SettlementStatus, Store, UsageEntry, UsageKind};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

const USDC: u64 = 1_000_000;

struct World {
    anvil: Anvil,
    store: Store,
    listener: ChainListener,
    owner: Validator,
    /// Sends settlements as the payee (anvil #2), who pays their gas.
    settler: Validator,
    payee: Address,
}

impl World {
    async fn new(store: Store) -> TestResult<Self> {
        Self::with_tab(store, 500 * USDC).await
    }

    /// A world whose owner holds `tab` base units in its tab with the payee.
    async fn with_tab(store: Store, tab: u64) -> TestResult<Self> {
        let anvil = Anvil::spawn(AnvilConfig::default())?;
        let rpc = anvil.endpoint();
        let deployer = signing_provider(&rpc, anvil.signer(0)?)?;
        let deployment = deploy_dev_contracts(&deployer, &rpc, 86_400).await?;
        let relayer = Validator::connect(deployer, deployment.validator).await?;
        let owner = relayer.with_provider(signing_provider(&rpc, anvil.signer(1)?)?);
        let owner_address = anvil.signer(1)?.address();
        owner.mint_test_usdc(owner_address, Usdc::from_base_units(500 * USDC)).await?;
        let payee = anvil.signer(2)?.address();
        owner.deposit(payee, Usdc::from_base_units(tab)).await?;
        let settler = relayer.with_provider(signing_provider(&rpc, anvil.signer(2)?)?);
        let config = ListenerConfig {
            stream: opentab_chain::StreamConfig { confirmations: 0, max_range: 500 },
            ..ListenerConfig::default()
        };
        let listener = ChainListener::new(
            store.clone(),
            relayer.provider().clone(),
            relayer.address(),
            deployment.deployed_at_block,
            config,
        )
        .await?;
        Ok(Self { anvil, store, listener, owner, settler, payee })
    }

    /// Registers a new key paying the payee, mirrored into the store.
    async fn key(&mut self) -> TestResult<SigningKey> {
        let key = SigningKey::random();
        let terms = KeyTerms {
            session_key: key.address(),
            payee: self.payee,
            limit: Usdc::from_base_units(100 * USDC),
            valid_after: 0,
            valid_until: 4_000_000_000,
        };
        self.owner.register_session_key(&terms).await?;
        self.listener.catch_up().await?;
        Ok(key)
    }

    /// Records `calls` charges of `price` as the gateway would, each with the next voucher.
    async fn serve(&self, key: &SigningKey, calls: u64, price: u64) -> TestResult {
        let mut total = self.store.served(key.address()).await?.base_units();
        for _ in 0..calls {
            total += price;
            self.record(key, UsageKind::Charge, price, total).await?;
        }
        Ok(())
    }

    async fn record(&self, key: &SigningKey, kind: UsageKind, price: u64, voucher: u64) -> TestResult {
        let digest = self.owner.domain().digest(&Voucher::new(key.address(), self.payee, U256::from(voucher)));
        self.store
            .record_usage(&UsageEntry {
                at: now(),
                session_key: key.address(),
                owner: self.owner_address()?,
                kind,
                amount: Usdc::from_base_units(price),
                route: "POST /v1/chat/completions".into(),
                request_id: format!("req-{voucher}-{kind:?}"),
                voucher: U256::from(voucher),
                signature: (kind == UsageKind::Charge).then(|| key.sign_digest(&digest)),
                idempotency: None,
                void_of: None,
                epoch: None,
            })
            .await?;
        Ok(())
    }

    fn owner_address(&self) -> TestResult<Address> {
        Ok(self.anvil.signer(1)?.address())
    }

    fn worker(&self, settler: &Validator, id: &str) -> SettlementWorker {
        let mut config = SettlementConfig::new(self.payee);
        config.worker_id = id.to_owned();
        config.retry_base = std::time::Duration::from_secs(4);
        SettlementWorker::new(self.store.clone(), settler.clone(), config)
    }

    async fn paid(&self) -> TestResult<u64> {
        Ok(self.owner.usdc_balance(self.payee).await?.saturating_to())
    }

    async fn settled(&self, key: &SigningKey) -> TestResult<u64> {
        Ok(self.owner.session_key(key.address()).await?.ok_or("not registered")?.settled.base_units())
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

async fn postgres() -> TestResult<Store> {
    Ok(opentab_store::testing::fresh_postgres().await?)
}

macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod postgres_backend {
            $(#[tokio::test] async fn $test() -> super::TestResult { super::$test(super::postgres().await?).await })*
        }
        mod sqlite_backend {
            $(#[tokio::test] async fn $test() -> super::TestResult {
                let dir = tempfile::tempdir()?;
                super::$test(opentab_store::testing::fresh_sqlite(dir.path()).await?).await
            })*
        }
    };
}

on_both_backends!(
    keys_past_the_threshold_settle_in_one_batch_without_paying_voids,
    failures_back_off_then_dead_letter_until_retried_by_hand,
    a_restart_finds_its_settlement_mined_and_does_not_pay_twice,
    a_short_tab_is_skipped_in_the_batch_then_paid_in_part_and_announced,
    a_short_tab_pays_in_part_and_the_same_voucher_pays_the_rest,
);

async fn a_short_tab_is_skipped_in_the_batch_then_paid_in_part_and_announced(store: Store) -> TestResult {
    let mut w = World::with_tab(store, 12 * USDC).await?;
    let (a, b) = (w.key().await?, w.key().await?);
    w.serve(&a, 6, 2 * USDC).await?; // 12 USDC: the whole tab
    w.serve(&b, 5, 2 * USDC).await?; // 10 USDC more than the tab holds
    let worker = w.worker(&w.settler, "w1");

    // One batch for both: the tab pays 12 and is empty. Whichever claim came second was paid
    // in part or skipped on-chain, without sinking the other.
    let report = worker.tick(now()).await?;
    assert_eq!((report.planned, report.transactions, report.succeeded + report.failed), (2, 1, 2));
    assert_eq!(w.settled(&a).await? + w.settled(&b).await?, 12 * USDC);
    assert_eq!(w.paid().await?, 12 * USDC);
    let skipped = w.store.webhooks_of_type("settlement.failed").await?;
    let partial = w.store.webhooks_of_type("settlement.partial").await?;
    assert_eq!(skipped.len() + partial.len(), 1, "the short claim is announced");
    assert!(skipped.iter().all(|h| h.payload.contains("claim skipped: empty_tab")), "{skipped:?}");

    // The owner tops the tab up; what was left of the two keys' service is paid, once.
    w.owner.mint_test_usdc(w.owner_address()?, Usdc::from_base_units(10 * USDC)).await?;
    w.owner.deposit(w.payee, Usdc::from_base_units(10 * USDC)).await?;
    w.listener.catch_up().await?;
    let report = worker.tick(now() + 600).await?;
    assert_eq!(report.succeeded, 1);
    assert_eq!((w.settled(&a).await?, w.settled(&b).await?), (12 * USDC, 10 * USDC));
    assert_eq!(w.paid().await?, 22 * USDC);
    Ok(())
}

async fn a_short_tab_pays_in_part_and_the_same_voucher_pays_the_rest(store: Store) -> TestResult {
    let mut w = World::with_tab(store, USDC).await?;
    let key = w.key().await?;
    w.serve(&key, 4, USDC).await?; // 4 USDC, below the threshold
    let worker = w.worker(&w.settler, "w1");

    // Frozen: settled at once, but the tab holds only 1 of the 4.
    w.owner.freeze(key.address()).await?;
    w.listener.catch_up().await?;
    let report = worker.tick(now()).await?;
    assert_eq!((report.planned, report.succeeded), (1, 1));
    assert_eq!(w.settled(&key).await?, USDC, "settled advanced by what was paid, not by the voucher");
    let partial = w.store.webhooks_of_type("settlement.partial").await?;
    assert_eq!(partial.len(), 1);
    let body: serde_json::Value = serde_json::from_str(&partial[0].payload)?;
    assert_eq!(body["data"]["settled"], USDC.to_string());
    assert_eq!(body["data"]["unpaid"], (3 * USDC).to_string());

    // The partial total is not mistaken for the whole voucher: after a deposit the same voucher
    // is planned again and pays the 3 left.
    w.owner.mint_test_usdc(w.owner_address()?, Usdc::from_base_units(3 * USDC)).await?;
    w.owner.deposit(w.payee, Usdc::from_base_units(3 * USDC)).await?;
    w.listener.catch_up().await?;
    let report = worker.tick(now() + 60).await?;
    assert_eq!((report.planned, report.succeeded), (1, 1));
    assert_eq!(w.settled(&key).await?, 4 * USDC);
    assert_eq!(w.paid().await?, 4 * USDC);
    Ok(())
}

async fn keys_past_the_threshold_settle_in_one_batch_without_paying_voids(store: Store) -> TestResult {
    let mut w = World::new(store).await?;
    let (a, b, c) = (w.key().await?, w.key().await?, w.key().await?);
    w.serve(&a, 6, 2 * USDC).await?; // 12 USDC
    // A 13th-USDC call was charged with voucher 14, then voided: it must never be paid.
    w.record(&a, UsageKind::Charge, 2 * USDC, 14 * USDC).await?;
    w.record(&a, UsageKind::Void, 2 * USDC, 14 * USDC).await?;
    w.serve(&b, 5, 2 * USDC).await?; // 10 USDC: exactly the threshold
    w.serve(&c, 3, USDC).await?; // 3 USDC: waits
    let worker = w.worker(&w.settler, "w1");

    let report = worker.tick(now()).await?;
    assert_eq!(report, TickReport { planned: 2, succeeded: 2, transactions: 1, ..TickReport::default() });
    assert_eq!((w.settled(&a).await?, w.settled(&b).await?, w.settled(&c).await?), (12 * USDC, 10 * USDC, 0));
    assert_eq!(w.paid().await?, 22 * USDC, "the payee got what was served, the voided call excluded");

    // Nothing more is due, before or after the listener sees the settlements.
    assert_eq!(worker.tick(now()).await?, TickReport::default());
    w.listener.catch_up().await?;
    assert_eq!(worker.tick(now()).await?, TickReport::default());

    // Freezing c settles its 3 USDC at once, under the threshold.
    w.owner.freeze(c.address()).await?;
    w.listener.catch_up().await?;
    let report = worker.tick(now()).await?;
    assert_eq!((report.planned, report.succeeded), (1, 1));
    assert_eq!(w.paid().await?, 25 * USDC);
    let done = w.store.settlements(Some(SettlementStatus::Succeeded), None, 10).await?;
    assert_eq!(done.len(), 3);
    assert!(done.iter().all(|s| s.tx_hash.is_some()));
    assert_eq!(done[0].intent.reason, "frozen");

    let announced = w.store.webhooks_of_type("settlement.succeeded").await?;
    assert_eq!(announced.len(), 3);
    let bodies: Vec<serde_json::Value> =
        announced.iter().map(|w| serde_json::from_str(&w.payload)).collect::<Result<_, _>>()?;
    let of_a =
        bodies.iter().find(|b| b["data"]["sessionKey"] == format!("{:#x}", a.address())).ok_or("no webhook for a")?;
    assert_eq!(of_a["data"]["settled"], (12 * USDC).to_string());
    assert_eq!(of_a["data"]["reason"], "threshold");
    assert_eq!(w.store.webhooks_of_type("key.frozen").await?.len(), 1);
    Ok(())
}

async fn failures_back_off_then_dead_letter_until_retried_by_hand(store: Store) -> TestResult {
    let mut w = World::new(store).await?;
    let key = w.key().await?;
    w.serve(&key, 1, 10 * USDC).await?;
    // An RPC endpoint that is down: every attempt fails.
    let down = w.settler.with_provider(signing_provider("http://127.0.0.1:1", w.anvil.signer(2)?)?);
    let broken = w.worker(&down, "broken");

    let mut t = now();
    let first = broken.tick(t).await?;
    assert_eq!((first.planned, first.failed), (1, 1));
    assert_eq!(broken.tick(t).await?, TickReport::default(), "backing off: nothing is retried at once");
    for retry in 1..=3 {
        t += 3_600;
        let report = broken.tick(t).await?;
        if retry < 3 {
            assert_eq!(report.failed, 1, "retry {retry}");
        } else {
            assert_eq!(report.dead_lettered, 1, "the third retry fails for good");
        }
    }
    let dead = w.store.settlements(Some(SettlementStatus::Dead), None, 10).await?;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 4);
    assert!(dead[0].last_error.as_deref().is_some_and(|e| e.contains("127.0.0.1:1") || e.contains("RPC")), "{dead:?}");
    assert_eq!(broken.tick(t + 86_400).await?, TickReport::default(), "a dead letter waits for a person");
    assert_eq!(w.store.webhooks_of_type("settlement.failed").await?.len(), 3);
    assert_eq!(w.store.webhooks_of_type("settlement.dead_lettered").await?.len(), 1);

    // Retried by hand once the RPC is back: it settles.
    assert!(w.store.retry_settlement(dead[0].id, now()).await?);
    let report = w.worker(&w.settler, "healthy").tick(now()).await?;
    assert_eq!((report.planned, report.succeeded), (0, 1), "the same intent, not a new one");
    assert_eq!(w.paid().await?, 10 * USDC);
    Ok(())
}

async fn a_restart_finds_its_settlement_mined_and_does_not_pay_twice(store: Store) -> TestResult {
    let mut w = World::new(store).await?;
    let key = w.key().await?;
    w.serve(&key, 6, 2 * USDC).await?;
    let worker = w.worker(&w.settler, "w1");
    assert_eq!(worker.plan(now()).await?, 1);
    // The earlier process sent the intent's transaction, then died before recording it.
    let intent = w.store.settlements(Some(SettlementStatus::Pending), None, 1).await?.pop().ok_or("no intent")?;
    w.settler.settle(key.address(), intent.intent.voucher, &intent.intent.signature).await?;

    let report = w.worker(&w.settler, "w2").tick(now()).await?;
    assert_eq!(report, TickReport { succeeded: 1, ..TickReport::default() }, "recorded, nothing sent");
    assert_eq!(w.paid().await?, 12 * USDC);
    let done = w.store.settlement(intent.id).await?.ok_or("gone")?;
    assert_eq!((done.status, done.tx_hash), (SettlementStatus::Succeeded, None));
    Ok(())
}

#[tokio::test]
async fn two_workers_share_the_queue_and_settle_each_key_once() -> TestResult {
    let mut w = World::new(postgres().await?).await?;
    let mut keys = Vec::new();
    for _ in 0..6 {
        let key = w.key().await?;
        w.serve(&key, 5, 2 * USDC).await?;
        keys.push(key);
    }
    // Two nodes, each paying gas from its own account, racing over one database. The second
    // node's account is a settler the payee authorised (only the payee and its settlers settle).
    w.settler.set_settler(w.anvil.signer(3)?.address(), true).await?;
    let other = w.settler.with_provider(signing_provider(&w.anvil.endpoint(), w.anvil.signer(3)?)?);
    let (one, two) = (w.worker(&w.settler, "node-1"), w.worker(&other, "node-2"));
    let t = now();
    let (r1, r2) = tokio::join!(one.tick(t), two.tick(t));
    let (r1, r2) = (r1?, r2?);
    assert_eq!(r1.succeeded + r2.succeeded, 6, "{r1:?} {r2:?}");
    assert_eq!(r1.failed + r2.failed + r1.dead_lettered + r2.dead_lettered, 0, "no key was sent twice");
    assert_eq!(w.paid().await?, 60 * USDC);
    for key in &keys {
        assert_eq!(w.settled(key).await?, 10 * USDC);
    }
    Ok(())
}

/// A round longer than the lease (here three transactions that wait for receipts that do not
/// come, 2 s each, with a 1 s lease) keeps its intents: every lease the round holds is renewed
/// before each send, so a second worker neither sends them again nor records a failure while
/// the first is still waiting. (Leases taken once for the round ran out after 1 s: the second
/// worker sent the same claims and both counted failed attempts.)
#[tokio::test]
async fn a_round_longer_than_the_lease_keeps_its_intents_from_a_second_worker() -> TestResult {
    let mut w = World::new(postgres().await?).await?;
    let (a, b) = (w.key().await?, w.key().await?);
    w.serve(&a, 5, 2 * USDC).await?;
    w.serve(&b, 5, 2 * USDC).await?;
    w.settler.set_settler(w.anvil.signer(3)?.address(), true).await?;
    let other = w.settler.with_provider(signing_provider(&w.anvil.endpoint(), w.anvil.signer(3)?)?);
    let quick = |settler: &Validator, id: &str| {
        let mut config = SettlementConfig::new(w.payee);
        config.worker_id = id.to_owned();
        config.lease = std::time::Duration::from_secs(1);
        config.tx_timeout = std::time::Duration::from_secs(2);
        SettlementWorker::new(w.store.clone(), settler.clone(), config)
    };
    let (first, second) = (quick(&w.settler, "node-1"), quick(&other, "node-2"));
    // The chain takes transactions but mines none: every receipt is late.
    let provider = w.owner.provider();
    let _: serde_json::Value = provider.raw_request("evm_setAutomine".into(), (false,)).await?;

    let t = now();
    let (one, two) = tokio::join!(first.tick(t), async {
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        second.tick(now()).await
    });
    let (one, two) = (one?, two?);
    // The batch, then each claim alone: three sends, each given up after 2 s.
    assert_eq!((one.planned, one.transactions, one.failed), (2, 3, 2), "{one:?}");
    assert_eq!(two, TickReport::default(), "the second worker found both intents held");
    let pending = w.store.settlements(Some(SettlementStatus::Pending), None, 10).await?;
    assert_eq!(pending.iter().map(|s| s.attempts).collect::<Vec<_>>(), [1, 1], "one failed attempt each");
    assert_eq!(w.store.webhooks_of_type("settlement.failed").await?.len(), 2);

    // Mined at last: the batch pays both claims; the retry finds them settled and sends nothing.
    let _: serde_json::Value = provider.raw_request("evm_setAutomine".into(), (true,)).await?;
    let _: serde_json::Value = provider.raw_request("evm_mine".into(), ()).await?;
    let report = first.tick(now() + 3_600).await?;
    assert_eq!((report.succeeded, report.transactions), (2, 0), "{report:?}");
    assert_eq!(w.paid().await?, 20 * USDC);
    Ok(())
}

/// Issue 12: a settlement mined, then dropped by a reorganisation before it was final, was
/// still counted as paid: the planner took the key as settled and the payee was never paid.
/// The worker now checks recent settlements against the chain: a dropped one is `reverted`,
/// announced, and its key settled again.
#[tokio::test]
async fn a_settlement_a_reorganisation_dropped_is_settled_again() -> TestResult {
    let mut w = World::new(postgres().await?).await?;
    let key = w.key().await?;
    w.serve(&key, 5, 2 * USDC).await?;
    let provider = w.owner.provider().clone();
    let snapshot: U256 = provider.raw_request("evm_snapshot".into(), ()).await?;
    let worker = w.worker(&w.settler, "w1");
    let report = worker.tick(now()).await?;
    assert_eq!((report.succeeded, report.transactions), (1, 1));
    assert_eq!(w.paid().await?, 10 * USDC);

    // The chain goes back before the settlement, and a longer branch without it wins.
    let reverted: bool = provider.raw_request("evm_revert".into(), (snapshot,)).await?;
    assert!(reverted);
    for _ in 0..4 {
        let _: serde_json::Value = provider.raw_request("evm_mine".into(), ()).await?;
    }
    w.listener.catch_up().await?;
    assert_eq!(w.paid().await?, 0, "the payee's payment is gone with the branch");

    let report = worker.tick(now() + 1).await?;
    assert_eq!(report.reverted, 1, "{report:?}");
    assert_eq!((report.planned, report.succeeded), (1, 1), "planned again from what the chain holds, and paid");
    assert_eq!(w.paid().await?, 10 * USDC);
    assert_eq!(w.settled(&key).await?, 10 * USDC);
    let reverts = w.store.webhooks_of_type("settlement.reverted").await?;
    assert_eq!(reverts.len(), 1);
    assert_eq!(w.store.settlements(Some(SettlementStatus::Reverted), None, 10).await?.len(), 1);
    Ok(())
}
