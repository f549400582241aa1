//! `opentab dev`: the embedded default in one process. anvil with the contracts and a funded
//! demo owner, a SQLite database, the chain listener and the REST API with `/healthz`,
//! `/readyz` and `/metrics`; a demo priced API behind the HTTP 402 gateway (with the rule
//! engine and the charge API for `packages/express`) and a demo session key
//! (`<data-dir>/demo.json`); the settlement worker (paid to and sent by the demo payee); with
//! `--webhook-url`, webhook delivery; and the web UI at `/` with a dev wallet.
//!
//! With `--upstream URL --route "METHOD /path=PRICE"…` your own API takes the demo's place: it
//! is served on a port of its own (`--proxy-port`) behind the same gateway, so every call is
//! charged on dev's counters, recorded in its ledger and settled by its worker.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use opentab_accumulator::{
    EmailSender, Mailer, SettlementConfig, SettlementWorker, WebhookConfig, WebhookSecret, WebhookSender,
};
use opentab_gateway::pricing::Pricing;
use opentab_proxy::{DEFAULT_MAX_BODY, DEFAULT_TIMEOUT, ExtraMetrics, Forward, Ops, Presence, Upstream, with_ops};
use opentab_rules::Guardian;
use opentab_service::api::{ApiConfig, AppState, ChainAccess, router};
use opentab_service::{ChainListener, ListenerConfig, ServiceMetrics};
use opentab_store::Store;

use crate::chain::{ChainArgs, DevChain};
use crate::server::{serve, shutdown_signal};

#[derive(Debug, Args)]
pub(crate) struct DevArgs {
    /// Port of the HTTP server (0 picks a free one).
    #[arg(long, env = "OPENTAB_PORT", default_value_t = 8402)]
    port: u16,
    /// Deliver webhooks (settlement.*, key.*) to this URL.
    #[arg(long, env = "OPENTAB_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// Their `whsec_…` signing secret; one is generated and printed if not given.
    #[arg(long, env = "OPENTAB_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// The secret of the gateway's charge API (`/gateway/v1/charge`, for the Express
    /// middleware); one is generated if not given. Written to demo.json.
    #[arg(long, env = "OPENTAB_GATEWAY_SECRET", hide_env_values = true)]
    gateway_secret: Option<String>,
    /// The built web UI (`npm --prefix web run build`), served at `/`.
    #[arg(long, env = "OPENTAB_WEB_DIR", default_value = crate::web::DEFAULT_WEB_DIR)]
    web_dir: std::path::PathBuf,
    /// Email rule alerts through this SMTP relay (`smtp://host:port`).
    #[arg(long, env = "OPENTAB_SMTP_URL", requires = "alert_email")]
    smtp_url: Option<String>,
    /// Who receives alert email.
    #[arg(long, env = "OPENTAB_ALERT_EMAIL")]
    alert_email: Option<String>,
    /// Seconds between settlement rounds.
    #[arg(long, default_value_t = 1)]
    settle_every: u64,
    /// Put your own API behind dev's gateway instead of the demo (`http://host:port`): priced
    /// routes are charged on dev's counters, ledger and settlement, everything is forwarded.
    #[arg(long, value_name = "URL", requires = "routes")]
    upstream: Option<String>,
    /// A priced route of the upstream, `"METHOD /path=PRICE"` (USDC; `:id` or `{id}` for a
    /// segment). Repeat it for each route.
    #[arg(long = "route", value_name = "METHOD /path=PRICE", requires = "upstream")]
    routes: Vec<String>,
    /// Port the upstream is served on behind the gateway (0 picks a free one).
    #[arg(long, env = "OPENTAB_PROXY_PORT", default_value_t = 8403)]
    proxy_port: u16,
    #[command(flatten)]
    chain: ChainArgs,
}

