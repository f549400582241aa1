//! `opentab serve --config FILE`: production. PostgreSQL (or any sqlx URL the store takes), an
//! external JSON-RPC endpoint, the chain listener, the REST API, the settlement worker and
//! webhook delivery. Settings come from a TOML file; `OPENTAB_*` environment variables and
//! flags override it; private keys and the webhook secret only ever come from the environment
//! (`OPENTAB_RELAYER_KEY`, `OPENTAB_SETTLER_KEY`, `OPENTAB_WEBHOOK_SECRET`).
//!
//! ```toml
//! listen = "127.0.0.1:8402"                  # default
//! database_url = "postgres://opentab@db/opentab"
//! rpc_url = "https://polygon-amoy.example/rpc"
//! validator = "0x…"                          # SessionKeyValidator
//! deployed_at_block = 12345678               # where the listener starts on first run
//! payee = "0x…"                              # the one payee keys created here may pay
//! domain = "api.example.com"                 # what Sign-In with Ethereum messages must name
//! confirmations = 2                          # default
//! secure_cookies = false                     # default true (HTTPS); false only for plain-HTTP testing
//! relay_daily_quota = 20                     # default; relayed transactions per owner a day
//! relay_min_tab = "1"                        # default, in USDC; key creations and unfreezes are
//!                                            # relayed for owners whose tab holds this much ("0": all)
//! webhook_url = "https://hooks.example.com/opentab"   # optional; needs OPENTAB_WEBHOOK_SECRET
//! settle_every_secs = 2                      # default
//! rule_guardian = "0x…"                      # optional: the account `opentab proxy` freezes
//!                                            # keys on-chain with (OPENTAB_GUARDIAN_KEY there);
//!                                            # shown to owners so they can choose it
//! smtp_url = "smtp://127.0.0.1:25"           # optional, with alert_email: the rule engine's
//! alert_email = "ops@example.com"            # alerts (fired on any proxy) are emailed from
//!                                            # the outbox by this node
//!
//! [rate_limits]                              # requests a minute; 0 turns one off
//! sign_in_per_ip = 30                        # default; nonces and logins per client IP
//! relays_per_ip = 30                         # default; key creations, freezes, … per client IP
//! relays_per_owner = 6                       # default; relayed transactions per owner
//! sessions_per_owner = 10                    # default; sign-ins per owner
//! trust_forwarded_for = false                # default; true behind a proxy that appends X-Forwarded-For
//! ```
//!
//! The settlement worker runs when `OPENTAB_SETTLER_KEY` is set (the account that sends
//! `settle` and pays its gas, usually the payee's); several `serve` nodes may run it on one
//! database: leases keep each key settling in one place.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use opentab_accumulator::{
    EmailSender, Mailer, SettlementConfig, SettlementWorker, WebhookConfig, WebhookSecret, WebhookSender,
};
use opentab_chain::{Address, Validator, read_provider, signing_provider};
use opentab_core::{SigningKey, Usdc};
use opentab_proxy::{ExtraMetrics, Ops, with_ops};
use opentab_service::api::{ApiConfig, AppState, ChainAccess, RateLimits, router};
use opentab_service::{ChainListener, ListenerConfig, ServiceMetrics};
use opentab_store::Store;
use serde::Deserialize;

