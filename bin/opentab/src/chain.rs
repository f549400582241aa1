//! `opentab chain up`: starts anvil, deploys the contracts (or reuses them from the data
//! directory), funds a demo owner, prints the addresses and writes them as JSON. `opentab dev`
//! starts its chain the same way ([`DevChain::start`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use opentab_chain::alloy_provider::Provider;
use opentab_chain::{
    Address, Anvil, AnvilConfig, Deployment, DynProvider, Validator, deploy_dev_contracts, signing_provider,
};
use opentab_core::{GRACE_DEFAULT_SECS, SigningKey, Usdc};
use serde::Serialize;

/// `opentab chain …`
#[derive(Debug, Subcommand)]
pub(crate) enum ChainCommand {
    /// Start anvil, deploy TestUSDC and SessionKeyValidator, fund a demo owner; runs until Ctrl-C.
    Up(UpArgs),
}

/// How to start the dev chain (shared by `chain up` and `dev`).
#[derive(Debug, Clone, Args)]
pub(crate) struct ChainArgs {
    /// Port for anvil's JSON-RPC (0 picks a free one).
    #[arg(long, env = "OPENTAB_ANVIL_PORT", default_value_t = 8545)]
    pub(crate) anvil_port: u16,
    /// Where the chain state, the database and the JSON files are kept.
    #[arg(long, env = "OPENTAB_DATA_DIR", default_value = ".opentab")]
    pub(crate) data_dir: PathBuf,
    /// USDC minted to the demo owner on first start.
    #[arg(long, default_value = "1000")]
    mint: String,
    /// USDC of it deposited into the demo owner's tab with the demo payee.
    #[arg(long, default_value = "100")]
    deposit: String,
    /// Settlement grace window in seconds (15 minutes to 30 days).
    #[arg(long, default_value_t = GRACE_DEFAULT_SECS)]
    grace: u64,
    /// Start from an empty chain and database, forgetting the data directory's state.
    #[arg(long)]
    fresh: bool,
}

#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    #[command(flatten)]
    chain: ChainArgs,
    /// Deploy, print, write the JSON, then stop instead of serving until Ctrl-C.
    #[arg(long)]
    exit: bool,
}

/// A running dev chain with the contracts deployed and the demo roles.
pub(crate) struct DevChain {
    /// The chain; dropping it stops anvil (its state is saved to the data directory).
    pub(crate) anvil: Anvil,
    pub(crate) deployment: Deployment,
    /// anvil account #0: deploys and relays owner-signed actions.
    pub(crate) relayer: Validator,
    /// anvil account #1: the demo owner, funded with test USDC.
    pub(crate) owner: SigningKey,
    /// anvil account #2: the demo payee.
    pub(crate) payee: Address,
    relayer_address: Address,
}

/// What `<data-dir>/chain.json` holds.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ChainFile<'a> {
    #[serde(flatten)]
    deployment: &'a Deployment,
    network: String,
    relayer: Account,
    demo_owner: Account,
    demo_payee: Address,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Account {
    address: Address,
    /// anvil's well-known development key: worthless anywhere else.
    private_key: String,
}

/// The anvil account the dev rule engine freezes keys on-chain with (the demo owner's guardian).
pub(crate) const GUARDIAN_ACCOUNT: usize = 3;
/// The anvil account the dev settlement worker settles with: a settler the payee (#2)
/// authorised at set-up, as a production payee authorises its worker and keeps its own key cold.
pub(crate) const SETTLER_ACCOUNT: usize = 4;

