//! Several real agents on 127.0.0.1: the replicated cluster database through the CLI.

mod support;

use serde_json::Value;
use support::{Agent, wait_until};

/// n1 bootstraps, the others join through n1.
fn cluster(names: &[&str]) -> Vec<Agent> {
    let mut first = Agent::new(names[0]);
    first.spawn(true);
    let mut agents = vec![first];
    for name in &names[1..] {
        let a = Agent::join(name, &agents[0]);
        agents.push(a);
    }
    agents
}

fn nodes(a: &Agent) -> Vec<(String, String)> {
    a.status()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["role"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn groups(a: &Agent) -> Vec<String> {
    match a.try_status_value() {
        Some(v) => v["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap().to_string())
            .collect(),
        None => Vec::new(),
    }
}

fn leader(agents: &[Agent]) -> Option<usize> {
    agents.iter().position(|a| {
        a.running()
            && a.try_status_value()
                .is_some_and(|v: Value| v["leader"].as_str() == Some(a.name.as_str()))
    })
}

#[test]
fn three_agents_form_a_cluster_replicate_and_survive_the_leader() {
    let mut agents = cluster(&["n1", "n2", "n3"]);
    wait_until("all three are voters, n1 leads", || {
        nodes(&agents[2])
            == [
                ("n1".into(), "leader".into()),
                ("n2".into(), "voter".into()),
                ("n3".into(), "voter".into()),
            ]
    });
    // A change made through a follower reaches every node.
    agents[1].ok(&["group", "create", "web"]);
    for a in &agents {
        wait_until(&format!("{} has group web", a.name), || {
            groups(a) == ["web"]
        });
    }
    // Kill the leader right after an acknowledged write: the survivors have it, elect a new
    // leader, and writes go on.
    agents[0].ok(&["group", "create", "db"]);
    agents[0].kill();
    for a in &agents[1..] {
        wait_until(&format!("{} has group db", a.name), || {
            groups(a).contains(&"db".to_string())
        });
    }
    wait_until("a new leader", || leader(&agents).is_some());
    agents[2].ok(&["group", "create", "cache"]);
    wait_until("n2 has cache", || {
        groups(&agents[1]).contains(&"cache".to_string())
    });
    // A consistent read through a follower is answered by the leader.
    let follower = if leader(&agents) == Some(1) { 2 } else { 1 };
    let read = agents[follower].ok(&["status", "--consistent", "--output", "json"]);
    assert!(read.contains("\"cache\""), "{read}");
    // The minority (one node of three) cannot write or read consistently, and says why.
    let survivor = follower;
    let other = 3 - survivor;
    agents[other].kill();
    let err = agents[survivor].err(&["group", "create", "lonely"]);
    assert!(err.contains("majority"), "{err}");
    let err = agents[survivor].err(&["status", "--consistent"]);
    assert!(
        err.contains("consistent read") || err.contains("no leader"),
        "{err}"
    );
    // All three back: nothing acknowledged was lost.
    for a in &mut agents {
        if !a.running() {
            a.spawn(false);
        }
    }
    wait_until("a leader again", || leader(&agents).is_some());
    let has_all = |a: &Agent| {
        let g = groups(a);
        ["web", "db", "cache"]
            .iter()
            .all(|x| g.contains(&x.to_string()))
    };
    for a in &agents {
        wait_until(&format!("{} has web, db, cache", a.name), || has_all(a));
    }
    // All three stopped and started again: the state is intact.
    for a in &mut agents {
        a.kill();
    }
    for a in &mut agents {
        a.spawn(false);
    }
    for a in &agents {
        wait_until(
            &format!("{} has everything after a full restart", a.name),
            || has_all(a),
        );
    }
}

#[test]
fn a_node_away_for_many_writes_catches_up_from_a_snapshot() {
    let mut agents = cluster(&["n1", "n2", "n3"]);
    wait_until("three voters", || nodes(&agents[0]).len() == 3);
    agents[2].kill();
    // More than the snapshot interval (2 000 entries): the leader purges what n3 missed.
    let leader = agents[0].listen.clone();
    for i in 0..2_100 {
        let body = serde_json::json!({ "name": format!("g{i}") });
        let (status, v) = support::http(&leader, "POST", "/v1/groups", Some(body));
        assert_eq!(status, 200, "{v}");
    }
    assert!(
        agents[0].status()["snapshot_index"].as_u64().unwrap() > 0,
        "the leader took a snapshot"
    );
    agents[2].spawn(false);
    wait_until("n3 caught up", || groups(&agents[2]).len() == 2_100);
    let n3 = agents[2].status();
    assert!(
        n3["snapshot_index"].as_u64().unwrap() > 0,
        "n3 installed a snapshot: {}",
        n3["snapshot_index"]
    );
}

#[test]
fn bad_joins_are_refused_and_the_cluster_is_unharmed() {
    let agents = cluster(&["n1", "n2"]);
    agents[0].ok(&["group", "create", "keep"]);
    // Joining through an address where nothing listens.
    let lost = Agent::new("n3");
    let mut cmd = lost.agent_command(false);
    let token = support::join_token(&agents[0].listen);
    cmd.args(["--join", &format!("127.0.0.1:{}", support::free_port())]);
    cmd.args(["--token", &token]);
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot get a certificate from 127.0.0.1:"),
        "{err}"
    );
    // A name already taken.
    let twin = Agent::new("n2");
    let mut cmd = twin.agent_command(false);
    cmd.args(support::join_args(&agents[0].listen));
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("node name \"n2\" is already taken"), "{err}");
    // A second --bootstrap over existing data.
    let mut again = agents[1].agent_command(true);
    let out = again.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing --bootstrap over existing data")
            || err.contains("in use by another vigil agent"),
        "{err}"
    );
    // Unharmed.
    assert_eq!(nodes(&agents[0]).len(), 2);
    assert_eq!(groups(&agents[1]), ["keep"]);
    agents[1].ok(&["group", "create", "still"]);
}

