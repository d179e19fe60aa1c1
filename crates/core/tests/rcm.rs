//! The RCM's reconcile loop, `Rcm::step`, driven against a database built with `apply`.
//!
//! `Node` plays the agent: it feeds one input to the RCM through the agent's executor, which
//! applies every `Action::Db` command back into the database (ignoring refusals, as the
//! agent does) and settles, lets the failover manager
//! (this node is also the leader) plan on the result, and hands all the actions to the test,
//! which mostly looks at the calls into the RHS: "online x", "offline x", "terminate x".

use vigil_core::command::{Command, Target, apply};
use vigil_core::event::LogEntry;
use vigil_core::exec;
use vigil_core::failover;
use vigil_core::intent;
use vigil_core::model::PersistentState::{Offline as Off, Online as On};
use vigil_core::model::ResourceState::{Failed, Offline, OfflinePending, Online, OnlinePending};
use vigil_core::model::{
    ClusterState, GroupState, PersistentState, ResourceSpec, ResourceState, group_state,
};
use vigil_core::props::{GroupProps, ResourceProps, RestartAction};
use vigil_core::rcm::{Action, Input, Rcm, Report};

/// The test's side of the executor: the RCM's records are applied at once (refusals
/// ignored, as the agent does), and the RHS takes every call.
struct Env<'a> {
    db: &'a mut ClusterState,
    rcm: &'a mut Rcm,
    now: u64,
    seen: Vec<Action>,
    /// The RHS cannot take any call, for this reason.
    refuse: Option<String>,
}

impl exec::Env for Env<'_> {
    fn now_ms(&self) -> u64 {
        self.now
    }

    fn log(&mut self, _entries: Vec<LogEntry>) {}
}

impl exec::RcmEnv for Env<'_> {
    fn with_rcm<R>(&mut self, decide: impl FnOnce(&mut Rcm, &ClusterState) -> R) -> R {
        decide(self.rcm, self.db)
    }

    fn write(&mut self, cmds: Vec<Command>) -> bool {
        for cmd in &cmds {
            let _ = apply(self.db, cmd);
        }
        true
    }

    fn call(&mut self, _call: Action) -> Result<(), String> {
        self.refuse.clone().map_or(Ok(()), Err)
    }

    fn decided(&mut self, actions: &[Action]) {
        self.seen.extend_from_slice(actions);
    }
}

/// restart_delay_ms of every test resource.
const DELAY: u64 = 1_000;
/// pending_timeout_ms.
const PENDING: u64 = 10_000;
/// retry_period_on_failure_s, in milliseconds.
const RETRY: u64 = 60_000;

fn props() -> ResourceProps {
    ResourceProps {
        restart_delay_ms: DELAY,
        pending_timeout_ms: PENDING,
        retry_period_on_failure_s: RETRY / 1_000,
        ..ResourceProps::default()
    }
}

fn props_with(action: RestartAction, threshold: u32) -> ResourceProps {
    ResourceProps {
        restart_action: action,
        restart_threshold: threshold,
        ..props()
    }
}

struct Node {
    db: ClusterState,
    rcm: Rcm,
    /// The RHS cannot take calls: why (`None`: it takes them all).
    refuse: Option<String>,
}

impl Node {
    /// Node "n1", owner of group "g" holding `resources` (name, dependencies), all desired
    /// Offline.
    fn new(resources: &[(&str, &[&str])]) -> Self {
        Self::with_props(resources, props())
    }

    fn with_props(resources: &[(&str, &[&str])], props: ResourceProps) -> Self {
        let mut db = ClusterState::default();
        let setup = [
            Command::AddNode {
                name: "n1".into(),
                address: "n1:7000".into(),
            },
            Command::CreateGroup {
                name: "g".into(),
                props: GroupProps {
                    retry_period_on_failure_s: RETRY / 1_000,
                    ..GroupProps::default()
                },
                owner: Some("n1".into()),
            },
        ];
        let specs = resources
            .iter()
            .map(|(name, deps)| Command::CreateResource {
                spec: ResourceSpec {
                    name: name.to_string(),
                    group: "g".into(),
                    type_name: "process".into(),
                    params: [("command".to_string(), format!("/bin/{name}"))].into(),
                    props: props.clone(),
                    depends_on: deps.iter().map(|d| d.to_string()).collect(),
                    migratable: false,
                    unique: Vec::new(),
                    secret: Vec::new(),
                },
            });
        for cmd in setup.into_iter().chain(specs) {
            apply(&mut db, &cmd).unwrap();
        }
        Self {
            db,
            rcm: Rcm::new("n1"),
            refuse: None,
        }
    }

