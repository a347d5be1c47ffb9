//! Metrics: what `GET /_partyhost/metrics` reports, in the Prometheus text
//! format (prometheus-client). This module owns the host's registry and the
//! handles each project resolves once ([`ProjectMetrics`]), so the hot path
//! pays an atomic add per message and a histogram observation per guest
//! call, never a lookup by name. Figures that already exist elsewhere (rooms,
//! instances, limit hits, queued bytes) are read at scrape time from a
//! [`ProjectSnapshot`] the caller gathers, not counted twice.

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Labels = Vec<(&'static str, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// Guest calls: 10 us to about 10 s.
fn call_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e-5, 4.0, 11))
}

/// Storage commits: 100 us to about 1.6 s.
fn commit_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e-4, 4.0, 8))
}

/// Compiles (and compile-cache loads): 1 ms to about 65 s.
fn compile_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e-3, 4.0, 9))
}

/// The host's metrics.
pub struct Metrics {
    /// Off (`--no-metrics`): nothing is counted, the endpoint is gone.
    enabled: bool,
    registry: Registry,
    messages_in: Family<Labels, Counter>,
    messages_out: Family<Labels, Counter>,
    connections: Family<Labels, Gauge>,
    guest_calls: Histograms,
    commits: Histograms,
    compiles: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("partyhost");
        let messages_in = Family::default();
        let messages_out = Family::default();
        let connections = Family::default();
        let guest_calls = Histograms::new_with_constructor(call_histogram);
        let commits = Histograms::new_with_constructor(commit_histogram);
        let compiles = compile_histogram();
        registry.register("messages_in", "WebSocket messages received from clients", messages_in.clone());
        registry.register("messages_out", "WebSocket frames written to clients", messages_out.clone());
        registry.register("connections", "Open WebSocket connections", connections.clone());
        registry.register_with_unit(
            "guest_call",
            "Time of each guest call (CPU time inside the sandbox), by handler",
            prometheus_client::registry::Unit::Seconds,
            guest_calls.clone(),
        );
        registry.register_with_unit(
            "commit",
            "Time of each storage commit (a transaction of one or more rooms' writes)",
            prometheus_client::registry::Unit::Seconds,
            commits.clone(),
        );
        registry.register_with_unit(
            "compile",
            "Time to compile a party's component, or to load it from the compile cache",
            prometheus_client::registry::Unit::Seconds,
            compiles.clone(),
        );
        Self {
            enabled: true,
            registry,
            messages_in,
            messages_out,
            connections,
            guest_calls,
            commits,
            compiles,
        }
    }
}

impl Metrics {
    /// Metrics that count nothing (`--no-metrics`; the benchmark's
    /// baseline).
    pub fn off() -> Self {
        Self { enabled: false, ..Self::default() }
    }

    /// Whether anything is counted.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The handles of one project's rooms.
    pub fn project(&self, project: &str) -> ProjectMetrics {
        let labels = vec![("project", project.to_owned())];
        ProjectMetrics {
            enabled: self.enabled,
            messages_in: self.messages_in.get_or_create_owned(&labels),
            messages_out: self.messages_out.get_or_create_owned(&labels),
            connections: self.connections.get_or_create_owned(&labels),
            commit: self.commits.get_or_create_owned(&labels),
            project: project.to_owned(),
            guest_calls: self.guest_calls.clone(),
            parties: Arc::default(),
        }
    }

    /// Records how long a party's compile (or cache load) took.
    pub fn compiled(&self, took: Duration) {
        if self.enabled {
            self.compiles.observe(took.as_secs_f64());
        }
    }

    /// The text exposition: the registry, then `projects`' figures.
    pub fn render(&self, projects: Vec<ProjectSnapshot>) -> String {
        let mut text = String::new();
        let mut scrape = Registry::with_prefix("partyhost");
        scrape.register_collector(Box::new(Snapshots(projects)));
        let encoded = prometheus_client::encoding::text::encode_registry(&mut text, &self.registry)
            .and_then(|()| prometheus_client::encoding::text::encode_registry(&mut text, &scrape))
            .and_then(|()| prometheus_client::encoding::text::encode_eof(&mut text));
        if let Err(e) = encoded {
            tracing::error!(cause = %e, "encoding metrics failed");
        }
        text
    }
}

/// One project's metric handles, resolved once.
#[derive(Clone, Debug)]
pub struct ProjectMetrics {
    enabled: bool,
    messages_in: Counter,
    messages_out: Counter,
    connections: Gauge,
    commit: Histogram,
    project: String,
    guest_calls: Histograms,
    /// Each party's call histograms, resolved at its first room.
    parties: Arc<Mutex<BTreeMap<String, Arc<CallTimes>>>>,
}

