//! The owner's signed actions, relayed on-chain so owners pay no gas: create (register),
//! freeze, unfreeze and delete (revoke). Each is two calls: `GET …` answers the EIP-712 typed
//! data to sign (`eth_signTypedData_v4`), `POST`/`DELETE` takes the signature and relays it.
//! A freeze takes effect for the gateway at once, before its transaction is mined. Keys are
//! also created many at once (`…/batch/prepare`, `…/batch`): one signature, one relayed
//! `registerSessionKeysWithSig`, all or nothing.

use std::collections::HashSet;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use opentab_chain::bindings::SessionKeyValidator::SessionKeyValidatorErrors as E;
use opentab_chain::{KeyAction, KeyTerms, TxOutcome, Validator};
use opentab_core::eip712::{RegisterSessionKey, RegisterSessionKeys};
use opentab_core::{Address, B256, Signature, SigningKey, U256, Usdc};
use opentab_store::{AuditEntry, NewKey, RELAY_SENT};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::auth::SignedIn;
use super::keys::{KeyView, owned_key, parse_key, view};
use super::{ApiError, ApiJson, AppState, now};

/// How long a signature handed out for signing stays relayable.
const SIGNATURE_TTL_SECS: u64 = 15 * 60;
/// How long a request waits for its transaction to be mined before answering `pending`.
const MINING_WAIT: Duration = Duration::from_secs(30);
/// The most keys one batch registers: one transaction of about 18 million gas (71,600 a key),
/// within a block of anvil or Polygon PoS (30 million or more).
pub const MAX_BATCH_KEYS: usize = 250;

/// `POST /api/session-keys/prepare` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrepareKey {
    /// Spend limit in base units (`"25000000"` = 25 USDC).
    #[schema(value_type = String, example = "25000000")]
    pub limit: Usdc,
    /// Unix time from which the key may no longer be served.
    pub valid_until: u64,
    /// Unix time from which it may be served (default: now).
    #[serde(default)]
    pub valid_after: Option<u64>,
    /// The key's address, if the agent made its own key; omitted, opentab generates one.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub session_key: Option<Address>,
}

/// `POST /api/session-keys/prepare` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreparedKey {
    /// The key's address.
    #[schema(value_type = String)]
    pub session_key: Address,
    /// The generated key's private key: shown this once, never stored. Absent when the caller
    /// supplied the address.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub private_key: Option<B256>,
    /// Sign this with the owner's wallet (`eth_signTypedData_v4`), then `POST /api/session-keys`.
    #[schema(value_type = Object)]
    pub typed_data: Value,
}

/// `POST /api/session-keys` body: the registration message as prepared, and its signature.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateKey {
    /// `typedData.message` from the prepare step.
    pub message: RegistrationMessage,
    /// The owner's signature over it.
    #[schema(value_type = String, pattern = "^0x[0-9a-fA-F]{130}$")]
    pub signature: Signature,
}

/// The `RegisterSessionKey` message in JSON (amounts and big numbers as decimal strings).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistrationMessage {
    /// The owner.
    #[schema(value_type = String)]
    pub owner: Address,
    /// The key.
    #[schema(value_type = String)]
    pub session_key: Address,
    /// The payee.
    #[schema(value_type = String)]
    pub payee: Address,
    /// Spend limit, base units.
    #[schema(value_type = String, example = "25000000")]
    pub limit: Usdc,
    /// Served from.
    pub valid_after: u64,
    /// Served until.
    pub valid_until: u64,
    /// The owner's nonce.
    pub nonce: String,
    /// Signature deadline (unix seconds).
    pub deadline: u64,
}

/// `POST /api/session-keys/batch/prepare` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrepareBatch {
    /// The keys to create in one transaction, 1 to 250, each as `POST /api/session-keys/prepare`
    /// takes it.
    #[schema(min_items = 1, max_items = 250)]
    pub keys: Vec<PrepareKey>,
}

/// One key of a prepared batch.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreparedBatchKey {
    /// The key's address.
    #[schema(value_type = String)]
    pub session_key: Address,
    /// The generated key's private key: shown this once, never stored. Absent when the caller
    /// supplied the address.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub private_key: Option<B256>,
}

/// `POST /api/session-keys/batch/prepare` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreparedBatch {
    /// The keys, in the order asked (and signed).
    pub keys: Vec<PreparedBatchKey>,
    /// Sign this with the owner's wallet (`eth_signTypedData_v4`), then
    /// `POST /api/session-keys/batch`.
    #[schema(value_type = Object)]
    pub typed_data: Value,
}

