//! The conservation check, per key, after a scenario (issue 12):
//!
//! - every call the client was served (200 with a receipt) is held by the ledger: its
//!   request's charge stands (else it is **lost**);
//! - no call is charged more than once, nor charged when the client was not served (a charge
//!   standing beyond that is **doubled**);
//! - Σ charged − Σ voided, the ledger's served total, is what settled on-chain plus what is
//!   pending (settled never exceeds it);
//! - served ≤ the best voucher the key signed;
//! - no settlement intent was paid twice.
//!
//! And for the whole run, once everything settled: the payee's token balance is Σ settled.

use anyhow::Context;
use opentab_chain::Validator;
use opentab_core::{Address, U256, Usdc};
use opentab_gateway::RedisCounters;
use opentab_store::{SettlementStatus, Store};

use super::traffic::{KeyLog, Outcome};

/// What the check found for a set of keys.
#[derive(Debug, Default, Clone)]
pub(crate) struct Verdict {
    /// Logical calls made.
    pub(crate) calls: usize,
    /// Served to the client.
    pub(crate) served: usize,
    /// Served calls the ledger does not hold.
    pub(crate) lost: usize,
    /// Charges standing beyond one per served call.
    pub(crate) doubled: usize,
    /// Calls still unresolved when traffic stopped.
    pub(crate) unresolved: usize,
    /// Calls refused with a 402 (their codes).
    pub(crate) refused: Vec<String>,
    /// Charges standing for requests the API never answered: a proxy died after the charge
    /// committed and before the API's answer (the retry is refused as paid already). Not a
    /// broken rule (a charge is never served twice, and an answer once lost cannot be told from
    /// one never sent), but a cost of the crash, reported.
    pub(crate) charged_unanswered: usize,
    /// Keys whose counters say more than the ledger once quiet: charges a proxy took and died
    /// before recording. Safe (they refuse calls, never serve one unpaid), reported.
    pub(crate) over_counted: Vec<String>,
    /// Every broken rule, in words.
    pub(crate) problems: Vec<String>,
}

impl Verdict {
    /// Whether every rule held.
    pub(crate) fn holds(&self) -> bool {
        self.lost == 0 && self.doubled == 0 && self.problems.is_empty()
    }
}

/// Checks `logs` against the ledger and the chain.
pub(crate) async fn check(
    store: &Store,
    chain: &Validator,
    counters: &RedisCounters,
    upstream: &crate::cluster::Upstream,
    price: Usdc,
    logs: &[KeyLog],
) -> anyhow::Result<Verdict> {
    let mut v = Verdict::default();
    let price_units = i64::try_from(price.base_units())?;
    for log in logs {
        let key = log.key;
        let standing = store.standing_by_request(key).await?;
        let net = |id: &str| standing.get(id).copied().unwrap_or(0);
        for (seq, call) in log.calls.iter().enumerate() {
            v.calls += 1;
            for attempt in &call.attempts {
                let held = net(&attempt.request_id);
                if held != 0 && held != price_units {
                    v.problems.push(format!("key {key}: request {} nets {held} base units", attempt.request_id));
                }
            }
            let charged = call.attempts.iter().filter(|a| net(&a.request_id) == price_units).count();
            v.charged_unanswered += call
                .attempts
                .iter()
                .filter(|a| net(&a.request_id) == price_units && !upstream.served(&a.request_id))
                .count();
            let expected = match &call.outcome {
                Outcome::Served(n) => {
                    v.served += 1;
                    if call.attempts.get(*n).is_none_or(|a| net(&a.request_id) != price_units) {
                        v.lost += 1;
                        v.problems.push(format!("key {key}: call {seq} was served but the ledger does not hold it"));
                    }
                    1
                }
                Outcome::PaidUnseen => 1,
                Outcome::Voided => 0,
                Outcome::Refused(code) => {
                    v.refused.push(code.clone());
                    0
                }
                Outcome::Unresolved => {
                    v.unresolved += 1;
                    charged.min(1)
                }
            };
            if charged > expected {
                v.doubled += charged - expected;
                v.problems.push(format!("key {key}: call {seq} ({:?}) stands charged {charged} times", call.outcome));
            }
            if matches!(call.outcome, Outcome::PaidUnseen) && charged == 0 {
                v.problems.push(format!("key {key}: call {seq} was refused as paid already, but no charge stands"));
            }
        }
        let standing_total: i64 = standing.values().sum();
        let usage = store.usage_total(key).await?.unwrap_or_default();
        if i64::try_from(usage.served.base_units())? != standing_total {
            v.problems.push(format!("key {key}: the ledger's total {} is not the sum of its requests", usage.served));
        }
        if usage.served.to_u256() > usage.best {
            v.problems.push(format!("key {key}: served {} beyond the best voucher {}", usage.served, usage.best));
        }
        let record = chain.session_key(key).await?.context("a key the chain does not know")?;
        // Quiet now: the counters never say less than the ledger (a counter write a failover
        // lost would let the key be served past what it signed). They may say more: a charge a
        // killed proxy took and never recorded, until they are rebuilt (reported).
        let counted = counters.key(key, record.owner).await?.served;
        if counted < usage.served {
            v.problems.push(format!("key {key}: the counters say {counted} served, the ledger {}", usage.served));
        } else if counted > usage.served {
            v.over_counted.push(format!("key {key}: the counters say {counted} served, the ledger {}", usage.served));
        }
        let settled = record.settled;
        if settled > usage.served {
            v.problems.push(format!("key {key}: settled {settled} on-chain, beyond the {} served", usage.served));
        }
        v.problems.extend(paid_twice(store, key).await?);
        v.problems.extend(dropped_but_counted(store, chain, key).await?);
    }
    Ok(v)
}

