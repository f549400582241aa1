//! `opentab chaos`: the fault suite (issue 12). It starts the production topology of
//! [`crate::cluster`] (PostgreSQL, a Redis Cluster of 3 masters and 3 replicas, two `serve`
//! nodes settling by lease, N proxies), then runs each scenario on keys of its own: paid traffic
//! across the proxies, the fault, the dependency's return, more traffic, and the conservation
//! check ([`check`]). It measures **recovery**: from the dependency's return to the next paid
//! call served by every proxy. It prints a table (scenario, calls, lost, doubled, recovery) and
//! writes it as JSON; a scenario that loses or doubles a call, or breaks another rule, fails
//! the run. Last, the owner asks to withdraw, which settles every key at once: each key's
//! settled total must then be its served total, and the payee's balance their sum.
//!
//! `--short` runs the subset CI runs, with shorter faults.

mod check;
mod island;
mod traffic;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use opentab_chain::alloy_provider::Provider;
use opentab_core::{Address, ContractDomain, SigningKey, U256, Usdc};
use serde::Serialize;

use opentab_gateway::RedisCounters;

use crate::cluster::{Cluster, Shape, say};
use check::Verdict;
use traffic::{KeyLog, Target, Traffic};

#[derive(Debug, Args)]
pub(crate) struct ChaosArgs {
    /// The subset CI runs, with shorter faults.
    #[arg(long)]
    short: bool,
    /// Only these scenarios (default: all, or the short subset).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Scenario>,
    /// `opentab proxy` nodes.
    #[arg(long, default_value_t = 3)]
    proxies: usize,
    /// Session keys each scenario sends from.
    #[arg(long, default_value_t = 4)]
    keys: usize,
    /// Where the results are written as JSON.
    #[arg(long, default_value = "chaos.json")]
    json: PathBuf,
}

/// A fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Scenario {
    /// A Redis master killed mid-traffic; its replica is promoted (writes it had not copied
    /// are lost).
    RedisMasterKilled,
    /// `FLUSHALL` on every master of the cluster.
    Flushall,
    /// PostgreSQL restarted mid-traffic.
    PostgresRestart,
    /// The chain's RPC endpoint unreachable (30 s; 8 s with --short).
    RpcUnreachable,
    /// A 3-block reorganisation that drops settlement transactions.
    Reorg,
    /// A proxy killed (`SIGKILL`) mid-charge, then started again.
    ProxyKilled,
    /// A `serve` node killed (`SIGKILL`) just after its worker sent a settlement.
    SettlerKilled,
    /// Settlements due while blocks stop for 8 s: both workers lease, send and wait at once.
    WorkersRace,
    /// One proxy, in a network namespace of its own on a veth link, cut off from Redis for
    /// 5 s while the others go on.
    ProxyCutFromRedis,
}

impl Scenario {
    const SHORT: [Self; 5] =
        [Self::Flushall, Self::ProxyKilled, Self::PostgresRestart, Self::RedisMasterKilled, Self::Reorg];

    fn name(self) -> &'static str {
        match self {
            Self::RedisMasterKilled => "redis master killed, replica promoted",
            Self::Flushall => "FLUSHALL on the cluster",
            Self::PostgresRestart => "PostgreSQL restart",
            Self::RpcUnreachable => "RPC unreachable",
            Self::Reorg => "3-block reorg during settlement",
            Self::ProxyKilled => "SIGKILL of a proxy mid-charge",
            Self::SettlerKilled => "SIGKILL of a settler after its send",
            Self::WorkersRace => "two workers racing for intents",
            Self::ProxyCutFromRedis => "a proxy cut off from Redis (netns)",
        }
    }
}

/// One scenario's line of the table.
#[derive(Debug, Serialize)]
struct Row {
    scenario: Scenario,
    calls: usize,
    served: usize,
    lost: usize,
    doubled: usize,
    unresolved: usize,
    /// Attempts that got 503, a 502/504 or no answer and were tried again: the fault as the
    /// clients felt it.
    retried: usize,
    /// From the dependency's return to a paid call served by every proxy.
    recovery_secs: Option<f64>,
    /// What the fault did, and every rule that broke.
    notes: Vec<String>,
    holds: bool,
}

