//! `opentab rules show|set|reset [--key KEY]`: the owner's rule settings through opentab's REST
//! API: their defaults for every key, or one key's overrides. `set` changes only the settings
//! named on its command line (`--inherit FIELD` drops one); every change is audited, and the
//! gateways judge the key's next charge by it.

use std::io::Write;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use opentab_core::Usdc;
use opentab_core::rules::{RuleMode, RuleOverrides};
use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;

use crate::client::{Api, path_segment};
use crate::output::{now, table, when};
use crate::owner::OwnerArgs;

/// `opentab rules …`
#[derive(Debug, Args)]
pub(crate) struct RulesArgs {
    #[command(flatten)]
    owner: OwnerArgs,
    #[command(subcommand)]
    command: RulesCommand,
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// The settings in force, where each comes from (seed, your defaults, the key) and their
    /// history.
    Show {
        /// One key's (default: your defaults for every key).
        #[arg(long)]
        key: Option<String>,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change the settings named here (your defaults, or one key's with --key); the others stay.
    Set(SetArgs),
    /// Drop every setting of your defaults (or of --key): inherit again.
    Reset {
        /// One key's (default: your defaults).
        #[arg(long)]
        key: Option<String>,
    },
}

#[derive(Debug, Args)]
struct SetArgs {
    /// One key's settings (default: your defaults for every key).
    #[arg(long)]
    key: Option<String>,
    /// A charge above this many times the average is a spike (seed: 10).
    #[arg(long, value_name = "N")]
    spike_multiple: Option<u64>,
    /// What a spike does: enforce (freeze), shadow (alert only) or off.
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    spike_mode: Option<RuleMode>,
    /// Judge a charge against its route's own average once the route has one (true or false).
    #[arg(long, value_name = "BOOL")]
    spike_by_route: Option<bool>,
    /// A route the spike rule ignores (`"POST /v1/images"`); repeat for more. Replaces the list.
    #[arg(long = "spike-ignore-route", value_name = "ROUTE")]
    spike_ignore_routes: Vec<String>,
    /// Charges of at most this much (USDC) the spike rule ignores.
    #[arg(long, value_name = "USDC", value_parser = parse_amount)]
    spike_ignore_up_to: Option<Usdc>,
    /// More calls than this in a sliding minute is too many (seed: 100).
    #[arg(long, value_name = "N")]
    calls_per_minute: Option<u32>,
    /// What too many calls do: enforce, shadow or off.
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    rate_mode: Option<RuleMode>,
    /// Less than this percentage of the limit left warns (seed: 10).
    #[arg(long, value_name = "PERCENT")]
    low_balance_percent: Option<u64>,
    /// What a low balance does: enforce or shadow (both warn), or off.
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    low_balance_mode: Option<RuleMode>,
    /// Drop this setting so it is inherited again; repeat for more.
    #[arg(long, value_name = "SETTING")]
    inherit: Vec<Setting>,
}

/// A setting's name on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Setting {
    SpikeMultiple,
    SpikeMode,
    SpikeByRoute,
    SpikeIgnoreRoutes,
    SpikeIgnoreUpTo,
    CallsPerMinute,
    RateMode,
    LowBalancePercent,
    LowBalanceMode,
}

fn parse_mode(text: &str) -> Result<RuleMode, String> {
    match text {
        "enforce" => Ok(RuleMode::Enforce),
        "shadow" => Ok(RuleMode::Shadow),
        "off" => Ok(RuleMode::Off),
        _ => Err(format!("{text:?} is not a mode: enforce, shadow or off")),
    }
}

fn parse_amount(text: &str) -> Result<Usdc, String> {
    Usdc::parse_decimal(text.trim()).map_err(|e| e.to_string())
}

/// The API's view of the settings.
#[derive(Debug, Deserialize)]
struct RulesView {
    effective: Value,
    owner: RuleOverrides,
    key: Option<RuleOverrides>,
    history: Vec<Change>,
    suggestion: Option<Suggestion>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Suggestion {
    calls_per_minute: u32,
    busiest_minute: u32,
}

#[derive(Debug, Deserialize)]
struct Change {
    at: u64,
    action: String,
    detail: String,
}

pub(crate) async fn run(args: RulesArgs) -> anyhow::Result<()> {
    let owner = args.owner.owner()?;
    let api = Api::sign_in(&args.owner.url(), &owner).await?;
    match args.command {
        RulesCommand::Show { key, json } => {
            let path = path(key.as_deref());
            let text = api.call_text(Method::GET, &path, None::<&()>).await.context("reading the rule settings")?;
            if json {
                writeln!(std::io::stdout().lock(), "{}", text.trim_end())?;
                return Ok(());
            }
            let view: RulesView =
                serde_json::from_str(&text).with_context(|| format!("unexpected answer to GET {path}: {text}"))?;
            print(&view, key.as_deref())
        }
        RulesCommand::Set(set) => {
            anyhow::ensure!(
                apply(RuleOverrides::default(), &set) != RuleOverrides::default() || !set.inherit.is_empty(),
                "name a setting to change, e.g. --calls-per-minute 400 (opentab rules set --help lists them)"
            );
            let path = path(set.key.as_deref());
            let view: RulesView =
                api.call(Method::GET, &path, None::<&()>).await.context("reading the rule settings")?;
            let current = if set.key.is_some() { view.key.unwrap_or_default() } else { view.owner };
            let changed = apply(current, &set);
            let view: RulesView =
                api.call(Method::PUT, &path, Some(&changed)).await.context("changing the rule settings")?;
            print(&view, set.key.as_deref())
        }
        RulesCommand::Reset { key } => {
            let path = path(key.as_deref());
            let view: RulesView = api
                .call(Method::PUT, &path, Some(&RuleOverrides::default()))
                .await
                .context("resetting the rule settings")?;
            print(&view, key.as_deref())
        }
    }
}

fn path(key: Option<&str>) -> String {
    match key {
        Some(key) => format!("/api/session-keys/{}/rules", path_segment(key)),
        None => "/api/rules".to_owned(),
    }
}

/// `current` with what `set` names changed.
fn apply(mut o: RuleOverrides, set: &SetArgs) -> RuleOverrides {
    fn put<T: Clone>(slot: &mut Option<T>, value: Option<&T>) {
        if let Some(value) = value {
            *slot = Some(value.clone());
        }
    }
    put(&mut o.spike_multiple, set.spike_multiple.as_ref());
    put(&mut o.spike_mode, set.spike_mode.as_ref());
    put(&mut o.spike_by_route, set.spike_by_route.as_ref());
    if !set.spike_ignore_routes.is_empty() {
        o.spike_ignore_routes = Some(set.spike_ignore_routes.clone());
    }
    put(&mut o.spike_ignore_up_to, set.spike_ignore_up_to.as_ref());
    put(&mut o.calls_per_minute, set.calls_per_minute.as_ref());
    put(&mut o.rate_mode, set.rate_mode.as_ref());
    put(&mut o.low_balance_percent, set.low_balance_percent.as_ref());
    put(&mut o.low_balance_mode, set.low_balance_mode.as_ref());
    for setting in &set.inherit {
        match setting {
            Setting::SpikeMultiple => o.spike_multiple = None,
            Setting::SpikeMode => o.spike_mode = None,
            Setting::SpikeByRoute => o.spike_by_route = None,
            Setting::SpikeIgnoreRoutes => o.spike_ignore_routes = None,
            Setting::SpikeIgnoreUpTo => o.spike_ignore_up_to = None,
            Setting::CallsPerMinute => o.calls_per_minute = None,
            Setting::RateMode => o.rate_mode = None,
            Setting::LowBalancePercent => o.low_balance_percent = None,
            Setting::LowBalanceMode => o.low_balance_mode = None,
        }
    }
    o
}

fn print(view: &RulesView, key: Option<&str>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match key {
        Some(key) => writeln!(out, "rules for session key {key}")?,
        None => writeln!(out, "your rule defaults (every key without its own)")?,
    }
    let owner = serde_json::to_value(&view.owner)?;
    let mine = view.key.as_ref().map(serde_json::to_value).transpose()?;
    let from = |field: &str| {
        if mine.as_ref().is_some_and(|k| k.get(field).is_some()) {
            "key"
        } else if owner.get(field).is_some() {
            "your defaults"
        } else {
            "seed"
        }
    };
    let shown = |field: &str| -> String {
        let value = &view.effective[field];
        match (field, value) {
            ("spikeIgnoreUpTo", Value::String(units)) => {
                units.parse().map_or_else(|_| units.clone(), |u| format!("{} USDC", Usdc::from_base_units(u).display()))
            }
            ("spikeIgnoreRoutes", Value::Array(routes)) if routes.is_empty() => "none".to_owned(),
            (_, Value::Array(items)) => items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "),
            (_, Value::String(text)) => text.clone(),
            (_, other) => other.to_string(),
        }
    };
    let mut rows = vec![["  SETTING", "IN FORCE", "FROM"].map(str::to_owned).to_vec()];
    for (label, field) in [
        ("spike multiple", "spikeMultiple"),
        ("spike mode", "spikeMode"),
        ("spike by route", "spikeByRoute"),
        ("spike ignores routes", "spikeIgnoreRoutes"),
        ("spike ignores up to", "spikeIgnoreUpTo"),
        ("calls per minute", "callsPerMinute"),
        ("rate mode", "rateMode"),
        ("low-balance percent", "lowBalancePercent"),
        ("low-balance mode", "lowBalanceMode"),
    ] {
        rows.push(vec![format!("  {label}"), shown(field), from(field).to_owned()]);
    }
    table(&mut out, &rows)?;
    if let (Some(s), Some(key)) = (&view.suggestion, key) {
        writeln!(
            out,
            "suggested  calls per minute {} (its busiest minute in the last 24 hours: {} calls): \
             opentab rules set --key {key} --calls-per-minute {}",
            s.calls_per_minute, s.busiest_minute, s.calls_per_minute
        )?;
    }
    if view.history.is_empty() {
        writeln!(out, "history  none")?;
        return Ok(());
    }
    writeln!(out, "history")?;
    let now = now();
    for change in &view.history {
        writeln!(out, "  {}  {}  {}", when(change.at, now), change.action, change.detail)?;
    }
    Ok(())
}
