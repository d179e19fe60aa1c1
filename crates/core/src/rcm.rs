//! The Resource Control Manager's decisions, as a reconcile loop.
//!
//! [`Rcm::step`] takes the cluster database (desired state, ownership), one input (a report
//! from an RHS, a lost RHS, an operator action or just the passing of time) and the time, and
//! returns the actions that bring this node's resources toward what the database wants:
//! Online/Offline/Terminate calls for the RHS, commands for the database, cluster log entries.
//! It compares desired with observed on every pass, so a missed event is healed by the next.
//!
//! Local state (current state, restart history, timers) lives here, not in the database: it
//! is this node's knowledge. The database gets a copy of each state change through
//! [`Command::RecordState`].

use std::collections::{BTreeMap, BTreeSet};

use crate::command::{Command, Target};
use crate::deps;
use crate::event::{Component, LogEntry};
use crate::failover;
use crate::model::{ClusterState, Group, PersistentState, Phase, Resource, ResourceState};
use crate::restart::{Decision, History};

mod memory;
mod migrate;

use memory::Memory;

use migrate::Leg;

/// What an RHS reported about a resource.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "state")]
pub enum Report {
    Online,
    /// Still coming online; `progress` is true when the type reported progress.
    OnlinePending {
        progress: bool,
    },
    Offline,
    OfflinePending {
        progress: bool,
    },
    /// The resource failed (a check said no, its process died with a failure, a call failed).
    /// An RHS worker terminates the instance before it reports this (see `Input::Report`'s
    /// `ended`), and the RCM then does not terminate again.
    Failed,
    /// The resource's configuration is wrong on this node (an OCF agent's 2, 5 or 6, a
    /// plugin's configuration error): restarting here cannot help, so it is not restarted
    /// here; the group fails over if its restart action allows.
    FailedHere,
    /// The resource was stopped outside the cluster (the operator used the service's own
    /// tools): the operator's intent wins, it is not restarted.
    StoppedOutOfBand,
    /// A live move's migrate_to finished: the instance now lives on the target.
    Migrated,
    /// A live move's migrate_to failed; the type left the resource running here.
    MigrateFailed,
    /// Running, with news for status and the log (a VM paused, or running again); the
    /// state does not change.
    Notice,
}

impl Report {
    pub fn name(&self) -> &'static str {
        match self {
            Report::Online => "Online",
            Report::OnlinePending { .. } => "OnlinePending",
            Report::Offline => "Offline",
            Report::OfflinePending { .. } => "OfflinePending",
            Report::Failed => "Failed",
            Report::FailedHere => "FailedHere",
            Report::StoppedOutOfBand => "StoppedOutOfBand",
            Report::Migrated => "Migrated",
            Report::MigrateFailed => "MigrateFailed",
            Report::Notice => "Notice",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Report {
        resource: String,
        report: Report,
        reason: String,
        pid: Option<u32>,
        /// The report is about one instance, which the RHS ended before it reported a
        /// failure (its worker terminates first). `false` for a report that names no
        /// instance (a call refused before it reached one): a newer instance may run by
        /// the time it arrives, and the RCM terminates whatever runs.
        ended: bool,
    },
    /// An RHS process died: the resources it hosted are gone with it.
    HostLost {
        resources: Vec<String>,
        reason: String,
    },
    /// A call into the resource type did not return within `deadlock_timeout_ms`.
    Deadlock {
        resource: String,
        entry_point: String,
    },
    /// `vigil resource fail`: treat the resource as failed (Test-ClusterResourceFailure).
    SimulateFailure { resource: String },
    /// An operator changed the desired state of these resources: forget their failures.
    Operator { resources: Vec<String> },
    /// This node's lease ran out (`fenced`), or contact with a quorum came back. While
    /// fenced, it terminates everything it runs and starts nothing.
    Fence { fenced: bool, reason: String },
    /// Time passed.
    Tick,
}

/// How the RCM learned of a failure, which decides who ends the instance: one side, never
/// both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Found {
    /// The RHS ended the instance before it reported it: the RCM does not terminate it again.
    /// Otherwise the RCM terminates: a failure it found itself (a timeout, a simulated
    /// failure, a lost RHS, a move gone wrong), or a report that names no instance.
    ended: bool,
    /// A configuration error on this node, which no restart here can mend.
    here_useless: bool,
}

