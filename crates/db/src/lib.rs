//! The cluster database: the core's state machine ([`vigil_core::command::apply`]) persisted
//! in an embedded store (redb), so a restarted agent has everything back.
//!
//! On disk: a log of applied commands (index → JSON) and a snapshot of the whole state at some
//! index. Opening loads the snapshot and replays the log after it. Every batch of commands is
//! one durable transaction. This is the shape Raft needs (log + snapshot + state machine);
//! replication comes on top of it, not instead of it.
//!
//! Not here: deciding anything (that is the core) or talking to other nodes.

pub mod store;
pub mod types;

use std::path::Path;

use redb::{ReadableDatabase, TableDefinition};
use thiserror::Error;
use vigil_core::command::{ApplyError, Command, apply};
use vigil_core::model::ClusterState;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SNAPSHOT_KEY: &str = "snapshot";

/// Take a snapshot (and drop the log before it) after this many log entries.
pub const SNAPSHOT_EVERY: u64 = 2_000;

#[derive(Debug, Error)]
pub enum DbError {
    #[error("cluster database {path}: {source}")]
    Store {
        path: String,
        source: Box<redb::Error>,
    },
    #[error("cluster database {path}: entry {index} is corrupt: {why}")]
    Corrupt {
        path: String,
        index: u64,
        why: String,
    },
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Snapshot {
    index: u64,
    state: ClusterState,
}

pub struct Database {
    path: String,
    store: redb::Database,
    state: ClusterState,
    /// Index of the last applied command.
    applied: u64,
    snapshot_index: u64,
    /// Some committed writes are not yet durable.
    deferred: bool,
}

impl Database {
    /// Opens (or creates) the database at `path` and rebuilds the state from disk.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let path_s = path.display().to_string();
        let err = |e: redb::Error| DbError::Store {
            path: path_s.clone(),
            source: Box::new(e),
        };
        let store = redb::Database::builder()
            .set_cache_size(4 << 20)
            .create(path)
            .map_err(|e| err(e.into()))?;
        let mut db = Self {
            path: path_s.clone(),
            store,
            state: ClusterState::default(),
            applied: 0,
            snapshot_index: 0,
            deferred: false,
        };
        db.load().map_err(|e| match e {
            LoadError::Store(e) => err(e),
            LoadError::Corrupt(index, why) => DbError::Corrupt {
                path: path_s.clone(),
                index,
                why,
            },
        })?;
        Ok(db)
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// Applies `cmds` in order and persists the ones that applied in one durable transaction.
    /// Each command gets its own result; a refused command changes nothing. An `Err` means the
    /// disk failed: memory is then ahead of disk and the caller must stop.
    pub fn submit(&mut self, cmds: &[Command]) -> Result<Vec<Result<(), ApplyError>>, DbError> {
        self.submit_with(cmds, true)
    }

    /// Like [`Database::submit`], but the write reaches the disk only with the next durable
    /// submit or [`Database::flush`]: for a burst of state records, one fsync instead of many.
    pub fn submit_deferred(
        &mut self,
        cmds: &[Command],
    ) -> Result<Vec<Result<(), ApplyError>>, DbError> {
        self.submit_with(cmds, false)
    }

    /// Makes every deferred write durable.
    pub fn flush(&mut self) -> Result<(), DbError> {
        if !self.deferred {
            return Ok(());
        }
        self.persist(&[], true).map_err(|e| DbError::Store {
            path: self.path.clone(),
            source: Box::new(e),
        })
    }

    fn submit_with(
        &mut self,
        cmds: &[Command],
        durable: bool,
    ) -> Result<Vec<Result<(), ApplyError>>, DbError> {
        let results: Vec<_> = cmds.iter().map(|c| apply(&mut self.state, c)).collect();
        let accepted: Vec<&Command> = cmds
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_ok())
            .map(|(c, _)| c)
            .collect();
        if !accepted.is_empty() {
            self.persist(&accepted, durable)
                .map_err(|e| DbError::Store {
                    path: self.path.clone(),
                    source: Box::new(e),
                })?;
        }
        Ok(results)
    }

