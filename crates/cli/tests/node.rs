//! One node, real processes: the seed's core loop end to end through `vigil agent`,
//! `vigil rhs` and the CLI.

mod support;

use std::time::Duration;

use support::{Agent, alive, kill9, wait_until};

#[test]
fn a_killed_process_is_restarted_in_place() {
    let a = Agent::start();
    a.process("g", "svc", "sleep 1000", &["--restart-delay-ms", "0"]);
    a.ok(&["group", "online", "g"]);
    a.wait_state("svc", "Online");
    let first = a.pid_of("svc").unwrap();
    kill9(first);
    wait_until("svc is Online with a new pid", || {
        let r = a.resource("svc");
        r["state"] == "Online" && r["pid"].as_u64().is_some_and(|p| p as u32 != first)
    });
    let reasons = a.reasons("svc");
    assert!(
        reasons.iter().any(|r| r == "IsAlive: killed by signal 9"),
        "{reasons:#?}"
    );
    assert!(
        reasons.iter().any(|r| r.starts_with("restart 1 of 3")),
        "{reasons:#?}"
    );
    assert_eq!(a.resource("svc")["persistent_state"], "Online");
}

#[test]
fn exhausted_restarts_end_failed_with_the_reason() {
    let a = Agent::start();
    a.process(
        "g",
        "crashy",
        "sh -c 'sleep 0.2; exit 1'",
        &["--restart-threshold", "2", "--restart-delay-ms", "0"],
    );
    a.ok(&["resource", "online", "crashy"]);
    wait_until("group g is Failed", || a.group("g")["state"] == "Failed");
    assert_eq!(a.state("crashy"), "Failed");
    let failure = a.group("g")["failure"].as_str().unwrap().to_string();
    assert!(
        failure.contains("restarts of crashy exhausted"),
        "{failure}"
    );
    let starts = |a: &Agent| {
        a.log()
            .iter()
            .filter(|r| r["resource"] == "crashy" && r["to"] == "OnlinePending")
            .count()
    };
    assert_eq!(
        starts(&a),
        3,
        "one start and two restarts: {:#?}",
        a.reasons("crashy")
    );
    // It stays Failed: no new start appears.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(starts(&a), 3);
}

#[test]
fn an_exit_listed_in_stop_exit_codes_is_an_operator_stop() {
    let a = Agent::start();
    a.process(
        "g",
        "job",
        "sh -c 'sleep 0.3; exit 0'",
        &["--param", "stop_exit_codes=0"],
    );
    a.ok(&["resource", "online", "job"]);
    wait_until("job's desired state is Offline", || {
        a.resource("job")["persistent_state"] == "Offline"
    });
    assert_eq!(a.state("job"), "Offline");
    let reasons = a.reasons("job");
    assert!(
        reasons.iter().any(|r| r.contains(
            "stopped outside the cluster (exited with code 0, listed in stop_exit_codes)"
        )),
        "{reasons:#?}"
    );
    std::thread::sleep(Duration::from_millis(800));
    let starts = a
        .reasons("job")
        .iter()
        .filter(|r| r.as_str() == "desired state is Online")
        .count();
    assert_eq!(starts, 1, "not restarted");
}

#[test]
fn a_process_that_ignores_its_stop_signal_is_killed_and_the_log_says_so() {
    let a = Agent::start();
    a.process(
        "g",
        "stubborn",
        "sh -c 'trap \"\" TERM; while true; do sleep 0.1; done'",
        &["--param", "stop_timeout_ms=300"],
    );
    a.ok(&["resource", "online", "stubborn"]);
    let pid = a.wait_online("stubborn");
    a.ok(&["resource", "offline", "stubborn"]);
    a.wait_state("stubborn", "Offline");
    assert!(!alive(pid));
    assert!(
        a.logged(
            "stubborn",
            "stopped: still running stop_timeout_ms=300 after signal 15; killed"
        ),
        "{:#?}",
        a.reasons("stubborn")
    );
}

