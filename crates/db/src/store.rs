//! Raft storage on redb: the log, the vote and the committed index ([`LogStore`]), and the
//! state machine ([`StateMachine`]): the core's [`apply`] over an in-memory
//! [`ClusterState`], persisted as snapshots. On restart the state machine loads its last
//! snapshot and openraft re-applies the committed log after it.

// openraft's traits dictate `StorageError`, a large type; its helpers here return it too.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use vigil_core::command::apply;
use vigil_core::model::ClusterState;

use crate::types::{AppliedWrites, NodeId, Outcome, Request, Response, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "last_purged";
/// The last snapshot, in a table of its own: redb keeps values inline in their leaf page, and
/// a snapshot of megabytes beside the vote and the committed index made every one of their
/// updates rewrite (and fsync) it. Keys [`SNAPSHOT_META`] (JSON) and [`SNAPSHOT_DATA`] (raw).
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_snapshot");
const SNAPSHOT_META: &str = "meta";
const SNAPSHOT_DATA: &str = "data";
/// Where data dirs written before [`SNAPSHOTS`] keep their snapshot (in META, as JSON).
const OLD_SNAPSHOT: &str = "snapshot";

type StorageResult<T> = Result<T, StorageError<NodeId>>;

fn read_err(e: impl ToString) -> StorageError<NodeId> {
    StorageError::from(StorageIOError::read_logs(AnyError::error(e)))
}

fn write_err(e: impl ToString) -> StorageError<NodeId> {
    StorageError::from(StorageIOError::write_logs(AnyError::error(e)))
}

/// Whether this node's database file can still be written; shared by the log and the state
/// machine, read by the Node Manager (a node that cannot write fences itself).
#[derive(Clone, Debug)]
pub struct Health {
    path: Arc<str>,
    failure: Arc<Mutex<Option<String>>>,
}

impl Health {
    pub fn new(path: &std::path::Path) -> Self {
        Self {
            path: path.display().to_string().into(),
            failure: Arc::default(),
        }
    }

    /// Why the database cannot write, if a write has failed.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The database was reopened and takes writes again.
    pub fn clear(&self) {
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Records a failed write and returns it as openraft's error.
    fn failed(&self, e: impl std::fmt::Display) -> StorageError<NodeId> {
        let why = format!("{}: {e}", self.path);
        tracing::error!("cluster database write failed: {why}");
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(why.clone());
        }
        write_err(why)
    }
}

/// A delay added to every write transaction, to test with a slow disk (0: none).
static SLOW_DISK_MS: AtomicU64 = AtomicU64::new(0);

/// Makes every write transaction of this process take `delay` longer (tests only).
#[doc(hidden)]
pub fn slow_disk_for_tests(delay: std::time::Duration) {
    SLOW_DISK_MS.store(delay.as_millis() as u64, Ordering::SeqCst);
}

/// Runs a write transaction off the async workers: a slow fsync must not stall them.
async fn blocking<T: Send + 'static>(
    health: &Health,
    f: impl FnOnce() -> StorageResult<T> + Send + 'static,
) -> StorageResult<T> {
    let result = tokio::task::spawn_blocking(move || {
        let slow = SLOW_DISK_MS.load(Ordering::SeqCst);
        if slow > 0 {
            std::thread::sleep(std::time::Duration::from_millis(slow));
        }
        f()
    })
    .await
    .map_err(|e| write_err(format!("storage task: {e}")))?;
    result.map_err(|e| health.failed(e))
}

/// Opens (or creates) the node's Raft database file.
pub fn open_db(path: &std::path::Path) -> Result<Arc<redb::Database>, redb::Error> {
    let db = redb::Database::builder()
        .set_cache_size(8 << 20)
        .create(path)?;
    create_tables(&db)?;
    Ok(Arc::new(db))
}

/// Makes sure the tables exist, so readers never see "table does not exist".
fn create_tables(db: &redb::Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    txn.open_table(LOG)?;
    txn.open_table(META)?;
    txn.open_table(SNAPSHOTS)?;
    txn.commit()?;
    Ok(())
}

/// Why the database file could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The file is not a sound database: its pages or records do not read back.
    Damaged(String),
    Other(String),
}

fn classify(e: impl Into<redb::Error>) -> OpenError {
    match e.into() {
        redb::Error::Corrupted(m) => OpenError::Damaged(m),
        redb::Error::Io(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            OpenError::Damaged(e.to_string())
        }
        other => OpenError::Other(other.to_string()),
    }
}

