//! The API's one error type and its one mapping to HTTP: `application/problem+json` bodies
//! with a stable `code`, a readable `detail` and, for validation errors, the `field` at fault.
//! Internal causes are logged, never sent.

use std::borrow::Cow;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error answer of the API.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
    field: Option<Cow<'static, str>>,
    /// Seconds until trying again makes sense (`Retry-After`), for rate limits.
    retry_after: Option<u64>,
}

/// An error body (`application/problem+json`, RFC 9457).
#[derive(Serialize, utoipa::ToSchema)]
pub struct Problem<'a> {
    /// Always `about:blank`.
    r#type: &'static str,
    /// The HTTP status's reason phrase.
    title: &'a str,
    /// The HTTP status.
    status: u16,
    /// A stable machine-readable code (`invalid_field`, `not_found`, `stale_nonce`, …).
    code: &'static str,
    /// What went wrong, for people.
    detail: &'a str,
    /// The request field at fault, for validation errors (`limit`, `keys[3].validUntil`).
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

/// The error answers of the owner's on-chain actions, documented once for all of them.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // only describes responses for the OpenAPI document
pub(super) enum ActionProblems {
    /// A field is invalid; `field` names it.
    #[response(status = 400, content_type = "application/problem+json")]
    BadRequest(Problem<'static>),
    /// Not signed in.
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthenticated(Problem<'static>),
    /// The owner's tab holds less than the relayer asks for (`tab_unfunded`): deposit first.
    #[response(status = 402, content_type = "application/problem+json")]
    Unfunded(Problem<'static>),
    /// No such key of the signed-in owner.
    #[response(status = 404, content_type = "application/problem+json")]
    NotFound(Problem<'static>),
    /// The key already exists, or is already in the asked state.
    #[response(status = 409, content_type = "application/problem+json")]
    Conflict(Problem<'static>),
    /// The contract refused: stale nonce, bad signature, expired deadline, …
    #[response(status = 422, content_type = "application/problem+json")]
    Refused(Problem<'static>),
    /// The owner's daily quota of relayed transactions is spent (`relay_quota_exceeded`), or
    /// requests come faster than the rate limits allow (`rate_limited`, with `Retry-After`).
    #[response(status = 429, content_type = "application/problem+json")]
    TooMany(Problem<'static>),
    /// The database or the chain is away; nothing changed.
    #[response(status = 503, content_type = "application/problem+json")]
    Unavailable(Problem<'static>),
}

impl ApiError {
    /// 400: a field is invalid (`field` is its path in the body: `limit`, `keys[3].limit`).
    pub fn invalid(field: impl Into<Cow<'static, str>>, detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_field",
            detail: detail.into(),
            field: Some(field.into()),
            retry_after: None,
        }
    }

    /// 400: the body is not the JSON expected.
    pub fn bad_body(detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_body",
            detail: detail.into(),
            field: None,
            retry_after: None,
        }
    }

    /// 401: not signed in, or the session is unknown or expired.
    pub fn unauthenticated() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthenticated",
            detail: "sign in with Ethereum first (POST /api/auth/login)".into(),
            field: None,
            retry_after: None,
        }
    }

    /// 401: the sign-in itself was refused.
    pub fn sign_in_refused(code: &'static str, detail: impl Into<String>) -> Self {
        Self { status: StatusCode::UNAUTHORIZED, code, detail: detail.into(), field: None, retry_after: None }
    }

    /// 404: nothing of the signed-in owner's by that name (another owner's key is not found either).
    pub fn not_found(what: impl Into<String>) -> Self {
        Self { status: StatusCode::NOT_FOUND, code: "not_found", detail: what.into(), field: None, retry_after: None }
    }

    /// 409: the request conflicts with what exists.
    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self { status: StatusCode::CONFLICT, code, detail: detail.into(), field: None, retry_after: None }
    }

    /// 402: the owner's tab must hold more before this is done for them.
    pub fn payment_required(code: &'static str, detail: impl Into<String>) -> Self {
        Self { status: StatusCode::PAYMENT_REQUIRED, code, detail: detail.into(), field: None, retry_after: None }
    }

    /// 429: the caller has too many of something open already.
    pub fn too_many(code: &'static str, detail: impl Into<String>) -> Self {
        Self { status: StatusCode::TOO_MANY_REQUESTS, code, detail: detail.into(), field: None, retry_after: None }
    }

    /// 429: more `what` than the limit allows just now; `Retry-After` says when to try again.
    pub fn rate_limited(retry_after_secs: u64, what: &str) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "rate_limited",
            detail: format!("too many {what} just now; try again in {retry_after_secs} s"),
            field: None,
            retry_after: Some(retry_after_secs),
        }
    }

    /// 422: well-formed, but refused (the contract's reason, a stale signature, …).
    pub fn unprocessable(code: &'static str, detail: impl Into<String>) -> Self {
        Self { status: StatusCode::UNPROCESSABLE_ENTITY, code, detail: detail.into(), field: None, retry_after: None }
    }

    /// 503: the chain side is not configured on this server.
    pub fn no_chain() -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "chain_unavailable",
            detail: "this server has no relayer configured; on-chain actions are unavailable".into(),
            field: None,
            retry_after: None,
        }
    }

    /// 503: a dependency (database, chain) is away; nothing was changed.
    pub fn unavailable(source: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(error = source, "dependency unavailable");
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "unavailable",
            detail: "a service opentab depends on is unavailable; try again shortly".into(),
            field: None,
            retry_after: None,
        }
    }

    /// 500: a fault of opentab's own; logged, never detailed to the caller.
    pub fn internal(source: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(error = source, "internal error");
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            detail: "opentab failed to answer; this is a bug, please report it".into(),
            field: None,
            retry_after: None,
        }
    }

    /// The status code.
    pub const fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<opentab_store::Error> for ApiError {
    fn from(err: opentab_store::Error) -> Self {
        match err {
            opentab_store::Error::KeyExists(key) => {
                Self::conflict("key_exists", format!("session key {key} already exists"))
            }
            other => Self::unavailable(&other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = Problem {
            r#type: "about:blank",
            title: self.status.canonical_reason().unwrap_or("error"),
            status: self.status.as_u16(),
            code: self.code,
            detail: &self.detail,
            field: self.field.as_deref(),
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (self.status, [(header::CONTENT_TYPE, "application/problem+json")], body).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
        response
    }
}
