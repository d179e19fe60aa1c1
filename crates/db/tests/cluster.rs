//! Three replicas in one process, talking real HTTPS (mutual TLS) on 127.0.0.1: forming, replicating,
//! losing the leader, losing the majority, restarting from disk.

use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use vigil_core::command::Command;
use vigil_core::props::GroupProps;
use vigil_db::{Db, Timing, WriteError};

struct Node {
    name: String,
    addr: String,
    dir: tempfile::TempDir,
    db: Option<Db>,
    server: Option<JoinHandle<()>>,
    tls: vigil_tls::Tls,
}

/// One CA for the test cluster; each node's certificate from it.
fn credentials(name: &str) -> vigil_tls::Tls {
    static CA: std::sync::OnceLock<vigil_tls::Ca> = std::sync::OnceLock::new();
    vigil_tls::install_provider();
    let now = std::time::SystemTime::now();
    let ca = CA.get_or_init(|| vigil_tls::Ca::generate(CLUSTER, now).unwrap());
    let (key_pem, csr) = vigil_tls::new_key(name).unwrap();
    let issued = ca
        .sign(&csr, CLUSTER, name, Duration::from_secs(3600), now)
        .unwrap();
    let tls = vigil_tls::Tls::default();
    tls.load(&vigil_tls::Creds {
        ca_pem: ca.cert_pem.clone(),
        cert_pem: issued.cert_pem,
        key_pem,
    })
    .unwrap();
    tls
}

const CLUSTER: &str = "test-cluster";

fn timing() -> Timing {
    Timing {
        heartbeat_ms: 50,
        election_min_ms: 300,
        election_max_ms: 600,
        // The agent's default. Shorter made a healthy cluster's write time out when the
        // machine was busy (seen with two CPU hogs on 2 cores, during a snapshot).
        write_timeout_ms: 5_000,
    }
}

impl Node {
    async fn start(name: &str) -> Node {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut n = Node {
            name: name.to_string(),
            addr,
            dir: tempfile::tempdir().unwrap(),
            db: None,
            server: None,
            tls: credentials(name),
        };
        n.serve(listener).await;
        n
    }

    async fn serve(&mut self, listener: tokio::net::TcpListener) {
        let db = Db::open(
            &self.dir.path().join("raft.redb"),
            &self.name,
            timing(),
            &self.tls,
        )
        .await
        .unwrap();
        db.set_cluster_id(CLUSTER);
        let router = db.router();
        let config = self.tls.server_config();
        self.server = Some(tokio::spawn(vigil_tls::server::serve(
            listener, config, router,
        )));
        self.db = Some(db);
    }

    async fn restart(&mut self) {
        let listener = tokio::net::TcpListener::bind(&self.addr).await.unwrap();
        self.serve(listener).await;
    }

    async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.abort();
        }
        if let Some(db) = self.db.take() {
            db.raft().shutdown().await.unwrap();
        }
    }

    fn db(&self) -> &Db {
        self.db.as_ref().unwrap()
    }

    fn groups(&self) -> Vec<String> {
        self.db().state().groups.keys().cloned().collect()
    }
}

