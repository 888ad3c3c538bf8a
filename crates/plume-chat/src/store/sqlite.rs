//! The embedded durable store, the single-node default: SQLite (bundled through rusqlite) in
//! WAL mode under `--data-dir`. It keeps the message log, send idempotency keys, membership
//! and pending notifications; presence stays in memory (after a restart nobody is connected).
//!
//! # Threads and group commit
//!
//! One writer thread owns the writing connection. Every write (an append, a membership
//! change, pending notifications) is a job on its queue; the thread takes every job waiting
//! (up to [`MAX_BATCH`]), runs each inside its own savepoint of one transaction and commits
//! once. A flusher thread then flushes the WAL (`fdatasync`) for every batch committed since
//! its last flush and only then answers their jobs (see `wal_sync`), while the writer goes on
//! with the next batch. So a send is acknowledged after its message is on disk, a burst of
//! sends shares one flush instead of paying one each, and the writer never waits for the
//! disk. One reader thread owns a second connection for reads (WAL readers see every
//! committed transaction and never block the writer); a read is answered once what it saw is
//! on disk. No thread is a tokio worker, so a slow disk never stalls the runtime; callers
//! await a oneshot.
//!
//! The WAL is kept small: the reader thread checkpoints it every 500 ms (copying pages into
//! the database without waiting for anyone) and the writer, once the WAL holds
//! [`WRITER_CHECKPOINT_FRAMES`] frames, finishes the copy between two batches, which lets
//! SQLite start the WAL again from the beginning. (Without the writer's checkpoint a busy writer never let the
//! reader's catch up, and the WAL grew by 100 MB a second under load.)
//!
//! # Schema
//!
//! Version [`SCHEMA_VERSION`], recorded in `meta`. A database written by a newer schema is
//! refused at start; an older one is upgraded in place by the steps in `MIGRATIONS`
//! (version 2 added read positions). `protocol-spec/storage.md` documents the tables.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use super::memory::{MemoryMembership, MemoryPresence};
use super::wal_sync::{BatchFailure, Committed, Durability, Finish, flush_loop};
use super::{
    Appended, Draft, LogHead, LoggedMessage, MembershipStore, MessageLog, PendingItem,
    PendingLimits, PendingStore, ReadStore, Retention, SendKey, SentRecord, StoreError, Stores,
    UserChat, new_epoch,
};
use crate::store::error::copy_sqlite_error;
use crate::time::now_millis;

/// The schema this build writes.
pub const SCHEMA_VERSION: i64 = 3;
/// The database file inside the data dir.
pub const DB_FILE: &str = "plume.db";
/// Most jobs committed together.
pub const MAX_BATCH: usize = 512;
/// The writer checkpoints the WAL when it holds this many frames (64 MiB of 4 KiB pages).
///
/// Why so many: a checkpoint copies each page once, its newest version, however often the
/// WAL holds it, and a busy chat's last page is rewritten by every commit until it fills.
/// At 4,096 frames (16 MiB) the writer's checkpoints were 8.8 % of the server's samples in
/// the embedded chat run; at 16,384 the same run sent 14-16 % more messages per second at
/// 11 % less CPU per delivery (BENCHMARKS.md). 32,768 gained about 3 % more.
pub const WRITER_CHECKPOINT_FRAMES: u64 = 16384;
/// How often expired messages and send keys are deleted.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

const SCHEMA: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE chats (chat_id TEXT PRIMARY KEY, last_seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE messages (
  chat_id TEXT NOT NULL, seq INTEGER NOT NULL, message_id TEXT NOT NULL,
  sender_id TEXT NOT NULL, content TEXT NOT NULL, ts_ms INTEGER NOT NULL,
  PRIMARY KEY (chat_id, seq)) WITHOUT ROWID;
CREATE INDEX messages_ts ON messages (ts_ms);
CREATE TABLE members (chat_id TEXT NOT NULL, user_id TEXT NOT NULL,
  added_ms INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (chat_id, user_id)) WITHOUT ROWID;
CREATE TABLE sends (
  user_id TEXT NOT NULL, chat_id TEXT NOT NULL, mobile_ref_id TEXT NOT NULL,
  message_id TEXT NOT NULL, seq INTEGER NOT NULL, ts_ms INTEGER NOT NULL,
  delivered INTEGER NOT NULL, expires_ms INTEGER NOT NULL,
  PRIMARY KEY (user_id, chat_id, mobile_ref_id)) WITHOUT ROWID;
CREATE INDEX sends_expiry ON sends (expires_ms);
CREATE TABLE pending (
  id INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL,
  item_key TEXT NOT NULL, item TEXT NOT NULL, UNIQUE (user_id, item_key));
CREATE INDEX pending_user ON pending (user_id, id);
CREATE TABLE reads (user_id TEXT NOT NULL, chat_id TEXT NOT NULL, seq INTEGER NOT NULL,
  PRIMARY KEY (user_id, chat_id)) WITHOUT ROWID;
";

/// What each schema version adds to the one before (the upgrade path, run by [`migrate`]).
const MIGRATIONS: &[(i64, &str)] = &[
    (
        2,
        "CREATE TABLE reads (user_id TEXT NOT NULL, chat_id TEXT NOT NULL, seq INTEGER NOT NULL, \
         PRIMARY KEY (user_id, chat_id)) WITHOUT ROWID;",
    ),
    // When a member was added orders a chat without messages in the rooms list; memberships
    // from before get 0 (they sort after every chat with activity).
    (
        3,
        "ALTER TABLE members ADD COLUMN added_ms INTEGER NOT NULL DEFAULT 0;",
    ),
];

/// Why the data dir could not be opened. Each names the path and what to do.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The directory could not be created or is not writable.
    #[error("data dir {path}: {cause}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// What the OS said (in the message, so not repeated as a source).
        cause: std::io::Error,
    },
    /// SQLite could not open or read the database (unreadable, not a database, corrupt).
    #[error(
        "database {path} cannot be used: {cause} (if it is damaged, restore it from a \
         backup or move it away to start empty)"
    )]
    Database {
        /// The database file.
        path: PathBuf,
        /// What SQLite said (in the message, so not repeated as a source).
        cause: rusqlite::Error,
    },
    /// The database was written by a newer Plume.
    #[error(
        "database {path} has schema version {found}, newer than this build's {known}: run \
         the Plume version that wrote it, or a newer one"
    )]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// This build's.
        known: i64,
    },
    /// The database has no readable schema version or epoch.
    #[error("database {path} is not a Plume database or is damaged: {detail}")]
    Damaged {
        /// The database file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

/// Counters of the writer (for benchmarks and logs).
#[derive(Debug, Default)]
pub struct SqliteStats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Jobs committed (appends, membership changes, pending writes, …).
    pub jobs: AtomicU64,
    /// Flushes of the WAL to disk (each covers every batch committed since the one before).
    pub flushes: AtomicU64,
}
/// A write job: runs inside the batch transaction; returns whether its statements
/// succeeded (otherwise its savepoint is rolled back) and what to answer after the commit.
/// Given the `BEGIN`'s error when the batch could not start: the job then only answers
/// with a failure.
type WriteJob = Box<
    dyn FnOnce(Result<(&Connection, &mut WriterCache), &rusqlite::Error>) -> (bool, Finish) + Send,
