//! Real partitions: agents in network namespaces of their own, one cut off by taking its link
//! down. Needs root (CI runs as root).

mod support;

use std::time::SystemTime;

use serde_json::Value;
use support::{Agent, Net, alive, wait_until};

fn time_of(r: &Value) -> SystemTime {
    humantime::parse_rfc3339(r["time"].as_str().unwrap()).unwrap()
}

fn node_state(a: &Agent, node: &str) -> Option<String> {
    a.node_state(node)
}

/// n1 (bootstrap), n2 and n3 in namespaces of their own; group g on n3 runs `svc`, whose
/// pid is returned.
fn three_with_svc_on_n3(net: &Net) -> (Agent, Agent, Agent, u32) {
    let mut n1 = Agent::in_net(net, 1, "n1");
    n1.spawn(true);
    let n2 = Agent::in_net(net, 2, "n2").start_joining(&n1);
    let n3 = Agent::in_net(net, 3, "n3").start_joining(&n1);
    wait_until("n3 is Up with a lease", || {
        node_state(&n3, "n3").as_deref() == Some("Up")
            && node_state(&n1, "n3").as_deref() == Some("Up")
    });
    // A group created through n3 is owned by n3.
    n3.ok(&["group", "create", "g"]);
    let svc = [
        "resource", "create", "svc", "--group", "g", "--type", "process",
    ];
    n3.ok(&[&svc[..], &["--param", "command=sleep 1000", "--online"]].concat());
    n3.wait_state("svc", "Online");
    let pid = n3.pid_of("svc").unwrap();
    (n1, n2, n3, pid)
}

#[test]
fn a_cut_off_node_fences_itself_before_the_majority_declares_it_down() {
    let net = Net::new();
    let (n1, n2, n3, pid) = three_with_svc_on_n3(&net);

    net.cut(3);
    wait_until("the majority declares n3 Down", || {
        node_state(&n1, "n3").as_deref() == Some("Down")
    });
    assert!(
        !alive(pid),
        "n3's resource was stopped by the time n3 was declared Down"
    );
    assert_eq!(
        node_state(&n2, "n3").as_deref(),
        Some("Down"),
        "the majority agrees"
    );

    // The order, from both sides' cluster logs (one machine, one wall clock).
    let n3_log = n3.log_file();
    let fenced = n3_log
        .iter()
        .find(|r| {
            r["component"] == "NM" && r["reason"].as_str().unwrap().starts_with("lease expired")
        })
        .expect("n3 logged its lease running out");
    let stopped = n3_log
        .iter()
        .find(|r| {
            r["resource"] == "svc" && r["to"] == "Offline" && r["reason"] == "self-fenced: no lease"
        })
        .expect("n3 logged terminating svc");
    // Whichever of n1 and n2 leads records it; the reason's wording depends on what the
    // leader last heard (silent, or heard but unanswered on a busy machine).
    let down = [&n1, &n2]
        .into_iter()
        .flat_map(|a| a.log())
        .filter(|r| {
            let reason = r["reason"].as_str().unwrap();
            r["component"] == "NM" && reason.starts_with("node n3 ") && reason.ends_with("; Down")
        })
        .min_by_key(time_of)
        .expect("the leader logged n3 Down");
    assert!(time_of(fenced) <= time_of(stopped));
    assert!(
        time_of(stopped) < time_of(&down),
        "n3 stopped svc at {} but was declared Down at {}",
        stopped["time"],
        down["time"]
    );

    // The majority runs the group elsewhere; contact returns and n3 is Up again, but the
    // group stays where it is (auto_failback=never).
    wait_until("g Online on n1 or n2", || {
        let g = n1.group("g");
        g["state"] == "Online" && g["owner"] != "n3"
    });
    let moved_to = n1.group("g")["owner"].as_str().unwrap().to_string();
    net.heal(3);
    wait_until("n3 is Up again", || {
        node_state(&n1, "n3").as_deref() == Some("Up")
    });
    wait_until("n3 sees the new owner", || {
        n3.group("g")["owner"] == moved_to.as_str()
    });
    assert_eq!(n3.group("g")["state"], "Online");
    drop((n1, n2, n3));
}

#[test]
fn a_leader_cut_off_with_a_minority_renews_no_lease() {
    let net = Net::new();
    let mut n1 = Agent::in_net(&net, 1, "n1");
    n1.spawn(true);
    let others: Vec<Agent> = (2..=5)
        .map(|i| Agent::in_net(&net, i, &format!("n{i}")).start_joining(&n1))
        .collect();
    let n2 = &others[0];
    wait_until("all five Up, n1 leads", || {
        let v = n1.try_status_value().unwrap_or_default();
        v["leader"] == "n1"
            && v["nodes"]
                .as_array()
                .is_some_and(|ns| ns.len() == 5 && ns.iter().all(|n| n["state"] == "Up"))
            && node_state(n2, "n2").as_deref() == Some("Up")
    });
    n2.ok(&["group", "create", "g"]);
    n2.ok(&[
        "resource",
        "create",
        "svc",
        "--group",
        "g",
        "--type",
        "process",
        "--param",
        "command=sleep 1000",
        "--online",
    ]);
    n2.wait_state("svc", "Online");
    let pid = n2.pid_of("svc").unwrap();

    // n1 (the leader) and n2 on one side, n3..n5 on the other. n2 still reaches n1 and n1
    // still answers it, but n1's quorum contact is frozen: n2's lease must run out.
    net.split(&[1, 2]);
    let n3 = &others[1];
    wait_until(
        "the majority elects a new leader and declares n1 and n2 Down",
        || {
            node_state(n3, "n1").as_deref() == Some("Down")
                && node_state(n3, "n2").as_deref() == Some("Down")
        },
    );
    assert!(
        !alive(pid),
        "n2's resource was stopped by the time n2 was declared Down"
    );
    let n2_log = n2.log_file();
    let stopped = n2_log
        .iter()
        .find(|r| r["resource"] == "svc" && r["reason"] == "self-fenced: no lease")
        .expect("n2 terminated svc");
    // Whichever of n3..n5 won the election logged it.
    let down = others[1..]
        .iter()
        .flat_map(|a| a.log())
        .find(|r| {
            let reason = r["reason"].as_str().unwrap();
            reason.starts_with("node n2 ") && reason.ends_with("; Down")
        })
        .expect("the new leader logged n2 Down");
    assert!(
        time_of(stopped) < time_of(&down),
        "{} vs {}",
        stopped["time"],
        down["time"]
    );
    let n1_fenced = n1.log_file().into_iter().any(|r| {
        r["component"] == "NM" && r["reason"].as_str().unwrap().starts_with("lease expired")
    });
    assert!(n1_fenced, "the cut-off leader fenced itself too");
    drop(others);
}

