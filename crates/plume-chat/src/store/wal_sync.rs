//! The embedded store's flush to disk, on a thread of its own.
//!
//! The writer connection commits with `synchronous = NORMAL`: in WAL mode a commit then
//! appends its pages to the WAL file (the OS page cache) and returns without waiting for the
//! disk. The flusher thread ([`flush_loop`]) takes every batch committed so far, flushes the
//! WAL file once (`fdatasync`) and only then answers those batches' jobs. Meanwhile the
//! writer runs the jobs that arrive into the next batch, and commits it once the flush is
//! done, so each flush covers one batch of everything that arrived while the previous one
//! took the disk. A job is still answered only after its batch is on disk.
//!
//! Why one `fdatasync` of the WAL makes every batch committed before it durable: a batch's
//! pages and commit frame are in the WAL file until a checkpoint has copied them into the
//! database file; SQLite resets the WAL (writes over it from the start) only after a
//! checkpoint copied *everything* and, with `NORMAL`, synced the database file. So when the
//! flush runs, each earlier batch is either in the WAL file it flushes or already in a
//! synced database file. A process crash loses nothing committed either way (the page
//! cache survives it); this ordering is what makes an acknowledged send survive a power cut.
//!
//! Reads are held to the same rule ([`Durability::after`]): a read that began after batch N
//! began to commit is answered only once N is flushed, so no client is shown a message that
//! a power cut could still take back (and whose seq could then be given to another).

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use parking_lot::Mutex;

/// Whether a batch reached the disk, as its jobs are told.
pub(super) enum BatchFailure {
    /// `COMMIT` failed; the batch was rolled back.
    Commit(rusqlite::Error),
    /// The batch was committed, but flushing the WAL failed.
    Flush(std::io::Error),
}

/// What a write job does once its batch's fate is known: `None` when it is on disk.
pub(super) type Finish = Box<dyn FnOnce(Option<&BatchFailure>) + Send>;

/// One batch handed from the writer to the flusher.
pub(super) struct Committed {
    /// The batch's number ([`Durability::begin_commit`]).
    pub number: u64,
    /// Set when its `COMMIT` failed (it is answered with that, after no flush of its own).
    pub failed: Option<rusqlite::Error>,
    /// Its jobs' answers.
    pub finishes: Vec<Finish>,
}

/// A read's answer waiting for a batch to reach the disk.
type Waiter = Box<dyn FnOnce() + Send>;

/// Batches begun and batches on disk, shared by the writer, the flusher and the reader.
#[derive(Default)]
pub(super) struct Durability {
    /// The number of the newest batch whose `COMMIT` has been issued.
    begun: AtomicU64,
    flushed: Mutex<Flushed>,
}

#[derive(Default)]
struct Flushed {
    /// Every batch up to this number is on disk (or failed).
    upto: u64,
    /// Answers to release once `upto` reaches their number.
    waiting: Vec<(u64, Waiter)>,
}

impl Durability {
    /// Called by the writer just before `COMMIT`: the batch's number.
    pub(super) fn begin_commit(&self) -> u64 {
        self.begun.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The newest batch a query starting now could see.
    pub(super) fn newest(&self) -> u64 {
        self.begun.load(Ordering::Acquire)
    }

    /// Runs `answer` once every batch up to `number` is on disk: at once if it already is,
    /// otherwise on the flusher's thread right after the flush.
    pub(super) fn after(&self, number: u64, answer: impl FnOnce() + Send + 'static) {
        let mut flushed = self.flushed.lock();
        if flushed.upto >= number {
            drop(flushed);
            answer();
        } else {
            flushed.waiting.push((number, Box::new(answer)));
        }
    }

    /// Records that batches up to `number` are on disk and releases what waited for them.
    fn flushed(&self, number: u64) {
        let ready: Vec<Waiter> = {
            let mut flushed = self.flushed.lock();
            flushed.upto = flushed.upto.max(number);
            let upto = flushed.upto;
            let (ready, still): (Vec<_>, Vec<_>) =
                flushed.waiting.drain(..).partition(|(n, _)| *n <= upto);
            flushed.waiting = still;
            ready.into_iter().map(|(_, w)| w).collect()
        };
        for answer in ready {
            answer();
        }
    }

    /// Batches flushed so far (for tests).
    #[cfg(test)]
    pub(super) fn flushed_upto(&self) -> u64 {
        self.flushed.lock().upto
    }
}

/// The flusher thread: one `fdatasync` of `wal` for everything committed meanwhile, then
/// the answers, in commit order. Ends when the writer drops its sender.
pub(super) fn flush_loop(
    wal: PathBuf,
    rx: mpsc::Receiver<Committed>,
    durability: std::sync::Arc<Durability>,
    stats: std::sync::Arc<super::sqlite::SqliteStats>,
    flushed: impl Fn(usize),
) {
    let mut file: Option<File> = None;
    while let Ok(first) = rx.recv() {
        let mut batches = vec![first];
        while let Ok(more) = rx.try_recv() {
            batches.push(more);
        }
        let newest = batches.iter().map(|b| b.number).max().unwrap_or(0);
        let flush = if batches.iter().any(|b| b.failed.is_none()) {
            stats.flushes.fetch_add(1, Ordering::Relaxed);
            flush(&wal, &mut file).map_err(|err| {
                tracing::error!(%err, wal = %wal.display(), "sqlite: flushing the WAL failed; \
                    the batches in it are not acknowledged");
                // The descriptor may be the reason; open the file afresh next time.
                file = None;
                BatchFailure::Flush(err)
            })
        } else {
            Ok(())
        };
        durability.flushed(newest);
        // The writer may now commit the batch it has been filling.
        flushed(batches.len());
        for batch in batches {
            let failure = match (&batch.failed, &flush) {
                (Some(err), _) => Some(BatchFailure::Commit(super::error::copy_sqlite_error(err))),
                (None, Err(BatchFailure::Flush(err))) => Some(BatchFailure::Flush(
                    std::io::Error::new(err.kind(), err.to_string()),
                )),
                (None, _) => None,
            };
            for finish in batch.finishes {
                finish(failure.as_ref());
            }
        }
    }
}

fn flush(wal: &PathBuf, file: &mut Option<File>) -> std::io::Result<()> {
    let file = match file {
        Some(file) => file,
        None => file.insert(File::open(wal)?),
    };
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::Durability;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn an_answer_waits_for_its_batch_and_no_longer() {
        let durability = Durability::default();
        let answered = Arc::new(AtomicUsize::new(0));
        let count = |a: &Arc<AtomicUsize>| {
            let a = a.clone();
            move || {
                a.fetch_add(1, Ordering::SeqCst);
            }
        };
        durability.after(0, count(&answered));
        assert_eq!(
            answered.load(Ordering::SeqCst),
            1,
            "nothing committed: at once"
        );
        let first = durability.begin_commit();
        let second = durability.begin_commit();
        durability.after(durability.newest(), count(&answered));
        durability.after(first, count(&answered));
        assert_eq!(answered.load(Ordering::SeqCst), 1, "held until flushed");
        durability.flushed(first);
        assert_eq!(
            answered.load(Ordering::SeqCst),
            2,
            "the first batch's reader only"
        );
        durability.flushed(second);
        assert_eq!(answered.load(Ordering::SeqCst), 3);
        assert_eq!(durability.flushed_upto(), second);
    }
}
