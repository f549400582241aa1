//! A network namespace joined to this host by a veth pair: a host of its own on a point-to-point
//! link (`10.88.0.1` here, `10.88.0.2` there), for a process that must reach this host's
//! services over a network the caller can cut. Made with `ip` (iproute2; root), removed when
//! dropped.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

use crate::{Error, Result, io};

/// A network namespace and its veth link (see the module docs).
#[derive(Debug)]
pub struct Namespace {
    name: String,
}

/// This host's end of the link.
pub const HOST_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 88, 0, 1));
/// The namespace's end.
pub const INSIDE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 88, 0, 2));

impl Namespace {
    /// Makes namespace `name` (a few letters: interface names are at most 15 bytes) with its
    /// loopback up and a veth link to this host.
    pub fn create(name: &str) -> Result<Self> {
        let (host_if, inside_if) = (format!("{name}h"), format!("{name}n"));
        // A leftover of an earlier run that died is removed first.
        let _ = Command::new("ip").args(["netns", "del", name]).stderr(std::process::Stdio::null()).status();
        let _ = Command::new("ip").args(["link", "del", &host_if]).stderr(std::process::Stdio::null()).status();
        ip(&["netns", "add", name]).map_err(|e| {
            Error::Failed(format!("cannot make a network namespace (`ip netns add` needs root and iproute2): {e}"))
        })?;
        let ns = Self { name: name.to_owned() };
        ip(&["link", "add", &host_if, "type", "veth", "peer", "name", &inside_if])?;
        ip(&["link", "set", &inside_if, "netns", name])?;
        ip(&["addr", "add", &format!("{HOST_IP}/30"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&["netns", "exec", name, "ip", "addr", "add", &format!("{INSIDE_IP}/30"), "dev", &inside_if])?;
        ip(&["netns", "exec", name, "ip", "link", "set", &inside_if, "up"])?;
        ip(&["netns", "exec", name, "ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `program args…` run inside it: what to hand to [`crate::Supervised::start`].
    pub fn wrap(&self, program: &std::path::Path, args: Vec<String>) -> (std::path::PathBuf, Vec<String>) {
        let mut wrapped = vec!["netns".to_owned(), "exec".to_owned(), self.name.clone()];
        wrapped.push(program.to_string_lossy().into_owned());
        wrapped.extend(args);
        ("ip".into(), wrapped)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Removing the namespace removes its end of the veth, and with it this host's.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().map_err(io("running ip (iproute2)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Failed(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())))
    }
}
