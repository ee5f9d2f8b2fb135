//! The file source of mesh state: polls the configuration file and replaces the store's
//! snapshot when the file changes and parses cleanly. A bad file is reported with every error
//! and the last good state keeps serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::state::Store;

/// Polling (rather than inotify) also sees Kubernetes ConfigMap updates, which swap symlinks.
const POLL: Duration = Duration::from_millis(500);

pub async fn watch(
    path: PathBuf,
    running: Arc<Config>,
    store: Arc<Store>,
    stop: CancellationToken,
) {
    let mut last = std::fs::read(&path).ok();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
        let now = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read configuration; keeping the current state");
                continue;
            }
        };
        if last.as_ref() == Some(&now) {
            continue;
        }
        last = Some(now);
        match config::load(&path, &running.node) {
            Ok(loaded) => {
                if loaded.config != *running {
                    tracing::warn!("node settings changed in the file; they apply at the next restart (mesh state is applied now)");
                }
                store.replace(loaded.state);
                tracing::info!(path = %path.display(), "configuration reloaded");
            }
            Err(errors) => {
                tracing::error!(path = %path.display(), "configuration rejected, keeping the last good state: {errors}");
            }
        }
    }
}
