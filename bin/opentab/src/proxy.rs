//! `opentab proxy --config FILE --upstream URL`: the HTTP 402 gateway as a reverse proxy in
//! front of an API written in any language. Priced routes are charged before they are
//! forwarded and voided when the upstream answers >= 400 (or fails, or times out); everything
//! else passes through. Bodies stream both ways; hop-by-hop and payment headers stay here.
//!
//! With `OPENTAB_GUARDIAN_KEY` set, a key that breaks a spike or burst rule is frozen on-chain
//! too (as that account), for owners who made it their guardian; set serve's `rule_guardian`
//! to its address so owners are shown it.
//!
//! It answers `/healthz`, `/readyz` (the database answers) and `/metrics` itself (paid, refused
//! by code, voided and failed-closed calls, charge and upstream latency histograms, the key
//! cache's hits and misses): an upstream route of one of these names is not reachable through
//! it. `docs/grafana-gateway.json` is a dashboard for them.
//!
//! With `OPENTAB_GATEWAY_SECRET` set it also serves the charge API (`/gateway/v1/charge` and
//! `/void`) that `packages/express` calls, on the same counters; `--upstream` is then optional.
//!
//! It reads the same file as `opentab serve` (whose chain listener keeps the database in step
//! with the chain: run one `serve`, and as many proxies as you like), plus a `[proxy]` table:
//!
//! ```toml
//! database_url = "postgres://opentab@db/opentab"
//! rpc_url = "https://polygon-amoy.example/rpc"
//! validator = "0x…"
//! payee = "0x…"
//! # (… the rest of serve's settings)
//!
//! [proxy]
//! listen = "127.0.0.1:8403"                  # default
//! upstream = "http://127.0.0.1:9000"         # or --upstream
//! redis_url = "redis://127.0.0.1:6379"       # counters shared by every proxy; without it,
//!                                            # in-process counters (then it must be the only
//!                                            # gateway of its payee on the database: checked)
//! redis_prefix = "opentab"                   # default; key names also carry the payee, so
//!                                            # gateways of different payees may share a Redis
//! timeout_secs = 60                          # upstream answer deadline (default 60)
//! max_body_bytes = 16777216                  # request bodies over this are refused with 413
//!                                            # (default 16 MiB; checked as they stream)
//! rules = "enforce"                          # the rule engine's seed mode: enforce (default), shadow or off (owners and keys may set their own)
//!
//! [proxy.routes]
//! "POST /v1/chat/completions" = "0.002"
//! "GET /v1/models/:id" = "0.0001"
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use opentab_chain::Address;
use opentab_core::SigningKey;
use opentab_core::rules::RuleMode;
use opentab_gateway::pricing::Pricing;
use opentab_proxy::{DEFAULT_MAX_BODY, DEFAULT_TIMEOUT, ProxyNode, ProxySettings, Upstream};
use serde::Deserialize;

#[derive(Debug, Args)]
pub(crate) struct ProxyArgs {
    /// The TOML configuration file (serve's, with a `[proxy]` table).
    #[arg(long, env = "OPENTAB_CONFIG")]
    config: PathBuf,
    /// The API to forward paid calls to (`http://host:port`); overrides `proxy.upstream`.
    #[arg(long, env = "OPENTAB_UPSTREAM")]
    upstream: Option<String>,
    /// Overrides the port of `proxy.listen` (0 picks a free one).
    #[arg(long, env = "OPENTAB_PROXY_PORT")]
    port: Option<u16>,
    /// Overrides `proxy.redis_url`.
    #[arg(long, env = "OPENTAB_REDIS_URL")]
    redis_url: Option<String>,
    /// Overrides `database_url`.
    #[arg(long, env = "OPENTAB_DATABASE_URL")]
    database_url: Option<String>,
    /// Overrides `rpc_url`.
    #[arg(long, env = "OPENTAB_RPC_URL")]
    rpc_url: Option<String>,
    /// Serve the charge API (`/gateway/v1/…`) to apps holding this secret.
    #[arg(long, env = "OPENTAB_GATEWAY_SECRET", hide_env_values = true)]
    gateway_secret: Option<String>,
    /// The private key the rule engine freezes keys on-chain with (owners choose it as their
    /// guardian). Without it rules freeze at the gateway only.
    #[arg(long, env = "OPENTAB_GUARDIAN_KEY", hide_env_values = true)]
    guardian_key: Option<String>,
}

