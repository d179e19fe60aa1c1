//! The agent's main loop: one task owns the cluster database, the RCM and the RHS
//! supervisor. Inputs (RHS messages, API calls, timers) arrive on one channel; each batch of
//! inputs goes through the pure RCM, and the resulting actions are executed here: database
//! commands in one durable transaction, calls to the RHS, cluster log entries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use vigil_core::command::Command;
use vigil_core::event::{Component, LogEntry};
use vigil_core::exec::{self, Env as _};
use vigil_core::model::ClusterState;
use vigil_core::model::ResourceState;
use vigil_core::rcm::{Action, Input, Rcm, Report};
use vigil_db::Db;
use vigil_rhs::protocol::{FromHost, ToHost};

use crate::AgentOptions;
use crate::clusterlog::ClusterLog;
use crate::hosts::{HostEvent, Hosts};

/// Inputs handled per batch before the database is written.
const BATCH_LIMIT: usize = 512;
/// Bound of the queue of RCM commands waiting for the database.
const WRITE_QUEUE: usize = 65_536;
/// Most commands written as one log entry.
const WRITE_BATCH: usize = 4_096;
/// How long a stopping agent waits for its RHS processes to terminate their resources.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(30);

/// A closure the API runs inside the main loop, with exclusive access to the service.
pub type Call = Box<dyn FnOnce(&mut Service) + Send>;

pub enum Msg {
    Host(HostEvent),
    /// The local replica applied more of the log.
    Applied,
    /// An input for the RCM from elsewhere in the agent: the Node Manager's fencing changes.
    Rcm(Input),
    Call(Call),
    /// A clean stop (`shutdown.rs`, which has drained the node first if its policy says so).
    Shutdown(crate::shutdown::Stop),
    /// The watchdog's kicker asks whether the main loop runs (`watchdog.rs`).
    WatchdogProbe,
    /// Time to tell systemd the main loop runs (`WATCHDOG=1`) and what it waits for.
    SystemdProbe,
    /// This node was removed from its cluster (the leader said so, or the voters refuse it):
    /// it stops, saying why.
    Removed {
        reason: String,
    },
}

pub struct Service {
    pub node: String,
    pub nm: crate::nm::Nm,
    pub listen: String,
    pub db: Db,
    /// RCM database commands, written in order by one task (see `write_loop`).
    writes: mpsc::Sender<Vec<Command>>,
    rcm: Rcm,
    pub hosts: Hosts,
    /// What the watchdog's kicker reads, when the node has one.
    pub watchdog: Option<Arc<crate::watchdog::Signals>>,
    /// systemd, when it runs the agent.
    pub notify: crate::notify::Notifier,
    /// The applied index of the failover manager's last completed round (`fm::run`).
    pub fm_rounds: watch::Receiver<u64>,
    /// Removes the node's cgroup however the service ends.
    _cgroup: Option<crate::cgroups::Guard>,
    pub log: ClusterLog,
    started: Instant,
    /// Bumped after every batch, so API calls can wait for a state to be reached.
    version: watch::Sender<u64>,
}

impl Service {
    pub fn new(
        opts: &AgentOptions,
        listen: &str,
        db: Db,
        log: ClusterLog,
        events: mpsc::Sender<HostEvent>,
        nm: crate::nm::Nm,
    ) -> std::io::Result<Self> {
        let exe = std::env::current_exe()?;
        let silence = Duration::from_millis(opts.rhs_silence_ms);
        let (writes, queue) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(write_loop(db.clone(), queue));
        let lease = nm.lease_watch();
        let cgroups = match crate::cgroups::prepare(&opts.name) {
            Ok(base) => Some(base),
            Err(why) => {
                let say = format!(
                    "no cgroup v2 for resources on {} ({why}): they are ended by process group, and a process that leaves its group (setsid) escapes",
                    opts.name
                );
                tracing::warn!("{say}");
                log.append([LogEntry::new(Component::RHS, say)]);
                None
            }
        };
        let guard = cgroups.clone().map(crate::cgroups::Guard);
        Ok(Self {
            nm,
            node: opts.name.clone(),
            listen: listen.to_string(),
            writes,
            db,
            rcm: Rcm::new(&opts.name),
            hosts: Hosts::new(
                exe,
                silence,
                opts.data_dir.clone(),
                opts.name.clone(),
                events,
                lease,
                cgroups,
            ),
            _cgroup: guard,
            log,
            watchdog: None,
            notify: crate::notify::Notifier::default(),
            fm_rounds: watch::channel(0).1,
            started: Instant::now(),
            version: watch::channel(0).0,
        })
    }

