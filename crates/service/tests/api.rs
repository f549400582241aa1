//! The REST API driven in-process (`oneshot`, no socket) over a real SQLite database: Sign-In
//! with Ethereum, sessions, ownership, and problem+json errors.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use opentab_core::siwe::SiweMessage;
use opentab_core::{Address, SigningKey, Usdc, ValidatorEvent};
use opentab_service::api::{ApiConfig, AppState, router};
use opentab_store::{NewKey, Store, StoredEvent};
use serde_json::{Value, json};
use tower::ServiceExt;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

const DOMAIN: &str = "localhost:8402";
const CHAIN: u64 = 31337;
const VALIDATOR: Address = Address::repeat_byte(0x77);

struct Api {
    app: Router,
    store: Store,
    _dir: tempfile::TempDir,
}

async fn api() -> TestResult<Api> {
    api_with(|_| {}).await
}

async fn api_with(configure: impl FnOnce(&mut ApiConfig)) -> TestResult<Api> {
    let dir = tempfile::tempdir()?;
    let store = opentab_store::testing::fresh_sqlite(dir.path()).await?;
    let mut config = ApiConfig::new(DOMAIN, CHAIN, VALIDATOR);
    configure(&mut config);
    let app = router(AppState::new(store.clone(), config));
    Ok(Api { app, store, _dir: dir })
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

impl Api {
    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> TestResult<(StatusCode, Value, Option<String>)> {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = match body {
            Some(body) => req.header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_string()))?,
            None => req.body(Body::empty())?,
        };
        let res = self.app.clone().oneshot(req).await?;
        let status = res.status();
        let cookie = res.headers().get(header::SET_COOKIE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let bytes = res.into_body().collect().await?.to_bytes();
        let json = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes)? };
        Ok((status, json, cookie))
    }

    async fn nonce(&self) -> TestResult<String> {
        let (status, body, _) = self.call("GET", "/api/auth/nonce", None, None).await?;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["domain"], DOMAIN);
        Ok(body["nonce"].as_str().ok_or("no nonce")?.to_owned())
    }

    fn signed_message(&self, key: &SigningKey, domain: &str, chain: u64, nonce: &str) -> (String, String) {
        let text =
            SiweMessage::compose(domain, "http://localhost:8402", key.address(), chain, nonce, now(), now() + 300);
        let sig = key.sign_digest(&opentab_core::eip191_hash_message(&text));
        (text, sig.to_string())
    }

    async fn login(&self, key: &SigningKey, nonce: String) -> TestResult<(StatusCode, Value)> {
        let (message, signature) = self.signed_message(key, DOMAIN, CHAIN, &nonce);
        let body = json!({ "message": message, "signature": signature });
        let (status, problem, _) = self.call("POST", "/api/auth/login", None, Some(body)).await?;
        Ok((status, problem))
    }

    async fn sign_in(&self, key: &SigningKey) -> TestResult<String> {
        let nonce = self.nonce().await?;
        let (message, signature) = self.signed_message(key, DOMAIN, CHAIN, &nonce);
        let (status, body, cookie) = self
            .call("POST", "/api/auth/login", None, Some(json!({ "message": message, "signature": signature })))
            .await?;
        assert_eq!(status, StatusCode::OK, "{body}");
        let cookie = cookie.ok_or("no session cookie")?;
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
        Ok(body["token"].as_str().ok_or("no token")?.to_owned())
    }
}

async fn seed_key(store: &Store, byte: u8, owner: Address) -> TestResult<Address> {
    let key = NewKey {
        address: Address::repeat_byte(byte),
        owner,
        payee: Address::repeat_byte(0xee),
        limit: Usdc::parse_decimal("20")?,
        valid_after: 0,
        valid_until: now() + 3600,
    };
    store.insert_pending_key(&key, now()).await?;
    let registered = ValidatorEvent::Registered {
        owner,
        session_key: key.address,
        payee: key.payee,
        limit: key.limit,
        valid_after: 0,
        valid_until: key.valid_until,
    };
    let settled = ValidatorEvent::Settled {
        session_key: key.address,
        amount: Usdc::parse_decimal("5")?,
        settled: Usdc::parse_decimal("5")?,
    };
    let events: Vec<StoredEvent> = [registered, settled]
        .into_iter()
        .enumerate()
        .map(|(i, event)| StoredEvent {
            block_number: u64::from(byte) * 10 + i as u64,
            log_index: 0,
            block_hash: opentab_core::B256::repeat_byte(byte),
            tx_hash: opentab_core::B256::repeat_byte(byte.wrapping_add(i as u8)),
            event,
        })
        .collect();
    store.apply_chain_update(VALIDATOR, None, &events, "{}", now()).await?;
    Ok(key.address)
}

