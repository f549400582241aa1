//! One behavioural suite, run against a real PostgreSQL (a fresh database per test) and a real
//! SQLite file (see `opentab_store::testing`).

use opentab_core::{Address, B256, Usdc, ValidatorEvent};
use opentab_store::{
    AuditEntry, ChainStatus, Error, GatewayClaim, Leased, NewKey, NewSettlement, NewWebhook, SettlementStatus, Store,
    StoredEvent, UsageEntry, UsageKind,
};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

const OWNER_A: Address = Address::repeat_byte(0xa1);
const OWNER_B: Address = Address::repeat_byte(0xb2);
const PAYEE: Address = Address::repeat_byte(0xee);
const OTHER_PAYEE: Address = Address::repeat_byte(0x99);
const VALIDATOR: Address = Address::repeat_byte(0x77);

async fn postgres() -> TestResult<Store> {
    Ok(opentab_store::testing::fresh_postgres().await?)
}

async fn sqlite() -> TestResult<(Store, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let store = opentab_store::testing::fresh_sqlite(dir.path()).await?;
    Ok((store, dir))
}

macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod postgres_backend {
            $(#[tokio::test] async fn $test() -> super::TestResult { super::$test(super::postgres().await?).await })*
        }
        mod sqlite_backend {
            $(#[tokio::test] async fn $test() -> super::TestResult {
                let (store, _dir) = super::sqlite().await?;
                super::$test(store).await
            })*
        }
    };
}

on_both_backends!(
    pending_keys_are_stored_once_and_only_their_owner_lists_them,
    confirmed_events_fold_into_keys_and_tabs_idempotently,
    a_rollback_undoes_orphaned_events,
    offchain_freeze_and_delete_marks,
    the_audit_log_keeps_order,
    nonces_sign_in_once_and_sessions_expire,
    the_usage_ledger_sums_charges_less_voids_and_keeps_the_best_voucher,
    idempotency_keys_stand_while_their_charges_outnumber_their_voids,
    settlement_intents_are_leased_once_and_announce_every_change,
    key_changes_are_announced_once_even_when_replayed,
    a_settlement_of_a_key_never_seen_registered_is_refused,
    a_gateway_with_its_own_counters_runs_alone_for_its_payee,
);

async fn a_gateway_with_its_own_counters_runs_alone_for_its_payee(store: Store) -> TestResult {
    let claim =
        |id: &str, payee, shared| GatewayClaim { id: id.into(), payee, shared, description: format!("gateway {id}") };
    // `dev` runs with in-process counters: alone, it is fine, and may announce itself again.
    assert_eq!(store.claim_gateway(&claim("dev", PAYEE, false), 100, 70).await?, Ok(()));
    assert_eq!(store.claim_gateway(&claim("dev", PAYEE, false), 110, 80).await?, Ok(()));
    // Another gateway of the same payee, with counters of its own or shared ones, is refused
    // while dev was seen within the window, and is told who is in the way.
    for shared in [false, true] {
        let refused = store.claim_gateway(&claim("proxy", PAYEE, shared), 120, 110).await?;
        let blocking = refused.err().ok_or("a second gateway was let in")?;
        assert_eq!(
            blocking.iter().map(|g| (g.description.as_str(), g.shared, g.seen_at)).collect::<Vec<_>>(),
            [("gateway dev", false, 110)]
        );
    }
    // Another payee's gateway is not in the way; nor is a gateway last seen before the window.
    assert_eq!(store.claim_gateway(&claim("other", Address::repeat_byte(0x0f), false), 120, 110).await?, Ok(()));
    assert_eq!(store.claim_gateway(&claim("proxy", PAYEE, false), 200, 111).await?, Ok(()), "dev went silent");
    store.release_gateway("proxy").await?;
    // Gateways with shared counters run side by side, but not beside one with its own.
    assert_eq!(store.claim_gateway(&claim("redis-1", PAYEE, true), 300, 270).await?, Ok(()));
    assert_eq!(store.claim_gateway(&claim("redis-2", PAYEE, true), 300, 270).await?, Ok(()));
    store.gateway_seen("redis-1", 310).await?;
    let refused = store.claim_gateway(&claim("dev", PAYEE, false), 320, 305).await?;
    assert_eq!(refused.err().map(|b| b.len()), Some(1), "only redis-1 was seen since 305");
    Ok(())
}

