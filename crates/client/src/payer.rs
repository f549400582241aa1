//! The signing half of a paying client: reads a 402's requirements, checks them against what
//! the client trusts for that origin, raises the cumulative total for the payee (persisted
//! before the voucher leaves) and signs the voucher.
//!
//! A 402 is the server's word only: a hostile or mistaken page can name any payee, chain,
//! validator or price. A [`Payer`] signs only for origins it was given [`Trust`] for, and only
//! when the requirements name that trust's payee, network and validator at no more than its
//! per-call maximum; anything else is an [`Untrusted`] error and nothing is signed or counted
//! (DESIGN §3.6).

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

/// What a payer signs for at one origin: the payee, network and validator its session key was
/// registered for, and the most one call may cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trust {
    /// The only payee to sign for.
    pub payee: Address,
    /// The chain, as CAIP-2 (`eip155:137`).
    pub network: String,
    /// The `SessionKeyValidator` vouchers are signed for.
    pub validator: Address,
    /// The most one call may cost.
    pub max_price: Usdc,
}

/// A 402 that asked for something the payer does not trust; nothing was signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Untrusted {
    /// No trust settings for the origin.
    #[error("no trust settings for {origin}: give the payee, network, validator and maximum price to pay it")]
    Origin {
        /// `scheme://host:port` of the request.
        origin: String,
    },
    /// Another payee than the trusted one.
    #[error("{origin} asks to pay {asked}, not the trusted payee {trusted}")]
    Payee {
        /// The origin.
        origin: String,
        /// The 402's `payTo`.
        asked: Address,
        /// The trusted payee.
        trusted: Address,
    },
    /// Another chain.
    #[error("{origin} asks to sign for {asked}, not the trusted network {trusted}")]
    Network {
        /// The origin.
        origin: String,
        /// The 402's `network`.
        asked: String,
        /// The trusted network.
        trusted: String,
    },
    /// Another validator contract.
    #[error("{origin} asks to sign for validator {asked}, not the trusted {trusted}")]
    Validator {
        /// The origin.
        origin: String,
        /// The 402's `extra.validator`.
        asked: Address,
        /// The trusted validator.
        trusted: Address,
    },
    /// More than the per-call maximum.
    #[error("{origin} asks {asked} base units for one call, above the maximum of {max}")]
    Price {
        /// The origin.
        origin: String,
        /// The 402's `amount`.
        asked: Usdc,
        /// The trusted maximum.
        max: Usdc,
    },
}

impl Untrusted {
    /// A stable code for the refusal (`untrusted_payee`, `price_above_max`, …).
    pub const fn code(&self) -> &'static str {
        match self {
            Self::Origin { .. } => "untrusted_origin",
            Self::Payee { .. } => "untrusted_payee",
            Self::Network { .. } => "untrusted_network",
            Self::Validator { .. } => "untrusted_validator",
            Self::Price { .. } => "price_above_max",
        }
    }
}

