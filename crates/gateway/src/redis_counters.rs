//! Counters in Redis for production: each charge and void is one Lua script, so it is atomic
//! across any number of gateway nodes. Keys are hash-tagged by owner (`{0xowner}`), so a key's
//! counters and its owner's served total live in one Redis Cluster slot.
//!
//! If Redis loses data (a restart without persistence, a failover, `FLUSHALL`), a key's hash
//! or its owner's total is missing. With a [`CounterSource`] (the durable usage ledger) the
//! charge script then refuses to guess: the counters are rebuilt from the source (set only
//! where still absent, so concurrent rebuilders agree) and the charge runs again. Nothing
//! served is lost, and a replayed voucher still buys nothing, because `served` comes back; the
//! key's idempotency keys whose charges stand come back with it, so a retried request is not
//! charged twice either.
//!
//! Lua numbers are doubles: amounts stay exact below 2^53 base units (9 billion USDC), so
//! limits and tabs are clamped there (nothing can be served past it anyway) and numbers are
//! printed with `%d`, never `tostring`. Vouchers, up to 2^256 − 1, are compared as zero-padded
//! 78-digit strings.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use opentab_core::charge::{ChargeRefused, ChargeRequest, Charged, KeyCounters};
use opentab_core::{Address, B256, Signature, U256, Usdc};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use crate::error::{Cause, CounterError};
use crate::gateway::{CounterStore, Unavailable};

/// The largest integer a Lua number holds exactly.
const LUA_EXACT: u64 = (1 << 53) - 1;

/// The charge rule of `opentab_core::charge`, in Lua. KEYS: key hash, owner's served total and,
/// when the request has one, its idempotency key (set for `ARGV[7]` seconds once charged).
/// ARGV: price, voucher (78 digits), signature, limit, owner budget (tab available + settled),
/// "1" if missing counters must be rebuilt rather than read as zero.
const CHARGE: &str = r"
if ARGV[6] == '1' then
  local key_missing = redis.call('EXISTS', KEYS[1]) == 0
  local owner_missing = redis.call('EXISTS', KEYS[2]) == 0
  if key_missing or owner_missing then
    return {'missing', key_missing and '1' or '0', owner_missing and '1' or '0'}
  end
end
if #KEYS > 2 and redis.call('EXISTS', KEYS[3]) == 1 then return {'duplicate'} end
local served = tonumber(redis.call('HGET', KEYS[1], 'served') or '0')
local best = redis.call('HGET', KEYS[1], 'best') or string.rep('0', 78)
local price = tonumber(ARGV[1])
local voucher = ARGV[2]
local limit = tonumber(ARGV[4])
local needed = served + price
local top = best
if voucher > best then top = voucher end
if top < string.format('%078d', needed) then return {'voucher_too_low', string.format('%d', needed), top} end
if needed > limit then return {'limit_exceeded', string.format('%d', needed), string.format('%d', limit)} end
local owner_served = tonumber(redis.call('GET', KEYS[2]) or '0')
local free = tonumber(ARGV[5]) - owner_served
if free < 0 then free = 0 end
if free < price then return {'insufficient_funds', string.format('%d', free), ARGV[1]} end
redis.call('HSET', KEYS[1], 'served', string.format('%d', needed))
if voucher > best or (voucher == best and redis.call('HEXISTS', KEYS[1], 'sig') == 0) then
  redis.call('HSET', KEYS[1], 'best', voucher, 'sig', ARGV[3])
end
redis.call('INCRBY', KEYS[2], ARGV[1])
if #KEYS > 2 then redis.call('SET', KEYS[3], '1', 'EX', ARGV[7]) end
return {'ok', string.format('%d', needed), string.format('%d', limit - needed)}
";

/// Rebuild: sets the key's counters and the owner's total from the durable source, each only if
/// still absent. ARGV: served, best (78 digits), signature ('' if none), owner served ('' when
/// the owner's total was not missing, so not read). KEYS[3..]
/// are the key's standing idempotency keys, restored with the key's counters (only then: they
/// were lost together) for ARGV[5..] seconds each.
/// Returns 1 if it set anything (0: another gateway rebuilt them first).
const RESTORE: &str = r"
local set = 0
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'served', ARGV[1], 'best', ARGV[2])
  if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'sig', ARGV[3]) end
  for i = 3, #KEYS do redis.call('SET', KEYS[i], '1', 'EX', ARGV[i + 2], 'NX') end
  set = 1
end
if ARGV[4] ~= '' and redis.call('SET', KEYS[2], ARGV[4], 'NX') then set = 1 end
return set
";

/// Void: the key's and the owner's served go down by the price, never below zero.
/// ARGV: price, "1" if missing counters must be rebuilt first (then it returns 0). KEYS[3], if
/// given, is the charge's idempotency key, freed so a retry of the failed call is charged.
const VOID: &str = r"
if ARGV[2] == '1' and (redis.call('EXISTS', KEYS[1]) == 0 or redis.call('EXISTS', KEYS[2]) == 0) then
  return 0
