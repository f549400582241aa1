//! `/api/session-keys` and `/api/tabs`: the signed-in owner's keys and tabs.

use axum::Json;
use axum::extract::{Path, Query, State};
use opentab_core::{Address, KeyStatus, Usdc};
use opentab_store::{ChainStatus, KeyRecord, KeyUsage};
use serde::{Deserialize, Serialize};

use super::auth::SignedIn;
use super::{ApiError, AppState, now};

/// A key as the API shows it: terms, status and usage.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyView {
    /// The key's address.
    #[schema(value_type = String, example = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8")]
    pub address: Address,
    /// Its owner.
    #[schema(value_type = String, example = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8")]
    pub owner: Address,
    /// Its only payee.
    #[schema(value_type = String, example = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8")]
    pub payee: Address,
    /// `pending`, `active`, `not_yet_valid`, `frozen`, `revoked` or `expired`.
    #[schema(value_type = String, example = "active")]
    pub status: &'static str,
    /// Spend limit, base units.
    #[schema(value_type = String, example = "25000000")]
    pub limit: Usdc,
    /// Served from (unix seconds).
    pub valid_after: u64,
    /// Served until (unix seconds).
    pub valid_until: u64,
    /// When frozen (on-chain or off-chain), if frozen.
    pub frozen_at: Option<u64>,
    /// When revoked, if revoked.
    pub revoked_at: Option<u64>,
    /// When deleted from the default list.
    pub deleted_at: Option<u64>,
    /// What the key has spent.
    pub usage: Usage,
    /// When opentab first stored it.
    pub created_at: u64,
    /// When the gateway last charged (or voided) a call of it.
    pub last_activity_at: Option<u64>,
    /// What the gateway can still charge on this key's tab (the owner's tab with its payee):
    /// available + settled − served across the tab's keys. "0" means every call of the key is
    /// refused with `insufficient_funds` until the owner deposits.
    #[schema(value_type = String, example = "25000000")]
    pub tab_free: Usdc,
}

/// Spending of one key, base units.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// Charged for served calls. Until the gateway lands this is what settled on-chain.
    #[schema(value_type = String, example = "25000000")]
    pub served: Usdc,
    /// Paid out on-chain.
    #[schema(value_type = String, example = "25000000")]
    pub settled: Usdc,
    /// Served, not settled yet.
    #[schema(value_type = String, example = "25000000")]
    pub pending: Usdc,
    /// Limit left.
    #[schema(value_type = String, example = "25000000")]
    pub remaining: Usdc,
    /// served / limit, in percent (two decimals).
    pub percent_used: f64,
}

impl KeyView {
    pub(super) fn of(record: &KeyRecord, usage: KeyUsage, tab_free: Usdc, now: u64) -> Self {
        let served = usage.served;
        let key = &record.key;
        let status = if record.chain_status == ChainStatus::Pending {
            "pending"
        } else if key.revoked_at.is_none() && record.frozen_offchain_at.is_some() {
            "frozen"
        } else {
            match key.status(now) {
                KeyStatus::Active => "active",
                KeyStatus::NotYetValid => "not_yet_valid",
                KeyStatus::Frozen => "frozen",
                KeyStatus::Revoked => "revoked",
                KeyStatus::Expired => "expired",
            }
        };
        // A settlement can only follow service, but the ledger of another gateway may not be
        // here: never show less served than settled.
        let served = served.max(key.settled);
        let percent = if key.limit == Usdc::ZERO {
            0.0
        } else {
            // Display-only ratio; amounts themselves stay integers.
            ((served.base_units() as f64 / key.limit.base_units() as f64) * 10_000.0).round() / 100.0
        };
        Self {
            address: key.address,
            owner: key.owner,
            payee: key.payee,
            status,
            limit: key.limit,
            valid_after: key.valid_after,
            valid_until: key.valid_until,
            frozen_at: key.frozen_at.or(record.frozen_offchain_at),
            revoked_at: key.revoked_at,
            deleted_at: record.deleted_at,
            usage: Usage {
                served,
                settled: key.settled,
                pending: served.saturating_sub(key.settled),
                remaining: key.remaining(served),
                percent_used: percent,
            },
            created_at: record.created_at,
            last_activity_at: usage.last_at,
            tab_free,
        }
    }
}

/// A key's view with what the gateway served it.
pub(super) async fn view(state: &AppState, record: &KeyRecord, now: u64) -> Result<KeyView, ApiError> {
    let tab_free = state.store.tab_free(record.key.owner, record.key.payee).await?;
    Ok(KeyView::of(record, state.store.key_usage(record.key.address).await?, tab_free, now))
}

/// `GET /api/session-keys` query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Include deleted (revoked and hidden) keys.
    #[serde(default)]
    pub include_deleted: bool,
}

