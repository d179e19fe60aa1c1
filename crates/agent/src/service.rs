//! The agent's main loop: one task owns the cluster database, the RCM and the RHS
//! supervisor. Inputs (RHS messages, API calls, timers) arrive on one channel; each batch of
//! inputs goes through the pure RCM, and the resulting actions are executed here: database
//! commands in one durable transaction, calls to the RHS, cluster log entries.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use vigil_core::command::{ApplyError, Command};
use vigil_core::event::{Component, LogEntry};
use vigil_core::model::ClusterState;
use vigil_core::rcm::{Action, Input, Rcm, Report};
use vigil_db::Database;
use vigil_rhs::protocol::FromHost;

use crate::AgentOptions;
use crate::clusterlog::ClusterLog;
use crate::hosts::{HostEvent, Hosts};

/// Inputs handled per batch before the database is written.
const BATCH_LIMIT: usize = 512;
/// Most RCM passes one input may cause (database changes and failed calls cause more).
const SETTLE_PASSES: usize = 4_096;
/// How long a stopping agent waits for its RHS processes to terminate their resources.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(30);

/// A closure the API runs inside the main loop, with exclusive access to the service.
pub type Call = Box<dyn FnOnce(&mut Service) + Send>;

pub enum Msg {
    Host(HostEvent),
    Call(Call),
    Shutdown,
}

pub struct Service {
    pub node: String,
    pub listen: String,
    db: Database,
    rcm: Rcm,
    pub hosts: Hosts,
    pub log: ClusterLog,
    started: Instant,
    /// Bumped after every batch, so API calls can wait for a state to be reached.
    version: watch::Sender<u64>,
    fatal: Option<String>,
}

impl Service {
    pub fn new(
        opts: &AgentOptions,
        listen: &str,
        db: Database,
        log: ClusterLog,
        events: mpsc::Sender<HostEvent>,
    ) -> std::io::Result<Self> {
        let exe = std::env::current_exe()?;
        let silence = Duration::from_millis(opts.rhs_silence_ms);
        Ok(Self {
            node: opts.name.clone(),
            listen: listen.to_string(),
            db,
            rcm: Rcm::new(&opts.name),
            hosts: Hosts::new(
                exe,
                silence,
                opts.data_dir.clone(),
                opts.name.clone(),
                events,
            ),
            log,
            started: Instant::now(),
            version: watch::channel(0).0,
            fatal: None,
        })
    }

    pub fn state(&self) -> &ClusterState {
        self.db.state()
    }

    pub fn applied_index(&self) -> u64 {
        self.db.applied_index()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// An operator's change: applied and made durable at once; then the input `then` makes
    /// from the changed service (usually [`Input::Tick`]) goes to the RCM, so the change takes
    /// effect in the same batch.
    pub fn submit(
        &mut self,
        cmds: Vec<Command>,
        log: Vec<LogEntry>,
        then: impl FnOnce(&Service) -> Input,
    ) -> Result<(), ApplyError> {
        let results = match self.db.submit(&cmds) {
            Ok(r) => r,
            Err(e) => {
                self.fatal = Some(e.to_string());
                return Err(ApplyError::Conflict(format!(
                    "the cluster database failed: {e}"
                )));
            }
        };
        if let Some(err) = results.into_iter().find_map(Result::err) {
            return Err(err);
        }
        self.log.append(log);
        let input = then(self);
        self.step(input);
        Ok(())
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
            let actions = self.rcm.step(self.db.state(), input, now);
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
        if !cmds.is_empty() {
            // Made durable at the end of the batch (see `run`).
            match self.db.submit_deferred(&cmds) {
                Ok(results) => {
                    for (cmd, r) in cmds.iter().zip(results) {
                        if let Err(e) = r {
                            tracing::debug!("RCM command {cmd:?} refused: {e}");
                        }
                    }
                }
                Err(e) => {
                    self.fatal = Some(e.to_string());
                    return false;
                }
            }
        }
        for call in calls {
            self.call_rhs(call, followups);
        }
        self.log.append(logs);
        !cmds.is_empty()
    }

    fn call_rhs(&mut self, action: Action, followups: &mut VecDeque<Input>) {
        match action {
            Action::Online { resource } => {
                if let Err(reason) = self.hosts.online(self.db.state(), &resource) {
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
            Action::Terminate { resource } => self.hosts.terminate(&resource),
            Action::Close { resource } => self.hosts.close(&resource),
            Action::Db(_) | Action::Log(_) => unreachable!("handled by execute"),
        }
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
            let pid = self.db.state().resources.get(r).and_then(|r| r.pid);
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
                if !matches!(report, Report::Online | Report::Offline) {
                    let mut entry =
                        LogEntry::new(Component::RHS, format!("{}: {reason}", report.name()))
                            .resource(&resource);
                    if let Some(r) = self.db.state().resources.get(&resource) {
                        entry = entry.group(&r.group, self.db.state().group_epoch(&r.group));
                    }
                    self.log.append([entry]);
                }
                self.step(Input::Report {
                    resource,
                    report,
                    reason,
                    pid,
                });
            }
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
    svc.step(Input::Tick);
    loop {
        let wake = svc
            .rcm
            .next_wakeup_ms(svc.db.state())
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
        for msg in batch {
            match msg {
                Msg::Host(e) => svc.on_host_event(e),
                Msg::Call(f) => f(&mut svc),
                Msg::Shutdown => stop = true,
            }
        }
        if let Err(e) = svc.db.flush() {
            svc.fatal = Some(e.to_string());
        }
        if let Some(e) = svc.fatal.take() {
            svc.hosts.shutdown_all();
            return Err(e);
        }
        svc.version.send_modify(|v| *v += 1);
        if stop {
            break;
        }
    }
    svc.log.append([LogEntry::new(
        Component::NM,
        format!("agent on {} stopping: terminating its resources", svc.node),
    )]);
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
    Ok(())
}