/// Signs vouchers with a session key and keeps the cumulative totals, per payee.
#[derive(Debug)]
pub struct Payer {
    key: SigningKey,
    cap: Usdc,
    counter_file: Option<PathBuf>,
    totals: Mutex<HashMap<String, U256>>,
    trusted: HashMap<String, Trust>,
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
        Ok(Self { key, cap, counter_file, totals: Mutex::new(totals), trusted: HashMap::new() })
    }

    /// Trusts `origin` (`https://api.example.com`, `http://127.0.0.1:8402`: scheme, host and
    /// port) with `trust`. A payer signs for no origin it was not given.
    #[must_use]
    pub fn trust(mut self, origin: &str, trust: Trust) -> Self {
        self.trusted.insert(origin.trim_end_matches('/').to_ascii_lowercase(), trust);
        self
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

    /// Answers a 402 from `origin`: picks its `session` requirements, checks them against the
    /// origin's [`Trust`] and signs the next cumulative voucher for them. The raised total is on
    /// disk before this returns; an untrusted 402 signs and counts nothing.
    pub fn answer(&self, origin: &str, challenge: PaymentRequired) -> Result<PaymentPayload, Error> {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        let trust = self.trusted.get(&origin).ok_or_else(|| Untrusted::Origin { origin: origin.clone() })?;
        let mut offers = challenge.accepts.into_iter().filter(|a| a.scheme == SCHEME).peekable();
        if offers.peek().is_none() {
            return Err(Error::Requirements("no entry with scheme \"session\"".into()));
        }
        // The first offer within the trust; otherwise why the first one is not.
        let mut first_refusal = None;
        let accepted = offers
            .find(|a| match check(&origin, trust, a) {
                Ok(()) => true,
                Err(why) => {
                    first_refusal.get_or_insert(why);
                    false
                }
            })
            .ok_or_else(|| first_refusal.map_or(Error::Requirements("no session offer".into()), Error::from))?;
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

/// Whether `offer` is within `trust` for `origin`.
fn check(origin: &str, trust: &Trust, offer: &opentab_core::x402::Requirements) -> Result<(), Untrusted> {
    let origin = origin.to_owned();
    if offer.pay_to != trust.payee {
        return Err(Untrusted::Payee { origin, asked: offer.pay_to, trusted: trust.payee });
    }
    if offer.network != trust.network {
        return Err(Untrusted::Network { origin, asked: offer.network.clone(), trusted: trust.network.clone() });
    }
    if offer.extra.validator != trust.validator {
        return Err(Untrusted::Validator { origin, asked: offer.extra.validator, trusted: trust.validator });
    }
    if offer.amount > trust.max_price {
        return Err(Untrusted::Price { origin, asked: offer.amount, max: trust.max_price });
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use opentab_core::x402::{Eip712Info, Requirements, Resource, SessionExtra};

    use super::*;

    const ORIGIN: &str = "https://api.example.com";
    const PAYEE: Address = Address::repeat_byte(0xee);
    const VALIDATOR: Address = Address::repeat_byte(0x77);

    fn offer(amount: u64) -> Requirements {
        Requirements {
            scheme: SCHEME.into(),
            network: "eip155:137".into(),
            amount: Usdc::from_base_units(amount),
            asset: Address::repeat_byte(0x05),
            pay_to: PAYEE,
            max_timeout_seconds: 60,
            extra: SessionExtra {
                validator: VALIDATOR,
                eip712: Eip712Info { name: "opentab".into(), version: "1".into() },
            },
        }
    }

    fn challenge(offer: Requirements) -> PaymentRequired {
        PaymentRequired {
            x402_version: X402_VERSION,
            error: None,
            message: None,
            resource: Resource { url: "/v1/chat".into(), description: String::new(), mime_type: String::new() },
            accepts: vec![offer],
        }
    }

    fn payer() -> Result<Payer, Error> {
        let trust = Trust {
            payee: PAYEE,
            network: "eip155:137".into(),
            validator: VALIDATOR,
            max_price: Usdc::from_base_units(2_000),
        };
        Ok(Payer::new(SigningKey::random(), Usdc::from_base_units(1_000_000), None)?.trust(ORIGIN, trust))
    }

    #[test]
    fn a_hostile_402_is_refused_and_nothing_is_signed_or_counted() -> Result<(), Error> {
        let payer = payer()?;
        let mut cases: Vec<(Requirements, &str)> = Vec::new();
        cases.push((offer(1_000_000), "price_above_max")); // the whole cap in one call
        cases.push((Requirements { pay_to: Address::repeat_byte(0xbb), ..offer(2_000) }, "untrusted_payee"));
        cases.push((Requirements { network: "eip155:1".into(), ..offer(2_000) }, "untrusted_network"));
        let mut other_validator = offer(2_000);
        other_validator.extra.validator = Address::repeat_byte(0x66);
        cases.push((other_validator, "untrusted_validator"));
        for (offer, code) in cases {
            match payer.answer(ORIGIN, challenge(offer)) {
                Err(Error::Untrusted(why)) => assert_eq!(why.code(), code, "{why}"),
                other => panic!("{code}: expected a refusal, got {other:?}"),
            }
            assert_eq!(payer.signed_total(PAYEE), U256::ZERO, "{code}: nothing counted");
        }
        // An origin nobody trusted, however plausible its 402.
        let err = payer.answer("https://api.example.com.evil.test", challenge(offer(2_000)));
        assert!(matches!(err, Err(Error::Untrusted(Untrusted::Origin { .. }))), "{err:?}");
        assert_eq!(payer.signed_total(PAYEE), U256::ZERO);
        Ok(())
    }

    #[test]
    fn a_trusted_402_at_the_maximum_is_paid() -> Result<(), Error> {
        let payer = payer()?;
        // Exactly the maximum is signed; the origin matches whatever its case or a final slash.
        let paid = payer.answer("HTTPS://api.example.com/", challenge(offer(2_000)))?;
        assert_eq!(paid.payload.cumulative_amount, U256::from(2_000));
        assert_eq!(payer.signed_total(PAYEE), U256::from(2_000));
        // One base unit above it is not.
        assert!(matches!(
            payer.answer(ORIGIN, challenge(offer(2_001))),
            Err(Error::Untrusted(Untrusted::Price { .. }))
        ));
        // A trusted offer after an untrusted one in the same 402 is the one taken.
        let mut two = challenge(Requirements { pay_to: Address::repeat_byte(0xbb), ..offer(1) });
        two.accepts.push(offer(1_000));
        assert_eq!(payer.answer(ORIGIN, two)?.accepted.pay_to, PAYEE);
        Ok(())
    }
}
