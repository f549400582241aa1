//! `opentab tab show|deposit|withdraw|guardian`: the owner's tabs (USDC held for one payee
//! each). `show` asks opentab's REST API; deposits, withdrawals and the choice of a guardian are
//! the owner's own transactions (the owner pays their gas), sent straight to the
//! SessionKeyValidator. Deposits and withdrawals go to this opentab's payee unless `--payee`
//! names another.

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

/// `opentab tab …`
#[derive(Debug, Args)]
pub(crate) struct TabArgs {
    #[command(flatten)]
    owner: OwnerArgs,
    #[command(flatten)]
    chain: ChainFlags,
    /// The payee whose tab to deposit to or withdraw from (default: this opentab's payee).
    #[arg(long, global = true, value_name = "ADDRESS")]
    payee: Option<Address>,
    #[command(subcommand)]
    command: TabCommand,
}

#[derive(Debug, Subcommand)]
enum TabCommand {
    /// Show your tabs as opentab sees them: balance, available, pending withdrawal, keys.
    Show {
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Move USDC from the owner's wallet into the tab with the payee (approve + deposit; the
    /// owner pays gas). Only that payee's keys draw on it.
    Deposit {
        /// Amount in USDC (`5`, `0.5`).
        #[arg(value_name = "USDC", value_parser = parse_usdc)]
        amount: Usdc,
    },
    /// Take USDC out of the tab: request, wait out the payee's grace window, complete.
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
struct TabsView {
    owner: Address,
    validator: Address,
    payee: Option<Address>,
    guardian: Option<Address>,
    rule_guardian: Option<Address>,
    tabs: Vec<TabView>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TabView {
    payee: Address,
    balance: Usdc,
    available: Usdc,
    pending_withdrawal: Option<Usdc>,
    withdrawal_ready_at: Option<u64>,
    keys: Vec<Address>,
}

pub(crate) async fn run(args: TabArgs) -> anyhow::Result<()> {
    let owner = args.owner.owner()?;
    match args.command {
        TabCommand::Show { json } => show(&args.owner, &owner, json).await,
        TabCommand::Deposit { amount } => {
            let payee = payee(&args.owner, &owner, args.payee).await?;
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
                .deposit(payee, amount)
                .await
                .map_err(refusal)
                .with_context(|| format!("depositing {}", usdc(amount)))?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "deposited {} into the tab of {} with {payee}", usdc(amount), owner.address())?;
            write_outcome(&mut out, &validator, owner.address(), payee, &tx).await
        }
        TabCommand::Withdraw { command } => {
            let payee = payee(&args.owner, &owner, args.payee).await?;
            let validator = connect(&args.owner, &args.chain, &owner).await?;
            withdraw(&validator, owner.address(), payee, command).await
        }
        TabCommand::Guardian { address, clear } => {
            let guardian = match (address, clear) {
                (_, true) => Address::ZERO,
                (Some(address), false) => address,
                (None, false) => {
                    let api = Api::sign_in(&args.owner.url(), &owner).await?;
                    let tabs: TabsView = api.call(Method::GET, "/api/tabs", None::<&()>).await?;
                    tabs.rule_guardian.context(
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

/// The payee named with `--payee`, else the one this opentab charges for.
async fn payee(args: &OwnerArgs, owner: &SigningKey, named: Option<Address>) -> anyhow::Result<Address> {
    if let Some(payee) = named {
        return Ok(payee);
    }
    let api = Api::sign_in(&args.url(), owner).await?;
    let tabs: TabsView = api.call(Method::GET, "/api/tabs", None::<&()>).await.context("reading the tabs")?;
    tabs.payee.context("this opentab names no payee: give one with --payee ADDRESS")
}

async fn show(args: &OwnerArgs, owner: &SigningKey, json: bool) -> anyhow::Result<()> {
    let api = Api::sign_in(&args.url(), owner).await?;
    let text = api.call_text(Method::GET, "/api/tabs", None::<&()>).await.context("reading the tabs")?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", text.trim_end())?;
        return Ok(());
    }
    let view: TabsView =
        serde_json::from_str(&text).with_context(|| format!("unexpected answer to GET /api/tabs: {text}"))?;
    writeln!(out, "tabs of {}", view.owner)?;
    for tab in &view.tabs {
        let this = if view.payee == Some(tab.payee) { " (this opentab's payee)" } else { "" };
        writeln!(out, "  with {}{this}", tab.payee)?;
        writeln!(out, "    balance           {}", usdc(tab.balance))?;
        writeln!(out, "    available         {} (what its keys can still be charged against)", usdc(tab.available))?;
        match (tab.pending_withdrawal, tab.withdrawal_ready_at) {
            (Some(amount), Some(at)) => {
                writeln!(out, "    pending withdrawal {}, can complete {}", usdc(amount), when(at, now()))?;
            }
            (Some(amount), None) => writeln!(out, "    pending withdrawal {}", usdc(amount))?,
            _ => writeln!(out, "    pending withdrawal none")?,
        }
        writeln!(out, "    keys              {}", tab.keys.len())?;
    }
    writeln!(out, "  deposit to          {} (`opentab tab deposit AMOUNT`)", view.validator)?;
    match (view.guardian, view.rule_guardian) {
        (Some(g), Some(rules)) if g == rules => {
            writeln!(
                out,
                "  guardian            {g}: opentab's rule engine, which freezes on-chain when a rule fires"
            )?;
        }
        (Some(g), _) => writeln!(out, "  guardian            {g} (may freeze your keys on-chain)")?,
        (None, Some(_)) => writeln!(
            out,
            "  guardian            none; rules freeze at the gateway only (`opentab tab guardian` lets them freeze on-chain)"
        )?,
        (None, None) => writeln!(out, "  guardian            none")?,
    }
    Ok(())
}

async fn withdraw(
    validator: &Validator,
    owner: Address,
    payee: Address,
    command: WithdrawCommand,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        WithdrawCommand::Request { amount } => {
            let tx = validator
                .request_withdrawal(payee, amount)
                .await
                .map_err(refusal)
                .with_context(|| format!("requesting a withdrawal of {}", usdc(amount)))?;
            writeln!(out, "requested a withdrawal of {} from the tab of {owner} with {payee}", usdc(amount))?;
            if let Some(ready) = validator.tab_of(owner, payee).await?.withdrawal_ready_at() {
                writeln!(out, "  ready               {}; then `opentab tab withdraw complete`", when(ready, now()))?;
            }
            write_outcome(&mut out, validator, owner, payee, &tx).await
        }
        WithdrawCommand::Complete => {
            let Some((asked, _)) = validator.tab_of(owner, payee).await?.pending_withdrawal else {
                anyhow::bail!(
                    "{owner} has no pending withdrawal from its tab with {payee}; request one with `opentab tab withdraw request AMOUNT`"
                )
            };
            let before = validator.usdc_balance(owner).await?;
            let tx = validator.withdraw(payee).await.map_err(refusal).context("completing the withdrawal")?;
            let paid = validator.usdc_balance(owner).await?.saturating_sub(before);
            let paid = Usdc::try_from(paid).unwrap_or(Usdc::ZERO);
            writeln!(out, "withdrew {} of the {} requested to the wallet of {owner}", usdc(paid), usdc(asked))?;
            write_outcome(&mut out, validator, owner, payee, &tx).await
        }
        WithdrawCommand::Cancel => {
            let tx = validator.cancel_withdrawal(payee).await.map_err(refusal).context("cancelling the withdrawal")?;
            writeln!(out, "cancelled the pending withdrawal from the tab of {owner} with {payee}")?;
            write_outcome(&mut out, validator, owner, payee, &tx).await
        }
    }
}

/// The validator, with the owner's key sending the transactions.
async fn connect(args: &OwnerArgs, flags: &ChainFlags, owner: &SigningKey) -> anyhow::Result<Validator> {
    let (rpc, validator) = args.chain(flags)?;
    let provider = signing_provider(&rpc, tx_signer(owner)?)?;
    Validator::connect(provider, validator).await.with_context(|| {
        format!("connecting to the SessionKeyValidator {validator} through {}", opentab_core::redact_url(&rpc))
    })
}

async fn write_outcome(
    out: &mut impl Write,
    validator: &Validator,
    owner: Address,
    payee: Address,
    tx: &TxOutcome,
) -> anyhow::Result<()> {
    writeln!(out, "  tx                  {} (block {}, gas {})", tx.tx_hash, tx.block_number, tx.gas_used)?;
    let tab = validator.tab_of(owner, payee).await?;
    writeln!(
        out,
        "  tab on-chain        {} (`opentab tab show` follows once opentab sees the block)",
        usdc(tab.balance)
    )?;
    Ok(())
}

/// The contract's refusals in words; other errors unchanged.
fn refusal(err: opentab_chain::Error) -> anyhow::Error {
    let reason = match &err {
        opentab_chain::Error::Reverted(reason) => match reason {
            E::NoPendingWithdrawal(_) => "there is no pending withdrawal".to_owned(),
            E::WithdrawalNotReady(w) => format!(
                "the withdrawal is not ready yet: it can complete {}",
                when(w.graceEndsAt.to::<u64>().saturating_add(1), now())
            ),
            E::InsufficientTab(e) => format!(
                "the tab holds only {}",
                Usdc::try_from(e.available).map(usdc).unwrap_or_else(|_| e.available.to_string())
            ),
            E::ZeroAmount(_) => "the amount must be more than zero".to_owned(),
            _ => return err.into(),
        },
        _ => return err.into(),
    };
    anyhow::Error::new(err).context(reason)
}
