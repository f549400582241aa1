//! The x402 v2 HTTP transport with opentab's `session` scheme (DESIGN §3): the wire types and
//! header codecs the gateway and every paying client share (plain data, no I/O).
//!
//! Headers carry base64 (standard alphabet, padded) of JSON. Amounts are decimal strings of
//! USDC base units; `cumulativeAmount` is a decimal string of up to 256 bits.

use crate::{Address, Signature, U256, Usdc};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

/// The x402 protocol version opentab speaks.
pub const X402_VERSION: u32 = 2;
/// The scheme name of opentab's session-key vouchers.
pub const SCHEME: &str = "session";
/// Response header of a 402: what to pay.
pub const PAYMENT_REQUIRED: &str = "payment-required";
/// Request header carrying the payment (x402 v2).
pub const PAYMENT_SIGNATURE: &str = "payment-signature";
/// Request header carrying the payment (x402 v1, accepted too).
pub const X_PAYMENT: &str = "x-payment";
/// Response header of a paid call: the receipt.
pub const PAYMENT_RESPONSE: &str = "payment-response";

/// Why a payment was refused: the stable `error` codes of a 402.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The owner's tab with the payee cannot pay for the call.
    InsufficientFunds,
    /// The call would take the key past its limit.
    LimitExceeded,
    /// The key is frozen.
    KeyFrozen,
    /// The key is revoked.
    KeyRevoked,
    /// The key is outside its validity window.
    KeyExpired,
    /// The key is not registered.
    UnknownKey,
    /// The signature does not recover to the session key.
    InvalidSignature,
    /// The key may not pay this payee.
    WrongPayee,
    /// The payment names another network.
    WrongNetwork,
    /// The voucher does not cover everything served plus this call.
    VoucherTooLow,
    /// The payment header is not a valid payload.
    MalformedPayment,
    /// The request's idempotency key (`Idempotency-Key`, or x402's `payment-identifier`) was
    /// charged already: answered with 409, nothing charged again.
    DuplicatePayment,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: [Self; 12] = [
        Self::InsufficientFunds,
        Self::LimitExceeded,
        Self::KeyFrozen,
        Self::KeyRevoked,
        Self::KeyExpired,
        Self::UnknownKey,
        Self::InvalidSignature,
        Self::WrongPayee,
        Self::WrongNetwork,
        Self::VoucherTooLow,
        Self::MalformedPayment,
        Self::DuplicatePayment,
    ];

    /// The code as it appears on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InsufficientFunds => "insufficient_funds",
            Self::LimitExceeded => "limit_exceeded",
            Self::KeyFrozen => "key_frozen",
            Self::KeyRevoked => "key_revoked",
            Self::KeyExpired => "key_expired",
            Self::UnknownKey => "unknown_key",
            Self::InvalidSignature => "invalid_signature",
            Self::WrongPayee => "wrong_payee",
            Self::WrongNetwork => "wrong_network",
            Self::VoucherTooLow => "voucher_too_low",
            Self::MalformedPayment => "malformed_payment",
            Self::DuplicatePayment => "duplicate_payment",
        }
    }
}

/// The resource a 402 is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    /// The URL requested.
    pub url: String,
    /// What it is, for people.
    pub description: String,
    /// What it answers with.
    pub mime_type: String,
}

/// The EIP-712 domain's name and version of the validator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Eip712Info {
    /// Domain name.
    pub name: String,
    /// Domain version.
    pub version: String,
}

/// Scheme-specific requirements of `session`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionExtra {
    /// The `SessionKeyValidator` that verifies and settles vouchers.
    pub validator: Address,
    /// Its EIP-712 domain (with the network's chain id and `validator` as verifyingContract).
    pub eip712: Eip712Info,
}

/// One way to pay (an entry of `accepts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Requirements {
    /// Always `session`.
    pub scheme: String,
    /// CAIP-2 network, `eip155:<chainId>`.
    pub network: String,
    /// The price of this call in base units.
    pub amount: Usdc,
    /// The USDC token.
    pub asset: Address,
    /// The payee vouchers must name.
    pub pay_to: Address,
    /// How long the requirements stay valid.
    pub max_timeout_seconds: u64,
    /// The validator and its EIP-712 domain.
    pub extra: SessionExtra,
}

/// The body and `PAYMENT-REQUIRED` header of a 402.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequired {
    /// Always 2.
    pub x402_version: u32,
    /// Why the payment sent (if any) was refused; absent on a plain challenge.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<ErrorCode>,
    /// The same, for people.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub message: Option<String>,
    /// What was requested.
    pub resource: Resource,
    /// How it can be paid.
    pub accepts: Vec<Requirements>,
}

/// The `session` scheme's proof of payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionPayload {
    /// The paying session key.
    pub session_key: Address,
    /// Everything this key has promised this payee, this call included.
    #[serde(with = "decimal_u256")]
    pub cumulative_amount: U256,
    /// EIP-712 `Voucher` signature by the session key.
    pub signature: Signature,
}

