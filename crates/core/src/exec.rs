//! Carrying out the core's decisions, once for every world. The agent, the simulator and
//! the RCM's tests each give a node's view of the world ([`RcmEnv`], [`NmEnv`]); what to do
//! with the [`Action`]s and [`NmAction`]s, in which order, and what follows when a call cannot
//! be made is decided here, so the simulator's seeds run the code the agent runs.

use std::collections::VecDeque;

use crate::command::Command;
use crate::event::{Component, LogEntry};
use crate::lease::NodeRecord;
use crate::model::ClusterState;
use crate::nm::{Heartbeat, HeartbeatReply, NmAction, NmInput, NodeManager, Replica};
use crate::rcm::{Action, Input, Rcm, Report};

/// Most RCM passes one input may cause (database changes and failed calls cause more).
pub const SETTLE_PASSES: usize = 4_096;

/// What every node's world gives its decisions: a clock and the cluster log.
pub trait Env {
    /// This node's millisecond clock (monotonic).
    fn now_ms(&self) -> u64;
    fn log(&mut self, entries: Vec<LogEntry>);
}

/// How a node's RCM acts on its world.
pub trait RcmEnv: Env {
    /// Runs `decide` on this node's RCM and its copy of the cluster database.
    fn with_rcm<R>(&mut self, decide: impl FnOnce(&mut Rcm, &ClusterState) -> R) -> R;
    /// Queues the RCM's records for the database, in the order given. `true` when the copy
    /// that [`RcmEnv::with_rcm`] reads shows them already (the RCM then gets another pass);
    /// the agent and the simulator see them later, once replicated and applied.
    fn write(&mut self, cmds: Vec<Command>) -> bool;
    /// Makes one call into the RHS: any action but [`Action::Db`] and [`Action::Log`].
    /// `Err(reason)` when it could not be made; the RCM then hears why ([`refused`]).
    fn call(&mut self, call: Action) -> Result<(), String>;
    /// Sees every pass's actions, in the order the RCM made them, before they are carried
    /// out (a trace; tests look at it).
    fn decided(&mut self, _actions: &[Action]) {}
}

/// Feeds one input to the RCM and carries out what it decides, then what follows from that:
/// another pass when the database changed, and the report of a call that could not be made.
/// Each pass carries out the database's records first (a call's report can only come after
/// them), then the calls in the order the RCM made them, then the log.
/// Bounded by [`SETTLE_PASSES`]; returns how many inputs were left (0 unless the RCM did not
/// settle, which is not expected: its timeouts heal what was left undone, and the cluster log
/// says so).
pub fn settle(env: &mut impl RcmEnv, input: Input) -> usize {
    let mut inputs = VecDeque::from([input]);
    for _ in 0..SETTLE_PASSES {
        let Some(input) = inputs.pop_front() else {
            return 0;
        };
        let now = env.now_ms();
        let actions = env.with_rcm(|rcm, state| rcm.step(state, input, now));
        env.decided(&actions);
        let (mut cmds, mut logs, mut calls) = (Vec::new(), Vec::new(), Vec::new());
        for a in actions {
            match a {
                Action::Db(c) => cmds.push(c),
                Action::Log(entry) => logs.push(entry),
                call => calls.push(call),
            }
        }
        let changed = !cmds.is_empty() && env.write(cmds);
        for call in calls {
            let stands_for = refusal(&call).map(|(r, report)| (r.to_string(), report));
            if let (Err(reason), Some((resource, report))) = (env.call(call), stands_for) {
                inputs.push_back(refused(resource, report, reason));
            }
        }
        if !logs.is_empty() {
            env.log(logs);
        }
        if changed && inputs.is_empty() {
            inputs.push_back(Input::Tick);
        }
    }
    let left = inputs.len();
    if left > 0 {
        env.log(vec![LogEntry::new(
            Component::RCM,
            format!("did not settle within {SETTLE_PASSES} passes; {left} inputs dropped"),
        )]);
    }
    left
}

/// What the RCM hears when a call could not be made: the report it would otherwise wait for.
/// It names no instance (`ended: false`), so the RCM ends whatever may run.
fn refused(resource: String, report: Report, reason: String) -> Input {
    Input::Report {
        resource,
        report,
        reason,
        pid: None,
        ended: false,
    }
}

