//! The Failover Manager's driver: on the Raft leader, after every change to the database
//! (and at the times the plan asks for), run the pure [`vigil_core::failover::plan`] and
//! write its commands. One plan at a time, each written (and applied here) before the next
//! is made, so nothing is decided twice; a new leader simply carries on from the database.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use vigil_core::event::{Component, LogEntry};
use vigil_core::failover;
use vigil_db::Db;

use crate::clusterlog::ClusterLog;
use crate::nm::Nm;

/// How often a node checks whether it has become the leader with work to do, when nothing
/// else wakes it.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// How soon to plan again while a Down owner's lease is not yet vouched gone by this leader.
const LEASE_CHECK: Duration = Duration::from_millis(50);

/// The leader's clock, for failover history and retry times (Unix ms).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs the failover manager's rounds; after each one (plan, write, log) it publishes the
/// applied index its plan was made at on `done` (a stopping leader waits for the round that
/// saw its own stop, so that round's records are not lost).
pub async fn run(db: Db, log: ClusterLog, nm: Nm, done: tokio::sync::watch::Sender<u64>) {
    let mut applied = db.subscribe();
    let mut wake: Option<u64> = None;
    let mut awaiting = false;
    loop {
        let wait = wake
            .map_or(IDLE_CHECK, |w| {
                Duration::from_millis(w.saturating_sub(unix_ms()))
            })
            .min(if awaiting { LEASE_CHECK } else { IDLE_CHECK });
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
        }
        if !db.is_leader() {
            wake = None;
            continue;
        }
        let at = db.applied_index();
        round(&db, &log, &nm, &mut wake, &mut awaiting).await;
        done.send_replace(at);
    }
}

/// One plan, written and logged.
async fn round(db: &Db, log: &ClusterLog, nm: &Nm, wake: &mut Option<u64>, awaiting: &mut bool) {
    let lease_gone = nm.lease_gone(db);
    let plan = failover::plan(&db.state(), unix_ms(), &lease_gone);
    *wake = plan.wake_at_ms;
    *awaiting = plan.awaiting_leases;
    if plan.commands.is_empty() {
        log.append(plan.log);
        return;
    }
    match db.write(plan.commands).await {
        Ok(results) => {
            let refused: Vec<String> = results
                .into_iter()
                .filter_map(Result::err)
                .map(|e| e.to_string())
                .collect();
            log.append(plan.log);
            if !refused.is_empty() {
                // The database changed between the plan and its write; the next plan starts
                // from what is there now.
                let reason = format!(
                    "some failover decisions were refused and will be made again: {}",
                    refused.join("; ")
                );
                log.append([LogEntry::new(Component::FM, reason)]);
            }
        }
        Err(e) => tracing::warn!("failover decisions not written: {e}"),
    }
}
