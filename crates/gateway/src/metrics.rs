//! What the payment layer counts, for Prometheus: calls paid, refused (by error code), voided
//! and failed closed, how long taking a charge took, how long its ledger row took to be durable,
//! and how long the API behind took to answer. Relaxed atomics: counting costs a few nanoseconds on the hot path.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::Dependency;
use crate::protocol::ErrorCode;

/// Every refusal code, in the order [`GatewayMetrics`] counts them.
const CODES: [ErrorCode; ErrorCode::ALL.len()] = ErrorCode::ALL;

/// Upper bounds of the latency buckets, in microseconds (100 µs to 10 s; 2 ms is the
/// accumulation target's bound).
const BOUNDS_US: [u64; 15] = [
    100, 250, 500, 1_000, 2_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000, 2_500_000,
    10_000_000,
];

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket of [`BOUNDS_US`], and one past the last.
    counts: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    /// Counts one observation.
    pub fn observe(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_US.iter().position(|&bound| us <= bound).unwrap_or(BOUNDS_US.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bound) in BOUNDS_US.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {cumulative}", *bound as f64 / 1e6);
        }
        cumulative += self.counts[BOUNDS_US.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_us.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// The payment layer's counters.
#[derive(Debug, Default)]
pub struct GatewayMetrics {
    paid: AtomicU64,
    voided: AtomicU64,
    unavailable: [AtomicU64; Dependency::ALL.len()],
    refused: [AtomicU64; CODES.len()],
    /// From the payment read to the charge taken (or refused).
    pub charge_latency: Histogram,
    /// From the call handed to the API to its answer (paid calls).
    pub upstream_latency: Histogram,
    /// Accumulation: from a charge taken to its ledger row durable.
    pub ledger_latency: Histogram,
}

impl GatewayMetrics {
    /// A call was charged and served.
    pub fn paid(&self) {
        self.paid.fetch_add(1, Ordering::Relaxed);
    }

    /// A charge was voided (the API answered an error).
    pub fn voided(&self) {
        self.voided.fetch_add(1, Ordering::Relaxed);
    }

    /// The gateway could not charge or record through `dependency`, and answered 503.
    pub fn unavailable(&self, dependency: Dependency) {
        if let Some(i) = Dependency::ALL.iter().position(|d| *d == dependency) {
            self.unavailable[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A payment was refused with `code`.
    pub fn refused(&self, code: ErrorCode) {
        if let Some(i) = CODES.iter().position(|c| *c == code) {
            self.refused[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The Prometheus text of these counters.
    pub fn render(&self, out: &mut String) {
        for (name, help, value) in [
            ("opentab_gateway_paid_total", "Paid calls served.", &self.paid),
            ("opentab_gateway_voided_total", "Charges voided because the API answered an error.", &self.voided),
        ] {
            let _ =
                writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", value.load(Ordering::Relaxed));
        }
        let name = "opentab_gateway_unavailable_total";
        let _ = writeln!(
            out,
            "# HELP {name} Calls answered 503 (nothing served), by the dependency that failed.\n# TYPE {name} counter"
        );
        for (dependency, value) in Dependency::ALL.iter().zip(&self.unavailable) {
            let _ = writeln!(out, "{name}{{dependency=\"{}\"}} {}", dependency.as_str(), value.load(Ordering::Relaxed));
        }
        let name = "opentab_gateway_refused_total";
        let _ = writeln!(out, "# HELP {name} Payments refused, by error code.\n# TYPE {name} counter");
        for (code, count) in CODES.iter().zip(&self.refused) {
            let _ = writeln!(out, "{name}{{code=\"{}\"}} {}", code.as_str(), count.load(Ordering::Relaxed));
        }
        self.charge_latency.render(
            out,
            "opentab_gateway_charge_seconds",
            "Time to take a charge: payment decoded, key checked, voucher verified, counters charged.",
        );
        self.upstream_latency.render(
            out,
            "opentab_gateway_upstream_seconds",
            "Time the API took to answer a paid call.",
        );
        self.ledger_latency.render(
            out,
            "opentab_gateway_ledger_seconds",
            "Accumulation: time from a charge taken to its usage-ledger row durable.",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_bounds_inclusive() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_micros(101));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.0001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.00025\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n") && out.contains("x_count 3\n"), "{out}");
        assert!(out.contains("x_sum 60.000201\n"), "{out}");
    }

    #[test]
    fn every_code_is_counted_under_its_name() {
        let m = GatewayMetrics::default();
        m.refused(ErrorCode::KeyFrozen);
        m.refused(ErrorCode::KeyFrozen);
        m.refused(ErrorCode::DuplicatePayment);
        m.paid();
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("opentab_gateway_refused_total{code=\"key_frozen\"} 2\n"), "{out}");
        assert!(out.contains("opentab_gateway_refused_total{code=\"duplicate_payment\"} 1\n"), "{out}");
        assert!(out.contains("opentab_gateway_refused_total{code=\"unknown_key\"} 0\n"), "{out}");
        assert!(out.contains("opentab_gateway_paid_total 1\n"), "{out}");
    }
}
