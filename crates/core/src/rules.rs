//! The rule engine's rules (DESIGN §4), as pure functions: on every charge, (1) a charge over
//! 10× the key's running average, (2) more than 100 calls in a sliding minute, (3) less than
//! 10% of the limit left. (1) and (2) freeze the key (in `enforce` mode); all three alert. An
//! alert fires once per crossing, and a `recovered` follows when the condition clears.
//!
//! Those numbers are the seed's ([`RuleSettings::default`]). An owner may set defaults of their
//! own and override them per key ([`RuleOverrides`], layered by [`RuleSettings::with`]): each
//! threshold, each rule's mode (`enforce`, `shadow`, `off`), a spike judged against the route's
//! own history rather than the key's, and an allowance list of routes and small amounts the
//! spike rule ignores. A breach names the setting in force and the least setting that would
//! not have fired ([`Breach`]), so a user sees why a key was frozen and what would change it.

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

/// What a rule does when it fires (in config files and the API: `"enforce"`, `"shadow"` or
/// `"off"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleMode {
    /// Alert, and freeze where the rule freezes.
    #[default]
    Enforce,
    /// Alert only: to watch a rule before trusting it.
    Shadow,
    /// Not judged at all.
    Off,
}

impl RuleMode {
    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Shadow => "shadow",
            Self::Off => "off",
        }
    }
}

/// The largest spike multiple a setting may name.
pub const MAX_SPIKE_MULTIPLE: u64 = 1_000_000;
/// The largest calls-per-minute a setting may name: the shared counters count a key's last
/// minute up to 10,000 calls, so a higher threshold could never be crossed.
pub const MAX_CALLS_PER_MINUTE: u32 = 9_999;
/// Routes an allowance list may hold.
pub const MAX_IGNORED_ROUTES: usize = 32;
/// The longest route an allowance list may name.
const MAX_ROUTE_LEN: usize = 200;

/// The thresholds and modes in force for one key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleSettings {
    /// A charge above this many times the average is a spike.
    pub spike_multiple: u64,
    /// An average means something only after this many charges (not a user setting).
    #[serde(skip)]
    pub spike_min_calls: u64,
    /// Judge a charge against its route's own average, once the route has one.
    pub spike_by_route: bool,
    /// Routes (`METHOD /pattern`) whose charges the spike rule ignores.
    pub spike_ignore_routes: Vec<String>,
    /// Charges of at most this much the spike rule ignores.
    pub spike_ignore_up_to: Usdc,
    /// What a spike does.
    pub spike_mode: RuleMode,
    /// More calls than this in a sliding minute is too many.
    pub calls_per_minute: u32,
    /// What too many calls do.
    pub rate_mode: RuleMode,
    /// Less than this percentage of the limit left is low.
    pub low_balance_percent: u64,
    /// What a low balance does (it never freezes: `enforce` and `shadow` both alert).
    pub low_balance_mode: RuleMode,
}

impl Default for RuleSettings {
    /// DESIGN §4's numbers, enforced; a spike judged against the charge's route once the
    /// route has an average of its own (`opentab rules-sim`: that halved the spike rule's false
    /// positives on keys mixing cheap and expensive routes, and caught every anomaly the key's
    /// overall average caught).
    fn default() -> Self {
        Self {
            spike_multiple: 10,
            spike_min_calls: 5,
            spike_by_route: true,
            spike_ignore_routes: Vec::new(),
            spike_ignore_up_to: Usdc::ZERO,
            spike_mode: RuleMode::Enforce,
            calls_per_minute: 100,
            rate_mode: RuleMode::Enforce,
            low_balance_percent: 10,
            low_balance_mode: RuleMode::Enforce,
        }
    }
}

impl RuleSettings {
    /// These settings with every rule in `mode` (a deployment's `rules = "shadow"`).
    #[must_use]
    pub fn with_mode(mut self, mode: RuleMode) -> Self {
        self.spike_mode = mode;
        self.rate_mode = mode;
        self.low_balance_mode = mode;
        self
    }

