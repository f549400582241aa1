//! A child process started, read until it says it is ready, killed or stopped, and started
//! again with the same command line.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{Error, Result, io};

/// A supervised child (see the module docs). Dropping it stops it (`SIGINT`, then `SIGKILL`).
#[derive(Debug)]
pub struct Supervised {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    ready: String,
    child: Option<Child>,
    /// What it printed up to the line that said it was ready.
    printed: String,
}

impl Supervised {
    /// Starts `program args…` with `envs` (its stderr goes to ours) and reads its stdout until
    /// a line starting with `ready` (at most 60 s).
    pub fn start(
        name: &str,
        program: PathBuf,
        args: Vec<String>,
        envs: Vec<(String, String)>,
        ready: &str,
    ) -> Result<Self> {
        let mut process = Self {
            name: name.to_owned(),
            program,
            args,
            envs,
            ready: ready.to_owned(),
            child: None,
            printed: String::new(),
        };
        process.spawn()?;
        Ok(process)
    }

    fn spawn(&mut self) -> Result<()> {
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(io(format!("starting {}", self.name)))?;
        let stdout = child.stdout.take().ok_or_else(|| Error::Failed(format!("{}: no stdout", self.name)))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let ready = self.ready.clone();
        std::thread::spawn(move || {
            let mut printed = String::new();
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                printed.push_str(&line);
                printed.push('\n');
                if line.trim_start().starts_with(&ready) {
                    let _ = tx.send(Ok(printed));
                    // Keep draining, so the child never blocks on a full pipe.
                    for _ in lines {}
                    return;
                }
            }
            let _ = tx.send(Err(printed));
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(printed)) => {
                self.printed = printed;
                self.child = Some(child);
                Ok(())
            }
            outcome => {
                let _ = child.kill();
                let _ = child.wait();
                let printed = match outcome {
                    Ok(Err(printed)) => printed,
                    _ => "(nothing within 60 s)".into(),
                };
                Err(Error::Failed(format!("{} stopped before it was ready; it printed:\n{printed}", self.name)))
            }
        }
    }

    /// Its name, for people.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value printed after `label` on its line (`  url    http://…`).
    pub fn field(&self, label: &str) -> Option<String> {
        self.printed
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it runs.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `SIGKILL`: no chance to finish anything.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().map_err(io(format!("killing {}", self.name)))?;
            let _ = child.wait();
        }
        Ok(())
    }

    /// `SIGINT`, and waits (up to 30 s, then `SIGKILL`) for it to finish what it was doing.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        let _ = Command::new("kill").arg("-INT").arg(child.id().to_string()).status();
        for _ in 0..300 {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        Ok(())
    }

    /// Starts it again, with the same command line, after [`Supervised::kill`] or
    /// [`Supervised::stop`].
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
