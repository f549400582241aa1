//! Counters in Redis for production: each charge and void is one Lua script, so it is atomic
//! across any number of gateway nodes. Names are hash-tagged by tab (`{prefix:0xowner}`, the
//! prefix carrying the payee), so a key's counters and its owner's served total with the payee
//! live in one Redis Cluster slot.
//!
//! If Redis loses data (a restart without persistence, a failover, `FLUSHALL`), a key's hash
//! or its owner's total is missing. With a [`CounterSource`] (the durable usage ledger) the
//! charge script then refuses to guess: the counters are rebuilt from the source and the charge
//! runs again. Nothing served is lost, and a replayed voucher still buys nothing, because
//! `served` comes back; the key's idempotency keys whose charges stand come back with it, so a
//! retried request is not charged twice either.
//!
//! Every rebuild raises the counters' epochs in the source as it reads it ([`CounterEpoch`]):
//! the rebuilt counters carry them, each charge reports the epochs it was taken on, and the
//! ledger refuses a charge taken on counters a rebuild has replaced (the rebuild read a ledger
//! without it). Counters are restored only over older ones, so the newest read wins whatever
//! order concurrent rebuilds land in; a void gives its price back only to the counters of the
//! epoch that counted the charge.
//!
//! A script that gets no answer (a connection cut, a failover under way) may have run or not:
//! the key's counters and its owner's total (and the request's idempotency key) are then
//! dropped in the background, once Redis answers, and rebuilt from the ledger, which holds
//! exactly what was recorded. Until then they may over-count (refuse a call), never under-count.
//!
//! Lua numbers are doubles: amounts stay exact below 2^53 base units (9 billion USDC), so
//! limits and tabs are clamped there (nothing can be served past it anyway) and numbers are
//! printed with `%d`, never `tostring`. Vouchers, up to 2^256 − 1, are compared as zero-padded
//! 78-digit strings.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use opentab_core::charge::{ChargeRefused, ChargeRequest, Charged, CounterEpoch, KeyCounters};
use opentab_core::{Address, B256, Signature, U256, Usdc};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use crate::error::{Cause, CounterError};
use crate::gateway::{CounterStore, Unavailable};

/// The largest integer a Lua number holds exactly.
const LUA_EXACT: u64 = (1 << 53) - 1;

/// The charge rule of `opentab_core::charge`, in Lua. KEYS: key hash, owner hash, the key's
/// charges of the last minute (a sorted set scored by Redis's clock in milliseconds: the rate
/// rule's count, whichever gateway charged) and, when the request has one, its idempotency key
/// (set for `ARGV[7]` seconds once charged). ARGV: price, voucher (78 digits), signature,
/// limit, owner budget (tab available + settled), "1" if missing counters must be rebuilt
/// rather than read as zero. Answers `ok` with the served total, what is left, the key's and
/// owner's epochs and the key's charges in the last minute.
const CHARGE: &str = r"
if ARGV[6] == '1' then
  local key_missing = redis.call('EXISTS', KEYS[1]) == 0
  local owner_missing = redis.call('EXISTS', KEYS[2]) == 0
  if key_missing or owner_missing then
    return {'missing', key_missing and '1' or '0', owner_missing and '1' or '0'}
  end
end
if #KEYS > 3 and redis.call('EXISTS', KEYS[4]) == 1 then return {'duplicate'} end
local k = redis.call('HMGET', KEYS[1], 'served', 'best', 'epoch')
local served = tonumber(k[1] or '0')
local best = k[2] or string.rep('0', 78)
local price = tonumber(ARGV[1])
local voucher = ARGV[2]
local limit = tonumber(ARGV[4])
local needed = served + price
local top = best
if voucher > best then top = voucher end
if top < string.format('%078d', needed) then return {'voucher_too_low', string.format('%d', needed), top} end
if needed > limit then return {'limit_exceeded', string.format('%d', needed), string.format('%d', limit)} end
local o = redis.call('HMGET', KEYS[2], 'served', 'epoch')
local owner_served = tonumber(o[1] or '0')
local free = tonumber(ARGV[5]) - owner_served
if free < 0 then free = 0 end
if free < price then return {'insufficient_funds', string.format('%d', free), ARGV[1]} end
redis.call('HSET', KEYS[1], 'served', string.format('%d', needed))
if voucher > best or (voucher == best and redis.call('HEXISTS', KEYS[1], 'sig') == 0) then
  redis.call('HSET', KEYS[1], 'best', voucher, 'sig', ARGV[3])