    /// One input, then the failover manager and the RCM in turn until neither changes the
    /// database (as the agent does when its writes are applied).
    fn step(&mut self, input: Input, now: u64) -> Vec<Action> {
        let mut all = self.rcm_step(input, now);
        for _ in 0..16 {
            let plan = failover::plan(&self.db, now, &Default::default());
            for cmd in &plan.commands {
                apply(&mut self.db, cmd).unwrap();
            }
            let fm_changed = !plan.commands.is_empty();
            all.extend(plan.commands.into_iter().map(Action::Db));
            all.extend(plan.log.into_iter().map(Action::Log));
            if !fm_changed && !all.iter().any(|a| matches!(a, Action::Db(_))) {
                break;
            }
            let more = self.rcm_step(Input::Tick, now);
            let rcm_changed = more.iter().any(|a| matches!(a, Action::Db(_)));
            all.extend(more);
            if !fm_changed && !rcm_changed {
                break;
            }
        }
        all
    }

    /// The input through the agent's executor ([`exec::settle`]); every action the RCM made,
    /// in its order.
    fn rcm_step(&mut self, input: Input, now: u64) -> Vec<Action> {
        let mut env = Env {
            db: &mut self.db,
            rcm: &mut self.rcm,
            now,
            seen: Vec::new(),
            refuse: self.refuse.clone(),
        };
        assert_eq!(exec::settle(&mut env, input), 0, "the RCM settles");
        env.seen
    }

    /// When the failover manager wants to plan again.
    fn fm_wakeup(&self, now: u64) -> Option<u64> {
        failover::plan(&self.db, now, &Default::default()).wake_at_ms
    }

    fn tick(&mut self, now: u64) -> Vec<Action> {
        self.step(Input::Tick, now)
    }

    fn report(&mut self, resource: &str, report: Report, now: u64) -> Vec<Action> {
        self.report_ended(resource, report, true, now)
    }

    /// A report; `ended`: about an instance its RHS ended (see `Input::Report`).
    fn report_ended(
        &mut self,
        resource: &str,
        report: Report,
        ended: bool,
        now: u64,
    ) -> Vec<Action> {
        let input = Input::Report {
            resource: resource.into(),
            report,
            reason: "rhs says so".into(),
            pid: None,
            ended,
        };
        self.step(input, now)
    }

    /// The operator sets the desired state of `target`, as the agent relays it.
    fn desire(&mut self, target: Target, state: PersistentState, now: u64) -> Vec<Action> {
        let (cmd, _, touch) = intent::set_desired(&self.db, target, state);
        apply(&mut self.db, &cmd).unwrap();
        let resources = touch.resources(&self.db);
        self.step(Input::Operator { resources }, now)
    }

    fn desire_group(&mut self, state: PersistentState, now: u64) -> Vec<Action> {
        self.desire(Target::Group("g".into()), state, now)
    }

    /// Brings group g online at `now`, answering every Online call with an Online report.
    fn start(&mut self, now: u64) {
        let mut todo = calls(&self.desire_group(PersistentState::Online, now));
        while let Some(call) = todo.pop() {
            let name = call
                .strip_prefix("online ")
                .expect("only Online calls while starting");
            todo.extend(calls(&self.report(name, Report::Online, now)));
        }
        for r in self.db.resources.values() {
            assert_eq!(r.state, ResourceState::Online, "{} did not start", r.name);
        }
    }

    fn db_state(&self, resource: &str) -> ResourceState {
        self.db.resources[resource].state
    }

    fn reason(&self, resource: &str) -> &str {
        &self.db.resources[resource].state_reason
    }

    fn group_state(&self) -> GroupState {
        group_state(&self.db, &self.db.groups["g"])
    }
}

/// The calls into the RHS, in order.
fn calls(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Online { resource } => Some(format!("online {resource}")),
            Action::Offline { resource } => Some(format!("offline {resource}")),
            Action::Terminate { resource } => Some(format!("terminate {resource}")),
            Action::Close { resource } => Some(format!("close {resource}")),
            Action::MigratePrepare {
                resource, source, ..
            } => Some(format!("prepare {resource} from {source}")),
            Action::MigrateTo {
                resource, target, ..
            } => Some(format!("migrate {resource} to {target}")),
            Action::MigrateFrom {
                resource, source, ..
            } => Some(format!("complete {resource} from {source}")),
            Action::Db(_) | Action::Log(_) => None,
        })
        .collect()
}

fn db_commands(actions: &[Action]) -> Vec<&Command> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Db(cmd) => Some(cmd),
            _ => None,
        })
        .collect()
}

fn logs(actions: &[Action]) -> Vec<&LogEntry> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Log(entry) => Some(entry),
            _ => None,
        })
        .collect()
}

fn group_failures(actions: &[Action]) -> Vec<Option<String>> {
    db_commands(actions)
        .into_iter()
        .filter_map(|c| match c {
            Command::SetGroupFailure { failure, .. } => Some(failure.clone()),
            _ => None,
        })
        .collect()
}

