//! Running the `opentab` binary as a user would, and reading what it prints.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// A running `opentab`; killed if the test ends without stopping it.
pub struct Running {
    pub child: Child,
    /// What it printed up to the line that said it was ready.
    pub printed: String,
}

impl Running {
    /// Starts `opentab args…` and reads stdout until a line starting with `ready_prefix`.
    pub fn start(args: &[&str], envs: &[(&str, &str)], ready_prefix: &str) -> TestResult<Self> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_opentab"));
        command.args(args).envs(envs.iter().copied());
        Self::start_command(command, ready_prefix)
    }

    /// Starts `command` (an `opentab` run, possibly through a wrapper) and reads stdout until a
    /// line starting with `ready_prefix`.
    pub fn start_command(mut command: Command, ready_prefix: &str) -> TestResult<Self> {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut printed = String::new();
        let mut lines = BufReader::new(stdout).lines();
        loop {
            let Some(line) = lines.next() else {
                let _ = child.kill();
                return Err(format!("opentab exited before {ready_prefix:?}; it printed:\n{printed}").into());
            };
            let line = line?;
            printed.push_str(&line);
            printed.push('\n');
            if line.trim_start().starts_with(ready_prefix) {
                break;
            }
        }
        // Keep draining stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Self { child, printed })
    }

    /// The value printed after `label` on its line (`  url    http://…`).
    pub fn field(&self, label: &str) -> Option<String> {
        self.printed
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
    }

    /// Sends `signal` (INT, TERM) and waits for a clean exit.
    pub fn stop(mut self, signal: &str) -> TestResult<std::process::ExitStatus> {
        Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status()?;
        Ok(self.child.wait()?)
    }
}

impl Drop for Running {
    /// Ctrl-C first, so opentab stops its anvil too; SIGKILL only if it does not exit.
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-INT").arg(self.child.id().to_string()).status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn get(url: &str) -> TestResult<(u16, String)> {
    let res = client().get(url).send().await?;
    Ok((res.status().as_u16(), res.text().await?))
}

/// A reqwest client (the TLS provider must be chosen before the first one is built).
pub fn client() -> reqwest::Client {
    opentab_chain::install_tls_provider();
    reqwest::Client::new()
}

/// Signs `owner` in (SIWE) at `url` and returns the bearer token.
pub async fn sign_in(url: &str, owner: &opentab_core::SigningKey) -> TestResult<String> {
    let (_, nonce) = get(&format!("{url}/api/auth/nonce")).await?;
    let nonce: serde_json::Value = serde_json::from_str(&nonce)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let domain = nonce["domain"].as_str().ok_or("domain")?;
    let text = opentab_core::siwe::SiweMessage::compose(
        domain,
        url,
        owner.address(),
        31337,
        nonce["nonce"].as_str().ok_or("nonce")?,
        now,
        now + 600,
    );
    let signature = owner.sign_digest(&opentab_core::eip191_hash_message(&text)).to_string();
    let login = client()
        .post(format!("{url}/api/auth/login"))
        .header("content-type", "application/json")
        .body(serde_json::json!({ "message": text, "signature": signature }).to_string())
        .send()
        .await?;
    let body: serde_json::Value = serde_json::from_str(&login.text().await?)?;
    Ok(body["token"].as_str().ok_or("no token")?.to_owned())
}

/// Polls `check` every 200 ms for up to 60 s.
pub async fn wait_until<F, Fut>(what: &str, mut check: F) -> TestResult
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = TestResult<bool>>,
{
    for _ in 0..300 {
        if check().await? {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    Err(format!("timed out waiting until {what}").into())
}
