//! `opentab rules-sim`: the real [`RuleEngine`] driven by simulated agents over simulated
//! time, to measure how often the rules freeze a key that was fine and how fast they stop one
//! that went wrong.
//!
//! Each agent ([`agents::Agent`]) pays with its own key in a labelled pattern: six legitimate
//! ones and four anomalies, each anomalous agent legitimate until its onset. Every call the
//! gateway would serve (the key not frozen, within its limit) becomes a [`ChargeEvent`] the
//! engine judges, exactly as a gateway hands it over; crossings are recorded in a SQLite store
//! of the run's own. When the engine freezes a legitimate key its owner unfreezes it after a
//! while (as a user who looked would); a key frozen after its anomaly began stays frozen.
//!
//! The same agents run under each [`Tuning`]: the seed's fixed rules, the spike judged by
//! route, and per-key settings a user would choose. [`Report`] scores each rule: a false
//! positive is a legitimate key-day on which the rule froze the key (or, for low balance,
//! warned with more than its share of the limit left), a true positive an anomalous key the
//! rule froze after the onset.

pub mod agents;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::fmt::Write as _;

use opentab_core::Usdc;
use opentab_core::rules::{Rule, RuleOverrides, RuleSettings, Transition};
use opentab_gateway::{ChargeEvent, UsageKind};
use opentab_store::Store;

use crate::{Crossing, Result, RuleEngine};
use agents::{Agent, Pattern, Route};

/// What to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Seeds every agent: the same plan makes the same traffic.
    pub seed: u64,
    /// Agents of each pattern.
    pub agents_per_pattern: u64,
    /// Simulated time, in seconds.
    pub duration_secs: u64,
    /// How long after a legitimate key is frozen its owner unfreezes it.
    pub unfreeze_after_secs: u64,
}

impl Default for Plan {
    /// 50 agents of each pattern over two days; owners unfreeze after 15 minutes.
    fn default() -> Self {
        Self { seed: 1, agents_per_pattern: 50, duration_secs: 2 * 86_400, unfreeze_after_secs: 900 }
    }
}

/// The settings the agents' keys run under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tuning {
    /// The seed's fixed rules (DESIGN §4): 10× the key's average, 100 calls a minute, 10% left.
    Seed,
    /// The shipped defaults: the seed's numbers, the spike judged against the route's own
    /// average once it has one.
    ByRoute,
    /// Per-key settings a user would choose from the key's usage: calls per minute half as
    /// many again as the busiest minute of the period before (at least 20), the spike by route,
    /// and the image route on the allowance list of keys that use it.
    PerKey,
}

impl Tuning {
    /// Every tuning, in report order.
    pub const ALL: [Self; 3] = [Self::Seed, Self::ByRoute, Self::PerKey];

    /// The name in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Seed => "the seed's rules (10× the key's average, 100/min, 10%)",
            Self::ByRoute => "shipped defaults (the seed's numbers, spike by route)",
            Self::PerKey => "per-key settings",
        }
    }

    /// The deployment's settings under this tuning.
    fn deployment(self) -> RuleSettings {
        match self {
            Self::Seed => RuleSettings { spike_by_route: false, ..RuleSettings::default() },
            Self::ByRoute | Self::PerKey => RuleSettings::default(),
        }
    }

    /// What `agent`'s owner sets on its key under this tuning.
    fn overrides(self, agent: &Agent) -> RuleOverrides {
        match self {
            Self::Seed | Self::ByRoute => RuleOverrides::default(),
            Self::PerKey => RuleOverrides {
                calls_per_minute: Some(opentab_core::rules::suggested_calls_per_minute(agent.busiest_minute_before())),
                spike_ignore_routes: agent.uses_images.then(|| vec![Route::Image.name().to_owned()]),
                ..RuleOverrides::default()
            },
        }
    }
}

/// What happened to one agent.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Days (index from the start) on which each rule froze the key or (low balance) warned.
    pub fired_days: BTreeMap<Rule, HashSet<u64>>,
    /// Days on which the key was charged.
    pub active_days: HashSet<u64>,
    /// Days on which the key had, at some charge, less than the low-balance share left.
    pub low_days: HashSet<u64>,
    /// Rules that froze the key at or after the onset (one charge can trip two).
    pub caught_by: Vec<Rule>,
    /// Rules that froze the key before the onset.
    pub early: Vec<Rule>,
    /// Seconds from the onset to the freeze.
    pub time_to_freeze: Option<f64>,
    /// What the key was charged from the onset to the freeze (or to the end, never frozen).
    pub spent_in_anomaly: Usdc,
}

