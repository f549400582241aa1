//! Run with `cargo bench -p opentab-gateway --bench decide`.
//!
//! The gateway's work per paid call, without I/O: decode the `PAYMENT-SIGNATURE` header, check
//! the key, verify the voucher (EIP-712 digest + libsecp256k1 recovery) and charge the
//! in-process counters. Storage and the ledger are in-memory twins here, so this is the floor
//! a deployment adds its database or Redis round trips to.

use std::sync::atomic::{AtomicU64, Ordering};

use divan::black_box;
use opentab_core::{Address, ContractDomain, SessionKey, SigningKey, U256, Usdc, Voucher};
use opentab_gateway::pricing::Pricing;
use opentab_gateway::protocol::{PaymentPayload, SessionPayload, X402_VERSION, decode_payment, encode_header};
use opentab_gateway::{Decision, GatewayConfig, InProcessCounters, KeyDirectory, KeyInfo, Unavailable, decide};

fn main() {
    divan::main();
}

struct OneKey(KeyInfo);

impl KeyDirectory for OneKey {
    async fn key(&self, _key: Address) -> Result<Option<KeyInfo>, Unavailable> {
        Ok(Some(self.0.clone()))
    }
}

/// Header decode + key check + voucher verification + atomic charge, one call each iteration
/// (each with the next cumulative voucher, as a real client sends).
#[divan::bench]
fn paid_call(bencher: divan::Bencher) {
    let payee = Address::repeat_byte(0x0e);
    let config = GatewayConfig {
        domain: ContractDomain::opentab(137, Address::repeat_byte(0x77)),
        asset: Address::repeat_byte(0x05),
        pay_to: payee,
        max_timeout_seconds: 60,
    };
    let Ok(pricing) = Pricing::new([("POST /v1/chat", "0.002")]) else { return };
    let route = pricing.routes()[0].clone();
    let key = SigningKey::random();
    let directory = OneKey(KeyInfo {
        key: SessionKey {
            address: key.address(),
            owner: Address::repeat_byte(0x01),
            payee,
            limit: Usdc::from_base_units(u64::MAX / 2),
            valid_after: 0,
            valid_until: u64::MAX / 2,
            frozen_at: None,
            revoked_at: None,
            settled: Usdc::ZERO,
        },
        frozen_offchain: false,
        tab_available: Usdc::from_base_units(u64::MAX / 2),
        owner_settled: Usdc::ZERO,
    });
    let counters = InProcessCounters::default();
    let runtime = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(_) => return,
    };
    // Headers are signed ahead (the client's cost), one per call.
    let n = AtomicU64::new(0);
    let headers: Vec<String> = (1..=20_000u64)
        .map(|i| {
            let total = U256::from(i * 2_000);
            let signature = key.sign_digest(&config.domain.digest(&Voucher::new(key.address(), payee, total)));
            encode_header(&PaymentPayload {
                x402_version: X402_VERSION,
                accepted: config.requirements(&route),
                payload: SessionPayload { session_key: key.address(), cumulative_amount: total, signature },
                extensions: None,
            })
        })
        .collect();
    bencher.bench_local(|| {
        let i = n.fetch_add(1, Ordering::Relaxed) as usize % headers.len();
        runtime.block_on(async {
            let Ok(payment) = decode_payment(black_box(&headers[i])) else { return false };
            matches!(decide(&config, &directory, &counters, &route, &payment, None, 1).await, Decision::Paid(_))
        })
    });
}
