//! The rule settings of the signed-in owner: their defaults (`/api/rules`) and each key's
//! overrides (`/api/session-keys/{key}/rules`), with the settings in force and the audit of
//! every change. The gateways' rule engines hear of a change before their next charge.

use axum::Json;
use axum::extract::{Path, State};
use opentab_core::Address;
use opentab_core::rules::{RuleOverrides, RuleSettings, SettingError};
use opentab_store::{RULES_SET, StoredRuleSettings};
use serde::Serialize;

use super::auth::SignedIn;
use super::keys::{owned_key, parse_key};
use super::{ApiError, ApiJson, AppState, now};

/// The settings of an owner (or one of their keys): in force, and where each comes from.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RulesView {
    /// What the gateway judges by now: the seed's, the owner's defaults over them, the key's
    /// overrides over those. Fields: `spikeMultiple`, `spikeMode`, `spikeByRoute`,
    /// `spikeIgnoreRoutes`, `spikeIgnoreUpTo` (base units), `callsPerMinute`, `rateMode`,
    /// `lowBalancePercent`, `lowBalanceMode` (modes: `enforce`, `shadow`, `off`).
    #[schema(value_type = Object)]
    pub effective: RuleSettings,
    /// This deployment's settings, which nothing overrides.
    #[schema(value_type = Object)]
    pub seed: RuleSettings,
    /// The owner's defaults: only the fields they set.
    #[schema(value_type = Object)]
    pub owner: RuleOverrides,
    /// The key's overrides (key settings only): only the fields set.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub key: Option<RuleOverrides>,
    /// Every change to these settings, oldest first.
    pub history: Vec<SettingChange>,
    /// Key settings only, once the key was charged in the last 24 hours: a calls-per-minute
    /// setting fitted to its traffic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suggestion: Option<Suggestion>,
}

/// A setting suggested from a key's own traffic.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Suggestion {
    /// Half as many again as the busiest minute, at least 20.
    pub calls_per_minute: u32,
    /// The most calls the key made in any minute of the last 24 hours.
    pub busiest_minute: u32,
}

/// How far back a suggestion looks.
const SUGGEST_FROM_SECS: u64 = 86_400;

/// One change to rule settings, from the audit log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SettingChange {
    /// When (unix seconds).
    pub at: u64,
    /// Who (the owner's address).
    pub actor: String,
    /// `rules.set`, or `rules.shadow_on_unfreeze` for a rule switched to shadow as its key was
    /// unfrozen.
    pub action: String,
    /// What was set before and after (JSON: `{"before": {…}, "after": {…}}`).
    pub detail: String,
}

/// The audit action of a rule switched to shadow as its key was unfrozen.
pub(super) const SHADOW_ON_UNFREEZE: &str = "rules.shadow_on_unfreeze";

#[utoipa::path(get, path = "/api/rules", tag = "rules", security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = RulesView), (status = 401, body = super::Problem, content_type = "application/problem+json"),
        (status = 503, body = super::Problem, content_type = "application/problem+json")))]
pub(super) async fn owner_get(
    State(state): State<AppState>,
    SignedIn(owner): SignedIn,
) -> Result<Json<RulesView>, ApiError> {
    view(&state, owner, None).await.map(Json)
}

/// `PUT /api/rules`: replaces the owner's defaults (the fields left out inherit the seed's).
#[utoipa::path(put, path = "/api/rules", tag = "rules", security(("bearer" = []), ("cookie" = [])),
    request_body(content = Object, description = "the fields to set (see RulesView.effective); the others inherit"),
    responses((status = 200, body = RulesView), (status = 400, body = super::Problem, content_type = "application/problem+json"),
        (status = 401, body = super::Problem, content_type = "application/problem+json"), (status = 503, body = super::Problem, content_type = "application/problem+json")))]
pub(super) async fn owner_put(
    State(state): State<AppState>,
    SignedIn(owner): SignedIn,
    ApiJson(body): ApiJson<Body>,
) -> Result<Json<RulesView>, ApiError> {
    let overrides = checked(body)?;
    state.store.set_rule_settings(owner, None, &overrides, RULES_SET, now()).await?;
    view(&state, owner, None).await.map(Json)
}

#[utoipa::path(get, path = "/api/session-keys/{key}/rules", tag = "rules", security(("bearer" = []), ("cookie" = [])),
    params(("key" = String, Path, description = "the session key's address")),
    responses((status = 200, body = RulesView), (status = 400, body = super::Problem, content_type = "application/problem+json"),
        (status = 401, body = super::Problem, content_type = "application/problem+json"), (status = 404, body = super::Problem, content_type = "application/problem+json"),
        (status = 503, body = super::Problem, content_type = "application/problem+json")))]
pub(super) async fn key_get(
    State(state): State<AppState>,
    SignedIn(owner): SignedIn,
    Path(key): Path<String>,
) -> Result<Json<RulesView>, ApiError> {
    let key = parse_key(&key)?;
    owned_key(&state, owner, key).await?;
    view(&state, owner, Some(key)).await.map(Json)
}