end
redis.call('HINCRBY', KEYS[2], 'served', ARGV[1])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if #KEYS > 3 then redis.call('SET', KEYS[4], string.format('%d', now_ms), 'EX', ARGV[7]) end
redis.call('ZADD', KEYS[3], now_ms, t[1] .. '.' .. t[2] .. ':' .. string.format('%d', needed))
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now_ms - 60000)
local recent = redis.call('ZCARD', KEYS[3])
if recent > RECENT_CAP then
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, recent - RECENT_CAP - 1)
  recent = RECENT_CAP
end
redis.call('PEXPIRE', KEYS[3], 61000)
return {'ok', string.format('%d', needed), string.format('%d', limit - needed), k[3] or '0', o[2] or '0',
  string.format('%d', recent)}
";

/// The most charges of one key the last-minute count holds: far past any rate threshold, and a
/// bound on its memory however hot the key.
const RECENT_CAP: u32 = 10_000;

/// Rebuild: sets the key's counters, and the owner's total when it was read, from the durable
/// source, each only over counters of an older epoch (or none): the newest read wins, whatever
/// order concurrent rebuilds land in. ARGV: served, best (78 digits), signature ('' if none),
/// the key's epoch, the owner's served total and epoch ('' when the owner's total was not
/// read). KEYS[3..] are the key's standing idempotency keys, restored with the key's counters
/// for ARGV[7..] seconds each. Returns 1 if it set anything (0: a newer rebuild landed first).
const RESTORE: &str = r"
local set = 0
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch or tonumber(epoch) < tonumber(ARGV[4]) then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'served', ARGV[1], 'best', ARGV[2], 'epoch', ARGV[4])
  if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'sig', ARGV[3]) end
  for i = 3, #KEYS do redis.call('SET', KEYS[i], '1', 'EX', ARGV[i + 4], 'NX') end
  set = 1
end
if ARGV[5] ~= '' then
  local owner_epoch = redis.call('HGET', KEYS[2], 'epoch')
  if not owner_epoch or tonumber(owner_epoch) < tonumber(ARGV[6]) then
    redis.call('HSET', KEYS[2], 'served', ARGV[5], 'epoch', ARGV[6])
    set = 1
  end
end
return set
";

/// Void: the key's and the owner's served go down by the price, never below zero; with epochs
/// (ARGV[3], ARGV[4]: '' for any), only counters of those epochs. ARGV: price, "1" if missing
/// counters must be rebuilt first, key epoch, owner epoch. KEYS[3], if given, is the charge's
/// idempotency key, freed so a retry of the failed call is charged. Answers `ok`, or, changing
/// nothing but the idempotency key, `missing` or `stale` (counters older than the epochs given:
/// a rebuild they missed) with whether the key's and the owner's counters need rebuilding.
const VOID: &str = r"
if #KEYS > 2 then redis.call('DEL', KEYS[3]) end
local k = redis.call('HMGET', KEYS[1], 'served', 'epoch')
local o = redis.call('HMGET', KEYS[2], 'served', 'epoch')
if ARGV[2] == '1' then
  local key_missing = redis.call('EXISTS', KEYS[1]) == 0
  local owner_missing = redis.call('EXISTS', KEYS[2]) == 0
  if key_missing or owner_missing then
    return {'missing', key_missing and '1' or '0', owner_missing and '1' or '0'}
  end
  local key_stale = ARGV[3] ~= '' and tonumber(k[2] or '0') < tonumber(ARGV[3])
  local owner_stale = ARGV[4] ~= '' and tonumber(o[2] or '0') < tonumber(ARGV[4])
  if key_stale or owner_stale then
    return {'stale', key_stale and '1' or '0', owner_stale and '1' or '0'}
  end
end
local price = tonumber(ARGV[1])
if ARGV[3] == '' or (k[2] or '0') == ARGV[3] then
  redis.call('HSET', KEYS[1], 'served', string.format('%d', math.max(tonumber(k[1] or '0') - price, 0)))
