//! Run with `cargo bench -p opentab-core --bench voucher_verify`.
//!
//! What the gateway pays per paid call to check a voucher: the EIP-712 digest against a
//! precomputed domain separator, and secp256k1 recovery through libsecp256k1.

use divan::black_box;
use opentab_core::{Address, ContractDomain, SigningKey, U256, Voucher};

fn main() {
    divan::main();
}

fn fixture() -> (ContractDomain, Voucher, opentab_core::Signature) {
    let domain = ContractDomain::opentab(137, Address::repeat_byte(0x42));
    let key = SigningKey::random();
    let voucher = Voucher::new(key.address(), Address::repeat_byte(0x07), U256::from(123_456_789u64));
    let signature = key.sign_digest(&domain.digest(&voucher));
    (domain, voucher, signature)
}

/// Digest only: two Keccak-256 rounds.
#[divan::bench]
fn digest(bencher: divan::Bencher) {
    let (domain, voucher, _) = fixture();
    bencher.bench(|| domain.digest(black_box(&voucher)));
}

/// Recovery only.
#[divan::bench]
fn recover(bencher: divan::Bencher) {
    let (domain, voucher, signature) = fixture();
    let digest = domain.digest(&voucher);
    bencher.bench(|| black_box(&signature).recover(black_box(&digest)));
}

/// The whole check: digest, recovery, comparison with the claimed key.
#[divan::bench]
fn verify_voucher(bencher: divan::Bencher) {
    let (domain, voucher, signature) = fixture();
    bencher.bench(|| {
        let digest = domain.digest(black_box(&voucher));
        signature.recover(&digest).map(|signer| signer == voucher.sessionKey)
    });
}