const NONE: [&str; 0] = [];

#[test]
fn online_starts_providers_first_and_dependents_after_they_report_online() {
    let mut n = Node::new(&[("disk", &[]), ("ip", &[]), ("app", &["disk", "ip"])]);
    assert_eq!(calls(&n.desire_group(On, 0)), ["online disk", "online ip"]);
    assert_eq!(
        [n.db_state("disk"), n.db_state("ip"), n.db_state("app")],
        [OnlinePending, OnlinePending, Offline]
    );
    assert_eq!(n.reason("disk"), "desired state is Online");
    assert_eq!(calls(&n.tick(100)), NONE);

    let input = Input::Report {
        resource: "disk".into(),
        report: Report::Online,
        reason: "up".into(),
        pid: Some(42),
        ended: true,
    };
    assert_eq!(
        calls(&n.step(input, 200)),
        NONE,
        "app must wait for ip as well"
    );
    assert_eq!(
        (n.db_state("disk"), n.db.resources["disk"].pid),
        (Online, Some(42))
    );

    assert_eq!(calls(&n.report("ip", Report::Online, 300)), ["online app"]);
    assert_eq!(n.db_state("app"), OnlinePending);
    assert_eq!(calls(&n.report("app", Report::Online, 400)), NONE);
    assert_eq!(n.group_state(), GroupState::Online);
}

#[test]
fn offline_stops_dependents_first_and_providers_after_they_report_offline() {
    let mut n = Node::new(&[("disk", &[]), ("ip", &[]), ("app", &["disk", "ip"])]);
    n.start(0);
    assert_eq!(calls(&n.desire_group(Off, 1_000)), ["offline app"]);
    assert_eq!(
        [n.db_state("disk"), n.db_state("ip"), n.db_state("app")],
        [Online, Online, OfflinePending]
    );
    assert_eq!(calls(&n.tick(1_100)), NONE);

    assert_eq!(
        calls(&n.report("app", Report::Offline, 1_200)),
        ["offline ip", "offline disk"]
    );
    assert_eq!(n.db_state("app"), Offline);
    assert_eq!(
        (n.db_state("disk"), n.reason("disk")),
        (OfflinePending, "desired state is Offline")
    );
    assert_eq!(calls(&n.report("ip", Report::Offline, 1_300)), NONE);
    assert_eq!(calls(&n.report("disk", Report::Offline, 1_400)), NONE);
    assert_eq!(n.group_state(), GroupState::Offline);
}

#[test]
fn desired_equal_to_reported_gives_no_actions() {
    let mut n = Node::new(&[("disk", &[]), ("app", &["disk"])]);
    assert_eq!(n.tick(0), []);
    n.start(100);
    assert_eq!(n.tick(200), []);
    assert_eq!(n.tick(10 * RETRY), []);
    assert_eq!(n.rcm.next_wakeup_ms(&n.db), None);
}

#[test]
fn failed_resource_is_restarted_after_restart_delay_and_terminated_by_one_side_only() {
    let mut n = Node::new(&[("web", &[])]);
    n.start(0);
    // The RHS terminated what it reported Failed: the RCM does not call Terminate again.
    assert_eq!(calls(&n.report("web", Report::Failed, 5_000)), NONE);
    assert_eq!(
        (n.db_state("web"), n.reason("web")),
        (Failed, "rhs says so")
    );
    assert_eq!(n.rcm.state("web"), Failed);

    assert_eq!(calls(&n.tick(5_000 + DELAY - 1)), NONE);
    assert_eq!(n.db_state("web"), Failed);
    assert_eq!(calls(&n.tick(5_000 + DELAY)), ["online web"]);
    assert_eq!(
        (n.db_state("web"), n.reason("web")),
        (OnlinePending, "restarting in place")
    );
}

#[test]
fn exhausted_restarts_on_a_single_node_fail_the_group_until_the_retry_period() {
    let mut n = Node::with_props(
        &[("web", &[])],
        props_with(RestartAction::RestartThenFailover, 1),
    );
    n.start(0);
    assert_eq!(calls(&n.report("web", Report::Failed, 10_000)), NONE);
    assert_eq!(calls(&n.tick(10_000 + DELAY)), ["online web"]);
    n.report("web", Report::Online, 11_500);

    let actions = n.report("web", Report::Failed, 12_000);
    assert_eq!(calls(&actions), NONE);
    let failures = group_failures(&actions);
    assert_eq!(failures.len(), 1);
    let failure = n.db.groups["g"]
        .failure
        .clone()
        .expect("group marked failed");
    assert_eq!(failures[0].as_ref(), Some(&failure));
    assert!(
        failure.starts_with("restarts of web exhausted")
            && failure.contains("no other node can host the group"),
        "{failure}"
    );
    assert_eq!(n.group_state(), GroupState::Failed);
    assert_eq!(
        n.rcm.next_wakeup_ms(&n.db),
        None,
        "the RCM waits for the FM"
    );
    assert_eq!(n.fm_wakeup(12_001), Some(12_000 + RETRY));

    for t in [12_000 + DELAY, 20_000, 12_000 + RETRY - 1] {
        assert_eq!(calls(&n.tick(t)), NONE, "no restart at {t}");
    }
    assert_eq!(n.db_state("web"), Failed);

    let actions = n.tick(12_000 + RETRY);
    assert_eq!(calls(&actions), ["online web"]);
    assert_eq!(group_failures(&actions), [None]);
    assert_eq!(n.db.groups["g"].failure, None);
    assert_eq!(n.reason("web"), "retrying after retry_period_on_failure_s");
}

