//! The database's writes (and their fsync) run off the async worker threads: a slow disk
//! must not stall the agent's other tasks. A test of its own, because the slow disk it
//! injects applies to the whole process.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::Vote;
use openraft::storage::RaftLogStorage;
use vigil_db::store::{Health, LogStore, open_db, slow_disk_for_tests};

#[test]
fn a_slow_commit_does_not_block_the_runtime() {
    // One worker thread, as a busy agent has in effect: what blocks it blocks everything.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let mut log = LogStore::new(
            open_db(&path).unwrap(),
            Health::new(&path),
            Default::default(),
        )
        .unwrap();
        let ticks = Arc::new(AtomicU64::new(0));
        let counter = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        slow_disk_for_tests(Duration::from_millis(400));
        let before = ticks.load(Ordering::Relaxed);
        let vote = Vote::new_committed(1, 1);
        log.save_vote(&vote).await.unwrap();
        let during = ticks.load(Ordering::Relaxed) - before;
        slow_disk_for_tests(Duration::ZERO);
        ticker.abort();
        assert!(
            during >= 10,
            "the runtime ran only {during} ticks of 5 ms while a 400 ms commit was under way"
        );
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
    });
}
