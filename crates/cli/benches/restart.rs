//! What `systemctl restart vigil` and `systemctl stop vigil` cost a service and a VM, under
//! each shutdown policy. Three nodes on 127.0.0.x: n1 (the one stopped, with the policy),
//! n2 and a witness. On n1: a web service (`python3 -m http.server` on 127.0.0.1:PORT, the
//! same port wherever it runs, so at most one copy can answer) and a firmware VM that can
//! migrate live.
//!
//! - service downtime: a prober GETs the service every 5 ms; the downtime is the sum of the
//!   gaps between answers (so a restart under `migrate`, which moves the service away and
//!   back, counts both moves);
//! - VM downtime: from the cluster log, the time the VM was not Online (a cold move), plus
//!   the downtime QEMU reports for each live migration.
//!
//! "stop" ends when the service answers again elsewhere (under `freeze` it waits for the
//! node: the row says so). "restart" stops the agent and starts it again at once, and ends
//! when everything is back on n1 (from the drain under `migrate`, by `auto_failback` under
//! `failover`).
//!
//! Run: `cargo bench -p vigil --bench restart` (`-- --quick`: one run per row;
//! `VIGIL_BENCH_ONLY=migrate` or `=stop` for some rows; `VIGIL_BENCH_VERBOSE=1` prints the
//! VM's records each figure is made from).

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use support::{Agent, wait_until};

const POLICIES: [&str; 3] = ["migrate", "failover", "freeze"];