/// `POST /api/session-keys/batch` body: the batch registration message as prepared, and its
/// signature.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateBatch {
    /// `typedData.message` from the batch prepare step.
    pub message: BatchRegistrationMessage,
    /// The owner's signature over it.
    #[schema(value_type = String, pattern = "^0x[0-9a-fA-F]{130}$")]
    pub signature: Signature,
}

/// The `RegisterSessionKeys` message in JSON (amounts and big numbers as decimal strings).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchRegistrationMessage {
    /// The owner.
    #[schema(value_type = String)]
    pub owner: Address,
    /// The keys, in order.
    #[schema(min_items = 1, max_items = 250)]
    pub keys: Vec<KeyTermsMessage>,
    /// The owner's nonce.
    pub nonce: String,
    /// Signature deadline (unix seconds).
    pub deadline: u64,
}

/// One key's terms in a `RegisterSessionKeys` message.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyTermsMessage {
    /// The key.
    #[schema(value_type = String)]
    pub session_key: Address,
    /// The payee.
    #[schema(value_type = String)]
    pub payee: Address,
    /// Spend limit, base units.
    #[schema(value_type = String, example = "25000000")]
    pub limit: Usdc,
    /// Served from.
    pub valid_after: u64,
    /// Served until.
    pub valid_until: u64,
}

/// Answer of a relayed batch creation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RelayedBatch {
    /// The keys, in the order of the batch, as opentab sees them now.
    pub keys: Vec<KeyView>,
    /// The relayed transaction.
    #[schema(value_type = Option<String>)]
    pub tx_hash: Option<B256>,
    /// `mined`, or `pending` if it was not mined within the wait (poll the keys).
    #[schema(value_type = String, example = "mined")]
    pub tx_status: &'static str,
}

/// Answer of a relayed action.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Relayed {
    /// The key after the action, as opentab sees it now.
    pub key: KeyView,
    /// The relayed transaction.
    #[schema(value_type = Option<String>)]
    pub tx_hash: Option<B256>,
    /// `mined`; `pending` if it was not mined within the wait (poll the key); `not_needed` when
    /// the key was frozen at the gateway only and unfreezing it took no transaction.
    #[schema(value_type = String, example = "mined")]
    pub tx_status: &'static str,
}

/// Body of a signed freeze, unfreeze or delete.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignedAction {
    /// The nonce from the typed data.
    pub nonce: String,
    /// The deadline from the typed data.
    pub deadline: u64,
    /// The owner's signature.
    #[schema(value_type = String, pattern = "^0x[0-9a-fA-F]{130}$")]
    pub signature: Signature,
    /// Unfreeze only: switch this rule (`spike`, `rate` or `low_balance`) to shadow for the key
    /// as it is unfrozen, so it alerts without freezing again (audited as
    /// `rules.shadow_on_unfreeze`).
    #[serde(default)]
    pub shadow_rule: Option<String>,
}

#[utoipa::path(post, path = "/api/session-keys/prepare", tag = "session-keys", request_body = PrepareKey, security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = PreparedKey), super::error::ActionProblems))]
pub(super) async fn prepare(
    State(state): State<AppState>,
    SignedIn(owner): SignedIn,
    ApiJson(body): ApiJson<PrepareKey>,
) -> Result<Json<PreparedKey>, ApiError> {
    let chain = state.chain()?;
    let now = now();
    let (terms, private_key) = prepared_terms(&state, chain, &body, now, "").await?;
    let nonce = chain.relayer.nonce_of(owner).await.map_err(chain_error)?;
    let message =
        chain.relayer.registration_message(owner, &terms, nonce, now + SIGNATURE_TTL_SECS).map_err(chain_error)?;
    Ok(Json(PreparedKey {
        session_key: terms.session_key,
        private_key,
        typed_data: registration_typed_data(chain.relayer.domain(), &message),
    }))
}

