//! The agent's main loop: one task owns the cluster database, the RCM and the RHS
//! supervisor. Inputs (RHS messages, API calls, timers) arrive on one channel; each batch of
//! inputs goes through the pure RCM, and the resulting actions are executed here: database
//! commands in one durable transaction, calls to the RHS, cluster log entries.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use vigil_core::command::Command;
use vigil_core::event::{Component, LogEntry};
use vigil_core::model::ResourceState;
use vigil_core::rcm::{Action, Input, Rcm, Report};
use vigil_db::{Db, StateRef};
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
/// Most RCM passes one input may cause (database changes and failed calls cause more).
const SETTLE_PASSES: usize = 4_096;
/// How long a stopping agent waits for its RHS processes to terminate their resources.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(30);

/// A closure the API runs inside the main loop, with exclusive access to the service.
pub type Call = Box<dyn FnOnce(&mut Service) + Send>;

pub enum Msg {
    Host(HostEvent),
    /// The local replica applied more of the log.
    Applied,
    /// The Node Manager lost (or regained) this node's lease.
    Fence {
        fenced: bool,
        reason: String,
    },
    Call(Call),
    Shutdown,
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
            ),
            log,
            started: Instant::now(),
            version: watch::channel(0).0,
        })
    }

    /// This node's copy of the cluster database; hold it briefly.
    pub fn state(&self) -> StateRef<'_> {
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

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Feeds one input to the RCM and executes what it decides, then what follows from that:
    /// another pass when the database changed (the RCM should see it), and the failure of a
    /// call that could not be made. Bounded by [`SETTLE_PASSES`].
    pub fn step(&mut self, input: Input) {
        let mut inputs = VecDeque::from([input]);
        for _ in 0..SETTLE_PASSES {
            let Some(input) = inputs.pop_front() else {
                return;
            };
            let now = self.now_ms();
            let state = self.db.state();
            let actions = self.rcm.step(&state, input, now);
            drop(state);
            if self.execute(actions, &mut inputs) && inputs.is_empty() {
                inputs.push_back(Input::Tick);
            }
        }
        if !inputs.is_empty() {
            // Not expected; the pending timeouts heal whatever was left undone.
            tracing::error!(
                "RCM did not settle within {SETTLE_PASSES} passes; {} inputs dropped",
                inputs.len()
            );
        }
    }

    /// Executes actions; returns whether the database changed.
    fn execute(&mut self, actions: Vec<Action>, followups: &mut VecDeque<Input>) -> bool {
        let mut cmds = Vec::new();
        let mut logs = Vec::new();
        let mut calls = Vec::new();
        for a in actions {
            match a {
                Action::Db(c) => cmds.push(c),
                Action::Log(entry) => logs.push(entry),
                call => calls.push(call),
            }
        }
        if !cmds.is_empty() && self.writes.try_send(cmds.clone()).is_err() {
            tracing::error!(
                "database write queue full; {} RCM records dropped",
                cmds.len()
            );
        }
        for call in calls {
            self.call_rhs(call, followups);
        }
        self.log.append(logs);
        // The RCM sees the effect of its commands once they are applied (`Msg::Applied`).
        false
    }

    fn call_rhs(&mut self, action: Action, followups: &mut VecDeque<Input>) {
        match action {
            Action::Online { resource } => {
                let state = self.db.state();
                let result = self.hosts.online(&state, &resource);
                drop(state);
                if let Err(reason) = result {
                    followups.push_back(Input::Report {
                        resource,
                        report: Report::Failed,
                        reason,
                        pid: None,
                    });
                }
            }
            Action::Offline { resource } => {
                if !self.hosts.offline(&resource) {
                    followups.push_back(Input::Report {
                        resource,
                        report: Report::Offline,
                        reason: "not running in any RHS".to_string(),
                        pid: None,
                    });
                }
            }
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
                if !self.hosts.migrate(&resource, msg) {
                    followups.push_back(Input::Report {
                        resource,
                        report: Report::MigrateFailed,
                        reason: "not running in any RHS".to_string(),
                        pid: None,
                    });
                }
            }
            Action::MigratePrepare {
                resource,
                source,
                quick,
            } => {
                let state = self.db.state();
                let opened = self.hosts.open_for(&state, &resource);
                drop(state);
                let msg = ToHost::MigratePrepare {
                    resource: resource.clone(),
                    source,
                    quick,
                };
                self.migrate_or_report(followups, resource, opened, msg, Report::MigrateFailed);
            }
            Action::MigrateFrom {
                resource,
                source,
                quick,
            } => {
                // The instance prepared for the migration receives it; open one only if none is
                // (a quick migration prepares nothing).
                let opened = if self.hosts.is_open(&resource) {
                    Ok(())
                } else {
                    let state = self.db.state();
                    self.hosts.open_for(&state, &resource)
                };
                let msg = ToHost::MigrateFrom {
                    resource: resource.clone(),
                    source,
                    quick,
                };
                self.migrate_or_report(followups, resource, opened, msg, Report::Failed);
            }
            Action::Terminate { resource } => self.hosts.terminate(&resource),
            Action::Close { resource } => self.hosts.close(&resource),
            Action::Db(_) | Action::Log(_) => unreachable!("handled by execute"),
        }
    }

    /// Sends a migration step to the RHS that `opened` put `resource` in; when it could not
    /// be opened or has no RHS, the RCM hears `report` with the reason.
    fn migrate_or_report(
        &mut self,
        followups: &mut VecDeque<Input>,
        resource: String,
        opened: Result<(), String>,
        msg: ToHost,
        report: Report,
    ) {
        let reason = match opened {
            Err(e) => e,
            Ok(()) if self.hosts.migrate(&resource, msg) => return,
            Ok(()) => format!("{resource} has no resource host process (RHS) on this node"),
        };
        followups.push_back(Input::Report {
            resource,
            report,
            reason,
            pid: None,
        });
    }

    fn on_host_event(&mut self, event: HostEvent) {
        match event {
            HostEvent::Message {
                host,
                generation,
                msg,
            } => {
                if !self.hosts.is_current(&host, generation) {
                    return;
                }
                self.on_host_message(&host, msg);
            }
            HostEvent::Exited {
                host,
                generation,
                reason,
            } => {
                let Some(resources) = self.hosts.lost(&host, generation) else {
                    return;
                };
                self.kill_leftovers(&resources);
                self.log
                    .append([LogEntry::new(Component::RHS, reason.clone())]);
                self.step(Input::HostLost { resources, reason });
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

    fn on_host_message(&mut self, host: &str, msg: FromHost) {
        match msg {
            // Heartbeats stay in the host's reader (see `hosts::read_loop`).
            FromHost::Alive => {}
            FromHost::Hello { pid, .. } => {
                self.hosts.set_pid(host, pid);
                self.log.append([LogEntry::new(
                    Component::RHS,
                    format!("RHS {host} started, pid {pid}"),
                )]);
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
                    return;
                }
                // Online, Offline and Migrated are logged by the RCM with the state change.
                if !matches!(report, Report::Online | Report::Offline | Report::Migrated) {
                    let mut entry =
                        LogEntry::new(Component::RHS, format!("{}: {reason}", report.name()))
                            .resource(&resource);
                    let state = self.state();
                    if let Some(r) = state.resources.get(&resource) {
                        entry = entry.group(&r.group, state.group_epoch(&r.group));
                    }
                    drop(state);
                    self.log.append([entry]);
                }
                self.step(Input::Report {
                    resource,
                    report,
                    reason,
                    pid,
                });
            }
            FromHost::ControlReply { id, result } => self.hosts.control_reply(id, result),
            FromHost::Deadlock {
                resource,
                entry_point,
                ..
            } => {
                self.step(Input::Deadlock {
                    resource,
                    entry_point,
                });
            }
        }
    }
}

/// Runs the main loop until shutdown; returns an error if the database failed.
pub async fn run(mut svc: Service, mut rx: mpsc::Receiver<Msg>) -> Result<(), String> {
    // Nothing runs before the Node Manager grants a lease.
    svc.step(Input::Fence {
        fenced: true,
        reason: "agent started: waiting for a lease before running anything".to_string(),
    });
    loop {
        let wake = svc
            .rcm
            .next_wakeup_ms(&svc.db.state())
            .map(|ms| ms.saturating_sub(svc.now_ms()));
        let sleep = tokio::time::sleep(Duration::from_millis(wake.unwrap_or(3_600_000)));
        let first = tokio::select! {
            msg = rx.recv() => msg,
            _ = sleep => None.or(Some(Msg::Call(Box::new(|s: &mut Service| s.step(Input::Tick))))),
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
        let mut stop = false;
        let mut applied = false;
        let mut removed = None;
        for msg in batch {
            match msg {
                Msg::Host(e) => svc.on_host_event(e),
                // Many applied entries, one reconcile pass (below).
                Msg::Applied => applied = true,
                Msg::Fence { fenced, reason } => svc.step(Input::Fence { fenced, reason }),
                Msg::Call(f) => f(&mut svc),
                Msg::Shutdown => stop = true,
                Msg::Removed { reason } => removed = Some(reason),
            }
        }
        if applied {
            svc.step(Input::Tick);
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
        if stop {
            break;
        }
    }
    svc.log.append([LogEntry::new(
        Component::NM,
        format!("agent on {} stopping: terminating its resources", svc.node),
    )]);
    stop_hosts(&mut svc, &mut rx).await;
    Ok(())
}

/// Asks every RHS to terminate its resources and exit, and waits for them (bounded).
async fn stop_hosts(svc: &mut Service, rx: &mut mpsc::Receiver<Msg>) {
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