#[test]
fn a_hanging_call_is_a_deadlock_and_only_its_rhs_pays() {
    let a = Agent::start();
    a.process("g", "steady", "sleep 1000", &["--separate-monitor"]);
    a.process("h", "neighbour", "sleep 1000", &["--restart-delay-ms", "0"]);
    a.process(
        "h",
        "stuck",
        "sleep 1000",
        &[
            "--param",
            "stop_timeout_ms=100",
            "--deadlock-timeout-ms",
            "2500",
            "--restart-threshold",
            "100",
            "--restart-delay-ms",
            "0",
        ],
    );
    a.ok(&["group", "online", "g"]);
    a.ok(&["resource", "online", "neighbour"]);
    a.wait_state("steady", "Online");
    a.wait_state("neighbour", "Online");
    let (steady, neighbour, rhs) = (
        a.pid_of("steady").unwrap(),
        a.pid_of("neighbour").unwrap(),
        a.rhs_pid("default").unwrap(),
    );
    // The process's output file is a FIFO nobody reads: opening it in Online never returns,
    // like a call stuck on a hung file system.
    let fifo = a.data_dir().join("resources/stuck.log");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    a.ok(&["resource", "online", "stuck"]);
    wait_until(
        "the shared RHS is replaced and neighbour restarted in it",
        || {
            a.rhs_pid("default").is_some_and(|p| p != rhs)
                && a.state("neighbour") == "Online"
                && a.pid_of("neighbour").is_some_and(|p| p != neighbour)
        },
    );
    let reasons = a.reasons("stuck");
    assert!(
        reasons.iter().any(|r| r
            .starts_with("Online did not return within deadlock_timeout_ms=2500")
            && r.ends_with("and the resource moves to a separate monitor")),
        "{reasons:#?}"
    );
    assert!(!alive(rhs), "the deadlocked RHS was killed");
    // stuck now lives (and keeps deadlocking) in an RHS of its own; nobody else pays.
    let own_rhs_exits = |a: &Agent| {
        a.log()
            .iter()
            .filter(|r| {
                r["reason"]
                    .as_str()
                    .unwrap()
                    .starts_with("RHS resource-stuck (pid")
            })
            .count()
    };
    wait_until("stuck deadlocks in its own RHS", || own_rhs_exits(&a) >= 1);
    let (neighbour, rhs) = (
        a.pid_of("neighbour").unwrap(),
        a.rhs_pid("default").unwrap(),
    );
    let before = own_rhs_exits(&a);
    wait_until("stuck deadlocks again", || own_rhs_exits(&a) > before);
    assert_eq!(a.pid_of("neighbour"), Some(neighbour));
    assert_eq!(a.pid_of("steady"), Some(steady));
    assert_eq!(a.rhs_pid("default"), Some(rhs));
    assert_eq!(a.state("neighbour"), "Online");
    assert_eq!(a.state("steady"), "Online");
}

#[test]
fn a_killed_rhs_is_replaced_and_its_resources_restarted() {
    let a = Agent::start();
    a.process("g", "svc", "sleep 1000", &["--restart-delay-ms", "0"]);
    a.ok(&["group", "online", "g"]);
    a.wait_state("svc", "Online");
    let (rhs, svc) = (a.rhs_pid("default").unwrap(), a.pid_of("svc").unwrap());
    kill9(rhs);
    wait_until("a new RHS runs svc", || {
        a.rhs_pid("default").is_some_and(|p| p != rhs)
            && a.state("svc") == "Online"
            && a.pid_of("svc").is_some_and(|p| p != svc)
    });
    wait_until("the old process is gone with its RHS", || !alive(svc));
    let log = a.log();
    assert!(log.iter().any(|r| {
        r["component"] == "RHS"
            && r["reason"]
                .as_str()
                .unwrap()
                .starts_with(&format!("RHS default (pid {rhs}) exited"))
    }));
}

#[test]
fn a_killed_agent_takes_its_resources_down_and_a_restart_brings_back_the_desired_ones() {
    let mut a = Agent::start();
    a.process("g", "up", "sleep 1000", &[]);
    a.process("g", "down", "sleep 1000", &[]);
    a.ok(&["resource", "online", "up"]);
    a.wait_state("up", "Online");
    let (rhs, up) = (a.rhs_pid("default").unwrap(), a.pid_of("up").unwrap());
    a.kill();
    wait_until("RHS and resource processes stop with the agent", || {
        !alive(rhs) && !alive(up)
    });
    a.spawn(false);
    a.wait_state("up", "Online");
    assert_ne!(a.pid_of("up"), Some(up));
    assert_eq!(a.state("down"), "Offline");
    assert_eq!(a.resource("down")["persistent_state"], "Offline");
    assert!(
        a.reasons("up")
            .iter()
            .any(|r| r
                == "not running on n1 yet (it just took the group over, or its agent started)")
    );
}

