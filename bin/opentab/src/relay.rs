//! `opentab relay LISTEN=TARGET…` (hidden): forwards TCP ports, each `LISTEN` address to its
//! `TARGET`, until killed. `opentab chaos` runs it inside a network namespace, so a proxy there
//! reaches this host's PostgreSQL, chain, Redis nodes and upstream at the loopback addresses
//! the cluster's configuration names, through a veth link the suite can cut.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use clap::Args;
use opentab_topology::Link;

#[derive(Debug, Args)]
pub(crate) struct RelayArgs {
    /// `listen=target` pairs, e.g. `127.0.0.1:5432=10.88.0.1:5432`.
    #[arg(required = true)]
    pairs: Vec<String>,
}

pub(crate) async fn run(args: RelayArgs) -> anyhow::Result<()> {
    let mut links = Vec::with_capacity(args.pairs.len());
    for pair in &args.pairs {
        let (listen, target) = pair.split_once('=').with_context(|| format!("{pair:?} is not listen=target"))?;
        let listen: SocketAddr = listen.parse().with_context(|| format!("{listen:?} is not an address"))?;
        links.push(Link::start_on(listen, target).await?);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready: {} ports relayed", links.len())?;
    out.flush()?;
    drop(out);
    std::future::pending::<()>().await;
    Ok(())
}
