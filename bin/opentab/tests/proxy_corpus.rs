//! The bypass corpus (`testdata/routes/bypass-corpus.json`) through `opentab proxy` in front of
//! three real upstreams, each routing with its own framework: axum, Express and Starlette (on
//! uvicorn). Every variant is sent byte for byte, without a payment; none may reach a handler.
//!
//! Needs node with `packages/node_modules` (`npm ci --prefix packages`) and a Python with
//! starlette and uvicorn (`OPENTAB_PYTHON`; `scripts/test.sh` installs both).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{Running, TestResult};
use opentab_chain::{Anvil, AnvilConfig, deploy_dev_contracts, signing_provider};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Corpus {
    routes: std::collections::BTreeMap<String, String>,
    variants: Vec<Variant>,
}

#[derive(Debug, Deserialize)]
struct Variant {
    method: String,
    path: String,
    class: String,
}

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// An upstream API process, stopped on drop, and how to ask what it served.
struct Upstream {
    name: &'static str,
    url: String,
    served: Box<dyn Fn() -> TestResult<u64> + Send + Sync>,
    _child: Option<KillOnDrop>,
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The axum upstream: the corpus routes as axum routes them (exact, case-sensitive; `get`
/// answers HEAD too), in this process.
async fn axum_upstream() -> TestResult<Upstream> {
    use axum::routing::{get, post};
    let served = Arc::new(AtomicU32::new(0));
    let count = |served: Arc<AtomicU32>| {
        move || {
            let served = served.clone();
            async move {
                served.fetch_add(1, Ordering::SeqCst);
                "served"
            }
        }
    };
    let app = axum::Router::new()
        .route("/v1/chat", post(count(served.clone())))
        .route("/v1/report", get(count(served.clone())))
        .route("/v1/models/{id}", get(count(served.clone())))
        .route("/v1/files/{name}", post(count(served.clone())))
        .route("/{tenant}/report", get(count(served.clone())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(Upstream {
        name: "axum",
        url,
        served: Box::new(move || Ok(u64::from(served.load(Ordering::SeqCst)))),
        _child: None,
    })
}

/// A child process that prints `listening http://…` once ready; asked `GET /__served`.
fn process_upstream(name: &'static str, mut command: Command) -> TestResult<Upstream> {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let child = KillOnDrop(child);
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        let line = lines.next().ok_or_else(|| format!("{name} exited before listening"))??;
        if let Some(url) = line.trim().strip_prefix("listening ") {
            break url.to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let address = url.trim_start_matches("http://").to_owned();
    Ok(Upstream {
        name,
        url,
        served: Box::new(move || {
            let (status, body) = raw(&address, "GET", "/__served", &[])?;
            if status != 200 {
                return Err(format!("GET /__served: {status}").into());
            }
            let value: serde_json::Value = serde_json::from_str(&body)?;
            Ok(value["served"].as_u64().ok_or("no count")?)
        }),
        _child: Some(child),
    })
}

fn express_upstream() -> TestResult<Upstream> {
    let mut command = Command::new("node");
    command
        .arg(format!("{ROOT}/testdata/routes/upstreams/express-app.cjs"))
        .env("NODE_PATH", format!("{ROOT}/packages/node_modules"));
    process_upstream("Express", command)
}

fn starlette_upstream() -> TestResult<Upstream> {
    let python = std::env::var("OPENTAB_PYTHON").unwrap_or_else(|_| format!("{ROOT}/.venv-tools/bin/python"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    // uvicorn logs to stderr; a one-line wrapper announces readiness on stdout like the others.
    let script = format!(
        "import socket, threading, time, uvicorn\n\
         def announce():\n\
         \x20   while True:\n\
         \x20       try:\n\
         \x20           socket.create_connection(('127.0.0.1', {port}), 1).close(); break\n\
         \x20       except OSError: time.sleep(0.05)\n\
         \x20   print('listening http://127.0.0.1:{port}', flush=True)\n\
         threading.Thread(target=announce, daemon=True).start()\n\
         uvicorn.run('starlette_app:app', host='127.0.0.1', port={port}, log_level='warning', \
         app_dir='{ROOT}/testdata/routes/upstreams')\n"
    );
    let mut command = Command::new(python);
    command.arg("-c").arg(script);
    process_upstream("Starlette", command)
}

/// One request sent byte for byte (no client library normalises the path); status and body.
fn raw(address: &str, method: &str, target: &str, headers: &[(&str, &str)]) -> TestResult<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!("{method} {target} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Content-Length: 0\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let status =
        text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| format!("no status in {text:?}"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_corpus_is_never_served_free_through_the_proxy() -> TestResult {
    let corpus: Corpus =
        serde_json::from_str(&std::fs::read_to_string(format!("{ROOT}/testdata/routes/bypass-corpus.json"))?)?;
    let anvil = Anvil::spawn(AnvilConfig::default())?;
    let rpc = anvil.endpoint();
    let deployment = deploy_dev_contracts(&signing_provider(&rpc, anvil.signer(0)?)?, &rpc, 86_400).await?;
    let database_url = opentab_store::testing::fresh_postgres_url().await?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("opentab.toml");
    let routes: String = corpus.routes.iter().map(|(route, price)| format!("\"{route}\" = \"{price}\"\n")).collect();
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndatabase_url = \"{database_url}\"\nrpc_url = \"{rpc}\"\nvalidator = \"{:#x}\"\n\
             deployed_at_block = {}\npayee = \"{}\"\ndomain = \"127.0.0.1\"\n\n[proxy]\nlisten = \"127.0.0.1:0\"\n\n\
             [proxy.routes]\n{routes}",
            deployment.validator,
            deployment.deployed_at_block,
            anvil.signer(2)?.address(),
        ),
    )?;
    let config = config.to_string_lossy().into_owned();

    let upstreams = [axum_upstream().await?, express_upstream()?, starlette_upstream()?];
    for upstream in &upstreams {
        let proxy = Running::start(&["proxy", "--config", &config, "--upstream", &upstream.url], &[], "ready")?;
        let address = proxy.field("url").ok_or("no proxy url")?.trim_start_matches("http://").to_owned();
        // Through the proxy the upstream is live: an unpriced path reaches it (and 404s there).
        assert_eq!(raw(&address, "GET", "/unpriced", &[])?.0, 404, "{}", upstream.name);
        let mut charged = 0;
        for v in &corpus.variants {
            let before = (upstream.served)()?;
            let (status, body) = raw(&address, &v.method, &v.path, &[])?;
            assert_eq!(
                (upstream.served)()?,
                before,
                "{}: {} {} ({}) was served free",
                upstream.name,
                v.method,
                v.path,
                v.class
            );
            assert!(
                [402, 400, 404, 405].contains(&status),
                "{}: {} {} ({}): {status} {body}",
                upstream.name,
                v.method,
                v.path,
                v.class
            );
            charged += u32::from(status == 402);
        }
        assert!(charged >= 20, "{}: only {charged} variants were charged", upstream.name);
        drop(proxy);
    }
    Ok(())
}
