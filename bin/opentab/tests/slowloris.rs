//! Hostile traffic: hundreds of half-open connections (request headers started, never
//! finished) against `opentab dev` running with a small open-file limit, as a slowloris attack
//! would leave it. Paid calls must still be served: the header-read deadline closes the
//! half-open connections and the connection cap keeps the process below its file limit.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Running, TestResult};

const HALF_OPEN: usize = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paid_calls_are_served_through_a_slowloris_attack() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().to_string_lossy().into_owned();
    // 256 open files for the whole process; the connection cap defaults to half of that.
    let mut command = Command::new("sh");
    command
        .args(["-c", "ulimit -n 256 && exec \"$0\" \"$@\"", env!("CARGO_BIN_EXE_opentab")])
        .args(["dev", "--port", "0", "--anvil-port", "0", "--data-dir", &data_dir])
        .env("OPENTAB_HEADER_READ_TIMEOUT_SECS", "2");
    let dev = Running::start_command(command, "ready")?;
    let url = dev.field("url").ok_or("no url")?;
    let address: SocketAddr = url.trim_start_matches("http://").parse()?;

    // The attack: connections that start a request and never finish its headers.
    let mut half_open = Vec::new();
    for _ in 0..HALF_OPEN {
        if let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_millis(200)) {
            let _ = stream.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: victim\r\nX-Slow: ");
            half_open.push(stream);
        }
    }
    assert!(half_open.len() >= 200, "only {} connections opened", half_open.len());

    // Meanwhile an agent pays for calls; they are served (once the deadline has closed the
    // half-open connections ahead of it in the queue).
    let demo = dir.path().join("demo.json").to_string_lossy().into_owned();
    let started = Instant::now();
    let paid = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_opentab")).args(["pay", "--demo", &demo, "--count", "3"]).output()
    });
    let out = tokio::time::timeout(Duration::from_secs(120), paid).await???;
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(printed.matches("HTTP 200 charged").count(), 3, "{printed}");
    eprintln!("3 paid calls served {:?} after {} half-open connections", started.elapsed(), half_open.len());

    // The server is healthy afterwards, and stops cleanly.
    assert_eq!(common::get(&format!("{url}/healthz")).await?.0, 200);
    drop(half_open);
    assert!(dev.stop("INT")?.success());
    Ok(())
}
