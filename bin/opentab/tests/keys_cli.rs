//! `opentab keys …` and `opentab tab …` as an owner runs them, against a real `opentab dev`
//! (anvil, SQLite, chain listener, REST API) in another process.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Running, TestResult};
use opentab_core::Address;

/// How long the chain listener may take to mirror a change (it polls every 250 ms).
const LISTENER_WAIT: Duration = Duration::from_secs(15);

struct Owner {
    url: String,
    data_dir: String,
}

impl Owner {
    /// `opentab args… --url <url> --data-dir <data_dir>`, with no owner settings from the environment.
    fn run(&self, args: &[&str]) -> TestResult<Output> {
        self.run_at(&self.url, args)
    }

    fn run_at(&self, url: &str, args: &[&str]) -> TestResult<Output> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_opentab"));
        command.args(args).args(["--url", url, "--data-dir", &self.data_dir]);
        for var in ["OPENTAB_URL", "OPENTAB_OWNER_KEY", "OPENTAB_DATA_DIR", "OPENTAB_RPC_URL", "OPENTAB_VALIDATOR"] {
            command.env_remove(var);
        }
        command.env("OPENTAB_SESSION_DIR", self.sessions());
        Ok(command.output()?)
    }

    /// Where the commands keep their session.
    fn sessions(&self) -> std::path::PathBuf {
        std::path::Path::new(&self.data_dir).join("sessions")
    }

    /// Runs `args`, which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> TestResult<String> {
        let out = self.run(args)?;
        let (stdout, stderr) = (String::from_utf8(out.stdout)?, String::from_utf8_lossy(&out.stderr).into_owned());
        if !out.status.success() {
            return Err(format!("opentab {args:?} failed ({}):\n{stdout}{stderr}", out.status).into());
        }
        Ok(stdout)
    }

    /// The key as `keys list --json [--all]` shows it, if listed.
    fn listed(&self, key: Address, all: bool) -> TestResult<Option<serde_json::Value>> {
        let args: &[&str] = if all { &["keys", "list", "--json", "--all"] } else { &["keys", "list", "--json"] };
        let keys: Vec<serde_json::Value> = serde_json::from_str(&self.ok(args)?)?;
        for k in keys {
            if k["address"].as_str().map(str::parse::<Address>).transpose()? == Some(key) {
                return Ok(Some(k));
            }
        }
        Ok(None)
    }

    /// Waits until `keys list --json [--all]` shows `key` with `status`.
    fn wait_for_status(&self, key: Address, all: bool, status: &str) -> TestResult {
        let start = Instant::now();
        loop {
            let listed = self.listed(key, all)?;
            if listed.as_ref().and_then(|k| k["status"].as_str()) == Some(status) {
                return Ok(());
            }
            if start.elapsed() > LISTENER_WAIT {
                return Err(format!("{key} never became {status:?}; last listed as {listed:?}").into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until `tab show` prints a line containing `needle`; the output.
    fn wait_for_tab(&self, needle: &str) -> TestResult<String> {
        let start = Instant::now();
        loop {
            let shown = self.ok(&["tab", "show"])?;
            if shown.lines().any(|l| l.contains(needle)) {
                return Ok(shown);
            }
            if start.elapsed() > LISTENER_WAIT {
                return Err(format!("`tab show` never showed {needle:?}; it printed:\n{shown}").into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn an_owner_manages_keys_and_tabs_from_the_command_line() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().to_string_lossy().into_owned();
    let dev = Running::start(&["dev", "--port", "0", "--anvil-port", "0", "--data-dir", &data_dir], &[], "ready")?;
    let owner = Owner { url: dev.field("url").ok_or("no url printed")?, data_dir };

    // Create: opentab generates the key and shows its private key once; the CLI says whose key it used.
    let out = owner.run(&["keys", "create", "--limit", "5", "--expires-in", "1h"])?;
    let (stdout, stderr) = (String::from_utf8(out.stdout)?, String::from_utf8(out.stderr)?);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("demo owner"), "says it falls back to the dev demo owner: {stderr}");
    let field = |label: &str| {
        stdout.lines().find_map(|l| l.strip_prefix(label)).map(str::trim).map(str::to_owned).ok_or(label.to_owned())
    };
    let key: Address = field("session key")?.parse()?;
    let private_key: opentab_core::SigningKey = field("private key")?.parse()?;
    assert_eq!(private_key.address(), key, "the private key printed is the new key's");
    assert!(stdout.contains("Store this private key now"), "{stdout}");
    assert!(stdout.contains("limit      5 USDC"), "{stdout}");
    let key_text = key.to_string();
    // The session is kept for the next commands (one sign-in for the whole script, within the
    // server's sign-in rate limits), readable by its user only.
    let kept: Vec<_> = std::fs::read_dir(owner.sessions())?.collect::<Result<_, _>>()?;
    assert_eq!(kept.len(), 1, "{kept:?}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(kept[0].metadata()?.permissions().mode() & 0o777, 0o600);

    // The chain listener confirms the registration within a second or so.
    owner.wait_for_status(key, false, "active")?;
    let table = owner.ok(&["keys", "list"])?;
    let row = table.lines().find(|l| l.starts_with(&key_text)).ok_or(format!("no row for {key}:\n{table}"))?;
    assert!(row.contains("active") && row.contains("5 USDC") && row.contains("0%"), "{table}");
    let shown = owner.ok(&["keys", "show", &key_text])?;
    assert!(shown.contains("status       active") && shown.contains("settlements  none yet"), "{shown}");

    // Rule settings: one key's, changed by name, each line saying where its value comes from.
    let line = |out: &str, label: &str| out.lines().find(|l| l.trim_start().starts_with(label)).map(str::to_owned);
    let set = owner.ok(&["rules", "set", "--key", &key_text, "--calls-per-minute", "3", "--rate-mode", "shadow"])?;
    let rate = line(&set, "calls per minute").ok_or(format!("no rate line:\n{set}"))?;
    assert!(rate.contains(" 3 ") && rate.trim_end().ends_with("key"), "{set}");
    assert!(line(&set, "rate mode").is_some_and(|l| l.contains("shadow")), "{set}");
    assert!(line(&set, "spike multiple").is_some_and(|l| l.contains("10") && l.trim_end().ends_with("seed")), "{set}");
    assert!(set.contains("rules.set") && set.contains(r#""after":{"callsPerMinute":3,"rateMode":"shadow"}"#), "{set}");
    let defaults = owner.ok(&["rules", "set", "--spike-multiple", "20"])?;
    assert!(line(&defaults, "spike multiple").is_some_and(|l| l.contains("your defaults")), "{defaults}");
    let shown = owner.ok(&["rules", "show", "--key", &key_text])?;
    assert!(line(&shown, "spike multiple").is_some_and(|l| l.contains("20") && l.contains("your defaults")), "{shown}");
    let kept = owner.ok(&["rules", "set", "--key", &key_text, "--inherit", "calls-per-minute"])?;
    assert!(
        line(&kept, "calls per minute").is_some_and(|l| l.contains("100") && l.trim_end().ends_with("seed")),
        "{kept}"
    );
    assert!(line(&kept, "rate mode").is_some_and(|l| l.contains("shadow")), "the other setting stays: {kept}");
    let refused = owner.run(&["rules", "set", "--key", &key_text, "--calls-per-minute", "0"])?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("field `callsPerMinute`"), "{stderr}");
    let nothing = owner.run(&["rules", "set", "--key", &key_text])?;
    assert!(!nothing.status.success() && String::from_utf8_lossy(&nothing.stderr).contains("name a setting"));
    let json: serde_json::Value = serde_json::from_str(&owner.ok(&["rules", "show", "--key", &key_text, "--json"])?)?;
    assert_eq!(json["key"], serde_json::json!({ "rateMode": "shadow" }), "the refusals changed nothing");
    owner.ok(&["rules", "reset", "--key", &key_text])?;
    owner.ok(&["rules", "reset"])?;
    let json: serde_json::Value = serde_json::from_str(&owner.ok(&["rules", "show", "--key", &key_text, "--json"])?)?;
    assert_eq!(json["effective"], json["seed"], "{json}");
    assert_eq!(json["history"].as_array().map(Vec::len), Some(3), "every change of the key's settings: {json}");

    // Freeze takes effect at once (off-chain first); unfreeze once the chain says so.
    let frozen = owner.ok(&["keys", "freeze", &key_text])?;
    assert!(frozen.starts_with("frozen ") && frozen.contains("(mined)"), "{frozen}");
    owner.wait_for_status(key, false, "frozen")?;
    let unfrozen = owner.ok(&["keys", "unfreeze", &key_text])?;
    assert!(unfrozen.starts_with("unfrozen "), "{unfrozen}");
    owner.wait_for_status(key, false, "active")?;

    // Delete: revoked on-chain, gone from the default list, still there with --all.
    let deleted = owner.ok(&["keys", "delete", &key_text])?;
    assert!(deleted.starts_with("deleted "), "{deleted}");
    assert_eq!(owner.listed(key, false)?, None, "deleted keys leave the default list");
    owner.wait_for_status(key, true, "revoked")?;

    // The tab with this opentab's payee: the demo owner's 100 USDC, then a deposit of its own
    // (the owner pays the gas), to the payee opentab names.
    let shown = owner.wait_for_tab("balance           100 USDC")?;
    assert!(shown.contains("(this opentab's payee)") && shown.contains("pending withdrawal none"), "{shown}");
    let deposited = owner.ok(&["tab", "deposit", "5"])?;
    assert!(
        deposited.contains("deposited 5 USDC") && deposited.contains("tab on-chain        105 USDC"),
        "{deposited}"
    );
    owner.wait_for_tab("balance           105 USDC")?;

    // Withdrawal: requested, not ready before the grace window, cancelled.
    owner.ok(&["tab", "withdraw", "request", "1"])?;
    owner.wait_for_tab("pending withdrawal 1 USDC, can complete")?;
    let early = owner.run(&["tab", "withdraw", "complete"])?;
    let stderr = String::from_utf8(early.stderr)?;
    assert!(!early.status.success() && stderr.contains("not ready yet"), "{stderr}");
    owner.ok(&["tab", "withdraw", "cancel"])?;
    owner.wait_for_tab("pending withdrawal none")?;

    // A tab with another payee is separate: a deposit there leaves this one as it was.
    let other = owner.ok(&["tab", "--payee", "0x0000000000000000000000000000000000000123", "deposit", "2"])?;
    assert!(other.contains("tab on-chain        2 USDC"), "{other}");
    let shown = owner.wait_for_tab("with 0x0000000000000000000000000000000000000123")?;
    assert!(shown.contains("balance           105 USDC"), "{shown}");

    // The API's refusals reach the user with the field at fault, and a non-zero exit.
    let bad = owner.run(&["keys", "show", "0xnot-an-address"])?;
    let stderr = String::from_utf8(bad.stderr)?;
    assert!(!bad.status.success(), "{stderr}");
    assert!(stderr.contains("not a 0x-prefixed 20-byte address") && stderr.contains("field `key`"), "{stderr}");

    // Nobody listening: said plainly.
    let away = owner.run_at("http://127.0.0.1:1", &["keys", "list"])?;
    let stderr = String::from_utf8(away.stderr)?;
    assert!(!away.status.success(), "{stderr}");
    assert!(stderr.contains("cannot reach opentab at http://127.0.0.1:1"), "{stderr}");
    assert!(stderr.contains("is `opentab dev` running?"), "{stderr}");

    // Issue 10, finding 4: with no --url or OPENTAB_URL, the data dir's demo.json says where
    // `opentab dev` listens (here a random port, not the default 8402).
    let out = Command::new(env!("CARGO_BIN_EXE_opentab"))
        .args(["keys", "list", "--json", "--all", "--data-dir", &owner.data_dir])
        .env_remove("OPENTAB_URL")
        .env_remove("OPENTAB_OWNER_KEY")
        .env("OPENTAB_SESSION_DIR", owner.sessions())
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8(out.stdout)?.contains(&key_text.to_lowercase()),
        "the keys of the dev found through demo.json"
    );

    // A key with traffic gets a rate suggested from its busiest minute (last: its payments move
    // the tab the checks above read).
    let demo_json = std::path::Path::new(&owner.data_dir).join("demo.json");
    let demo: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&demo_json)?)?;
    let demo_key = demo["sessionKey"]["address"].as_str().ok_or("no demo key")?.to_owned();
    let paid = Command::new(env!("CARGO_BIN_EXE_opentab"))
        .args(["pay", "--demo", &demo_json.to_string_lossy(), "--count", "3"])
        .output()?;
    assert!(paid.status.success(), "{}", String::from_utf8_lossy(&paid.stderr));
    let shown = owner.ok(&["rules", "show", "--key", &demo_key])?;
    assert!(
        shown.contains("suggested  calls per minute 20 (its busiest minute in the last 24 hours: 3 calls)"),
        "{shown}"
    );

    assert!(dev.stop("INT")?.success(), "Ctrl-C is a clean exit");
    Ok(())
}

/// `keys create --count N`: N keys in batches of 250, one signature and one relayed
/// transaction a batch, every private key printed once.
#[test]
fn an_owner_creates_many_keys_at_once_in_batches_of_250() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().to_string_lossy().into_owned();
    let dev = Running::start(&["dev", "--port", "0", "--anvil-port", "0", "--data-dir", &data_dir], &[], "ready")?;
    let owner = Owner { url: dev.field("url").ok_or("no url printed")?, data_dir };

    // 251 keys: a batch of 250, then one of 1, with progress on stderr and all keys as JSON.
    let out = owner.run(&["keys", "create", "--limit", "1", "--expires-in", "1h", "--count", "251", "--json"])?;
    let (stdout, stderr) = (String::from_utf8(out.stdout)?, String::from_utf8(out.stderr)?);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("batch 1/2: creating keys 1 to 250 of 251"), "{stderr}");
    assert!(stderr.contains("batch 2/2: creating keys 251 to 251 of 251"), "{stderr}");
    assert!(stderr.contains("250 keys registered in one transaction"), "{stderr}");
    let created: Vec<serde_json::Value> = serde_json::from_str(&stdout)?;
    assert_eq!(created.len(), 251);
    let mut addresses = std::collections::HashSet::new();
    for c in &created {
        let key: Address = c["sessionKey"].as_str().ok_or("sessionKey")?.parse()?;
        let private_key: opentab_core::SigningKey = c["privateKey"].as_str().ok_or("privateKey")?.parse()?;
        assert_eq!(private_key.address(), key, "each private key printed is its key's");
        assert_eq!(c["key"]["limit"], "1000000");
        assert_eq!(c["txStatus"], "mined");
        addresses.insert(key);
    }
    assert_eq!(addresses.len(), 251, "every key is new");
    assert_eq!(created[0]["txHash"], created[249]["txHash"], "the first 250 share one transaction");
    assert_ne!(created[249]["txHash"], created[250]["txHash"], "the 251st has its own");
    let last: Address = created[250]["sessionKey"].as_str().ok_or("sessionKey")?.parse()?;
    owner.wait_for_status(last, false, "active")?;
    let listed: Vec<serde_json::Value> = serde_json::from_str(&owner.ok(&["keys", "list", "--json"])?)?;
    let ours: Vec<&serde_json::Value> = listed
        .iter()
        .filter(|k| {
            k["address"].as_str().and_then(|a| a.parse::<Address>().ok()).is_some_and(|a| addresses.contains(&a))
        })
        .collect();
    assert_eq!(ours.len(), 251, "every key is listed (beside dev's demo key)");
    assert!(ours.iter().all(|k| k["status"] == "active"), "the listener saw both transactions");

    // Without --json: a table of keys and private keys, and the warning once.
    let text = owner.ok(&["keys", "create", "--limit", "2", "--expires-in", "1h", "--count", "2"])?;
    assert!(text.contains("created 2 session keys, each:") && text.contains("limit      2 USDC"), "{text}");
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("0x")).collect();
    assert_eq!(rows.len(), 2, "{text}");
    for row in rows {
        let cells: Vec<&str> = row.split_whitespace().collect();
        let (key, private_key) = (cells[0].parse::<Address>()?, cells[1].parse::<opentab_core::SigningKey>()?);
        assert_eq!(private_key.address(), key, "{row}");
    }
    assert_eq!(text.matches("Store these private keys now").count(), 1, "{text}");

    // Refusals before anything is sent: no key, and why.
    let bad = owner.run(&["keys", "create", "--limit", "1", "--valid-until", "1", "--count", "3"])?;
    let stderr = String::from_utf8(bad.stderr)?;
    assert!(!bad.status.success(), "{stderr}");
    assert!(stderr.contains("field `keys[0].validUntil`") && stderr.contains("in the future"), "{stderr}");
    assert!(dev.stop("INT")?.success(), "Ctrl-C is a clean exit");
    Ok(())
}

#[test]
fn keys_create_needs_an_expiry_and_a_sensible_limit() -> TestResult {
    let run = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_opentab")).args(args).output();
    let out = run(&["keys", "create", "--limit", "5"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr)?.contains("--expires-in"));
    let out = run(&["keys", "create", "--limit", "lots", "--expires-in", "1h"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr)?.contains("invalid USDC amount"));
    let out = run(&["keys", "create", "--limit", "5", "--expires-in", "10"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr)?.contains("needs a unit"));
    let out = run(&["keys", "create", "--limit", "5", "--expires-in", "1h", "--count", "0"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr)?.contains("--count"));
    // One address cannot be registered twice: --session-key makes one key.
    let key = "0x0000000000000000000000000000000000000123";
    let out = run(&["keys", "create", "--limit", "5", "--expires-in", "1h", "--count", "2", "--session-key", key])?;
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr)?.contains("cannot be used with"));
    Ok(())
}
