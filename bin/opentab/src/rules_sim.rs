//! `opentab rules-sim`: the rule engine against labelled simulated traffic (six legitimate
//! patterns, four anomalies) over simulated time, under the seed's fixed rules, the spike judged
//! by route and per-key settings; prints, per rule, precision, recall and the false-positive
//! rate, and per anomaly the time to freeze and the money spent before it (Markdown tables, as
//! the README shows them). See `opentab_rules::sim`.

use std::io::Write;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use opentab_rules::sim::{self, Plan, Scored, Tuning};

use crate::output::parse_duration;

#[derive(Debug, Args)]
pub(crate) struct RulesSimArgs {
    /// Seeds the traffic: the same seed and sizes make the same calls.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Agents of each of the ten patterns.
    #[arg(long, default_value_t = 50)]
    agents: u64,
    /// Simulated time (30m, 24h, 2d, …).
    #[arg(long, default_value = "2d", value_parser = parse_duration)]
    duration: u64,
    /// How long after the engine froze a legitimate key its owner unfreezes it.
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    unfreeze_after: u64,
    /// Fail (exit 1) if the seed's rules freeze more than this share of legitimate key-days
    /// (a percentage): a gate for CI.
    #[arg(long)]
    fail_above: Option<f64>,
}

pub(crate) async fn run(args: RulesSimArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.agents > 0, "--agents must be at least 1");
    let plan = Plan {
        seed: args.seed,
        agents_per_pattern: args.agents,
        duration_secs: args.duration,
        unfreeze_after_secs: args.unfreeze_after,
    };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "rules-sim: seed {}, {} agents of each of 10 patterns, {} h of simulated time, owners unfreeze a legitimate key after {} min\n",
        plan.seed,
        plan.agents_per_pattern,
        plan.duration_secs / 3_600,
        plan.unfreeze_after_secs / 60
    )?;
    let mut rates = Vec::new();
    for tuning in Tuning::ALL {
        let dir = tempfile::tempdir().context("a directory for the simulation's database")?;
        let store = opentab_store::Store::connect(&format!("sqlite://{}", dir.path().join("sim.db").display()))
            .await
            .context("the simulation's database")?;
        let started = Instant::now();
        let run =
            sim::run(&plan, tuning, store.clone()).await.with_context(|| format!("simulating {}", tuning.name()))?;
        store.close().await;
        writeln!(out, "{}", run.table())?;
        writeln!(out, "({:.1} s)\n", started.elapsed().as_secs_f64())?;
        rates.push((tuning, run.score(Scored::AnyFreeze).false_positive_rate().unwrap_or(0.0) * 100.0));
    }
    let verdict = |fpr: f64| if fpr < 5.0 { "meets" } else { "misses" };
    writeln!(out, "Against the 5% bar (legitimate key-days on which a rule froze the key):")?;
    for (tuning, fpr) in &rates {
        writeln!(out, "  {}: {fpr:.1}%, {} it", tuning.name(), verdict(*fpr))?;
    }
    let fpr = rates.iter().find(|(t, _)| *t == Tuning::Seed).map_or(0.0, |(_, fpr)| *fpr);
    writeln!(out, "The seed's fixed rules froze {fpr:.1}% of legitimate key-days: that {} the 5% bar.", verdict(fpr))?;
    if let Some(limit) = args.fail_above {
        anyhow::ensure!(fpr <= limit, "the seed's false-positive rate {fpr:.1}% is above --fail-above {limit}%");
    }
    Ok(())
}
