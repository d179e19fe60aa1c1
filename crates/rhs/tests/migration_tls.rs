//! A VM's live migration on real QEMU, seen by an attacker who can reach the target's
//! migration port: only the cluster's certificate of the node the move comes from may feed
//! the waiting target. Firmware-only guests (no disk, no kernel), as in the CLI's VM tests.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use vigil_rhs::protocol::MigrationTls;
use vigil_rhs::types::{self, OpenContext, Progress, Resource};

const CLUSTER: &str = "c0ffee";

fn qemu_installed() {
    assert!(
        Command::new("qemu-system-x86_64")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "qemu-system-x86_64 is missing: run the README's test command"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A node's credentials as the agent keeps them in its data dir (ca.pem, node.pem,
/// node.key), signed by `ca` for node `node`.
fn node_creds(dir: &Path, ca: &vigil_tls::Ca, node: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = dir.join(format!("creds-{node}-{n}"));
    std::fs::create_dir_all(&d).unwrap();
    let (key, csr) = vigil_tls::new_key(node).unwrap();
    let now = SystemTime::now();
    let cert = ca
        .sign(&csr, CLUSTER, node, Duration::from_secs(3600), now)
        .unwrap();
    std::fs::write(d.join("ca.pem"), &ca.cert_pem).unwrap();
    std::fs::write(d.join("node.pem"), cert.cert_pem).unwrap();
    std::fs::write(d.join("node.key"), key).unwrap();
    d
}

/// Opens VM `vm1` on `node` at 127.0.0.1, migrating on `port`, with `creds` as its
/// certificate; its files under `dir/node`.
fn open_vm(dir: &Path, node: &str, port: u16, creds: &Path) -> Box<dyn Resource> {
    let files = dir.join(node);
    std::fs::create_dir_all(&files).unwrap();
    let params: BTreeMap<String, String> = [
        ("memory_mb", "64".to_string()),
        ("accel", "tcg".to_string()),
        ("stop_timeout_ms", "1000".to_string()),
        ("migration_port", port.to_string()),
        ("migration_timeout_ms", "4000".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    types::find("vm", None)
        .unwrap()
        .open(OpenContext {
            resource: "vm1".into(),
            params,
            node: node.into(),
            node_address: "127.0.0.1:7000".into(),
            epoch: 1,
            log_path: files.join("vm1.log"),
            migration_tls: Some(MigrationTls {
                creds_dir: creds.display().to_string(),
                hostname: vigil_tls::cluster_dns(CLUSTER),
            }),
        })
        .unwrap()
}

fn bring_online(vm: &mut Box<dyn Resource>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut p = vm.online().unwrap_or_else(|e| panic!("{e:?}"));
    while p != Progress::Done {
        assert!(Instant::now() < deadline, "the VM never came online");
        std::thread::sleep(Duration::from_millis(100));
        p = vm.online_progress().unwrap_or_else(|e| panic!("{e:?}"));
    }
}

/// Ends the VM's QEMU also when the test fails.
struct Ends(Box<dyn Resource>);

impl Drop for Ends {
    fn drop(&mut self) {
        self.0.terminate();
    }
}

/// A target waiting for vm1 from n1, on a fresh port: its port and the instance.
fn waiting_target(dir: &Path, ca: &vigil_tls::Ca) -> (u16, Ends) {
    let port = free_port();
    let creds = node_creds(dir, ca, "n2");
    let mut target = open_vm(dir, "n2", port, &creds);
    target
        .migrate_prepare("n1", false)
        .expect("the target listens for n1");
    (port, Ends(target))
}

/// A QEMU outside the cluster with a QMP socket: the plain-text attacker.
struct Outsider {
    child: Child,
    qmp: BufReader<UnixStream>,
}

impl Outsider {
    fn start(dir: &Path) -> Outsider {
        let sock = dir.join("outsider.qmp");
        let child = Command::new("qemu-system-x86_64")
            .args(["-nodefaults", "-display", "none", "-machine", "q35"])
            .args(["-accel", "tcg", "-m", "64", "-qmp"])
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let stream = loop {
            if let Ok(s) = UnixStream::connect(&sock) {
                break s;
            }
            assert!(Instant::now() < deadline, "the outsider's QEMU has no QMP");
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut o = Outsider {
            child,
            qmp: BufReader::new(stream),
        };
        o.answer();
        o.execute(r#"{"execute": "qmp_capabilities"}"#);
        o
    }

    /// The next line that is an answer (events skipped).
    fn answer(&mut self) -> serde_json::Value {
        loop {
            let mut line = String::new();
            self.qmp.read_line(&mut line).unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v.get("event").is_none() {
                return v;
            }
        }
    }

    fn execute(&mut self, command: &str) -> serde_json::Value {
        writeln!(self.qmp.get_mut(), "{command}").unwrap();
        self.answer()
    }
}

impl Drop for Outsider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The target refuses what the attacker sends: it never runs a guest from it.
fn refused(target: &mut Ends, who: &str) {
    let err = match target.0.migrate_from("n1", false) {
        Ok(p) => panic!("{who}: the target took the VM ({p:?})"),
        Err(e) => format!("{e:?}"),
    };
    assert!(!err.is_empty(), "{who}");
}

#[test]
fn only_the_source_nodes_cluster_certificate_may_feed_a_waiting_migration_target() {
    qemu_installed();
    let dir = tempfile::tempdir().unwrap();
    let ca = vigil_tls::Ca::generate(CLUSTER, SystemTime::now()).unwrap();

    // 1. A QEMU outside the cluster, speaking plain migration.
    let (port, mut target) = waiting_target(dir.path(), &ca);
    let mut outsider = Outsider::start(dir.path());
    let started = outsider.execute(&format!(
        r#"{{"execute": "migrate", "arguments": {{"uri": "tcp:127.0.0.1:{port}"}}}}"#
    ));
    assert!(started.get("return").is_some(), "{started}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = outsider.execute(r#"{"execute": "query-migrate"}"#);
        let status = m["return"]["status"].as_str().unwrap_or("").to_string();
        assert_ne!(status, "completed", "plain text fed the target: {m}");
        if status == "failed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the outsider's migration hangs: {m}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    refused(&mut target, "plain text");
    drop((outsider, target));

    // 2. A node of another cluster (another CA, the same cluster name), and 3. a node of
    // this cluster that is not the source (n3): TLS, but refused.
    let other_ca = vigil_tls::Ca::generate(CLUSTER, SystemTime::now()).unwrap();
    for (who, ca_used, node) in [("another CA", &other_ca, "n1"), ("n3", &ca, "n3")] {
        let (port, mut target) = waiting_target(dir.path(), &ca);
        let creds = node_creds(dir.path(), ca_used, node);
        let mut source = Ends(open_vm(dir.path(), node, port, &creds));
        bring_online(&mut source.0);
        let err = source
            .0
            .migrate_to("n2", "127.0.0.1:7000", false)
            .expect_err(who);
        assert!(err.contains("live migration to n2"), "{who}: {err}");
        assert!(
            source.0.looks_alive() == types::Health::Alive,
            "{who}: the source keeps running"
        );
        refused(&mut target, who);
    }

    // 4. n1, the source the move names, with this cluster's certificate: it arrives.
    let (port, mut target) = waiting_target(dir.path(), &ca);
    let creds = node_creds(dir.path(), &ca, "n1");
    let mut source = Ends(open_vm(dir.path(), "n1", port, &creds));
    bring_online(&mut source.0);
    let done = source
        .0
        .migrate_to("n2", "127.0.0.1:7000", false)
        .expect("n1 migrates");
    assert!(done.contains("live migration to n2 done"), "{done}");
    assert_eq!(
        target
            .0
            .migrate_from("n1", false)
            .map_err(|e| format!("{e:?}")),
        Ok(Progress::Done)
    );
    assert_eq!(target.0.looks_alive(), types::Health::Alive);
}
