//! Nobody gets into the cluster who does not belong: a client with no credentials (from a
//! network namespace of its own), a node of another cluster, a removed node that kept its
//! certificate, a member posing as another node, tokens whose role is too low, and join
//! tokens that are used up, expired, unknown, malformed or another cluster's. Each is
//! refused, and the cluster is left as it was.

mod support;

use std::sync::Arc;

use serde_json::{Value, json};
use support::{Agent, Net, https, pinned, wait_until};
use vigil_tls::rustls;

/// What the cluster holds that an attacker would change: nodes, groups, tokens, the term.
fn stored(a: &Agent) -> Value {
    let s = a.status();
    let tokens = a.ok(&["token", "list"]);
    json!({ "nodes": s["nodes"].as_array().unwrap().iter().map(|n| n["name"].clone()).collect::<Vec<_>>(),
            "groups": s["groups"], "term": s["term"], "tokens": tokens })
}

/// Every route of the agent's port, with a body that parses where one is needed.
fn routes() -> Vec<(&'static str, &'static str, Value)> {
    let forged_append = json!({
        "vote": { "leader_id": { "term": u64::MAX, "node_id": 1 }, "committed": true },
        "prev_log_id": null, "entries": [], "leader_commit": null
    });
    let forged_vote = json!({
        "vote": { "leader_id": { "term": u64::MAX, "node_id": 1 }, "committed": false },
        "last_log_id": null
    });
    vec![
        ("GET", "/v1/status", json!(null)),
        ("GET", "/v1/types", json!(null)),
        ("GET", "/v1/types/process", json!(null)),
        ("GET", "/v1/log", json!(null)),
        ("GET", "/v1/cluster/identity", json!(null)),
        ("GET", "/v1/tokens", json!(null)),
        ("GET", "/v1/certs", json!(null)),
        ("POST", "/v1/types", json!({ "library": "/tmp/x.so" })),
        ("DELETE", "/v1/types/process", json!(null)),
        ("DELETE", "/v1/nodes/n1", json!(null)),
        ("POST", "/v1/nodes/n1/drain", json!({})),
        ("POST", "/v1/nodes/n1/resume", json!({})),
        (
            "POST",
            "/v1/nodes/n1/fence-device",
            json!({ "agent": "/bin/true" }),
        ),
        ("DELETE", "/v1/nodes/n1/fence-device", json!(null)),
        ("POST", "/v1/nodes/n1/fence", json!({})),
        ("POST", "/v1/ca/rotate", json!({})),
        ("POST", "/v1/groups", json!({ "name": "evil" })),
        ("DELETE", "/v1/groups/g", json!(null)),
        ("PATCH", "/v1/groups/g", json!({ "props": {} })),
        ("POST", "/v1/groups/g/move", json!({})),
        ("POST", "/v1/groups/g/online", json!({})),
        ("POST", "/v1/groups/g/offline", json!({})),
        (
            "POST",
            "/v1/resources",
            json!({ "name": "r", "group": "g", "type": "process", "params": { "command": "[\"id\"]" } }),
        ),
        ("DELETE", "/v1/resources/r", json!(null)),
        ("PATCH", "/v1/resources/r", json!({ "params": {} })),
        ("POST", "/v1/resources/r/control", json!({ "request": "x" })),
        ("POST", "/v1/resources/r/online", json!({})),
        ("POST", "/v1/resources/r/offline", json!({})),
        ("POST", "/v1/resources/r/fail", json!({})),
        (
            "POST",
            "/v1/tokens",
            json!({ "kind": "api", "role": "admin" }),
        ),
        ("DELETE", "/v1/tokens/0000000000000000", json!(null)),
        ("POST", "/raft/append", forged_append),
        ("POST", "/raft/vote", forged_vote),
        ("POST", "/raft/snapshot", json!({})),
        ("POST", "/raft/write", json!({})),
        (
            "POST",
            "/v1/nm/heartbeat",
            json!({ "name": "n1", "term": 1, "former_age_ms": null }),
        ),
        ("POST", "/v1/cluster/removed", json!({ "by": "n1" })),
        (
            "POST",
            "/v1/cluster/join",
            json!({ "name": "evil", "address": "10.0.0.9:7440" }),
        ),
        (
            "POST",
            "/v1/cluster/certify",
            json!({ "token": "vj1.nope", "name": "evil", "csr": "x" }),
        ),
        ("POST", "/v1/cluster/renew", json!({ "csr": "x" })),
        (
            "POST",
            "/v1/cluster/sign",
            json!({ "csr": "x", "node": "evil" }),
        ),
        ("POST", "/v1/cluster/ca-key", json!({})),
        ("POST", "/v1/cluster/ca-key/held", json!({})),
    ]
}

