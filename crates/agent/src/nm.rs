//! The Node Manager: heartbeats, leases, self-fencing and Down (see `vigil_core::lease` for
//! the arithmetic and why it is safe).
//!
//! Every node sends a heartbeat to the Raft leader every `interval_ms`; the answer carries the
//! age of the leader's last quorum contact and renews this node's lease. A node without a
//! lease is fenced: the RCM terminates everything it runs and starts nothing, and the node
//! reports itself Isolated until contact comes back. The leader records a node Down once its
//! lease has surely run out, and Up again when it is heard from.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use vigil_core::command::Command;
use vigil_core::event::{Component, LogEntry};
use vigil_core::lease::{LeaderClock, Lease, LeaseConfig, NodeRecord};
use vigil_db::{Db, node_id};

use crate::clusterlog::ClusterLog;
use crate::service::Msg;

#[derive(Debug, Serialize, Deserialize)]
pub struct Heartbeat {
    pub name: String,
    /// How long before this heartbeat the sender's last heartbeat to a different leader had
    /// surely arrived (answered, or timed out); `None`: never. Lets a new leader bound its
    /// predecessors' leases.
    #[serde(default)]
    pub other_leader_age_ms: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub leader: String,
    /// How long ago the leader's last quorum contact was; `None`: it has none (no lease).
    pub quorum_age_ms: Option<u64>,
}

#[derive(Default)]
struct State {
    /// While this node leads: when it heard from whom.
    clock: Option<LeaderClock>,
    lease: Lease,
    fenced: bool,
    /// When this node's last heartbeat was answered (followers).
    answered_ms: Option<u64>,
    /// The last heartbeat got no lease-granting answer.
    unanswered: bool,
    /// Nodes whose Down/Up record is being written.
    writing: std::collections::BTreeSet<String>,
    /// Per leader address: by when this node's last heartbeat to it had surely arrived (its
    /// answer came, or its request timed out); refused connections do not count.
    sent_ms: std::collections::BTreeMap<String, u64>,
}

impl State {
    /// By when the last heartbeat to a leader other than `leader` had surely arrived.
    fn last_sent_elsewhere(&self, leader: Option<&str>) -> Option<u64> {
        self.sent_ms
            .iter()
            .filter(|(addr, _)| Some(addr.as_str()) != leader)
            .map(|(_, t)| *t)
            .max()
    }
}

/// Shared by the heartbeat loop and the API's heartbeat handler.
#[derive(Clone)]
pub struct Nm {
    name: String,
    cfg: LeaseConfig,
    started: Instant,
    state: Arc<Mutex<State>>,
}

