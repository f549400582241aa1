//! A Redis Cluster of the topology's own: `redis-server` in cluster mode (Debian's
//! `redis-server` and `redis-tools` packages), masters and their replicas on free loopback
//! ports, made into one cluster with `redis-cli --cluster create`. Nodes notice a dead peer
//! after 1 s, so a replica takes over its master's slots about two seconds after the master
//! dies, whatever it has had time to copy (`cluster-replica-validity-factor 0`: replication is
//! asynchronous, and writes the master acknowledged can be lost, as in a production failover);
//! slots that still have a master keep answering meanwhile (`cluster-require-full-coverage
//! no`). Every node is killed when the handle is dropped.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{Error, Result, io};

/// How long a node waits before it counts a silent peer as failed.
const NODE_TIMEOUT_MS: u64 = 1_000;

/// One `redis-server` of the cluster.
#[derive(Debug)]
pub struct RedisNode {
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
}

/// A running Redis Cluster (see the module docs).
#[derive(Debug)]
pub struct RedisCluster {
    dir: tempfile::TempDir,
    nodes: Vec<RedisNode>,
}

impl RedisCluster {
    /// Starts `masters` masters with `replicas` replicas each and joins them into a cluster;
    /// returns once every slot is served.
    pub async fn start(masters: usize, replicas: usize) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("opentab-redis").tempdir().map_err(io("making Redis's directory"))?;
        let mut cluster = Self { dir, nodes: Vec::new() };
        for _ in 0..masters * (1 + replicas) {
            let port = crate::free_port()?;
            let child = cluster.spawn(port)?;
            cluster.nodes.push(RedisNode { port, child: Some(child) });
        }
        for node in &cluster.nodes {
            crate::wait_for("redis-server listens", Duration::from_secs(10), || crate::listening(node.port))?;
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        create.args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"]);
        let out =
            create.stdin(Stdio::null()).output().map_err(io("redis-cli --cluster create (Debian's redis-tools)"))?;
        if !out.status.success() {
            return Err(Error::Failed(format!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        cluster.wait_healthy(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    fn spawn(&self, port: u16) -> Result<Child> {
        let dir = self.dir.path();
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--cluster-enabled", "yes"])
            .arg("--cluster-config-file")
            .arg(format!("nodes-{port}.conf"))
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            .args(["--cluster-require-full-coverage", "no", "--cluster-replica-validity-factor", "0"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join(format!("{port}.log")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io("starting redis-server (Debian's redis-server package)"))
    }

    /// `redis+cluster://127.0.0.1:<port>,…`: every node, for clients to learn the cluster from.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// Every node, running or not.
    pub fn nodes(&self) -> &[RedisNode] {
        &self.nodes
    }

    /// The ports of the masters as the running nodes see them now.
    pub async fn masters(&self) -> Result<Vec<u16>> {
        let view = self.cluster_nodes().await?;
        Ok(view.iter().filter(|n| n.master && !n.failed && n.slots).map(|n| n.port).collect())
    }

    /// The port of the master serving the slot of key `name` (its hash tag's, if it has one).
    pub async fn master_of(&self, name: &str) -> Result<u16> {
        let node = self.nodes.iter().find(|n| n.child.is_some()).ok_or_else(|| Error::Failed("no node runs".into()))?;
        let mut conn = connect(node.port).await?;
        let slot: u16 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(name).query_async(&mut conn).await?;
        let view = self.cluster_nodes().await?;
        view.iter()
            .find(|n| n.master && !n.failed && n.ranges.iter().any(|(from, to)| (*from..=*to).contains(&slot)))
            .map(|n| n.port)
            .ok_or_else(|| Error::Failed(format!("no master serves slot {slot}")))
    }

    /// Kills the node on `port` (`SIGKILL`: no goodbye to its peers).
    pub fn kill(&mut self, port: u16) -> Result<()> {
        let node = self.node(port)?;
        if let Some(mut child) = node.child.take() {
            child.kill().map_err(io("killing redis-server"))?;
            let _ = child.wait();
        }
        Ok(())
    }

    /// Starts the node on `port` again (with its cluster configuration: it rejoins, as a replica
    /// if its slots were taken over).
    pub fn revive(&mut self, port: u16) -> Result<()> {
        let child = self.spawn(port)?;
        self.node(port)?.child = Some(child);
        crate::wait_for("redis-server listens", Duration::from_secs(10), || crate::listening(port))
    }

    /// `FLUSHALL` on every master: the counters are gone everywhere at once.
    pub async fn flushall(&self) -> Result<()> {
        for port in self.masters().await? {
            let mut conn = connect(port).await?;
            let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await?;
        }
        Ok(())
    }

    /// Waits until every slot is served by a master that answers, as every running node sees it.
    pub async fn wait_healthy(&self, limit: Duration) -> Result<()> {
        let started = std::time::Instant::now();
        loop {
            if self.healthy().await {
                return Ok(());
            }
            if started.elapsed() > limit {
                return Err(Error::Failed(format!("the Redis Cluster is not healthy after {limit:?}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn healthy(&self) -> bool {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let Ok(mut conn) = connect(node.port).await else { return false };
            let info: redis::RedisResult<String> = redis::cmd("CLUSTER").arg("INFO").query_async(&mut conn).await;
            if !info.is_ok_and(|i| i.contains("cluster_state:ok")) {
                return false;
            }
        }
        // Every master serving slots is one that runs.
        match self.cluster_nodes().await {
            Ok(view) => view
                .iter()
                .filter(|n| n.master && n.slots)
                .all(|n| !n.failed && self.nodes.iter().any(|r| r.port == n.port && r.child.is_some())),
            Err(_) => false,
        }
    }

    /// `CLUSTER NODES` as the first running node sees it.
    async fn cluster_nodes(&self) -> Result<Vec<Seen>> {
        let node = self
            .nodes
            .iter()
            .find(|n| n.child.is_some())
            .ok_or_else(|| Error::Failed("no Redis node is running".into()))?;
        let mut conn = connect(node.port).await?;
        let text: String = redis::cmd("CLUSTER").arg("NODES").query_async(&mut conn).await?;
        Ok(text.lines().filter_map(Seen::parse).collect())
    }

    fn node(&mut self, port: u16) -> Result<&mut RedisNode> {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .ok_or_else(|| Error::Failed(format!("no Redis node on port {port}")))
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Debug)]
struct Seen {
    port: u16,
    master: bool,
    failed: bool,
    slots: bool,
    /// The slot ranges it serves.
    ranges: Vec<(u16, u16)>,
}

impl Seen {
    /// `<id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link> <slot> …`
    fn parse(line: &str) -> Option<Self> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let port = fields.get(1)?.split('@').next()?.rsplit(':').next()?.parse().ok()?;
        let flags = fields.get(2)?;
        // `0-5460`, `5461`; `[…]` marks a slot moving, not served yet.
        let ranges = fields
            .iter()
            .skip(8)
            .filter(|r| !r.starts_with('['))
            .filter_map(|r| match r.split_once('-') {
                Some((from, to)) => Some((from.parse().ok()?, to.parse().ok()?)),
                None => r.parse().ok().map(|slot| (slot, slot)),
            })
            .collect();
        Some(Self {
            port,
            master: flags.split(',').any(|f| f == "master"),
            failed: flags.split(',').any(|f| f == "fail" || f == "fail?"),
            slots: fields.len() > 8,
            ranges,
        })
    }
}

async fn connect(port: u16) -> Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(1)));
    Ok(client.get_multiplexed_async_connection_with_config(&config).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lines_say_who_serves_what() {
        let master = Seen::parse("07c3 127.0.0.1:30004@40004 myself,master - 0 0 1 connected 0-5460 7000");
        assert!(master.is_some_and(|m| m.port == 30004
            && m.master
            && !m.failed
            && m.slots
            && m.ranges == [(0, 5460), (7000, 7000)]));
        let dead = Seen::parse("e7d1 127.0.0.1:30005@40005 master,fail - 1 1 2 disconnected 5461-10922");
        assert!(dead.is_some_and(|m| m.master && m.failed));
        let replica = Seen::parse("67ed 127.0.0.1:30002@40002 slave e7d1 0 1 2 connected");
        assert!(replica.is_some_and(|r| !r.master && !r.slots));
    }
}