impl Found {
    const BY_RCM: Found = Found {
        ended: false,
        here_useless: false,
    };
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Online {
        resource: String,
    },
    Offline {
        resource: String,
    },
    Terminate {
        resource: String,
    },
    /// The resource is no longer this node's concern: drop it from its RHS.
    Close {
        resource: String,
    },
    /// Live move, on the source: migrate the running instance to `target`.
    MigrateTo {
        resource: String,
        target: String,
        /// Save and restore rather than live (see `Move::quick`).
        quick: bool,
    },
    /// Live move, on the target, before the source migrates: get ready to receive the
    /// instance from `source` (a VM: start QEMU waiting for the incoming migration).
    MigratePrepare {
        resource: String,
        source: String,
        quick: bool,
    },
    /// Live move, on the target: complete the migration from `source` (instead of a start).
    MigrateFrom {
        resource: String,
        source: String,
        quick: bool,
    },
    Db(Command),
    Log(LogEntry),
}

#[derive(Clone, Debug, Default)]
struct Local {
    state: ResourceState,
    pid: Option<u32>,
    /// Why it is in its state (the reason of the last transition).
    reason: String,
    /// When its state was last sent to the database (see [`RERECORD_MS`]).
    recorded_ms: u64,
    /// Entered the current pending state, or last reported progress in it.
    progress_ms: u64,
    /// While Failed: when to bring it online again (`None`: only when the group is retried).
    next_try_ms: Option<u64>,
    /// Restarts were exhausted: the next try starts a fresh count.
    gave_up: bool,
    history: History,
    /// Stopped out of band; do not start it while the database still says Online (our command
    /// setting it Offline is on its way).
    stopped_out_of_band: bool,
    /// Its part in a live move, if any.
    leg: Option<Leg>,
}

/// How long the database may show another state than this node knows before the RCM records
/// it again: a record lost with a write that found no quorum must not leave status wrong.
pub const RERECORD_MS: u64 = 3_000;

/// The RCM of one node.
#[derive(Debug)]
pub struct Rcm {
    node: String,
    resources: BTreeMap<String, Local>,
    /// The steps it took for each group that the database may not show yet (see
    /// [`memory`]).
    memory: Memory,
    /// No lease: nothing may run here.
    fenced: bool,
}