#[utoipa::path(get, path = "/api/session-keys", tag = "session-keys", params(ListQuery), security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = Vec<KeyView>), (status = 400, body = super::Problem, content_type = "application/problem+json"), (status = 401, body = super::Problem, content_type = "application/problem+json"),
        (status = 503, body = super::Problem, content_type = "application/problem+json")))]
pub(super) async fn list(
    State(state): State<AppState>,
    SignedIn(owner): SignedIn,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<KeyView>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid("includeDeleted", e.body_text()))?;
    let now = now();
    let keys = state.store.keys_of(owner, query.include_deleted).await?;
    let usage = state.store.usage_by_key(owner).await?;
    let mut free = std::collections::HashMap::new();
    for k in &keys {
        if let std::collections::hash_map::Entry::Vacant(slot) = free.entry(k.key.payee) {
            slot.insert(state.store.tab_free(owner, k.key.payee).await?);
        }
    }
    Ok(Json(
        keys.iter()
            .map(|k| {
                let tab_free = free.get(&k.key.payee).copied().unwrap_or_default();
                KeyView::of(k, usage.get(&k.key.address).copied().unwrap_or_default(), tab_free, now)
            })
            .collect(),
    ))
}

/// One key with its on-chain history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyDetail {
    /// The key.
    #[serde(flatten)]
    pub key: KeyView,
    /// Its settlements, oldest first.
    pub settlements: Vec<SettlementView>,
    /// The rule engine's alerts about it, newest first.
    pub alerts: Vec<AlertView>,
}

/// A rule engine alert: which rule, why, and what it did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertView {
    /// `spike`, `rate` or `low_balance`.
    pub rule: String,
    /// `enforce` or `shadow`.
    pub mode: String,
    /// Why it fired, with the numbers.
    pub reason: String,
    /// Whether the key was frozen for it.
    pub froze: bool,
    /// When it fired.
    pub fired_at: u64,
    /// When the condition cleared, if it has.
    pub recovered_at: Option<u64>,
    /// The numbers the rule saw: `charge`, `route`, `callsBefore`, `servedBefore`,
    /// `callsLastMinute`, `limit`, `servedAfter`, and for a spike `average` and `averageOf`
    /// (`route` or `key`); amounts in base units.
    #[schema(value_type = Object)]
    pub inputs: serde_json::Value,
    /// The setting in force when it fired (`{"setting": "callsPerMinute", "value": 100}`);
    /// null for alerts recorded before settings existed.
    #[schema(value_type = Option<Object>)]
    pub threshold: Option<serde_json::Value>,
    /// The least setting that would not have fired (`{"setting": "callsPerMinute", "value":
    /// 101}`); null when none would have (a spike against an average of zero) or unknown.
    #[schema(value_type = Option<Object>)]
    pub would_not_fire: Option<serde_json::Value>,
}

/// One on-chain settlement.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SettlementView {
    /// Paid by this settlement.
    #[schema(value_type = String, example = "25000000")]
    pub amount: Usdc,
    /// The key's settled total after it (the voucher's amount, or less when a short tab paid
    /// part of it; the field keeps its name for the UI).
    #[schema(value_type = String, example = "25000000")]
    pub cumulative: Usdc,
    /// The transaction.
    #[schema(value_type = String)]
    pub tx_hash: opentab_core::B256,
    /// The block.
    pub block_number: u64,
}

#[utoipa::path(get, path = "/api/session-keys/{key}", tag = "session-keys", security(("bearer" = []), ("cookie" = [])),
    params(("key" = String, Path, description = "the session key's address")),
    responses((status = 200, body = KeyDetail), (status = 400, body = super::Problem, content_type = "application/problem+json"), (status = 401, body = super::Problem, content_type = "application/problem+json"),
        (status = 404, body = super::Problem, content_type = "application/problem+json"), (status = 503, body = super::Problem, content_type = "application/problem+json")))]
pub(super) async fn get(
    State(state): State<AppState>,
    SignedIn(owner): SignedIn,
    Path(key): Path<String>,
) -> Result<Json<KeyDetail>, ApiError> {
    let key = parse_key(&key)?;
    let record = owned_key(&state, owner, key).await?;
    let settlements = state
        .store
        .key_events(key)
        .await?
        .into_iter()
        .filter_map(|e| match e.event {
            opentab_core::ValidatorEvent::Settled { amount, settled, .. } => {
                Some(SettlementView { amount, cumulative: settled, tx_hash: e.tx_hash, block_number: e.block_number })
            }
            _ => None,
        })
        .collect();
    let alerts = state
        .store
        .alerts_of(key, 50)
        .await?
        .into_iter()
        .map(|a| {
            let inputs: serde_json::Value = serde_json::from_str(&a.alert.inputs).unwrap_or_default();
            let setting = |name: &str| inputs.get(name).filter(|v| !v.is_null()).cloned();
            AlertView {
                threshold: setting("threshold"),
                would_not_fire: setting("wouldNotFire"),
                rule: a.alert.rule,
                mode: a.alert.mode,
                reason: a.alert.reason,
                froze: a.alert.froze,
                fired_at: a.fired_at,
                recovered_at: a.recovered_at,
                inputs,
            }
        })
        .collect();
    Ok(Json(KeyDetail { key: view(&state, &record, now()).await?, settlements, alerts }))
}

