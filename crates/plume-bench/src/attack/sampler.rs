//! The server's resident memory and open file descriptors over an attack, read from `/proc`
//! every `--sample-every` seconds by a task of its own.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::periodic::Periodic;
use crate::procfs;

/// One reading of the server.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds since the attack started.
    pub t_s: f64,
    /// `VmRSS`, KiB.
    pub rss_kib: u64,
    /// Open file descriptors (sockets, the listener, the store's files, ...).
    pub fds: u64,
}

/// Reads the server now: `None` once its `/proc` entry is gone.
pub fn read(pid: u32, origin: Instant) -> Option<Sample> {
    Some(Sample {
        t_s: origin.elapsed().as_secs_f64(),
        rss_kib: procfs::rss_kib(pid)?,
        fds: procfs::open_fds(pid)?,
    })
}

/// A running sampler.
pub struct Sampler(Periodic<Sample>);

impl Sampler {
    /// Starts sampling `pid` every `every`, times taken from `origin`; ends early when the
    /// process is gone.
    pub fn start(pid: u32, origin: Instant, every: Duration) -> Sampler {
        Sampler(Periodic::start(every, move || async move {
            // Reading `/proc/PID/fd` of a server holding thousands of sockets takes a few
            // milliseconds; off the runtime's worker threads it delays nobody.
            tokio::task::spawn_blocking(move || read(pid, origin))
                .await
                .ok()
                .flatten()
        }))
    }

    /// Stops sampling and returns the samples.
    pub async fn finish(self) -> Vec<Sample> {
        self.0.finish().await
    }
}

/// The sample nearest to `t_s` (`None` when there are none).
pub fn nearest(samples: &[Sample], t_s: f64) -> Option<Sample> {
    samples
        .iter()
        .min_by(|a, b| (a.t_s - t_s).abs().total_cmp(&(b.t_s - t_s).abs()))
        .copied()
}

/// The highest RSS and the most descriptors among the samples.
pub fn peaks(samples: &[Sample]) -> (Option<u64>, Option<u64>) {
    (
        samples.iter().map(|s| s.rss_kib).max(),
        samples.iter().map(|s| s.fds).max(),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn s(t_s: f64, rss_kib: u64, fds: u64) -> Sample {
        Sample { t_s, rss_kib, fds }
    }

    #[test]
    fn nearest_and_peaks() {
        let samples = [s(0.0, 10, 12), s(0.5, 30, 2000), s(1.0, 20, 1500)];
        assert_eq!(nearest(&samples, 0.6).unwrap().fds, 2000);
        assert_eq!(nearest(&samples, 0.9).unwrap().fds, 1500);
        assert_eq!(nearest(&samples, 40.0).unwrap().t_s, 1.0);
        assert_eq!(nearest(&[], 1.0), None);
        assert_eq!(peaks(&samples), (Some(30), Some(2000)));
        assert_eq!(peaks(&[]), (None, None));
    }

    #[test]
    fn reads_this_process() {
        let origin = Instant::now();
        let a = read(std::process::id(), origin).unwrap();
        let b = read(std::process::id(), origin).unwrap();
        assert!(a.rss_kib > 0 && a.fds >= 3, "{a:?}");
        assert!(a.t_s <= b.t_s);
        // A pid that cannot exist (above the kernel's pid_max limit of 2^22).
        assert_eq!(read(u32::MAX, origin), None);
    }
}
