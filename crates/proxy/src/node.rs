//! A proxy node put together: the store, the validator's domain, the key cache, the usage
//! ledger, the counters (Redis's, or in-process rebuilt from the ledger), the rule engine as the
//! gateway's charge observer, the guardian's outbox worker, and the routes.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use opentab_chain::{Address, Validator, read_provider, signing_provider, tx_signer};
use opentab_core::SigningKey;
use opentab_core::rules::{RuleMode, RuleSettings};
use opentab_gateway::pricing::Pricing;
use opentab_gateway::{
    ChargeObserver, CounterStore, Gateway, GatewayConfig, InProcessCounters, PaymentLayer, RedisCounters, UsageLedger,
    charge_api,
};
use opentab_rules::{Guardian, RuleEngine};
use opentab_store::Store;

use crate::forward::{Forward, Upstream, forwarding};
use crate::ops::{ExtraMetrics, Ops, gateway_metrics, with_ops};
use crate::spool::VoidSpool;
use crate::storage::{DrainedVoid, StoreCounterSource, StoreDirectory, StoreLedger, restore_counters};
use crate::{Error, Presence};

/// What a proxy runs with (`opentab proxy` reads it from serve's file, its `[proxy]` table and
/// flags).
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// The database `opentab serve` keeps in step with the chain.
    pub database_url: String,
    /// The chain's JSON-RPC endpoint.
    pub rpc_url: String,
    /// The validator contract.
    pub validator: Address,
    /// The payee the gateway charges for.
    pub payee: Address,
    /// The priced routes.
    pub pricing: Pricing,
    /// Where calls go; without it, only the charge API is served.
    pub upstream: Option<Upstream>,
    /// Counters shared by every proxy of the payee; without it, in-process counters.
    pub redis_url: Option<String>,
    /// Prefix of the Redis key names (the payee is added to it).
    pub redis_prefix: String,
    /// How long the upstream may take.
    pub timeout: Duration,
    /// The largest request body forwarded, in bytes.
    pub max_body: usize,
    /// `enforce` (freeze on a spike or a burst) or `shadow` (only alert).
    pub rules: RuleMode,
    /// The guardian account owners are shown (serve's `rule_guardian`).
    pub rule_guardian: Option<Address>,
    /// The guardian's private key: with it, rules freeze on-chain too.
    pub guardian_key: Option<SigningKey>,
    /// Serve the charge API to apps holding this secret.
    pub gateway_secret: Option<String>,
    /// Where voids the database cannot take wait for it ([`VoidSpool`]); without it such a void
    /// is only logged, and settlement would collect for the failed call.
    pub spool_dir: Option<std::path::PathBuf>,
}

/// A started proxy: serve [`ProxyNode::app`], then [`ProxyNode::stop`].
#[derive(Debug)]
pub struct ProxyNode {
    /// Every route: forwarding, the charge API, `/healthz`, `/readyz` and `/metrics`.
    pub app: Router,
    /// The database.
    pub store: Store,
    /// Which counters it charges, for people.
    pub counters: String,
    /// Keys the key cache and the rule engine loaded.
    pub keys_loaded: usize,
    /// The file its voids are spooled to while the database is away.
    pub spool: Option<std::path::PathBuf>,
    guardian: Option<tokio::task::JoinHandle<()>>,
    drain: tokio::task::JoinHandle<()>,
}

impl ProxyNode {
    /// Connects to everything, loads the key cache and the rule engine, and builds the routes.
    pub async fn start(settings: ProxySettings) -> Result<Self, Error> {
        let s = settings;
        let store = Store::connect(&s.database_url).await?;
        let validator = Validator::connect(read_provider(&s.rpc_url)?, s.validator).await?;
        let config = GatewayConfig {
            domain: validator.domain().clone(),
            asset: validator.usdc(),
            pay_to: s.payee,
            max_timeout_seconds: s.timeout.as_secs(),
        };
        let directory = StoreDirectory::preloaded(store.clone(), s.payee).await?;
        let mut engine = RuleEngine::start(store.clone(), RuleSettings::default().with_mode(s.rules)).await?;
        let mut guardian = None;
        if let Some(key) = &s.guardian_key {
            let signer = tx_signer(key)?;
            if s.rule_guardian != Some(signer.address()) {
                tracing::warn!(guardian = %signer.address(), "the guardian key is not the file's rule_guardian: owners are shown another guardian");
            }
            let as_guardian = validator.with_provider(signing_provider(&s.rpc_url, signer.clone())?);
            engine = engine.with_guardian(signer.address());
            let worker = Guardian::new(store.clone(), as_guardian, signer.address());
            guardian = Some(tokio::spawn(worker.run(std::future::pending())));
        }
        let keys_loaded = directory.cache_size().max(engine.keys_known());
        let observer: Arc<dyn ChargeObserver> = Arc::new(engine);
        let mut ledger = StoreLedger::new(store.clone());
        let mut spool = None;
        if let Some(dir) = &s.spool_dir {
            let opened = Arc::new(VoidSpool::open(dir).map_err(|source| Error::Spool { dir: dir.clone(), source })?);
            spool = Some(opened.path().to_owned());
            ledger = ledger.with_spool(opened);
        }
        // Voids spooled by an earlier run (or a proxy that died beside this one) reach the
        // ledger before anything is counted.
        let drained = ledger.drain_spool().await.map_err(Error::Spooled)?;
        let forward = s.upstream.clone().map(|u| Forward::new(u, s.timeout, s.max_body));
        let secret = s.gateway_secret.as_deref();
        let parts = Parts { config, pricing: s.pricing, directory, ledger, observer, forward, secret };
        let ((app, metrics, drain), counters) = match &s.redis_url {
            Some(url) => {
                // Budgets are per (owner, payee): an owner's served total at one payee's gateways
                // must never count against its tab with another payee sharing the Redis.
                let prefix = format!("{}:{:#x}", s.redis_prefix, s.payee);
                let counters = RedisCounters::connect(url, &prefix)
                    .await
                    .map_err(Error::Counters)?
                    .with_source(Arc::new(StoreCounterSource::new(store.clone())));
                give_back(&counters, drained).await;
                (parts.app(counters), format!("Redis {}", opentab_core::redact_url(url)))
            }
            None => {
                // Rebuilt from a ledger that holds the drained voids already.
                let counters = InProcessCounters::default();
                let restored = restore_counters(&store, &counters).await?;
                tracing::info!(keys = restored, "in-process counters rebuilt from the usage ledger");
                (parts.app(counters), "in-process (the only gateway of this payee on the database)".to_owned())
            }
        };
        // /healthz, /readyz (the database answers) and /metrics, answered by the proxy itself.
        let app = with_ops(app, Ops::new(store.clone(), None).with_metrics(metrics));
        Ok(Self { app, store, counters, keys_loaded, spool, guardian, drain })
    }

