//! One-node benchmark: real agent, real RHS, real processes. Prints figures; asserts nothing
//! about time (timing goals live here, not in tests).
//!
//! Run: `cargo bench -p vigil --bench node` (add `-- --quick` for a short run).
//!
//! - crash → detected and crash → Online again, p50/p99 over 50+ SIGKILLs (restart_delay 0),
//!   from the cluster log's timestamps against the moment of the kill;
//! - 200 process resources: group online → all Online; group delete → gone;
//! - 1 000 process resources at looks_alive_ms=1000: agent + RHS CPU over 10 s;
//! - the agent's RSS idle, and with 1 000 resources.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use support::{Agent, kill9, wait_until};

fn http(a: &Agent, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, v) = support::http(&a.listen, method, path, body);
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {v}"
    );
    v
}

fn time_of(record: &Value) -> SystemTime {
    humantime::parse_rfc3339(record["time"].as_str().unwrap()).unwrap()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Waits (long-polling the log) for the first record after `after` that matches.
fn wait_record(a: &Agent, after: u64, resource: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let mut seq = after;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "no matching record for {resource}"
        );
        let recs = http(
            a,
            "GET",
            &format!("/v1/log?after={seq}&resource={resource}&wait_ms=5000"),
            None,
        );
        for r in recs.as_array().unwrap() {
            seq = r["seq"].as_u64().unwrap();
            if pred(r) {
                return r.clone();
            }
        }
    }
}

fn last_seq(a: &Agent) -> u64 {
    let recs = http(a, "GET", "/v1/log?after=0&limit=10000", None);
    recs.as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .max()
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn report(name: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    println!(
        "{name:<32} n={:<4} p50={:>8.2} ms  p99={:>8.2} ms  max={:>8.2} ms",
        v.len(),
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        v[v.len() - 1]
    );
}

fn crash_recovery(a: &Agent, crashes: usize) {
    a.process(
        "crash",
        "victim",
        "sleep 100000",
        &["--restart-delay-ms", "0", "--restart-threshold", "1000"],
    );
    http(a, "POST", "/v1/groups/crash/online", None);
    a.wait_state("victim", "Online");
    let (mut detected, mut online) = (Vec::new(), Vec::new());
    for _ in 0..crashes {
        // The log records the RCM's decision before its record reaches the database.
        wait_until("victim is recorded Online with its pid", || {
            a.state("victim") == "Online" && a.pid_of("victim").is_some()
        });
        let pid = a.pid_of("victim").unwrap();
        let after = last_seq(a);
        let t0 = SystemTime::now();
        kill9(pid);
        let failed = wait_record(a, after, "victim", |r| {
            r["component"] == "RHS" && r["reason"].as_str().unwrap().starts_with("Failed")
        });
        let up = wait_record(a, after, "victim", |r| {
            r["component"] == "RCM" && r["to"] == "Online"
        });
        detected.push(ms(time_of(&failed).duration_since(t0).unwrap_or_default()));
        online.push(ms(time_of(&up).duration_since(t0).unwrap_or_default()));
    }
    report("crash -> detected", detected);
    report("crash -> Online again", online);
}

fn all_in_state(a: &Agent, group: &str, state: &str) -> bool {
    let g = http(a, "GET", "/v1/status", None)["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == group)
        .cloned();
    g.is_some_and(|g| {
        g["resources"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["state"] == state)
    })
}

fn create_many(a: &Agent, group: &str, n: usize, props: Value) -> Duration {
    http(a, "POST", "/v1/groups", Some(json!({ "name": group })));
    let t0 = Instant::now();
    for i in 0..n {
        let body = json!({
            "name": format!("{group}-{i}"), "group": group, "type": "process",
            "params": { "command": "sleep 100000" }, "props": props,
        });
        http(a, "POST", "/v1/resources", Some(body));
    }
    t0.elapsed()
}

fn wait_group(a: &Agent, group: &str, state: &str) -> Duration {
    let t0 = Instant::now();
    while !all_in_state(a, group, state) {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "{group} never reached {state}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    t0.elapsed()
}

fn bulk(a: &Agent, n: usize) {
    let created = create_many(a, "bulk", n, json!({}));
    println!(
        "{:<32} {:>8.0} ms  ({n} resources, one API call each)",
        "create",
        ms(created)
    );
    let t0 = Instant::now();
    http(a, "POST", "/v1/groups/bulk/online", None);
    let _ = wait_group(a, "bulk", "Online");
    println!(
        "{:<32} {:>8.0} ms",
        format!("{n} resources -> Online"),
        ms(t0.elapsed())
    );
    let t0 = Instant::now();
    http(a, "DELETE", "/v1/groups/bulk", None);
    println!(
        "{:<32} {:>8.0} ms  (offline, then removed)",
        format!("{n} resources deleted"),
        ms(t0.elapsed())
    );
}

/// utime + stime of a process, in clock ticks (100 Hz on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    kb / 1024.0
}

fn steady_state(a: &Agent, n: usize, window: Duration) {
    create_many(a, "many", n, json!({ "looks_alive_ms": 1000 }));
    http(a, "POST", "/v1/groups/many/online", None);
    let _ = wait_group(a, "many", "Online");
    std::thread::sleep(Duration::from_secs(2));
    let rhs = a.rhs_pid("default").unwrap();
    let (agent0, rhs0) = (cpu_ticks(a.pid()), cpu_ticks(rhs));
    let t0 = Instant::now();
    std::thread::sleep(window);
    let secs = t0.elapsed().as_secs_f64();
    let agent_pct = (cpu_ticks(a.pid()) - agent0) as f64 / secs;
    let rhs_pct = (cpu_ticks(rhs) - rhs0) as f64 / secs;
    println!(
        "{:<32} agent {agent_pct:.2} %  RHS {rhs_pct:.2} %  total {:.2} % of one core ({:.0} s window)",
        format!("CPU, {n} resources @1000 ms"),
        agent_pct + rhs_pct,
        secs
    );
    println!(
        "{:<32} agent {:.1} MB  RHS {:.1} MB",
        format!("RSS with {n} resources"),
        rss_mb(a.pid()),
        rss_mb(rhs)
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (crashes, bulk_n, many_n, window) = if quick {
        (10, 50, 100, Duration::from_secs(3))
    } else {
        (60, 200, 1000, Duration::from_secs(10))
    };
    println!(
        "vigil one-node benchmark ({} mode)",
        if quick { "quick" } else { "full" }
    );
    let a = Agent::start();
    std::thread::sleep(Duration::from_secs(1));
    println!("{:<32} {:.1} MB", "agent RSS, idle", rss_mb(a.pid()));
    crash_recovery(&a, crashes);
    bulk(&a, bulk_n);
    steady_state(&a, many_n, window);
}