/// The resource `call` is about and the report that stands for it when it cannot be made: a
/// start that cannot be made failed, a stop of what does not run is done, a migration that
/// cannot begin failed. Terminate and Close need no answer.
fn refusal(call: &Action) -> Option<(&str, Report)> {
    match call {
        Action::Online { resource } | Action::MigrateFrom { resource, .. } => {
            Some((resource, Report::Failed))
        }
        Action::Offline { resource } => Some((resource, Report::Offline)),
        Action::MigrateTo { resource, .. } | Action::MigratePrepare { resource, .. } => {
            Some((resource, Report::MigrateFailed))
        }
        Action::Terminate { .. } | Action::Close { .. } | Action::Db(_) | Action::Log(_) => None,
    }
}

/// How a node's Node Manager acts on its world.
pub trait NmEnv: Env {
    /// What this node observes of its Raft replica now.
    fn replica(&self) -> Replica;
    /// Runs `decide` on this node's Node Manager and its copy of the cluster database.
    fn with_nm<R>(&mut self, decide: impl FnOnce(&mut NodeManager, &ClusterState) -> R) -> R;
    /// Tells the RHS processes where the lease ends (`None`: no lease), on this node's clock.
    fn publish_lease(&mut self, until_ms: Option<u64>, now_ms: u64);
    /// Sends `heartbeat` to the leader `to`; its answer (or none within `timeout_ms`) comes
    /// back as [`NmInput::Answered`] with `sent_ms`.
    fn send_heartbeat(&mut self, to: String, heartbeat: Heartbeat, sent_ms: u64, timeout_ms: u64);
    /// Writes `cmd`, the record of a node's state, and logs `record.reason` once it is
    /// written; [`NmInput::Written`] follows either way. `false`: refused at once (this node
    /// cannot propose), and the caller reports it written.
    fn record(&mut self, cmd: Command, record: NodeRecord) -> bool;
}

/// What one Node Manager input led to, for the caller to pass on.
#[derive(Debug, Default)]
pub struct NmOutcome {
    /// What the RCM must hear (fencing changes).
    pub rcm: Vec<Input>,
    /// The answer to an [`NmInput::Heartbeat`].
    pub reply: Option<Result<HeartbeatReply, String>>,
}

/// Feeds one input to the Node Manager. It decides, and its actions are carried out. At a
/// tick, the lease's end is published before anything else happens (an RHS still fenced by
/// the last lease would refuse what a re-leased RCM starts). Only ticks publish: the agent
/// feeds answers and heartbeats from other tasks, and a value one of those read before a
/// tick could land after the tick's own, putting back a lease the tick had just ended (or
/// ending one it had just granted). The tick loop is one task, so its values land in order.
pub fn nm_step(env: &mut impl NmEnv, input: NmInput) -> NmOutcome {
    let replica = env.replica();
    let now = env.now_ms();
    let tick = input == NmInput::Tick;
    let (actions, until) = env.with_nm(|nm, state| {
        let actions = nm.step(&replica, state, input, now);
        (actions, nm.lease_until_ms(now))
    });
    if tick {
        env.publish_lease(until, now);
    }
    let mut out = NmOutcome::default();
    for action in actions {
        match action {
            NmAction::Send {
                to,
                heartbeat,
                sent_ms,
                timeout_ms,
            } => env.send_heartbeat(to, heartbeat, sent_ms, timeout_ms),
            NmAction::Record(record) => {
                let cmd = match record.back_from {
                    Some(stopped_incarnation) => Command::NodeBack {
                        name: record.node.clone(),
                        stopped_incarnation,
                    },
                    None => Command::SetNodeState {
                        name: record.node.clone(),
                        state: record.state,
                    },
                };
                let node = record.node.clone();
                if !env.record(cmd, record) {
                    let written = NmInput::Written { node };
                    env.with_nm(|nm, state| nm.step(&replica, state, written, now));
                }
            }
            NmAction::Fence { fenced, reason } => out.rcm.push(Input::Fence { fenced, reason }),
            NmAction::Reply(reply) => out.reply = Some(reply),
            NmAction::Log(entry) => env.log(vec![entry]),
        }
    }
    out
}
