//! Live change notifications: the chain listener and the API publish what changed; each
//! signed-in owner's event stream (`GET /api/session-keys/events`) picks its own.

use opentab_core::Address;
use tokio::sync::broadcast;

/// Something about an owner's keys or escrow changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// Whose data changed.
    pub owner: Address,
    /// The key that changed, if it was a key (else the escrow).
    pub key: Option<Address>,
}

/// A broadcast of [`Change`]s. Cheap to clone; publishing never blocks and never fails (a
/// subscriber too slow to keep up is told to resync).
#[derive(Debug, Clone)]
pub struct Notifier {
    tx: broadcast::Sender<Change>,
}

impl Default for Notifier {
    fn default() -> Self {
        Self { tx: broadcast::channel(1024).0 }
    }
}

impl Notifier {
    /// Tells every subscriber about `change`.
    pub fn publish(&self, change: Change) {
        // No subscriber is not an error: nobody is watching right now.
        let _ = self.tx.send(change);
    }

    /// A new subscription to all changes.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }
}
