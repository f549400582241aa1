//! `opentab`: the one binary. Each subcommand lives in its own module.
//!
//! - `opentab dev`: the embedded default in one process: chain, SQLite, chain listener, REST API,
//!   demo paid API (or, with `--upstream`, your own API behind its gateway), settlement, web UI.
//! - `opentab serve`: production: PostgreSQL and an external RPC endpoint, from a config file
//!   (REST API, chain listener, settlement worker, webhooks, web UI).
//! - `opentab chain up`: a local anvil with the contracts deployed and a funded demo owner.
//! - `opentab keys …`: an owner's session keys through the REST API (create, list, show,
//!   freeze, unfreeze, delete).
//! - `opentab pay`: pays for calls with a session key, as an agent would (demo of the 402 flow).
//! - `opentab tab …`: an owner's tabs, one per payee (show through the API; deposit and withdraw
//!   on-chain).
//! - `opentab proxy`: the 402 gateway as a reverse proxy in front of any HTTP API.
//! - `opentab settlements …`: the operator's settlement queue (list, retry a dead letter).
//! - `opentab bench`: the paid hot path against the plain proxy, measured on this machine.
//! - `opentab cluster`: the production topology on this machine (PostgreSQL, a Redis Cluster,
//!   two `serve` and N `proxy` nodes), until Ctrl-C.
//! - `opentab chaos`: the fault suite on that topology, with the conservation check.

mod bench;
mod chain;
mod chaos;
mod client;
mod cluster;
mod config;
mod config_file;
mod demo;
mod dev;
mod keys;
mod output;
mod owner;
mod pay;
mod proxy;
mod relay;
mod rules;
mod rules_sim;
mod serve;
mod server;
mod settlements;
mod tab;
mod web;

use std::io::Write;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Pay-per-call USDC billing for AI APIs, with on-chain session keys.
#[derive(Debug, Parser)]
#[command(name = "opentab", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Everything on the embedded default: anvil, SQLite, chain listener, REST API, demo paid API (or your API with --upstream), settlement, web UI.
    Dev(dev::DevArgs),
    /// Production: PostgreSQL, an external RPC endpoint, settings from a config file.
    Serve(serve::ServeArgs),
    /// Write a complete, commented config for serve and proxy (`config init [--from DATA_DIR]`).
    Config(config::ConfigArgs),
    /// Local development chain.
    Chain {
        #[command(subcommand)]
        command: chain::ChainCommand,
    },
    /// Your session keys: create, list, show, freeze, unfreeze, delete (signs in as the owner).
    Keys(keys::KeysArgs),
    /// Your tabs (USDC held for one payee each): show, deposit, withdraw, guardian.
    Tab(tab::TabArgs),
    /// Your rule settings: defaults for every key, or one key's (show, set, reset; signs in as
    /// the owner).
    Rules(rules::RulesArgs),
    /// Pay for calls to a priced route with a session key (reads opentab dev's demo.json).
    Pay(pay::PayArgs),
    /// The HTTP 402 gateway as a reverse proxy in front of an API in any language.
    Proxy(proxy::ProxyArgs),
    /// The settlement queue: list settlements, retry a dead-lettered one (reads the database).
    Settlements(settlements::SettlementsArgs),
    /// Measure the paid hot path against the plain proxy on this machine (starts all it needs).
    Bench(bench::BenchArgs),
    /// Run the production topology on this machine (PostgreSQL, a Redis Cluster, two serve
    /// nodes, N proxies) until Ctrl-C, and describe it in cluster.json.
    Cluster(cluster::ClusterArgs),
    /// Run the fault suite on the cluster topology: each scenario's paid traffic, its fault,
    /// recovery, and the conservation check; prints a table.
    Chaos(chaos::ChaosArgs),
    /// Measure the rules against simulated traffic: labelled legitimate patterns and anomalies
    /// over simulated time; prints precision, recall, false-positive rate and time to freeze.
    RulesSim(rules_sim::RulesSimArgs),
    /// Forward TCP ports (used by `opentab chaos` inside a network namespace).
    #[command(hide = true)]
    Relay(relay::RelayArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The simulator's engine freezes thousands of simulated keys: its report says what matters.
    let default_filter = if matches!(cli.command, Command::RulesSim(_)) { "error" } else { "warn,opentab=info" };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)))
        .with_writer(std::io::stderr)
        .init();
    opentab_chain::install_tls_provider();
    // Servers log their errors; the owner commands are a CLI and print theirs plainly.
    let (outcome, logs) = match cli.command {
        Command::Dev(args) => (dev::run(args).await, true),
        Command::Serve(args) => (serve::run(args).await, true),
        Command::Config(args) => (config::run(args), false),
        Command::Chain { command } => (chain::run(command).await, true),
        Command::Keys(args) => (keys::run(args).await, false),
        Command::Tab(args) => (tab::run(args).await, false),
        Command::Rules(args) => (rules::run(args).await, false),
        Command::Pay(args) => (pay::run(args).await, false),
        Command::Proxy(args) => (proxy::run(args).await, true),
        Command::Settlements(args) => (settlements::run(args).await, false),
        Command::Bench(args) => (bench::run(args).await, false),
        Command::Cluster(args) => (cluster::run(args).await, false),
        Command::Chaos(args) => (chaos::run(args).await, false),
        Command::RulesSim(args) => (rules_sim::run(args).await, false),
        Command::Relay(args) => (relay::run(args).await, true),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the whole chain of causes on one line.
            if logs {
                tracing::error!("{err:#}");
            } else {
                let _ = writeln!(std::io::stderr().lock(), "error: {err:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
