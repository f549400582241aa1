//! The gateway's decision for one paid request: read the payment, check the key, verify the
//! voucher, charge it atomically (DESIGN §3). Storage and counters are ports, so the same
//! logic runs embedded (in-process) and in production (database + Redis).

use std::future::Future;

use opentab_core::charge::{ChargeRefused, ChargeRequest, Charged, CounterEpoch};
use opentab_core::{Address, B256, ContractDomain, KeyStatus, SessionKey, Usdc, Voucher, keccak256};

use crate::pricing::PricedRoute;
use crate::protocol::{
    Eip712Info, ErrorCode, PaymentPayload, PaymentReceipt, PaymentRequired, PaymentResponse, Requirements, Resource,
    SCHEME, SessionExtra, X402_VERSION,
};

/// What the gateway needs to know about a key at the moment of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key's terms and on-chain state.
    pub key: SessionKey,
    /// Frozen off-chain (by the owner's request or the rule engine) ahead of the chain.
    pub frozen_offchain: bool,
    /// The owner's tab with this payee, less its pending withdrawal.
    pub tab_available: Usdc,
    /// What the chain has settled across the owner's keys with this key's payee (read with the
    /// tab, so the two agree: see `opentab_core::charge`).
    pub owner_settled: Usdc,
}

/// Where key state comes from (the database, with a cache, in production).
pub trait KeyDirectory: Send + Sync {
    /// The key, or `None` if it is not registered. An error means the state is unknown: the
    /// gateway then fails closed.
    fn key(&self, key: Address) -> impl Future<Output = Result<Option<KeyInfo>, Unavailable>> + Send;
}

/// Per-key and per-owner counters with an atomic charge (in-process or Redis).
pub trait CounterStore: Send + Sync {
    /// Runs the charge rule atomically for `key` of `owner`.
    fn charge(
        &self,
        key: Address,
        owner: Address,
        request: ChargeRequest,
    ) -> impl Future<Output = Result<Result<Charged, ChargeRefused>, Unavailable>> + Send;

    /// Undoes a charge of `price`, as atomically, and frees its idempotency key (a retry of a
    /// call that failed is charged again).
    ///
    /// With `at`, only counters of that epoch give the price back: counters rebuilt since
    /// counted from the ledger already; counters older than `at` are rebuilt from the ledger
    /// first (they missed a rebuild: a zero `price` only brings them up to date). `None` gives
    /// it back whatever the epoch (stores that never rebuild while serving).
    fn void(
        &self,
        key: Address,
        owner: Address,
        price: Usdc,
        idempotency: Option<B256>,
        at: Option<CounterEpoch>,
    ) -> impl Future<Output = Result<(), Unavailable>> + Send;

    /// Marks `id` (in `owner`'s slot) as used for `ttl_secs`: true the first time only. What
    /// makes a charge API void count once, whichever gateway node it reaches.
    fn claim(&self, owner: Address, id: B256, ttl_secs: u64) -> impl Future<Output = Result<bool, Unavailable>> + Send;

    /// Gives a [`CounterStore::claim`] back, so a void that failed after it can be retried.
    fn release(&self, owner: Address, id: B256) -> impl Future<Output = Result<(), Unavailable>> + Send;

    /// Drops idempotency key `id` of `key` if it was charged at least `older_than` ago (the
    /// ledger has no charge for it: the gateway that took it died before recording it), with
    /// the counters that may hold that charge; true if it is gone. Stores that lose their
    /// idempotency keys with their process (in-process) never hold such a key: false.
    fn drop_stale_idempotency(
        &self,
        key: Address,
        owner: Address,
        id: B256,
        older_than: std::time::Duration,
    ) -> impl Future<Output = Result<bool, Unavailable>> + Send;
}

impl<T: KeyDirectory> KeyDirectory for std::sync::Arc<T> {
    fn key(&self, key: Address) -> impl Future<Output = Result<Option<KeyInfo>, Unavailable>> + Send {
        self.as_ref().key(key)
    }
}

impl<T: CounterStore> CounterStore for std::sync::Arc<T> {
    fn charge(
        &self,
        key: Address,
        owner: Address,
        request: ChargeRequest,
    ) -> impl Future<Output = Result<Result<Charged, ChargeRefused>, Unavailable>> + Send {
        self.as_ref().charge(key, owner, request)
    }

