//! The Failover Manager: where groups go. It runs on the Raft leader as a pure function of
//! the cluster database and the leader's clock, [`plan`], which returns database commands:
//!
//! - a group whose owner is Down (its lease has surely expired, so nothing of it runs there)
//!   gets a new owner at once;
//! - a group whose owner's RCM used up a resource's restarts (`failover_request`) is handed
//!   over: the owner stops it, in reverse dependency order, then writes the new owner;
//! - `failover_threshold` failovers within `failover_period_s` leave the group Failed until
//!   `retry_period_on_failure_s` has passed;
//! - draining nodes have their groups moved off, one priority class at a time;
//! - `auto_failback` moves a group back to a more preferred owner that is Up again.
//!
//! Everything it needs is in the database (failover history, retry times, moves in
//! progress), so a new leader carries on where the old one stopped. The caller applies each
//! plan before asking for the next one, so nothing is decided twice.

use std::borrow::Cow;
use std::collections::BTreeSet;

use crate::command::{Command, Target, apply};
use crate::event::{Component, LogEntry};
use crate::model::{
    ClusterState, FailoverRecord, Group, GroupState, MoveKind, NodeState, PersistentState, Phase,
    ResourceState, group_state,
};
use crate::props::{Failback, GroupProps, Priority};

/// What the failover manager decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub commands: Vec<Command>,
    pub log: Vec<LogEntry>,
    /// When to plan again if nothing else changes (a retry, a failback window).
    pub wake_at_ms: Option<u64>,
    /// A group's owner is recorded Down, but this leader's own lease arithmetic does not yet
    /// confirm it: plan again at the next lease check.
    pub awaiting_leases: bool,
}

/// The failover manager's decisions for the database `db` at `now_ms` (Unix ms).
/// `lease_gone` names the nodes whose groups the current leader may give away without a
/// handover: Down ones that, by its own clock, surely hold no lease
/// ([`crate::nm::NodeManager::surely_down`]), and Stopped or Frozen ones whose clean stop it
/// vouches for ([`crate::nm::NodeManager::stop_vouched`]).
pub fn plan(db: &ClusterState, now_ms: u64, lease_gone: &BTreeSet<String>) -> Plan {
    let mut p = Planner {
        s: Cow::Borrowed(db),
        now: now_ms,
        lease_gone,
        plan: Plan::default(),
    };
    // Most groups need nothing: find those that might without cloning anything.
    let candidates = db.groups.values().filter(|g| needs_attention(db, g));
    for name in by_priority(db, candidates.map(|g| &g.name)) {
        p.group(&name);
    }
    let draining: Vec<String> = db
        .nodes
        .values()
        .filter(|n| n.draining)
        .map(|n| n.name.clone())
        .collect();
    for node in draining {
        p.drain(&node);
    }
    p.plan
}

/// Whether the failover manager may have something to do for `g`.
fn needs_attention(db: &ClusterState, g: &Group) -> bool {
    let owner_can_run = g
        .owner
        .as_ref()
        .and_then(|o| db.nodes.get(o))
        .is_some_and(|n| !matches!(n.state, NodeState::Down | NodeState::Stopped) && !n.witness);
    let under_way = match g.phase() {
        Phase::Failed { .. } | Phase::FailoverRequested { .. } | Phase::Moving(_) => true,
        Phase::Completing(_) | Phase::Placed => false,
    };
    !owner_can_run || under_way || g.props.auto_failback != Failback::Never
}

/// Group names in placement order: priority, then name.
pub fn by_priority<'a>(
    db: &ClusterState,
    groups: impl IntoIterator<Item = &'a String>,
) -> Vec<String> {
    let mut v: Vec<(Priority, &String)> = groups
        .into_iter()
        .filter_map(|g| db.groups.get(g).map(|x| (x.props.priority, g)))
        .collect();
    v.sort();
    v.into_iter().map(|(_, g)| g.clone()).collect()
}

