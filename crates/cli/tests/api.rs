//! The API and CLI at their edges: names that try to reach another route, error answers that
//! must be JSON, a closed pipe, parallel creates of a unique value, and an operator's move
//! that auto_failback must not undo.

mod support;

use serde_json::json;
use support::{Agent, two_nodes, wait_until};

#[test]
fn an_encoded_name_sent_to_a_follower_reaches_no_other_route() {
    let (n1, n2) = two_nodes("127.0.0.81", "127.0.0.82");
    n1.ok(&["group", "create", "web"]);
    wait_until("n2 has web", || {
        n2.status()["groups"].as_array().unwrap().len() == 1
    });
    let (status, body) = support::http(&n2.listen, "DELETE", "/v1/nodes/..%2Fgroups%2Fweb", None);
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("not valid"),
        "{body}"
    );
    assert_eq!(
        n1.status()["groups"][0]["name"],
        "web",
        "the group was deleted"
    );
    // The CLI encodes what it puts in a path: a bad name is refused as a name.
    let err = n2.err(&["node", "remove", "../groups/web"]);
    assert!(err.contains("is not valid"), "{err}");
    assert_eq!(n1.status()["groups"][0]["name"], "web");
}

#[test]
fn every_error_answer_is_json() {
    let a = Agent::start();
    a.ok(&["group", "create", "g"]);
    let long = format!("/v1/status?x={}", "a".repeat(70_000));
    let cases = [
        (
            "PUT",
            "/v1/status".to_string(),
            None,
            405,
            "PUT is not allowed on /v1/status",
        ),
        ("GET", long, None, 414, "request line longer than"),
        (
            "POST",
            "/v1/groups/g/move".to_string(),
            Some(json!({ "to": 5 })),
            422,
            "invalid type: integer `5`",
        ),
        ("GET", "/v1/nope".to_string(), None, 404, "no such API path"),
    ];
    for (method, path, body, code, text) in cases {
        let (status, answer) = support::http(&a.listen, method, &path, body);
        assert_eq!(
            status,
            code,
            "{method} {}: {answer}",
            &path[..path.len().min(40)]
        );
        assert!(
            answer["error"].as_str().is_some_and(|e| e.contains(text)),
            "{method}: {answer}"
        );
    }
    // The connection refused for its long line did not harm the agent.
    a.ok(&["status"]);
}

#[test]
fn the_cli_ends_quietly_when_its_reader_goes_away() {
    let a = Agent::start();
    let mut child = support::cli_at(&a.listen)
        .args(["type", "list"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.is_empty(), "{err}");
}

#[test]
fn parallel_creates_of_one_unique_value_let_exactly_one_through() {
    let a = Agent::start();
    a.ok(&["group", "create", "g"]);
    let state = a.dir.path().join("dummy.state");
    let param = format!("state={}", state.display());
    let outs: Vec<_> = (0..20)
        .map(|i| {
            let (listen, param) = (a.listen.clone(), param.clone());
            std::thread::spawn(move || {
                support::cli_at(&listen)
                    .args(["resource", "create", &format!("d{i}"), "--group", "g"])
                    .args(["--type", "ocf:heartbeat:Dummy", "--param", &param])
                    .output()
                    .unwrap()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let created = outs.iter().filter(|o| o.status.success()).count();
    assert_eq!(created, 1, "{created} of 20 creates passed");
    let refused = outs.iter().find(|o| !o.status.success()).unwrap();
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("must be unique"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(
        a.status()["groups"][0]["resources"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn an_operators_move_is_not_undone_by_auto_failback() {
    let (n1, n2) = two_nodes("127.0.0.83", "127.0.0.84");
    n1.ok(&[
        "group",
        "create",
        "web",
        "--preferred-owners",
        "n1,n2",
        "--auto-failback",
        "immediate",
    ]);
    n1.process("web", "svc", "sleep 1000", &["--online"]);
    n1.wait_online("svc");
    n1.ok(&["group", "move", "web", "--to", "n2"]);
    // Nothing should happen now, so there is no event to wait for: the failover manager
    // plans after every change and at least once a second; a write, then three seconds,
    // give it every chance to fail the group back.
    n1.ok(&["group", "create", "nudge"]);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let g = n1.group("web");
    assert_eq!(g["owner"], "n2", "{g:#}");
    assert!(
        !n1.log()
            .iter()
            .any(|r| r["reason"].as_str().unwrap().contains("auto_failback")),
        "failed back"
    );
    n2.wait_online("svc");
    drop((n1, n2));
}
