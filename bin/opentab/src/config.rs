//! `opentab config init [--from DATA_DIR] [--out FILE]`: writes a complete, commented config for
//! `opentab serve` and `opentab proxy`, every setting with its default or a placeholder to fill.
//! With `--from`, the chain settings come from a running `opentab dev`'s `chain.json`, and the
//! database is a SQLite file of its own beside it: `opentab serve --config` then mirrors dev's
//! chain, and `opentab proxy --config --upstream …` puts your API behind a gateway on it.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use opentab_core::Address;
use serde::Deserialize;

#[derive(Debug, Args)]
pub(crate) struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Write a complete, commented config for `opentab serve` and `opentab proxy`.
    Init {
        /// Fill the chain settings from this `opentab dev` data directory (its chain.json).
        #[arg(long, value_name = "DATA_DIR")]
        from: Option<PathBuf>,
        /// Write here instead of standard output (refuses to overwrite a file).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

/// What `chain.json` holds that the config needs.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DevChain {
    rpc_url: String,
    validator: Address,
    deployed_at_block: u64,
    demo_payee: Address,
}

/// The values that differ between a blank config and one made from `opentab dev`.
struct Values {
    source: String,
    database_url: String,
    rpc_url: String,
    validator: String,
    deployed_at_block: u64,
    payee: String,
    domain: String,
    confirmations: u64,
    secure_cookies: bool,
}

pub(crate) fn run(args: ConfigArgs) -> anyhow::Result<()> {
    let ConfigCommand::Init { from, out } = args.command;
    let values = match &from {
        Some(dir) => from_dev(dir)?,
        None => blank(),
    };
    let text = render(&values);
    match out {
        Some(path) => {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .with_context(|| format!("writing {} (it must not exist yet)", path.display()))?;
            file.write_all(text.as_bytes())?;
            writeln!(std::io::stderr().lock(), "wrote {}", path.display())?;
        }
        None => std::io::stdout().lock().write_all(text.as_bytes())?,
    }
    Ok(())
}

/// A config to fill in: placeholders for the required values, defaults for the rest.
fn blank() -> Values {
    Values {
        source: "Fill in the five required values (marked REQUIRED); every other line shows its default.".into(),
        database_url: "postgres://opentab@127.0.0.1/opentab".into(),
        rpc_url: "https://rpc.example/REQUIRED".into(),
        validator: "0x0000000000000000000000000000000000000000".into(),
        deployed_at_block: 0,
        payee: "0x0000000000000000000000000000000000000000".into(),
        domain: "api.example.com".into(),
        confirmations: 2,
        secure_cookies: true,
    }
}

fn from_dev(dir: &Path) -> anyhow::Result<Values> {
    let path = dir.join("chain.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("reading {} (start `opentab dev --data-dir {}` first)", path.display(), dir.display())
    })?;
    let chain: DevChain = serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?;
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    Ok(Values {
        source: format!(
            "Made from the `opentab dev` chain in {}: its anvil, validator and payee. The database is \
             a SQLite file of its own (dev's is dev's alone).",
            dir.display()
        ),
        database_url: format!("sqlite://{}", dir.join("serve.db").display()),
        rpc_url: chain.rpc_url,
        validator: format!("{:#x}", chain.validator),
        deployed_at_block: chain.deployed_at_block,
        payee: format!("{:#x}", chain.demo_payee),
        domain: "127.0.0.1:8404".into(),
        confirmations: 0,
        secure_cookies: false,
    })
}