/// `PUT /api/session-keys/{key}/rules`: replaces the key's overrides (the fields left out
/// inherit the owner's defaults).
#[utoipa::path(put, path = "/api/session-keys/{key}/rules", tag = "rules", security(("bearer" = []), ("cookie" = [])),
    params(("key" = String, Path, description = "the session key's address")),
    request_body(content = Object, description = "the fields to set (see RulesView.effective); the others inherit"),
    responses((status = 200, body = RulesView), (status = 400, body = super::Problem, content_type = "application/problem+json"),
        (status = 401, body = super::Problem, content_type = "application/problem+json"), (status = 404, body = super::Problem, content_type = "application/problem+json"),
        (status = 503, body = super::Problem, content_type = "application/problem+json")))]
pub(super) async fn key_put(
    State(state): State<AppState>,
    SignedIn(owner): SignedIn,
    Path(key): Path<String>,
    ApiJson(body): ApiJson<Body>,
) -> Result<Json<RulesView>, ApiError> {
    let key = parse_key(&key)?;
    owned_key(&state, owner, key).await?;
    let overrides = checked(body)?;
    state.store.set_rule_settings(owner, Some(key), &overrides, RULES_SET, now()).await?;
    view(&state, owner, Some(key)).await.map(Json)
}

/// Switches `rule` to shadow for `owner`'s `key`, keeping its other overrides (audited as
/// [`SHADOW_ON_UNFREEZE`]).
pub(super) async fn shadow(state: &AppState, owner: Address, key: Address, rule: &str) -> Result<(), ApiError> {
    let rule: opentab_core::rules::Rule = rule
        .parse()
        .map_err(|()| ApiError::invalid("shadowRule", format!("{rule:?} is not a rule: spike, rate or low_balance")))?;
    let (_, mine) = stored(state, owner, Some(key)).await?;
    let mut overrides = mine.unwrap_or_default();
    let shadow = Some(opentab_core::rules::RuleMode::Shadow);
    match rule {
        opentab_core::rules::Rule::Spike => overrides.spike_mode = shadow,
        opentab_core::rules::Rule::Rate => overrides.rate_mode = shadow,
        opentab_core::rules::Rule::LowBalance => overrides.low_balance_mode = shadow,
    }
    state.store.set_rule_settings(owner, Some(key), &overrides, SHADOW_ON_UNFREEZE, now()).await?;
    Ok(())
}

/// A settings body: a JSON object. (Taken as a map first: serde would also read a struct from
/// an array of its fields in order, which no client means.)
type Body = serde_json::Map<String, serde_json::Value>;

fn checked(body: Body) -> Result<RuleOverrides, ApiError> {
    let overrides: RuleOverrides =
        serde_json::from_value(serde_json::Value::Object(body)).map_err(|err| ApiError::bad_body(err.to_string()))?;
    overrides.validated().map_err(|err| {
        let field = match &err {
            SettingError::OutOfRange { field, .. } => *field,
            SettingError::TooManyRoutes(_) | SettingError::NotARoute(_) => "spikeIgnoreRoutes",
        };
        ApiError::invalid(field, err.to_string())
    })
}

/// The owner's defaults and (with `key`) the key's overrides.
async fn stored(
    state: &AppState,
    owner: Address,
    key: Option<Address>,
) -> Result<(RuleOverrides, Option<RuleOverrides>), ApiError> {
    let all = state.store.rule_settings_of(owner).await?;
    let of = |k: Option<Address>| all.iter().find(|s: &&StoredRuleSettings| s.key == k).map(|s| s.overrides.clone());
    Ok((of(None).unwrap_or_default(), key.map(|k| of(Some(k)).unwrap_or_default())))
}

async fn view(state: &AppState, owner: Address, key: Option<Address>) -> Result<RulesView, ApiError> {
    let seed = state.config.rule_seed.clone();
    let (defaults, mine) = stored(state, owner, key).await?;
    let mut effective = seed.clone().with(&defaults);
    if let Some(mine) = &mine {
        effective = effective.with(mine);
    }
    let subject = format!("{:#x}", key.unwrap_or(owner));
    let history = state
        .store
        .audit_of(&subject)
        .await?
        .into_iter()
        .filter(|e| e.action.starts_with("rules."))
        .map(|e| SettingChange { at: e.at, actor: e.actor, action: e.action, detail: e.detail })
        .collect();
    let suggestion = match key {
        Some(key) => {
            let busiest = state.store.busiest_minute(key, now().saturating_sub(SUGGEST_FROM_SECS)).await?;
            (busiest > 0).then(|| Suggestion {
                calls_per_minute: opentab_core::rules::suggested_calls_per_minute(busiest),
                busiest_minute: busiest,
            })
        }
        None => None,
    };
    Ok(RulesView { effective, seed, owner: defaults, key: mine, history, suggestion })
}
