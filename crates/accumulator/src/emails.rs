//! Alert email from the outbox: the rule engine leaves each alert's email there, in the
//! transaction that records the alert; [`EmailSender`] sends it through an SMTP relay, each
//! within [`SMTP_TIMEOUT`], retried with backoff, so a slow or dead relay never holds a charge.

use std::time::Duration;

use opentab_core::settlement::retry_delay;
use opentab_store::{Effect, EffectKind, Store};

use crate::{Error, Result};

/// How long sending one email may take.
pub const SMTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts before an email is given up.
const MAX_ATTEMPTS: u32 = 5;
/// Alerts older than this when the sender first sees them are not emailed (a relay configured
/// today does not mail last month's alerts).
const MAX_AGE_SECS: u64 = 24 * 3600;

/// An SMTP relay and the mailbox alerts go to.
#[derive(Clone)]
pub struct Mailer {
    transport: lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
    from: lettre::message::Mailbox,
    to: lettre::message::Mailbox,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer").field("from", &self.from).field("to", &self.to).finish_non_exhaustive()
    }
}

impl Mailer {
    /// A mailer for `smtp://host:port` (plain SMTP: a relay on localhost or a private network)
    /// writing from `from` to `to`.
    pub fn new(smtp_url: &str, from: &str, to: &str) -> Result<Self> {
        let bad = |what: String| Error::Config(what);
        let rest =
            smtp_url.strip_prefix("smtp://").ok_or_else(|| bad(format!("{smtp_url:?} is not smtp://host:port")))?;
        let (host, port) = rest.rsplit_once(':').unwrap_or((rest, "25"));
        let port: u16 = port.trim_end_matches('/').parse().map_err(|_| bad(format!("bad port in {smtp_url:?}")))?;
        let transport = lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .timeout(Some(SMTP_TIMEOUT))
            .build();
        Ok(Self {
            transport,
            from: from.parse().map_err(|e| bad(format!("alert sender {from:?}: {e}")))?,
            to: to.parse().map_err(|e| bad(format!("alert recipient {to:?}: {e}")))?,
        })
    }

    async fn send(&self, subject: &str, body: String) -> Result<(), String> {
        use lettre::AsyncTransport;
        let message = lettre::Message::builder()
            .from(self.from.clone())
            .to(self.to.clone())
            .subject(subject)
            .body(body)
            .map_err(|e| e.to_string())?;
        let sent = tokio::time::timeout(SMTP_TIMEOUT, self.transport.send(message)).await;
        match sent {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err(format!("the relay did not answer within {SMTP_TIMEOUT:?}")),
        }
    }
}

/// Sends the outbox's alert email.
#[derive(Debug, Clone)]
pub struct EmailSender {
    store: Store,
    mailer: Mailer,
    poll_interval: Duration,
}

impl EmailSender {
    /// A sender for `store`'s outbox through `mailer`.
    pub const fn new(store: Store, mailer: Mailer) -> Self {
        Self { store, mailer, poll_interval: Duration::from_millis(500) }
    }

    /// Rounds until `shutdown` resolves.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tracing::info!(to = %self.mailer.to, "alert email sender started");
        crate::run_rounds("email", self.poll_interval, shutdown, || async {
            self.tick(crate::now()).await.map(|_| ())
        })
        .await;
    }

    /// Sends what is due at `now`; returns how many were sent.
    pub async fn tick(&self, now: u64) -> Result<u32> {
        let mut sent = 0;
        // The lease covers the relay's timeout, so two senders never mail one alert twice.
        let lease = SMTP_TIMEOUT.as_secs() * 2;
        for effect in self.store.take_effects(EffectKind::Email, now, lease, 20).await? {
            if effect.attempts == 0 && effect.created_at + MAX_AGE_SECS < now {
                self.store.effect_failed(effect.id, "too old to mail when first seen", now, true).await?;
                continue;
            }
            match self.send(&effect).await {
                Ok(()) => {
                    self.store.effect_done(effect.id, now).await?;
                    sent += 1;
                }
                Err(error) => {
                    let failures = effect.attempts.saturating_add(1);
                    let dead = failures >= MAX_ATTEMPTS;
                    let next =
                        now + retry_delay(Duration::from_secs(5), failures, rand::random::<f64>()).as_secs().max(1);
                    tracing::warn!(key = %effect.session_key, error, attempts = failures, dead, "alert email not sent (the webhook carries the alert)");
                    self.store.effect_failed(effect.id, &error, next, dead).await?;
                }
            }
        }
        Ok(sent)
    }

    async fn send(&self, effect: &Effect) -> Result<(), String> {
        let email: serde_json::Value = serde_json::from_str(&effect.payload).map_err(|e| e.to_string())?;
        let text = |field: &str| email.get(field).and_then(|v| v.as_str()).map(str::to_owned);
        let (Some(subject), Some(body)) = (text("subject"), text("body")) else {
            return Err("the outbox entry has no subject or body".to_owned());
        };
        self.mailer.send(&subject, body).await
    }
}