pub(crate) async fn run(args: DevArgs) -> anyhow::Result<()> {
    // Checked before anything starts: a typo in a route should not wait for a chain.
    let upstream = args.upstream.as_deref().map(|text| Upstream::parse(text).context("--upstream")).transpose()?;
    let pricing = match &upstream {
        Some(_) => upstream_pricing(&args.routes)?,
        None => crate::demo::demo_pricing()?,
    };
    let chain = DevChain::start(&args.chain).await?;
    let demo_key = crate::demo::ensure_demo_key(&args.chain.data_dir, &chain).await?;
    let db = args.chain.data_dir.join("opentab.db");
    let db_url = format!("sqlite://{}", db.display());
    let store = Store::connect(&db_url).await.with_context(|| format!("opening the database {}", db.display()))?;
    // Paid calls get connections of their own: a flood of API requests (or of anything else
    // on the shared pool) must not make the gateway wait for one and answer 503.
    // Sharing the API's change feed: a freeze through the API reaches the gateway's key cache
    // before the API answers.
    let gateway_store = store.another_pool().await.with_context(|| format!("opening the database {}", db.display()))?;

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{} (is another opentab running? try --port)", args.port))?;
    let addr = listener.local_addr()?;
    // The demo gateway's counters are in this process: no other gateway may charge its payee's
    // keys on this database meanwhile (a proxy pointed at it is refused, and says why).
    let presence = Presence::claim(&gateway_store, chain.payee, false, format!("opentab dev at http://{addr}")).await?;

    // The rule engine freezes on-chain as anvil account #3, for owners who chose it as their
    // guardian (the demo owner did, on first start): it leaves the freeze in the outbox, the
    // guardian sends it.
    let guardian_signer = chain.anvil.signer(crate::chain::GUARDIAN_ACCOUNT)?;
    let guardian = Guardian::new(
        gateway_store.clone(),
        chain.relayer.with_provider(opentab_chain::signing_provider(&chain.anvil.endpoint(), guardian_signer.clone())?),
        guardian_signer.address(),
    );
    let mut config = ApiConfig::new(addr.to_string(), chain.deployment.chain_id, chain.deployment.validator);
    config.rule_guardian = Some(guardian.address());
    config.payee = Some(chain.payee);
    config.usdc = Some(chain.deployment.usdc);
    config.grace_secs = chain.relayer.grace();
    let state = AppState::new(store.clone(), config)
        .with_chain(ChainAccess { relayer: chain.relayer.clone(), payee: chain.payee });
    let metrics = Arc::new(ServiceMetrics::default());
    let provider = chain.relayer.provider().clone();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // The dev chain mines instantly and never reorganises: follow its tip closely.
    let listener_config = ListenerConfig {
        stream: opentab_chain::StreamConfig { confirmations: 0, max_range: 2_000 },
        poll_interval: Duration::from_millis(250),
        ..ListenerConfig::default()
    };
    let mut chain_listener = ChainListener::new(
        store.clone(),
        provider.clone(),
        chain.deployment.validator,
        chain.deployment.deployed_at_block,
        listener_config,
    )
    .await?
    .with_notifier(state.notifier().clone())
    .with_payee(chain.payee, metrics.clone());
    // Serve only once the database knows the chain (the demo key included).
    chain_listener.catch_up().await.context("reading the chain into the database")?;
    let mut stop_listener = stopped.clone();
    let listener_task = tokio::spawn(chain_listener.run(metrics.clone(), async move {
        let _ = stop_listener.wait_for(|stop| *stop).await;
    }));

    // The settler the payee authorised at set-up settles its vouchers and pays the gas.
    let settler_signer = chain.anvil.signer(crate::chain::SETTLER_ACCOUNT)?;
    let settler =
        chain.relayer.with_provider(opentab_chain::signing_provider(&chain.anvil.endpoint(), settler_signer)?);
    let mut settlement = SettlementConfig::new(chain.payee);
    settlement.poll_interval = Duration::from_secs(args.settle_every.max(1));
    settlement.retry_base = Duration::from_secs(5);
    let worker = SettlementWorker::new(store.clone(), settler, settlement);
    let mut stop_worker = stopped.clone();
    let worker_task = tokio::spawn(worker.run(async move {
        let _ = stop_worker.wait_for(|stop| *stop).await;
    }));
    let webhooks = match &args.webhook_url {
        Some(url) => {
            let secret = match &args.webhook_secret {
                Some(text) => text.parse().context("--webhook-secret")?,
                None => WebhookSecret::generate(),
            };
            let sender = WebhookSender::new(store.clone(), WebhookConfig::new(url.clone(), secret.clone()))?;
            let mut stop_sender = stopped.clone();
            let task = tokio::spawn(sender.run(async move {
                let _ = stop_sender.wait_for(|stop| *stop).await;
            }));
            Some((url.clone(), secret, task))
        }
        None => None,
    };

    let gateway_secret = args.gateway_secret.clone().unwrap_or_else(|| format!("gws_{:032x}", rand::random::<u128>()));
    let mut background = Vec::new();
    let mut stop_guardian = stopped.clone();
    background.push(tokio::spawn(guardian.clone().run(async move {
        let _ = stop_guardian.wait_for(|stop| *stop).await;
    })));
    if let (Some(url), Some(to)) = (&args.smtp_url, &args.alert_email) {
        let sender = EmailSender::new(store.clone(), Mailer::new(url, "opentab <opentab@localhost>", to)?);
        let mut stop_sender = stopped.clone();
        background.push(tokio::spawn(sender.run(async move {
            let _ = stop_sender.wait_for(|stop| *stop).await;
        })));
    }
    let routes = match &upstream {
        Some(_) => crate::demo::listed_routes(&pricing),
        None => crate::demo::demo_routes()?,
    };
    let spool_dir = args.chain.data_dir.join("spool");
    let layer =
        crate::demo::gateway(&chain, &gateway_store, state.notifier().clone(), pricing, guardian.address(), &spool_dir)
            .await?;
    let charge = crate::demo::charge(&layer, &gateway_secret);
    let gateway_metrics = opentab_proxy::gateway_metrics(layer.metrics().clone(), layer.gateway().directory.clone());
    // With --upstream, the user's API gets a port of its own: its whole path space is
    // forwarded, and nothing of dev's (the REST API, the web UI) can shadow one of its routes.
    let (paid, demo_api) = match &upstream {
        Some(upstream) => {
            let socket = tokio::net::TcpListener::bind(("127.0.0.1", args.proxy_port)).await.with_context(|| {
                format!("binding 127.0.0.1:{} for the upstream (try --proxy-port)", args.proxy_port)
            })?;
            let forward = Forward::new(upstream.clone(), DEFAULT_TIMEOUT, DEFAULT_MAX_BODY);
            (Some((socket, opentab_proxy::forwarding(layer, forward))), axum::Router::new())
        }
        None => (None, crate::demo::demo_api(layer)),
    };
    // Open event streams end at shutdown, or they would hold the drain until its deadline.
    let streams = state.notifier().clone();
    let dev_wallet = dev_wallet(&chain);
    let service_metrics = ExtraMetrics::new(move |out| metrics.render(out));
    let app = with_ops(
        router(state).merge(demo_api).merge(charge).merge(dev_wallet),
        Ops::new(store.clone(), Some(provider)).with_metrics(service_metrics).with_metrics(gateway_metrics),
    )
    .fallback(crate::web::handler(args.web_dir.clone()));
    let url = format!("http://{addr}");
    // The upstream's server stops with dev's, and drains its calls the same way.
    let (stop_paid, paid_stopped) = tokio::sync::watch::channel(false);
    let (paid_url, paid_task) = match paid {
        Some((socket, app)) => {
            let paid_url = format!("http://{}", socket.local_addr()?);
            let mut paid_stopped = paid_stopped.clone();
            let drain = crate::server::drain_for(DEFAULT_TIMEOUT);
            let task = tokio::spawn(serve(
                socket,
                app,
                async move {
                    let _ = paid_stopped.wait_for(|stop| *stop).await;
                },
                drain,
            ));
            (paid_url, Some(task))
        }
        None => (url.clone(), None),
    };
    let served = crate::demo::Served { url: &url, paid_url: &paid_url, routes, gateway_secret: &gateway_secret };
    let demo_file = crate::demo::write_demo_file(&args.chain.data_dir, served, &chain, &demo_key)?;
    let demo_json = args.chain.data_dir.join("demo.json");

    let mut out = std::io::stdout().lock();
    writeln!(out, "opentab dev is running")?;
    writeln!(out, "  url                 http://{addr}")?;
    writeln!(out, "  web UI              http://{addr}/ (sign in with the dev wallet: the demo owner)")?;
    writeln!(
        out,
        "  api                 http://{addr}/api/session-keys (sign in: GET /api/auth/nonce, POST /api/auth/login)"
    )?;
    writeln!(out, "  health              http://{addr}/healthz  http://{addr}/readyz  http://{addr}/metrics")?;
    match &upstream {
        Some(upstream) => {
            writeln!(out, "  your API            {paid_url} (forwarded to {}, HTTP 402 gateway)", upstream.base)?;
            for route in &demo_file.routes {
                writeln!(
                    out,
                    "  priced              {} {}{} = {} USDC",
                    route.method,
                    paid_url,
                    route.path,
                    route.price.display()
                )?;
            }
        }
        None => writeln!(
            out,
            "  demo API            POST http://{addr}/v1/chat/completions (0.002 USDC a call, HTTP 402 gateway)"
        )?,
    }
    writeln!(out, "  demo session key    {} (50 USDC limit)", demo_key.address())?;
    writeln!(out, "  demo.json           {}", demo_json.display())?;
    writeln!(
        out,
        "  charge API          POST http://{addr}/gateway/v1/charge|void (secret in demo.json; packages/express)"
    )?;
    writeln!(out, "  database            {}", db.display())?;
    writeln!(
        out,
        "  rule guardian       {} (freezes on-chain when a spike or burst rule fires, for owners who chose it)",
        guardian.address()
    )?;
    writeln!(
        out,
        "  settlement          every {} USDC owed, or at once when a key stops; `opentab settlements list`",
        opentab_core::SETTLEMENT_THRESHOLD.display()
    )?;
    match &webhooks {
        Some((url, secret, _)) => writeln!(out, "  webhooks            {url} (secret {secret})")?,
        None => writeln!(out, "  webhooks            off (--webhook-url URL to receive settlement.* and key.*)")?,
    }
    chain.print(&mut out, &args.chain.data_dir).await?;
    match (&upstream, demo_file.routes.first()) {
        (Some(_), Some(route)) => writeln!(
            out,
            "pay for calls:       opentab pay --demo {} --url {paid_url}{} --method {} --count 5",
            demo_json.display(),
            route.path,
            route.method
        )?,
        _ => writeln!(out, "pay for calls:       opentab pay --demo {} --count 5", demo_json.display())?,
    }
    writeln!(out, "ready; Ctrl-C stops")?;
    out.flush()?;
    drop(out);

    let shutdown = async move {
        shutdown_signal().await;
        streams.close();
        let _ = stop_paid.send(true);
    };
    serve(listener, app, shutdown, crate::server::DRAIN).await?;
    if let Some(task) = paid_task {
        task.await.context("the upstream's server")??;
    }
    tracing::info!(
        "shutting down: finishing the settlement round, stopping the chain listener, closing the database, stopping anvil"
    );
    let _ = stop.send(true);
    let _ = listener_task.await;
    let _ = worker_task.await;
    if let Some((_, _, task)) = webhooks {
        let _ = task.await;
    }
    for task in background {
        let _ = task.await;
    }
    presence.release().await;
    store.close().await;
    gateway_store.close().await;
    drop(chain);
    Ok(())
}

