//! Voids the database could not take, kept on this machine's disk until it can.
//!
//! A void must be as durable as the charge it undoes: the charge's row is in the ledger, and
//! settlement collects what the ledger says was served. When the database is away at the
//! moment an API answers an error, the void is appended here and flushed to disk before the
//! answer leaves; [`crate::StoreLedger::drain_spool`] writes it to the ledger once the database
//! answers (a void recorded twice moves nothing, so a replay after a crash is harmless).
//!
//! Each process holds one file, `voids-N.jsonl`, under an exclusive lock for as long as it
//! runs. A process that opens the directory also takes over the files no live process holds,
//! so a spool left by a proxy that died is drained by the next one started beside it.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use opentab_core::charge::{CounterEpoch, UsageKind};
use opentab_core::{Address, B256, U256, Usdc};
use opentab_store::UsageEntry;
use serde::{Deserialize, Serialize};

/// Voids waiting for the database (see the module docs).
#[derive(Debug)]
pub struct VoidSpool {
    path: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Ours, locked; holds exactly `pending`, one JSON line each.
    file: File,
    pending: Vec<UsageEntry>,
}

/// A spooled void, as one line of the file.
#[derive(Debug, Serialize, Deserialize)]
struct Line {
    at: u64,
    key: Address,
    owner: Address,
    amount: Usdc,
    route: String,
    request_id: String,
    voucher: U256,
    idempotency: Option<B256>,
    void_of: Option<B256>,
    epoch: Option<CounterEpoch>,
}

impl From<&UsageEntry> for Line {
    fn from(e: &UsageEntry) -> Self {
        Self {
            at: e.at,
            key: e.session_key,
            owner: e.owner,
            amount: e.amount,
            route: e.route.clone(),
            request_id: e.request_id.clone(),
            voucher: e.voucher,
            idempotency: e.idempotency,
            void_of: e.void_of,
            epoch: e.epoch,
        }
    }
}

impl From<Line> for UsageEntry {
    fn from(l: Line) -> Self {
        Self {
            at: l.at,
            session_key: l.key,
            owner: l.owner,
            kind: UsageKind::Void,
            amount: l.amount,
            route: l.route,
            request_id: l.request_id,
            voucher: l.voucher,
            signature: None,
            idempotency: l.idempotency,
            void_of: l.void_of,
            epoch: l.epoch,
        }
    }
}

/// Files a directory may hold before opening it is refused (one per process running at once).
const MAX_FILES: usize = 64;

impl VoidSpool {
    /// Opens a spool in `dir` (made if missing): a file of its own, and whatever the files of
    /// processes no longer running still hold.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut ours = None;
        let mut orphans = Vec::new();
        // Files are numbered from 0 and never removed: the first number without one ends them.
        for n in 0..MAX_FILES {
            let path = dir.join(format!("voids-{n}.jsonl"));
            if !path.exists() {
                if ours.is_none() {
                    let file = OpenOptions::new().read(true).append(true).create(true).open(&path)?;
                    // Another process may have made it this instant: then try the next number.
                    if file.try_lock().is_err() {
                        continue;
                    }
                    ours = Some((path, file));
                }
                break;
            }
            let file = OpenOptions::new().read(true).append(true).open(&path)?;
            if file.try_lock().is_err() {
                continue; // a running process holds it
            }
            if ours.is_none() {
                ours = Some((path, file));
            } else if file.metadata()?.len() > 0 {
                orphans.push((path, file));
            }
        }
        let Some((path, file)) = ours else {
            return Err(std::io::Error::other(format!(
                "{}: {MAX_FILES} spool files are held by running processes",
                dir.display()
            )));
        };
        let mut pending = read_lines(&file)?;
        for (_, orphan) in &orphans {
            pending.extend(read_lines(orphan)?);
        }
        let spool = Self { path, state: Mutex::new(State { file, pending }) };
        // Ours holds everything now (flushed) before the orphans are emptied: a crash between
        // the two leaves a void in two files, and a void recorded twice moves nothing.
        spool.rewrite()?;
        for (path, orphan) in orphans {
            orphan.set_len(0)?;
            orphan.sync_all()?;
            tracing::warn!(spool = %path.display(), "took over the void spool of a process no longer running");
        }
        Ok(spool)
    }

    /// The file this process appends to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `entry` (a void) and flushes it to disk before returning.
    pub fn keep(&self, entry: &UsageEntry) -> std::io::Result<()> {
        let mut line = serde_json::to_string(&Line::from(entry)).map_err(std::io::Error::other)?;
        line.push('\n');
        let mut state = self.lock()?;
        state.file.write_all(line.as_bytes())?;
        state.file.sync_data()?;
        state.pending.push(entry.clone());
        Ok(())
    }

    /// The voids waiting, oldest first.
    pub fn pending(&self) -> std::io::Result<Vec<UsageEntry>> {
        Ok(self.lock()?.pending.clone())
    }

    /// Forgets the first `count` voids (the ledger took them) and rewrites the file with the rest.
    pub fn forget(&self, count: usize) -> std::io::Result<()> {
        {
            let mut state = self.lock()?;
            let count = count.min(state.pending.len());
            state.pending.drain(..count);
        }
        self.rewrite()
    }

    fn rewrite(&self) -> std::io::Result<()> {
        let mut state = self.lock()?;
        let mut text = String::new();
        for entry in &state.pending {
            text.push_str(&serde_json::to_string(&Line::from(entry)).map_err(std::io::Error::other)?);
            text.push('\n');
        }
        state.file.set_len(0)?;
        state.file.seek(SeekFrom::Start(0))?;
        state.file.write_all(text.as_bytes())?;
        state.file.sync_all()
    }

    fn lock(&self) -> std::io::Result<std::sync::MutexGuard<'_, State>> {
        self.state.lock().map_err(|_| std::io::Error::other("the void spool's lock is poisoned"))
    }
}

