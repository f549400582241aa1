//! The API's on-chain actions against a real anvil: an owner signs in, creates a key (relayed
//! registration), freezes, unfreezes and deletes it; the chain listener brings the events back.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use opentab_chain::{Anvil, AnvilConfig, Validator, deploy_dev_contracts, signing_provider};
use opentab_core::eip712::{
    FreezeSessionKey, KeyTerms, RegisterSessionKey, RegisterSessionKeys, RevokeSessionKey, UnfreezeSessionKey,
};
use opentab_core::siwe::SiweMessage;
use opentab_core::{Address, ContractDomain, SigningKey, U256, Usdc};
use opentab_service::api::{ApiConfig, AppState, ChainAccess, router};
use opentab_service::{ChainListener, ListenerConfig};
use serde_json::{Value, json};
use tower::ServiceExt;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

struct World {
    app: Router,
    rpc: String,
    relayer: Validator,
    listener: ChainListener,
    domain: ContractDomain,
    payee: Address,
    anvil: Anvil,
    _dir: tempfile::TempDir,
}

async fn world() -> TestResult<World> {
    world_with(|_| {}).await
}

async fn world_with(configure: impl FnOnce(&mut ApiConfig)) -> TestResult<World> {
    let anvil = Anvil::spawn(AnvilConfig::default())?;
    let rpc = anvil.endpoint();
    let provider = signing_provider(&rpc, anvil.signer(0)?)?;
    let deployment = deploy_dev_contracts(&provider, &rpc, 86_400).await?;
    let relayer = Validator::connect(provider.clone(), deployment.validator).await?;
    let dir = tempfile::tempdir()?;
    let store = opentab_store::testing::fresh_sqlite(dir.path()).await?;
    let payee = anvil.signer(2)?.address();
    let mut config = ApiConfig::new("localhost:8402", anvil.chain_id(), deployment.validator);
    // The owners here hold no USDC; the funded-tab rule has its own test.
    config.relay_min_tab = Usdc::ZERO;
    configure(&mut config);
    let domain = relayer.domain().clone();
    let state = AppState::new(store.clone(), config).with_chain(ChainAccess { relayer: relayer.clone(), payee });
    let listener_config = ListenerConfig {
        stream: opentab_chain::StreamConfig { confirmations: 0, max_range: 100 },
        ..Default::default()
    };
    let listener = ChainListener::new(
        store,
        provider.provider().clone(),
        deployment.validator,
        deployment.deployed_at_block,
        listener_config,
    )
    .await?
    .with_notifier(state.notifier().clone());
    Ok(World { app: router(state), rpc, relayer, listener, domain, payee, anvil, _dir: dir })
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

impl World {
    async fn call(&self, method: &str, uri: &str, token: &str, body: Option<Value>) -> TestResult<(StatusCode, Value)> {
        let req = Request::builder().method(method).uri(uri).header(header::AUTHORIZATION, format!("Bearer {token}"));
        let req = match body {
            Some(body) => req.header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_string()))?,
            None => req.body(Body::empty())?,
        };
        let res = self.app.clone().oneshot(req).await?;
        let status = res.status();
        let bytes = res.into_body().collect().await?.to_bytes();
        Ok((status, if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes)? }))
    }

    /// Opens the owner's event stream and returns its body.
    async fn events(&self, token: &str) -> TestResult<Body> {
        let req = Request::builder()
            .uri("/api/session-keys/events")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())?;
        let res = self.app.clone().oneshot(req).await?;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()), Some("text/event-stream"));
        Ok(res.into_body())
    }

    /// Creates a key for `owner` with a server-generated key pair; returns its address.
    async fn create_key(&self, owner: &SigningKey, token: &str) -> TestResult<Address> {
        let (key, status, body) = self.try_create_key(owner, token).await?;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        Ok(key)
    }

    /// Prepares, signs and asks to create a key; returns its address and the answer.
    async fn try_create_key(&self, owner: &SigningKey, token: &str) -> TestResult<(Address, StatusCode, Value)> {
        let body = json!({ "limit": "5000000", "validUntil": now() + 3600 });
        let (_, prepared) = self.call("POST", "/api/session-keys/prepare", token, Some(body)).await?;
        let message = &prepared["typedData"]["message"];
        let signature = owner.sign_digest(&self.domain.digest(&registration(message)?)).to_string();
        let (status, body) = self
            .call("POST", "/api/session-keys", token, Some(json!({ "message": message, "signature": signature })))
            .await?;
        Ok((prepared["sessionKey"].as_str().ok_or("sessionKey")?.parse()?, status, body))
    }

    /// Asks for `action` on `key`, signed by `owner`; returns the answer.
    async fn act(
        &self,
        owner: &SigningKey,
        token: &str,
        key: Address,
        action: &str,
    ) -> TestResult<(StatusCode, Value)> {
        let uri = format!("/api/session-keys/{key:#x}");
        let (_, typed) = self.call("GET", &format!("{uri}/{action}"), token, None).await?;
        let signed = self.sign_action(owner, &typed)?;
        match action {
            "delete" => self.call("DELETE", &uri, token, Some(signed)).await,
            _ => self.call("POST", &format!("{uri}/{action}"), token, Some(signed)).await,
        }
    }

    async fn sign_in(&self, owner: &SigningKey) -> TestResult<String> {
        let (_, nonce) = self.call("GET", "/api/auth/nonce", "", None).await?;
        let nonce = nonce["nonce"].as_str().ok_or("nonce")?;
        let text = SiweMessage::compose(
            "localhost:8402",
            "http://localhost:8402",
            owner.address(),
            31337,
            nonce,
            now(),
            now() + 60,
        );
        let signature = owner.sign_digest(&opentab_core::eip191_hash_message(&text)).to_string();
        let (status, body) =
            self.call("POST", "/api/auth/login", "", Some(json!({ "message": text, "signature": signature }))).await?;
        assert_eq!(status, StatusCode::OK, "{body}");
        Ok(body["token"].as_str().ok_or("token")?.to_owned())
    }

    /// Signs a key action's typed data the way a wallet would, from the JSON the API gave.
    fn sign_action(&self, owner: &SigningKey, typed: &Value) -> TestResult<Value> {
        let m = &typed["message"];
        let key: Address = m["sessionKey"].as_str().ok_or("sessionKey")?.parse()?;
        let nonce = U256::from_str_radix(m["nonce"].as_str().ok_or("nonce")?, 10)?;
        let deadline = m["deadline"].as_u64().ok_or("deadline")?;
        let d = U256::from(deadline);
        let digest = match typed["primaryType"].as_str() {
            Some("FreezeSessionKey") => self.domain.digest(&FreezeSessionKey { sessionKey: key, nonce, deadline: d }),
            Some("UnfreezeSessionKey") => {
                self.domain.digest(&UnfreezeSessionKey { sessionKey: key, nonce, deadline: d })
            }
            Some("RevokeSessionKey") => self.domain.digest(&RevokeSessionKey { sessionKey: key, nonce, deadline: d }),
            other => return Err(format!("unexpected primary type {other:?}").into()),
        };
        Ok(
            json!({ "nonce": nonce.to_string(), "deadline": deadline, "signature": owner.sign_digest(&digest).to_string() }),
        )
    }
}