>;
type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// What the writer remembers between jobs: the newest seq per chat (cleared when a commit
/// fails, since the database did not take those seqs).
pub struct WriterCache {
    epoch: u64,
    last_seq: HashMap<String, u64>,
}

/// The SQLite store: open it with [`open`].
pub struct Sqlite {
    writer: mpsc::Sender<ToWriter>,
    /// Sends whose delivery finished, written by the writer with its next batch (no job, no
    /// answer of their own: losing one in a crash only means a retry delivers again).
    delivered: Arc<parking_lot::Mutex<Vec<SendKey>>>,
    reader: mpsc::Sender<ReadJob>,
    /// Which batches are on disk: reads are answered only once what they saw is.
    durability: Arc<Durability>,
    epoch: u64,
    retention: Retention,
    members: MemoryMembership,
    stats: Arc<SqliteStats>,
    /// Pending removals not yet committed, per user: the highest id removed. `list` hides
    /// ids up to it, so a device that joins right after another was given its pending
    /// notifications does not get them again while the delete waits for its commit. An
    /// entry lives only as long as its write.
    removing: parking_lot::Mutex<HashMap<String, u64>>,
}

impl Drop for Sqlite {
    fn drop(&mut self) {
        // The flusher holds a sender of the writer's queue too, so the queue never closes by
        // itself: say so, and the writer commits what is open and ends (then the flusher).
        let _ = self.writer.send(ToWriter::Stop);
    }
}

/// The writer thread has stopped.
fn writer_gone<E>(_: E) -> StoreError {
    StoreError::ThreadGone("writer")
}

/// The reader thread has stopped.
fn reader_gone<E>(_: E) -> StoreError {
    StoreError::ThreadGone("reader")
}

/// Opens (creating on first start) the store under `dir` and returns the chat service's
/// stores over it, with the writer's counters.
pub fn open(dir: &Path, retention: Retention) -> Result<(Stores, Arc<SqliteStats>), OpenError> {
    open_with(dir, retention, WRITER_CHECKPOINT_FRAMES)
}

/// [`open`], with the writer checkpointing at `checkpoint_frames` WAL frames.
fn open_with(
    dir: &Path,
    retention: Retention,
    checkpoint_frames: u64,
) -> Result<(Stores, Arc<SqliteStats>), OpenError> {
    let store = Arc::new(Sqlite::open_with(dir, retention, checkpoint_frames)?);
    let stats = store.stats.clone();
    let stores = Stores {
        membership: store.clone(),
        log: store.clone(),
        pending: store.clone(),
        presence: Arc::new(MemoryPresence::default()),
        reads: store,
        roster: None,
        send: None,
        // The writer's queue is FIFO and an append is queued when first polled.
        sends_in_flight: crate::chat::SENDS_IN_FLIGHT,
        batch_appends: false,
    };
    Ok((stores, stats))
}

fn connect(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    // journal_mode answers with a row, so it is read rather than executed.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "journal_mode is {mode}, not wal"
        )));
    }
    // NORMAL: a commit does not wait for the disk; the flusher thread flushes the WAL before
    // any job of the batch is answered (see `wal_sync`), and checkpoints sync the WAL before
    // copying it and the database after. A bigger page cache and memory-mapped reads keep the
    // writer from re-reading hot pages through read() (it showed as the writer's top kernel
    // cost in a profile). No automatic checkpoints inside commits: see the module docs.
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF; PRAGMA cache_size = -65536; \
         PRAGMA mmap_size = 268435456; PRAGMA wal_autocheckpoint = 0; \
         PRAGMA temp_store = MEMORY;",
    )?;
    Ok(conn)
}

/// Brings an older schema up to [`SCHEMA_VERSION`]: every step of [`MIGRATIONS`] above
/// `version`, in order, each in its own transaction with the new version recorded in it (a
/// crash between two steps leaves a database the next start continues from).
fn migrate(conn: &Connection, from: i64) -> Result<i64, rusqlite::Error> {
    let mut version = from;
    for (to, sql) in MIGRATIONS.iter().filter(|(to, _)| *to > from) {
        conn.execute_batch(&format!(
            "BEGIN; {sql} UPDATE meta SET value = '{to}' WHERE key = 'schema_version'; COMMIT;"
        ))?;
        version = *to;
    }
    Ok(version)
}

