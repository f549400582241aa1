//! Paid traffic across the proxies, as agents send it: one task per session key, one logical
//! call after another. Each call gets an `Idempotency-Key`, and each attempt of it a request id
//! of its own (`x-request-id`, which the ledger keeps) and a voucher raised by the price, as
//! the paying client raises it. An attempt that fails without an answer from the API (503,
//! a connection refused or cut, a timeout) is retried on the next proxy with the same
//! idempotency key, so a call whose answer was lost is not charged twice. Every attempt is
//! logged, to check against the ledger afterwards.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use opentab_core::{Address, ContractDomain, SigningKey, U256, Usdc, Voucher};
use opentab_gateway::protocol::{
    IDEMPOTENCY_KEY, PAYMENT_RESPONSE, PAYMENT_SIGNATURE, PaymentPayload, Requirements, SessionPayload, X402_VERSION,
    encode_header,
};

/// Every tenth call goes to the route the API fails (the charge must be voided).
const FAILING_EVERY: u64 = 10;
/// How long an unresolved call keeps being retried once traffic is told to stop: past the
/// gateway's window for a retry whose first attempt died unrecorded (60 s).
const SETTLE_AFTER_STOP: Duration = Duration::from_secs(75);
/// Between two attempts of one call.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Where traffic goes and how it pays.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) proxies: Vec<String>,
    pub(crate) accepted: Requirements,
    pub(crate) domain: ContractDomain,
    pub(crate) payee: Address,
    pub(crate) price: Usdc,
}

/// What became of one logical call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Answered 200 with a receipt by attempt `n`.
    Served(usize),
    /// The API answered an error (no receipt): not charged.
    Voided,
    /// Refused as a duplicate: an earlier attempt was charged, its answer lost on the way.
    PaidUnseen,
    /// Refused with this 402 code: not charged.
    Refused(String),
    /// Still failing when traffic stopped: charged once at most.
    Unresolved,
}

/// One attempt of a call.
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    pub(crate) proxy: usize,
    pub(crate) request_id: String,
    pub(crate) started: Instant,
    pub(crate) ended: Instant,
    /// The HTTP status, or none when no answer came.
    pub(crate) status: Option<u16>,
}

/// One logical call and its attempts.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub(crate) outcome: Outcome,
    pub(crate) attempts: Vec<Attempt>,
}

/// Every call of one key.
#[derive(Debug, Clone)]
pub(crate) struct KeyLog {
    pub(crate) key: Address,
    pub(crate) calls: Vec<Call>,
}

/// Traffic under way; [`Traffic::stop`] ends it.
pub(crate) struct Traffic {
    stop: Arc<AtomicBool>,
    tasks: tokio::task::JoinSet<KeyLog>,
}

impl Traffic {
    /// One task per key, until stopped.
    pub(crate) fn start(target: &Target, keys: &[SigningKey]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .pool_max_idle_per_host(8)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        let mut tasks = tokio::task::JoinSet::new();
        for (n, key) in keys.iter().enumerate() {
            let agent = Agent { key: key.clone(), target: target.clone(), client: client.clone(), signed: U256::ZERO };
            tasks.spawn(agent.run(n, stop.clone()));
        }
        Self { stop, tasks }
    }

    /// Stops sending new calls, lets the calls under way resolve (retrying for up to 40 s),
    /// and returns every key's log.
    pub(crate) async fn stop(mut self) -> Vec<KeyLog> {
        self.stop.store(true, Ordering::SeqCst);
        let mut logs = Vec::new();
        while let Some(log) = self.tasks.join_next().await {
            if let Ok(log) = log {
                logs.push(log);
            }
        }
        logs
    }
}

/// One key's sender.
struct Agent {
    key: SigningKey,
    target: Target,
    client: reqwest::Client,
    /// Everything this key has promised the payee.
    signed: U256,
}

impl Agent {
    async fn run(mut self, offset: usize, stop: Arc<AtomicBool>) -> KeyLog {
        let mut calls = Vec::new();
        let mut turn = offset;
        let mut seq = 0_u64;
        while !stop.load(Ordering::SeqCst) {
            seq += 1;
            let call = self.call(seq, &mut turn, &stop).await;
            calls.push(call);
        }
        KeyLog { key: self.key.address(), calls }
    }

    async fn call(&mut self, seq: u64, turn: &mut usize, stop: &AtomicBool) -> Call {
        let path = if seq.is_multiple_of(FAILING_EVERY) { "fail" } else { "work" };
        let idempotency = format!("chaos-{:x}-{seq}", self.key.address());
        let mut attempts = Vec::new();
        let mut stopped_at: Option<Instant> = None;
        loop {
            let proxy = *turn % self.target.proxies.len();
            *turn += 1;
            let request_id = format!("{idempotency}-{}", attempts.len());
            let started = Instant::now();
            let answer = self.send(proxy, path, &idempotency, &request_id).await;
            let status = answer.as_ref().map(|a| a.status);
            attempts.push(Attempt { proxy, request_id, started, ended: Instant::now(), status });
            let outcome = match answer {
                Some(Answer { status: 200, receipt: true, .. }) => Some(Outcome::Served(attempts.len() - 1)),
                Some(Answer { status: 409, .. }) => Some(Outcome::PaidUnseen),
                // The API's own error reached the client: the charge was voided.
                Some(Answer { status: 500, receipt: false, .. }) if path == "fail" => Some(Outcome::Voided),
                Some(Answer { status: 402, body, .. }) => Some(Outcome::Refused(refusal_code(&body))),
                // 503 (cannot charge now), 502/504, no answer: try again.
                _ => None,
            };
            if let Some(outcome) = outcome {
                return Call { outcome, attempts };
            }
            if stop.load(Ordering::SeqCst) {
                let since = *stopped_at.get_or_insert_with(Instant::now);
                if since.elapsed() > SETTLE_AFTER_STOP {
                    return Call { outcome: Outcome::Unresolved, attempts };
                }
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// One attempt's answer; none when no answer came.
    async fn send(&mut self, proxy: usize, path: &str, idempotency: &str, request_id: &str) -> Option<Answer> {
        // Every attempt signs a higher voucher, as the paying client does: what is not charged
        // stays ahead, covering later calls.
        self.signed += self.target.price.to_u256();
        let voucher = Voucher::new(self.key.address(), self.target.payee, self.signed);
        let signature = self.key.sign_digest(&self.target.domain.digest(&voucher));
        let payment = PaymentPayload {
            x402_version: X402_VERSION,
            accepted: self.target.accepted.clone(),
            payload: SessionPayload { session_key: self.key.address(), cumulative_amount: self.signed, signature },
            extensions: None,
        };
        let response = self
            .client
            .post(format!("{}/v1/{path}", self.target.proxies[proxy]))
            .header(PAYMENT_SIGNATURE, encode_header(&payment))
            .header(IDEMPOTENCY_KEY, idempotency)
            .header("x-request-id", request_id)
            .body("{}")
            .send()
            .await
            .ok()?;
        let receipt = response.headers().contains_key(PAYMENT_RESPONSE);
        let status = response.status().as_u16();
        // Read the body: the answer is only whole (and the call served) once it is.
        let body = response.bytes().await.ok()?;
        Some(Answer { status, receipt, body: String::from_utf8_lossy(&body).into_owned() })
    }
}

/// What one attempt got back.
struct Answer {
    status: u16,
    /// A `PAYMENT-RESPONSE` came with it: charged.
    receipt: bool,
    body: String,
}

/// The `error` of a 402's JSON body.
fn refusal_code(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "402".to_owned())
}
