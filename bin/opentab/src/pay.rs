//! `opentab pay`: pays for calls with a session key, as an agent would: each 402 is answered
//! with the next cumulative voucher. By default it calls `opentab dev`'s demo route with the
//! demo key, as `demo.json` names them; `--url`, `--method`, `--body` and `--key-file` point it
//! at any priced endpoint (your own API behind `opentab proxy` or `opentab dev`). The signed
//! totals persist in `--totals` (default `client-totals.json` beside demo.json).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use opentab_client::{Payer, PayingClient, Trust};
use opentab_core::{Address, SigningKey, Usdc};
use serde_json::Value;

use crate::demo::DemoFile;

/// What a call to another URL may cost by default.
const DEFAULT_MAX_PRICE: &str = "0.01";

#[derive(Debug, Args)]
pub(crate) struct PayArgs {
    /// The demo file `opentab dev` writes (URL, route, session key, payee, chain). Optional when
    /// --url, --key-file, --payee, --validator and --chain-id say it all.
    #[arg(long, env = "OPENTAB_DEMO", default_value = ".opentab/demo.json")]
    demo: PathBuf,
    /// The URL to pay for (default: the demo route of demo.json).
    #[arg(long, env = "OPENTAB_PAY_URL")]
    url: Option<String>,
    /// The HTTP method (default: the demo route's; with --url, POST when --body is given, else GET).
    #[arg(long)]
    method: Option<String>,
    /// The JSON body to send as application/json (default: the demo route's example; with --url, none).
    #[arg(long)]
    body: Option<String>,
    /// A file holding the session key's private key, 0x-hex (default: demo.json's demo key).
    #[arg(long, env = "OPENTAB_SESSION_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// The payee to sign for (default: demo.json's). A 402 naming another is refused unsigned.
    #[arg(long)]
    payee: Option<Address>,
    /// The validator contract to sign for (default: demo.json's).
    #[arg(long)]
    validator: Option<Address>,
    /// The chain to sign for (default: demo.json's).
    #[arg(long)]
    chain_id: Option<u64>,
    /// Where the signed totals are kept (default: client-totals.json beside demo.json).
    #[arg(long)]
    totals: Option<PathBuf>,
    /// How many calls to make.
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// The most this client will ever sign for the payee, in USDC.
    #[arg(long, default_value = "10")]
    cap: String,
    /// The most one call may cost, in USDC (default: the demo route's price; with --url, 0.01).
    /// A 402 asking more is refused unsigned.
    #[arg(long)]
    max_price: Option<String>,
}

/// The request to pay for, and what to sign for.
#[derive(Debug)]
struct Plan {
    url: String,
    method: reqwest::Method,
    body: Option<Value>,
    key: SigningKey,
    trust: Trust,
    totals: PathBuf,
}

fn plan(args: &PayArgs) -> anyhow::Result<Plan> {
    let demo = match std::fs::read_to_string(&args.demo) {
        Ok(text) => Some(serde_json::from_str::<DemoFile>(&text).with_context(|| format!("{}", args.demo.display()))?),
        Err(_) => None,
    };
    // Anything not given on the command line comes from demo.json; say which when it is absent.
    let missing = |what: &str| {
        anyhow::anyhow!(
            "{what} is not given and there is no {} to take it from (is `opentab dev` running? it writes that \
             file; or pass --url, --key-file, --payee, --validator and --chain-id)",
            args.demo.display()
        )
    };
    let route = demo.as_ref().and_then(|d| d.routes.first());
    let (url, demo_route) = match (&args.url, &demo, route) {
        (Some(url), _, _) => (url.clone(), None),
        (None, Some(demo), Some(route)) => {
            (format!("{}{}", demo.paid_url.as_deref().unwrap_or(&demo.url), route.path), Some(route))
        }
        (None, Some(_), None) => anyhow::bail!("{} lists no route: pass --url", args.demo.display()),
        (None, None, _) => return Err(missing("--url")),
    };
    let origin = reqwest::Url::parse(&url).with_context(|| format!("{url:?} is not a URL"))?;
    anyhow::ensure!(matches!(origin.scheme(), "http" | "https"), "{url:?} must be an http:// or https:// URL");
    let body = match (&args.body, demo_route) {
        (Some(text), _) => {
            Some(serde_json::from_str(text).context("--body must be JSON (it is sent as application/json)")?)
        }
        (None, Some(route)) if !route.example_body.is_null() => Some(route.example_body.clone()),
        (None, Some(_)) => None,
        (None, None) => None,
    };
    let method = match (&args.method, demo_route) {
        (Some(method), _) => method.to_ascii_uppercase(),
        (None, Some(route)) => route.method.clone(),
        (None, None) if body.is_some() => "POST".to_owned(),
        (None, None) => "GET".to_owned(),
    };
    let method = reqwest::Method::from_bytes(method.as_bytes()).with_context(|| format!("method {method:?}"))?;
    let key: SigningKey = match (&args.key_file, &demo) {
        (Some(path), _) => read_key(path)?,
        (None, Some(demo)) => demo.session_key.private_key.parse().context("demo.json: sessionKey.privateKey")?,
        (None, None) => return Err(missing("--key-file")),
    };
    let payee = args.payee.or(demo.as_ref().map(|d| d.payee)).ok_or_else(|| missing("--payee"))?;
    let validator = args.validator.or(demo.as_ref().map(|d| d.validator)).ok_or_else(|| missing("--validator"))?;
    let chain_id = args.chain_id.or(demo.as_ref().map(|d| d.chain_id)).ok_or_else(|| missing("--chain-id"))?;
    let max_price = match (&args.max_price, demo_route) {
        (Some(text), _) => Usdc::parse_decimal(text).context("--max-price")?,
        (None, Some(route)) => route.price,
        (None, None) => Usdc::parse_decimal(DEFAULT_MAX_PRICE)?,
    };
    let totals = args.totals.clone().unwrap_or_else(|| args.demo.with_file_name("client-totals.json"));
    let trust = Trust { payee, network: format!("eip155:{chain_id}"), validator, max_price };
    Ok(Plan { url, method, body, key, trust, totals })
}

fn read_key(path: &Path) -> anyhow::Result<SigningKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the key file {}", path.display()))?;
    // Never echo the file: it holds a private key.
    text.trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{} does not hold a private key (0x and 64 hex digits)", path.display()))
}

pub(crate) async fn run(args: PayArgs) -> anyhow::Result<()> {
    let plan = plan(&args)?;
    let cap = Usdc::parse_decimal(&args.cap).context("--cap")?;
    let origin = reqwest::Url::parse(&plan.url)?.origin().ascii_serialization();
    let payee = plan.trust.payee;
    let client = PayingClient::new(Payer::new(plan.key, cap, Some(plan.totals))?.trust(&origin, plan.trust));

    let mut out = std::io::stdout().lock();
    for i in 1..=args.count {
        let paid = client.send(plan.method.clone(), &plan.url, plan.body.as_ref()).await?;
        match &paid.receipt {
            Some(r) => writeln!(
                out,
                "call {i}: HTTP {} charged {} USDC, served {} USDC, {} USDC left",
                paid.status,
                r.receipt.charged.display(),
                r.receipt.served.display(),
                r.receipt.remaining.display()
            )?,
            None => writeln!(out, "call {i}: HTTP {} (no payment taken): {}", paid.status, paid.body)?,
        }
    }
    writeln!(out, "signed in total for {payee}: {} base units", client.signed_total(payee))?;
    Ok(())
}