fn group(name: &str) -> Command {
    Command::CreateGroup {
        name: name.into(),
        props: GroupProps::default(),
        owner: None,
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn form() -> Vec<Node> {
    let nodes = vec![
        Node::start("a").await,
        Node::start("b").await,
        Node::start("c").await,
    ];
    nodes[0].db().initialize(&nodes[0].addr).await.unwrap();
    wait_until("a leads", || nodes[0].db().is_leader()).await;
    for i in 1..3 {
        let (name, addr) = (nodes[i].name.clone(), nodes[i].addr.clone());
        nodes[0]
            .db()
            .add_member(&name, &addr, Duration::from_secs(20))
            .await
            .unwrap();
    }
    let voters: Vec<u64> = nodes[0]
        .db()
        .metrics()
        .membership_config
        .membership()
        .voter_ids()
        .collect();
    assert_eq!(voters.len(), 3);
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_agree_survive_the_leader_and_refuse_without_a_majority() {
    let mut nodes = form().await;
    // A write through a follower is forwarded to the leader and reaches every replica.
    let results = nodes[2]
        .db()
        .write(vec![group("g1"), group("g1")])
        .await
        .unwrap();
    assert!(results[0].is_ok());
    assert_eq!(
        results[1].as_ref().unwrap_err().to_string(),
        "group \"g1\" already exists"
    );
    for n in &nodes {
        wait_until(&format!("{} has g1", n.name), || n.groups() == ["g1"]).await;
    }
    // Kill the leader right after an acknowledged write: the survivors have it.
    nodes[0].db().write(vec![group("g2")]).await.unwrap();
    nodes[0].stop().await;
    for n in &nodes[1..] {
        assert!(
            n.groups().contains(&"g2".to_string()) || {
                wait_until("g2 replicated", || n.groups().contains(&"g2".to_string())).await;
                true
            }
        );
    }
    wait_until("a new leader", || {
        nodes[1].db().is_leader() || nodes[2].db().is_leader()
    })
    .await;
    nodes[1].db().write(vec![group("g3")]).await.unwrap();
    wait_until("c has g3", || nodes[2].groups().contains(&"g3".to_string())).await;
    // Only one voter of three left: no write, and the error says why.
    nodes[2].stop().await;
    let err = nodes[1].db().write(vec![group("g4")]).await.unwrap_err();
    assert!(
        matches!(
            err,
            WriteError::NoQuorum { .. } | WriteError::NoLeader { .. }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("majority"), "{err}");
    // Everyone back from disk: the state is intact and writes work again.
    nodes[0].restart().await;
    nodes[2].restart().await;
    wait_until("a leader again", || {
        nodes.iter().any(|n| n.db().is_leader())
    })
    .await;
    nodes[0].db().write(vec![group("g5")]).await.unwrap();
    for n in &nodes {
        // g4 timed out on the lone leader; it may still have committed once the others came
        // back (the error said so). Everything acknowledged is there.
        wait_until(&format!("{} has g1, g2, g3 and g5", n.name), || {
            let g = n.groups();
            ["g1", "g2", "g3", "g5"]
                .iter()
                .all(|x| g.contains(&x.to_string()))
        })
        .await;
    }
    for n in &mut nodes {
        n.stop().await;
    }
}

/// Writes that arrive together share log entries (group commit), yet each writer gets the
/// results of exactly its own commands, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_share_entries_and_each_gets_its_own_results() {
    let mut nodes = form().await;
    let db = nodes[0].db().clone();
    let before = db.applied_index();
    const WRITERS: usize = 32;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                db.write(vec![group(&format!("p{i}")), group("shared")])
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut shared_created = 0;
    for t in tasks {
        let results = t.await.unwrap();
        assert_eq!(results.len(), 2, "{results:?}");
        assert!(results[0].is_ok(), "{results:?}");
        match &results[1] {
            Ok(()) => shared_created += 1,
            Err(e) => assert_eq!(e.to_string(), "group \"shared\" already exists"),
        }
    }
    assert_eq!(shared_created, 1);
    let groups = nodes[0].groups();
    assert_eq!(groups.len(), WRITERS + 1, "{groups:?}");
    let entries = db.applied_index() - before;
    assert!(
        entries < WRITERS as u64,
        "{WRITERS} concurrent writes took {entries} log entries: none were shared"
    );
    for n in &nodes[1..] {
        wait_until(&format!("{} has every group", n.name), || {
            n.groups() == groups
        })
        .await;
    }
    for n in &mut nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_was_away_catches_up_from_a_snapshot() {
    let mut nodes = form().await;
    nodes[2].stop().await;
    // More than the snapshot interval (2 000 entries): the log it missed is purged.
    for i in 0..2_200 {
        nodes[0]
            .db()
            .write(vec![group(&format!("g{i:04}"))])
            .await
            .unwrap();
    }
    let leader = nodes[0].db().metrics();
    let purged = leader.purged.map(|l| l.index).unwrap_or(0);
    assert!(purged > 0, "the leader purged its log after a snapshot");
    nodes[2].restart().await;
    wait_until("c caught up", || nodes[2].groups().len() == 2_200).await;
    assert!(
        nodes[2].db().metrics().snapshot.is_some(),
        "c installed a snapshot"
    );
    for n in &mut nodes {
        n.stop().await;
    }
}

/// A write whose writer gave up (its timeout passed while there was no quorum) was reported
/// as failed: if it had not been proposed yet, it never is. (Writes already proposed may
/// still commit once the majority is back; the error says so.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_timed_out_before_being_proposed_are_never_committed() {
    let mut nodes = form().await;
    nodes[1].stop().await;
    nodes[2].stop().await;
    let db = nodes[0].db().clone();
    let mut writers = Vec::new();
    // w0 and w1 take both proposal slots (and hang without a quorum); w2 and w3 queue.
    for i in 0..4 {
        let appended = db.metrics().last_log_index;
        let writer = db.clone();
        writers.push(tokio::spawn(async move {
            writer.write(vec![group(&format!("w{i}"))]).await
        }));
        if i < 2 {
            // The leader appends a proposal to its own log even without a quorum.
            wait_until(&format!("w{i} is proposed alone"), || {
                db.metrics().last_log_index > appended
            })
            .await;
        }
    }
    for w in writers {
        let err = w.await.unwrap().unwrap_err();
        assert!(matches!(err, WriteError::NoQuorum { .. }), "{err}");
        assert!(err.to_string().contains("may still be committed"), "{err}");
    }
    nodes[1].restart().await;
    nodes[2].restart().await;
    wait_until("a leader again", || {
        nodes.iter().any(|n| n.db().is_leader())
    })
    .await;
    nodes[1].db().write(vec![group("after")]).await.unwrap();
    for n in &nodes {
        wait_until(&format!("{} has the write after", n.name), || {
            n.groups().contains(&"after".to_string())
        })
        .await;
        let groups = n.groups();
        assert!(
            !groups.contains(&"w2".to_string()) && !groups.contains(&"w3".to_string()),
            "{}: {groups:?}",
            n.name
        );
    }
    for n in &mut nodes {
        n.stop().await;
    }
}

/// A write proposed twice (its first proposal was cut from a leader's log but committed by a
/// later one, and the writer tried again) is applied once: the second answers with the
/// first's results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_proposed_twice_is_applied_once() {
    use vigil_core::model::FailoverRecord;
    use vigil_db::types::{Request, RequestId, Write};
    let mut n = Node::start("a").await;
    n.db().initialize(&n.addr).await.unwrap();
    wait_until("a leads", || n.db().is_leader()).await;
    n.db().write(vec![group("g")]).await.unwrap();
    let record = Command::RecordFailover {
        group: "g".into(),
        record: FailoverRecord {
            node: "a".into(),
            at_ms: 1,
            node_down: true,
        },
    };
    let write = Write {
        id: RequestId { writer: 7, seq: 1 },
        cmds: vec![record, group("g")],
    };
    let propose = || Request {
        writes: vec![write.clone()],
        cmds: vec![],
    };
    let first = n.db().raft().client_write(propose()).await.unwrap();
    let again = n.db().raft().client_write(propose()).await.unwrap();
    assert_eq!(first.data.results, again.data.results);
    assert!(first.data.results[1].is_err(), "the group existed already");
    let failovers = n.db().state().groups["g"].failovers.len();
    assert_eq!(failovers, 1, "counted twice: applied twice");
    n.stop().await;
}

/// A reader keeps its snapshot across writes: it sees the state it took, never blocks the
/// write, and may take a second, newer one meanwhile. (With a read lock as the reader's
/// handle, the write below waited for the lock until the timeout.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_keeps_its_snapshot_while_writes_apply() {
    let mut a = Node::start("a").await;
    a.db().initialize(&a.addr).await.unwrap();
    wait_until("a leads", || a.db().is_leader()).await;
    let db = a.db().clone();
    db.write(vec![group("first")]).await.unwrap();
    let before = db.state();
    let written = tokio::time::timeout(Duration::from_secs(10), db.write(vec![group("second")]))
        .await
        .expect("a write waited for a reader's snapshot");
    assert!(written.unwrap()[0].is_ok());
    let after = db.state();
    assert_eq!(before.groups.keys().collect::<Vec<_>>(), ["first"]);
    assert_eq!(after.groups.keys().collect::<Vec<_>>(), ["first", "second"]);
    drop(before);
    db.write(vec![group("third")]).await.unwrap();
    assert_eq!(db.state().groups.len(), 3);
    assert_eq!(
        after.groups.len(),
        2,
        "a held snapshot changed under its reader"
    );
    a.stop().await;
}