/// One tuning's run.
#[derive(Debug, Clone)]
pub struct Run {
    /// The tuning.
    pub tuning: Tuning,
    /// Charges judged.
    pub charges: u64,
    outcomes: Vec<(Pattern, Outcome)>,
}

/// Runs `plan` under `tuning` through a [`RuleEngine`] recording to `store` (a fresh one per
/// run: alerts and settings stay in it).
pub async fn run(plan: &Plan, tuning: Tuning, store: Store) -> Result<Run> {
    let duration = plan.duration_secs as f64;
    let mut agents: Vec<Agent> = Pattern::ALL
        .into_iter()
        .flat_map(|pattern| (0..plan.agents_per_pattern).map(move |i| (pattern, i)))
        .map(|(pattern, i)| Agent::new(pattern, i, plan.seed, duration))
        .collect();
    for agent in &agents {
        let overrides = tuning.overrides(agent);
        if !overrides.is_empty() {
            store.set_rule_settings(agent.owner, Some(agent.key), &overrides, opentab_store::RULES_SET, 0).await?;
        }
    }
    let engine = RuleEngine::start(store, tuning.deployment()).await?.remembering_idle_keys();
    let mut outcomes: Vec<Outcome> = vec![Outcome::default(); agents.len()];
    let mut served = vec![Usdc::ZERO; agents.len()];
    let mut served_at_onset: Vec<Option<Usdc>> = vec![None; agents.len()];
    // Frozen until (seconds); infinite for a key frozen after its anomaly began.
    let mut frozen_until = vec![f64::NEG_INFINITY; agents.len()];
    let mut queue: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let order = |at: f64| (at * 1_000.0) as u64;
    for (i, agent) in agents.iter().enumerate() {
        if let Some(at) = agent.next_at() {
            queue.push(Reverse((order(at), i)));
        }
    }
    let mut charges = 0_u64;
    while let Some(Reverse((_, i))) = queue.pop() {
        let agent = &mut agents[i];
        let Some(call) = agent.take() else { continue };
        if let Some(at) = agent.next_at() {
            queue.push(Reverse((order(at), i)));
        }
        if call.at >= agent.onset && served_at_onset[i].is_none() {
            served_at_onset[i] = Some(served[i]);
        }
        if call.at < frozen_until[i] {
            continue;
        }
        let Ok(after) = served[i].checked_add(call.amount) else { continue };
        if after > agent.limit {
            // The gateway refuses it; a key spent stays spent.
            agent.stop();
            continue;
        }
        served[i] = after;
        charges += 1;
        let at = call.at as u64;
        let day = at / 86_400;
        let outcome = &mut outcomes[i];
        outcome.active_days.insert(day);
        let settings = engine.settings_of(agent.owner, agent.key).await?;
        if low(after, agent.limit, settings.low_balance_percent) {
            outcome.low_days.insert(day);
        }
        let event = ChargeEvent {
            at,
            key: agent.key,
            owner: agent.owner,
            kind: UsageKind::Charge,
            amount: call.amount,
            route: call.route.name().to_owned(),
            served: after,
            limit: agent.limit,
            recent_calls: None,
        };
        let crossings = engine.apply(&event).await?;
        let froze: Vec<Rule> = crossings.iter().filter(|c| c.froze).filter_map(fired).collect();
        for rule in crossings.iter().filter_map(fired) {
            if rule == Rule::LowBalance || froze.contains(&rule) {
                outcome.fired_days.entry(rule).or_default().insert(day);
            }
        }
        if froze.is_empty() {
            continue;
        }
        if call.at >= agent.onset {
            outcome.caught_by = froze;
            outcome.time_to_freeze = Some(call.at - agent.onset);
            frozen_until[i] = f64::INFINITY;
            agent.stop();
        } else {
            if agent.pattern.is_anomaly() {
                outcome.early.extend(froze);
            }
            frozen_until[i] = call.at + plan.unfreeze_after_secs as f64;
        }
    }
    for (i, outcome) in outcomes.iter_mut().enumerate() {
        if let Some(at_onset) = served_at_onset[i] {
            outcome.spent_in_anomaly = served[i].saturating_sub(at_onset);
        }
    }
    let outcomes = agents.iter().map(|a| a.pattern).zip(outcomes).collect();
    Ok(Run { tuning, charges, outcomes })
}