#[test]
fn exhausted_restarts_fail_the_group_over_to_another_node() {
    let mut n = Node::with_props(
        &[("web", &[])],
        props_with(RestartAction::RestartThenFailover, 0),
    );
    apply(
        &mut n.db,
        &Command::AddNode {
            name: "n2".into(),
            address: "n2:7000".into(),
        },
    )
    .unwrap();
    n.start(0);
    let actions = n.report("web", Report::Failed, 1_000);
    // Terminated by its RHS, nothing else runs: the group is handed over at once.
    assert_eq!(calls(&actions), ["close web"]);
    let cmds = db_commands(&actions);
    let position = |wanted: &Command| cmds.iter().position(|c| *c == wanted);
    let request = cmds
        .iter()
        .position(|c| matches!(c, Command::RequestFailover { .. }))
        .expect("failover requested");
    let moving = position(&Command::MoveGroup {
        group: "g".into(),
        to: "n2".into(),
        kind: vigil_core::model::MoveKind::Failover,
        quick: false,
    })
    .expect("the failover manager chose n2");
    let owner = position(&Command::HandOver {
        group: "g".into(),
        from: "n1".into(),
        to: "n2".into(),
    })
    .expect("the owner handed the group over");
    assert!(request < moving && moving < owner, "{cmds:?}");
    assert_eq!(
        (n.db.groups["g"].owner.as_deref(), n.db.group_epoch("g")),
        (Some("n2"), 2)
    );
    assert_eq!(n.db.groups["g"].failure, None);
    assert_eq!(n.db.groups["g"].failovers.len(), 1);
    // No longer this node's resource: never restarted here.
    assert_eq!(n.tick(1_000 + RETRY), []);
}

#[test]
fn restart_action_restart_exhausted_stays_failed_until_the_retry_period() {
    let mut n = Node::with_props(&[("web", &[])], props_with(RestartAction::Restart, 1));
    n.start(0);
    n.report("web", Report::Failed, 10_000);
    assert_eq!(calls(&n.tick(10_000 + DELAY)), ["online web"]);
    n.report("web", Report::Online, 11_500);

    let actions = n.report("web", Report::Failed, 12_000);
    assert_eq!(calls(&actions), NONE);
    assert_eq!(group_failures(&actions), []);
    assert_eq!(n.db.groups["g"].failure, None);
    assert_eq!(n.rcm.next_wakeup_ms(&n.db), Some(12_000 + RETRY));
    for t in [12_000 + DELAY, 30_000, 12_000 + RETRY - 1] {
        assert_eq!(calls(&n.tick(t)), NONE, "no restart at {t}");
    }
    assert_eq!((n.db_state("web"), n.rcm.state("web")), (Failed, Failed));

    assert_eq!(calls(&n.tick(12_000 + RETRY)), ["online web"]);
    assert_eq!(n.reason("web"), "retrying after retry_period_on_failure_s");
    // The retry starts a fresh count: the next failure restarts in place again.
    n.report("web", Report::Online, 80_000);
    n.report("web", Report::Failed, 90_000);
    assert_eq!(n.rcm.next_wakeup_ms(&n.db), Some(90_000 + DELAY));
    assert_eq!(calls(&n.tick(90_000 + DELAY)), ["online web"]);
}

#[test]
fn restart_action_none_never_restarts_in_place() {
    let mut n = Node::with_props(&[("web", &[])], props_with(RestartAction::None, 3));
    n.start(0);
    assert_eq!(calls(&n.report("web", Report::Failed, 1_000)), NONE);
    assert_eq!(calls(&n.tick(1_000 + DELAY)), NONE);
    assert_eq!(calls(&n.tick(1_000 + RETRY)), ["online web"]);
}

