//! opentab's accumulator (DESIGN §4): what the gateway served becomes money for the payee.
//!
//! - [`SettlementWorker`] plans a settlement when a key owes [`SETTLEMENT_THRESHOLD`] or stops
//!   (freeze, revoke, expiry, withdrawal request), writes the intent to the database, submits
//!   `settle` (or one `settleBatch` for several keys due together), waits for the receipt and
//!   marks it settled. Failures are retried with backoff and jitter up to
//!   [`MAX_RETRIES`](opentab_core::settlement::MAX_RETRIES) times, then dead-lettered until
//!   someone retries them by hand. Before sending anything it checks the chain, so a restart
//!   never pays twice; a lease keeps one key settling in one place when many workers run.
//! - [`WebhookSender`] delivers the outbox as Standard Webhooks, signed with a `whsec_` secret
//!   and retried with backoff.
//! - [`EmailSender`] sends the rule engine's alert email from the outbox through an SMTP relay
//!   ([`Mailer`]), each within a timeout, retried with backoff.
//!
//! Feature `test-utils`: [`testing`], a real SMTP listener for tests of alert email.
//!
//! Nothing is subtracted from counters after a settlement: `unsettled = served − settled`
//! where `settled` comes from the chain (see `opentab_core::charge`).
//!
//! [`SETTLEMENT_THRESHOLD`]: opentab_core::SETTLEMENT_THRESHOLD

mod emails;
mod settlement;
#[cfg(feature = "test-utils")]
pub mod testing;
mod webhooks;

pub use emails::{EmailSender, Mailer, SMTP_TIMEOUT};
pub use settlement::{SettlementConfig, SettlementWorker, TickReport};
pub use webhooks::{CONCURRENT_DELIVERIES, ROUND_MAX, WebhookConfig, WebhookSecret, WebhookSender, sign, verify};

/// What can stop a worker's round.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] opentab_store::Error),
    /// The chain failed.
    #[error(transparent)]
    Chain(#[from] opentab_chain::Error),
    /// A setting is unusable (an SMTP URL, a mailbox).
    #[error("{0}")]
    Config(String),
    /// A webhook secret is not `whsec_` + base64.
    #[error("a webhook secret is \"whsec_\" followed by base64; {0}")]
    BadSecret(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Unix seconds now.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Runs `tick` every `interval` until `shutdown` resolves; a failed round is logged and retried
/// after a longer pause, up to 30 s. A round under way is finished first: stopping between
/// sending a transaction and recording it would only make the next start check the chain.
pub(crate) async fn run_rounds<F, Fut>(
    what: &'static str,
    interval: std::time::Duration,
    shutdown: impl std::future::Future<Output = ()>,
    mut tick: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    tokio::pin!(shutdown);
    let mut pause = interval;
    loop {
        match tick().await {
            Ok(()) => pause = interval,
            Err(err) => {
                pause = (pause * 2).min(std::time::Duration::from_secs(30));
                tracing::warn!(error = %err, "{what}: round failed; trying again in {pause:?}");
            }
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}