/// One of the owner's tabs: USDC held for one payee, which only that payee's keys draw on.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TabView {
    /// Who the tab is with.
    #[schema(value_type = String, example = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8")]
    pub payee: Address,
    /// Held, pending withdrawal included.
    #[schema(value_type = String, example = "25000000")]
    pub balance: Usdc,
    /// What the payee's gateway may still charge against: the balance less the pending
    /// withdrawal.
    #[schema(value_type = String, example = "25000000")]
    pub available: Usdc,
    /// The pending withdrawal's amount, if any.
    #[schema(value_type = Option<String>)]
    pub pending_withdrawal: Option<Usdc>,
    /// The first unix second (chain time) at which the pending withdrawal can complete.
    pub withdrawal_ready_at: Option<u64>,
    /// The owner's keys that pay this payee (and so draw on this tab).
    #[schema(value_type = Vec<String>)]
    pub keys: Vec<Address>,
}

/// The signed-in owner's tabs, and what a wallet needs to fund them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TabsView {
    /// Whose tabs.
    #[schema(value_type = String, example = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8")]
    pub owner: Address,
    /// The validator to deposit into: approve USDC for it, then call `deposit(payee, amount)`.
    #[schema(value_type = String, example = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8")]
    pub validator: Address,
    /// The token tabs hold.
    #[schema(value_type = Option<String>)]
    pub usdc: Option<Address>,
    /// The validator's chain.
    pub chain_id: u64,
    /// Seconds a withdrawal waits (the payee's grace to settle first).
    pub grace: u64,
    /// The payee this service charges for: the tab its API draws on (always listed).
    #[schema(value_type = Option<String>)]
    pub payee: Option<Address>,
    /// The owner's guardian on-chain (may freeze the owner's keys), if any.
    #[schema(value_type = Option<String>)]
    pub guardian: Option<Address>,
    /// The account this service's rule engine freezes keys on-chain with. An owner who makes
    /// it their guardian (`setGuardian`; `opentab tab guardian`) has keys that break a
    /// spike or rate rule frozen on-chain too, not only at the gateway.
    #[schema(value_type = Option<String>)]
    pub rule_guardian: Option<Address>,
    /// The tabs, this service's payee first.
    pub tabs: Vec<TabView>,
}

#[utoipa::path(get, path = "/api/tabs", tag = "tabs", security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = TabsView), (status = 401, body = super::Problem, content_type = "application/problem+json"), (status = 503, body = super::Problem, content_type = "application/problem+json")))]
pub(super) async fn tabs(State(state): State<AppState>, SignedIn(owner): SignedIn) -> Result<Json<TabsView>, ApiError> {
    Ok(Json(TabsView::load(&state, owner).await?))
}

impl TabsView {
    pub(super) async fn load(state: &AppState, owner: Address) -> Result<Self, ApiError> {
        let config = &state.config;
        let mut tabs = state.store.tabs_of(owner).await?;
        if let Some(payee) = config.payee {
            if !tabs.iter().any(|(p, _)| *p == payee) {
                tabs.push((payee, opentab_core::Tab::default()));
            }
            // This service's tab first, the others in address order.
            tabs.sort_by_key(|(p, _)| (*p != payee, *p));
        }
        let keys = state.store.keys_of(owner, false).await?;
        Ok(Self {
            owner,
            validator: config.validator,
            usdc: config.usdc,
            chain_id: config.chain_id,
            grace: config.grace_secs,
            payee: config.payee,
            guardian: state.store.guardian(owner).await?,
            rule_guardian: config.rule_guardian,
            tabs: tabs
                .into_iter()
                .map(|(payee, tab)| TabView {
                    payee,
                    balance: tab.balance,
                    available: tab.available(),
                    pending_withdrawal: tab.pending_withdrawal.map(|(amount, _)| amount),
                    withdrawal_ready_at: tab.withdrawal_ready_at(),
                    keys: keys.iter().filter(|k| k.key.payee == payee).map(|k| k.key.address).collect(),
                })
                .collect(),
        })
    }
}

pub(super) fn parse_key(text: &str) -> Result<Address, ApiError> {
    text.parse().map_err(|_| ApiError::invalid("key", format!("{text:?} is not a 0x-prefixed 20-byte address")))
}

/// The key if the signed-in owner owns it. Another owner's key is "not found", so key
/// addresses cannot be probed.
pub(super) async fn owned_key(state: &AppState, owner: Address, key: Address) -> Result<KeyRecord, ApiError> {
    match state.store.key(key).await? {
        Some(record) if record.key.owner == owner => Ok(record),
        _ => Err(ApiError::not_found(format!("no session key {key} of yours"))),
    }
}