#[test]
fn stopped_out_of_band_sets_desired_offline_and_is_not_restarted() {
    let mut n = Node::new(&[("web", &[])]);
    n.start(0);
    let actions = n.report("web", Report::StoppedOutOfBand, 5_000);
    assert_eq!(calls(&actions), NONE);
    let offline = Command::SetPersistentState {
        target: Target::Resource("web".into()),
        state: Off,
    };
    assert_eq!(db_commands(&actions).last(), Some(&&offline));
    assert_eq!(n.db.resources["web"].persistent_state, Off);
    assert_eq!(n.db_state("web"), Offline);
    assert!(
        n.reason("web").starts_with("stopped outside the cluster"),
        "{}",
        n.reason("web")
    );
    for t in [5_000 + DELAY, 5_000 + RETRY, 100 * RETRY] {
        assert_eq!(calls(&n.tick(t)), NONE, "restarted at {t}");
    }
    assert_eq!(n.rcm.next_wakeup_ms(&n.db), None);

    // The operator's own Online is obeyed again.
    assert_eq!(calls(&n.desire_group(On, 200 * RETRY)), ["online web"]);
}

#[test]
fn failed_provider_takes_dependents_offline_and_they_return_after_it_recovers() {
    let mut n = Node::new(&[("disk", &[]), ("app", &["disk"])]);
    n.start(0);
    assert_eq!(
        calls(&n.report("disk", Report::Failed, 5_000)),
        ["offline app"]
    );
    assert_eq!(
        (n.db_state("app"), n.reason("app")),
        (OfflinePending, "dependency disk is not Online")
    );
    assert_eq!(calls(&n.report("app", Report::Offline, 5_100)), NONE);
    assert_eq!(n.db_state("app"), Offline);
    assert_eq!(n.group_state(), GroupState::Failed);

    assert_eq!(calls(&n.tick(5_000 + DELAY)), ["online disk"]);
    assert_eq!(
        calls(&n.report("disk", Report::Online, 6_500)),
        ["online app"]
    );
    n.report("app", Report::Online, 6_600);
    assert_eq!(n.group_state(), GroupState::Online);
}

#[test]
fn pending_without_progress_times_out_terminated_and_failed() {
    let mut n = Node::new(&[("web", &[])]);
    assert_eq!(calls(&n.desire_group(On, 0)), ["online web"]);
    assert_eq!(n.rcm.next_wakeup_ms(&n.db), Some(PENDING));
    assert_eq!(calls(&n.tick(PENDING - 1)), NONE);
    assert_eq!(n.db_state("web"), OnlinePending);

    assert_eq!(calls(&n.tick(PENDING)), ["terminate web"]);
    assert_eq!(n.db_state("web"), Failed);
    let reason = n.reason("web");
    assert!(
        reason.starts_with("OnlinePending without progress for pending_timeout_ms=10000"),
        "{reason}"
    );
    // A timeout is a failure like any other: the restart policy applies.
    assert_eq!(calls(&n.tick(PENDING + DELAY)), ["online web"]);
}

#[test]
fn progress_reports_postpone_the_pending_timeout() {
    let mut n = Node::new(&[("web", &[])]);
    n.desire_group(On, 0);
    assert_eq!(
        calls(&n.report("web", Report::OnlinePending { progress: true }, 8_000)),
        NONE
    );
    assert_eq!(n.rcm.next_wakeup_ms(&n.db), Some(8_000 + PENDING));
    assert_eq!(calls(&n.tick(PENDING)), NONE);
    // A pending report without progress does not count.
    n.report("web", Report::OnlinePending { progress: false }, 12_000);
    assert_eq!(calls(&n.tick(8_000 + PENDING - 1)), NONE);
    assert_eq!(n.db_state("web"), OnlinePending);
    assert_eq!(calls(&n.tick(8_000 + PENDING)), ["terminate web"]);
    assert_eq!(n.db_state("web"), Failed);
}

#[test]
fn offline_pending_timeout_counts_from_the_offline_call() {
    let mut n = Node::new(&[("web", &[])]);
    n.start(0);
    // Online for far longer than pending_timeout_ms; a graceful Offline must get its full time.
    let t = 100 * PENDING;
    assert_eq!(calls(&n.desire_group(Off, t)), ["offline web"]);
    assert_eq!(n.db_state("web"), OfflinePending);
    assert_eq!(n.rcm.next_wakeup_ms(&n.db), Some(t + PENDING));
    assert_eq!(calls(&n.tick(t + PENDING - 1)), NONE);
    assert_eq!(calls(&n.tick(t + PENDING)), ["terminate web"]);
    assert_eq!(n.db_state("web"), Offline);
    assert!(
        n.reason("web")
            .starts_with("OfflinePending without progress"),
        "{}",
        n.reason("web")
    );
}