#[test]
fn a_graceful_stop_terminates_resources_and_keeps_desired_state() {
    let mut a = Agent::start();
    a.process("g", "svc", "sleep 1000", &[]);
    a.ok(&["group", "online", "g"]);
    a.wait_state("svc", "Online");
    let svc = a.pid_of("svc").unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(a.pid() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    wait_until("the resource stops with the agent", || !alive(svc));
    a.kill();
    a.spawn(false);
    a.wait_state("svc", "Online");
}

#[test]
fn dependencies_start_in_order_and_follow_a_failed_provider() {
    let a = Agent::start();
    a.process("g", "db", "sleep 1000", &["--restart-delay-ms", "300"]);
    a.process("g", "app", "sleep 1000", &["--depends-on", "db"]);
    a.ok(&["resource", "online", "app"]);
    a.wait_state("app", "Online");
    assert_eq!(
        a.resource("db")["persistent_state"],
        "Online",
        "online pulls the provider"
    );
    let order: Vec<String> = a
        .log()
        .into_iter()
        .filter(|r| r["to"] == "Online")
        .map(|r| r["resource"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(order, ["db", "app"]);
    let app = a.pid_of("app").unwrap();
    kill9(a.pid_of("db").unwrap());
    wait_until("app was stopped and came back", || {
        a.state("app") == "Online" && a.pid_of("app").is_some_and(|p| p != app)
    });
    assert!(
        a.reasons("app")
            .iter()
            .any(|r| r == "dependency db is not Online")
    );
    assert_eq!(a.state("db"), "Online");
}

#[test]
fn separate_monitor_gets_an_rhs_of_its_own() {
    let a = Agent::start();
    a.process("g", "alone", "sleep 1000", &["--separate-monitor"]);
    a.process("g", "shared", "sleep 1000", &[]);
    a.ok(&["group", "online", "g"]);
    a.wait_state("alone", "Online");
    a.wait_state("shared", "Online");
    assert_eq!(a.resource("alone")["rhs"], "resource-alone");
    assert_eq!(a.resource("shared")["rhs"], "default");
    assert_ne!(a.rhs_pid("resource-alone"), a.rhs_pid("default"));
}

#[test]
fn the_process_sees_resource_node_and_epoch() {
    let a = Agent::start();
    let out = a.dir.path().join("env.txt");
    let cmd = format!(
        "sh -c 'echo $VIGIL_RESOURCE $VIGIL_NODE $VIGIL_EPOCH > {}; exec sleep 1000'",
        out.display()
    );
    a.process("g", "envy", &cmd, &[]);
    a.ok(&["resource", "online", "envy"]);
    a.wait_state("envy", "Online");
    wait_until("the env file is written", || {
        support::read(&out).ends_with('\n')
    });
    assert_eq!(support::read(&out).trim(), "envy n1 1");
}

#[test]
fn an_http_check_gates_online_and_fails_the_resource() {
    let a = Agent::start();
    let port = support::free_port();
    let cmd = format!("python3 -m http.server {port} --bind 127.0.0.1");
    let check = format!("check_http=http://127.0.0.1:{port}/");
    a.process(
        "g",
        "web",
        &cmd,
        &[
            "--param",
            &check,
            "--is-alive-ms",
            "200",
            "--restart-delay-ms",
            "0",
        ],
    );
    a.ok(&["resource", "online", "web"]);
    a.wait_state("web", "Online");
    // SIGSTOP: the process is there (LooksAlive yes) but does not answer (IsAlive no).
    let pid = a.pid_of("web").unwrap();
    a.ok(&["resource", "set", "web", "--param", "check_timeout_ms=300"]);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::STOP,
    )
    .unwrap();
    wait_until("web is restarted after failing its check", || {
        a.state("web") == "Online" && a.pid_of("web").is_some_and(|p| p != pid)
    });
    assert!(
        a.reasons("web")
            .iter()
            .any(|r| r.starts_with("IsAlive: check_http")),
        "{:#?}",
        a.reasons("web")
    );
}

#[test]
fn simulated_failure_and_delete() {
    let a = Agent::start();
    a.process("g", "svc", "sleep 1000", &["--restart-delay-ms", "0"]);
    a.ok(&["group", "online", "g"]);
    a.wait_state("svc", "Online");
    let pid = a.pid_of("svc").unwrap();
    a.ok(&["resource", "fail", "svc"]);
    wait_until("svc restarted", || {
        a.state("svc") == "Online" && a.pid_of("svc") != Some(pid)
    });
    let pid = a.pid_of("svc").unwrap();
    a.ok(&["resource", "delete", "svc"]);
    assert!(!alive(pid), "delete stopped the process first");
    assert!(a.group("g")["resources"].as_array().unwrap().is_empty());
    a.ok(&["group", "delete", "g"]);
    assert!(a.status()["groups"].as_array().unwrap().is_empty());
}

#[test]
fn bad_input_gets_a_clear_error_and_loses_nothing() {
    let a = Agent::start();
    a.process("g", "svc", "sleep 1000", &[]);
    a.process("g", "app", "sleep 1000", &["--depends-on", "svc"]);
    let before = a.status()["groups"].clone();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "resource", "create", "x", "--group", "g", "--type", "process", "--param",
                "comand=x",
            ],
            "no parameter \"comand\"",
        ),
        (
            &[
                "resource", "create", "x", "--group", "g", "--type", "process",
            ],
            "needs parameter \"command\"",
        ),
        (
            &[
                "resource",
                "create",
                "x",
                "--group",
                "nope",
                "--type",
                "process",
                "--param",
                "command=x",
            ],
            "group \"nope\" does not exist",
        ),
        (
            &["resource", "create", "x", "--group", "g", "--type", "nope"],
            "unknown resource type \"nope\"",
        ),
        (
            &[
                "resource",
                "create",
                "x",
                "--group",
                "g",
                "--type",
                "process",
                "--param",
                "command=x",
                "--restart-period-s",
                "0",
            ],
            "restart_period_s must be > 0",
        ),
        (
            &[
                "resource",
                "create",
                "x",
                "--group",
                "g",
                "--type",
                "process",
                "--param",
                "command=x",
                "--param",
                "stop_signal=SIGNOPE",
            ],
            "stop_signal = \"SIGNOPE\"",
        ),
        (
            &[
                "resource",
                "create",
                "svc",
                "--group",
                "g",
                "--type",
                "process",
                "--param",
                "command=x",
            ],
            "resource \"svc\" already exists",
        ),
        (
            &[
                "resource",
                "create",
                "bad/name",
                "--group",
                "g",
                "--type",
                "process",
                "--param",
                "command=x",
            ],
            "not valid",
        ),
        (
            &[
                "resource",
                "create",
                "x",
                "--group",
                "g",
                "--type",
                "process",
                "--param",
                "command=x",
                "--param",
                "stop_timeout_ms=-1",
            ],
            "parameter stop_timeout_ms = \"-1\" is not valid: expected a whole number from 0 to 86400000",
        ),
        (
            &[
                "resource",
                "create",
                "x",
                "--group",
                "g",
                "--type",
                "process",
                "--param",
                "command=x",
                "--param",
                "stop_exit_codes=0,300",
            ],
            "parameter stop_exit_codes: 300 is not an exit code (they run from 0 to 255)",
        ),
        (
            &[
                "resource",
                "create",
                "x",
                "--group",
                "g",
                "--type",
                "process",
                "--param",
                "command=x",
                "--param",
                "check_timeout_ms=0",
            ],
            "parameter check_timeout_ms = \"0\" is not valid: expected a whole number from 1 to",
        ),
        (
            &["resource", "set", "svc", "--deadlock-timeout-ms", "5000"],
            "deadlock_timeout_ms=5000 must be longer than the longest call this process resource may make: Offline waits stop_timeout_ms=10000 plus 2000 ms after SIGKILL (12000 ms)",
        ),
        (
            &["resource", "set", "svc", "--depends-on", "app"],
            "dependency cycle refused: ",
        ),
        (
            &["resource", "set", "svc", "--prop", "colour=blue"],
            "unknown property \"colour\"",
        ),
        (
            &["resource", "set", "svc", "--param", "check_http=https://x"],
            "https is not supported",
        ),
        (&["resource", "delete", "svc"], "is a dependency of app"),
        (
            &["resource", "fail", "svc"],
            "only a running resource can be failed",
        ),
        (
            &["resource", "online", "ghost"],
            "resource \"ghost\" does not exist",
        ),
        (&["group", "create", "g"], "group \"g\" already exists"),
        (
            &["group", "online", "ghost"],
            "group \"ghost\" does not exist",
        ),
        (
            &[
                "resource", "create", "x", "--group", "g", "--type", "process", "--param",
                "novalue",
            ],
            "--param \"novalue\" is not NAME=VALUE",
        ),
    ];
    for (args, expected) in cases {
        let err = a.err(args);
        assert!(
            err.contains(expected),
            "vigil {args:?}: expected {expected:?} in {err:?}"
        );
    }
    // A NUL byte (only the API can carry one) is refused when the resource is created, not
    // when it is first started.
    let (code, body) = support::http(
        &a.listen,
        "POST",
        "/v1/resources",
        Some(serde_json::json!({
            "name": "nul", "group": "g", "type": "process",
            "params": { "command": "sleep\u{0}1" },
        })),
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("parameter command: contains a NUL byte"),
        "{body}"
    );
    assert_eq!(a.status()["groups"], before, "nothing stored changed");
    let out = a.cli(&["status"]);
    assert!(out.status.success());
    let bad_endpoint = |args: &[&str]| {
        let out = std::process::Command::new(&*support::VIGIL)
            .args(args)
            .arg("status")
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let ca = a.ca_file();
    let ca = ca.to_str().unwrap();
    let err = bad_endpoint(&["--endpoint", "https://127.0.0.1:1", "--ca", ca]);
    assert!(
        err.contains("cannot reach the agent at https://127.0.0.1:1"),
        "{err}"
    );
    let err = bad_endpoint(&["--endpoint", "http://127.0.0.1:1"]);
    assert!(err.contains("must start with https://"), "{err}");
    let err = bad_endpoint(&["--endpoint", "https://127.0.0.1:1"]);
    assert!(err.contains("needs --ca FILE"), "{err}");
    let err = bad_endpoint(&["--socket", "/nonexistent/vigil.sock"]);
    assert!(
        err.contains("no agent socket at /nonexistent/vigil.sock"),
        "{err}"
    );
}