/// The `PAYMENT-SIGNATURE` payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPayload {
    /// 2 (or 1 when it came as v1 `X-PAYMENT`).
    pub x402_version: u32,
    /// The requirements the client chose.
    pub accepted: Requirements,
    /// The voucher.
    pub payload: SessionPayload,
    /// x402 extensions; opentab reads `payment-identifier` (`{"info": {"id": "…"}}`) as the
    /// request's idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<serde_json::Value>,
}

impl PaymentPayload {
    /// The `payment-identifier` extension's id, if the client sent one.
    pub fn payment_identifier(&self) -> Option<&str> {
        let ext = self.extensions.as_ref()?.get("payment-identifier")?;
        ext.get("info").and_then(|info| info.get("id")).or_else(|| ext.get("id"))?.as_str()
    }
}

/// The request header carrying an idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// Checks an idempotency key: 1 to 128 of `A-Z a-z 0-9 _ - . :`.
pub fn check_idempotency_key(id: &str) -> Result<(), Malformed> {
    let ok = !id.is_empty()
        && id.len() <= MAX_IDEMPOTENCY_KEY
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(Malformed(format!(
            "an idempotency key is 1 to {MAX_IDEMPOTENCY_KEY} characters of A-Z, a-z, 0-9, '_', '-', '.', ':'"
        )))
    }
}

/// The receipt of a paid call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentReceipt {
    /// The paying key.
    #[serde(rename = "sessionKey")]
    pub session_key: Address,
    /// What this call cost.
    pub charged: Usdc,
    /// Everything charged to the key so far.
    pub served: Usdc,
    /// Limit left.
    pub remaining: Usdc,
}

/// The `PAYMENT-RESPONSE` header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentResponse {
    /// Always true (failures are 402s).
    pub success: bool,
    /// The owner whose tab pays.
    pub payer: Address,
    /// CAIP-2 network.
    pub network: String,
    /// The receipt.
    pub receipt: PaymentReceipt,
}

/// x402 v1's `X-PAYMENT` shape, for clients that still send it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PaymentPayloadV1 {
    x402_version: u32,
    scheme: String,
    network: String,
    payload: SessionPayload,
}

/// A payment header that could not be read; the 402 says `malformed_payment` with this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

/// Encodes a header value: base64 of the JSON.
pub fn encode_header<T: Serialize>(value: &T) -> String {
    // Serialising these plain structs cannot fail.
    STANDARD.encode(serde_json::to_vec(value).unwrap_or_default())
}

/// Decodes a `PAYMENT-SIGNATURE` header.
pub fn decode_payment(header: &str) -> Result<PaymentPayload, Malformed> {
    let json = decode_base64(header)?;
    let payment: PaymentPayload = serde_json::from_slice(&json).map_err(|e| Malformed(format!("payment JSON: {e}")))?;
    if payment.x402_version != X402_VERSION {
        return Err(Malformed(format!("x402Version {} is not supported; use 2", payment.x402_version)));
    }
    if payment.accepted.scheme != SCHEME {
        return Err(Malformed(format!("scheme {:?} is not supported; use \"session\"", payment.accepted.scheme)));
    }
    Ok(payment)
}

/// Decodes a v1 `X-PAYMENT` header into the v2 shape, completing `accepted` from what this
/// route requires (v1 payloads name only scheme and network).
pub fn decode_payment_v1(header: &str, required: &Requirements) -> Result<PaymentPayload, Malformed> {
    let json = decode_base64(header)?;
    let v1: PaymentPayloadV1 = serde_json::from_slice(&json).map_err(|e| Malformed(format!("payment JSON: {e}")))?;
    if v1.x402_version != 1 {
        return Err(Malformed(format!("X-PAYMENT must carry x402Version 1, not {}", v1.x402_version)));
    }
    if v1.scheme != SCHEME {
        return Err(Malformed(format!("scheme {:?} is not supported; use \"session\"", v1.scheme)));
    }
    let accepted = Requirements { network: v1.network, ..required.clone() };
    Ok(PaymentPayload { x402_version: 1, accepted, payload: v1.payload, extensions: None })
}

fn decode_base64(header: &str) -> Result<Vec<u8>, Malformed> {
    if header.len() > 16 * 1024 {
        return Err(Malformed("payment header is larger than 16 KiB".into()));
    }
    STANDARD.decode(header.trim()).map_err(|e| Malformed(format!("payment header is not base64: {e}")))
}