    fn void(
        &self,
        key: Address,
        owner: Address,
        price: Usdc,
        idempotency: Option<B256>,
        at: Option<CounterEpoch>,
    ) -> impl Future<Output = Result<(), Unavailable>> + Send {
        self.as_ref().void(key, owner, price, idempotency, at)
    }

    fn claim(&self, owner: Address, id: B256, ttl_secs: u64) -> impl Future<Output = Result<bool, Unavailable>> + Send {
        self.as_ref().claim(owner, id, ttl_secs)
    }

    fn release(&self, owner: Address, id: B256) -> impl Future<Output = Result<(), Unavailable>> + Send {
        self.as_ref().release(owner, id)
    }

    fn drop_stale_idempotency(
        &self,
        key: Address,
        owner: Address,
        id: B256,
        older_than: std::time::Duration,
    ) -> impl Future<Output = Result<bool, Unavailable>> + Send {
        self.as_ref().drop_stale_idempotency(key, owner, id, older_than)
    }
}

/// Whether a ledger record charges or voids (one type with the store's).
pub use opentab_core::charge::UsageKind;

/// One charge or void, as the durable ledger records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord {
    /// Unix seconds.
    pub at: u64,
    /// The paying key.
    pub key: Address,
    /// Its owner.
    pub owner: Address,
    /// Charge or void.
    pub kind: UsageKind,
    /// The price.
    pub amount: Usdc,
    /// `METHOD /pattern` of the route.
    pub route: String,
    /// The request (`x-request-id`, or one the gateway made up).
    pub request_id: String,
    /// The voucher presented.
    pub voucher: opentab_core::U256,
    /// Its signature (charges).
    pub signature: Option<opentab_core::Signature>,
    /// The request's hashed idempotency key ([`idempotency_hash`]), if it had one: kept so
    /// counters rebuilt from the ledger still refuse a retry that was charged.
    pub idempotency: Option<B256>,
    /// For a void, the id of the charge it undoes (recorded once however often it is voided).
    pub void_of: Option<B256>,
    /// The counters' epoch the charge was taken on, if its store rebuilds while serving.
    pub epoch: Option<CounterEpoch>,
}

/// What the ledger did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Durable. For a record that named an epoch: the epochs the ledger held as it committed
    /// (the counters a void gives its price back to).
    Held(Option<CounterEpoch>),
    /// A charge refused: its key was frozen or revoked when the row would have committed (a
    /// change made on another node that this node's cache had not heard of yet). Voids are
    /// always held.
    KeyStopped,
    /// A charge refused: the counters it was taken on were rebuilt from the ledger before its
    /// row could commit, so they never counted it (the epochs the ledger holds).
    Fenced(CounterEpoch),
    /// A void of a charge voided already (a retry, or a spooled void replayed): it moves
    /// nothing.
    AlreadyVoided,
    /// A void the database could not take, kept on this node's disk until it can: the
    /// counters give its price back when it reaches the ledger (until then they over-count,
    /// which refuses calls, never serves one unpaid).
    Spooled,
}

/// The durable usage ledger: every charge is recorded before the call is served, so a crash
/// after answering loses nothing; counters are rebuilt from it on start.
pub trait UsageLedger: Send + Sync {
    /// Appends `record`, durably, before returning (or refuses a charge of a stopped key).
    fn record(&self, record: UsageRecord) -> impl Future<Output = Result<Recorded, Unavailable>> + Send;

    /// Whether a charge of `key` under idempotency key `id` stands in the ledger (recorded,
    /// not voided): what tells a retried request that was paid for from one whose first
    /// attempt died before it was recorded.
    fn stands(&self, key: Address, id: B256) -> impl Future<Output = Result<bool, Unavailable>> + Send;
}

impl<T: UsageLedger> UsageLedger for std::sync::Arc<T> {
    fn record(&self, record: UsageRecord) -> impl Future<Output = Result<Recorded, Unavailable>> + Send {
        self.as_ref().record(record)
    }

    fn stands(&self, key: Address, id: B256) -> impl Future<Output = Result<bool, Unavailable>> + Send {
        self.as_ref().stands(key, id)
    }
}

