//! The node's Prometheus metrics: one process-wide set, recorded by every crate and served by
//! plume-server as `GET /metrics` (OpenMetrics text, encoded by `prometheus-client`).
//!
//! It lives here, in the lowest crate that every recording crate depends on (channels,
//! server, redis, chat), so no handle has to be threaded through constructors.
//!
//! # Cost on the hot path
//!
//! Counters and gauges are atomics behind an `Arc`. A labelled family keeps its children in a
//! map behind a lock, so the paths that run per message resolve their child once and keep the
//! handle: the fan-out adds its delivery count once per broadcast (not per subscriber), the
//! driver adds frames and bytes once per flush (into a [`ShardedCounter`], so two worker
//! threads flushing at once do not fight over one cache line), a route keeps its own join counters and
//! channel gauge (resolved when the route is registered), and a connection keeps its
//! transport's gauge. Only rare events (a close, a refused upgrade, a store operation, a
//! Redis round trip) look their child up when they happen.
//!
//! # Bounded labels
//!
//! Every label value comes from a closed set: transports, route patterns (`chat:*`, never the
//! topic), close codes the server sends, refusal reasons, store and operation names. No
//! label ever carries a topic, a user or a socket id.
//!
//! The families, their types and labels are listed in protocol-spec/metrics.md.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How a client is connected: the `transport` label of the connection metrics.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Transport {
    /// `/socket/websocket`.
    WebSocket,
    /// `/socket/longpoll`.
    LongPoll,
}

impl Transport {
    /// Every transport, in label order.
    pub const ALL: [Transport; 2] = [Transport::WebSocket, Transport::LongPoll];

    /// The label value: `websocket` or `longpoll`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::LongPoll => "longpoll",
        }
    }

    fn index(self) -> usize {
        match self {
            Transport::WebSocket => 0,
            Transport::LongPoll => 1,
        }
    }
}

