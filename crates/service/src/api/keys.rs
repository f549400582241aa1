//! `/api/session-keys` and `/api/escrow`: the signed-in owner's keys and escrow.

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
    pub(super) fn of(record: &KeyRecord, usage: KeyUsage, now: u64) -> Self {
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
        }
    }
}

/// A key's view with what the gateway served it.
pub(super) async fn view(state: &AppState, record: &KeyRecord, now: u64) -> Result<KeyView, ApiError> {
    Ok(KeyView::of(record, state.store.key_usage(record.key.address).await?, now))
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
    Ok(Json(keys.iter().map(|k| KeyView::of(k, usage.get(&k.key.address).copied().unwrap_or_default(), now)).collect()))
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
}

/// One on-chain settlement.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SettlementView {
    /// Paid by this settlement.
    #[schema(value_type = String, example = "25000000")]
    pub amount: Usdc,
    /// The key's settled total after it.
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
            opentab_core::ValidatorEvent::Settled { amount, cumulative, .. } => {
                Some(SettlementView { amount, cumulative, tx_hash: e.tx_hash, block_number: e.block_number })
            }
            _ => None,
        })
        .collect();
    let alerts = state
        .store
        .alerts_of(key, 50)
        .await?
        .into_iter()
        .map(|a| AlertView {
            rule: a.alert.rule,
            mode: a.alert.mode,
            reason: a.alert.reason,
            froze: a.alert.froze,
            fired_at: a.fired_at,
            recovered_at: a.recovered_at,
        })
        .collect();
    Ok(Json(KeyDetail { key: view(&state, &record, now()).await?, settlements, alerts }))
}

/// The owner's escrow.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EscrowView {
    /// Whose escrow.
    #[schema(value_type = String, example = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8")]
    pub owner: Address,
    /// Held, pending withdrawal included.
    #[schema(value_type = String, example = "25000000")]
    pub balance: Usdc,
    /// What the gateway may still charge against.
    #[schema(value_type = String, example = "25000000")]
    pub available: Usdc,
    /// The pending withdrawal's amount, if any.
    #[schema(value_type = Option<String>)]
    pub pending_withdrawal: Option<Usdc>,
    /// When it may leave.
    pub withdrawal_ready_at: Option<u64>,
    /// The validator to deposit into (approve USDC for it, then call `deposit(amount)`).
    #[schema(value_type = String, example = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8")]
    pub deposit_to: Address,
    /// The owner's guardian on-chain (may freeze the owner's keys), if any.
    #[schema(value_type = Option<String>)]
    pub guardian: Option<Address>,
    /// The account this service's rule engine freezes keys on-chain with. An owner who makes
    /// it their guardian (`setGuardian`; `opentab escrow guardian`) has keys that break a
    /// spike or rate rule frozen on-chain too, not only at the gateway.
    #[schema(value_type = Option<String>)]
    pub rule_guardian: Option<Address>,
}

#[utoipa::path(get, path = "/api/escrow", tag = "escrow", security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = EscrowView), (status = 401, body = super::Problem, content_type = "application/problem+json"), (status = 503, body = super::Problem, content_type = "application/problem+json")))]
pub(super) async fn escrow(
    State(state): State<AppState>,
    SignedIn(owner): SignedIn,
) -> Result<Json<EscrowView>, ApiError> {
    let escrow = state.store.escrow(owner).await?;
    Ok(Json(EscrowView::of(owner, &escrow, &state.config)))
}

impl EscrowView {
    pub(super) fn of(owner: Address, escrow: &opentab_core::Escrow, config: &super::ApiConfig) -> Self {
        Self {
            owner,
            balance: escrow.balance,
            available: escrow.available(),
            pending_withdrawal: escrow.pending_withdrawal.map(|(amount, _)| amount),
            withdrawal_ready_at: escrow.pending_withdrawal.map(|(_, at)| at),
            deposit_to: config.validator,
            guardian: escrow.guardian,
            rule_guardian: config.rule_guardian,
        }
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