async fn a_settlement_of_a_key_never_seen_registered_is_refused(store: Store) -> TestResult {
    let deposit =
        at(30, 0, ValidatorEvent::Deposited { owner: OWNER_A, payee: PAYEE, amount: Usdc::from_base_units(9) });
    store.apply_chain_update(VALIDATOR, None, &[deposit], "{\"cursor\":30}", 300).await?;
    // A listener started past the key's registration would see its payment only: applying it
    // would leave the tab over-stated, so the update is refused and nothing of it is kept.
    let orphan = ValidatorEvent::Settled {
        session_key: Address::repeat_byte(0x42),
        amount: Usdc::from_base_units(5),
        settled: Usdc::from_base_units(5),
    };
    let refused = store.apply_chain_update(VALIDATOR, None, &[at(31, 0, orphan)], "{\"cursor\":31}", 301).await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(store.tab(OWNER_A, PAYEE).await?.balance, Usdc::from_base_units(9));
    assert_eq!(store.chain_cursor(VALIDATOR).await?.as_deref(), Some("{\"cursor\":30}"), "the cursor did not move");
    Ok(())
}

fn new_key(byte: u8, owner: Address) -> NewKey {
    NewKey {
        address: Address::repeat_byte(byte),
        owner,
        payee: PAYEE,
        limit: Usdc::parse_decimal("25").unwrap_or_default(),
        valid_after: 0,
        valid_until: 2_000_000_000,
    }
}

fn at(block: u64, log_index: u64, event: ValidatorEvent) -> StoredEvent {
    StoredEvent {
        block_number: block,
        log_index,
        block_hash: B256::with_last_byte(block as u8),
        tx_hash: B256::repeat_byte(log_index as u8 + 1),
        event,
    }
}

fn registered(key: &NewKey) -> ValidatorEvent {
    ValidatorEvent::Registered {
        owner: key.owner,
        session_key: key.address,
        payee: key.payee,
        limit: key.limit,
        valid_after: key.valid_after,
        valid_until: key.valid_until,
    }
}

async fn pending_keys_are_stored_once_and_only_their_owner_lists_them(store: Store) -> TestResult {
    let key = new_key(1, OWNER_A);
    store.insert_pending_key(&key, 100).await?;
    let again = store.insert_pending_key(&key, 101).await;
    assert!(matches!(again, Err(Error::KeyExists(a)) if a == key.address), "{again:?}");

    let record = store.key(key.address).await?.ok_or("missing")?;
    assert_eq!(record.chain_status, ChainStatus::Pending);
    assert_eq!((record.key.owner, record.key.limit, record.created_at), (OWNER_A, key.limit, 100));
    assert_eq!(store.keys_of(OWNER_A, false).await?.len(), 1);
    assert!(store.keys_of(OWNER_B, true).await?.is_empty(), "owner B sees none of A's keys");
    assert_eq!(store.key(Address::repeat_byte(9)).await?, None);
    Ok(())
}