fn registration(m: &Value) -> TestResult<RegisterSessionKey> {
    let addr = |f: &str| -> TestResult<Address> { Ok(m[f].as_str().ok_or(f.to_owned())?.parse()?) };
    let num = |f: &str| -> TestResult<u64> { m[f].as_u64().ok_or_else(|| f.to_owned().into()) };
    Ok(RegisterSessionKey {
        owner: addr("owner")?,
        sessionKey: addr("sessionKey")?,
        payee: addr("payee")?,
        limit: m["limit"].as_str().ok_or("limit")?.parse()?,
        validAfter: alloy::primitives::Uint::from(num("validAfter")?),
        validUntil: alloy::primitives::Uint::from(num("validUntil")?),
        nonce: U256::from_str_radix(m["nonce"].as_str().ok_or("nonce")?, 10)?,
        deadline: U256::from(num("deadline")?),
    })
}

/// The `RegisterSessionKeys` a wallet would sign, read from the typed data's JSON message.
fn batch_registration(m: &Value) -> TestResult<RegisterSessionKeys> {
    let mut keys = Vec::new();
    for k in m["keys"].as_array().ok_or("keys")? {
        let addr = |f: &str| -> TestResult<Address> { Ok(k[f].as_str().ok_or(f.to_owned())?.parse()?) };
        let num = |f: &str| -> TestResult<u64> { k[f].as_u64().ok_or_else(|| f.to_owned().into()) };
        keys.push(KeyTerms {
            sessionKey: addr("sessionKey")?,
            payee: addr("payee")?,
            limit: k["limit"].as_str().ok_or("limit")?.parse()?,
            validAfter: alloy::primitives::Uint::from(num("validAfter")?),
            validUntil: alloy::primitives::Uint::from(num("validUntil")?),
        });
    }
    Ok(RegisterSessionKeys {
        owner: m["owner"].as_str().ok_or("owner")?.parse()?,
        keys,
        nonce: U256::from_str_radix(m["nonce"].as_str().ok_or("nonce")?, 10)?,
        deadline: U256::from(m["deadline"].as_u64().ok_or("deadline")?),
    })
}

