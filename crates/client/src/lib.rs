//! A paying client for opentab's HTTP 402 gateway.
//!
//! [`PayingClient::send`] makes the request; on `402 Payment Required` it reads the
//! `session` requirements, signs the next cumulative voucher (everything this key ever
//! promised this payee, plus the price) and retries once. The running total is written to a
//! file before each voucher is sent, so a restarted client never signs a lower total than one
//! it already gave away, and a spending cap bounds what it will ever sign.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use base64::Engine;
use opentab_core::{Address, ContractDomain, SigningKey, U256, Usdc, Voucher};
use opentab_gateway::protocol::{
    PAYMENT_REQUIRED, PAYMENT_RESPONSE, PAYMENT_SIGNATURE, PaymentPayload, PaymentRequired, PaymentResponse, SCHEME,
    SessionPayload, X402_VERSION, encode_header,
};

/// Why a paid request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The HTTP request itself failed.
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// The 402 did not offer the `session` scheme in a form this client understands.
    #[error("the 402 offers no usable `session` payment: {0}")]
    Requirements(String),
    /// Paying would take the signed total past the client's cap.
    #[error("paying {price} would bring the signed total to {total}, past the cap of {cap} (base units)")]
    CapExceeded {
        /// This call's price.
        price: Usdc,
        /// The total that would be signed.
        total: U256,
        /// The cap.
        cap: Usdc,
    },
    /// The gateway refused the voucher.
    #[error("payment refused: {code}: {message}")]
    Refused {
        /// The 402's `error`.
        code: String,
        /// The 402's `message`.
        message: String,
    },
    /// The counter file could not be read or written.
    #[error("counter file {path}: {reason}")]
    Counter {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// What a paid (or free) request returned.
#[derive(Debug)]
pub struct Paid {
    /// HTTP status of the final answer.
    pub status: u16,
    /// Its body.
    pub body: String,
    /// The receipt, when a payment was made.
    pub receipt: Option<PaymentResponse>,
}

/// Signs vouchers with a session key and keeps the cumulative totals.
#[derive(Debug)]
pub struct PayingClient {
    http: reqwest::Client,
    key: SigningKey,
    cap: Usdc,
    counter_file: Option<PathBuf>,
    totals: Mutex<HashMap<String, U256>>,
}

impl PayingClient {
    /// A client paying with `key`, never signing more than `cap` in total per payee, keeping
    /// its totals in `counter_file` (or only in memory with `None`).
    pub fn new(key: SigningKey, cap: Usdc, counter_file: Option<PathBuf>) -> Result<Self, Error> {
        let totals = match &counter_file {
            Some(path) => match std::fs::read(path) {
                Ok(bytes) => serde_json::from_slice::<HashMap<String, String>>(&bytes)
                    .map_err(|e| Error::Counter { path: path.clone(), reason: e.to_string() })?
                    .into_iter()
                    .map(|(k, v)| U256::from_str_radix(&v, 10).map(|v| (k, v)))
                    .collect::<Result<_, _>>()
                    .map_err(|e| Error::Counter { path: path.clone(), reason: e.to_string() })?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
                Err(e) => return Err(Error::Counter { path: path.clone(), reason: e.to_string() }),
            },
            None => HashMap::new(),
        };
        Ok(Self { http: reqwest::Client::new(), key, cap, counter_file, totals: Mutex::new(totals) })
    }

    /// The session key's address.
    pub fn address(&self) -> Address {
        self.key.address()
    }

    /// What this client has signed in total for `payee`.
    pub fn signed_total(&self, payee: Address) -> U256 {
        self.totals
            .lock()
            .map(|t| t.get(&slot(self.key.address(), payee)).copied().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Sends `method url` with an optional JSON `body`, paying if asked to.
    pub async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Paid, Error> {
        let request = |payment: Option<String>| {
            let mut req = self.http.request(method.clone(), url);
            if let Some(body) = body {
                req = req.header("content-type", "application/json").body(body.to_string());
            }
            if let Some(payment) = payment {
                req = req.header(PAYMENT_SIGNATURE, payment);
            }
            req
        };
        let first = request(None).send().await?;
        if first.status().as_u16() != 402 {
            return finish(first).await;
        }
        let challenge = read_challenge(&first)?;
        let accepted = challenge
            .accepts
            .into_iter()
            .find(|a| a.scheme == SCHEME)
            .ok_or_else(|| Error::Requirements("no entry with scheme \"session\"".into()))?;
        let chain_id: u64 =
            accepted.network.strip_prefix("eip155:").and_then(|id| id.parse().ok()).ok_or_else(|| {
                Error::Requirements(format!("network {:?} is not eip155:<chainId>", accepted.network))
            })?;
        let domain = ContractDomain::new(
            accepted.extra.eip712.name.clone(),
            accepted.extra.eip712.version.clone(),
            chain_id,
            accepted.extra.validator,
        );
        let total = self.reserve(accepted.pay_to, accepted.amount)?;
        let signature = self.key.sign_digest(&domain.digest(&Voucher::new(self.key.address(), accepted.pay_to, total)));
        let payment = PaymentPayload {
            x402_version: X402_VERSION,
            accepted,
            payload: SessionPayload { session_key: self.key.address(), cumulative_amount: total, signature },
            extensions: None,
        };
        let second = request(Some(encode_header(&payment))).send().await?;
        if second.status().as_u16() == 402 {
            let refusal = read_challenge(&second)?;
            return Err(Error::Refused {
                code: refusal.error.map(|c| c.as_str().to_owned()).unwrap_or_default(),
                message: refusal.message.unwrap_or_default(),
            });
        }
        finish(second).await
    }

    /// Raises the signed total for `payee` by `price` and persists it before anything is sent.
    fn reserve(&self, payee: Address, price: Usdc) -> Result<U256, Error> {
        let mut totals =
            self.totals.lock().map_err(|_| Error::Counter { path: PathBuf::new(), reason: "poisoned".into() })?;
        let slot = slot(self.key.address(), payee);
        let total = totals.get(&slot).copied().unwrap_or_default() + price.to_u256();
        if total > self.cap.to_u256() {
            return Err(Error::CapExceeded { price, total, cap: self.cap });
        }
        totals.insert(slot, total);
        if let Some(path) = &self.counter_file {
            let json: HashMap<&String, String> = totals.iter().map(|(k, v)| (k, v.to_string())).collect();
            let tmp = path.with_extension("tmp");
            let err = |e: std::io::Error| Error::Counter { path: path.clone(), reason: e.to_string() };
            std::fs::write(&tmp, serde_json::to_vec_pretty(&json).unwrap_or_default()).map_err(err)?;
            std::fs::rename(&tmp, path).map_err(err)?;
        }
        Ok(total)
    }
}

fn slot(key: Address, payee: Address) -> String {
    format!("{key:#x}->{payee:#x}")
}

fn read_challenge(response: &reqwest::Response) -> Result<PaymentRequired, Error> {
    let header = response
        .headers()
        .get(PAYMENT_REQUIRED)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Error::Requirements("the 402 has no PAYMENT-REQUIRED header".into()))?;
    let json = base64::engine::general_purpose::STANDARD
        .decode(header)
        .map_err(|e| Error::Requirements(format!("PAYMENT-REQUIRED is not base64: {e}")))?;
    serde_json::from_slice(&json).map_err(|e| Error::Requirements(format!("PAYMENT-REQUIRED: {e}")))
}

async fn finish(response: reqwest::Response) -> Result<Paid, Error> {
    let status = response.status().as_u16();
    let receipt = response
        .headers()
        .get(PAYMENT_RESPONSE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
        .and_then(|json| serde_json::from_slice(&json).ok());
    Ok(Paid { status, receipt, body: response.text().await? })
}
