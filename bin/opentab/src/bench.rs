//! `opentab bench`: measures the paid hot path against the plain proxy on this machine, and
//! prints a table (and writes it as JSON).
//!
//! It starts everything itself: anvil with the contracts, K session keys registered and funded,
//! an upstream of its own (instant, or answering after `--upstream-delay-ms`), and, for each
//! ledger (a SQLite file; a fresh PostgreSQL database when one answers) and each mode, an
//! `opentab proxy` child process:
//! - `plain`: the proxy on an unpriced route (payment off);
//! - `in-process`: a paid route, in-process counters;
//! - `redis`: a paid route, Redis counters (when a Redis answers).
//!
//! Vouchers are signed before timing starts, so the load generator measures the proxy rather
//! than its own signing. Each run reports calls/s, p50/p99/p99.9, the latency it adds over the
//! plain run on the same ledger, the proxy's CPU time per call (from `/proc`) and the ratio of
//! paid to plain throughput, and accumulation (a charge taken to its ledger row durable: the
//! 99th percentile's bucket of the proxy's own histogram); after each paid run the ledger is checked: what it holds is what
//! the receipts said was charged, and no key was served beyond its best voucher.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Body;
use clap::{Args, ValueEnum};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentab_chain::{Anvil, AnvilConfig, KeyTerms, Validator, deploy_dev_contracts, read_provider, signing_provider};
use opentab_core::{Address, SigningKey, U256, Usdc, Voucher};
use opentab_gateway::protocol::{
    PAYMENT_SIGNATURE, PaymentPayload, PaymentRequired, Requirements, SessionPayload, X402_VERSION, encode_header,
};
use opentab_service::{ChainListener, ListenerConfig};
use opentab_store::Store;
use serde::Serialize;

/// What one paid call costs in the benchmark (one base unit: budgets never run out).
const PRICE: &str = "0.000001";
const PRICE_UNITS: u64 = 1;

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Calls per run (after a warm-up of a tenth of them, at most 1,000).
    #[arg(long, default_value_t = 20_000)]
    calls: usize,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Session keys the paid calls are spread over (registered before timing starts).
    #[arg(long, default_value_t = 1)]
    keys: usize,
    /// How long the upstream takes to answer, in milliseconds (0: at once).
    #[arg(long, default_value_t = 0)]
    upstream_delay_ms: u64,
    /// Runs to make, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Mode::Plain, Mode::InProcess, Mode::Redis])]
    modes: Vec<Mode>,
    /// Ledgers to run them on.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Ledger::Sqlite, Ledger::Postgres])]
    ledgers: Vec<Ledger>,
    /// Redis for the `redis` runs (skipped when it does not answer).
    #[arg(long, env = "OPENTAB_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// A PostgreSQL URL the benchmark's database is created through (skipped when it does not
    /// answer).
    #[arg(long, env = "OPENTAB_BENCH_POSTGRES", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres: String,
    /// Where the results are written as JSON.
    #[arg(long, default_value = "bench.json")]
    json: PathBuf,
    /// Drive a running `opentab cluster` (its `cluster.json`) instead of starting a proxy:
    /// plain, then paid calls spread over every proxy of the topology.
    #[arg(long)]
    cluster: Option<PathBuf>,
}

/// What the proxy does with the calls of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Mode {
    /// An unpriced route: payment off.
    Plain,
    /// A paid route, in-process counters.
    InProcess,
    /// A paid route, Redis counters.
    Redis,
}

/// Where the usage ledger is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Ledger {
    Sqlite,
    Postgres,
}

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
struct Run {
    mode: Mode,
    ledger: Ledger,
    calls: usize,
    calls_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    /// Over the plain run on the same ledger.
    added_p50_ms: Option<f64>,
    added_p99_ms: Option<f64>,
    added_p999_ms: Option<f64>,
    /// The proxy's CPU time (user + system) per call.
    proxy_cpu_us_per_call: f64,
    /// Accumulation, charge taken to ledger row durable: the upper bound of the proxy's
    /// histogram bucket holding its 99th percentile (paid runs).
    accumulation_p99_ms: Option<f64>,
    /// Throughput over the plain run's on the same ledger.
    ratio_to_plain: Option<f64>,
    /// The ledger agreed with the receipts and no key was served beyond its best voucher.
    conservation: Option<bool>,
}