    fn persist(&mut self, cmds: &[&Command], durable: bool) -> Result<(), redb::Error> {
        let mut txn = self.store.begin_write()?;
        if !durable {
            txn.set_durability(redb::Durability::None)?;
        }
        {
            let mut log = txn.open_table(LOG)?;
            for cmd in cmds {
                self.applied += 1;
                let bytes = serde_json::to_vec(cmd).expect("commands serialize");
                log.insert(self.applied, bytes.as_slice())?;
            }
            if self.applied - self.snapshot_index >= SNAPSHOT_EVERY {
                let snap = Snapshot {
                    index: self.applied,
                    state: self.state.clone(),
                };
                let bytes = serde_json::to_vec(&snap).expect("state serializes");
                txn.open_table(META)?
                    .insert(SNAPSHOT_KEY, bytes.as_slice())?;
                log.retain(|i, _| i > snap.index)?;
                self.snapshot_index = snap.index;
            }
        }
        txn.commit()?;
        self.deferred = !durable;
        Ok(())
    }

    fn load(&mut self) -> Result<(), LoadError> {
        let txn = self.store.begin_read().map_err(redb::Error::from)?;
        match txn.open_table(META) {
            Ok(meta) => {
                if let Some(bytes) = meta.get(SNAPSHOT_KEY).map_err(redb::Error::from)? {
                    let snap: Snapshot = serde_json::from_slice(bytes.value())
                        .map_err(|e| LoadError::Corrupt(0, format!("snapshot: {e}")))?;
                    self.state = snap.state;
                    self.applied = snap.index;
                    self.snapshot_index = snap.index;
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(redb::Error::from(e).into()),
        }
        let log = match txn.open_table(LOG) {
            Ok(log) => log,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(redb::Error::from(e).into()),
        };
        for entry in log.range(self.applied + 1..).map_err(redb::Error::from)? {
            let (index, bytes) = entry.map_err(redb::Error::from)?;
            let index = index.value();
            let cmd: Command = serde_json::from_slice(bytes.value())
                .map_err(|e| LoadError::Corrupt(index, e.to_string()))?;
            apply(&mut self.state, &cmd).map_err(|e| {
                LoadError::Corrupt(index, format!("applied once but refused on replay: {e}"))
            })?;
            self.applied = index;
        }
        Ok(())
    }
}

enum LoadError {
    Store(redb::Error),
    Corrupt(u64, String),
}

impl From<redb::Error> for LoadError {
    fn from(e: redb::Error) -> Self {
        Self::Store(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableTableMetadata;
    use vigil_core::props::GroupProps;

    fn group(name: &str) -> Command {
        Command::CreateGroup {
            name: name.into(),
            props: GroupProps::default(),
            owner: None,
        }
    }

    #[test]
    fn a_reopened_database_has_everything_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.redb");
        let mut db = Database::open(&path).unwrap();
        let results = db.submit(&[group("a"), group("a"), group("b")]).unwrap();
        assert!(results[0].is_ok() && results[2].is_ok());
        assert_eq!(
            results[1].as_ref().unwrap_err().to_string(),
            "group \"a\" already exists"
        );
        assert_eq!(db.applied_index(), 2, "a refused command is not logged");
        let before = db.state().clone();
        drop(db);
        let db = Database::open(&path).unwrap();
        assert_eq!(db.state(), &before);
        assert_eq!(db.applied_index(), 2);
    }

    #[test]
    fn deferred_writes_are_durable_after_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.redb");
        let mut db = Database::open(&path).unwrap();
        db.submit_deferred(&[group("a")]).unwrap();
        db.submit_deferred(&[group("b")]).unwrap();
        db.flush().unwrap();
        drop(db);
        let db = Database::open(&path).unwrap();
        assert_eq!(db.state().groups.keys().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn snapshots_compact_the_log_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.redb");
        let mut db = Database::open(&path).unwrap();
        let n = SNAPSHOT_EVERY + 10;
        for i in 0..n {
            db.submit(&[group(&format!("g{i}"))]).unwrap();
        }
        assert_eq!(db.snapshot_index, SNAPSHOT_EVERY);
        let before = db.state().clone();
        drop(db);
        let db = Database::open(&path).unwrap();
        assert_eq!(db.state(), &before);
        assert_eq!(db.state().groups.len() as u64, n);
        assert_eq!(db.applied_index(), n);
        let txn = db.store.begin_read().unwrap();
        let log_len = txn.open_table(LOG).unwrap().len().unwrap();
        assert_eq!(log_len, 10, "entries before the snapshot are dropped");
    }
}