/// One key asked for, checked, with its address chosen: the caller's, or a generated key pair
/// whose private key is returned (to be shown once). `prefix` is the key's path in the body.
async fn prepared_terms(
    state: &AppState,
    chain: &ChainAccess,
    key: &PrepareKey,
    now: u64,
    prefix: &str,
) -> Result<(KeyTerms, Option<B256>), ApiError> {
    let valid_after = key.valid_after.unwrap_or(now.saturating_sub(60));
    check_terms(key.limit, valid_after, key.valid_until, now, prefix)?;
    let (session_key, private_key) = match key.session_key {
        Some(address) if address == Address::ZERO => {
            return Err(ApiError::invalid(format!("{prefix}sessionKey"), "the zero address"));
        }
        Some(address) => (address, None),
        None => {
            let key = SigningKey::random();
            (key.address(), Some(key.to_bytes()))
        }
    };
    if state.store.key(session_key).await?.is_some() {
        return Err(ApiError::conflict("key_exists", format!("session key {session_key} already exists")));
    }
    let terms =
        KeyTerms { session_key, payee: chain.payee, limit: key.limit, valid_after, valid_until: key.valid_until };
    Ok((terms, private_key))
}

#[utoipa::path(post, path = "/api/session-keys", tag = "session-keys", request_body = CreateKey, security(("bearer" = []), ("cookie" = [])),
    responses((status = 201, body = Relayed), super::error::ActionProblems))]
pub(super) async fn create(
    State(state): State<AppState>,
    SignedIn(owner): SignedIn,
    ApiJson(body): ApiJson<CreateKey>,
) -> Result<(StatusCode, Json<Relayed>), ApiError> {
    let chain = state.chain()?;
    let m = &body.message;
    if m.owner != owner {
        return Err(ApiError::invalid("message.owner", "the message must name the signed-in owner"));
    }
    let terms = KeyTerms {
        session_key: m.session_key,
        payee: m.payee,
        limit: m.limit,
        valid_after: m.valid_after,
        valid_until: m.valid_until,
    };
    let now = now();
    check_signed_terms(chain, &terms, now, "message.")?;
    funded(&state, chain, owner).await?;
    reserve_relay(&state, owner, "key.create", m.session_key).await?;
    let nonce = parse_u256(&m.nonce, "message.nonce")?;
    let message: RegisterSessionKey =
        chain.relayer.registration_message(owner, &terms, nonce, m.deadline).map_err(chain_error)?;
    let (tx_hash, tx_status) = register_relayed(
        &state,
        owner,
        &[terms],
        chain.relayer.register_session_key_with_sig(&message, &body.signature),
        json!({}),
    )
    .await?;
    let key = view(&state, &owned_key(&state, owner, m.session_key).await?, now).await?;
    Ok((StatusCode::CREATED, Json(Relayed { key, tx_hash, tx_status })))
}

/// `POST /api/session-keys/batch/prepare`: the typed data that creates every key asked for in
/// one transaction (`RegisterSessionKeys`), and the generated keys' private keys, shown once.
#[utoipa::path(post, path = "/api/session-keys/batch/prepare", tag = "session-keys", request_body = PrepareBatch, security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = PreparedBatch), super::error::ActionProblems))]
pub(super) async fn prepare_batch(
    State(state): State<AppState>,
    SignedIn(owner): SignedIn,
    ApiJson(body): ApiJson<PrepareBatch>,
) -> Result<Json<PreparedBatch>, ApiError> {
    let chain = state.chain()?;
    check_batch_size(body.keys.len(), "keys")?;
    let now = now();
    let mut keys = Vec::with_capacity(body.keys.len());
    let mut terms = Vec::with_capacity(body.keys.len());
    let mut seen = HashSet::with_capacity(body.keys.len());
    for (i, asked) in body.keys.iter().enumerate() {
        let prefix = format!("keys[{i}].");
        let (t, private_key) = prepared_terms(&state, chain, asked, now, &prefix).await?;
        if !seen.insert(t.session_key) {
            return Err(ApiError::invalid(format!("{prefix}sessionKey"), "this key is in the batch twice"));
        }
        keys.push(PreparedBatchKey { session_key: t.session_key, private_key });
        terms.push(t);
    }
    let nonce = chain.relayer.nonce_of(owner).await.map_err(chain_error)?;
    let message =
        chain.relayer.registrations_message(owner, &terms, nonce, now + SIGNATURE_TTL_SECS).map_err(chain_error)?;
    Ok(Json(PreparedBatch { keys, typed_data: registrations_typed_data(chain.relayer.domain(), &message) }))
}

