//! A gateway announcing itself on the database while it runs, so that gateways keeping
//! different counters never charge one payee's keys at once: each would let a key spend its
//! whole limit, and receipts, `opentab keys` and settlements would disagree. A gateway with
//! in-process counters runs alone for its payee; gateways sharing Redis counters run together.

use std::time::Duration;

use opentab_core::Address;
use opentab_store::{GatewayClaim, LiveGateway, Store};

use crate::Error;
use crate::unix_now as now;

/// How often a running gateway says so.
const SEEN_EVERY: Duration = Duration::from_secs(10);
/// How long a gateway counts as running after it last said so (it may have been killed).
const LIVE_FOR_SECS: u64 = 30;

/// This gateway's row, kept fresh until [`Presence::release`].
#[derive(Debug)]
pub struct Presence {
    store: Store,
    id: String,
    task: tokio::task::JoinHandle<()>,
}

impl Presence {
    /// Announces a gateway of `payee` (`shared`: its counters are Redis's), or explains which
    /// running gateway it cannot run beside and what to do instead.
    pub async fn claim(store: &Store, payee: Address, shared: bool, description: String) -> Result<Self, Error> {
        let id = format!("{description} pid {} #{:08x}", std::process::id(), rand::random::<u32>());
        let claim = GatewayClaim { id: id.clone(), payee, shared, description };
        let started = now();
        let claimed = store.claim_gateway(&claim, started, started.saturating_sub(LIVE_FOR_SECS)).await?;
        if let Err(blocking) = claimed {
            return Err(Error::AnotherGateway(refusal(shared, &blocking)));
        }
        let (store_, id_) = (store.clone(), id.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(SEEN_EVERY).await;
                if let Err(err) = store_.gateway_seen(&id_, now()).await {
                    tracing::warn!(error = %err, "could not tell the database this gateway still runs");
                }
            }
        });
        Ok(Self { store: store.clone(), id, task })
    }

    /// The gateway stopped: another may start at once.
    pub async fn release(self) {
        self.task.abort();
        if let Err(err) = self.store.release_gateway(&self.id).await {
            tracing::warn!(error = %err, "could not tell the database this gateway stopped");
        }
    }
}

fn refusal(shared: bool, blocking: &[LiveGateway]) -> String {
    let running: Vec<String> = blocking
        .iter()
        .map(|g| format!("{} ({})", g.description, if g.shared { "Redis counters" } else { "in-process counters" }))
        .collect();
    let running = running.join(", ");
    let own_counters_elsewhere = blocking.iter().any(|g| !g.shared);
    let beside_dev = blocking.iter().any(|g| g.description.starts_with("opentab dev"));
    let advice = if beside_dev {
        "To put your own API behind opentab dev, let dev front it with its own counters instead of a proxy \
         beside it: `opentab dev --upstream http://127.0.0.1:9000 --route \"POST /v1/x=0.002\"`. For several \
         gateways, run `opentab serve` with proxies that share one Redis (--redis-url)."
    } else if shared && own_counters_elsewhere {
        "Stop it, or give it the same Redis (redis_url), then start this one again."
    } else {
        "A gateway with in-process counters must be the only one charging a payee's keys: give every \
         gateway the same Redis (--redis-url, or redis_url in [proxy]) so they share counters, or stop the \
         other one."
    };
    format!(
        "another gateway already charges this payee's keys on this database: {running}. Two sets of counters \
         would each let a key spend its whole limit. {advice} (A gateway that was killed counts as running \
         for {LIVE_FOR_SECS} s after it was last seen.)"
    )
}
