//! The rule engine's rules (DESIGN §4), as pure functions: on every charge, (1) a charge over
//! 10× the key's running average, (2) more than 100 calls in a sliding minute, (3) less than
//! 10% of the limit left. (1) and (2) freeze the key (in `enforce` mode); all three alert. An
//! alert fires once per crossing, and a `recovered` follows when the condition clears.

use crate::Usdc;

/// A rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// One charge far above the key's running average.
    Spike,
    /// Too many calls in a minute.
    Rate,
    /// Little of the limit left.
    LowBalance,
}

impl Rule {
    /// Every rule, in evaluation order.
    pub const ALL: [Self; 3] = [Self::Spike, Self::Rate, Self::LowBalance];

    /// The stored / displayed name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Spike => "spike",
            Self::Rate => "rate",
            Self::LowBalance => "low_balance",
        }
    }

    /// Whether a breach freezes the key (the others only alert).
    pub const fn freezes(self) -> bool {
        matches!(self, Self::Spike | Self::Rate)
    }
}

impl core::str::FromStr for Rule {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        Self::ALL.into_iter().find(|r| r.as_str() == text).ok_or(())
    }
}

/// What a rule does when it fires (in config files: `"enforce"` or `"shadow"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleMode {
    /// Alert, and freeze where the rule freezes.
    #[default]
    Enforce,
    /// Alert only: to watch a rule before trusting it.
    Shadow,
}

impl RuleMode {
    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Shadow => "shadow",
        }
    }
}

/// The thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleConfig {
    /// A charge above this many times the running average is a spike.
    pub spike_factor: u64,
    /// The average means something only after this many charges.
    pub spike_min_calls: u64,
    /// More calls than this in a sliding minute is too many.
    pub max_calls_per_minute: u32,
    /// Less than this percentage of the limit left is low.
    pub low_balance_percent: u64,
    /// What firing does.
    pub mode: RuleMode,
}

impl Default for RuleConfig {
    /// DESIGN §4's numbers, enforced.
    fn default() -> Self {
        Self {
            spike_factor: 10,
            spike_min_calls: 5,
            max_calls_per_minute: 100,
            low_balance_percent: 10,
            mode: RuleMode::Enforce,
        }
    }
}

/// A key's activity at the moment of a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    /// This charge.
    pub charge: Usdc,
    /// Charges before this one.
    pub calls_before: u64,
    /// Served before this one.
    pub served_before: Usdc,
    /// Charges in the last 60 s, this one included.
    pub calls_last_minute: u32,
    /// The key's limit.
    pub limit: Usdc,
    /// Served after this charge.
    pub served_after: Usdc,
}

/// One rule's verdict: breached (with the reason, for people) or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The rule.
    pub rule: Rule,
    /// Why it is breached, or `None` when it holds.
    pub breach: Option<String>,
}

/// Every rule's verdict on `activity`.
pub fn evaluate(activity: &Activity, config: &RuleConfig) -> [Verdict; 3] {
    let a = activity;
    let spike = (a.calls_before >= config.spike_min_calls)
        .then(|| {
            let average = a.served_before.base_units() / a.calls_before.max(1);
            let ceiling = average.saturating_mul(config.spike_factor);
            (a.charge.base_units() > ceiling).then(|| {
                format!(
                    "a charge of {} USDC is more than {}× the key's average of {} USDC",
                    a.charge.display(),
                    config.spike_factor,
                    Usdc::from_base_units(average).display()
                )
            })
        })
        .flatten();
    let rate = (a.calls_last_minute > config.max_calls_per_minute).then(|| {
        format!("{} calls in the last minute, more than {}", a.calls_last_minute, config.max_calls_per_minute)
    });
    let remaining = a.limit.saturating_sub(a.served_after);
    // remaining / limit < percent / 100, in integers.
    let low = u128::from(remaining.base_units()) * 100
        < u128::from(a.limit.base_units()) * u128::from(config.low_balance_percent);
    let low_balance = low.then(|| {
        format!(
            "{} USDC of the {} USDC limit left, under {}%",
            remaining.display(),
            a.limit.display(),
            config.low_balance_percent
        )
    });
    [
        Verdict { rule: Rule::Spike, breach: spike },
        Verdict { rule: Rule::Rate, breach: rate },
        Verdict { rule: Rule::LowBalance, breach: low_balance },
    ]
}

