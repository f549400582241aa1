//! A small client of opentab's REST API for the owner commands: Sign-In with Ethereum, then
//! JSON calls with the bearer token. Problem answers (`application/problem+json`) become
//! [`Problem`] errors; an unreachable server says so plainly.
//!
//! The session is kept between commands (a file readable by its user only, under
//! `$OPENTAB_SESSION_DIR`, else `$XDG_CACHE_HOME/opentab` or `~/.cache/opentab`), so a script
//! running many commands signs in once, within the server's sign-in rate limits.

use std::time::Duration;

use anyhow::Context;
use opentab_core::siwe::SiweMessage;
use opentab_core::{Address, SigningKey, eip191_hash_message};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::output::now;

/// How long one request may take. Relayed actions wait up to 30 s for their transaction.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the sign-in message stays valid.
const SIGN_IN_TTL_SECS: u64 = 300;

/// A signed-in connection to opentab.
#[derive(Debug)]
pub(crate) struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
    /// The signed-in owner.
    pub(crate) owner: Address,
}

/// An error answer of the API (RFC 9457 problem details).
#[derive(Debug, Deserialize)]
pub(crate) struct Problem {
    /// HTTP status.
    pub(crate) status: u16,
    /// Stable machine-readable code.
    pub(crate) code: String,
    /// What went wrong, for people.
    pub(crate) detail: String,
    /// The request field at fault, for validation errors.
    pub(crate) field: Option<String>,
    /// Seconds to wait before trying again (`Retry-After`), on a rate limit.
    #[serde(skip)]
    pub(crate) retry_after: Option<u64>,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.detail)?;
        match &self.field {
            Some(field) => write!(f, " (field `{field}`; {}, HTTP {})", self.code, self.status),
            None => write!(f, " ({}, HTTP {})", self.code, self.status),
        }
    }
}

impl std::error::Error for Problem {}

#[derive(Deserialize)]
struct NonceAnswer {
    nonce: String,
    domain: String,
    #[serde(rename = "chainId")]
    chain_id: u64,
}

#[derive(Deserialize)]
struct LoginAnswer {
    owner: Address,
    token: String,
}

impl Api {
    /// Signs in to the opentab at `base` as `owner` (nonce, then a signed EIP-4361 message).
    pub(crate) async fn sign_in(base: &str, owner: &SigningKey) -> anyhow::Result<Self> {
        let base = base.trim_end_matches('/').to_owned();
        anyhow::ensure!(
            base.starts_with("http://") || base.starts_with("https://"),
            "--url {base:?} must start with http:// or https://"
        );
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("building the HTTP client")?;
        let mut api = Self { http, base, token: String::new(), owner: owner.address() };
        let cache = session_file(&api.base, owner.address());
        if let Some(token) = cache.as_deref().and_then(|path| std::fs::read_to_string(path).ok()) {
            api.token = token.trim().to_owned();
            // A session the server still knows is reused; anything else signs in afresh.
            if api.call_text(Method::GET, "/api/tabs", None::<&()>).await.is_ok() {
                return Ok(api);
            }
            api.token.clear();
        }
        // An unreachable server is reported as such, without "signing in" in front.
        let nonce: NonceAnswer = api
            .call(Method::GET, "/api/auth/nonce", None::<&()>)
            .await
            .map_err(|err| if err.is::<Problem>() { err.context("signing in") } else { err })?;
        let issued_at = now();
        let message = SiweMessage::compose(
            &nonce.domain,
            &api.base,
            owner.address(),
            nonce.chain_id,
            &nonce.nonce,
            issued_at,
            issued_at + SIGN_IN_TTL_SECS,
        );
        let signature = owner.sign_digest(&eip191_hash_message(&message)).to_string();
        #[derive(Serialize)]
        struct Login<'a> {
            message: &'a str,
            signature: &'a str,
        }
        let login: LoginAnswer = api
            .call(Method::POST, "/api/auth/login", Some(&Login { message: &message, signature: &signature }))
            .await
            .with_context(|| format!("signing in as {}", owner.address()))?;
        anyhow::ensure!(
            login.owner == owner.address(),
            "opentab signed us in as {}, not {}",
            login.owner,
            owner.address()
        );
        api.token = login.token;
        if let Some(path) = cache {
            // Only a convenience: a session that cannot be kept is signed in again next time.
            if let Err(err) = keep_session(&path, &api.token) {
                tracing::debug!(error = %err, path = %path.display(), "could not keep the session");
            }
        }
        Ok(api)
    }

    /// `method path` with an optional JSON body; the answer parsed as `T`.
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<T> {
        let text = self.call_text(method.clone(), path, body).await?;
        serde_json::from_str(&text).with_context(|| format!("unexpected answer to {method} {path}: {text}"))
    }

    /// `method path` with an optional JSON body; the answer's text, on success.
    pub(crate) async fn call_text(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<String> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url).header("accept", "application/json");
        if !self.token.is_empty() {
            request = request.bearer_auth(&self.token);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(serde_json::to_string(body)?);
        }
        let response = request.send().await.map_err(|err| self.transport_error(err))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let text = response.text().await.map_err(|err| self.transport_error(err))?;
        if status.is_success() {
            return Ok(text);
        }
        match serde_json::from_str::<Problem>(&text) {
            Ok(problem) => Err(Problem { retry_after, ..problem }.into()),
            Err(_) => {
                let excerpt: String = text.chars().take(200).collect();
                Err(anyhow::anyhow!("{method} {path} answered HTTP {status}: {excerpt}"))
            }
        }
    }

    fn transport_error(&self, err: reqwest::Error) -> anyhow::Error {
        if err.is_timeout() {
            return anyhow::anyhow!("opentab at {} did not answer within {}s", self.base, REQUEST_TIMEOUT.as_secs());
        }
        if err.is_connect() {
            // The innermost cause is the useful part ("Connection refused (os error 111)").
            let mut cause: &dyn std::error::Error = &err;
            while let Some(inner) = cause.source() {
                cause = inner;
            }
            return anyhow::anyhow!("cannot reach opentab at {} ({cause}); is `opentab dev` running?", self.base);
        }
        anyhow::Error::new(err).context(format!("talking to opentab at {}", self.base))
    }
}

/// Where the session of `owner` at `base` is kept, if there is a place for it.
fn session_file(base: &str, owner: Address) -> Option<std::path::PathBuf> {
    let env_dir = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    let dir = env_dir("OPENTAB_SESSION_DIR")
        .or_else(|| env_dir("XDG_CACHE_HOME").map(|d| d.join("opentab")))
        .or_else(|| env_dir("HOME").map(|d| d.join(".cache/opentab")))?;
    let server = opentab_core::keccak256(base.as_bytes());
    Some(dir.join(format!("session-{owner:x}-{:x}", server.0[..6].iter().fold(0u64, |n, b| n << 8 | u64::from(*b)))))
}

/// Writes `token` to `path`, readable and writable by its user only.
fn keep_session(path: &std::path::Path, token: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(token.as_bytes())
}

/// `text` made safe as one URL path segment (a key address, or whatever the user typed).
pub(crate) fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
