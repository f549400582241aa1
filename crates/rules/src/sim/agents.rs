//! Simulated agents: each pays for calls with one session key, in one labelled pattern, over
//! simulated time. Legitimate patterns model traffic a user would expect to be served; an
//! anomalous agent behaves legitimately until its onset, then goes wrong in its own way.

use opentab_core::{Address, Usdc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A pattern of traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pattern {
    /// Calls at an even rate (2–40 a minute), chat and embeddings.
    Steady,
    /// A trickle, then batch jobs and fan-outs: 80–400 calls within 20–120 s, a few times a day.
    Bursty,
    /// A rate that follows the day: a trough of about one call a minute, a peak of 20–90.
    DailyCycle,
    /// Cheap chat calls with an image route 20× their price now and then (2–8% of calls).
    MixedRoutes,
    /// Steady use until the key's limit is spent.
    SlowDrain,
    /// A new key making 3–12 calls in its life, one of them sometimes an image.
    NewKey,
    /// From its onset, the same call again and again, 5–20 times a second.
    RunawayRetry,
    /// From its onset, a second user of the key elsewhere: 30–300 calls a minute, a third of
    /// them images.
    LeakedKey,
    /// From its onset, every call goes to the most expensive route (video, 250× chat).
    ExpensiveSwitch,
    /// From its onset, extra calls paced to keep the key just under 100 calls a minute.
    SlowLeak,
}

impl Pattern {
    /// Every pattern, legitimate ones first.
    pub const ALL: [Self; 10] = [
        Self::Steady,
        Self::Bursty,
        Self::DailyCycle,
        Self::MixedRoutes,
        Self::SlowDrain,
        Self::NewKey,
        Self::RunawayRetry,
        Self::LeakedKey,
        Self::ExpensiveSwitch,
        Self::SlowLeak,
    ];

    /// The name in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Steady => "steady",
            Self::Bursty => "bursty (batch jobs, fan-outs)",
            Self::DailyCycle => "daily cycle",
            Self::MixedRoutes => "mixed routes (chat + images)",
            Self::SlowDrain => "slow drain to the limit",
            Self::NewKey => "new key, few charges",
            Self::RunawayRetry => "runaway retry loop",
            Self::LeakedKey => "leaked key hammering from elsewhere",
            Self::ExpensiveSwitch => "sudden switch to the most expensive route",
            Self::SlowLeak => "slow leak just under the rate threshold",
        }
    }

    /// Whether the agent goes wrong at some point.
    pub const fn is_anomaly(self) -> bool {
        matches!(self, Self::RunawayRetry | Self::LeakedKey | Self::ExpensiveSwitch | Self::SlowLeak)
    }
}

/// The routes agents call, with their prices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Priced by tokens: about 0.002 USDC, spread log-normally, at most 0.016 (a request's
    /// output is capped, so its price is too).
    Chat,
    /// 0.0002 USDC.
    Embeddings,
    /// 0.04 USDC.
    Image,
    /// 0.5 USDC: the most expensive.
    Video,
}