#[test]
fn removing_and_adding_nodes_changes_the_voters() {
    let names = ["n1", "n2", "n3", "n4", "n5", "n6"];
    let mut agents = cluster(&names);
    wait_until("five voters and a learner", || {
        let roles: Vec<String> = nodes(&agents[0]).into_iter().map(|(_, r)| r).collect();
        roles
            .iter()
            .filter(|r| *r == "leader" || *r == "voter")
            .count()
            == 5
            && roles.iter().filter(|r| *r == "learner").count() == 1
    });
    assert_eq!(
        nodes(&agents[0])[5],
        ("n6".to_string(), "learner".to_string())
    );
    // Remove a voter: the learner takes its place.
    agents[0].ok(&["node", "remove", "n2"]);
    agents[1].kill();
    wait_until("n6 became a voter", || {
        nodes(&agents[0])
            .iter()
            .any(|(n, r)| n == "n6" && r == "voter")
    });
    assert!(nodes(&agents[0]).iter().all(|(n, _)| n != "n2"));
    // A node that owns a group cannot be removed.
    agents[2].ok(&["group", "create", "mine"]);
    let err = agents[0].err(&["node", "remove", "n3"]);
    assert!(err.contains("owns group(s) mine"), "{err}");
}

#[test]
fn two_nodes_and_a_witness_survive_the_loss_of_a_node() {
    let mut n1 = Agent::new("n1");
    n1.spawn(true);
    let mut n2 = Agent::join("n2", &n1);
    let mut w = Agent::new("w");
    let mut cmd = w.agent_command(false);
    cmd.args(support::join_args(&n1.listen)).arg("--witness");
    w.spawn_with(cmd);
    wait_until("w is a witness", || {
        nodes(&n1).iter().any(|(n, r)| n == "w" && r == "witness")
    });
    // A group created through the witness is owned by a node that can host it.
    w.ok(&["group", "create", "g"]);
    let owner = n1.status()["groups"][0]["owner"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(owner == "n1" || owner == "n2", "owner {owner}");
    // Lose n2 (or n1, whichever does not lead): n1 or n2 and the witness still make a majority.
    let lead = n1.status()["leader"].as_str().unwrap().to_string();
    let (survivor, lost) = if lead == "n2" {
        (&mut n2, &mut n1)
    } else {
        (&mut n1, &mut n2)
    };
    lost.kill();
    survivor.ok(&["group", "create", "after"]);
    assert!(groups(survivor).contains(&"after".to_string()));
    w.kill();
}

#[test]
fn losing_the_leader_does_not_fence_the_others() {
    let mut agents = cluster(&["n1", "n2", "n3"]);
    wait_until("n1 leads three voters", || {
        leader(&agents) == Some(0) && nodes(&agents[0]).len() == 3
    });
    agents[2].ok(&["group", "create", "g"]);
    let svc = [
        "resource", "create", "svc", "--group", "g", "--type", "process",
    ];
    agents[2].ok(&[&svc[..], &["--param", "command=sleep 1000", "--online"]].concat());
    agents[2].wait_state("svc", "Online");
    let pid = agents[2].pid_of("svc").unwrap();
    for round in 0..3 {
        let lead = leader(&agents).unwrap();
        if lead == 2 {
            break;
        }
        agents[lead].kill();
        wait_until("a new leader", || {
            leader(&agents).is_some_and(|l| l != lead)
        });
        // Let a few lease periods pass under the new leader.
        std::thread::sleep(std::time::Duration::from_secs(3));
        agents[lead].spawn(false);
        let fenced = agents[2].log().into_iter().any(|r| {
            r["component"] == "NM" && r["reason"].as_str().unwrap().starts_with("lease expired")
        });
        assert!(
            !fenced,
            "round {round}: n3 lost its lease while the cluster changed leaders"
        );
        assert_eq!(
            agents[2].pid_of("svc"),
            Some(pid),
            "round {round}: svc kept running"
        );
    }
}
