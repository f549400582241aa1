//! [`PaymentMiddleware`] for `reqwest_middleware`, and [`PayingClient`] built on it.

use std::sync::Arc;

use opentab_core::x402::{PAYMENT_SIGNATURE, PaymentResponse, encode_header};
use opentab_core::{Address, U256};
use reqwest::header::HeaderValue;
use reqwest::{Request, Response, StatusCode};
use reqwest_middleware::{ClientWithMiddleware, Middleware, Next};

use crate::{Error, Payer, read_challenge, receipt_of, refusal_of};

/// Pays the 402s of every request sent through a `reqwest_middleware` client: the request is
/// sent again, once, with the next cumulative voucher. A request that already carries a
/// payment, or a second 402 (a refusal: frozen key, limit reached…), is handed back as it
/// is; [`refusal_of`] reads its reason. Errors of this middleware are [`Error`]s
/// (`Error::from(reqwest_middleware::Error)` gives them back).
#[derive(Debug, Clone)]
pub struct PaymentMiddleware {
    payer: Arc<Payer>,
}

impl PaymentMiddleware {
    /// A middleware paying with `payer`.
    pub fn new(payer: Payer) -> Self {
        Self { payer: Arc::new(payer) }
    }

    /// A middleware sharing `payer` (and its totals) with other clients.
    pub const fn shared(payer: Arc<Payer>) -> Self {
        Self { payer }
    }

    /// The payer signing for this middleware.
    pub const fn payer(&self) -> &Arc<Payer> {
        &self.payer
    }
}

#[async_trait::async_trait]
impl Middleware for PaymentMiddleware {
    async fn handle(
        &self,
        req: Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let paid_already = req.headers().contains_key(PAYMENT_SIGNATURE);
        let replay = req.try_clone();
        let first = next.clone().run(req, extensions).await?;
        if first.status() != StatusCode::PAYMENT_REQUIRED || paid_already {
            return Ok(first);
        }
        let mut replay = replay.ok_or_else(|| reqwest_middleware::Error::middleware(Error::NotReplayable))?;
        // The origin that asked is the one that answered, which a redirect may have changed:
        // trust is checked against it, and a 402 from anywhere but the request's own origin is
        // refused (the paid retry goes to the request's origin, not to where it was sent).
        let origin = replay.url().origin().ascii_serialization();
        let answered = first.url().origin().ascii_serialization();
        if answered != origin {
            return Err(reqwest_middleware::Error::middleware(Error::Untrusted(crate::Untrusted::Origin {
                origin: answered,
            })));
        }
        let payment = read_challenge(first.headers())
            .and_then(|challenge| self.payer.answer(&origin, challenge))
            .map_err(reqwest_middleware::Error::middleware)?;
        let header = HeaderValue::from_str(&encode_header(&payment))
            .map_err(|e| reqwest_middleware::Error::middleware(Error::Requirements(e.to_string())))?;
        replay.headers_mut().insert(PAYMENT_SIGNATURE, header);
        next.run(replay, extensions).await
    }
}

/// What a paid (or free) request returned.
#[derive(Debug)]
pub struct Paid {
    /// HTTP status of the final answer.
    pub status: u16,
    /// Its body.
    pub body: String,
    /// The receipt, when a payment was made.
    pub receipt: Option<PaymentResponse>,
}

/// A reqwest client with [`PaymentMiddleware`], for scripts that want status, body and receipt
/// in one value and a refused payment as an error.
#[derive(Debug, Clone)]
pub struct PayingClient {
    http: ClientWithMiddleware,
    payer: Arc<Payer>,
}

impl PayingClient {
    /// A client paying with `payer` (see [`Payer::new`] and [`Payer::trust`]). It follows
    /// redirects only within one origin, so a paid request's voucher never leaves it.
    pub fn new(payer: Payer) -> Self {
        let payer = Arc::new(payer);
        let same_origin = reqwest::redirect::Policy::custom(|attempt| {
            let from = attempt.previous().last().map(|u| u.origin());
            if from.as_ref() == Some(&attempt.url().origin()) && attempt.previous().len() < 10 {
                attempt.follow()
            } else {
                attempt.stop()
            }
        });
        let client = reqwest::Client::builder().redirect(same_origin).build().unwrap_or_default();
        let http =
            reqwest_middleware::ClientBuilder::new(client).with(PaymentMiddleware::shared(payer.clone())).build();
        Self { http, payer }
    }

    /// The underlying client, for requests of any shape (each one pays when asked to).
    pub const fn http(&self) -> &ClientWithMiddleware {
        &self.http
    }

    /// The session key's address.
    pub fn address(&self) -> Address {
        self.payer.address()
    }

    /// What this client has signed in total for `payee`.
    pub fn signed_total(&self, payee: Address) -> U256 {
        self.payer.signed_total(payee)
    }

    /// Sends `method url` with an optional JSON `body`, paying if asked to. A refused
    /// payment is [`Error::Refused`].
    pub async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Paid, Error> {
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        let response = request.send().await?;
        if let Some((code, message)) = refusal_of(&response) {
            return Err(Error::Refused { code, message });
        }
        let status = response.status().as_u16();
        let receipt = receipt_of(&response);
        Ok(Paid { status, receipt, body: response.text().await? })
    }
}