end
if ARGV[4] == '' or (o[2] or '0') == ARGV[4] then
  redis.call('HSET', KEYS[2], 'served', string.format('%d', math.max(tonumber(o[1] or '0') - price, 0)))
end
return {'ok'}
";

/// Drops an idempotency key charged at least `ARGV[1]` ms ago (by Redis's clock; its value is
/// when), with the key's counters and its owner's total, so they are rebuilt from the ledger.
/// KEYS: the idempotency key, the key's hash, the owner's hash. Returns 1 if it is gone now.
const DROP_STALE: &str = r"
local charged = redis.call('GET', KEYS[1])
if not charged then return 1 end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now_ms - (tonumber(charged) or 0) < tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return 1
";

/// Releases a rebuild lock if it is still the caller's (KEYS[1]: the lock, ARGV[1]: its token).
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// How long a rebuild lock holds if its holder dies before releasing it (long enough for a slow
/// database: a second rebuild while the first is still reading would fence its charges off).
const REBUILD_LOCK: Duration = Duration::from_secs(15);
/// How long a charge waits for another gateway's rebuild before it fails closed (503).
const REBUILD_WAIT: Duration = Duration::from_secs(5);
/// How often a waiting charge looks again.
const REBUILD_POLL: Duration = Duration::from_millis(5);

/// What counters are rebuilt from when Redis lost them: the durable usage ledger.
pub trait CounterSource: Send + Sync + 'static {
    /// `key`'s counters and its standing idempotency keys as the ledger has them, and, when
    /// `with_owner` (Redis lacks it too), its owner's served total (a sum over every key of the
    /// owner: read only when needed), with the epochs raised by this read (see the module
    /// docs): one transaction in the source.
    fn counters(&self, key: Address, owner: Address, with_owner: bool) -> SourceFuture<'_>;
}

/// What a key's counters are rebuilt from.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    /// The key's counters.
    pub counters: KeyCounters,
    /// What its owner's keys were served in all, when it was asked for.
    pub owner_served: Option<Usdc>,
    /// Hashed idempotency keys whose charges stand, with when each expires (Unix seconds).
    pub idempotency: Vec<(B256, u64)>,
    /// The epochs the source raised as it read (the owner's only when its total was read).
    pub epoch: CounterEpoch,
}

/// The future of [`CounterSource::counters`].
pub type SourceFuture<'a> = Pin<Box<dyn Future<Output = Result<Restored, Unavailable>> + Send + 'a>>;

/// Counters in Redis (see the module docs).
#[derive(Clone)]
pub struct RedisCounters {
    conn: Conn,
    prefix: String,
    charge: Script,
    restore: Script,
    void: Script,
    unlock: Script,
    drop_stale: Script,
    /// Counters a failed script may have left wrong, to drop (with a source only).
    repairs: Option<Arc<Repairs>>,
    source: Option<Arc<dyn CounterSource>>,
}

impl std::fmt::Debug for RedisCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCounters").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

/// One Redis, or a Redis Cluster (each script runs on the node holding its tab's slot).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

/// The scheme of a Redis Cluster's address: `redis+cluster://host:port,host:port,…` (any of its
/// nodes; the client learns the rest and follows failovers).
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