/// EIP-712 `encodeType` as a wallet builds it from the typed data's `types`: the primary type,
/// then the types it references, sorted by name.
fn encode_type_from_json(typed: &Value) -> TestResult<String> {
    let types = typed["types"].as_object().ok_or("types")?;
    let one = |name: &str| -> TestResult<String> {
        let fields = types[name].as_array().ok_or(format!("type {name}"))?;
        let fields: Vec<String> = fields
            .iter()
            .map(|f| format!("{} {}", f["type"].as_str().unwrap_or_default(), f["name"].as_str().unwrap_or_default()))
            .collect();
        Ok(format!("{name}({})", fields.join(",")))
    };
    let primary = typed["primaryType"].as_str().ok_or("primaryType")?;
    let mut referenced: Vec<&String> = types.keys().filter(|n| *n != primary && *n != "EIP712Domain").collect();
    referenced.sort();
    let mut text = one(primary)?;
    for name in referenced {
        text.push_str(&one(name)?);
    }
    Ok(text)
}

impl World {
    /// Prepares a batch of `asked` keys; the status and the answer.
    async fn prepare_batch(&self, token: &str, asked: Value) -> TestResult<(StatusCode, Value)> {
        self.call("POST", "/api/session-keys/batch/prepare", token, Some(json!({ "keys": asked }))).await
    }

    /// Signs a prepared batch's message as `signer`; the body of `POST /api/session-keys/batch`.
    fn sign_batch(&self, signer: &SigningKey, message: &Value) -> TestResult<Value> {
        let signature = signer.sign_digest(&self.domain.digest(&batch_registration(message)?)).to_string();
        Ok(json!({ "message": message, "signature": signature }))
    }
}