/// A charge or a void the ledger holds, as whoever watches spending (the rule engine) sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeEvent {
    /// Unix seconds.
    pub at: u64,
    /// The paying key.
    pub key: Address,
    /// Its owner.
    pub owner: Address,
    /// Charge or void.
    pub kind: UsageKind,
    /// The price charged or given back.
    pub amount: Usdc,
    /// `METHOD /pattern` of the route charged.
    pub route: String,
    /// What the key has been served, this charge included, as the counters say (charges).
    pub served: Usdc,
    /// The key's spend limit.
    pub limit: Usdc,
    /// The key's charges in the last minute, this one included, as the shared counters count
    /// them across gateways (charges on Redis); `None`: the observer counts what it sees.
    pub recent_calls: Option<u32>,
}

/// Consumes charge events. The gateway awaits [`ChargeObserver::observe`] once a charge or void
/// is durable and before the call's answer leaves, so a decision it takes (a freeze) holds for
/// the key's very next call; whatever it must tell the world leaves through an outbox, not here.
pub trait ChargeObserver: Send + Sync + std::fmt::Debug {
    /// Takes `event` into account. It cannot fail the charge, which is durable already.
    fn observe(&self, event: ChargeEvent) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

pub use crate::error::Unavailable;

/// The fixed facts of one gateway: who is paid, on which chain, through which validator.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The validator's EIP-712 domain (chain id and address included).
    pub domain: ContractDomain,
    /// The USDC token.
    pub asset: Address,
    /// The payee every voucher must name.
    pub pay_to: Address,
    /// `maxTimeoutSeconds` of the requirements.
    pub max_timeout_seconds: u64,
}

impl GatewayConfig {
    /// The CAIP-2 network, `eip155:<chainId>`.
    pub fn network(&self) -> String {
        format!("eip155:{}", self.domain.chain_id())
    }

    /// The `accepts` entry for a route.
    pub fn requirements(&self, route: &PricedRoute) -> Requirements {
        Requirements {
            scheme: SCHEME.into(),
            network: self.network(),
            amount: route.price,
            asset: self.asset,
            pay_to: self.pay_to,
            max_timeout_seconds: self.max_timeout_seconds,
            extra: SessionExtra {
                validator: self.domain.verifying_contract(),
                eip712: Eip712Info { name: self.domain.name().into(), version: self.domain.version().into() },
            },
        }
    }

    /// The 402 body and header for `route` at `url`, with the refusal if there was one.
    pub fn challenge(&self, route: &PricedRoute, url: &str, refusal: Option<&Refusal>) -> PaymentRequired {
        PaymentRequired {
            x402_version: X402_VERSION,
            error: refusal.map(|r| r.code),
            message: refusal.map(|r| r.message.clone()),
            resource: Resource {
                url: url.to_owned(),
                description: format!("{} {}", route.method, route.pattern),
                mime_type: "application/json".into(),
            },
            accepts: vec![self.requirements(route)],
        }
    }
}

/// Why a payment was refused: a stable code and a readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The `error` of the 402.
    pub code: ErrorCode,
    /// The `message` of the 402.
    pub message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// What a charge outcome is.
#[derive(Debug)]
pub enum Decision {
    /// Charged: serve the call, then void if it fails. (Boxed: it is the large variant.)
    Paid(Box<Paid>),
    /// Refused: answer 402 with this.
    Refused(Refusal),
    /// The state could not be read or written: answer 503, serve nothing.
    Unavailable(Unavailable),
}

/// A charge that went through.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Paid {
    /// The voucher that paid, for the ledger.
    pub voucher: opentab_core::U256,
    /// Its signature.
    pub signature: opentab_core::Signature,
    /// The paying key.
    pub key: Address,
    /// Its owner.
    pub owner: Address,
    /// What was charged (to void if the handler fails).
    pub price: Usdc,
    /// The key's spend limit (for the rule engine).
    #[serde(default)]
    pub limit: Usdc,
    /// The idempotency key it was charged under (freed by a void).
    pub idempotency: Option<B256>,
    /// The counters' epoch it was taken on (see [`CounterEpoch`]).
    #[serde(default)]
    pub epoch: Option<CounterEpoch>,
    /// The key's charges in the last minute across gateways, if the counters count them.
    #[serde(default)]
    pub recent_calls: Option<u32>,
    /// The receipt for `PAYMENT-RESPONSE`.
    pub response: PaymentResponse,
}

/// How long an idempotency key is remembered: longer than any client's retry horizon.
pub const IDEMPOTENCY_TTL_SECS: u64 = 24 * 3600;

/// Unix seconds now.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// An idempotency key as the counter stores keep it: scoped to the session key, hashed to a
/// fixed size.
pub fn idempotency_hash(key: Address, id: &str) -> B256 {
    keccak256([key.as_slice(), id.as_bytes()].concat())
}