pub(crate) async fn run(args: ChaosArgs) -> anyhow::Result<()> {
    let scenarios: Vec<Scenario> = match (&args.only[..], args.short) {
        ([], true) => Scenario::SHORT.to_vec(),
        ([], false) => Scenario::value_variants().to_vec(),
        (only, _) => only.to_vec(),
    };
    let keys_each = args.keys.max(1);
    let shape = Shape {
        proxies: args.proxies.max(2),
        keys: keys_each * scenarios.len(),
        key_limit: Usdc::parse_decimal("1000")?,
        tab: Usdc::parse_decimal("1000000")?,
        // 200 calls take a key to the 10 USDC threshold: scenarios settle while they run.
        price: Usdc::parse_decimal("0.05")?,
    };
    let started = Instant::now();
    let mut cluster = Cluster::start(&shape).await?;
    let payee_before = cluster.owner.usdc_balance(cluster.payee).await?;
    let target = target(&cluster).await?;
    let pace = Pace::new(args.short);
    let mut rows = Vec::new();
    for (n, scenario) in scenarios.iter().enumerate() {
        let keys = cluster.keys[n * keys_each..(n + 1) * keys_each].to_vec();
        say(&format!("scenario {}/{}: {}", n + 1, scenarios.len(), scenario.name()));
        let row = run_scenario(&mut cluster, &target, &keys, *scenario, &pace).await?;
        print_row(&row);
        rows.push(row);
    }
    say("settling every key (the owner asks to withdraw: everything is settled at once)");
    let final_problems = settle_everything(&cluster, payee_before).await?;
    for problem in &final_problems {
        say(&format!("  ✗ {problem}"));
    }
    print_table(&rows)?;
    let report = serde_json::json!({ "scenarios": rows, "finalSettlement": final_problems, "secs": started.elapsed().as_secs() });
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", args.json.display()))?;
    say(&format!("written to {} ({} s in all)", args.json.display(), started.elapsed().as_secs()));
    let failed: Vec<&str> = rows.iter().filter(|r| !r.holds).map(|r| r.scenario.name()).collect();
    anyhow::ensure!(failed.is_empty(), "conservation broke in: {}", failed.join(", "));
    anyhow::ensure!(final_problems.is_empty(), "the final settlement does not add up");
    Ok(())
}

/// How long traffic runs around a fault.
struct Pace {
    /// Before the fault.
    before: Duration,
    /// After the dependency's return.
    after: Duration,
    /// How long the RPC stays unreachable.
    rpc_down: Duration,
}

impl Pace {
    fn new(short: bool) -> Self {
        match short {
            true => {
                Self { before: Duration::from_secs(3), after: Duration::from_secs(5), rpc_down: Duration::from_secs(8) }
            }
            false => Self {
                before: Duration::from_secs(5),
                after: Duration::from_secs(8),
                rpc_down: Duration::from_secs(30),
            },
        }
    }
}

/// What the proxies ask for, read from a 402.
async fn target(cluster: &Cluster) -> anyhow::Result<Target> {
    let proxies = cluster.proxy_urls();
    let first = proxies.first().context("no proxy")?;
    let client = reqwest::Client::new();
    let challenge = client.post(format!("{first}/v1/work")).body("{}").send().await?;
    anyhow::ensure!(challenge.status() == 402, "the proxy answered {} to an unpaid call", challenge.status());
    let required: opentab_gateway::protocol::PaymentRequired = serde_json::from_str(&challenge.text().await?)?;
    let accepted = required.accepts.into_iter().next().context("no requirements in the 402")?;
    Ok(Target {
        proxies,
        accepted,
        domain: ContractDomain::opentab(cluster.deployment.chain_id, cluster.deployment.validator),
        payee: cluster.payee,
        price: cluster.price,
    })
}