#[tokio::test]
async fn an_owner_creates_many_keys_in_one_relayed_transaction() -> TestResult {
    // A quota of one relayed transaction a day: the batch is one, whatever it holds.
    let mut w = world_with(|config| config.relay_daily_quota = 1).await?;
    let owner = SigningKey::random(); // holds no ETH at all: the relayer pays
    let token = w.sign_in(&owner).await?;
    let agent = SigningKey::random(); // one key the agent made itself
    let until = now() + 3600;
    let asked = json!([
        { "limit": "5000000", "validUntil": until },
        { "limit": "7000000", "validUntil": until, "sessionKey": agent.address() },
        { "limit": "9000000", "validUntil": until, "validAfter": now() + 60 },
    ]);
    let (status, prepared) = w.prepare_batch(&token, asked).await?;
    assert_eq!(status, StatusCode::OK, "{prepared}");
    let keys = prepared["keys"].as_array().ok_or("keys")?;
    assert_eq!(keys.len(), 3);
    // Generated keys come with their private key, shown once; the agent's own does not.
    for i in [0, 2] {
        let private_key: SigningKey = keys[i]["privateKey"].as_str().ok_or("private key")?.parse()?;
        assert_eq!(format!("{:#x}", private_key.address()), keys[i]["sessionKey"].as_str().unwrap_or_default());
    }
    assert!(keys[1].get("privateKey").is_none(), "{prepared}");
    assert_eq!(keys[1]["sessionKey"], format!("{:#x}", agent.address()));

    // The typed data says what a wallet hashes: the contract's type, the asked terms in order.
    let typed = &prepared["typedData"];
    assert_eq!(
        encode_type_from_json(typed)?,
        <RegisterSessionKeys as alloy::sol_types::SolStruct>::eip712_encode_type()
    );
    let message = &typed["message"];
    let batch = batch_registration(message)?;
    assert_eq!(batch.owner, owner.address());
    let limits: Vec<u128> = batch.keys.iter().map(|k| k.limit).collect();
    assert_eq!(limits, [5_000_000, 7_000_000, 9_000_000]);
    assert!(batch.keys.iter().all(|k| k.payee == w.payee), "the service's only payee");
    assert_eq!(w.relayer.registrations_digest(&batch).await?, w.domain.digest(&batch), "the contract's digest");

    let (status, created) =
        w.call("POST", "/api/session-keys/batch", &token, Some(w.sign_batch(&owner, message)?)).await?;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["txStatus"], "mined");
    let views = created["keys"].as_array().ok_or("keys")?;
    assert_eq!(views.len(), 3);
    for (view, asked) in views.iter().zip(keys) {
        assert_eq!(view["address"], asked["sessionKey"]);
        assert_eq!(view["status"], "pending", "until the listener confirms the events");
    }
    w.listener.catch_up().await?;
    let (_, list) = w.call("GET", "/api/session-keys", &token, None).await?;
    let mut statuses: Vec<(&str, &str)> = list
        .as_array()
        .ok_or("list")?
        .iter()
        .map(|k| (k["limit"].as_str().unwrap_or_default(), k["status"].as_str().unwrap_or_default()))
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [("5000000", "active"), ("7000000", "active"), ("9000000", "not_yet_valid")]);
    for view in views {
        let key: Address = view["address"].as_str().ok_or("address")?.parse()?;
        let state = w.relayer.session_key(key).await?.ok_or("not on-chain")?;
        assert_eq!((state.owner, state.payee), (owner.address(), w.payee));
    }

    // That was the one relayed transaction today's quota allows.
    let (_, status, problem) = w.try_create_key(&owner, &token).await?;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("relay_quota_exceeded")),
        "{problem}"
    );
    Ok(())
}