/// Settlements of `key` recorded as paid by a transaction the chain does not hold (a reorg
/// dropped it): the payee would never be paid for them.
async fn dropped_but_counted(store: &Store, chain: &Validator, key: Address) -> anyhow::Result<Vec<String>> {
    use opentab_chain::alloy_provider::Provider;
    let mut problems = Vec::new();
    for s in store.settlements(Some(SettlementStatus::Succeeded), Some(key), 1_000).await? {
        let Some(tx) = s.tx_hash else { continue };
        if chain.provider().get_transaction_receipt(tx).await?.is_none() {
            problems.push(format!("key {key}: settlement {} counts as paid by {tx}, which the chain dropped", s.id));
        }
    }
    Ok(problems)
}

/// Intents of `key` that succeeded with a transaction for the same voucher more than once.
async fn paid_twice(store: &Store, key: Address) -> anyhow::Result<Vec<String>> {
    let done = store.settlements(Some(SettlementStatus::Succeeded), Some(key), 1_000).await?;
    let mut seen: std::collections::HashMap<U256, usize> = std::collections::HashMap::new();
    for s in done.iter().filter(|s| s.tx_hash.is_some()) {
        *seen.entry(s.intent.voucher).or_default() += 1;
    }
    Ok(seen
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(voucher, n)| format!("key {key}: voucher {voucher} was paid by {n} transactions"))
        .collect())
}

/// Once everything is settled: each key's on-chain settled total is the ledger's served total,
/// and the payee received exactly Σ settled. Problems, in words.
pub(crate) async fn settled_in_full(
    store: &Store,
    chain: &Validator,
    keys: &[Address],
    payee: Address,
    payee_before: U256,
) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut settled_sum = U256::ZERO;
    for key in keys {
        let served = store.usage_total(*key).await?.unwrap_or_default().served;
        let settled = chain.session_key(*key).await?.map(|k| k.settled).unwrap_or_default();
        settled_sum += settled.to_u256();
        if settled != served {
            problems.push(format!("key {key}: {settled} settled on-chain, {served} served"));
        }
    }
    let received = chain.usdc_balance(payee).await?.saturating_sub(payee_before);
    if received != settled_sum {
        problems.push(format!("the payee received {received}, the keys settled {settled_sum} in all"));
    }
    Ok(problems)
}