/// `POST /api/session-keys/batch`: relays the owner's signed `RegisterSessionKeys`
/// (`registerSessionKeysWithSig`): every key is created, or none. One relayed transaction
/// against the owner's quota and rate limits, however many keys it holds.
#[utoipa::path(post, path = "/api/session-keys/batch", tag = "session-keys", request_body = CreateBatch, security(("bearer" = []), ("cookie" = [])),
    responses((status = 201, body = RelayedBatch), super::error::ActionProblems))]
pub(super) async fn create_batch(
    State(state): State<AppState>,
    SignedIn(owner): SignedIn,
    ApiJson(body): ApiJson<CreateBatch>,
) -> Result<(StatusCode, Json<RelayedBatch>), ApiError> {
    let chain = state.chain()?;
    let m = &body.message;
    if m.owner != owner {
        return Err(ApiError::invalid("message.owner", "the message must name the signed-in owner"));
    }
    check_batch_size(m.keys.len(), "message.keys")?;
    let now = now();
    let mut terms = Vec::with_capacity(m.keys.len());
    let mut seen = HashSet::with_capacity(m.keys.len());
    for (i, k) in m.keys.iter().enumerate() {
        let prefix = format!("message.keys[{i}].");
        let t = KeyTerms {
            session_key: k.session_key,
            payee: k.payee,
            limit: k.limit,
            valid_after: k.valid_after,
            valid_until: k.valid_until,
        };
        check_signed_terms(chain, &t, now, &prefix)?;
        if !seen.insert(t.session_key) {
            return Err(ApiError::invalid(format!("{prefix}sessionKey"), "this key is in the batch twice"));
        }
        terms.push(t);
    }
    funded(&state, chain, owner).await?;
    reserve_relay(&state, owner, "key.create_batch", terms[0].session_key).await?;
    let nonce = parse_u256(&m.nonce, "message.nonce")?;
    let message: RegisterSessionKeys =
        chain.relayer.registrations_message(owner, &terms, nonce, m.deadline).map_err(chain_error)?;
    let (tx_hash, tx_status) = register_relayed(
        &state,
        owner,
        &terms,
        chain.relayer.register_session_keys_with_sig(&message, &body.signature),
        json!({ "batch": terms.len() }),
    )
    .await?;
    let mut keys = Vec::with_capacity(terms.len());
    for t in &terms {
        keys.push(view(&state, &owned_key(&state, owner, t.session_key).await?, now).await?);
    }
    Ok((StatusCode::CREATED, Json(RelayedBatch { keys, tx_hash, tx_status })))
}

/// Refuses an empty batch, or one above [`MAX_BATCH_KEYS`], naming `field`.
fn check_batch_size(len: usize, field: &'static str) -> Result<(), ApiError> {
    if len == 0 {
        return Err(ApiError::invalid(field, "a batch holds at least one key"));
    }
    if len > MAX_BATCH_KEYS {
        return Err(ApiError::invalid(
            field,
            format!(
                "a batch holds at most {MAX_BATCH_KEYS} keys (one transaction), not {len}: \
                 send them in batches of {MAX_BATCH_KEYS} (`opentab keys create --count N` does)"
            ),
        ));
    }
    Ok(())
}

/// Checks the terms of a signed registration before anything is stored or sent: this
/// service's payee only, and terms the contract would accept.
fn check_signed_terms(chain: &ChainAccess, terms: &KeyTerms, now: u64, prefix: &str) -> Result<(), ApiError> {
    if terms.payee != chain.payee {
        return Err(ApiError::invalid(
            format!("{prefix}payee"),
            format!("this service's only payee is {}", chain.payee),
        ));
    }
    check_terms(terms.limit, terms.valid_after, terms.valid_until, now, prefix)
}

/// Stores `terms` as pending keys, runs `send` (the relayed registration of all of them) and
/// audits each key's creation with `detail`. Should the relay fail, nothing happened on-chain:
/// the pending keys are forgotten so the owner can try again; should storing one fail (it
/// exists), those stored before it are forgotten and nothing is sent.
async fn register_relayed(
    state: &AppState,
    owner: Address,
    terms: &[KeyTerms],
    send: impl std::future::Future<Output = opentab_chain::Result<TxOutcome>>,
    detail: Value,
) -> Result<(Option<B256>, &'static str), ApiError> {
    let keys: Vec<NewKey> = terms
        .iter()
        .map(|t| NewKey {
            address: t.session_key,
            owner,
            payee: t.payee,
            limit: t.limit,
            valid_after: t.valid_after,
            valid_until: t.valid_until,
        })
        .collect();
    // All or none, in one transaction: a key already known refuses the batch.
    state.store.insert_pending_keys(&keys, now()).await?;
    let (tx_hash, tx_status) = match relay(send).await {
        Ok(outcome) => outcome,
        Err(err) => {
            let stored: Vec<Address> = keys.iter().map(|k| k.address).collect();
            state.store.delete_pending_keys(&stored).await?;
            return Err(err);
        }
    };
    for t in terms {
        let mut detail = detail.clone();
        if let Some(fields) = detail.as_object_mut() {
            fields.insert("tx".to_owned(), json!(tx_hash));
            fields.insert("limit".to_owned(), json!(t.limit));
        }
        audit(state, owner, "key.create", t.session_key, detail).await?;
    }
    Ok((tx_hash, tx_status))
}

