//! Watching the policy file: `notify` on the file's directory, events filtered and debounced.
//!
//! The directory is watched, not the file. Editors and `mv` replace a file by renaming a new
//! one over it, which leaves a watch on the old inode silent; a Kubernetes ConfigMap volume
//! changes by swapping its `..data` symlink to a new timestamped directory and never touches
//! `policy.yaml`, itself a symlink to `..data/policy.yaml`. So an event counts when it names the
//! file or, when the file is a symlink with a relative target, the first component of that
//! target (`..data`), read again at each event since the link may change. A symlink to another
//! directory is followed when reading, but changes there are seen only through SIGHUP.
//!
//! The guard's own reads open the file: open, read and close-without-write events are ignored,
//! so a reload never triggers another one.
//!
//! Bursts are debounced: a change is reported once no counted event has arrived for `quiet` (a
//! file written in several chunks, a rename followed by a chmod), and at the latest
//! [`MAX_DELAY_FACTOR`] × `quiet` after the first event, so a file rewritten without pause is
//! still picked up.

use std::ffi::{OsStr, OsString};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::warn_limited;

/// The longest a change waits for a burst to end, in multiples of the quiet period.
pub const MAX_DELAY_FACTOR: u32 = 10;

#[derive(Debug, thiserror::Error)]
#[error("cannot watch {dir} for policy changes: {source}")]
pub struct WatchError {
    dir: String,
    #[source]
    source: notify::Error,
}

/// A watch on one policy file. Dropping it stops the watch.
pub struct PolicyWatch {
    _watcher: RecommendedWatcher,
    events: Arc<Notify>,
    quiet: Duration,
}

impl PolicyWatch {
    /// Starts watching `file`'s directory (not recursively).
    pub fn start(file: &Path, quiet: Duration) -> Result<PolicyWatch, WatchError> {
        // Absolute, but symlinks kept: the link itself is what a ConfigMap keeps in place.
        let file = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
        let dir = file
            .parent()
            .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
        let name = file
            .file_name()
            .map(OsStr::to_os_string)
            .unwrap_or_default();
        let events = Arc::new(Notify::new());
        let wake = events.clone();
        let handler = move |event: notify::Result<Event>| match event {
            Ok(event) => {
                if counts(&event, &file, &name) {
                    wake.notify_one();
                }
            }
            Err(e) => {
                // Events may have been lost (e.g. the kernel queue overflowed): look again.
                warn_limited!("policy watch: {e}");
                wake.notify_one();
            }
        };
        let err = |source| WatchError {
            dir: dir.display().to_string(),
            source,
        };
        let mut watcher = notify::recommended_watcher(handler).map_err(err)?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(err)?;
        Ok(PolicyWatch {
            _watcher: watcher,
            events,
            quiet,
        })
    }

    /// Waits for the next change to the file, debounced as described in the module docs.
    pub async fn changed(&self) {
        debounced(&self.events, self.quiet).await;
    }
}

/// Waits for an event on `events`, then until none has come for `quiet`, or at most
/// [`MAX_DELAY_FACTOR`] × `quiet` after the first.
async fn debounced(events: &Notify, quiet: Duration) {
    events.notified().await;
    let deadline = Instant::now() + quiet * MAX_DELAY_FACTOR;
    loop {
        let quiet_until = (Instant::now() + quiet).min(deadline);
        let more = tokio::time::timeout_at(quiet_until, events.notified()).await;
        if more.is_err() || Instant::now() >= deadline {
            return;
        }
    }
}

/// True when `event` may have changed what reading `file` (named `name`) returns.
fn counts(event: &Event, file: &Path, name: &OsStr) -> bool {
    if event.need_rescan() {
        return true;
    }
    if let EventKind::Access(access) = event.kind
        && access != AccessKind::Close(AccessMode::Write)
    {
        return false;
    }
    let link = link_entry(file);
    event.paths.iter().any(|p| {
        p.file_name()
            .is_some_and(|n| n == name || link.as_deref() == Some(n))
    })
}

/// When `file` is a symlink to a relative target, the target's first component: the entry of
/// the same directory whose replacement changes the file (`..data` in a ConfigMap volume).
fn link_entry(file: &Path) -> Option<OsString> {
    let target = std::fs::read_link(file).ok()?;
    match target.components().next()? {
        Component::Normal(first) => Some(first.to_os_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, ModifyKind, RenameMode};

    use super::*;

    fn event(kind: EventKind, paths: &[&Path]) -> Event {
        let mut e = Event::new(kind);
        for p in paths {
            e = e.add_path(p.to_path_buf());
        }
        e
    }

    #[test]
    fn events_count_for_the_file_and_the_link_it_goes_through() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("policy.yaml");
        let name = OsStr::new("policy.yaml");
        let other = dir.path().join("other.yaml");
        let data = dir.path().join("..data");
        let create = EventKind::Create(CreateKind::File);
        let renamed = EventKind::Modify(ModifyKind::Name(RenameMode::To));

        assert!(counts(&event(create, &[&file]), &file, name));
        assert!(counts(&event(renamed, &[&other, &file]), &file, name));
        assert!(!counts(&event(create, &[&other]), &file, name));
        assert!(
            !counts(&event(renamed, &[&data]), &file, name),
            "not a link yet"
        );
        for own_read in [
            AccessKind::Open(AccessMode::Any),
            AccessKind::Read,
            AccessKind::Close(AccessMode::Read),
        ] {
            assert!(!counts(
                &event(EventKind::Access(own_read), &[&file]),
                &file,
                name
            ));
        }
        let written = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert!(counts(&event(written, &[&file]), &file, name));

        std::os::unix::fs::symlink("..data/policy.yaml", &file).unwrap();
        assert!(counts(&event(renamed, &[&data]), &file, name));
        assert!(!counts(&event(renamed, &[&other]), &file, name));
    }

    /// Events at the given offsets (from the start, on a paused clock); when the debounced
    /// change is reported, from the start.
    async fn reported_after(events_at_ms: &[u64], quiet: Duration) -> Duration {
        let events = Arc::new(Notify::new());
        let feed = events.clone();
        let offsets = events_at_ms.to_vec();
        let start = Instant::now();
        tokio::spawn(async move {
            for at in offsets {
                tokio::time::sleep_until(start + Duration::from_millis(at)).await;
                feed.notify_one();
            }
        });
        debounced(&events, quiet).await;
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_reported_once_it_has_been_quiet() {
        let quiet = Duration::from_millis(200);
        // A writer pausing 20 ms between chunks: one change, 200 ms after the last chunk.
        let chunks = reported_after(&[0, 20, 40, 60], quiet).await;
        assert_eq!(chunks, Duration::from_millis(260));
        // A pause as long as the quiet period ends the burst: the later event is not waited for.
        let two = reported_after(&[0, 500], quiet).await;
        assert_eq!(two, Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_that_never_pauses_is_reported_at_the_latest_delay() {
        let quiet = Duration::from_millis(100);
        let every_50ms: Vec<u64> = (0..100).map(|i| i * 50).collect();
        let reported = reported_after(&every_50ms, quiet).await;
        assert_eq!(reported, quiet * MAX_DELAY_FACTOR);
    }

    #[test]
    fn a_rescan_always_counts() {
        let e = Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert!(counts(
            &e,
            Path::new("/x/policy.yaml"),
            OsStr::new("policy.yaml")
        ));
    }
}