fn fired(crossing: &Crossing) -> Option<Rule> {
    match crossing.transition {
        Transition::Fired { rule, .. } => Some(rule),
        Transition::Recovered { .. } => None,
    }
}

/// The low-balance rule's condition, worked out apart from the rule: less than `percent` of
/// `limit` left after `served`.
fn low(served: Usdc, limit: Usdc, percent: u64) -> bool {
    let left = u128::from(limit.saturating_sub(served).base_units());
    left * 100 < u128::from(limit.base_units()) * u128::from(percent)
}

/// One rule's score in a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// Anomalous keys it froze after their onset (low balance: keys it rightly warned of).
    pub true_positives: u64,
    /// Legitimate key-days it froze (low balance: keys warned of without cause), plus
    /// anomalous keys it froze before their onset.
    pub false_positives: u64,
    /// Anomalous keys it never froze after their onset (low balance: low keys never warned of).
    pub false_negatives: u64,
    /// Legitimate key-days (low balance: keys never low): the false-positive rate's denominator.
    pub legit_key_days: u64,
    /// Of those, the ones it fired on: the false-positive rate's numerator.
    pub legit_fired: u64,
}

impl Score {
    /// TP / (TP + FP).
    pub fn precision(&self) -> Option<f64> {
        ratio(self.true_positives, self.true_positives + self.false_positives)
    }

    /// TP / (TP + FN).
    pub fn recall(&self) -> Option<f64> {
        ratio(self.true_positives, self.true_positives + self.false_negatives)
    }

    /// Legitimate key-days it fired on, of all legitimate key-days.
    pub fn false_positive_rate(&self) -> Option<f64> {
        ratio(self.legit_fired, self.legit_key_days)
    }
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// A freezing rule, or both of them ("any freeze").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scored {
    /// One rule.
    Rule(Rule),
    /// A freeze by either freezing rule.
    AnyFreeze,
}

impl Run {
    /// How `scored` did.
    pub fn score(&self, scored: Scored) -> Score {
        let mut s =
            Score { true_positives: 0, false_positives: 0, false_negatives: 0, legit_key_days: 0, legit_fired: 0 };
        let counts = |rule: Rule| match scored {
            Scored::Rule(r) => r == rule,
            Scored::AnyFreeze => rule.freezes(),
        };
        for (pattern, o) in &self.outcomes {
            if scored == Scored::Rule(Rule::LowBalance) {
                // Judged per key against the condition itself, for every agent: an alert fires
                // once per crossing, so a key low for two days is warned once.
                let warned = o.fired_days.get(&Rule::LowBalance).is_some_and(|days| !days.is_empty());
                let was_low = !o.low_days.is_empty();
                match (warned, was_low) {
                    (true, true) => s.true_positives += 1,
                    (true, false) => {
                        s.false_positives += 1;
                        s.legit_fired += 1;
                    }
                    (false, true) => s.false_negatives += 1,
                    (false, false) => {}
                }
                s.legit_key_days += u64::from(!was_low);
                continue;
            }
            if pattern.is_anomaly() {
                s.false_positives += o.early.iter().filter(|r| counts(**r)).count().min(1) as u64;
                if o.caught_by.iter().any(|r| counts(*r)) {
                    s.true_positives += 1;
                } else {
                    s.false_negatives += 1;
                }
            } else {
                let mut days: HashSet<u64> = HashSet::new();
                for (rule, fired) in &o.fired_days {
                    if counts(*rule) && rule.freezes() {
                        days.extend(fired);
                    }
                }
                s.false_positives += days.len() as u64;
                s.legit_fired += days.len() as u64;
                s.legit_key_days += o.active_days.len() as u64;
            }
        }
        s
    }

    /// What happened to each agent of `pattern`.
    pub fn outcomes(&self, pattern: Pattern) -> impl Iterator<Item = &Outcome> {
        self.outcomes.iter().filter(move |(p, _)| *p == pattern).map(|(_, o)| o)
    }

