//! Policy reload: read, compile against the active policy, swap once; or keep the active policy.
//!
//! A reload is all or nothing. The new text is read and compiled in full (with every budget
//! whose definition did not change taken over from the active policy, state and all) before
//! [`PolicyStore::install`] swaps it in with one atomic pointer store; requests in flight keep
//! the snapshot they loaded. Text identical to the active policy's (same version hash) is a
//! no-op. Anything that fails (unreadable, too large, bad YAML, invalid policy) leaves the active
//! policy in place; the failure is counted and logged once per distinct error, so a broken file
//! that keeps being touched does not repeat its message.
//!
//! Reloads are serialized: the file watcher and SIGHUP can ask at the same moment, and each
//! compile must see the policy the previous one installed.

use std::sync::Mutex;

use crate::metrics::{Metrics, ReloadResult};
use crate::policy::{FleetRuntime, PolicyError, PolicySource, parse_replacing, version_hash};
use crate::proxy::PolicyStore;

/// What a successful reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The text is the active policy's; nothing changed.
    Unchanged { version_hash: String },
    /// A new policy is active.
    Installed {
        previous_hash: String,
        version_hash: String,
        /// Budgets carried over from the previous policy with their state, of `budgets`.
        budgets_kept: usize,
        budgets: usize,
    },
}

impl ReloadOutcome {
    /// The version hash of the policy active after the reload.
    pub fn version_hash(&self) -> &str {
        match self {
            ReloadOutcome::Unchanged { version_hash }
            | ReloadOutcome::Installed { version_hash, .. } => version_hash,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file could not be read or does not compile; the active policy stays.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The reload task died before finishing (a panic, or the runtime shutting down); the
    /// active policy stays.
    #[error("policy reload did not finish: {0}")]
    Interrupted(#[source] tokio::task::JoinError),
}

/// Reloads one policy source into one store.
pub struct Reloader {
    source: PolicySource,
    fleet: FleetRuntime,
    /// Serializes reloads; holds the message of the last failure, so that the same failure
    /// repeated (a broken file touched again, SIGHUP sent twice) is logged only once.
    last_failure: Mutex<Option<String>>,
}

impl Reloader {
    pub fn new(source: PolicySource, fleet: FleetRuntime) -> Reloader {
        Reloader {
            source,
            fleet,
            last_failure: Mutex::new(None),
        }
    }

    pub fn source(&self) -> &PolicySource {
        &self.source
    }

    /// Reads the source and, when its text changed, compiles it and makes it the active policy.
    /// Blocking (file I/O and compiling): call it off the async workers. Logs and counts the
    /// outcome.
    pub fn reload(
        &self,
        store: &PolicyStore,
        metrics: &Metrics,
    ) -> Result<ReloadOutcome, ReloadError> {
        // A panic while holding the lock cannot leave the guarded message inconsistent.
        let mut last_failure = self.lock();
        let result = self.try_reload(store, metrics).map_err(ReloadError::from);
        report(result.as_ref(), &mut last_failure, store, metrics);
        result
    }

    /// Counts and logs a reload whose task died before [`Reloader::reload`] could report it.
    pub fn interrupted(
        &self,
        err: tokio::task::JoinError,
        store: &PolicyStore,
        metrics: &Metrics,
    ) -> ReloadError {
        let err = ReloadError::Interrupted(err);
        report(Err(&err), &mut self.lock(), store, metrics);
        err
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // A panic while holding the lock cannot leave the guarded message inconsistent.
        self.last_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn try_reload(
        &self,
        store: &PolicyStore,
        metrics: &Metrics,
    ) -> Result<ReloadOutcome, PolicyError> {
        let (name, text) = self.source.read()?;
        let hash = version_hash(text.as_bytes());
        let active = store.load();
        if hash == active.policy.version_hash {
            return Ok(ReloadOutcome::Unchanged { version_hash: hash });
        }
        let policy = parse_replacing(&text, &name, Some(&active.policy), &self.fleet)?;
        let (budgets_kept, budgets) = policy.budgets_shared_with(&active.policy);
        for w in &policy.warnings {
            tracing::warn!("{}: {w}", policy.source);
        }
        store.install(policy, metrics);
        Ok(ReloadOutcome::Installed {
            previous_hash: active.policy.version_hash.clone(),
            version_hash: hash,
            budgets_kept,
            budgets,
        })
    }
}

fn report(
    result: Result<&ReloadOutcome, &ReloadError>,
    last_failure: &mut Option<String>,
    store: &PolicyStore,
    metrics: &Metrics,
) {
    match result {
        Ok(ReloadOutcome::Unchanged { version_hash }) => {
            metrics.record_reload(ReloadResult::Unchanged);
            *last_failure = None;
            tracing::debug!(version_hash, "policy unchanged");
        }
        Ok(ReloadOutcome::Installed {
            previous_hash,
            version_hash,
            budgets_kept,
            budgets,
        }) => {
            metrics.record_reload(ReloadResult::Success);
            *last_failure = None;
            tracing::info!(
                version_hash,
                previous_hash,
                budgets_kept,
                budgets,
                "policy reloaded"
            );
        }
        Err(e) => {
            metrics.record_reload(ReloadResult::Failure);
            // One line even when the compiler listed several problems.
            let message = e.to_string().replace('\n', "; ");
            if last_failure.as_deref() == Some(message.as_str()) {
                tracing::debug!(error = %message, "policy reload failed again");
            } else {
                let active = store.load();
                tracing::error!(
                    error = %message,
                    active_version_hash = active.policy.version_hash,
                    "policy reload failed; the active policy stays in force"
                );
                *last_failure = Some(message);
            }
        }
    }
}
