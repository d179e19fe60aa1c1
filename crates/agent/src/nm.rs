//! The Node Manager's I/O: the clock, heartbeats over HTTP, node records through the
//! database, and the lease for the RCM and the RHS processes. Every decision is the core's
//! [`vigil_core::nm::NodeManager`]; the arithmetic and its proof are in
//! [`vigil_core::lease`].

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use vigil_core::command::Command;
use vigil_core::event::{Component, LogEntry};
use vigil_core::exec;
use vigil_core::lease::{LeaseConfig, NodeRecord};
use vigil_core::model::{ClusterState, NodeState};
use vigil_core::nm::{Heartbeat, HeartbeatReply, NmInput, NodeManager, Replica, Standing};
use vigil_core::rcm::Input;
use vigil_db::{Db, node_id};

use crate::clusterlog::ClusterLog;

/// Shared by the heartbeat loop, the API's heartbeat handler, the failover manager's driver
/// and status.
#[derive(Clone)]
pub struct Nm {
    name: String,
    cfg: LeaseConfig,
    /// This node's millisecond clock starts here (before the database opens, so that every
    /// instant the database records is on it).
    started: Instant,
    core: Arc<Mutex<NodeManager>>,
    /// The lease's end (CLOCK_MONOTONIC ns; `None`: no lease), for the RHS processes. Each
    /// RHS's writer reads it before anything queued for that RHS, so a renewal reaches the
    /// RHS even while the main loop is busy (a burst of thousands of reports once let the
    /// RHS processes fence themselves on a lease the agent held).
    lease: Arc<watch::Sender<Option<u64>>>,
}

impl Nm {
    pub fn new(name: &str, cfg: LeaseConfig) -> Self {
        // This run of the agent: its start time, in ns (another run starts later; runs are
        // compared by it). A clock before 1970 falls back to the pid, never 0.
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(u64::from(std::process::id()) | 1, |d| d.as_nanos() as u64);
        let core = NodeManager::new(name, cfg).with_incarnation(incarnation);
        Self {
            name: name.to_string(),
            cfg,
            started: Instant::now(),
            core: Arc::new(Mutex::new(core)),
            lease: Arc::new(watch::channel(None).0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// An instant on this node's millisecond clock.
    fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.started).as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NodeManager> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The lease's end as the RHS processes are told it (see `Nm::lease`).
    pub fn lease_watch(&self) -> watch::Receiver<Option<u64>> {
        self.lease.subscribe()
    }

    pub fn is_fenced(&self) -> bool {
        self.lock().is_fenced()
    }

    /// This run of the agent (its heartbeats carry it).
    pub fn incarnation(&self) -> u64 {
        self.lock().incarnation()
    }

    /// What this node observes of its Raft replica now.
    pub fn replica(&self, db: &Db) -> Replica {
        let m = db.metrics();
        let applied_index = db.applied_index();
        let state = db.state();
        let name_of = |id: u64| {
            state
                .nodes
                .values()
                .find(|n| node_id(&n.name) == id)
                .map_or_else(|| id.to_string(), |n| n.name.clone())
        };
        let voters = m
            .membership_config
            .membership()
            .get_joint_config()
            .iter()
            .map(|c| c.iter().map(|id| name_of(*id)).collect())
            .collect();
        let leader = m.current_leader.map(name_of);
        Replica {
            term: m.current_term,
            leading: m.state == vigil_db::ServerState::Leader,
            leader,
            voters,
            last_log_index: db.last_log_index(),
            applied_index,
            quorum_ms: db.quorum_acked().map(|t| self.ms(t)),
            former_append_ms: db.former_append(m.current_term).map(|t| self.ms(t)),
            storage_failure: db.storage_failure(),
        }
    }

    /// A heartbeat arrived: the leader answers (and may grant a lease); `Err` elsewhere.
    pub fn on_heartbeat(
        &self,
        db: &Db,
        log: &ClusterLog,
        http: &reqwest::Client,
        hb: Heartbeat,
    ) -> Result<HeartbeatReply, String> {
        let mut io = Io {
            nm: self.clone(),
            db: db.clone(),
            http: http.clone(),
            log: log.clone(),
        };
        io.step(NmInput::Heartbeat(hb))
            .reply
            .unwrap_or_else(|| Err(format!("{} gave no answer", self.name)))
    }

    /// `node`'s fence device reported it off (this node leads and ran it): Down at once.
    pub fn fenced(&self, db: &Db, log: &ClusterLog, node: &str) {
        let mut io = Io {
            nm: self.clone(),
            db: db.clone(),
            http: db.peer_client(),
            log: log.clone(),
        };
        io.inform(NmInput::Fenced {
            node: node.to_string(),
        });
    }

    /// The heartbeat interval.
    pub fn interval_ms(&self) -> u64 {
        self.cfg.interval_ms
    }

    /// The nodes this leader should fence now (see `NodeManager::fence_candidates`).
    pub fn fence_candidates(&self, db: &Db) -> Vec<String> {
        let r = self.replica(db);
        let now = self.now_ms();
        self.lock().fence_candidates(&r, &db.state(), now)
    }

    /// Milliseconds since each node was last heard from, as this node knows it.
    pub fn heartbeat_age_ms(&self, node: &str) -> Option<u64> {
        self.lock().heartbeat_age_ms(node, self.now_ms())
    }

    /// What status may say of this node's copy of the database.
    pub fn standing(&self, r: &Replica) -> Standing {
        self.lock().standing(r, self.now_ms())
    }

    /// The nodes whose groups this leader may give away without a handover (for the
    /// failover manager): Down ones whose leases it vouches are gone, and cleanly stopped
    /// ones whose stop it vouches for.
    pub fn lease_gone(&self, db: &Db) -> BTreeSet<String> {
        let r = self.replica(db);
        let now = self.now_ms();
        let state = db.state();
        let nm = self.lock();
        state
            .nodes
            .values()
            .filter(|n| {
                (n.state == NodeState::Down && nm.surely_down(&r, &n.name, now))
                    || (n.state.stopped_cleanly() && nm.stop_vouched(&r, &state, &n.name, now))
            })
            .map(|n| n.name.clone())
            .collect()
    }
}

/// Lease checks, heartbeats and node records every tenth of an interval, until the agent
/// stops. What a tick does is [`exec::nm_step`]; this loop gives it the clock and the I/O,
/// and hands what the RCM must hear (fencing changes) to `to_rcm`, until that says the main
/// loop is gone.
pub async fn run<F, Fut>(nm: Nm, db: Db, log: ClusterLog, mut to_rcm: F)
where
    F: FnMut(Input) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut io = Io {
        nm: nm.clone(),
        http: db.peer_client(),
        db,
        log,
    };
    let interval = Duration::from_millis(nm.cfg.interval_ms);
    let mut tick = tokio::time::interval(interval / 10);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for input in io.step(NmInput::Tick).rcm {
            if !to_rcm(input).await {
                return;
            }
        }
    }
}