/// `GET /api/session-keys/{key}/{action}`: the typed data to sign for `action`.
#[utoipa::path(get, path = "/api/session-keys/{key}/{action}", tag = "session-keys", security(("bearer" = []), ("cookie" = [])),
    params(("key" = String, Path, description = "the session key's address"), ("action" = String, Path, description = "freeze, unfreeze or delete")),
    responses((status = 200, body = Object, description = "EIP-712 typed data to sign"), super::error::ActionProblems))]
pub(super) async fn action_typed_data(
    State(state): State<AppState>,
    SignedIn(owner): SignedIn,
    Path((key, action)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let chain = state.chain()?;
    let key = parse_key(&key)?;
    let action = parse_action(&action)?;
    owned_key(&state, owner, key).await?;
    let nonce = chain.relayer.nonce_of(owner).await.map_err(chain_error)?;
    let deadline = now() + SIGNATURE_TTL_SECS;
    Ok(Json(action_typed_data_json(chain.relayer.domain(), action, key, nonce, deadline)))
}

/// `POST /api/session-keys/{key}/freeze|unfreeze` with the owner's signature.
#[utoipa::path(post, path = "/api/session-keys/{key}/{action}", tag = "session-keys", request_body = SignedAction, security(("bearer" = []), ("cookie" = [])),
    params(("key" = String, Path, description = "the session key's address"), ("action" = String, Path, description = "freeze or unfreeze")),
    responses((status = 200, body = Relayed), super::error::ActionProblems))]
pub(super) async fn act(
    State(state): State<AppState>,
    SignedIn(owner): SignedIn,
    Path((key, action)): Path<(String, String)>,
    ApiJson(body): ApiJson<SignedAction>,
) -> Result<Json<Relayed>, ApiError> {
    let key = parse_key(&key)?;
    let action = match parse_action(&action)? {
        KeyAction::Revoke => return Err(ApiError::not_found("revoke with DELETE /api/session-keys/{key}")),
        other => other,
    };
    signed_action(&state, owner, key, action, body).await.map(Json)
}

/// `DELETE /api/session-keys/{key}` with the owner's signed revoke: revoked on-chain and hidden
/// from the default list.
#[utoipa::path(delete, path = "/api/session-keys/{key}", tag = "session-keys", request_body = SignedAction, security(("bearer" = []), ("cookie" = [])),
    params(("key" = String, Path, description = "the session key's address")),
    responses((status = 200, body = Relayed), super::error::ActionProblems))]
pub(super) async fn delete(
    State(state): State<AppState>,
    SignedIn(owner): SignedIn,
    Path(key): Path<String>,
    ApiJson(body): ApiJson<SignedAction>,
) -> Result<Json<Relayed>, ApiError> {
    let key = parse_key(&key)?;
    signed_action(&state, owner, key, KeyAction::Revoke, body).await.map(Json)
}

