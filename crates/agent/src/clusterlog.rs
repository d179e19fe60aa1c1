//! The cluster log: every state change and decision as one JSON line in
//! `DATA_DIR/cluster.log`, stamped with sequence number, wall-clock time and node. The most
//! recent records are also kept in memory for the API (`vigil log`, `--follow`).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use vigil_core::event::LogEntry;

/// Records kept in memory; older ones are only in the file.
pub const RECENT_LIMIT: usize = 100_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    /// RFC 3339, microseconds, UTC.
    pub time: String,
    pub node: String,
    #[serde(flatten)]
    pub entry: LogEntry,
}

struct Inner {
    file: File,
    recent: VecDeque<Record>,
    next_seq: u64,
}

/// A cheap handle; clones share the log.
#[derive(Clone)]
pub struct ClusterLog {
    node: String,
    inner: Arc<Mutex<Inner>>,
    last_seq: watch::Sender<u64>,
}

impl ClusterLog {
    /// Opens (or creates) the log in `data_dir`, reloading its most recent records.
    pub fn open(data_dir: &Path, node: &str) -> std::io::Result<Self> {
        let path = data_dir.join("cluster.log");
        let mut recent = VecDeque::new();
        if let Ok(f) = File::open(&path) {
            for line in BufReader::new(f).lines() {
                // A torn last line (crash mid-write) is skipped, not fatal.
                if let Ok(rec) = serde_json::from_str::<Record>(&line?) {
                    if recent.len() == RECENT_LIMIT {
                        recent.pop_front();
                    }
                    recent.push_back(rec);
                }
            }
        }
        let next_seq = recent.back().map_or(1, |r: &Record| r.seq + 1);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Self {
            node: node.to_string(),
            inner: Arc::new(Mutex::new(Inner {
                file,
                recent,
                next_seq,
            })),
            last_seq: watch::channel(next_seq - 1).0,
        })
    }

    /// Stamps and writes entries; a write error is reported on stderr, never fatal.
    pub fn append(&self, entries: impl IntoIterator<Item = LogEntry>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut buf = Vec::new();
        let time = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
        for entry in entries {
            let rec = Record {
                seq: inner.next_seq,
                time: time.clone(),
                node: self.node.clone(),
                entry,
            };
            inner.next_seq += 1;
            serde_json::to_writer(&mut buf, &rec).expect("records serialize");
            buf.push(b'\n');
            if inner.recent.len() == RECENT_LIMIT {
                inner.recent.pop_front();
            }
            inner.recent.push_back(rec);
        }
        if buf.is_empty() {
            return;
        }
        if let Err(e) = inner.file.write_all(&buf) {
            tracing::error!("cannot write the cluster log: {e}");
        }
        self.last_seq.send_replace(inner.next_seq - 1);
    }

    /// Records after `after`, oldest first, at most `limit`, matching `filter`.
    pub fn read(&self, after: u64, limit: usize, filter: impl Fn(&Record) -> bool) -> Vec<Record> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let start = inner.recent.partition_point(|r| r.seq <= after);
        inner
            .recent
            .range(start..)
            .filter(|r| filter(r))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Notified with the last sequence number after every append.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.last_seq.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_core::event::Component;

    #[test]
    fn records_survive_reopen_and_filter() {
        let dir = tempfile::tempdir().unwrap();
        let log = ClusterLog::open(dir.path(), "n1").unwrap();
        log.append([
            LogEntry::new(Component::RCM, "a").resource("web"),
            LogEntry::new(Component::DB, "b"),
        ]);
        drop(log);
        let log = ClusterLog::open(dir.path(), "n1").unwrap();
        log.append([LogEntry::new(Component::RHS, "c").resource("web")]);
        let all = log.read(0, 100, |_| true);
        assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
        let web = log.read(1, 100, |r| r.entry.resource.as_deref() == Some("web"));
        assert_eq!(web.len(), 1);
        assert_eq!(web[0].entry.reason, "c");
        assert_eq!(*log.subscribe().borrow(), 3);
    }
}
