//! What changed about keys and tabs, for the caches of the gateways: the paid hot path reads
//! key state and tab budgets from memory, and drops an owner's entries when this feed names it.
//!
//! Every change to `session_keys` or `tabs` is caught by a trigger (migration 0018), whichever
//! process made it. PostgreSQL delivers it with `NOTIFY` when it commits; SQLite appends it to
//! `key_changes`, read every [`POLL_EVERY`]. Writes made through this [`Store`] are announced
//! in-process as soon as they commit too, so a freeze bites the very next call of a gateway in
//! the same process without waiting for either. When the feed may have missed something (it
//! just started, or the listening connection was lost) it says [`KeyChange::Everything`].

use std::sync::Mutex;
use std::time::Duration;

use opentab_core::Address;
use sqlx::Row;

use crate::Store;
use crate::store::Backend;

/// PostgreSQL's channel, as the trigger names it.
const CHANNEL: &str = "opentab_key_changes";
/// How often SQLite's `key_changes` is read for what other processes changed.
pub const POLL_EVERY: Duration = Duration::from_millis(20);
/// `key_changes` rows older than this are pruned.
const KEEP_SECS: i64 = 600;

/// Something about keys or tabs changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyChange {
    /// Any key or tab of this owner.
    Owner(Address),
    /// This key.
    Key(Address),
    /// Anything may have changed (the feed could not tell what): forget all of it.
    Everything,
}

/// Told of each change as soon as it is known; answers false once it wants no more.
type Listener = Box<dyn Fn(KeyChange) -> bool + Send + Sync>;

/// The feed of one [`Store`] (shared by its clones).
pub(crate) struct Feed {
    listeners: Mutex<Vec<Listener>>,
    /// The database URL, for PostgreSQL's listening connection.
    pub(crate) url: String,
    /// Whether the task reading the database's changes runs.
    watching: Mutex<bool>,
    /// The listening connection's pool, closed with the store.
    listener_pool: Mutex<Option<sqlx::PgPool>>,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let listeners = self.listeners.lock().map_or(0, |l| l.len());
        f.debug_struct("Feed").field("listeners", &listeners).finish_non_exhaustive()
    }
}

impl Feed {
    pub(crate) fn new(url: &str) -> Self {
        Self {
            listeners: Mutex::new(Vec::new()),
            url: url.to_owned(),
            watching: Mutex::new(false),
            listener_pool: Mutex::new(None),
        }
    }

    /// Stops listening (the store is closing).
    pub(crate) async fn close(&self) {
        let pool = self.listener_pool.lock().ok().and_then(|mut p| p.take());
        if let Some(pool) = pool {
            pool.close().await;
        }
    }
}

impl Store {
    /// Calls `listener` with every change to keys and tabs, whoever makes it, as soon as it is
    /// known: inline, before the write that made it returns, when this store made it; when the
    /// database says so otherwise. `listener` must be quick (it runs under the feed's lock) and
    /// answers false once it wants no more. Starts reading the database's changes on first use
    /// (on the current tokio runtime).
    pub fn on_key_change(&self, listener: impl Fn(KeyChange) -> bool + Send + Sync + 'static) {
        if let Ok(mut listeners) = self.feed.listeners.lock() {
            listeners.push(Box::new(listener));
        }
        let start = self.feed.watching.lock().map(|mut watching| !std::mem::replace(&mut *watching, true));
        if start.unwrap_or(false) {
            let store = self.clone();
            match self.backend() {
                Backend::Postgres => {
                    tokio::spawn(watch_postgres(store));
                }
                Backend::Sqlite => {
                    tokio::spawn(watch_sqlite(store));
                }
            }
        }
    }

    /// Tells the listeners of a change (this store committed it, or the database said so).
    pub(crate) fn announce(&self, change: KeyChange) {
        if let Ok(mut listeners) = self.feed.listeners.lock() {
            listeners.retain(|listener| listener(change));
        }
    }
}

fn owner_of(text: &str) -> KeyChange {
    text.parse().map_or(KeyChange::Everything, KeyChange::Owner)
}

async fn watch_postgres(store: Store) {
    use sqlx::postgres::{PgListener, PgPoolOptions};
    let pool = match PgPoolOptions::new().max_connections(1).connect_lazy(&store.feed.url) {
        Ok(pool) => pool,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for key changes: gateways will not cache");
            return;
        }
    };
    if let Ok(mut slot) = store.feed.listener_pool.lock() {
        *slot = Some(pool.clone());
    }
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(sqlx::Error::PoolClosed) => return,
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for key changes; retrying");
                store.announce(KeyChange::Everything);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(err) = listener.listen(CHANNEL).await {
            if matches!(err, sqlx::Error::PoolClosed) {
                return;
            }
            tracing::warn!(error = %err, "cannot listen for key changes; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        // Whatever changed before this connection listened is unknown.
        store.announce(KeyChange::Everything);
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => store.announce(owner_of(notification.payload())),
                // The connection was lost (and is made again on the next call): changes may
                // have gone by meanwhile.
                Ok(None) => store.announce(KeyChange::Everything),
                Err(sqlx::Error::PoolClosed) => return,
                Err(err) => {
                    tracing::warn!(error = %err, "lost the key-change listener; reconnecting");
                    store.announce(KeyChange::Everything);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
            }
        }
    }
}

async fn watch_sqlite(store: Store) {
    let mut last: Option<i64> = None;
    let mut pruned_at = std::time::Instant::now();
    while !store.pool.is_closed() {
        tokio::time::sleep(POLL_EVERY).await;
        let rows = match last {
            // Where the feed starts: what came before is in the database already.
            None => {
                sqlx::query("SELECT CAST(COALESCE(MAX(seq), 0) AS BIGINT) AS seq, '' AS owner FROM key_changes")
                    .fetch_all(&store.pool)
                    .await
            }
            Some(seq) => {
                sqlx::query("SELECT seq, owner FROM key_changes WHERE seq > $1 ORDER BY seq")
                    .bind(seq)
                    .fetch_all(&store.pool)
                    .await
            }
        };
        let rows = match rows {
            Ok(rows) => rows,
            Err(err) => {
                if !store.pool.is_closed() {
                    tracing::warn!(error = %err, "cannot read key changes");
                    store.announce(KeyChange::Everything);
                }
                continue;
            }
        };
        let starting = last.is_none();
        if starting {
            // Whatever changed before the feed started is unknown to it.
            store.announce(KeyChange::Everything);
        }
        for row in &rows {
            let (Ok(seq), Ok(owner)) = (row.try_get::<i64, _>("seq"), row.try_get::<String, _>("owner")) else {
                store.announce(KeyChange::Everything);
                continue;
            };
            if last.is_some_and(|last| seq != last + 1) {
                // Rows went missing (pruned before they were read): say so.
                store.announce(KeyChange::Everything);
            }
            last = Some(seq);
            if !starting {
                store.announce(owner_of(&owner));
            }
        }
        if pruned_at.elapsed() > Duration::from_secs(60) {
            pruned_at = std::time::Instant::now();
            let now = i64::try_from(crate::store::unix_now()).unwrap_or(i64::MAX);
            let _ =
                sqlx::query("DELETE FROM key_changes WHERE at < $1").bind(now - KEEP_SECS).execute(&store.pool).await;
        }
    }
}