#[tokio::test]
async fn bad_batch_requests_are_refused_and_leave_nothing_behind() -> TestResult {
    let w = world().await?;
    let owner = SigningKey::random();
    let token = w.sign_in(&owner).await?;
    let until = now() + 600;
    let key = |limit: &str| json!({ "limit": limit, "validUntil": until });

    // Empty, too many, one bad entry, one key twice: 400 naming the field, before anything else.
    let too_many: Vec<Value> = (0..251).map(|_| key("1000")).collect();
    let twice = SigningKey::random().address();
    for (asked, field) in [
        (json!([]), "keys"),
        (json!(too_many), "keys"),
        (json!([key("1000"), key("0")]), "keys[1].limit"),
        (json!([key("1000"), { "limit": "1000", "validUntil": now() - 1 }]), "keys[1].validUntil"),
        (json!([{ "limit": "1000", "validUntil": until, "sessionKey": Address::ZERO }]), "keys[0].sessionKey"),
        (
            json!([{ "limit": "1", "validUntil": until, "sessionKey": twice }, key("1"), { "limit": "2", "validUntil": until, "sessionKey": twice }]),
            "keys[2].sessionKey",
        ),
    ] {
        let (status, problem) = w.prepare_batch(&token, asked).await?;
        assert_eq!((status, problem["field"].as_str()), (StatusCode::BAD_REQUEST, Some(field)), "{problem}");
    }
    let (_, problem) = w.prepare_batch(&token, json!(too_many)).await?;
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("at most 250")), "{problem}");

    // A key opentab knows already is refused at prepare time.
    let existing = w.create_key(&owner, &token).await?;
    let asked = json!([key("1000"), { "limit": "1000", "validUntil": until, "sessionKey": existing }]);
    let (status, problem) = w.prepare_batch(&token, asked).await?;
    assert_eq!((status, problem["code"].as_str()), (StatusCode::CONFLICT, Some("key_exists")), "{problem}");
    let listed = |list: &Value| list.as_array().map(Vec::len).unwrap_or_default();
    let (_, before) = w.call("GET", "/api/session-keys?includeDeleted=true", &token, None).await?;
    assert_eq!(listed(&before), 1);

    let (status, prepared) = w.prepare_batch(&token, json!([key("1000"), key("2000"), key("3000")])).await?;
    assert_eq!(status, StatusCode::OK, "{prepared}");
    let message = prepared["typedData"]["message"].clone();
    let create = |body: Value| w.call("POST", "/api/session-keys/batch", &token, Some(body));

    // The message must stay as prepared where the service checks it itself.
    let mut empty = message.clone();
    empty["keys"] = json!([]);
    let mut many = message.clone();
    many["keys"] = json!((0..251).map(|_| message["keys"][0].clone()).collect::<Vec<_>>());
    let mut other_payee = message.clone();
    other_payee["keys"][1]["payee"] = json!(Address::repeat_byte(0x99));
    let mut other_owner = message.clone();
    other_owner["owner"] = json!(SigningKey::random().address());
    for (body, field) in [
        (empty, "message.keys"),
        (many, "message.keys"),
        (other_payee, "message.keys[1].payee"),
        (other_owner, "message.owner"),
    ] {
        let (status, problem) = create(w.sign_batch(&owner, &body)?).await?;
        assert_eq!((status, problem["field"].as_str()), (StatusCode::BAD_REQUEST, Some(field)), "{problem}");
    }

    // Signed by someone else: the contract refuses, and no pending key is left behind.
    let (status, problem) = create(w.sign_batch(&SigningKey::random(), &message)?).await?;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_signature")),
        "{problem}"
    );
    let (_, list) = w.call("GET", "/api/session-keys?includeDeleted=true", &token, None).await?;
    assert_eq!(listed(&list), 1, "only the key created before: {list}");

    // One key of the batch registered on-chain meanwhile (by someone else, for themselves):
    // the whole batch is refused, and none of its keys is kept.
    let taken: Address = message["keys"][2]["sessionKey"].as_str().ok_or("sessionKey")?.parse()?;
    let terms = opentab_chain::KeyTerms {
        session_key: taken,
        payee: w.payee,
        limit: Usdc::ONE,
        valid_after: 0,
        valid_until: until,
    };
    w.relayer.register_session_key(&terms).await?;
    let (status, problem) = create(w.sign_batch(&owner, &message)?).await?;
    assert_eq!((status, problem["code"].as_str()), (StatusCode::CONFLICT, Some("key_exists")), "{problem}");
    let (_, list) = w.call("GET", "/api/session-keys?includeDeleted=true", &token, None).await?;
    assert_eq!(listed(&list), 1, "only the key created before: {list}");
    for k in message["keys"].as_array().ok_or("keys")?.iter().take(2) {
        let key: Address = k["sessionKey"].as_str().ok_or("sessionKey")?.parse()?;
        assert_eq!(w.relayer.session_key(key).await?, None, "all or nothing on-chain too");
    }
    Ok(())
}

