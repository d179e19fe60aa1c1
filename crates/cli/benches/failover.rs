//! Failover benchmark: real agents, real processes. Prints p50/p99 over many runs of
//!
//! - a process crash → Online again in place (one node; `sleep` starts in about a
//!   millisecond; restart_delay_ms=0);
//! - kill -9 of the owner node's agent → Online on another node (three nodes on 127.0.0.1);
//! - the owner node cut off the network → Online on another node (three nodes in network
//!   namespaces; needs root);
//!
//! each at the default heartbeats (500 ms × 4) and tuned (100 ms × 5). Times run from the
//! instant of the kill (or cut) to the cluster log record of the resource reaching Online.
//! The leader (n1) is never the owner (possible owners n2, n3), so no election is included;
//! separate lines kill and cut off an owner that leads.
//!
//! Run: `cargo bench -p vigil --bench failover` (`-- --quick` for 5 runs each).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, SystemTime};

use support::{Agent, Net, online_after, wait_until};

fn report(name: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    let pct = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{name:<46} n={:<3} p50={:>8.1} ms  p99={:>8.1} ms  max={:>8.1} ms",
        v.len(),
        pct(0.5),
        pct(0.99),
        v[v.len() - 1]
    );
}

fn heartbeat_args(tuned: bool) -> Vec<&'static str> {
    if tuned {
        vec![
            "--heartbeat-interval-ms",
            "100",
            "--heartbeat-threshold",
            "5",
        ]
    } else {
        vec![]
    }
}

fn start(a: &mut Agent, bootstrap: bool, seed: Option<&str>, tuned: bool) {
    let mut cmd = a.agent_command(bootstrap);
    if let Some(seed) = seed {
        cmd.args(support::join_args(seed));
    }
    cmd.args(heartbeat_args(tuned));
    a.spawn_with(cmd);
}

fn all_up(a: &Agent, n: usize) -> bool {
    a.try_status_value().is_some_and(|v| {
        v["nodes"]
            .as_array()
            .is_some_and(|ns| ns.len() == n && ns.iter().all(|x| x["state"] == "Up"))
    })
}

fn group(a: &Agent) -> Option<(String, String)> {
    let v = a.try_status_value()?;
    let g = v["groups"]
        .as_array()?
        .iter()
        .find(|g| g["name"] == "web")?;
    Some((
        g["owner"].as_str()?.to_string(),
        g["state"].as_str()?.to_string(),
    ))
}

fn in_place(runs: usize) -> Vec<f64> {
    let a = Agent::start();
    a.process(
        "g",
        "svc",
        "sleep 1000",
        &["--restart-delay-ms", "0", "--restart-threshold", "1000"],
    );
    a.ok(&["group", "online", "g"]);
    a.wait_state("svc", "Online");
    let mut out = Vec::new();
    for _ in 0..runs {
        let pid = a.pid_of("svc").unwrap();
        let t0 = SystemTime::now();
        support::kill9(pid);
        wait_until("svc Online again", || {
            a.state("svc") == "Online" && a.pid_of("svc").is_some_and(|p| p != pid)
        });
        out.push(online_after(&a, "svc", t0));
    }
    out
}

/// Three agents (n1 leads); group web with a `sleep` resource, Online on `expect`.
fn cluster(agents: &mut [Agent], tuned: bool, group_flags: &[&str], expect: &str) {
    start(&mut agents[0], true, None, tuned);
    let seed = agents[0].listen.clone();
    for a in agents[1..].iter_mut() {
        start(a, false, Some(&seed), tuned);
    }
    wait_until("three nodes Up", || all_up(&agents[0], 3));
    agents[0].ok(&[&["group", "create", "web"], group_flags].concat());
    agents[0].create(
        "app",
        "web",
        "process",
        &["command=sleep 100000"],
        &["--online"],
    );
    wait_until("web Online where expected", || {
        group(&agents[0]) == Some((expect.into(), "Online".into()))
    });
}

/// Possible owners n2, n3 (never the leader n1); many failovers in a row are the point.
const NOT_ON_LEADER: &[&str] = &[
    "--preferred-owners",
    "n2,n3",
    "--possible-owners",
    "n2,n3",
    "--failover-threshold",
    "1000",
];

/// Repeatedly takes the owner away (`fault`), measures until Online on the other node, and
/// brings it back (`repair`).
/// Returns the times of the runs where the owner did not lead and of those where it did
/// (an election comes first then: a partitioned node that comes back can take the
/// leadership).
fn failovers(
    agents: &mut [Agent],
    runs: usize,
    fault: &mut dyn FnMut(&mut Agent),
    repair: &mut dyn FnMut(&mut Agent),
) -> (Vec<f64>, Vec<f64>) {
    let (mut out, mut led) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (owner, _) = group(&agents[0]).unwrap();
        let i = agents.iter().position(|a| a.name == owner).unwrap();
        let leads = agents[i]
            .try_status_value()
            .is_some_and(|v| v["leader"] == owner.as_str());
        let t0 = SystemTime::now();
        fault(&mut agents[i]);
        // Asked of the nodes that were not taken away (a cut-off node does not answer).
        let moved = |a: &Agent| group(a).filter(|(o, s)| *o != owner && s == "Online");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let new = loop {
            if let Some((new, _)) = agents.iter().filter(|a| a.name != owner).find_map(moved) {
                break new;
            }
            if std::time::Instant::now() > deadline {
                for a in agents.iter().filter(|a| a.name != owner) {
                    eprintln!(
                        "--- {}: {}",
                        a.name,
                        a.try_status_value().unwrap_or_default()
                    );
                }
                for a in agents.iter() {
                    for r in a.log_file().iter().rev().take(40).rev() {
                        eprintln!("{r}");
                    }
                }
                panic!("web not Online on another node 30 s after {owner} was taken away");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let j = agents.iter().position(|a| a.name == new).unwrap();
        let took = online_after(&agents[j], "app", t0);
        if leads {
            led.push(took)
        } else {
            out.push(took)
        }
        repair(&mut agents[i]);
        let back = std::time::Instant::now();
        let watcher = &agents[0];
        wait_until("the node is back Up", || all_up(watcher, 3));
        if back.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "slow recovery: {} back Up after {:?}",
                owner,
                back.elapsed()
            );
            for a in agents.iter() {
                let to = format!("/tmp/vigil-bench-{}.stderr", a.name);
                let _ = std::fs::copy(a.dir.path().join("agent.stderr"), to);
            }
        }
        // Independent faults: a node that was cut off comes back with a higher Raft term
        // and may cause an election; let that settle before the next run.
        std::thread::sleep(Duration::from_millis(1_500));
    }
    (out, led)
}