use crate::server::{serve, shutdown_signal};

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The TOML configuration file.
    #[arg(long, env = "OPENTAB_CONFIG")]
    config: PathBuf,
    /// Overrides the port of `listen`.
    #[arg(long, env = "OPENTAB_PORT")]
    port: Option<u16>,
    /// Overrides `database_url`.
    #[arg(long, env = "OPENTAB_DATABASE_URL")]
    database_url: Option<String>,
    /// Overrides `rpc_url`.
    #[arg(long, env = "OPENTAB_RPC_URL")]
    rpc_url: Option<String>,
    /// The relayer's private key (pays the gas of owners' signed actions). Without it the API
    /// serves reads only.
    #[arg(long, env = "OPENTAB_RELAYER_KEY", hide_env_values = true)]
    relayer_key: Option<String>,
    /// The private key that sends settlements and pays their gas. Without it nothing is
    /// settled by this node.
    #[arg(long, env = "OPENTAB_SETTLER_KEY", hide_env_values = true)]
    settler_key: Option<String>,
    /// The built web UI, served at `/`.
    #[arg(long, env = "OPENTAB_WEB_DIR", default_value = crate::web::DEFAULT_WEB_DIR)]
    web_dir: PathBuf,
    /// The `whsec_…` secret webhooks are signed with (required with `webhook_url`).
    #[arg(long, env = "OPENTAB_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_listen")]
    listen: SocketAddr,
    database_url: String,
    rpc_url: String,
    validator: Address,
    #[serde(default)]
    deployed_at_block: u64,
    payee: Address,
    domain: String,
    #[serde(default = "default_confirmations")]
    confirmations: u64,
    /// Session cookies marked `Secure` (on by default: production is served over HTTPS).
    #[serde(default = "secure_by_default")]
    secure_cookies: bool,
    #[serde(default)]
    webhook_url: Option<String>,
    #[serde(default = "default_settle_every")]
    settle_every_secs: u64,
    /// How long a settlement worker's lease holds an intent (and past each receipt's wait).
    #[serde(default = "default_settle_lease")]
    settle_lease_secs: u64,
    /// How long a settlement worker waits for a receipt before counting the attempt failed.
    #[serde(default = "default_settle_tx_timeout")]
    settle_tx_timeout_secs: u64,
    /// Blocks on top of a settlement before it is final (until then a reorg may drop it).
    #[serde(default = "default_settle_confirmations")]
    settle_confirmations: u64,
    #[serde(default)]
    rule_guardian: Option<Address>,
    /// The SMTP relay rule alerts are emailed through.
    #[serde(default)]
    smtp_url: Option<String>,
    /// Who receives them.
    #[serde(default)]
    alert_email: Option<String>,
    /// Transactions the relayer sends per owner in 24 hours (key creations, on-chain unfreezes
    /// and deletions; freezes are never refused).
    #[serde(default = "default_relay_quota")]
    relay_daily_quota: u64,
    /// The free tab balance (decimal USDC) an owner needs for key creations and unfreezes to be
    /// relayed.
    #[serde(default, deserialize_with = "decimal_usdc")]
    relay_min_tab: Option<Usdc>,
    #[serde(default)]
    rate_limits: RateLimits,
    /// `opentab proxy`'s settings: checked here too, read by the proxy (and its rules' mode
    /// by the API, which shows owners the seed their gateways judge by).
    #[serde(default)]
    proxy: Option<crate::proxy::Section>,
}

fn decimal_usdc<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Usdc>, D::Error> {
    let text = String::deserialize(deserializer)?;
    Usdc::parse_decimal(&text).map(Some).map_err(serde::de::Error::custom)
}

const fn default_settle_every() -> u64 {
    2
}

const fn default_settle_lease() -> u64 {
    120
}

const fn default_settle_tx_timeout() -> u64 {
    60
}

const fn default_settle_confirmations() -> u64 {
    12
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8402))
}

const fn default_relay_quota() -> u64 {
    20
}

fn secure_by_default() -> bool {
    true
}