async fn signed_action(
    state: &AppState,
    owner: Address,
    key: Address,
    action: KeyAction,
    body: SignedAction,
) -> Result<Relayed, ApiError> {
    let chain = state.chain()?;
    let record = owned_key(state, owner, key).await?;
    let nonce = parse_u256(&body.nonce, "nonce")?;
    let now = now();
    if let Some(rule) = &body.shadow_rule {
        if action != KeyAction::Unfreeze {
            return Err(ApiError::invalid("shadowRule", "a rule is switched to shadow only as its key is unfrozen"));
        }
        // Before the unfreeze: the key must not be frozen again by the rule its owner just
        // looked at. Should the unfreeze then fail, the rule stays in shadow (audited) and the
        // key frozen.
        super::rules::shadow(state, owner, key, rule).await?;
    }
    // A key the rule engine froze only at the gateway (its owner chose no guardian) is not
    // frozen on-chain: the contract would refuse an unfreeze. Lifting the gateway's freeze is
    // then all there is to do, and the signed-in owner may do that. The chain is asked, not the
    // database: a guardian's freeze mined a moment ago may not be mirrored yet.
    if action == KeyAction::Unfreeze
        && record.frozen_offchain_at.is_some()
        && chain.relayer.session_key(key).await.map_err(chain_error)?.is_some_and(|k| k.frozen_at.is_none())
    {
        state.store.unfreeze_offchain(key, now).await?;
        state.notifier.publish(crate::Change { owner, key: Some(key) });
        audit(state, owner, "key.unfreeze", key, json!({ "offchainOnly": true })).await?;
        let key = view(state, &owned_key(state, owner, key).await?, now).await?;
        return Ok(Relayed { key, tx_hash: None, tx_status: "not_needed" });
    }
    // Freezing is never refused (it stops spending); what the relayer pays for otherwise is
    // bounded per owner. Unfreezing lets a key spend again, which only a funded tab is for;
    // deleting is allowed with an empty tab (it only ends a key).
    match action {
        KeyAction::Freeze => {}
        KeyAction::Unfreeze => {
            funded(state, chain, owner).await?;
            reserve_relay(state, owner, "key.unfreeze", key).await?;
        }
        KeyAction::Revoke => reserve_relay(state, owner, "key.delete", key).await?,
    }
    // The gateway must stop serving the moment the signed-in owner asks, not when a block is
    // mined. Should the relay then fail, the key stays frozen off-chain: the safe direction.
    if action == KeyAction::Freeze {
        state.store.freeze_offchain(key, now).await?;
        state.notifier.publish(crate::Change { owner, key: Some(key) });
    }
    let (tx_hash, tx_status) =
        relay(chain.relayer.relay_key_action(action, key, nonce, body.deadline, &body.signature)).await?;
    match action {
        KeyAction::Unfreeze => {
            state.store.unfreeze_offchain(key, now).await?;
        }
        KeyAction::Revoke => {
            state.store.mark_deleted(key, now).await?;
        }
        KeyAction::Freeze => {}
    }
    state.notifier.publish(crate::Change { owner, key: Some(key) });
    let name = match action {
        KeyAction::Freeze => "key.freeze",
        KeyAction::Unfreeze => "key.unfreeze",
        KeyAction::Revoke => "key.delete",
    };
    audit(state, owner, name, key, json!({ "tx": tx_hash })).await?;
    Ok(Relayed { key: view(state, &owned_key(state, owner, key).await?, now).await?, tx_hash, tx_status })
}

/// Sends, then waits up to [`MINING_WAIT`] for the receipt. Contract refusals become 4xx with
/// the contract's reason; an unreachable chain is a 503.
async fn relay(
    send: impl std::future::Future<Output = opentab_chain::Result<TxOutcome>>,
) -> Result<(Option<B256>, &'static str), ApiError> {
    match tokio::time::timeout(MINING_WAIT, send).await {
        Ok(Ok(outcome)) => Ok((Some(outcome.tx_hash), "mined")),
        Ok(Err(err)) => Err(chain_error(err)),
        Err(_) => Ok((None, "pending")),
    }
}

fn chain_error(err: opentab_chain::Error) -> ApiError {
    let refused = |code, detail: &str| ApiError::unprocessable(code, detail.to_owned());
    match err {
        opentab_chain::Error::Reverted(reason) => match reason {
            E::InvalidOwnerSignature(_) => {
                refused("invalid_signature", "the signature is not the owner's for this message")
            }
            E::InvalidAccountNonce(_) => {
                refused("stale_nonce", "the nonce was used already; fetch fresh typed data and sign again")
            }
            E::SignatureExpired(_) => refused("signature_expired", "the signature's deadline has passed; sign again"),
            E::SessionKeyExists(_) => ApiError::conflict("key_exists", "this session key is already registered"),
            E::InvalidValidityWindow(_) | E::AlreadyExpired(_) => {
                refused("invalid_window", "the validity window is empty or over")
            }
            E::KeyFrozen(_) => ApiError::conflict("already_frozen", "the key is frozen already"),
            E::KeyNotFrozen(_) => ApiError::conflict("not_frozen", "the key is not frozen"),
            E::KeyRevoked(_) => ApiError::conflict("key_revoked", "the key is revoked"),
            E::InvalidPayee(_) | E::ZeroAddress(_) | E::ZeroLimit(_) | E::EmptyBatch(_) => {
                refused("invalid_terms", "the contract refused the key's terms")
            }
            other => {
                tracing::warn!(reason = ?other, "the validator refused a relayed call");
                refused("chain_refused", "the validator contract refused the call")
            }
        },
        other => ApiError::unavailable(&other),
    }
}

