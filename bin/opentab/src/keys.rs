//! `opentab keys create|list|show|freeze|unfreeze|delete`: the owner's session keys through
//! opentab's REST API. Each run signs in with the owner's key; create, freeze, unfreeze and
//! delete sign the EIP-712 message opentab hands out (after checking it says what was asked)
//! and opentab relays it on-chain, paying the gas. `keys create --count N` creates N keys in
//! batches of up to 250, one signature and one relayed transaction a batch.

use std::io::Write;

use anyhow::Context;
use clap::{Args, Subcommand};
use opentab_core::eip712::{
    self, FreezeSessionKey, RegisterSessionKey, RegisterSessionKeys, RevokeSessionKey, UnfreezeSessionKey,
};
use opentab_core::{Address, B256, ContractDomain, SigningKey, U256, Usdc};
use opentab_service::api::{BatchRegistrationMessage, MAX_BATCH_KEYS, RegistrationMessage};
use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::client::{Api, Problem, path_segment};
use crate::output::{now, parse_duration, parse_usdc, relative, table, usdc, utc, when};
use crate::owner::OwnerArgs;

/// `opentab keys …`
#[derive(Debug, Args)]
pub(crate) struct KeysArgs {
    #[command(flatten)]
    owner: OwnerArgs,
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a session key (or --count N of them); opentab relays your signed registration and
    /// pays the gas.
    Create(CreateArgs),
    /// List your session keys (deleted ones with --all).
    List {
        /// Include deleted (revoked) keys.
        #[arg(long)]
        all: bool,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one key: terms, status, usage and settlements.
    Show {
        /// The key's address.
        key: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Freeze a key: the gateway stops serving it at once.
    Freeze {
        /// The key's address.
        key: String,
    },
    /// Lift a freeze.
    Unfreeze {
        /// The key's address.
        key: String,
    },
    /// Revoke a key for good (on-chain) and hide it from `keys list`.
    Delete {
        /// The key's address.
        key: String,
    },
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// Spend limit in USDC (`25`, `0.5`).
    #[arg(long, value_name = "USDC", value_parser = parse_usdc)]
    limit: Usdc,
    /// How long the key lasts: `30m`, `24h`, `7d`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, required_unless_present = "valid_until")]
    expires_in: Option<u64>,
    /// Expiry as unix seconds (instead of --expires-in).
    #[arg(long, value_name = "UNIX", conflicts_with = "expires_in")]
    valid_until: Option<u64>,
    /// Usable from (unix seconds; default: now).
    #[arg(long, value_name = "UNIX")]
    valid_after: Option<u64>,
    /// Register this address (your agent made the key pair) instead of having opentab generate one.
    #[arg(long, value_name = "ADDRESS", conflicts_with = "count")]
    session_key: Option<Address>,
    /// How many keys to create, each with these terms and a key pair of its own. More than one
    /// are created in batches of up to 250: one signature and one relayed transaction a batch.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    count: u32,
    /// Print the result as JSON (`sessionKey`, `privateKey`, `txHash`, `txStatus`, `key`; with
    /// --count above 1, an array of them).
    #[arg(long)]
    json: bool,
}

/// A key as the API shows it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyView {
    address: Address,
    owner: Address,
    payee: Address,
    status: String,
    limit: Usdc,
    valid_after: u64,
    valid_until: u64,
    frozen_at: Option<u64>,
    revoked_at: Option<u64>,
    deleted_at: Option<u64>,
    usage: Usage,
    created_at: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Usage {
    served: Usdc,
    settled: Usdc,
    pending: Usdc,
    remaining: Usdc,
    percent_used: f64,
}

#[derive(Debug, Deserialize)]
struct KeyDetail {
    #[serde(flatten)]
    key: KeyView,
    settlements: Vec<Settlement>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Settlement {
    amount: Usdc,
    cumulative: Usdc,
    tx_hash: B256,
    block_number: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct PrepareRequest {
    limit: Usdc,
    valid_until: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    valid_after: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_key: Option<Address>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Prepared {
    session_key: Address,
    private_key: Option<B256>,
    typed_data: TypedData,
}

#[derive(Debug, Serialize)]
struct PrepareBatchRequest {
    keys: Vec<PrepareRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PreparedBatch {
    keys: Vec<PreparedBatchKey>,
    typed_data: TypedData,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PreparedBatchKey {
    session_key: Address,
    private_key: Option<B256>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RelayedBatch {
    keys: Vec<KeyView>,
    tx_hash: Option<B256>,
    tx_status: String,
}

/// One key made by `keys create`, as `--json` prints it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Created {
    session_key: Address,
    #[serde(skip_serializing_if = "Option::is_none")]
    private_key: Option<B256>,
    #[serde(flatten)]
    relayed: Relayed,
}

/// EIP-712 typed data as the API hands it out; `message` is kept as given, to send it back.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypedData {
    primary_type: String,
    domain: Domain,
    message: serde_json::Value,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Domain {
    name: String,
    version: String,
    chain_id: u64,
    verifying_contract: Address,
}

impl Domain {
    fn contract(&self) -> ContractDomain {
        ContractDomain::new(self.name.clone(), self.version.clone(), self.chain_id, self.verifying_contract)
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ActionMessage {
    session_key: Address,
    nonce: String,
    deadline: u64,
}

#[derive(Debug, Serialize)]
struct CreateRequest<'a> {
    message: &'a serde_json::Value,
    signature: String,
}

#[derive(Debug, Serialize)]
struct SignedAction {
    nonce: String,
    deadline: u64,
    signature: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Relayed {
    key: KeyView,
    tx_hash: Option<B256>,
    tx_status: String,
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Freeze,
    Unfreeze,
    Delete,
}

pub(crate) async fn run(args: KeysArgs) -> anyhow::Result<()> {
    let owner = args.owner.owner()?;
    let api = Api::sign_in(&args.owner.url(), &owner).await?;
    match args.command {
        KeysCommand::Create(create_args) => create(&api, &owner, create_args).await,
        KeysCommand::List { all, json } => list(&api, all, json).await,
        KeysCommand::Show { key, json } => show(&api, &key, json).await,
        KeysCommand::Freeze { key } => act(&api, &owner, &key, Action::Freeze).await,
        KeysCommand::Unfreeze { key } => act(&api, &owner, &key, Action::Unfreeze).await,
        KeysCommand::Delete { key } => act(&api, &owner, &key, Action::Delete).await,
    }
}

async fn create(api: &Api, owner: &SigningKey, args: CreateArgs) -> anyhow::Result<()> {
    let now = now();
    let valid_until = match (args.valid_until, args.expires_in) {
        (Some(at), _) => at,
        (None, Some(secs)) => now.checked_add(secs).context("--expires-in is too long")?,
        (None, None) => anyhow::bail!("give --expires-in or --valid-until"),
    };
    let request =
        PrepareRequest { limit: args.limit, valid_until, valid_after: args.valid_after, session_key: args.session_key };
    if args.count > 1 {
        return create_many(api, owner, &request, args.count, args.json).await;
    }
    let prepared: Prepared = api
        .call(Method::POST, "/api/session-keys/prepare", Some(&request))
        .await
        .context("preparing the session key")?;

    // Sign only what was asked for: opentab chooses the payee and the nonce, nothing else.
    let typed = &prepared.typed_data;
    anyhow::ensure!(
        typed.primary_type == "RegisterSessionKey",
        "opentab asked to sign a {} instead of a RegisterSessionKey; not signing",
        typed.primary_type
    );
    let m: RegistrationMessage =
        serde_json::from_value(typed.message.clone()).context("reading the registration message to sign")?;
    let asked_key = args.session_key.unwrap_or(prepared.session_key);
    let checks = [
        (m.owner == api.owner, "owner"),
        (m.session_key == asked_key && m.session_key == prepared.session_key, "sessionKey"),
        (m.limit == args.limit, "limit"),
        (m.valid_until == valid_until, "validUntil"),
        (args.valid_after.is_none_or(|at| at == m.valid_after), "validAfter"),
    ];
    if let Some((_, field)) = checks.iter().find(|(ok, _)| !ok) {
        anyhow::bail!("the registration opentab asked to sign has a different {field} than requested; not signing");
    }
    if let Some(private_key) = &prepared.private_key {
        let generated = SigningKey::from_bytes(private_key).context("the generated private key is invalid")?;
        anyhow::ensure!(generated.address() == m.session_key, "the generated private key is not the session key's");
    }
    let message = RegisterSessionKey {
        owner: m.owner,
        sessionKey: m.session_key,
        payee: m.payee,
        limit: u128::from(m.limit.base_units()),
        validAfter: m.valid_after.try_into().context("validAfter does not fit 48 bits")?,
        validUntil: m.valid_until.try_into().context("validUntil does not fit 48 bits")?,
        nonce: decimal_u256(&m.nonce, "nonce")?,
        deadline: U256::from(m.deadline),
    };
    let signature = owner.sign_digest(&typed.domain.contract().digest(&message)).to_string();
    let created: Relayed = api
        .call(Method::POST, "/api/session-keys", Some(&CreateRequest { message: &typed.message, signature }))
        .await
        .context("registering the session key")?;

    let mut out = std::io::stdout().lock();
    if args.json {
        let json = Created { session_key: m.session_key, private_key: prepared.private_key, relayed: created };
        writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
        return Ok(());
    }
    let key = &created.key;
    writeln!(out, "session key  {}", m.session_key)?;
    writeln!(out, "  status     {}{}", key.status, status_note(&key.status))?;
    writeln!(out, "  limit      {}", usdc(key.limit))?;
    writeln!(out, "  valid      {} to {}", utc(key.valid_after), when(key.valid_until, now))?;
    writeln!(out, "  payee      {}", key.payee)?;
    write_tx(&mut out, created.tx_hash, &created.tx_status)?;
    if let Some(private_key) = prepared.private_key {
        writeln!(out)?;
        writeln!(out, "private key  {private_key}")?;
        writeln!(out, "  Store this private key now, somewhere safe: opentab does not keep it and will not show it")?;
        writeln!(
            out,
            "  again. Whoever holds it can spend up to {} until the key expires or you freeze or",
            usdc(key.limit)
        )?;
        writeln!(out, "  delete it. Give it to your agent (e.g. as OPENTAB_SESSION_KEY), never to anyone else.")?;
    }
    Ok(())
}

/// `keys create --count N`: N keys in batches of up to [`MAX_BATCH_KEYS`], with progress on
/// stderr. A batch is all or nothing; should one fail, the keys of the batches before it exist,
/// and are printed (private keys included) before the error.
async fn create_many(
    api: &Api,
    owner: &SigningKey,
    request: &PrepareRequest,
    count: u32,
    json: bool,
) -> anyhow::Result<()> {
    let total = usize::try_from(count).context("--count is too large")?;
    let batches = total.div_ceil(MAX_BATCH_KEYS);
    let mut created = Vec::with_capacity(total);
    let mut failure = None;
    for (i, start) in (0..total).step_by(MAX_BATCH_KEYS).enumerate() {
        let n = MAX_BATCH_KEYS.min(total - start);
        eprintln!("batch {}/{batches}: creating keys {} to {} of {total}…", i + 1, start + 1, start + n);
        match create_batch_patiently(api, owner, request, n).await {
            Ok(batch) => {
                if let Some(first) = batch.first() {
                    let tx = first.relayed.tx_hash.map_or_else(|| "not mined yet".to_owned(), |tx| tx.to_string());
                    eprintln!("  {n} keys registered in one transaction: {tx} ({})", first.relayed.tx_status);
                }
                created.extend(batch);
            }
            Err(err) => {
                failure = Some(err);
                break;
            }
        }
    }
    print_many(&created, json)?;
    match failure {
        None => Ok(()),
        Some(err) if created.is_empty() => Err(err),
        Some(err) => Err(err.context(format!(
            "{} of the {total} keys were created (printed above, with their private keys); the rest were not",
            created.len()
        ))),
    }
}

/// [`create_batch`], waiting out rate limits (`Retry-After`, up to a minute at a time, five
/// times): a refused batch stored and sent nothing, so it is prepared again afresh.
async fn create_batch_patiently(
    api: &Api,
    owner: &SigningKey,
    request: &PrepareRequest,
    n: usize,
) -> anyhow::Result<Vec<Created>> {
    let mut waits = 0;
    loop {
        match create_batch(api, owner, request, n).await {
            Err(err) if waits < 5 => {
                let wait = err
                    .downcast_ref::<Problem>()
                    .filter(|p| p.code == "rate_limited")
                    .and_then(|p| p.retry_after)
                    .filter(|&secs| secs <= 60);
                let Some(secs) = wait else { return Err(err) };
                eprintln!("  opentab asks to slow down: waiting {secs} s…");
                tokio::time::sleep(std::time::Duration::from_secs(secs.max(1))).await;
                waits += 1;
            }
            other => return other,
        }
    }
}

/// One batch of `n` generated keys with `request`'s terms: prepared, checked, signed, relayed.
async fn create_batch(
    api: &Api,
    owner: &SigningKey,
    request: &PrepareRequest,
    n: usize,
) -> anyhow::Result<Vec<Created>> {
    let body = PrepareBatchRequest { keys: vec![request.clone(); n] };
    let prepared: PreparedBatch = api
        .call(Method::POST, "/api/session-keys/batch/prepare", Some(&body))
        .await
        .context("preparing a batch of session keys")?;

    // Sign only what was asked for: opentab chooses the payee and the nonce, nothing else.
    let typed = &prepared.typed_data;
    anyhow::ensure!(
        typed.primary_type == "RegisterSessionKeys",
        "opentab asked to sign a {} instead of a RegisterSessionKeys; not signing",
        typed.primary_type
    );
    let m: BatchRegistrationMessage =
        serde_json::from_value(typed.message.clone()).context("reading the batch registration message to sign")?;
    anyhow::ensure!(m.owner == api.owner, "the batch opentab asked to sign names another owner; not signing");
    anyhow::ensure!(
        m.keys.len() == n && prepared.keys.len() == n,
        "opentab asked to sign a batch of {} keys, not the {n} asked for; not signing",
        m.keys.len()
    );
    for (i, (k, p)) in m.keys.iter().zip(&prepared.keys).enumerate() {
        let checks = [
            (k.session_key == p.session_key, "sessionKey"),
            (k.limit == request.limit, "limit"),
            (k.valid_until == request.valid_until, "validUntil"),
            (request.valid_after.is_none_or(|at| at == k.valid_after), "validAfter"),
        ];
        if let Some((_, field)) = checks.iter().find(|(ok, _)| !ok) {
            anyhow::bail!(
                "key {} of the batch opentab asked to sign has a different {field} than requested; not signing",
                i + 1
            );
        }
        let private_key = p.private_key.as_ref().context("opentab generated a key without its private key")?;
        let generated = SigningKey::from_bytes(private_key).context("a generated private key is invalid")?;
        anyhow::ensure!(generated.address() == k.session_key, "a generated private key is not its session key's");
    }
    let keys = m
        .keys
        .iter()
        .map(|k| {
            Ok(eip712::KeyTerms {
                sessionKey: k.session_key,
                payee: k.payee,
                limit: u128::from(k.limit.base_units()),
                validAfter: k.valid_after.try_into().context("validAfter does not fit 48 bits")?,
                validUntil: k.valid_until.try_into().context("validUntil does not fit 48 bits")?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let message = RegisterSessionKeys {
        owner: m.owner,
        keys,
        nonce: decimal_u256(&m.nonce, "nonce")?,
        deadline: U256::from(m.deadline),
    };
    let signature = owner.sign_digest(&typed.domain.contract().digest(&message)).to_string();
    let relayed: RelayedBatch = api
        .call(Method::POST, "/api/session-keys/batch", Some(&CreateRequest { message: &typed.message, signature }))
        .await
        .context("registering a batch of session keys")?;
    anyhow::ensure!(relayed.keys.len() == n, "opentab answered for {} keys, not {n}", relayed.keys.len());
    Ok(relayed
        .keys
        .into_iter()
        .zip(prepared.keys)
        .map(|(key, p)| Created {
            session_key: p.session_key,
            private_key: p.private_key,
            relayed: Relayed { key, tx_hash: relayed.tx_hash, tx_status: relayed.tx_status.clone() },
        })
        .collect())
}

/// The keys `keys create --count N` made: a table with their private keys, or a JSON array.
fn print_many(created: &[Created], json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(created)?)?;
        return Ok(());
    }
    let Some(first) = created.first() else { return Ok(()) };
    let key = &first.relayed.key;
    writeln!(out, "created {} session keys, each:", created.len())?;
    writeln!(out, "  limit      {}", usdc(key.limit))?;
    writeln!(out, "  valid      {} to {}", utc(key.valid_after), when(key.valid_until, now()))?;
    writeln!(out, "  payee      {}", key.payee)?;
    writeln!(out)?;
    let mut rows = vec![["SESSION KEY", "PRIVATE KEY", "STATUS", "TX"].map(str::to_owned).to_vec()];
    for c in created {
        rows.push(vec![
            c.session_key.to_string(),
            c.private_key.map(|k| k.to_string()).unwrap_or_default(),
            c.relayed.key.status.clone(),
            c.relayed.tx_hash.map_or_else(|| c.relayed.tx_status.clone(), |tx| tx.to_string()),
        ]);
    }
    table(&mut out, &rows)?;
    writeln!(out)?;
    writeln!(out, "Store these private keys now, somewhere safe: opentab does not keep them and will not show")?;
    writeln!(
        out,
        "them again. Whoever holds one can spend up to {} until its key expires or you freeze or",
        usdc(key.limit)
    )?;
    writeln!(out, "delete it. Give each to its agent (e.g. as OPENTAB_SESSION_KEY), never to anyone else.")?;
    if created.iter().any(|c| c.relayed.key.status == "pending") {
        writeln!(out, "(pending keys are active once opentab sees their registration on-chain, within seconds)")?;
    }
    Ok(())
}

async fn list(api: &Api, all: bool, json: bool) -> anyhow::Result<()> {
    let path = if all { "/api/session-keys?includeDeleted=true" } else { "/api/session-keys" };
    let text = api.call_text(Method::GET, path, None::<&()>).await.context("listing the session keys")?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", text.trim_end())?;
        return Ok(());
    }
    let keys: Vec<KeyView> =
        serde_json::from_str(&text).with_context(|| format!("unexpected answer to GET {path}: {text}"))?;
    if keys.is_empty() {
        let hint = if all { "" } else { " (deleted keys: --all)" };
        writeln!(out, "no session keys{hint}; create one with `opentab keys create --limit 25 --expires-in 7d`")?;
        return Ok(());
    }
    let now = now();
    let mut rows = vec![["ADDRESS", "STATUS", "LIMIT", "USED", "REMAINING", "EXPIRES"].map(str::to_owned).to_vec()];
    for key in &keys {
        rows.push(vec![
            key.address.to_string(),
            key.status.clone(),
            usdc(key.limit),
            format!("{}%", key.usage.percent_used),
            usdc(key.usage.remaining),
            format!("{} ({})", utc(key.valid_until), relative(key.valid_until, now)),
        ]);
    }
    table(&mut out, &rows)?;
    Ok(())
}

async fn show(api: &Api, key: &str, json: bool) -> anyhow::Result<()> {
    let path = format!("/api/session-keys/{}", path_segment(key));
    let text =
        api.call_text(Method::GET, &path, None::<&()>).await.with_context(|| format!("showing session key {key}"))?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", text.trim_end())?;
        return Ok(());
    }
    let detail: KeyDetail =
        serde_json::from_str(&text).with_context(|| format!("unexpected answer to GET {path}: {text}"))?;
    let (k, now) = (&detail.key, now());
    let u = &k.usage;
    writeln!(out, "session key  {}", k.address)?;
    writeln!(out, "  status       {}{}", k.status, status_note(&k.status))?;
    writeln!(out, "  owner        {}", k.owner)?;
    writeln!(out, "  payee        {}", k.payee)?;
    writeln!(out, "  limit        {}", usdc(k.limit))?;
    writeln!(out, "  used         {} ({}%), {} remaining", usdc(u.served), u.percent_used, usdc(u.remaining))?;
    writeln!(out, "  settled      {} ({} not settled yet)", usdc(u.settled), usdc(u.pending))?;
    writeln!(out, "  valid from   {}", when(k.valid_after, now))?;
    writeln!(out, "  valid until  {}", when(k.valid_until, now))?;
    for (label, at) in [("frozen at", k.frozen_at), ("revoked at", k.revoked_at), ("deleted at", k.deleted_at)] {
        if let Some(at) = at {
            writeln!(out, "  {label:<11}  {}", when(at, now))?;
        }
    }
    writeln!(out, "  created      {}", when(k.created_at, now))?;
    if detail.settlements.is_empty() {
        writeln!(out, "settlements  none yet")?;
        return Ok(());
    }
    writeln!(out, "settlements  {}", detail.settlements.len())?;
    let mut rows = vec![["  BLOCK", "AMOUNT", "CUMULATIVE", "TX"].map(str::to_owned).to_vec()];
    for s in &detail.settlements {
        rows.push(vec![format!("  {}", s.block_number), usdc(s.amount), usdc(s.cumulative), s.tx_hash.to_string()]);
    }
    table(&mut out, &rows)?;
    Ok(())
}

async fn act(api: &Api, owner: &SigningKey, key: &str, action: Action) -> anyhow::Result<()> {
    let (name, doing, primary_type, done) = match action {
        Action::Freeze => ("freeze", "freezing", "FreezeSessionKey", "frozen"),
        Action::Unfreeze => ("unfreeze", "unfreezing", "UnfreezeSessionKey", "unfrozen"),
        Action::Delete => ("delete", "deleting", "RevokeSessionKey", "deleted"),
    };
    let segment = path_segment(key);
    let typed: TypedData = api
        .call(Method::GET, &format!("/api/session-keys/{segment}/{name}"), None::<&()>)
        .await
        .with_context(|| format!("preparing to {name} session key {key}"))?;
    anyhow::ensure!(
        typed.primary_type == primary_type,
        "opentab asked to sign a {} to {name} a key; not signing",
        typed.primary_type
    );
    let m: ActionMessage = serde_json::from_value(typed.message.clone()).context("reading the message to sign")?;
    if let Ok(asked) = key.parse::<Address>() {
        anyhow::ensure!(
            m.session_key == asked,
            "opentab asked to sign for key {}, not {asked}; not signing",
            m.session_key
        );
    }
    let (nonce, deadline) = (decimal_u256(&m.nonce, "nonce")?, U256::from(m.deadline));
    let domain = typed.domain.contract();
    let digest = match action {
        Action::Freeze => domain.digest(&FreezeSessionKey { sessionKey: m.session_key, nonce, deadline }),
        Action::Unfreeze => domain.digest(&UnfreezeSessionKey { sessionKey: m.session_key, nonce, deadline }),
        Action::Delete => domain.digest(&RevokeSessionKey { sessionKey: m.session_key, nonce, deadline }),
    };
    let body = SignedAction { nonce: m.nonce, deadline: m.deadline, signature: owner.sign_digest(&digest).to_string() };
    let (method, path) = match action {
        Action::Delete => (Method::DELETE, format!("/api/session-keys/{segment}")),
        _ => (Method::POST, format!("/api/session-keys/{segment}/{name}")),
    };
    let mut relayed: Relayed =
        api.call(method, &path, Some(&body)).await.with_context(|| format!("{doing} session key {key}"))?;
    if matches!(action, Action::Unfreeze) && relayed.tx_hash.is_some() {
        relayed.key.status = wait_for_unfrozen(api, &segment, relayed.key.status).await?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{done} {}", relayed.key.address)?;
    writeln!(out, "  status     {}", relayed.key.status)?;
    write_tx(&mut out, relayed.tx_hash, &relayed.tx_status)?;
    if let Action::Delete = action {
        writeln!(out, "  revoked on-chain for good; `opentab keys list --all` still shows it")?;
    }
    Ok(())
}

/// A freeze stops the gateway at once, but an unfreeze counts only once the chain listener
/// has confirmed it (the safe direction), so a script that pays right after `keys unfreeze`
/// would be refused. Wait until the key no longer reads `frozen`.
async fn wait_for_unfrozen(api: &Api, segment: &str, mut status: String) -> anyhow::Result<String> {
    const WAIT: std::time::Duration = std::time::Duration::from_secs(60);
    let started = std::time::Instant::now();
    let path = format!("/api/session-keys/{segment}");
    let mut said = false;
    while status == "frozen" {
        if started.elapsed() > WAIT {
            eprintln!("the unfreeze is mined but not confirmed yet; `opentab keys show` tells when it is");
            break;
        }
        if !said {
            eprintln!("mined; waiting for opentab to confirm the unfreeze on-chain…");
            said = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let detail: KeyDetail = api.call(Method::GET, &path, None::<&()>).await.context("reading the key back")?;
        status = detail.key.status;
    }
    Ok(status)
}

fn write_tx(out: &mut impl Write, tx_hash: Option<B256>, status: &str) -> std::io::Result<()> {
    match tx_hash {
        Some(tx) => writeln!(out, "  tx         {tx} ({status})"),
        None if status == "not_needed" => {
            writeln!(out, "  tx         none needed: the key was frozen at the gateway only, not on-chain")
        }
        None => writeln!(out, "  tx         {status}: not mined yet; `opentab keys list` shows when it is"),
    }
}

fn status_note(status: &str) -> &'static str {
    match status {
        "pending" => " (active once opentab sees the registration on-chain, within seconds)",
        _ => "",
    }
}

fn decimal_u256(text: &str, field: &str) -> anyhow::Result<U256> {
    U256::from_str_radix(text, 10).with_context(|| format!("{field} {text:?} is not a decimal integer"))
}
