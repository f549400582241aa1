//! `opentab cluster`: the production topology, run on this machine by one command (DESIGN §5,
//! issue 12), every process started here and stopped at the end:
//!
//! - anvil with the contracts, an owner whose tab with the payee is funded, session keys;
//! - a PostgreSQL of its own (so `opentab chaos` may restart it);
//! - a Redis Cluster: 3 masters and 3 replicas on loopback ports;
//! - two `opentab serve` nodes, each with a settlement worker (their own accounts, both settlers
//!   the payee authorised) sharing the queue by lease, and each with a chain listener;
//! - N `opentab proxy` nodes on the Redis Cluster, in front of an upstream API of its own.
//!
//! The nodes reach the chain through a [`Link`] the chaos suite can cut. `opentab chaos` runs
//! its scenarios on a [`Cluster`]; `opentab cluster` starts one, prints where everything is,
//! writes `cluster.json` (what `opentab bench --cluster` drives load with) and runs until
//! Ctrl-C.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use opentab_chain::{Anvil, AnvilConfig, KeyTerms, Validator, deploy_dev_contracts, signing_provider};
use opentab_core::{Address, SigningKey, Usdc};
use opentab_store::Store;
use opentab_topology::{Link, OwnPostgres, RedisCluster, Supervised};
use serde::{Deserialize, Serialize};

#[derive(Debug, Args)]
pub(crate) struct ClusterArgs {
    /// `opentab proxy` nodes.
    #[arg(long, default_value_t = 4)]
    proxies: usize,
    /// Session keys registered for the owner.
    #[arg(long, default_value_t = 16)]
    keys: usize,
    /// Where the cluster's description (URLs, the keys) is written.
    #[arg(long, default_value = "cluster.json")]
    json: PathBuf,
}

/// What a cluster is made of.
#[derive(Debug, Clone)]
pub(crate) struct Shape {
    /// `opentab proxy` nodes.
    pub(crate) proxies: usize,
    /// Session keys.
    pub(crate) keys: usize,
    /// Each key's spend limit.
    pub(crate) key_limit: Usdc,
    /// What the owner deposits into its tab with the payee.
    pub(crate) tab: Usdc,
    /// What a call of the priced routes costs.
    pub(crate) price: Usdc,
}

/// Anvil accounts: who is who.
const DEPLOYER: usize = 0;
const OWNER: usize = 1;
const PAYEE: usize = 2;
const SETTLERS: [usize; 2] = [4, 5];

/// A running cluster (see the module docs). Dropping it stops everything.
pub(crate) struct Cluster {
    // Dropped first: the processes, then what they use.
    pub(crate) proxies: Vec<Supervised>,
    pub(crate) serves: Vec<Supervised>,
    pub(crate) redis: RedisCluster,
    pub(crate) postgres: OwnPostgres,
    /// The nodes' way to the chain.
    pub(crate) rpc: Link,
    pub(crate) anvil: Anvil,
    pub(crate) upstream: Upstream,
    pub(crate) deployment: opentab_chain::Deployment,
    pub(crate) payee: Address,
    /// The owner's account, sending as the owner.
    pub(crate) owner: Validator,
    pub(crate) keys: Vec<SigningKey>,
    pub(crate) price: Usdc,
    /// The cluster's database, as the nodes use it.
    pub(crate) database_url: String,
    pub(crate) store: Store,
    pub(crate) config: PathBuf,
    /// Holds the config and the proxies' spools; removed last.
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts everything (see the module docs), with progress on stdout; returns once every
    /// key is mirrored into the database and every proxy answers.
    pub(crate) async fn start(shape: &Shape) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("opentab-cluster").tempdir()?;
        say("starting anvil and deploying the contracts");
        let anvil = Anvil::spawn(AnvilConfig::default()).context("starting anvil")?;
        let rpc_url = anvil.endpoint();
        let deployer = signing_provider(&rpc_url, anvil.signer(DEPLOYER)?)?;
        let deployment = deploy_dev_contracts(&deployer, &rpc_url, 86_400).await?;
        let owner = Validator::connect(signing_provider(&rpc_url, anvil.signer(OWNER)?)?, deployment.validator).await?;
        let payee = anvil.signer(PAYEE)?.address();
        owner.mint_test_usdc(anvil.signer(OWNER)?.address(), shape.tab).await?;
        owner.deposit(payee, shape.tab).await?;
        let as_payee = owner.with_provider(signing_provider(&rpc_url, anvil.signer(PAYEE)?)?);
        for settler in SETTLERS {
            as_payee.set_settler(anvil.signer(settler)?.address(), true).await.context("authorising a settler")?;
        }
        let keys: Vec<SigningKey> = (0..shape.keys).map(|_| SigningKey::random()).collect();
        for batch in keys.chunks(250) {
            let terms: Vec<KeyTerms> = batch
                .iter()
                .map(|key| KeyTerms {
                    session_key: key.address(),
                    payee,
                    limit: shape.key_limit,
                    valid_after: 0,
                    valid_until: 4_000_000_000,
                })
                .collect();
            owner.register_session_keys(&terms).await.context("registering session keys")?;
        }
        say(&format!("  {} keys registered, the owner's tab holds {} USDC", keys.len(), shape.tab.display()));
        let rpc = Link::start(&format!("127.0.0.1:{}", anvil.port())).await?;