    /// Announces this gateway on the database (see [`Presence`]).
    pub async fn claim(&self, payee: Address, description: String) -> Result<Presence, Error> {
        Presence::claim(&self.store, payee, self.counters.starts_with("Redis"), description).await
    }

    /// Stops the guardian and the spool's drain, and closes the database.
    pub async fn stop(self) {
        if let Some(guardian) = self.guardian {
            guardian.abort();
        }
        self.drain.abort();
        self.store.close().await;
    }
}

/// What the routes are made of, before the counters are chosen.
struct Parts<'a> {
    config: GatewayConfig,
    pricing: Pricing,
    directory: StoreDirectory,
    ledger: StoreLedger,
    observer: Arc<dyn ChargeObserver>,
    forward: Option<Forward>,
    secret: Option<&'a str>,
}

impl Parts<'_> {
    /// The proxy's routes over `counters`, what its payment layer counts, and the task that
    /// drains the ledger's void spool into the database.
    fn app<C: CounterStore + 'static>(self, counters: C) -> (Router, ExtraMetrics, tokio::task::JoinHandle<()>) {
        let counters = Arc::new(counters);
        let drain = tokio::spawn(keep_draining(self.ledger.clone(), counters.clone()));
        let (router, metrics) = gateway_app(
            Gateway {
                config: self.config,
                pricing: self.pricing,
                directory: self.directory.clone(),
                counters,
                ledger: self.ledger,
                observer: Some(self.observer),
            },
            self.directory,
            self.forward,
            self.secret,
        );
        (router, metrics, drain)
    }
}

/// How often spooled voids are offered to the database.
const DRAIN_EVERY: Duration = Duration::from_millis(500);

/// Offers `ledger`'s spooled voids to the database every half second, for ever (spawn it); each
/// one it takes gives its price back to `counters`.
pub async fn keep_draining<C: CounterStore>(ledger: StoreLedger, counters: C) {
    loop {
        tokio::time::sleep(DRAIN_EVERY).await;
        match ledger.drain_spool().await {
            Ok(voids) => give_back(&counters, voids).await,
            Err(err) => tracing::debug!(error = %err, "spooled voids wait: the database does not take them yet"),
        }
    }
}

/// Gives the price of each void the ledger took at last back to `counters` (of the epochs the
/// ledger named).
async fn give_back<C: CounterStore>(counters: &C, voids: Vec<DrainedVoid>) {
    for v in voids {
        if let Err(err) = counters.void(v.key, v.owner, v.amount, v.idempotency, v.epoch).await {
            tracing::error!(error = %err, key = %v.key, "the counters missed a spooled void: they over-count the key until rebuilt");
        }
    }
}

/// `gateway`'s routes: forwarding to the upstream (priced routes charged), the charge API with
/// `secret`, and the metrics of its payment layer and key cache.
pub fn gateway_app<C, L>(
    gateway: Gateway<StoreDirectory, C, L>,
    directory: StoreDirectory,
    forward: Option<Forward>,
    secret: Option<&str>,
) -> (Router, ExtraMetrics)
where
    C: CounterStore + 'static,
    L: UsageLedger + 'static,
{
    let layer = PaymentLayer::new(gateway);
    let metrics = gateway_metrics(layer.metrics().clone(), directory);
    let api = secret.map(|secret| charge_api(layer.gateway().clone(), secret));
    let mut router = match forward {
        Some(forward) => forwarding(layer, forward),
        None => Router::new(),
    };
    if let Some(api) = api {
        router = router.merge(api);
    }
    (router, metrics)
}
