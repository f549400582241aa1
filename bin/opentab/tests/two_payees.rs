//! One owner, two APIs (two payees, each with its own `opentab serve` + `opentab proxy` and its
//! own database) on one anvil: nothing the owner does to one tab starves the other.
//!
//! The owner opens a tab with each payee (18 USDC with A, 20 with B) and pays both through
//! session keys. Then it tries what used to drain a shared escrow (a key whose payee is itself,
//! settling a voucher for everything) and asks to withdraw its whole tab with B. B stops serving at once and settles
//! what it served within the grace window; A keeps serving up to exactly what its own tab holds,
//! and every call A served stays covered by A's tab. After the grace window the owner takes back
//! what B's tab still holds; the token is conserved throughout.
//!
//! Both gateways keep their counters in one Redis under one prefix (`OPENTAB_TEST_REDIS`,
//! default 127.0.0.1:6379; a fresh prefix per run), as two APIs of one operator might: what the
//! owner was served at one payee must never count against its tab with the other.

mod common;

use common::{Running, TestResult, wait_until};
use opentab_chain::bindings::SessionKeyValidator::SessionKeyValidatorErrors as E;
use opentab_chain::{Anvil, AnvilConfig, Deployment, KeyTerms, Validator, deploy_dev_contracts, signing_provider};
use opentab_core::{Address, SigningKey, U256, Usdc, Voucher};
use opentab_gateway::protocol::{
    PAYMENT_SIGNATURE, PaymentPayload, PaymentRequired, Requirements, SessionPayload, X402_VERSION, encode_header,
};
use opentab_store::Store;

const USDC: u64 = 1_000_000;
const GRACE: u64 = 86_400;

/// One API behind its own gateway: `opentab serve` (listener + settlement worker, the payee
/// settling for itself) and `opentab proxy`, sharing a fresh PostgreSQL database.
struct Api {
    _serve: Running,
    /// `opentab serve`'s own address (the API, `/metrics`).
    serve_url: String,
    _proxy: Running,
    _dir: tempfile::TempDir,
    url: String,
    store: Store,
    payee: Address,
    accepted: Requirements,
}

