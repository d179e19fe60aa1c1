//! The failover manager's plan (`failover::plan`): cases the simulator's scenarios do not
//! pin down by themselves.

use std::collections::BTreeSet;

use vigil_core::command::{Command, Target, apply};
use vigil_core::failover::plan;
use vigil_core::intent;
use vigil_core::model::{
    ClusterState, MoveKind, NodeState, PersistentState, Phase, ResourceSpec, ResourceState,
    ShutdownPolicy,
};
use vigil_core::props::{Failback, GroupProps, ResourceProps};

fn ok(s: &mut ClusterState, cmd: Command) {
    apply(s, &cmd).unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
}

/// n1, n2; group g (preferred n1, n2; failback immediate) owned by n1 with one resource
/// desired Online.
fn cluster() -> ClusterState {
    let mut s = ClusterState::default();
    for n in ["n1", "n2"] {
        let address = format!("{n}:7000");
        ok(
            &mut s,
            Command::AddNode {
                name: n.into(),
                address,
            },
        );
    }
    let props = GroupProps {
        preferred_owners: vec!["n1".into(), "n2".into()],
        auto_failback: Failback::Immediate,
        ..GroupProps::default()
    };
    ok(
        &mut s,
        Command::CreateGroup {
            name: "g".into(),
            props,
            owner: Some("n1".into()),
        },
    );
    let spec = ResourceSpec {
        name: "a".into(),
        group: "g".into(),
        type_name: "process".into(),
        params: Default::default(),
        props: ResourceProps::default(),
        depends_on: vec![],
        migratable: false,
        unique: vec![],
        secret: Vec::new(),
    };
    ok(&mut s, Command::CreateResource { spec });
    ok(
        &mut s,
        Command::SetPersistentState {
            target: Target::Group("g".into()),
            state: PersistentState::Online,
        },
    );
    s
}

fn online_on(s: &mut ClusterState, node: &str) {
    ok(
        s,
        Command::RecordState {
            resource: "a".into(),
            state: vigil_core::model::ResourceState::Online,
            reason: "started".into(),
            pid: Some(7),
            node: Some(node.into()),
        },
    );
}

#[test]
fn a_down_owner_loses_its_groups_only_once_this_leader_vouches_its_lease_is_gone() {
    let mut s = cluster();
    ok(
        &mut s,
        Command::SetNodeState {
            name: "n1".into(),
            state: NodeState::Down,
        },
    );
    // Recorded Down (say, by an earlier leader), but this leader's clock does not confirm it.
    let waiting = plan(&s, 0, &BTreeSet::new());
    assert!(waiting.commands.is_empty(), "{:?}", waiting.commands);
    assert!(waiting.awaiting_leases);
    let gone: BTreeSet<String> = ["n1".to_string()].into();
    let p = plan(&s, 0, &gone);
    assert!(
        matches!(&p.commands[..], [Command::FailOver { from: Some(f), to, .. }] if f == "n1" && to == "n2"),
        "{:?}",
        p.commands
    );
}

#[test]
fn an_operators_move_is_not_failed_back() {
    let mut s = cluster();
    online_on(&mut s, "n1");
    ok(
        &mut s,
        Command::MoveGroup {
            group: "g".into(),
            to: "n2".into(),
            kind: MoveKind::Operator,
            quick: false,
        },
    );
    ok(
        &mut s,
        Command::SetOwner {
            group: "g".into(),
            node: "n2".into(),
        },
    );
    online_on(&mut s, "n2");
    let p = plan(&s, 0, &BTreeSet::new());
    assert!(p.commands.is_empty(), "failed back: {:?}", p.commands);
    // After a failover it is: n2 dies... and the group comes back to n1 once n1 is Up.
    ok(
        &mut s,
        Command::SetNodeState {
            name: "n2".into(),
            state: NodeState::Down,
        },
    );
    let gone: BTreeSet<String> = ["n2".to_string()].into();
    for cmd in plan(&s, 0, &gone).commands {
        ok(&mut s, cmd);
    }
    assert_eq!(s.groups["g"].owner.as_deref(), Some("n1"));
    assert!(!s.groups["g"].operator_placed);
}

