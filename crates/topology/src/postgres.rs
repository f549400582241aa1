//! A PostgreSQL cluster of the topology's own: `initdb` into a temporary directory, started on a
//! free loopback port with Debian's binaries (`apt-get install postgresql`), so it can be
//! restarted or killed without touching the machine's. Stopped (and removed) when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{Error, Result, io, wait_for};

/// A running PostgreSQL of the topology's own (see the module docs).
#[derive(Debug)]
pub struct OwnPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// As root, the server runs as Debian's `postgres` account (`initdb` refuses root).
    run_as: Option<&'static str>,
}

impl OwnPostgres {
    /// Initialises a cluster (trust authentication, `fsync` off: it is thrown away) and starts
    /// it on a free port.
    pub fn start() -> Result<Self> {
        let bin = binaries()?;
        let dir =
            tempfile::Builder::new().prefix("opentab-pg").tempdir().map_err(io("making PostgreSQL's directory"))?;
        let run_as = is_root().then_some("postgres");
        if let Some(user) = run_as {
            run(Command::new("chown").arg(user).arg(dir.path()), "chown PostgreSQL's directory")?;
        }
        let pg = Self { port: crate::free_port()?, dir, bin, run_as };
        pg.command("initdb")
            .arg("-D")
            .arg(pg.data())
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .stdout(std::process::Stdio::null())
            .status()
            .map_err(io("running initdb"))
            .and_then(|status| ok(status, "initdb"))?;
        pg.pg_ctl("start")?;
        Ok(pg)
    }

    /// The port it listens on.
    pub const fn port(&self) -> u16 {
        self.port
    }

    /// A URL for database `name` (trust authentication, user `postgres`).
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Stops it (fast: open connections are closed) and starts it again.
    pub fn restart(&self) -> Result<()> {
        self.pg_ctl("restart")
    }

    /// Stops it (fast); [`OwnPostgres::resume`] starts it again.
    pub fn stop(&self) -> Result<()> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(self.data()).args(["-m", "fast", "-w", "stop"]);
        run(&mut cmd, "pg_ctl stop")
    }

    /// Starts it after [`OwnPostgres::stop`].
    pub fn resume(&self) -> Result<()> {
        self.pg_ctl("start")
    }

    /// Whether it accepts connections.
    pub fn is_up(&self) -> bool {
        crate::listening(self.port)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pg_ctl(&self, action: &str) -> Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300",
            self.port,
            self.dir.path().display()
        );
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .args(["-m", "fast", "-w", "-o", &options, action]);
        run(&mut cmd, &format!("pg_ctl {action}"))?;
        wait_for("PostgreSQL listens", Duration::from_secs(30), || self.is_up())
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match self.run_as {
            Some(user) => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", user, "--"]).arg(path);
                cmd
            }
            None => Command::new(path),
        }
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(self.data()).args(["-m", "immediate", "-w", "stop"]);
        let _ = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).status();
    }
}

/// The newest of Debian's PostgreSQL binary directories.
fn binaries() -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            dirs.filter_map(|d| d.ok().map(|d| d.path().join("bin"))).filter(|p| p.join("initdb").is_file()).collect()
        })
        .unwrap_or_default();
    found.sort_by_key(|p| version(p));
    found.pop().ok_or_else(|| {
        Error::Failed("PostgreSQL's server binaries were not found under /usr/lib/postgresql: install Debian's postgresql package".into())
    })
}

fn version(bin: &Path) -> u32 {
    bin.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|out| out.stdout.starts_with(b"0\n"))
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.stdout(std::process::Stdio::null()).status().map_err(io(what))?;
    ok(status, what)
}

fn ok(status: std::process::ExitStatus, what: &str) -> Result<()> {
    if status.success() { Ok(()) } else { Err(Error::Failed(format!("{what} failed ({status})"))) }
}
