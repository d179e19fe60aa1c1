//! A clean stop (SIGTERM or SIGINT: `systemctl stop`, Ctrl-C) under the node's shutdown
//! policy: its own setting (`--shutdown-policy`, the config file), else the cluster's.
//!
//! - `migrate`: the node drains first ([`crate::drain`], the code path of `vigil node
//!   drain`): live-migratable groups leave live, the others cold, high priority first.
//!   A drain that does not end within the shutdown timeout says what is still here, then
//!   the stop goes on as under `failover`; so does a second signal.
//! - `failover`: no drain.
//! - `freeze`: no drain; the groups stay with the node.
//!
//! Then the main loop ends every resource (`service::run`), and only once all have ended
//! does the node record itself Stopped or Frozen (`Command::NodeStopped`): the failover
//! manager then moves its groups at once (or, frozen, keeps them for its return), with no
//! wait for its lease, counting no failover, and the cluster log never says Down.

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use vigil_core::event::{Component, LogEntry};
use vigil_core::model::{NodeState, ShutdownPolicy};
use vigil_db::Db;

use crate::clusterlog::ClusterLog;
use crate::service::Msg;

/// How the main loop is to stop.
#[derive(Clone, Copy, Debug)]
pub struct Stop {
    pub policy: ShutdownPolicy,
    /// An operator had paused the node before the stop: it comes back Paused.
    pub paused: bool,
}

/// What decides a stop: the node's own policy (`None`: the cluster's) and how long a
/// `migrate` drain may take.
#[derive(Clone, Debug)]
pub struct Policy {
    pub own: Option<ShutdownPolicy>,
    pub timeout: Duration,
}

/// SIGTERM and SIGINT, as one stream.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
    }
}

/// Waits for the signal, runs the policy's drain, and tells the main loop to stop.
pub async fn on_signal(
    db: Db,
    log: ClusterLog,
    node: String,
    policy: Policy,
    notify: crate::notify::Notifier,
    main: mpsc::Sender<Msg>,
) {
    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot catch SIGTERM and SIGINT ({e}): a stop will not be clean");
            return;
        }
    };
    signals.next().await;
    // systemd now waits for the stop (bounded by the unit's TimeoutStopSec), not for the
    // main loop: the drain and the ending of resources take longer than WatchdogSec.
    notify.stopping();
    if let Some(every) = notify.watchdog_interval() {
        let n = notify.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every / 3);
            loop {
                tick.tick().await;
                n.watchdog();
            }
        });
    }
    let state = db.state();
    let chosen = policy.own.unwrap_or(state.shutdown_policy);
    let whose = match policy.own {
        Some(_) => "this node's",
        None => "the cluster's",
    };
    // Paused by an operator (not by this stop's drain).
    let paused = state
        .nodes
        .get(&node)
        .is_some_and(|n| n.state == NodeState::Paused);
    let limit = policy.timeout;
    let say = |text: String| {
        log.append([LogEntry::new(Component::NM, text)]);
    };
    say(format!(
        "agent on {node} asked to stop: shutdown policy {chosen} ({whose})"
    ));
    if chosen == ShutdownPolicy::Migrate {
        notify.status(&format!(
            "stopping: draining {node} (at most {} s)",
            limit.as_secs()
        ));
        let who = "shutdown policy migrate";
        tokio::select! {
            drained = crate::drain::drain(&db, &log, &node, who, limit) => match drained {
                Ok(d) if d.done && d.remaining.is_empty() => {
                    say(format!("shutdown drain of {node} done: no group is left on it"));
                }
                Ok(d) if d.done => say(format!(
                    "shutdown drain of {node} ended; no other node can take {}: stopping them as under shutdown policy failover",
                    d.remaining.join(", ")
                )),
                Ok(d) => say(format!(
                    "shutdown drain of {node} not finished within shutdown_timeout_s={}; still on it: {}; stopping as under shutdown policy failover",
                    limit.as_secs(),
                    d.remaining.join(", ")
                )),
                Err(e) => say(format!(
                    "shutdown drain of {node} could not begin ({e}); stopping as under shutdown policy failover"
                )),
            },
            _ = signals.next() => say(format!(
                "second signal: agent on {node} stops without waiting for its drain, as under shutdown policy failover"
            )),
        }
    }
    notify.status(&format!("stopping: ending the resources on {node}"));
    let _ = main
        .send(Msg::Shutdown(Stop {
            policy: chosen,
            paused,
        }))
        .await;
}