/// The pricing of `--route "METHOD /path=PRICE"` arguments.
fn upstream_pricing(routes: &[String]) -> anyhow::Result<Pricing> {
    let entries = routes
        .iter()
        .map(|text| {
            text.rsplit_once('=').map(|(route, price)| (route.trim(), price.trim())).with_context(|| {
                format!("--route {text:?} must read \"METHOD /path=PRICE\", e.g. \"POST /v1/chat/completions=0.002\"")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Pricing::new(entries).context("--route")
}

/// `GET /api/dev/wallet`: the demo owner's key and the dev chain's RPC, so the web UI can sign
/// in, sign actions and send its own transactions (deposits, withdrawals) in a plain browser
/// with no wallet extension. Only `opentab dev` serves it (anvil's well-known development key,
/// worthless anywhere else); with an injected wallet the UI never sees a key.
fn dev_wallet(chain: &DevChain) -> axum::Router {
    let body = serde_json::json!({
        "address": chain.owner.address(),
        "privateKey": format!("{:#x}", chain.owner.to_bytes()),
        "rpcUrl": chain.anvil.endpoint(),
        "note": "opentab dev's demo owner (anvil account #1): a development key, never use it elsewhere",
    });
    axum::Router::new().route("/api/dev/wallet", axum::routing::get(move || async move { axum::Json(body) }))
}
