//! Webhook delivery from the durable outbox, in the Standard Webhooks format: headers
//! `webhook-id`, `webhook-timestamp` (unix seconds) and `webhook-signature: v1,<base64 of
//! HMAC-SHA256 over "{id}.{timestamp}.{body}">`, keyed with the bytes of a `whsec_<base64>`
//! secret. A receiver verifies with any Standard Webhooks library, or [`verify`].

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use opentab_core::settlement::retry_delay;
use opentab_store::{OutboxEntry, Store};
use sha2::Sha256;

use crate::{Error, Result};

/// A `whsec_` signing secret.
#[derive(Clone)]
pub struct WebhookSecret(Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(…)")
    }
}

impl std::str::FromStr for WebhookSecret {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let encoded = text.strip_prefix("whsec_").ok_or_else(|| Error::BadSecret("it lacks the prefix".into()))?;
        let bytes = STANDARD.decode(encoded).map_err(|e| Error::BadSecret(format!("its base64 is invalid: {e}")))?;
        if bytes.len() < 16 {
            return Err(Error::BadSecret(format!("it holds {} bytes; use at least 16", bytes.len())));
        }
        Ok(Self(bytes))
    }
}

impl WebhookSecret {
    /// A new random secret (32 bytes).
    pub fn generate() -> Self {
        Self(rand::random::<[u8; 32]>().to_vec())
    }
}

impl std::fmt::Display for WebhookSecret {
    /// The `whsec_…` form, to hand to the receiver.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "whsec_{}", STANDARD.encode(&self.0))
    }
}

/// The `webhook-signature` header value for a message.
pub fn sign(secret: &WebhookSecret, id: &str, timestamp: u64, body: &str) -> String {
    format!("v1,{}", STANDARD.encode(mac(secret, id, timestamp, body).finalize().into_bytes()))
}

/// Whether `header` (space-separated `v1,<base64>` signatures) holds a valid signature of the
/// message. Constant-time in the comparison.
pub fn verify(secret: &WebhookSecret, id: &str, timestamp: u64, body: &str, header: &str) -> bool {
    header.split(' ').filter_map(|s| s.strip_prefix("v1,")).any(|encoded| {
        STANDARD.decode(encoded).is_ok_and(|sig| mac(secret, id, timestamp, body).verify_slice(&sig).is_ok())
    })
}

fn mac(secret: &WebhookSecret, id: &str, timestamp: u64, body: &str) -> Hmac<Sha256> {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&secret.0).unwrap_or_else(|_| unreachable!());
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    mac
}

/// Where and how webhooks are delivered.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// The receiver's URL.
    pub url: String,
    /// The signing secret.
    pub secret: WebhookSecret,
    /// Pause between rounds.
    pub poll_interval: Duration,
    /// The first retry waits about this long; each next one twice as long.
    pub retry_base: Duration,
    /// Deliveries tried before giving up on a webhook.
    pub max_attempts: u32,
    /// How long one delivery may take.
    pub timeout: Duration,
}