    /// These settings with `overrides` laid over them (an owner's defaults over the seed's, a
    /// key's over its owner's): each field set there wins.
    #[must_use]
    pub fn with(mut self, overrides: &RuleOverrides) -> Self {
        let o = overrides;
        self.spike_multiple = o.spike_multiple.unwrap_or(self.spike_multiple);
        self.spike_by_route = o.spike_by_route.unwrap_or(self.spike_by_route);
        if let Some(routes) = &o.spike_ignore_routes {
            self.spike_ignore_routes.clone_from(routes);
        }
        self.spike_ignore_up_to = o.spike_ignore_up_to.unwrap_or(self.spike_ignore_up_to);
        self.spike_mode = o.spike_mode.unwrap_or(self.spike_mode);
        self.calls_per_minute = o.calls_per_minute.unwrap_or(self.calls_per_minute);
        self.rate_mode = o.rate_mode.unwrap_or(self.rate_mode);
        self.low_balance_percent = o.low_balance_percent.unwrap_or(self.low_balance_percent);
        self.low_balance_mode = o.low_balance_mode.unwrap_or(self.low_balance_mode);
        self
    }

    /// `rule`'s mode.
    pub const fn mode(&self, rule: Rule) -> RuleMode {
        match rule {
            Rule::Spike => self.spike_mode,
            Rule::Rate => self.rate_mode,
            Rule::LowBalance => self.low_balance_mode,
        }
    }

    /// `rule`'s threshold.
    pub const fn threshold(&self, rule: Rule) -> Setting {
        match rule {
            Rule::Spike => Setting::SpikeMultiple(self.spike_multiple),
            Rule::Rate => Setting::CallsPerMinute(self.calls_per_minute),
            Rule::LowBalance => Setting::LowBalancePercent(self.low_balance_percent),
        }
    }

    /// Whether the spike rule ignores a charge of `amount` on `route`.
    fn spike_ignores(&self, route: &str, amount: Usdc) -> bool {
        // Zero ignores only free charges, which are never spikes anyway.
        amount <= self.spike_ignore_up_to || self.spike_ignore_routes.iter().any(|r| same_route(r, route))
    }
}

/// Settings an owner or a key sets over what it inherits: each field left out inherits.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleOverrides {
    /// [`RuleSettings::spike_multiple`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spike_multiple: Option<u64>,
    /// [`RuleSettings::spike_by_route`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spike_by_route: Option<bool>,
    /// [`RuleSettings::spike_ignore_routes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spike_ignore_routes: Option<Vec<String>>,
    /// [`RuleSettings::spike_ignore_up_to`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spike_ignore_up_to: Option<Usdc>,
    /// [`RuleSettings::spike_mode`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spike_mode: Option<RuleMode>,
    /// [`RuleSettings::calls_per_minute`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls_per_minute: Option<u32>,
    /// [`RuleSettings::rate_mode`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_mode: Option<RuleMode>,
    /// [`RuleSettings::low_balance_percent`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_balance_percent: Option<u64>,
    /// [`RuleSettings::low_balance_mode`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_balance_mode: Option<RuleMode>,
}

/// Why a [`RuleOverrides`] is refused, naming its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    /// A number outside its range.
    #[error("{field} must be between {min} and {max}, not {value}")]
    OutOfRange {
        /// The field, as the API names it.
        field: &'static str,
        /// The least allowed.
        min: u64,
        /// The most allowed.
        max: u64,
        /// What was sent.
        value: u64,
    },
    /// An allowance list too long.
    #[error("spikeIgnoreRoutes holds at most {MAX_IGNORED_ROUTES} routes, not {0}")]
    TooManyRoutes(usize),
    /// A route that is not `METHOD /pattern`.
    #[error("spikeIgnoreRoutes: {0:?} is not a route (\"METHOD /path\", e.g. \"POST /v1/images\")")]
    NotARoute(String),
}

