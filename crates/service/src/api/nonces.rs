//! Sign-in nonces that cost nothing to hand out. A nonce is its issue time and eight random
//! bytes, sealed with a keyed hash (keccak256 over the deployment's secret and the rest: no
//! length extension, unlike SHA-2). Issuing one writes nothing; a login opens the seal, checks
//! the age, and only then records the nonce as spent, once.

use std::sync::Arc;

use opentab_core::keccak256;
use opentab_store::Store;
use tokio::sync::OnceCell;

use super::ApiError;

/// The secret's name in the store.
const SECRET: &str = "siwe-nonce-key";
/// Bytes of the keyed hash a nonce carries.
const TAG_LEN: usize = 16;

/// Issues and opens sealed nonces with the deployment's secret, read once from the store.
#[derive(Debug, Clone)]
pub(super) struct NonceSealer {
    store: Store,
    key: Arc<OnceCell<[u8; 32]>>,
}

impl NonceSealer {
    pub(super) fn new(store: Store) -> Self {
        Self { store, key: Arc::default() }
    }

    async fn key(&self) -> Result<&[u8; 32], ApiError> {
        self.key
            .get_or_try_init(|| async {
                let fresh = hex(&rand::random::<[u8; 32]>());
                let stored = self.store.server_secret(SECRET, &fresh).await?;
                let mut key = [0; 32];
                decode_hex(&stored, &mut key).ok_or_else(|| {
                    ApiError::internal(&std::io::Error::other("the stored nonce key is not 32 bytes of hex"))
                })?;
                Ok(key)
            })
            .await
    }

    /// A fresh nonce issued at `now`: 64 hex digits.
    pub(super) async fn issue(&self, now: u64) -> Result<String, ApiError> {
        let mut body = [0; 16];
        body[..8].copy_from_slice(&now.to_be_bytes());
        body[8..].copy_from_slice(&rand::random::<[u8; 8]>());
        let tag = seal(self.key().await?, &body);
        Ok(format!("{}{}", hex(&body), hex(&tag)))
    }

    /// When `nonce` was issued, if this deployment sealed it; `None` for anything else.
    pub(super) async fn issued_at(&self, nonce: &str) -> Result<Option<u64>, ApiError> {
        let mut bytes = [0; 16 + TAG_LEN];
        if decode_hex(nonce, &mut bytes).is_none() {
            return Ok(None);
        }
        let (body, tag) = bytes.split_at(16);
        let expected = seal(self.key().await?, body);
        // Compared in constant time: a timing difference would let a guess be refined byte by byte.
        let differ = expected.iter().zip(tag).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        let mut issued = [0; 8];
        issued.copy_from_slice(&body[..8]);
        Ok((differ == 0).then_some(u64::from_be_bytes(issued)))
    }
}

fn seal(key: &[u8; 32], body: &[u8]) -> [u8; TAG_LEN] {
    let mut input = Vec::with_capacity(32 + body.len());
    input.extend_from_slice(key);
    input.extend_from_slice(body);
    let mut tag = [0; TAG_LEN];
    tag.copy_from_slice(&keccak256(&input)[..TAG_LEN]);
    tag
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Fills `out` from exactly `2 * out.len()` hex digits.
fn decode_hex(text: &str, out: &mut [u8]) -> Option<()> {
    if text.len() != 2 * out.len() {
        return None;
    }
    for (byte, pair) in out.iter_mut().zip(text.as_bytes().chunks(2)) {
        let digit = |c: u8| (c as char).to_digit(16);
        *byte = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_the_wrong_length_or_digits() {
        let mut out = [0; 2];
        assert_eq!(decode_hex("0aFf", &mut out), Some(()));
        assert_eq!(out, [0x0a, 0xff]);
        assert_eq!(hex(&out), "0aff");
        assert_eq!(decode_hex("0af", &mut out), None);
        assert_eq!(decode_hex("0aff00", &mut out), None);
        assert_eq!(decode_hex("0agf", &mut out), None);
    }

    #[test]
    fn a_seal_depends_on_the_key_and_on_every_byte() {
        let body = [7; 16];
        let tag = seal(&[1; 32], &body);
        assert_ne!(tag, seal(&[2; 32], &body));
        let mut other = body;
        other[15] ^= 1;
        assert_ne!(tag, seal(&[1; 32], &other));
    }
}