/// Answers of the service, as (when, answered).
struct Prober {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<(Instant, bool)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    fn start(port: u16) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, out) = (stop.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            let addr = format!("127.0.0.1:{port}");
            while !s.load(Ordering::SeqCst) {
                let ok = support::get(&addr, "/").is_some();
                out.lock().unwrap().push((Instant::now(), ok));
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Prober {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    fn answering(&self) -> bool {
        self.samples.lock().unwrap().last().is_some_and(|s| s.1)
    }

    /// Total time without an answer: from the last answer before each failed stretch to the
    /// first answer after it.
    fn downtime_ms(mut self) -> f64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let samples = self.samples.lock().unwrap();
        let mut total = Duration::ZERO;
        let mut last_ok: Option<Instant> = None;
        let mut down = false;
        for (t, ok) in samples.iter() {
            match (ok, down) {
                (true, true) => {
                    if let Some(l) = last_ok {
                        total += *t - l;
                    }
                    down = false;
                    last_ok = Some(*t);
                }
                (true, false) => last_ok = Some(*t),
                (false, _) => down = true,
            }
        }
        total.as_secs_f64() * 1e3
    }
}

/// The VM's downtime in the merged log after `t0`: the stretches it was not running (from
/// the record of it leaving Online, or of n1's agent ending its resources while the VM was
/// Online there, to its next Online record), plus QEMU's reported downtime of each live
/// migration.
fn vm_downtime_ms(log: &[Value], t0: SystemTime) -> f64 {
    let time = |r: &Value| {
        r["time"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
    };
    let mut total = 0.0;
    let mut left: Option<SystemTime> = None;
    // Where the VM was last recorded Online (None: not Online).
    let mut online_on: Option<String> = None;
    for r in log {
        let node = r["node"].as_str().unwrap_or("").to_string();
        let reason = r["reason"].as_str().unwrap_or("");
        let after = time(r).is_some_and(|t| t > t0);
        if r["resource"] != "vm1" {
            let ends_all = reason.starts_with(&format!("agent on {node} stopping"));
            if after && ends_all && online_on.as_deref() == Some(node.as_str()) && left.is_none() {
                left = time(r);
                online_on = None;
            }
            continue;
        }
        // "migrate_to done: now running on n2: live migration to n2 done in 504 ms (QEMU:
        // total 62 ms, downtime 3 ms, limit 300 ms)"
        if let Some(at) = reason.find("live migration to ")
            && reason.contains(" done in ")
        {
            if after {
                total += reported_downtime(reason).unwrap_or(0.0);
            }
            let target = reason[at + "live migration to ".len()..]
                .split_whitespace()
                .next();
            online_on = target.map(str::to_string);
        }
        match (r["from"].as_str(), r["to"].as_str()) {
            // Leaving Online where it runs (not the source's cleanup after a migration).
            (Some("Online"), Some(to)) if to != "Online" && online_on.as_deref() == Some(&node) => {
                if after && left.is_none() {
                    left = time(r);
                }
                online_on = None;
            }
            (_, Some("Online")) => {
                if let (Some(l), Some(t)) = (left.take(), time(r)) {
                    total += t.duration_since(l).unwrap_or_default().as_secs_f64() * 1e3;
                }
                online_on = Some(node);
            }
            _ => {}
        }
    }
    total
}

/// "… downtime 4 ms …" or "… downtime 4, …" in a migration record.
fn reported_downtime(reason: &str) -> Option<f64> {
    let after = &reason[reason.find("downtime ")? + "downtime ".len()..];
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn merged_log(agents: &[&Agent]) -> Vec<Value> {
    let mut all: Vec<Value> = agents.iter().flat_map(|a| a.log_file()).collect();
    all.sort_by_key(|r| r["time"].as_str().unwrap_or("").to_string());
    all
}

struct Row {
    service_ms: Vec<f64>,
    vm_ms: Vec<f64>,
}

/// One run of `action` ("restart" or "stop") under `policy`, on a fresh cluster.
fn run(policy: &str, action: &str, ip: u8, port: u16, vm_port: u16) -> (f64, f64) {
    let ipn = |i: u8| format!("127.0.0.{}", ip + i);
    let mut n1 = Agent::on("n1", &ipn(0));
    let mut cmd = n1.agent_command(true);
    cmd.args(["--shutdown-policy", policy]);
    n1.spawn_with(cmd);
    let policy_args = ["--shutdown-policy", policy];
    let n2 = Agent::on("n2", &ipn(1)).start_joining(&n1);
    let mut w = Agent::on("w", &ipn(2));
    let mut cmd = w.agent_command(false);
    cmd.args(support::join_args(&n1.listen)).arg("--witness");
    w.spawn_with(cmd);
    wait_until("n2 and w Up", || {
        n1.node_state("n2").as_deref() == Some("Up") && n1.node_state("w").as_deref() == Some("Up")
    });
    for g in ["web", "vms"] {
        n1.ok(&[
            "group",
            "create",
            g,
            "--preferred-owners",
            "n1,n2",
            "--auto-failback",
            "immediate",
        ]);
    }
    let serve = format!("python3 -m http.server {port} --bind 127.0.0.1");
    let check = format!("check_http=http://127.0.0.1:{port}/");
    n1.process(
        "web",
        "site",
        &serve,
        &["--param", &check, "--looks-alive-ms", "200", "--online"],
    );
    let migration = format!("migration_port={vm_port}");
    let params = ["stop_timeout_ms=1000", "memory_mb=64", migration.as_str()];
    n1.create(
        "vm1",
        "vms",
        "vm",
        &params,
        &["--looks-alive-ms", "200", "--online"],
    );
    n1.wait_online("vm1");
    n1.wait_online("site");
    let prober = Prober::start(port);
    wait_until("the service answers", || prober.answering());
    let t0 = SystemTime::now();
    n1.stop(Duration::from_secs(120))
        .expect("the agent stopped");
    match action {
        "restart" => {
            let mut cmd = n1.agent_command(false);
            cmd.args(policy_args);
            n1.spawn_with(cmd);
            // Settled: the service answers, both groups are Online on n1 again (back from the
            // drain under migrate, by auto_failback under failover, never gone under freeze).
            let home = "n1";
            wait_until("settled after the restart", || {
                prober.answering()
                    && n1.node_state("n1").as_deref() == Some("Up")
                    && ["web", "vms"].iter().all(|g| {
                        let g = n1.group(g);
                        g["owner"] == home && g["state"] == "Online" && g["phase"] == "placed"
                    })
            });
            n1.seen_pid(n1.pid_of("vm1").unwrap_or(0));
        }
        _ => {
            wait_until("the service answers elsewhere", || {
                prober.answering()
                    && n2.group("vms")["owner"] == "n2"
                    && n2.state("vm1") == "Online"
            });
            n2.seen_pid(n2.pid_of("vm1").unwrap_or(0));
            n2.seen_pid(n2.pid_of("site").unwrap_or(0));
        }
    }
    let service = prober.downtime_ms();
    let log = merged_log(&[&n1, &n2, &w]);
    if std::env::var_os("VIGIL_BENCH_VERBOSE").is_some() {
        for r in log.iter().filter(|r| {
            r["resource"] == "vm1" || r["reason"].as_str().is_some_and(|x| x.contains("stopping"))
        }) {
            println!(
                "    {} {} {}",
                r["time"].as_str().unwrap_or(""),
                r["node"].as_str().unwrap_or(""),
                r["reason"].as_str().unwrap_or("")
            );
        }
    }
    let vm = vm_downtime_ms(&log, t0);
    for a in [&n1, &n2] {
        for r in ["site", "vm1"] {
            if let Some(p) = a.try_status_value().and_then(|v| {
                v["groups"].as_array().and_then(|gs| {
                    gs.iter()
                        .flat_map(|g| g["resources"].as_array().cloned().unwrap_or_default())
                        .find(|x| x["name"] == r)
                        .and_then(|x| x["pid"].as_u64())
                })
            }) {
                a.seen_pid(p as u32);
            }
        }
    }
    (service, vm)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let runs = if quick { 1 } else { 3 };
    println!("vigil agent restart and stop, per shutdown policy ({runs} run(s) per row)");
    let only = std::env::var("VIGIL_BENCH_ONLY").unwrap_or_default();
    let mut ip = 100u8;
    for action in ["restart", "stop"] {
        for policy in POLICIES {
            if !only.is_empty() && only != policy && only != action {
                continue;
            }
            if action == "stop" && policy == "freeze" {
                println!(
                    "{policy:<8} {action:<8} down until the node is back: its groups wait for it"
                );
                continue;
            }
            let mut row = Row {
                service_ms: Vec::new(),
                vm_ms: Vec::new(),
            };
            for _ in 0..runs {
                let port = support::free_port();
                let vm_port = support::free_port();
                let (s, v) = run(policy, action, ip, port, vm_port);
                ip = ip.wrapping_add(3).max(100);
                row.service_ms.push(s);
                row.vm_ms.push(v);
            }
            let med = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            println!(
                "{policy:<8} {action:<8} service downtime {:>8.0} ms   VM downtime {:>8.0} ms",
                med(&mut row.service_ms),
                med(&mut row.vm_ms),
            );
        }
    }
}
