//! The domain core's error type.

/// Everything the domain core can refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An amount string is not a valid USDC amount.
    #[error("invalid USDC amount {input:?}: {reason}")]
    InvalidAmount {
        /// The text that was given.
        input: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// Arithmetic on amounts would leave the `u64` range.
    #[error("USDC amount overflow")]
    AmountOverflow,
    /// A signature is not 65 bytes of `r || s || v`.
    #[error("signature must be 65 bytes (r || s || v), got {0}")]
    SignatureLength(usize),
    /// The recovery byte `v` is not 0, 1, 27 or 28.
    #[error("signature recovery id v={0} is not 27 or 28")]
    RecoveryId(u8),
    /// `s` is in the upper half of the curve order (a malleable signature; the contract refuses it).
    #[error("signature is malleable (high s)")]
    HighS,
    /// No public key can be recovered from the signature and digest.
    #[error("signature does not recover to a public key")]
    Unrecoverable,
    /// A private key is not a valid secp256k1 scalar.
    #[error("invalid secp256k1 private key")]
    InvalidPrivateKey,
}

/// `Result` with the core [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;