impl RuleOverrides {
    /// Checks every field set, and returns the overrides with routes in canonical form
    /// (method upper-cased, spaces trimmed).
    pub fn validated(mut self) -> Result<Self, SettingError> {
        let range = |field, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) { Ok(()) } else { Err(SettingError::OutOfRange { field, min, max, value }) }
        };
        if let Some(m) = self.spike_multiple {
            range("spikeMultiple", m, 1, MAX_SPIKE_MULTIPLE)?;
        }
        if let Some(n) = self.calls_per_minute {
            range("callsPerMinute", u64::from(n), 1, u64::from(MAX_CALLS_PER_MINUTE))?;
        }
        if let Some(p) = self.low_balance_percent {
            range("lowBalancePercent", p, 0, 100)?;
        }
        if let Some(routes) = &mut self.spike_ignore_routes {
            if routes.len() > MAX_IGNORED_ROUTES {
                return Err(SettingError::TooManyRoutes(routes.len()));
            }
            for route in routes.iter_mut() {
                *route = canonical_route(route).ok_or_else(|| SettingError::NotARoute(route.clone()))?;
            }
        }
        Ok(self)
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// `METHOD /path` with the method upper-cased, or `None` if `route` is not one.
fn canonical_route(route: &str) -> Option<String> {
    let (method, path) = route.trim().split_once(' ')?;
    let path = path.trim();
    let method_ok = !method.is_empty() && method.bytes().all(|b| b.is_ascii_alphabetic());
    let path_ok = path.starts_with('/') && !path.contains(char::is_whitespace);
    (method_ok && path_ok && route.len() <= MAX_ROUTE_LEN).then(|| format!("{} {path}", method.to_ascii_uppercase()))
}

fn same_route(listed: &str, route: &str) -> bool {
    match (listed.split_once(' '), route.split_once(' ')) {
        (Some((m1, p1)), Some((m2, p2))) => m1.eq_ignore_ascii_case(m2) && p1 == p2,
        _ => false,
    }
}

/// The calls-per-minute setting suggested for a key whose busiest minute held `busiest` calls:
/// half as many again, at least 20, at most [`MAX_CALLS_PER_MINUTE`]. Per-key settings chosen
/// so are what brought the simulator's false-positive rate under 5% (`opentab rules-sim`).
pub fn suggested_calls_per_minute(busiest: u32) -> u32 {
    busiest.saturating_mul(3).div_ceil(2).clamp(20, MAX_CALLS_PER_MINUTE)
}

/// A setting and its value: the one in force when a rule fired, or one that would not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "setting", content = "value", rename_all = "camelCase")]
pub enum Setting {
    /// [`RuleSettings::spike_multiple`].
    SpikeMultiple(u64),
    /// [`RuleSettings::calls_per_minute`].
    CallsPerMinute(u32),
    /// [`RuleSettings::low_balance_percent`].
    LowBalancePercent(u64),
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
    /// Charges on this charge's route before this one.
    pub route_calls_before: u64,
    /// Served on this charge's route before this one.
    pub route_served_before: Usdc,
    /// Charges in the last 60 s, this one included.
    pub calls_last_minute: u32,
    /// The key's limit.
    pub limit: Usdc,
    /// Served after this charge.
    pub served_after: Usdc,
}

impl Activity {
    /// The average the spike rule judges this charge against, and whether it is the route's:
    /// the route's own once it has [`RuleSettings::spike_min_calls`] charges (if the settings
    /// say so), else the key's once it has that many, else none yet.
    pub fn spike_average(&self, settings: &RuleSettings) -> Option<(Usdc, bool)> {
        let average = |served: Usdc, calls: u64| Usdc::from_base_units(served.base_units() / calls.max(1));
        if settings.spike_by_route && self.route_calls_before >= settings.spike_min_calls {
            Some((average(self.route_served_before, self.route_calls_before), true))
        } else if self.calls_before >= settings.spike_min_calls {
            Some((average(self.served_before, self.calls_before), false))
        } else {
            None
        }
    }
}

/// A rule breached: why (for people), the setting in force, and the least setting that would
/// not have fired (`None` when no setting of that rule would have kept quiet, e.g. a spike
/// against an average of zero).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breach {
    /// Why, with the numbers.
    pub reason: String,
    /// The setting in force.
    pub threshold: Setting,
    /// The least setting that would not have fired.
    pub would_not_fire: Option<Setting>,
}

/// One rule's verdict: breached or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The rule.
    pub rule: Rule,
    /// The breach, or `None` when the rule holds (or is off).
    pub breach: Option<Breach>,
}