#[test]
fn data_dir_misuse_is_refused() {
    let a = Agent::start();
    a.process("g", "svc", "sleep 1000", &[]);
    let second = a.agent_command(false).output().unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("is in use by another vigil agent"), "{err}");
    let mut again = a.agent_command(true);
    let dir = tempfile::tempdir().unwrap();
    let fresh = std::process::Command::new(&*support::VIGIL)
        .args([
            "agent",
            "--name",
            "n1",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("VIGIL_CONFIG", "/dev/null")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&fresh.stderr)
            .contains("holds no cluster; start the first node with --bootstrap")
    );
    drop(a.status());
    let mut a = a;
    a.kill();
    let out = again.output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refusing --bootstrap over existing data")
    );
    a.spawn(false);
    assert_eq!(
        a.resource("svc")["type"],
        "process",
        "the stored resource is intact"
    );
}

#[test]
fn the_demo_runs_and_tells_the_recovery() {
    let out = std::process::Command::new(&*support::VIGIL)
        .arg("demo")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Three nodes; the owner (node2, the first preferred owner) is killed; the group goes
    // to node3, the next preferred owner, and the service answers from there.
    assert!(
        stdout.contains("owner node2 is Down: failing over to node3"),
        "{stdout}"
    );
    assert!(
        stdout.contains("node3 RCM hello  OnlinePending -> Online"),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("hello from node node2").count(),
        1,
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("hello from node node3").count(),
        1,
        "{stdout}"
    );
}