async fn confirmed_events_fold_into_keys_and_tabs_idempotently(store: Store) -> TestResult {
    let key = new_key(2, OWNER_A);
    store.insert_pending_key(&key, 100).await?;
    let events = vec![
        at(
            10,
            0,
            ValidatorEvent::Deposited { owner: OWNER_A, payee: PAYEE, amount: Usdc::from_base_units(50_000_000) },
        ),
        // A tab with another payee: the key's settlements never touch it.
        at(10, 1, ValidatorEvent::Deposited { owner: OWNER_A, payee: OTHER_PAYEE, amount: Usdc::from_base_units(7) }),
        at(11, 0, registered(&key)),
        at(
            12,
            3,
            ValidatorEvent::Settled {
                session_key: key.address,
                amount: Usdc::from_base_units(10_000_000),
                settled: Usdc::from_base_units(10_000_000),
            },
        ),
        at(13, 1, ValidatorEvent::Frozen { owner: OWNER_A, session_key: key.address, by: OWNER_A, at: 1_700 }),
    ];
    store.apply_chain_update(VALIDATOR, None, &events, "{\"cursor\":1}", 200).await?;
    // Replaying the same update (a listener restart before its cursor was saved) changes nothing.
    store.apply_chain_update(VALIDATOR, None, &events, "{\"cursor\":1}", 201).await?;

    let record = store.key(key.address).await?.ok_or("missing")?;
    assert_eq!(record.chain_status, ChainStatus::Registered);
    assert_eq!(record.key.settled, Usdc::from_base_units(10_000_000));
    assert_eq!(record.key.frozen_at, Some(1_700));
    assert_eq!(store.tab(OWNER_A, PAYEE).await?.balance, Usdc::from_base_units(40_000_000));
    assert_eq!(store.tab(OWNER_A, OTHER_PAYEE).await?.balance, Usdc::from_base_units(7), "the other tab is untouched");
    assert_eq!(store.tabs_of(OWNER_A).await?.len(), 2);
    // The gateway's budget reads the tab and settled together: 40 + 10 = the 50 deposited.
    let (tab, settled) = store.gateway_budget(OWNER_A, PAYEE).await?;
    assert_eq!((tab.balance, settled), (Usdc::from_base_units(40_000_000), Usdc::from_base_units(10_000_000)));
    assert_eq!(store.gateway_budget(OWNER_A, OTHER_PAYEE).await?.1, Usdc::ZERO, "another payee's");
    assert_eq!(store.gateway_budget(OWNER_B, PAYEE).await?, (opentab_core::Tab::default(), Usdc::ZERO));
    // What the gateway can still charge on the tab: 40 available + 10 settled − 10 served.
    assert_eq!(store.tab_free(OWNER_A, PAYEE).await?, Usdc::from_base_units(40_000_000));
    assert_eq!(store.key_events(key.address).await?.len(), 3);
    assert_eq!(store.chain_cursor(VALIDATOR).await?.as_deref(), Some("{\"cursor\":1}"));

    // A key registered straight on-chain (not through opentab) appears too.
    let outside = new_key(3, OWNER_B);
    store.apply_chain_update(VALIDATOR, None, &[at(14, 0, registered(&outside))], "{}", 202).await?;
    let record = store.key(outside.address).await?.ok_or("outside key missing")?;
    assert_eq!((record.chain_status, record.key.owner), (ChainStatus::Registered, OWNER_B));
    Ok(())
}

async fn a_rollback_undoes_orphaned_events(store: Store) -> TestResult {
    let key = new_key(4, OWNER_A);
    store.insert_pending_key(&key, 100).await?;
    let deposit =
        at(20, 0, ValidatorEvent::Deposited { owner: OWNER_A, payee: PAYEE, amount: Usdc::from_base_units(5) });
    store.apply_chain_update(VALIDATOR, None, &[deposit], "{}", 200).await?;
    let orphaned = [
        at(21, 0, registered(&key)),
        at(22, 0, ValidatorEvent::Deposited { owner: OWNER_A, payee: PAYEE, amount: Usdc::from_base_units(7) }),
    ];
    store.apply_chain_update(VALIDATOR, None, &orphaned, "{}", 201).await?;
    assert_eq!(store.key(key.address).await?.map(|r| r.chain_status), Some(ChainStatus::Registered));

    // The chain reorganised after block 20; the new branch re-registers the key in block 23.
    store.apply_chain_update(VALIDATOR, Some(20), &[], "{}", 202).await?;
    assert_eq!(store.key(key.address).await?.map(|r| r.chain_status), Some(ChainStatus::Pending));
    assert_eq!(store.tab(OWNER_A, PAYEE).await?.balance, Usdc::from_base_units(5));
    store.apply_chain_update(VALIDATOR, None, &[at(23, 0, registered(&key))], "{}", 203).await?;
    let events = store.key_events(key.address).await?;
    assert_eq!(events.iter().map(|e| e.block_number).collect::<Vec<_>>(), vec![23]);
    Ok(())
}