/// The status a caller with no credentials gets on a route.
fn refused_anonymously(path: &str) -> u16 {
    if path.starts_with("/raft/")
        || path == "/v1/nm/heartbeat"
        || path == "/v1/cluster/removed"
        || path == "/v1/cluster/join"
        || path == "/v1/cluster/certify"
        || path == "/v1/cluster/renew"
        || path == "/v1/cluster/sign"
        || path.starts_with("/v1/cluster/ca-key")
    {
        403
    } else {
        401
    }
}

/// Run in the client's own namespace: each route once, over TLS without checking the server
/// (an attacker does not care who answers); prints the statuses as JSON.
const PROBE: &str = r#"
import json, ssl, sys, http.client
addr, routes = sys.argv[1], json.loads(sys.argv[2])
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
out = []
for method, path, body in routes:
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=10)
    data = None if body is None else json.dumps(body)
    c.request(method, path, body=data, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    out.append([method, path, r.status, r.read().decode()])
    c.close()
print(json.dumps(out))
"#;

#[test]
fn a_client_without_credentials_is_refused_on_every_route() {
    let net = Net::new();
    let mut n1 = Agent::in_net(&net, 1, "n1");
    n1.spawn(true);
    n1.ok(&["group", "create", "g"]);
    n1.ok(&["token", "create", "--join"]);
    net.host(2);
    let before = stored(&n1);
    let routes = routes();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &net.ns(2), "python3", "-c", PROBE])
        .arg(&n1.listen)
        .arg(serde_json::to_string(&routes).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<(String, String, u16, String)> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answers.len(), routes.len());
    for (method, path, status, body) in &answers {
        assert_eq!(
            *status,
            refused_anonymously(path),
            "{method} {path} answered {status}: {body}"
        );
        assert!(body.contains("\"error\""), "{method} {path}: {body}");
    }
    assert_eq!(stored(&n1), before, "nothing stored changed");
    n1.ok(&["status"]);
}

/// A TLS client that presents `creds` and trusts any server (as an attacker would).
fn presenting(creds: &vigil_tls::Creds) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    #[derive(Debug)]
    struct Any;
    impl rustls::client::danger::ServerCertVerifier for Any {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    vigil_tls::install_provider();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(creds.cert_pem.as_bytes())
            .map(Result::unwrap)
            .collect();
    let key = PrivateKeyDer::from_pem_slice(creds.key_pem.as_bytes()).unwrap();
    Arc::new(
        rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Any))
            .with_client_auth_cert(chain, key)
            .unwrap(),
    )
}

fn creds_of(a: &Agent) -> vigil_tls::Creds {
    vigil_tls::Creds::load(&a.data_dir()).unwrap().unwrap()
}

fn vote(candidate: &str) -> Value {
    json!({
        "vote": { "leader_id": { "term": u64::MAX, "node_id": vigil_db::node_id(candidate) }, "committed": false },
        "last_log_id": null
    })
}

fn append(leader: &str) -> Value {
    json!({
        "vote": { "leader_id": { "term": u64::MAX, "node_id": vigil_db::node_id(leader) }, "committed": true },
        "prev_log_id": null, "entries": [], "leader_commit": null
    })
}

