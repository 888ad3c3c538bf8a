//! What a worker counts: latency histograms and per-interval counters, merged at the end.
//!
//! Each worker task owns its own [`Latency`] and [`Timeline`] values (no locks, no atomics on
//! the per-message path); the runner merges them once the run is over.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest latency recorded, in microseconds (two minutes); larger values are clamped.
pub const MAX_LATENCY_US: u64 = 120_000_000;

/// Percentiles listed in summaries, in this order.
pub const SUMMARY_PERCENTILES: [f64; 4] = [50.0, 90.0, 99.0, 99.9];

/// A latency distribution in microseconds (HDR histogram, 3 significant digits).
#[derive(Clone, Debug)]
pub struct Latency {
    hist: Histogram<u64>,
}

impl Latency {
    /// An empty distribution.
    pub fn new() -> Latency {
        // Constant bounds that hdrhistogram accepts (low >= 1, high >= 2 * low, sigfig <= 5).
        let hist = Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
            .expect("constant histogram bounds are valid");
        Latency { hist }
    }

    /// Records one latency given in nanoseconds (rounded to microseconds, at least 1).
    pub fn record_ns(&mut self, ns: u64) {
        let us = (ns / 1_000).clamp(1, MAX_LATENCY_US);
        self.hist.saturating_record(us);
    }

