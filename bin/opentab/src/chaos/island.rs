//! A proxy on an island: a network namespace of its own, joined to this host by a veth link.
//! Inside, `opentab relay` answers at the loopback addresses the cluster's configuration names
//! (PostgreSQL, the chain, every Redis node, the upstream) and forwards over the veth to links
//! on this host's end, which the suite cuts one service at a time: here, Redis.

use std::net::SocketAddr;

use anyhow::Context;
use opentab_topology::{HOST_IP, INSIDE_IP, Link, Namespace, Supervised};

use crate::cluster::Cluster;

/// A proxy in a network namespace, and the links it reaches the cluster through.
pub(super) struct Island {
    // Dropped in this order: the processes, the links, the namespace.
    proxy: Supervised,
    relay: Supervised,
    redis: Vec<Link>,
    others: Vec<Link>,
    port: u16,
    _state: tempfile::TempDir,
    _namespace: Namespace,
}

impl Island {
    /// Makes the namespace and its links, and starts the relay and the proxy inside.
    pub(super) async fn start(cluster: &Cluster) -> anyhow::Result<Self> {
        let namespace = Namespace::create(&format!("ot{}", std::process::id() % 100_000))?;
        let upstream_port: u16 =
            cluster.upstream.url.rsplit(':').next().and_then(|p| p.parse().ok()).context("the upstream's port")?;
        let services = [cluster.postgres.port(), cluster.rpc.addr().port(), upstream_port];
        let redis_ports: Vec<u16> = cluster.redis.nodes().iter().map(|n| n.port).collect();
        let on_host = |port: u16| SocketAddr::new(HOST_IP, port);
        let mut others = Vec::new();
        for port in services {
            others.push(Link::start_on(on_host(port), &format!("127.0.0.1:{port}")).await?);
        }
        let mut redis = Vec::new();
        for port in &redis_ports {
            redis.push(Link::start_on(on_host(*port), &format!("127.0.0.1:{port}")).await?);
        }
        let exe = std::env::current_exe()?;
        let pairs: Vec<String> =
            services.iter().chain(&redis_ports).map(|p| format!("127.0.0.1:{p}={HOST_IP}:{p}")).collect();
        let mut relay_args = vec!["relay".to_owned()];
        relay_args.extend(pairs);
        let (program, args) = namespace.wrap(&exe, relay_args);
        let relay = Supervised::start("relay in the namespace", program, args, Vec::new(), "ready")?;

        let port = opentab_topology::free_port()?;
        let config = cluster.config.with_file_name("island.toml");
        let text = std::fs::read_to_string(&cluster.config)?
            .replace("[proxy]\nlisten = \"127.0.0.1:0\"", &format!("[proxy]\nlisten = \"{INSIDE_IP}:{port}\""));
        std::fs::write(&config, text)?;
        let state = tempfile::tempdir()?;
        let proxy_args = vec![
            "proxy".to_owned(),
            "--config".to_owned(),
            config.to_string_lossy().into_owned(),
            "--upstream".to_owned(),
            format!("http://127.0.0.1:{upstream_port}"),
        ];
        let (program, args) = namespace.wrap(&exe, proxy_args);
        let envs = vec![
            ("XDG_STATE_HOME".to_owned(), state.path().to_string_lossy().into_owned()),
            ("RUST_LOG".to_owned(), "error".to_owned()),
        ];
        let proxy = Supervised::start("proxy in the namespace", program, args, envs, "ready")?;
        Ok(Self { proxy, relay, redis, others, port, _state: state, _namespace: namespace })
    }

    /// The proxy's base URL, from this host.
    pub(super) fn url(&self) -> String {
        format!("http://{INSIDE_IP}:{}", self.port)
    }

    /// Cuts the island's way to every Redis node (its database, chain and upstream stay).
    pub(super) fn cut_from_redis(&self) {
        for link in &self.redis {
            link.cut();
        }
    }

    /// Lets it reach Redis again.
    pub(super) fn restore(&self) {
        for link in &self.redis {
            link.restore();
        }
    }
}

impl Drop for Island {
    fn drop(&mut self) {
        let _ = self.proxy.stop();
        let _ = self.relay.kill();
        for link in self.others.iter().chain(&self.redis) {
            link.cut();
        }
    }
}