#[tokio::test]
async fn an_owner_creates_freezes_unfreezes_and_deletes_a_key_without_gas() -> TestResult {
    let mut w = world().await?;
    let owner = SigningKey::random(); // holds no ETH at all: the relayer pays
    let token = w.sign_in(&owner).await?;

    // Create: opentab generates the key pair and shows the private key once.
    let (status, prepared) = w
        .call(
            "POST",
            "/api/session-keys/prepare",
            &token,
            Some(json!({ "limit": "25000000", "validUntil": now() + 3600 })),
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{prepared}");
    let private_key = prepared["privateKey"].as_str().ok_or("private key shown once")?;
    let session_key: Address = prepared["sessionKey"].as_str().ok_or("sessionKey")?.parse()?;
    assert_eq!(private_key.parse::<SigningKey>()?.address(), session_key);
    let message = &prepared["typedData"]["message"];
    assert_eq!(message["payee"], format!("{:#x}", w.payee), "the service's only payee");
    let signature = owner.sign_digest(&w.domain.digest(&registration(message)?)).to_string();
    let (status, created) = w
        .call("POST", "/api/session-keys", &token, Some(json!({ "message": message, "signature": signature })))
        .await?;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["txStatus"], "mined");
    assert_eq!(created["key"]["status"], "pending", "until the listener confirms the event");
    w.listener.catch_up().await?;
    let uri = format!("/api/session-keys/{session_key:#x}");
    let (_, key) = w.call("GET", &uri, &token, None).await?;
    assert_eq!((key["status"].as_str(), key["limit"].as_str()), (Some("active"), Some("25000000")));

    // Freeze: off-chain at once, on-chain once relayed and seen.
    let (_, typed) = w.call("GET", &format!("{uri}/freeze"), &token, None).await?;
    let freeze = w.sign_action(&owner, &typed)?;
    let (status, frozen) = w.call("POST", &format!("{uri}/freeze"), &token, Some(freeze.clone())).await?;
    assert_eq!(status, StatusCode::OK, "{frozen}");
    assert_eq!(frozen["key"]["status"], "frozen");
    w.listener.catch_up().await?;

    // Replaying the same signed freeze is refused (its nonce is spent).
    let (status, problem) = w.call("POST", &format!("{uri}/freeze"), &token, Some(freeze)).await?;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("stale_nonce")),
        "{problem}"
    );

    // Owner B can neither see nor act on A's key.
    let stranger = SigningKey::random();
    let token_b = w.sign_in(&stranger).await?;
    let (status, _) = w.call("GET", &format!("{uri}/unfreeze"), &token_b, None).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let forged = w.sign_action(&stranger, &typed)?;
    for (method, path) in
        [("POST", format!("{uri}/unfreeze")), ("POST", format!("{uri}/freeze")), ("DELETE", uri.clone())]
    {
        let (status, _) = w.call(method, &path, &token_b, Some(forged.clone())).await?;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path} by owner B");
    }

    // A rule is switched to shadow only as its key is unfrozen, and only a rule that exists.
    let (_, typed) = w.call("GET", &format!("{uri}/freeze"), &token, None).await?;
    let mut refreeze = w.sign_action(&owner, &typed)?;
    refreeze["shadowRule"] = json!("rate");
    let (status, problem) = w.call("POST", &format!("{uri}/freeze"), &token, Some(refreeze)).await?;
    assert_eq!((status, problem["field"].as_str()), (StatusCode::BAD_REQUEST, Some("shadowRule")), "{problem}");
    let (_, typed) = w.call("GET", &format!("{uri}/unfreeze"), &token, None).await?;
    let mut unfreeze = w.sign_action(&owner, &typed)?;
    unfreeze["shadowRule"] = json!("speed");
    let (status, problem) = w.call("POST", &format!("{uri}/unfreeze"), &token, Some(unfreeze.clone())).await?;
    assert_eq!((status, problem["field"].as_str()), (StatusCode::BAD_REQUEST, Some("shadowRule")), "{problem}");

    // Unfreeze, switching the rate rule to shadow for this key in the same request (audited).
    unfreeze["shadowRule"] = json!("rate");
    let (status, body) = w.call("POST", &format!("{uri}/unfreeze"), &token, Some(unfreeze)).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    w.listener.catch_up().await?;
    let (_, key) = w.call("GET", &uri, &token, None).await?;
    assert_eq!(key["status"], "active");
    let (_, rules) = w.call("GET", &format!("{uri}/rules"), &token, None).await?;
    assert_eq!((&rules["key"], &rules["effective"]["rateMode"]), (&json!({ "rateMode": "shadow" }), &json!("shadow")));
    assert_eq!(rules["history"][0]["action"], "rules.shadow_on_unfreeze");

    // Delete: revoked on-chain, gone from the default list, still listed on request.
    let (_, typed) = w.call("GET", &format!("{uri}/delete"), &token, None).await?;
    let (status, body) = w.call("DELETE", &uri, &token, Some(w.sign_action(&owner, &typed)?)).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    w.listener.catch_up().await?;
    let (_, list) = w.call("GET", "/api/session-keys", &token, None).await?;
    assert_eq!(list, json!([]));
    let (_, list) = w.call("GET", "/api/session-keys?includeDeleted=true", &token, None).await?;
    assert_eq!(list[0]["status"], "revoked");
    Ok(())
}

