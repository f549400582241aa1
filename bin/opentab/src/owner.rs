//! Who the owner commands (`keys`, `tab`) act as, and where they find opentab and the chain:
//! flags and environment first, then the `opentab dev` data directory's `chain.json` and
//! `demo.json`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use opentab_core::{Address, SigningKey};
use serde::Deserialize;

/// Where `opentab dev` listens by default.
const DEFAULT_URL: &str = "http://127.0.0.1:8402";

/// Flags every owner command takes (before or after the subcommand).
#[derive(Debug, Args)]
#[command(next_help_heading = "Owner and server")]
pub(crate) struct OwnerArgs {
    /// The opentab server (default: the `url` of <data-dir>/demo.json, where a running
    /// `opentab dev` listens, else http://127.0.0.1:8402).
    #[arg(long, global = true, env = "OPENTAB_URL")]
    url: Option<String>,
    /// The owner's private key (hex). Prefer OPENTAB_OWNER_KEY or --owner-key-file: command
    /// lines are visible to other users of the machine.
    #[arg(long, global = true, env = "OPENTAB_OWNER_KEY", hide_env_values = true, value_name = "HEX")]
    owner_key: Option<Secret>,
    /// A file holding the owner's private key (hex).
    #[arg(long, global = true, value_name = "PATH", conflicts_with = "dev")]
    owner_key_file: Option<PathBuf>,
    /// Act as the `opentab dev` demo owner (the key in <data-dir>/chain.json), whatever
    /// OPENTAB_OWNER_KEY says. Without any key this is the default.
    #[arg(long, global = true)]
    dev: bool,
    /// The `opentab dev` data directory, read for the demo owner's key and the chain.
    #[arg(long, global = true, env = "OPENTAB_DATA_DIR", default_value = ".opentab", value_name = "DIR")]
    pub(crate) data_dir: PathBuf,
}

/// Where the owner's on-chain transactions go (`tab deposit|withdraw`).
#[derive(Debug, Args)]
#[command(next_help_heading = "Chain (deposit and withdraw)")]
pub(crate) struct ChainFlags {
    /// JSON-RPC endpoint of the chain (default: `rpcUrl` of <data-dir>/chain.json).
    #[arg(long, global = true, env = "OPENTAB_RPC_URL", value_name = "URL")]
    rpc_url: Option<String>,
    /// The SessionKeyValidator contract (default: `validator` of <data-dir>/chain.json).
    #[arg(long, global = true, env = "OPENTAB_VALIDATOR", value_name = "ADDRESS")]
    validator: Option<Address>,
}

/// A private key as typed: never shown by `Debug`.
#[derive(Clone)]
struct Secret(String);

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self(text.to_owned()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What the owner commands read from `<data-dir>/chain.json` (written by `opentab dev`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChainFile {
    rpc_url: Option<String>,
    validator: Option<Address>,
    demo_owner: Option<DemoOwner>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DemoOwner {
    private_key: String,
}

impl std::fmt::Debug for DemoOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoOwner").finish_non_exhaustive()
    }
}

impl OwnerArgs {
    /// The owner's key: `--dev`, `--owner-key-file`, `--owner-key`/OPENTAB_OWNER_KEY, else the
    /// demo owner of `<data-dir>/chain.json` (said on stderr).
    pub(crate) fn owner(&self) -> anyhow::Result<SigningKey> {
        if !self.dev {
            if let Some(path) = &self.owner_key_file {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the owner key file {}", path.display()))?;
                return text
                    .trim()
                    .parse()
                    .with_context(|| format!("{} does not hold a hex secp256k1 private key", path.display()));
            }
            if let Some(Secret(key)) = &self.owner_key {
                return key.parse().context("--owner-key / OPENTAB_OWNER_KEY is not a hex secp256k1 private key");
            }
        }
        let path = self.chain_file_path();
        let file = read_chain_file(&path)
            .context("no owner key given (--owner-key, --owner-key-file, OPENTAB_OWNER_KEY) and no dev demo owner")?;
        let demo = file.demo_owner.with_context(|| {
            format!("{} has no demoOwner; pass --owner-key, --owner-key-file or OPENTAB_OWNER_KEY", path.display())
        })?;
        let key: SigningKey = demo
            .private_key
            .parse()
            .with_context(|| format!("demoOwner.privateKey in {} is not a private key", path.display()))?;
        if !self.dev {
            let mut err = std::io::stderr().lock();
            writeln!(
                err,
                "using the `opentab dev` demo owner {} from {} (--owner-key or OPENTAB_OWNER_KEY picks another)",
                key.address(),
                path.display()
            )?;
        }
        Ok(key)
    }

    /// The chain RPC endpoint and validator: flags, else `<data-dir>/chain.json`.
    pub(crate) fn chain(&self, flags: &ChainFlags) -> anyhow::Result<(String, Address)> {
        if let (Some(rpc), Some(validator)) = (&flags.rpc_url, flags.validator) {
            return Ok((rpc.clone(), validator));
        }
        let path = self.chain_file_path();
        let file = read_chain_file(&path).context("no --rpc-url and --validator given, and no dev chain")?;
        let rpc = flags
            .rpc_url
            .clone()
            .or(file.rpc_url)
            .with_context(|| format!("{} has no rpcUrl; pass --rpc-url", path.display()))?;
        let validator = flags
            .validator
            .or(file.validator)
            .with_context(|| format!("{} has no validator; pass --validator", path.display()))?;
        Ok((rpc, validator))
    }

    /// The opentab server: `--url`/OPENTAB_URL, else where `<data-dir>/demo.json` says `opentab
    /// dev` listens, else dev's default address.
    pub(crate) fn url(&self) -> String {
        #[derive(Deserialize)]
        struct DemoUrl {
            url: String,
        }
        self.url
            .clone()
            .or_else(|| {
                let text = std::fs::read_to_string(self.data_dir.join("demo.json")).ok()?;
                serde_json::from_str::<DemoUrl>(&text).ok().map(|demo| demo.url)
            })
            .unwrap_or_else(|| DEFAULT_URL.to_owned())
    }

    fn chain_file_path(&self) -> PathBuf {
        self.data_dir.join("chain.json")
    }
}

fn read_chain_file(path: &Path) -> anyhow::Result<ChainFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {} (is `opentab dev` using this --data-dir?)", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}