impl Route {
    /// `METHOD /pattern`, as the gateway names it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Chat => "POST /v1/chat/completions",
            Self::Embeddings => "POST /v1/embeddings",
            Self::Image => "POST /v1/images/generations",
            Self::Video => "POST /v1/video/generations",
        }
    }

    fn price(self, rng: &mut StdRng) -> Usdc {
        let units = match self {
            Self::Chat => {
                // Log-normal around 0.002 (σ = 0.35), as token counts vary, within 0.0005–0.016.
                let z = normal(rng);
                (2_000.0 * (0.35 * z).exp()).clamp(500.0, 16_000.0) as u64
            }
            Self::Embeddings => 200,
            Self::Image => 40_000,
            Self::Video => 500_000,
        };
        Usdc::from_base_units(units)
    }
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut StdRng) -> f64 {
    let (u, v): (f64, f64) = (rng.r#gen::<f64>().max(f64::MIN_POSITIVE), rng.r#gen());
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// Which routes a stream calls.
#[derive(Debug, Clone, Copy)]
enum Mix {
    /// 80% chat, 20% embeddings.
    ChatAndEmbeddings,
    /// Chat, with images at this share.
    ChatAndImages(f64),
    /// Chat only.
    Chat,
    /// Video only.
    Video,
}

impl Mix {
    fn pick(self, rng: &mut StdRng) -> Route {
        match self {
            Self::ChatAndEmbeddings => {
                if rng.r#gen::<f64>() < 0.2 {
                    Route::Embeddings
                } else {
                    Route::Chat
                }
            }
            Self::ChatAndImages(share) => {
                if rng.r#gen::<f64>() < share {
                    Route::Image
                } else {
                    Route::Chat
                }
            }
            Self::Chat => Route::Chat,
            Self::Video => Route::Video,
        }
    }
}

/// When a stream's calls come.
#[derive(Debug, Clone, Copy)]
enum Timing {
    /// A Poisson process at this many calls a minute.
    Poisson(f64),
    /// Poisson, its rate following the day between `trough` and `peak` a minute.
    Daily { trough: f64, peak: f64, phase: f64 },
    /// A trickle at `background` a minute, and every `every` seconds (on average) a batch of
    /// `size` calls spread evenly over `spread` seconds.
    Batches { background: f64, every: f64, size: u32, spread: f64 },
    /// Evenly, one call every this many seconds.
    Paced(f64),
    /// `count` calls spread at random over `within` seconds.
    Few { count: u32, within: f64 },
}

/// One source of calls of an agent.
#[derive(Debug, Clone)]
struct Stream {
    timing: Timing,
    mix: Mix,
    /// When its next call comes (seconds).
    next: f64,
    /// It makes no call at or after this.
    end: f64,
    /// Batches: calls left in the current one, and when the next one starts.
    batch_left: u32,
    next_batch: f64,
    /// Few: the call times left, latest first.
    few: Vec<f64>,
}

impl Stream {
    fn new(timing: Timing, mix: Mix, start: f64, end: f64, rng: &mut StdRng) -> Self {
        let mut stream =
            Self { timing, mix, next: start, end, batch_left: 0, next_batch: f64::INFINITY, few: Vec::new() };
        match timing {
            Timing::Batches { every, .. } => stream.next_batch = start + exponential(rng, every),
            Timing::Few { count, within } => {
                stream.few = (0..count).map(|_| start + rng.r#gen::<f64>() * within).collect();
                stream.few.sort_by(|a, b| b.total_cmp(a));
            }
            _ => {}
        }
        stream.advance(rng);
        stream
    }

    /// Moves `next` to the stream's next call after the current one.
    fn advance(&mut self, rng: &mut StdRng) {
        let now = self.next;
        self.next = match self.timing {
            Timing::Poisson(per_min) => now + exponential(rng, 60.0 / per_min),
            Timing::Daily { trough, peak, phase } => {
                // Thinning: draw at the peak rate, keep a call with probability rate(t) / peak.
                let mut t = now;
                loop {
                    t += exponential(rng, 60.0 / peak);
                    let day = (t / 86_400.0 + phase) * std::f64::consts::TAU;
                    let rate = trough + (peak - trough) * 0.5 * (1.0 - day.cos());
                    if t >= self.end || rng.r#gen::<f64>() * peak <= rate {
                        break t;
                    }
                }
            }
            Timing::Batches { background, every, size, spread } => {
                if self.batch_left > 0 {
                    self.batch_left -= 1;
                    now + spread / f64::from(size)
                } else {
                    let trickle = now + exponential(rng, 60.0 / background);
                    if self.next_batch <= trickle {
                        let start = self.next_batch;
                        self.batch_left = size - 1;
                        self.next_batch = start + spread + exponential(rng, every);
                        start
                    } else {
                        trickle
                    }
                }
            }
            Timing::Paced(gap) => now + gap,
            Timing::Few { .. } => self.few.pop().unwrap_or(f64::INFINITY),
        };
        if self.next >= self.end {
            self.next = f64::INFINITY;
        }
    }
}

