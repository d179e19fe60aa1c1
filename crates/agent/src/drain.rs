//! Draining a node: Paused, and every group the failover manager can move taken off it, one
//! priority class at a time, live where the group can migrate. `vigil node drain` and a
//! stopping agent under shutdown policy `migrate` both run [`drain`].

use std::time::Duration;

use vigil_core::command::{ApplyError, Command};
use vigil_core::event::{Component, LogEntry};
use vigil_core::intent;
use vigil_core::model::ClusterState;
use vigil_db::{Db, WriteError};

use crate::clusterlog::ClusterLog;

/// Why a drain could not begin.
#[derive(Debug)]
pub enum DrainError {
    /// The database could not take the write (no quorum, no leader).
    Write(WriteError),
    /// The cluster refused it (no such node, the node is Down).
    Refused(ApplyError),
}

impl std::fmt::Display for DrainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DrainError::Write(e) => write!(f, "{e}"),
            DrainError::Refused(e) => write!(f, "{e}"),
        }
    }
}

/// How a drain ended.
#[derive(Debug)]
pub struct Drained {
    /// Every group that could move has moved (within the limit).
    pub done: bool,
    /// The groups still on the node: they could not move, or not in time.
    pub remaining: Vec<String>,
}

/// Pauses `node` and waits, at most `limit`, until its drain has ended. `who` says in the
/// cluster log who asked ("operator", "shutdown policy migrate").
pub async fn drain(
    db: &Db,
    log: &ClusterLog,
    node: &str,
    who: &str,
    limit: Duration,
) -> Result<Drained, DrainError> {
    let cmd = Command::SetDraining {
        name: node.to_string(),
        draining: true,
    };
    let results = db.write(vec![cmd]).await.map_err(DrainError::Write)?;
    if let Some(e) = results.into_iter().find_map(Result::err) {
        return Err(DrainError::Refused(e));
    }
    log.append([LogEntry::new(
        Component::NM,
        format!("{who} drains node {node}: Paused"),
    )]);
    let done = wait_until(db, limit, |s| intent::drain_settled(s, node)).await;
    Ok(Drained {
        done,
        remaining: intent::groups_on(&db.state(), node),
    })
}

/// Waits, at most `limit`, until this node's copy of the database satisfies `done`.
pub async fn wait_until(db: &Db, limit: Duration, done: impl Fn(&ClusterState) -> bool) -> bool {
    let mut applied = db.subscribe();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        applied.borrow_and_update();
        if done(&db.state()) {
            return true;
        }
        if tokio::time::timeout_at(deadline, applied.changed())
            .await
            .is_err()
        {
            return false;
        }
    }
}
