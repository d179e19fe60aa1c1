//! The cluster database's state machine: `command::apply`.

use vigil_core::command::{Command, Target, apply};
use vigil_core::model::PersistentState::{Offline as Off, Online as On};
use vigil_core::model::{
    ClusterState, MoveKind, NodeState, PersistentState, ResourceSpec, ResourceState,
};
use vigil_core::props::{GroupProps, ResourceProps};

fn ok(state: &mut ClusterState, cmd: Command) {
    if let Err(e) = apply(state, &cmd) {
        panic!("{cmd:?} refused: {e}");
    }
}

/// Applies a command that must be refused; checks the state is unchanged and returns the
/// error message.
fn refused(state: &mut ClusterState, cmd: Command) -> String {
    let before = state.clone();
    let err = apply(state, &cmd).expect_err("command should be refused");
    assert_eq!(*state, before, "refused {cmd:?} changed the state");
    err.to_string()
}

fn spec(name: &str, group: &str, deps: &[&str]) -> ResourceSpec {
    ResourceSpec {
        name: name.into(),
        group: group.into(),
        type_name: "process".into(),
        params: [("command".to_string(), format!("/bin/{name}"))].into(),
        props: ResourceProps::default(),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        migratable: false,
        unique: Vec::new(),
        secret: Vec::new(),
    }
}

fn create_group(state: &mut ClusterState, name: &str, owner: Option<&str>) {
    let cmd = Command::CreateGroup {
        name: name.into(),
        props: GroupProps::default(),
        owner: owner.map(Into::into),
    };
    ok(state, cmd);
}

fn create(state: &mut ClusterState, name: &str, group: &str, deps: &[&str]) {
    ok(
        state,
        Command::CreateResource {
            spec: spec(name, group, deps),
        },
    );
}

/// Nodes n1 and n2; groups g (owned by n1) and h (no owner).
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
    create_group(&mut s, "g", Some("n1"));
    create_group(&mut s, "h", None);
    s
}

/// `cluster()` plus the chain app -> web -> disk in g and a lone `log` in g.
fn chain() -> ClusterState {
    let mut s = cluster();
    create(&mut s, "disk", "g", &[]);
    create(&mut s, "web", "g", &["disk"]);
    create(&mut s, "app", "g", &["web"]);
    create(&mut s, "log", "g", &[]);
    s
}

fn desire(state: &mut ClusterState, target: Target, desired: PersistentState) {
    ok(
        state,
        Command::SetPersistentState {
            target,
            state: desired,
        },
    );
}

fn res(name: &str) -> Target {
    Target::Resource(name.into())
}

fn record(state: &mut ClusterState, resource: &str, s: ResourceState) {
    let cmd = Command::RecordState {
        resource: resource.into(),
        state: s,
        reason: "test".into(),
        pid: None,
        node: None,
    };
    ok(state, cmd);
}

/// The persistent state of each named resource, in the order given.
fn desired(state: &ClusterState, names: &[&str]) -> Vec<PersistentState> {
    names
        .iter()
        .map(|n| state.resources[*n].persistent_state)
        .collect()
}

fn update(state: &ClusterState, name: &str, deps: &[&str]) -> Command {
    let r = &state.resources[name];
    Command::UpdateResource {
        name: name.into(),
        params: r.params.clone(),
        secret: Vec::new(),
        props: r.props.clone(),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
    }
}

#[test]
fn create_group_and_resource() {
    let mut s = cluster();
    let g = &s.groups["g"];
    assert_eq!(
        (g.owner.as_deref(), g.epoch, &g.failure),
        (Some("n1"), 1, &None)
    );
    let h = &s.groups["h"];
    assert_eq!((h.owner.as_deref(), h.epoch), (None, 0));

    create(&mut s, "disk", "g", &[]);
    create(&mut s, "web", "g", &["disk"]);
    let r = &s.resources["web"];
    assert_eq!(
        (r.name.as_str(), r.group.as_str(), r.type_name.as_str()),
        ("web", "g", "process")
    );
    assert_eq!(r.params["command"], "/bin/web");
    assert_eq!(r.depends_on, ["disk"]);
    assert_eq!(r.props, ResourceProps::default());
    assert_eq!((r.persistent_state, r.state), (Off, ResourceState::Offline));
    assert_eq!((r.state_reason.as_str(), r.pid), ("", None));
    let members: Vec<_> = s.group_resources("g").map(|r| r.name.as_str()).collect();
    assert_eq!(members, ["disk", "web"]);
    assert_eq!(s.group_resources("h").count(), 0);
}