/// A group's fields overlap (a move under way when its owner asks for a failover; a failure
/// while it completes a migration); its phase says which counts, and the planner, the
/// move's wait and status all go by it.
#[test]
fn a_failover_request_outranks_a_move_for_the_planner_the_wait_and_status() {
    let mut s = cluster();
    online_on(&mut s, "n1");
    ok(
        &mut s,
        Command::MoveGroup {
            group: "g".into(),
            to: "n2".into(),
            kind: MoveKind::Operator,
            quick: false,
        },
    );
    assert!(matches!(s.groups["g"].phase(), Phase::Moving(m) if m.to == "n2"));
    assert!(!intent::move_settled(&s, "g", "n2"));
    ok(
        &mut s,
        Command::RequestFailover {
            group: "g".into(),
            from: "n1".into(),
            reason: "restarts exhausted".into(),
        },
    );
    let g = &s.groups["g"];
    assert!(g.moving.is_some(), "the move's record stays until answered");
    assert_eq!(
        g.phase(),
        Phase::FailoverRequested {
            reason: "restarts exhausted"
        }
    );
    assert!(g.is_held());
    assert_eq!(g.moving(), None, "status shows no move under way");
    assert!(
        !intent::move_settled(&s, "g", "n2"),
        "the request is not answered yet"
    );
    assert!(intent::moves_settled(&s, &["g".to_string()]));
    // The planner answers the request, not the operator's move: a failover move (the owner
    // stops everything and hands over), which replaces it.
    let p = plan(&s, 0, &BTreeSet::new());
    assert!(
        matches!(&p.commands[..], [Command::RecordFailover { .. }, Command::MoveGroup { to, kind: MoveKind::Failover, .. }] if to == "n2"),
        "{:?}",
        p.commands
    );
    for cmd in p.commands {
        ok(&mut s, cmd);
    }
    assert!(
        matches!(s.groups["g"].phase(), Phase::Moving(m) if m.kind == MoveKind::Failover && !m.live)
    );
    assert_eq!(s.groups["g"].failover_request, None);
    // A failure outranks everything, and is where a move's wait ends.
    ok(
        &mut s,
        Command::SetGroupFailure {
            group: "g".into(),
            failure: Some("no node left".into()),
            retry_at_ms: Some(60_000),
        },
    );
    assert_eq!(
        s.groups["g"].phase(),
        Phase::Failed {
            reason: "no node left",
            retry_at_ms: Some(60_000)
        }
    );
    assert_eq!(
        s.groups["g"].phase().to_string(),
        "failed until 60000 (Unix ms): no node left"
    );
    assert!(intent::move_settled(&s, "g", "n1"));
}

/// The leader vouches for `node`'s stop (`NodeManager::stop_vouched`).
fn vouched(node: &str) -> BTreeSet<String> {
    [node.to_string()].into()
}

/// The leader heard another run of `node`'s agent than the stopped one (incarnation 7).
fn back(node: &str) -> Command {
    Command::NodeBack {
        name: node.into(),
        stopped_incarnation: 7,
    }
}

fn stopped(s: &mut ClusterState, node: &str, policy: ShutdownPolicy) {
    // Paused before the stop began: by an operator, not by the stop's own drain.
    let paused = s.nodes[node].state == NodeState::Paused && !s.nodes[node].draining;
    ok(
        s,
        Command::NodeStopped {
            name: node.into(),
            incarnation: 7,
            policy,
            paused,
        },
    );
}

/// Shutdown policy `failover`: the stopping node says so once its resources ended, and its
/// groups leave at once (no lease to wait for), recorded Offline, counting no failover; the
/// node comes back Up and, with `auto_failback`, takes its group back.
#[test]
fn a_clean_stop_moves_the_groups_at_once_and_counts_no_failover() {
    let mut s = cluster();
    online_on(&mut s, "n1");
    stopped(&mut s, "n1", ShutdownPolicy::Failover);
    assert_eq!(s.nodes["n1"].state, NodeState::Stopped);
    assert_eq!(s.resources["a"].state, ResourceState::Offline);
    assert!(
        s.resources["a"].state_reason.contains("stopped cleanly"),
        "{}",
        s.resources["a"].state_reason
    );
    // Not before this leader vouches for the stop (it heard no later run of n1's agent)...
    let waiting = plan(&s, 0, &BTreeSet::new());
    assert!(
        waiting.commands.is_empty() && waiting.awaiting_leases,
        "{waiting:?}"
    );
    // ...then at once: no lease to wait for, the node ended everything itself.
    let p = plan(&s, 0, &vouched("n1"));
    assert!(
        matches!(&p.commands[..], [Command::FailOver { from: Some(f), to, .. }] if f == "n1" && to == "n2"),
        "{:?}",
        p.commands
    );
    for cmd in p.commands {
        ok(&mut s, cmd);
    }
    assert_eq!(s.groups["g"].owner.as_deref(), Some("n2"));
    assert!(
        s.groups["g"].failovers.is_empty(),
        "{:?}",
        s.groups["g"].failovers
    );
    // A threshold of 0 would leave a failed-over group Failed; a clean stop is no failure.
    let mut t = cluster();
    let props = GroupProps {
        failover_threshold: Some(0),
        ..t.groups["g"].props.clone()
    };
    ok(
        &mut t,
        Command::SetGroupProps {
            group: "g".into(),
            props,
        },
    );
    stopped(&mut t, "n1", ShutdownPolicy::Migrate);
    for cmd in plan(&t, 0, &vouched("n1")).commands {
        ok(&mut t, cmd);
    }
    assert_eq!(t.groups["g"].owner.as_deref(), Some("n2"));
    assert!(
        t.groups["g"].failure.is_none(),
        "{:?}",
        t.groups["g"].failure
    );
}

