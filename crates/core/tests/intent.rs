//! Operators' intents (`vigil_core::intent`): what the API and the simulator both decide.

use vigil_core::command::{ApplyError, Command, Target, apply};
use vigil_core::intent;
use vigil_core::model::{ClusterState, FailedMove, MoveKind, PersistentState, ResourceSpec};
use vigil_core::props::{GroupProps, ResourceProps};

/// Nodes n1..=`nodes`; group g on n1 with `resources` (name, dependencies).
fn cluster(nodes: u32, resources: &[(&str, &[&str])]) -> ClusterState {
    let mut db = ClusterState::default();
    for i in 1..=nodes {
        let add = Command::AddNode {
            name: format!("n{i}"),
            address: format!("n{i}:7000"),
        };
        apply(&mut db, &add).unwrap();
    }
    let group = Command::CreateGroup {
        name: "g".into(),
        props: GroupProps::default(),
        owner: Some("n1".into()),
    };
    apply(&mut db, &group).unwrap();
    for (name, deps) in resources {
        let spec = ResourceSpec {
            name: name.to_string(),
            group: "g".into(),
            type_name: "process".into(),
            params: [("command".to_string(), "/bin/true".to_string())].into(),
            props: ResourceProps::default(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            migratable: false,
            unique: Vec::new(),
            secret: Vec::new(),
        };
        apply(&mut db, &Command::CreateResource { spec }).unwrap();
    }
    db
}

#[test]
fn a_desired_state_change_touches_what_it_names_and_what_it_spread_to() {
    let mut db = cluster(1, &[("ip", &[]), ("disk", &[]), ("web", &["ip"])]);
    let (cmd, log, touch) =
        intent::set_desired(&db, Target::Resource("web".into()), PersistentState::Online);
    assert_eq!(log.resource.as_deref(), Some("web"));
    apply(&mut db, &cmd).unwrap();
    // Online spread to web's provider ip; disk was not touched.
    assert_eq!(touch.resources(&db), ["web", "ip"]);
}

#[test]
fn a_group_change_touches_every_resource_of_the_group() {
    let mut db = cluster(1, &[("ip", &[]), ("web", &["ip"])]);
    let (cmd, _, touch) =
        intent::set_desired(&db, Target::Group("g".into()), PersistentState::Online);
    apply(&mut db, &cmd).unwrap();
    assert_eq!(touch.resources(&db), ["ip", "web"]);
}

#[test]
fn a_move_without_a_target_takes_the_failover_managers_choice_or_says_none_can() {
    let db = cluster(2, &[("web", &[])]);
    let intent::OperatorMove { cmd, log, .. } =
        intent::move_group(&db, "g", None, false, 0).unwrap();
    assert_eq!(
        cmd,
        Command::MoveGroup {
            group: "g".into(),
            to: "n2".into(),
            kind: MoveKind::Operator,
            quick: false,
        }
    );
    assert_eq!(
        (log.from.as_deref(), log.to.as_deref()),
        (Some("n1"), Some("n2"))
    );
    let alone = cluster(1, &[("web", &[])]);
    let err = intent::move_group(&alone, "g", None, false, 0).unwrap_err();
    assert!(
        matches!(&err, ApplyError::Conflict(m) if m.contains("no other node can take group \"g\"")),
        "{err}"
    );
    let missing = intent::move_group(&db, "nope", Some("n2"), false, 0).unwrap_err();
    assert_eq!(missing.to_string(), "group \"nope\" does not exist");
}

#[test]
fn a_move_is_settled_once_it_arrived_and_rested_and_its_outcome_says_why_not() {
    let mut db = cluster(2, &[]);
    assert!(
        intent::move_settled(&db, "g", "n2"),
        "not moving: settled (elsewhere)"
    );
    let cmd = intent::move_group(&db, "g", Some("n2"), false, 0)
        .unwrap()
        .cmd;
    apply(&mut db, &cmd).unwrap();
    assert!(!intent::move_settled(&db, "g", "n2"), "moving");
    let g = db.groups.get_mut("g").unwrap();
    g.moving = None;
    g.failed_moves.push(FailedMove {
        to: "n2".into(),
        reason: "migration failed: no route".into(),
    });
    assert!(intent::move_settled(&db, "g", "n2"));
    let why = intent::move_outcome(&db, "g", "n2").unwrap_err();
    assert!(
        why.contains("(migration failed: no route)") && why.contains("owner is n1"),
        "{why}"
    );
    db.groups.get_mut("g").unwrap().owner = Some("n2".into());
    assert_eq!(intent::move_outcome(&db, "g", "n2"), Ok(()));
}

#[test]
fn a_drain_has_ended_when_the_node_is_no_longer_draining_and_nothing_it_left_moves() {
    let mut db = cluster(2, &[]);
    db.nodes.get_mut("n1").unwrap().draining = true;
    assert!(!intent::drain_settled(&db, "n1"));
    db.nodes.get_mut("n1").unwrap().draining = false;
    let cmd = intent::move_group(&db, "g", Some("n2"), false, 0)
        .unwrap()
        .cmd;
    apply(&mut db, &cmd).unwrap();
    db.groups.get_mut("g").unwrap().drained_from = Some("n1".into());
    assert!(
        !intent::drain_settled(&db, "n1"),
        "g is still moving off n1"
    );
    assert!(!intent::moves_settled(&db, &["g".into()]));
    db.groups.get_mut("g").unwrap().moving = None;
    assert!(intent::drain_settled(&db, "n1"));
    assert_eq!(intent::failback_groups(&db, "n1"), ["g"]);
    assert!(intent::failback_groups(&db, "n2").is_empty());
}
