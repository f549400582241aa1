//! Paying clients for opentab's HTTP 402 gateway.
//!
//! A paid call goes out once without payment; on `402 Payment Required` the client reads the
//! `session` requirements, signs the next cumulative voucher (everything this key ever
//! promised this payee, plus the price) and sends the same request again with it. Two ways
//! to use it:
//!
//! - [`PaymentMiddleware`], a [`reqwest_middleware`] middleware: every request sent through
//!   the client pays when asked to, whatever its method, headers or body. A 402 reached through
//!   a redirect to another origin is refused; give the client a redirect policy that stays
//!   within one origin (as [`PayingClient`] does), so a paid retry is never carried elsewhere.
//! - [`PayingClient`], a small convenience over it that returns status, body and receipt.
//!
//! Both sign with a [`Payer`]: it signs only for the origins it was given [`Trust`] for (their
//! payee, network, validator and a per-call maximum price; any other 402 is an [`Untrusted`]
//! error, nothing signed), writes the running total to a file before each voucher leaves, so a
//! restarted client never signs a lower total than one it already gave away, and a spending
//! cap bounds what it will ever sign.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use opentab_client::{Payer, PaymentMiddleware, Trust, receipt_of};
//! use opentab_core::{SigningKey, Usdc};
//!
//! let key: SigningKey = std::env::var("SESSION_KEY")?.parse()?;
//! // Never sign more than 5 USDC in total; remember the total across restarts. Pay only this
//! // API, only to the payee and validator the key was registered for, at most 0.01 a call.
//! let payer = Payer::new(key, Usdc::parse_decimal("5")?, Some("totals.json".into()))?.trust(
//!     "http://127.0.0.1:8402",
//!     Trust {
//!         payee: "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC".parse()?,
//!         network: "eip155:31337".into(),
//!         validator: "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512".parse()?,
//!         max_price: Usdc::parse_decimal("0.01")?,
//!     },
//! );
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(PaymentMiddleware::new(payer))
//!     .build();
//! let response = client
//!     .post("http://127.0.0.1:8402/v1/chat/completions")
//!     .header("content-type", "application/json")
//!     .body(r#"{"messages":[{"role":"user","content":"hi"}]}"#)
//!     .send()
//!     .await?;
//! if let Some(paid) = receipt_of(&response) {
//!     println!("charged {}, {} left", paid.receipt.charged, paid.receipt.remaining);
//! }
//! # Ok(())
//! # }
//! ```

mod middleware;
mod payer;

pub use middleware::{Paid, PayingClient, PaymentMiddleware};
pub use payer::{Payer, Trust, Untrusted, read_challenge, receipt_of, refusal_of};

use std::path::PathBuf;

use opentab_core::{U256, Usdc};

/// Why a paid request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The HTTP request itself failed.
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// Another middleware in the stack failed.
    #[error("middleware failed: {0}")]
    Middleware(String),
    /// The 402 did not offer the `session` scheme in a form this client understands.
    #[error("the 402 offers no usable `session` payment: {0}")]
    Requirements(String),
    /// Paying would take the signed total past the client's cap.
    #[error("paying {price} would bring the signed total to {total}, past the cap of {cap} (base units)")]
    CapExceeded {
        /// This call's price.
        price: Usdc,
        /// The total that would be signed.
        total: U256,
        /// The cap.
        cap: Usdc,
    },
    /// The request's body is a stream, which cannot be sent a second time with the payment.
    #[error("the request body is a stream: a paid call is sent twice, so give a body that can be replayed")]
    NotReplayable,
    /// The gateway refused the voucher.
    #[error("payment refused: {code}: {message}")]
    Refused {
        /// The 402's `error`.
        code: String,
        /// The 402's `message`.
        message: String,
    },
    /// The 402 asked for something this client does not trust; nothing was signed.
    #[error("refused to sign: {0}")]
    Untrusted(#[from] Untrusted),
    /// The counter file could not be read or written.
    #[error("counter file {path}: {reason}")]
    Counter {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

impl From<reqwest_middleware::Error> for Error {
    /// Gives back this crate's own error when [`PaymentMiddleware`] raised it.
    fn from(err: reqwest_middleware::Error) -> Self {
        match err {
            reqwest_middleware::Error::Reqwest(e) => Self::Http(e),
            reqwest_middleware::Error::Middleware(e) => match e.downcast::<Self>() {
                Ok(ours) => ours,
                Err(other) => Self::Middleware(format!("{other:#}")),
            },
        }
    }
}