/// Every rule's verdict on `activity`, a charge on `route` (`METHOD /pattern`), under `settings`.
pub fn evaluate(activity: &Activity, route: &str, settings: &RuleSettings) -> [Verdict; 3] {
    let on = |rule| settings.mode(rule) != RuleMode::Off;
    let spike = if on(Rule::Spike) && !settings.spike_ignores(route, activity.charge) {
        spike(activity, route, settings)
    } else {
        None
    };
    let rate = if on(Rule::Rate) { rate(activity, settings) } else { None };
    let low_balance = if on(Rule::LowBalance) { low_balance(activity, settings) } else { None };
    [
        Verdict { rule: Rule::Spike, breach: spike },
        Verdict { rule: Rule::Rate, breach: rate },
        Verdict { rule: Rule::LowBalance, breach: low_balance },
    ]
}

fn spike(a: &Activity, route: &str, settings: &RuleSettings) -> Option<Breach> {
    let (average, by_route) = a.spike_average(settings)?;
    let ceiling = average.base_units().saturating_mul(settings.spike_multiple);
    if a.charge.base_units() <= ceiling {
        return None;
    }
    // The least multiple m with charge <= average × m.
    let quiet = (average > Usdc::ZERO)
        .then(|| a.charge.base_units().div_ceil(average.base_units()))
        .filter(|m| *m <= MAX_SPIKE_MULTIPLE)
        .map(Setting::SpikeMultiple);
    let whose = if by_route { format!("the average on {route}") } else { "the key's average".to_owned() };
    Some(Breach {
        reason: format!(
            "a charge of {} USDC is more than {}× {whose} of {} USDC",
            a.charge.display(),
            settings.spike_multiple,
            average.display()
        ),
        threshold: Setting::SpikeMultiple(settings.spike_multiple),
        would_not_fire: quiet,
    })
}

fn rate(a: &Activity, settings: &RuleSettings) -> Option<Breach> {
    (a.calls_last_minute > settings.calls_per_minute).then(|| Breach {
        reason: format!("{} calls in the last minute, more than {}", a.calls_last_minute, settings.calls_per_minute),
        threshold: Setting::CallsPerMinute(settings.calls_per_minute),
        would_not_fire: (a.calls_last_minute <= MAX_CALLS_PER_MINUTE)
            .then_some(Setting::CallsPerMinute(a.calls_last_minute)),
    })
}

fn low_balance(a: &Activity, settings: &RuleSettings) -> Option<Breach> {
    let remaining = a.limit.saturating_sub(a.served_after);
    let (remaining_x100, limit) = (u128::from(remaining.base_units()) * 100, u128::from(a.limit.base_units()));
    // remaining / limit < percent / 100, in integers.
    let low = remaining_x100 < limit * u128::from(settings.low_balance_percent);
    low.then(|| Breach {
        reason: format!(
            "{} USDC of the {} USDC limit left, under {}%",
            remaining.display(),
            a.limit.display(),
            settings.low_balance_percent
        ),
        threshold: Setting::LowBalancePercent(settings.low_balance_percent),
        // The largest p with remaining × 100 >= limit × p (limit > 0 here: nothing is low of 0).
        would_not_fire: u64::try_from(remaining_x100 / limit.max(1)).ok().map(Setting::LowBalancePercent),
    })
}