/// The thread that checks a database file at open; its panics (redb's on a damaged file, in
/// debug builds) are caught and reported as damage, without a backtrace on the terminal.
const CHECK_THREAD: &str = "vigil-db-check";

fn quiet_check_thread_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() != Some(CHECK_THREAD) {
                previous(info);
            }
        }));
    });
}

/// Opens the node's database file after checking it: every page (redb's integrity check,
/// which also repairs what an unclean shutdown left), and every record Vigil reads from it.
pub fn open_checked(path: &std::path::Path) -> Result<Arc<redb::Database>, OpenError> {
    quiet_check_thread_panics();
    let p = path.to_path_buf();
    let checker = std::thread::Builder::new()
        .name(CHECK_THREAD.into())
        .spawn(move || std::panic::catch_unwind(move || check(&p)))
        .map_err(|e| OpenError::Other(format!("cannot start the check: {e}")))?;
    match checker.join() {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) | Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "no message".to_string());
            Err(OpenError::Damaged(format!("reading it failed: {what}")))
        }
    }
}

fn check(path: &std::path::Path) -> Result<Arc<redb::Database>, OpenError> {
    let mut db = redb::Database::builder()
        .set_cache_size(8 << 20)
        .create(path)
        .map_err(classify)?;
    if !db.check_integrity().map_err(classify)? {
        tracing::warn!("cluster database {} was repaired", path.display());
    }
    create_tables(&db).map_err(classify)?;
    let damaged = |what: &str, e: StorageError<NodeId>| OpenError::Damaged(format!("{what}: {e}"));
    // Every record, read as Vigil reads it.
    let txn = db.begin_read().map_err(classify)?;
    let log = txn.open_table(LOG).map_err(classify)?;
    for item in log.iter().map_err(classify)? {
        let (index, v) = item.map_err(classify)?;
        serde_json::from_slice::<Entry<TypeConfig>>(v.value())
            .map_err(|e| OpenError::Damaged(format!("log entry {}: {e}", index.value())))?;
    }
    drop((log, txn));
    get_meta::<Vote<NodeId>>(&db, VOTE).map_err(|e| damaged("the vote", e))?;
    get_meta::<Option<LogId<NodeId>>>(&db, COMMITTED)
        .map_err(|e| damaged("the committed index", e))?;
    get_meta::<LogId<NodeId>>(&db, PURGED).map_err(|e| damaged("the purged index", e))?;
    if let Some(snap) = get_snapshot(&db).map_err(|e| damaged("the snapshot", e))? {
        serde_json::from_slice::<SmData>(&snap.data)
            .map_err(|e| OpenError::Damaged(format!("the snapshot's data: {e}")))?;
    }
    Ok(Arc::new(db))
}

/// Opens the file again after a failed write (redb takes no more writes on the old handle),
/// and makes sure it takes one now: a full disk must have room again.
pub fn reopen_for_writes(path: &std::path::Path) -> Result<Arc<redb::Database>, String> {
    let db = open_db(path).map_err(|e| match e {
        redb::Error::DatabaseAlreadyOpen => "its previous opening has not closed yet".to_string(),
        e => e.to_string(),
    })?;
    put_meta(&db, "write_probe", &std::process::id()).map_err(|e| e.to_string())?;
    Ok(db)
}

fn get_meta<T: for<'de> Deserialize<'de>>(
    db: &redb::Database,
    key: &str,
) -> StorageResult<Option<T>> {
    let txn = db.begin_read().map_err(read_err)?;
    let table = txn.open_table(META).map_err(read_err)?;
    match table.get(key).map_err(read_err)? {
        Some(v) => serde_json::from_slice(v.value())
            .map(Some)
            .map_err(read_err),
        None => Ok(None),
    }
}

fn put_meta<T: Serialize>(db: &redb::Database, key: &str, value: &T) -> StorageResult<()> {
    put_meta_with(db, key, value, redb::Durability::Immediate)
}

fn put_meta_with<T: Serialize>(
    db: &redb::Database,
    key: &str,
    value: &T,
    durability: redb::Durability,
) -> StorageResult<()> {
    let bytes = serde_json::to_vec(value).map_err(write_err)?;
    let mut txn = db.begin_write().map_err(write_err)?;
    txn.set_durability(durability).map_err(write_err)?;
    txn.open_table(META)
        .map_err(write_err)?
        .insert(key, bytes.as_slice())
        .map_err(write_err)?;
    txn.commit().map_err(write_err)
}