/// Shutdown policy `freeze`: the groups stay with the stopped node (no failover, no
/// failback away from it) until it is back; only an operator's move takes one away, at once.
#[test]
fn a_frozen_node_keeps_its_groups_until_an_operator_moves_one() {
    let mut s = cluster();
    online_on(&mut s, "n1");
    stopped(&mut s, "n1", ShutdownPolicy::Freeze);
    assert_eq!(s.nodes["n1"].state, NodeState::Frozen);
    assert_eq!(s.resources["a"].state, ResourceState::Offline);
    assert_eq!(s.resources["a"].persistent_state, PersistentState::Online);
    let p = plan(&s, 0, &vouched("n1"));
    assert!(p.commands.is_empty(), "{:?}", p.commands);
    assert_eq!(s.groups["g"].owner.as_deref(), Some("n1"));
    ok(
        &mut s,
        Command::MoveGroup {
            group: "g".into(),
            to: "n2".into(),
            kind: MoveKind::Operator,
            quick: false,
        },
    );
    let waiting = plan(&s, 0, &BTreeSet::new());
    assert!(
        waiting.commands.is_empty() && waiting.awaiting_leases,
        "{waiting:?}"
    );
    for cmd in plan(&s, 0, &vouched("n1")).commands {
        ok(&mut s, cmd);
    }
    assert_eq!(s.groups["g"].owner.as_deref(), Some("n2"));
    assert!(s.groups["g"].moving.is_none());
    assert!(s.groups["g"].failovers.is_empty());
}

/// Back from a clean stop: Up (the leader records it once another incarnation heartbeats);
/// under `migrate`, the groups the stop drained off move back; a node an operator had
/// drained comes back Paused, and nothing moves back to it.
#[test]
fn a_node_back_from_a_migrate_stop_takes_its_drained_groups_back_and_a_paused_one_stays_paused() {
    let mut s = cluster();
    online_on(&mut s, "n1");
    ok(
        &mut s,
        Command::SetDraining {
            name: "n1".into(),
            draining: true,
        },
    );
    let mut paused = s.clone();
    for cmd in plan(&s, 0, &BTreeSet::new()).commands {
        ok(&mut s, cmd);
    }
    assert_eq!(
        s.groups["g"].moving.as_ref().map(|m| m.to.as_str()),
        Some("n2")
    );
    ok(
        &mut s,
        Command::SetOwner {
            group: "g".into(),
            node: "n2".into(),
        },
    );
    stopped(&mut s, "n1", ShutdownPolicy::Migrate);
    // The shutdown drain is no operator's: back Up, and the group fails back.
    assert!(!s.nodes["n1"].stop.as_ref().unwrap().paused);
    ok(&mut s, back("n1"));
    assert_eq!(s.nodes["n1"].state, NodeState::Up);
    assert!(s.nodes["n1"].stop.is_none());
    let m = s.groups["g"].moving.clone().expect("a failback");
    assert_eq!((m.to.as_str(), m.kind), ("n1", MoveKind::Failback));

    // An operator's drain ended (Paused), then a stop: it comes back Paused.
    ok(
        &mut paused,
        Command::SetDraining {
            name: "n1".into(),
            draining: false,
        },
    );
    stopped(&mut paused, "n1", ShutdownPolicy::Failover);
    ok(&mut paused, back("n1"));
    assert_eq!(paused.nodes["n1"].state, NodeState::Paused);
    assert!(paused.groups["g"].moving.is_none());
}

/// A clean stop with nowhere else to go (n2 is Paused) leaves the group with its stopped
/// owner, not Failed: it starts again when the node is back.
#[test]
fn a_cleanly_stopped_owner_keeps_a_group_no_other_node_can_take() {
    let mut s = cluster();
    online_on(&mut s, "n1");
    ok(
        &mut s,
        Command::SetDraining {
            name: "n2".into(),
            draining: true,
        },
    );
    stopped(&mut s, "n1", ShutdownPolicy::Failover);
    // (n2's drain ends: it has nothing to move.)
    for cmd in plan(&s, 0, &vouched("n1")).commands {
        ok(&mut s, cmd);
    }
    let p = plan(&s, 0, &vouched("n1"));
    assert!(p.commands.is_empty(), "{:?}", p.commands);
    assert_eq!(s.groups["g"].owner.as_deref(), Some("n1"));
    assert!(s.groups["g"].failure.is_none());
}

/// A node that stops again before its "back" record lands: the record of the first stop's
/// end is refused, so the later stop stands (the node is not Up with no agent). And a stopped
/// node is not drained (that would make it Paused, and then Down).
#[test]
fn back_ends_only_the_stop_it_names_and_a_stopped_node_is_not_drained() {
    let mut s = cluster();
    stopped(&mut s, "n1", ShutdownPolicy::Freeze);
    let again = Command::NodeStopped {
        name: "n1".into(),
        incarnation: 9,
        policy: ShutdownPolicy::Freeze,
        paused: false,
    };
    ok(&mut s, again);
    let e = apply(&mut s, &back("n1")).unwrap_err().to_string();
    assert!(e.contains("not stopped by run 7"), "{e}");
    assert_eq!(s.nodes["n1"].state, NodeState::Frozen);
    let drain = Command::SetDraining {
        name: "n1".into(),
        draining: true,
    };
    let e = apply(&mut s, &drain).unwrap_err().to_string();
    assert!(e.contains("stopped cleanly"), "{e}");
    assert_eq!(s.nodes["n1"].state, NodeState::Frozen);
}
