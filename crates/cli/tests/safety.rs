//! "Never two copies, nothing lost, status that never lies", tried with faults from outside on
//! real agents: restarts on an old data dir, link cuts and SIGSTOP. Every copy of the service
//! under test writes timestamped beats (see `support::Beats`), so the tests see from the
//! service's own output who ran it when. The network tests need root (CI runs as root).

mod support;

use support::{Agent, Beats, Net, alive, wait_until};

/// Sends `sig` to process `pid`.
fn signal(pid: u32, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(pid, sig).unwrap();
}

/// n1 (bootstrap), n2 and n3 on 127.0.0.x addresses of their own.
fn three_on_loopback() -> (Agent, Agent, Agent) {
    let mut n1 = Agent::on("n1", "127.0.0.21");
    n1.spawn(true);
    let n2 = Agent::on("n2", "127.0.0.22").start_joining(&n1);
    let n3 = Agent::on("n3", "127.0.0.23").start_joining(&n1);
    wait_until("three nodes Up", || {
        ["n1", "n2", "n3"]
            .iter()
            .all(|n| n1.node_state(n).as_deref() == Some("Up"))
            && n3.node_state("n3").as_deref() == Some("Up")
    });
    (n1, n2, n3)
}

/// Group `web` owned by `owner` (preferred: `preferred`), running the beat service.
fn beating(owner: &Agent, preferred: &str, beats: &Beats) {
    owner.ok(&["group", "create", "web", "--preferred-owners", preferred]);
    owner.ok(&[
        "resource",
        "create",
        "beat",
        "--group",
        "web",
        "--type",
        "process",
        "--param",
        &beats.command(),
        "--online",
    ]);
    owner.wait_online("beat");
    wait_until("the owner writes beats", || beats.count(&owner.name) > 5);
}

/// Waits until `web` is Online on `node` and that copy writes beats.
fn runs_on(observer: &Agent, node: &str, beats: &Beats) {
    wait_until(&format!("web Online on {node}"), || {
        let g = observer.group("web");
        g["state"] == "Online" && g["owner"] == node
    });
    let before = beats.count(node);
    wait_until(&format!("{node} writes beats"), || {
        beats.count(node) > before + 5
    });
}

/// Stops the group and checks, from the beats, that no two copies ever ran at once and
/// that the epoch only grew from one copy to the next.
fn stop_and_check(a: &Agent, beats: &Beats) {
    a.ok(&["group", "offline", "web"]);
    a.wait_state("beat", "Offline");
    beats.assert_never_two();
    let runs = beats.runs(200);
    for w in runs.windows(2) {
        assert!(
            w[1].epoch >= w[0].epoch,
            "the epoch went back from {} on {} to {} on {}",
            w[0].epoch,
            w[0].node,
            w[1].epoch,
            w[1].node
        );
    }
}

#[test]
fn a_node_restarted_on_its_old_data_dir_does_not_start_what_it_no_longer_owns() {
    let (n1, n2, mut n3) = three_on_loopback();
    let beats = Beats::new(n1.dir.path());
    beating(&n3, "n3,n2", &beats);
    n3.kill();
    runs_on(&n1, "n2", &beats);
    let before = beats.count("n3");
    // Its database copy still says n3 owns web.
    n3.spawn(false);
    wait_until("n3 is Up again and knows the new owner", || {
        n1.node_state("n3").as_deref() == Some("Up")
            && n3.try_status_value().is_some_and(|v| {
                v["groups"][0]["owner"] == "n2"
                    && v["nodes"].as_array().is_some_and(|ns| {
                        ns.iter().any(|n| n["name"] == "n3" && n["state"] == "Up")
                    })
            })
    });
    runs_on(&n1, "n2", &beats);
    assert_eq!(
        beats.count("n3"),
        before,
        "n3 ran the service again after its restart"
    );
    stop_and_check(&n1, &beats);
    drop((n1, n2, n3));
}