async fn run_scenario(
    cluster: &mut Cluster,
    target: &Target,
    keys: &[SigningKey],
    scenario: Scenario,
    pace: &Pace,
) -> anyhow::Result<Row> {
    // The partition scenario adds a proxy of its own, on an island.
    let island = match scenario {
        Scenario::ProxyCutFromRedis => Some(island::Island::start(cluster).await?),
        _ => None,
    };
    let mut target = target.clone();
    if let Some(island) = &island {
        target.proxies.push(island.url());
    }
    let traffic = Traffic::start(&target, keys);
    tokio::time::sleep(pace.before).await;
    let mut notes = Vec::new();
    let healed = match &island {
        Some(island) => {
            island.cut_from_redis();
            tokio::time::sleep(Duration::from_secs(5)).await;
            island.restore();
            notes.push("the namespace's proxy could not reach any Redis node for 5 s".into());
            Instant::now()
        }
        None => inject(cluster, scenario, pace, &mut notes).await?,
    };
    tokio::time::sleep(pace.after).await;
    let logs = traffic.stop().await;
    drop(island);
    // Whatever the fault left behind is put back for the next scenario.
    restore(cluster, scenario).await?;
    let counters = RedisCounters::connect(&cluster.redis.url(), &format!("opentab:{:#x}", cluster.payee)).await?;
    let verdict =
        check::check(&cluster.store, &cluster.owner, &counters, &cluster.upstream, cluster.price, &logs).await?;
    let recovery = recovery(&logs, healed, target.proxies.len());
    if recovery.is_none() {
        notes.push("no paid call was served on every proxy after the dependency returned".into());
    }
    let retried = logs.iter().flat_map(|l| &l.calls).map(|c| c.attempts.len().saturating_sub(1)).sum();
    Ok(row(scenario, verdict, recovery, retried, notes))
}

fn row(
    scenario: Scenario,
    verdict: Verdict,
    recovery: Option<Duration>,
    retried: usize,
    mut notes: Vec<String>,
) -> Row {
    let holds = verdict.holds() && recovery.is_some();
    if !verdict.refused.is_empty() {
        notes.push(format!("refused with 402: {}", verdict.refused.join(", ")));
    }
    notes.extend(verdict.over_counted.iter().map(|o| format!("over-counted (safe): {o}")));
    if verdict.charged_unanswered > 0 {
        notes.push(format!("{} charge(s) stand for calls whose answer the crash lost", verdict.charged_unanswered));
    }
    notes.extend(verdict.problems.iter().take(20).cloned());
    Row {
        scenario,
        calls: verdict.calls,
        served: verdict.served,
        lost: verdict.lost,
        doubled: verdict.doubled,
        unresolved: verdict.unresolved,
        retried,
        recovery_secs: recovery.map(|d| d.as_secs_f64()),
        notes,
        holds,
    }
}

/// Injects the fault and waits for the dependency to return; when it did.
async fn inject(
    cluster: &mut Cluster,
    scenario: Scenario,
    pace: &Pace,
    notes: &mut Vec<String>,
) -> anyhow::Result<Instant> {
    match scenario {
        Scenario::RedisMasterKilled => {
            // The master holding the tab's slot (every key of the owner with the payee): the one
            // whose death the traffic meets.
            let owner = cluster.owner_address()?;
            let tab = format!("{{opentab:{:#x}:{owner:#x}}}", cluster.payee);
            let victim = cluster.redis.master_of(&tab).await?;
            cluster.redis.kill(victim)?;
            let killed = Instant::now();
            cluster.redis.wait_healthy(Duration::from_secs(30)).await?;
            notes.push(format!(
                "master :{victim} killed; a replica served its slots {:.1} s later",
                killed.elapsed().as_secs_f64()
            ));
        }
        Scenario::Flushall => cluster.redis.flushall().await?,
        Scenario::PostgresRestart => {
            let restarting = Instant::now();
            tokio::task::block_in_place(|| cluster.postgres.restart())?;
            notes.push(format!("PostgreSQL down and back in {:.1} s", restarting.elapsed().as_secs_f64()));
        }
        Scenario::RpcUnreachable => {
            cluster.rpc.cut();
            tokio::time::sleep(pace.rpc_down).await;
            cluster.rpc.restore();
            notes.push(format!("RPC unreachable for {} s", pace.rpc_down.as_secs()));
        }
        Scenario::ProxyKilled => {
            let proxy = cluster.proxies.first_mut().context("no proxy")?;
            proxy.kill()?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let restarting = Instant::now();
            tokio::task::block_in_place(|| proxy.restart())?;
            notes.push(format!(
                "{} killed, serving again {:.1} s after its restart",
                proxy.name(),
                restarting.elapsed().as_secs_f64()
            ));
        }
        Scenario::SettlerKilled => settler_killed(cluster, notes).await?,
        Scenario::WorkersRace => {
            let anvil = anvil(cluster)?;
            automine(&anvil, false).await?;
            tokio::time::sleep(Duration::from_secs(8)).await;
            let pending = pending_settlements(&anvil, cluster).await?;
            automine(&anvil, true).await?;
            notes.push(format!("blocks stopped for 8 s with {} settlement(s) pending", pending.len()));
        }
        Scenario::Reorg => reorg(cluster, notes).await?,
        Scenario::ProxyCutFromRedis => anyhow::bail!("the partition is injected on its island"),
    }
    Ok(Instant::now())
}

