//! `opentab pay`: pays for calls to a priced route with a session key, as an agent would:
//! each 402 is answered with the next cumulative voucher. Reads `opentab dev`'s demo.json by
//! default; the signed totals persist in `<demo.json's folder>/client-totals.json`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use opentab_client::{Payer, PayingClient, Trust};
use opentab_core::{SigningKey, Usdc};

use crate::demo::DemoFile;

#[derive(Debug, Args)]
pub(crate) struct PayArgs {
    /// The demo file `opentab dev` writes (URL, route, session key).
    #[arg(long, env = "OPENTAB_DEMO", default_value = ".opentab/demo.json")]
    demo: PathBuf,
    /// How many calls to make.
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// The most this client will ever sign for the payee, in USDC.
    #[arg(long, default_value = "10")]
    cap: String,
    /// The most one call may cost, in USDC (default: the demo route's price). A 402 asking
    /// more, or naming another payee, chain or validator than demo.json's, is refused unsigned.
    #[arg(long)]
    max_price: Option<String>,
}

pub(crate) async fn run(args: PayArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.demo)
        .with_context(|| format!("reading {} (is `opentab dev` running? it writes this file)", args.demo.display()))?;
    let demo: DemoFile = serde_json::from_str(&text).with_context(|| format!("{}", args.demo.display()))?;
    let route = demo.routes.first().context("demo.json lists no route")?;
    let key: SigningKey = demo.session_key.private_key.parse().context("demo.json: sessionKey.privateKey")?;
    let cap = Usdc::parse_decimal(&args.cap).context("--cap")?;
    let counter = args.demo.with_file_name("client-totals.json");
    let max_price = match &args.max_price {
        Some(text) => Usdc::parse_decimal(text).context("--max-price")?,
        None => route.price,
    };
    let trust =
        Trust { payee: demo.payee, network: format!("eip155:{}", demo.chain_id), validator: demo.validator, max_price };
    let origin = reqwest::Url::parse(&demo.url).context("demo.json: url")?.origin().ascii_serialization();
    let client = PayingClient::new(Payer::new(key, cap, Some(counter))?.trust(&origin, trust));
    let method = reqwest::Method::from_bytes(route.method.as_bytes()).context("demo.json: route method")?;
    let url = format!("{}{}", demo.url, route.path);

    let mut out = std::io::stdout().lock();
    for i in 1..=args.count {
        let paid = client.send(method.clone(), &url, Some(&route.example_body)).await?;
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
    writeln!(out, "signed in total for {}: {} base units", demo.payee, client.signed_total(demo.payee))?;
    Ok(())
}