#[tokio::test]
async fn an_owner_signs_in_and_sees_its_keys_with_usage() -> TestResult {
    let api = api().await?;
    let owner = SigningKey::random();
    let key = seed_key(&api.store, 1, owner.address()).await?;
    let token = api.sign_in(&owner).await?;

    let (status, list, _) = api.call("GET", "/api/session-keys", Some(&token), None).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    let k = &list[0];
    assert_eq!(k["address"], format!("{key:#x}"));
    assert_eq!(k["status"], "active");
    assert_eq!(k["limit"], "20000000", "amounts are decimal strings of base units");
    assert_eq!(k["usage"]["settled"], "5000000");
    assert_eq!(k["usage"]["remaining"], "15000000");
    assert_eq!(k["usage"]["percentUsed"], 25.0);

    let (status, detail, _) = api.call("GET", &format!("/api/session-keys/{key:#x}"), Some(&token), None).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detail["settlements"][0]["amount"], "5000000");

    // The key draws on an empty tab: flagged with tabFree 0, and the tab is listed with its key.
    assert_eq!(k["tabFree"], "0");
    let (status, tabs, _) = api.call("GET", "/api/tabs", Some(&token), None).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tabs["validator"], format!("{VALIDATOR:#x}"));
    let tab = &tabs["tabs"][0];
    assert_eq!(tab["balance"], "0");
    assert_eq!(tab["keys"][0], format!("{key:#x}"));
    Ok(())
}

#[tokio::test]
async fn owner_b_cannot_see_owner_a_keys() -> TestResult {
    let api = api().await?;
    let (a, b) = (SigningKey::random(), SigningKey::random());
    let key = seed_key(&api.store, 2, a.address()).await?;
    let token_b = api.sign_in(&b).await?;

    let (status, list, _) = api.call("GET", "/api/session-keys?includeDeleted=true", Some(&token_b), None).await?;
    assert_eq!((status, list), (StatusCode::OK, json!([])));
    let (status, problem, _) = api.call("GET", &format!("/api/session-keys/{key:#x}"), Some(&token_b), None).await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "another owner's key is not found, not forbidden");
    assert_eq!(problem["code"], "not_found");
    Ok(())
}

#[tokio::test]
async fn asking_for_a_nonce_forgets_expired_sessions_and_spent_nonces() -> TestResult {
    let api = api().await?;
    let owner = SigningKey::random();
    let now = now();
    api.store.create_session("expired-session", owner.address(), now - 7_200, now - 3_600).await?;
    assert!(api.store.spend_nonce("stale-nonce-0001", now - 3_600, now - 3_590).await?);
    api.nonce().await?;
    // Read as if it were long ago: the rows themselves are gone, not merely expired.
    assert_eq!(api.store.session_owner("expired-session", 0).await?, None);
    assert_eq!(api.store.spent_nonces().await?, 0);
    Ok(())
}

