//! The failover manager's plan (`failover::plan`): cases the simulator's scenarios do not
//! pin down by themselves.

use std::collections::BTreeSet;

use vigil_core::command::{Command, Target, apply};
use vigil_core::failover::plan;
use vigil_core::intent;
use vigil_core::model::{ClusterState, MoveKind, NodeState, PersistentState, Phase, ResourceSpec};
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