/// Stores `snap` unless the stored snapshot is as new or newer; says whether it did. A build
/// (a task of its own in openraft) can finish after an install of a newer snapshot: it must
/// not put the older one back, whose log is already purged.
fn put_snapshot(db: &redb::Database, snap: &StoredSnapshot) -> StorageResult<bool> {
    let err = |e: String| {
        StorageError::from(StorageIOError::write_snapshot(
            Some(snap.meta.signature()),
            AnyError::error(e),
        ))
    };
    let txn = db.begin_write().map_err(|e| err(e.to_string()))?;
    let stored = {
        let mut table = txn.open_table(SNAPSHOTS).map_err(|e| err(e.to_string()))?;
        let at = match table.get(SNAPSHOT_META).map_err(|e| err(e.to_string()))? {
            Some(v) => {
                serde_json::from_slice::<SnapshotMeta<NodeId, openraft::BasicNode>>(v.value())
                    .map_err(|e| err(e.to_string()))?
                    .last_log_id
            }
            None => None,
        };
        if at.is_some() && at >= snap.meta.last_log_id {
            false
        } else {
            let meta = serde_json::to_vec(&snap.meta).map_err(|e| err(e.to_string()))?;
            table
                .insert(SNAPSHOT_META, meta.as_slice())
                .map_err(|e| err(e.to_string()))?;
            table
                .insert(SNAPSHOT_DATA, snap.data.as_slice())
                .map_err(|e| err(e.to_string()))?;
            true
        }
    };
    txn.commit().map_err(|e| err(e.to_string()))?;
    Ok(stored)
}

/// The stored snapshot, if any (from META in a data dir written before [`SNAPSHOTS`]).
fn get_snapshot(db: &redb::Database) -> StorageResult<Option<StoredSnapshot>> {
    let txn = db.begin_read().map_err(read_err)?;
    let table = txn.open_table(SNAPSHOTS).map_err(read_err)?;
    let meta = table.get(SNAPSHOT_META).map_err(read_err)?;
    let data = table.get(SNAPSHOT_DATA).map_err(read_err)?;
    match (meta, data) {
        (Some(meta), Some(data)) => Ok(Some(StoredSnapshot {
            meta: serde_json::from_slice(meta.value()).map_err(read_err)?,
            data: data.value().to_vec(),
        })),
        _ => get_meta(db, OLD_SNAPSHOT),
    }
}

/// Most recent log entries kept in memory, decoded, for replication to read.
const CACHE_ENTRIES: usize = 8_192;

/// The Raft log, vote and committed index.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<redb::Database>,
    /// The newest entries as stored (a contiguous run ending at the last one): replication
    /// reads them without a database read or a JSON decode.
    cache: Arc<std::sync::Mutex<std::collections::VecDeque<Entry<TypeConfig>>>>,
    /// Index of the last entry in the log (0: none); see [`LogStore::last_index`].
    last: Arc<AtomicU64>,
    health: Health,
}