#[test]
fn an_online_that_never_completes_times_out_and_fails() {
    let a = Agent::start();
    let port = support::free_port();
    let check = format!("check_tcp=127.0.0.1:{port}");
    a.process(
        "g",
        "slow",
        "sleep 1000",
        &[
            "--param",
            &check,
            "--pending-timeout-ms",
            "500",
            "--restart-action",
            "none",
        ],
    );
    a.ok(&["resource", "online", "slow"]);
    wait_until("slow is Failed", || a.state("slow") == "Failed");
    let reasons = a.reasons("slow");
    assert!(
        reasons
            .iter()
            .any(|r| r == "OnlinePending without progress for pending_timeout_ms=500; terminated"),
        "{reasons:#?}"
    );
    let pid = a
        .log()
        .iter()
        .filter(|r| r["resource"] == "slow")
        .find_map(|r| {
            r["reason"]
                .as_str()
                .unwrap()
                .strip_prefix("OnlinePending: started pid ")
                .map(str::to_string)
        })
        .and_then(|s| s.split(';').next().and_then(|p| p.parse::<u32>().ok()))
        .unwrap();
    wait_until("the pending process was terminated", || !alive(pid));
}

#[test]
fn what_a_resource_forked_dies_with_its_rhs_and_with_the_agent() {
    let mut a = Agent::start();
    let file = a.dir.path().join("child.pid");
    let cmd = format!("sh -c 'sleep 1000 & echo $! > {}; wait'", file.display());
    a.process("g", "forker", &cmd, &["--restart-delay-ms", "0"]);
    let grandchild = |a: &Agent| {
        wait_until("the grandchild's pid is written", || {
            support::read(&file).ends_with('\n')
        });
        let pid: u32 = support::read(&file).trim().parse().unwrap();
        std::fs::remove_file(&file).unwrap();
        a.seen_pid(pid);
        pid
    };
    a.ok(&["resource", "online", "forker"]);
    a.wait_state("forker", "Online");
    let first = grandchild(&a);
    kill9(a.rhs_pid("default").unwrap());
    wait_until("the grandchild died with its RHS", || !alive(first));
    a.wait_state("forker", "Online");
    let second = grandchild(&a);
    assert!(alive(second));
    a.kill();
    wait_until("the grandchild died with the agent", || !alive(second));
}