#[test]
fn a_node_back_from_a_short_cut_does_not_run_its_old_groups() {
    let net = Net::new();
    let mut n1 = Agent::in_net(&net, 1, "n1");
    n1.spawn(true);
    let n2 = Agent::in_net(&net, 2, "n2").start_joining(&n1);
    let n3 = Agent::in_net(&net, 3, "n3").start_joining(&n1);
    wait_until("n3 is Up with a lease", || {
        n3.node_state("n3").as_deref() == Some("Up") && n1.node_state("n3").as_deref() == Some("Up")
    });
    let beats = Beats::new(n1.dir.path());
    beating(&n3, "n3,n1,n2", &beats);
    net.cut(3);
    runs_on(&n1, "n1", &beats);
    // Back at once: its copy has not yet heard that web moved.
    net.heal(3);
    wait_until("n3 is Up again", || {
        n1.node_state("n3").as_deref() == Some("Up") && n3.group("web")["owner"] == "n1"
    });
    runs_on(&n1, "n1", &beats);
    stop_and_check(&n1, &beats);
    drop((n1, n2, n3));
}

#[test]
fn an_agent_stopped_for_three_seconds_does_not_run_its_old_groups() {
    let (n1, n2, n3) = three_on_loopback();
    let beats = Beats::new(n1.dir.path());
    beating(&n3, "n3,n2", &beats);
    // The agent only: its RHS fences on its own when the lease runs out.
    signal(n3.pid(), rustix::process::Signal::STOP);
    runs_on(&n1, "n2", &beats);
    signal(n3.pid(), rustix::process::Signal::CONT);
    wait_until("n3 is Up again and knows the new owner", || {
        n1.node_state("n3").as_deref() == Some("Up") && n3.group("web")["owner"] == "n2"
    });
    runs_on(&n1, "n2", &beats);
    stop_and_check(&n1, &beats);
    drop((n1, n2, n3));
}

#[test]
fn an_rhs_stopped_past_its_lease_deadline_reads_the_renewals_waiting_for_it() {
    // One node: its lease is renewed all along; only the RHS is stopped, for longer than a
    // lease, so the deadline it last heard of passes while newer ones wait on its socket.
    let a = Agent::start();
    a.process("g", "svc", "sleep 1000", &["--online"]);
    let pid = a.wait_online("svc");
    let rhs = a.rhs_pid("default").expect("the default RHS runs");
    signal(rhs, rustix::process::Signal::STOP);
    std::thread::sleep(std::time::Duration::from_secs(3));
    signal(rhs, rustix::process::Signal::CONT);
    // It reads the renewals before it acts on its deadline: nothing is ended. Its answer
    // to a control request (behind everything queued for it) shows it has caught up.
    let log_len = a.log().len();
    let answer = a.err(&["resource", "control", "svc", "ping"]);
    assert!(answer.contains("takes no control requests"), "{answer}");
    assert!(alive(pid), "svc was killed: {:?}", a.reasons("svc"));
    assert_eq!(a.pid_of("svc"), Some(pid));
    assert_eq!(a.state("svc"), "Online");
    assert!(
        !a.log()[log_len..].iter().any(|r| r["reason"]
            .as_str()
            .unwrap()
            .contains("terminated by its RHS")),
        "{:?}",
        a.reasons("svc")
    );
}

#[test]
fn what_an_rhs_ends_on_its_own_is_reported_and_restarted() {
    // One node, its agent stopped for longer than the lease: the RHS ends the resource on its
    // own. The agent, back, renews its lease at once (it leads alone); the RHS's report makes
    // the RCM restart the resource, where status would otherwise show it Online, dead.
    let a = Agent::start();
    a.process("g", "svc", "sleep 1000", &["--online"]);
    let pid = a.wait_online("svc");
    signal(a.pid(), rustix::process::Signal::STOP);
    wait_until("the RHS ended svc on its own", || !alive(pid));
    signal(a.pid(), rustix::process::Signal::CONT);
    wait_until("svc Online again with a process that lives", || {
        a.state("svc") == "Online" && a.pid_of("svc").is_some_and(|p| p != pid && alive(p))
    });
    a.seen_pid(a.pid_of("svc").unwrap());
    assert!(
        a.logged("svc", "terminated by its RHS: the node's lease ran out"),
        "{:?}",
        a.reasons("svc")
    );
}