#[test]
fn host_lost_fails_running_resources() {
    let mut n = Node::new(&[("web", &[]), ("log", &[])]);
    n.start(0);
    assert_eq!(
        calls(&n.desire(Target::Resource("log".into()), Off, 1_000)),
        ["offline log"]
    );

    let lost = Input::HostLost {
        resources: vec!["web".into(), "log".into()],
        reason: "rhs died".into(),
    };
    assert_eq!(calls(&n.step(lost, 2_000)), ["terminate web"]);
    assert_eq!((n.db_state("web"), n.reason("web")), (Failed, "rhs died"));
    // Stopping it was what we wanted anyway.
    assert_eq!(n.db_state("log"), Offline);
    assert_eq!(calls(&n.tick(2_000 + DELAY)), ["online web"]);
}

#[test]
fn simulated_failure_fails_only_a_running_resource() {
    let mut n = Node::new(&[("web", &[]), ("log", &[])]);
    n.desire(Target::Resource("web".into()), On, 0);
    n.report("web", Report::Online, 100);
    let fail = |r: &str| Input::SimulateFailure { resource: r.into() };
    assert_eq!(n.step(fail("log"), 200), []);
    assert_eq!(calls(&n.step(fail("web"), 300)), ["terminate web"]);
    assert_eq!(n.db_state("web"), Failed);
}

#[test]
fn deadlock_moves_the_resource_to_a_separate_monitor() {
    let mut n = Node::new(&[("disk", &[]), ("web", &["disk"])]);
    n.start(0);
    let deadlock = || Input::Deadlock {
        resource: "web".into(),
        entry_point: "is_alive".into(),
    };
    let actions = n.step(deadlock(), 1_000);
    assert_eq!(calls(&actions), NONE);
    let r = &n.db.resources["web"];
    let expected = Command::UpdateResource {
        name: "web".into(),
        params: r.params.clone(),
        secret: Vec::new(),
        props: ResourceProps {
            separate_monitor: true,
            ..props()
        },
        depends_on: vec!["disk".into()],
    };
    assert_eq!(db_commands(&actions), [&expected]);
    assert!(r.props.separate_monitor);
    let reason = &logs(&actions)[0].reason;
    assert!(
        reason.starts_with("is_alive did not return within deadlock_timeout_ms=60000"),
        "{reason}"
    );

    // Already on a monitor of its own: only logged.
    let actions = n.step(deadlock(), 2_000);
    assert_eq!(db_commands(&actions), Vec::<&Command>::new());
    assert_eq!(logs(&actions).len(), 1);
}

#[test]
fn first_sight_of_a_resource_recorded_online_records_offline_then_starts_it() {
    let mut n = Node::new(&[("web", &[]), ("log", &[])]);
    apply(
        &mut n.db,
        &Command::SetPersistentState {
            target: Target::Resource("web".into()),
            state: On,
        },
    )
    .unwrap();
    for r in ["web", "log"] {
        let cmd = Command::RecordState {
            resource: r.into(),
            state: Online,
            reason: "old run".into(),
            pid: Some(7),
            node: Some("n1".into()),
        };
        apply(&mut n.db, &cmd).unwrap();
    }

    let actions = n.tick(0);
    let agent_started = |r: &str| Command::RecordState {
        resource: r.into(),
        state: Offline,
        reason: "not running on n1 yet (it just took the group over, or its agent started)".into(),
        pid: None,
        node: Some("n1".into()),
    };
    let cmds = db_commands(&actions);
    assert_eq!(cmds[..2], [&agent_started("log"), &agent_started("web")]);
    let position = |wanted: Action| actions.iter().position(|a| *a == wanted).unwrap();
    let online = position(Action::Online {
        resource: "web".into(),
    });
    let recorded = position(Action::Db(agent_started("web")));
    assert!(recorded < online, "{actions:?}");
    assert_eq!(calls(&actions), ["online web"]);
    assert_eq!(
        (n.db_state("web"), n.db_state("log")),
        (OnlinePending, Offline)
    );
    assert_eq!(n.db.resources["log"].pid, None);
}

#[test]
fn next_wakeup_is_the_restart_time_after_a_failure() {
    let mut n = Node::new(&[("web", &[])]);
    n.start(0);
    assert_eq!(n.rcm.next_wakeup_ms(&n.db), None);
    n.report("web", Report::Failed, 5_000);
    assert_eq!(n.rcm.next_wakeup_ms(&n.db), Some(5_000 + DELAY));
    n.tick(5_000 + DELAY);
    assert_eq!(n.rcm.next_wakeup_ms(&n.db), Some(5_000 + DELAY + PENDING));
}