impl RedisCounters {
    /// Connects to `url`, `redis://host:port` for one Redis or `redis+cluster://host:port,…`
    /// for a Redis Cluster; every key name starts with `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, Unavailable> {
        let bad = |reason: String| CounterError::BadUrl { url: opentab_core::redact_url(url), reason };
        let conn = match url.strip_prefix(CLUSTER_SCHEME) {
            Some(nodes) => {
                let nodes: Vec<String> = nodes
                    .split(',')
                    .filter(|n| !n.trim().is_empty())
                    .map(|n| format!("redis://{}", n.trim()))
                    .collect();
                if nodes.is_empty() {
                    return Err(bad("it names no node".into()).into());
                }
                let client = redis::cluster::ClusterClientBuilder::new(nodes)
                    .connection_timeout(Duration::from_secs(2))
                    .response_timeout(Duration::from_secs(2))
                    .retries(2)
                    .build()
                    .map_err(|e| bad(e.to_string()))?;
                Conn::Cluster(client.get_async_connection().await.map_err(unavailable)?)
            }
            None => {
                let client = redis::Client::open(url).map_err(|e| bad(e.to_string()))?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(2)))
                    .set_number_of_retries(1);
                Conn::Single(ConnectionManager::new_with_config(client, config).await.map_err(unavailable)?)
            }
        };
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            charge: Script::new(&CHARGE.replace("RECENT_CAP", &RECENT_CAP.to_string())),
            restore: Script::new(RESTORE),
            void: Script::new(VOID),
            unlock: Script::new(UNLOCK),
            drop_stale: Script::new(DROP_STALE),
            repairs: None,
            source: None,
        })
    }

    /// The prefix every key name starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Rebuilds lost counters from `source` before charging (production must set one: without
    /// it, lost counters read as zero).
    pub fn with_source(mut self, source: Arc<dyn CounterSource>) -> Self {
        self.source = Some(source);
        let repairs = Arc::new(Repairs::default());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(repair(self.conn.clone(), Arc::downgrade(&repairs)));
        }
        self.repairs = Some(repairs);
        self
    }

    /// Remembers that a charge or void script on `key`'s counters failed without an answer:
    /// it may have run or not. The repair task drops the key's counters and its owner's total
    /// (and the request's idempotency key), so that they are rebuilt from the ledger, which
    /// holds exactly what was recorded; until then they may over-count, never under-count.
    fn note_unsure(&self, key: Address, owner: Address, idempotency: Option<B256>) {
        let Some(repairs) = &self.repairs else { return };
        let (hash, total) = self.names(key, owner);
        let mut names = vec![hash, total];
        names.extend(idempotency.map(|id| self.idempotency_name(owner, id)));
        tracing::warn!(%key, "a counter script got no answer: the key's counters will be rebuilt from the ledger");
        if let Ok(mut pending) = repairs.pending.lock() {
            pending.push(names);
        }
    }

    /// Rebuilds `key`'s counters, and `owner`'s total if `with_owner`, from the source, where
    /// they are missing or older than `at`; false if another gateway is rebuilding them now
    /// (each rebuild fences off the charges taken on the counters before it: racing rebuilds
    /// would fence off each other's). The lock is the owner's for its total, the key's
    /// otherwise, and lapses after [`REBUILD_LOCK`] if its holder died. Once the lock is taken
    /// the counters are looked at again: the rebuild that held it last may have just landed.
    async fn rebuild(
        &self,
        key: Address,
        owner: Address,
        with_owner: bool,
        at: Option<CounterEpoch>,
    ) -> Result<bool, Unavailable> {
        let Some(source) = &self.source else { return Ok(true) };
        let tag = self.tag(owner);
        let lock = match with_owner {
            true => format!("{tag}:rebuilding"),
            false => format!("{tag}:rebuilding:{key:#x}"),
        };
        let token = lock_token();
        let mut conn = self.conn.clone();
        let taken: Option<String> = redis::cmd("SET")
            .arg(&lock)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(REBUILD_LOCK.as_millis() as u64)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if taken.is_none() {
            return Ok(false);
        }
        let rebuilt = match self.needs_rebuild(key, owner, with_owner, at).await {
            Ok(Some(with_owner)) => self.rebuild_locked(source.as_ref(), key, owner, with_owner).await,
            Ok(None) => Ok(()),
            Err(err) => Err(err),
        };
        let released: Result<i64, _> = self.unlock.key(&lock).arg(&token).invoke_async(&mut conn).await;
        if let Err(err) = released {
            tracing::warn!(error = %err, "could not release the rebuild lock: it lapses by itself");
        }
        rebuilt.map(|()| true)
    }

    /// Whether the counters still need a rebuild, and whether the owner's total does: `None`
    /// when they are there and not older than `at`.
    async fn needs_rebuild(
        &self,
        key: Address,
        owner: Address,
        with_owner: bool,
        at: Option<CounterEpoch>,
    ) -> Result<Option<bool>, Unavailable> {
        let (hash, total) = self.names(key, owner);
        let mut conn = self.conn.clone();
        let (key_epoch, owner_epoch): (Option<u64>, Option<u64>) = redis::pipe()
            .hget(&hash, "epoch")
            .hget(&total, "epoch")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let stale = |epoch: Option<u64>, wanted: Option<u64>| epoch.is_none_or(|e| wanted.is_some_and(|w| e < w));
        let owner_needed = with_owner && stale(owner_epoch, at.map(|a| a.owner));
        let key_needed = stale(key_epoch, at.map(|a| a.key));
        Ok((key_needed || owner_needed).then_some(owner_needed))
    }

    async fn rebuild_locked(
        &self,
        source: &dyn CounterSource,
        key: Address,
        owner: Address,
        with_owner: bool,
    ) -> Result<(), Unavailable> {
        let Restored { counters, owner_served, idempotency, epoch } = source.counters(key, owner, with_owner).await?;
        let (hash, total) = self.names(key, owner);
        let mut conn = self.conn.clone();
        let mut invocation = self.restore.key(&hash);
        invocation.key(&total);
        let now = crate::gateway::unix_now();
        let live: Vec<(B256, u64)> =
            idempotency.into_iter().filter(|&(_, expires)| expires > now).map(|(id, e)| (id, e - now)).collect();
        for (id, _) in &live {
            invocation.key(self.idempotency_name(owner, *id));
        }
        invocation
            .arg(counters.served.base_units())
            .arg(format!("{:0>78}", counters.best))
            .arg(counters.best_signature.map(|s| s.to_string()).unwrap_or_default())
            .arg(epoch.key)
            .arg(owner_served.map(|served| served.base_units().to_string()).unwrap_or_default())
            .arg(if owner_served.is_some() { epoch.owner.to_string() } else { String::new() });
        for (_, ttl) in &live {
            invocation.arg(*ttl);
        }
        let set: i64 = invocation.invoke_async(&mut conn).await.map_err(unavailable)?;
        if set == 1 {
            tracing::warn!(%key, %owner, served = %counters.served, idempotency_keys = live.len(), key_epoch = epoch.key, "gateway counters were missing or stale in Redis: rebuilt from the usage ledger");
        }
        Ok(())
    }

    /// The key's hash and its owner's (`served`, `epoch`), in the owner's slot.
    fn names(&self, key: Address, owner: Address) -> (String, String) {
        let tag = self.tag(owner);
        (format!("{tag}:key:{key:#x}"), format!("{tag}:owner"))
    }

    /// The hash tag of the tab (owner, payee: the prefix carries the payee): every name one
    /// charge touches is in its slot, so each script runs on one Redis Cluster node.
    fn tag(&self, owner: Address) -> String {
        format!("{{{}:{owner:#x}}}", self.prefix)
    }

    /// A `KEYS`/`SCAN` pattern matching every name these counters use.
    pub fn pattern(&self) -> String {
        format!("{{{}:*", self.prefix)
    }

    /// A key's counters (zero if it was never charged).
    pub async fn key(&self, key: Address, owner: Address) -> Result<KeyCounters, Unavailable> {
        let (hash, _) = self.names(key, owner);
        let mut conn = self.conn.clone();
        let (served, best, sig): (Option<u64>, Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(&hash)
            .arg("served")
            .arg("best")
            .arg("sig")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(KeyCounters {
            served: Usdc::from_base_units(served.unwrap_or_default()),
            best: best
                .map(|b| U256::from_str_radix(&b, 10))
                .transpose()
                .map_err(|e| CounterError::Unexpected(e.to_string()))?
                .unwrap_or_default(),
            best_signature: sig
                .map(|s| s.parse::<Signature>())
                .transpose()
                .map_err(|e| CounterError::Unexpected(e.to_string()))?,
        })
    }

    /// What an owner's keys have been served in all.
    pub async fn owner_served(&self, owner: Address) -> Result<Usdc, Unavailable> {
        let (_, total) = self.names(Address::ZERO, owner);
        let mut conn = self.conn.clone();
        let value: Option<u64> = conn.hget(&total, "served").await.map_err(unavailable)?;
        Ok(Usdc::from_base_units(value.unwrap_or_default()))
    }
}