#[test]
fn other_clusters_removed_nodes_and_impostors_are_refused() {
    let n1 = Agent::start();
    let n2 = Agent::join("n2", &n1);
    let mut n3 = Agent::join("n3", &n1);
    wait_until("three nodes", || {
        n1.status()["nodes"].as_array().unwrap().len() == 3
    });
    n1.ok(&["group", "create", "g"]);

    // A node of another cluster: its certificate is from another CA. The handshake fails.
    let other = Agent::start();
    let foreign = presenting(&creds_of(&other));
    let before = stored(&n1);
    for (path, body) in [("/raft/vote", vote("n1")), ("/raft/append", append("n1"))] {
        let r = https(&n1.listen, foreign.clone(), "POST", path, Some(body), &[]);
        assert!(
            r.is_err(),
            "{path} with another cluster's certificate: {r:?}"
        );
    }
    let r = https(&n1.listen, foreign, "GET", "/v1/status", None, &[]);
    assert!(
        r.is_err(),
        "status with another cluster's certificate: {r:?}"
    );

    // A member posing as another node: its certificate says who it is.
    let n2_tls = presenting(&creds_of(&n2));
    let hb = json!({ "name": "n3", "term": 1, "former_age_ms": null });
    let (code, v) = https(
        &n1.listen,
        n2_tls.clone(),
        "POST",
        "/v1/nm/heartbeat",
        Some(hb),
        &[],
    )
    .unwrap();
    assert_eq!(code, 409, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("speaks only for itself"),
        "{v}"
    );
    for (path, body) in [("/raft/vote", vote("n1")), ("/raft/append", append("n1"))] {
        let (code, v) = https(&n1.listen, n2_tls.clone(), "POST", path, Some(body), &[]).unwrap();
        assert_eq!(code, 409, "{path}: {v}");
        assert_eq!(v["kind"], "impostor", "{path}: {v}");
    }
    assert_eq!(stored(&n1), before, "nothing changed");

    // A removal notice from a member that does not lead.
    let notice = json!({ "by": "n2" });
    let (code, v) = https(
        &n3.listen,
        n2_tls.clone(),
        "POST",
        "/v1/cluster/removed",
        Some(notice),
        &[],
    )
    .unwrap();
    assert_eq!(code, 409, "{v}");
    assert!(n3.running());
    // A member cannot stock up certificates: renewal only near the end of one's life.
    let csr = vigil_tls::request_for(&creds_of(&n2).key_pem, "n2").unwrap();
    let (code, v) = https(
        &n1.listen,
        n2_tls.clone(),
        "POST",
        "/v1/cluster/renew",
        Some(json!({ "csr": csr })),
        &[],
    )
    .unwrap();
    assert_eq!(code, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("not due"), "{v}");
    // A certificate got with a join token, for a node that never joined: good for its join
    // only.
    let lurker = support::certified(&n1.listen, "lurker");
    let lurker = Arc::new(lurker.client_config());
    for (method, path, body) in [
        ("POST", "/raft/write", Some(json!({}))),
        ("POST", "/raft/append", Some(append("lurker"))),
        ("GET", "/v1/status", None),
    ] {
        let (code, v) = https(&n1.listen, lurker.clone(), method, path, body, &[]).unwrap();
        assert!(code == 409 || code == 401, "{path}: {code} {v}");
        assert!(
            v["error"].as_str().unwrap().contains("has not joined"),
            "{path}: {v}"
        );
    }
    assert_eq!(
        stored(&n1)["nodes"].as_array().unwrap().len(),
        3,
        "the lurker is no node"
    );

    // A removed node keeps its certificate, which has not expired: refused from then on.
    let n3_creds = creds_of(&n3);
    n1.ok(&["node", "remove", "n3"]);
    n3.kill();
    let removed = presenting(&n3_creds);
    let before = stored(&n1);
    for (path, body) in [
        ("/raft/vote", vote("n3")),
        ("/raft/append", append("n3")),
        (
            "/v1/nm/heartbeat",
            json!({ "name": "n3", "term": 1, "former_age_ms": null }),
        ),
    ] {
        let (code, v) = https(&n1.listen, removed.clone(), "POST", path, Some(body), &[]).unwrap();
        assert_eq!(code, 409, "{path}: {v}");
        assert!(
            v["error"].as_str().unwrap().contains("revoked"),
            "{path}: {v}"
        );
    }
    let (code, v) = https(&n1.listen, removed, "GET", "/v1/status", None, &[]).unwrap();
    assert_eq!(code, 401, "{v}");
    assert_eq!(stored(&n1), before, "nothing changed");
    n1.ok(&["group", "create", "after"]);
    drop((n1, n2, n3, other));
}

