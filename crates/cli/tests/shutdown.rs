//! A clean stop (SIGTERM, as `systemctl stop` sends it) under each shutdown policy, with
//! real agents: `migrate` drains first (a VM leaves live, a service cold) and the groups come
//! back when the node does; `failover` moves the groups at once, with no wait for the lease;
//! `freeze` keeps them with the stopped node until it is back. None of them is a failure:
//! no Down record, no failover counted.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Agent, wait_until};

/// How long a stop may take in these tests (drain, then ending the resources).
const STOP_LIMIT: Duration = Duration::from_secs(90);

/// n1 (bootstrapped) and n2 on their own addresses, and a witness `w` (so that two of three
/// voters remain when one stops); `n1_args` are n1's extra agent options.
fn cluster(ips: [&str; 3], n1_args: &[&str]) -> (Agent, Agent, Agent) {
    let mut n1 = Agent::on("n1", ips[0]);
    let mut cmd = n1.agent_command(true);
    cmd.args(n1_args);
    n1.spawn_with(cmd);
    let n2 = Agent::on("n2", ips[1]).start_joining(&n1);
    let mut w = Agent::on("w", ips[2]);
    let mut cmd = w.agent_command(false);
    cmd.args(support::join_args(&n1.listen)).arg("--witness");
    w.spawn_with(cmd);
    wait_until("n2 and w are Up", || {
        n1.node_state("n2").as_deref() == Some("Up") && n1.node_state("w").as_deref() == Some("Up")
    });
    (n1, n2, w)
}

/// Group `g` preferring n1, then n2 (failback immediate), with a `sleep` service, Online.
fn service_on_n1(n1: &Agent, g: &str, r: &str) -> u32 {
    n1.ok(&[
        "group",
        "create",
        g,
        "--preferred-owners",
        "n1,n2",
        "--auto-failback",
        "immediate",
    ]);
    n1.process(g, r, "sleep 1000", &["--online"]);
    n1.wait_online(r)
}

/// Every node's cluster log records, read from the data dirs (a stopped node's too), in
/// time order.
fn cluster_log(agents: &[&Agent]) -> Vec<Value> {
    let mut all: Vec<Value> = agents.iter().flat_map(|a| a.log_file()).collect();
    all.sort_by_key(|r| r["time"].as_str().unwrap_or("").to_string());
    all
}