/// The node `group` should go to when it leaves `leaving`: among the Up, unpaused possible
/// owners it has not failed on within `failover_period_s`, first those that host no group of
/// its anti-affinity class, then its preferred owners in order, then the node with the fewest
/// groups. `None` when no node can take it.
pub fn choose_target(
    state: &ClusterState,
    group: &str,
    leaving: Option<&str>,
    planned: bool,
    now_ms: u64,
) -> Option<String> {
    let g = state.groups.get(group)?;
    let failed_on = failed_on(g, now_ms);
    state
        .nodes
        .values()
        .filter(|n| Some(n.name.as_str()) != leaving && n.can_take_groups())
        // A planned move does not go where a planned move of the group failed.
        .filter(|n| !planned || !g.failed_moves.iter().any(|f| f.to == n.name))
        .filter(|n| g.may_run_on(&n.name) && !failed_on.contains(n.name.as_str()))
        .min_by_key(|n| {
            let preferred = g
                .props
                .preferred_owners
                .iter()
                .position(|p| p == &n.name)
                .unwrap_or(usize::MAX);
            (
                conflicts(state, g, &n.name),
                preferred,
                load(state, g, &n.name),
                n.name.clone(),
            )
        })
        .map(|n| n.name.clone())
}

/// The owner of a new group: its first preferred owner that can take it, otherwise the node
/// that took the request, otherwise any Up node that is not a witness; always one of its
/// possible owners.
pub fn initial_owner(state: &ClusterState, props: &GroupProps, asked: &str) -> Option<String> {
    let can_host = |n: &str| {
        state.nodes.get(n).is_some_and(|n| n.can_take_groups())
            && (props.possible_owners.is_empty() || props.possible_owners.iter().any(|p| p == n))
    };
    props
        .preferred_owners
        .iter()
        .map(String::as_str)
        .chain([asked])
        .chain(state.nodes.keys().map(String::as_str))
        .find(|n| can_host(n))
        .map(str::to_string)
}

/// Nodes the group failed on (not merely left because they died) within the period.
fn failed_on(g: &Group, now: u64) -> BTreeSet<&str> {
    let period = g.props.failover_period_s.saturating_mul(1_000);
    g.failovers
        .iter()
        .filter(|f| !f.node_down && f.at_ms.saturating_add(period) > now)
        .map(|f| f.node.as_str())
        .collect()
}

/// Groups on `node` (or on their way to it) other than `g`.
fn hosted<'a>(
    state: &'a ClusterState,
    g: &'a Group,
    node: &'a str,
) -> impl Iterator<Item = &'a Group> + 'a {
    state.groups.values().filter(move |o| {
        o.name != g.name
            && match o.moving() {
                Some(m) => m.to == node,
                None => o.owner.as_deref() == Some(node),
            }
    })
}

fn load(state: &ClusterState, g: &Group, node: &str) -> usize {
    hosted(state, g, node).count()
}

fn conflicts(state: &ClusterState, g: &Group, node: &str) -> bool {
    g.props.anti_affinity_class.as_ref().is_some_and(|class| {
        hosted(state, g, node).any(|o| o.props.anti_affinity_class.as_ref() == Some(class))
    })
}

struct Planner<'a> {
    /// The database with this plan's commands applied so far.
    s: Cow<'a, ClusterState>,
    now: u64,
    lease_gone: &'a BTreeSet<String>,
    plan: Plan,
}