impl Nm {
    pub fn new(name: &str, cfg: LeaseConfig) -> Self {
        Self {
            name: name.to_string(),
            cfg,
            started: Instant::now(),
            // No lease until the first heartbeat is answered.
            state: Arc::new(Mutex::new(State {
                fenced: true,
                ..State::default()
            })),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_fenced(&self) -> bool {
        self.lock().fenced
    }

    /// A heartbeat arrived. Only the leader answers; the answer renews the sender's lease.
    pub fn on_heartbeat(&self, db: &Db, hb: &Heartbeat) -> Result<HeartbeatReply, String> {
        let from = hb.name.as_str();
        if !db.is_leader() {
            return Err(match db.leader_addr() {
                Some(addr) => format!("not the leader; the leader is at {addr}"),
                None => "not the leader, and no leader is known".to_string(),
            });
        }
        let now = self.now_ms();
        let voters = voter_names(db);
        let mut st = self.lock();
        let clock = st.clock.get_or_insert_with(|| LeaderClock::new(now));
        clock.heard_from(from, now);
        clock.heard_former(from, hb.other_leader_age_ms, now);
        let quorum = clock.quorum_ms(&self.name, &voters, now);
        Ok(HeartbeatReply {
            leader: self.name.clone(),
            quorum_age_ms: quorum.map(|q| now - q),
        })
    }

    /// Milliseconds since each node was last heard from, as this node knows it: the leader
    /// knows everyone's, a follower its own last answered heartbeat.
    pub fn heartbeat_age_ms(&self, node: &str) -> Option<u64> {
        let now = self.now_ms();
        let st = self.lock();
        match &st.clock {
            Some(_) if node == self.name => Some(0),
            Some(c) => c.contact_ms.get(node).map(|t| now.saturating_sub(*t)),
            None if node == self.name => st.answered_ms.map(|t| now.saturating_sub(t)),
            None => None,
        }
    }
}

/// The names of the Raft voters.
fn voter_names(db: &Db) -> Vec<String> {
    let voters: Vec<u64> = db
        .members()
        .into_iter()
        .filter(|(_, _, v)| *v)
        .map(|(id, _, _)| id)
        .collect();
    db.state()
        .nodes
        .values()
        .filter(|n| voters.contains(&node_id(&n.name)))
        .map(|n| n.name.clone())
        .collect()
}

/// Heartbeats, lease checks and Down/Up records, every `interval_ms`, until the agent stops.
pub async fn run(nm: Nm, db: Db, main: mpsc::Sender<Msg>, log: ClusterLog) {
    let http = reqwest::Client::new();
    let interval = Duration::from_millis(nm.cfg.interval_ms);
    // Checks (own lease, others' Down) run ten times per heartbeat interval, so fencing and
    // Down happen within a tenth of an interval of when they are due.
    let mut tick = tokio::time::interval(interval / 10);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sent: Option<Instant> = None;
    let mut last_leader: Option<String> = None;
    loop {
        tick.tick().await;
        if db.is_leader() {
            lead(&nm, &db, &log);
        } else {
            nm.lock().clock = None;
            // Every interval; and at every check while the leader is new or the last
            // heartbeat went unanswered, so a change of leader costs no lease.
            let leader = db.leader_addr();
            let retry = leader != last_leader || nm.lock().unanswered;
            if retry || last_sent.is_none_or(|t| t.elapsed() >= interval) {
                last_sent = Some(Instant::now());
                last_leader = leader;
                // Aside, so a slow answer never delays the lease check below.
                let (nm, db, http) = (nm.clone(), db.clone(), http.clone());
                tokio::spawn(async move { follow(&nm, &db, &http, interval).await });
            }
        }
        let now = nm.now_ms();
        let (valid, expires) = {
            let st = nm.lock();
            (st.lease.valid(now), st.lease.expires_ms)
        };
        // The RHS processes enforce the same lease themselves, in case this agent stops.
        let until_mono_ns = expires
            .filter(|_| valid)
            .map(|e| vigil_rhs::protocol::mono_ns() + (e - now) * 1_000_000);
        if main.send(Msg::Lease { until_mono_ns }).await.is_err() {
            return;
        }
        // Fenced exactly when there is no valid lease; act only on a change.
        if nm.is_fenced() != valid {
            continue;
        }
        nm.lock().fenced = !valid;
        let reason = if valid {
            "lease granted: contact with a quorum; resources may run here".to_string()
        } else {
            match expires {
                Some(e) => format!(
                    "lease expired {} ms ago (no quorum contact for {} ms): self-fencing, terminating every resource here; Isolated",
                    now.saturating_sub(e),
                    nm.cfg.lease_ms()
                ),
                None => "no lease yet (no quorum contact): nothing may run here".to_string(),
            }
        };
        log.append([LogEntry::new(Component::NM, reason.clone())]);
        if main
            .send(Msg::Fence {
                fenced: !valid,
                reason,
            })
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Leader: renew its own lease from its quorum time; record Down and Up.
fn lead(nm: &Nm, db: &Db, log: &ClusterLog) {
    // Lock order: never take the database's lock while holding this module's (the database
    // lock's waiting writer would block us, and the status reader holding it waits for ours).
    let now = nm.now_ms();
    let voters = voter_names(db);
    let own = db.leader_addr();
    let clock = {
        let mut st = nm.lock();
        let former = st.last_sent_elsewhere(own.as_deref()).unwrap_or(0);
        let clock = st.clock.get_or_insert_with(|| LeaderClock::new(now));
        // This node's own heartbeats to an earlier leader count like anyone's.
        clock.former_ms.insert(nm.name.clone(), former);
        clock.settle_former(&voters);
        clock.clone()
    };
    if let Some(q) = clock.quorum_ms(&nm.name, &voters, now) {
        nm.lock().lease.renew_as_leader(q, &nm.cfg);
    }
    let records = {
        let state = db.state();
        let nodes = state.nodes.values().map(|n| (n.name.as_str(), n.state));
        clock.node_records(&nm.name, &voters, nodes, &nm.cfg, now)
    };
    // Written aside, so that a slow write never delays this node's own lease check.
    for NodeRecord {
        node: name,
        state,
        reason,
    } in records
    {
        if !nm.lock().writing.insert(name.clone()) {
            continue;
        }
        let (nm, db, log) = (nm.clone(), db.clone(), log.clone());
        tokio::spawn(async move {
            let cmd = Command::SetNodeState {
                name: name.clone(),
                state,
            };
            match db.write(vec![cmd]).await {
                Ok(_) => log.append([LogEntry::new(Component::NM, reason)]),
                Err(e) => tracing::warn!("cannot record node {name} {state}: {e}"),
            }
            nm.lock().writing.remove(&name);
        });
    }
}

/// Follower: one heartbeat to the leader; its answer renews the lease.
async fn follow(nm: &Nm, db: &Db, http: &reqwest::Client, limit: Duration) {
    let answered = heartbeat(nm, db, http, limit).await;
    nm.lock().unanswered = !answered;
}

/// One heartbeat to the leader; its answer renews the lease. Whether it was answered with one.
async fn heartbeat(nm: &Nm, db: &Db, http: &reqwest::Client, limit: Duration) -> bool {
    let Some(leader) = db.leader_addr() else {
        return false;
    };
    let sent = nm.now_ms();
    // Until answered, this heartbeat may arrive as late as its timeout.
    let in_flight = sent + limit.as_millis() as u64;
    let (other_leader_age_ms, before) = {
        let mut st = nm.lock();
        let other = st.last_sent_elsewhere(Some(&leader));
        // Recorded before sending, as arriving by the timeout at the latest: a new leader
        // must hear of a heartbeat that is on its way. The answer narrows it down.
        let before = st
            .sent_ms
            .insert(leader.clone(), sent + limit.as_millis() as u64);
        (other.map(|t| sent.saturating_sub(t)), before)
    };
    let answer = http
        .post(format!("http://{leader}/v1/nm/heartbeat"))
        .json(&Heartbeat {
            name: nm.name.clone(),
            other_leader_age_ms,
        })
        .timeout(limit)
        .send()
        .await;
    let resp = match answer {
        Ok(resp) => resp,
        Err(e) => {
            if e.is_connect() {
                // Surely never arrived: it does not count.
                let mut st = nm.lock();
                if st.sent_ms.get(&leader) == Some(&in_flight) {
                    match before {
                        Some(t) => st.sent_ms.insert(leader.clone(), t),
                        None => st.sent_ms.remove(&leader),
                    };
                }
            }
            return false;
        }
    };
    {
        // Answered: it arrived by now (unless a later heartbeat is on its way).
        let now = nm.now_ms();
        let mut st = nm.lock();
        if st.sent_ms.get(&leader) == Some(&in_flight) {
            st.sent_ms.insert(leader.clone(), now);
        }
    }
    if !resp.status().is_success() {
        return false;
    }
    let Ok(reply) = resp.json::<HeartbeatReply>().await else {
        return false;
    };
    let now = nm.now_ms();
    let mut st = nm.lock();
    st.answered_ms = Some(now);
    match reply.quorum_age_ms {
        Some(age) => {
            st.lease.renew(sent, age, &nm.cfg);
            true
        }
        None => false,
    }
}
