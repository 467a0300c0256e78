//! The receipt log: append-only JSONL, one signed record per line, chained by
//! `seq` and `prev`, durable before [`ReceiptLog::append`] returns.
//!
//! An append takes the chain lock just long enough to number the record, link it
//! to the previous line, sign it on the caller's thread and queue it; a dedicated
//! writer thread writes every queued line, syncs once for the whole batch (group
//! commit) and only then answers each caller. A record whose caller can wait a
//! little ([`Grouping::MayWait`]: a call in a stream, which holds back only that
//! call's own events) waits up to the log's `group_wait` ([`GROUP_WAIT`] unless
//! configured) for others to share its sync, while the log is busy with other
//! requests; one whose caller cannot ([`Grouping::Now`]) is written at once, with
//! whatever is waiting. The chain makes every signature
//! depend on the previous line, so numbering and signing are one short critical
//! section; everything else (building the draft, redaction, hashing the arguments)
//! happens before it, on the caller's task.
//!
//! When a write or sync fails, the batch is cut back off the file, every queued
//! append fails, and the chain resumes from the last durable record, so a failed
//! append never leaves a gap or a half line. On start, an existing log is read
//! back: a torn last line (a crash mid-write) is cut off, the chain continues from
//! the last good record, and a `system` record notes the recovery. Past
//! `rotate_bytes`, the file is renamed `<stem>.<first seq>.jsonl` and a new one is
//! started; the chain runs on across files.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use ed25519_dalek::SigningKey;
use serde_json::json;

use super::record::{ActionRecord, Draft, GENESIS, Prepared, Reason, Receipt, line_hash};

/// Most lines written per sync.
const MAX_BATCH: usize = 4096;

/// How long a record that may wait waits for others to share its sync, by
/// default.
pub const GROUP_WAIT: Duration = Duration::from_millis(1);

/// A record waits only while the log is this busy, by default: a record of
/// another request was queued less than this long before it. An idle log, or
/// one turn settling its calls one after another, never makes a record wait.
pub const BUSY: Duration = Duration::from_millis(5);

/// Whether a record may wait for others to share its sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    /// Written at once: its caller's whole answer waits for it.
    Now,
    /// May wait up to the log's `group_wait` while the log is busy with other
    /// requests: a call in a stream, which holds back only that call's events.
    MayWait,
}

/// Options of a log.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Start a new file past this size (0: never).
    pub rotate_bytes: u64,
    /// The gateway's id, for the log's own records.
    pub server_id: String,
    /// How long a [`Grouping::MayWait`] record waits for others to share its
    /// sync (zero: never).
    pub group_wait: Duration,
    /// How close the record before must have come for the log to count as busy,
    /// the only time a record waits.
    pub busy: Duration,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            rotate_bytes: 64 * 1024 * 1024,
            server_id: "tollgate".into(),
            group_wait: GROUP_WAIT,
            busy: BUSY,
        }
    }
}

/// Why the log could not be opened or appended to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// Opening, reading or writing failed.
    #[error("receipt log {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        message: String,
    },
    /// The record could not be made.
    #[error("receipt could not be signed: {0}")]
    Record(String),
    /// The writer is gone (the log was closed).
    #[error("receipt log is closed")]
    Closed,
}

/// Where the chain stands.
#[derive(Debug, Clone)]
struct ChainState {
    next_seq: u64,
    prev: String,
    last_time: SystemTime,
}

struct Job {
    /// Where the chain stands once this record is durable.
    after: ChainState,
    grouping: Grouping,
    /// When it was queued.
    queued: Instant,
    line: Vec<u8>,
    receipt: Receipt,
    reply: tokio::sync::oneshot::Sender<Result<Receipt, LogError>>,
}

struct Shared {
    chain: Mutex<ChainState>,
    key: SigningKey,
    /// The id of `key`'s public half, as every record names it.
    key_id: String,
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    /// The last write failure, until a write succeeds again.
    failing: Mutex<Option<String>>,
    /// Batches written and synced.
    syncs: AtomicU64,
}