    /// This node's copy of the cluster database (an immutable snapshot).
    pub fn state(&self) -> Arc<ClusterState> {
        self.db.state()
    }

    pub fn applied_index(&self) -> u64 {
        self.db.applied_index()
    }

    /// What this node's RCM knows of a resource here: state, pid, and why (Offline, "not
    /// running here", when it has not started it).
    pub fn local_state(&self, resource: &str) -> (ResourceState, Option<u32>, String) {
        match self.rcm.local(resource) {
            Some((state, pid, reason)) => (state, pid, reason.to_string()),
            None => (
                ResourceState::Offline,
                None,
                format!("not running on {}: it has no lease", self.node),
            ),
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// What an RHS's event means to the RCM, if anything: drops what a replaced RHS or
    /// instance sent, records pids, and logs what the RCM does not log itself.
    fn input_of(&mut self, event: HostEvent) -> Option<Input> {
        match event {
            HostEvent::Message {
                host,
                generation,
                msg,
            } => {
                if !self.hosts.is_current(&host, generation) {
                    return None;
                }
                match msg {
                    // Heartbeats stay in the host's reader (see `hosts::read_loop`).
                    FromHost::Alive => None,
                    FromHost::Hello { pid, .. } => {
                        self.hosts.set_pid(&host, pid);
                        self.log.append([LogEntry::new(
                            Component::RHS,
                            format!("RHS {host} started, pid {pid}"),
                        )]);
                        None
                    }
                    FromHost::Status {
                        resource,
                        instance,
                        report,
                        reason,
                        pid,
                    } => {
                        if instance != 0 && !self.hosts.is_current_instance(&resource, instance) {
                            tracing::debug!(
                                "dropped a late report about a replaced instance of {resource}: {report:?}"
                            );
                            return None;
                        }
                        // Online, Offline and Migrated are logged by the RCM with the state change.
                        if !matches!(report, Report::Online | Report::Offline | Report::Migrated) {
                            let mut entry = LogEntry::new(
                                Component::RHS,
                                format!("{}: {reason}", report.name()),
                            )
                            .resource(&resource);
                            let state = self.state();
                            if let Some(r) = state.resources.get(&resource) {
                                entry = entry.group(&r.group, state.group_epoch(&r.group));
                            }
                            self.log.append([entry]);
                        }
                        Some(Input::Report {
                            resource,
                            report,
                            reason,
                            pid,
                            // A worker's report is about its instance; the dispatcher's (instance 0)
                            // about none.
                            ended: instance != 0,
                        })
                    }
                    FromHost::ControlReply { id, result } => {
                        self.hosts.control_reply(id, result);
                        None
                    }
                    FromHost::Deadlock {
                        resource,
                        entry_point,
                        ..
                    } => Some(Input::Deadlock {
                        resource,
                        entry_point,
                    }),
                }
            }
            HostEvent::Exited {
                host,
                generation,
                reason,
            } => {
                let resources = self.hosts.lost(&host, generation)?;
                self.kill_leftovers(&resources);
                self.log
                    .append([LogEntry::new(Component::RHS, reason.clone())]);
                Some(Input::HostLost { resources, reason })
            }
        }
    }

    /// A dead RHS's processes got its parent-death signal, but what they forked did not: kill
    /// each recorded process group (a `process` resource leads its own group).
    fn kill_leftovers(&self, resources: &[String]) {
        for r in resources {
            let pid = self.state().resources.get(r).and_then(|r| r.pid);
            if let Some(pgid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
                let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// The agent's world for the executor: the database's write queue, the RHS processes and the
/// cluster log.
impl exec::Env for Service {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn log(&mut self, entries: Vec<LogEntry>) {
        self.log.append(entries);
    }
}

impl exec::RcmEnv for Service {
    fn with_rcm<R>(&mut self, decide: impl FnOnce(&mut Rcm, &ClusterState) -> R) -> R {
        decide(&mut self.rcm, &self.db.state())
    }

    /// To the write loop; the RCM sees the effect once applied (`Msg::Applied`).
    fn write(&mut self, cmds: Vec<Command>) -> bool {
        if let Err(e) = self.writes.try_send(cmds) {
            let n = match e {
                mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c) => {
                    c.len()
                }
            };
            tracing::error!("database write queue full; {n} RCM records dropped");
        }
        false
    }

    fn call(&mut self, call: Action) -> Result<(), String> {
        const NOT_HOSTED: &str = "not running in any RHS";
        match call {
            Action::Online { resource } => self.hosts.online(&self.db.state(), &resource),
            Action::Offline { resource } => self
                .hosts
                .offline(&resource)
                .then_some(())
                .ok_or(NOT_HOSTED.to_string()),
            Action::MigrateTo {
                resource,
                target,
                quick,
            } => {
                let target_address = self
                    .db
                    .state()
                    .nodes
                    .get(&target)
                    .map(|n| n.address.clone())
                    .unwrap_or_default();
                let msg = ToHost::MigrateTo {
                    resource: resource.clone(),
                    target,
                    target_address,
                    quick,
                };
                self.hosts
                    .migrate(&resource, msg)
                    .then_some(())
                    .ok_or(NOT_HOSTED.to_string())
            }
            Action::MigratePrepare {
                resource,
                source,
                quick,
            } => {
                self.hosts.open_for(&self.db.state(), &resource)?;
                let msg = ToHost::MigratePrepare {
                    resource: resource.clone(),
                    source,
                    quick,
                };
                self.migrate(&resource, msg)
            }
            Action::MigrateFrom {
                resource,
                source,
                quick,
            } => {
                // The instance prepared for the migration receives it; open one only if none is
                // (a quick migration prepares nothing).
                if !self.hosts.is_open(&resource) {
                    self.hosts.open_for(&self.db.state(), &resource)?;
                }
                let msg = ToHost::MigrateFrom {
                    resource: resource.clone(),
                    source,
                    quick,
                };
                self.migrate(&resource, msg)
            }
            Action::Terminate { resource } => {
                self.hosts.terminate(&resource);
                Ok(())
            }
            Action::Close { resource } => {
                self.hosts.close(&resource);
                Ok(())
            }
            Action::Db(_) | Action::Log(_) => unreachable!("exec::settle passes calls only"),
        }
    }
}

impl Service {
    /// What `systemctl status` shows while the agent runs.
    fn systemd_status(&self) -> String {
        let state = self.db.state();
        let here = state
            .groups
            .values()
            .filter(|g| g.owner.as_deref() == Some(self.node.as_str()))
            .count();
        if self.nm.is_fenced() {
            format!("waiting for a quorum: no lease, so nothing runs here ({here} groups owned)")
        } else {
            let role = if self.db.is_leader() {
                "leader"
            } else {
                "member"
            };
            format!("running: {role}, lease held, {here} groups owned")
        }
    }

    /// Sends a migration step to the RHS that `resource` was opened in.
    fn migrate(&mut self, resource: &str, msg: ToHost) -> Result<(), String> {
        if self.hosts.migrate(resource, msg) {
            Ok(())
        } else {
            Err(format!(
                "{resource} has no resource host process (RHS) on this node"
            ))
        }
    }
}

/// How recently every RHS must have sent something (it heartbeats every second) for the
/// main loop to answer the watchdog's probe.
const RHS_ANSWER: Duration = Duration::from_millis(2_500);

/// Runs the main loop until shutdown; returns an error if the database failed.
pub async fn run(mut svc: Service, mut rx: mpsc::Receiver<Msg>) -> Result<(), String> {
    // Nothing runs before the Node Manager grants a lease.
    exec::settle(
        &mut svc,
        Input::Fence {
            fenced: true,
            reason: "agent started: waiting for a lease before running anything".to_string(),
        },
    );
    loop {
        let wake = svc
            .rcm
            .next_wakeup_ms(&svc.db.state())
            .map(|ms| ms.saturating_sub(svc.now_ms()));
        let sleep = tokio::time::sleep(Duration::from_millis(wake.unwrap_or(3_600_000)));
        let first = tokio::select! {
            msg = rx.recv() => msg,
            _ = sleep => Some(Msg::Rcm(Input::Tick)),
        };
        let Some(first) = first else {
            break;
        };
        let mut batch = vec![first];
        while batch.len() < BATCH_LIMIT {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let mut stop = None;
        let mut applied = false;
        let mut removed = None;
        for msg in batch {
            match msg {
                Msg::Host(e) => {
                    if let Some(input) = svc.input_of(e) {
                        exec::settle(&mut svc, input);
                    }
                }
                // Many applied entries, one reconcile pass (below).
                Msg::Applied => applied = true,
                Msg::Rcm(input) => {
                    exec::settle(&mut svc, input);
                }
                Msg::Call(f) => f(&mut svc),
                Msg::Shutdown(how) => stop = Some(how),
                Msg::SystemdProbe => {
                    svc.notify.watchdog();
                    svc.notify.status(&svc.systemd_status());
                }
                Msg::WatchdogProbe => {
                    // Answered only while every RHS answers too (its 1 s heartbeat): a
                    // stuck RHS could not end its resources when the lease runs out.
                    if let Some(w) = &svc.watchdog
                        && svc.hosts.all_answered(RHS_ANSWER)
                    {
                        w.answer(svc.rcm.runs_anything());
                    }
                }
                Msg::Removed { reason } => removed = Some(reason),
            }
        }
        if applied {
            exec::settle(&mut svc, Input::Tick);
        }
        svc.version.send_modify(|v| *v += 1);
        if let Some(reason) = removed {
            let cluster = svc.db.cluster_id().unwrap_or_default();
            let why = format!(
                "node {} was removed from cluster {cluster} ({reason}); stopping. To add it again, start it with an empty data dir and --join HOST:PORT",
                svc.node
            );
            svc.log.append([LogEntry::new(Component::NM, why.clone())]);
            stop_hosts(&mut svc, &mut rx).await;
            return Err(why);
        }
        if let Some(how) = stop {
            return stop_cleanly(svc, rx, how).await;
        }
    }
    // The channel closed: every sender is gone (only in tests).
    stop_hosts(&mut svc, &mut rx).await;
    Ok(())
}

/// How long a stopping node waits for its own Stopped record to be committed.
const STOPPED_RECORD_WAIT: Duration = Duration::from_secs(10);

/// Ends every resource here, then (only if all ended) records the node Stopped or Frozen,
/// so that its groups move at once (or wait for it) without a wait for its lease.
async fn stop_cleanly(
    mut svc: Service,
    mut rx: mpsc::Receiver<Msg>,
    how: crate::shutdown::Stop,
) -> Result<(), String> {
    let node = svc.node.clone();
    let policy = how.policy;
    svc.log.append([LogEntry::new(
        Component::NM,
        format!("agent on {node} stopping (shutdown policy {policy}): terminating its resources"),
    )]);
    if !stop_hosts(&mut svc, &mut rx).await {
        svc.log.append([LogEntry::new(
            Component::NM,
            format!(
                "not every resource on {node} ended within {} s: no clean stop is recorded; the cluster records {node} Down once its lease has surely expired",
                SHUTDOWN_LIMIT.as_secs()
            ),
        )]);
        return Ok(());
    }
    let incarnation = svc.nm.incarnation();
    let cmd = Command::NodeStopped {
        name: node.clone(),
        incarnation,
        policy,
        paused: how.paused,
    };
    // Behind the RCM's own records, in order: none of them lands after this one.
    if svc.writes.send(vec![cmd]).await.is_err() {
        return Ok(());
    }
    let recorded = crate::drain::wait_until(&svc.db, STOPPED_RECORD_WAIT, |s| {
        s.nodes.get(&node).is_some_and(|n| {
            n.state.stopped_cleanly()
                && n.stop
                    .as_ref()
                    .is_some_and(|c| c.incarnation == incarnation)
        })
    })
    .await;
    let what = match (recorded, policy) {
        (false, _) => format!(
            "node {node} could not record its clean stop within {} s (no quorum?): the cluster records it Down once its lease has surely expired",
            STOPPED_RECORD_WAIT.as_secs()
        ),
        (true, vigil_core::model::ShutdownPolicy::Freeze) => {
            format!("node {node} stopped cleanly: Frozen; its groups wait for it")
        }
        (true, _) => {
            format!("node {node} stopped cleanly: Stopped; its groups go elsewhere at once")
        }
    };
    svc.log.append([LogEntry::new(Component::NM, what)]);
    if recorded && svc.db.is_leader() {
        // This leader's failover manager plans the stop's moves: wait for its round that saw
        // the stop (written and logged), so that exiting loses none of its records.
        let at = svc.db.applied_index();
        let _ = tokio::time::timeout(
            STOPPED_RECORD_WAIT,
            svc.fm_rounds.wait_for(|done| *done >= at),
        )
        .await;
    }
    Ok(())
}

/// Asks every RHS to terminate its resources and exit, and waits for them (bounded).
/// Whether every resource has ended (every RHS exited, and nothing is left in the
/// resources' cgroups).
async fn stop_hosts(svc: &mut Service, rx: &mut mpsc::Receiver<Msg>) -> bool {
    svc.hosts.shutdown_all();
    // Wait (bounded) for every RHS to finish terminating its resources.
    let _ = tokio::time::timeout(SHUTDOWN_LIMIT, async {
        while !svc.hosts.pids().is_empty() {
            match rx.recv().await {
                Some(Msg::Host(HostEvent::Exited {
                    host, generation, ..
                })) => {
                    svc.hosts.lost(&host, generation);
                }
                Some(_) => {}
                None => break,
            }
        }
    })
    .await;
    let mut ended = svc.hosts.pids().is_empty();
    if let Some(base) = svc.hosts.cgroups() {
        ended &= crate::cgroups::end_resources(base);
        crate::cgroups::remove(base);
    }
    ended
}

/// Writes the RCM's commands in the order it made them, as few log entries as possible.
async fn write_loop(db: Db, mut queue: mpsc::Receiver<Vec<Command>>) {
    while let Some(mut batch) = queue.recv().await {
        while batch.len() < WRITE_BATCH {
            match queue.try_recv() {
                Ok(more) => batch.extend(more),
                Err(_) => break,
            }
        }
        match db.write(batch).await {
            Ok(results) => {
                for e in results.into_iter().filter_map(Result::err) {
                    tracing::debug!("RCM command refused: {e}");
                }
            }
            // This node cannot reach a majority; its records are lost (or, if already
            // proposed, committed later), and the RCM keeps acting on its own state. (Leases
            // decide whether it may keep running things.)
            Err(e) => tracing::warn!("RCM records not written: {e}"),
        }
    }
}
