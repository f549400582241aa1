//! opentab's production topology run on one machine, and the faults `opentab chaos` injects
//! into it. Every process is started here and stopped when its handle is dropped.
//!
//! - [`OwnPostgres`]: a PostgreSQL cluster of its own (Debian's binaries) on a free port, that
//!   can be restarted or killed without touching the machine's.
//! - [`RedisCluster`]: `redis-server` in cluster mode, masters and replicas on loopback ports;
//!   a master can be killed (its replica is promoted) or everything flushed.
//! - [`Link`]: a TCP link in front of a service, cut and restored at will (the network going
//!   away, as a process connected through it sees it).
//! - [`Supervised`]: an `opentab` child process, read until it says it is ready, killed with
//!   `SIGKILL` or stopped with `SIGINT`, and started again with the same arguments.
//! - [`Namespace`]: a network namespace on a veth link to this host, for a process whose
//!   network the caller controls.

mod link;
mod netns;
mod postgres;
mod process;
mod redis_cluster;

pub use link::Link;
pub use netns::{HOST_IP, INSIDE_IP, Namespace};
pub use postgres::OwnPostgres;
pub use process::Supervised;
pub use redis_cluster::{RedisCluster, RedisNode};

/// What can go wrong running the topology.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A program could not be started or run.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A program ran but did not do what was asked.
    #[error("{0}")]
    Failed(String),
    /// Redis refused a command.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An [`Error::Io`] saying what was being done.
pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// A TCP port nobody listens on now (the OS picks it).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    Ok(listener.local_addr().map_err(io("finding a free port"))?.port())
}

/// Whether something accepts connections on `127.0.0.1:port`.
pub fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), std::time::Duration::from_millis(200)).is_ok()
}

/// Polls `ready` every 50 ms for up to `limit`; an error saying `what` did not happen.
pub(crate) fn wait_for(what: &str, limit: std::time::Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let started = std::time::Instant::now();
    while !ready() {
        if started.elapsed() > limit {
            return Err(Error::Failed(format!("{what}: not within {limit:?}")));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(())
}
