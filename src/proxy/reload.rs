//! Reloading a running server's policy (SPEC section 4): when asked (`serve` asks
//! on SIGHUP) and when a watched file changes. The watched files are those
//! [`Gateway::reload_files`](crate::gateway::Gateway::reload_files) names: the
//! policy file, unless the policy is a bundled one, and the revoked-token list in
//! `tokens` mode. A file that the policy pulls in through `extends` is read again
//! on every reload but a change to it does not start one.
//!
//! A change is a different SHA-256 of a file's contents, looked at every
//! [`POLL_INTERVAL`]. Comparing contents rather than modification times catches
//! editors that replace the file (write a new one and rename it over the old),
//! and a save that changes nothing reloads nothing. A reload that fails keeps the
//! previous policy and is not tried again until a file changes again or the next
//! SIGHUP. Reloads are serialised, and every reload, whatever started it, logs its
//! outcome: `policy reloaded` with the old and new policy hash, or `policy reload
//! failed; keeping the previous policy` with the error.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::{Instant, MissedTickBehavior};

use super::Shared;
use crate::gateway::{GatewayError, Reloaded};

/// How often the watched files are read.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// What started a reload, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Trigger {
    /// The operator sent SIGHUP.
    Signal,
    /// A watched file changed.
    FileChange,
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Signal => "SIGHUP",
            Self::FileChange => "file_change",
        })
    }
}

/// The SHA-256 of each watched file's contents, in order; `None` where the file
/// could not be read.
type Snapshot = Vec<Option<[u8; 32]>>;

/// Reloads the policy of one running server. Cheap to clone: every clone reloads
/// the same server, and reloads from all of them run one at a time.
#[derive(Clone)]
pub struct Reloader {
    shared: Arc<Shared>,
    files: Arc<[PathBuf]>,
    /// What the watched files held at the last reload or look.
    seen: Arc<Mutex<Snapshot>>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

fn digest(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path)
        .ok()
        .map(|bytes| Sha256::digest(bytes).into())
}

fn snapshot(files: &[PathBuf]) -> Snapshot {
    files.iter().map(|p| digest(p)).collect()
}

fn log(trigger: Trigger, result: &Result<Reloaded, GatewayError>) {
    match result {
        Ok(r) => tracing::info!(
            %trigger,
            old_hash = %r.old_hash,
            new_hash = %r.new_hash,
            revoked = r.revoked,
            "policy reloaded"
        ),
        Err(error) => tracing::error!(
            %trigger,
            %error,
            "policy reload failed; keeping the previous policy"
        ),
    }
}

impl Reloader {
    /// A reloader for `shared`, taking note of what the watched files hold now.
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        let files: Arc<[PathBuf]> = shared.gateway.reload_files().into();
        let seen = snapshot(&files);
        Self {
            shared,
            files,
            seen: Arc::new(Mutex::new(seen)),
        }
    }

    /// The files watched for changes (empty for a bundled policy in passthrough
    /// mode).
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    fn lock(&self) -> MutexGuard<'_, Snapshot> {
        match self.seen.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Reloads now and logs the outcome. This reads files: from async code, call
    /// it on a blocking thread.
    pub fn reload(&self, trigger: Trigger) -> Result<Reloaded, GatewayError> {
        let mut seen = self.lock();
        // Looked at before the reload reads the files, so that a change made
        // while it runs is seen by the next look.
        *seen = snapshot(&self.files);
        let result = self.shared.gateway.reload();
        log(trigger, &result);
        result
    }

    /// Reloads, and logs the outcome, if a watched file changed since the last
    /// reload or look; `None` if nothing changed or a watched file cannot be read
    /// (a warning says which, once). This reads files: from async code, call it
    /// on a blocking thread.
    pub fn reload_if_changed(&self) -> Option<Result<Reloaded, GatewayError>> {
        let mut seen = self.lock();
        let now = snapshot(&self.files);
        if now == *seen {
            return None;
        }
        let mut readable = true;
        for ((path, before), after) in self.files.iter().zip(seen.iter()).zip(&now) {
            if after.is_none() {
                readable = false;
                if before.is_some() {
                    tracing::warn!(
                        file = %path.display(),
                        "cannot read a watched file; keeping the current policy until it is back"
                    );
                }
            }
        }
        *seen = now;
        if !readable {
            return None;
        }
        let result = self.shared.gateway.reload();
        log(Trigger::FileChange, &result);
        Some(result)
    }

    /// Looks at the watched files every `every`, reloading when one changed,
    /// until `stop` resolves. Returns at once when there is nothing to watch.
    pub async fn watch(self, every: Duration, stop: impl Future<Output = ()>) {
        if self.files.is_empty() {
            tracing::debug!("bundled policy: no policy file to watch");
            return;
        }
        tracing::info!(
            files = ?self.files,
            every = ?every,
            "watching for policy changes"
        );
        let mut stop = std::pin::pin!(stop);
        let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = &mut stop => return,
                _ = ticks.tick() => {}
            }
            let this = self.clone();
            if let Err(error) = tokio::task::spawn_blocking(move || this.reload_if_changed()).await
            {
                tracing::error!(%error, "looking for policy changes failed");
            }
        }
    }
}
