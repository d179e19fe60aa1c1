//! The failover manager with real agents on 127.0.0.1: node kill, move, drain/resume with
//! failback, failover threshold.

mod support;

use serde_json::Value;
use support::{Agent, alive, wait_until};

/// n1 bootstraps, n2 and n3 join; waits until all three are Up.
fn three() -> Vec<Agent> {
    let mut n1 = Agent::new("n1");
    n1.spawn(true);
    let n2 = Agent::join("n2", &n1);
    let n3 = Agent::join("n3", &n1);
    let agents = vec![n1, n2, n3];
    wait_until("three nodes Up", || {
        agents.iter().all(|a| {
            a.try_status_value().is_some_and(|v| {
                v["nodes"]
                    .as_array()
                    .is_some_and(|ns| ns.len() == 3 && ns.iter().all(|n| n["state"] == "Up"))
            })
        })
    });
    agents
}

/// Group `web` (preferred owners as given, then any other group flags) with one process
/// resource `app` running `command` (then any other resource flags), Online.
fn web(on: &Agent, preferred: &str, group: &[&str], command: &str, resource: &[&str]) {
    let head = ["group", "create", "web", "--preferred-owners", preferred];
    on.ok(&[&head[..], group].concat());
    let params = [format!("command={command}")];
    let flags = [&["--restart-delay-ms", "100"][..], resource, &["--online"]].concat();
    on.create("app", "web", "process", &params, &flags);
}

/// The usual `web`: a long sleep.
fn sleeper(on: &Agent, preferred: &str) {
    web(on, preferred, &[], "sleep 1000", &[]);
}

fn owner(a: &Agent) -> String {
    a.group("web")["owner"].as_str().unwrap_or("").to_string()
}

fn settled_on(a: &Agent, node: &str) -> bool {
    let v = a.try_status_value().unwrap_or(Value::Null);
    let Some(g) = v["groups"]
        .as_array()
        .and_then(|gs| gs.iter().find(|g| g["name"] == "web"))
    else {
        return false;
    };
    g["owner"] == node && g["state"] == "Online"
}

#[test]
fn killing_the_owner_fails_over_to_the_first_surviving_preferred_owner() {
    let mut agents = three();
    sleeper(&agents[0], "n2,n1,n3");
    wait_until("web Online on n2", || settled_on(&agents[0], "n2"));
    let epoch = agents[0].group("web")["epoch"].as_u64().unwrap();
    let pid = agents[1].pid_of("app").unwrap();

    agents[1].kill();
    wait_until("web Online on n1", || settled_on(&agents[0], "n1"));
    assert!(!alive(pid), "the dead node's process is gone");
    let g = agents[0].group("web");
    assert!(g["epoch"].as_u64().unwrap() > epoch, "{g}");
    let moved = agents[0].log().into_iter().chain(agents[2].log()).any(|r| {
        r["component"] == "FM"
            && r["from"] == "n2"
            && r["to"] == "n1"
            && r["reason"]
                .as_str()
                .unwrap()
                .starts_with("owner n2 is Down")
    });
    assert!(moved, "the failover manager logged the failover");
    let new_pid = agents[0].pid_of("app").unwrap();
    agents[0].seen_pid(new_pid);
    assert!(alive(new_pid));
}