/// The voids in `file`; a line that does not parse (cut short by a crash mid-write) is skipped.
fn read_lines(file: &File) -> std::io::Result<Vec<UsageEntry>> {
    let mut reader = BufReader::new(file.try_clone()?);
    reader.seek(SeekFrom::Start(0))?;
    let mut voids = Vec::new();
    for line in reader.lines() {
        let line = line?;
        match serde_json::from_str::<Line>(&line) {
            Ok(void) => voids.push(void.into()),
            Err(err) if !line.trim().is_empty() => tracing::warn!(error = %err, line, "skipping a torn spool line"),
            Err(_) => {}
        }
    }
    Ok(voids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn void(n: u8) -> UsageEntry {
        UsageEntry {
            at: 1_000 + u64::from(n),
            session_key: Address::repeat_byte(n),
            owner: Address::repeat_byte(0xa1),
            kind: UsageKind::Void,
            amount: Usdc::from_base_units(2_000),
            route: "POST /v1/chat".into(),
            request_id: format!("r{n}"),
            voucher: U256::from(u64::from(n) * 2_000),
            signature: None,
            idempotency: Some(B256::repeat_byte(n)),
            void_of: Some(B256::with_last_byte(n)),
            epoch: Some(CounterEpoch { key: 3, owner: 1 }),
        }
    }

    /// What a process spooled survives it: a process opening the directory while the first
    /// still runs gets a file of its own; once the first is gone, the next one takes its voids
    /// over (and a torn last line is skipped).
    #[test]
    fn spooled_voids_outlive_their_process_and_are_taken_over() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let first = VoidSpool::open(dir.path())?;
        first.keep(&void(1))?;
        first.keep(&void(2))?;
        let second = VoidSpool::open(dir.path())?;
        assert_ne!(first.path(), second.path(), "one file per running process");
        assert!(second.pending()?.is_empty(), "the first still runs: its voids are its own");
        drop(second);

        first.forget(1)?;
        assert_eq!(first.pending()?, [void(2)]);
        // The process dies mid-append.
        OpenOptions::new().append(true).open(first.path())?.write_all(b"{\"at\":12")?;
        drop(first);

        let third = VoidSpool::open(dir.path())?;
        assert_eq!(third.pending()?, [void(2)], "taken over, torn line skipped");
        third.keep(&void(3))?;
        drop(third);
        let fourth = VoidSpool::open(dir.path())?;
        assert_eq!(fourth.pending()?, [void(2), void(3)]);
        Ok(())
    }
}
