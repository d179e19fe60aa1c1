//! Faults of the database and of membership, with real agents: a node bootstrapped again over
//! an emptied database, a corrupted database file, a full disk, joins that cannot finish, and
//! a removed node. The full-disk test mounts a tmpfs (CI runs as root).

mod support;

use serde_json::json;
use support::{Agent, Tmpfs, alive, wait_until};

fn three(ips: [&str; 3]) -> (Agent, Agent, Agent) {
    let mut n1 = Agent::on("n1", ips[0]);
    n1.spawn(true);
    let n2 = Agent::on("n2", ips[1]).start_joining(&n1);
    let n3 = Agent::on("n3", ips[2]).start_joining(&n1);
    wait_until("three nodes Up", || {
        ["n1", "n2", "n3"]
            .iter()
            .all(|n| n1.node_state(n).as_deref() == Some("Up"))
    });
    (n1, n2, n3)
}

/// Starts `a` with `extra` flags and expects it to refuse; returns what it said.
fn refused_start(a: &Agent, bootstrap: bool, extra: &[&str]) -> String {
    let mut cmd = a.agent_command(bootstrap);
    cmd.args(extra);
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "the agent started");
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn groups(v: &serde_json::Value) -> Vec<String> {
    v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_node_whose_database_was_emptied_is_told_to_rejoin_and_cannot_merge_a_new_cluster() {
    let (n1, n2, mut n3) = three(["127.0.0.41", "127.0.0.42", "127.0.0.43"]);
    n1.ok(&["group", "create", "keep"]);
    n3.kill();
    std::fs::remove_file(n3.data_dir().join("raft.redb")).unwrap();
    let err = refused_start(&n3, false, &[]);
    assert!(
        err.contains("belonged to cluster") && err.contains("vigil node remove n3"),
        "{err}"
    );
    assert!(
        !err.contains("start the first node with --bootstrap"),
        "{err}"
    );
    let err = refused_start(&n3, true, &[]);
    assert!(err.contains("vigil node remove n3"), "{err}");
    // The operator wipes the data dir and bootstraps: a new cluster of one, with the same
    // name and address as the old member.
    std::fs::remove_dir_all(n3.data_dir()).unwrap();
    n3.spawn(true);
    // The old cluster's leader keeps sending to that address and is refused.
    wait_until("n1 sees n3 refuse it as another cluster's node", || {
        n1.status()["nodes"].as_array().unwrap().iter().any(|n| {
            n["name"] == "n3" && n["refused"].as_str().is_some_and(|r| r.contains("cluster"))
        })
    });
    for g in ["after1", "after2"] {
        n1.ok(&["group", "create", g]);
    }
    let mine = n3.status();
    assert_eq!(groups(&mine), Vec::<String>::new(), "{mine:#}");
    assert_eq!(mine["nodes"].as_array().unwrap().len(), 1, "{mine:#}");
    let theirs = n2.status();
    assert_eq!(groups(&theirs), ["after1", "after2", "keep"]);
    assert!(
        ["n1", "n2"].contains(&theirs["leader"].as_str().unwrap()),
        "{theirs:#}"
    );
    drop((n1, n2, n3));
}

#[test]
fn a_corrupted_database_is_named_with_what_to_do() {
    for damage in ["random bytes", "zeroed pages"] {
        let mut a = Agent::start();
        a.ok(&["group", "create", "g"]);
        a.kill();
        let path = a.data_dir().join("raft.redb");
        let mut bytes = std::fs::read(&path).unwrap();
        match damage {
            "random bytes" => {
                let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
                for b in bytes.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
            }
            _ => {
                let len = bytes.len();
                for b in &mut bytes[4096.min(len)..(len / 2).max(4096.min(len))] {
                    *b = 0;
                }
                for b in &mut bytes[..64.min(len)] {
                    *b = 0;
                }
            }
        }
        std::fs::write(&path, &bytes).unwrap();
        let err = refused_start(&a, false, &[]);
        assert!(
            err.contains(&path.display().to_string()) && err.contains("vigil node remove"),
            "{damage}: {err}"
        );
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{damage}: {err}"
        );
    }
}

