//! The memory store's outbox: usage events in an append-only file, on disk before the
//! settlement that wrote them is answered, and an acknowledged offset beside it.
//!
//! Layout: `<path>` holds one event per line (JSON has no raw newlines). Offsets are
//! logical: they count every byte ever appended, and `<path>.acked` holds `<base> <acked>`,
//! the logical offset of the file's first byte and the one up to which the ledger has
//! committed the events. An entry's id is the logical offset just past its line, so
//! acknowledging an id acknowledges everything before it (the writer commits in file
//! order), and an id never names two events. When everything is acknowledged the file is
//! emptied (the base moves on), so it only ever holds what the ledger has not yet got.
//!
//! Durability is a group commit ([`Durability`]): a settlement writes its line under the
//! store's lock, then waits, outside it, until an fsync covers that line. One fsync on a
//! blocking thread covers every line written before it began, so concurrent settlements
//! share it and the async runtime never waits on the disk.
//!
//! Survives a restart: on open, the offsets are read back and the events after the
//! acknowledged one are pending again. A crash between a write of the offsets and the
//! emptying of the file makes old events pending again, never loses one; the ledger's
//! insert is idempotent by request id, so an event read twice is recorded once.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::budget::OutboxEntry;

/// An append-only event file with an acknowledged offset. Not synchronised: its owner
/// holds it under a lock.
#[derive(Debug)]
pub struct FileOutbox {
    path: PathBuf,
    file: File,
    /// Logical offset of the file's first byte.
    base: u64,
    /// Logical offset of the file's end (where the next event goes).
    len: u64,
    /// Logical offset up to which events are acknowledged.
    acked: u64,
    durability: Arc<Durability>,
}

impl FileOutbox {
    /// Opens (or creates) the outbox at `path`.
    pub fn open(path: impl Into<PathBuf>) -> io::Result<FileOutbox> {
        let path = path.into();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let size = file.metadata()?.len();
        let (base, acked) = match std::fs::read_to_string(acked_path(&path)) {
            Ok(text) => parse_offsets(&text).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: expected '<base> <acked>', found '{}'",
                        acked_path(&path).display(),
                        text.trim()
                    ),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => (0, 0),
            Err(e) => return Err(e),
        };
        let len = base + size;
        let durability = Arc::new(Durability {
            file: file.try_clone()?,
            written: AtomicU64::new(len),
            synced: AtomicU64::new(len),
            syncs: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            syncing: tokio::sync::Mutex::new(()),
        });
        Ok(FileOutbox {
            path,
            file,
            base,
            len,
            acked: acked.clamp(base, len),
            durability,
        })
    }

    /// Writes one event and returns the logical offset just past it; it is on disk once
    /// [`Durability::wait`] for that offset returns.
    pub fn append(&mut self, event: &str) -> io::Result<u64> {
        debug_assert!(!event.contains('\n'));
        let mut line = Vec::with_capacity(event.len() + 1);
        line.extend_from_slice(event.as_bytes());
        line.push(b'\n');
        if let Err(e) = self.file.write_all(&line) {
            // Cut a partial line off, so the file stays one event per line.
            let _ = self.file.set_len(self.len - self.base);
            return Err(e);
        }
        self.len += line.len() as u64;
        self.durability.written.store(self.len, Ordering::Release);
        Ok(self.len)
    }

    /// Logical offset of the file's end.
    pub fn end(&self) -> u64 {
        self.len
    }

    /// What makes appended events durable.
    pub fn durability(&self) -> &Arc<Durability> {
        &self.durability
    }

    /// Up to `max` events after the acknowledged offset, oldest first.
    pub fn pending(&self, max: usize) -> io::Result<Vec<OutboxEntry>> {
        let mut reader = BufReader::new(File::open(&self.path)?);
        reader.seek(SeekFrom::Start(self.acked - self.base))?;
        let mut offset = self.acked;
        let mut entries = Vec::new();
        let mut line = String::new();
        while entries.len() < max && offset < self.len {
            line.clear();
            let read = reader.read_line(&mut line)?;
            if read == 0 || !line.ends_with('\n') {
                break;
            }
            offset += read as u64;
            entries.push(OutboxEntry {
                id: offset.to_string(),
                event: line.trim_end_matches('\n').to_owned(),
            });
        }
        Ok(entries)
    }

    /// Acknowledges every event up to and including the one with id `id`.
    pub fn ack(&mut self, id: &str) -> io::Result<()> {
        let offset: u64 = id.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("'{id}' is no outbox id"),
            )
        })?;
        if offset <= self.acked {
            return Ok(());
        }
        let offset = offset.min(self.len);
        if offset == self.len {
            // Everything is in the ledger: start the file again after its last offset.
            write_durably(&acked_path(&self.path), format!("{0} {0}", self.len))?;
            self.file.set_len(0)?;
            self.file.sync_all()?;
            self.base = self.len;
        } else {
            write_durably(&acked_path(&self.path), format!("{} {offset}", self.base))?;
        }
        self.acked = offset;
        Ok(())
    }

    /// How many bytes of events wait for the ledger.
    pub fn backlog_bytes(&self) -> u64 {
        self.len - self.acked
    }
}