#[tokio::test]
async fn bad_create_requests_are_refused_and_leave_nothing_behind() -> TestResult {
    let w = world().await?;
    let owner = SigningKey::random();
    let token = w.sign_in(&owner).await?;
    for (body, field) in [
        (json!({ "limit": "0", "validUntil": now() + 60 }), "limit"),
        (json!({ "limit": "1000", "validUntil": now() - 60 }), "validUntil"),
        (json!({ "limit": "1000", "validUntil": now() + 60, "validAfter": now() + 120 }), "validAfter"),
    ] {
        let (status, problem) = w.call("POST", "/api/session-keys/prepare", &token, Some(body)).await?;
        assert_eq!((status, problem["field"].as_str()), (StatusCode::BAD_REQUEST, Some(field)), "{problem}");
    }

    // The agent made its own key: no private key is returned.
    let agent = SigningKey::random();
    let body = json!({ "limit": "1000", "validUntil": now() + 600, "sessionKey": agent.address() });
    let (_, prepared) = w.call("POST", "/api/session-keys/prepare", &token, Some(body)).await?;
    assert!(prepared.get("privateKey").is_none(), "{prepared}");
    let message = prepared["typedData"]["message"].clone();

    // Signed by someone else: the contract refuses, and no pending key is left behind.
    let forged = SigningKey::random().sign_digest(&w.domain.digest(&registration(&message)?)).to_string();
    let (status, problem) =
        w.call("POST", "/api/session-keys", &token, Some(json!({ "message": message, "signature": forged }))).await?;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_signature")),
        "{problem}"
    );
    let (_, list) = w.call("GET", "/api/session-keys?includeDeleted=true", &token, None).await?;
    assert_eq!(list, json!([]));

    // Another payee than the service's is refused before anything is sent.
    let mut other_payee = message.clone();
    other_payee["payee"] = json!(Address::repeat_byte(0x99));
    let sig = owner.sign_digest(&w.domain.digest(&registration(&other_payee)?)).to_string();
    let (status, problem) =
        w.call("POST", "/api/session-keys", &token, Some(json!({ "message": other_payee, "signature": sig }))).await?;
    assert_eq!((status, problem["field"].as_str()), (StatusCode::BAD_REQUEST, Some("message.payee")), "{problem}");
    Ok(())
}

/// Reads SSE frames until one whose text satisfies `want`, or `wait` passes.
async fn next_event(
    body: &mut Body,
    wait: std::time::Duration,
    want: impl Fn(&str) -> bool,
) -> TestResult<Option<String>> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Ok(None),
            Ok(None) => return Ok(None),
            Ok(Some(frame)) => frame?,
        };
        if let Ok(data) = frame.into_data() {
            let text = String::from_utf8_lossy(&data).into_owned();
            if want(&text) {
                return Ok(Some(text));
            }
        }
    }
}

#[tokio::test]
async fn live_events_reach_their_owner_and_no_one_else() -> TestResult {
    let mut w = world().await?;
    let (alice, bob) = (SigningKey::random(), SigningKey::random());
    let (token_a, token_b) = (w.sign_in(&alice).await?, w.sign_in(&bob).await?);
    let mut stream_a = w.events(&token_a).await?;
    let mut stream_b = w.events(&token_b).await?;
    let second = std::time::Duration::from_secs(1);
    assert!(next_event(&mut stream_a, second, |t| t.contains("event: ready")).await?.is_some());
    assert!(next_event(&mut stream_b, second, |t| t.contains("event: ready")).await?.is_some());

    let key = w.create_key(&alice, &token_a).await?;
    w.listener.catch_up().await?;
    let address = format!("{key:#x}");
    let seen = next_event(&mut stream_a, std::time::Duration::from_secs(5), |t| {
        t.contains("event: key") && t.contains(&address) && t.contains("\"status\":\"active\"")
    })
    .await?;
    assert!(seen.is_some(), "alice sees her key become active");
    let leaked = next_event(&mut stream_b, std::time::Duration::from_millis(300), |t| t.contains(&address)).await?;
    assert_eq!(leaked, None, "bob sees nothing of alice's key");
    Ok(())
}

