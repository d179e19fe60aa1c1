//! Fencing benchmark: how long a group takes to run elsewhere when its owner is taken away,
//! in each protection mode, and whether two copies ever ran (from the service's own beats).
//!
//! Modes: lease only (today's default), lease + watchdog (the test device, `vigil
//! watchdog-device`, 3 s timeout), and a fence agent (a script of the fence-agents protocol
//! that kills the node's cgroup, as `fence_virsh` would power it off). Faults: kill -9 of the
//! owner's agent, the owner cut off the network (network namespaces: root), and SIGSTOP of
//! the owner's agent and RHS processes (which only a watchdog or a fence ends). Default
//! heartbeats (500 ms × 4: lease 2 s, margin 0.4 s). The owner is never the leader.
//!
//! Run: `cargo bench -p vigil --bench fencing` (`-- --quick` for 5 runs each;
//! `VIGIL_BENCH_ONLY=kill|partition|stop` for one fault).

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use support::{Agent, Beats, Net, online_after, wait_until};

const WATCHDOG_MS: u64 = 3_000;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Lease,
    Watchdog,
    Fence,
}

impl Mode {
    fn name(self) -> String {
        match self {
            Mode::Lease => "lease only".into(),
            Mode::Watchdog => format!("watchdog {} s", WATCHDOG_MS / 1000),
            Mode::Fence => "fence agent".into(),
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    Kill,
    Partition,
    Stop,
}

fn report(name: &str, mut v: Vec<f64>, extra: &str) {
    v.sort_by(f64::total_cmp);
    let pct = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{name:<52} n={:<3} p50={:>8.1} ms  p99={:>8.1} ms  max={:>8.1} ms{extra}",
        v.len(),
        pct(0.5),
        pct(0.99),
        v[v.len() - 1]
    );
}

struct Bed {
    mode: Mode,
    dir: tempfile::TempDir,
    devices: Vec<Child>,
    starts: usize,
}

impl Drop for Bed {
    fn drop(&mut self) {
        for d in &mut self.devices {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

impl Bed {
    /// Starts agent `a` (n1 bootstraps), protected as the mode says.
    fn start(&mut self, a: &mut Agent, seed: Option<&str>) {
        let mut cmd = a.agent_command(seed.is_none() && !a.data_dir().exists());
        if let Some(seed) = seed {
            cmd.args(support::join_args(seed));
        }
        if self.mode == Mode::Watchdog && a.name != "n1" {
            self.starts += 1;
            let sock = self
                .dir
                .path()
                .join(format!("wd-{}-{}.sock", a.name, self.starts));
            let device = Command::new(&*support::VIGIL)
                .args(["watchdog-device", "--socket"])
                .arg(&sock)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            self.devices.push(device);
            wait_until("the watchdog device listens", || sock.exists());
            cmd.arg("--watchdog")
                .arg(&sock)
                .args(["--watchdog-timeout-ms", &WATCHDOG_MS.to_string()]);
        }
        a.spawn_with(cmd);
    }

    /// In fence mode, gives `a` (started) its fence device, through `n1`; `netns`: the
    /// network namespace `a` runs in.
    fn fence_device(&self, n1: &Agent, a: &Agent, netns: Option<String>) {
        if self.mode != Mode::Fence || a.name == "n1" {
            return;
        }
        let agent = support::fence_agent(self.dir.path());
        if let Some(ns) = netns {
            n1.ok(&[
                "node",
                "fence-device",
                &a.name,
                "--agent",
                agent.to_str().unwrap(),
                "--param",
                &format!("netns={ns}"),
            ]);
            return;
        }
        // The node's cgroup, by its name (one cluster at a time here).
        let root = vigil_rhs::cgroup::own().unwrap();
        let prefix = format!("vigil-{}-", a.name);
        let mut cgroup = None;
        wait_until("the node's cgroup", || {
            cgroup = std::fs::read_dir(&root)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
                        && std::fs::read_to_string(p.join(".agent/cgroup.procs"))
                            .is_ok_and(|t| !t.trim().is_empty())
                });
            cgroup.is_some()
        });
        let cgroup = cgroup.unwrap();
        n1.ok(&[
            "node",
            "fence-device",
            &a.name,
            "--agent",
            agent.to_str().unwrap(),
            "--param",
            &format!("cgroup={}", cgroup.display()),
        ]);
    }
}

fn owner(a: &Agent) -> Option<(String, String)> {
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

/// `runs` faults of kind `fault` on the owner (n2 or n3) in `mode`: the times until the
/// group runs elsewhere, and how many runs saw two copies at once.
fn runs(mode: Mode, fault: Fault, runs: usize) -> (Vec<f64>, usize) {
    let net = Net::new();
    let mut bed = Bed {
        mode,
        dir: tempfile::tempdir().unwrap(),
        devices: Vec::new(),
        starts: 0,
    };
    let mut agents: Vec<Agent> = (1..=3)
        .map(|i| match fault {
            Fault::Partition => Agent::in_net(&net, i, &format!("n{i}")),
            _ => Agent::new(&format!("n{i}")),
        })
        .collect();
    bed.start(&mut agents[0], None);
    let seed = agents[0].listen.clone();
    for a in agents[1..].iter_mut() {
        bed.start(a, Some(&seed));
    }
    wait_until("three nodes Up", || {
        ["n2", "n3"]
            .iter()
            .all(|n| agents[0].node_state(n).as_deref() == Some("Up"))
    });
    let netns = |i: usize| (fault == Fault::Partition).then(|| net.ns(i as u8 + 1));
    for (i, a) in agents.iter().enumerate().skip(1) {
        bed.fence_device(&agents[0], a, netns(i));
    }
    let beats = Beats::new(bed.dir.path());
    agents[0].ok(&[
        "group",
        "create",
        "web",
        "--preferred-owners",
        "n2,n3",
        "--possible-owners",
        "n2,n3",
        "--failover-threshold",
        "1000",
    ]);
    agents[0].ok(&[
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
    wait_until("web Online", || {
        owner(&agents[0]).is_some_and(|(_, s)| s == "Online")
    });
    let (mut times, mut twice) = (Vec::new(), 0);
    for _ in 0..runs {
        let (was, _) = owner(&agents[0]).unwrap();
        let i = agents.iter().position(|a| a.name == was).unwrap();
        wait_until("beats from the owner", || beats.count(&was) > 3);
        let before = beats.overlaps(40).len();
        let t0 = SystemTime::now();
        let mut stopped = Vec::new();
        match fault {
            Fault::Kill => agents[i].kill(),
            Fault::Partition => net.cut(i as u8 + 1),
            Fault::Stop => {
                stopped.push(agents[i].pid());
                stopped.extend(support::rhs_pids(agents[i].pid()));
                support::signal(&stopped, rustix::process::Signal::STOP);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let new = loop {
            if let Some((o, s)) = owner(&agents[0])
                && o != was
                && s == "Online"
            {
                break o;
            }
            assert!(Instant::now() < deadline, "web never moved off {was}");
            std::thread::sleep(Duration::from_millis(20));
        };
        let j = agents.iter().position(|a| a.name == new).unwrap();
        times.push(online_after(&agents[j], "beat", t0));
        wait_until("beats from the new owner", || beats.count(&new) > 3);
        // A stopped node without a watchdog or fence keeps beating: let it be seen.
        std::thread::sleep(Duration::from_millis(300));
        match fault {
            Fault::Kill => {}
            Fault::Partition => net.heal(i as u8 + 1),
            Fault::Stop => {
                support::signal(&stopped, rustix::process::Signal::CONT);
                agents[i].kill();
            }
        }
        if beats.overlaps(40).len() > before {
            twice += 1;
        }
        // A fenced node is off: it starts again (a partitioned one without a fence runs on).
        if fault != Fault::Partition || mode == Mode::Fence {
            agents[i].kill();
            bed.start(&mut agents[i], None);
            bed.fence_device(&agents[0], &agents[i], netns(i));
        }
        wait_until("the node is back Up", || {
            agents[0].node_state(&was).as_deref() == Some("Up")
        });
        std::thread::sleep(Duration::from_millis(1_000));
    }
    (times, twice)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 5 } else { 20 };
    println!(
        "vigil fencing benchmark ({} mode, {n} runs each; default heartbeats: lease 2 s, margin 0.4 s)",
        if quick { "quick" } else { "full" }
    );
    let root = rustix::process::geteuid().is_root();
    let only = std::env::var("VIGIL_BENCH_ONLY").unwrap_or_default();
    for (fault, key, label) in [
        (Fault::Kill, "kill", "owner kill -9 -> elsewhere"),
        (
            Fault::Partition,
            "partition",
            "owner partitioned -> elsewhere",
        ),
        (Fault::Stop, "stop", "owner agent+RHS SIGSTOP -> elsewhere"),
    ] {
        if !only.is_empty() && only != key {
            continue;
        }
        if fault == Fault::Partition && !root {
            println!("(partition runs skipped: they need root for network namespaces)");
            continue;
        }
        for mode in [Mode::Lease, Mode::Watchdog, Mode::Fence] {
            let (times, twice) = runs(mode, fault, n);
            report(
                &format!("{label} ({})", mode.name()),
                times,
                &format!("  two copies in {twice} of {n}"),
            );
        }
    }
}