fn exponential(rng: &mut StdRng, mean: f64) -> f64 {
    -mean * (1.0 - rng.r#gen::<f64>()).ln()
}

/// One call an agent makes.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    /// When (seconds of simulated time).
    pub at: f64,
    /// Where.
    pub route: Route,
    /// Its price.
    pub amount: Usdc,
    /// Whether the anomaly made it (not the agent's legitimate traffic).
    pub anomalous: bool,
}

/// A simulated agent and its key.
#[derive(Debug, Clone)]
pub struct Agent {
    /// Its pattern.
    pub pattern: Pattern,
    /// Which of its pattern's agents it is, the run's seed and length: what draws it.
    index: u64,
    seed: u64,
    duration: f64,
    /// Its session key.
    pub key: Address,
    /// The key's owner.
    pub owner: Address,
    /// The key's limit.
    pub limit: Usdc,
    /// When the anomaly starts (seconds; never for a legitimate agent).
    pub onset: f64,
    /// Whether its legitimate traffic calls the image route.
    pub uses_images: bool,
    legit: Stream,
    anomaly: Option<Stream>,
    rng: StdRng,
}

impl Agent {
    /// Agent `index` of `pattern`, over `duration` seconds, drawn from `seed`: the same
    /// arguments give the same agent and the same calls.
    pub fn new(pattern: Pattern, index: u64, seed: u64, duration: f64) -> Self {
        Self::drawn(pattern, index, seed, duration, 0)
    }