/// `U256` as a decimal string (alloy's own serde writes hex).
mod decimal_u256 {
    use crate::U256;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(value: &U256, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<U256, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(serde::de::Error::custom("cumulativeAmount must be a decimal string of base units"));
        }
        U256::from_str_radix(&text, 10).map_err(|_| serde::de::Error::custom("cumulativeAmount exceeds 2^256 - 1"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SigningKey;

    fn requirements() -> Requirements {
        Requirements {
            scheme: SCHEME.into(),
            network: "eip155:31337".into(),
            amount: Usdc::from_base_units(2_000),
            asset: Address::repeat_byte(0x05),
            pay_to: Address::repeat_byte(0x0e),
            max_timeout_seconds: 60,
            extra: SessionExtra {
                validator: Address::repeat_byte(0x77),
                eip712: Eip712Info { name: "opentab".into(), version: "1".into() },
            },
        }
    }

    fn payment(amount: &str) -> serde_json::Value {
        let key = SigningKey::random();
        let sig = key.sign_digest(&crate::keccak256(b"x"));
        serde_json::json!({
            "x402Version": 2,
            "accepted": requirements(),
            "payload": { "sessionKey": key.address(), "cumulativeAmount": amount, "signature": sig.to_string() },
        })
    }

    #[test]
    fn the_challenge_has_the_documented_shape() -> Result<(), Box<dyn std::error::Error>> {
        let challenge = PaymentRequired {
            x402_version: X402_VERSION,
            error: Some(ErrorCode::VoucherTooLow),
            message: Some("sign more".into()),
            resource: Resource {
                url: "http://x/v1/chat".into(),
                description: "chat".into(),
                mime_type: "application/json".into(),
            },
            accepts: vec![requirements()],
        };
        let json: serde_json::Value = serde_json::from_slice(&STANDARD.decode(encode_header(&challenge))?)?;
        assert_eq!(json["x402Version"], 2);
        assert_eq!(json["error"], "voucher_too_low");
        assert_eq!(json["accepts"][0]["scheme"], "session");
        assert_eq!(json["accepts"][0]["amount"], "2000", "amounts are decimal strings");
        assert_eq!(json["accepts"][0]["payTo"], format!("{:#x}", Address::repeat_byte(0x0e)));
        assert_eq!(json["accepts"][0]["maxTimeoutSeconds"], 60);
        assert_eq!(json["accepts"][0]["extra"]["eip712"]["name"], "opentab");
        assert_eq!(json["resource"]["mimeType"], "application/json");
        Ok(())
    }

    #[test]
    fn a_payment_round_trips_with_amounts_up_to_256_bits() -> Result<(), Malformed> {
        let max = U256::MAX.to_string();
        let header = STANDARD.encode(payment(&max).to_string());
        let decoded = decode_payment(&header)?;
        assert_eq!(decoded.payload.cumulative_amount, U256::MAX);
        assert_eq!(decode_payment(&encode_header(&decoded))?, decoded);
        Ok(())
    }

    #[test]
    fn floats_in_extensions_survive_a_round_trip() -> Result<(), Malformed> {
        // Found by fuzzing (fuzz/corpus/x402_header): without serde_json's `float_roundtrip`
        // this came back as 1.8446744073709551e78, and drifted on every round trip.
        let json = payment("1").to_string();
        let json = format!(
            "{},\"extensions\":{{\"f\":1844674407370955111111111111111111111111111111111111111111111111111111111111615}}}}",
            &json[..json.len() - 1]
        );
        let decoded = decode_payment(&STANDARD.encode(json))?;
        let encoded = encode_header(&decoded);
        let again = decode_payment(&encoded)?;
        assert_eq!(again, decoded);
        assert_eq!(encode_header(&again), encoded);
        Ok(())
    }

    #[test]
    fn malformed_payments_say_what_is_wrong() {
        let b64 = |v: serde_json::Value| STANDARD.encode(v.to_string());
        let mut wrong_version = payment("1");
        wrong_version["x402Version"] = 3.into();
        let mut wrong_scheme = payment("1");
        wrong_scheme["accepted"]["scheme"] = "exact".into();
        let mut short_sig = payment("1");
        short_sig["payload"]["signature"] = "0x1234".into();
        let cases = [
            ("%%%".to_owned(), "not base64"),
            (STANDARD.encode("{not json"), "payment JSON"),
            (b64(payment("-5")), "decimal string"),
            (b64(payment("0x10")), "decimal string"),
            (b64(payment(&format!("{}0", U256::MAX))), "2^256"),
            (b64(wrong_version), "x402Version 3"),
            (b64(wrong_scheme), "\"exact\""),
            (b64(short_sig), "65 bytes"),
            ("A".repeat(20_000), "16 KiB"),
        ];
        for (header, says) in cases {
            let err = decode_payment(&header).err().map(|e| e.0).unwrap_or_default();
            assert!(err.contains(says), "{err:?} should mention {says:?}");
        }
    }

    #[test]
    fn v1_x_payment_is_accepted_and_completed_from_the_route() -> Result<(), Malformed> {
        let v2 = payment("7");
        let v1 = serde_json::json!({ "x402Version": 1, "scheme": "session", "network": "eip155:31337", "payload": v2["payload"] });
        let decoded = decode_payment_v1(&STANDARD.encode(v1.to_string()), &requirements())?;
        assert_eq!((decoded.x402_version, decoded.payload.cumulative_amount), (1, U256::from(7)));
        assert_eq!(decoded.accepted.pay_to, requirements().pay_to);
        Ok(())
    }

    #[test]
    fn error_codes_are_the_documented_strings() -> Result<(), serde_json::Error> {
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code)?, code.as_str());
        }
        Ok(())
    }
}