impl Rcm {
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_string(),
            resources: BTreeMap::new(),
            memory: Memory::default(),
            fenced: false,
        }
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced
    }

    /// What this node knows of a resource it tracks: state, pid, and the reason of its last
    /// transition.
    pub fn local(&self, resource: &str) -> Option<(ResourceState, Option<u32>, &str)> {
        self.resources
            .get(resource)
            .map(|l| (l.state, l.pid, l.reason.as_str()))
    }

    /// Whether anything may run on this node (a resource neither Offline nor Failed).
    pub fn runs_anything(&self) -> bool {
        self.resources.values().any(|l| l.state.may_run())
    }

    /// This node's view of a resource's state (Offline if it has none).
    pub fn state(&self, resource: &str) -> ResourceState {
        self.resources
            .get(resource)
            .map(|l| l.state)
            .unwrap_or_default()
    }

    /// Handles one input, then reconciles everything this node owns.
    pub fn step(&mut self, db: &ClusterState, input: Input, now_ms: u64) -> Vec<Action> {
        let mut out = Out {
            actions: Vec::new(),
            db,
            now: now_ms,
        };
        self.handle(&mut out, input, now_ms);
        self.reconcile(&mut out, now_ms);
        self.memory.put_off(now_ms);
        out.actions
    }

    /// The next time at which [`Input::Tick`] has something to do.
    pub fn next_wakeup_ms(&self, db: &ClusterState) -> Option<u64> {
        if self.fenced {
            return None;
        }
        let timers = self.resources.iter().filter_map(|(name, l)| {
            let r = db.resources.get(name)?;
            match l.state {
                ResourceState::Failed if !self.is_held(db, &r.group) => l.next_try_ms,
                ResourceState::OnlinePending | ResourceState::OfflinePending => {
                    Some(l.progress_ms + r.props.pending_timeout_ms)
                }
                _ => None,
            }
        });
        let resends = self.memory.next_resend_ms();
        let rerecords = self.resources.iter().filter_map(|(name, l)| {
            let r = db.resources.get(name)?;
            let owned = db.groups.get(&r.group)?.owner.as_deref() == Some(self.node.as_str());
            (owned && r.state != l.state).then_some(l.recorded_ms + RERECORD_MS)
        });
        timers.chain(resends).chain(rerecords).min()
    }

    /// Recorded Down (or stopped cleanly), the failover manager may give this node's groups
    /// away at any moment without a handover: it starts nothing until the leader has
    /// recorded it Up again.
    fn recorded_down(&self, db: &ClusterState) -> bool {
        db.nodes
            .get(&self.node)
            .is_some_and(|n| n.state == crate::model::NodeState::Down || n.state.stopped_cleanly())
    }

    /// Nothing of the group may start here: it failed, awaits the failover manager, or is
    /// being handed over.
    fn is_held(&self, db: &ClusterState, group: &str) -> bool {
        db.groups.get(group).is_some_and(|g| {
            g.is_held()
                || self
                    .memory
                    .get(group, g.epoch)
                    .is_some_and(|m| m.requested.is_some())
        })
    }

    fn handle(&mut self, out: &mut Out, input: Input, now: u64) {
        match input {
            Input::Report {
                resource,
                report,
                reason,
                pid,
                ended,
            } => self.on_report(out, &resource, report, reason, pid, ended),
            Input::HostLost { resources, reason } => {
                for name in resources {
                    match self.state(&name) {
                        ResourceState::OfflinePending => {
                            self.transition(out, &name, ResourceState::Offline, &reason, None);
                        }
                        s if s.may_run() => self.fail(out, &name, &reason, now, Found::BY_RCM),
                        _ => {}
                    }
                }
            }
            Input::Deadlock {
                resource,
                entry_point,
            } => self.on_deadlock(out, &resource, &entry_point),
            Input::SimulateFailure { resource } => {
                if self.state(&resource).may_run() {
                    let reason = "simulated failure (vigil resource fail)";
                    self.fail(out, &resource, reason, now, Found::BY_RCM);
                }
            }
            Input::Operator { resources } => {
                for name in resources {
                    if let Some(group) = out.db.resources.get(&name).map(|r| &r.group) {
                        self.memory.forget_request(group);
                    }
                    if let Some(l) = self.resources.get_mut(&name) {
                        l.history.reset();
                        l.gave_up = false;
                        l.next_try_ms = None;
                        l.stopped_out_of_band = false;
                    }
                }
            }
            Input::Fence { fenced, reason } => self.fence(out, fenced, &reason),
            Input::Tick => {}
        }
    }

    fn fence(&mut self, out: &mut Out, fenced: bool, reason: &str) {
        if fenced == self.fenced {
            return;
        }
        self.fenced = fenced;
        out.push(Action::Log(LogEntry::new(Component::RCM, reason)));
        if !fenced {
            // What was recorded while fenced most likely never reached a majority: record
            // this node's view of its resources again.
            for (name, l) in &self.resources {
                out.push(Action::Db(Command::RecordState {
                    resource: name.clone(),
                    state: l.state,
                    reason: "recorded again: contact with a quorum is back".to_string(),
                    pid: l.pid,
                    node: Some(self.node.clone()),
                }));
            }
            return;
        }
        let incoming: Vec<String> = self
            .resources
            .iter()
            .filter(|(_, l)| matches!(l.leg, Some(Leg::Incoming(_))))
            .map(|(n, _)| n.clone())
            .collect();
        for name in incoming {
            self.set_leg(&name, None);
            out.push(Action::Terminate { resource: name });
        }
        let running: Vec<String> = self
            .resources
            .iter()
            .filter(|(_, l)| l.state.may_run())
            .map(|(n, _)| n.clone())
            .collect();
        for name in running {
            out.push(Action::Terminate {
                resource: name.clone(),
            });
            self.transition(
                out,
                &name,
                ResourceState::Offline,
                "self-fenced: no lease",
                None,
            );
        }
    }

    fn on_report(
        &mut self,
        out: &mut Out,
        name: &str,
        report: Report,
        reason: String,
        pid: Option<u32>,
        ended: bool,
    ) {
        let now = out.now;
        let Some(local) = self.resources.get_mut(name) else {
            return;
        };
        let current = local.state;
        match (report, current) {
            (Report::Online, ResourceState::OnlinePending) => {
                self.transition(out, name, ResourceState::Online, &reason, pid);
            }
            (Report::OnlinePending { progress: true }, ResourceState::OnlinePending)
            | (Report::OfflinePending { progress: true }, ResourceState::OfflinePending) => {
                local.progress_ms = now;
            }
            (Report::Offline, ResourceState::OfflinePending) => {
                self.transition(out, name, ResourceState::Offline, &reason, None);
            }
            (Report::Offline | Report::StoppedOutOfBand, s) if s.may_run() => {
                self.on_out_of_band_stop(out, name, &reason);
            }
            (Report::Failed | Report::FailedHere, ResourceState::OfflinePending) => {
                let why = format!("offline failed ({reason}); terminated");
                if !ended {
                    out.push(Action::Terminate {
                        resource: name.to_string(),
                    });
                }
                self.transition(out, name, ResourceState::Offline, &why, None);
            }
            (
                report @ (Report::Failed | Report::FailedHere),
                ResourceState::Online | ResourceState::OnlinePending,
            ) => {
                let found = Found {
                    ended,
                    here_useless: report == Report::FailedHere,
                };
                self.fail(out, name, &reason, now, found);
            }
            (Report::Notice, ResourceState::Online) => {
                out.push(Action::Db(Command::RecordState {
                    resource: name.to_string(),
                    state: ResourceState::Online,
                    reason,
                    pid: local.pid,
                    node: Some(self.node.clone()),
                }));
            }
            (Report::Migrated, ResourceState::Online)
                if matches!(local.leg, Some(Leg::Sending(_))) =>
            {
                if let Some(Leg::Sending(to)) = local.leg.take() {
                    local.leg = Some(Leg::Sent(to));
                }
                self.log_resource(out, name, format!("migrate_to done: {reason}"));
            }
            (Report::MigrateFailed, ResourceState::Offline)
                if matches!(local.leg, Some(Leg::Incoming(_))) =>
            {
                // Not tried again for this move: the source's migrate_to will fail and cancel it.
                self.log_resource(
                    out,
                    name,
                    format!("preparing for a live migration failed: {reason}"),
                );
            }
            (Report::MigrateFailed, ResourceState::Online)
                if matches!(local.leg, Some(Leg::Sending(_))) =>
            {
                local.leg = None;
                self.migration_failed(out, name, &reason);
            }
            // Anything else is stale (a report about an instance already terminated).
            _ => {}
        }
    }

    fn log_resource(&self, out: &mut Out, name: &str, reason: String) {
        let mut entry = LogEntry::new(Component::RCM, reason).resource(name);
        if let Some(r) = out.db.resources.get(name) {
            entry = entry.group(&r.group, out.db.group_epoch(&r.group));
        }
        out.push(Action::Log(entry));
    }

    fn on_out_of_band_stop(&mut self, out: &mut Out, name: &str, reason: &str) {
        let why = format!(
            "stopped outside the cluster ({reason}); desired state set to Offline, not restarting"
        );
        self.transition(out, name, ResourceState::Offline, &why, None);
        if let Some(l) = self.resources.get_mut(name) {
            l.stopped_out_of_band = true;
        }
        if out.db.resources.get(name).map(|r| r.persistent_state) == Some(PersistentState::Online) {
            out.push(Action::Db(Command::SetPersistentState {
                target: Target::Resource(name.to_string()),
                state: PersistentState::Offline,
            }));
        }
    }

    fn on_deadlock(&mut self, out: &mut Out, name: &str, entry_point: &str) {
        let Some(r) = out.db.resources.get(name) else {
            return;
        };
        let mut reason = format!(
            "{entry_point} did not return within deadlock_timeout_ms={}; its RHS is killed and restarted",
            r.props.deadlock_timeout_ms
        );
        if !r.props.separate_monitor {
            reason.push_str(", and the resource moves to a separate monitor");
            let mut props = r.props.clone();
            props.separate_monitor = true;
            out.push(Action::Db(Command::UpdateResource {
                name: name.to_string(),
                params: r.params.clone(),
                secret: r.secret.clone(),
                props,
                depends_on: r.depends_on.clone(),
            }));
        }
        let entry = LogEntry::new(Component::RCM, reason)
            .group(&r.group, out.db.group_epoch(&r.group))
            .resource(name);
        out.push(Action::Log(entry));
    }

    /// The resource failed: terminate it, unless the RHS already did, and apply the restart
    /// policy.
    fn fail(&mut self, out: &mut Out, name: &str, reason: &str, now: u64, found: Found) {
        let Some(r) = out.db.resources.get(name) else {
            return;
        };
        let (group, epoch) = (r.group.clone(), out.db.group_epoch(&r.group));
        let here_useless = found.here_useless;
        if !found.ended {
            out.push(Action::Terminate {
                resource: name.to_string(),
            });
        }
        self.transition(out, name, ResourceState::Failed, reason, None);
        let local = self
            .resources
            .get_mut(name)
            .expect("transition keeps the entry");
        let decision = if here_useless {
            local.history.on_failure_not_here(&r.props, now)
        } else {
            local.history.on_failure(&r.props, now)
        };
        let log = |reason: String| {
            Action::Log(
                LogEntry::new(Component::RCM, reason)
                    .group(&group, epoch)
                    .resource(name),
            )
        };
        match decision {
            Decision::RestartAt {
                at_ms,
                attempt,
                threshold,
            } => {
                local.next_try_ms = Some(at_ms);
                out.push(log(format!(
                    "restart {attempt} of {threshold} within restart_period_s={} in {} ms",
                    r.props.restart_period_s,
                    at_ms - now
                )));
            }
            Decision::StayFailed { retry_at_ms } => {
                local.next_try_ms = Some(retry_at_ms);
                local.gave_up = true;
                let why = if here_useless {
                    "misconfigured on this node, no restart here".to_string()
                } else {
                    format!(
                        "restarts used up ({} within {} s)",
                        r.props.restart_threshold, r.props.restart_period_s
                    )
                };
                out.push(log(format!(
                    "restart_action={:?}, {why}: staying Failed, retry in {} s",
                    r.props.restart_action, r.props.retry_period_on_failure_s
                )));
            }
            Decision::Failover => {
                local.next_try_ms = None;
                local.gave_up = true;
                let reason = if here_useless {
                    format!(
                        "{name} is misconfigured on {} ({reason}); not restarted here",
                        self.node
                    )
                } else {
                    format!(
                        "restarts of {name} exhausted ({} within restart_period_s={}) on {}",
                        r.props.restart_threshold, r.props.restart_period_s, self.node
                    )
                };
                out.push(log(format!(
                    "{reason}: stopping the group here and asking the failover manager where it goes"
                )));
                self.request_failover(out, &group, reason, now);
            }
        }
    }

    fn request_failover(&mut self, out: &mut Out, group: &str, reason: String, now: u64) {
        self.memory.at(group, out.db.group_epoch(group)).requested = Some(now);
        out.push(Action::Db(Command::RequestFailover {
            group: group.to_string(),
            from: self.node.clone(),
            reason,
        }));
    }

    /// Forgets requests the database has answered (or made moot), and sends again those
    /// whose write seems lost.
    fn follow_requests(&mut self, out: &mut Out, now: u64) {
        self.memory.forget(out.db, &self.node);
        for group in self.memory.requests_due(now) {
            let reason = format!("restarts exhausted on {} (request sent again)", self.node);
            self.request_failover(out, &group, reason, now);
        }
    }

    fn transition(
        &mut self,
        out: &mut Out,
        name: &str,
        to: ResourceState,
        reason: &str,
        pid: Option<u32>,
    ) {
        let local = self.resources.entry(name.to_string()).or_default();
        let from = local.state;
        local.state = to;
        local.pid = pid;
        local.reason = reason.to_string();
        if from != to {
            local.recorded_ms = out.now;
        }
        if matches!(to, ResourceState::Offline | ResourceState::Failed) {
            local.leg = None;
        }
        if to != ResourceState::Failed {
            local.next_try_ms = None;
        }
        if from == to {
            return;
        }
        out.push(Action::Db(Command::RecordState {
            resource: name.to_string(),
            state: to,
            reason: reason.to_string(),
            pid,
            node: Some(self.node.clone()),
        }));
        let mut entry = LogEntry::new(Component::RCM, reason)
            .resource(name)
            .change(from, to);
        if let Some(r) = out.db.resources.get(name) {
            entry = entry.group(&r.group, out.db.group_epoch(&r.group));
        }
        out.push(Action::Log(entry));
    }

    fn reconcile(&mut self, out: &mut Out, now: u64) {
        if self.fenced {
            return;
        }
        self.follow_requests(out, now);
        self.forget_departed(out);
        let db = out.db;
        // One pass over the resources instead of one per group.
        let mut by_group: BTreeMap<&str, BTreeMap<&str, &Resource>> = BTreeMap::new();
        for r in db.resources.values() {
            by_group
                .entry(r.group.as_str())
                .or_default()
                .insert(r.name.as_str(), r);
        }
        let empty = BTreeMap::new();
        let mine = failover::by_priority(
            db,
            db.groups
                .values()
                .filter(|g| g.owner.as_deref() == Some(self.node.as_str()))
                .filter(|g| by_group.contains_key(g.name.as_str()) || g.moving().is_some())
                .map(|g| &g.name),
        );
        for group in &mine {
            self.reconcile_group(
                out,
                group,
                by_group.get(group.as_str()).unwrap_or(&empty),
                now,
            );
        }
        // Resources of groups that moved away: stop them gracefully.
        let departed: BTreeSet<&str> = self
            .resources
            .keys()
            .filter_map(|n| db.resources.get(n))
            .filter(|r| {
                db.groups.get(&r.group).and_then(|g| g.owner.as_deref()) != Some(&self.node)
            })
            .map(|r| r.group.as_str())
            .collect();
        for group in departed {
            self.reconcile_group(out, group, by_group.get(group).unwrap_or(&empty), now);
        }
        self.prepare_incoming(out);
    }

    /// Drops what this node no longer needs to know: resources deleted from the database
    /// (terminated if somehow still running) and stopped resources of groups it no longer owns.
    fn forget_departed(&mut self, out: &mut Out) {
        let db = out.db;
        let gone: Vec<String> = self
            .resources
            .iter()
            .filter(|(name, l)| match db.resources.get(*name) {
                None => true,
                Some(r) => {
                    !l.state.may_run()
                        && l.leg.is_none()
                        && db.groups.get(&r.group).and_then(|g| g.owner.as_deref())
                            != Some(&self.node)
                }
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            if self
                .resources
                .remove(&name)
                .is_some_and(|l| l.state.may_run())
            {
                out.push(Action::Terminate {
                    resource: name.clone(),
                });
            }
            out.push(Action::Close { resource: name });
        }
    }

    fn reconcile_group<'a>(
        &mut self,
        out: &mut Out<'a>,
        group: &str,
        members: &BTreeMap<&'a str, &'a Resource>,
        now: u64,
    ) {
        let db = out.db;
        let owned = db.groups.get(group).and_then(|g| g.owner.as_deref()) == Some(&self.node);
        let held = self.is_held(db, group);
        let self_down = self.recorded_down(db);
        let members = members.clone();
        if owned {
            for (name, r) in &members {
                self.adopt(out, name, r);
            }
        }
        for (name, r) in &members {
            if r.persistent_state == PersistentState::Offline
                && let Some(l) = self.resources.get_mut(*name)
            {
                // The database now carries the operator's intent itself.
                l.stopped_out_of_band = false;
            }
        }
        let order = online_order(&members);
        let g = db.groups.get(group);
        if owned && !self_down {
            if g.and_then(Group::moving).is_some_and(|m| m.live) {
                self.live_move(out, group, &order, now);
                for name in &order {
                    self.check_pending(out, members[name.as_str()], now);
                }
                return;
            }
            // Migrated away, but the move is over and the group is still here (cancelled):
            // the instance no longer runs here; recover it.
            if g.is_some_and(|g| g.moving.is_none()) {
                for name in &order {
                    if self.is_sent(name) {
                        let why = "migrated away, but the move was abandoned; recovering here";
                        self.fail(out, name, why, now, Found::BY_RCM);
                    }
                }
            }
        }
        // Whether each resource should run, in dependency order (providers first).
        let mut want: BTreeMap<&str, bool> = BTreeMap::new();
        for name in &order {
            let r = members[name.as_str()];
            let local = self.resources.get(name.as_str());
            let w = owned
                && !held
                && !self_down
                && r.persistent_state == PersistentState::Online
                && !local.is_some_and(|l| l.stopped_out_of_band)
                && r.depends_on.iter().all(|d| {
                    want.get(d.as_str()).copied().unwrap_or(false)
                        && self.state(d) != ResourceState::Failed
                });
            want.insert(name.as_str(), w);
        }
        for name in &order {
            if want[name.as_str()] {
                self.bring_online(out, members[name.as_str()], now);
            }
        }
        for name in order.iter().rev() {
            if !want[name.as_str()] {
                self.take_offline(out, members[name.as_str()], &members, &want, now);
            }
            self.check_pending(out, members[name.as_str()], now);
        }
        if owned {
            self.hand_over(out, group, &order);
            self.complete_migration(out, group, &order, &want);
            self.record_again(out, &members, now);
        }
    }

    /// Level-triggered records: a resource of a group this node owns whose record in the
    /// database has shown another state than this node's for [`RERECORD_MS`] (its record was
    /// lost, say with a write that found no quorum) is recorded again.
    fn record_again(&mut self, out: &mut Out, members: &BTreeMap<&str, &Resource>, now: u64) {
        for (name, r) in members {
            let Some(l) = self.resources.get_mut(*name) else {
                continue;
            };
            if r.state == l.state || now < l.recorded_ms + RERECORD_MS {
                continue;
            }
            l.recorded_ms = now;
            out.actions.push(Action::Db(Command::RecordState {
                resource: name.to_string(),
                state: l.state,
                reason: l.reason.clone(),
                pid: l.pid,
                node: Some(self.node.clone()),
            }));
        }
    }

    /// A group being moved: once nothing of it runs here, write its new owner (the target
    /// starts it only then, so it never runs in two places).
    fn hand_over(&mut self, out: &mut Out, group: &str, members: &[String]) {
        let Some(g) = out.db.groups.get(group) else {
            return;
        };
        let Some(m) = g.moving() else {
            return;
        };
        if self.memory.pending(group, g.epoch, |x| x.handed, out.now)
            || members.iter().any(|r| self.state(r).may_run())
        {
            return;
        }
        self.memory.at(group, g.epoch).handed = Some(out.now);
        out.push(Action::Db(Command::HandOver {
            group: group.to_string(),
            from: self.node.clone(),
            to: m.to.clone(),
        }));
        let reason = format!(
            "group stopped on {}: handing it over to {} ({} move)",
            self.node, m.to, m.kind
        );
        out.push(Action::Log(
            LogEntry::new(Component::RCM, reason)
                .group(group, g.epoch)
                .change(&self.node, &m.to),
        ));
    }

    /// First sight of a resource this node owns: the database may still hold the state a
    /// previous run of this node recorded; nothing runs here yet, so correct it.
    fn adopt(&mut self, out: &mut Out, name: &str, r: &Resource) {
        if self.resources.contains_key(name) {
            return;
        }
        self.resources.insert(name.to_string(), Local::default());
        if r.state != ResourceState::Offline {
            let reason = format!(
                "not running on {} yet (it just took the group over, or its agent started)",
                self.node
            );
            out.push(Action::Db(Command::RecordState {
                resource: name.to_string(),
                state: ResourceState::Offline,
                reason: reason.clone(),
                pid: None,
                node: Some(self.node.clone()),
            }));
            let entry = LogEntry::new(Component::RCM, reason)
                .group(&r.group, out.db.group_epoch(&r.group))
                .resource(name)
                .change(r.state, ResourceState::Offline);
            out.push(Action::Log(entry));
        }
    }

    fn bring_online(&mut self, out: &mut Out, r: &Resource, now: u64) {
        let Some(local) = self.resources.get(&r.name) else {
            return;
        };
        let ready = match local.state {
            ResourceState::Offline => true,
            ResourceState::Failed => local.next_try_ms.is_none_or(|t| now >= t),
            _ => false,
        };
        let providers_online = r
            .depends_on
            .iter()
            .all(|d| self.state(d) == ResourceState::Online);
        if ready && !providers_online {
            // Its time has come but its providers are not back yet: it now waits for them,
            // not for the clock (a timer in the past would wake the loop at once, forever).
            if let Some(l) = self.resources.get_mut(&r.name) {
                l.next_try_ms = None;
            }
            return;
        }
        if !ready {
            return;
        }
        let reason = match local.state {
            ResourceState::Failed if local.gave_up => "retrying after retry_period_on_failure_s",
            ResourceState::Failed => "restarting in place",
            _ => "desired state is Online",
        };
        let arriving = out
            .db
            .groups
            .get(&r.group)
            .and_then(|g| g.migration.as_ref())
            .filter(|m| m.from != self.node && m.resources.contains(&r.name))
            .map(|m| (m.from.clone(), m.quick))
            .filter(|_| {
                local.state == ResourceState::Offline
                    && matches!(local.leg, None | Some(Leg::Incoming(_)))
            });
        let local = self.resources.get_mut(&r.name).expect("checked above");
        if local.gave_up {
            local.history.reset();
            local.gave_up = false;
        }
        local.progress_ms = now;
        match arriving {
            Some((source, quick)) => {
                let how = if quick { "quick" } else { "live" };
                let reason = format!("completing the {how} migration from {source}");
                self.transition(out, &r.name, ResourceState::OnlinePending, &reason, None);
                self.set_leg(&r.name, Some(Leg::Receiving));
                out.push(Action::MigrateFrom {
                    resource: r.name.clone(),
                    source,
                    quick,
                });
            }
            None => {
                // A plain start replaces whatever was prepared for a migration.
                self.set_leg(&r.name, None);
                self.transition(out, &r.name, ResourceState::OnlinePending, reason, None);
                out.push(Action::Online {
                    resource: r.name.clone(),
                });
            }
        }
    }

    fn take_offline(
        &mut self,
        out: &mut Out,
        r: &Resource,
        members: &BTreeMap<&str, &Resource>,
        want: &BTreeMap<&str, bool>,
        now: u64,
    ) {
        let Some(local) = self.resources.get(&r.name) else {
            return;
        };
        let completing = out
            .db
            .groups
            .get(&r.group)
            .and_then(|g| g.migration.as_ref())
            .is_some_and(|m| m.from == self.node && m.resources.contains(&r.name));
        if matches!(local.leg, Some(Leg::Sent(_))) && completing {
            // The target is completing the migration: stop what is left here only after.
            return;
        }
        match local.state {
            // A pending Online is stopped too (the RHS takes the Offline after the call in
            // flight); waiting for it to finish could take until the pending timeout.
            ResourceState::Online | ResourceState::OnlinePending => {
                let dependents_stopped = members
                    .values()
                    .filter(|m| m.depends_on.contains(&r.name))
                    .all(|m| !self.state(&m.name).may_run());
                if dependents_stopped {
                    let reason = self.offline_reason(out.db, r, want);
                    let pid = local.pid;
                    self.resources
                        .get_mut(&r.name)
                        .expect("checked above")
                        .progress_ms = now;
                    self.transition(out, &r.name, ResourceState::OfflinePending, &reason, pid);
                    out.push(Action::Offline {
                        resource: r.name.clone(),
                    });
                }
            }
            // Failed and due, but not wanted yet (a provider is down): it now waits for the
            // provider, not for the clock; a timer in the past would wake the loop forever.
            ResourceState::Failed
                if r.persistent_state == PersistentState::Online
                    && local.next_try_ms.is_some_and(|t| t <= now) =>
            {
                if let Some(l) = self.resources.get_mut(&r.name) {
                    l.next_try_ms = None;
                }
            }
            ResourceState::Failed if r.persistent_state == PersistentState::Offline => {
                self.transition(
                    out,
                    &r.name,
                    ResourceState::Offline,
                    "desired state is Offline",
                    None,
                );
            }
            _ => {}
        }
    }

    fn offline_reason(
        &self,
        db: &ClusterState,
        r: &Resource,
        want: &BTreeMap<&str, bool>,
    ) -> String {
        let g = db.groups.get(&r.group);
        let owner = g.and_then(|g| g.owner.as_deref());
        if self.is_sent(&r.name) && owner != Some(self.node.as_str()) {
            format!(
                "migrated to {}: stopping what is left on {}",
                owner.unwrap_or("no node"),
                self.node
            )
        } else if owner != Some(self.node.as_str()) {
            format!(
                "group {} is now owned by {}",
                r.group,
                owner.unwrap_or("no node")
            )
        } else if self.recorded_down(db) {
            format!("{} is recorded Down", self.node)
        } else if let Some(why) = g.and_then(|g| match g.phase() {
            Phase::Moving(m) => Some(format!(
                "group {} is moving to {} ({} move)",
                r.group, m.to, m.kind
            )),
            Phase::Failed { .. } | Phase::FailoverRequested { .. } => {
                Some(format!("group {} failed", r.group))
            }
            Phase::Completing(_) | Phase::Placed => None,
        }) {
            why
        } else if self.is_held(db, &r.group) {
            format!("group {} failed", r.group)
        } else if r.persistent_state == PersistentState::Offline {
            "desired state is Offline".to_string()
        } else if self
            .resources
            .get(&r.name)
            .is_some_and(|l| l.stopped_out_of_band)
        {
            "stopped outside the cluster".to_string()
        } else {
            // Providers that are down, or on their way down (their own providers failed).
            let down: Vec<&str> = r
                .depends_on
                .iter()
                .filter(|d| {
                    self.state(d) != ResourceState::Online
                        || !want.get(d.as_str()).copied().unwrap_or(false)
                })
                .map(String::as_str)
                .collect();
            format!("dependency {} is not Online", down.join(", "))
        }
    }

    fn check_pending(&mut self, out: &mut Out, r: &Resource, now: u64) {
        let Some(local) = self.resources.get(&r.name) else {
            return;
        };
        let pending = matches!(
            local.state,
            ResourceState::OnlinePending | ResourceState::OfflinePending
        );
        if !pending || now < local.progress_ms + r.props.pending_timeout_ms {
            return;
        }
        let reason = format!(
            "{} without progress for pending_timeout_ms={}; terminated",
            local.state, r.props.pending_timeout_ms
        );
        if local.state == ResourceState::OnlinePending {
            self.fail(out, &r.name, &reason, now, Found::BY_RCM);
        } else {
            out.push(Action::Terminate {
                resource: r.name.clone(),
            });
            self.transition(out, &r.name, ResourceState::Offline, &reason, None);
        }
    }
}

struct Out<'a> {
    actions: Vec<Action>,
    db: &'a ClusterState,
    /// The time of this step.
    now: u64,
}

impl Out<'_> {
    fn push(&mut self, a: Action) {
        self.actions.push(a);
    }
}

fn online_order(members: &BTreeMap<&str, &Resource>) -> Vec<String> {
    let graph: BTreeMap<&str, Vec<&str>> = members
        .iter()
        .map(|(n, r)| (*n, r.depends_on.iter().map(String::as_str).collect()))
        .collect();
    // `apply` refuses cycles, so this cannot fail; fall back to name order all the same.
    deps::online_order(&graph).unwrap_or_else(|_| members.keys().map(|n| n.to_string()).collect())
}
