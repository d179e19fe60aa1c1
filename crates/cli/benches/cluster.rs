//! Three-node benchmark on 127.0.0.1: real agents, real Raft. Prints figures.
//!
//! Run: `cargo bench -p vigil --bench cluster` (add `-- --quick` for a short run).
//!
//! - formation: three fresh agents (one --bootstrap, two --join) until all are voters;
//! - kill -9 of a follower → the leader records it Down, p50/p99 (lease 2 s + margin 0.4 s
//!   at the defaults), from the leader's cluster log against the moment of the kill;
//! - write latency through the API (one writer, each write a new group), p50/p99, with a
//!   connection per write and on one kept connection;
//! - write throughput through the API (16 and 64 concurrent writers, a connection each
//!   per request). `VIGIL_BENCH_ONLY=throughput` runs only these.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use support::{Agent, wait_until};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report(name: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    let pct = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{name:<34} n={:<5} p50={:>8.2} ms  p99={:>8.2} ms  max={:>8.2} ms",
        v.len(),
        pct(0.5),
        pct(0.99),
        v[v.len() - 1]
    );
}

fn voters(a: &Agent) -> usize {
    a.try_status_value()
        .and_then(|v| {
            v["nodes"].as_array().map(|ns| {
                ns.iter()
                    .filter(|n| n["role"] == "leader" || n["role"] == "voter")
                    .count()
            })
        })
        .unwrap_or(0)
}

fn node_state(a: &Agent, node: &str) -> Option<String> {
    a.node_state(node)
}

/// An operator's way in: HTTPS checked against the cluster CA, an admin API token.
#[derive(Clone)]
struct Operator {
    tls: std::sync::Arc<vigil_tls::rustls::ClientConfig>,
    auth: String,
}

impl Operator {
    fn of(a: &Agent) -> Operator {
        let token = a
            .ok(&["token", "create", "--role", "admin"])
            .trim()
            .to_string();
        let ca = std::fs::read_to_string(a.ca_file()).unwrap();
        Operator {
            tls: support::pinned(vigil_tls::Pin::Ca(ca)),
            auth: format!("Bearer {token}"),
        }
    }
}

fn write(op: &Operator, a: &Agent, name: &str) {
    write_to(op, &a.listen, name);
}

/// One write through the API over HTTPS (a connection of its own, with its handshake).
fn write_to(op: &Operator, addr: &str, name: &str) {
    let (status, v) = support::https(
        addr,
        op.tls.clone(),
        "POST",
        "/v1/groups",
        Some(json!({ "name": name })),
        &[("Authorization", &op.auth)],
    )
    .unwrap();
    assert_eq!(status, 200, "{v}");
}

/// One HTTPS connection for many requests (HTTP/1.1 keep-alive).
struct KeptAlive {
    s: std::io::BufReader<
        vigil_tls::rustls::StreamOwned<vigil_tls::rustls::ClientConnection, std::net::TcpStream>,
    >,
}

impl KeptAlive {
    fn open(op: &Operator, addr: &str) -> KeptAlive {
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_nodelay(true).unwrap();
        let name = vigil_tls::rustls::pki_types::ServerName::try_from("vigil").unwrap();
        let conn = vigil_tls::rustls::ClientConnection::new(op.tls.clone(), name).unwrap();
        KeptAlive {
            s: std::io::BufReader::new(vigil_tls::rustls::StreamOwned::new(conn, tcp)),
        }
    }

    /// Creates group `name`; the answer must be 200 and say how long it is.
    fn write(&mut self, op: &Operator, name: &str) {
        use std::io::{BufRead, Read, Write};
        let body = json!({ "name": name }).to_string();
        let request = format!(
            "POST /v1/groups HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            op.auth,
            body.len()
        );
        let s = self.s.get_mut();
        s.write_all(request.as_bytes()).unwrap();
        s.flush().unwrap();
        let mut line = String::new();
        self.s.read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 200"), "{line}");
        let mut length = None;
        loop {
            line.clear();
            self.s.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse::<usize>().ok();
            }
        }
        let mut answer = vec![0; length.expect("the answer says its length")];
        self.s.read_exact(&mut answer).unwrap();
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (writes, concurrent, kills) = if quick {
        (100, 400, 3)
    } else {
        (1_000, 4_000, 20)
    };
    println!(
        "vigil three-node benchmark ({} mode)",
        if quick { "quick" } else { "full" }
    );

