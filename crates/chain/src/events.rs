//! Follows `SessionKeyValidator` events from a persisted cursor, a confirmation depth behind
//! the tip, and notices reorgs.
//!
//! The cursor remembers the hashes of the last blocks it processed. Each poll first checks that
//! the newest of them is still on the chain; if not, it walks back to the newest block that is,
//! reports a rollback to it (the consumer drops whatever it derived from later blocks) and
//! re-reads from there. Consumers persist the cursor together with what they derived from the
//! events, so a restart resumes exactly where the last applied update ended.

use std::path::{Path, PathBuf};
use std::time::Duration;

use alloy::eips::BlockNumberOrTag;
use alloy::primitives::{Address, B256, TxHash, U256};
use alloy::providers::{DynProvider, Provider};
use alloy::rpc::types::{Filter, Log};
use alloy::sol_types::SolEventInterface;
use opentab_core::{SkipReason, Usdc, ValidatorEvent};
use serde::{Deserialize, Serialize};

use crate::bindings::SessionKeyValidator::SessionKeyValidatorEvents;
use crate::{Error, Result};

/// How many processed block hashes a cursor keeps for reorg detection.
pub const TRAIL_LEN: usize = 64;

/// A block by number and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRef {
    /// Block number.
    pub number: u64,
    /// Block hash.
    pub hash: B256,
}

/// Where an event stream stands: the next block to read and the hashes of the last blocks read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The first block ever to read (the validator's deployment block).
    start: u64,
    /// The last processed blocks, oldest first (at most [`TRAIL_LEN`]).
    trail: Vec<BlockRef>,
}

impl Cursor {
    /// A cursor that reads from `block` on; nothing processed yet.
    pub const fn starting_at(block: u64) -> Self {
        Self { start: block, trail: Vec::new() }
    }

    /// The next block to read.
    pub fn next_block(&self) -> u64 {
        self.trail.last().map_or(self.start, |b| b.number + 1)
    }

    /// The last processed block, if any.
    pub fn last(&self) -> Option<BlockRef> {
        self.trail.last().copied()
    }

    fn advance(&mut self, block: BlockRef) {
        self.trail.push(block);
        if self.trail.len() > TRAIL_LEN {
            self.trail.remove(0);
        }
    }

    /// Reads a cursor saved with [`Cursor::save`]; `None` if the file does not exist.
    pub fn load(path: &Path) -> Result<Option<Self>> {
        match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map(Some).map_err(|source| Error::Json { path: path.to_owned(), source })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::File { path: path.to_owned(), source }),
        }
    }

    /// Writes the cursor as JSON, atomically (a temporary file renamed over the old one).
    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp: PathBuf = path.with_extension("tmp");
        let file_err = |source| Error::File { path: path.to_owned(), source };
        let json = serde_json::to_vec_pretty(self).map_err(|source| Error::Json { path: path.to_owned(), source })?;
        std::fs::write(&tmp, json).map_err(file_err)?;
        std::fs::rename(&tmp, path).map_err(file_err)
    }
}

/// A decoded validator event and where it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedEvent {
    /// Block number.
    pub block_number: u64,
    /// Block hash.
    pub block_hash: B256,
    /// The transaction that emitted it.
    pub tx_hash: TxHash,
    /// Index of the log in its block.
    pub log_index: u64,
    /// The event.
    pub event: SessionKeyValidatorEvents,
}

/// What one poll found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// A reorg replaced blocks after this one: undo what later blocks' events caused.
    pub rollback_to: Option<u64>,
    /// New confirmed events, in chain order.
    pub events: Vec<LoggedEvent>,
    /// The cursor after this update; persist it with what the events changed.
    pub cursor: Cursor,
}

/// Tuning of an [`EventStream`].
#[derive(Debug, Clone, Copy)]
pub struct StreamConfig {
    /// Blocks to stay behind the tip; 0 follows the tip (and sees reorgs as rollbacks).
    pub confirmations: u64,
    /// Most blocks asked for in one `eth_getLogs` (public RPCs cap ranges).
    pub max_range: u64,
}

impl Default for StreamConfig {
    /// 2 confirmations, 2 000 blocks per request.
    fn default() -> Self {
        Self { confirmations: 2, max_range: 2_000 }
    }
}

/// Follows the validator's events; see the module docs.
#[derive(Debug)]
pub struct EventStream {
    provider: DynProvider,
    validator: Address,
    config: StreamConfig,
    cursor: Cursor,
}