/// The JSON file.
#[derive(Debug, Serialize)]
struct Report<'a> {
    machine: Machine,
    calls: usize,
    concurrency: usize,
    keys: usize,
    upstream_delay_ms: u64,
    runs: &'a [Run],
    skipped: &'a [String],
}

#[derive(Debug, Serialize)]
struct Machine {
    cpu: String,
    cores: usize,
    os: String,
}

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.keys >= 1 && args.concurrency >= 1 && args.calls >= 1,
        "--keys, --calls and --concurrency must be at least 1"
    );
    if let Some(described) = &args.cluster {
        return on_cluster(&args, described).await;
    }
    let mut out = std::io::stdout().lock();
    let machine = machine();
    writeln!(out, "opentab bench on {} ({} cores)", machine.cpu, machine.cores)?;
    writeln!(
        out,
        "  {} calls a run, {} at once, over {} key(s); upstream answers {}",
        args.calls,
        args.concurrency,
        args.keys,
        if args.upstream_delay_ms == 0 { "at once".to_owned() } else { format!("after {} ms", args.upstream_delay_ms) }
    )?;
    out.flush()?;
    drop(out);

    let work = tempfile_dir()?;
    let chain = Chain::start(args.keys).await?;
    let upstream = upstream(Duration::from_millis(args.upstream_delay_ms)).await?;
    let mut runs: Vec<Run> = Vec::new();
    let mut skipped = Vec::new();
    for ledger in &args.ledgers {
        let database_url = match ledger {
            Ledger::Sqlite => format!("sqlite://{}", work.join("bench.db").display()),
            Ledger::Postgres => match fresh_postgres(&args.postgres).await {
                Ok(url) => url,
                Err(err) => {
                    let why =
                        format!("postgres: no PostgreSQL at {} ({err:#})", opentab_core::redact_url(&args.postgres));
                    say(&format!("  skipped {why}"));
                    skipped.push(why);
                    continue;
                }
            },
        };
        let store = Store::connect(&database_url).await.context("opening the ledger database")?;
        chain.mirror_into(&store).await?;
        // Vouchers continue from what earlier runs on this ledger charged.
        let mut signed = vec![0_u64; args.keys];
        for (n, mode) in args.modes.iter().enumerate() {
            if *mode == Mode::Redis && !redis_answers(&args.redis_url).await {
                let why = format!("redis on {ledger:?}: no Redis at {}", opentab_core::redact_url(&args.redis_url));
                say(&format!("  skipped {why}"));
                skipped.push(why);
                continue;
            }
            let config = work.join(format!("proxy-{n}.toml"));
            // Redis counters of their own for each run: the ledgers start empty.
            let prefix = format!("opentab-bench-{}-{ledger:?}-{n}", std::process::id());
            chain.write_config(&config, &database_url, &prefix)?;
            let proxy = Proxy::start(&config, &upstream, (*mode == Mode::Redis).then_some(args.redis_url.as_str()))?;
            let plain = runs.iter().find(|r| r.ledger == *ledger && r.mode == Mode::Plain).cloned();
            let run = measure(&args, &chain, &proxy, *mode, *ledger, &mut signed, plain.as_ref()).await;
            proxy.stop()?;
            let mut run = run?;
            if *mode != Mode::Plain {
                run.conservation = Some(conserved(&store, &chain.keys, &signed).await?);
            }
            print_run(&run);
            runs.push(run);
        }
        store.close().await;
    }
    drop(chain);

    print_table(&runs)?;
    let report = Report {
        machine,
        calls: args.calls,
        concurrency: args.concurrency,
        keys: args.keys,
        upstream_delay_ms: args.upstream_delay_ms,
        runs: &runs,
        skipped: &skipped,
    };
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", args.json.display()))?;
    say(&format!("wrote {}", args.json.display()));
    let _ = std::fs::remove_dir_all(&work);
    anyhow::ensure!(
        runs.iter().all(|r| r.conservation != Some(false)),
        "the conservation check failed: the ledger disagrees with the receipts, or a key was served beyond its best voucher"
    );
    Ok(())
}

/// anvil with the contracts, the owner's tab funded, the keys registered.
struct Chain {
    anvil: Anvil,
    deployment: opentab_chain::Deployment,
    payee: Address,
    keys: Vec<SigningKey>,
}