/// The group commit of a [`FileOutbox`]: waits until the file is on disk up to an offset.
///
/// One waiter at a time fsyncs (on a blocking thread), covering everything written before
/// it began; waiters queued meanwhile find their lines covered, or sync the lines written
/// during the previous fsync together. If an fsync fails, every wait fails from then on:
/// after a failed fsync Linux may report the next one as a success without having written
/// the lost pages, so nothing written since can be promised durable (the lines stay in
/// the file, and the ledger writer still reads them). A restart recovers.
#[derive(Debug)]
pub struct Durability {
    /// A handle of its own on the outbox file, so syncing needs no lock on the outbox.
    file: File,
    /// Logical offset of the end of what has been written.
    written: AtomicU64,
    /// Logical offset up to which the file is known to be on disk.
    synced: AtomicU64,
    /// Fsyncs done (for tests and diagnostics).
    syncs: AtomicU64,
    /// Set by the first failed fsync.
    failed: AtomicBool,
    /// Held by the waiter that is syncing.
    syncing: tokio::sync::Mutex<()>,
}

impl Durability {
    /// Returns once everything up to logical offset `offset` is on disk.
    pub async fn wait(self: &Arc<Self>, offset: u64) -> io::Result<()> {
        if self.synced.load(Ordering::Acquire) >= offset {
            return Ok(());
        }
        let _syncing = self.syncing.lock().await;
        if self.synced.load(Ordering::Acquire) >= offset {
            return Ok(());
        }
        if self.failed.load(Ordering::Acquire) {
            return Err(io::Error::other(
                "an earlier fsync of the outbox failed; restart to recover",
            ));
        }
        // Read before the fsync: every line written by now is covered by it.
        let target = self.written.load(Ordering::Acquire);
        let this = Arc::clone(self);
        let synced = tokio::task::spawn_blocking(move || this.file.sync_data())
            .await
            .map_err(io::Error::other)
            .and_then(|r| r);
        if let Err(e) = synced {
            self.failed.store(true, Ordering::Release);
            return Err(e);
        }
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.synced.fetch_max(target, Ordering::AcqRel);
        Ok(())
    }

    /// How many fsyncs have made lines durable.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }
}

fn parse_offsets(text: &str) -> Option<(u64, u64)> {
    let (base, acked) = text.trim().split_once(' ')?;
    Some((base.parse().ok()?, acked.parse().ok()?))
}

fn acked_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".acked");
    PathBuf::from(name)
}

/// Replaces `path` with `bytes` atomically (write a sibling, fsync, rename).
fn write_durably(path: &Path, text: String) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_survive_a_reopen_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.jsonl");
        let mut outbox = FileOutbox::open(&path).unwrap();
        outbox.append(r#"{"n":1}"#).unwrap();
        outbox.append(r#"{"n":2}"#).unwrap();
        outbox.append(r#"{"n":3}"#).unwrap();
        let first = outbox.pending(2).unwrap();
        assert_eq!(
            first.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(),
            [r#"{"n":1}"#, r#"{"n":2}"#]
        );
        outbox.ack(&first[1].id).unwrap();
        drop(outbox);

        let mut reopened = FileOutbox::open(&path).unwrap();
        let rest = reopened.pending(10).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].event, r#"{"n":3}"#);
        reopened.ack(&rest[0].id).unwrap();
        assert_eq!(reopened.backlog_bytes(), 0);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "emptied");
        reopened.append(r#"{"n":4}"#).unwrap();
        let again = reopened.pending(10).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].event, r#"{"n":4}"#);
    }

    #[tokio::test]
    async fn one_fsync_covers_every_line_written_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = FileOutbox::open(dir.path().join("o")).unwrap();
        let first = outbox.append("a").unwrap();
        let last = outbox.append("b").unwrap();
        let durability = Arc::clone(outbox.durability());
        durability.wait(last).await.unwrap();
        durability.wait(first).await.unwrap();
        assert_eq!(durability.syncs(), 1);
        durability.wait(last).await.unwrap();
        assert_eq!(durability.syncs(), 1, "nothing new to sync");
    }

    #[tokio::test]
    async fn concurrent_waiters_share_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Arc::new(std::sync::Mutex::new(
            FileOutbox::open(dir.path().join("o")).unwrap(),
        ));
        let tasks: Vec<_> = (0..20)
            .map(|n| {
                let outbox = Arc::clone(&outbox);
                tokio::spawn(async move {
                    let (offset, durability) = {
                        let mut outbox = outbox.lock().unwrap();
                        let offset = outbox.append(&format!("{{\"n\":{n}}}")).unwrap();
                        (offset, Arc::clone(outbox.durability()))
                    };
                    durability.wait(offset).await.unwrap();
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let outbox = outbox.lock().unwrap();
        // The first waiter syncs its own line; the lines written meanwhile share the next.
        assert!(
            outbox.durability().syncs() <= 2,
            "{} fsyncs",
            outbox.durability().syncs()
        );
        assert_eq!(outbox.pending(100).unwrap().len(), 20);
    }

    #[test]
    fn acknowledging_an_old_id_again_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = FileOutbox::open(dir.path().join("o")).unwrap();
        outbox.append("a").unwrap();
        outbox.append("b").unwrap();
        let all = outbox.pending(10).unwrap();
        outbox.ack(&all[1].id).unwrap();
        outbox.append("c").unwrap();
        // The file was emptied, but an old id still names only old events.
        outbox.ack(&all[0].id).unwrap();
        let left = outbox.pending(10).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].event, "c");
        assert!(outbox.ack("x").is_err());
    }
}