    let t0 = Instant::now();
    let mut n1 = Agent::new("n1");
    n1.spawn(true);
    let n2 = Agent::join("n2", &n1);
    let mut n3 = Agent::join("n3", &n1);
    wait_until("three voters", || voters(&n1) == 3);
    let op = Operator::of(&n1);
    println!(
        "{:<34} {:>8.0} ms",
        "formation (3 fresh agents)",
        ms(t0.elapsed())
    );

    // `VIGIL_BENCH_ONLY=throughput` skips to the throughput runs (for profiling them).
    let only_throughput = std::env::var("VIGIL_BENCH_ONLY").is_ok_and(|v| v == "throughput");
    let (kills, writes) = if only_throughput {
        (0, 0)
    } else {
        (kills, writes)
    };

    // Node failures first, while the database is small (status and log stay cheap to poll).
    let mut down = Vec::new();
    for _ in 0..kills {
        let after = n1.log().last().and_then(|r| r["seq"].as_u64()).unwrap_or(0);
        let killed = SystemTime::now();
        n3.kill();
        wait_until("n3 Down", || {
            node_state(&n1, "n3").as_deref() == Some("Down")
        });
        // The leader records it, and either of n1 and n2 may lead.
        let mut rec: Option<Value> = None;
        wait_until("the Down record", || {
            rec = [(&n1, after), (&n2, 0)].into_iter().find_map(|(a, from)| {
                a.log()
                    .into_iter()
                    .filter(|r| r["seq"].as_u64().unwrap_or(0) > from)
                    .find(|r| {
                        let reason = r["reason"].as_str().unwrap_or("");
                        reason.starts_with("node n3 ")
                            && reason.ends_with("; Down")
                            && r["time"]
                                .as_str()
                                .and_then(|t| humantime::parse_rfc3339(t).ok())
                                > Some(killed)
                    })
            });
            rec.is_some()
        });
        let rec = rec.expect("Down record");
        let at = humantime::parse_rfc3339(rec["time"].as_str().unwrap()).unwrap();
        down.push(ms(at.duration_since(killed).unwrap_or_default()));
        n3.spawn(false);
        wait_until("n3 Up", || node_state(&n1, "n3").as_deref() == Some("Up"));
    }
    if !down.is_empty() {
        report("kill -9 -> Down (lease 2 s + 0.4 s)", down);
    }

    let mut lat = Vec::new();
    for i in 0..writes {
        let t = Instant::now();
        write(&op, &n1, &format!("w{i}"));
        lat.push(ms(t.elapsed()));
    }
    if !lat.is_empty() {
        report("write latency (API, leader)", lat);
    }
    // The same writes on one connection kept alive (as a client that reuses it does): what
    // TLS costs per request once the handshake is paid.
    let mut lat = Vec::new();
    if writes > 0 {
        let mut conn = KeptAlive::open(&op, &n1.listen);
        for i in 0..writes {
            let t = Instant::now();
            conn.write(&op, &format!("k{i}"));
            lat.push(ms(t.elapsed()));
        }
        report("write latency (API, leader, kept)", lat);
    }
    let mut lat = Vec::new();
    for i in 0..writes / 4 {
        let t = Instant::now();
        write(&op, &n2, &format!("f{i}"));
        lat.push(ms(t.elapsed()));
    }
    if !lat.is_empty() {
        report("write latency (API, via follower)", lat);
    }

    let cpu = |a: &Agent| {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", a.pid())).unwrap();
        let f: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    for writers in [16, 64] {
        let before = [cpu(&n1), cpu(&n2), cpu(&n3)];
        let t = Instant::now();
        let per = concurrent / writers;
        std::thread::scope(|s| {
            for w in 0..writers {
                let (addr, op) = (n1.listen.clone(), op.clone());
                s.spawn(move || {
                    for i in 0..per {
                        write_to(&op, &addr, &format!("c{writers}-{w}-{i}"));
                    }
                });
            }
        });
        let secs = t.elapsed().as_secs_f64();
        let after = [cpu(&n1), cpu(&n2), cpu(&n3)];
        let pct: Vec<String> = (0..3)
            .map(|i| format!("{:.0} %", (after[i] - before[i]) as f64 / secs))
            .collect();
        println!(
            "{:<34} {:>8.0} writes/s ({} writes, {writers} writers)",
            "write throughput (API)",
            (per * writers) as f64 / secs,
            per * writers
        );
        println!(
            "{:<34} leader {}, followers {}, {} (of one core each; 2 cores in all)",
            "  CPU during it", pct[0], pct[1], pct[2]
        );
    }

    drop((n1, n2, n3));
}