/// The latest time the contract stores (`uint48` seconds).
const MAX_TIME: u64 = (1 << 48) - 1;

/// Checks a key's terms before anything is signed or sent; names the field at fault.
/// `prefix` is the terms' path in the body (`""`, `"message."`, `"keys[3]."`).
fn check_terms(limit: Usdc, valid_after: u64, valid_until: u64, now: u64, prefix: &str) -> Result<(), ApiError> {
    let field = |name: &str| format!("{prefix}{name}");
    if limit == Usdc::ZERO {
        return Err(ApiError::invalid(field("limit"), "the limit must be more than zero"));
    }
    if i64::try_from(limit.base_units()).is_err() {
        return Err(ApiError::invalid(field("limit"), "the limit is too large"));
    }
    if valid_until > MAX_TIME || valid_after > MAX_TIME {
        let name = if valid_until > MAX_TIME { field("validUntil") } else { field("validAfter") };
        return Err(ApiError::invalid(name, "times are unix seconds below 2^48"));
    }
    if valid_until <= now {
        return Err(ApiError::invalid(field("validUntil"), "the expiry must be in the future"));
    }
    if valid_after >= valid_until {
        return Err(ApiError::invalid(field("validAfter"), "validAfter must come before validUntil"));
    }
    Ok(())
}

fn parse_action(text: &str) -> Result<KeyAction, ApiError> {
    match text {
        "freeze" => Ok(KeyAction::Freeze),
        "unfreeze" => Ok(KeyAction::Unfreeze),
        "revoke" | "delete" => Ok(KeyAction::Revoke),
        _ => Err(ApiError::not_found(format!("no action {text:?}; use freeze, unfreeze or delete"))),
    }
}

fn parse_u256(text: &str, field: &'static str) -> Result<U256, ApiError> {
    U256::from_str_radix(text, 10).map_err(|_| ApiError::invalid(field, "expected a decimal integer string"))
}

/// Refuses (402 `tab_unfunded`) an owner whose tab with this service's payee has less free
/// than `relay_min_tab`: the relayer pays gas for paying customers.
async fn funded(state: &AppState, chain: &ChainAccess, owner: Address) -> Result<(), ApiError> {
    let needed = state.config.relay_min_tab;
    if needed == Usdc::ZERO {
        return Ok(());
    }
    let free = chain.relayer.tab_of(owner, chain.payee).await.map_err(chain_error)?.available();
    if free < needed {
        return Err(ApiError::payment_required(
            "tab_unfunded",
            format!(
                "opentab relays key creations and unfreezes for owners whose tab holds at least {} USDC free; \
                 yours holds {} USDC: deposit to your tab with {} first",
                needed.display(),
                free.display(),
                chain.payee
            ),
        ));
    }
    Ok(())
}

/// Counts one relayed transaction against the owner's rate and daily quota, or refuses (429).
/// The attempt is recorded before it is sent, so transactions that revert count too, and the
/// count and the record happen under one lock, so two requests at once cannot both take the
/// last one.
async fn reserve_relay(state: &AppState, owner: Address, action: &str, key: Address) -> Result<(), ApiError> {
    state.limiters.relay(owner)?;
    let quota = state.config.relay_daily_quota;
    let _counting = state.quota_lock.lock().await;
    let now = now();
    let used = state.store.relayed_since(owner, now.saturating_sub(24 * 3600)).await?;
    if used >= quota {
        return Err(ApiError::too_many(
            "relay_quota_exceeded",
            format!(
                "opentab relayed {used} transactions for you in the last 24 hours, its daily quota of {quota}: \
                 try again later (freezing a key is never refused)"
            ),
        ));
    }
    Ok(state.store.audit(&AuditEntry::about_key(now, owner, RELAY_SENT, key, &json!({ "action": action }))).await?)
}