impl Sqlite {
    fn open_with(
        dir: &Path,
        retention: Retention,
        checkpoint_frames: u64,
    ) -> Result<Sqlite, OpenError> {
        std::fs::create_dir_all(dir).map_err(|cause| OpenError::Dir {
            path: dir.to_owned(),
            cause,
        })?;
        let path = dir.join(DB_FILE);
        let database = |cause| OpenError::Database {
            path: path.clone(),
            cause,
        };
        let conn = connect(&path).map_err(database)?;
        let has_meta: bool = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(database)?
            > 0;
        if !has_meta {
            let objects: i64 = conn
                .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
                .map_err(database)?;
            if objects > 0 {
                return Err(OpenError::Damaged {
                    path,
                    detail: "it has tables but no Plume meta table".into(),
                });
            }
            let epoch = new_epoch();
            conn.execute_batch(&format!(
                "BEGIN; {SCHEMA} INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}'); \
                 INSERT INTO meta VALUES ('epoch', '{epoch}'); COMMIT;"
            ))
            .map_err(database)?;
            tracing::info!(path = %path.display(), "created a new database");
        }
        let meta = |key: &str| -> Result<String, OpenError> {
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()
                .map_err(database)?
                .ok_or_else(|| OpenError::Damaged {
                    path: path.clone(),
                    detail: format!("meta has no {key}"),
                })
        };
        let damaged = |detail: String| OpenError::Damaged {
            path: path.clone(),
            detail,
        };
        let version: i64 = meta("schema_version")?
            .parse()
            .map_err(|e| damaged(format!("schema_version: {e}")))?;
        if version > SCHEMA_VERSION {
            return Err(OpenError::NewerSchema {
                path,
                found: version,
                known: SCHEMA_VERSION,
            });
        }
        if version < SCHEMA_VERSION {
            let upgraded = migrate(&conn, version).map_err(database)?;
            tracing::info!(
                from = version,
                to = upgraded,
                "upgraded the database schema"
            );
        }
        let epoch: u64 = meta("epoch")?
            .parse()
            .map_err(|e| damaged(format!("epoch: {e}")))?;
        let members = MemoryMembership::default();
        {
            let mut stmt = conn
                .prepare("SELECT chat_id, user_id, added_ms FROM members")
                .map_err(database)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(database)?;
            for row in rows {
                let (chat, user, added) = row.map_err(database)?;
                members.insert(&chat, &user, added);
            }
        }
        let read_conn = connect(&path).map_err(database)?;
        let stats = Arc::new(SqliteStats::default());
        let (writer, wrx) = mpsc::channel::<ToWriter>();
        let (reader, rrx) = mpsc::channel::<ReadJob>();
        let (flusher, frx) = mpsc::channel::<Committed>();
        let durability = Arc::new(Durability::default());
        let delivered = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let writer_state = Writer {
            marks: delivered.clone(),
            stats: stats.clone(),
            durability: durability.clone(),
            flusher,
            retention,
            epoch,
            checkpoint_frames,
        };
        let wal = dir.join(format!("{DB_FILE}-wal"));
        let (flush_durability, flush_stats) = (durability.clone(), stats.clone());
        let flushed = writer.clone();
        std::thread::Builder::new()
            .name("plume-sqlite-flusher".into())
            .spawn(move || {
                flush_loop(wal, frx, flush_durability, flush_stats, move |n| {
                    let _ = flushed.send(ToWriter::Flushed(n));
                })
            })
            .map_err(|cause| OpenError::Dir {
                path: dir.to_owned(),
                cause,
            })?;
        std::thread::Builder::new()
            .name("plume-sqlite-writer".into())
            .spawn(move || write_loop(conn, wrx, writer_state))
            .map_err(|cause| OpenError::Dir {
                path: dir.to_owned(),
                cause,
            })?;
        std::thread::Builder::new()
            .name("plume-sqlite-reader".into())
            .spawn(move || read_loop(read_conn, rrx))
            .map_err(|cause| OpenError::Dir {
                path: dir.to_owned(),
                cause,
            })?;
        tracing::info!(path = %path.display(), epoch = %super::epoch_text(epoch),
            "embedded store open");
        Ok(Sqlite {
            writer,
            delivered,
            reader,
            durability,
            epoch,
            retention,
            members,
            stats,
            removing: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    /// Runs `f` in the next write batch; answers after the commit.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &mut WriterCache) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let job: WriteJob = Box::new(move |ctx| {
            let (conn, cache) = match ctx {
                Ok(ctx) => ctx,
                Err(began) => {
                    let _ = tx.send(Err(StoreError::Begin(copy_sqlite_error(began))));
                    return (false, Box::new(|_| {}));
                }
            };
            let result = f(conn, cache);
            let ok = result.is_ok();
            let finish: Finish = Box::new(move |failed| {
                let answer = match failed {
                    None => result.map_err(StoreError::Sqlite),
                    Some(BatchFailure::Commit(err)) => {
                        Err(StoreError::Commit(copy_sqlite_error(err)))
                    }
                    Some(BatchFailure::Flush(err)) => Err(StoreError::Sync(std::io::Error::new(
                        err.kind(),
                        err.to_string(),
                    ))),
                };
                let _ = tx.send(answer);
            });
            (ok, finish)
        });
        self.writer.send(ToWriter::Job(job)).map_err(writer_gone)?;
        rx.await.map_err(writer_gone)?
    }

    /// Runs `f` on the reader connection.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let durability = self.durability.clone();
        self.reader
            .send(Box::new(move |conn| {
                // Whatever the query sees was committed by a batch begun before it started.
                let saw = durability.newest();
                let result = f(conn).map_err(StoreError::Sqlite);
                durability.after(saw, move || {
                    let _ = tx.send(result);
                });
            }))
            .map_err(reader_gone)?;
        rx.await.map_err(reader_gone)?
    }

    fn oldest_kept_ms(&self) -> i64 {
        oldest_kept_ms(&self.retention)
    }
}

/// How often the reader thread checkpoints the WAL when there is something to copy.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// The reader thread: answers reads, and between them checkpoints the WAL (PASSIVE: copies
/// what no reader still needs, never waits for the writer, so the WAL stays small without
/// the writer doing it).
fn read_loop(conn: Connection, rx: mpsc::Receiver<ReadJob>) {
    let mut last = Instant::now();
    loop {
        match rx.recv_timeout(CHECKPOINT_EVERY) {
            Ok(job) => job(&conn),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if last.elapsed() >= CHECKPOINT_EVERY {
            last = Instant::now();
            if let Err(err) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                tracing::warn!(%err, "sqlite: checkpoint failed");
            }
        }
    }
    // Leaving: a last full checkpoint so the WAL does not outlive the process needlessly.
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
}

fn oldest_kept_ms(retention: &Retention) -> i64 {
    now_millis().saturating_sub(i64::try_from(retention.ttl.as_millis()).unwrap_or(i64::MAX))
}

/// What the writer thread works with besides its connection and queue.
struct Writer {
    /// "Delivered" marks to write with the next batch.
    marks: Arc<parking_lot::Mutex<Vec<SendKey>>>,
    stats: Arc<SqliteStats>,
    durability: Arc<Durability>,
    /// Committed batches, to the flusher thread.
    flusher: mpsc::Sender<Committed>,
    retention: Retention,
    epoch: u64,
    /// Checkpoint once the WAL holds this many frames ([`WRITER_CHECKPOINT_FRAMES`]).
    checkpoint_frames: u64,
}

/// What the writer's queue carries.
pub(super) enum ToWriter {
    /// A write to run in the next batch.
    Job(WriteJob),
    /// The flusher has flushed this many more batches.
    Flushed(usize),
    /// The store is dropped: commit what is open and stop.
    Stop,
}

/// The transaction the writer is filling.
struct OpenBatch {
    finishes: Vec<Finish>,
}