impl EventStream {
    /// A stream of `validator`'s events from `cursor` on.
    pub const fn new(provider: DynProvider, validator: Address, cursor: Cursor, config: StreamConfig) -> Self {
        Self { provider, validator, config, cursor }
    }

    /// Where the stream stands.
    pub const fn cursor(&self) -> &Cursor {
        &self.cursor
    }

    /// Polls until there is an update, sleeping `interval` between empty polls.
    pub async fn next_update(&mut self, interval: Duration) -> Result<Update> {
        loop {
            if let Some(update) = self.poll().await? {
                return Ok(update);
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// One round: detect a reorg, then read confirmed blocks not read yet (up to `max_range`).
    /// `None` when nothing changed.
    pub async fn poll(&mut self) -> Result<Option<Update>> {
        let rollback_to = self.detect_reorg().await?;

        let tip = self.provider.get_block_number().await?;
        let safe = tip.saturating_sub(self.config.confirmations);
        let from = self.cursor.next_block();
        if from > safe {
            return Ok(rollback_to.map(|to| Update {
                rollback_to: Some(to),
                events: Vec::new(),
                cursor: self.cursor.clone(),
            }));
        }
        let to = safe.min(from.saturating_add(self.config.max_range.max(1) - 1));

        let end = self.block_hash(to).await?;
        let filter = Filter::new().address(self.validator).from_block(from).to_block(to);
        let logs = self.provider.get_logs(&filter).await?;
        // If `to` changed while we read, the logs may mix two forks: read again next poll.
        if self.block_hash(to).await? != end
            || logs.iter().any(|l| l.block_number == Some(to) && l.block_hash != Some(end))
        {
            tracing::debug!(from, to, "chain moved under an eth_getLogs; retrying");
            return Ok(rollback_to.map(|to| Update {
                rollback_to: Some(to),
                events: Vec::new(),
                cursor: self.cursor.clone(),
            }));
        }

        let mut events = logs.into_iter().map(|log| self.decode(log)).collect::<Result<Vec<_>>>()?;
        events.sort_by_key(|e| (e.block_number, e.log_index));
        self.cursor.advance(BlockRef { number: to, hash: end });
        Ok(Some(Update { rollback_to, events, cursor: self.cursor.clone() }))
    }

    /// If the last processed block was replaced, rewinds the cursor to the newest block still on
    /// the chain and returns its number.
    async fn detect_reorg(&mut self) -> Result<Option<u64>> {
        let Some(last) = self.cursor.last() else { return Ok(None) };
        if self.block_hash_opt(last.number).await? == Some(last.hash) {
            return Ok(None);
        }
        while let Some(block) = self.cursor.trail.pop() {
            if self.block_hash_opt(block.number).await? == Some(block.hash) {
                self.cursor.trail.push(block);
                tracing::warn!(to = block.number, replaced_after = block.number, "chain reorganised; rolling back");
                return Ok(Some(block.number));
            }
        }
        // No remembered block survived. If the trail reached back to the start, everything
        // from the start is re-read; otherwise we cannot know what to undo.
        if last.number.saturating_sub(TRAIL_LEN as u64) < self.cursor.start {
            tracing::warn!(
                start = self.cursor.start,
                "chain reorganised below every remembered block; re-reading from the start"
            );
            return Ok(Some(self.cursor.start.saturating_sub(1)));
        }
        Err(Error::ReorgTooDeep { depth: TRAIL_LEN, below: last.number })
    }

    async fn block_hash_opt(&self, number: u64) -> Result<Option<B256>> {
        let block = self.provider.get_block_by_number(BlockNumberOrTag::Number(number)).await?;
        Ok(block.map(|b| b.header.hash))
    }

    async fn block_hash(&self, number: u64) -> Result<B256> {
        self.block_hash_opt(number).await?.ok_or(Error::MissingBlock(number))
    }

    fn decode(&self, log: Log) -> Result<LoggedEvent> {
        let block = log.block_number.unwrap_or_default();
        let undecodable = |reason: String| Error::UndecodableLog { address: log.inner.address, block, reason };
        let event = SessionKeyValidatorEvents::decode_log(&log.inner).map_err(|e| undecodable(e.to_string()))?.data;
        Ok(LoggedEvent {
            block_number: block,
            block_hash: log.block_hash.ok_or_else(|| undecodable("log without block hash".into()))?,
            tx_hash: log.transaction_hash.ok_or_else(|| undecodable("log without transaction hash".into()))?,
            log_index: log.log_index.unwrap_or_default(),
            event,
        })
    }
}

impl LoggedEvent {
    /// The event as the domain sees it. Amounts beyond the core's `u64` range are refused.
    pub fn to_domain(&self) -> Result<ValidatorEvent> {
        use SessionKeyValidatorEvents as E;
        let usdc = |v: U256| Usdc::try_from(v).map_err(Error::from);
        let secs = |v: alloy::primitives::Uint<48, 1>| v.to::<u64>();
        Ok(match &self.event {
            E::Deposited(e) => ValidatorEvent::Deposited { owner: e.owner, payee: e.payee, amount: usdc(e.amount)? },
            E::SessionKeyRegistered(e) => ValidatorEvent::Registered {
                owner: e.owner,
                session_key: e.sessionKey,
                payee: e.payee,
                limit: usdc(U256::from(e.limit))?,
                valid_after: secs(e.validAfter),
                valid_until: secs(e.validUntil),
            },
            E::SessionKeyFrozen(e) => {
                ValidatorEvent::Frozen { owner: e.owner, session_key: e.sessionKey, by: e.by, at: secs(e.frozenAt) }
            }
            E::SessionKeyUnfrozen(e) => ValidatorEvent::Unfrozen { owner: e.owner, session_key: e.sessionKey },
            E::SessionKeyRevoked(e) => {
                ValidatorEvent::Revoked { owner: e.owner, session_key: e.sessionKey, at: secs(e.revokedAt) }
            }
            E::Settled(e) => ValidatorEvent::Settled {
                session_key: e.sessionKey,
                amount: usdc(e.amount)?,
                settled: usdc(e.settled)?,
            },
            E::ClaimSkipped(e) => ValidatorEvent::ClaimSkipped {
                session_key: e.sessionKey,
                reason: SkipReason::from_code(e.reason).ok_or_else(|| Error::UndecodableLog {
                    address: Address::ZERO,
                    block: self.block_number,
                    reason: format!("unknown ClaimSkipped reason {}", e.reason),
                })?,
            },
            E::SettlerSet(e) => ValidatorEvent::SettlerSet { payee: e.payee, settler: e.settler, allowed: e.allowed },
            E::GuardianSet(e) => ValidatorEvent::GuardianSet { owner: e.owner, guardian: e.guardian },
            E::WithdrawalRequested(e) => ValidatorEvent::WithdrawalRequested {
                owner: e.owner,
                payee: e.payee,
                amount: usdc(e.amount)?,
                grace_ends_at: secs(e.graceEndsAt),
            },
            E::WithdrawalCancelled(e) => ValidatorEvent::WithdrawalCancelled { owner: e.owner, payee: e.payee },
            E::Withdrawn(e) => ValidatorEvent::Withdrawn { owner: e.owner, payee: e.payee, amount: usdc(e.amount)? },
            // EIP-712 domain changes cannot happen (name and version are immutable).
            E::EIP712DomainChanged(_) => {
                return Err(Error::UndecodableLog {
                    address: Address::ZERO,
                    block: self.block_number,
                    reason: "unexpected EIP712DomainChanged".into(),
                });
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_keeps_a_bounded_trail() {
        let mut c = Cursor::starting_at(10);
        assert_eq!(c.next_block(), 10);
        for n in 10..10 + TRAIL_LEN as u64 + 5 {
            c.advance(BlockRef { number: n, hash: B256::with_last_byte(n as u8) });
        }
        assert_eq!(c.trail.len(), TRAIL_LEN);
        assert_eq!(c.next_block(), 10 + TRAIL_LEN as u64 + 5);
    }

    #[test]
    fn cursor_round_trips_through_a_file() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|source| Error::File { path: "tmp".into(), source })?;
        let path = dir.path().join("cursor.json");
        assert_eq!(Cursor::load(&path)?, None);
        let mut c = Cursor::starting_at(3);
        c.advance(BlockRef { number: 7, hash: B256::repeat_byte(7) });
        c.save(&path)?;
        assert_eq!(Cursor::load(&path)?, Some(c));
        std::fs::write(&path, b"{not json").map_err(|source| Error::File { path: path.clone(), source })?;
        assert!(matches!(Cursor::load(&path), Err(Error::Json { .. })));
        Ok(())
    }
}