/// An open receipt log.
pub struct ReceiptLog {
    shared: Arc<Shared>,
    path: PathBuf,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for ReceiptLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiptLog")
            .field("path", &self.path)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> LogError {
    LogError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Formats a time as RFC 3339 with microseconds, UTC.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

/// The rotated files of `path`, oldest first (`receipts.00000000000000000000.jsonl`, ...).
pub fn rotated_files(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(stem)) = (path.parent(), path.file_stem().and_then(|s| s.to_str())) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{stem}.");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n.strip_prefix(&prefix)
                            .and_then(|r| r.strip_suffix(".jsonl"))
                            .is_some_and(|digits| {
                                digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit())
                            })
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// The last complete line of a file and where the complete part ends.
fn last_good_line(path: &Path) -> Result<(Option<Vec<u8>>, u64, u64), LogError> {
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    let mut reader = BufReader::new(file);
    let mut good_end = 0u64;
    let mut last = None;
    let mut total = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| io_error(path, e))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        let complete = buf.ends_with(b"\n");
        let body = if complete {
            &buf[..buf.len() - 1]
        } else {
            &buf[..]
        };
        if complete && serde_json::from_slice::<Receipt>(body).is_ok() {
            good_end = total;
            last = Some(body.to_vec());
        } else {
            // A torn or unreadable line: everything from here on is cut.
            break;
        }
    }
    let len = std::fs::metadata(path)
        .map_err(|e| io_error(path, e))?
        .len();
    Ok((last, good_end, len))
}