        say("starting PostgreSQL and a Redis Cluster (3 masters, 3 replicas)");
        let postgres = OwnPostgres::start()?;
        let database_url =
            opentab_store::create_postgres_database(&postgres.url("postgres"), "opentab_cluster").await?;
        let redis = RedisCluster::start(3, 1).await?;
        let upstream = Upstream::start().await?;

        let config = dir.path().join("opentab.toml");
        write_config(&config, &database_url, &format!("http://{}", rpc.addr()), &deployment, payee, &redis, shape)?;
        let exe = std::env::current_exe().context("finding the opentab binary")?;
        let config_arg = config.to_string_lossy().into_owned();
        let mut serves = Vec::new();
        for (n, settler) in SETTLERS.iter().enumerate() {
            say(&format!("starting opentab serve #{}", n + 1));
            let key = format!("{:#x}", anvil.keys()[*settler]);
            serves.push(Supervised::start(
                &format!("serve #{}", n + 1),
                exe.clone(),
                vec!["serve".into(), "--config".into(), config_arg.clone(), "--port".into(), "0".into()],
                vec![("OPENTAB_SETTLER_KEY".into(), key), ("RUST_LOG".into(), "error".into())],
                "opentab serving",
            )?);
        }
        let store = Store::connect(&database_url).await?;
        wait_until_mirrored(&store, &keys).await?;
        let mut proxies = Vec::new();
        for n in 0..shape.proxies {
            say(&format!("starting opentab proxy #{}", n + 1));
            let state = dir.path().join(format!("proxy-{n}"));
            // A port of its own, kept across restarts: clients find it where it was.
            let port = opentab_topology::free_port()?.to_string();
            proxies.push(Supervised::start(
                &format!("proxy #{}", n + 1),
                exe.clone(),
                vec![
                    "proxy".into(),
                    "--config".into(),
                    config_arg.clone(),
                    "--port".into(),
                    port,
                    "--upstream".into(),
                    upstream.url.clone(),
                ],
                vec![
                    ("XDG_STATE_HOME".into(), state.to_string_lossy().into_owned()),
                    ("RUST_LOG".into(), "error".into()),
                ],
                "ready",
            )?);
        }
        Ok(Self {
            proxies,
            serves,
            redis,
            postgres,
            rpc,
            anvil,
            upstream,
            deployment,
            payee,
            owner,
            keys,
            price: shape.price,
            database_url,
            store,
            config,
            _dir: dir,
        })
    }

    /// Each proxy's base URL.
    pub(crate) fn proxy_urls(&self) -> Vec<String> {
        self.proxies.iter().filter_map(|p| p.field("url")).collect()
    }

    /// The owner of the keys.
    pub(crate) fn owner_address(&self) -> anyhow::Result<Address> {
        Ok(self.anvil.signer(OWNER)?.address())
    }

    /// The settlement workers' accounts, in the order of [`Cluster::serves`].
    pub(crate) fn settlers(&self) -> anyhow::Result<Vec<Address>> {
        SETTLERS.iter().map(|n| Ok(self.anvil.signer(*n)?.address())).collect()
    }
}

