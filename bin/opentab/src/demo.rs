//! The demo of `opentab dev`: a priced "AI" endpoint behind the 402 gateway, a registered
//! demo session key, and `<data-dir>/demo.json` so scripts and `opentab pay` can pay at once;
//! the one gateway every priced call in dev goes through.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::Json;
use axum::Router;
use axum::routing::post;
use opentab_chain::KeyTerms;
use opentab_core::rules::RuleSettings;
use opentab_core::{Address, SigningKey, Usdc};
use opentab_gateway::pricing::Pricing;
use opentab_gateway::{Gateway, GatewayConfig, InProcessCounters, PaymentLayer, charge_api};
use opentab_proxy::{StoreDirectory, StoreLedger, VoidSpool, keep_draining, restore_counters};
use opentab_rules::RuleEngine;
use opentab_service::{Change, Notifier};
use opentab_store::Store;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::chain::DevChain;

/// The demo's one priced route.
pub(crate) const DEMO_ROUTE: (&str, &str, &str) = ("POST", "/v1/chat/completions", "0.002");
/// The demo key's limit and lifetime.
const DEMO_LIMIT_USDC: &str = "50";
const DEMO_KEY_DAYS: u64 = 30;

/// `<data-dir>/demo.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DemoFile {
    /// opentab dev's own URL: the REST API, the charge API, the web UI.
    pub(crate) url: String,
    /// Where the priced routes are served (`url`, or the proxy of `dev --upstream`).
    #[serde(default)]
    pub(crate) paid_url: Option<String>,
    pub(crate) routes: Vec<DemoRoute>,
    pub(crate) session_key: DemoKey,
    pub(crate) owner: Address,
    pub(crate) payee: Address,
    pub(crate) validator: Address,
    pub(crate) usdc: Address,
    pub(crate) chain_id: u64,
    pub(crate) rpc_url: String,
    /// The gateway's charge API, for middleware in other languages (packages/express).
    #[serde(default)]
    pub(crate) gateway: Option<DemoGateway>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DemoGateway {
    /// Where `/gateway/v1/charge` and `/void` are.
    pub(crate) url: String,
    /// Their `Authorization: Bearer` secret.
    pub(crate) secret: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DemoRoute {
    pub(crate) method: String,
    pub(crate) path: String,
    /// Base units.
    pub(crate) price: Usdc,
    /// A body to send (null: none).
    pub(crate) example_body: Value,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DemoKey {
    pub(crate) address: Address,
    /// The demo session key's private key (dev only).
    pub(crate) private_key: String,
}

/// Reuses the demo key of an earlier run if the chain still serves it, else registers a new
/// one for the demo owner (who sends that transaction itself).
pub(crate) async fn ensure_demo_key(data_dir: &Path, chain: &DevChain) -> anyhow::Result<SigningKey> {
    let path = data_dir.join("demo.json");
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(file) = serde_json::from_str::<DemoFile>(&text)
        && let Ok(key) = file.session_key.private_key.parse::<SigningKey>()
        && let Some(state) = chain.relayer.session_key(key.address()).await?
        && state.status(now()) == opentab_core::KeyStatus::Active
    {
        return Ok(key);
    }
    let key = SigningKey::random();
    let terms = KeyTerms {
        session_key: key.address(),
        payee: chain.payee,
        limit: Usdc::parse_decimal(DEMO_LIMIT_USDC)?,
        valid_after: now().saturating_sub(60),
        valid_until: now() + DEMO_KEY_DAYS * 86_400,
    };
    let owner = chain.relayer.with_provider(opentab_chain::signing_provider(
        &chain.anvil.endpoint(),
        opentab_chain::tx_signer(&chain.owner)?,
    )?);
    owner.register_session_key(&terms).await.context("registering the demo session key")?;
    tracing::info!(key = %key.address(), "registered a demo session key ({DEMO_LIMIT_USDC} USDC, {DEMO_KEY_DAYS} days)");
    Ok(key)
}

/// The demo route as demo.json lists it, with an example body.
pub(crate) fn demo_routes() -> anyhow::Result<Vec<DemoRoute>> {
    let (method, path, price) = DEMO_ROUTE;
    Ok(vec![DemoRoute {
        method: method.into(),
        path: path.into(),
        price: Usdc::parse_decimal(price)?,
        example_body: json!({ "model": "opentab-demo", "messages": [{ "role": "user", "content": "Hello!" }] }),
    }])
}

/// The routes `pricing` charges for, as demo.json lists them (no example bodies: they are
/// your API's).
pub(crate) fn listed_routes(pricing: &Pricing) -> Vec<DemoRoute> {
    pricing
        .routes()
        .iter()
        .map(|route| DemoRoute {
            method: route.method.clone(),
            path: route.pattern.clone(),
            price: route.price,
            example_body: Value::Null,
        })
        .collect()
}

/// What `<data-dir>/demo.json` tells about where things are served.
pub(crate) struct Served<'a> {
    /// opentab dev's own URL (REST API, charge API, web UI).
    pub(crate) url: &'a str,
    /// Where the priced routes are: `url` for the demo, the proxy's with `--upstream`.
    pub(crate) paid_url: &'a str,
    pub(crate) routes: Vec<DemoRoute>,
    pub(crate) gateway_secret: &'a str,
}

/// Writes `<data-dir>/demo.json`.
pub(crate) fn write_demo_file(
    data_dir: &Path,
    served: Served<'_>,
    chain: &DevChain,
    key: &SigningKey,
) -> anyhow::Result<DemoFile> {
    let file = DemoFile {
        url: served.url.to_owned(),
        paid_url: Some(served.paid_url.to_owned()),
        routes: served.routes,
        session_key: DemoKey { address: key.address(), private_key: format!("{:#x}", key.to_bytes()) },
        owner: chain.owner.address(),
        payee: chain.payee,
        validator: chain.deployment.validator,
        usdc: chain.deployment.usdc,
        chain_id: chain.deployment.chain_id,
        rpc_url: chain.anvil.endpoint(),
        gateway: Some(DemoGateway { url: served.url.to_owned(), secret: served.gateway_secret.to_owned() }),
    };
    let path = data_dir.join("demo.json");
    std::fs::write(&path, serde_json::to_string_pretty(&file)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(file)
}

/// The demo's pricing: its one route.
pub(crate) fn demo_pricing() -> anyhow::Result<Pricing> {
    let (method, path, price) = DEMO_ROUTE;
    Ok(Pricing::new([(format!("{method} {path}").as_str(), price)])?)
}

/// `opentab dev`'s one gateway: in-process counters rebuilt from the usage ledger, the rule
/// engine as its charge observer (freezing on-chain through `guardian`'s outbox worker),
/// `pricing`'s routes. The demo route, the charge API and `--upstream`'s proxy all charge
/// through it: one set of counters.
pub(crate) type DevLayer = PaymentLayer<StoreDirectory, Arc<InProcessCounters>, StoreLedger>;

/// Builds [`DevLayer`]; usage and rule crossings are announced through `notifier`; voids the
/// database cannot take wait in `spool_dir`.
pub(crate) async fn gateway(
    chain: &DevChain,
    store: &Store,
    notifier: Notifier,
    pricing: Pricing,
    guardian: Address,
    spool_dir: &std::path::Path,
) -> anyhow::Result<DevLayer> {
    let ledger = {
        let notifier = notifier.clone();
        StoreLedger::announcing(store.clone(), move |owner, key| notifier.publish(Change { owner, key: Some(key) }))
    };
    let spool =
        VoidSpool::open(spool_dir).with_context(|| format!("opening the void spool in {}", spool_dir.display()))?;
    let ledger = ledger.with_spool(Arc::new(spool));
    // Voids spooled by an earlier run reach the ledger before the counters are rebuilt from it.
    ledger.drain_spool().await.context("recording the voids spooled by an earlier run")?;
    let counters = Arc::new(InProcessCounters::default());
    let restored =
        restore_counters(store, &counters).await.context("rebuilding the gateway's counters from the ledger")?;
    if restored > 0 {
        tracing::info!(keys = restored, "gateway counters rebuilt from the usage ledger");
    }
    let gateway = Gateway {
        config: GatewayConfig {
            domain: chain.relayer.domain().clone(),
            asset: chain.deployment.usdc,
            pay_to: chain.payee,
            max_timeout_seconds: 60,
        },
        pricing,
        directory: StoreDirectory::preloaded(store.clone(), chain.payee).await.context("loading the key cache")?,
        counters: counters.clone(),
        ledger: ledger.clone(),
        observer: Some(Arc::new(
            RuleEngine::start(store.clone(), RuleSettings::default())
                .await
                .context("loading the rule engine")?
                .with_guardian(guardian)
                .with_listener(move |owner, key| notifier.publish(Change { owner, key: Some(key) })),
        )),
    };
    tokio::spawn(keep_draining(ledger, counters));
    Ok(PaymentLayer::new(gateway))
}

/// The charge API (`/gateway/v1/…`, behind `gateway_secret`) on `layer`'s gateway.
pub(crate) fn charge(layer: &DevLayer, gateway_secret: &str) -> Router {
    charge_api(layer.gateway().clone(), gateway_secret)
}

/// The demo priced API behind `layer`.
pub(crate) fn demo_api(layer: DevLayer) -> Router {
    let (_, path, _) = DEMO_ROUTE;
    Router::new().route(path, post(chat)).layer(layer)
}

/// A stand-in for a model: answers in the OpenAI chat-completions shape.
async fn chat(body: Option<Json<Value>>) -> Json<Value> {
    let prompt = body
        .as_ref()
        .and_then(|Json(b)| b["messages"].as_array()?.last()?["content"].as_str().map(str::to_owned))
        .unwrap_or_default();
    Json(json!({
        "object": "chat.completion",
        "model": "opentab-demo",
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": format!("You said {} characters; this answer cost 0.002 USDC.", prompt.chars().count()) }, "finish_reason": "stop" }],
    }))
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}
