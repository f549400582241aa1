//! `opentab escrow show|deposit|withdraw|guardian`: the owner's escrow. `show` asks opentab's
//! REST API; deposits, withdrawals and the choice of a guardian are the owner's own
//! transactions (the owner pays their gas), sent straight to the SessionKeyValidator.

use std::io::Write;

use anyhow::Context;
use clap::{Args, Subcommand};
use opentab_chain::bindings::SessionKeyValidator::SessionKeyValidatorErrors as E;
use opentab_chain::{TxOutcome, Validator, signing_provider, tx_signer};
use opentab_core::{Address, SigningKey, Usdc};
use reqwest::Method;
use serde::Deserialize;

use crate::client::Api;
use crate::output::{now, parse_usdc, usdc, when};
use crate::owner::{ChainFlags, OwnerArgs};

/// `opentab escrow …`
#[derive(Debug, Args)]
pub(crate) struct EscrowArgs {
    #[command(flatten)]
    owner: OwnerArgs,
    #[command(flatten)]
    chain: ChainFlags,
    #[command(subcommand)]
    command: EscrowCommand,
}

#[derive(Debug, Subcommand)]
enum EscrowCommand {
    /// Show the escrow as opentab sees it: balance, available, pending withdrawal.
    Show {
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Move USDC from the owner's wallet into escrow (approve + deposit; the owner pays gas).
    Deposit {
        /// Amount in USDC (`5`, `0.5`).
        #[arg(value_name = "USDC", value_parser = parse_usdc)]
        amount: Usdc,
    },
    /// Take USDC out of escrow: request, wait out the grace window, complete.
    Withdraw {
        #[command(subcommand)]
        command: WithdrawCommand,
    },
    /// Choose who may freeze this owner's keys on-chain (never unfreeze them). Without an
    /// address: opentab's rule engine, so a key that breaks a spike or burst rule is frozen
    /// on-chain too, not only at the gateway.
    Guardian {
        /// The guardian's address (default: the rule guardian opentab names).
        #[arg(conflicts_with = "clear")]
        address: Option<Address>,
        /// Remove the guardian.
        #[arg(long)]
        clear: bool,
    },
}

#[derive(Debug, Subcommand)]
enum WithdrawCommand {
    /// Ask to withdraw AMOUNT; it can leave after the contract's grace window. Replaces a pending request.
    Request {
        /// Amount in USDC.
        #[arg(value_name = "USDC", value_parser = parse_usdc)]
        amount: Usdc,
    },
    /// Complete the pending withdrawal once its grace window is over.
    Complete,
    /// Drop the pending withdrawal.
    Cancel,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EscrowView {
    owner: Address,
    balance: Usdc,
    available: Usdc,
    pending_withdrawal: Option<Usdc>,
    withdrawal_ready_at: Option<u64>,
    deposit_to: Address,
    guardian: Option<Address>,
    rule_guardian: Option<Address>,
}

pub(crate) async fn run(args: EscrowArgs) -> anyhow::Result<()> {
    let owner = args.owner.owner()?;
    match args.command {
        EscrowCommand::Show { json } => show(&args.owner, &owner, json).await,
        EscrowCommand::Deposit { amount } => {
            let validator = connect(&args.owner, &args.chain, &owner).await?;
            let held = Usdc::try_from(validator.usdc_balance(owner.address()).await?).unwrap_or(Usdc::ZERO);
            anyhow::ensure!(
                held >= amount,
                "{} holds {} in its wallet, less than the {} to deposit",
                owner.address(),
                usdc(held),
                usdc(amount)
            );
            let tx = validator
                .deposit(amount)
                .await
                .map_err(refusal)
                .with_context(|| format!("depositing {}", usdc(amount)))?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "deposited {} into the escrow of {}", usdc(amount), owner.address())?;
            write_outcome(&mut out, &validator, owner.address(), &tx).await
        }
        EscrowCommand::Withdraw { command } => {
            let validator = connect(&args.owner, &args.chain, &owner).await?;
            withdraw(&validator, owner.address(), command).await
        }
        EscrowCommand::Guardian { address, clear } => {
            let guardian = match (address, clear) {
                (_, true) => Address::ZERO,
                (Some(address), false) => address,
                (None, false) => {
                    let api = Api::sign_in(&args.owner.url, &owner).await?;
                    let escrow: EscrowView = api.call(Method::GET, "/api/escrow", None::<&()>).await?;
                    escrow.rule_guardian.context(
                        "this opentab names no rule guardian (its rules freeze at the gateway only): give an address",
                    )?
                }
            };
            let validator = connect(&args.owner, &args.chain, &owner).await?;
            let tx = validator.set_guardian(guardian).await.map_err(refusal).context("setting the guardian")?;
            let mut out = std::io::stdout().lock();
            if guardian == Address::ZERO {
                writeln!(out, "{} has no guardian now: only the owner can freeze its keys on-chain", owner.address())?;
            } else {
                writeln!(
                    out,
                    "{guardian} may now freeze the keys of {} on-chain (never unfreeze them)",
                    owner.address()
                )?;
            }
            writeln!(out, "  tx                  {} (block {}, gas {})", tx.tx_hash, tx.block_number, tx.gas_used)?;
            Ok(())
        }
    }
}

async fn show(args: &OwnerArgs, owner: &SigningKey, json: bool) -> anyhow::Result<()> {
    let api = Api::sign_in(&args.url, owner).await?;
    let text = api.call_text(Method::GET, "/api/escrow", None::<&()>).await.context("reading the escrow")?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", text.trim_end())?;
        return Ok(());
    }
    let escrow: EscrowView =
        serde_json::from_str(&text).with_context(|| format!("unexpected answer to GET /api/escrow: {text}"))?;
    writeln!(out, "escrow of {}", escrow.owner)?;
    writeln!(out, "  balance             {}", usdc(escrow.balance))?;
    writeln!(out, "  available           {} (what keys can still be charged against)", usdc(escrow.available))?;
    match (escrow.pending_withdrawal, escrow.withdrawal_ready_at) {
        (Some(amount), Some(at)) => {
            writeln!(out, "  pending withdrawal  {}, ready {}", usdc(amount), when(at, now()))?;
        }
        (Some(amount), None) => writeln!(out, "  pending withdrawal  {}", usdc(amount))?,
        _ => writeln!(out, "  pending withdrawal  none")?,
    }
    writeln!(out, "  deposit to          {} (`opentab escrow deposit AMOUNT`)", escrow.deposit_to)?;
    match (escrow.guardian, escrow.rule_guardian) {
        (Some(g), Some(rules)) if g == rules => {
            writeln!(
                out,
                "  guardian            {g}: opentab's rule engine, which freezes on-chain when a rule fires"
            )?;
        }
        (Some(g), _) => writeln!(out, "  guardian            {g} (may freeze your keys on-chain)")?,
        (None, Some(_)) => writeln!(
            out,
            "  guardian            none; rules freeze at the gateway only (`opentab escrow guardian` lets them freeze on-chain)"
        )?,
        (None, None) => writeln!(out, "  guardian            none")?,
    }
    Ok(())
}

