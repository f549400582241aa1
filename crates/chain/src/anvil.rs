//! Starts a local anvil chain as a child process: on a free port, ready before it returns,
//! killed when dropped. Used by the tests and by `opentab chain up` / `opentab dev`.
//!
//! anvil comes from npm (`@foundry-rs/anvil`, installed under `contracts/node_modules`); the
//! native binary is started directly rather than through npm's Node wrapper, so that killing
//! the child really stops the chain.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use alloy::primitives::B256;
use alloy::signers::local::PrivateKeySigner;

use crate::{Error, Result};

/// The environment variable that names the anvil binary to use, overriding the search.
pub const ANVIL_ENV: &str = "OPENTAB_ANVIL";

/// How to start anvil. `Default` is a fresh chain 31337 on a free port with instant mining.
#[derive(Debug, Clone, Default)]
pub struct AnvilConfig {
    /// Port to listen on; `None` picks a free one.
    pub port: Option<u16>,
    /// Chain id; `None` keeps anvil's 31337.
    pub chain_id: Option<u64>,
    /// Seconds between blocks; `None` mines one block per transaction at once.
    pub block_time: Option<u64>,
    /// A file anvil loads its state from at start and writes back on exit (`--state`).
    pub state_file: Option<PathBuf>,
    /// The binary; `None` searches (see [`find_anvil`]).
    pub binary: Option<PathBuf>,
}

/// A running anvil. Dropping it kills the process.
#[derive(Debug)]
pub struct Anvil {
    child: Child,
    port: u16,
    chain_id: u64,
    keys: Vec<B256>,
}

impl Anvil {
    /// Starts anvil with `config` and waits (up to 30 s) until it listens.
    pub fn spawn(config: AnvilConfig) -> Result<Self> {
        let binary = match config.binary {
            Some(path) => path,
            None => find_anvil()?,
        };
        let mut cmd = Command::new(&binary);
        cmd.arg("--host").arg("127.0.0.1").arg("--port").arg(config.port.unwrap_or(0).to_string());
        if let Some(id) = config.chain_id {
            cmd.arg("--chain-id").arg(id.to_string());
        }
        if let Some(secs) = config.block_time {
            cmd.arg("--block-time").arg(secs.to_string());
        }
        if let Some(state) = &config.state_file {
            cmd.arg("--state").arg(state);
        }
        cmd.env("NO_COLOR", "1").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| Error::AnvilSpawn { binary: binary.clone(), source })?;

        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let (tx, rx) = mpsc::channel();
        // One thread reads the banner, reports it, then keeps draining stdout so anvil never
        // blocks on (or dies of) a full or closed pipe.
        std::thread::spawn(move || {
            let Some(stdout) = stdout else { return };
            let mut banner = Banner::default();
            let mut reported = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !reported {
                    if banner.read(&line) {
                        reported = true;
                        let _ = tx.send(Ok(std::mem::take(&mut banner)));
                    }
                } else {
                    tracing::trace!(target: "anvil", "{line}");
                }
            }
            if !reported {
                let _ = tx.send(Err(()));
            }
        });
        let (etx, erx) = mpsc::channel();
        std::thread::spawn(move || {
            let Some(stderr) = stderr else { return };
            let mut text = String::new();
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                tracing::debug!(target: "anvil", "{line}");
                if text.len() < 4096 {
                    text.push_str(&line);
                    text.push('\n');
                }
                let _ = etx.send(text.clone());
            }
        });

        let banner = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(banner)) => banner,
            outcome => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = erx.try_iter().last().unwrap_or_default();
                let reason = if outcome.is_err() { "did not start listening within 30 s" } else { "exited" };
                return Err(Error::AnvilStart { binary, reason, stderr });
            }
        };
        Ok(Self { child, port: banner.port, chain_id: banner.chain_id.unwrap_or(31337), keys: banner.keys })
    }

    /// The port it listens on.
    pub const fn port(&self) -> u16 {
        self.port
    }

    /// Its chain id.
    pub const fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The prefunded development accounts' keys (10 000 ETH each), in anvil's order.
    pub fn keys(&self) -> &[B256] {
        &self.keys
    }

    /// The `n`th prefunded account as a signer.
    pub fn signer(&self, n: usize) -> Result<PrivateKeySigner> {
        let key = self.keys.get(n).ok_or(Error::NoSuchAccount(n))?;
        PrivateKeySigner::from_bytes(key).map_err(|_| Error::NoSuchAccount(n))
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        // SIGKILL would lose a `--state` file; ask politely first, then insist.
        #[cfg(unix)]
        {
            let pid = self.child.id().to_string();
            let asked = Command::new("kill").arg("-INT").arg(&pid).status().is_ok_and(|s| s.success());
            if asked {
                for _ in 0..50 {
                    if matches!(self.child.try_wait(), Ok(Some(_))) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What anvil prints before it serves: its accounts, chain id and address.
#[derive(Debug, Default)]
struct Banner {
    in_keys: bool,
    in_chain_id: bool,
    keys: Vec<B256>,
    chain_id: Option<u64>,
    port: u16,
}

impl Banner {
    /// Takes one line; true once the `Listening on` line has been seen.
    fn read(&mut self, line: &str) -> bool {
        if let Some(addr) = line.strip_prefix("Listening on") {
            self.port = addr.trim().rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);
            return true;
        }
        let line = line.trim();
        if line.starts_with("Private Keys") {
            self.in_keys = true;
        } else if line.starts_with("Wallet") {
            self.in_keys = false;
        } else if self.in_keys && line.starts_with('(') {
            if let Some(key) = line.split("0x").nth(1).and_then(|k| k.trim().parse::<B256>().ok()) {
                self.keys.push(key);
            }
        } else if line == "Chain ID" {
            // The id follows a few lines down, under a rule of '='.
            self.in_chain_id = true;
        } else if self.in_chain_id && line.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
            self.chain_id = line.parse().ok();
            self.in_chain_id = false;
        }
        false
    }
}

/// Finds anvil: `$OPENTAB_ANVIL`, else the npm package's native binary under
/// `contracts/node_modules` of this checkout (searched upwards from the current directory and
/// from the executable), else `anvil` on `PATH`.
pub fn find_anvil() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(ANVIL_ENV) {
        return Ok(PathBuf::from(path));
    }
    let starts =
        [std::env::current_dir().ok(), std::env::current_exe().ok(), Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")))];
    for start in starts.into_iter().flatten() {
        for dir in start.ancestors() {
            if let Some(found) = npm_anvil(dir) {
                return Ok(found);
            }
        }
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("anvil"))
        .find(|p| p.is_file());
    on_path.ok_or(Error::AnvilNotFound)
}

fn npm_anvil(dir: &Path) -> Option<PathBuf> {
    let scope = dir.join("contracts/node_modules/@foundry-rs");
    ["anvil-linux-amd64", "anvil-linux-arm64", "anvil-darwin-arm64", "anvil-darwin-amd64"]
        .iter()
        .map(|pkg| scope.join(pkg).join("bin/anvil"))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_yields_keys_chain_and_port() {
        let mut b = Banner::default();
        let lines = [
            "Available Accounts",
            "(0) 0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266 (10000.000000000000000000 ETH)",
            "Private Keys",
            "(0) 0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
            "Wallet",
            "Chain ID",
            "==================",
            "",
            "31337",
        ];
        for line in lines {
            assert!(!b.read(line));
        }
        assert!(b.read("Listening on 127.0.0.1:40123"));
        assert_eq!(b.port, 40123);
        assert_eq!(b.chain_id, Some(31337));
        assert_eq!(b.keys.len(), 1);
    }
}