#[test]
fn a_move_stops_the_group_before_the_target_starts_it() {
    let agents = three();
    sleeper(&agents[0], "n1,n2,n3");
    wait_until("web Online on n1", || settled_on(&agents[0], "n1"));
    let old = agents[0].pid_of("app").unwrap();
    let out = agents[1].ok(&["group", "move", "web", "--to", "n3"]);
    assert!(out.contains("moved from n1 to n3"), "{out}");
    assert!(
        settled_on(&agents[0], "n3"),
        "the move answered once settled"
    );
    assert!(!alive(old));
    let new = agents[2].pid_of("app").unwrap();
    agents[2].seen_pid(new);
    // n1 recorded app Offline before n3 started it.
    let log: Vec<Value> = agents[0].log().into_iter().chain(agents[2].log()).collect();
    let time = |pred: &dyn Fn(&Value) -> bool| {
        let r = log.iter().find(|r| pred(r)).expect("logged");
        humantime::parse_rfc3339(r["time"].as_str().unwrap()).unwrap()
    };
    let stopped = time(&|r| r["node"] == "n1" && r["resource"] == "app" && r["to"] == "Offline");
    let started =
        time(&|r| r["node"] == "n3" && r["resource"] == "app" && r["to"] == "OnlinePending");
    assert!(stopped <= started);

    // Bad targets are refused with the reason; nothing changes.
    let err = agents[0].err(&["group", "move", "web", "--to", "n9"]);
    assert!(err.contains("node \"n9\" does not exist"), "{err}");
    let err = agents[0].err(&["group", "move", "web", "--to", "n3"]);
    assert!(err.contains("already owned by \"n3\""), "{err}");
    assert_eq!(owner(&agents[0]), "n3");
}

#[test]
fn drain_moves_everything_off_and_resume_fails_back() {
    let agents = three();
    sleeper(&agents[0], "n1,n2,n3");
    wait_until("web Online on n1", || settled_on(&agents[0], "n1"));
    let out = agents[2].ok(&["node", "drain", "n1"]);
    assert!(out.contains("drained"), "{out}");
    assert_eq!(agents[0].node_state("n1").as_deref(), Some("Paused"));
    wait_until("web Online on n2", || settled_on(&agents[0], "n2"));
    // A paused node takes no group.
    let err = agents[0].err(&["group", "move", "web", "--to", "n1"]);
    assert!(err.contains("Paused"), "{err}");

    let out = agents[2].ok(&["node", "resume", "n1", "--failback"]);
    assert!(out.contains("failed back: web"), "{out}");
    wait_until("web back on n1", || settled_on(&agents[0], "n1"));
    assert_eq!(agents[0].node_state("n1").as_deref(), Some("Up"));
    let pid = agents[0].pid_of("app").unwrap();
    agents[0].seen_pid(pid);
}

#[test]
fn exhausted_failovers_leave_the_group_failed_with_the_reason() {
    let agents = three();
    // Fails at once everywhere; one restart per node, at most one failover.
    web(
        &agents[0],
        "n1,n2,n3",
        &["--failover-threshold", "1"],
        "sh -c 'sleep 0.3; exit 3'",
        &["--restart-threshold", "1"],
    );
    wait_until("web marked Failed", || {
        agents[0].group("web")["failure"].is_string()
    });
    let g = agents[0].group("web");
    let failure = g["failure"].as_str().unwrap();
    assert!(
        failure.contains("failover_threshold=1 reached") && failure.contains("restarts of app"),
        "{failure}"
    );
    assert_eq!(g["owner"], "n2", "one failover (n1 -> n2), then Failed");
    let logged = agents[0]
        .log()
        .into_iter()
        .any(|r| r["component"] == "FM" && r["reason"] == failure);
    assert!(logged, "the reason is in the cluster log");
    // Nothing runs anywhere and nothing is restarted.
    // A restart would come restart_delay_ms=100 after a failure; 1.5 s bounds it amply.
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    for a in &agents {
        assert_eq!(a.state("app"), "Failed");
    }
    // Bad group settings name the bad value and change nothing.
    let err = agents[0].err(&["group", "set", "web", "--auto-failback", "sometimes"]);
    assert!(err.contains("\"sometimes\""), "{err}");
    let err = agents[0].err(&["group", "set", "web", "--preferred-owners", "n1,n7"]);
    assert!(err.contains("node \"n7\" does not exist"), "{err}");
    assert_eq!(
        agents[0].group("web")["props"]["preferred_owners"],
        serde_json::json!(["n1", "n2", "n3"])
    );
}