async fn withdraw(validator: &Validator, owner: Address, command: WithdrawCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        WithdrawCommand::Request { amount } => {
            let tx = validator
                .request_withdrawal(amount)
                .await
                .map_err(refusal)
                .with_context(|| format!("requesting a withdrawal of {}", usdc(amount)))?;
            writeln!(out, "requested a withdrawal of {} from the escrow of {owner}", usdc(amount))?;
            if let Some(pending) = validator.withdrawal_of(owner).await? {
                writeln!(
                    out,
                    "  ready               {}; then `opentab escrow withdraw complete`",
                    when(pending.ready_at, now())
                )?;
            }
            write_outcome(&mut out, validator, owner, &tx).await
        }
        WithdrawCommand::Complete => {
            let pending = validator.withdrawal_of(owner).await?;
            let Some(pending) = pending else {
                anyhow::bail!(
                    "{owner} has no pending withdrawal; request one with `opentab escrow withdraw request AMOUNT`"
                )
            };
            let before = validator.usdc_balance(owner).await?;
            let tx = validator.withdraw().await.map_err(refusal).context("completing the withdrawal")?;
            let paid = validator.usdc_balance(owner).await?.saturating_sub(before);
            let paid = Usdc::try_from(paid).unwrap_or(Usdc::ZERO);
            let asked = Usdc::try_from(pending.amount).unwrap_or(Usdc::ZERO);
            writeln!(out, "withdrew {} of the {} requested to the wallet of {owner}", usdc(paid), usdc(asked))?;
            write_outcome(&mut out, validator, owner, &tx).await
        }
        WithdrawCommand::Cancel => {
            let tx = validator.cancel_withdrawal().await.map_err(refusal).context("cancelling the withdrawal")?;
            writeln!(out, "cancelled the pending withdrawal of {owner}")?;
            write_outcome(&mut out, validator, owner, &tx).await
        }
    }
}

/// The validator, with the owner's key sending the transactions.
async fn connect(args: &OwnerArgs, flags: &ChainFlags, owner: &SigningKey) -> anyhow::Result<Validator> {
    let (rpc, validator) = args.chain(flags)?;
    let provider = signing_provider(&rpc, tx_signer(owner)?)?;
    Validator::connect(provider, validator)
        .await
        .with_context(|| format!("connecting to the SessionKeyValidator {validator} through {rpc}"))
}

async fn write_outcome(
    out: &mut impl Write,
    validator: &Validator,
    owner: Address,
    tx: &TxOutcome,
) -> anyhow::Result<()> {
    writeln!(out, "  tx                  {} (block {}, gas {})", tx.tx_hash, tx.block_number, tx.gas_used)?;
    let escrow = Usdc::try_from(validator.escrow_of(owner).await?).unwrap_or(Usdc::ZERO);
    writeln!(
        out,
        "  escrow on-chain     {} (`opentab escrow show` follows once opentab sees the block)",
        usdc(escrow)
    )?;
    Ok(())
}

/// The contract's refusals in words; other errors unchanged.
fn refusal(err: opentab_chain::Error) -> anyhow::Error {
    let reason = match &err {
        opentab_chain::Error::Reverted(reason) => match reason {
            E::NoPendingWithdrawal(_) => "there is no pending withdrawal".to_owned(),
            E::WithdrawalNotReady(w) => {
                format!("the withdrawal is not ready yet: it can leave {}", when(w.readyAt.to::<u64>(), now()))
            }
            E::InsufficientEscrow(e) => format!(
                "the escrow holds only {}",
                Usdc::try_from(e.available).map(usdc).unwrap_or_else(|_| e.available.to_string())
            ),
            E::ZeroAmount(_) => "the amount must be more than zero".to_owned(),
            _ => return err.into(),
        },
        _ => return err.into(),
    };
    anyhow::Error::new(err).context(reason)
}