impl ReceiptLog {
    /// Opens (creating if needed) the log at `path`, signing with `key`.
    pub fn open(path: &Path, key: SigningKey, options: LogOptions) -> Result<Self, LogError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io_error(path, e))?;
        }
        let regular = path.metadata().map(|m| m.is_file()).unwrap_or(true);
        let mut recovered_bytes = 0u64;
        let mut last_line = None;
        if regular && path.exists() {
            let (last, good_end, len) = last_good_line(path)?;
            if good_end < len {
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| io_error(path, e))?;
                file.set_len(good_end).map_err(|e| io_error(path, e))?;
                file.sync_all().map_err(|e| io_error(path, e))?;
                recovered_bytes = len - good_end;
            }
            last_line = last;
        }
        if last_line.is_none()
            && let Some(previous) = rotated_files(path).last()
        {
            last_line = last_good_line(previous)?.0;
        }
        let chain = match &last_line {
            Some(line) => {
                let last: Receipt = serde_json::from_slice(line).map_err(|e| io_error(path, e))?;
                let last_time =
                    humantime::parse_rfc3339(&last.timestamp).unwrap_or(SystemTime::UNIX_EPOCH);
                ChainState {
                    next_seq: last.seq + 1,
                    prev: line_hash(line),
                    last_time,
                }
            }
            None => ChainState {
                next_seq: 0,
                prev: GENESIS.to_owned(),
                last_time: SystemTime::UNIX_EPOCH,
            },
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| io_error(path, e))?;
        let (tx, rx) = mpsc::channel::<Job>();
        let shared = Arc::new(Shared {
            chain: Mutex::new(chain.clone()),
            key_id: crate::kernel::token::key_id(&key.verifying_key()),
            key,
            queue: Mutex::new(Some(tx)),
            failing: Mutex::new(None),
            syncs: AtomicU64::new(0),
        });
        let first_seq = if regular { first_seq_of(path) } else { None }.unwrap_or(chain.next_seq);
        let mut writer = Writer {
            path: path.to_path_buf(),
            file,
            regular,
            len: None,
            group_wait: options.group_wait,
            busy: options.busy,
            rotate_bytes: options.rotate_bytes,
            file_first_seq: first_seq,
            durable: chain,
            shared: shared.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("tollgate-receipts".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| io_error(path, e))?;
        let log = Self {
            shared,
            path: path.to_path_buf(),
            writer: Some(handle),
        };
        if recovered_bytes > 0 {
            tracing::warn!(path = %path.display(), bytes = recovered_bytes, "receipt log had a torn last line; cut off");
            log.append_blocking(recovery_draft(&options.server_id, recovered_bytes))?;
        }
        Ok(log)
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many batches have been written and synced since the log was opened
    /// (each one sync, however many records it held).
    pub fn syncs(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }

    /// Why the last write failed, while appends are failing; `None` when the log
    /// is writable (as far as the last write knows).
    pub fn failure(&self) -> Option<String> {
        if lock(&self.shared.queue).is_none() {
            return Some("the receipt log is closed".into());
        }
        lock(&self.shared.failing).clone()
    }

    /// Signs `draft` as the next record and queues it; the returned receiver
    /// answers once the record is durable (or failed).
    fn submit(
        &self,
        draft: Draft,
        grouping: Grouping,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<Receipt, LogError>>, LogError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        // Everything that does not depend on the chain is done before the lock.
        let prepared = Prepared::new(draft, &self.shared.key_id)
            .map_err(|e| LogError::Record(e.to_string()))?;
        let receipt_id = format!("rcpt_{}", uuid::Uuid::now_v7().simple());
        let mut chain = lock(&self.shared.chain);
        let now = SystemTime::now().max(chain.last_time);
        let (receipt, line) = prepared
            .finish(
                chain.next_seq,
                &chain.prev,
                &receipt_id,
                &timestamp(now),
                &self.shared.key,
            )
            .map_err(|e| LogError::Record(e.to_string()))?;
        let mut line = line.into_bytes();
        let hash = line_hash(&line);
        line.push(b'\n');
        let queue = lock(&self.shared.queue);
        let sender = queue.as_ref().ok_or(LogError::Closed)?;
        let after = ChainState {
            next_seq: receipt.seq + 1,
            prev: hash,
            last_time: now,
        };
        sender
            .send(Job {
                after: after.clone(),
                grouping,
                queued: Instant::now(),
                line,
                receipt,
                reply,
            })
            .map_err(|_| LogError::Closed)?;
        *chain = after;
        Ok(rx)
    }

    /// Appends a record; returns it once it is durable. If this fails, the record
    /// is not in the log and the decision must not take effect.
    pub async fn append(&self, draft: Draft) -> Result<Receipt, LogError> {
        self.append_grouped(draft, Grouping::Now).await
    }

    /// [`ReceiptLog::append`], saying whether the record may wait for others to
    /// share its sync.
    pub async fn append_grouped(
        &self,
        draft: Draft,
        grouping: Grouping,
    ) -> Result<Receipt, LogError> {
        let rx = self.submit(draft, grouping)?;
        rx.await.map_err(|_| LogError::Closed)?
    }

    /// [`ReceiptLog::append`] for threads outside an async runtime.
    pub fn append_blocking(&self, draft: Draft) -> Result<Receipt, LogError> {
        let rx = self.submit(draft, Grouping::Now)?;
        rx.blocking_recv().map_err(|_| LogError::Closed)?
    }

    /// Stops the writer after everything queued is written.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        lock(&self.shared.queue).take();
        if let Some(handle) = self.writer.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for ReceiptLog {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn recovery_draft(server_id: &str, bytes: u64) -> Draft {
    Draft {
        decision: "system".into(),
        reason: Reason {
            code: "log_recovered".into(),
            message: format!("the last line of the log was torn ({bytes} bytes) and was cut off"),
            matched_rule: None,
        },
        server_id: server_id.to_owned(),
        agent_id: String::new(),
        request_id: String::new(),
        surface: "tollgate.log".into(),
        action: ActionRecord {
            tool_name: String::new(),
            tool_call_id: String::new(),
            parameters: json!({}),
            parameters_hash: String::new(),
        },
        policy_hash: String::new(),
        metadata: json!({"truncated_bytes": bytes}),
    }
}

/// The seq of the first record in a file, if it has one.
fn first_seq_of(path: &Path) -> Option<u64> {
    let mut first = String::new();
    let file = File::open(path).ok()?;
    BufReader::new(file).read_line(&mut first).ok()?;
    serde_json::from_str::<Receipt>(first.trim_end())
        .ok()
        .map(|r| r.seq)
}

/// When the latest records were queued, for telling whether the log is busy:
/// the latest, and the latest from another request than its. A turn settling
/// its calls one after another does not make the log busy by itself.
#[derive(Default)]
struct Recent {
    latest: Option<(String, Instant)>,
    other: Option<Instant>,
}

impl Recent {
    /// Whether a record from another request than `job`'s was queued less than
    /// `window` before it.
    fn busy(&self, job: &Job, window: Duration) -> bool {
        let before = match &self.latest {
            Some((request, at)) if *request != job.receipt.request_id => Some(*at),
            _ => self.other,
        };
        before.is_some_and(|at| job.queued.saturating_duration_since(at) < window)
    }

    fn saw(&mut self, job: &Job) {
        match &mut self.latest {
            Some((request, at)) if *request == job.receipt.request_id => *at = job.queued,
            latest => {
                self.other = latest.as_ref().map(|(_, at)| *at);
                *latest = Some((job.receipt.request_id.clone(), job.queued));
            }
        }
    }
}

struct Writer {
    path: PathBuf,
    file: File,
    regular: bool,
    /// The file's length as this writer left it; `None` after a failed write,
    /// until it is read from the file again. The log is tollgate's alone: a file
    /// cut short from outside (a `copytruncate`) is rotated early, nothing worse.
    len: Option<u64>,
    group_wait: Duration,
    busy: Duration,
    rotate_bytes: u64,
    file_first_seq: u64,
    durable: ChainState,
    shared: Arc<Shared>,
}

impl Writer {
    /// The writer thread's loop. Kept out of line so that profiles name the
    /// thread's work (`bench/instructions` reports it).
    #[inline(never)]
    fn run(&mut self, rx: mpsc::Receiver<Job>) {
        let mut recent = Recent::default();
        while let Ok(first) = rx.recv() {
            let busy = recent.busy(&first, self.busy);
            recent.saw(&first);
            let deadline = first.queued.checked_add(self.group_wait);
            let mut wait =
                busy && first.grouping == Grouping::MayWait && !self.group_wait.is_zero();
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                let next = match deadline {
                    Some(deadline) if wait => rx
                        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                        .ok(),
                    _ => rx.try_recv().ok(),
                };
                let Some(job) = next else {
                    break;
                };
                recent.saw(&job);
                // One that cannot wait is written at once, with the others.
                wait &= job.grouping == Grouping::MayWait;
                batch.push(job);
            }
            match self.write_batch(&batch) {
                Ok(()) => {
                    if let Some(last) = batch.last() {
                        self.durable = last.after.clone();
                    }
                    lock(&self.shared.failing).take();
                    self.shared.syncs.fetch_add(1, Ordering::Relaxed);
                    for job in batch {
                        let _ = job.reply.send(Ok(job.receipt));
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "receipt log write failed; appends fail until it can be written");
                    *lock(&self.shared.failing) = Some(error.to_string());
                    // Resume the chain from the last durable record, and fail what
                    // was numbered after it.
                    let mut chain = lock(&self.shared.chain);
                    *chain = self.durable.clone();
                    let mut failed = batch;
                    while let Ok(job) = rx.try_recv() {
                        failed.push(job);
                    }
                    drop(chain);
                    for job in failed {
                        let _ = job.reply.send(Err(error.clone()));
                    }
                }
            }
        }
    }

    /// The file's length: as the last write left it, or read from the file
    /// when unknown (the first write, or after one failed).
    fn len(&mut self) -> Result<u64, LogError> {
        match self.len {
            Some(len) => Ok(len),
            None => {
                let len = self
                    .file
                    .seek(SeekFrom::End(0))
                    .map_err(|e| io_error(&self.path, e))?;
                self.len = Some(len);
                Ok(len)
            }
        }
    }

    fn write_batch(&mut self, batch: &[Job]) -> Result<(), LogError> {
        if self.regular && self.rotate_bytes > 0 {
            self.rotate_if_needed(batch[0].receipt.seq)?;
        }
        let start = if self.regular { self.len()? } else { 0 };
        // Known again only once this write is known to have landed whole.
        self.len = None;
        let mut bytes = Vec::with_capacity(batch.iter().map(|j| j.line.len()).sum());
        for job in batch {
            bytes.extend_from_slice(&job.line);
        }
        let result = self
            .file
            .write_all(&bytes)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = result {
            if self.regular {
                // Cut the partial batch back off (never growing the file, should
                // it be shorter than this writer thought); if even that fails,
                // the next start will cut it as a torn line.
                let _ = self.file.metadata().and_then(|m| {
                    if m.len() > start {
                        self.file.set_len(start)?;
                        self.file.sync_data()?;
                    }
                    Ok(())
                });
            }
            return Err(io_error(&self.path, e));
        }
        if self.regular {
            self.len = Some(start + bytes.len() as u64);
        }
        Ok(())
    }

    fn rotate_if_needed(&mut self, next_seq: u64) -> Result<(), LogError> {
        let size = self.len()?;
        if size < self.rotate_bytes || size == 0 {
            return Ok(());
        }
        let stem = self
            .path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("receipts");
        let rotated = self
            .path
            .with_file_name(format!("{stem}.{:020}.jsonl", self.file_first_seq));
        std::fs::rename(&self.path, &rotated).map_err(|e| io_error(&self.path, e))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| io_error(&self.path, e))?;
        self.len = None;
        if let Some(dir) = self.path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        self.file_first_seq = next_seq;
        Ok(())
    }
}

/// Reads every line of a file (for `show`, `summary`, `tail`).
pub fn read_lines(path: &Path) -> Result<Vec<String>, LogError> {
    let mut text = String::new();
    File::open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .map_err(|e| io_error(path, e))?;
    Ok(text.lines().map(str::to_owned).collect())
}