/// Finding 7b: every `GET /api/auth/nonce` wrote a row, kept ten minutes.
#[tokio::test]
async fn handing_out_nonces_writes_nothing_and_only_sealed_fresh_ones_sign_in() -> TestResult {
    let api = api_with(|config| config.nonce_ttl_secs = 1).await?;
    let mut nonces = Vec::new();
    for _ in 0..20 {
        nonces.push(api.nonce().await?);
    }
    assert_eq!(api.store.spent_nonces().await?, 0, "handing out nonces stored nothing");
    nonces.sort();
    nonces.dedup();
    assert_eq!(nonces.len(), 20, "each nonce is new");

    let owner = SigningKey::random();
    let login = |nonce: String| api.login(&owner, nonce);
    // Tampering with the issue time (to outlive the lifetime) or with the seal, or making one up
    // in the same shape, is refused: only this deployment's sealed nonces sign in.
    let flip = |nonce: &str, at: usize| {
        let mut chars: Vec<char> = nonce.chars().collect();
        chars[at] = if chars[at] == '0' { '1' } else { '0' };
        chars.into_iter().collect::<String>()
    };
    for forged in [flip(&nonces[0], 15), flip(&nonces[0], 63), "ab".repeat(32), "nothexatallzz".into()] {
        let (status, problem) = login(forged.clone()).await?;
        assert_eq!((status, problem["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_nonce")), "{forged}");
    }
    assert_eq!(api.store.spent_nonces().await?, 0, "refused nonces are not stored either");

    // A nonce outlives its lifetime: refused, though sealed and never used.
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    let (status, problem) = login(nonces[1].clone()).await?;
    assert_eq!((status, problem["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_nonce")));
    // A fresh one signs in, and is then kept (spent) so it cannot sign in again.
    let (status, _) = login(api.nonce().await?).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(api.store.spent_nonces().await?, 1);
    Ok(())
}

/// Nonces sealed by one server open on another of the same deployment (one database).
#[tokio::test]
async fn a_nonce_from_one_server_signs_in_at_another_of_the_same_deployment() -> TestResult {
    let first = api().await?;
    let second = router(AppState::new(first.store.clone(), ApiConfig::new(DOMAIN, CHAIN, VALIDATOR)));
    let owner = SigningKey::random();
    let (message, signature) = first.signed_message(&owner, DOMAIN, CHAIN, &first.nonce().await?);
    let req = Request::post("/api/auth/login")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({ "message": message, "signature": signature }).to_string()))?;
    assert_eq!(second.oneshot(req).await?.status(), StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn a_nonce_signs_in_once() -> TestResult {
    let api = api().await?;
    let owner = SigningKey::random();
    let nonce = api.nonce().await?;
    let (message, signature) = api.signed_message(&owner, DOMAIN, CHAIN, &nonce);
    let body = json!({ "message": message, "signature": signature });
    let (first, _, _) = api.call("POST", "/api/auth/login", None, Some(body.clone())).await?;
    assert_eq!(first, StatusCode::OK);
    let (again, problem, _) = api.call("POST", "/api/auth/login", None, Some(body)).await?;
    assert_eq!((again, problem["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_nonce")));

    // A nonce the server never issued is refused as well.
    let (message, signature) = api.signed_message(&owner, DOMAIN, CHAIN, "madeupnonce1");
    let (status, problem, _) =
        api.call("POST", "/api/auth/login", None, Some(json!({ "message": message, "signature": signature }))).await?;
    assert_eq!((status, problem["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_nonce")));
    Ok(())
}

#[tokio::test]
async fn another_domain_chain_or_signer_is_refused() -> TestResult {
    let api = api().await?;
    let owner = SigningKey::random();
    for (domain, chain, code) in [("evil.example", CHAIN, "wrong_domain"), (DOMAIN, 137, "wrong_chain")] {
        let nonce = api.nonce().await?;
        let (message, signature) = api.signed_message(&owner, domain, chain, &nonce);
        let (status, problem, _) = api
            .call("POST", "/api/auth/login", None, Some(json!({ "message": message, "signature": signature })))
            .await?;
        assert_eq!((status, problem["code"].as_str()), (StatusCode::UNAUTHORIZED, Some(code)), "{problem}");
    }
    // Signed by someone other than the address in the message.
    let nonce = api.nonce().await?;
    let (message, _) = api.signed_message(&owner, DOMAIN, CHAIN, &nonce);
    let forged = SigningKey::random().sign_digest(&opentab_core::eip191_hash_message(&message));
    let (status, problem, _) = api
        .call("POST", "/api/auth/login", None, Some(json!({ "message": message, "signature": forged.to_string() })))
        .await?;
    assert_eq!((status, problem["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_signature")));
    Ok(())
}

#[tokio::test]
async fn missing_tampered_and_ended_sessions_are_refused() -> TestResult {
    let api = api().await?;
    let owner = SigningKey::random();
    let (status, problem, _) = api.call("GET", "/api/session-keys", None, None).await?;
    assert_eq!((status, problem["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthenticated")));

    let token = api.sign_in(&owner).await?;
    let mut tampered = token.clone();
    tampered.replace_range(0..1, if token.starts_with('a') { "b" } else { "a" });
    let (status, _, _) = api.call("GET", "/api/session-keys", Some(&tampered), None).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, _, cookie) = api.call("POST", "/api/auth/logout", Some(&token), None).await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(cookie.is_some_and(|c| c.contains("Max-Age=0")));
    let (status, _, _) = api.call("GET", "/api/session-keys", Some(&token), None).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a signed-out token is dead");
    Ok(())
}