impl Chain {
    async fn start(keys: usize) -> anyhow::Result<Self> {
        say("starting anvil and deploying the contracts");
        let anvil = Anvil::spawn(AnvilConfig::default())?;
        let rpc = anvil.endpoint();
        let deployer = signing_provider(&rpc, anvil.signer(0)?)?;
        let deployment = deploy_dev_contracts(&deployer, &rpc, 86_400).await?;
        let owner = Validator::connect(signing_provider(&rpc, anvil.signer(1)?)?, deployment.validator).await?;
        let payee = anvil.signer(2)?.address();
        owner.mint_test_usdc(anvil.signer(1)?.address(), Usdc::parse_decimal("100")?).await?;
        owner.deposit(payee, Usdc::parse_decimal("100")?).await?;
        let keys: Vec<SigningKey> = (0..keys).map(|_| SigningKey::random()).collect();
        let started = Instant::now();
        let mut registered = 0;
        // `registerSessionKeys`, 250 keys a transaction (about 18 M gas, under anvil's block limit).
        for batch in keys.chunks(250) {
            let terms = batch
                .iter()
                .map(|key| {
                    Ok(KeyTerms {
                        session_key: key.address(),
                        payee,
                        limit: Usdc::parse_decimal("1")?,
                        valid_after: 0,
                        valid_until: 4_000_000_000,
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            owner.register_session_keys(&terms).await.context("registering session keys")?;
            registered += batch.len();
            say(&format!("  registered {registered}/{} keys ({:.1} s)", keys.len(), started.elapsed().as_secs_f64()));
        }
        Ok(Self { anvil, deployment, payee, keys })
    }

    /// Reads the chain into `store` (keys and tabs), as `opentab serve`'s listener would.
    async fn mirror_into(&self, store: &Store) -> anyhow::Result<()> {
        let config = ListenerConfig {
            stream: opentab_chain::StreamConfig { confirmations: 0, max_range: 2_000 },
            ..ListenerConfig::default()
        };
        let provider = read_provider(&self.anvil.endpoint())?;
        let mut listener = ChainListener::new(
            store.clone(),
            provider,
            self.deployment.validator,
            self.deployment.deployed_at_block,
            config,
        )
        .await?;
        listener.catch_up().await.context("reading the chain into the ledger database")?;
        Ok(())
    }

    fn write_config(&self, path: &Path, database_url: &str, redis_prefix: &str) -> anyhow::Result<()> {
        let text = format!(
            "database_url = \"{database_url}\"\nrpc_url = \"{}\"\nvalidator = \"{:#x}\"\npayee = \"{:#x}\"\n\
             domain = \"127.0.0.1\"\n\n[proxy]\nlisten = \"127.0.0.1:0\"\nrules = \"shadow\"\nredis_prefix = \"{redis_prefix}\"\n\n\
             [proxy.routes]\n\"POST /v1/paid\" = \"{PRICE}\"\n",
            self.anvil.endpoint(),
            self.deployment.validator,
            self.payee,
        );
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// `PAYMENT-SIGNATURE` values for `calls` calls spread over the keys, continuing from
    /// `signed` (each key's highest voucher so far), which they raise.
    fn sign(&self, accepted: &Requirements, calls: usize, signed: &mut [u64]) -> Vec<String> {
        let domain = opentab_core::ContractDomain::opentab(self.deployment.chain_id, self.deployment.validator);
        sign_calls(&self.keys, &domain, self.payee, accepted, PRICE_UNITS, calls, signed)
    }
}

/// `PAYMENT-SIGNATURE` values for `calls` calls of `price` base units spread over `keys`,
/// continuing from `signed` (each key's highest voucher so far), which they raise.
fn sign_calls(
    keys: &[SigningKey],
    domain: &opentab_core::ContractDomain,
    payee: Address,
    accepted: &Requirements,
    price: u64,
    calls: usize,
    signed: &mut [u64],
) -> Vec<String> {
    (0..calls)
        .map(|call| {
            let n = call % keys.len();
            let key = &keys[n];
            signed[n] += price;
            let amount = U256::from(signed[n]);
            let signature = key.sign_digest(&domain.digest(&Voucher::new(key.address(), payee, amount)));
            encode_header(&PaymentPayload {
                x402_version: X402_VERSION,
                accepted: accepted.clone(),
                payload: SessionPayload { session_key: key.address(), cumulative_amount: amount, signature },
                extensions: None,
            })
        })
        .collect()
}

/// `opentab bench --cluster`: plain calls, then paid calls, spread over every proxy of a running
/// `opentab cluster`; the ledger checked after.
async fn on_cluster(args: &BenchArgs, described: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(described).with_context(|| format!("reading {}", described.display()))?;
    let cluster: crate::cluster::Described = serde_json::from_str(&text)
        .with_context(|| format!("{} is not an opentab cluster's description", described.display()))?;
    let keys = cluster.keys.iter().map(|k| Ok(k.parse::<SigningKey>()?)).collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!keys.is_empty() && !cluster.proxies.is_empty(), "the cluster has no keys or no proxies");
    let machine = machine();
    say(&format!(
        "opentab bench on {} ({} cores): {} calls a run, {} at once, over {} proxies and {} keys",
        machine.cpu,
        machine.cores,
        args.calls,
        args.concurrency,
        cluster.proxies.len(),
        keys.len()
    ));
    let store = Store::connect(&cluster.database_url).await.context("opening the cluster's database")?;
    let client = http_client(args.concurrency);
    let warmup = (args.calls / 10).min(1_000);
    let total = warmup + args.calls;
    let mut runs = Vec::new();
    for paid in [false, true] {
        let (path, payments) = match paid {
            false => (cluster.free_path.as_str(), None),
            true => {
                let accepted = challenge(&client, &cluster.proxies[0], &cluster.paid_path).await?;
                let domain = opentab_core::ContractDomain::opentab(cluster.chain_id, cluster.validator);
                // Vouchers continue from what the keys were served before.
                let mut signed = Vec::with_capacity(keys.len());
                for key in &keys {
                    signed.push(store.usage_total(key.address()).await?.map_or(0, |t| t.served.base_units()));
                }
                let price = cluster.price.base_units();
                say(&format!("  signing {total} vouchers before timing"));
                let payments = sign_calls(&keys, &domain, cluster.payee, &accepted, price, total, &mut signed);
                (cluster.paid_path.as_str(), Some((Arc::new(payments), signed)))
            }
        };
        let next = Arc::new(AtomicUsize::new(0));
        let vouchers = payments.as_ref().map(|(p, _)| p.clone());
        drive(&client, &cluster.proxies, path, vouchers.clone(), &next, warmup, args.concurrency).await?;
        next.store(warmup, Ordering::Relaxed);
        let started = Instant::now();
        let mut latencies = drive(&client, &cluster.proxies, path, vouchers, &next, total, args.concurrency).await?;
        let elapsed = started.elapsed();
        let (p50_ms, p99_ms, p999_ms) = quantiles(&mut latencies);
        let calls_per_sec = args.calls as f64 / elapsed.as_secs_f64();
        let plain: Option<&Run> = runs.first();
        let conservation = match &payments {
            Some((_, signed)) => Some(conserved(&store, &keys, signed).await?),
            None => None,
        };
        let run = Run {
            mode: if paid { Mode::Redis } else { Mode::Plain },
            ledger: Ledger::Postgres,
            calls: args.calls,
            calls_per_sec,
            p50_ms,
            p99_ms,
            p999_ms,
            added_p50_ms: plain.map(|p| p50_ms - p.p50_ms),
            added_p99_ms: plain.map(|p| p99_ms - p.p99_ms),
            added_p999_ms: plain.map(|p| p999_ms - p.p999_ms),
            proxy_cpu_us_per_call: 0.0,
            accumulation_p99_ms: None,
            ratio_to_plain: plain.map(|p| calls_per_sec / p.calls_per_sec),
            conservation,
        };
        print_run(&run);
        runs.push(run);
    }
    print_table(&runs)?;
    let report = Report {
        machine,
        calls: args.calls,
        concurrency: args.concurrency,
        keys: keys.len(),
        upstream_delay_ms: 0,
        runs: &runs,
        skipped: &[],
    };
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", args.json.display()))?;
    say(&format!("wrote {}", args.json.display()));
    anyhow::ensure!(runs.iter().all(|r| r.conservation != Some(false)), "the ledger disagrees with the receipts");
    Ok(())
}

/// A running `opentab proxy` child.
struct Proxy {
    child: std::process::Child,
    url: String,
}

impl Proxy {
    fn start(config: &Path, upstream: &str, redis: Option<&str>) -> anyhow::Result<Self> {
        use std::io::BufRead;
        let mut command = std::process::Command::new(std::env::current_exe()?);
        command
            .args(["proxy", "--config"])
            .arg(config)
            .args(["--upstream", upstream])
            // Warnings such as "counters rebuilt from the ledger" are expected here.
            .env("RUST_LOG", "error")
            .env_remove("OPENTAB_GATEWAY_SECRET")
            .env_remove("OPENTAB_GUARDIAN_KEY")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        match redis {
            Some(url) => command.args(["--redis-url", url]),
            None => command.env_remove("OPENTAB_REDIS_URL"),
        };
        let mut child = command.spawn().context("starting opentab proxy")?;
        let stdout = child.stdout.take().context("the proxy's stdout")?;
        let mut url = None;
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line?;
            if let Some(rest) = line.trim_start().strip_prefix("url") {
                url = Some(rest.trim().to_owned());
            }
            if line.starts_with("ready") {
                break;
            }
        }
        let url = url.context("opentab proxy stopped before it was ready")?;
        Ok(Self { child, url })
    }

    /// The proxy's CPU time so far (user + system).
    fn cpu(&self) -> Duration {
        cpu_of(self.child.id()).unwrap_or_default()
    }

    /// Ctrl-C, then waits for it to finish its calls and release the database.
    fn stop(mut self) -> anyhow::Result<()> {
        std::process::Command::new("kill").arg("-INT").arg(self.child.id().to_string()).status()?;
        self.child.wait()?;
        Ok(())
    }
}

/// A process's CPU time from `/proc/<pid>/stat` (Linux), in clock ticks of 1/100 s.
fn cpu_of(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

type HttpClient = Client<HttpConnector, Body>;

async fn measure(
    args: &BenchArgs,
    chain: &Chain,
    proxy: &Proxy,
    mode: Mode,
    ledger: Ledger,
    signed: &mut [u64],
    plain: Option<&Run>,
) -> anyhow::Result<Run> {
    let client = http_client(args.concurrency);
    let warmup = (args.calls / 10).min(1_000);
    let total = warmup + args.calls;
    let payments = match mode {
        Mode::Plain => None,
        Mode::InProcess | Mode::Redis => {
            let accepted = challenge(&client, &proxy.url, "/v1/paid").await?;
            say(&format!("  {mode:?} on {ledger:?}: signing {total} vouchers before timing"));
            Some(Arc::new(chain.sign(&accepted, total, signed)))
        }
    };
    let path = if payments.is_some() { "/v1/paid" } else { "/v1/free" };
    // The warm-up opens the connections and fills the caches; it is not timed.
    let next = Arc::new(AtomicUsize::new(0));
    let bases = std::slice::from_ref(&proxy.url);
    drive(&client, bases, path, payments.clone(), &next, warmup, args.concurrency).await?;
    // Workers that found the warm-up done took a number past it and sent nothing.
    next.store(warmup, Ordering::Relaxed);
    let cpu_before = proxy.cpu();
    let ledger_before = ledger_buckets(&client, &proxy.url).await?;
    let started = Instant::now();
    let mut latencies = drive(&client, bases, path, payments, &next, total, args.concurrency).await?;
    let elapsed = started.elapsed();
    let cpu = proxy.cpu().saturating_sub(cpu_before);
    let ledger_after = ledger_buckets(&client, &proxy.url).await?;
    let accumulation_p99_ms =
        (mode != Mode::Plain).then(|| quantile_bound(&ledger_before, &ledger_after, 0.99)).flatten();
    let (p50_ms, p99_ms, p999_ms) = quantiles(&mut latencies);
    let calls_per_sec = args.calls as f64 / elapsed.as_secs_f64();
    Ok(Run {
        mode,
        ledger,
        calls: args.calls,
        calls_per_sec,
        p50_ms,
        p99_ms,
        p999_ms,
        added_p50_ms: plain.map(|p| p50_ms - p.p50_ms),
        added_p99_ms: plain.map(|p| p99_ms - p.p99_ms),
        added_p999_ms: plain.map(|p| p999_ms - p.p999_ms),
        proxy_cpu_us_per_call: cpu.as_secs_f64() * 1e6 / args.calls as f64,
        accumulation_p99_ms,
        ratio_to_plain: plain.map(|p| calls_per_sec / p.calls_per_sec),
        conservation: None,
    })
}

/// Sends calls `next..until` with `concurrency` in flight, call `n` to `bases[n % len]`; each
/// call's latency. Any answer but 200 stops the run with an error.
async fn drive(
    client: &HttpClient,
    bases: &[String],
    path: &str,
    payments: Option<Arc<Vec<String>>>,
    next: &Arc<AtomicUsize>,
    until: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, next, payments) = (client.clone(), next.clone(), payments.clone());
        let urls: Vec<String> = bases.iter().map(|base| format!("{base}{path}")).collect();
        workers.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let call = next.fetch_add(1, Ordering::Relaxed);
                if call >= until {
                    return anyhow::Ok(latencies);
                }
                let url = &urls[call % urls.len()];
                let mut request = hyper::Request::post(url).header("content-type", "application/json");
                if let Some(payment) = payments.as_ref().and_then(|p| p.get(call)) {
                    request = request.header(PAYMENT_SIGNATURE, payment);
                }
                let request = request.body(Body::from("{}"))?;
                let sent = Instant::now();
                let response = client.request(request).await.context("calling the proxy")?;
                let status = response.status();
                let body = response.into_body().collect().await.context("reading the answer")?.to_bytes();
                latencies.push(sent.elapsed());
                anyhow::ensure!(status == 200, "call {call}: HTTP {status}: {}", String::from_utf8_lossy(&body));
            }
        });
    }
    let mut latencies = Vec::new();
    while let Some(done) = workers.join_next().await {
        latencies.extend(done??);
    }
    Ok(latencies)
}