#[test]
fn a_wedged_rhs_is_killed_and_replaced() {
    let mut a = Agent::start();
    a.kill();
    let mut cmd = a.agent_command(false);
    cmd.args(["--rhs-silence-ms", "2000"]);
    a.spawn_with(cmd);
    a.process("g", "svc", "sleep 1000", &["--restart-delay-ms", "0"]);
    a.ok(&["group", "online", "g"]);
    a.wait_state("svc", "Online");
    let (rhs, svc) = (a.rhs_pid("default").unwrap(), a.pid_of("svc").unwrap());
    // SIGSTOP: the RHS neither exits nor answers; only its silence gives it away.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(rhs as i32).unwrap(),
        rustix::process::Signal::STOP,
    )
    .unwrap();
    wait_until("a new RHS runs svc", || {
        a.rhs_pid("default").is_some_and(|p| p != rhs)
            && a.state("svc") == "Online"
            && a.pid_of("svc").is_some_and(|p| p != svc)
    });
    assert!(!alive(rhs) && !alive(svc));
    assert!(a.log().iter().any(|r| {
        r["reason"]
            .as_str()
            .unwrap()
            .contains("sent nothing for 2000 ms (hung); killed")
    }));
}

/// A service that daemonizes the classic way (fork, setsid, fork again) and writes its
/// daemon's pid to `pidfile`; the first process stays as the resource's main process.
const DAEMON: &str = r#"
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        with open(sys.argv[1] + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(sys.argv[1] + ".tmp", sys.argv[1])
        time.sleep(1000)
    os._exit(0)
os.wait()
time.sleep(1000)
"#;

/// One node running resource `d`, the daemonizing service, Online: the agent, the daemon's
/// pid file, and the daemon's pid.
fn daemon_online() -> (Agent, std::path::PathBuf, u32) {
    let a = Agent::start();
    let dir = a.data_dir().parent().unwrap().to_path_buf();
    std::fs::write(dir.join("daemon.py"), DAEMON).unwrap();
    let pidfile = dir.join("daemon.pid");
    let command = format!(
        "python3 {} {}",
        dir.join("daemon.py").display(),
        pidfile.display()
    );
    a.process("g", "d", &command, &["--restart-delay-ms", "0"]);
    a.ok(&["group", "online", "g"]);
    a.wait_state("d", "Online");
    let daemon = daemon_pid(&pidfile);
    a.seen_pid(daemon);
    (a, pidfile, daemon)
}

/// The pid of the daemon that wrote `pidfile`, once it is there and alive.
fn daemon_pid(pidfile: &std::path::Path) -> u32 {
    let mut pid = 0;
    wait_until("the daemon wrote its pid", || {
        pid = std::fs::read_to_string(pidfile)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        pid != 0 && alive(pid)
    });
    pid
}

#[test]
fn a_daemon_that_leaves_its_process_group_is_gone_after_offline_a_failure_and_a_fence() {
    let (a, pidfile, daemon) = daemon_online();
    assert_ne!(
        rustix::process::getpgid(rustix::process::Pid::from_raw(daemon as i32)).ok(),
        a.pid_of("d")
            .and_then(|p| rustix::process::getpgid(rustix::process::Pid::from_raw(p as i32)).ok()),
        "the daemon left the resource's process group"
    );
    // What the resource uses shows in status (from its cgroup).
    assert!(
        a.resource("d")["usage"]["cpu_ms"].is_u64(),
        "{}",
        a.resource("d")
    );

    // 1. Offline.
    a.ok(&["resource", "offline", "d"]);
    a.wait_state("d", "Offline");
    wait_until("the daemon is gone after Offline", || !alive(daemon));
    assert!(
        a.logged("d", "left in its cgroup were killed"),
        "{:#?}",
        a.reasons("d")
    );

    // 2. A failure: the main process is killed; the restart in place leaves no daemon of
    // the first run behind.
    std::fs::remove_file(&pidfile).unwrap();
    a.ok(&["resource", "online", "d"]);
    a.wait_state("d", "Online");
    let daemon = daemon_pid(&pidfile);
    a.seen_pid(daemon);
    let main = a.pid_of("d").unwrap();
    std::fs::remove_file(&pidfile).unwrap();
    kill9(main);
    wait_until("the daemon of the failed run is gone", || !alive(daemon));
    wait_until("d runs again", || {
        a.state("d") == "Online" && a.pid_of("d").is_some_and(|p| p != main)
    });

    // 3. A fence: the agent stops; its RHS ends every resource when the lease runs out.
    let daemon = daemon_pid(&pidfile);
    a.seen_pid(daemon);
    let agent = rustix::process::Pid::from_raw(a.pid() as i32).unwrap();
    rustix::process::kill_process(agent, rustix::process::Signal::STOP).unwrap();
    let fenced = std::time::Instant::now();
    while alive(daemon) && fenced.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    rustix::process::kill_process(agent, rustix::process::Signal::CONT).unwrap();
    assert!(!alive(daemon), "the daemon outlived the fence");
}

#[test]
fn a_cgroup_limit_this_node_cannot_hold_is_refused_naming_it() {
    let a = Agent::start();
    let base = std::fs::read_dir("/sys/fs/cgroup/unified")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name().is_some_and(|n| {
                n.to_string_lossy()
                    .starts_with(&format!("vigil-n1-{}", a.pid()))
            })
        })
        .expect("the node's cgroup");
    let offered = std::fs::read_to_string(base.join("cgroup.subtree_control")).unwrap();
    a.process("g", "m", "sleep 1000", &["--prop", "memory_max_mb=64"]);
    a.ok(&["group", "online", "g"]);
    if offered.split_whitespace().any(|c| c == "memory") {
        // A machine with the memory controller on cgroup v2: the limit holds.
        a.wait_state("m", "Online");
        let max = std::fs::read_to_string(base.join("m/memory.max")).unwrap();
        assert_eq!(max.trim(), (64u64 << 20).to_string());
    } else {
        wait_until("m is refused on n1", || a.state("m") == "Failed");
        assert!(
            a.logged(
                "m",
                "memory_max_mb = 64 needs cgroup v2's memory controller"
            ),
            "{:#?}",
            a.reasons("m")
        );
    }
    let err = a.cli(&["resource", "set", "m", "--prop", "pids_max=lots"]);
    assert!(
        String::from_utf8_lossy(&err.stderr)
            .contains("pids_max must be a whole number, got \"lots\""),
        "{}",
        String::from_utf8_lossy(&err.stderr)
    );
}

#[test]
fn a_daemon_left_by_a_killed_rhs_is_killed_before_its_resource_starts_again() {
    let (a, pidfile, daemon) = daemon_online();
    let main = a.pid_of("d").unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{main}/stat")).unwrap();
    let rhs: u32 = stat
        .rsplit(')')
        .next()
        .and_then(|s| s.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap();
    std::fs::remove_file(&pidfile).unwrap();
    kill9(rhs);
    wait_until("d runs again under a new RHS", || {
        a.state("d") == "Online" && a.pid_of("d").is_some_and(|p| p != main)
    });
    assert!(
        !alive(daemon),
        "the old daemon was killed before the restart"
    );
    let again = daemon_pid(&pidfile);
    a.seen_pid(again);
    assert_ne!(again, daemon);
}