#[tokio::test]
async fn bad_input_gets_problem_json_naming_the_field() -> TestResult {
    let api = api().await?;
    let token = api.sign_in(&SigningKey::random()).await?;
    let cases = [
        ("GET", "/api/session-keys/not-an-address".to_owned(), None, "key"),
        ("GET", "/api/session-keys?includeDeleted=maybe".to_owned(), None, "includeDeleted"),
        ("POST", "/api/auth/login".to_owned(), Some(json!({ "message": "hello", "signature": "0x00" })), "message"),
    ];
    for (method, uri, body, field) in cases {
        let (status, problem, _) = api.call(method, &uri, Some(&token), body).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {problem}");
        assert_eq!(problem["field"], field, "{uri}: {problem}");
        assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    let (status, problem, _) = api.call("POST", "/api/auth/login", None, Some(json!({ "nope": 1 }))).await?;
    assert_eq!((status, problem["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_body")));
    let (status, problem, _) = api.call("GET", "/api/nothing-here", None, None).await?;
    assert_eq!((status, problem["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    Ok(())
}

#[tokio::test]
async fn a_database_that_goes_away_is_a_503_not_a_crash() -> TestResult {
    let api = api().await?;
    let token = api.sign_in(&SigningKey::random()).await?;
    api.store.close().await;
    let (status, problem, _) = api.call("GET", "/api/session-keys", Some(&token), None).await?;
    assert_eq!((status, problem["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")));
    assert!(!problem["detail"].as_str().unwrap_or_default().contains("sqlite"), "internal causes are not sent");
    Ok(())
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() -> TestResult {
    let api = api().await?;
    let (status, doc, _) = api.call("GET", "/api/openapi.json", None, None).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{}", doc["openapi"]);
    let paths = doc["paths"].as_object().ok_or("no paths")?;
    for (path, method) in [
        ("/api/auth/nonce", "get"),
        ("/api/auth/login", "post"),
        ("/api/auth/logout", "post"),
        ("/api/session-keys", "get"),
        ("/api/session-keys", "post"),
        ("/api/session-keys/prepare", "post"),
        ("/api/session-keys/batch/prepare", "post"),
        ("/api/session-keys/batch", "post"),
        ("/api/session-keys/events", "get"),
        ("/api/session-keys/{key}", "get"),
        ("/api/session-keys/{key}", "delete"),
        ("/api/session-keys/{key}/{action}", "get"),
        ("/api/session-keys/{key}/{action}", "post"),
        ("/api/tabs", "get"),
        ("/api/rules", "get"),
        ("/api/rules", "put"),
        ("/api/session-keys/{key}/rules", "get"),
        ("/api/session-keys/{key}/rules", "put"),
    ] {
        assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} is not documented");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    for status in ["400", "401", "404", "409", "422", "503"] {
        let problem = &doc["paths"]["/api/session-keys/prepare"]["post"]["responses"][status]["content"]["application/problem+json"];
        assert!(problem.is_object(), "prepare documents its {status} as problem+json");
    }
    Ok(())
}

#[tokio::test]
async fn an_expired_session_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = opentab_store::testing::fresh_sqlite(dir.path()).await?;
    let mut config = ApiConfig::new(DOMAIN, CHAIN, VALIDATOR);
    config.session_ttl_secs = 0; // sessions end the moment they begin
    let api = Api { app: router(AppState::new(store.clone(), config)), store, _dir: dir };
    let token = api.sign_in(&SigningKey::random()).await?;
    let (status, problem, _) = api.call("GET", "/api/session-keys", Some(&token), None).await?;
    assert_eq!((status, problem["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthenticated")));
    Ok(())
}

#[tokio::test]
async fn an_owner_holds_a_bounded_number_of_event_streams() -> TestResult {
    let api = api().await?;
    let (owner, other) = (SigningKey::random(), SigningKey::random());
    let token = api.sign_in(&owner).await?;
    let open = |token: String| {
        let app = api.app.clone();
        async move {
            let req = Request::builder()
                .uri("/api/session-keys/events")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(Body::empty())?;
            TestResult::Ok(app.oneshot(req).await?)
        }
    };
    // Streams held open (their responses kept) up to the cap; one more is refused with 429.
    let mut streams = Vec::new();
    for _ in 0..opentab_service::MAX_STREAMS_PER_OWNER {
        let res = open(token.clone()).await?;
        assert_eq!(res.status(), StatusCode::OK);
        streams.push(res);
    }
    let refused = open(token.clone()).await?;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = serde_json::from_slice(&refused.into_body().collect().await?.to_bytes())?;
    assert_eq!(body["code"], "too_many_streams", "{body}");
    // Another owner is not affected, and a closed stream frees its place.
    assert_eq!(open(api.sign_in(&other).await?).await?.status(), StatusCode::OK);
    drop(streams.pop());
    assert_eq!(open(token).await?.status(), StatusCode::OK);
    Ok(())
}

/// A request as it comes off a socket at `ip`, with `headers`.
fn from_ip(uri: &str, ip: [u8; 4], headers: &[(&str, &str)]) -> TestResult<Request<Body>> {
    let mut req = Request::get(uri);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let mut req = req.body(Body::empty())?;
    req.extensions_mut().insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((ip, 40_000))));
    Ok(req)
}

/// Finding 8 and item 5: sign-in nonces are limited per client IP; one address's flood does
/// not lock out another, and a forged `X-Forwarded-For` picks no new bucket unless trusted.
#[tokio::test]
async fn sign_in_nonces_are_rate_limited_per_client_ip() -> TestResult {
    let api = api_with(|config| config.rate_limits.sign_in_per_ip = 3).await?;
    let get = |ip, headers: &'static [(&'static str, &'static str)]| {
        let app = api.app.clone();
        async move { TestResult::Ok(app.oneshot(from_ip("/api/auth/nonce", ip, headers)?).await?) }
    };
    for n in 0..3 {
        assert_eq!(get([10, 0, 0, 1], &[]).await?.status(), StatusCode::OK, "request {n} is within the limit");
    }
    let refused = get([10, 0, 0, 1], &[("x-forwarded-for", "198.51.100.7")]).await?;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS, "a forged X-Forwarded-For changes nothing");
    let wait: u64 = refused.headers().get(header::RETRY_AFTER).ok_or("no Retry-After")?.to_str()?.parse()?;
    assert!((1..=20).contains(&wait), "one nonce comes back every 20 s: {wait}");
    let problem: Value = serde_json::from_slice(&refused.into_body().collect().await?.to_bytes())?;
    assert_eq!(problem["code"], "rate_limited");
    assert_eq!(get([10, 0, 0, 2], &[]).await?.status(), StatusCode::OK, "another address has its own budget");

    // Behind a proxy that appends the client's address, the last hop is the client.
    let api = api_with(|config| {
        config.rate_limits.sign_in_per_ip = 1;
        config.rate_limits.trust_forwarded_for = true;
    })
    .await?;
    let get = |hops: &'static str| {
        let app = api.app.clone();
        async move {
            TestResult::Ok(app.oneshot(from_ip("/api/auth/nonce", [10, 0, 0, 9], &[("x-forwarded-for", hops)])?).await?)
        }
    };
    assert_eq!(get("203.0.113.5, 192.0.2.1").await?.status(), StatusCode::OK);
    assert_eq!(
        get("203.0.113.6, 192.0.2.1").await?.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the client's own hop is ignored"
    );
    assert_eq!(get("192.0.2.2").await?.status(), StatusCode::OK, "another client behind the proxy");
    Ok(())
}