/// The writer thread. It runs jobs as they come into one open transaction and commits it
/// when the flusher is idle (nothing committed is waiting for the disk) or the batch is
/// full. So while the disk takes one batch, the next one is being run, and it is as large
/// as what arrived during the flush: one flush per batch under load, at no waiting when idle.
fn write_loop(conn: Connection, rx: mpsc::Receiver<ToWriter>, writer: Writer) {
    let mut cache = WriterCache {
        epoch: writer.epoch,
        last_seq: HashMap::new(),
    };
    let mut last_sweep = Instant::now();
    // The WAL's length in frames after each commit, as SQLite reports it.
    let wal_frames = Arc::new(AtomicU64::new(0));
    let frames = wal_frames.clone();
    let mut conn = conn;
    if let Err(err) = conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages| {
        frames.store(u64::try_from(pages).unwrap_or(0), Ordering::Relaxed);
        Ok(())
    })) {
        tracing::warn!(%err, "sqlite: no WAL hook; the writer will not checkpoint");
    }
    let mut open: Option<OpenBatch> = None;
    // Batches handed to the flusher and not yet flushed.
    let mut unflushed = 0usize;
    let mut stopping = false;
    while !stopping {
        let Ok(first) = rx.recv() else { break };
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                ToWriter::Job(job) => {
                    run_job(&conn, &mut cache, &mut open, job);
                }
                ToWriter::Flushed(n) => unflushed = unflushed.saturating_sub(n),
                ToWriter::Stop => stopping = true,
            }
            let full = open.as_ref().is_some_and(|b| b.finishes.len() >= MAX_BATCH);
            if !full {
                next = rx.try_recv().ok();
            }
        }
        let full = open.as_ref().is_some_and(|b| b.finishes.len() >= MAX_BATCH);
        if let Some(batch) = open.take_if(|_| unflushed == 0 || full || stopping) {
            if commit(&conn, &mut cache, &writer, batch, &mut last_sweep) {
                unflushed += 1;
            }
            if wal_frames.load(Ordering::Relaxed) >= writer.checkpoint_frames {
                // PASSIVE: copies what the reader's checkpoints have not, never waits. Once
                // all of the WAL is copied, the next BEGIN starts it again from the beginning.
                if let Err(err) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::debug!(%err, "sqlite: writer checkpoint skipped");
                }
            }
        }
    }
}

/// Runs one job in its own savepoint of the open batch, beginning the batch if none is open.
fn run_job(
    conn: &Connection,
    cache: &mut WriterCache,
    open: &mut Option<OpenBatch>,
    job: WriteJob,
) {
    if open.is_none() {
        if let Err(err) = conn.execute_batch("BEGIN IMMEDIATE") {
            tracing::error!(%err, "sqlite: cannot begin a transaction");
            // The job answers with the error itself; it has nothing to finish.
            let _ = job(Err(&err));
            return;
        }
        *open = Some(OpenBatch {
            finishes: Vec::new(),
        });
    }
    let Some(batch) = open.as_mut() else { return };
    let _ = run_cached(conn, "SAVEPOINT job");
    let (ok, finish) = job(Ok((conn, cache)));
    if !ok {
        let _ = run_cached(conn, "ROLLBACK TO job");
    }
    let _ = run_cached(conn, "RELEASE job");
    batch.finishes.push(finish);
}

/// Commits the open batch (with the "delivered" marks and, when due, the sweep) and hands it
/// to the flusher, which answers its jobs once it is on disk. False when the flusher is gone
/// (the jobs are then answered with that).
fn commit(
    conn: &Connection,
    cache: &mut WriterCache,
    writer: &Writer,
    batch: OpenBatch,
    last_sweep: &mut Instant,
) -> bool {
    let delivered = std::mem::take(&mut *writer.marks.lock());
    if let Err(err) = write_delivered(conn, &delivered) {
        tracing::warn!(%err, "sqlite: recording delivered sends failed");
    }
    if last_sweep.elapsed() >= SWEEP_EVERY {
        *last_sweep = Instant::now();
        if let Err(err) = sweep(conn, &writer.retention) {
            tracing::warn!(%err, "sqlite: sweeping expired rows failed");
        }
    }
    let n = batch.finishes.len() as u64;
    let number = writer.durability.begin_commit();
    let failed = match conn.execute_batch("COMMIT") {
        Ok(()) => None,
        Err(err) => {
            tracing::error!(%err, jobs = n, "sqlite: commit failed; the batch is refused");
            let _ = conn.execute_batch("ROLLBACK");
            cache.last_seq.clear();
            Some(err)
        }
    };
    if failed.is_none() {
        writer.stats.commits.fetch_add(1, Ordering::Relaxed);
        writer.stats.jobs.fetch_add(n, Ordering::Relaxed);
    }
    let committed = Committed {
        number,
        failed,
        finishes: batch.finishes,
    };
    match writer.flusher.send(committed) {
        Ok(()) => true,
        Err(mpsc::SendError(batch)) => {
            let gone = BatchFailure::Flush(std::io::Error::other("the flusher thread has stopped"));
            for finish in batch.finishes {
                finish(Some(&gone));
            }
            false
        }
    }
}

fn run_cached(conn: &Connection, sql: &str) -> Result<usize, rusqlite::Error> {
    conn.prepare_cached(sql)?.execute([])
}

fn write_delivered(conn: &Connection, keys: &[SendKey]) -> Result<(), rusqlite::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut update = conn.prepare_cached(
        "UPDATE sends SET delivered = 1 WHERE user_id = ?1 AND chat_id = ?2 AND mobile_ref_id = ?3",
    )?;
    for key in keys {
        update.execute(params![key.user, key.chat, key.mobile_ref_id])?;
    }
    Ok(())
}

fn sweep(conn: &Connection, retention: &Retention) -> Result<(), rusqlite::Error> {
    let oldest = oldest_kept_ms(retention);
    // A chat's newest seq is the largest kept seq, or `chats.last_seq` once age took every
    // message: record it for the chats about to lose their newest rows.
    conn.execute(
        "INSERT INTO chats (chat_id, last_seq) \
         SELECT chat_id, max(seq) FROM messages WHERE ts_ms < ?1 GROUP BY chat_id \
         ON CONFLICT (chat_id) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)",
        [oldest],
    )?;
    conn.execute("DELETE FROM messages WHERE ts_ms < ?1", [oldest])?;
    conn.execute("DELETE FROM sends WHERE expires_ms <= ?1", [now_millis()])?;
    Ok(())
}

fn message_row(
    epoch: u64,
) -> impl Fn(&rusqlite::Row<'_>) -> Result<LoggedMessage, rusqlite::Error> {
    move |r| {
        Ok(LoggedMessage {
            epoch,
            chat_id: r.get(0)?,
            seq: r.get::<_, i64>(1)? as u64,
            message_id: r.get(2)?,
            sender_id: r.get(3)?,
            content: r.get(4)?,
            ts_ms: r.get(5)?,
        })
    }
}

/// A chat's newest seq: the largest kept, or what `chats` recorded when age trimmed them all
/// (an append does not write `chats`; the sweep does, before it deletes).
const LAST_SEQ_SQL: &str = "SELECT max(\
     coalesce((SELECT last_seq FROM chats WHERE chat_id = ?1), 0), \
     coalesce((SELECT max(seq) FROM messages WHERE chat_id = ?1), 0))";

const MESSAGE_COLUMNS: &str = "chat_id, seq, message_id, sender_id, content, ts_ms";