impl EncodeLabelValue for Transport {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabel {
    transport: Transport,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PrefixLabel {
    prefix: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JoinLabels {
    prefix: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreOpLabels {
    store: &'static str,
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreErrorLabels {
    store: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// The `reason` values of `plume_broadcasts_dropped_total`: the Redis publish queue was full,
/// a Redis publish failed, a sequenced topic held too many early broadcasts, the publisher
/// task had stopped, a broadcast could not be encoded for other nodes. The first, fourth and
/// fifth are [`crate::PubSubError::drop_reason`]'s.
pub const DROP_REASONS: [&str; 5] = [
    "publish_queue_full",
    "publish_failed",
    "held_overflow",
    "publisher_stopped",
    "encode_failed",
];

/// The `source` values of `plume_history_reads_total`: a join's `history`, the `history`
/// push, the backend API.
pub const HISTORY_SOURCES: [&str; 3] = ["join", "push", "api"];

/// The `prefix` label of joins to a topic no route matches.
pub const UNMATCHED_PREFIX: &str = "unmatched";

/// Latency buckets (seconds) shared by every histogram: 50 µs doubling to ~1.6 s, 16 buckets,
/// which spans an in-memory store call to a Redis round trip under load.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_05, 2.0, 16)
}

fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric of the node. Reach it through [`metrics`].
pub struct Metrics {
    registry: Registry,
    connections: [Gauge; 2],
    connections_opened: [Counter; 2],
    joins: Family<JoinLabels, Counter>,
    channels: Family<PrefixLabel, Gauge>,
    messages_in: ShardedCounter,
    messages_out: ShardedCounter,
    deliveries: ShardedCounter,
    bytes_written: ShardedCounter,
    closes: Family<CodeLabel, Counter>,
    upgrades_refused: Family<ReasonLabel, Counter>,
    slow_consumer_closes: Counter,
    store_operations: HistogramFamily<StoreOpLabels>,
    store_errors: Family<StoreErrorLabels, Counter>,
    redis_publish: Histogram,
    redis_round_trip: Histogram,
    broadcasts_dropped: Family<ReasonLabel, Counter>,
    recoveries: Family<ResultLabel, Counter>,
    history_reads: Family<SourceLabel, Counter>,
    draining: Gauge,
    drain_closes: Counter,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The node's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Every metric in the OpenMetrics text format (served with [`CONTENT_TYPE`]).
pub fn encode() -> String {
    metrics().encode()
}

/// The value of the sample `name` (the metric name with its labels, exactly as encoded, e.g.
/// `plume_closes_total{code="4008"}`) in an OpenMetrics `text`: what a scraper would read.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

impl Metrics {
    fn encode(&self) -> String {
        let mut out = String::with_capacity(16 << 10);
        if let Err(err) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            // Encoding into a String only fails if a metric's own encoder does; say so in the
            // exposition instead of serving half of it silently.
            out.clear();
            let _ = writeln!(out, "# metrics encoding failed: {err}\n# EOF");
        }
        out
    }
}

/// Slots of a [`ShardedCounter`]: more than the worker threads of a typical node, so threads
/// rarely share one.
const SLOTS: usize = 16;

static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's slot in every [`ShardedCounter`], handed out round robin.
    static SLOT: usize = NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % SLOTS;
}

/// A slot on its own cache line (128 bytes covers adjacent-line prefetching).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Slot(AtomicU64);

/// A counter for the per-message paths: each thread adds to its own slot (a relaxed atomic
/// add on a cache line no other thread writes, so no lock and no line bouncing between
/// cores), and a scrape sums the slots. Exposed as an ordinary Prometheus counter.
#[derive(Clone, Debug, Default)]
pub struct ShardedCounter {
    slots: Arc<[Slot; SLOTS]>,
}

impl ShardedCounter {
    /// Adds `v`.
    pub fn inc_by(&self, v: u64) {
        let slot = SLOT.with(|s| *s);
        self.slots[slot].0.fetch_add(v, Ordering::Relaxed);
    }

    /// The total over every thread.
    pub fn get(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

impl TypedMetric for ShardedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ShardedCounter {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> std::fmt::Result {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A route's join counters and channel gauge, resolved once when the route is registered so
/// that a join touches no lock.
#[derive(Clone, Debug)]
pub struct RouteMetrics {
    joined: Counter,
    refused: Counter,
    failed: Counter,
    channels: Gauge,
}

/// How a join ended, for the `result` label of `plume_joins_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinResult {
    /// The channel joined.
    Ok,
    /// The join was refused (by the channel, or by a socket limit).
    Refused,
    /// The channel's join failed or panicked.
    Failed,
}

impl RouteMetrics {
    /// Counts one join to this route.
    pub fn join(&self, result: JoinResult) {
        match result {
            JoinResult::Ok => &self.joined,
            JoinResult::Refused => &self.refused,
            JoinResult::Failed => &self.failed,
        }
        .inc();
    }

    /// The gauge of channels joined on this route now.
    pub fn channels(&self) -> &Gauge {
        &self.channels
    }
}

/// One open connection of a transport; the `plume_connections` gauge counts it until this is
/// dropped.
#[derive(Debug)]
pub struct ConnectionGuard {
    gauge: Gauge,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let connections_family = Family::<TransportLabel, Gauge>::default();
        let opened_family = Family::<TransportLabel, Counter>::default();
        let connections = Transport::ALL
            .map(|transport| connections_family.get_or_create_owned(&TransportLabel { transport }));
        let connections_opened = Transport::ALL
            .map(|transport| opened_family.get_or_create_owned(&TransportLabel { transport }));
        let m = Metrics {
            connections,
            connections_opened,
            joins: Family::default(),
            channels: Family::default(),
            messages_in: ShardedCounter::default(),
            messages_out: ShardedCounter::default(),
            deliveries: ShardedCounter::default(),
            bytes_written: ShardedCounter::default(),
            closes: Family::default(),
            upgrades_refused: Family::default(),
            slow_consumer_closes: Counter::default(),
            store_operations: Family::new_with_constructor(latency_histogram),
            store_errors: Family::default(),
            redis_publish: latency_histogram(),
            redis_round_trip: latency_histogram(),
            broadcasts_dropped: Family::default(),
            recoveries: Family::default(),
            history_reads: Family::default(),
            draining: Gauge::default(),
            drain_closes: Counter::default(),
            registry: Registry::default(),
        };
        // The families with a fixed set of label values show every value from the start
        // (at zero), so a dashboard's rate() has a series before the first event.
        for reason in DROP_REASONS {
            m.broadcasts_dropped
                .get_or_create_owned(&ReasonLabel { reason });
        }
        for result in ["recovered", "too_far_behind"] {
            m.recoveries.get_or_create_owned(&ResultLabel { result });
        }
        for source in HISTORY_SOURCES {
            m.history_reads.get_or_create_owned(&SourceLabel { source });
        }
        registry.register(
            "plume_connections",
            "Open client connections, by transport",
            connections_family,
        );
        registry.register(
            "plume_connections_opened",
            "Client connections opened since start, by transport",
            opened_family,
        );
        registry.register(
            "plume_joins",
            "Channel joins, by route prefix and result (ok, refused, failed)",
            m.joins.clone(),
        );
        registry.register(
            "plume_channels",
            "Channels joined now, by route prefix",
            m.channels.clone(),
        );
        registry.register(
            "plume_messages_in",
            "Messages received from clients (decoded frames)",
            m.messages_in.clone(),
        );
        registry.register(
            "plume_messages_out",
            "Frames written to clients (replies, pushes and broadcasts)",
            m.messages_out.clone(),
        );
        registry.register(
            "plume_deliveries",
            "Broadcast frames queued for this node's subscribers",
            m.deliveries.clone(),
        );
        registry.register(
            "plume_written_bytes",
            "Payload bytes of the frames written to clients",
            m.bytes_written.clone(),
        );
        registry.register(
            "plume_closes",
            "WebSocket close frames sent, by close code",
            m.closes.clone(),
        );
        registry.register(
            "plume_upgrades_refused",
            "Connection attempts refused before a socket existed, by reason",
            m.upgrades_refused.clone(),
        );
        registry.register(
            "plume_slow_consumer_closes",
            "Sockets closed because their outbound queue overflowed",
            m.slow_consumer_closes.clone(),
        );
        registry.register(
            "plume_store_operation_duration_seconds",
            "Chat store operation latency, by store and operation",
            m.store_operations.clone(),
        );
        registry.register(
            "plume_store_errors",
            "Chat store operations that failed, by store and kind of failure",
            m.store_errors.clone(),
        );
        registry.register(
            "plume_redis_publish_duration_seconds",
            "Latency of one pipelined batch of Redis PUBLISHes",
            m.redis_publish.clone(),
        );
        registry.register(
            "plume_redis_pubsub_round_trip_seconds",
            "Latency of a message published to and received back from this node's Redis subscription",
            m.redis_round_trip.clone(),
        );
        registry.register(
            "plume_broadcasts_dropped",
            "Broadcasts not delivered or not forwarded, by reason",
            m.broadcasts_dropped.clone(),
        );
        registry.register(
            "plume_recoveries",
            "Joins that asked to recover missed messages, by result (recovered, too_far_behind)",
            m.recoveries.clone(),
        );
        registry.register(
            "plume_history_reads",
            "Reads of a chat's history, by source (join, push, api)",
            m.history_reads.clone(),
        );
        registry.register(
            "plume_draining",
            "1 while the node drains its sockets before stopping",
            m.draining.clone(),
        );
        registry.register(
            "plume_drain_closes",
            "Sockets told to close by a drain",
            m.drain_closes.clone(),
        );
        registry.register(
            "plume_build",
            "The running build",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        Metrics { registry, ..m }
    }

    /// Counts a connection of `transport` as open until the guard is dropped (also counts it
    /// in `plume_connections_opened_total`). The LongPoll transport calls this with
    /// [`Transport::LongPoll`] per session.
    pub fn connection_opened(&self, transport: Transport) -> ConnectionGuard {
        let i = transport.index();
        self.connections_opened[i].inc();
        let gauge = self.connections[i].clone();
        gauge.inc();
        ConnectionGuard { gauge }
    }

    /// The join counters and channel gauge of a route, by its pattern's bounded label
    /// (`chat:*`; [`UNMATCHED_PREFIX`] for topics no route matches).
    pub fn route(&self, prefix: &str) -> RouteMetrics {
        let join = |result| {
            self.joins.get_or_create_owned(&JoinLabels {
                prefix: prefix.to_owned(),
                result,
            })
        };
        RouteMetrics {
            joined: join("ok"),
            refused: join("refused"),
            failed: join("failed"),
            channels: self.channels.get_or_create_owned(&PrefixLabel {
                prefix: prefix.to_owned(),
            }),
        }
    }

    /// One message decoded from a client.
    pub fn message_in(&self) {
        self.messages_in.inc_by(1);
    }

    /// One flush to a client: `frames` frames of `bytes` payload bytes in all.
    pub fn frames_written(&self, frames: u64, bytes: u64) {
        self.messages_out.inc_by(frames);
        self.bytes_written.inc_by(bytes);
    }

    /// A broadcast was queued for `n` local subscribers (called once per broadcast).
    pub fn delivered(&self, n: u64) {
        if n > 0 {
            self.deliveries.inc_by(n);
        }
    }

    /// A close frame with `code` was sent.
    pub fn close_sent(&self, code: u16) {
        self.closes.get_or_create(&CodeLabel { code }).inc();
    }

    /// A connection attempt was refused before it became a socket. `reason` is one of a
    /// fixed set (see protocol-spec/metrics.md).
    pub fn upgrade_refused(&self, reason: &'static str) {
        self.upgrades_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// A socket was closed because its outbound queue overflowed.
    pub fn slow_consumer_closed(&self) {
        self.slow_consumer_closes.inc();
    }

    /// A chat store operation took `elapsed`.
    pub fn store_operation(&self, store: &'static str, operation: &'static str, elapsed: Duration) {
        self.store_operations
            .get_or_create(&StoreOpLabels { store, operation })
            .observe(elapsed.as_secs_f64());
    }

    /// A chat store operation on `store` failed with an error of `kind` (a closed set: the
    /// chat service's `StoreError::kind`).
    pub fn store_error(&self, store: &'static str, kind: &'static str) {
        self.store_errors
            .get_or_create(&StoreErrorLabels { store, kind })
            .inc();
    }

    /// A pipelined batch of Redis PUBLISHes took `elapsed`.
    pub fn redis_published(&self, elapsed: Duration) {
        self.redis_publish.observe(elapsed.as_secs_f64());
    }

    /// A pub/sub round trip through Redis took `elapsed`.
    pub fn redis_round_trip(&self, elapsed: Duration) {
        self.redis_round_trip.observe(elapsed.as_secs_f64());
    }

    /// `n` broadcasts were dropped for `reason` (one of a fixed set).
    pub fn broadcasts_dropped(&self, reason: &'static str, n: u64) {
        self.broadcasts_dropped
            .get_or_create(&ReasonLabel { reason })
            .inc_by(n);
    }

    /// A join asked for recovery; `recovered` says whether the log still had what it missed.
    pub fn recovery(&self, recovered: bool) {
        let result = if recovered {
            "recovered"
        } else {
            "too_far_behind"
        };
        self.recoveries.get_or_create(&ResultLabel { result }).inc();
    }

    /// A chat's history was read, from `source` (`join`, `push` or `api`).
    pub fn history_read(&self, source: &'static str) {
        self.history_reads
            .get_or_create(&SourceLabel { source })
            .inc();
    }

    /// Whether the node is draining.
    pub fn set_draining(&self, draining: bool) {
        self.draining.set(i64::from(draining));
    }

    /// A drain told `n` sockets to close.
    pub fn drain_closed(&self, n: u64) {
        self.drain_closes.inc_by(n);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;

    /// The value of the sample `name` (with its exact label text) in the exposition.
    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn a_sharded_counter_sums_what_every_thread_added() {
        let c = ShardedCounter::default();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        c.inc_by(3);
                    }
                });
            }
        });
        c.inc_by(1);
        assert_eq!(c.get(), 12_001);
    }

    #[test]
    fn records_show_in_the_exposition_with_types_and_bounded_labels() {
        // A registry of its own: the process-wide one is shared with the other tests.
        let m = &Metrics::new();
        let guard = m.connection_opened(Transport::LongPoll);
        let route = m.route("test:*");
        route.join(JoinResult::Ok);
        route.join(JoinResult::Refused);
        route.channels().inc();
        m.frames_written(3, 120);
        m.delivered(7);
        m.close_sent(1001);
        m.upgrade_refused("origin");
        m.store_operation("memory", "append", Duration::from_micros(70));
        m.broadcasts_dropped("publish_queue_full", 2);
        m.recovery(false);
        m.history_read("push");
        let text = m.encode();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("# TYPE plume_connections gauge"), "{text}");
        assert!(text.contains("# TYPE plume_joins counter"), "{text}");
        assert!(text.contains("# TYPE plume_store_operation_duration_seconds histogram"));
        assert!(text.contains("# TYPE plume_build info"), "{text}");
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            sample(&text, &format!("plume_build_info{{version=\"{version}\"}}")),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "plume_connections{transport=\"longpoll\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "plume_connections{transport=\"websocket\"}"),
            Some(0.0),
            "every transport is exposed from the start"
        );
        assert_eq!(
            sample(&text, "plume_joins_total{prefix=\"test:*\",result=\"ok\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "plume_joins_total{prefix=\"test:*\",result=\"refused\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "plume_channels{prefix=\"test:*\"}"),
            Some(1.0)
        );
        assert_eq!(sample(&text, "plume_messages_out_total"), Some(3.0));
        assert_eq!(sample(&text, "plume_written_bytes_total"), Some(120.0));
        assert_eq!(sample(&text, "plume_deliveries_total"), Some(7.0));
        assert_eq!(
            sample(&text, "plume_closes_total{code=\"1001\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "plume_upgrades_refused_total{reason=\"origin\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "plume_store_operation_duration_seconds_count{store=\"memory\",operation=\"append\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "plume_store_operation_duration_seconds_bucket{le=\"0.0001\",store=\"memory\",operation=\"append\"}"
            ),
            Some(1.0),
            "70 µs falls in the 100 µs bucket: {text}"
        );
        assert_eq!(
            sample(
                &text,
                "plume_broadcasts_dropped_total{reason=\"publish_queue_full\"}"
            ),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "plume_recoveries_total{result=\"too_far_behind\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "plume_history_reads_total{source=\"push\"}"),
            Some(1.0)
        );
        drop(guard);
        assert_eq!(
            sample(&m.encode(), "plume_connections{transport=\"longpoll\"}"),
            Some(0.0),
            "the guard's drop closes the connection"
        );
    }
}