    /// Legitimate key-days of `pattern`, and how many a freezing rule froze.
    pub fn frozen_days(&self, pattern: Pattern) -> (u64, u64) {
        let mut total = (0, 0);
        for (_, o) in self.outcomes.iter().filter(|(p, _)| *p == pattern) {
            let mut days: HashSet<u64> = HashSet::new();
            for (rule, fired) in &o.fired_days {
                if rule.freezes() {
                    days.extend(fired);
                }
            }
            total.0 += o.active_days.len() as u64;
            total.1 += days.len() as u64;
        }
        total
    }

    /// The table of this run, in Markdown.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "#### {} — {} charges judged\n", self.tuning.name(), thousands(self.charges));
        let _ = writeln!(out, "| rule | precision | recall | false-positive rate | TP | FP | FN |");
        let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
        for (name, scored) in [
            ("spike (freezes)", Scored::Rule(Rule::Spike)),
            ("rate (freezes)", Scored::Rule(Rule::Rate)),
            ("any freeze", Scored::AnyFreeze),
            ("low balance (warns)", Scored::Rule(Rule::LowBalance)),
        ] {
            let s = self.score(scored);
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {} | {} | {} |",
                percent(s.precision()),
                percent(s.recall()),
                percent(s.false_positive_rate()),
                s.true_positives,
                s.false_positives,
                s.false_negatives
            );
        }
        let _ = writeln!(out, "\n| legitimate pattern | key-days | frozen | share |");
        let _ = writeln!(out, "| --- | ---: | ---: | ---: |");
        for pattern in Pattern::ALL.into_iter().filter(|p| !p.is_anomaly()) {
            let (days, frozen) = self.frozen_days(pattern);
            let _ = writeln!(out, "| {} | {days} | {frozen} | {} |", pattern.name(), percent(ratio(frozen, days)));
        }
        let _ = writeln!(
            out,
            "\n| anomaly | frozen | by | time to freeze (median, max) | spent before the freeze (median, max) | spent, never frozen (median) |"
        );
        let _ = writeln!(out, "| --- | ---: | --- | ---: | ---: | ---: |");
        for pattern in Pattern::ALL.into_iter().filter(|p| p.is_anomaly()) {
            let agents: Vec<&Outcome> = self.outcomes.iter().filter(|(p, _)| *p == pattern).map(|(_, o)| o).collect();
            let caught: Vec<&&Outcome> = agents.iter().filter(|o| o.time_to_freeze.is_some()).collect();
            let mut by: Vec<&str> = caught.iter().flat_map(|o| o.caught_by.iter().map(|r| r.as_str())).collect();
            by.sort_unstable();
            by.dedup();
            let mut times: Vec<f64> = caught.iter().filter_map(|o| o.time_to_freeze).collect();
            let mut spent: Vec<u64> = caught.iter().map(|o| o.spent_in_anomaly.base_units()).collect();
            let mut missed: Vec<u64> =
                agents.iter().filter(|o| o.time_to_freeze.is_none()).map(|o| o.spent_in_anomaly.base_units()).collect();
            times.sort_by(f64::total_cmp);
            spent.sort_unstable();
            missed.sort_unstable();
            let usdc = |v: Option<&u64>| {
                v.map_or("–".to_owned(), |u| format!("{} USDC", Usdc::from_base_units(*u).display()))
            };
            let _ = writeln!(
                out,
                "| {} | {}/{} | {} | {} | {}, {} | {} |",
                pattern.name(),
                caught.len(),
                agents.len(),
                if by.is_empty() { "–".to_owned() } else { by.join(", ") },
                match (times.get(times.len() / 2), times.last()) {
                    (Some(m), Some(x)) => format!("{}, {}", seconds(*m), seconds(*x)),
                    _ => "–".to_owned(),
                },
                usdc(spent.get(spent.len() / 2)),
                usdc(spent.last()),
                usdc(missed.get(missed.len() / 2)),
            );
        }
        out
    }
}

fn percent(value: Option<f64>) -> String {
    value.map_or("–".to_owned(), |v| format!("{:.1}%", v * 100.0))
}

fn seconds(secs: f64) -> String {
    if secs < 120.0 { format!("{secs:.1} s") } else { format!("{:.0} min", secs / 60.0) }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