impl CounterStore for RedisCounters {
    async fn charge(
        &self,
        key: Address,
        owner: Address,
        req: ChargeRequest,
    ) -> Result<Result<Charged, ChargeRefused>, Unavailable> {
        let unsure = |err: Unavailable| {
            self.note_unsure(key, owner, req.idempotency);
            err
        };
        let mut reply = self.charge_once(key, owner, &req).await.map_err(unsure)?;
        let waiting = std::time::Instant::now();
        while let Some(("missing", _, owner_too)) = split(&reply) {
            // Only the owner's total costs a sum over all its keys: read it only if it is gone.
            // One rebuild at a time; the others wait for it rather than fence its charges off.
            if !self.rebuild(key, owner, owner_too, None).await? {
                if waiting.elapsed() > REBUILD_WAIT {
                    return Err(CounterError::Rebuilding.into());
                }
                tokio::time::sleep(REBUILD_POLL).await;
            }
            reply = self.charge_once(key, owner, &req).await.map_err(unsure)?;
        }
        let num = |i: usize| -> Result<u64, Unavailable> {
            reply
                .get(i)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| CounterError::Unexpected(format!("charge reply {reply:?}")).into())
        };
        let usdc = |i: usize| num(i).map(Usdc::from_base_units);
        Ok(match reply.first().map(String::as_str) {
            Some("duplicate") => Err(ChargeRefused::DuplicatePayment),
            Some("ok") => Ok(Charged {
                charged: req.price,
                served: usdc(1)?,
                remaining: usdc(2)?,
                // Without a source there is no rebuild, hence no epoch to check.
                epoch: match self.source {
                    Some(_) => Some(CounterEpoch { key: num(3)?, owner: num(4)? }),
                    None => None,
                },
                recent_calls: Some(u32::try_from(num(5)?).unwrap_or(u32::MAX)),
            }),
            Some("voucher_too_low") => Err(ChargeRefused::VoucherTooLow {
                needed: usdc(1)?,
                signed: reply.get(2).and_then(|v| U256::from_str_radix(v, 10).ok()).unwrap_or_default(),
            }),
            Some("limit_exceeded") => Err(ChargeRefused::LimitExceeded { needed: usdc(1)?, limit: usdc(2)? }),
            Some("insufficient_funds") => {
                Err(ChargeRefused::InsufficientFunds { available: usdc(1)?, needed: usdc(2)? })
            }
            _ => return Err(CounterError::Unexpected(format!("charge reply {reply:?}")).into()),
        })
    }

    async fn void(
        &self,
        key: Address,
        owner: Address,
        price: Usdc,
        idempotency: Option<B256>,
        at: Option<CounterEpoch>,
    ) -> Result<(), Unavailable> {
        // Counters missing, or older than `at`, are rebuilt from the ledger, which counts the
        // void already (it is recorded before the counters move) or never held the charge (an
        // undo); their new epoch is past `at`, so the next pass gives nothing back. While
        // another node rebuilds, wait for its counters: they may be of epoch `at` exactly.
        let unsure = |err: Unavailable| {
            self.note_unsure(key, owner, idempotency);
            err
        };
        let mut reply = self.void_once(key, owner, price, idempotency, at).await.map_err(unsure)?;
        let waiting = std::time::Instant::now();
        while let Some(("missing" | "stale", _, owner_too)) = split(&reply) {
            if !self.rebuild(key, owner, owner_too, at).await? {
                if waiting.elapsed() > REBUILD_WAIT {
                    // They over-count the key until rebuilt: never unpaid.
                    tracing::warn!(%key, "the counters did not take a void: a rebuild elsewhere is taking long");
                    return Ok(());
                }
                tokio::time::sleep(REBUILD_POLL).await;
            }
            reply = self.void_once(key, owner, price, None, at).await.map_err(unsure)?;
        }
        Ok(())
    }

    async fn claim(&self, owner: Address, id: B256, ttl_secs: u64) -> Result<bool, Unavailable> {
        let mut conn = self.conn.clone();
        let name = format!("{}:claim:{id:x}", self.tag(owner));
        let set: Option<String> = redis::cmd("SET")
            .arg(&name)
            .arg("1")
            .arg("NX")
            .arg("EX")
            .arg(ttl_secs.max(1))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(set.is_some())
    }

    async fn release(&self, owner: Address, id: B256) -> Result<(), Unavailable> {
        let mut conn = self.conn.clone();
        let name = format!("{}:claim:{id:x}", self.tag(owner));
        let _: i64 = redis::cmd("DEL").arg(&name).query_async(&mut conn).await.map_err(unavailable)?;
        Ok(())
    }

    async fn drop_stale_idempotency(
        &self,
        key: Address,
        owner: Address,
        id: B256,
        older_than: Duration,
    ) -> Result<bool, Unavailable> {
        let (hash, total) = self.names(key, owner);
        let mut conn = self.conn.clone();
        let gone: i64 = self
            .drop_stale
            .key(self.idempotency_name(owner, id))
            .key(&hash)
            .key(&total)
            .arg(older_than.as_millis() as u64)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if gone == 1 {
            tracing::warn!(%key, "an idempotency key no ledger charge stands for (its gateway died before recording it) was dropped, and the key's counters with it");
        }
        Ok(gone == 1)
    }
}