/// The cluster's configuration: serve's settings and the `[proxy]` table every node reads.
fn write_config(
    path: &Path,
    database_url: &str,
    rpc_url: &str,
    deployment: &opentab_chain::Deployment,
    payee: Address,
    redis: &RedisCluster,
    shape: &Shape,
) -> anyhow::Result<()> {
    let price = shape.price.display();
    let text = format!(
        "listen = \"127.0.0.1:0\"\ndatabase_url = \"{database_url}\"\nrpc_url = \"{rpc_url}\"\n\
         validator = \"{:#x}\"\ndeployed_at_block = {}\npayee = \"{payee:#x}\"\ndomain = \"127.0.0.1\"\n\
         secure_cookies = false\nconfirmations = 0\nsettle_every_secs = 1\nsettle_lease_secs = 5\n\
         settle_tx_timeout_secs = 10\nsettle_confirmations = 6\n\n\
         [proxy]\nlisten = \"127.0.0.1:0\"\nredis_url = \"{}\"\ntimeout_secs = 10\n\
         # Chaos traffic is a burst by design: the rules alert without freezing.\nrules = \"shadow\"\n\n\
         [proxy.routes]\n\"POST /v1/work\" = \"{price}\"\n\"POST /v1/fail\" = \"{price}\"\n",
        deployment.validator,
        deployment.deployed_at_block,
        redis.url(),
    );
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Waits (up to 60 s) until serve's listener has every key in the database.
async fn wait_until_mirrored(store: &Store, keys: &[SigningKey]) -> anyhow::Result<()> {
    for key in keys {
        let mut waited = 0;
        loop {
            let record = store.key(key.address()).await?;
            if record.is_some_and(|k| k.chain_status == opentab_store::ChainStatus::Registered) {
                break;
            }
            anyhow::ensure!(waited < 600, "serve's chain listener did not mirror key {} within 60 s", key.address());
            tokio::time::sleep(Duration::from_millis(100)).await;
            waited += 1;
        }
    }
    Ok(())
}

/// The API behind the proxies: `POST /v1/work` answers 200, `POST /v1/fail` 500 (both priced),
/// `POST /v1/free` 200 (not priced). It remembers
/// the request id (`x-request-id`) of every call it answered 200, to check against the ledger.
#[derive(Clone)]
pub(crate) struct Upstream {
    pub(crate) url: String,
    served: Arc<Mutex<HashSet<String>>>,
}

impl Upstream {
    async fn start() -> anyhow::Result<Self> {
        use axum::http::{HeaderMap, StatusCode};
        use axum::routing::post;
        let served: Arc<Mutex<HashSet<String>>> = Arc::default();
        let seen = served.clone();
        let app = axum::Router::new()
            .route(
                "/v1/work",
                post(move |headers: HeaderMap| {
                    let seen = seen.clone();
                    async move {
                        if let Some(id) = headers.get("x-request-id").and_then(|v| v.to_str().ok())
                            && let Ok(mut seen) = seen.lock()
                        {
                            seen.insert(id.to_owned());
                        }
                        axum::Json(serde_json::json!({ "ok": true }))
                    }
                }),
            )
            .route("/v1/fail", post(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "the model failed") }))
            // Not priced: `opentab bench --cluster`'s plain baseline.
            .route("/v1/free", post(|| async { axum::Json(serde_json::json!({ "ok": true })) }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { url, served })
    }

    /// Whether the API answered the call with request id `id`.
    pub(crate) fn served(&self, id: &str) -> bool {
        self.served.lock().is_ok_and(|s| s.contains(id))
    }
}

/// What `cluster.json` holds: where everything is, and the keys' private keys (a local test
/// topology: anvil's accounts, keys made for it).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Described {
    pub(crate) proxies: Vec<String>,
    pub(crate) serves: Vec<String>,
    pub(crate) database_url: String,
    pub(crate) redis_url: String,
    pub(crate) rpc_url: String,
    pub(crate) chain_id: u64,
    pub(crate) validator: Address,
    pub(crate) payee: Address,
    pub(crate) price: Usdc,
    /// Priced at `price`.
    pub(crate) paid_path: String,
    /// Not priced: the same upstream, no payment.
    pub(crate) free_path: String,
    pub(crate) keys: Vec<String>,
}

pub(crate) async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let shape = Shape {
        proxies: args.proxies.max(1),
        keys: args.keys.max(1),
        key_limit: Usdc::parse_decimal("1000")?,
        tab: Usdc::parse_decimal("100000")?,
        price: Usdc::parse_decimal("0.01")?,
    };
    let cluster = Cluster::start(&shape).await?;
    let described = Described {
        proxies: cluster.proxy_urls(),
        serves: cluster.serves.iter().filter_map(|s| s.field("opentab serving on")).collect(),
        database_url: cluster.database_url.clone(),
        redis_url: cluster.redis.url(),
        rpc_url: cluster.anvil.endpoint(),
        chain_id: cluster.deployment.chain_id,
        validator: cluster.deployment.validator,
        payee: cluster.payee,
        price: cluster.price,
        paid_path: "/v1/work".into(),
        free_path: "/v1/free".into(),
        keys: cluster.keys.iter().map(|k| format!("{:#x}", k.to_bytes())).collect(),
    };
    std::fs::write(&args.json, serde_json::to_string_pretty(&described)?)
        .with_context(|| format!("writing {}", args.json.display()))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "opentab cluster is up")?;
    for url in &described.proxies {
        writeln!(out, "  proxy       {url}")?;
    }
    for url in &described.serves {
        writeln!(out, "  serve       {url}")?;
    }
    writeln!(out, "  redis       {}", described.redis_url)?;
    writeln!(out, "  postgres    {}", opentab_core::redact_url(&cluster.database_url))?;
    writeln!(out, "  chain       {} (validator {})", described.rpc_url, described.validator)?;
    writeln!(out, "  config      {}", cluster.config.display())?;
    writeln!(out, "  keys        {} (private keys in {})", described.keys.len(), args.json.display())?;
    writeln!(out, "ready; Ctrl-C stops every process")?;
    out.flush()?;
    drop(out);
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    say("stopping");
    drop(cluster);
    Ok(())
}

/// Progress on standard output (a failed write loses only that line).
pub(crate) fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}
