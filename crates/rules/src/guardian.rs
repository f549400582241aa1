//! The guardian: sends the on-chain freezes the engine left in the outbox, as the account the
//! owners chose as their guardian (`setGuardian`). The contract lets a guardian freeze, never
//! unfreeze: the owner stays the only one who can restart spending.

use std::time::Duration;

use opentab_chain::Validator;
use opentab_core::Address;
use opentab_core::settlement::retry_delay;
use opentab_store::{AuditEntry, Effect, EffectKind, Store};
use serde_json::json;

/// How long one freeze transaction may take, mined.
const TX_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a guardian process holds an effect it took: past the send's timeout, so no other
/// guardian process sends it meanwhile.
const LEASE: Duration = Duration::from_secs(2 * 60);
/// Attempts before a freeze is given up (and audited as failed: the gateway's freeze holds).
const MAX_ATTEMPTS: u32 = 3;
/// How often the outbox is looked at.
const POLL: Duration = Duration::from_millis(500);

/// Sends the outbox's guardian freezes (see the module docs).
#[derive(Debug, Clone)]
pub struct Guardian {
    store: Store,
    validator: Validator,
    address: Address,
}

impl Guardian {
    /// `validator` must send from `address` (a provider signing with the guardian's key).
    pub const fn new(store: Store, validator: Validator, address: Address) -> Self {
        Self { store, validator, address }
    }

    /// The guardian's account.
    pub const fn address(&self) -> Address {
        self.address
    }

    /// Sends freezes until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            if let Err(err) = self.tick(crate::unix_now()).await {
                tracing::warn!(error = %err, "guardian: round failed");
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Sends the freezes due at `now`; returns how many were mined.
    pub async fn tick(&self, now: u64) -> crate::Result<u32> {
        let mut sent = 0;
        for effect in self.store.take_effects(EffectKind::GuardianFreeze, now, LEASE.as_secs(), 20).await? {
            if self.send(&effect, now).await? {
                sent += 1;
            }
        }
        Ok(sent)
    }

    async fn send(&self, effect: &Effect, now: u64) -> crate::Result<bool> {
        let key = effect.session_key;
        let outcome = match tokio::time::timeout(TX_TIMEOUT, self.validator.freeze(key)).await {
            Ok(Ok(outcome)) => Ok(outcome.tx_hash),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err(format!("not mined within {TX_TIMEOUT:?}")),
        };
        let failures = effect.attempts.saturating_add(1);
        let (action, detail, mined) = match outcome {
            Ok(tx) => {
                tracing::warn!(%key, %tx, rule = %effect.rule, "guardian froze the key on-chain");
                self.store.effect_done(effect.id, now).await?;
                ("key.guardian_freeze", json!({ "rule": effect.rule, "tx": tx }), true)
            }
            Err(error) => {
                let dead = failures >= MAX_ATTEMPTS;
                let jitter = (effect.id % 100) as f64 / 100.0;
                let next = now + retry_delay(Duration::from_secs(5), failures, jitter).as_secs().max(1);
                self.store.effect_failed(effect.id, &error, next, dead).await?;
                if !dead {
                    tracing::warn!(%key, error, attempts = failures, "guardian freeze not sent yet; retrying");
                    return Ok(false);
                }
                tracing::warn!(%key, error, "the guardian could not freeze the key on-chain; the gateway's freeze holds");
                ("key.guardian_freeze_failed", json!({ "rule": effect.rule, "error": error }), false)
            }
        };
        let entry = AuditEntry::about_key(now, self.address, action, key, &detail);
        self.store.audit(&entry).await?;
        Ok(mined)
    }
}