impl WebhookConfig {
    /// Defaults for `url`: a round a second, retries from 5 s (doubling), 8 attempts (about
    /// 10 minutes in all), 10 s per delivery.
    pub fn new(url: impl Into<String>, secret: WebhookSecret) -> Self {
        Self {
            url: url.into(),
            secret,
            poll_interval: Duration::from_secs(1),
            retry_base: Duration::from_secs(5),
            max_attempts: 8,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Deliveries under way at once: a slow receiver holds a round for one timeout per wave, not
/// one per webhook.
pub const CONCURRENT_DELIVERIES: u32 = 8;

/// Most webhooks one round takes (then the next round, a poll interval later, goes on).
pub const ROUND_MAX: u32 = 64;

/// Delivers the outbox to one receiver.
#[derive(Debug, Clone)]
pub struct WebhookSender {
    store: Store,
    client: reqwest_tls::Client,
    config: WebhookConfig,
}

impl WebhookSender {
    /// A sender for `store`'s outbox.
    pub fn new(store: Store, config: WebhookConfig) -> Result<Self> {
        opentab_chain::install_tls_provider();
        let client = reqwest_tls::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| Error::BadSecret(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self { store, client, config })
    }

    /// Rounds until `shutdown` resolves.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tracing::info!(url = %self.config.url, "webhook sender started");
        crate::run_rounds("webhooks", self.config.poll_interval, shutdown, || async {
            self.tick(crate::now()).await.map(|_| ())
        })
        .await;
    }

    /// Delivers what is due at `now`, [`CONCURRENT_DELIVERIES`] at a time and at most
    /// [`ROUND_MAX`] in a round; returns how many were delivered. Each wave is leased for one
    /// delivery's timeout, so senders on several nodes never deliver the same webhook at once.
    pub async fn tick(&self, now: u64) -> Result<u32> {
        let lease = self.config.timeout.as_secs() + 5;
        let (mut delivered, mut taken) = (0, 0);
        while taken < ROUND_MAX {
            let wave = self.store.take_webhooks(now, lease, CONCURRENT_DELIVERIES).await?;
            if wave.is_empty() {
                break;
            }
            taken += wave.len() as u32;
            let mut deliveries = tokio::task::JoinSet::new();
            for entry in wave {
                let sender = self.clone();
                deliveries.spawn(async move {
                    let outcome = sender.deliver(&entry, now).await;
                    (entry, outcome)
                });
            }
            while let Some(done) = deliveries.join_next().await {
                let Ok((entry, outcome)) = done else {
                    tracing::error!("a webhook delivery task failed; its webhook is due again when its lease ends");
                    continue;
                };
                match outcome {
                    Ok(()) => {
                        self.store.webhook_delivered(entry.id, now).await?;
                        delivered += 1;
                    }
                    Err(error) => self.failed(&entry, &error, now).await?,
                }
            }
        }
        Ok(delivered)
    }

    /// Records a failed delivery: retried after its backoff, or given up.
    async fn failed(&self, entry: &OutboxEntry, error: &str, now: u64) -> Result<()> {
        let failures = entry.attempts.saturating_add(1);
        let dead = failures >= self.config.max_attempts;
        let next = now + retry_delay(self.config.retry_base, failures, rand::random::<f64>()).as_secs().max(1);
        if dead {
            tracing::error!(id = %entry.webhook.event_id, error, "webhook given up after {failures} attempts");
        } else {
            tracing::warn!(id = %entry.webhook.event_id, error, attempts = failures, "webhook not delivered");
        }
        self.store.webhook_failed(entry.id, error, next, dead).await?;
        Ok(())
    }

    async fn deliver(&self, entry: &OutboxEntry, now: u64) -> Result<(), String> {
        let w = &entry.webhook;
        let response = self
            .client
            .post(&self.config.url)
            .header("content-type", "application/json")
            .header("webhook-id", &w.event_id)
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", sign(&self.config.secret, &w.event_id, now, &w.payload))
            .body(w.payload.clone())
            .send()
            .await
            .map_err(|e| format!("POST {}: {e}", self.config.url))?;
        let status = response.status();
        if status.is_success() { Ok(()) } else { Err(format!("the receiver answered {status}")) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_the_standard_webhooks_test_vector() -> Result<()> {
        // The example of the Standard Webhooks specification.
        let secret: WebhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse()?;
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let body = r#"{"test": 2432232314}"#;
        let signature = sign(&secret, id, 1_614_265_330, body);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(verify(&secret, id, 1_614_265_330, body, &format!("v1,bm9wZQ== {signature}")));
        assert!(!verify(&secret, id, 1_614_265_331, body, &signature), "another timestamp");
        assert!(!verify(&secret, id, 1_614_265_330, "{}", &signature), "another body");
        Ok(())
    }

    #[test]
    fn bad_secrets_say_what_is_wrong() {
        let err = |s: &str| s.parse::<WebhookSecret>().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").contains("prefix"));
        assert!(err("whsec_!!").contains("base64"));
        assert!(err("whsec_AAAA").contains("at least 16"));
        let generated = WebhookSecret::generate();
        assert!(generated.to_string().parse::<WebhookSecret>().is_ok(), "a generated secret round-trips");
    }
}