/// A change of a rule's state for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The rule was breached and was not before: alert (and freeze, if it freezes).
    Fired {
        /// The rule.
        rule: Rule,
        /// Why.
        reason: String,
    },
    /// The rule holds again.
    Recovered {
        /// The rule.
        rule: Rule,
    },
}

/// What changed, given the rules currently firing for the key: each crossing fires once.
pub fn transitions(firing: &[Rule], verdicts: &[Verdict]) -> Vec<Transition> {
    verdicts
        .iter()
        .filter_map(|v| match (&v.breach, firing.contains(&v.rule)) {
            (Some(reason), false) => Some(Transition::Fired { rule: v.rule, reason: reason.clone() }),
            (None, true) => Some(Transition::Recovered { rule: v.rule }),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usdc(units: u64) -> Usdc {
        Usdc::from_base_units(units)
    }

    fn activity() -> Activity {
        Activity {
            charge: usdc(2_000),
            calls_before: 10,
            served_before: usdc(20_000),
            calls_last_minute: 11,
            limit: usdc(1_000_000),
            served_after: usdc(22_000),
        }
    }

    fn breached(a: &Activity) -> Vec<Rule> {
        evaluate(a, &RuleConfig::default()).into_iter().filter(|v| v.breach.is_some()).map(|v| v.rule).collect()
    }

    #[test]
    fn ordinary_use_breaks_no_rule() {
        assert!(breached(&activity()).is_empty());
    }

    #[test]
    fn each_rule_fires_past_its_threshold_only() {
        let spike = Activity { charge: usdc(20_001), ..activity() };
        assert_eq!(breached(&spike), [Rule::Spike]);
        assert!(breached(&Activity { charge: usdc(20_000), ..activity() }).is_empty(), "10× is not more than 10×");
        assert!(breached(&Activity { calls_before: 4, ..spike }).is_empty(), "no average yet");
        assert_eq!(breached(&Activity { calls_last_minute: 101, ..activity() }), [Rule::Rate]);
        assert!(breached(&Activity { calls_last_minute: 100, ..activity() }).is_empty());
        assert_eq!(breached(&Activity { served_after: usdc(900_001), ..activity() }), [Rule::LowBalance]);
        assert!(breached(&Activity { served_after: usdc(900_000), ..activity() }).is_empty(), "exactly 10% left");
    }

    #[test]
    fn reasons_say_why_with_the_numbers() {
        let v = evaluate(
            &Activity { calls_last_minute: 150, served_after: usdc(950_000), ..activity() },
            &RuleConfig::default(),
        );
        assert_eq!(v[1].breach.as_deref(), Some("150 calls in the last minute, more than 100"));
        assert_eq!(v[2].breach.as_deref(), Some("0.05 USDC of the 1 USDC limit left, under 10%"));
    }

    #[test]
    fn a_crossing_fires_once_and_recovers_once() {
        let rate = |n| evaluate(&Activity { calls_last_minute: n, ..activity() }, &RuleConfig::default());
        let fired = transitions(&[], &rate(101));
        assert!(matches!(fired.as_slice(), [Transition::Fired { rule: Rule::Rate, .. }]));
        assert!(transitions(&[Rule::Rate], &rate(150)).is_empty(), "still breached: no second alert");
        assert_eq!(transitions(&[Rule::Rate], &rate(3)), [Transition::Recovered { rule: Rule::Rate }]);
        assert!(transitions(&[], &rate(3)).is_empty());
        assert!(Rule::Rate.freezes() && Rule::Spike.freezes() && !Rule::LowBalance.freezes());
        assert_eq!("low_balance".parse(), Ok(Rule::LowBalance));
    }
}