#[test]
fn a_due_restart_waiting_for_its_provider_does_not_spin_the_clock() {
    let mut n = Node::new(&[("a", &[]), ("b", &["a"])]);
    n.start(0);
    let lost = Input::HostLost {
        resources: vec!["a".into(), "b".into()],
        reason: "RHS died".into(),
    };
    n.step(lost, 100);
    // At the restart time a comes back first; b must wait for a, not for a timer.
    assert_eq!(calls(&n.tick(100 + DELAY)), ["online a"]);
    let wake = n.rcm.next_wakeup_ms(&n.db);
    assert!(
        wake.is_none_or(|t| t > 100 + DELAY),
        "a wakeup in the past would spin the main loop: {wake:?}"
    );
    assert_eq!(
        calls(&n.report("a", Report::Online, 100 + DELAY + 5)),
        ["online b"]
    );
}

#[test]
fn an_operator_offline_stops_a_pending_online_at_once() {
    let mut n = Node::new(&[("a", &[])]);
    assert_eq!(calls(&n.desire_group(On, 0)), ["online a"]);
    assert_eq!(n.db_state("a"), OnlinePending);
    assert_eq!(calls(&n.desire_group(Off, 10)), ["offline a"]);
    assert_eq!(n.db_state("a"), OfflinePending);
    // A late Online from the call in flight is stale; the Offline report settles it.
    assert!(calls(&n.report("a", Report::Online, 20)).is_empty());
    n.report("a", Report::Offline, 30);
    assert_eq!(n.db_state("a"), Offline);
}

#[test]
fn onlining_a_dependent_brings_back_a_provider_stopped_out_of_band() {
    let mut n = Node::new(&[("a", &[]), ("b", &["a"])]);
    n.start(0);
    let out = n.report("a", Report::StoppedOutOfBand, 10);
    assert_eq!(calls(&out), ["offline b"]);
    n.report("b", Report::Offline, 20);
    assert_eq!(n.db.resources["a"].persistent_state, Off);
    assert_eq!(n.db.resources["b"].persistent_state, Off);
    // Only b is named; the database pulls its provider a Online with it.
    apply(
        &mut n.db,
        &Command::SetPersistentState {
            target: Target::Resource("b".into()),
            state: On,
        },
    )
    .unwrap();
    let out = n.step(
        Input::Operator {
            resources: vec!["b".into()],
        },
        30,
    );
    assert_eq!(calls(&out), ["online a"]);
}

#[test]
fn a_failed_mark_is_cleared_when_the_group_is_tried_again() {
    let mut n = Node::with_props(
        &[("a", &[])],
        props_with(RestartAction::RestartThenFailover, 0),
    );
    n.start(0);
    n.report("a", Report::Failed, 10);
    assert!(n.db.groups["g"].failure.is_some());
    assert_eq!(n.group_state(), GroupState::Failed);
    // The operator brings the resource online again (not the group): the hold and the mark go.
    let out = n.desire(Target::Resource("a".into()), On, 20);
    assert_eq!(calls(&out), ["online a"]);
    assert_eq!(n.db.groups["g"].failure, None);
    // A new agent (nothing in memory) finding a Failed mark keeps the group stopped; the
    // failover manager tries it again when the retry period has passed.
    n.report("a", Report::Online, 30);
    n.report("a", Report::Failed, 40);
    assert!(n.db.groups["g"].failure.is_some());
    n.rcm = Rcm::new("n1");
    assert_eq!(calls(&n.tick(50)), NONE);
    assert!(n.db.groups["g"].failure.is_some());
    assert_eq!(calls(&n.tick(40 + RETRY)), ["online a"]);
    assert_eq!(n.db.groups["g"].failure, None);
}

#[test]
fn a_fenced_node_terminates_everything_and_starts_nothing_until_unfenced() {
    let mut n = Node::new(&[("a", &[]), ("b", &["a"])]);
    n.start(0);
    let fence = |fenced| Input::Fence {
        fenced,
        reason: "lease".into(),
    };
    let out = n.step(fence(true), 10);
    let mut c = calls(&out);
    c.sort();
    assert_eq!(c, ["terminate a", "terminate b"]);
    assert_eq!((n.db_state("a"), n.db_state("b")), (Offline, Offline));
    assert!(
        calls(&n.tick(5_000)).is_empty(),
        "nothing starts while fenced"
    );
    assert_eq!(n.rcm.next_wakeup_ms(&n.db), None);
    assert_eq!(calls(&n.step(fence(false), 6_000)), ["online a"]);
}

fn add_n2(n: &mut Node) {
    let cmd = Command::AddNode {
        name: "n2".into(),
        address: "n2:7000".into(),
    };
    apply(&mut n.db, &cmd).unwrap();
}

