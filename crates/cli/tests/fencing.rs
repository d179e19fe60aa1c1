//! Fencing when the node itself cannot: a node whose agent *and* RHS processes are stopped
//! (SIGSTOP) keeps its resources running past its lease. With a watchdog (here the test
//! device, `vigil watchdog-device`, which kills the node's cgroup) or a fence agent (here a
//! script of the fence-agents protocol that "powers off" a node by killing its cgroup) the
//! node is gone before the cluster recovers its group elsewhere; without either, two copies
//! run. All checked from the service's own beats.

mod support;

use std::process::{Child, Command, Stdio};

use support::{Agent, Beats, alive, fence_agent, rhs_pids, signal, wait_until};

/// The test device, listening on `sock`; killed on drop.
struct Device(Child);

impl Device {
    /// Starts the test device on `dir/watchdog.sock`, its stderr in `dir/device.log`; it and
    /// its socket, once it listens.
    fn start(dir: &std::path::Path) -> (Device, std::path::PathBuf) {
        let sock = dir.join("watchdog.sock");
        let device = Device(
            Command::new(&*support::VIGIL)
                .args(["watchdog-device", "--socket"])
                .arg(&sock)
                .stderr(std::fs::File::create(dir.join("device.log")).unwrap())
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_until("the device listens", || sock.exists());
        (device, sock)
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// n1, n2 and n3 (n3 with `extra` options); group g runs the beats service on n3.
fn three(dir: &std::path::Path, extra: &[String]) -> (Agent, Agent, Agent, Beats) {
    let mut n1 = Agent::new("n1");
    n1.spawn(true);
    let n2 = Agent::join("n2", &n1);
    let mut n3 = Agent::new("n3");
    let mut cmd = n3.agent_command(false);
    cmd.args(support::join_args(&n1.listen)).args(extra);
    n3.spawn_with(cmd);
    wait_until("n3 is Up", || n1.node_state("n3").as_deref() == Some("Up"));
    let beats = beats_on_n3(&n1, dir);
    (n1, n2, n3, beats)
}

/// Group g, preferring n3, running the beats service; once n3 beats.
fn beats_on_n3(n1: &Agent, dir: &std::path::Path) -> Beats {
    let beats = Beats::new(dir);
    n1.ok(&["group", "create", "g", "--preferred-owners", "n3,n1,n2"]);
    n1.ok(&[
        "resource",
        "create",
        "beat",
        "--group",
        "g",
        "--type",
        "process",
        "--param",
        &beats.command(),
        "--online",
    ]);
    wait_until("beats from n3", || beats.count("n3") > 5);
    beats
}

/// SIGSTOPs n3's agent and its RHS processes; waits until g runs elsewhere and beats there.
fn stop_n3_and_wait_for_failover(n1: &Agent, n3: &Agent, beats: &Beats) -> Vec<u32> {
    let mut stopped = vec![n3.pid()];
    stopped.extend(rhs_pids(n3.pid()));
    assert!(stopped.len() >= 2, "n3 has an RHS: {stopped:?}");
    signal(&stopped, rustix::process::Signal::STOP);
    wait_until("g runs on n1 or n2", || {
        let g = n1.group("g");
        g["state"] == "Online" && g["owner"] != "n3"
    });
    let owner = n1.group("g")["owner"].as_str().unwrap().to_string();
    wait_until("beats from the new owner", || beats.count(&owner) > 10);
    stopped
}

#[test]
fn a_stopped_node_is_killed_by_its_watchdog_before_its_group_runs_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let (device, sock) = Device::start(dir.path());
    let extra = [
        "--watchdog".to_string(),
        sock.display().to_string(),
        "--watchdog-timeout-ms".into(),
        "4000".into(),
    ];
    let (n1, n2, mut n3, beats) = three(dir.path(), &extra);
    assert_eq!(
        n1.status()["watchdog_ms"],
        4000,
        "the cluster knows n3's watchdog"
    );
    let agent = n3.pid();
    stop_n3_and_wait_for_failover(&n1, &n3, &beats);

    let log = std::fs::read_to_string(dir.path().join("device.log")).unwrap();
    assert!(log.contains("not kicked for"), "the device fired: {log}");
    assert!(!alive(agent), "the watchdog killed n3's agent");
    let down = n1
        .log()
        .into_iter()
        .filter_map(|r| r["reason"].as_str().map(str::to_string))
        .find(|r| r.starts_with("node n3 ") && r.ends_with("; Down"))
        .expect("n3 recorded Down");
    assert!(down.contains("+ watchdog 4000 ms"), "{down}");
    // n3's copy stopped before the new one began.
    beats.assert_never_two();
    n3.kill();
    drop((n1, n2, device));
}

#[test]
fn without_a_watchdog_a_stopped_node_keeps_its_resources_running_past_the_failover() {
    // The gap the watchdog (or a fence agent) closes: SIGSTOP of the agent and of its RHS
    // processes leaves nothing on the node to end the service when the lease runs out.
    let dir = tempfile::tempdir().unwrap();
    let (n1, n2, n3, beats) = three(dir.path(), &[]);
    let stopped = stop_n3_and_wait_for_failover(&n1, &n3, &beats);
    wait_until("n3's copy still beats after the failover", || {
        !beats.overlaps(40).is_empty()
    });
    // Once the node runs again, its RHS sees its lease gone and ends its copy.
    signal(&stopped, rustix::process::Signal::CONT);
    wait_until("n3's copy stops", || {
        let before = beats.count("n3");
        std::thread::sleep(std::time::Duration::from_millis(300));
        beats.count("n3") == before
    });
    drop((n1, n2, n3));
}

/// Gives n3 the test fence device (its cgroup is `vigil-n3-PID`).
fn give_n3_a_fence_device(n1: &Agent, n3: &Agent, dir: &std::path::Path) {
    let agent = fence_agent(dir);
    let cgroup = vigil_rhs::cgroup::own()
        .unwrap()
        .join(format!("vigil-n3-{}", n3.pid()));
    n1.ok(&[
        "node",
        "fence-device",
        "n3",
        "--agent",
        agent.to_str().unwrap(),
        "--param",
        &format!("cgroup={}", cgroup.display()),
        "--param",
        &format!("log={}", dir.join("fence.log").display()),
        "--param",
        &format!("broken={}", dir.join("broken").display()),
        "--param",
        &format!("lie={}", dir.join("lie").display()),
    ]);
}

fn down_reason(n1: &Agent, node: &str) -> String {
    n1.log()
        .into_iter()
        .filter_map(|r| r["reason"].as_str().map(str::to_string))
        .find(|r| r.starts_with(&format!("node {node} ")) && r.ends_with("; Down"))
        .expect("recorded Down")
}

#[test]
fn a_stopped_node_is_fenced_by_its_fence_agent_and_its_group_recovered_before_the_lease_ends() {
    let dir = tempfile::tempdir().unwrap();
    let (n1, n2, mut n3, beats) = three(dir.path(), &[]);
    give_n3_a_fence_device(&n1, &n3, dir.path());
    let status = n1.status();
    let n3_view = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "n3")
        .unwrap()
        .clone();
    assert!(
        n3_view["fence_agent"]
            .as_str()
            .unwrap()
            .ends_with("fence_test"),
        "{n3_view}"
    );
    assert!(
        !status.to_string().contains("fence.log"),
        "its arguments are not shown"
    );
    let agent = n3.pid();
    stop_n3_and_wait_for_failover(&n1, &n3, &beats);
    assert!(!alive(agent), "the fence agent powered n3 off");
    let fence_log = std::fs::read_to_string(dir.path().join("fence.log")).unwrap();
    assert!(fence_log.contains("off n3"), "{fence_log}");
    assert!(
        down_reason(&n1, "n3").contains("was fenced"),
        "{}",
        down_reason(&n1, "n3")
    );
    assert!(n1.log().iter().any(|r| {
        r["reason"]
            .as_str()
            .is_some_and(|t| t.starts_with("node n3 fenced: its fence device reported it off"))
    }));
    beats.assert_never_two();
    n3.kill();
    drop((n1, n2));
}

#[test]
fn a_failing_fence_is_logged_retried_and_recovery_waits_for_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let (n1, n2, mut n3, beats) = three(dir.path(), &[]);
    give_n3_a_fence_device(&n1, &n3, dir.path());
    std::fs::write(dir.path().join("broken"), "").unwrap();
    wait_until("status shows the broken fence device", || {
        n1.status()["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "n3" && n["fence_error"].is_string())
    });
    assert!(
        n1.ok(&["status"])
            .contains("WARNING: the fence device of n3 is broken"),
        "{}",
        n1.ok(&["status"])
    );
    // n3 dies (kill -9 of its agent ends its RHS and resources); the fence fails.
    n3.kill();
    wait_until("g runs elsewhere", || {
        let g = n1.group("g");
        g["state"] == "Online" && g["owner"] != "n3"
    });
    let fence_log = std::fs::read_to_string(dir.path().join("fence.log")).unwrap();
    assert!(
        fence_log.matches("off n3").count() >= 2,
        "retried: {fence_log}"
    );
    assert!(n1.log().iter().any(|r| {
        r["reason"]
            .as_str()
            .is_some_and(|t| t.starts_with("fence of node n3 failed"))
    }));
    let down = down_reason(&n1, "n3");
    assert!(
        down.contains("lease") && !down.contains("fenced"),
        "the lease path: {down}"
    );
    beats.assert_never_two();
    drop((n1, n2));
}

#[test]
fn an_operator_fences_a_node_and_a_device_that_does_not_work_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (n1, n2, mut n3, beats) = three(dir.path(), &[]);
    std::fs::write(dir.path().join("broken"), "").unwrap();
    let agent = fence_agent(dir.path());
    let out = n1.cli(&[
        "node",
        "fence-device",
        "n3",
        "--agent",
        agent.to_str().unwrap(),
        "--param",
        "cgroup=/nonexistent",
        "--param",
        &format!("log={}", dir.path().join("fence.log").display()),
        "--param",
        &format!("broken={}", dir.path().join("broken").display()),
    ]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("the fence device of n3 does not work") && err.contains("(monitor) exited 1"),
        "{err}"
    );
    assert!(
        n1.status()["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["fence_agent"].is_null())
    );
    let out = n1.cli(&["node", "fence-device", "n3", "--agent", "fence_test"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not an absolute path"));
    std::fs::remove_file(dir.path().join("broken")).unwrap();
    give_n3_a_fence_device(&n1, &n3, dir.path());
    let agent_pid = n3.pid();
    let out = n1.ok(&["node", "fence", "n3"]);
    assert!(out.contains("node n3 fenced in"), "{out}");
    wait_until("n3 is gone", || !alive(agent_pid));
    wait_until("g runs elsewhere", || {
        let g = n1.group("g");
        g["state"] == "Online" && g["owner"] != "n3"
    });
    beats.assert_never_two();
    n3.kill();
    drop((n1, n2));
}

#[test]
fn a_fence_agent_that_reports_off_while_the_node_runs_is_a_failed_fence() {
    // n3 is cut off (it runs on, and fences itself when its lease ends); its device says
    // "off" but does nothing, and its status says on. Trusting "off" would start the group
    // elsewhere at once, beside n3's copy.
    let net = support::Net::new();
    let dir = tempfile::tempdir().unwrap();
    let mut n1 = Agent::in_net(&net, 1, "n1");
    n1.spawn(true);
    let n2 = Agent::in_net(&net, 2, "n2").start_joining(&n1);
    let n3 = Agent::in_net(&net, 3, "n3").start_joining(&n1);
    wait_until("n3 is Up", || n1.node_state("n3").as_deref() == Some("Up"));
    give_n3_a_fence_device(&n1, &n3, dir.path());
    std::fs::write(dir.path().join("lie"), "").unwrap();
    let beats = beats_on_n3(&n1, dir.path());
    net.cut(3);
    wait_until("g runs elsewhere", || {
        let g = n1.group("g");
        g["state"] == "Online" && g["owner"] != "n3"
    });
    let owner = n1.group("g")["owner"].as_str().unwrap().to_string();
    wait_until("beats from the new owner", || beats.count(&owner) > 10);
    beats.assert_never_two();
    assert!(
        n1.log().iter().any(|r| r["reason"]
            .as_str()
            .is_some_and(|t| t.contains("reported off, but status says n3 is still on"))),
        "the lie was caught"
    );
    let down = down_reason(&n1, "n3");
    assert!(down.contains("lease") && !down.contains("fenced"), "{down}");
    net.heal(3);
    drop((n1, n2, n3));
}

#[test]
fn a_stopped_rhs_stops_the_watchdog_kicks_though_the_agent_runs() {
    // The RHS could not end its resources when the lease runs out: the node must not vouch
    // for itself. (The agent would kill a silent RHS only after --rhs-silence-ms, 10 s.)
    let dir = tempfile::tempdir().unwrap();
    let (device, sock) = Device::start(dir.path());
    let mut a = Agent::new("n1");
    let mut cmd = a.agent_command(true);
    cmd.arg("--watchdog")
        .arg(&sock)
        .args(["--watchdog-timeout-ms", "2000"]);
    a.spawn_with(cmd);
    a.process("g", "svc", "sleep 1000", &[]);
    a.ok(&["group", "online", "g"]);
    a.wait_state("svc", "Online");
    let agent = a.pid();
    let rhs = rhs_pids(agent);
    signal(&rhs, rustix::process::Signal::STOP);
    wait_until("the watchdog fired", || {
        std::fs::read_to_string(dir.path().join("device.log"))
            .is_ok_and(|l| l.contains("not kicked for"))
    });
    wait_until("the node is gone", || !alive(agent));
    signal(&rhs, rustix::process::Signal::CONT);
    a.kill();
    drop(device);
}