/// The agent's side of [`exec::NmEnv`]. What reports back to the Node Manager (answers,
/// written records) does so from a task of its own.
#[derive(Clone)]
struct Io {
    nm: Nm,
    db: Db,
    http: reqwest::Client,
    log: ClusterLog,
}

impl Io {
    fn step(&mut self, input: NmInput) -> exec::NmOutcome {
        exec::nm_step(self, input)
    }

    /// An input that only informs the Node Manager: it decides nothing the RCM must hear.
    fn inform(&mut self, input: NmInput) {
        let out = self.step(input);
        debug_assert!(out.rcm.is_empty() && out.reply.is_none(), "{out:?}");
    }
}

impl exec::Env for Io {
    fn now_ms(&self) -> u64 {
        self.nm.now_ms()
    }

    fn log(&mut self, entries: Vec<LogEntry>) {
        self.log.append(entries);
    }
}

impl exec::NmEnv for Io {
    fn replica(&self) -> Replica {
        self.nm.replica(&self.db)
    }

    fn with_nm<R>(&mut self, decide: impl FnOnce(&mut NodeManager, &ClusterState) -> R) -> R {
        let state = self.db.state();
        decide(&mut self.nm.lock(), &state)
    }

    /// The RHS processes enforce the same lease themselves, in case this agent stops; each
    /// RHS's writer sends it before what is queued for that RHS.
    fn publish_lease(&mut self, until_ms: Option<u64>, now_ms: u64) {
        let until_mono_ns =
            until_ms.map(|u| vigil_rhs::protocol::mono_ns() + (u - now_ms) * 1_000_000);
        self.nm
            .lease
            .send_if_modified(|l| std::mem::replace(l, until_mono_ns) != until_mono_ns);
    }

    /// Aside, so that a slow answer never delays the lease checks.
    fn send_heartbeat(&mut self, _to: String, heartbeat: Heartbeat, sent_ms: u64, timeout_ms: u64) {
        let mut io = self.clone();
        tokio::spawn(async move {
            let limit = Duration::from_millis(timeout_ms);
            let reply = send(&io.db, &io.http, &heartbeat, limit).await;
            io.inform(NmInput::Answered { sent_ms, reply });
        });
    }

    /// Aside, so that a slow write never delays this node's own lease check.
    fn record(&mut self, cmd: Command, record: NodeRecord) -> bool {
        let mut io = self.clone();
        tokio::spawn(async move {
            match io.db.write(vec![cmd]).await {
                Ok(_) => io.log.append([LogEntry::new(Component::NM, record.reason)]),
                Err(e) => {
                    tracing::warn!("cannot record node {} {}: {e}", record.node, record.state)
                }
            }
            io.inform(NmInput::Written { node: record.node });
        });
        true
    }
}

/// One heartbeat to the leader; its answer, if one came.
async fn send(
    db: &Db,
    http: &reqwest::Client,
    hb: &Heartbeat,
    limit: Duration,
) -> Option<HeartbeatReply> {
    let leader = db.leader_addr()?;
    let resp = http
        .post(format!("https://{leader}/v1/nm/heartbeat"))
        .json(hb)
        .timeout(limit)
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json::<HeartbeatReply>().await.ok()
}