/// Puts back what a fault left behind (a killed Redis master rejoins as a replica).
async fn restore(cluster: &mut Cluster, scenario: Scenario) -> anyhow::Result<()> {
    if scenario == Scenario::RedisMasterKilled {
        let dead: Vec<u16> = {
            let masters = cluster.redis.masters().await?;
            let mut dead = Vec::new();
            for node in cluster.redis.nodes() {
                if !masters.contains(&node.port) && !opentab_topology::listening(node.port) {
                    dead.push(node.port);
                }
            }
            dead
        };
        for port in dead {
            cluster.redis.revive(port)?;
        }
        cluster.redis.wait_healthy(Duration::from_secs(30)).await?;
    }
    Ok(())
}

/// A direct line to anvil (not through the link the scenarios cut).
fn anvil(cluster: &Cluster) -> anyhow::Result<opentab_chain::DynProvider> {
    Ok(opentab_chain::read_provider(&cluster.anvil.endpoint())?)
}

async fn automine(anvil: &opentab_chain::DynProvider, on: bool) -> anyhow::Result<()> {
    let _: serde_json::Value = anvil.raw_request("evm_setAutomine".into(), (on,)).await?;
    Ok(())
}

/// The settlers' transactions waiting in anvil's pool: (sender, hash).
async fn pending_settlements(
    anvil: &opentab_chain::DynProvider,
    cluster: &Cluster,
) -> anyhow::Result<Vec<(Address, String)>> {
    let pool: serde_json::Value = anvil.raw_request("txpool_content".into(), ()).await?;
    let settlers = cluster.settlers()?;
    let mut found = Vec::new();
    if let Some(pending) = pool["pending"].as_object() {
        for (sender, txs) in pending {
            let Ok(sender) = sender.parse::<Address>() else { continue };
            if settlers.contains(&sender)
                && let Some(txs) = txs.as_object()
            {
                found.extend(txs.values().filter_map(|tx| tx["hash"].as_str()).map(|h| (sender, h.to_owned())));
            }
        }
    }
    Ok(found)
}