impl DevChain {
    /// Starts anvil on the data directory's state, deploys (or reuses) the contracts, funds the
    /// demo owner on first start and writes `<data-dir>/chain.json`.
    pub(crate) async fn start(args: &ChainArgs) -> anyhow::Result<Self> {
        let mint = Usdc::parse_decimal(&args.mint).context("--mint")?;
        let deposit = Usdc::parse_decimal(&args.deposit).context("--deposit")?;
        anyhow::ensure!(deposit <= mint, "--deposit ({}) cannot exceed --mint ({})", args.deposit, args.mint);
        let dir = &args.data_dir;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let state_file = dir.join("anvil-state.json");
        let chain_file = dir.join("chain.json");
        if args.fresh {
            for file in ["anvil-state.json", "chain.json", "opentab.db", "opentab.db-wal", "opentab.db-shm"] {
                let path = dir.join(file);
                if path.exists() {
                    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
                }
            }
        }

        tracing::info!("starting anvil");
        let anvil = Anvil::spawn(AnvilConfig {
            port: Some(args.anvil_port),
            state_file: Some(state_file),
            ..Default::default()
        })
        .context("starting anvil")?;
        let rpc = anvil.endpoint();
        let relayer_signer = anvil.signer(0)?;
        let owner = SigningKey::from_bytes(anvil.keys().get(1).context("anvil has no account #1")?)?;
        let payee = anvil.signer(2)?.address();
        let provider = signing_provider(&rpc, relayer_signer.clone())?;

        let deployment = match reuse(&chain_file, provider.provider(), &rpc).await? {
            Some(deployment) => {
                tracing::info!(validator = %deployment.validator, "reusing the contracts deployed earlier in {}", dir.display());
                deployment
            }
            None => {
                tracing::info!("deploying TestUSDC and SessionKeyValidator");
                let deployment =
                    deploy_dev_contracts(&provider, &rpc, args.grace).await.context("deploying the contracts")?;
                tracing::info!(owner = %owner.address(), "funding the demo owner: {} USDC minted, {} deposited", mint.display(), deposit.display());
                let validator = Validator::connect(provider.clone(), deployment.validator).await?;
                validator.mint_test_usdc(owner.address(), mint).await?;
                let as_owner = validator.with_provider(signing_provider(&rpc, opentab_chain::tx_signer(&owner)?)?);
                if deposit > Usdc::ZERO {
                    as_owner.deposit(payee, deposit).await.context("opening the demo owner's tab with the payee")?;
                }
                // The payee lets the settlement worker's account settle for it. Its key would be
                // kept cold in production, so it only signs; the relayer sends the transaction.
                let payee_key = SigningKey::from_bytes(anvil.keys().get(2).context("anvil has no account #2")?)?;
                let (message, signature) = validator
                    .sign_set_settler(&payee_key, anvil.signer(SETTLER_ACCOUNT)?.address(), true, u64::MAX)
                    .await
                    .context("signing the payee's settler authorisation")?;
                validator
                    .set_settler_with_sig(&message, &signature)
                    .await
                    .context("authorising the settlement worker to settle for the payee")?;
                // The demo owner lets the rule engine's guardian freeze its keys on-chain (an
                // owner's own choice: `opentab tab guardian --clear` takes it back).
                as_owner
                    .set_guardian(anvil.signer(GUARDIAN_ACCOUNT)?.address())
                    .await
                    .context("choosing a guardian")?;
                deployment
            }
        };

        let file = ChainFile {
            deployment: &deployment,
            network: deployment.network(),
            relayer: Account { address: relayer_signer.address(), private_key: format!("{:#x}", anvil.keys()[0]) },
            demo_owner: Account { address: owner.address(), private_key: format!("{:#x}", owner.to_bytes()) },
            demo_payee: payee,
        };
        let json = serde_json::to_string_pretty(&file)?;
        std::fs::write(&chain_file, format!("{json}\n"))
            .with_context(|| format!("writing {}", chain_file.display()))?;
        let relayer = Validator::connect(provider, deployment.validator).await?;
        Ok(Self { anvil, deployment, relayer, owner, payee, relayer_address: relayer_signer.address() })
    }

    /// Prints the chain's addresses.
    pub(crate) async fn print(&self, out: &mut impl Write, data_dir: &Path) -> anyhow::Result<()> {
        let tab = self.relayer.tab_of(self.owner.address(), self.payee).await?.balance.display();
        writeln!(out, "  chain               {} at {}", self.deployment.network(), self.anvil.endpoint())?;
        writeln!(out, "  SessionKeyValidator {}", self.deployment.validator)?;
        writeln!(out, "  USDC (test token)   {}", self.deployment.usdc)?;
        writeln!(out, "  demo owner          {} (tab with the payee: {tab} USDC)", self.owner.address())?;
        writeln!(out, "  demo payee          {}", self.payee)?;
        writeln!(out, "  relayer             {}", self.relayer_address)?;
        writeln!(out, "  chain.json          {}", data_dir.join("chain.json").display())?;
        Ok(())
    }
}

pub(crate) async fn run(command: ChainCommand) -> anyhow::Result<()> {
    match command {
        ChainCommand::Up(args) => up(args).await,
    }
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    let chain = DevChain::start(&args.chain).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "opentab dev chain is up ({})", chain.deployment.network())?;
    chain.print(&mut out, &args.chain.data_dir).await?;
    out.flush()?;
    drop(out);
    if !args.exit {
        tracing::info!("serving until Ctrl-C");
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
        tracing::info!("stopping anvil (its state is saved to the data directory)");
    }
    drop(chain);
    Ok(())
}

/// The deployment in `chain.json` if the chain (restored from its state file) still has it.
async fn reuse(chain_file: &Path, provider: &DynProvider, rpc: &str) -> anyhow::Result<Option<Deployment>> {
    let Ok(text) = std::fs::read_to_string(chain_file) else { return Ok(None) };
    let Ok(mut deployment) = serde_json::from_str::<Deployment>(&text) else { return Ok(None) };
    let code = provider.get_code_at(deployment.validator).await?;
    if code.is_empty() || provider.get_chain_id().await? != deployment.chain_id {
        return Ok(None);
    }
    // A data directory from before tabs holds the old contract, which has no `tabOf`: deploy
    // the current one instead of failing later on every call.
    let validator = Validator::connect(provider.clone(), deployment.validator).await?;
    if validator.tab_of(Address::ZERO, Address::ZERO).await.is_err() {
        tracing::warn!(validator = %deployment.validator, "the contract in the data directory predates tabs; deploying the current one");
        return Ok(None);
    }
    deployment.rpc_url = rpc.to_owned();
    Ok(Some(deployment))
}