async fn audit(state: &AppState, owner: Address, action: &str, key: Address, detail: Value) -> Result<(), ApiError> {
    Ok(state.store.audit(&AuditEntry::about_key(now(), owner, action, key, &detail)).await?)
}

fn domain_json(domain: &opentab_core::ContractDomain) -> Value {
    json!({
        "name": domain.name(),
        "version": domain.version(),
        "chainId": domain.chain_id(),
        "verifyingContract": domain.verifying_contract(),
    })
}

const DOMAIN_TYPE: &str = r#"[{"name":"name","type":"string"},{"name":"version","type":"string"},{"name":"chainId","type":"uint256"},{"name":"verifyingContract","type":"address"}]"#;

fn registration_typed_data(domain: &opentab_core::ContractDomain, m: &RegisterSessionKey) -> Value {
    json!({
        "types": {
            "EIP712Domain": serde_json::from_str::<Value>(DOMAIN_TYPE).unwrap_or_default(),
            "RegisterSessionKey": [
                {"name": "owner", "type": "address"},
                {"name": "sessionKey", "type": "address"},
                {"name": "payee", "type": "address"},
                {"name": "limit", "type": "uint128"},
                {"name": "validAfter", "type": "uint48"},
                {"name": "validUntil", "type": "uint48"},
                {"name": "nonce", "type": "uint256"},
                {"name": "deadline", "type": "uint256"},
            ],
        },
        "primaryType": "RegisterSessionKey",
        "domain": domain_json(domain),
        "message": {
            "owner": m.owner,
            "sessionKey": m.sessionKey,
            "payee": m.payee,
            "limit": m.limit.to_string(),
            "validAfter": m.validAfter.to::<u64>(),
            "validUntil": m.validUntil.to::<u64>(),
            "nonce": m.nonce.to_string(),
            "deadline": m.deadline.to::<u64>(),
        },
    })
}

fn registrations_typed_data(domain: &opentab_core::ContractDomain, m: &RegisterSessionKeys) -> Value {
    let keys: Vec<Value> = m
        .keys
        .iter()
        .map(|k| {
            json!({
                "sessionKey": k.sessionKey,
                "payee": k.payee,
                "limit": k.limit.to_string(),
                "validAfter": k.validAfter.to::<u64>(),
                "validUntil": k.validUntil.to::<u64>(),
            })
        })
        .collect();
    json!({
        "types": {
            "EIP712Domain": serde_json::from_str::<Value>(DOMAIN_TYPE).unwrap_or_default(),
            "RegisterSessionKeys": [
                {"name": "owner", "type": "address"},
                {"name": "keys", "type": "KeyTerms[]"},
                {"name": "nonce", "type": "uint256"},
                {"name": "deadline", "type": "uint256"},
            ],
            "KeyTerms": [
                {"name": "sessionKey", "type": "address"},
                {"name": "payee", "type": "address"},
                {"name": "limit", "type": "uint128"},
                {"name": "validAfter", "type": "uint48"},
                {"name": "validUntil", "type": "uint48"},
            ],
        },
        "primaryType": "RegisterSessionKeys",
        "domain": domain_json(domain),
        "message": {
            "owner": m.owner,
            "keys": keys,
            "nonce": m.nonce.to_string(),
            "deadline": m.deadline.to::<u64>(),
        },
    })
}

fn action_typed_data_json(
    domain: &opentab_core::ContractDomain,
    action: KeyAction,
    key: Address,
    nonce: U256,
    deadline: u64,
) -> Value {
    let primary = match action {
        KeyAction::Freeze => "FreezeSessionKey",
        KeyAction::Unfreeze => "UnfreezeSessionKey",
        KeyAction::Revoke => "RevokeSessionKey",
    };
    json!({
        "types": {
            "EIP712Domain": serde_json::from_str::<Value>(DOMAIN_TYPE).unwrap_or_default(),
            primary: [
                {"name": "sessionKey", "type": "address"},
                {"name": "nonce", "type": "uint256"},
                {"name": "deadline", "type": "uint256"},
            ],
        },
        "primaryType": primary,
        "domain": domain_json(domain),
        "message": { "sessionKey": key, "nonce": nonce.to_string(), "deadline": deadline },
    })
}

/// The chain side of the API: a relayer and the service's payee.
#[derive(Debug, Clone)]
pub struct ChainAccess {
    /// Sends the owners' signed actions and pays their gas.
    pub relayer: Validator,
    /// The one payee keys created here may pay.
    pub payee: Address,
}
