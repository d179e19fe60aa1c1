//! Operators' intents: what an operator's request turns into, and when it has been carried
//! out. The API and the simulator both call these, so a seed's move or desired-state change
//! is decided as the API decides it.

use std::collections::BTreeMap;

use crate::command::{ApplyError, Command, Target};
use crate::event::{Component, LogEntry};
use crate::failover;
use crate::model::{self, ClusterState, MoveKind, PersistentState, Phase};

/// An operator's move, ready to write: where from, where to, the command and its log entry.
#[derive(Clone, Debug)]
pub struct OperatorMove {
    pub from: String,
    pub to: String,
    pub cmd: Command,
    pub log: LogEntry,
}

/// `vigil group move GROUP [--to NODE]`. Without a target, the node the failover manager
/// would choose for a planned move (`now_unix_ms` dates its memory of failed moves).
pub fn move_group(
    state: &ClusterState,
    group: &str,
    to: Option<&str>,
    quick: bool,
    now_unix_ms: u64,
) -> Result<OperatorMove, ApplyError> {
    let g = state
        .groups
        .get(group)
        .ok_or_else(|| ApplyError::NotFound {
            kind: "group".into(),
            name: group.to_string(),
        })?;
    let from = g.owner.clone().unwrap_or_default();
    let to = match to {
        Some(to) => to.to_string(),
        None => failover::choose_target(state, group, Some(&from), true, now_unix_ms).ok_or_else(
            || {
                ApplyError::Conflict(format!(
                    "no other node can take group {group:?} (none is Up, unpaused and a possible owner)"
                ))
            },
        )?,
    };
    let log = LogEntry::new(Component::FM, format!("operator moves the group to {to}"))
        .group(group, g.epoch)
        .change(&from, &to);
    let cmd = Command::MoveGroup {
        group: group.to_string(),
        to: to.clone(),
        kind: MoveKind::Operator,
        quick,
    };
    Ok(OperatorMove { from, to, cmd, log })
}

/// A move of `group` to `target` is over: it arrived and came to rest, or it went elsewhere
/// (refused, failed, or moved again). A migration is over when the target has completed it,
/// not at the cutover. A deleted group's move is over too.
pub fn move_settled(state: &ClusterState, group: &str, target: &str) -> bool {
    state.groups.get(group).is_none_or(|g| match g.phase() {
        // The failover manager has yet to answer the request (a failover ends the move).
        Phase::Moving(_) | Phase::Completing(_) | Phase::FailoverRequested { .. } => false,
        Phase::Failed { .. } => true,
        Phase::Placed => g.owner.as_deref() != Some(target) || model::settled(state, group),
    })
}

/// Once settled: `Ok` if the group is on `target`, else why not (the failed move's reason,
/// when the failover manager recorded one).
pub fn move_outcome(state: &ClusterState, group: &str, target: &str) -> Result<(), String> {
    let g = state.groups.get(group);
    let owner = g.and_then(|g| g.owner.as_deref());
    if owner == Some(target) {
        return Ok(());
    }
    let why = g
        .and_then(|g| g.failed_moves.iter().find(|f| f.to == target))
        .map_or(String::new(), |f| format!(" ({})", f.reason));
    Err(format!(
        "group {group:?} did not move to {target}{why}: owner is {} (see `vigil log --group {group}`)",
        owner.unwrap_or("none")
    ))
}

/// A drain of `node` has ended: the node is no longer draining (the failover manager clears
/// it once nothing is left to move) and no group drained from it is still moving.
pub fn drain_settled(state: &ClusterState, node: &str) -> bool {
    state.nodes.get(node).is_none_or(|n| !n.draining)
        && !state
            .groups
            .values()
            .any(|g| g.moving().is_some() && g.drained_from.as_deref() == Some(node))
}

/// The groups on `node`, by name.
pub fn groups_on(state: &ClusterState, node: &str) -> Vec<String> {
    state
        .groups
        .values()
        .filter(|g| g.owner.as_deref() == Some(node))
        .map(|g| g.name.clone())
        .collect()
}

/// The groups a resume of `node` with failback moves back to it: those drained from it.
pub fn failback_groups(state: &ClusterState, node: &str) -> Vec<String> {
    state
        .groups
        .values()
        .filter(|g| g.drained_from.as_deref() == Some(node))
        .map(|g| g.name.clone())
        .collect()
}

/// None of `groups` is moving any more (a deleted one is not).
pub fn moves_settled(state: &ClusterState, groups: &[String]) -> bool {
    groups
        .iter()
        .all(|g| state.groups.get(g).is_none_or(|g| g.moving().is_none()))
}

/// Nothing of `target` may run any more (see `ResourceState::may_run`): a delete may go on.
pub fn stopped(state: &ClusterState, target: &Target) -> bool {
    match target {
        Target::Group(g) => !state.group_resources(g).any(|r| r.state.may_run()),
        Target::Resource(r) => state.resources.get(r).is_none_or(|r| !r.state.may_run()),
    }
}

/// An operator's desired-state change: its command, its log entry, and what it touches.
pub fn set_desired(
    state: &ClusterState,
    target: Target,
    desired: PersistentState,
) -> (Command, LogEntry, Touch) {
    let group = match &target {
        Target::Group(g) => Some(g.clone()),
        Target::Resource(r) => state.resources.get(r).map(|r| r.group.clone()),
    };
    let mut log = LogEntry::new(
        Component::DB,
        format!("operator set desired state to {desired}"),
    );
    if let Some(g) = &group {
        log = log.group(g, state.group_epoch(g));
    }
    let named = match &target {
        Target::Group(g) => state.group_resources(g).map(|r| r.name.clone()).collect(),
        Target::Resource(r) => {
            log = log.resource(r);
            vec![r.clone()]
        }
    };
    let touch = Touch {
        before: persistent_states(state),
        named,
    };
    let cmd = Command::SetPersistentState {
        target,
        state: desired,
    };
    (cmd, log, touch)
}

/// The resources a desired-state change touches, whose past failures the RCM forgets: the
/// ones it names, and every provider or dependent the change spread to. Known only once the
/// change is applied ([`Touch::resources`]).
#[derive(Clone, Debug)]
pub struct Touch {
    before: BTreeMap<String, PersistentState>,
    named: Vec<String>,
}

impl Touch {
    /// What the change touched, given the state once it is applied.
    pub fn resources(mut self, after: &ClusterState) -> Vec<String> {
        let spread = after
            .resources
            .values()
            .filter(|r| self.before.get(&r.name) != Some(&r.persistent_state))
            .map(|r| r.name.clone())
            .filter(|r| !self.named.contains(r))
            .collect::<Vec<_>>();
        self.named.extend(spread);
        self.named
    }
}

fn persistent_states(state: &ClusterState) -> BTreeMap<String, PersistentState> {
    state
        .resources
        .values()
        .map(|r| (r.name.clone(), r.persistent_state))
        .collect()
}
