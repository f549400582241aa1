//! secp256k1 signatures in Ethereum's `r || s || v` form, through libsecp256k1.
//!
//! Recovery is the gateway's per-call cost: libsecp256k1 recovers in ~25 µs where k256 took
//! ~136 µs on these machines (DESIGN §3), so the hot path uses the `secp256k1` crate. Like
//! OpenZeppelin's `ECDSA`, recovery refuses high-`s` signatures, so a voucher has exactly one
//! valid encoding on both sides.

use core::fmt;
use core::str::FromStr;

use alloy_primitives::{Address, B256, hex, keccak256};
use secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
use secp256k1::{Message, PublicKey, SECP256K1, SecretKey};

use crate::{Error, Result};

/// Half the secp256k1 group order: a signature with `s` above it is malleable.
const HALF_ORDER: [u8; 32] = hex!("7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0");

/// A 65-byte `r || s || v` signature with `v` in {27, 28}.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature([u8; 65]);

impl Signature {
    /// Reads `r || s || v`; `v` may be 0/1 or 27/28 and is normalised to 27/28.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let mut out: [u8; 65] = bytes.try_into().map_err(|_| Error::SignatureLength(bytes.len()))?;
        out[64] = match out[64] {
            0 | 27 => 27,
            1 | 28 => 28,
            v => return Err(Error::RecoveryId(v)),
        };
        Ok(Self(out))
    }

    /// The 65 bytes `r || s || v`.
    pub const fn as_bytes(&self) -> &[u8; 65] {
        &self.0
    }

    /// The signer of `digest`, refusing high-`s` (malleable) signatures as the contract does.
    pub fn recover(&self, digest: &B256) -> Result<Address> {
        let s: &[u8; 32] = self.0[32..64].try_into().map_err(|_| Error::SignatureLength(65))?;
        if s > &HALF_ORDER {
            return Err(Error::HighS);
        }
        let id = RecoveryId::try_from(i32::from(self.0[64] - 27)).map_err(|_| Error::RecoveryId(self.0[64]))?;
        let sig = RecoverableSignature::from_compact(&self.0[..64], id).map_err(|_| Error::Unrecoverable)?;
        let key = SECP256K1.recover_ecdsa(&Message::from_digest(digest.0), &sig).map_err(|_| Error::Unrecoverable)?;
        Ok(public_key_address(&key))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({self})")
    }
}

impl fmt::Display for Signature {
    /// `0x`-prefixed hex, the form used in JSON and on the wire.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode_prefixed(self.0))
    }
}

impl FromStr for Signature {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bytes = hex::decode(s).map_err(|_| Error::SignatureLength(s.len() / 2))?;
        Self::from_slice(&bytes)
    }
}

impl serde::Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A secp256k1 private key: a session key held by an agent, or an owner key in tests and dev.
#[derive(Clone)]
pub struct SigningKey {
    secret: SecretKey,
    address: Address,
}

impl SigningKey {
    /// A fresh key from the operating system's randomness.
    pub fn random() -> Self {
        Self::from_secret(SecretKey::new(&mut secp256k1::rand::thread_rng()))
    }

    /// The key with these 32 bytes.
    pub fn from_bytes(bytes: &B256) -> Result<Self> {
        SecretKey::from_byte_array(&bytes.0).map(Self::from_secret).map_err(|_| Error::InvalidPrivateKey)
    }

    fn from_secret(secret: SecretKey) -> Self {
        let address = public_key_address(&secret.public_key(SECP256K1));
        Self { secret, address }
    }

    /// The Ethereum address of this key.
    pub const fn address(&self) -> Address {
        self.address
    }

    /// The 32 private-key bytes. Handle with care: whoever has them can spend the key's limit.
    pub fn to_bytes(&self) -> B256 {
        B256::from(self.secret.secret_bytes())
    }

    /// Signs a 32-byte digest; libsecp256k1 always produces low-`s`.
    pub fn sign_digest(&self, digest: &B256) -> Signature {
        let sig = SECP256K1.sign_ecdsa_recoverable(&Message::from_digest(digest.0), &self.secret);
        let (id, rs) = sig.serialize_compact();
        let mut out = [0u8; 65];
        out[..64].copy_from_slice(&rs);
        // `RecoveryId` is 0 or 1 for signatures libsecp256k1 produces.
        out[64] = 27 + i32::from(id) as u8;
        Signature(out)
    }
}

impl fmt::Debug for SigningKey {
    /// Never prints the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("address", &self.address).finish_non_exhaustive()
    }
}

impl FromStr for SigningKey {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bytes = B256::from_str(s.trim()).map_err(|_| Error::InvalidPrivateKey)?;
        Self::from_bytes(&bytes)
    }
}

fn public_key_address(key: &PublicKey) -> Address {
    let uncompressed = key.serialize_uncompressed();
    Address::from_slice(&keccak256(&uncompressed[1..])[12..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_then_recover_round_trips() -> Result<()> {
        let key = SigningKey::random();
        let digest = keccak256(b"opentab");
        let sig = key.sign_digest(&digest);
        assert_eq!(sig.recover(&digest)?, key.address());
        assert_ne!(sig.recover(&keccak256(b"other"))?, key.address());
        Ok(())
    }

    #[test]
    fn high_s_is_refused() -> Result<()> {
        let key = SigningKey::random();
        let digest = keccak256(b"malleable");
        let sig = key.sign_digest(&digest);
        // The twin signature (r, n - s, v ^ 1) recovers the same key but must be refused.
        let order = alloy_primitives::U256::from_be_bytes(hex!(
            "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141"
        ));
        let s = alloy_primitives::U256::from_be_slice(&sig.as_bytes()[32..64]);
        let mut twin = *sig.as_bytes();
        twin[32..64].copy_from_slice(&(order - s).to_be_bytes::<32>());
        twin[64] = if twin[64] == 27 { 28 } else { 27 };
        assert_eq!(Signature::from_slice(&twin)?.recover(&digest), Err(Error::HighS));
        Ok(())
    }

    #[test]
    fn bad_encodings_are_refused() {
        assert_eq!(Signature::from_slice(&[0u8; 64]), Err(Error::SignatureLength(64)));
        let mut bytes = [1u8; 65];
        bytes[64] = 29;
        assert_eq!(Signature::from_slice(&bytes), Err(Error::RecoveryId(29)));
        assert!("0xzz".parse::<Signature>().is_err());
        assert!("0x00".parse::<SigningKey>().is_err());
        assert_eq!(SigningKey::from_bytes(&B256::ZERO).err(), Some(Error::InvalidPrivateKey));
    }

    #[test]
    fn zero_r_does_not_recover() {
        let mut bytes = [0u8; 65];
        bytes[64] = 27;
        let sig = Signature::from_slice(&bytes).map(|s| s.recover(&B256::ZERO));
        assert!(matches!(sig, Ok(Err(Error::Unrecoverable))), "{sig:?}");
    }
}