/// A change of a rule's state for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The rule was breached and was not before: alert (and freeze, if it freezes and is
    /// enforced).
    Fired {
        /// The rule.
        rule: Rule,
        /// Why, and what would have kept it quiet.
        breach: Breach,
    },
    /// The rule holds again (or was switched off).
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
            (Some(breach), false) => Some(Transition::Fired { rule: v.rule, breach: breach.clone() }),
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

    const ROUTE: &str = "POST /v1/chat";

    fn activity() -> Activity {
        Activity {
            charge: usdc(2_000),
            calls_before: 10,
            served_before: usdc(20_000),
            route_calls_before: 10,
            route_served_before: usdc(20_000),
            calls_last_minute: 11,
            limit: usdc(1_000_000),
            served_after: usdc(22_000),
        }
    }

    fn breached_with(a: &Activity, settings: &RuleSettings) -> Vec<Rule> {
        evaluate(a, ROUTE, settings).into_iter().filter(|v| v.breach.is_some()).map(|v| v.rule).collect()
    }

    fn breached(a: &Activity) -> Vec<Rule> {
        breached_with(a, &RuleSettings::default())
    }

    /// DESIGN §4's spike: against the key's overall average.
    fn key_average() -> RuleSettings {
        RuleSettings { spike_by_route: false, ..RuleSettings::default() }
    }

    fn breach(a: &Activity, settings: &RuleSettings, rule: Rule) -> Option<Breach> {
        evaluate(a, ROUTE, settings).into_iter().find(|v| v.rule == rule).and_then(|v| v.breach)
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
        let key = key_average();
        assert_eq!(breached_with(&spike, &key), [Rule::Spike]);
        assert!(breached_with(&Activity { calls_before: 4, ..spike }, &key).is_empty(), "no average yet");
        let five = Activity { calls_before: 5, served_before: usdc(10_000), ..spike };
        assert_eq!(breached_with(&five, &key), [Rule::Spike]);
        assert_eq!(breached(&Activity { calls_last_minute: 101, ..activity() }), [Rule::Rate]);
        assert!(breached(&Activity { calls_last_minute: 100, ..activity() }).is_empty());
        assert_eq!(breached(&Activity { served_after: usdc(900_001), ..activity() }), [Rule::LowBalance]);
        assert!(breached(&Activity { served_after: usdc(900_000), ..activity() }).is_empty(), "exactly 10% left");
    }

    #[test]
    fn reasons_say_why_with_the_numbers() {
        let a = Activity { calls_last_minute: 150, served_after: usdc(950_000), ..activity() };
        let v = evaluate(&a, ROUTE, &RuleSettings::default());
        let reason = |i: usize| v[i].breach.as_ref().map(|b| b.reason.clone());
        assert_eq!(reason(1).as_deref(), Some("150 calls in the last minute, more than 100"));
        assert_eq!(reason(2).as_deref(), Some("0.05 USDC of the 1 USDC limit left, under 10%"));
        let spike = breach(&Activity { charge: usdc(50_000), ..activity() }, &key_average(), Rule::Spike);
        assert_eq!(
            spike.map(|b| b.reason).as_deref(),
            Some("a charge of 0.05 USDC is more than 10× the key's average of 0.002 USDC")
        );
        let spike = breach(&Activity { charge: usdc(50_000), ..activity() }, &RuleSettings::default(), Rule::Spike);
        assert_eq!(
            spike.map(|b| b.reason).as_deref(),
            Some("a charge of 0.05 USDC is more than 10× the average on POST /v1/chat of 0.002 USDC")
        );
    }

    #[test]
    fn a_breach_names_the_setting_in_force_and_the_least_that_would_not_have_fired() {
        let seed = RuleSettings::default();
        // Spike: 0.05 against an average of 0.002 is 25×: a multiple of 25 keeps quiet, 24 fires.
        let a = Activity { charge: usdc(50_000), ..activity() };
        let b = breach(&a, &seed, Rule::Spike);
        assert_eq!(b.as_ref().map(|b| b.threshold), Some(Setting::SpikeMultiple(10)));
        assert_eq!(b.and_then(|b| b.would_not_fire), Some(Setting::SpikeMultiple(25)));
        assert!(breach(&a, &RuleSettings { spike_multiple: 25, ..seed.clone() }, Rule::Spike).is_none());
        assert!(breach(&a, &RuleSettings { spike_multiple: 24, ..seed.clone() }, Rule::Spike).is_some());
        // Not a whole multiple: 0.050001 needs 26.
        let a = Activity { charge: usdc(50_001), ..activity() };
        assert_eq!(breach(&a, &seed, Rule::Spike).and_then(|b| b.would_not_fire), Some(Setting::SpikeMultiple(26)));
        assert!(breach(&a, &RuleSettings { spike_multiple: 26, ..seed.clone() }, Rule::Spike).is_none());
        // An average of zero: no multiple keeps quiet.
        let free = Activity { served_before: Usdc::ZERO, route_served_before: Usdc::ZERO, ..a };
        let b = breach(&free, &seed, Rule::Spike);
        assert!(b.is_some_and(|b| b.would_not_fire.is_none()));
        // Rate: 101 calls need a threshold of 101.
        let a = Activity { calls_last_minute: 101, ..activity() };
        assert_eq!(breach(&a, &seed, Rule::Rate).and_then(|b| b.would_not_fire), Some(Setting::CallsPerMinute(101)));
        assert!(breach(&a, &RuleSettings { calls_per_minute: 101, ..seed.clone() }, Rule::Rate).is_none());
        // Low balance: 9.99% left is quiet at 9%, fires at 10%.
        let a = Activity { served_after: usdc(900_100), ..activity() };
        let b = breach(&a, &seed, Rule::LowBalance);
        assert_eq!(b.as_ref().map(|b| b.threshold), Some(Setting::LowBalancePercent(10)));
        assert_eq!(b.and_then(|b| b.would_not_fire), Some(Setting::LowBalancePercent(9)));
        assert!(breach(&a, &RuleSettings { low_balance_percent: 9, ..seed }, Rule::LowBalance).is_none());
    }

    #[test]
    fn the_setting_that_would_not_have_fired_keeps_quiet_and_one_step_less_fires() {
        // A sweep over charges and averages: the suggestion is exact, never just "enough".
        let seed = RuleSettings::default();
        for average in [1_u64, 3, 7, 1_000, 2_345] {
            for charge in [11 * average, 11 * average + 1, 97 * average - 1, 250 * average + 3] {
                let a = Activity {
                    charge: usdc(charge),
                    served_before: usdc(average * 10),
                    route_served_before: usdc(average * 10),
                    ..activity()
                };
                let Some(Breach { would_not_fire: Some(Setting::SpikeMultiple(m)), .. }) =
                    breach(&a, &seed, Rule::Spike)
                else {
                    panic!("a charge of {charge} over an average of {average} is a spike with a quiet multiple");
                };
                assert!(breach(&a, &RuleSettings { spike_multiple: m, ..seed.clone() }, Rule::Spike).is_none());
                assert!(breach(&a, &RuleSettings { spike_multiple: m - 1, ..seed.clone() }, Rule::Spike).is_some());
            }
        }
        for (limit, served) in [(1_000_000_u64, 999_999_u64), (3, 3), (70, 64), (1_000, 901), (999_999, 900_000)] {
            let a = Activity { limit: usdc(limit), served_after: usdc(served), ..activity() };
            let Some(Breach { would_not_fire: Some(Setting::LowBalancePercent(p)), .. }) =
                breach(&a, &seed, Rule::LowBalance)
            else {
                panic!("{served} of {limit} is low");
            };
            assert!(breach(&a, &RuleSettings { low_balance_percent: p, ..seed.clone() }, Rule::LowBalance).is_none());
            assert!(
                breach(&a, &RuleSettings { low_balance_percent: p + 1, ..seed.clone() }, Rule::LowBalance).is_some()
            );
        }
    }

    #[test]
    fn by_route_a_charge_is_judged_against_its_route_once_the_route_has_an_average() {
        let by_route = RuleSettings::default();
        assert!(by_route.spike_by_route, "the shipped default");
        // An image route at 0.05 among chat calls at 0.002: 25× the key's average.
        let image = Activity {
            charge: usdc(50_000),
            calls_before: 100,
            served_before: usdc(200_000 + 5 * 50_000),
            route_calls_before: 5,
            route_served_before: usdc(5 * 50_000),
            ..activity()
        };
        // Key average 0.0045: 0.05 is 11× it.
        assert_eq!(breached_with(&image, &key_average()), [Rule::Spike]);
        assert!(breached_with(&image, &by_route).is_empty(), "0.05 is the route's average");
        let reason = breach(&Activity { charge: usdc(500_001), ..image }, &by_route, Rule::Spike).map(|b| b.reason);
        assert_eq!(
            reason.as_deref(),
            Some("a charge of 0.500001 USDC is more than 10× the average on POST /v1/chat of 0.05 USDC")
        );
        // Four charges on the route are no average yet: the key's judges, as without by_route.
        let new_route = Activity { route_calls_before: 4, route_served_before: usdc(4 * 50_000), ..image };
        assert_eq!(breached_with(&new_route, &by_route), [Rule::Spike]);
        assert_eq!(new_route.spike_average(&by_route), Some((usdc(4_500), false)));
        assert_eq!(image.spike_average(&key_average()), Some((usdc(4_500), false)));
        assert_eq!(image.spike_average(&by_route), Some((usdc(50_000), true)));
        assert_eq!(Activity { calls_before: 4, route_calls_before: 4, ..image }.spike_average(&by_route), None);
    }

    #[test]
    fn the_allowance_list_silences_only_the_spike_rule_on_its_routes_and_amounts() {
        let spike = Activity { charge: usdc(50_000), calls_last_minute: 101, ..activity() };
        let listed = RuleSettings { spike_ignore_routes: vec!["post /v1/chat".to_owned()], ..RuleSettings::default() };
        assert_eq!(breached_with(&spike, &listed), [Rule::Rate], "the route is listed (method in any case)");
        let other = RuleSettings { spike_ignore_routes: vec!["POST /v1/chat/x".to_owned()], ..RuleSettings::default() };
        assert_eq!(breached_with(&spike, &other), [Rule::Spike, Rule::Rate]);
        let small = |up_to| RuleSettings { spike_ignore_up_to: usdc(up_to), ..RuleSettings::default() };
        assert_eq!(breached_with(&spike, &small(50_000)), [Rule::Rate], "exactly the amount allowed");
        assert_eq!(breached_with(&spike, &small(49_999)), [Rule::Spike, Rule::Rate], "one base unit over");
    }

    #[test]
    fn a_rule_switched_off_is_not_judged_and_a_firing_one_recovers() {
        let a = Activity { charge: usdc(50_000), calls_last_minute: 101, served_after: usdc(950_000), ..activity() };
        assert_eq!(breached(&a), [Rule::Spike, Rule::Rate, Rule::LowBalance]);
        let off = RuleSettings::default().with(&RuleOverrides {
            spike_mode: Some(RuleMode::Off),
            low_balance_mode: Some(RuleMode::Off),
            ..RuleOverrides::default()
        });
        assert_eq!(breached_with(&a, &off), [Rule::Rate]);
        let v = evaluate(&a, ROUTE, &off);
        assert_eq!(transitions(&[Rule::Spike], &v)[0], Transition::Recovered { rule: Rule::Spike });
        assert_eq!(RuleSettings::default().with_mode(RuleMode::Shadow).mode(Rule::LowBalance), RuleMode::Shadow);
    }

    #[test]
    fn overrides_layer_field_by_field_and_are_checked_at_their_bounds() {
        let owner = RuleOverrides { spike_multiple: Some(20), calls_per_minute: Some(300), ..RuleOverrides::default() };
        let key = RuleOverrides {
            calls_per_minute: Some(50),
            rate_mode: Some(RuleMode::Shadow),
            spike_ignore_routes: Some(vec!["POST /v1/images".to_owned()]),
            spike_ignore_up_to: Some(usdc(7)),
            spike_by_route: Some(true),
            low_balance_percent: Some(0),
            low_balance_mode: Some(RuleMode::Off),
            spike_mode: Some(RuleMode::Shadow),
            ..RuleOverrides::default()
        };
        let s = RuleSettings::default().with(&owner).with(&key);
        assert_eq!((s.spike_multiple, s.calls_per_minute, s.rate_mode), (20, 50, RuleMode::Shadow));
        assert_eq!(s.spike_ignore_routes, ["POST /v1/images"]);
        assert_eq!((s.spike_ignore_up_to, s.spike_by_route, s.low_balance_percent), (usdc(7), true, 0));
        assert_eq!((s.spike_mode, s.low_balance_mode), (RuleMode::Shadow, RuleMode::Off));
        assert_eq!(RuleSettings::default().with(&RuleOverrides::default()), RuleSettings::default());
        assert!(RuleOverrides::default().is_empty() && !owner.is_empty());

        let check = |o: RuleOverrides| o.validated().map(|_| ()).map_err(|e| e.to_string());
        let o = RuleOverrides::default;
        assert_eq!(check(RuleOverrides { spike_multiple: Some(1), ..o() }), Ok(()));
        assert_eq!(check(RuleOverrides { spike_multiple: Some(MAX_SPIKE_MULTIPLE), ..o() }), Ok(()));
        assert_eq!(
            check(RuleOverrides { spike_multiple: Some(0), ..o() }),
            Err("spikeMultiple must be between 1 and 1000000, not 0".to_owned())
        );
        assert!(check(RuleOverrides { spike_multiple: Some(MAX_SPIKE_MULTIPLE + 1), ..o() }).is_err());
        assert_eq!(check(RuleOverrides { calls_per_minute: Some(1), ..o() }), Ok(()));
        assert_eq!(check(RuleOverrides { calls_per_minute: Some(MAX_CALLS_PER_MINUTE), ..o() }), Ok(()));
        assert!(check(RuleOverrides { calls_per_minute: Some(0), ..o() }).is_err());
        assert!(check(RuleOverrides { calls_per_minute: Some(MAX_CALLS_PER_MINUTE + 1), ..o() }).is_err());
        assert_eq!(check(RuleOverrides { low_balance_percent: Some(100), ..o() }), Ok(()));
        assert!(check(RuleOverrides { low_balance_percent: Some(101), ..o() }).is_err());
        let routes = |r: &[&str]| RuleOverrides {
            spike_ignore_routes: Some(r.iter().map(|s| (*s).to_owned()).collect()),
            ..o()
        };
        assert_eq!(
            routes(&[" post /v1/images "]).validated().map(|o| o.spike_ignore_routes),
            Ok(Some(vec!["POST /v1/images".to_owned()]))
        );
        for bad in ["/v1/images", "POST v1", "POST /a b", "", "P0ST /x"] {
            assert!(check(routes(&[bad])).is_err(), "{bad:?} is no route");
        }
        assert_eq!(check(routes(&["GET /a"; MAX_IGNORED_ROUTES])), Ok(()));
        assert!(check(routes(&["GET /a"; MAX_IGNORED_ROUTES + 1])).is_err());
        let json: Result<RuleOverrides, _> = serde_json::from_str(r#"{"spikeMultiple": 3, "rateMode": "off"}"#);
        assert_eq!(json.ok(), Some(RuleOverrides { spike_multiple: Some(3), rate_mode: Some(RuleMode::Off), ..o() }));
        assert!(
            serde_json::from_str::<RuleOverrides>(r#"{"spikeMultiplier": 3}"#).is_err(),
            "unknown fields are refused"
        );
    }

    #[test]
    fn the_suggested_rate_is_half_as_many_again_as_the_busiest_minute_within_bounds() {
        let suggested = [0, 13, 14, 30, 31, 6_665, 6_666, 6_667, u32::MAX].map(suggested_calls_per_minute);
        assert_eq!(suggested, [20, 20, 21, 45, 47, 9_998, 9_999, 9_999, 9_999]);
    }

    #[test]
    fn a_crossing_fires_once_and_recovers_once() {
        let rate = |n| evaluate(&Activity { calls_last_minute: n, ..activity() }, ROUTE, &RuleSettings::default());
        let fired = transitions(&[], &rate(101));
        assert!(matches!(fired.as_slice(), [Transition::Fired { rule: Rule::Rate, .. }]));
        assert!(transitions(&[Rule::Rate], &rate(150)).is_empty(), "still breached: no second alert");
        assert_eq!(transitions(&[Rule::Rate], &rate(3)), [Transition::Recovered { rule: Rule::Rate }]);
        assert!(transitions(&[], &rate(3)).is_empty());
        assert!(Rule::Rate.freezes() && Rule::Spike.freezes() && !Rule::LowBalance.freezes());
        assert_eq!("low_balance".parse(), Ok(Rule::LowBalance));
        assert_eq!(
            serde_json::to_string(&Setting::CallsPerMinute(4)).ok().as_deref(),
            Some(r#"{"setting":"callsPerMinute","value":4}"#)
        );
        // The names stored with alerts and shown to people.
        let modes = [RuleMode::Enforce, RuleMode::Shadow, RuleMode::Off];
        assert_eq!(modes.map(RuleMode::as_str), ["enforce", "shadow", "off"]);
        for mode in modes {
            assert_eq!(serde_json::to_string(&mode).ok(), Some(format!("\"{}\"", mode.as_str())));
        }
    }
}