fn reasons(log: &[Value]) -> Vec<String> {
    log.iter()
        .map(|r| {
            format!(
                "{}: {}",
                r["node"].as_str().unwrap_or("?"),
                r["reason"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// Where in `log` the first record containing `text` is.
fn position(log: &[String], text: &str) -> usize {
    log.iter()
        .position(|r| r.contains(text))
        .unwrap_or_else(|| panic!("no record with {text:?} in {log:#?}"))
}

/// No record calls n1 Down, and no group failed over for its stop.
fn no_failure_recorded(log: &[String]) {
    let down: Vec<&String> = log
        .iter()
        .filter(|r| r.contains("node n1 ") && r.ends_with("Down"))
        .collect();
    assert!(
        down.is_empty(),
        "a clean stop was recorded as Down: {down:#?}"
    );
    let failed: Vec<&String> = log
        .iter()
        .filter(|r| r.contains("owner n1 is Down") || r.contains("failover_threshold"))
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
}

/// The default policy: the node drains before it stops. The VM group leaves live, the
/// service moves cold, and only then does the agent end and the node become Stopped. Back,
/// it takes its groups back (they were drained off it by the stop, not by an operator).
#[test]
fn under_migrate_a_stopping_node_drains_first_a_vm_leaves_live_and_the_groups_come_back() {
    assert!(
        std::process::Command::new("qemu-system-x86_64")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "qemu-system-x86_64 is missing: run the README's test command"
    );
    let (mut n1, n2, w) = cluster(["127.0.0.61", "127.0.0.62", "127.0.0.63"], &[]);
    let before = service_on_n1(&n1, "web", "site");
    n1.ok(&[
        "group",
        "create",
        "vms",
        "--preferred-owners",
        "n1,n2",
        "--auto-failback",
        "immediate",
    ]);
    let params = [
        "stop_timeout_ms=1000",
        "memory_mb=64",
        "migration_port=47261",
    ];
    n1.create(
        "vm1",
        "vms",
        "vm",
        &params,
        &["--looks-alive-ms", "200", "--online"],
    );
    let vm_before = n1.wait_online("vm1");

    let status = n1.stop(STOP_LIMIT).expect("the agent stopped");
    assert!(status.success(), "{status:?}");
    // The drain came first (the log's order, below); n2's copy may lag a little behind.
    wait_until("both groups on n2", || {
        n2.group("vms")["owner"] == "n2"
            && n2.state("vm1") == "Online"
            && n2.group("web")["owner"] == "n2"
    });
    let vm_after = n2.pid_of("vm1").expect("vm1 runs on n2");
    n2.seen_pid(vm_after);
    n2.wait_online("site");
    assert_ne!(n2.pid_of("site"), Some(before));
    assert_ne!(vm_after, vm_before);
    wait_until("n1 is Stopped", || {
        n2.node_state("n1").as_deref() == Some("Stopped")
    });
    let log = reasons(&cluster_log(&[&n1, &n2, &w]));
    let asked = position(&log, "agent on n1 asked to stop: shutdown policy migrate");
    let live = position(
        &log,
        "live migration to n2 (Drain move): migrate_to started",
    );
    // It went live all the way (a failed migration would have moved it cold).
    let done = position(
        &log,
        "migrate_to done: now running on n2: live migration to n2 done",
    );
    let drained = position(&log, "shutdown drain of n1 done");
    let stopped = position(&log, "node n1 stopped cleanly: Stopped");
    assert!(
        asked < live && live < done && done < drained && drained < stopped,
        "{log:#?}"
    );
    assert!(
        !log.iter().any(|r| r.contains("moving cold")),
        "no cold fallback: {log:#?}"
    );
    no_failure_recorded(&log);

    // Back: Up, and both groups return (the VM live again).
    n1.spawn(false);
    let back = || {
        n2.node_state("n1").as_deref() == Some("Up")
            && n2.group("web")["owner"] == "n1"
            && n2.group("vms")["owner"] == "n1"
            && n1.state("site") == "Online"
            && n1.state("vm1") == "Online"
    };
    let deadline = std::time::Instant::now() + support::WAIT;
    while !back() {
        assert!(
            std::time::Instant::now() < deadline,
            "n1 is not back with its groups: {:#}\n{:#?}",
            n2.status(),
            reasons(&cluster_log(&[&n1, &n2, &w]))
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    n1.seen_pid(n1.pid_of("vm1").unwrap());
    let log = reasons(&cluster_log(&[&n1, &n2, &w]));
    position(
        &log,
        "node n1 is back (its agent started again after a clean stop); Up",
    );
    position(&log, "live migration to n1 (Failback move)");
    no_failure_recorded(&log);
}

/// The cluster's policy set to `failover`: the node ends its resources and says so, and
/// its group fails over at once, as a clean stop (not "Down", no failover counted, so a
/// threshold of 0 does not leave it Failed).
#[test]
fn under_failover_the_groups_move_at_once_and_count_no_failover() {
    let (mut n1, n2, w) = cluster(["127.0.0.64", "127.0.0.65", "127.0.0.66"], &[]);
    n1.ok(&["cluster", "set", "--shutdown-policy", "failover"]);
    assert_eq!(
        n2.ok(&["cluster", "show"]).trim(),
        "shutdown_policy = failover"
    );
    let before = service_on_n1(&n1, "web", "site");
    n1.ok(&["group", "set", "web", "--failover-threshold", "0"]);

    let status = n1.stop(STOP_LIMIT).expect("the agent stopped");
    assert!(status.success(), "{status:?}");
    assert!(!support::alive(before), "the service ended with its node");
    wait_until("site is Online on n2", || {
        n2.group("web")["owner"] == "n2" && n2.state("site") == "Online"
    });
    n2.seen_pid(n2.pid_of("site").unwrap());
    assert_eq!(n2.node_state("n1").as_deref(), Some("Stopped"));
    assert!(n2.group("web")["failure"].is_null(), "{}", n2.group("web"));
    let log = reasons(&cluster_log(&[&n1, &n2, &w]));
    let stopped = position(&log, "node n1 stopped cleanly: Stopped");
    let moved = position(&log, "owner n1 stopped cleanly: failing over to n2");
    assert!(stopped < moved, "{log:#?}");
    assert!(
        !log.iter().any(|r| r.contains("drains node n1")),
        "no drain under failover: {log:#?}"
    );
    no_failure_recorded(&log);
}

/// This node's own policy (its config file) says `freeze`: its resources end, its group
/// stays with it, Offline, however long it is away (past lease and margin), and starts
/// again when it is back.
#[test]
fn under_freeze_the_groups_stay_with_the_stopped_node_and_start_again_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vigil.toml");
    std::fs::write(&config, "shutdown_policy = \"freeze\"\n").unwrap();
    let config = config.display().to_string();
    let (mut n1, n2, w) = cluster(
        ["127.0.0.67", "127.0.0.68", "127.0.0.69"],
        &["--config", &config],
    );
    let before = service_on_n1(&n1, "web", "site");
    let epoch = n1.group("web")["epoch"].clone();

    let status = n1.stop(STOP_LIMIT).expect("the agent stopped");
    assert!(status.success(), "{status:?}");
    assert!(!support::alive(before));
    wait_until("n1 is Frozen", || {
        n2.node_state("n1").as_deref() == Some("Frozen")
    });
    assert_eq!(n2.state("site"), "Offline");
    // Well past lease (2 s) and margin: still n1's, and n1 is not Down.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(n2.node_state("n1").as_deref(), Some("Frozen"));
    assert_eq!(n2.group("web")["owner"], "n1");
    assert_eq!(n2.group("web")["epoch"], epoch);

    n1.spawn(false);
    let after = n1.wait_online("site");
    assert_ne!(after, before);
    assert_eq!(n2.group("web")["owner"], "n1");
    wait_until("n1 is Up", || n2.node_state("n1").as_deref() == Some("Up"));
    let log = reasons(&cluster_log(&[&n1, &n2, &w]));
    let frozen = position(
        &log,
        "node n1 stopped cleanly: Frozen; its groups wait for it",
    );
    let back = position(&log, "node n1 is back");
    assert!(frozen < back, "{log:#?}");
    assert!(!log.iter().any(|r| r.contains("failing over")), "{log:#?}");
    no_failure_recorded(&log);
}

/// A drain that cannot finish within shutdown_timeout_s (a service that takes 20 s to stop)
/// says what is still there, then the stop goes on as under `failover`.
#[test]
fn a_drain_that_does_not_finish_in_time_says_what_is_left_and_stops_as_failover() {
    let (mut n1, n2, w) = cluster(
        ["127.0.0.70", "127.0.0.71", "127.0.0.72"],
        &["--shutdown-timeout-s", "1"],
    );
    n1.ok(&["group", "create", "slow", "--preferred-owners", "n1,n2"]);
    n1.process(
        "slow",
        "stubborn",
        "sh -c 'trap \"\" TERM; exec sleep 1000'",
        &["--param", "stop_timeout_ms=20000", "--online"],
    );
    n1.wait_online("stubborn");
    n1.stop(STOP_LIMIT).expect("the agent stopped");
    wait_until("stubborn is Online on n2", || {
        n2.group("slow")["owner"] == "n2" && n2.state("stubborn") == "Online"
    });
    n2.seen_pid(n2.pid_of("stubborn").unwrap());
    let log = reasons(&cluster_log(&[&n1, &n2, &w]));
    let late = position(
        &log,
        "shutdown drain of n1 not finished within shutdown_timeout_s=1; still on it: slow; stopping as under shutdown policy failover",
    );
    let stopped = position(&log, "node n1 stopped cleanly: Stopped");
    assert!(late < stopped, "{log:#?}");
    no_failure_recorded(&log);
}