end
if #KEYS > 2 then redis.call('DEL', KEYS[3]) end
local price = tonumber(ARGV[1])
local served = tonumber(redis.call('HGET', KEYS[1], 'served') or '0')
local owner_served = tonumber(redis.call('GET', KEYS[2]) or '0')
redis.call('HSET', KEYS[1], 'served', string.format('%d', math.max(served - price, 0)))
redis.call('SET', KEYS[2], string.format('%d', math.max(owner_served - price, 0)))
return 1
";

/// What counters are rebuilt from when Redis lost them: the durable usage ledger.
pub trait CounterSource: Send + Sync + 'static {
    /// `key`'s counters and its standing idempotency keys as the ledger has them, and, when
    /// `with_owner` (Redis lacks it too), its owner's served total (a sum over every key of the
    /// owner: read only when needed).
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
}

/// The future of [`CounterSource::counters`].
pub type SourceFuture<'a> = Pin<Box<dyn Future<Output = Result<Restored, Unavailable>> + Send + 'a>>;

/// Counters in Redis (see the module docs).
#[derive(Clone)]
pub struct RedisCounters {
    conn: ConnectionManager,
    prefix: String,
    charge: Script,
    restore: Script,
    void: Script,
    source: Option<Arc<dyn CounterSource>>,
}

impl std::fmt::Debug for RedisCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCounters").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl RedisCounters {
    /// Connects to `url` (`redis://host:port`); every key name starts with `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, Unavailable> {
        let client = redis::Client::open(url)
            .map_err(|e| CounterError::BadUrl { url: opentab_core::redact_url(url), reason: e.to_string() })?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_with_config(client, config).await.map_err(unavailable)?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            charge: Script::new(CHARGE),
            restore: Script::new(RESTORE),
            void: Script::new(VOID),
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
        self
    }

    /// Rebuilds `key`'s counters, and `owner`'s total if `with_owner`, from the source where
    /// Redis lacks them.
    async fn rebuild(&self, key: Address, owner: Address, with_owner: bool) -> Result<(), Unavailable> {
        let Some(source) = &self.source else { return Ok(()) };
        let Restored { counters, owner_served, idempotency } = source.counters(key, owner, with_owner).await?;
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
            .arg(owner_served.map(|served| served.base_units().to_string()).unwrap_or_default());
        for (_, ttl) in &live {
            invocation.arg(*ttl);
        }
        let set: i64 = invocation.invoke_async(&mut conn).await.map_err(unavailable)?;
        if set == 1 {
            tracing::warn!(%key, %owner, served = %counters.served, idempotency_keys = live.len(), "gateway counters were missing in Redis: rebuilt from the usage ledger");
        }
        Ok(())
    }

    fn names(&self, key: Address, owner: Address) -> (String, String) {
        let tag = format!("{{{owner:#x}}}");
        (format!("{}:{tag}:key:{key:#x}", self.prefix), format!("{}:{tag}:served", self.prefix))
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
        let value: Option<u64> = conn.get(&total).await.map_err(unavailable)?;
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
        // At most one rebuild: the restore script leaves both counters present.
        let mut reply = self.charge_once(key, owner, &req).await?;
        if reply.first().map(String::as_str) == Some("missing") {
            // Only the owner's total costs a sum over all its keys: read it only if it is gone.
            self.rebuild(key, owner, reply.get(2).is_none_or(|missing| missing != "0")).await?;
            reply = self.charge_once(key, owner, &req).await?;
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
            Some("ok") => Ok(Charged { charged: req.price, served: usdc(1)?, remaining: usdc(2)? }),
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
    ) -> Result<(), Unavailable> {
        // The charge is in the ledger already (it is recorded before the call is served), so a
        // rebuild brings it back and the void then takes it away again.
        if self.void_once(key, owner, price, idempotency).await? == 0 {
            self.rebuild(key, owner, true).await?;
            self.void_once(key, owner, price, idempotency).await?;
        }
        Ok(())
    }

    async fn claim(&self, owner: Address, id: B256, ttl_secs: u64) -> Result<bool, Unavailable> {
        let mut conn = self.conn.clone();
        let name = format!("{}:{{{owner:#x}}}:claim:{id:x}", self.prefix);
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
        let name = format!("{}:{{{owner:#x}}}:claim:{id:x}", self.prefix);
        let _: i64 = redis::cmd("DEL").arg(&name).query_async(&mut conn).await.map_err(unavailable)?;
        Ok(())
    }
}

impl RedisCounters {
    async fn void_once(
        &self,
        key: Address,
        owner: Address,
        price: Usdc,
        idempotency: Option<B256>,
    ) -> Result<i64, Unavailable> {
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
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn charge_once(&self, key: Address, owner: Address, req: &ChargeRequest) -> Result<Vec<String>, Unavailable> {
        let (hash, total) = self.names(key, owner);
        let mut conn = self.conn.clone();
        let mut invocation = self.charge.key(&hash);
        invocation.key(&total);
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
        format!("{}:{{{owner:#x}}}:idem:{id:x}", self.prefix)
    }
}

fn unavailable(err: redis::RedisError) -> Unavailable {
    CounterError::Redis(Cause::new(err)).into()
}