fn default_confirmations() -> u64 {
    2
}

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut config: Config = crate::config_file::read(&args.config, crate::config_file::Reader::Serve)?;
    if let Some(port) = args.port {
        config.listen.set_port(port);
    }
    config.database_url = args.database_url.unwrap_or(config.database_url);
    config.rpc_url = args.rpc_url.unwrap_or(config.rpc_url);
    // Checked before anything starts.
    let mailer = match (&config.smtp_url, &config.alert_email) {
        (Some(url), Some(to)) => {
            Some(Mailer::new(url, "opentab <opentab@localhost>", to).context("smtp_url / alert_email")?)
        }
        (None, None) => None,
        _ => anyhow::bail!(
            "{}: smtp_url and alert_email go together (the relay, and who receives rule alerts)",
            args.config.display()
        ),
    };

    let store = Store::connect(&config.database_url).await.context("connecting to the database")?;
    let reader = read_provider(&config.rpc_url)?;
    let relayer = match &args.relayer_key {
        Some(key) => {
            let key: SigningKey = key.parse().context("OPENTAB_RELAYER_KEY is not a private key")?;
            let provider = signing_provider(&config.rpc_url, opentab_chain::tx_signer(&key)?)?;
            Some(Validator::connect(provider, config.validator).await.context("reaching the validator")?)
        }
        None => {
            tracing::warn!("no OPENTAB_RELAYER_KEY: creating, freezing and deleting keys is disabled");
            None
        }
    };
    let deployed = match &relayer {
        Some(v) => v.clone(),
        None => Validator::connect(reader.clone(), config.validator).await.context("reaching the validator")?,
    };
    let chain_id = deployed.domain().chain_id();

    let metrics = Arc::new(ServiceMetrics::default());
    let listener_config = ListenerConfig {
        stream: opentab_chain::StreamConfig { confirmations: config.confirmations, ..Default::default() },
        ..ListenerConfig::default()
    };
    let mut api_config = ApiConfig::new(config.domain.clone(), chain_id, config.validator);
    api_config.secure_cookies = config.secure_cookies;
    api_config.rule_guardian = config.rule_guardian;
    if let Some(proxy) = &config.proxy {
        api_config.rule_seed = opentab_core::rules::RuleSettings::default().with_mode(proxy.rules_mode());
    }
    api_config.relay_daily_quota = config.relay_daily_quota;
    if let Some(min) = config.relay_min_tab {
        api_config.relay_min_tab = min;
    }
    api_config.rate_limits = config.rate_limits;
    api_config.payee = Some(config.payee);
    api_config.usdc = Some(deployed.usdc());
    api_config.grace_secs = deployed.grace();
    let mut state = AppState::new(store.clone(), api_config);
    if let Some(relayer) = relayer {
        state = state.with_chain(ChainAccess { relayer, payee: config.payee });
    }
    let chain_listener =
        ChainListener::new(store.clone(), reader.clone(), config.validator, config.deployed_at_block, listener_config)
            .await?
            .with_notifier(state.notifier().clone())
            .with_payee(config.payee, metrics.clone());
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let listener_task = tokio::spawn(chain_listener.run(metrics.clone(), async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    }));

    let mut background = vec![listener_task];
    match &args.settler_key {
        Some(key) => {
            let key: SigningKey = key.parse().context("OPENTAB_SETTLER_KEY is not a private key")?;
            let provider = signing_provider(&config.rpc_url, opentab_chain::tx_signer(&key)?)?;
            let settler = Validator::connect(provider, config.validator).await.context("reaching the validator")?;
            // Only the payee and the settlers it authorised may settle: say so now rather than
            // with every reverted settlement.
            let account = key.address();
            match settler.is_settler(config.payee, account).await {
                Ok(true) => {
                    metrics.settler_authorized.store(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(settler = %account, payee = %config.payee, "settling as an authorised settler");
                }
                Ok(false) => tracing::warn!(
                    settler = %account, payee = %config.payee,
                    "OPENTAB_SETTLER_KEY's account is NOT authorised to settle for the payee: every settlement will \
                     revert (NotSettler) until the payee authorises it once, with `opentab settlements authorize {account}` \
                     run with the payee's key (OPENTAB_PAYEE_KEY), or relayed with its signature (`--relay`)"
                ),
                Err(err) => tracing::warn!(error = %err, "could not check whether the settler is authorised"),
            }
            let mut settlement = SettlementConfig::new(config.payee);
            settlement.poll_interval = std::time::Duration::from_secs(config.settle_every_secs.max(1));
            settlement.lease = std::time::Duration::from_secs(config.settle_lease_secs.max(1));
            settlement.tx_timeout = std::time::Duration::from_secs(config.settle_tx_timeout_secs.max(1));
            settlement.confirmations = config.settle_confirmations;
            let worker = SettlementWorker::new(store.clone(), settler, settlement);
            let mut stopped = stop.subscribe();
            background.push(tokio::spawn(worker.run(async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            })));
        }
        None => tracing::warn!("no OPENTAB_SETTLER_KEY: this node settles nothing"),
    }
    if let Some(url) = &config.webhook_url {
        let secret: WebhookSecret = args
            .webhook_secret
            .as_deref()
            .context("webhook_url is set but OPENTAB_WEBHOOK_SECRET is not")?
            .parse()
            .context("OPENTAB_WEBHOOK_SECRET")?;
        let sender = WebhookSender::new(store.clone(), WebhookConfig::new(url.clone(), secret))?;
        let mut stopped = stop.subscribe();
        background.push(tokio::spawn(sender.run(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        })));
    }

    if let Some(mailer) = mailer {
        let sender = EmailSender::new(store.clone(), mailer);
        let mut stopped = stop.subscribe();
        background.push(tokio::spawn(sender.run(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        })));
    }

    // Open event streams end at shutdown, or they would hold the drain until its deadline.
    let streams = state.notifier().clone();
    let service_metrics = ExtraMetrics::new(move |out| metrics.render(out));
    let app = with_ops(router(state), Ops::new(store.clone(), Some(reader)).with_metrics(service_metrics))
        .fallback(crate::web::handler(args.web_dir.clone()));
    let socket =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let addr = socket.local_addr()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "opentab serving on http://{addr} (chain eip155:{chain_id}, validator {})", config.validator)?;
    out.flush()?;
    drop(out);

    let shutdown = async move {
        shutdown_signal().await;
        streams.close();
    };
    serve(socket, app, shutdown, crate::server::DRAIN).await?;
    let _ = stop.send(true);
    for task in background {
        let _ = task.await;
    }
    store.close().await;
    Ok(())
}