#[test]
fn a_configuration_error_is_not_restarted_here_and_the_group_fails_over() {
    let mut n = Node::with_props(
        &[("web", &[])],
        props_with(RestartAction::RestartThenFailover, 3),
    );
    add_n2(&mut n);
    n.start(0);
    // Three restarts are allowed, but none helps a configuration error on this node.
    let actions = n.report("web", Report::FailedHere, 1_000);
    assert_eq!(calls(&actions), ["close web"]);
    let reasons: Vec<&str> = logs(&actions).iter().map(|l| l.reason.as_str()).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("web is misconfigured on n1")),
        "{reasons:?}"
    );
    assert_eq!(n.db.groups["g"].owner.as_deref(), Some("n2"));
    assert_eq!(n.tick(10_000), []);
}

/// n1 runs `vm` (which can migrate) in g, and an operator has asked for g on n2.
fn moving_live() -> Node {
    let mut n = Node::new(&[("vm", &[])]);
    n.db.resources.get_mut("vm").unwrap().migratable = true;
    add_n2(&mut n);
    n.start(0);
    let mv = Command::MoveGroup {
        group: "g".into(),
        to: "n2".into(),
        kind: vigil_core::model::MoveKind::Operator,
        quick: false,
    };
    apply(&mut n.db, &mv).unwrap();
    n
}

#[test]
fn a_live_move_migrates_then_hands_over_then_stops_what_is_left() {
    let mut n = moving_live();
    assert!(n.db.groups["g"].moving.as_ref().unwrap().live);
    let actions = n.tick(1_000);
    assert_eq!(
        calls(&actions),
        ["migrate vm to n2"],
        "no stop before migrating"
    );
    // Nothing more while migrate_to runs.
    assert_eq!(calls(&n.tick(1_100)), Vec::<String>::new());
    let actions = n.report("vm", Report::Migrated, 1_200);
    assert!(
        db_commands(&actions).contains(&&Command::MigratedOwner {
            group: "g".into(),
            node: "n2".into(),
            resources: vec!["vm".into()],
        }),
        "{actions:?}"
    );
    assert_eq!(n.db.groups["g"].owner.as_deref(), Some("n2"));
    // The target has not completed it yet: what is left here stays.
    assert_eq!(calls(&n.tick(1_300)), Vec::<String>::new());
    apply(&mut n.db, &Command::EndMigration { group: "g".into() }).unwrap();
    assert_eq!(calls(&n.tick(1_400)), ["offline vm"]);
}

#[test]
fn a_failed_live_migration_leaves_the_group_running_here() {
    let mut n = moving_live();
    assert_eq!(calls(&n.tick(1_000)), ["migrate vm to n2"]);
    let actions = n.report("vm", Report::MigrateFailed, 1_200);
    assert_eq!(
        calls(&actions),
        Vec::<String>::new(),
        "nothing stopped or restarted"
    );
    let g = &n.db.groups["g"];
    assert_eq!(g.owner.as_deref(), Some("n1"));
    assert!(g.moving.is_none());
    assert_eq!(g.failed_moves[0].to, "n2");
    assert_eq!(n.db_state("vm"), ResourceState::Online);
}

#[test]
fn a_start_the_rhs_cannot_take_fails_and_is_retried_after_the_restart_delay() {
    let mut n = Node::new(&[("web", &[])]);
    n.refuse = Some("web has no RHS: fork failed".into());
    n.desire_group(On, 0);
    // The executor turned the refused call into the report the RCM would have waited for.
    assert_eq!(n.db_state("web"), Failed);
    assert!(
        n.reason("web").contains("fork failed"),
        "{}",
        n.reason("web")
    );
    n.refuse = None;
    assert_eq!(calls(&n.tick(DELAY - 1)), Vec::<String>::new());
    assert_eq!(calls(&n.tick(DELAY)), ["online web"]);
}

#[test]
fn an_offline_of_what_no_rhs_runs_is_done_at_once() {
    let mut n = Node::new(&[("web", &[])]);
    n.start(0);
    n.refuse = Some("not running in any RHS".into());
    let actions = n.desire_group(Off, 10);
    assert_eq!(calls(&actions), ["offline web"]);
    assert_eq!(n.db_state("web"), Offline);
}

#[test]
fn a_failure_the_rcm_finds_itself_is_terminated_by_the_rcm() {
    let mut n = Node::new(&[("web", &[])]);
    n.start(0);
    let simulate = Input::SimulateFailure {
        resource: "web".into(),
    };
    assert_eq!(calls(&n.step(simulate, 1_000)), ["terminate web"]);
    assert_eq!(n.db_state("web"), Failed);
}

#[test]
fn a_failure_report_that_names_no_instance_terminates_whatever_runs() {
    // A Failed from the RHS's dispatcher (instance 0: "not open", "no lease") can arrive after
    // the RCM has started a newer instance; nothing vouches that one is ended.
    let mut n = Node::new(&[("web", &[])]);
    n.start(0);
    let actions = n.report_ended("web", Report::Failed, false, 1_000);
    assert_eq!(calls(&actions), ["terminate web"]);
    assert_eq!(n.db_state("web"), Failed);
}
