//! The chain listener's and the settlement worker's figures, for `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// What the listener and the settler count. Cheap to share; updated with relaxed atomics.
#[derive(Debug, Default)]
pub struct ServiceMetrics {
    /// Chain-listener updates applied.
    pub listener_updates: AtomicU64,
    /// Chain-listener steps that failed (RPC or database away).
    pub listener_errors: AtomicU64,
    /// The last block the listener has applied.
    pub listener_block: AtomicU64,
    /// Settlements to this deployment's payee that this deployment did not send (another
    /// deployment shares the payee address, and with it the tabs: see the README).
    pub foreign_settlements: AtomicU64,
    /// 1 when this node's settlement worker was authorised to settle for the payee when it
    /// started, else 0 (not authorised, or no settler configured).
    pub settler_authorized: AtomicU64,
}

impl ServiceMetrics {
    /// Writes them in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        for (name, help, kind, value) in [
            ("opentab_listener_updates_total", "Chain updates applied to storage.", "counter", &self.listener_updates),
            ("opentab_listener_errors_total", "Chain listener steps that failed.", "counter", &self.listener_errors),
            ("opentab_listener_block", "Last block applied by the chain listener.", "gauge", &self.listener_block),
            (
                "opentab_foreign_settlements_total",
                "Settlements to this payee that this deployment did not send.",
                "counter",
                &self.foreign_settlements,
            ),
            (
                "opentab_settler_authorized",
                "1 if this node's settler may settle for the payee (checked at start-up), else 0.",
                "gauge",
                &self.settler_authorized,
            ),
        ] {
            let _ =
                writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}", value.load(Ordering::Relaxed));
        }
    }
}