    /// Adds another worker's distribution to this one.
    pub fn merge(&mut self, other: &Latency) {
        // Both histograms have the same bounds, so adding cannot fail; if it did, the
        // values are re-recorded one bucket at a time.
        if self.hist.add(&other.hist).is_err() {
            for v in other.hist.iter_recorded() {
                self.hist
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    /// Number of values recorded.
    pub fn len(&self) -> u64 {
        self.hist.len()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.hist.is_empty()
    }

    /// The value at a percentile (0-100), in microseconds.
    pub fn percentile_us(&self, pct: f64) -> u64 {
        self.hist.value_at_percentile(pct)
    }

    /// The summary written to results, or `None` when nothing was recorded.
    pub fn summary(&self) -> Option<LatencySummary> {
        if self.hist.is_empty() {
            return None;
        }
        Some(LatencySummary {
            count: self.hist.len(),
            min_us: self.hist.min(),
            mean_us: self.hist.mean(),
            p50_us: self.percentile_us(50.0),
            p90_us: self.percentile_us(90.0),
            p99_us: self.percentile_us(99.0),
            p999_us: self.percentile_us(99.9),
            max_us: self.hist.max(),
            curve: percentile_curve(self),
        })
    }
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

/// Points of the percentile curve: `[percentile, milliseconds]`, spaced evenly on the
/// `1 / (1 - p)` axis from 0 % up to 99.999 % (or as far as the sample count supports).
fn percentile_curve(lat: &Latency) -> Vec<[f64; 2]> {
    let count = lat.len() as f64;
    let mut points = Vec::new();
    for step in 0..=100 {
        // 1 - p = 10^(-step/20): 0 %, ..., 90 %, ..., 99 %, ..., 99.999 %.
        let tail = 10f64.powf(-f64::from(step) / 20.0);
        let pct = 100.0 * (1.0 - tail);
        // Beyond 1/count the percentile is just the maximum again.
        if step > 0 && tail * count < 1.0 {
            break;
        }
        points.push([pct, lat.percentile_us(pct) as f64 / 1_000.0]);
    }
    points.push([100.0, lat.hist.max() as f64 / 1_000.0]);
    points
}

/// A latency distribution as the results file keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Values recorded.
    pub count: u64,
    /// Smallest, microseconds.
    pub min_us: u64,
    /// Mean, microseconds.
    pub mean_us: f64,
    /// Median, microseconds.
    pub p50_us: u64,
    /// 90th percentile, microseconds.
    pub p90_us: u64,
    /// 99th percentile, microseconds.
    pub p99_us: u64,
    /// 99.9th percentile, microseconds.
    pub p999_us: u64,
    /// Largest, microseconds.
    pub max_us: u64,
    /// `[percentile, milliseconds]` points for the percentile chart.
    pub curve: Vec<[f64; 2]>,
}

/// Counts per fixed interval since the start of the run (deliveries, sends).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeline {
    bucket_ns: u64,
    counts: Vec<u64>,
    max_buckets: usize,
}

impl Timeline {
    /// A timeline of `bucket_ms` intervals covering at most `span_ms` (later counts are
    /// dropped, so a run's memory stays bounded).
    pub fn new(bucket_ms: u64, span_ms: u64) -> Timeline {
        let bucket_ms = bucket_ms.max(1);
        let max_buckets = usize::try_from(span_ms.div_ceil(bucket_ms).max(1)).unwrap_or(1);
        Timeline {
            bucket_ns: bucket_ms * 1_000_000,
            counts: Vec::new(),
            max_buckets,
        }
    }

    /// Adds `n` at `offset_ns` after the start.
    pub fn add(&mut self, offset_ns: u64, n: u64) {
        let index = usize::try_from(offset_ns / self.bucket_ns).unwrap_or(usize::MAX);
        if index >= self.max_buckets {
            return;
        }
        if index >= self.counts.len() {
            self.counts.resize(index + 1, 0);
        }
        self.counts[index] += n;
    }

    /// Adds another timeline with the same interval.
    pub fn merge(&mut self, other: &Timeline) {
        if other.counts.len() > self.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
    }

    /// The total of all intervals.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `(end of interval in seconds, rate per second)` for each interval.
    pub fn rates(&self) -> Vec<(f64, f64)> {
        let secs = self.bucket_ns as f64 / 1e9;
        self.counts
            .iter()
            .enumerate()
            .map(|(i, &n)| ((i + 1) as f64 * secs, n as f64 / secs))
            .collect()
    }

    /// The interval length in seconds.
    pub fn bucket_secs(&self) -> f64 {
        self.bucket_ns as f64 / 1e9
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_counts_and_keeps_extremes() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        for us in 1..=1_000u64 {
            a.record_ns(us * 1_000);
        }
        b.record_ns(50_000_000); // 50 ms
        b.record_ns(10); // below 1 us: recorded as 1 us
        a.merge(&b);
        assert_eq!(a.len(), 1_002);
        let s = a.summary().unwrap();
        assert_eq!(s.min_us, 1);
        assert!(s.max_us >= 49_990 && s.max_us <= 50_100, "{}", s.max_us);
        assert!((495..=505).contains(&s.p50_us), "{}", s.p50_us);
        assert!((985..=995).contains(&s.p99_us), "{}", s.p99_us);
        assert!(s.p999_us >= s.p99_us);
        // The curve rises monotonically and ends at the maximum.
        assert!(
            s.curve
                .windows(2)
                .all(|w| w[0][1] <= w[1][1] && w[0][0] < w[1][0])
        );
        assert_eq!(s.curve.last().unwrap()[0], 100.0);
    }

    #[test]
    fn empty_and_clamped() {
        assert!(Latency::new().summary().is_none());
        let mut l = Latency::new();
        l.record_ns(u64::MAX);
        assert_eq!(l.len(), 1);
        assert!(l.percentile_us(100.0) >= MAX_LATENCY_US);
    }

    #[test]
    fn timeline_buckets_merge_and_bound() {
        let mut a = Timeline::new(100, 1_000);
        a.add(0, 1);
        a.add(99_999_999, 1);
        a.add(150_000_000, 5);
        a.add(5_000_000_000, 9); // beyond the span: dropped
        let mut b = Timeline::new(100, 1_000);
        b.add(950_000_000, 2);
        a.merge(&b);
        assert_eq!(a.total(), 9);
        let rates = a.rates();
        assert_eq!(rates.len(), 10);
        assert!((rates[0].1 - 20.0).abs() < 1e-9);
        assert!((rates[1].1 - 50.0).abs() < 1e-9);
        assert!((rates[9].0 - 1.0).abs() < 1e-9);
        assert!((a.bucket_secs() - 0.1).abs() < 1e-12);
    }
}
