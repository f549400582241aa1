//! The x402 payment headers (`opentab_core::x402`): `decode_payment` (v2 `PAYMENT-SIGNATURE`)
//! and `decode_payment_v1` (v1 `X-PAYMENT`) on any input. Run: `scripts/fuzz.sh x402_header`.
//!
//! The input is tried twice: as the header itself (base64, size limit, trimming) and as the JSON
//! inside a well-formed header, so that mutations reach the payload's parser. Properties:
//! - neither decoder panics;
//! - a decoded v2 payment says version 2 and scheme `session`, and re-encoding it with
//!   `encode_header` and decoding again gives an equal payment, whose encoding is the same
//!   text again (the encoding is canonical), floats inside `extensions` included (serde_json's
//!   `float_roundtrip`; fuzzing found them drifting without it);
//! - a decoded v1 payment says version 1 and keeps the route's requirements but the network.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use opentab_core::x402::{
    Eip712Info, Requirements, SCHEME, SessionExtra, X402_VERSION, decode_payment, decode_payment_v1,
    encode_header,
};
use opentab_core::{Address, Usdc};

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = std::str::from_utf8(data) {
        check(header);
    }
    check(&STANDARD.encode(data));
});

fn check(header: &str) {
    if let Ok(payment) = decode_payment(header) {
        assert_eq!((payment.x402_version, payment.accepted.scheme.as_str()), (X402_VERSION, SCHEME));
        let _ = payment.payment_identifier();
        let encoded = encode_header(&payment);
        let again = match decode_payment(&encoded) {
            Ok(again) => again,
            Err(e) => panic!("decoded {header:?}, re-encoded as {encoded:?}, which does not decode: {e}"),
        };
        assert_eq!(again, payment, "re-encoded as {encoded:?}");
        assert_eq!(encode_header(&again), encoded, "the encoding of a payment is not canonical");
    }

    let route = route_requirements();
    if let Ok(payment) = decode_payment_v1(header, &route) {
        assert_eq!(payment.x402_version, 1);
        assert_eq!(payment.accepted, Requirements { network: payment.accepted.network.clone(), ..route });
        assert_eq!(payment.extensions, None);
    }
}

/// What a route requires, which a v1 payment is completed from.
fn route_requirements() -> Requirements {
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
