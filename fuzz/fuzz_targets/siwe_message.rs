//! Sign-In with Ethereum (`opentab_core::siwe`): `SiweMessage::parse` on any text, and `verify`
//! with any signature bytes. Run: `scripts/fuzz.sh siwe_message`.
//!
//! The input is 65 signature bytes, `now` and `skew` (8 bytes each, little-endian), then the
//! message text (its longest UTF-8 prefix). Properties:
//! - `parse` does not panic;
//! - a parsed message, written again with `SiweMessage::compose`, parses to the same fields
//!   (`compose` always writes an expiration time and never `Not Before`);
//! - `verify` with any signature does not panic, and refuses another domain or chain by name;
//! - a message composed for a known key verifies with that key's signature inside its
//!   validity window, and with no other signature; the signature does not carry over to any
//!   other text.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use opentab_core::siwe::{SiweError, SiweMessage};
use opentab_core::{B256, Signature, SigningKey, eip191_hash_message};

const URI: &str = "http://localhost:8402";

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    signature: [u8; 65],
    now: u64,
    skew: u64,
    text: &'a str,
}

fuzz_target!(|input: Input<'_>| {
    let Ok(msg) = SiweMessage::parse(input.text) else { return };
    verify_any_signature(&msg, &input);
    recomposes(&msg);
    known_key_signs(&msg, &input);
});

/// `compose` of the parsed fields parses back to them.
fn recomposes(msg: &SiweMessage) {
    let expires = msg.expiration_time.unwrap_or(msg.issued_at);
    let text = compose(msg, msg.address, expires);
    let expected = SiweMessage { expiration_time: Some(expires), not_before: None, ..msg.clone() };
    assert_eq!(SiweMessage::parse(&text), Ok(expected), "recomposed as {text:?}");
}

/// `verify` with the fuzzer's signature bytes, as a header would carry them.
fn verify_any_signature(msg: &SiweMessage, input: &Input<'_>) {
    let Ok(signature) = Signature::from_slice(&input.signature) else { return };
    let result = msg.verify(input.text, &signature, &msg.domain, msg.chain_id, input.now, input.skew);
    assert!(
        !matches!(result, Err(SiweError::WrongDomain { .. } | SiweError::WrongChain { .. })),
        "the message's own domain and chain were refused: {result:?}"
    );
    let other_domain = format!("{}.other", msg.domain);
    assert!(matches!(
        msg.verify(input.text, &signature, &other_domain, msg.chain_id, input.now, input.skew),
        Err(SiweError::WrongDomain { .. })
    ));
    assert!(matches!(
        msg.verify(input.text, &signature, &msg.domain, msg.chain_id ^ 1, input.now, input.skew),
        Err(SiweError::WrongChain { .. })
    ));
}

/// The parsed fields composed for a known key: its signature verifies, no other does, and it
/// does not verify the fuzzer's text (unless that is the very same text).
fn known_key_signs(msg: &SiweMessage, input: &Input<'_>) {
    let key = &*KNOWN_KEY;
    let expires = msg.expiration_time.unwrap_or(msg.issued_at).max(msg.issued_at);
    let text = compose(msg, key.address(), expires);
    let Ok(signed) = SiweMessage::parse(&text) else {
        // `recomposes` has checked that the same text with another address parses.
        unreachable!("{text:?} does not parse");
    };
    let good = key.sign_digest(&eip191_hash_message(&text));
    let at =
        |text: &str, signature: &Signature| signed.verify(text, signature, &msg.domain, msg.chain_id, msg.issued_at, 0);
    assert_eq!(at(&text, &good), Ok(()), "{text:?}");
    if let Ok(other) = Signature::from_slice(&input.signature)
        && other != good
    {
        assert_eq!(at(&text, &other), Err(SiweError::BadSignature(key.address())), "{other:?} verified {text:?}");
    }
    if input.text != text {
        assert_eq!(at(input.text, &good), Err(SiweError::BadSignature(key.address())), "a signature moved texts");
    }
}

fn compose(msg: &SiweMessage, address: opentab_core::Address, expires: u64) -> String {
    SiweMessage::compose(&msg.domain, URI, address, msg.chain_id, &msg.nonce, msg.issued_at, expires)
}

static KNOWN_KEY: LazyLock<SigningKey> = LazyLock::new(|| match SigningKey::from_bytes(&B256::repeat_byte(0x11)) {
    Ok(key) => key,
    Err(e) => unreachable!("0x11… is a valid secp256k1 secret: {e}"),
});