/// Blocks stop; the first settler to send has its `serve` killed before the transaction is
/// mined; blocks resume; the node starts again. Its intent is held by a lease no one renews:
/// once it lapses, a worker finds the transaction mined and records it without sending again.
async fn settler_killed(cluster: &mut Cluster, notes: &mut Vec<String>) -> anyhow::Result<()> {
    let anvil = anvil(cluster)?;
    automine(&anvil, false).await?;
    let waiting = Instant::now();
    let sent = loop {
        let pending = pending_settlements(&anvil, cluster).await?;
        if let Some(first) = pending.into_iter().next() {
            break Some(first);
        }
        if waiting.elapsed() > Duration::from_secs(30) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let Some((settler, tx)) = sent else {
        automine(&anvil, true).await?;
        notes.push("no settlement was sent within 30 s: nothing to kill".into());
        return Ok(());
    };
    let node = cluster.settlers()?.iter().position(|s| *s == settler).context("an unknown settler")?;
    let serve = cluster.serves.get_mut(node).context("no such serve node")?;
    serve.kill()?;
    let _: serde_json::Value = anvil.raw_request("evm_mine".into(), ()).await?;
    automine(&anvil, true).await?;
    tokio::task::block_in_place(|| serve.restart())?;
    notes.push(format!("{} killed after sending {tx}, which was then mined", serve.name()));
    Ok(())
}

/// A snapshot, settlements mined on top of it, then the chain goes back to the snapshot and a
/// longer branch without them wins: the listener sees a reorganisation 3 blocks deep or more,
/// and the settlements it dropped must be paid again.
async fn reorg(cluster: &mut Cluster, notes: &mut Vec<String>) -> anyhow::Result<()> {
    let anvil = anvil(cluster)?;
    let snapshot: U256 = anvil.raw_request("evm_snapshot".into(), ()).await?;
    let base = anvil.get_block_number().await?;
    let waiting = Instant::now();
    // Wait for a settlement transaction mined past the snapshot.
    let mut settled = Vec::new();
    while settled.is_empty() && waiting.elapsed() < Duration::from_secs(30) {
        let done = cluster.store.settlements(Some(opentab_store::SettlementStatus::Succeeded), None, 1_000).await?;
        for tx in done.iter().filter_map(|s| s.tx_hash) {
            if anvil.get_transaction_receipt(tx).await?.and_then(|r| r.block_number).is_some_and(|b| b > base) {
                settled.push(tx);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while anvil.get_block_number().await? < base + 3 {
        let _: serde_json::Value = anvil.raw_request("evm_mine".into(), ()).await?;
    }
    let head = anvil.get_block_number().await?;
    let reverted: bool = anvil.raw_request("evm_revert".into(), (snapshot,)).await?;
    anyhow::ensure!(reverted, "anvil refused to go back to the snapshot");
    for _ in 0..=(head - base) {
        let _: serde_json::Value = anvil.raw_request("evm_mine".into(), ()).await?;
    }
    notes.push(format!("{} blocks replaced by a longer branch without {} settlement(s)", head - base, settled.len()));
    Ok(())
}

/// From `healed`, how long until every proxy served a paid call; `None` if one never did.
fn recovery(logs: &[KeyLog], healed: Instant, proxies: usize) -> Option<Duration> {
    let mut first = vec![None::<Duration>; proxies];
    for attempt in logs.iter().flat_map(|l| l.calls.iter()).flat_map(|c| c.attempts.iter()) {
        if attempt.status == Some(200) && attempt.started >= healed {
            let took = attempt.ended.duration_since(healed);
            let slot = first.get_mut(attempt.proxy)?;
            *slot = Some(slot.map_or(took, |t| t.min(took)));
        }
    }
    first.into_iter().try_fold(Duration::ZERO, |worst, d| d.map(|d| worst.max(d)))
}

/// The owner asks to withdraw from its tab: every key is settled at once; waits until each
/// key's settled total reaches its served total (or 120 s), then checks the sums.
async fn settle_everything(cluster: &Cluster, payee_before: U256) -> anyhow::Result<Vec<String>> {
    cluster.owner.request_withdrawal(cluster.payee, Usdc::from_base_units(1)).await?;
    let keys: Vec<Address> = cluster.keys.iter().map(SigningKey::address).collect();
    let waiting = Instant::now();
    loop {
        let problems =
            check::settled_in_full(&cluster.store, &cluster.owner, &keys, cluster.payee, payee_before).await?;
        if problems.is_empty() || waiting.elapsed() > Duration::from_secs(120) {
            return Ok(problems);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn print_row(row: &Row) {
    let recovery = row.recovery_secs.map_or("never".to_owned(), |s| format!("{s:.2} s"));
    say(&format!(
        "  {} calls ({} served, {} attempts retried), lost {}, doubled {}, recovery {recovery}{}",
        row.calls,
        row.served,
        row.retried,
        row.lost,
        row.doubled,
        if row.holds { "" } else { "  ✗" }
    ));
    for note in &row.notes {
        say(&format!("    {note}"));
    }
}

fn print_table(rows: &[Row]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "\n| scenario | calls | served | retried | lost | doubled | recovery | holds |")?;
    writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")?;
    for r in rows {
        let recovery = r.recovery_secs.map_or("never".to_owned(), |s| format!("{s:.2} s"));
        let holds = if r.holds { "yes" } else { "**no**" };
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {recovery} | {holds} |",
            r.scenario.name(),
            r.calls,
            r.served,
            r.retried,
            r.lost,
            r.doubled
        )?;
    }
    out.flush()?;
    Ok(())
}
