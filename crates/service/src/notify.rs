//! Live change notifications: the chain listener and the API publish what changed; each
//! signed-in owner's event stream (`GET /api/session-keys/events`) receives its own.
//!
//! Each owner has a channel of its own, so a change wakes only that owner's streams (not every
//! open stream), and at most [`MAX_STREAMS_PER_OWNER`] streams are open per owner: an owner
//! (or a stolen session) cannot pile up streams on the server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use opentab_core::Address;
use tokio::sync::broadcast;

/// How many event streams one owner may have open at once (a few tabs and devices).
pub const MAX_STREAMS_PER_OWNER: usize = 8;

/// Something about an owner's keys or tabs changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// Whose data changed.
    pub owner: Address,
    /// The key that changed, if it was a key (else the owner's tabs).
    pub key: Option<Address>,
}

/// The owner has [`MAX_STREAMS_PER_OWNER`] streams open already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{open} event streams are open for this owner already (at most {max}): close one first")]
pub struct TooManyStreams {
    /// Streams open.
    pub open: usize,
    /// The cap.
    pub max: usize,
}

/// Per-owner broadcasts of [`Change`]s. Cheap to clone; publishing never blocks and never fails
/// (a subscriber too slow to keep up is told to resync).
#[derive(Debug, Clone)]
pub struct Notifier {
    owners: Arc<Mutex<HashMap<Address, broadcast::Sender<Change>>>>,
    max_streams: usize,
    closed: Arc<AtomicBool>,
}

impl Default for Notifier {
    fn default() -> Self {
        Self { owners: Arc::default(), max_streams: MAX_STREAMS_PER_OWNER, closed: Arc::default() }
    }
}

impl Notifier {
    /// Tells the subscribers of `change.owner` about it.
    pub fn publish(&self, change: Change) {
        let Ok(mut owners) = self.owners.lock() else { return };
        if let Some(tx) = owners.get(&change.owner) {
            if tx.receiver_count() == 0 {
                // Every stream of this owner closed: forget the channel.
                owners.remove(&change.owner);
            } else {
                // A lagging receiver is told to resync; none listening is not an error.
                let _ = tx.send(change);
            }
        }
    }

    /// Ends every stream (at shutdown: an open stream would otherwise hold the server's drain
    /// until its deadline). Streams opened afterwards end at once.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        if let Ok(mut owners) = self.owners.lock() {
            owners.clear();
        }
    }

    /// A new subscription to `owner`'s changes, unless it has too many open already.
    pub fn subscribe(&self, owner: Address) -> Result<broadcast::Receiver<Change>, TooManyStreams> {
        let mut owners = self.owners.lock().map_err(|_| TooManyStreams { open: 0, max: 0 })?;
        if self.closed.load(Ordering::SeqCst) {
            // A channel with no sender: the stream sees it closed and ends.
            return Ok(broadcast::channel(1).1);
        }
        // Forget the channels whose streams all closed, so owners who left cost nothing.
        owners.retain(|_, tx| tx.receiver_count() > 0);
        let tx = owners.entry(owner).or_insert_with(|| broadcast::channel(256).0);
        let open = tx.receiver_count();
        if open >= self.max_streams {
            return Err(TooManyStreams { open, max: self.max_streams });
        }
        Ok(tx.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Address = Address::repeat_byte(0xa);
    const B: Address = Address::repeat_byte(0xb);

    #[test]
    fn a_change_reaches_only_its_owners_streams() -> Result<(), TooManyStreams> {
        let notifier = Notifier::default();
        let (mut a, mut b) = (notifier.subscribe(A)?, notifier.subscribe(B)?);
        notifier.publish(Change { owner: A, key: None });
        assert_eq!(a.try_recv().map(|c| c.owner), Ok(A));
        assert!(b.try_recv().is_err(), "B's stream is not woken by A's change");
        Ok(())
    }

    #[test]
    fn an_owner_has_at_most_the_cap_of_streams_and_a_closed_one_frees_its_place() -> Result<(), TooManyStreams> {
        let notifier = Notifier::default();
        let mut open: Vec<_> = (0..MAX_STREAMS_PER_OWNER).map(|_| notifier.subscribe(A)).collect::<Result<_, _>>()?;
        assert_eq!(notifier.subscribe(A).err(), Some(TooManyStreams { open: 8, max: 8 }));
        assert!(notifier.subscribe(B).is_ok(), "another owner is not affected");
        open.pop();
        assert!(notifier.subscribe(A).is_ok());
        Ok(())
    }

    #[test]
    fn closing_ends_every_stream_now_and_later() -> Result<(), TooManyStreams> {
        let notifier = Notifier::default();
        let mut open = notifier.subscribe(A)?;
        notifier.close();
        assert_eq!(open.try_recv(), Err(broadcast::error::TryRecvError::Closed));
        assert_eq!(notifier.subscribe(B)?.try_recv(), Err(broadcast::error::TryRecvError::Closed));
        Ok(())
    }
}
