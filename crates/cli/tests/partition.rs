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
    let v = a.try_status_value()?;
    v["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["name"] == node)
        .map(|n| n["state"].as_str().unwrap().to_string())
}

#[test]
fn a_cut_off_node_fences_itself_before_the_majority_declares_it_down() {
    let net = Net::new();
    let mut n1 = Agent::in_net(&net, 1, "n1");
    n1.spawn(true);
    let n2 = Agent::in_net(&net, 2, "n2").start_joining(&n1);
    let n3 = Agent::in_net(&net, 3, "n3").start_joining(&n1);
    wait_until("n3 is Up with a lease", || {
        node_state(&n3, "n3").as_deref() == Some("Up")
            && node_state(&n1, "n3").as_deref() == Some("Up")
    });
    // A group created through n3 is owned by n3.
    n3.ok(&["group", "create", "g"]);
    n3.ok(&[
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
    n3.wait_state("svc", "Online");
    let pid = n3.pid_of("svc").unwrap();

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
    let down = n1
        .log()
        .into_iter()
        .find(|r| {
            r["component"] == "NM" && r["reason"].as_str().unwrap().starts_with("node n3 silent")
        })
        .expect("the leader logged n3 Down");
    assert!(time_of(fenced) <= time_of(stopped));
    assert!(
        time_of(stopped) < time_of(&down),
        "n3 stopped svc at {} but was declared Down at {}",
        stopped["time"],
        down["time"]
    );

    // Contact returns: n3 gets a lease again, is Up, and runs its group again.
    net.heal(3);
    wait_until("n3 is Up again", || {
        node_state(&n1, "n3").as_deref() == Some("Up")
    });
    n3.wait_state("svc", "Online");
    assert_ne!(n3.pid_of("svc"), Some(pid));
    drop((n1, n2, n3));
}
