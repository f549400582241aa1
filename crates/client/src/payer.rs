//! The signing half of a paying client: reads a 402's requirements, raises the cumulative
//! total for the payee (persisted before the voucher leaves) and signs the voucher.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use base64::Engine;
use opentab_core::x402::{
    PAYMENT_REQUIRED, PAYMENT_RESPONSE, PaymentPayload, PaymentRequired, PaymentResponse, SCHEME, SessionPayload,
    X402_VERSION,
};
use opentab_core::{Address, ContractDomain, SigningKey, U256, Usdc, Voucher};

use crate::Error;

/// Signs vouchers with a session key and keeps the cumulative totals, per payee.
#[derive(Debug)]
pub struct Payer {
    key: SigningKey,
    cap: Usdc,
    counter_file: Option<PathBuf>,
    totals: Mutex<HashMap<String, U256>>,
}

impl Payer {
    /// A payer signing with `key`, never signing more than `cap` in total per payee, keeping
    /// its totals in `counter_file` (or only in memory with `None`: a restarted process then
    /// starts from zero and its vouchers are refused as too low until they catch up).
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
        Ok(Self { key, cap, counter_file, totals: Mutex::new(totals) })
    }

    /// The session key's address.
    pub fn address(&self) -> Address {
        self.key.address()
    }

    /// What this payer has signed in total for `payee`.
    pub fn signed_total(&self, payee: Address) -> U256 {
        self.totals
            .lock()
            .map(|t| t.get(&slot(self.key.address(), payee)).copied().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Answers a 402: picks its `session` requirements and signs the next cumulative voucher
    /// for them. The raised total is on disk before this returns.
    pub fn answer(&self, challenge: PaymentRequired) -> Result<PaymentPayload, Error> {
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
        Ok(PaymentPayload {
            x402_version: X402_VERSION,
            accepted,
            payload: SessionPayload { session_key: self.key.address(), cumulative_amount: total, signature },
            extensions: None,
        })
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

fn decode<T: serde::de::DeserializeOwned>(value: &[u8]) -> Result<T, String> {
    let json = base64::engine::general_purpose::STANDARD.decode(value).map_err(|e| format!("not base64: {e}"))?;
    serde_json::from_slice(&json).map_err(|e| e.to_string())
}

/// The requirements of a 402, from its `PAYMENT-REQUIRED` header.
pub fn read_challenge(headers: &reqwest::header::HeaderMap) -> Result<PaymentRequired, Error> {
    let header = headers
        .get(PAYMENT_REQUIRED)
        .ok_or_else(|| Error::Requirements("the 402 has no PAYMENT-REQUIRED header".into()))?;
    decode(header.as_bytes()).map_err(|e| Error::Requirements(format!("PAYMENT-REQUIRED: {e}")))
}

/// The receipt of a paid response (its `PAYMENT-RESPONSE` header), if it was paid for.
pub fn receipt_of(response: &reqwest::Response) -> Option<PaymentResponse> {
    decode(response.headers().get(PAYMENT_RESPONSE)?.as_bytes()).ok()
}

/// Why the gateway refused the payment, when `response` is a 402 that carries a reason
/// (`("key_frozen", "session key 0x… is frozen")`, say).
pub fn refusal_of(response: &reqwest::Response) -> Option<(String, String)> {
    if response.status() != reqwest::StatusCode::PAYMENT_REQUIRED {
        return None;
    }
    let challenge = read_challenge(response.headers()).ok()?;
    Some((challenge.error?.as_str().to_owned(), challenge.message.unwrap_or_default()))
}
