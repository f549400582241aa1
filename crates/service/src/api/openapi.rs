//! The OpenAPI 3.1 description of the API, generated from the handlers and types
//! (utoipa) and served at `/api/openapi.json`. A schemathesis run against a live server checks
//! the implementation against it.

use axum::Json;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{actions, auth, events, keys, rules};

#[derive(OpenApi)]
#[openapi(
    info(title = "opentab", description = "Session keys for pay-per-call USDC billing: sign in with Ethereum, create, watch, freeze, unfreeze and delete keys. Amounts are decimal strings of USDC base units (6 decimals)."),
    paths(
        auth::nonce, auth::login, auth::logout,
        keys::list, keys::get, keys::tabs,
        actions::prepare, actions::create, actions::prepare_batch, actions::create_batch,
        actions::action_typed_data, actions::act, actions::delete,
        events::events,
        rules::owner_get, rules::owner_put, rules::key_get, rules::key_put,
    ),
    components(schemas(
        auth::NonceResponse, auth::LoginRequest, auth::LoginResponse,
        keys::KeyView, keys::Usage, keys::KeyDetail, keys::SettlementView, keys::AlertView, keys::TabsView, keys::TabView,
        actions::PrepareKey, actions::PreparedKey, actions::CreateKey, actions::RegistrationMessage,
        actions::PrepareBatch, actions::PreparedBatchKey, actions::PreparedBatch, actions::CreateBatch,
        actions::BatchRegistrationMessage, actions::KeyTermsMessage, actions::RelayedBatch,
        actions::Relayed, actions::SignedAction, rules::RulesView, rules::SettingChange, rules::Suggestion, super::Problem,
    )),
    modifiers(&Security),
    tags((name = "auth", description = "Sign-In with Ethereum (EIP-4361)"),
        (name = "session-keys", description = "The signed-in owner's session keys"),
        (name = "tabs", description = "The signed-in owner's tabs: USDC held for one payee each"),
        (name = "rules", description = "The signed-in owner's rule settings: their defaults and per-key overrides")),
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(super::auth::SESSION_COOKIE))),
        );
    }
}

/// The document as JSON.
pub fn spec() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

pub(super) async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(spec())
}