impl RedisCounters {
    async fn void_once(
        &self,
        key: Address,
        owner: Address,
        price: Usdc,
        idempotency: Option<B256>,
        at: Option<CounterEpoch>,
    ) -> Result<Vec<String>, Unavailable> {
        let (hash, total) = self.names(key, owner);
        let mut conn = self.conn.clone();
        let mut invocation = self.void.key(&hash);
        invocation.key(&total);
        if let Some(id) = idempotency {
            invocation.key(self.idempotency_name(owner, id));
        }
        invocation
            .arg(price.base_units())
            .arg(if self.source.is_some() { "1" } else { "0" })
            .arg(at.map(|e| e.key.to_string()).unwrap_or_default())
            .arg(at.map(|e| e.owner.to_string()).unwrap_or_default())
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn charge_once(&self, key: Address, owner: Address, req: &ChargeRequest) -> Result<Vec<String>, Unavailable> {
        let (hash, total) = self.names(key, owner);
        let mut conn = self.conn.clone();
        let mut invocation = self.charge.key(&hash);
        invocation.key(&total);
        invocation.key(format!("{hash}:recent"));
        if let Some(id) = req.idempotency {
            invocation.key(self.idempotency_name(owner, id));
        }
        invocation
            .arg(req.price.base_units().min(LUA_EXACT))
            .arg(format!("{:0>78}", req.voucher))
            .arg(req.signature.to_string())
            .arg(req.limit.base_units().min(LUA_EXACT))
            .arg(req.owner_budget().base_units().min(LUA_EXACT))
            .arg(if self.source.is_some() { "1" } else { "0" })
            .arg(crate::gateway::IDEMPOTENCY_TTL_SECS)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)
    }

