//! A paid API of your own with the tower `PaymentLayer`: an axum service whose
//! `POST /v1/summarize` costs 0.001 USDC a call, charging the session keys `opentab dev` knows.
//!
//! ```sh
//! opentab dev                                   # terminal 1: chain, database, REST API
//! cargo run -p opentab-proxy --example paid_api     # terminal 2: this API on 127.0.0.1:8404
//! curl -i -X POST http://127.0.0.1:8404/v1/summarize   # 402 with PAYMENT-REQUIRED
//! ```
//!
//! It reads `opentab dev`'s database and addresses from `.opentab/` (or `$OPENTAB_DATA_DIR`).
//! Pay for calls with any client, e.g. `@opentab/client`'s `wrapFetchWithPayment` and the
//! demo session key of `.opentab/demo.json`. Production swaps SQLite for PostgreSQL and
//! `InProcessCounters` for `RedisCounters`; nothing else changes.

use std::sync::Arc;

use axum::Router;
use axum::routing::post;
use opentab_core::rules::RuleSettings;
use opentab_core::{Address, ContractDomain};
use opentab_gateway::pricing::Pricing;
use opentab_gateway::{Gateway, GatewayConfig, InProcessCounters, PaymentLayer};
use opentab_proxy::{StoreDirectory, StoreLedger, restore_counters};
use opentab_rules::RuleEngine;
use opentab_store::Store;

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Demo {
    chain_id: u64,
    validator: Address,
    usdc: Address,
    payee: Address,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::var("OPENTAB_DATA_DIR").unwrap_or_else(|_| ".opentab".into());
    let demo: Demo = serde_json::from_str(
        &std::fs::read_to_string(format!("{dir}/demo.json"))
            .map_err(|e| format!("{dir}/demo.json: {e}; start `opentab dev` first"))?,
    )?;
    let store = Store::connect(&format!("sqlite://{dir}/opentab.db")).await?;
    let counters = InProcessCounters::default();
    restore_counters(&store, &counters).await?;

    let layer = PaymentLayer::new(Gateway {
        config: GatewayConfig {
            domain: ContractDomain::opentab(demo.chain_id, demo.validator),
            asset: demo.usdc,
            pay_to: demo.payee,
            max_timeout_seconds: 60,
        },
        pricing: Pricing::new([("POST /v1/summarize", "0.001")])?,
        directory: StoreDirectory::preloaded(store.clone(), demo.payee).await?,
        counters,
        ledger: StoreLedger::new(store.clone()),
        // The rule engine watches every charge (spike, burst, low balance).
        observer: Some(Arc::new(RuleEngine::start(store, RuleSettings::default()).await?)),
    });
    let app = Router::new()
        .route("/v1/summarize", post(|body: String| async move { format!("{} bytes summarized", body.len()) }))
        .route("/", axum::routing::get(|| async { "free: POST /v1/summarize costs 0.001 USDC" }))
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8404").await?;
    eprintln!("paid API on http://127.0.0.1:8404 (POST /v1/summarize, 0.001 USDC a call)");
    axum::serve(listener, app).await?;
    Ok(())
}
