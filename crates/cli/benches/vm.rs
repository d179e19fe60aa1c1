//! VM benchmark: a 256 MiB Linux test guest (scripts/make-test-guest.py) on two real agents
//! on 127.0.0.x. Prints figures.
//!
//! Run: `cargo bench -p vigil --bench vm` (add `-- --quick` for 2 runs of each).
//!
//! - time to Online: `vigil resource online` until the guest answers over HTTP (boot under
//!   TCG, then guest_check_http);
//! - live migration: QEMU's total time and downtime from the source's log, and the cluster's
//!   cutover (source's "migrate_to done" record to the target's Online record);
//! - quick migration: the downtime the target logs (guest paused on the source until it runs
//!   on the target), and how long `vigil group move --migration quick` takes to answer.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use support::{count, linux_vm, two_nodes, wait_until};

fn report(name: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    let pct = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{name:<44} n={:<3} p50={:>8.1} ms  max={:>8.1} ms",
        v.len(),
        pct(0.5),
        v[v.len() - 1]
    );
}

/// The number after `key` in `text` ("downtime 11 ms" → 11).
fn number_after(text: &str, key: &str) -> Option<f64> {
    let at = text.find(key)? + key.len();
    text[at..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .next()?
        .parse()
        .ok()
}

fn time_of(record: &Value) -> SystemTime {
    humantime::parse_rfc3339(record["time"].as_str().unwrap()).unwrap()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let runs = if quick { 2 } else { 6 };
    let state = tempfile::tempdir().unwrap();
    let (n1, n2) = two_nodes("127.0.0.10", "127.0.0.11");
    let state_dir = format!("state_dir={}", state.path().display());
    linux_vm(&n1, "g", "vm", 18090, &["--param", &state_dir]);
    n1.wait_state("vm", "Online");
    let accel = n1.resource("vm")["reason"]
        .as_str()
        .unwrap_or("")
        .rsplit(' ')
        .next()
        .unwrap_or("?")
        .to_string();
    println!(
        "vigil VM benchmark ({} mode): 256 MiB Linux guest under {accel} (this machine's KVM cannot boot Linux in useful time)",
        if quick { "quick" } else { "full" }
    );
    let agents = [&n1, &n2];
    let ip = |node: &str| {
        if node == "n1" {
            "127.0.0.10"
        } else {
            "127.0.0.11"
        }
    };

    let mut online = Vec::new();
    for _ in 0..runs.min(5) {
        let owner = n1.group("g")["owner"].as_str().unwrap().to_string();
        n1.ok(&["resource", "offline", "vm"]);
        n1.wait_state("vm", "Offline");
        let t = Instant::now();
        n1.ok(&["resource", "online", "vm"]);
        wait_until("the guest answers", || {
            count(&format!("{}:18090", ip(&owner))).is_some()
        });
        online.push(t.elapsed().as_secs_f64() * 1e3);
        wait_until("vm is Online", || n1.state("vm") == "Online");
    }
    report("time to Online (boot until the guest answers)", online);

    let (mut total, mut down, mut cutover) = (Vec::new(), Vec::new(), Vec::new());
    let (mut qdown, mut qtotal) = (Vec::new(), Vec::new());
    for i in 0..runs * 2 {
        let live = i < runs;
        let from = n1.group("g")["owner"].as_str().unwrap().to_string();
        let to = if from == "n1" { "n2" } else { "n1" };
        let (src, dst) = if from == "n1" {
            (agents[0], agents[1])
        } else {
            (agents[1], agents[0])
        };
        let after_src = src
            .log()
            .last()
            .and_then(|r| r["seq"].as_u64())
            .unwrap_or(0);
        let after_dst = dst
            .log()
            .last()
            .and_then(|r| r["seq"].as_u64())
            .unwrap_or(0);
        let t = Instant::now();
        let mut args = vec!["group", "move", "g", "--to", to];
        if !live {
            args.extend(["--migration", "quick"]);
        }
        n1.ok(&args);
        let elapsed = t.elapsed().as_secs_f64() * 1e3;
        wait_until("the guest answers on the target", || {
            count(&format!("{}:18090", ip(to))).is_some()
                && n1.group("g")["owner"] == to
                && n1.state("vm") == "Online"
        });
        let src_log: Vec<Value> = src
            .log()
            .into_iter()
            .filter(|r| r["seq"].as_u64().unwrap_or(0) > after_src && r["resource"] == "vm")
            .collect();
        let dst_log: Vec<Value> = dst
            .log()
            .into_iter()
            .filter(|r| r["seq"].as_u64().unwrap_or(0) > after_dst && r["resource"] == "vm")
            .collect();
        let reason = |r: &Value| r["reason"].as_str().unwrap_or("").to_string();
        let done = src_log
            .iter()
            .find(|r| reason(r).starts_with("migrate_to done"))
            .expect("the source logged the migration");
        let arrived = dst_log
            .iter()
            .find(|r| r["to"] == "Online")
            .expect("the target recorded it Online");
        if live {
            let text = reason(done);
            total.push(number_after(&text, "total").unwrap());
            down.push(number_after(&text, "downtime").unwrap());
            let gap = time_of(arrived)
                .duration_since(time_of(done))
                .unwrap_or(Duration::ZERO);
            cutover.push(gap.as_secs_f64() * 1e3);
        } else {
            qdown.push(number_after(&reason(arrived), "downtime").expect("downtime logged"));
            qtotal.push(elapsed);
        }
    }
    report("live migration: QEMU total time", total);
    report("live migration: QEMU downtime (limit 300 ms)", down);
    report("live migration: cutover to target Online", cutover);
    report("quick migration: downtime (paused to running)", qdown);
    report("quick migration: `vigil group move` answers", qtotal);
    drop((n2, n1));
}