/// The requirements of the paid route, from its 402.
/// The proxy's accumulation histogram (`opentab_gateway_ledger_seconds`) from its `/metrics`:
/// (upper bound in ms, cumulative count) per bucket.
async fn ledger_buckets(client: &HttpClient, base: &str) -> anyhow::Result<Vec<(f64, u64)>> {
    let response = client.request(hyper::Request::get(format!("{base}/metrics")).body(Body::empty())?).await?;
    let text = String::from_utf8(response.into_body().collect().await?.to_bytes().to_vec())?;
    let prefix = "opentab_gateway_ledger_seconds_bucket{le=\"";
    Ok(text
        .lines()
        .filter_map(|line| {
            let (le, count) = line.strip_prefix(prefix)?.split_once("\"} ")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse::<f64>().ok()? * 1_000.0 };
            Some((le, count.parse().ok()?))
        })
        .collect())
}

/// The smallest bucket bound under which a share `q` of the observations made between `before`
/// and `after` fell.
fn quantile_bound(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> Option<f64> {
    let counts: Vec<(f64, u64)> = after
        .iter()
        .map(|&(le, n)| (le, n.saturating_sub(before.iter().find(|b| b.0 == le).map_or(0, |b| b.1))))
        .collect();
    let total = counts.last()?.1;
    let wanted = (total as f64 * q).ceil() as u64;
    counts.iter().find(|&&(_, n)| total > 0 && n >= wanted).map(|&(le, _)| le)
}

async fn challenge(client: &HttpClient, base: &str, path: &str) -> anyhow::Result<Requirements> {
    let response = client.request(hyper::Request::post(format!("{base}{path}")).body(Body::from("{}"))?).await?;
    anyhow::ensure!(response.status() == 402, "an unpaid call answered {}", response.status());
    let body = response.into_body().collect().await?.to_bytes();
    let required: PaymentRequired = serde_json::from_slice(&body)?;
    required.accepts.into_iter().next().context("the 402 offers nothing")
}

/// The ledger holds exactly what was charged (every call was answered 200 with a receipt: each
/// key's served total is its highest voucher, `signed`), and no key was served beyond its best
/// voucher.
async fn conserved(store: &Store, keys: &[SigningKey], signed: &[u64]) -> anyhow::Result<bool> {
    let mut holds = true;
    for (key, signed) in keys.iter().zip(signed) {
        let usage = store.usage_total(key.address()).await?.unwrap_or_default();
        holds &= usage.served.base_units() == *signed && usage.served.to_u256() <= usage.best;
    }
    Ok(holds)
}

/// A keep-alive HTTP client for `concurrency` connections, without Nagle's delay.
fn http_client(concurrency: usize) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(concurrency).build(connector)
}