/// The settings the proxy reads from serve's file; the rest of it is serve's business.
#[derive(Debug, Deserialize)]
struct File {
    database_url: String,
    rpc_url: String,
    validator: Address,
    payee: Address,
    #[serde(default)]
    rule_guardian: Option<Address>,
    #[serde(default)]
    proxy: Section,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Section {
    #[serde(default = "default_listen")]
    listen: SocketAddr,
    upstream: Option<String>,
    redis_url: Option<String>,
    #[serde(default = "default_prefix")]
    redis_prefix: String,
    #[serde(default = "default_timeout")]
    timeout_secs: u64,
    #[serde(default = "default_max_body")]
    max_body_bytes: u64,
    #[serde(default)]
    rules: RuleMode,
    #[serde(default)]
    spool_dir: Option<PathBuf>,
    #[serde(default)]
    routes: BTreeMap<String, String>,
}

impl Section {
    /// The rule engine's seed mode.
    pub(crate) const fn rules_mode(&self) -> RuleMode {
        self.rules
    }
}

impl Default for Section {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            upstream: None,
            redis_url: None,
            redis_prefix: default_prefix(),
            timeout_secs: default_timeout(),
            max_body_bytes: default_max_body(),
            rules: RuleMode::default(),
            spool_dir: None,
            routes: BTreeMap::new(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8403))
}

const fn default_max_body() -> u64 {
    DEFAULT_MAX_BODY as u64
}

fn default_prefix() -> String {
    "opentab".to_owned()
}

/// Where voids wait for the database by default: the user's state directory (XDG), so a proxy
/// restarted by its supervisor finds them.
fn default_spool_dir() -> PathBuf {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    state.join("opentab").join("spool")
}

const fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT.as_secs()
}

pub(crate) async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let mut file: File = crate::config_file::read(&args.config, crate::config_file::Reader::Proxy)?;
    let section = &mut file.proxy;
    if let Some(port) = args.port {
        section.listen.set_port(port);
    }
    let upstream = args.upstream.or(section.upstream.take());
    anyhow::ensure!(
        upstream.is_some() || args.gateway_secret.is_some(),
        "no upstream: pass --upstream http://host:port (the API to put behind the gateway), set proxy.upstream, \
         or set OPENTAB_GATEWAY_SECRET to serve only the charge API"
    );
    let upstream = upstream.as_deref().map(Upstream::parse).transpose()?;
    anyhow::ensure!(
        upstream.is_none() || !section.routes.is_empty(),
        "{} prices no routes: add a [proxy.routes] table, e.g. \"POST /v1/chat/completions\" = \"0.002\"",
        args.config.display()
    );
    let pricing = Pricing::new(section.routes.iter().map(|(route, price)| (route.as_str(), price.as_str())))
        .with_context(|| format!("{} [proxy.routes]", args.config.display()))?;
    let guardian_key = args
        .guardian_key
        .as_deref()
        .map(str::parse::<SigningKey>)
        .transpose()
        .context("OPENTAB_GUARDIAN_KEY is not a private key")?;
    let settings = ProxySettings {
        database_url: args.database_url.unwrap_or(file.database_url),
        rpc_url: args.rpc_url.unwrap_or(file.rpc_url),
        validator: file.validator,
        payee: file.payee,
        pricing,
        upstream: upstream.clone(),
        redis_url: args.redis_url.or(section.redis_url.take()),
        redis_prefix: section.redis_prefix.clone(),
        timeout: Duration::from_secs(section.timeout_secs),
        max_body: usize::try_from(section.max_body_bytes).unwrap_or(usize::MAX),
        // `enforce` freezes on a spike or a burst, `shadow` only alerts (for load tests, or to
        // watch the rules before trusting them).
        rules: section.rules,
        rule_guardian: file.rule_guardian,
        guardian_key,
        gateway_secret: args.gateway_secret.clone(),
        spool_dir: Some(section.spool_dir.take().unwrap_or_else(default_spool_dir)),
    };
    let node = ProxyNode::start(settings).await.context("starting the proxy")?;
    let socket =
        tokio::net::TcpListener::bind(section.listen).await.with_context(|| format!("binding {}", section.listen))?;
    let addr = socket.local_addr()?;
    let presence = node.claim(file.payee, format!("opentab proxy at http://{addr}")).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "opentab proxy")?;
    writeln!(out, "  url         http://{addr}")?;
    match &upstream {
        Some(upstream) => writeln!(out, "  upstream    {}", upstream.base)?,
        None => writeln!(out, "  upstream    none: charge API only")?,
    }
    if args.gateway_secret.is_some() {
        writeln!(out, "  charge API  http://{addr}/gateway/v1/charge and /void")?;
    }
    writeln!(out, "  counters    {}", node.counters)?;
    writeln!(out, "  keys        {} loaded into memory", node.keys_loaded)?;
    if let Some(spool) = &node.spool {
        writeln!(out, "  void spool  {} (voids wait there while the database is away)", spool.display())?;
    }
    writeln!(out, "  ops         http://{addr}/healthz /readyz /metrics (answered by the proxy, not forwarded)")?;
    for (route, price) in &section.routes {
        writeln!(out, "  priced      {route} = {price} USDC")?;
    }
    writeln!(out, "ready; Ctrl-C stops after the calls under way")?;
    out.flush()?;
    drop(out);
    // An upstream call may take up to the timeout; shutdown lets it finish and be answered.
    let drain = crate::server::drain_for(Duration::from_secs(section.timeout_secs));
    crate::server::serve(socket, node.app.clone(), crate::server::shutdown_signal(), drain).await?;
    presence.release().await;
    node.stop().await;
    Ok(())
}
