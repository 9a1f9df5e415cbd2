//! Hot reload: watch the rules directory and swap in each good new rule set.
//!
//! The directory is watched, not the files, so a Kubernetes ConfigMap update (a new
//! hidden directory, then an atomic rename of the `..data` symlink) and plain edits,
//! creations and deletions all trigger a reload. Events are debounced so an editor's
//! burst of writes loads once. A reload that fails keeps the previous rules. The parent
//! directory is watched too, and the watch re-armed after each reload, so a rules
//! directory that is itself a symlink swapped to a new target is followed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::load::{self, LoadErrors, LoadOptions};
use super::tree::RuleSet;
use crate::telemetry::Metrics;

/// How long the directory must be quiet before a reload.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// The rules in force, swapped atomically; readers never see a half-loaded set.
pub type CurrentRules = Arc<ArcSwapOption<RuleSet>>;

/// Loads `dir` and, on success, makes it current. Counts the outcome in the metrics.
pub fn reload(
    dir: &Path,
    options: &LoadOptions,
    metrics: &Metrics,
    current: &CurrentRules,
) -> Result<(), LoadErrors> {
    match load::load_dir(dir, options, metrics) {
        Ok(rules) => {
            current.store(Some(Arc::new(rules)));
            metrics.service.config_load_success.increment(1);
            tracing::info!(dir = %dir.display(), "rules loaded");
            Ok(())
        }
        Err(errors) => {
            metrics.service.config_load_error.increment(1);
            for error in &errors.0 {
                tracing::error!(%error, "rules not loaded; keeping the previous rules");
            }
            Err(errors)
        }
    }
}

/// Watches the directory until dropped.
pub struct RulesWatcher {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RulesWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts watching `dir`, reloading into `current` after each burst of changes.
pub fn watch(
    dir: PathBuf,
    options: LoadOptions,
    metrics: Metrics,
    current: CurrentRules,
) -> notify::Result<RulesWatcher> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        // Best effort: the parent may be unreadable, and the directory watch still works.
        let _ = watcher.watch(parent, RecursiveMode::NonRecursive);
    }
    let task = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Wait for the burst to end, draining the events that belong to it.
            while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
            let _ = reload(&dir, &options, &metrics, &current);
            // Follow the directory if its path now resolves somewhere new.
            let _ = watcher.unwatch(&dir);
            if let Err(error) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
                tracing::warn!(%error, dir = %dir.display(), "cannot watch the rules directory");
            }
        }
    });
    Ok(RulesWatcher { task })
}