/// Sign-ins are limited per owner too: an owner opening sessions in a loop is refused, and the
/// refused attempt leaves its nonce unspent.
#[tokio::test]
async fn sessions_are_rate_limited_per_owner() -> TestResult {
    let api = api_with(|config| config.rate_limits.sessions_per_owner = 2).await?;
    let owner = SigningKey::random();
    api.sign_in(&owner).await?;
    api.sign_in(&owner).await?;
    let (status, problem) = api.login(&owner, api.nonce().await?).await?;
    assert_eq!((status, problem["code"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited")));
    assert_eq!(api.store.spent_nonces().await?, 2, "the refused sign-in spent no nonce");
    api.sign_in(&SigningKey::random()).await?;
    Ok(())
}

/// Issue 13: an owner's rule defaults and a key's overrides, read and set through the API:
/// each change audited with what it replaced, checked at the bounds with the field named, and
/// another owner's key not found.
#[tokio::test]
async fn an_owner_sets_rule_defaults_and_key_overrides_and_sees_each_change() -> TestResult {
    let api = api().await?;
    let owner = SigningKey::random();
    let token = api.sign_in(&owner).await?;
    let key = seed_key(&api.store, 0x31, owner.address()).await?;
    let uri = format!("/api/session-keys/{key:#x}/rules");

    let (status, view, _) = api.call("GET", &uri, Some(&token), None).await?;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["effective"], view["seed"], "nothing set: the seed's");
    assert_eq!(
        (&view["seed"]["spikeMultiple"], &view["seed"]["callsPerMinute"], &view["seed"]["lowBalancePercent"]),
        (&json!(10), &json!(100), &json!(10))
    );
    assert_eq!((&view["seed"]["rateMode"], &view["seed"]["spikeByRoute"]), (&json!("enforce"), &json!(true)));
    assert_eq!((&view["owner"], &view["key"]), (&json!({}), &json!({})));

    let (status, view, _) = api
        .call("PUT", "/api/rules", Some(&token), Some(json!({ "callsPerMinute": 300, "spikeMode": "shadow" })))
        .await?;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert!(view.get("key").is_none(), "the owner's view has no key");
    let body = json!({ "callsPerMinute": 40, "spikeIgnoreRoutes": ["post /v1/images"], "spikeIgnoreUpTo": "5000" });
    let (status, view, _) = api.call("PUT", &uri, Some(&token), Some(body)).await?;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["effective"]["callsPerMinute"], 40, "the key's setting wins");
    assert_eq!(view["effective"]["spikeMode"], "shadow", "the owner's default, inherited");
    assert_eq!(view["effective"]["spikeIgnoreRoutes"], json!(["POST /v1/images"]), "stored in canonical form");
    assert_eq!(view["effective"]["spikeIgnoreUpTo"], "5000");
    assert_eq!(view["owner"], json!({ "callsPerMinute": 300, "spikeMode": "shadow" }));
    let history = view["history"].as_array().ok_or("no history")?;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["action"], "rules.set");
    assert_eq!(history[0]["actor"], format!("{:#x}", owner.address()));
    let detail: Value = serde_json::from_str(history[0]["detail"].as_str().ok_or("no detail")?)?;
    assert_eq!(detail["before"], json!({}));
    assert_eq!(detail["after"]["callsPerMinute"], 40);

    // Back to inherit: an empty body.
    let (_, view, _) = api.call("PUT", &uri, Some(&token), Some(json!({}))).await?;
    assert_eq!(view["effective"]["callsPerMinute"], 300);
    assert_eq!(view["history"].as_array().map(Vec::len), Some(2));

    // Bounds, each refusal naming its field; nothing changes.
    for (body, field) in [
        (json!({ "callsPerMinute": 0 }), "callsPerMinute"),
        (json!({ "callsPerMinute": 10_000 }), "callsPerMinute"),
        (json!({ "spikeMultiple": 0 }), "spikeMultiple"),
        (json!({ "lowBalancePercent": 101 }), "lowBalancePercent"),
        (json!({ "spikeIgnoreRoutes": ["/v1/images"] }), "spikeIgnoreRoutes"),
    ] {
        let (status, problem, _) = api.call("PUT", &uri, Some(&token), Some(body.clone())).await?;
        assert_eq!((status, problem["field"].as_str()), (StatusCode::BAD_REQUEST, Some(field)), "{body}: {problem}");
    }
    for body in [
        json!({ "rateMode": "strict" }),
        json!({ "spikeMultiplier": 3 }),
        json!({ "callsPerMinute": -1 }),
        json!([]),
        json!([null, null]),
        json!(null),
    ] {
        let (status, problem, _) = api.call("PUT", &uri, Some(&token), Some(body.clone())).await?;
        assert_eq!((status, problem["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_body")), "{body}");
    }
    let (status, problem, _) = api.call("PUT", &uri, Some(&token), Some(json!({ "callsPerMinute": 9_999 }))).await?;
    assert_eq!(status, StatusCode::OK, "the largest rate the counters can count: {problem}");
    let (_, view, _) = api.call("GET", &uri, Some(&token), None).await?;
    assert_eq!(view["history"].as_array().map(Vec::len), Some(3), "refusals changed nothing");

    // Another owner's key is not found, and their defaults are their own.
    let stranger = api.sign_in(&SigningKey::random()).await?;
    let (status, _, _) = api.call("GET", &uri, Some(&stranger), None).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = api.call("PUT", &uri, Some(&stranger), Some(json!({}))).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, theirs, _) = api.call("GET", "/api/rules", Some(&stranger), None).await?;
    assert_eq!(theirs["owner"], json!({}));
    let (status, _, _) = api.call("GET", "/api/rules", None, None).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    Ok(())
}