fn node_kills(runs: usize, tuned: bool) -> (Vec<f64>, Vec<f64>) {
    let mut agents: Vec<Agent> = ["n1", "n2", "n3"].iter().map(|n| Agent::new(n)).collect();
    cluster(&mut agents, tuned, NOT_ON_LEADER, "n2");
    failovers(&mut agents, runs, &mut |a| a.kill(), &mut |a| {
        start(a, false, None, tuned)
    })
}

fn partitions(runs: usize, tuned: bool) -> (Vec<f64>, Vec<f64>) {
    let net = Net::new();
    let mut agents: Vec<Agent> = (1..=3)
        .map(|i| Agent::in_net(&net, i, &format!("n{i}")))
        .collect();
    cluster(&mut agents, tuned, NOT_ON_LEADER, "n2");
    let index = |a: &Agent| a.name[1..].parse::<u8>().unwrap();
    failovers(&mut agents, runs, &mut |a| net.cut(index(a)), &mut |a| {
        net.heal(index(a))
    })
}

/// The owner is also the leader: an election comes before the failover.
fn leader_kills(runs: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for _ in 0..runs {
        let mut agents: Vec<Agent> = ["n1", "n2", "n3"].iter().map(|n| Agent::new(n)).collect();
        cluster(&mut agents, false, &["--preferred-owners", "n1,n2"], "n1");
        let t0 = SystemTime::now();
        agents[0].kill();
        wait_until("web Online on n2", || {
            group(&agents[1]) == Some(("n2".into(), "Online".into()))
        });
        out.push(online_after(&agents[1], "app", t0));
    }
    out
}

/// The owner is also the leader and is cut off the network: an election comes first, and the
/// new leader records the old one Down only when the old leader's lease has surely run out
/// (bound: lease + margin, 2.4 s at the defaults, from the last quorum the old leader had,
/// plus the start; the election, 0.3-0.6 s, runs within that wait).
fn leader_partitions(runs: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for _ in 0..runs {
        let net = Net::new();
        let mut agents: Vec<Agent> = (1..=3)
            .map(|i| Agent::in_net(&net, i, &format!("n{i}")))
            .collect();
        cluster(&mut agents, false, &["--preferred-owners", "n1,n2"], "n1");
        assert!(
            agents[0]
                .try_status_value()
                .is_some_and(|v| v["leader"] == "n1"),
            "n1 leads"
        );
        let t0 = SystemTime::now();
        net.cut(1);
        wait_until("web Online on n2", || {
            group(&agents[1]) == Some(("n2".into(), "Online".into()))
        });
        out.push(online_after(&agents[1], "app", t0));
        net.heal(1);
        drop(agents);
    }
    out
}

fn both(name: &str, (out, led): (Vec<f64>, Vec<f64>)) {
    if !out.is_empty() {
        report(name, out);
    }
    if !led.is_empty() {
        report("  runs where the owner also led", led);
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let runs = if quick { 5 } else { 20 };
    println!(
        "vigil failover benchmark ({} mode, {runs} runs each)",
        if quick { "quick" } else { "full" }
    );
    // `VIGIL_BENCH_ONLY=partition` runs only the partition lines.
    let only = std::env::var("VIGIL_BENCH_ONLY").unwrap_or_default();
    if only.is_empty() {
        report("process crash -> Online in place", in_place(runs));
        both(
            "owner kill -9 -> elsewhere (default)",
            node_kills(runs, false),
        );
        both(
            "owner kill -9 -> elsewhere (100ms x 5)",
            node_kills(runs, true),
        );
    }
    if rustix::process::geteuid().is_root() {
        both(
            "owner partitioned -> elsewhere (default)",
            partitions(runs, false),
        );
        both(
            "owner partitioned -> elsewhere (100ms x 5)",
            partitions(runs, true),
        );
    } else {
        println!("(partition runs skipped: they need root for network namespaces)");
    }
    let leader_runs = if quick { 3 } else { 10 };
    report(
        "leader+owner kill -9 -> elsewhere (default)",
        leader_kills(leader_runs),
    );
    if rustix::process::geteuid().is_root() {
        report(
            "leader+owner partitioned -> elsewhere (default)",
            leader_partitions(leader_runs),
        );
    }
}