impl LogStore {
    /// The log in `db`; `last` is set to its last index and kept up to date.
    pub fn new(
        db: Arc<redb::Database>,
        health: Health,
        last: Arc<AtomicU64>,
    ) -> StorageResult<Self> {
        last.store(last_log_id(&db)?.map_or(0, |l| l.index), Ordering::SeqCst);
        Ok(Self {
            db,
            cache: Arc::default(),
            last,
            health,
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<Entry<TypeConfig>>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `start..end` from the cache, if it holds all of it.
    fn cached(&self, start: u64, end: Option<u64>) -> Option<Vec<Entry<TypeConfig>>> {
        let cache = self.cache();
        let first = cache.front()?.log_id.index;
        let last = cache.back()?.log_id.index;
        let end = end.unwrap_or(last + 1);
        // Outside the cache, or past its end (an open range starting beyond the last entry):
        // the database answers.
        if start < first || end > last + 1 || start > end {
            return None;
        }
        let (from, to) = ((start - first) as usize, (end - first) as usize);
        Some(cache.range(from..to).cloned().collect())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Some(i + 1),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        if end.is_some_and(|e| e <= start) {
            return Ok(Vec::new());
        }
        if let Some(entries) = self.cached(start, end) {
            return Ok(entries);
        }
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(LOG).map_err(read_err)?;
        let iter = match end {
            Some(end) if end <= start => return Ok(Vec::new()),
            Some(end) => table.range(start..end),
            None => table.range(start..),
        }
        .map_err(read_err)?;
        let mut out = Vec::new();
        for item in iter {
            let (_, v) = item.map_err(read_err)?;
            out.push(serde_json::from_slice(v.value()).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        Ok(LogState {
            last_purged_log_id: get_meta(&self.db, PURGED)?,
            last_log_id: last_log_id(&self.db)?,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let (db, vote) = (self.db.clone(), *vote);
        blocking(&self.health, move || put_meta(&db, VOTE, &vote))
            .await
            .map_err(|e| StorageError::from(StorageIOError::write_vote(AnyError::error(e))))
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        get_meta(&self.db, VOTE)
            .map_err(|e| StorageError::from(StorageIOError::read_vote(AnyError::error(e))))
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // Not fsynced on its own: it only saves re-applying after a restart, and a stale value
        // is safe (the leader tells the node again). The next durable append carries it.
        let db = self.db.clone();
        blocking(&self.health, move || {
            put_meta_with(&db, COMMITTED, &committed, redb::Durability::None)
        })
        .await
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(get_meta::<Option<LogId<NodeId>>>(&self.db, COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let db = self.db.clone();
        let entries = blocking(&self.health, move || {
            let txn = db.begin_write().map_err(write_err)?;
            {
                let mut table = txn.open_table(LOG).map_err(write_err)?;
                for e in &entries {
                    let bytes = serde_json::to_vec(e).map_err(write_err)?;
                    table
                        .insert(e.log_id.index, bytes.as_slice())
                        .map_err(write_err)?;
                }
            }
            // Durable when commit returns: only then may Raft count this entry as stored here.
            txn.commit().map_err(write_err)?;
            Ok(entries)
        })
        .await?;
        if let Some(e) = entries.last() {
            self.last.store(e.log_id.index, Ordering::SeqCst);
        }
        {
            let mut cache = self.cache();
            for e in entries {
                // Only a contiguous run is kept; a gap (after a snapshot) starts it afresh.
                if cache
                    .back()
                    .is_some_and(|b| b.log_id.index + 1 != e.log_id.index)
                {
                    cache.clear();
                }
                cache.push_back(e);
            }
            while cache.len() > CACHE_ENTRIES {
                cache.pop_front();
            }
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.cache().retain(|e| e.log_id.index < log_id.index);
        let db = self.db.clone();
        blocking(&self.health, move || {
            let txn = db.begin_write().map_err(write_err)?;
            txn.open_table(LOG)
                .map_err(write_err)?
                .retain(|i, _| i < log_id.index)
                .map_err(write_err)?;
            txn.commit().map_err(write_err)
        })
        .await?;
        self.last
            .store(log_id.index.saturating_sub(1), Ordering::SeqCst);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.cache().retain(|e| e.log_id.index > log_id.index);
        let db = self.db.clone();
        blocking(&self.health, move || {
            put_meta(&db, PURGED, &log_id)?;
            let txn = db.begin_write().map_err(write_err)?;
            txn.open_table(LOG)
                .map_err(write_err)?
                .retain(|i, _| i > log_id.index)
                .map_err(write_err)?;
            txn.commit().map_err(write_err)
        })
        .await
    }
}

/// The last log id stored (or purged up to).
fn last_log_id(db: &redb::Database) -> StorageResult<Option<LogId<NodeId>>> {
    let last_purged: Option<LogId<NodeId>> = get_meta(db, PURGED)?;
    let txn = db.begin_read().map_err(read_err)?;
    let table = txn.open_table(LOG).map_err(read_err)?;
    match table.last().map_err(read_err)? {
        Some((_, v)) => {
            let e: Entry<TypeConfig> = serde_json::from_slice(v.value()).map_err(read_err)?;
            Ok(Some(e.log_id))
        }
        None => Ok(last_purged),
    }
}

/// What the state machine holds: the cluster database and Raft's bookkeeping.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SmData {
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, openraft::BasicNode>,
    /// Shared with readers ([`crate::Db::state`]); applying copies it first only while a
    /// reader still holds the previous one.
    pub state: Arc<ClusterState>,
    /// Recent writes by id, so that one proposed twice is applied once.
    #[serde(default)]
    pub writes: AppliedWrites,
}

impl SmData {
    /// Applies one entry's writes; a write whose id was applied before is skipped and answered
    /// with its first outcome.
    fn apply_request(&mut self, req: &Request) -> Vec<Result<(), vigil_core::command::ApplyError>> {
        let state = Arc::make_mut(&mut self.state);
        let mut results: Vec<_> = req.cmds.iter().map(|c| apply(state, c)).collect();
        for w in &req.writes {
            if let Some(first) = self.writes.get(&w.id) {
                results.extend(first.results());
                continue;
            }
            let mine: Vec<_> = w.cmds.iter().map(|c| apply(state, c)).collect();
            self.writes.insert(w.id, Outcome::of(&mine));
            results.extend(mine);
        }
        results
    }
}

/// A snapshot as stored; Deserialize for the JSON form of data dirs before [`SNAPSHOTS`].
#[derive(Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    data: Vec<u8>,
}

/// The replicated state machine; readers share `data` (see [`crate::Db::read`]).
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<redb::Database>,
    pub data: Arc<RwLock<SmData>>,
    applied: Arc<watch::Sender<u64>>,
    health: Health,
}

impl StateMachine {
    /// Loads the last snapshot, if any.
    pub fn open(db: Arc<redb::Database>, health: Health) -> StorageResult<Self> {
        let snap = get_snapshot(&db)?;
        let data = match snap {
            Some(s) => serde_json::from_slice(&s.data).map_err(|e| {
                StorageError::from(StorageIOError::read_state_machine(AnyError::error(e)))
            })?,
            None => SmData::default(),
        };
        let index = data.last_applied.map_or(0, |l: LogId<NodeId>| l.index);
        Ok(Self {
            db,
            data: Arc::new(RwLock::new(data)),
            applied: Arc::new(watch::channel(index).0),
            health,
        })
    }

    /// The state machine on a reopened file, with the data (and its watch) of the one it
    /// replaces: that data was applied from entries this node's log holds durably.
    pub fn with(
        db: Arc<redb::Database>,
        data: Arc<RwLock<SmData>>,
        applied: Arc<watch::Sender<u64>>,
        health: Health,
    ) -> Self {
        Self {
            db,
            data,
            applied,
            health,
        }
    }

    /// The data and its applied-index watch, shared with whoever reads them.
    pub fn shared(&self) -> (Arc<RwLock<SmData>>, Arc<watch::Sender<u64>>) {
        (self.data.clone(), self.applied.clone())
    }

    /// Notified with the last applied index after every apply.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    fn snapshot_of(&self) -> StorageResult<(SnapshotMeta<NodeId, openraft::BasicNode>, Vec<u8>)> {
        let data = self.data.read().unwrap_or_else(|p| p.into_inner());
        let bytes = serde_json::to_vec(&*data).map_err(|e| {
            StorageError::from(StorageIOError::read_state_machine(AnyError::error(e)))
        })?;
        let id = match data.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
            None => "empty".to_string(),
        };
        let meta = SnapshotMeta {
            last_log_id: data.last_applied,
            last_membership: data.membership.clone(),
            snapshot_id: id,
        };
        Ok((meta, bytes))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let (meta, data) = self.snapshot_of()?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        let db = self.db.clone();
        blocking(&self.health, move || put_snapshot(&db, &stored)).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(
        Option<LogId<NodeId>>,
        StoredMembership<NodeId, openraft::BasicNode>,
    )> {
        let data = self.data.read().unwrap_or_else(|p| p.into_inner());
        Ok((data.last_applied, data.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        let last = {
            let mut data = self.data.write().unwrap_or_else(|p| p.into_inner());
            for entry in entries {
                data.last_applied = Some(entry.log_id);
                let results = match entry.payload {
                    EntryPayload::Blank => Vec::new(),
                    EntryPayload::Normal(req) => data.apply_request(&req),
                    EntryPayload::Membership(m) => {
                        data.membership = StoredMembership::new(Some(entry.log_id), m);
                        Vec::new()
                    }
                };
                out.push(Response { results });
            }
            data.last_applied.map_or(0, |l| l.index)
        };
        self.applied.send_replace(last);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let bytes = snapshot.into_inner();
        let new: SmData = serde_json::from_slice(&bytes).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                AnyError::error(e),
            ))
        })?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: bytes,
        };
        let db = self.db.clone();
        blocking(&self.health, move || put_snapshot(&db, &stored)).await?;
        let index = new.last_applied.map_or(0, |l| l.index);
        *self.data.write().unwrap_or_else(|p| p.into_inner()) = new;
        self.applied.send_replace(index);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let snap = get_snapshot(&self.db)?;
        Ok(snap.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