#[tokio::test]
async fn the_relayer_sends_an_owner_at_most_its_daily_quota_but_always_freezes() -> TestResult {
    let mut w = world_with(|config| config.relay_daily_quota = 2).await?;
    let owner = SigningKey::random();
    let token = w.sign_in(&owner).await?;
    let key = w.create_key(&owner, &token).await?;
    w.create_key(&owner, &token).await?;
    // A third creation would be the third transaction today: refused before anything is sent.
    let body = json!({ "limit": "5000000", "validUntil": now() + 3600 });
    let (_, prepared) = w.call("POST", "/api/session-keys/prepare", &token, Some(body)).await?;
    let message = &prepared["typedData"]["message"];
    let signature = owner.sign_digest(&w.domain.digest(&registration(message)?)).to_string();
    let (status, problem) = w
        .call("POST", "/api/session-keys", &token, Some(json!({ "message": message, "signature": signature })))
        .await?;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("relay_quota_exceeded")),
        "{problem}"
    );
    let third: Address = prepared["sessionKey"].as_str().ok_or("sessionKey")?.parse()?;
    let (status, _) = w.call("GET", &format!("/api/session-keys/{third:#x}"), &token, None).await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was stored or sent for it");
    // Freezing stops spending: it is never refused.
    w.listener.catch_up().await?;
    let uri = format!("/api/session-keys/{key:#x}");
    let (_, typed) = w.call("GET", &format!("{uri}/freeze"), &token, None).await?;
    let freeze = w.sign_action(&owner, &typed)?;
    let (status, frozen) = w.call("POST", &format!("{uri}/freeze"), &token, Some(freeze)).await?;
    assert_eq!((status, frozen["key"]["status"].as_str()), (StatusCode::OK, Some("frozen")), "{frozen}");
    // Another owner has its own quota.
    let other = SigningKey::random();
    let token = w.sign_in(&other).await?;
    w.create_key(&other, &token).await?;
    Ok(())
}

/// Finding 8: any wallet could sign in and have key creations relayed with no deposit. Now
/// creations and unfreezes need the tab's free balance at the minimum: one base unit short is
/// refused, exactly enough is served. Freezing and deleting never need one.
#[tokio::test]
async fn the_relayer_creates_and_unfreezes_keys_only_for_a_funded_tab() -> TestResult {
    let mut w = world_with(|config| config.relay_min_tab = Usdc::from_base_units(1_000_000)).await?;
    let owner = SigningKey::from_bytes(&w.anvil.keys()[1])?;
    let as_owner = w.relayer.with_provider(signing_provider(&w.rpc, w.anvil.signer(1)?)?);
    as_owner.mint_test_usdc(owner.address(), Usdc::from_base_units(5_000_000)).await?;
    let token = w.sign_in(&owner).await?;

    let (refused, status, problem) = w.try_create_key(&owner, &token).await?;
    assert_eq!((status, problem["code"].as_str()), (StatusCode::PAYMENT_REQUIRED, Some("tab_unfunded")), "{problem}");
    as_owner.deposit(w.payee, Usdc::from_base_units(999_999)).await?;
    let (_, status, problem) = w.try_create_key(&owner, &token).await?;
    assert_eq!((status, problem["code"].as_str()), (StatusCode::PAYMENT_REQUIRED, Some("tab_unfunded")), "{problem}");
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("0.999999")), "says what the tab holds: {problem}");
    let (status, _) = w.call("GET", &format!("/api/session-keys/{refused:#x}"), &token, None).await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "a refused creation stores nothing");

    as_owner.deposit(w.payee, Usdc::from_base_units(1)).await?;
    let key = w.create_key(&owner, &token).await?;
    w.listener.catch_up().await?;

    // A pending withdrawal leaves less than the minimum free: the key can be frozen, not
    // unfrozen, and deleted.
    let (status, body) = w.act(&owner, &token, key, "freeze").await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    as_owner.request_withdrawal(w.payee, Usdc::from_base_units(1)).await?;
    let (status, problem) = w.act(&owner, &token, key, "unfreeze").await?;
    assert_eq!((status, problem["code"].as_str()), (StatusCode::PAYMENT_REQUIRED, Some("tab_unfunded")), "{problem}");
    let (status, body) = w.act(&owner, &token, key, "delete").await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    Ok(())
}

/// Relayed transactions are limited per owner per minute as well as per day; freezing is not.
#[tokio::test]
async fn relayed_transactions_are_rate_limited_per_owner_but_freezes_are_not() -> TestResult {
    let mut w = world_with(|config| config.rate_limits.relays_per_owner = 1).await?;
    let owner = SigningKey::random();
    let token = w.sign_in(&owner).await?;
    let key = w.create_key(&owner, &token).await?;
    let (_, status, problem) = w.try_create_key(&owner, &token).await?;
    assert_eq!((status, problem["code"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited")), "{problem}");
    w.listener.catch_up().await?;
    let (status, body) = w.act(&owner, &token, key, "freeze").await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let other = SigningKey::random();
    let token = w.sign_in(&other).await?;
    w.create_key(&other, &token).await?;
    Ok(())
}