fn seq_param(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn append_job(
    conn: &Connection,
    cache: &mut WriterCache,
    key: &SendKey,
    draft: &Draft,
    retention: &Retention,
) -> Result<Appended, rusqlite::Error> {
    let now = now_millis();
    let found = conn
        .prepare_cached(
            "SELECT message_id, seq, ts_ms, delivered FROM sends \
             WHERE user_id = ?1 AND chat_id = ?2 AND mobile_ref_id = ?3 AND expires_ms > ?4",
        )?
        .query_row(params![key.user, key.chat, key.mobile_ref_id, now], |r| {
            Ok((
                SentRecord {
                    message_id: r.get(0)?,
                    seq: r.get::<_, i64>(1)? as u64,
                    ts_ms: r.get(2)?,
                },
                r.get::<_, i64>(3)? != 0,
            ))
        })
        .optional()?;
    if let Some((sent, delivered)) = found {
        let message = conn
            .query_row(
                &format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE chat_id = ?1 AND seq = ?2"),
                params![key.chat, seq_param(sent.seq)],
                message_row(cache.epoch),
            )
            .optional()?;
        return Ok(Appended::Retry {
            sent,
            message,
            delivered,
        });
    }
    let last = match cache.last_seq.get(&key.chat) {
        Some(last) => *last,
        None => conn
            .prepare_cached(LAST_SEQ_SQL)?
            .query_row([&key.chat], |r| r.get::<_, i64>(0))? as u64,
    };
    let seq = last + 1;
    conn.prepare_cached(
        "INSERT INTO messages (chat_id, seq, message_id, sender_id, content, ts_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        key.chat,
        seq_param(seq),
        draft.message_id,
        key.user,
        draft.content,
        draft.ts_ms
    ])?;
    let ttl = i64::try_from(retention.idempotency_ttl.as_millis()).unwrap_or(i64::MAX);
    conn.prepare_cached(
        "INSERT OR REPLACE INTO sends \
         (user_id, chat_id, mobile_ref_id, message_id, seq, ts_ms, delivered, expires_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7)",
    )?
    .execute(params![
        key.user,
        key.chat,
        key.mobile_ref_id,
        draft.message_id,
        seq_param(seq),
        draft.ts_ms,
        now.saturating_add(ttl)
    ])?;
    let limit = retention.limit.max(1) as u64;
    if seq > limit {
        conn.prepare_cached("DELETE FROM messages WHERE chat_id = ?1 AND seq <= ?2")?
            .execute(params![key.chat, seq_param(seq - limit)])?;
    }
    cache.last_seq.insert(key.chat.clone(), seq);
    Ok(Appended::New(LoggedMessage {
        epoch: cache.epoch,
        chat_id: key.chat.clone(),
        seq,
        message_id: draft.message_id.clone(),
        sender_id: key.user.clone(),
        content: draft.content.clone(),
        ts_ms: draft.ts_ms,
    }))
}

#[async_trait]
impl MessageLog for Sqlite {
    async fn append(&self, key: &SendKey, draft: &Draft) -> Result<Appended, StoreError> {
        let (key, draft, retention) = (key.clone(), draft.clone(), self.retention);
        self.write(move |conn, cache| append_job(conn, cache, &key, &draft, &retention))
            .await
    }

    async fn mark_delivered(&self, key: &SendKey) -> Result<(), StoreError> {
        let first = {
            let mut marks = self.delivered.lock();
            marks.push(key.clone());
            marks.len() == 1
        };
        if first {
            // Wake an idle writer; a busy one picks the marks up with its current batch.
            let wake: WriteJob = Box::new(|_| (true, Box::new(|_| {})));
            self.writer.send(ToWriter::Job(wake)).map_err(writer_gone)?;
        }
        Ok(())
    }

    async fn head(&self, chat: &str) -> Result<LogHead, StoreError> {
        let (chat, oldest, epoch) = (chat.to_owned(), self.oldest_kept_ms(), self.epoch);
        self.read(move |conn| {
            let last = conn
                .prepare_cached(LAST_SEQ_SQL)?
                .query_row([&chat], |r| r.get::<_, i64>(0))? as u64;
            let first = conn
                .prepare_cached("SELECT min(seq) FROM messages WHERE chat_id = ?1 AND ts_ms >= ?2")?
                .query_row(params![chat, oldest], |r| r.get::<_, Option<i64>>(0))?
                .map_or(last + 1, |n| n as u64);
            Ok(LogHead {
                epoch,
                last_seq: last,
                first_seq: first,
            })
        })
        .await
    }

    async fn after(
        &self,
        chat: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LoggedMessage>, StoreError> {
        let (chat, oldest, epoch) = (chat.to_owned(), self.oldest_kept_ms(), self.epoch);
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages \
                 WHERE chat_id = ?1 AND seq > ?2 AND ts_ms >= ?3 ORDER BY seq LIMIT ?4"
            ))?;
            let rows = stmt.query_map(
                params![chat, seq_param(after), oldest, limit as i64],
                message_row(epoch),
            )?;
            rows.collect()
        })
        .await
    }

    async fn before(
        &self,
        chat: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<LoggedMessage>, StoreError> {
        let (chat, oldest, epoch) = (chat.to_owned(), self.oldest_kept_ms(), self.epoch);
        let before = before.map_or(i64::MAX, seq_param);
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages \
                 WHERE chat_id = ?1 AND seq < ?2 AND ts_ms >= ?3 ORDER BY seq DESC LIMIT ?4"
            ))?;
            let rows = stmt.query_map(
                params![chat, before, oldest, limit as i64],
                message_row(epoch),
            )?;
            let mut out: Vec<LoggedMessage> = rows.collect::<Result<_, _>>()?;
            out.reverse();
            Ok(out)
        })
        .await
    }

    async fn count_unread(&self, chat: &str, after: u64, user: &str) -> Result<u64, StoreError> {
        let (chat, user, oldest) = (chat.to_owned(), user.to_owned(), self.oldest_kept_ms());
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT count(*) FROM messages \
                 WHERE chat_id = ?1 AND seq > ?2 AND sender_id <> ?3 AND ts_ms >= ?4",
            )?
            .query_row(params![chat, seq_param(after), user, oldest], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as u64)
        })
        .await
    }

    async fn latest(&self, chats: &[String]) -> Result<Vec<Option<LoggedMessage>>, StoreError> {
        let (chats, oldest, epoch) = (chats.to_vec(), self.oldest_kept_ms(), self.epoch);
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages \
                 WHERE chat_id = ?1 AND ts_ms >= ?2 ORDER BY seq DESC LIMIT 1"
            ))?;
            chats
                .iter()
                .map(|chat| {
                    stmt.query_row(params![chat, oldest], message_row(epoch))
                        .optional()
                })
                .collect()
        })
        .await
    }

    async fn count_unread_many(
        &self,
        positions: &[(String, u64)],
        user: &str,
    ) -> Result<Vec<u64>, StoreError> {
        let (positions, user, oldest) =
            (positions.to_vec(), user.to_owned(), self.oldest_kept_ms());
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT count(*) FROM messages \
                 WHERE chat_id = ?1 AND seq > ?2 AND sender_id <> ?3 AND ts_ms >= ?4",
            )?;
            positions
                .iter()
                .map(|(chat, after)| {
                    stmt.query_row(params![chat, seq_param(*after), user, oldest], |r| {
                        r.get::<_, i64>(0)
                    })
                    .map(|n| n as u64)
                })
                .collect()
        })
        .await
    }

    async fn get(&self, refs: &[(String, u64)]) -> Result<Vec<Option<LoggedMessage>>, StoreError> {
        let (refs, oldest, epoch) = (refs.to_vec(), self.oldest_kept_ms(), self.epoch);
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages \
                 WHERE chat_id = ?1 AND seq = ?2 AND ts_ms >= ?3"
            ))?;
            refs.iter()
                .map(|(chat, seq)| {
                    stmt.query_row(params![chat, seq_param(*seq), oldest], message_row(epoch))
                        .optional()
                })
                .collect()
        })
        .await
    }
}