/// Decides one paid request. `payment` is the decoded header; `idempotency` the request's
/// idempotency key (already checked), if any.
pub async fn decide<D: KeyDirectory, C: CounterStore>(
    config: &GatewayConfig,
    directory: &D,
    counters: &C,
    route: &PricedRoute,
    payment: &PaymentPayload,
    idempotency: Option<&str>,
    now: u64,
) -> Decision {
    let network = config.network();
    if payment.accepted.network != network {
        let msg = format!("this API is paid on {network}, not {}", payment.accepted.network);
        return Decision::Refused(Refusal::new(ErrorCode::WrongNetwork, msg));
    }
    if payment.accepted.pay_to != config.pay_to {
        let msg = format!("this API is paid to {}, not {}", config.pay_to, payment.accepted.pay_to);
        return Decision::Refused(Refusal::new(ErrorCode::WrongPayee, msg));
    }
    let p = &payment.payload;
    // The signature before anything that costs I/O: a junk payment costs one recovery and no
    // lookup. The voucher must name this payee; hashing with the configured payee checks that.
    let digest = config.domain.digest(&Voucher::new(p.session_key, config.pay_to, p.cumulative_amount));
    match p.signature.recover(&digest) {
        Ok(signer) if signer == p.session_key => {}
        _ => {
            let msg = format!("the signature is not session key {}'s over this voucher", p.session_key);
            return Decision::Refused(Refusal::new(ErrorCode::InvalidSignature, msg));
        }
    }
    let info = match directory.key(p.session_key).await {
        Ok(Some(info)) => info,
        Ok(None) => {
            return Decision::Refused(Refusal::new(
                ErrorCode::UnknownKey,
                format!("session key {} is not registered", p.session_key),
            ));
        }
        Err(err) => return Decision::Unavailable(err),
    };
    let key = &info.key;
    if key.payee != config.pay_to {
        let msg = format!("session key {} may only pay {}", key.address, key.payee);
        return Decision::Refused(Refusal::new(ErrorCode::WrongPayee, msg));
    }
    let refused_status = match (info.frozen_offchain, key.status(now)) {
        (_, KeyStatus::Revoked) => Some((ErrorCode::KeyRevoked, "is revoked")),
        (true, _) | (_, KeyStatus::Frozen) => Some((ErrorCode::KeyFrozen, "is frozen")),
        (_, KeyStatus::Expired) => Some((ErrorCode::KeyExpired, "has expired")),
        (_, KeyStatus::NotYetValid) => Some((ErrorCode::KeyExpired, "is not valid yet")),
        (_, KeyStatus::Active) => None,
    };
    if let Some((code, what)) = refused_status {
        return Decision::Refused(Refusal::new(code, format!("session key {} {what}", key.address)));
    }
    let request = ChargeRequest {
        price: route.price,
        voucher: p.cumulative_amount,
        signature: p.signature,
        limit: key.limit,
        tab_available: info.tab_available,
        owner_settled: info.owner_settled,
        idempotency: idempotency.map(|id| idempotency_hash(key.address, id)),
    };
    match counters.charge(key.address, key.owner, request).await {
        Ok(Ok(charged)) => Decision::Paid(Box::new(Paid {
            voucher: p.cumulative_amount,
            signature: p.signature,
            key: key.address,
            owner: key.owner,
            price: route.price,
            limit: key.limit,
            idempotency: request.idempotency,
            epoch: charged.epoch,
            recent_calls: charged.recent_calls,
            response: PaymentResponse {
                success: true,
                payer: key.owner,
                network,
                receipt: PaymentReceipt {
                    session_key: key.address,
                    charged: charged.charged,
                    served: charged.served,
                    remaining: charged.remaining,
                },
            },
        })),
        Ok(Err(refused)) => {
            let code = match refused {
                ChargeRefused::VoucherTooLow { .. } => ErrorCode::VoucherTooLow,
                ChargeRefused::LimitExceeded { .. } => ErrorCode::LimitExceeded,
                ChargeRefused::InsufficientFunds { .. } => ErrorCode::InsufficientFunds,
                ChargeRefused::DuplicatePayment => ErrorCode::DuplicatePayment,
            };
            Decision::Refused(Refusal::new(code, refused.to_string()))
        }
        Err(err) => Decision::Unavailable(err),
    }
}