#[test]
fn a_fenced_node_says_so_and_shows_what_it_stopped() {
    let net = Net::new();
    let mut n1 = Agent::in_net(&net, 1, "n1");
    n1.spawn(true);
    let n2 = Agent::in_net(&net, 2, "n2").start_joining(&n1);
    let n3 = Agent::in_net(&net, 3, "n3").start_joining(&n1);
    wait_until("n3 is Up with a lease", || {
        n3.node_state("n3").as_deref() == Some("Up") && n1.node_state("n3").as_deref() == Some("Up")
    });
    n3.process("g", "svc", "sleep 1000", &["--online"]);
    let pid = n3.wait_online("svc");
    net.cut(3);
    wait_until("n3 fenced itself", || !alive(pid));
    let v: serde_json::Value =
        serde_json::from_str(&n3.ok_in(&net.ns(3), &["status", "--output", "json"])).unwrap();
    assert_eq!(v["standing"]["standing"], "fenced", "{v:#}");
    assert!(
        v["standing"]["reason"]
            .as_str()
            .unwrap()
            .contains("lease expired"),
        "{v:#}"
    );
    let svc = &v["groups"][0]["resources"][0];
    assert_eq!(svc["state"], "Offline", "n3 stopped svc itself: {svc:#}");
    assert!(svc["pid"].is_null(), "{svc:#}");
    // The table says it in words.
    let table = n3.ok_in(&net.ns(3), &["status"]);
    assert!(table.contains("n3 is fenced"), "{table}");
    net.heal(3);
    wait_until("n3 current again", || {
        n3.try_status_value()
            .is_some_and(|v| v["standing"]["standing"] == "current")
    });
    drop((n1, n2, n3));
}

#[test]
fn a_node_restarted_without_a_quorum_marks_its_copy_stale_and_runs_nothing() {
    let (mut n1, mut n2, mut n3) = three_on_loopback();
    n3.process("g", "svc", "sleep 1000", &["--online"]);
    let pid = n3.wait_online("svc");
    n3.kill();
    wait_until("svc ended with its agent", || !alive(pid));
    n1.kill();
    n2.kill();
    n3.spawn(false);
    let v = n3.status();
    assert_eq!(v["standing"]["standing"], "fenced", "{v:#}");
    assert!(
        v["standing"]["reason"]
            .as_str()
            .unwrap()
            .contains("no lease yet"),
        "{v:#}"
    );
    let svc = &v["groups"][0]["resources"][0];
    assert_eq!(
        svc["state"], "Offline",
        "its pre-crash record said Online: {svc:#}"
    );
    assert!(svc["pid"].is_null(), "{svc:#}");
    drop((n1, n2, n3));
}

#[test]
fn a_leader_that_owns_a_group_stopped_past_its_lease_loses_the_group_for_good() {
    // n1 leads and owns web. Stopped for 2.8 s (longer than its 2 s lease, shorter than
    // lease + margin + an election would take to matter), its RHS ends web on the lease's
    // deadline, n2 or n3 is elected and records n1 Down once n1's lease has surely run out,
    // and web fails over. Back, n1 finds itself a follower without a lease and a copy that
    // says someone else owns web: it must not start it again.
    let (n1, n2, n3) = three_on_loopback();
    assert_eq!(n1.status()["leader"], "n1");
    let beats = Beats::new(n1.dir.path());
    beating(&n1, "n1,n2,n3", &beats);
    let epoch = n1.group("web")["epoch"].as_u64().unwrap();
    signal(n1.pid(), rustix::process::Signal::STOP);
    std::thread::sleep(std::time::Duration::from_millis(2_800));
    signal(n1.pid(), rustix::process::Signal::CONT);
    wait_until("web Online on n2 with a new epoch", || {
        let g = n2.group("web");
        g["state"] == "Online" && g["owner"] == "n2" && g["epoch"].as_u64() > Some(epoch)
    });
    wait_until("n1 is Up again and knows the new owner", || {
        n2.node_state("n1").as_deref() == Some("Up") && n1.group("web")["owner"] == "n2"
    });
    let n1_beats = beats.count("n1");
    runs_on(&n2, "n2", &beats);
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(n2.group("web")["owner"], "n2", "web went back to n1");
    assert_eq!(beats.count("n1"), n1_beats, "n1 ran web again");
    stop_and_check(&n2, &beats);
    drop((n1, n2, n3));
}