/// p50, p99 and p99.9 of `latencies`, in milliseconds (sorts them).
fn quantiles(latencies: &mut [Duration]) -> (f64, f64, f64) {
    latencies.sort_unstable();
    let ms = |q: f64| {
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies.get(i).map_or(0.0, |d| d.as_secs_f64() * 1_000.0)
    };
    (ms(0.50), ms(0.99), ms(0.999))
}

/// The benchmark's own upstream: answers every request with a small JSON body.
async fn upstream(delay: Duration) -> anyhow::Result<String> {
    let app = axum::Router::new().fallback(move || async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        axum::Json(serde_json::json!({ "ok": true }))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

async fn fresh_postgres(admin_url: &str) -> anyhow::Result<String> {
    Ok(opentab_store::create_postgres_database(admin_url, "opentab_bench").await?)
}

/// Whether a Redis answers `PING` at `url` (`redis://host:port`) within two seconds.
async fn redis_answers(url: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(parsed) = reqwest::Url::parse(url) else { return false };
    let address = format!("{}:{}", parsed.host_str().unwrap_or("127.0.0.1"), parsed.port().unwrap_or(6379));
    let ping = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut answer = [0_u8; 64];
        let n = stream.read(&mut answer).await.ok()?;
        // A Redis asking for a password answers -NOAUTH: it is there.
        Some(answer[..n].starts_with(b"+PONG") || answer[..n].starts_with(b"-NOAUTH"))
    };
    matches!(tokio::time::timeout(Duration::from_secs(2), ping).await, Ok(Some(true)))
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_owned()))
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    Machine { cpu, cores, os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH) }
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("opentab-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Progress and results on standard output, as they come (a failed write loses only that line).
fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

fn print_run(run: &Run) {
    let ratio = run.ratio_to_plain.map(|r| format!(", {r:.2}× plain")).unwrap_or_default();
    let check = match run.conservation {
        Some(true) => ", ledger conserved",
        Some(false) => ", LEDGER NOT CONSERVED",
        None => "",
    };
    say(&format!(
        "  {:?} on {:?}: {:.0} calls/s, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms{ratio}{check}",
        run.mode, run.ledger, run.calls_per_sec, run.p50_ms, run.p99_ms, run.p999_ms
    ));
}

fn print_table(runs: &[Run]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out)?;
    writeln!(
        out,
        "| mode | ledger | calls/s | p50 ms | p99 ms | p99.9 ms | added p99 ms | added p99.9 ms | proxy CPU µs/call | accumulation p99 ms | paid/plain |"
    )?;
    writeln!(out, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")?;
    let opt = |v: Option<f64>, digits: usize| v.map_or("".to_owned(), |v| format!("{v:.digits$}"));
    for r in runs {
        writeln!(
            out,
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {:.0} | {} | {} |",
            serde_json::to_value(r.mode)?.as_str().unwrap_or_default(),
            serde_json::to_value(r.ledger)?.as_str().unwrap_or_default(),
            r.calls_per_sec,
            r.p50_ms,
            r.p99_ms,
            r.p999_ms,
            opt(r.added_p99_ms, 2),
            opt(r.added_p999_ms, 2),
            r.proxy_cpu_us_per_call,
            r.accumulation_p99_ms.map_or(String::new(), |ms| format!("≤ {ms}")),
            opt(r.ratio_to_plain, 2),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::quantile_bound;

    /// The quantile's bucket is taken from the run's own observations (after − before), and is
    /// the first bound whose count reaches the share.
    #[test]
    fn the_accumulation_quantile_is_the_bucket_of_the_runs_own_observations() {
        let before = [(1.0, 50), (2.0, 50), (f64::INFINITY, 50)];
        // 100 new observations: 98 under 1 ms, one under 2 ms, one above.
        let after = [(1.0, 148), (2.0, 149), (f64::INFINITY, 150)];
        assert_eq!(quantile_bound(&before, &after, 0.98), Some(1.0));
        assert_eq!(quantile_bound(&before, &after, 0.99), Some(2.0));
        assert_eq!(quantile_bound(&before, &after, 1.0), Some(f64::INFINITY));
        assert_eq!(quantile_bound(&after, &after, 0.99), None, "no observation, no figure");
    }
}