    /// The agent in `period` (0: the run; 1: the period before it, all legitimate): the same
    /// key and habits, other calls.
    fn drawn(pattern: Pattern, index: u64, seed: u64, duration: f64, period: u64) -> Self {
        let agent_seed = seed ^ (index << 8) ^ ((pattern as u64) << 40);
        // Who the agent is and its habits come from one generator, its calls from another, so
        // another period of the same agent keeps its habits.
        let mut habits = StdRng::seed_from_u64(agent_seed);
        let mut rng = StdRng::seed_from_u64(agent_seed ^ (period + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let key = Address::from(habits.r#gen::<[u8; 20]>());
        let owner = Address::from(habits.r#gen::<[u8; 20]>());
        let big = Usdc::from_base_units(10_000_000_000);
        let onset = habits.r#gen::<f64>();
        let onset = if pattern.is_anomaly() && period == 0 {
            3_600.0 + onset * (duration / 2.0 - 3_600.0).max(0.0)
        } else {
            f64::INFINITY
        };
        let base = habits.gen_range(2.0..15.0);
        let poisson = |rate: f64| Timing::Poisson(rate);
        let (timing, mix, limit): (Timing, Mix, Usdc) = match pattern {
            Pattern::Steady => (poisson(habits.gen_range(2.0..40.0)), Mix::ChatAndEmbeddings, big),
            Pattern::Bursty => {
                let (size, spread) = (habits.gen_range(80..400), habits.gen_range(20.0..120.0));
                let every = habits.gen_range(1_200.0..5_400.0);
                let batch = Timing::Batches { background: habits.gen_range(1.0..5.0), every, size, spread };
                (batch, Mix::ChatAndEmbeddings, big)
            }
            Pattern::DailyCycle => {
                let peak = habits.gen_range(20.0..90.0);
                (Timing::Daily { trough: 1.0, peak, phase: habits.r#gen() }, Mix::ChatAndEmbeddings, big)
            }
            Pattern::MixedRoutes => {
                let rate = habits.gen_range(3.0..20.0);
                (poisson(rate), Mix::ChatAndImages(habits.gen_range(0.02..0.08)), big)
            }
            Pattern::SlowDrain => {
                // A limit its steady use spends in 40–90% of the run.
                let rate = habits.gen_range(5.0..30.0);
                let spend = rate * duration / 60.0 * 0.0021 * habits.gen_range(0.4..0.9);
                (poisson(rate), Mix::ChatAndEmbeddings, Usdc::from_base_units((spend * 1e6) as u64))
            }
            Pattern::NewKey => {
                let few = Timing::Few { count: habits.gen_range(3..=12), within: duration.min(86_400.0) };
                (few, Mix::ChatAndImages(0.08), big)
            }
            Pattern::RunawayRetry | Pattern::LeakedKey | Pattern::ExpensiveSwitch | Pattern::SlowLeak => {
                (poisson(base), Mix::ChatAndEmbeddings, big)
            }
        };
        let anomaly = match pattern {
            Pattern::RunawayRetry => Some((Timing::Paced(1.0 / habits.gen_range(5.0..20.0)), Mix::Chat)),
            Pattern::LeakedKey => Some((poisson(habits.gen_range(30.0..300.0)), Mix::ChatAndImages(0.33))),
            Pattern::ExpensiveSwitch => Some((poisson(base), Mix::Video)),
            // Paced so the key's mean rate is 88–97 a minute.
            Pattern::SlowLeak => Some((Timing::Paced(60.0 / (habits.gen_range(88.0..97.0) - base)), Mix::Chat)),
            _ => None,
        };
        // An expensive switch replaces the legitimate traffic; the others add to it.
        let legit_end = if pattern == Pattern::ExpensiveSwitch { onset.min(duration) } else { duration };
        let legit = Stream::new(timing, mix, 0.0, legit_end, &mut rng);
        let anomaly = anomaly.filter(|_| onset.is_finite()).map(|(t, m)| Stream::new(t, m, onset, duration, &mut rng));
        let uses_images = matches!(mix, Mix::ChatAndImages(_));
        Self { pattern, index, seed, duration, key, owner, limit, onset, uses_images, legit, anomaly, rng }
    }

    /// The most calls it made in any minute of the period before the run (all legitimate): what
    /// its owner reads off the key's usage to choose a calls-per-minute setting.
    pub fn busiest_minute_before(&self) -> u32 {
        let mut past = Self::drawn(self.pattern, self.index, self.seed, self.duration, 1);
        let mut window: std::collections::VecDeque<f64> = std::collections::VecDeque::new();
        let mut most = 0;
        while let Some(call) = past.take() {
            while window.front().is_some_and(|&t| t + 60.0 <= call.at) {
                window.pop_front();
            }
            window.push_back(call.at);
            most = most.max(window.len());
        }
        u32::try_from(most).unwrap_or(u32::MAX)
    }

    /// When its next call comes, if it makes another.
    pub fn next_at(&self) -> Option<f64> {
        let next = self.legit.next.min(self.anomaly.as_ref().map_or(f64::INFINITY, |s| s.next));
        next.is_finite().then_some(next)
    }

    /// Its next call, moving past it.
    pub fn take(&mut self) -> Option<Call> {
        let at = self.next_at()?;
        let anomalous = self.anomaly.as_ref().is_some_and(|s| s.next == at);
        let stream = match (&mut self.anomaly, anomalous) {
            (Some(stream), true) => stream,
            _ => &mut self.legit,
        };
        let route = stream.mix.pick(&mut self.rng);
        stream.advance(&mut self.rng);
        Some(Call { at, route, amount: route.price(&mut self.rng), anomalous })
    }

    /// Stops it for good (its key frozen after the anomaly, or spent).
    pub fn stop(&mut self) {
        self.legit.next = f64::INFINITY;
        if let Some(stream) = &mut self.anomaly {
            stream.next = f64::INFINITY;
        }
    }
}