async fn api(anvil: &Anvil, deployment: &Deployment, payee_account: usize, redis_prefix: &str) -> TestResult<Api> {
    let payee = anvil.signer(payee_account)?.address();
    let database_url = opentab_store::testing::fresh_postgres_url().await?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("opentab.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndatabase_url = \"{database_url}\"\nrpc_url = \"{}\"\n\
             validator = \"{:#x}\"\ndeployed_at_block = {}\npayee = \"{payee:#x}\"\ndomain = \"127.0.0.1\"\n\
             confirmations = 0\nsettle_every_secs = 1\n\n[proxy]\nlisten = \"127.0.0.1:0\"\nrules = \"shadow\"\n\
             redis_url = \"{}\"\nredis_prefix = \"{redis_prefix}\"\n\n\
             [proxy.routes]\n\"POST /v1/work\" = \"1\"\n",
            anvil.endpoint(),
            deployment.validator,
            deployment.deployed_at_block,
            std::env::var("OPENTAB_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        ),
    )?;
    let config = config.to_string_lossy().into_owned();
    let payee_key = format!("{:#x}", anvil.keys()[payee_account]);
    let serve =
        Running::start(&["serve", "--config", &config], &[("OPENTAB_SETTLER_KEY", &payee_key)], "opentab serving")?;
    let serve_url = serve
        .printed
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .ok_or("serve printed no address")?
        .to_owned();
    let upstream = upstream().await?;
    let proxy = Running::start(&["proxy", "--config", &config, "--upstream", &upstream], &[], "ready")?;
    let url = proxy.field("url").ok_or("no proxy url")?;
    let challenge = common::client().post(format!("{url}/v1/work")).body("{}").send().await?;
    assert_eq!(challenge.status(), 402);
    let required: PaymentRequired = serde_json::from_str(&challenge.text().await?)?;
    let accepted = required.accepts.first().ok_or("no requirements")?.clone();
    assert_eq!(accepted.pay_to, payee, "each API asks to be paid itself");
    let store = Store::connect(&database_url).await?;
    Ok(Api { _serve: serve, serve_url, _proxy: proxy, _dir: dir, url, store, payee, accepted })
}

async fn upstream() -> TestResult<String> {
    let app = axum::Router::new().route("/v1/work", axum::routing::post(|| async { "done" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// One paid call to `api` with `key`'s voucher for `cumulative` base units: the status and body.
async fn pay(api: &Api, deployment: &Deployment, key: &SigningKey, cumulative: u64) -> TestResult<(u16, String)> {
    let domain = opentab_core::ContractDomain::opentab(deployment.chain_id, deployment.validator);
    let amount = U256::from(cumulative);
    let signature = key.sign_digest(&domain.digest(&Voucher::new(key.address(), api.payee, amount)));
    let payment = PaymentPayload {
        x402_version: X402_VERSION,
        accepted: api.accepted.clone(),
        payload: SessionPayload { session_key: key.address(), cumulative_amount: amount, signature },
        extensions: None,
    };
    let res = common::client()
        .post(format!("{}/v1/work", api.url))
        .header(PAYMENT_SIGNATURE, encode_header(&payment))
        .body("{}")
        .send()
        .await?;
    Ok((res.status().as_u16(), res.text().await?))
}

async fn register(owner: &Validator, payee: Address, limit: u64) -> TestResult<SigningKey> {
    let key = SigningKey::random();
    let terms = KeyTerms {
        session_key: key.address(),
        payee,
        limit: Usdc::from_base_units(limit),
        valid_after: 0,
        valid_until: 4_000_000_000,
    };
    owner.register_session_key(&terms).await?;
    Ok(key)
}

/// Moves anvil's clock forward and mines a block at the new time.
async fn advance_chain_clock(anvil: &Anvil, secs: u64) -> TestResult {
    let client = common::client();
    for (method, params) in [("evm_increaseTime", serde_json::json!([secs])), ("evm_mine", serde_json::json!([]))] {
        let body = serde_json::json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params });
        let res = client.post(anvil.endpoint()).json(&body).send().await?;
        assert!(res.status().is_success(), "{method}: {}", res.text().await?);
    }
    Ok(())
}

async fn balance(v: &Validator, account: Address) -> TestResult<u64> {
    Ok(v.usdc_balance(account).await?.saturating_to())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_the_owner_does_to_one_tab_starves_the_other() -> TestResult {
    let anvil = Anvil::spawn(AnvilConfig::default())?;
    let rpc = anvil.endpoint();
    let deployment = deploy_dev_contracts(&signing_provider(&rpc, anvil.signer(0)?)?, &rpc, GRACE).await?;
    let owner_address = anvil.signer(1)?.address();
    let owner = Validator::connect(signing_provider(&rpc, anvil.signer(1)?)?, deployment.validator).await?;
    let prefix = format!("opentab-test-{:016x}", rand::random::<u64>());
    let (a, b) = (api(&anvil, &deployment, 2, &prefix).await?, api(&anvil, &deployment, 3, &prefix).await?);

    // A tab with each API, and a key for each.
    owner.mint_test_usdc(owner_address, Usdc::from_base_units(100 * USDC)).await?;
    // 18 with A: after A settles 10, the 8 left stay under the threshold, unsettled.
    owner.deposit(a.payee, Usdc::from_base_units(18 * USDC)).await?;
    owner.deposit(b.payee, Usdc::from_base_units(20 * USDC)).await?;
    let key_a = register(&owner, a.payee, 50 * USDC).await?;
    let key_b = register(&owner, b.payee, 50 * USDC).await?;
    for (api, key, deposited) in [(&a, &key_a, 18 * USDC), (&b, &key_b, 20 * USDC)] {
        let (store, address) = (api.store.clone(), key.address());
        wait_until("each gateway mirrors its key and tab", || {
            let store = store.clone();
            async move {
                let registered = store.key(address).await?.is_some();
                Ok(registered && store.tab(owner_address, api.payee).await?.balance == Usdc::from_base_units(deposited))
            }
        })
        .await?;
    }

    // A serves 10 calls of 1 USDC (the threshold is reached with the last one, so A settles all
    // ten at once, however its worker's ticks fall between the calls), B serves 5.
    for n in 1..=10 {
        assert_eq!(pay(&a, &deployment, &key_a, n * USDC).await?.0, 200, "A call {n}");
    }
    for n in 1..=5 {
        assert_eq!(pay(&b, &deployment, &key_b, n * USDC).await?.0, 200, "B call {n}");
    }
    wait_until("A settles what it served", || async { Ok(balance(&owner, a.payee).await? == 10 * USDC) }).await?;
    // A's own worker sent that settlement: its listener counts no foreign one.
    wait_until("A's listener sees its settlement", || async {
        Ok(a.store.key(key_a.address()).await?.is_some_and(|k| k.key.settled == Usdc::from_base_units(10 * USDC)))
    })
    .await?;
    let (_, metrics) = common::get(&format!("{}/metrics", a.serve_url)).await?;
    assert!(metrics.contains("opentab_foreign_settlements_total 0"), "{metrics}");

    // The old drain: a key of the owner's own paying the owner, with a voucher for everything.
    // It draws only on the owner's tab with itself, which is empty; A's and B's tabs are untouched.
    let own_key = register(&owner, owner_address, 1_000 * USDC).await?;
    let voucher = Voucher::new(own_key.address(), owner_address, U256::from(40 * USDC));
    let signature = own_key.sign_digest(&owner.domain().digest(&voucher));
    let drained = owner.settle(own_key.address(), U256::from(40 * USDC), &signature).await;
    assert!(matches!(drained, Err(opentab_chain::Error::Reverted(E::EmptyTab(_)))), "{drained:?}");
    assert_eq!(owner.tab_of(owner_address, a.payee).await?.balance, Usdc::from_base_units(8 * USDC));
    assert_eq!(owner.tab_of(owner_address, b.payee).await?.balance, Usdc::from_base_units(20 * USDC));

    // The owner asks for its whole tab with B back. B stops serving at once (nothing of the tab
    // is available) and settles the 5 it served, inside the grace window.
    owner.request_withdrawal(b.payee, Usdc::from_base_units(20 * USDC)).await?;
    wait_until("B sees the withdrawal request", || async {
        Ok(b.store.tab(owner_address, b.payee).await?.pending_withdrawal.is_some())
    })
    .await?;
    let (status, body) = pay(&b, &deployment, &key_b, 6 * USDC).await?;
    assert_eq!(status, 402, "{body}");
    assert!(body.contains("insufficient_funds"), "{body}");
    wait_until("B settles what it served", || async { Ok(balance(&owner, b.payee).await? == 5 * USDC) }).await?;

    // A is not starved: it serves exactly the 8 its tab still holds, then refuses the 9th.
    for n in 11..=18 {
        let (status, body) = pay(&a, &deployment, &key_a, n * USDC).await?;
        assert_eq!(status, 200, "A call {n}: {body}");
    }
    let (status, body) = pay(&a, &deployment, &key_a, 19 * USDC).await?;
    assert_eq!(status, 402, "{body}");
    assert!(body.contains("insufficient_funds"), "one base unit past the tab is refused: {body}");

    // After the grace window the owner takes back what B's tab still holds (20 − 5 settled);
    // A's 8 served-but-unsettled USDC are still in A's tab, and A settles them when due.
    advance_chain_clock(&anvil, GRACE + 1).await?;
    let before = balance(&owner, owner_address).await?;
    owner.withdraw(b.payee).await?;
    assert_eq!(balance(&owner, owner_address).await? - before, 15 * USDC);
    assert_eq!(owner.tab_of(owner_address, a.payee).await?.balance, Usdc::from_base_units(8 * USDC));
    let a_owed = a.store.usage_total(key_a.address()).await?.ok_or("no usage")?.served.base_units()
        - owner.session_key(key_a.address()).await?.ok_or("key A")?.settled.base_units();
    assert_eq!(a_owed, 8 * USDC, "every call A served and has not settled is covered by A's tab");

    // Conservation: the validator holds exactly the tabs.
    let held = balance(&owner, deployment.validator).await?;
    let tabs = owner.tab_of(owner_address, a.payee).await?.balance.base_units()
        + owner.tab_of(owner_address, b.payee).await?.balance.base_units()
        + owner.tab_of(owner_address, owner_address).await?.balance.base_units();
    assert_eq!(held, tabs);
    let paid_out = balance(&owner, a.payee).await? + balance(&owner, b.payee).await?;
    assert_eq!(held + paid_out + 15 * USDC, 38 * USDC, "deposits = payouts + withdrawals + what is held");
    Ok(())
}
