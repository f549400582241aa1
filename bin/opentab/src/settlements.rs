//! `opentab settlements list|retry|authorize`: the operator's view of the settlement queue, read
//! from the database directly (the operator owns it): what settled with which transaction, what
//! is waiting for a retry, and what was dead-lettered, which `retry` puts back in the queue.
//! `authorize` lets a settlement worker's account settle for the payee (the contract accepts
//! settlements only from the payee and the settlers it authorised).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use opentab_core::Address;
use opentab_store::{Settlement, SettlementStatus, Store};

use crate::output::{now, relative, table, usdc};

#[derive(Debug, Args)]
pub(crate) struct SettlementsArgs {
    /// The database (`postgres://…` or `sqlite://…`). Default: opentab dev's, under --data-dir.
    #[arg(long, env = "OPENTAB_DATABASE_URL", global = true)]
    database_url: Option<String>,
    /// opentab dev's data directory.
    #[arg(long, env = "OPENTAB_DATA_DIR", default_value = ".opentab", global = true)]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: SettlementsCommand,
}

#[derive(Debug, Subcommand)]
enum SettlementsCommand {
    /// Settlements, newest first.
    List {
        /// Only these: pending, succeeded, dead or reverted.
        #[arg(long, value_parser = parse_status)]
        status: Option<SettlementStatus>,
        /// Only this session key's.
        #[arg(long)]
        key: Option<Address>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Puts a dead-lettered settlement back in the queue with fresh retries.
    Retry {
        /// The settlement's id (`opentab settlements list --status dead`).
        id: u64,
    },
    /// Lets SETTLER (the account of OPENTAB_SETTLER_KEY) settle vouchers payable to the payee,
    /// signed with the payee's key (OPENTAB_PAYEE_KEY). The payee sends the transaction itself,
    /// or with `--relay` only signs and the relayer (OPENTAB_RELAYER_KEY) sends it, so a payee
    /// key kept cold needs no gas.
    Authorize {
        /// The settler's address.
        settler: Address,
        /// Withdraw the authorisation instead.
        #[arg(long)]
        revoke: bool,
        /// The payee only signs; the relayer (OPENTAB_RELAYER_KEY) sends and pays the gas.
        #[arg(long)]
        relay: bool,
        /// The chain's JSON-RPC endpoint.
        #[arg(long, env = "OPENTAB_RPC_URL", hide_env_values = true)]
        rpc_url: String,
        /// The SessionKeyValidator.
        #[arg(long, env = "OPENTAB_VALIDATOR")]
        validator: Address,
        /// The payee's private key (hex), from the environment only.
        #[arg(long = "payee-key-from-env", env = "OPENTAB_PAYEE_KEY", hide_env_values = true, hide = true)]
        payee_key: String,
        /// The relayer's private key (hex), with --relay.
        #[arg(long = "relayer-key-from-env", env = "OPENTAB_RELAYER_KEY", hide_env_values = true, hide = true)]
        relayer_key: Option<String>,
    },
}

fn parse_status(text: &str) -> Result<SettlementStatus, String> {
    match text {
        "pending" => Ok(SettlementStatus::Pending),
        "succeeded" => Ok(SettlementStatus::Succeeded),
        "dead" => Ok(SettlementStatus::Dead),
        "reverted" => Ok(SettlementStatus::Reverted),
        _ => Err(format!("{text:?} is not a status: use pending, succeeded, dead or reverted")),
    }
}

pub(crate) async fn run(args: SettlementsArgs) -> anyhow::Result<()> {
    if let SettlementsCommand::Authorize { settler, revoke, relay, rpc_url, validator, payee_key, relayer_key } =
        args.command
    {
        return authorize(settler, !revoke, relay, &rpc_url, validator, &payee_key, relayer_key.as_deref()).await;
    }
    let url = match args.database_url {
        Some(url) => url,
        None => {
            let db = args.data_dir.join("opentab.db");
            anyhow::ensure!(
                db.exists(),
                "no database at {}: pass --database-url, or --data-dir of a directory `opentab dev` ran in",
                db.display()
            );
            format!("sqlite://{}", db.display())
        }
    };
    let store = Store::connect(&url).await.context("opening the database")?;
    let outcome = match args.command {
        SettlementsCommand::List { status, key, limit, json } => list(&store, status, key, limit, json).await,
        SettlementsCommand::Retry { id } => retry(&store, id).await,
        SettlementsCommand::Authorize { .. } => Ok(()),
    };
    store.close().await;
    outcome
}

async fn list(
    store: &Store,
    status: Option<SettlementStatus>,
    key: Option<Address>,
    limit: u32,
    json: bool,
) -> anyhow::Result<()> {
    let settlements = store.settlements(status, key, limit).await?;
    let mut out = std::io::stdout().lock();
    if json {
        let rows: Vec<serde_json::Value> = settlements.iter().map(to_json).collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    if settlements.is_empty() {
        writeln!(out, "no settlements yet: keys settle once they owe 10 USDC, or at once when they stop")?;
        return Ok(());
    }
    let now = now();
    let mut rows = vec![
        ["ID", "KEY", "AMOUNT", "REASON", "STATUS", "TRIES", "WHEN", "TX / LAST ERROR"].map(str::to_owned).to_vec(),
    ];
    for s in &settlements {
        let detail = match (&s.tx_hash, &s.last_error, s.status) {
            (Some(tx), _, _) => format!("{tx:#x}"),
            (None, _, SettlementStatus::Succeeded) => "found settled on-chain".to_owned(),
            (None, Some(err), _) => err.clone(),
            (None, None, _) => String::new(),
        };
        let when = match s.status {
            SettlementStatus::Pending if s.attempts > 0 => format!("retry {}", relative(s.next_attempt_at, now)),
            _ => relative(s.updated_at, now),
        };
        rows.push(vec![
            s.id.to_string(),
            format!("{:#x}", s.intent.session_key),
            usdc(s.intent.amount),
            s.intent.reason.clone(),
            s.status.as_str().to_owned(),
            s.attempts.to_string(),
            when,
            detail,
        ]);
    }
    table(&mut out, &rows)?;
    Ok(())
}

async fn retry(store: &Store, id: u64) -> anyhow::Result<()> {
    let Some(settlement) = store.settlement(id).await? else {
        anyhow::bail!("no settlement {id}; `opentab settlements list` shows them");
    };
    anyhow::ensure!(
        settlement.status == SettlementStatus::Dead,
        "settlement {id} is {}, not dead-lettered: only a dead letter is retried by hand",
        settlement.status.as_str()
    );
    anyhow::ensure!(store.retry_settlement(id, now()).await?, "settlement {id} changed meanwhile; list it again");
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "settlement {id} ({} for key {:#x}) is queued again with fresh retries; the worker sends it within seconds",
        usdc(settlement.intent.amount),
        settlement.intent.session_key
    )?;
    Ok(())
}

fn to_json(s: &Settlement) -> serde_json::Value {
    serde_json::json!({
        "id": s.id,
        "sessionKey": s.intent.session_key,
        "owner": s.intent.owner,
        "payee": s.intent.payee,
        "voucher": s.intent.voucher.to_string(),
        "amount": s.intent.amount,
        "reason": s.intent.reason,
        "status": s.status.as_str(),
        "attempts": s.attempts,
        "nextAttemptAt": s.next_attempt_at,
        "txHash": s.tx_hash,
        "lastError": s.last_error,
        "createdAt": s.created_at,
        "updatedAt": s.updated_at,
    })
}

async fn authorize(
    settler: Address,
    allowed: bool,
    relay: bool,
    rpc_url: &str,
    validator: Address,
    payee_key: &str,
    relayer_key: Option<&str>,
) -> anyhow::Result<()> {
    use opentab_chain::{Validator, signing_provider, tx_signer};
    use opentab_core::SigningKey;
    let payee: SigningKey = payee_key.trim().parse().context("OPENTAB_PAYEE_KEY is not a private key")?;
    let sender = if relay {
        let key = relayer_key.context("--relay needs OPENTAB_RELAYER_KEY: the account that sends and pays the gas")?;
        key.trim().parse::<SigningKey>().context("OPENTAB_RELAYER_KEY is not a private key")?
    } else {
        payee.clone()
    };
    let provider = signing_provider(rpc_url, tx_signer(&sender)?)?;
    let contract = Validator::connect(provider, validator).await.with_context(|| {
        format!("connecting to the SessionKeyValidator {validator} through {}", opentab_core::redact_url(rpc_url))
    })?;
    let tx = if relay {
        let deadline = now().saturating_add(3600);
        let (message, signature) = contract.sign_set_settler(&payee, settler, allowed, deadline).await?;
        contract.set_settler_with_sig(&message, &signature).await
    } else {
        contract.set_settler(settler, allowed).await
    }
    .context("authorising the settler")?;
    let mut out = std::io::stdout().lock();
    let verb = if allowed { "may now settle" } else { "may no longer settle" };
    writeln!(out, "{settler} {verb} vouchers payable to {}", payee.address())?;
    writeln!(out, "  tx                  {} (block {}, gas {})", tx.tx_hash, tx.block_number, tx.gas_used)?;
    Ok(())
}