#[test]
fn duplicates_are_refused_naming_the_value() {
    let mut s = chain();
    let cmd = Command::AddNode {
        name: "n1".into(),
        address: "elsewhere:1".into(),
    };
    assert_eq!(refused(&mut s, cmd), r#"node "n1" already exists"#);
    let cmd = Command::CreateGroup {
        name: "g".into(),
        props: GroupProps::default(),
        owner: None,
    };
    assert_eq!(refused(&mut s, cmd), r#"group "g" already exists"#);
    let cmd = Command::CreateResource {
        spec: spec("web", "h", &[]),
    };
    assert_eq!(refused(&mut s, cmd), r#"resource "web" already exists"#);
}

#[test]
fn bootstrap_only_once() {
    let mut s = ClusterState::default();
    ok(
        &mut s,
        Command::Bootstrap {
            cluster_name: "prod".into(),
            cluster_id: String::new(),
        },
    );
    assert_eq!(s.cluster_name.as_deref(), Some("prod"));
    let err = refused(
        &mut s,
        Command::Bootstrap {
            cluster_name: "other".into(),
            cluster_id: String::new(),
        },
    );
    assert_eq!(err, r#"the database already holds cluster "prod""#);
}

#[test]
fn invalid_names_are_refused_naming_the_value() {
    let mut s = cluster();
    let cmd = Command::CreateResource {
        spec: spec("we b", "g", &[]),
    };
    let err = refused(&mut s, cmd);
    assert!(
        err.starts_with(r#"resource name "we b" is not valid"#),
        "{err}"
    );
    let cmd = Command::CreateGroup {
        name: ".g".into(),
        props: GroupProps::default(),
        owner: None,
    };
    let err = refused(&mut s, cmd);
    assert!(err.starts_with(r#"group name ".g" is not valid"#), "{err}");
}

#[test]
fn group_with_unknown_owner_or_preferred_owner_is_refused() {
    let mut s = cluster();
    let cmd = Command::CreateGroup {
        name: "x".into(),
        props: GroupProps::default(),
        owner: Some("n9".into()),
    };
    assert_eq!(refused(&mut s, cmd), r#"node "n9" does not exist"#);
    let props = GroupProps {
        preferred_owners: vec!["n2".into(), "n8".into()],
        ..GroupProps::default()
    };
    let cmd = Command::CreateGroup {
        name: "x".into(),
        props,
        owner: None,
    };
    assert_eq!(refused(&mut s, cmd), r#"node "n8" does not exist"#);
}

#[test]
fn resource_in_missing_group_is_refused() {
    let mut s = cluster();
    let cmd = Command::CreateResource {
        spec: spec("web", "nope", &[]),
    };
    assert_eq!(refused(&mut s, cmd), r#"group "nope" does not exist"#);
}

#[test]
fn dependency_on_missing_resource_is_refused() {
    let mut s = cluster();
    let cmd = Command::CreateResource {
        spec: spec("web", "g", &["disk"]),
    };
    let err = refused(&mut s, cmd);
    assert_eq!(
        err,
        r#"resource "web" depends on "disk", which does not exist"#
    );
}

#[test]
fn dependency_on_a_resource_of_another_group_is_refused() {
    let mut s = cluster();
    create(&mut s, "disk", "h", &[]);
    create(&mut s, "web", "g", &[]);
    let err = refused(
        &mut s,
        Command::CreateResource {
            spec: spec("app", "g", &["disk"]),
        },
    );
    assert!(
        err.contains(r#"resource "app" (group "g") cannot depend on "disk" of group "h""#),
        "{err}"
    );
    let cmd = update(&s, "web", &["disk"]);
    let err = refused(&mut s, cmd);
    assert!(
        err.contains(r#"cannot depend on "disk" of group "h""#),
        "{err}"
    );
    assert!(s.resources["web"].depends_on.is_empty());
}

#[test]
fn dependency_cycles_are_refused_and_named() {
    let mut s = cluster();
    create(&mut s, "a", "g", &[]);
    create(&mut s, "b", "g", &["a"]);
    let cmd = update(&s, "a", &["b"]);
    assert_eq!(
        refused(&mut s, cmd),
        "dependency cycle refused: a -> b -> a"
    );

    create(&mut s, "c", "g", &["b"]);
    let cmd = update(&s, "a", &["c"]);
    assert_eq!(
        refused(&mut s, cmd),
        "dependency cycle refused: a -> c -> b -> a"
    );

    let cmd = update(&s, "a", &["a"]);
    assert_eq!(refused(&mut s, cmd), "dependency cycle refused: a -> a");
    assert!(s.resources["a"].depends_on.is_empty());
}

#[test]
fn update_resource_replaces_params_props_and_dependencies() {
    let mut s = chain();
    let props = ResourceProps {
        restart_threshold: 7,
        ..ResourceProps::default()
    };
    let params = [("command".to_string(), "/bin/other".to_string())].into();
    let cmd = Command::UpdateResource {
        name: "app".into(),
        params,
        secret: Vec::new(),
        props: props.clone(),
        depends_on: vec!["disk".into(), "log".into()],
    };
    ok(&mut s, cmd);
    let r = &s.resources["app"];
    assert_eq!(r.params["command"], "/bin/other");
    assert_eq!(r.props, props);
    assert_eq!(r.depends_on, ["disk", "log"]);
    let cmd = Command::UpdateResource {
        name: "ghost".into(),
        params: Default::default(),
        secret: Vec::new(),
        props: ResourceProps::default(),
        depends_on: vec![],
    };
    assert_eq!(refused(&mut s, cmd), r#"resource "ghost" does not exist"#);
}

#[test]
fn online_pulls_providers_online_transitively() {
    let mut s = chain();
    desire(&mut s, res("app"), On);
    assert_eq!(
        desired(&s, &["app", "web", "disk", "log"]),
        [On, On, On, Off]
    );

    let mut s = chain();
    desire(&mut s, res("web"), On);
    assert_eq!(
        desired(&s, &["app", "web", "disk", "log"]),
        [Off, On, On, Off]
    );
}

#[test]
fn offline_pushes_dependents_offline_transitively() {
    let mut s = chain();
    desire(&mut s, Target::Group("g".into()), On);
    desire(&mut s, res("disk"), Off);
    assert_eq!(
        desired(&s, &["app", "web", "disk", "log"]),
        [Off, Off, Off, On]
    );

    let mut s = chain();
    desire(&mut s, Target::Group("g".into()), On);
    desire(&mut s, res("web"), Off);
    assert_eq!(
        desired(&s, &["app", "web", "disk", "log"]),
        [Off, Off, On, On]
    );
}

#[test]
fn group_target_sets_every_resource_and_clears_the_failure() {
    let mut s = chain();
    create(&mut s, "other", "h", &[]);
    let failure = Some("restarts exhausted".to_string());
    ok(
        &mut s,
        Command::SetGroupFailure {
            group: "g".into(),
            failure: failure.clone(),
            retry_at_ms: None,
        },
    );
    assert_eq!(s.groups["g"].failure, failure);

    desire(&mut s, Target::Group("g".into()), On);
    assert_eq!(
        desired(&s, &["app", "web", "disk", "log", "other"]),
        [On, On, On, On, Off]
    );
    assert_eq!(s.groups["g"].failure, None);

    ok(
        &mut s,
        Command::SetGroupFailure {
            group: "g".into(),
            failure,
            retry_at_ms: None,
        },
    );
    desire(&mut s, Target::Group("g".into()), Off);
    assert_eq!(
        desired(&s, &["app", "web", "disk", "log", "other"]),
        [Off; 5]
    );
    assert_eq!(s.groups["g"].failure, None);
}

#[test]
fn persistent_state_of_unknown_target_is_refused() {
    let mut s = chain();
    let cmd = Command::SetPersistentState {
        target: Target::Group("x".into()),
        state: On,
    };
    assert_eq!(refused(&mut s, cmd), r#"group "x" does not exist"#);
    let cmd = Command::SetPersistentState {
        target: res("x"),
        state: On,
    };
    assert_eq!(refused(&mut s, cmd), r#"resource "x" does not exist"#);
}

#[test]
fn delete_resource_is_refused_while_it_may_run() {
    let mut s = chain();
    for st in [
        ResourceState::OnlinePending,
        ResourceState::Online,
        ResourceState::OfflinePending,
    ] {
        record(&mut s, "log", st);
        let err = refused(&mut s, Command::DeleteResource { name: "log".into() });
        assert_eq!(
            err,
            format!(r#"resource "log" is {st}; take it offline first"#)
        );
    }
    record(&mut s, "log", ResourceState::Failed);
    ok(&mut s, Command::DeleteResource { name: "log".into() });
    assert!(!s.resources.contains_key("log"));
    let err = refused(&mut s, Command::DeleteResource { name: "log".into() });
    assert_eq!(err, r#"resource "log" does not exist"#);
}

#[test]
fn delete_resource_is_refused_while_others_depend_on_it() {
    let mut s = chain();
    create(&mut s, "cache", "g", &["disk"]);
    let err = refused(
        &mut s,
        Command::DeleteResource {
            name: "disk".into(),
        },
    );
    assert_eq!(
        err,
        r#"resource "disk" is a dependency of cache, web; remove that dependency first"#
    );
    ok(&mut s, Command::DeleteResource { name: "app".into() });
    ok(&mut s, Command::DeleteResource { name: "web".into() });
    ok(
        &mut s,
        Command::DeleteResource {
            name: "cache".into(),
        },
    );
    ok(
        &mut s,
        Command::DeleteResource {
            name: "disk".into(),
        },
    );
    let left: Vec<_> = s.resources.keys().map(String::as_str).collect();
    assert_eq!(left, ["log"]);
}

#[test]
fn delete_group_is_refused_while_a_resource_runs() {
    let mut s = chain();
    create(&mut s, "other", "h", &[]);
    record(&mut s, "web", ResourceState::Online);
    let err = refused(&mut s, Command::DeleteGroup { name: "g".into() });
    assert_eq!(
        err,
        r#"group "g" still has resource "web" Online; take the group offline first"#
    );

    record(&mut s, "web", ResourceState::Failed);
    ok(&mut s, Command::DeleteGroup { name: "g".into() });
    assert!(!s.groups.contains_key("g"));
    let left: Vec<_> = s.resources.keys().map(String::as_str).collect();
    assert_eq!(left, ["other"]);
    let err = refused(&mut s, Command::DeleteGroup { name: "g".into() });
    assert_eq!(err, r#"group "g" does not exist"#);
}

#[test]
fn set_owner_bumps_the_epoch_only_on_a_real_change() {
    let mut s = cluster();
    assert_eq!(s.group_epoch("g"), 1);
    ok(
        &mut s,
        Command::SetOwner {
            group: "g".into(),
            node: "n1".into(),
        },
    );
    assert_eq!(
        (s.groups["g"].owner.as_deref(), s.group_epoch("g")),
        (Some("n1"), 1)
    );
    ok(
        &mut s,
        Command::SetOwner {
            group: "g".into(),
            node: "n2".into(),
        },
    );
    assert_eq!(
        (s.groups["g"].owner.as_deref(), s.group_epoch("g")),
        (Some("n2"), 2)
    );
    ok(
        &mut s,
        Command::SetOwner {
            group: "g".into(),
            node: "n2".into(),
        },
    );
    assert_eq!(s.group_epoch("g"), 2);
    ok(
        &mut s,
        Command::SetOwner {
            group: "h".into(),
            node: "n2".into(),
        },
    );
    assert_eq!(
        (s.groups["h"].owner.as_deref(), s.group_epoch("h")),
        (Some("n2"), 1)
    );

    let cmd = Command::SetOwner {
        group: "g".into(),
        node: "n9".into(),
    };
    assert_eq!(refused(&mut s, cmd), r#"node "n9" does not exist"#);
    let cmd = Command::SetOwner {
        group: "x".into(),
        node: "n1".into(),
    };
    assert_eq!(refused(&mut s, cmd), r#"group "x" does not exist"#);
}

#[test]
fn record_state_updates_state_reason_and_pid() {
    let mut s = chain();
    let cmd = Command::RecordState {
        resource: "web".into(),
        state: ResourceState::Online,
        reason: "started".into(),
        pid: Some(4242),
        node: None,
    };
    ok(&mut s, cmd);
    let r = &s.resources["web"];
    assert_eq!(
        (r.state, r.state_reason.as_str(), r.pid),
        (ResourceState::Online, "started", Some(4242))
    );
    // Only the state changes, not what the operator wants.
    assert_eq!(r.persistent_state, Off);

    let cmd = Command::RecordState {
        resource: "web".into(),
        state: ResourceState::Failed,
        reason: "exit 1".into(),
        pid: None,
        node: None,
    };
    ok(&mut s, cmd);
    let r = &s.resources["web"];
    assert_eq!(
        (r.state, r.state_reason.as_str(), r.pid),
        (ResourceState::Failed, "exit 1", None)
    );

    let cmd = Command::RecordState {
        resource: "ghost".into(),
        state: ResourceState::Online,
        reason: String::new(),
        pid: None,
        node: None,
    };
    assert_eq!(refused(&mut s, cmd), r#"resource "ghost" does not exist"#);
}

#[test]
fn invalid_props_are_refused_naming_the_property() {
    let mut s = cluster();
    let mut bad = spec("web", "g", &[]);
    bad.props.restart_period_s = 0;
    let err = refused(&mut s, Command::CreateResource { spec: bad });
    assert_eq!(
        err,
        r#"resource "web": restart_period_s must be > 0 and at most 2592000, got "0""#
    );

    create(&mut s, "web", "g", &[]);
    let props = ResourceProps {
        looks_alive_ms: 1,
        ..ResourceProps::default()
    };
    let cmd = Command::UpdateResource {
        name: "web".into(),
        params: Default::default(),
        secret: Vec::new(),
        props,
        depends_on: vec![],
    };
    let err = refused(&mut s, cmd);
    assert_eq!(
        err,
        r#"resource "web": looks_alive_ms must be between 10 and 86400000, got "1""#
    );
    assert_eq!(s.resources["web"].props, ResourceProps::default());
}

#[test]
fn set_group_failure_and_node_state_need_existing_targets() {
    let mut s = cluster();
    let cmd = Command::SetGroupFailure {
        group: "x".into(),
        failure: None,
        retry_at_ms: None,
    };
    assert_eq!(refused(&mut s, cmd), r#"group "x" does not exist"#);
    let cmd = Command::SetNodeState {
        name: "n9".into(),
        state: NodeState::Down,
    };
    assert_eq!(refused(&mut s, cmd), r#"node "n9" does not exist"#);
}

fn move_cmd(group: &str, to: &str, kind: MoveKind, quick: bool) -> Command {
    Command::MoveGroup {
        group: group.into(),
        to: to.into(),
        kind,
        quick,
    }
}

fn move_to(state: &mut ClusterState, group: &str, to: &str, kind: MoveKind) {
    ok(state, move_cmd(group, to, kind, false));
}

#[test]
fn a_planned_move_is_live_only_when_every_resource_can_migrate() {
    let mut s = cluster();
    let mut vm = spec("vm", "g", &[]);
    vm.migratable = true;
    ok(&mut s, Command::CreateResource { spec: vm });
    let live = |s: &mut ClusterState, kind: MoveKind| {
        move_to(s, "g", "n2", kind);
        let live = s.groups["g"].moving.as_ref().unwrap().live;
        let cancel = Command::CancelMove {
            group: "g".into(),
            failed: None,
        };
        ok(s, cancel);
        live
    };
    // Planned moves: an operator's and a drain's.
    assert!(live(&mut s, MoveKind::Operator));
    assert!(live(&mut s, MoveKind::Drain));
    // A failover move follows a failure: never live.
    assert!(!live(&mut s, MoveKind::Failover));
    // One resource that cannot migrate makes the whole group move cold.
    create(&mut s, "disk", "g", &[]);
    assert!(!live(&mut s, MoveKind::Operator));
    assert!(!live(&mut s, MoveKind::Drain));
}

#[test]
fn the_cutover_moves_ownership_and_the_migration_ends_explicitly() {
    let mut s = cluster();
    let mut vm = spec("vm", "g", &[]);
    vm.migratable = true;
    ok(&mut s, Command::CreateResource { spec: vm });
    let epoch = s.groups["g"].epoch;
    let cutover = |to: &str| Command::MigratedOwner {
        group: "g".into(),
        node: to.into(),
        resources: vec!["vm".into()],
    };
    let e = refused(&mut s, cutover("n2"));
    assert!(e.contains("not being moved to \"n2\""), "{e}");
    move_to(&mut s, "g", "n2", MoveKind::Operator);
    ok(&mut s, cutover("n2"));
    let g = &s.groups["g"];
    assert_eq!(g.owner.as_deref(), Some("n2"));
    assert_eq!(g.epoch, epoch + 1);
    assert!(g.moving.is_none());
    let m = g.migration.as_ref().unwrap();
    assert_eq!(
        (m.from.as_str(), m.resources.clone()),
        ("n1", vec!["vm".to_string()])
    );
    // No other move until the target has completed it.
    let e = refused(&mut s, move_cmd("g", "n1", MoveKind::Operator, false));
    assert!(
        e.contains("still completing its live migration from \"n1\""),
        "{e}"
    );
    ok(&mut s, Command::EndMigration { group: "g".into() });
    assert!(s.groups["g"].migration.is_none());
}

#[test]
fn a_failed_live_move_is_remembered_until_an_operator_moves_the_group() {
    let mut s = cluster();
    move_to(&mut s, "g", "n2", MoveKind::Failback);
    ok(
        &mut s,
        Command::CancelMove {
            group: "g".into(),
            failed: Some("live migration of vm failed: no route".into()),
        },
    );
    let g = &s.groups["g"];
    assert!(g.moving.is_none());
    assert_eq!(g.failed_moves.len(), 1);
    assert_eq!(g.failed_moves[0].to, "n2");
    // A cancel without a failure (the target went away) records nothing.
    move_to(&mut s, "g", "n2", MoveKind::Drain);
    ok(
        &mut s,
        Command::CancelMove {
            group: "g".into(),
            failed: None,
        },
    );
    assert_eq!(s.groups["g"].failed_moves.len(), 1);
    // An operator's move is a deliberate retry.
    move_to(&mut s, "g", "n2", MoveKind::Operator);
    assert!(s.groups["g"].failed_moves.is_empty());
}

#[test]
fn a_unique_parameter_value_is_refused_by_apply_naming_the_resource_that_has_it() {
    let mut s = cluster();
    let unique_spec = |name: &str, ty: &str, command: &str, unique: bool| ResourceSpec {
        type_name: ty.into(),
        params: [("command".to_string(), command.to_string())].into(),
        unique: if unique {
            vec!["command".into()]
        } else {
            vec![]
        },
        ..spec(name, "g", &[])
    };
    apply(
        &mut s,
        &Command::CreateResource {
            spec: unique_spec("a", "process", "/bin/a", true),
        },
    )
    .unwrap();
    // Checked inside apply: two creates racing through the API cannot both pass.
    let err = refused(
        &mut s,
        Command::CreateResource {
            spec: unique_spec("b", "process", "/bin/a", true),
        },
    );
    assert_eq!(
        err,
        "parameter command = \"/bin/a\" must be unique among process resources, and resource \"a\" has it"
    );
    let update = |name: &str, command: &str| Command::UpdateResource {
        name: name.into(),
        params: [("command".to_string(), command.to_string())].into(),
        secret: Vec::new(),
        props: ResourceProps::default(),
        depends_on: vec![],
    };
    // A resource keeping its own value is no conflict.
    apply(&mut s, &update("a", "/bin/a")).unwrap();
    // Another type, a parameter that need not be unique, another value: accepted.
    for (name, ty, command, unique) in [
        ("b", "ocf:heartbeat:Dummy", "/bin/a", true),
        ("c", "process", "/bin/a", false),
        ("d", "process", "/bin/d", true),
    ] {
        let spec = unique_spec(name, ty, command, unique);
        apply(&mut s, &Command::CreateResource { spec }).unwrap();
    }
    // An update to a value another resource of the type has is refused too.
    assert!(refused(&mut s, update("d", "/bin/a")).contains("resource \"a\" has it"));
}

fn fail_over(from: &str, to: &str) -> Command {
    Command::FailOver {
        group: "g".into(),
        from: Some(from.into()),
        to: to.into(),
        reason: format!("owner {from} is Down"),
        at_ms: 1_000,
        left_offline: false,
    }
}

#[test]
fn a_failover_from_a_down_owner_is_refused_once_the_owner_is_up_again() {
    let mut s = cluster();
    create(&mut s, "a", "g", &[]);
    record(&mut s, "a", ResourceState::Online);
    let down = |s: &mut ClusterState, state| {
        ok(
            s,
            Command::SetNodeState {
                name: "n1".into(),
                state,
            },
        )
    };
    // Planned while n1 was Down, applied after n1 was recorded Up again (a stale plan).
    down(&mut s, NodeState::Down);
    down(&mut s, NodeState::Up);
    let err = refused(&mut s, fail_over("n1", "n2"));
    assert_eq!(
        err,
        "node \"n1\" is Up again: its group \"g\" stays with it"
    );
    // Planned on an older owner.
    down(&mut s, NodeState::Down);
    assert!(refused(&mut s, fail_over("n2", "n1")).contains("owned by n1, not n2"));
    // In time: the resources are recorded stopped, the failover counted, the epoch grows.
    let epoch = s.groups["g"].epoch;
    ok(&mut s, fail_over("n1", "n2"));
    let g = &s.groups["g"];
    assert_eq!((g.owner.as_deref(), g.epoch), (Some("n2"), epoch + 1));
    assert_eq!(g.failovers.len(), 1);
    assert!(g.failovers[0].node_down);
    let a = &s.resources["a"];
    assert_eq!(a.state, ResourceState::Offline);
    assert_eq!(a.state_reason, "owner n1 is Down: not running");
}

#[test]
fn only_an_operators_move_marks_the_group_as_placed_by_the_operator() {
    let mut s = cluster();
    create(&mut s, "a", "g", &[]);
    move_to(&mut s, "g", "n2", MoveKind::Operator);
    let hand_over = |to: &str| Command::SetOwner {
        group: "g".into(),
        node: to.into(),
    };
    ok(&mut s, hand_over("n2"));
    assert!(s.groups["g"].operator_placed);
    move_to(&mut s, "g", "n1", MoveKind::Failback);
    ok(&mut s, hand_over("n1"));
    assert!(!s.groups["g"].operator_placed);
}

#[test]
fn a_handover_is_refused_once_its_move_was_cancelled() {
    // Found by the simulator: the owner wrote its handover while the failover manager
    // cancelled the move (its target was drained); the handover landed after the cancel, and
    // the group ran on both: on the old owner (restarted, since the move was over) and on the
    // target (now the owner).
    let mut s = cluster();
    create(&mut s, "a", "g", &[]);
    move_to(&mut s, "g", "n2", MoveKind::Operator);
    ok(
        &mut s,
        Command::CancelMove {
            group: "g".into(),
            failed: None,
        },
    );
    let hand_over = Command::HandOver {
        group: "g".into(),
        from: "n1".into(),
        to: "n2".into(),
    };
    let err = refused(&mut s, hand_over.clone());
    assert!(
        err.contains("no longer being handed from \"n1\" to \"n2\""),
        "{err}"
    );
    move_to(&mut s, "g", "n2", MoveKind::Operator);
    let epoch = s.groups["g"].epoch;
    ok(&mut s, hand_over);
    assert_eq!(s.groups["g"].owner.as_deref(), Some("n2"));
    assert_eq!(s.groups["g"].epoch, epoch + 1);
}

#[test]
fn a_refused_move_changes_nothing_it_would_have_changed() {
    let mut s = cluster();
    // A group drained from n1, with a failover requested and a failed move remembered:
    // everything an accepted operator's move clears.
    move_to(&mut s, "g", "n2", MoveKind::Drain);
    ok(
        &mut s,
        Command::CancelMove {
            group: "g".into(),
            failed: Some("it did not start there".into()),
        },
    );
    s.groups.get_mut("g").unwrap().failover_request = Some("it failed on n1".into());
    assert!(s.groups["g"].drained_from.is_some() && !s.groups["g"].failed_moves.is_empty());
    // Refused because g cannot migrate (a process resource)...
    create(&mut s, "disk", "g", &[]);
    let e = refused(&mut s, move_cmd("g", "n2", MoveKind::Operator, true));
    assert!(e.contains("cannot be quick-migrated"), "{e}");
    // ... and because it is still completing a live migration.
    let mut vm = spec("vm", "h", &[]);
    vm.migratable = true;
    ok(&mut s, Command::CreateResource { spec: vm });
    ok(
        &mut s,
        Command::SetOwner {
            group: "h".into(),
            node: "n1".into(),
        },
    );
    move_to(&mut s, "h", "n2", MoveKind::Drain);
    ok(
        &mut s,
        Command::MigratedOwner {
            group: "h".into(),
            node: "n2".into(),
            resources: vec!["vm".into()],
        },
    );
    let e = refused(&mut s, move_cmd("h", "n1", MoveKind::Failover, false));
    assert!(e.contains("still completing its live migration"), "{e}");
}