async fn offchain_freeze_and_delete_marks(store: Store) -> TestResult {
    let key = new_key(5, OWNER_A);
    store.insert_pending_key(&key, 100).await?;
    assert!(store.freeze_offchain(key.address, 150).await?);
    assert!(store.freeze_offchain(key.address, 160).await?, "a second freeze keeps the first time");
    assert_eq!(store.key(key.address).await?.and_then(|r| r.frozen_offchain_at), Some(150));
    assert!(store.unfreeze_offchain(key.address, 170).await?);
    assert_eq!(store.key(key.address).await?.and_then(|r| r.frozen_offchain_at), None);

    assert!(store.mark_deleted(key.address, 180).await?);
    assert!(store.keys_of(OWNER_A, false).await?.is_empty(), "deleted keys leave the default list");
    assert_eq!(store.keys_of(OWNER_A, true).await?.len(), 1);
    assert!(!store.freeze_offchain(Address::repeat_byte(0x55), 1).await?, "unknown key");
    Ok(())
}

async fn the_audit_log_keeps_order(store: Store) -> TestResult {
    for (i, action) in ["key.create", "key.freeze", "key.unfreeze"].iter().enumerate() {
        store
            .audit(&AuditEntry {
                at: 100 + i as u64,
                actor: format!("{OWNER_A:#x}"),
                action: (*action).into(),
                subject: "0xkey".into(),
                detail: "{}".into(),
            })
            .await?;
    }
    let log = store.audit_of("0xkey").await?;
    assert_eq!(log.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(), ["key.create", "key.freeze", "key.unfreeze"]);
    assert!(store.audit_of("0xother").await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn an_unreachable_database_is_a_clear_error() {
    // Nothing listens on port 1.
    let Err(err) = Store::connect("postgres://postgres@127.0.0.1:1/none").await else { panic!("port 1 answered") };
    assert!(matches!(err, Error::Database(_)), "{err:?}");
    assert!(err.to_string().starts_with("database error"), "{err}");
    let Err(err) = Store::connect("mysql://x").await else { panic!("mysql is not supported") };
    assert!(matches!(err, Error::UnsupportedUrl(_)), "{err:?}");
}

#[tokio::test]
async fn a_closed_database_fails_queries_instead_of_losing_writes() -> TestResult {
    let (store, _dir) = sqlite().await?;
    store.close().await;
    let err = store.insert_pending_key(&new_key(6, OWNER_A), 1).await.err().ok_or("a closed pool wrote")?;
    assert!(matches!(err, Error::Database(_)), "{err:?}");
    assert!(store.ping().await.is_err());
    Ok(())
}

async fn nonces_sign_in_once_and_sessions_expire(store: Store) -> TestResult {
    assert!(store.spend_nonce("nonce-0001", 100, 150).await?);
    assert!(!store.spend_nonce("nonce-0001", 100, 151).await?, "a nonce signs in once");

    store.create_session("hash-1", OWNER_A, 200, 300).await?;
    assert_eq!(store.session_owner("hash-1", 299).await?, Some(OWNER_A));
    assert_eq!(store.session_owner("hash-1", 300).await?, None, "expired");
    assert_eq!(store.session_owner("hash-2", 250).await?, None, "unknown");
    store.delete_session("hash-1").await?;
    assert_eq!(store.session_owner("hash-1", 250).await?, None, "signed out");

    // Purging forgets what can no longer sign in, and nothing that still can.
    assert!(store.spend_nonce("nonce-0002", 400, 401).await?);
    assert!(store.spend_nonce("nonce-0003", 450, 451).await?);
    store.create_session("hash-3", OWNER_A, 400, 450).await?;
    store.create_session("hash-4", OWNER_A, 400, 900).await?;
    assert_eq!(store.spent_nonces().await?, 3);
    assert_eq!(store.purge_auth(450, 500).await?, (2, 1), "nonce-0001 and -0002, session hash-3");
    assert!(!store.spend_nonce("nonce-0003", 450, 501).await?, "a spent nonce issued at the bound stays spent");
    assert_eq!(store.session_owner("hash-4", 501).await?, Some(OWNER_A), "a live session survives");
    assert_eq!(store.purge_auth(450, 500).await?, (0, 0));

    // The deployment's secrets: the first server's stays.
    assert_eq!(store.server_secret("k", "first").await?, "first");
    assert_eq!(store.server_secret("k", "second").await?, "first");
    Ok(())
}

async fn the_usage_ledger_sums_charges_less_voids_and_keeps_the_best_voucher(store: Store) -> TestResult {
    let key = opentab_core::SigningKey::random();
    let entry = |kind, amount: u64, voucher: u64| UsageEntry {
        at: 1,
        session_key: key.address(),
        owner: OWNER_A,
        kind,
        amount: Usdc::from_base_units(amount),
        route: "POST /v1/chat".into(),
        request_id: format!("r{voucher}"),
        voucher: opentab_core::U256::from(voucher),
        signature: (kind == UsageKind::Charge).then(|| key.sign_digest(&B256::with_last_byte(voucher as u8))),
        idempotency: None,
        void_of: None,
        epoch: None,
    };
    // 9 and 10 digits: the best voucher must be chosen by number, not by text.
    store.record_usage(&entry(UsageKind::Charge, 2_000, 999_999_999)).await?;
    store.record_usage(&entry(UsageKind::Charge, 2_000, 1_000_000_000)).await?;
    store.record_usage(&entry(UsageKind::Charge, 2_000, 4_000)).await?;
    store.record_usage(&entry(UsageKind::Void, 2_000, 0)).await?;
    let totals = store.usage_totals().await?;
    assert_eq!(totals.len(), 1);
    let t = &totals[0];
    assert_eq!((t.session_key, t.owner, t.served), (key.address(), OWNER_A, Usdc::from_base_units(4_000)));
    assert_eq!(t.best, opentab_core::U256::from(1_000_000_000u64));
    assert_eq!(t.best_signature, Some(key.sign_digest(&B256::with_last_byte(1_000_000_000u64 as u8))));
    assert_eq!(store.served(key.address()).await?, Usdc::from_base_units(4_000), "the running total agrees");
    let usage = store.usage_by_key(OWNER_A).await?;
    assert_eq!(usage.get(&key.address()).map(|u| u.served), Some(Usdc::from_base_units(4_000)));
    assert_eq!(usage.get(&key.address()).and_then(|u| u.last_at), Some(1), "last activity is the latest row's time");
    assert_eq!(store.served(Address::repeat_byte(0x42)).await?, Usdc::ZERO);
    // A void names its charge: voiding the same charge again (a retry whose answer was lost)
    // records nothing and takes nothing off, in one batch or across batches.
    let charge = B256::repeat_byte(0xc4);
    let void = UsageEntry { void_of: Some(charge), ..entry(UsageKind::Void, 2_000, 0) };
    store.record_usage(&void).await?;
    store.record_usage(&void).await?;
    store.record_usage_batch(&[void.clone(), void]).await?;
    assert_eq!(store.served(key.address()).await?, Usdc::from_base_units(2_000), "voided once");
    assert_eq!(store.usage_total(key.address()).await?.map(|t| t.served), Some(Usdc::from_base_units(2_000)));
    // The first void of a charge twice in one batch (one statement): counted once.
    let other = UsageEntry { void_of: Some(B256::repeat_byte(0xc5)), ..entry(UsageKind::Void, 2_000, 0) };
    store.record_usage_batch(&[entry(UsageKind::Charge, 2_000, 1_000_002_000), other.clone(), other]).await?;
    assert_eq!(store.served(key.address()).await?, Usdc::from_base_units(2_000), "one charge, one void");
    assert_eq!(store.usage_total(key.address()).await?.map(|t| t.served), Some(Usdc::from_base_units(2_000)));
    Ok(())
}

async fn idempotency_keys_stand_while_their_charges_outnumber_their_voids(store: Store) -> TestResult {
    let (a, b) = (opentab_core::SigningKey::random(), opentab_core::SigningKey::random());
    let id = |n: u8| B256::repeat_byte(n);
    let entry = |key: &opentab_core::SigningKey, at: u64, kind, idempotency: Option<B256>| UsageEntry {
        at,
        session_key: key.address(),
        owner: OWNER_A,
        kind,
        amount: Usdc::from_base_units(2),
        route: "POST /v1/chat".into(),
        request_id: format!("r{at}"),
        voucher: opentab_core::U256::from(at),
        signature: (kind == UsageKind::Charge).then(|| key.sign_digest(&B256::with_last_byte(at as u8))),
        idempotency,
        void_of: None,
        epoch: None,
    };
    // Key a: 1 charged and standing; 2 charged then voided; 3 charged, voided, charged again
    // (a retry of a failed call); 4 charged too long ago; one call without a key.
    for (at, kind, n) in [
        (100, UsageKind::Charge, Some(1)),
        (101, UsageKind::Charge, Some(2)),
        (102, UsageKind::Void, Some(2)),
        (103, UsageKind::Charge, Some(3)),
        (104, UsageKind::Void, Some(3)),
        (105, UsageKind::Charge, Some(3)),
        (10, UsageKind::Charge, Some(4)),
        (106, UsageKind::Charge, None),
    ] {
        store.record_usage(&entry(&a, at, kind, n.map(id))).await?;
    }
    store.record_usage(&entry(&b, 107, UsageKind::Charge, Some(id(5)))).await?;

    let mut of_a = store.live_idempotency(Some(a.address()), 50).await?;
    of_a.sort_by_key(|l| l.charged_at);
    let seen: Vec<_> = of_a.iter().map(|l| (l.session_key, l.id, l.charged_at)).collect();
    assert_eq!(seen, [(a.address(), id(1), 100), (a.address(), id(3), 105)]);
    let all = store.live_idempotency(None, 50).await?;
    assert_eq!(all.len(), 3, "every key's: {all:?}");
    assert!(all.iter().any(|l| l.session_key == b.address() && l.id == id(5)));
    Ok(())
}

fn webhook(id: &str, kind: &str) -> NewWebhook {
    NewWebhook { event_id: id.into(), event_type: kind.into(), payload: format!("{{\"type\":\"{kind}\"}}") }
}

async fn settlement_intents_are_leased_once_and_announce_every_change(store: Store) -> TestResult {
    let signer = opentab_core::SigningKey::random();
    let key = NewKey { address: signer.address(), ..new_key(0, OWNER_A) };
    store.apply_chain_update(VALIDATOR, None, &[at(10, 0, registered(&key))], "{}", 100).await?;
    // Charges of 4, 6 and 8 (vouchers), then the 8 call voided: served 6 + 2 = ... 4+2+2-2 = 6.
    for (kind, voucher) in
        [(UsageKind::Charge, 4), (UsageKind::Charge, 6), (UsageKind::Charge, 8), (UsageKind::Void, 8)]
    {
        store
            .record_usage(&UsageEntry {
                at: 1,
                session_key: key.address,
                owner: OWNER_A,
                kind,
                amount: Usdc::from_base_units(if voucher == 4 { 4 } else { 2 }),
                route: "POST /v1/chat".into(),
                request_id: format!("r{voucher}"),
                voucher: opentab_core::U256::from(voucher),
                signature: (kind == UsageKind::Charge)
                    .then(|| signer.sign_digest(&B256::with_last_byte(voucher as u8))),
                idempotency: None,
                void_of: None,
                epoch: None,
            })
            .await?;
    }
    let owed = store.owed(PAYEE).await?;
    assert_eq!(owed.len(), 1);
    assert_eq!((owed[0].key.key.address, owed[0].served), (key.address, Usdc::from_base_units(6)));
    assert!(store.owed(Address::repeat_byte(0x99)).await?.is_empty(), "another payee owes nothing");
    // The voided call's voucher (8) is above served (6): the 6 voucher is what may be settled.
    let (voucher, sig) = store.claimable_voucher(key.address, Usdc::from_base_units(6)).await?.ok_or("no voucher")?;
    assert_eq!((voucher, sig), (opentab_core::U256::from(6), signer.sign_digest(&B256::with_last_byte(6))));
    assert_eq!(store.claimable_voucher(key.address, Usdc::from_base_units(3)).await?, None);

    let intent = NewSettlement {
        session_key: key.address,
        owner: OWNER_A,
        payee: PAYEE,
        voucher,
        signature: sig,
        amount: Usdc::from_base_units(6),
        reason: "threshold".into(),
    };
    let id = store.insert_settlement(&intent, 200).await?.ok_or("not inserted")?;
    assert_eq!(store.insert_settlement(&intent, 201).await?, None, "one open intent per key");

    // Two workers: the first holds the lease; the second gets nothing until it runs out.
    let a = store.lease_settlements("worker-a", 200, 230, 10).await?;
    assert_eq!(a.iter().map(|s| s.id).collect::<Vec<_>>(), [id]);
    assert_eq!(a[0].intent, intent);
    assert!(store.lease_settlements("worker-b", 210, 240, 10).await?.is_empty());
    // A renewal extends what a worker holds, and only that.
    assert_eq!(store.renew_settlement_leases("worker-a", &[id, id + 99], 235).await?, [id]);
    assert!(store.lease_settlements("worker-b", 231, 260, 10).await?.is_empty(), "renewed until 235");
    let b = store.lease_settlements("worker-b", 236, 260, 10).await?;
    assert_eq!(b.len(), 1, "an expired lease is taken over");
    assert!(store.renew_settlement_leases("worker-a", &[id], 300).await?.is_empty(), "it is b's now");

    // The worker that lost the lease records nothing: b may be sending it right now.
    let gone = webhook("lost", "settlement.failed");
    assert!(!store.settlement_failed(Leased { id, worker: "worker-a" }, "no receipt", 300, false, &gone, 240).await?);
    assert!(!store.settlement_succeeded(Leased { id, worker: "worker-a" }, None, voucher, &gone, 240).await?);
    assert_eq!(store.settlement(id).await?.map(|s| (s.status, s.attempts)), Some((SettlementStatus::Pending, 0)));

    // Failures back off, then dead-letter; each writes its webhook.
    let failed = webhook("f1", "settlement.failed");
    assert!(store.settlement_failed(Leased { id, worker: "worker-b" }, "rpc down", 300, false, &failed, 241).await?);
    assert!(store.lease_settlements("worker-a", 299, 330, 10).await?.is_empty(), "not before next_attempt_at");
    assert_eq!(store.lease_settlements("worker-a", 300, 330, 10).await?.len(), 1);
    let dead = webhook("d1", "settlement.dead_lettered");
    assert!(store.settlement_failed(Leased { id, worker: "worker-a" }, "reverted", 0, true, &dead, 301).await?);
    let dead = store.settlement(id).await?.ok_or("gone")?;
    assert_eq!((dead.status, dead.attempts, dead.last_error.as_deref()), (SettlementStatus::Dead, 2, Some("reverted")));
    assert!(store.lease_settlements("worker-a", 400, 430, 10).await?.is_empty(), "dead is not retried");
    assert_eq!(store.insert_settlement(&intent, 400).await?, None, "nor planned again: it waits for a person");
    assert_eq!(store.settlements(Some(SettlementStatus::Dead), None, 10).await?.len(), 1);

    // By hand: back in the queue with fresh retries, then it succeeds.
    assert!(store.retry_settlement(id, 500).await?);
    assert!(!store.retry_settlement(id, 500).await?, "only a dead settlement is retried");
    let leased = store.lease_settlements("worker-a", 500, 530, 10).await?;
    assert_eq!((leased.len(), leased[0].attempts), (1, 0));
    let tx = B256::repeat_byte(0x7a);
    assert!(
        store
            .settlement_succeeded(
                Leased { id, worker: "worker-a" },
                Some(tx),
                voucher,
                &webhook("s1", "settlement.succeeded"),
                501
            )
            .await?
    );
    assert!(
        !store
            .settlement_succeeded(
                Leased { id, worker: "worker-a" },
                Some(tx),
                voucher,
                &webhook("s2", "settlement.succeeded"),
                502
            )
            .await?
    );
    assert_eq!(store.settlement(id).await?.and_then(|s| s.tx_hash), Some(tx));
    assert_eq!(store.settled_voucher(key.address).await?, Some(voucher));
    assert_eq!(store.insert_settlement(&intent, 503).await?, None, "a settled voucher is not planned again");
    let next = NewSettlement { voucher: opentab_core::U256::from(8), ..intent.clone() };
    assert!(store.insert_settlement(&next, 503).await?.is_some(), "a key settles again once closed");
    let leased = store.lease_settlements("worker-a", 504, 530, 10).await?;
    assert!(!store.drop_superseded_settlement(leased[0].id, "worker-b").await?, "only its holder drops it");
    assert!(store.drop_superseded_settlement(leased[0].id, "worker-a").await?);
    assert_eq!(store.settlement(leased[0].id).await?, None);

    let kinds: Vec<String> = store.due_webhooks(1_000, 10).await?.into_iter().map(|w| w.webhook.event_id).collect();
    assert_eq!(kinds, ["f1", "d1", "s1"], "one webhook per change, none for a change that did not happen");
    Ok(())
}

async fn key_changes_are_announced_once_even_when_replayed(store: Store) -> TestResult {
    let key = new_key(7, OWNER_A);
    let events = vec![
        at(10, 0, registered(&key)),
        at(11, 0, ValidatorEvent::Frozen { owner: OWNER_A, session_key: key.address, by: OWNER_A, at: 5 }),
        at(12, 0, ValidatorEvent::Unfrozen { owner: OWNER_A, session_key: key.address }),
    ];
    store.apply_chain_update(VALIDATOR, None, &events, "{}", 100).await?;
    store.apply_chain_update(VALIDATOR, None, &events, "{}", 101).await?;
    let due = store.due_webhooks(1_000, 10).await?;
    let kinds: Vec<&str> = due.iter().map(|w| w.webhook.event_type.as_str()).collect();
    assert_eq!(kinds, ["key.frozen", "key.unfrozen"]);
    let body: serde_json::Value = serde_json::from_str(&due[0].webhook.payload)?;
    assert_eq!(body["data"]["sessionKey"], format!("{:#x}", key.address));
    assert_eq!(body["timestamp"], "1970-01-01T00:01:40Z");

    store.webhook_failed(due[0].id, "503", 2_000, false).await?;
    store.webhook_delivered(due[1].id, 1_001).await?;
    assert!(store.due_webhooks(1_999, 10).await?.is_empty());
    let retried = store.due_webhooks(2_000, 10).await?;
    assert_eq!((retried.len(), retried[0].attempts), (1, 1));
    Ok(())
}