impl Planner<'_> {
    fn emit(&mut self, cmd: Command) {
        // Planned from this very state, so it applies: a refusal is a planner bug. Debug
        // builds stop on it; a release build leaves the command out (keeping the plan
        // consistent with the state) and says so in the cluster log.
        match apply(self.s.to_mut(), &cmd) {
            Ok(()) => self.plan.commands.push(cmd),
            Err(e) => {
                debug_assert!(false, "the planner emitted {cmd:?}, refused: {e}");
                self.plan.log.push(LogEntry::new(
                    Component::FM,
                    format!(
                        "planner error (please report it): {cmd:?} was refused and left out: {e}"
                    ),
                ));
            }
        }
    }

    fn log(&mut self, group: &str, entry: LogEntry) {
        let epoch = self.s.group_epoch(group);
        self.plan.log.push(entry.group(group, epoch));
    }

    fn wake(&mut self, at: u64) {
        self.plan.wake_at_ms = Some(self.plan.wake_at_ms.map_or(at, |w| w.min(at)));
    }

    fn group(&mut self, name: &str) {
        let Some(g) = self.s.groups.get(name).cloned() else {
            return;
        };
        match g.phase() {
            Phase::Failed { retry_at_ms, .. } => return self.retry(&g, retry_at_ms),
            Phase::FailoverRequested { .. }
            | Phase::Moving(_)
            | Phase::Completing(_)
            | Phase::Placed => {}
        }
        let owner_node = g.owner.as_ref().and_then(|o| self.s.nodes.get(o));
        match owner_node {
            None => {
                let reason = match &g.owner {
                    Some(o) => format!("owner {o} is gone"),
                    None => "the group has no owner".to_string(),
                };
                return self.fail_over(&g, true, &reason);
            }
            Some(n) if n.state == NodeState::Down => {
                if !self.lease_gone.contains(&n.name) {
                    // Recorded Down (perhaps by an earlier leader), but this leader cannot
                    // yet vouch that its lease is gone: wait.
                    self.plan.awaiting_leases = true;
                    return;
                }
                let reason = format!("owner {} is Down", n.name);
                return self.fail_over(&g, true, &reason);
            }
            // It ended every resource before it said so: no lease to wait for, once this
            // leader vouches for the stop (no later run of its agent heard from).
            Some(n) if n.state == NodeState::Stopped => {
                if !self.lease_gone.contains(&n.name) {
                    self.plan.awaiting_leases = true;
                    return;
                }
                let reason = format!("owner {} stopped cleanly", n.name);
                return self.fail_over(&g, true, &reason);
            }
            // Its groups wait for it; only an operator's move takes one away (it runs
            // nothing there, so there is nothing to hand over).
            Some(n) if n.state == NodeState::Frozen => {
                if let Phase::Moving(m) = g.phase()
                    && m.kind == MoveKind::Operator
                {
                    if !self.lease_gone.contains(&n.name) {
                        self.plan.awaiting_leases = true;
                        return;
                    }
                    let reason = format!("owner {} is Frozen (stopped cleanly)", n.name);
                    self.hand_over_frozen(&g, &m.to, &reason);
                }
                return;
            }
            Some(n) if n.witness => {
                let reason = format!("owner {} is a witness", n.name);
                return self.fail_over(&g, true, &reason);
            }
            Some(_) => {}
        }
        let m = match g.phase() {
            Phase::FailoverRequested { reason } => return self.fail_over(&g, false, reason),
            Phase::Moving(m) => m,
            Phase::Completing(_) | Phase::Placed => return self.failback(&g),
            Phase::Failed { .. } => unreachable!("returned above"),
        };
        // A live move may already have moved instances there: it is given up only when
        // its target is Down (they died with it), not when it is merely Paused, or the
        // source would recover what still runs on the target.
        let target = self.s.nodes.get(&m.to);
        let reachable = if m.live {
            target.is_some_and(|n| {
                !matches!(
                    n.state,
                    NodeState::Down | NodeState::Stopped | NodeState::Frozen
                ) && !n.witness
            })
        } else {
            target.is_some_and(|n| n.can_take_groups())
        };
        let usable = reachable && g.may_run_on(&m.to);
        if !usable {
            self.retarget(&g, &m.to, m.kind);
        }
    }

    /// A Failed group is tried again once its retry period has passed.
    fn retry(&mut self, g: &Group, retry_at_ms: Option<u64>) {
        match retry_at_ms {
            Some(t) if t <= self.now => {
                self.emit(Command::SetGroupFailure {
                    group: g.name.clone(),
                    failure: None,
                    retry_at_ms: None,
                });
                let reason = format!(
                    "retry_period_on_failure_s={} passed: trying the group again",
                    g.props.retry_period_on_failure_s
                );
                self.log(&g.name, LogEntry::new(Component::FM, reason));
            }
            Some(t) => self.wake(t),
            None => {}
        }
    }

    /// A handover's target can no longer take the group.
    fn retarget(&mut self, g: &Group, gone: &str, kind: MoveKind) {
        let state = self
            .s
            .nodes
            .get(gone)
            .map_or("gone".to_string(), |n| n.state.to_string());
        let next = match kind {
            MoveKind::Failover | MoveKind::Drain => choose_target(
                &self.s,
                &g.name,
                g.owner.as_deref(),
                kind == MoveKind::Drain,
                self.now,
            ),
            MoveKind::Operator | MoveKind::Failback => None,
        };
        let reason = match &next {
            Some(t) => {
                self.emit(Command::MoveGroup {
                    group: g.name.clone(),
                    to: t.clone(),
                    kind,
                    quick: false,
                });
                format!("{kind} move target {gone} is {state}: moving to {t} instead")
            }
            None if kind == MoveKind::Failover => {
                let retry = g.props.retry_period_on_failure_s;
                let failure = format!(
                    "failover target {gone} is {state} and no other node can host the group: Failed, retry in {retry} s"
                );
                self.fail(g, failure);
                return;
            }
            None => {
                self.emit(Command::CancelMove {
                    group: g.name.clone(),
                    failed: None,
                });
                format!("{kind} move to {gone} abandoned: {gone} is {state}")
            }
        };
        self.log(&g.name, LogEntry::new(Component::FM, reason));
    }

    /// Records the group's resources Offline: its owner is Down, so nothing of it runs.
    fn mark_stopped(&mut self, g: &Group, reason: &str) {
        let running: Vec<String> = self
            .s
            .group_resources(&g.name)
            .filter(|r| r.state.may_run())
            .map(|r| r.name.clone())
            .collect();
        for resource in running {
            self.emit(Command::RecordState {
                resource,
                state: ResourceState::Offline,
                reason: format!("{reason}: not running"),
                pid: None,
                node: None,
            });
        }
    }

    /// Leaves the group Failed until its retry period has passed.
    fn fail(&mut self, g: &Group, failure: String) {
        let retry_at = self.now + g.props.retry_period_on_failure_s.saturating_mul(1_000);
        self.emit(Command::SetGroupFailure {
            group: g.name.clone(),
            failure: Some(failure.clone()),
            retry_at_ms: Some(retry_at),
        });
        // Whatever the phase said, no move outlives the failure.
        if g.moving.is_some() {
            self.emit(Command::CancelMove {
                group: g.name.clone(),
                failed: None,
            });
        }
        self.wake(retry_at);
        self.log(&g.name, LogEntry::new(Component::FM, failure));
    }

    /// An operator's move of a group whose owner is Frozen: nothing of it runs there, so the
    /// target takes it at once (as a failover that counts none), if it still can.
    fn hand_over_frozen(&mut self, g: &Group, to: &str, reason: &str) {
        if !self.s.nodes.get(to).is_some_and(|n| n.can_take_groups()) || !g.may_run_on(to) {
            return self.retarget(g, to, MoveKind::Operator);
        }
        self.emit(Command::FailOver {
            group: g.name.clone(),
            from: g.owner.clone(),
            to: to.to_string(),
            reason: reason.to_string(),
            at_ms: self.now,
            left_offline: false,
        });
        let from = g.owner.clone().unwrap_or_default();
        let what = format!("{reason}: the operator's move to {to} takes it there at once");
        self.log(&g.name, LogEntry::new(Component::FM, what).change(from, to));
    }

    /// The group cannot stay with its owner: the owner died (`node_down`), stopped cleanly,
    /// or used up a resource's restarts.
    fn fail_over(&mut self, g: &Group, node_down: bool, reason: &str) {
        let period_ms = g.props.failover_period_s.saturating_mul(1_000);
        let recent = g
            .failovers
            .iter()
            .filter(|f| f.at_ms.saturating_add(period_ms) > self.now)
            .count();
        let hosts = self.s.nodes.values().filter(|n| !n.witness).count();
        let threshold = g
            .props
            .failover_threshold
            .map_or(hosts.saturating_sub(1), |t| t as usize);
        // A clean stop is no failure, and counts toward no threshold.
        let clean = g
            .owner
            .as_ref()
            .and_then(|o| self.s.nodes.get(o))
            .is_some_and(|n| n.state.stopped_cleanly());
        let retry = g.props.retry_period_on_failure_s;
        let from = g.owner.clone();
        // An owner gone in the middle of a live move may have sent resources to its target
        // already: they run there, so the group goes there too (anywhere else would start a
        // second copy of them), unless the target ended them (Down or stopped).
        let live_target = g
            .moving
            .as_ref()
            .filter(|m| node_down && m.live)
            .filter(|m| {
                self.s.nodes.get(&m.to).is_some_and(|n| {
                    !n.witness
                        && !matches!(
                            n.state,
                            NodeState::Down | NodeState::Stopped | NodeState::Frozen
                        )
                }) && g.may_run_on(&m.to)
            })
            .map(|m| m.to.clone());
        // (Its instances there would be left behind by a Failed group: no threshold then.)
        let arrived = live_target.is_some();
        let target = live_target
            .or_else(|| choose_target(&self.s, &g.name, from.as_deref(), false, self.now));
        if target.is_none() && clean {
            // Nowhere else to go: it waits for its stopped owner (recorded Offline there by
            // the stop), rather than being Failed for a stop that was no failure.
            return;
        }
        let stuck = match &target {
            None => Some(format!(
                "{reason}; no other node can host the group: Failed, retry in {retry} s"
            )),
            Some(_) if recent >= threshold && !clean && !arrived => Some(format!(
                "{reason}; failover_threshold={threshold} reached ({recent} failovers within failover_period_s={}): Failed, retry in {retry} s",
                g.props.failover_period_s
            )),
            Some(_) => None,
        };
        if let Some(failure) = stuck {
            if node_down {
                // Nothing runs on a Down node: say so, rather than keep its last records.
                self.mark_stopped(g, reason);
            }
            return self.fail(g, failure);
        }
        let target = target.expect("checked above");
        let mut what = format!("{reason}: failing over to {target}");
        let left_offline = g.props.priority == Priority::NoAutoStart;
        if left_offline {
            what.push_str(" (priority no_auto_start: left offline there)");
        }
        if node_down {
            // One command, refused if the owner is recorded Up again before it is applied.
            self.emit(Command::FailOver {
                group: g.name.clone(),
                from: from.clone(),
                to: target.clone(),
                reason: reason.to_string(),
                at_ms: self.now,
                left_offline,
            });
        } else {
            if let Some(node) = &from {
                self.emit(Command::RecordFailover {
                    group: g.name.clone(),
                    record: FailoverRecord {
                        node: node.clone(),
                        at_ms: self.now,
                        node_down,
                    },
                });
            }
            if left_offline {
                self.emit(Command::SetPersistentState {
                    target: Target::Group(g.name.clone()),
                    state: PersistentState::Offline,
                });
            }
            self.emit(Command::MoveGroup {
                group: g.name.clone(),
                to: target.clone(),
                kind: MoveKind::Failover,
                quick: false,
            });
            what.push_str(" once it has stopped here");
        }
        let from = from.unwrap_or_else(|| "none".to_string());
        self.log(
            &g.name,
            LogEntry::new(Component::FM, what).change(from, &target),
        );
    }

    /// `auto_failback`: back to a more preferred owner that can take the group, once the
    /// group is Online where it is (and only within the failback window).
    fn failback(&mut self, g: &Group) {
        // An operator put it where it is: that is not a failover to undo.
        if g.props.auto_failback == Failback::Never || g.drained_from.is_some() || g.operator_placed
        {
            return;
        }
        let Some(owner) = &g.owner else {
            return;
        };
        if self.s.nodes.get(owner).is_some_and(|n| n.draining)
            || group_state(&self.s, g) != GroupState::Online
        {
            return;
        }
        let rank = |n: &str| g.props.preferred_owners.iter().position(|p| p == n);
        let owner_rank = rank(owner).unwrap_or(usize::MAX);
        let failed_on = failed_on(g, self.now);
        let best = g
            .props
            .preferred_owners
            .iter()
            .take(owner_rank)
            .find(|n| {
                self.s.nodes.get(*n).is_some_and(|n| n.can_take_groups())
                    && g.may_run_on(n)
                    && !failed_on.contains(n.as_str())
                    && !g.failed_moves.iter().any(|f| &f.to == *n)
            })
            .cloned();
        let Some(best) = best else {
            return;
        };
        if !g.props.auto_failback.allows(self.now) {
            if let Some(t) = g.props.auto_failback.next_allowed(self.now) {
                self.wake(t);
            }
            return;
        }
        self.emit(Command::MoveGroup {
            group: g.name.clone(),
            to: best.clone(),
            kind: MoveKind::Failback,
            quick: false,
        });
        let reason = format!(
            "auto_failback={}: moving back to preferred owner {best}",
            g.props.auto_failback
        );
        self.log(
            &g.name,
            LogEntry::new(Component::FM, reason).change(owner, &best),
        );
    }

    /// One wave of a drain: the highest priority class among the node's groups that can go
    /// somewhere moves; the next waits until it has arrived (handed over, no longer
    /// pending). Ends when nothing more can move.
    fn drain(&mut self, node: &str) {
        let owned: Vec<&String> = self
            .s
            .groups
            .values()
            .filter(|g| g.owner.as_deref() == Some(node))
            .map(|g| &g.name)
            .collect();
        // The previous wave must have arrived: handed over and settled on its new owner.
        let arriving = self.s.groups.values().any(|g| {
            g.drained_from.as_deref() == Some(node)
                && g.owner.as_deref() != Some(node)
                && !crate::model::settled(&self.s, &g.name)
        });
        if arriving || owned.iter().any(|g| self.s.groups[*g].moving().is_some()) {
            return;
        }
        let owned = by_priority(&self.s, owned);
        let mut wave: Option<Priority> = None;
        let mut stuck = Vec::new();
        for name in &owned {
            let priority = self.s.groups[name].props.priority;
            if wave.is_some_and(|w| w != priority) {
                break;
            }
            match choose_target(&self.s, name, Some(node), true, self.now) {
                Some(target) => {
                    wave = Some(priority);
                    self.emit(Command::MoveGroup {
                        group: name.clone(),
                        to: target.clone(),
                        kind: MoveKind::Drain,
                        quick: false,
                    });
                    let reason = format!("draining {node}: moving to {target}");
                    self.log(
                        name,
                        LogEntry::new(Component::FM, reason).change(node, &target),
                    );
                }
                None => stuck.push(name.as_str()),
            }
        }
        if wave.is_some() {
            return;
        }
        self.emit(Command::SetDraining {
            name: node.to_string(),
            draining: false,
        });
        let reason = if stuck.is_empty() {
            format!("drain of {node} complete: it hosts no groups; it stays Paused")
        } else {
            format!(
                "drain of {node} stopped: no node can take {}; it stays Paused",
                stuck.join(", ")
            )
        };
        self.plan.log.push(LogEntry::new(Component::FM, reason));
    }
}