#[test]
fn a_stopped_agents_resources_stop_with_its_lease() {
    // Two nodes plus a third so that the other two keep a majority.
    let net = Net::new();
    let (n1, n2, n3, pid) = three_with_svc_on_n3(&net);
    // SIGSTOP: the agent can neither renew its lease nor fence; its RHS fences on its own.
    let agent = rustix::process::Pid::from_raw(n3.pid() as i32).unwrap();
    rustix::process::kill_process(agent, rustix::process::Signal::STOP).unwrap();
    wait_until("the majority declares n3 Down", || {
        node_state(&n1, "n3").as_deref() == Some("Down")
    });
    assert!(
        !alive(pid),
        "the resource of the stopped agent was stopped by its RHS"
    );
    rustix::process::kill_process(agent, rustix::process::Signal::CONT).unwrap();
    wait_until("n3 is back Up, svc Online on another node", || {
        node_state(&n1, "n3").as_deref() == Some("Up")
            && n3.state("svc") == "Online"
            && n3.group("g")["owner"] != "n3"
    });
    drop((n1, n2, n3));
}

#[test]
fn a_partitioned_owner_fences_and_the_group_runs_elsewhere_never_twice() {
    let net = Net::new();
    let mut n1 = Agent::in_net(&net, 1, "n1");
    n1.spawn(true);
    let n2 = Agent::in_net(&net, 2, "n2").start_joining(&n1);
    let n3 = Agent::in_net(&net, 3, "n3").start_joining(&n1);
    wait_until("n3 is Up with a lease", || {
        node_state(&n3, "n3").as_deref() == Some("Up")
            && node_state(&n1, "n3").as_deref() == Some("Up")
    });
    // Every copy of the service appends "NODE EPOCH NANOSECONDS" to one shared file every
    // 20 ms: the file shows who ran when.
    let beats = n1.dir.path().join("beats");
    let command = format!(
        "command=sh -c 'while :; do echo \"$VIGIL_NODE $VIGIL_EPOCH $(date +%s%N)\" >> {}; sleep 0.02; done'",
        beats.display()
    );
    n3.ok(&["group", "create", "web", "--preferred-owners", "n3,n1,n2"]);
    n3.ok(&[
        "resource", "create", "beat", "--group", "web", "--type", "process", "--param", &command,
        "--online",
    ]);
    n3.wait_state("beat", "Online");
    let lines = |node: &str| {
        support::read(&beats)
            .lines()
            .filter(|l| l.starts_with(&format!("{node} ")))
            .count()
    };
    wait_until("n3 writes beats", || lines("n3") > 10);

    net.cut(3);
    wait_until("web Online on n1", || {
        let g = n1.group("web");
        g["state"] == "Online" && g["owner"] == "n1"
    });
    wait_until("n1 writes beats", || lines("n1") > 10);
    net.heal(3);
    wait_until("n3 is Up again", || {
        node_state(&n1, "n3").as_deref() == Some("Up")
    });
    n1.ok(&["group", "offline", "web"]);
    n1.wait_state("beat", "Offline");

    let mut beats: Vec<(u128, String, u64)> = support::read(&beats)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[2].parse().unwrap(),
                f[0].to_string(),
                f[1].parse().unwrap(),
            )
        })
        .collect();
    beats.sort();
    // One handover: all of n3's beats, then all of n1's; never interleaved.
    let mut runs: Vec<(String, u64)> = Vec::new();
    for (_, node, epoch) in &beats {
        if runs.last().is_none_or(|(n, _)| n != node) {
            runs.push((node.clone(), *epoch));
        }
    }
    assert_eq!(
        runs.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["n3", "n1"],
        "the copies overlapped: {runs:?}"
    );
    assert!(runs[1].1 > runs[0].1, "the epoch grew: {runs:?}");
    let last_n3 = beats
        .iter()
        .filter(|b| b.1 == "n3")
        .map(|b| b.0)
        .max()
        .unwrap();
    let first_n1 = beats
        .iter()
        .filter(|b| b.1 == "n1")
        .map(|b| b.0)
        .min()
        .unwrap();
    eprintln!(
        "gap between the last beat on n3 and the first on n1: {} ms",
        (first_n1 - last_n3) / 1_000_000
    );
    drop((n1, n2, n3));
}