/// (method, path, body, the role it needs).
fn roles_table() -> Vec<(&'static str, &'static str, Value, &'static str)> {
    vec![
        ("GET", "/v1/status", json!(null), "viewer"),
        ("GET", "/v1/log", json!(null), "viewer"),
        ("GET", "/v1/types", json!(null), "viewer"),
        ("GET", "/v1/certs", json!(null), "viewer"),
        ("GET", "/v1/cluster/identity", json!(null), "viewer"),
        ("POST", "/v1/groups/g/online", json!({}), "operator"),
        ("POST", "/v1/groups/g/offline", json!({}), "operator"),
        (
            "POST",
            "/v1/groups/g/move",
            json!({ "to": "n1" }),
            "operator",
        ),
        ("POST", "/v1/nodes/n1/resume", json!({}), "operator"),
        ("POST", "/v1/resources/nope/fail", json!({}), "operator"),
        ("POST", "/v1/groups", json!({ "name": "new" }), "admin"),
        ("PATCH", "/v1/groups/g", json!({ "props": {} }), "admin"),
        (
            "POST",
            "/v1/resources",
            json!({ "name": "r", "group": "g", "type": "process", "params": { "command": "[\"sleep\", \"60\"]" } }),
            "admin",
        ),
        (
            "POST",
            "/v1/resources/nope/control",
            json!({ "request": "x" }),
            "admin",
        ),
        (
            "POST",
            "/v1/types",
            json!({ "library": "/nonexistent.so" }),
            "admin",
        ),
        ("GET", "/v1/tokens", json!(null), "admin"),
        (
            "POST",
            "/v1/tokens",
            json!({ "kind": "api", "role": "viewer" }),
            "admin",
        ),
        ("DELETE", "/v1/groups/nope", json!(null), "admin"),
        (
            "POST",
            "/v1/nodes/nope/fence-device",
            json!({ "agent": "/bin/true" }),
            "admin",
        ),
        ("POST", "/v1/nodes/nope/fence", json!({}), "admin"),
        ("DELETE", "/v1/nodes/nope", json!(null), "admin"),
    ]
}

fn rank(role: &str) -> u8 {
    match role {
        "viewer" => 1,
        "operator" => 2,
        "admin" => 3,
        _ => 0,
    }
}