impl ProjectMetrics {
    /// A client sent a message.
    pub fn message_in(&self) {
        if self.enabled {
            self.messages_in.inc();
        }
    }

    /// `frames` were written to a client.
    pub fn frames_out(&self, frames: usize) {
        if self.enabled {
            self.messages_out.inc_by(frames as u64);
        }
    }

    /// A WebSocket joined a room (`true`) or left it.
    pub fn connection(&self, opened: bool) {
        if self.enabled {
            if opened {
                self.connections.inc();
            } else {
                self.connections.dec();
            }
        }
    }

    /// Where the storage thread records each commit's time.
    pub fn commits(&self) -> Option<Histogram> {
        self.enabled.then(|| self.commit.clone())
    }

    /// Forgets the call histograms of parties not in `parties` (after a
    /// deploy removed them), so redeploys do not grow the series forever.
    pub fn keep_parties(&self, parties: &[&str]) {
        let mut known = self.parties.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        known.retain(|party, _| {
            let keep = parties.contains(&party.as_str());
            if !keep {
                for handler in HANDLERS {
                    self.guest_calls.remove(&self.call_labels(party, handler));
                }
            }
            keep
        });
    }

    /// The labels of `party`'s histogram for `handler`.
    fn call_labels(&self, party: &str, handler: &str) -> Labels {
        vec![("project", self.project.clone()), ("party", party.to_owned()), ("handler", handler.to_owned())]
    }

    /// The call histograms of `party`.
    pub fn calls(&self, party: &str) -> Option<Arc<CallTimes>> {
        if !self.enabled {
            return None;
        }
        let mut parties = self.parties.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        parties
            .entry(party.to_owned())
            .or_insert_with(|| {
                let histogram =
                    |handler: &str| self.guest_calls.get_or_create_owned(&self.call_labels(party, handler));
                Arc::new(CallTimes { by_handler: HANDLERS.map(histogram) })
            })
            .clone()
            .into()
    }
}

/// The handlers a call can be, as the sandbox names them.
const HANDLERS: [&str; 13] = [
    "instantiation",
    "on-start",
    "on-connect",
    "on-message",
    "on-close",
    "on-error",
    "on-request",
    "on-alarm",
    "get-connection-tags",
    "resume",
    "traits",
    "on-before-connect",
    "on-before-request",
];

/// One party's call histograms, one per handler.
#[derive(Debug)]
pub struct CallTimes {
    by_handler: [Histogram; HANDLERS.len()],
}

impl CallTimes {
    /// Records a call of `handler` that took `took`.
    pub fn observe(&self, handler: &str, took: Duration) {
        if let Some(at) = HANDLERS.iter().position(|h| *h == handler) {
            self.by_handler[at].observe(took.as_secs_f64());
        }
    }
}

/// What a scrape reads of one project, gathered by the caller.
#[derive(Debug, Default)]
pub struct ProjectSnapshot {
    pub project: String,
    pub rooms: usize,
    pub live_instances: usize,
    pub queued_bytes: usize,
    pub limit_hits: BTreeMap<&'static str, u64>,
}

#[derive(Debug)]
struct Snapshots(Vec<ProjectSnapshot>);

/// A gauge read from each project's snapshot: name, help, value.
type SnapshotGauge = (&'static str, &'static str, fn(&ProjectSnapshot) -> usize);

impl prometheus_client::collector::Collector for Snapshots {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauges: [SnapshotGauge; 4] = [
            ("rooms", "Running rooms (live or hibernated)", |p| p.rooms),
            ("rooms_live", "Rooms with a live guest instance", |p| p.live_instances),
            ("rooms_hibernated", "Running rooms whose instance is evicted", |p| {
                p.rooms.saturating_sub(p.live_instances)
            }),
            ("queued_bytes", "Bytes waiting in sockets' outgoing queues", |p| p.queued_bytes),
        ];
        for (name, help, value) in gauges {
            let mut family =
                encoder.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Gauge)?;
            for project in &self.0 {
                let labels = [("project", project.project.as_str())];
                let gauge = ConstGauge::new(i64::try_from(value(project)).unwrap_or(i64::MAX));
                gauge.encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "limit_hits",
            "Times a limit stopped something, by limit",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for project in &self.0 {
            for (limit, hits) in &project.limit_hits {
                let labels = [("project", project.project.as_str()), ("limit", limit)];
                ConstCounter::new(*hits).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