#[test]
fn a_follower_whose_disk_fills_fences_itself_says_why_and_recovers() {
    let mut n1 = Agent::on("n1", "127.0.0.51");
    let mut n2 = Agent::on("n2", "127.0.0.52");
    let disk = Tmpfs::mount(&n2.data_dir(), "64m");
    n1.spawn(true);
    n2 = n2.start_joining(&n1);
    let n3 = Agent::on("n3", "127.0.0.53").start_joining(&n1);
    wait_until("n2 Up", || n1.node_state("n2").as_deref() == Some("Up"));
    n2.ok(&["group", "create", "g", "--preferred-owners", "n2,n3"]);
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
    let pid = n2.wait_online("svc");
    let fill = disk.fill();
    // Writes that reach n2 cannot be stored there.
    for i in 0..20 {
        n1.ok(&["group", "create", &format!("w{i}")]);
    }
    wait_until("n2 fenced itself", || !alive(pid));
    let v = n2.status();
    assert_eq!(v["standing"]["standing"], "fenced", "{v:#}");
    assert!(
        v["standing"]["reason"]
            .as_str()
            .unwrap()
            .contains("cannot write"),
        "{v:#}"
    );
    wait_until("g runs on n3", || {
        let g = n1.group("g");
        g["owner"] == "n3" && g["state"] == "Online"
    });
    std::fs::remove_file(fill).unwrap();
    wait_until("n2 current again, with the writes it missed", || {
        n2.try_status_value().is_some_and(|v| {
            v["standing"]["standing"] == "current" && groups(&v).contains(&"w19".to_string())
        }) && n1.node_state("n2").as_deref() == Some("Up")
    });
    n1.ok(&["group", "create", "after"]);
    wait_until("n2 has it", || {
        n2.try_status_value()
            .is_some_and(|v| groups(&v).contains(&"after".to_string()))
    });
    drop((n1, n2, n3));
    drop(disk);
}

#[test]
fn joins_that_cannot_finish_are_refused_and_leave_the_quorum_alone() {
    let (n1, n2, mut n3) = three(["127.0.0.61", "127.0.0.62", "127.0.0.63"]);
    // Two joins at once, of nodes (certified with join tokens) that answer at no address.
    let ghosts: Vec<_> = ["ghost1", "ghost2"]
        .iter()
        .map(|name| {
            let tls = support::certified(&n1.listen, name);
            let (addr, name) = (n1.listen.clone(), name.to_string());
            std::thread::spawn(move || {
                let body = json!({
                    "name": name,
                    "address": format!("127.0.0.1:{}", support::free_port()),
                });
                support::https(
                    &addr,
                    std::sync::Arc::new(tls.client_config()),
                    "POST",
                    "/v1/cluster/join",
                    Some(body),
                    &[],
                )
                .unwrap()
            })
        })
        .collect();
    for g in ghosts {
        let (status, body) = g.join().unwrap();
        assert!(status >= 400, "joined: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("cannot reach"),
            "{body}"
        );
    }
    assert_eq!(n1.status()["nodes"].as_array().unwrap().len(), 3);
    // With one real node gone, the two others are still a majority.
    n3.kill();
    n1.ok(&["group", "create", "after"]);
    n2.ok(&["node", "remove", "n3"]);
    drop((n1, n2, n3));
}

#[test]
fn a_removed_node_is_told_and_stops_and_one_removed_while_away_stops_when_it_returns() {
    let (n1, n2, n3) = three(["127.0.0.71", "127.0.0.72", "127.0.0.73"]);
    n1.ok(&["node", "remove", "n3"]);
    wait_until("n3's agent stopped", || !alive(n3.pid()));
    let said = support::read(&n3.dir.path().join("agent.stderr"));
    assert!(said.contains("was removed from cluster"), "{said}");
    n1.ok(&["group", "create", "after"]);
    // A node removed while it was down hears no notice; when it comes back it believes it
    // still votes. The voters refuse its votes, and it stops, saying why.
    let n4 = Agent::on("n4", "127.0.0.74").start_joining(&n1);
    wait_until("n4 Up", || n1.node_state("n4").as_deref() == Some("Up"));
    let mut n4 = n4;
    n4.kill();
    n1.ok(&["node", "remove", "n4"]);
    let term = n1.status()["term"].as_u64().unwrap();
    let mut cmd = n4.agent_command(false);
    cmd.stderr(std::process::Stdio::piped());
    let out = cmd.output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("was removed from cluster"),
        "{said}"
    );
    // It did not disturb the others: no election, writes go on.
    assert_eq!(
        n1.status()["term"].as_u64().unwrap(),
        term,
        "n4's votes raised the term"
    );
    n2.ok(&["group", "create", "after-n4"]);
    drop((n1, n2, n3, n4));
}