/// A key's rules view suggests a calls-per-minute setting from the key's busiest minute of the
/// last 24 hours (the kind of per-key setting that met the 5% bar in `opentab rules-sim`).
#[tokio::test]
async fn a_key_charged_lately_gets_a_rate_suggested_from_its_busiest_minute() -> TestResult {
    use opentab_store::{UsageEntry, UsageKind};
    let api = api().await?;
    let owner = SigningKey::random();
    let token = api.sign_in(&owner).await?;
    let key = seed_key(&api.store, 0x32, owner.address()).await?;
    let uri = format!("/api/session-keys/{key:#x}/rules");
    let (_, view, _) = api.call("GET", &uri, Some(&token), None).await?;
    assert!(view.get("suggestion").is_none(), "never charged: nothing to suggest from: {view}");
    let t = now() - 3_600;
    // 40 charges within 59 s, then 30 spread over ten minutes; and 100 in one second 25 hours ago.
    let times =
        (0..40).map(|i| t + i * 59 / 39).chain((0..30).map(|i| t + 120 + i * 20)).chain((0..100).map(|_| t - 86_400));
    for (n, at) in times.enumerate() {
        let entry = UsageEntry {
            at,
            session_key: key,
            owner: owner.address(),
            kind: UsageKind::Charge,
            amount: Usdc::from_base_units(2_000),
            route: "POST /v1/chat".to_owned(),
            request_id: format!("r{n}"),
            voucher: opentab_core::U256::from(2_000 * (n as u64 + 1)),
            signature: Some(SigningKey::random().sign_digest(&opentab_core::B256::repeat_byte(1))),
            idempotency: None,
            void_of: None,
            epoch: None,
        };
        api.store.record_usage(&entry).await?;
    }
    let (status, view, _) = api.call("GET", &uri, Some(&token), None).await?;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["suggestion"], json!({ "callsPerMinute": 60, "busiestMinute": 40 }), "{view}");
    let (_, owner_view, _) = api.call("GET", "/api/rules", Some(&token), None).await?;
    assert!(owner_view.get("suggestion").is_none(), "suggestions are per key");
    Ok(())
}
