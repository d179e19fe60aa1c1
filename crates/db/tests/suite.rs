//! openraft's own storage test suite against Vigil's redb store.

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use vigil_db::store::{Health, LogStore, StateMachine, open_db};
use vigil_db::types::{NodeId, TypeConfig};

struct Builder;

fn health() -> Health {
    Health::new(std::path::Path::new("raft.redb"))
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(&dir.path().join("raft.redb")).unwrap();
        let sm = StateMachine::open(db.clone(), health())?;
        Ok((dir, LogStore::new(db, health(), Default::default())?, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).unwrap();
}

/// `count` blank entries, indexes 1..=count, applied to `sm`.
async fn apply_blanks(sm: &mut StateMachine, count: u64) {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
    let entries = (1..=count).map(|i| Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
        payload: EntryPayload::Blank,
    });
    sm.apply(entries).await.unwrap();
}

/// openraft builds snapshots in a task of their own: a build that read the state before an
/// install of a newer snapshot, and stores after it, must not put the older one back (its log
/// is purged: a restart would load it and find nothing to replay).
#[tokio::test]
async fn an_older_snapshot_built_late_does_not_replace_a_newer_installed_one() {
    use openraft::RaftSnapshotBuilder;
    use openraft::storage::RaftStateMachine;
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(&dir.path().join("raft.redb")).unwrap();
    // The newer snapshot, at index 10, as a leader would send it.
    let other = tempfile::tempdir().unwrap();
    let mut leader =
        StateMachine::open(open_db(&other.path().join("raft.redb")).unwrap(), health()).unwrap();
    apply_blanks(&mut leader, 10).await;
    let newer = leader.build_snapshot().await.unwrap();
    // Here: the state at index 3, read by a build, and the install of index 10.
    let mut building = StateMachine::open(db.clone(), health()).unwrap();
    apply_blanks(&mut building, 3).await;
    let mut installing = StateMachine::open(db.clone(), health()).unwrap();
    installing
        .install_snapshot(&newer.meta, newer.snapshot)
        .await
        .unwrap();
    let late = building.build_snapshot().await.unwrap();
    assert_eq!(late.meta.last_log_id.unwrap().index, 3);
    let mut reopened = StateMachine::open(db, health()).unwrap();
    let kept = reopened.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(kept.meta.last_log_id.unwrap().index, 10, "{:?}", kept.meta);
    let (applied, _) = reopened.applied_state().await.unwrap();
    assert_eq!(applied.unwrap().index, 10);
}

/// A data dir written before snapshots had a table of their own keeps its snapshot as JSON in
/// the meta table: it still loads.
#[tokio::test]
async fn a_snapshot_stored_the_old_way_still_loads() {
    use openraft::RaftSnapshotBuilder;
    use openraft::storage::RaftStateMachine;
    let other = tempfile::tempdir().unwrap();
    let mut leader =
        StateMachine::open(open_db(&other.path().join("raft.redb")).unwrap(), health()).unwrap();
    apply_blanks(&mut leader, 7).await;
    let snap = leader.build_snapshot().await.unwrap();
    let old = serde_json::to_vec(&serde_json::json!({
        "meta": snap.meta,
        "data": snap.snapshot.into_inner(),
    }))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(&dir.path().join("raft.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(redb::TableDefinition::<&str, &[u8]>::new("raft_meta"))
        .unwrap()
        .insert("snapshot", old.as_slice())
        .unwrap();
    txn.commit().unwrap();
    let mut sm = StateMachine::open(db, health()).unwrap();
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.unwrap().index, 7);
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta.last_log_id.unwrap().index, 7);
}