#[async_trait]
impl MembershipStore for Sqlite {
    async fn add(&self, chat: &str, user: &str) -> Result<(), StoreError> {
        if self.members.contains(chat, user) {
            return Ok(());
        }
        let (c, u, added) = (chat.to_owned(), user.to_owned(), now_millis());
        self.write(move |conn, _| {
            conn.prepare_cached(
                "INSERT OR IGNORE INTO members (chat_id, user_id, added_ms) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![c, u, added])?;
            Ok(())
        })
        .await?;
        self.members.insert(chat, user, added);
        Ok(())
    }

    async fn remove(&self, chat: &str, user: &str) -> Result<bool, StoreError> {
        let (c, u) = (chat.to_owned(), user.to_owned());
        let removed = self
            .write(move |conn, _| {
                conn.prepare_cached("DELETE FROM members WHERE chat_id = ?1 AND user_id = ?2")?
                    .execute(params![c, u])
            })
            .await?;
        self.members.remove(chat, user).await?;
        Ok(removed > 0)
    }

    async fn is_member(&self, chat: &str, user: &str) -> Result<bool, StoreError> {
        Ok(self.members.contains(chat, user))
    }

    async fn members(&self, chat: &str) -> Result<Arc<[String]>, StoreError> {
        self.members.members(chat).await
    }

    async fn chats_of(&self, user: &str) -> Result<Vec<UserChat>, StoreError> {
        self.members.chats_of(user).await
    }

    async fn count_members(&self, chats: &[String]) -> Result<Vec<usize>, StoreError> {
        self.members.count_members(chats).await
    }
}

#[async_trait]
impl ReadStore for Sqlite {
    async fn mark_read(&self, user: &str, chat: &str, seq: u64) -> Result<u64, StoreError> {
        let (user, chat) = (user.to_owned(), chat.to_owned());
        self.write(move |conn, _| {
            conn.prepare_cached(
                "INSERT INTO reads (user_id, chat_id, seq) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (user_id, chat_id) DO UPDATE SET seq = max(seq, excluded.seq)",
            )?
            .execute(params![user, chat, seq_param(seq)])?;
            conn.prepare_cached("SELECT seq FROM reads WHERE user_id = ?1 AND chat_id = ?2")?
                .query_row(params![user, chat], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
        })
        .await
    }

    async fn read_position(&self, user: &str, chat: &str) -> Result<u64, StoreError> {
        let (user, chat) = (user.to_owned(), chat.to_owned());
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT seq FROM reads WHERE user_id = ?1 AND chat_id = ?2")?
                .query_row(params![user, chat], |r| r.get::<_, i64>(0))
                .optional()?
                .map_or(0, |n| n as u64))
        })
        .await
    }

    async fn read_positions(&self, user: &str, chats: &[String]) -> Result<Vec<u64>, StoreError> {
        let (user, chats) = (user.to_owned(), chats.to_vec());
        self.read(move |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT seq FROM reads WHERE user_id = ?1 AND chat_id = ?2")?;
            chats
                .iter()
                .map(|chat| {
                    Ok(stmt
                        .query_row(params![user, chat], |r| r.get::<_, i64>(0))
                        .optional()?
                        .map_or(0, |n| n as u64))
                })
                .collect()
        })
        .await
    }
}

fn pending_key(item: &PendingItem) -> String {
    match item {
        PendingItem::Message { chat_id, seq } => format!("m:{seq}:{chat_id}"),
        PendingItem::Inline(n) => format!("i:{}", n.message_id),
    }
}

#[async_trait]
impl PendingStore for Sqlite {
    async fn push_many(
        &self,
        users: &[String],
        item: &PendingItem,
        limits: PendingLimits,
    ) -> Result<usize, StoreError> {
        if users.is_empty() {
            return Ok(0);
        }
        let text = serde_json::to_string(item).map_err(StoreError::encode("pending item"))?;
        let (users, item_key) = (users.to_vec(), pending_key(item));
        let limit = limits.count.max(1) as i64;
        let bytes = i64::try_from(limits.bytes).unwrap_or(i64::MAX);
        self.write(move |conn, _| {
            let mut insert = conn.prepare_cached(
                "INSERT OR IGNORE INTO pending (user_id, item_key, item) VALUES (?1, ?2, ?3)",
            )?;
            let mut trim = conn.prepare_cached(
                "DELETE FROM pending WHERE user_id = ?1 AND id < \
                 (SELECT id FROM pending WHERE user_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
            )?;
            // The oldest items beyond the byte budget, counting from the newest (which always
            // stays). Bytes of the stored JSON text.
            let mut trim_bytes = conn.prepare_cached(
                "DELETE FROM pending WHERE user_id = ?1 AND id IN (SELECT id FROM \
                 (SELECT id, ROW_NUMBER() OVER w AS n, \
                         SUM(length(CAST(item AS BLOB))) OVER w AS running \
                  FROM pending WHERE user_id = ?1 \
                  WINDOW w AS (ORDER BY id DESC ROWS UNBOUNDED PRECEDING)) \
                 WHERE n > 1 AND running > ?2)",
            )?;
            let mut dropped = 0;
            for user in &users {
                insert.execute(params![user, item_key, text])?;
                dropped += trim.execute(params![user, limit - 1])?;
                dropped += trim_bytes.execute(params![user, bytes])?;
            }
            Ok(dropped)
        })
        .await
    }