    /// The idempotency key's name, in the owner's slot.
    fn idempotency_name(&self, owner: Address, id: B256) -> String {
        format!("{}:idem:{id:x}", self.tag(owner))
    }
}

/// Names to drop: counters a script that got no answer may have left wrong.
#[derive(Debug, Default)]
struct Repairs {
    pending: std::sync::Mutex<Vec<Vec<String>>>,
}

/// How often the repair task tries the names it holds.
const REPAIR_EVERY: Duration = Duration::from_millis(200);

/// Drops the names noted in `repairs` (one `DEL` each: they share a slot) until each is done;
/// ends with the counters.
async fn repair(mut conn: Conn, repairs: std::sync::Weak<Repairs>) {
    loop {
        tokio::time::sleep(REPAIR_EVERY).await;
        let Some(repairs) = repairs.upgrade() else { return };
        let due: Vec<Vec<String>> = repairs.pending.lock().map(|mut p| std::mem::take(&mut *p)).unwrap_or_default();
        for names in due {
            let dropped: Result<i64, _> = redis::cmd("DEL").arg(&names).query_async(&mut conn).await;
            if dropped.is_err()
                && let Ok(mut pending) = repairs.pending.lock()
            {
                pending.push(names);
            }
        }
    }
}

/// A token unique to one holder of a lock: this process, a count and the clock.
fn lock_token() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{}-{n}-{nanos}", std::process::id())
}

/// A `missing` or `stale` reply: its word, whether the key's counters and whether the owner's
/// need rebuilding (an unreadable flag counts as yes).
fn split(reply: &[String]) -> Option<(&str, bool, bool)> {
    let word = reply.first()?.as_str();
    let flag = |i: usize| reply.get(i).is_none_or(|f| f != "0");
    matches!(word, "missing" | "stale").then(|| (word, flag(1), flag(2)))
}

fn unavailable(err: redis::RedisError) -> Unavailable {
    CounterError::Redis(Cause::new(err)).into()
}