#[test]
fn each_route_takes_the_roles_it_should() {
    let a = Agent::start();
    a.ok(&["group", "create", "g"]);
    let token = |role: &str| {
        a.ok(&["token", "create", "--role", role])
            .trim()
            .to_string()
    };
    let tokens = [
        ("none", None),
        ("viewer", Some(token("viewer"))),
        ("operator", Some(token("operator"))),
        ("admin", Some(token("admin"))),
    ];
    let ca = std::fs::read_to_string(a.ca_file()).unwrap();
    let client = pinned(vigil_tls::Pin::Ca(ca));
    for (method, path, body, need) in roles_table() {
        for (who, t) in &tokens {
            let header = t.as_ref().map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> = header
                .iter()
                .map(|h| ("Authorization", h.as_str()))
                .collect();
            let body = (!body.is_null()).then(|| body.clone());
            let (code, v) = https(&a.listen, client.clone(), method, path, body, &headers).unwrap();
            match (t, rank(who) >= rank(need)) {
                (None, _) => {
                    assert_eq!(code, 401, "{method} {path} without a token: {v}");
                    assert!(v["error"].as_str().unwrap().contains(need), "{v}");
                }
                (Some(_), false) => {
                    assert_eq!(code, 403, "{method} {path} as {who}: {v}");
                    assert!(
                        v["error"]
                            .as_str()
                            .unwrap()
                            .contains(&format!("needs role {need}")),
                        "{v}"
                    );
                }
                (Some(_), true) => assert!(
                    code != 401 && code != 403,
                    "{method} {path} as {who} refused: {code} {v}"
                ),
            }
        }
    }
    // Bad tokens: 401, saying what is wrong.
    let secret_wrong = tokens[3].1.clone().unwrap();
    let mut wrong = secret_wrong.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == '0' { '1' } else { '0' });
    for (bad, says) in [
        ("va1.nope", "malformed"),
        (wrong.as_str(), "wrong secret"),
        (
            "va1.0123456789abcdef.0123456789abcdef0123456789abcdef",
            "unknown token",
        ),
    ] {
        let h = format!("Bearer {bad}");
        let (code, v) = https(
            &a.listen,
            client.clone(),
            "GET",
            "/v1/status",
            None,
            &[("Authorization", &h)],
        )
        .unwrap();
        assert_eq!(code, 401, "{v}");
        assert!(v["error"].as_str().unwrap().contains(says), "{bad}: {v}");
    }
    // The CLI over HTTPS: a viewer reads status, and is told which role creating needs.
    let ca = a.ca_file();
    let viewer = tokens[1].1.clone().unwrap();
    let cli = |args: &[&str]| {
        std::process::Command::new(&*support::VIGIL)
            .args([
                "--endpoint",
                &a.endpoint,
                "--ca",
                ca.to_str().unwrap(),
                "--token",
                &viewer,
            ])
            .args(args)
            .env_remove("VIGIL_SOCKET")
            .output()
            .unwrap()
    };
    assert!(cli(&["status"]).status.success());
    let out = cli(&["group", "create", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs role admin"));
    // A revoked token is refused at once.
    let id = viewer.split('.').nth(1).unwrap().to_string();
    a.ok(&["token", "revoke", &id]);
    let out = cli(&["status"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown token"));
}

/// Starts `a` joining with `token` and expects it to be refused; its stderr.
fn refused_join(a: &Agent, seed: &Agent, token: &str) -> String {
    let mut cmd = a.agent_command(false);
    cmd.args(["--join", &seed.listen, "--token", token]);
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "the join with {token} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn join_tokens_that_are_used_up_expired_unknown_malformed_or_another_clusters_are_refused() {
    let n1 = Agent::start();
    let once = n1
        .ok(&["token", "create", "--join", "--uses", "1"])
        .trim()
        .to_string();
    let mut n2 = Agent::new("n2");
    let mut cmd = n2.agent_command(false);
    cmd.args(["--join", &n1.listen, "--token", &once]);
    n2.spawn_with(cmd);
    let before = stored(&n1);

    let err = refused_join(&Agent::new("n3"), &n1, &once);
    assert!(err.contains("is used up"), "{err}");

    let short = n1
        .ok(&["token", "create", "--join", "--ttl", "1s"])
        .trim()
        .to_string();
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    let err = refused_join(&Agent::new("n3"), &n1, &short);
    assert!(err.contains("expired"), "{err}");

    let revoked = n1.ok(&["token", "create", "--join"]).trim().to_string();
    n1.ok(&["token", "revoke", revoked.split('.').nth(1).unwrap()]);
    let err = refused_join(&Agent::new("n3"), &n1, &revoked);
    assert!(err.contains("unknown token"), "{err}");

    let err = refused_join(&Agent::new("n3"), &n1, "vj1.garbage");
    assert!(err.contains("malformed token"), "{err}");

    // Another cluster's token names another CA: the new node finds the server is not of that
    // cluster, and sends nothing.
    let other = Agent::start();
    let theirs = other.ok(&["token", "create", "--join"]).trim().to_string();
    let err = refused_join(&Agent::new("n3"), &n1, &theirs);
    assert!(err.contains("not from the cluster CA"), "{err}");

    // The refused tokens changed nothing (the revoke and the new tokens aside).
    let after = stored(&n1);
    assert_eq!(after["nodes"], before["nodes"]);
    assert_eq!(after["groups"], before["groups"]);
    drop((n1, n2, other));
}

#[test]
fn the_data_dir_and_its_secrets_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let a = Agent::start();
    let dir = a.data_dir();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    for f in [
        "raft.redb",
        "node.key",
        "node.pem",
        "ca.pem",
        "ca.key",
        "cluster.log",
        "vigil.sock",
    ] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
}

/// n1 and n2 (joined), both signing certificates that last `lifetime_s`.
fn two_with_certificates_of(lifetime_s: u32) -> (Agent, Agent) {
    let short = ["--cert-lifetime-s".to_string(), lifetime_s.to_string()];
    let mut n1 = Agent::new("n1");
    let mut cmd = n1.agent_command(true);
    cmd.args(&short);
    n1.spawn_with(cmd);
    let mut n2 = Agent::new("n2");
    let mut cmd = n2.agent_command(false);
    cmd.args(support::join_args(&n1.listen)).args(&short);
    n2.spawn_with(cmd);
    (n1, n2)
}

#[test]
fn certificates_are_renewed_before_they_expire_without_a_restart() {
    // 15 s certificates: renewed after about 10 s, the first ones expire at 15 s.
    let (n1, n2) = two_with_certificates_of(15);
    let first = |a: &Agent| creds_of(a).cert_pem;
    let (pem1, pem2) = (first(&n1), first(&n2));
    let expiry = |a: &Agent| a.status()["certificate"]["not_after_s"].as_u64().unwrap();
    let (until1, until2) = (expiry(&n1), expiry(&n2));
    let start = std::time::Instant::now();
    // Past the first certificates' end: every connection needs the new ones.
    while start.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert_ne!(first(&n1), pem1, "n1 renewed");
    assert_ne!(first(&n2), pem2, "n2 renewed");
    assert!(expiry(&n1) > until1 && expiry(&n2) > until2);
    assert!(n1.status()["certificate"]["renewal_error"].is_null());
    // The same processes still talk to each other: a write through n2 reaches the leader.
    n2.ok(&["group", "create", "after"]);
    wait_until("both Up", || {
        n1.status()["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["state"] == "Up")
    });
    assert!(n2.log().iter().any(|r| {
        r["reason"]
            .as_str()
            .unwrap()
            .starts_with("certificate of n2 renewed")
    }));
    let out = n1.ok(&["cert", "status"]);
    assert!(
        out.contains("n1") && out.contains("n2") && out.contains("CA sha256:"),
        "{out}"
    );
}

/// Whether a record of `a`'s cluster log says `text`.
fn logs(a: &Agent, text: &str) -> bool {
    a.log()
        .iter()
        .any(|r| r["reason"].as_str().is_some_and(|t| t.contains(text)))
}

/// The Raft role of `node` as `a` sees it.
fn role(a: &Agent, node: &str) -> String {
    a.status()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node)
        .and_then(|n| n["role"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// Every file under `dir` that contains `needle`.
fn files_containing(dir: &std::path::Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            found.extend(files_containing(&p, needle));
        } else if std::fs::read(&p)
            .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        {
            found.push(p.display().to_string());
        }
    }
    found
}

#[test]
fn the_ca_key_stays_with_voters_that_run_resources_not_witnesses_nor_the_database() {
    // A witness bootstraps: it holds the key until a voter that runs resources has it.
    let mut w = Agent::new("w");
    let mut cmd = w.agent_command(true);
    cmd.arg("--witness");
    w.spawn_with(cmd);
    let key_file = |a: &Agent| a.data_dir().join(vigil_tls::CA_KEY_FILE);
    let key = std::fs::read_to_string(key_file(&w)).unwrap();
    // A line of the key's body: what any copy of the database holding it would show.
    let line = key.lines().nth(1).unwrap().to_string();
    let n2 = Agent::join("n2", &w);
    wait_until("n2 holds the key and the witness gave it up", || {
        key_file(&n2).exists() && !key_file(&w).exists()
    });
    assert_eq!(std::fs::read_to_string(key_file(&n2)).unwrap(), key);
    assert!(logs(&w, "w no longer holds the CA key"));
    assert_eq!(role(&w, "w"), "leader", "the witness still leads");

    // The leader holds no key: n2 signs the next join for it.
    let n3 = Agent::join("n3", &w);
    wait_until("n3 holds the key", || key_file(&n3).exists());
    assert!(logs(&n2, "certificate for n3 signed for the leader w"));
    let mut w2 = Agent::new("w2");
    let mut cmd = w2.agent_command(false);
    cmd.args(support::join_args(&w.listen)).arg("--witness");
    w2.spawn_with(cmd);
    wait_until("w2 is a voting witness", || role(&w, "w2") == "witness");

    // A witness asking for the key, and a member that does not lead asking for a
    // signature, are refused.
    let w2_tls = presenting(&creds_of(&w2));
    let (code, v) = https(
        &n2.listen,
        w2_tls.clone(),
        "POST",
        "/v1/cluster/ca-key",
        Some(json!({})),
        &[],
    )
    .unwrap();
    assert_eq!(code, 403, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("w2 may not hold the CA key"),
        "{v}"
    );
    let (_, csr) = vigil_tls::new_key("evil").unwrap();
    let (code, v) = https(
        &n2.listen,
        presenting(&creds_of(&n3)),
        "POST",
        "/v1/cluster/sign",
        Some(json!({ "csr": csr, "node": "evil" })),
        &[],
    )
    .unwrap();
    assert_eq!(code, 403, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("n3 is not the leader"),
        "{v}"
    );

    // No copy of the database, no log and no file of a witness holds the key.
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(!key_file(&w2).exists(), "a witness that joined has no key");
    for a in [&w, &n2, &n3, &w2] {
        let found: Vec<String> = files_containing(&a.data_dir(), &line)
            .into_iter()
            .filter(|f| !f.ends_with(vigil_tls::CA_KEY_FILE))
            .collect();
        assert!(found.is_empty(), "{}: the CA key is in {found:?}", a.name);
    }
}

#[test]
fn a_renewal_that_fails_is_logged_and_shown_in_status_before_the_certificate_expires() {
    // 30 s certificates, renewed from 20 s on: with the leader gone, n2 cannot renew.
    let (mut n1, mut n2) = two_with_certificates_of(30);
    let until = n2.status()["certificate"]["not_after_s"].as_u64().unwrap();
    n1.kill();
    wait_until("n2 says its renewal failed", || {
        n2.status()["certificate"]["renewal_error"].is_string()
    });
    let now = vigil_tls::unix_s(std::time::SystemTime::now());
    assert!(
        now < until,
        "seen before the certificate expired ({now} < {until})"
    );
    let why = n2.status()["certificate"]["renewal_error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        why.contains(&format!("expires at Unix time {until}")),
        "{why}"
    );
    assert!(logs(&n2, "certificate renewal failed"), "{:#?}", n2.log());
    let out = n2.ok(&["status"]);
    assert!(
        out.contains("WARNING: n2's certificate could not be renewed"),
        "{out}"
    );
    n2.kill();
}

#[test]
fn the_ca_rotates_without_a_restart_and_the_old_ca_is_trusted_no_more() {
    let mut n1 = Agent::new("n1");
    n1.spawn(true);
    let n2 = Agent::join("n2", &n1);
    let n3 = Agent::join("n3", &n1);
    wait_until("n2 and n3 hold the key", || {
        [&n2, &n3]
            .iter()
            .all(|a| a.data_dir().join(vigil_tls::CA_KEY_FILE).exists())
    });
    n1.ok(&["group", "create", "g", "--preferred-owners", "n2"]);
    n1.create(
        "p",
        "g",
        "process",
        &["command=[\"sleep\", \"600\"]"],
        &["--online"],
    );
    let pid = n1.wait_online("p");
    n2.seen_pid(pid);
    let old_ca = std::fs::read_to_string(n1.ca_file()).unwrap();
    let old_n3 = creds_of(&n3);
    let old_token = n1.ok(&["token", "create", "--join"]).trim().to_string();
    let old_token = old_token
        .split_whitespace()
        .find(|w| w.starts_with("vj1."))
        .unwrap()
        .to_string();

    // Only an admin rotates.
    let operator = n1
        .ok(&["token", "create", "--role", "operator"])
        .trim()
        .to_string();
    let (code, v) = https(
        &n1.listen,
        pinned(vigil_tls::Pin::Ca(old_ca.clone())),
        "POST",
        "/v1/ca/rotate",
        Some(json!({})),
        &[("Authorization", &format!("Bearer {operator}"))],
    )
    .unwrap();
    assert_eq!(code, 403, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("needs role admin"),
        "{v}"
    );
    let out = n1.ok(&["cert", "rotate-ca"]);
    let hash = out
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .expect("the new CA's hash")
        .trim_end_matches(':')
        .to_string();
    assert_ne!(Some(hash.clone()), vigil_tls::ca_hash(&old_ca).ok());
    let again = n1.cli(&["cert", "rotate-ca"]);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("is under way"),
        "one rotation at a time"
    );
    let nodes = [&n1, &n2, &n3];
    wait_until("the rotation ended", || {
        nodes.iter().any(|a| {
            logs(
                a,
                &format!("CA rotation done: every node has a certificate from the CA {hash}"),
            )
        })
    });
    wait_until(
        "every node trusts the new CA alone and holds its key",
        || {
            nodes.iter().all(|a| {
                let creds = creds_of(a);
                let dir = a.data_dir();
                vigil_tls::ca_hash(&creds.ca_pem).ok().as_ref() == Some(&hash)
                    && creds.ca_pem.matches("BEGIN CERTIFICATE").count() == 1
                    && vigil_tls::issuer_hash(&creds.cert_pem, &[&creds.ca_pem]).as_ref()
                        == Some(&hash)
                    && std::fs::read_to_string(dir.join(vigil_tls::CA_KEY_FILE)).is_ok_and(|k| {
                        vigil_tls::Ca {
                            cert_pem: creds.ca_pem.clone(),
                            key_pem: k,
                        }
                        .check()
                        .is_ok()
                    })
                    && !dir.join("ca-next.key").exists()
            })
        },
    );
    let certs = n1.ok(&["cert", "status"]);
    assert!(!certs.contains("under way"), "{certs}");

    // The same processes, the resource never restarted, and the cluster still writes.
    assert_eq!(n1.pid_of("p"), Some(pid));
    n3.ok(&["group", "create", "after"]);
    assert!(
        n1.status()["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["state"] == "Up")
    );

    // The old CA is trusted no more: not by a client that pins it, not for a node
    // certificate it issued, not in a join token that names it.
    let r = https(
        &n1.listen,
        pinned(vigil_tls::Pin::Ca(old_ca)),
        "GET",
        "/v1/status",
        None,
        &[],
    );
    assert!(
        r.is_err(),
        "a client pinned to the old CA reached n1: {r:?}"
    );
    let hb = json!({ "name": "n3", "term": 1, "former_age_ms": null });
    let r = https(
        &n1.listen,
        presenting(&old_n3),
        "POST",
        "/v1/nm/heartbeat",
        Some(hb),
        &[],
    );
    assert!(
        !matches!(r, Ok((200, _))),
        "n3's old certificate was taken: {r:?}"
    );
    let err = refused_join(&Agent::new("n4"), &n1, &old_token);
    assert!(err.contains("not from the cluster CA"), "{err}");
    // A token made now joins.
    let n5 = Agent::join("n5", &n1);
    wait_until("n5 is Up", || n1.node_state("n5").as_deref() == Some("Up"));
    assert_eq!(
        vigil_tls::issuer_hash(&creds_of(&n5).cert_pem, &[&creds_of(&n1).ca_pem]),
        Some(hash)
    );
}