fn render(v: &Values) -> String {
    format!(
        r#"# opentab configuration, read by `opentab serve --config FILE` and `opentab proxy --config FILE`.
# {source}
# Required: database_url, rpc_url, validator, payee, domain. Keys and secrets never go here: they
# come from the environment (OPENTAB_RELAYER_KEY, OPENTAB_SETTLER_KEY, OPENTAB_WEBHOOK_SECRET,
# OPENTAB_GATEWAY_SECRET, OPENTAB_GUARDIAN_KEY).

# --- opentab serve: the chain listener, the REST API, settlement and webhooks -------------------
listen = "{listen}"
# REQUIRED. postgres://user@host/db in production; sqlite://path (created if missing) works too.
database_url = "{database_url}"
# REQUIRED. The chain's JSON-RPC endpoint (https:// or http://).
rpc_url = "{rpc_url}"
# REQUIRED. The deployed SessionKeyValidator contract.
validator = "{validator}"
# Where the chain listener starts on its first run (the validator's deployment block).
deployed_at_block = {deployed_at_block}
# REQUIRED. The one payee this deployment charges for (use one payee per deployment).
payee = "{payee}"
# REQUIRED. What Sign-In with Ethereum messages must name: the host[:port] users reach the API at.
domain = "{domain}"
confirmations = {confirmations}
# Session cookies marked Secure (HTTPS); false only for plain-HTTP local use.
secure_cookies = {secure_cookies}
# webhook_url = "https://hooks.example.com/opentab"   # signed with OPENTAB_WEBHOOK_SECRET
settle_every_secs = 2
settle_lease_secs = 120              # a settlement worker's lease, renewed before each send
settle_tx_timeout_secs = 60          # how long a settlement's receipt is awaited
settle_confirmations = 12            # blocks before a settlement is final (a reorg is checked for)
# rule_guardian = "0x…"              # the account `opentab proxy` freezes keys on-chain with
# smtp_url = "smtp://127.0.0.1:25"   # rule alerts by email, sent from the outbox by serve
# alert_email = "ops@example.com"    # …to this mailbox (both or neither)
relay_daily_quota = 20               # relayed transactions per owner a day (freezes are free)
relay_min_tab = "1"                  # USDC an owner's tab must hold for key creations ("0": off)

[rate_limits]                        # requests a minute; 0 turns one off
sign_in_per_ip = 30
relays_per_ip = 30
relays_per_owner = 6
sessions_per_owner = 10
trust_forwarded_for = false          # true only behind a proxy that appends X-Forwarded-For

# --- opentab proxy: the HTTP 402 gateway in front of your API -------------------------------------
[proxy]
listen = "127.0.0.1:8403"
upstream = "http://127.0.0.1:9000"   # your API (or --upstream)
# redis_url = "redis://127.0.0.1:6379"   # counters shared by several proxies; in-process without
redis_prefix = "opentab"
timeout_secs = 60                    # the upstream's deadline; a timeout is a 504, voided
max_body_bytes = 16777216            # request bodies over this get 413
# spool_dir = "/var/lib/opentab/spool"   # voids waiting for the database (default: the user's state dir)
rules = "enforce"                    # the rules' seed mode: enforce, shadow (alerts only) or off; owners and keys may set their own

[proxy.routes]                       # "METHOD /path" = "price in USDC"; :id or {{id}} for a segment
"POST /v1/chat/completions" = "0.002"
# "GET /v1/models/:id" = "0.0001"
"#,
        source = v.source,
        listen = if v.secure_cookies { "127.0.0.1:8402" } else { v.domain.as_str() },
        database_url = v.database_url,
        rpc_url = v.rpc_url,
        validator = v.validator,
        deployed_at_block = v.deployed_at_block,
        payee = v.payee,
        domain = v.domain,
        confirmations = v.confirmations,
        secure_cookies = v.secure_cookies,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config_file::Reader;

    /// The written file names every setting the checker knows, and passes it for both readers.
    #[test]
    fn the_written_config_passes_the_check_of_serve_and_proxy() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("opentab.toml");
        std::fs::write(&path, render(&blank()))?;
        let serve: toml::Table = crate::config_file::read(&path, Reader::Serve)?;
        let _: toml::Table = crate::config_file::read(&path, Reader::Proxy)?;
        assert!(serve.contains_key("rate_limits") && serve.contains_key("proxy"));
        Ok(())
    }
}
