//! The traffic simulator (`opentab rules-sim`) on a small plan: the real engine, labelled
//! agents, the scores it reports.

use opentab_core::Usdc;
use opentab_core::rules::Rule;
use opentab_rules::sim::agents::Pattern;
use opentab_rules::sim::{self, Plan, Run, Scored, Tuning};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

const PLAN: Plan = Plan { seed: 7, agents_per_pattern: 4, duration_secs: 6 * 3_600, unfreeze_after_secs: 900 };

async fn run(tuning: Tuning) -> TestResult<Run> {
    let dir = tempfile::tempdir()?;
    let store = opentab_store::testing::fresh_sqlite(dir.path()).await?;
    Ok(sim::run(&PLAN, tuning, store).await?)
}

#[tokio::test]
async fn anomalies_are_frozen_by_the_rule_made_for_them_and_legitimate_steady_traffic_never() -> TestResult {
    let seed = run(Tuning::Seed).await?;
    for o in seed.outcomes(Pattern::RunawayRetry) {
        assert_eq!(o.caught_by, [Rule::Rate], "a retry loop is a burst");
        let secs = o.time_to_freeze.ok_or("never frozen")?;
        // 5–20 calls a second on top of its traffic: past 100 within 20 s.
        assert!(secs <= 20.0, "frozen {secs} s after the loop began");
    }
    for o in seed.outcomes(Pattern::ExpensiveSwitch) {
        assert!(o.caught_by.contains(&Rule::Spike));
        assert_eq!(o.spent_in_anomaly, Usdc::from_base_units(500_000), "one video call, then frozen");
    }
    assert_eq!(seed.frozen_days(Pattern::Steady).1, 0, "steady traffic is never frozen");
    assert_eq!(seed.outcomes(Pattern::Steady).count(), 4);
    let any = seed.score(Scored::AnyFreeze);
    assert!(any.recall().is_some_and(|r| r > 0.9), "{any:?}");
    Ok(())
}

#[tokio::test]
async fn per_key_settings_stop_freezing_bursty_keys_the_seed_rules_freeze() -> TestResult {
    let seed = run(Tuning::Seed).await?;
    let tuned = run(Tuning::PerKey).await?;
    let (days, frozen) = seed.frozen_days(Pattern::Bursty);
    assert!(frozen > 0, "fan-outs over 100 calls a minute trip the seed's rate rule ({frozen} of {days})");
    assert_eq!(tuned.frozen_days(Pattern::Bursty).1, 0, "a rate set from the key's busiest minute lets them be");
    // Tuned, the slow leak under 100 a minute is caught: it is far above the key's own habits.
    for o in tuned.outcomes(Pattern::SlowLeak) {
        assert_eq!(o.caught_by, [Rule::Rate]);
    }
    let (s, t) = (seed.score(Scored::AnyFreeze), tuned.score(Scored::AnyFreeze));
    assert!(t.false_positive_rate() < s.false_positive_rate(), "{t:?} against {s:?}");
    Ok(())
}

#[tokio::test]
async fn the_same_plan_makes_the_same_report() -> TestResult {
    let (a, b) = (run(Tuning::ByRoute).await?, run(Tuning::ByRoute).await?);
    assert_eq!(a.charges, b.charges);
    assert!(a.charges > 10_000, "{} charges", a.charges);
    assert_eq!(a.table(), b.table());
    let low = a.score(Scored::Rule(Rule::LowBalance));
    assert_eq!((low.false_positives, low.false_negatives), (0, 0), "the warning fires exactly on low keys: {low:?}");
    assert!(low.true_positives > 0, "slow-drain keys reach their limit");
    Ok(())
}