    async fn list(&self, user: &str) -> Result<Vec<(u64, PendingItem)>, StoreError> {
        let owned = user.to_owned();
        let rows: Vec<(i64, String)> = self
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT id, item FROM pending WHERE user_id = ?1 ORDER BY id",
                )?;
                let rows = stmt.query_map([&owned], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect()
            })
            .await?;
        // Read after the rows: a removal begun before they were read is applied.
        let hidden = self.removing.lock().get(user).copied().unwrap_or(0);
        let mut out = Vec::with_capacity(rows.len());
        for (id, text) in rows {
            if id as u64 <= hidden {
                continue;
            }
            match serde_json::from_str(&text) {
                Ok(item) => out.push((id as u64, item)),
                Err(err) => tracing::error!(id, %err, "skipping an unreadable pending item"),
            }
        }
        Ok(out)
    }

    async fn remove(&self, user: &str, upto: u64) -> Result<(), StoreError> {
        {
            let mut removing = self.removing.lock();
            let at = removing.entry(user.to_owned()).or_default();
            *at = (*at).max(upto);
        }
        let owned = user.to_owned();
        let done = self
            .write(move |conn, _| {
                conn.prepare_cached("DELETE FROM pending WHERE user_id = ?1 AND id <= ?2")?
                    .execute(params![owned, seq_param(upto)])?;
                Ok(())
            })
            .await;
        // Committed (or failed, and the rows are back in view): the database answers again,
        // unless a later removal for the user is still in flight.
        let mut removing = self.removing.lock();
        if removing.get(user) == Some(&upto) {
            removing.remove(user);
        }
        done
    }

    async fn remove_item(&self, user: &str, item: &PendingItem) -> Result<(), StoreError> {
        let (user, key) = (user.to_owned(), pending_key(item));
        self.write(move |conn, _| {
            conn.prepare_cached("DELETE FROM pending WHERE user_id = ?1 AND item_key = ?2")?
                .execute(params![user, key])?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;

    use crate::store::test_support::{draft, key};

    fn limits(count: usize) -> PendingLimits {
        PendingLimits {
            count,
            bytes: usize::MAX,
        }
    }

    #[tokio::test]
    async fn everything_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let epoch;
        {
            let (stores, stats) = open(dir.path(), Retention::default()).unwrap();
            for i in 0..3 {
                let a = stores
                    .log
                    .append(&key(&format!("r{i}")), &draft(&format!("m{i}")))
                    .await
                    .unwrap();
                assert!(matches!(a, Appended::New(ref m) if m.seq == i + 1), "{a:?}");
            }
            stores.membership.add("c", "u").await.unwrap();
            let item = PendingItem::Message {
                chat_id: "c".into(),
                seq: 2,
            };
            stores
                .pending
                .push_many(&["v".into()], &item, limits(10))
                .await
                .unwrap();
            // The same item again is stored once.
            stores
                .pending
                .push_many(&["v".into()], &item, limits(10))
                .await
                .unwrap();
            epoch = stores.log.head("c").await.unwrap().epoch;
            assert!(stats.commits.load(Ordering::Relaxed) >= 1);
        }
        // Dropping the stores stops the threads; give them a moment to close the files.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (stores, _) = open(dir.path(), Retention::default()).unwrap();
        let head = stores.log.head("c").await.unwrap();
        assert_eq!((head.epoch, head.last_seq, head.first_seq), (epoch, 3, 1));
        assert!(stores.membership.is_member("c", "u").await.unwrap());
        assert_eq!(stores.pending.list("v").await.unwrap().len(), 1);
        match stores
            .log
            .append(&key("r1"), &draft("again"))
            .await
            .unwrap()
        {
            Appended::Retry { sent, message, .. } => {
                assert_eq!((sent.message_id.as_str(), sent.seq), ("m1", 2));
                assert_eq!(message.unwrap().content, "text m1");
            }
            other => panic!("expected a retry, got {other:?}"),
        }
        let Appended::New(next) = stores.log.append(&key("r9"), &draft("m9")).await.unwrap() else {
            panic!("a new key appends")
        };
        assert_eq!(next.seq, 4);
    }

    #[tokio::test]
    async fn pending_is_bounded_in_count_and_in_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (stores, _) = open(dir.path(), Retention::default()).unwrap();
        let note = |i: usize, size: usize| {
            PendingItem::Inline(crate::store::Notification {
                chat_id: "c".into(),
                sender_id: "s".into(),
                // Multi-byte characters: the budget counts bytes, not characters.
                content: "é".repeat(size / 2),
                timestamp: "t".into(),
                message_id: format!("m{i}"),
                seq: None,
            })
        };
        let size = super::super::memory::pending_size(&note(0, 1000)).unwrap();
        let budget = PendingLimits {
            count: 100,
            bytes: size * 3,
        };
        let mut dropped = 0;
        for i in 0..8 {
            dropped += stores
                .pending
                .push_many(&["u".into()], &note(i, 1000), budget)
                .await
                .unwrap();
        }
        let ids = |items: Vec<(u64, PendingItem)>| -> Vec<String> {
            items
                .into_iter()
                .map(|(_, item)| match item {
                    PendingItem::Inline(n) => n.message_id,
                    PendingItem::Message { .. } => String::new(),
                })
                .collect()
        };
        assert_eq!(dropped, 5);
        assert_eq!(
            ids(stores.pending.list("u").await.unwrap()),
            ["m5", "m6", "m7"]
        );
        // Count still applies under the byte budget; one item over the budget stays alone.
        let few = PendingLimits {
            count: 2,
            bytes: usize::MAX,
        };
        stores
            .pending
            .push_many(&["u".into()], &note(8, 10), few)
            .await
            .unwrap();
        assert_eq!(ids(stores.pending.list("u").await.unwrap()), ["m7", "m8"]);
        stores
            .pending
            .push_many(&["u".into()], &note(9, size * 10), budget)
            .await
            .unwrap();
        assert_eq!(ids(stores.pending.list("u").await.unwrap()), ["m9"]);
    }

    #[tokio::test]
    async fn concurrent_appends_get_gapless_seqs_in_few_commits() {
        let dir = tempfile::tempdir().unwrap();
        let (stores, stats) = open(dir.path(), Retention::default()).unwrap();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let log = stores.log.clone();
            tasks.push(tokio::spawn(async move {
                match log
                    .append(&key(&format!("k{i}")), &draft(&format!("d{i}")))
                    .await
                {
                    Ok(Appended::New(m)) => m.seq,
                    other => panic!("{other:?}"),
                }
            }));
        }
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap());
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=200).collect::<Vec<u64>>());
        let commits = stats.commits.load(Ordering::Relaxed);
        assert!(commits < 200, "200 appends took {commits} commits");
    }

    /// The answer to a write comes from the flusher, after the WAL reached the disk.
    #[tokio::test]
    async fn an_append_is_answered_only_after_the_wal_is_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let (stores, stats) = open(dir.path(), Retention::default()).unwrap();
        let before = stats.flushes.load(Ordering::SeqCst);
        stores.log.append(&key("r1"), &draft("d1")).await.unwrap();
        assert_eq!(stats.flushes.load(Ordering::SeqCst), before + 1);
        stores.log.append(&key("r2"), &draft("d2")).await.unwrap();
        assert_eq!(stats.flushes.load(Ordering::SeqCst), before + 2);
    }

    /// A writer that is never idle still lets the WAL start over: with only the reader's
    /// checkpoints (which a busy writer never lets catch up) it grew without bound, 1.2 GB in
    /// a 12-second benchmark.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_stays_small_while_the_writer_never_rests() {
        let dir = tempfile::tempdir().unwrap();
        // A small threshold (1 MiB), so that a short run shows the WAL starting over.
        const FRAMES: u64 = 256;
        let (stores, stats) = open_with(dir.path(), Retention::default(), FRAMES).unwrap();
        let wal = dir.path().join(format!("{DB_FILE}-wal"));
        // 16 senders appending back to back: the writer always has the next batch waiting.
        let mut tasks = Vec::new();
        for t in 0..16 {
            let log = stores.log.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..500 {
                    let chat = format!("chat-{}", (t * 31 + i) % 97);
                    let mut k = key(&format!("t{t}-{i}"));
                    k.chat = chat;
                    log.append(&k, &draft(&"x".repeat(200))).await.unwrap();
                }
            }));
        }
        let mut largest = 0;
        while tasks.iter().any(|t| !t.is_finished()) {
            largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        let commits = stats.commits.load(Ordering::Relaxed);
        // Each commit writes tens of 4 KiB pages: without a restart the WAL of this run
        // grows past 40 MB; with one it stays near the threshold plus one batch.
        let bound = FRAMES * 4120 + (8 << 20);
        assert!(
            largest < bound,
            "the WAL reached {largest} bytes over {commits} commits"
        );
        assert!(largest > 0, "the WAL was never seen");
        let flushes = stats.flushes.load(Ordering::Relaxed);
        assert!(
            flushes >= 1 && flushes <= commits,
            "{flushes} flushes for {commits} commits"
        );
    }

    #[tokio::test]
    async fn trims_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let retention = Retention {
            limit: 2,
            ..Retention::default()
        };
        let (stores, _) = open(dir.path(), retention).unwrap();
        for i in 0..5 {
            stores
                .log
                .append(&key(&format!("r{i}")), &draft(&format!("m{i}")))
                .await
                .unwrap();
        }
        let head = stores.log.head("c").await.unwrap();
        assert_eq!((head.last_seq, head.first_seq), (5, 4));
        let seqs: Vec<u64> = stores
            .log
            .before("c", None, 10)
            .await
            .unwrap()
            .iter()
            .map(|m| m.seq)
            .collect();
        assert_eq!(seqs, [4, 5]);
    }

    #[tokio::test]
    async fn age_trims_exactly_and_seq_never_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let retention = Retention {
            ttl: Duration::from_secs(24 * 3600),
            ..Retention::default()
        };
        {
            let (stores, _) = open(dir.path(), retention).unwrap();
            let old = now_millis() - 10 * 24 * 3600 * 1000;
            for i in 0..3 {
                let mut d = draft(&format!("m{i}"));
                d.ts_ms = old;
                stores.log.append(&key(&format!("r{i}")), &d).await.unwrap();
            }
            // Reads never return what is past the TTL, even before the sweep deletes it.
            assert!(stores.log.after("c", 0, 10).await.unwrap().is_empty());
            let head = stores.log.head("c").await.unwrap();
            assert_eq!((head.last_seq, head.first_seq), (3, 4));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        sweep(&conn, &retention).unwrap();
        let left: i64 = conn
            .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0, "the sweep deleted the expired messages");
        drop(conn);
        let (stores, _) = open(dir.path(), retention).unwrap();
        let head = stores.log.head("c").await.unwrap();
        assert_eq!(
            (head.last_seq, head.first_seq),
            (3, 4),
            "the newest seq is remembered"
        );
        let Appended::New(next) = stores.log.append(&key("r9"), &draft("m9")).await.unwrap() else {
            panic!("a new key appends")
        };
        assert_eq!(next.seq, 4, "seq continues after the log emptied");
    }

    #[tokio::test]
    async fn a_version_1_database_is_upgraded_to_the_current_schema_and_keeps_its_data() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (stores, _) = open(dir.path(), Retention::default()).unwrap();
            stores.log.append(&key("r"), &draft("m")).await.unwrap();
            stores.membership.add("c", "u").await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Make it look as version 1 wrote it: no reads table, members without added_ms.
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.execute_batch(
            "DROP TABLE reads; ALTER TABLE members DROP COLUMN added_ms; \
             UPDATE meta SET value = '1' WHERE key = 'schema_version';",
        )
        .unwrap();
        drop(conn);
        let (stores, _) = open(dir.path(), Retention::default()).unwrap();
        assert_eq!(stores.log.head("c").await.unwrap().last_seq, 1);
        assert_eq!(stores.reads.mark_read("u", "c", 1).await.unwrap(), 1);
        let chats = stores.membership.chats_of("u").await.unwrap();
        assert_eq!(
            chats,
            [UserChat {
                chat_id: "c".into(),
                added_ms: 0
            }],
            "a membership from before version 3 is kept, added at 0"
        );
        stores.membership.add("c2", "u").await.unwrap();
        assert!(stores.membership.chats_of("u").await.unwrap().len() == 2);
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        let version: String = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION.to_string());
    }

    #[test]
    fn refuses_a_newer_schema_and_a_foreign_database() {
        let dir = tempfile::tempdir().unwrap();
        drop(
            Sqlite::open_with(dir.path(), Retention::default(), WRITER_CHECKPOINT_FRAMES).unwrap(),
        );
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.execute(
            "UPDATE meta SET value = '99' WHERE key = 'schema_version'",
            [],
        )
        .unwrap();
        drop(conn);
        let err = Sqlite::open_with(dir.path(), Retention::default(), WRITER_CHECKPOINT_FRAMES)
            .err()
            .unwrap();
        assert!(
            matches!(err, OpenError::NewerSchema { found: 99, .. }),
            "{err}"
        );

        let other = tempfile::tempdir().unwrap();
        let conn = Connection::open(other.path().join(DB_FILE)).unwrap();
        conn.execute("CREATE TABLE t (x)", []).unwrap();
        drop(conn);
        let err = Sqlite::open_with(other.path(), Retention::default(), WRITER_CHECKPOINT_FRAMES)
            .err()
            .unwrap();
        assert!(matches!(err, OpenError::Damaged { .. }), "{err}");

        let garbage = tempfile::tempdir().unwrap();
        std::fs::write(
            garbage.path().join(DB_FILE),
            b"this is not a database at all, no",
        )
        .unwrap();
        let err = Sqlite::open_with(
            garbage.path(),
            Retention::default(),
            WRITER_CHECKPOINT_FRAMES,
        )
        .err()
        .unwrap();
        assert!(matches!(err, OpenError::Database { .. }), "{err}");
        assert!(err.to_string().contains(DB_FILE), "{err}");
    }
}
