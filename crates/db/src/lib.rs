//! The cluster database, replicated with Raft (openraft): every node holds a full copy of the
//! core's state machine ([`vigil_core::command::apply`] over a
//! [`vigil_core::model::ClusterState`]).
//!
//! - [`store`]: the log, vote and snapshots on redb; the in-memory state machine.
//! - [`network`]: Raft messages over HTTP/JSON and mutual TLS (`/raft/...` on the agent's
//!   listener), taken only from the cluster's nodes.
//! - [`Db`]: what the agent uses: read the local copy, write through the leader (forwarded
//!   from any node), form and grow the cluster.
//!
//! Not here: deciding anything (the core), membership leases and node health (the agent).

mod batch;
pub mod network;
pub mod store;
pub mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLockReadGuard};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Raft, RaftMetrics};
use thiserror::Error;
use tokio::sync::watch;
use vigil_core::command::{ApplyError, Command};
use vigil_core::model::ClusterState;

use crate::batch::{Batcher, Failed};
use crate::network::{Clocks, ClusterId, Network, NodeRoutes};
use crate::store::{Health, LogStore, SmData, StateMachine};
use crate::types::{NodeId, RequestId, TypeConfig, Write};

pub use crate::types::node_id;
pub use openraft::ServerState;

/// At most this many voters; further nodes replicate as non-voting learners.
pub const MAX_VOTERS: usize = 5;

#[derive(Debug, Error)]
pub enum DbError {
    #[error("cluster database {path}: {why}")]
    Open { path: String, why: String },
    #[error(
        "cluster database {path} is damaged ({why}): this node cannot use it. Remove the node from its cluster (`vigil node remove {node}` on another member), then start it again with an empty data dir and --join HOST:PORT"
    )]
    Damaged {
        path: String,
        node: String,
        why: String,
    },
    #[error("cluster database: {0}")]
    Raft(String),
}

/// Why a write did not happen. Every message says what the operator can do.
#[derive(Clone, Debug, Error, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WriteError {
    #[error(
        "no quorum: the write was not committed within {timeout_ms} ms; this node ({node}) cannot reach a majority of the voters ({voters}); if it was already proposed, it may still be committed once a majority is back"
    )]
    NoQuorum {
        node: String,
        voters: String,
        timeout_ms: u64,
    },
    #[error(
        "no leader: this node ({node}) knows of no elected leader (it may be cut off from a majority of the voters {voters}); try again, or write through another node"
    )]
    NoLeader { node: String, voters: String },
    #[error("forwarding the write to the leader at {leader} failed: {why}")]
    Forward { leader: String, why: String },
    #[error("the cluster database is shutting down: {0}")]
    Fatal(String),
}

/// Raft timing. The election timeout must be well above the heartbeat interval.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// A write not committed within this is refused (no quorum).
    pub write_timeout_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            // A new leader within well under a second: node leases (2 s at the defaults)
            // must survive losing the leader.
            heartbeat_ms: 100,
            election_min_ms: 300,
            election_max_ms: 600,
            write_timeout_ms: 5_000,
        }
    }
}

/// What one opening of the database file runs: the Raft task, and the batcher that proposes
/// to it. Replaced whole when the database is reopened after a failed write (see
/// [`Db::recover`]).
struct Core {
    raft: Raft<TypeConfig>,
    /// Proposes writes on this node, several in one entry when they arrive together.
    batcher: Batcher,
}

/// A cheap handle to this node's replica.
#[derive(Clone)]
pub struct Db {
    id: NodeId,
    name: String,
    path: Arc<std::path::PathBuf>,
    core: Arc<std::sync::RwLock<Arc<Core>>>,
    config: Arc<openraft::Config>,
    network: Network,
    /// The state machine's data and its applied-index watch, kept across reopenings (it was
    /// applied from entries this node's log holds durably). Not the state machine itself: that
    /// holds the database file open.
    data: Arc<std::sync::RwLock<SmData>>,
    applied: Arc<watch::Sender<u64>>,
    /// For forwarded writes (no connection reuse, see `open`).
    http: reqwest::Client,
    timing: Timing,
    /// Raft allows one membership change at a time: joins that arrive together take turns.
    membership: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Lease clocks from Raft's own messages (see [`network`]).
    clocks: Clocks,
    cluster: ClusterId,
    health: Health,
    /// The last index in this node's log (see [`LogStore::last_index`]).
    last_index: Arc<AtomicU64>,
    /// Ids for this handle's writes: a random writer and a sequence.
    writer: u64,
    seq: Arc<AtomicU64>,
}

impl Db {
    /// Opens the replica in `path` (created if absent), checks every page and record of it,
    /// and starts its Raft task. A damaged file is refused with what to do.
    /// `tls` is the node's credentials (they may arrive later, at a join): every connection
    /// to a peer presents them and checks the peer's.
    pub async fn open(
        path: &Path,
        name: &str,
        timing: Timing,
        tls: &vigil_tls::Tls,
    ) -> Result<Self, DbError> {
        let open_err = |why: String| DbError::Open {
            path: path.display().to_string(),
            why,
        };
        let store = store::open_checked(path).map_err(|e| match e {
            store::OpenError::Damaged(why) => DbError::Damaged {
                path: path.display().to_string(),
                node: name.to_string(),
                why,
            },
            store::OpenError::Other(why) => open_err(why),
        })?;
        let health = Health::new(path);
        let sm = StateMachine::open(store.clone(), health.clone())
            .map_err(|e| open_err(e.to_string()))?;
        let (data, applied) = sm.shared();
        let last_index = Arc::new(AtomicU64::new(0));
        let log = LogStore::new(store, health.clone(), last_index.clone())
            .map_err(|e| open_err(e.to_string()))?;
        let config = openraft::Config {
            cluster_name: "vigil".to_string(),
            heartbeat_interval: timing.heartbeat_ms,
            election_timeout_min: timing.election_min_ms,
            election_timeout_max: timing.election_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(2_000),
            max_in_snapshot_log_to_keep: 500,
            // Chunks travel as JSON (a byte is up to four characters): 4 MiB stays well
            // within the request limit of the Raft routes, and one chunk has seconds to
            // arrive and be stored (the 200 ms default is too short for a large database).
            snapshot_max_chunk_size: 4 * 1024 * 1024,
            install_snapshot_timeout: 5_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| open_err(format!("Raft configuration: {e}")))?;
        let raft_http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls.client_config())
            .build()
            .map_err(|e| open_err(format!("HTTP client: {e}")))?;
        // Forwarded writes use a fresh connection each: a pooled one to a leader that just
        // died fails ambiguously (was the write sent?), while a refused connection surely
        // sent nothing and may be retried with the next leader.
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls.client_config())
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| open_err(format!("HTTP client: {e}")))?;
        let id = node_id(name);
        let (clocks, cluster) = (Clocks::default(), ClusterId::default());
        let network = Network::new(raft_http, clocks.clone());
        let config = Arc::new(config);
        let raft = Raft::new(id, config.clone(), network.clone(), log, sm)
            .await
            .map_err(|e| open_err(e.to_string()))?;
        let core = Core {
            batcher: Batcher::start(raft.clone()),
            raft,
        };
        let db = Self {
            id,
            name: name.to_string(),
            path: Arc::new(path.to_path_buf()),
            core: Arc::new(std::sync::RwLock::new(Arc::new(core))),
            config,
            network,
            data,
            applied,
            http,
            timing,
            membership: Default::default(),
            clocks,
            cluster,
            health,
            last_index,
            writer: random_u64(),
            seq: Arc::default(),
        };
        tokio::spawn(recover_loop(Arc::downgrade(&db.core), db.reopener()));
        // A server this node dials is judged as a client would be (a pending certificate is
        // a joining node's, which the leader asks who it is).
        let judge = db.clone();
        tls.set_judge(Arc::new(move |cert| {
            judge.judge_peer(cert, true).map_err(|r| r.error)
        }));
        Ok(db)
    }

    fn core(&self) -> Arc<Core> {
        self.core.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The Raft node (of the current opening of the database).
    pub fn raft(&self) -> Raft<TypeConfig> {
        self.core().raft.clone()
    }

    fn reopener(&self) -> Reopener {
        Reopener {
            id: self.id,
            path: self.path.clone(),
            config: self.config.clone(),
            network: self.network.clone(),
            data: self.data.clone(),
            applied: self.applied.clone(),
            health: self.health.clone(),
            last_index: self.last_index.clone(),
        }
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The id of the cluster this replica belongs to, once known.
    pub fn cluster_id(&self) -> Option<String> {
        self.cluster.get()
    }

    /// Sets the cluster id (at bootstrap, at join, or from the data dir at a restart): every
    /// node-to-node message carries it, and messages naming another are refused.
    pub fn set_cluster_id(&self, id: &str) {
        self.cluster.set(id);
    }

    /// Refuses node-to-node requests to `router` unless they come from a node of this
    /// cluster (see [`network`]): the same check as the `/raft/` routes.
    pub fn node_routes<S: Clone + Send + Sync + 'static>(&self, router: Router<S>) -> Router<S> {
        self.judge().wrap(router)
    }

    fn judge(&self) -> NodeRoutes {
        let db = self.clone();
        NodeRoutes(Arc::new(move |cert, joining| db.judge_peer(cert, joining)))
    }

    /// Whether a certificate (one the CA signed) is a current node's of this cluster.
    fn judge_peer(
        &self,
        cert: &vigil_tls::NodeCert,
        joining: bool,
    ) -> Result<(), network::Refusal> {
        let ours = self.cluster.get().unwrap_or_default();
        if cert.cluster != ours {
            return Err(network::Refusal {
                kind: "other_cluster".to_string(),
                error: format!(
                    "this node belongs to cluster {ours}, the certificate names cluster {}; refused",
                    cert.cluster
                ),
            });
        }
        vigil_core::security::judge(
            &self.state().security,
            &cert.node,
            &cert.fingerprint,
            joining,
        )
        .map_err(|error| network::Refusal {
            kind: "not_a_voter".to_string(),
            error,
        })
    }

    /// A client for this node's requests to its peers (mutual TLS, connections pooled).
    pub fn peer_client(&self) -> reqwest::Client {
        self.network.client()
    }

    /// Whether a certificate the CA signed is a current node's of this cluster (not another
    /// cluster's, not a removed node's).
    pub fn judge_cert(&self, cert: &vigil_tls::NodeCert) -> Result<(), String> {
        self.judge_peer(cert, false).map_err(|r| r.error)
    }

    /// Why this node's database cannot write, if it cannot: a write failed (a full disk, an
    /// I/O error), or the Raft task stopped.
    pub fn storage_failure(&self) -> Option<String> {
        if let Some(f) = self.health.failure() {
            return Some(f);
        }
        match &self.metrics().running_state {
            Ok(()) => None,
            Err(fatal) => Some(format!("the Raft task stopped: {fatal}")),
        }
    }

    /// The last index in this node's log (on a leader, at or above every committed index).
    pub fn last_log_index(&self) -> u64 {
        self.last_index.load(Ordering::SeqCst)
    }

    /// While this node leads: the latest instant such that a majority of every voter
    /// configuration acknowledged an append of this term sent then or later (the leader's
    /// quorum time; see `vigil_core::lease`).
    pub fn quorum_acked(&self) -> Option<Instant> {
        let m = self.metrics();
        if m.state != ServerState::Leader {
            return None;
        }
        let now = Instant::now();
        let configs: Vec<Vec<String>> = m
            .membership_config
            .membership()
            .get_joint_config()
            .iter()
            .map(|c| c.iter().map(|id| id.to_string()).collect())
            .collect();
        let term = m.current_term;
        let base = now - Duration::from_secs(3600);
        let me = self.id.to_string();
        // Milliseconds after `base`, for the core's arithmetic.
        let ms = |t: Instant| t.saturating_duration_since(base).as_millis() as u64;
        let acked = |v: &str| {
            if v == me {
                return Some(ms(now));
            }
            let id: NodeId = v.parse().ok()?;
            self.clocks.acked(id, term).map(ms)
        };
        vigil_core::lease::quorum_time(&configs, acked).map(|q| base + Duration::from_millis(q))
    }

    /// Why the node `name` refuses this one's Raft messages, if it does (it belongs to
    /// another cluster, or says this node is not a voter).
    pub fn refused_by(&self, name: &str) -> Option<String> {
        self.network.refusals().get(node_id(name)).map(|r| r.error)
    }

    /// Whether this node was removed from its cluster: a majority of the other voters it
    /// knows refuse it as no voter of theirs. The reason, naming them.
    pub fn removed(&self) -> Option<String> {
        let voters: Vec<NodeId> = self
            .voter_ids()
            .into_iter()
            .filter(|v| *v != self.id)
            .collect();
        let refusals = self.network.refusals().all();
        let refusing: Vec<String> = voters
            .iter()
            .filter(|v| refusals.get(v).is_some_and(|r| r.kind == "not_a_voter"))
            .map(|v| self.describe(*v, None))
            .collect();
        (!voters.is_empty() && refusing.len() * 2 > voters.len()).then(|| {
            format!(
                "{} refuse it as no voter of the cluster: it was removed",
                refusing.join(", ")
            )
        })
    }

    /// When this node last began handling an append of a term before `term`.
    pub fn former_append(&self, term: u64) -> Option<Instant> {
        self.clocks.began_before(term)
    }

    fn voter_ids(&self) -> BTreeSet<NodeId> {
        self.metrics()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// The state machine's lock, held only to read a field or clone the state's `Arc`.
    fn read(&self) -> RwLockReadGuard<'_, SmData> {
        self.data.read().unwrap_or_else(|p| p.into_inner())
    }

    /// This node's copy of the cluster database as of its last applied entry: an immutable
    /// snapshot that holds no lock, so a reader may keep it as long as it likes and take
    /// another. Applying a write while a snapshot is held copies the state once.
    pub fn state(&self) -> Arc<ClusterState> {
        self.read().state.clone()
    }

    /// Index of the last log entry applied to this node's copy.
    pub fn applied_index(&self) -> u64 {
        self.read().last_applied.map_or(0, |l| l.index)
    }

    /// Notified with the last applied log index after every apply.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    pub fn metrics(&self) -> RaftMetrics<NodeId, BasicNode> {
        self.raft().metrics().borrow().clone()
    }

    /// Whether this replica belongs to a cluster already (it has a membership or a vote).
    pub async fn is_initialized(&self) -> Result<bool, DbError> {
        self.raft()
            .is_initialized()
            .await
            .map_err(|e| DbError::Raft(e.to_string()))
    }

    /// Makes this node the first voter of a new cluster, reachable at `addr`.
    pub async fn initialize(&self, addr: &str) -> Result<(), DbError> {
        let members = BTreeMap::from([(self.id, BasicNode::new(addr))]);
        self.raft()
            .initialize(members)
            .await
            .map_err(|e| DbError::Raft(e.to_string()))?;
        Ok(())
    }

    fn voters_text(&self) -> String {
        let m = self.metrics();
        let config = m.membership_config.membership();
        let voters: Vec<String> = config
            .voter_ids()
            .map(|id| self.describe(id, config.get_node(&id)))
            .collect();
        voters.join(", ")
    }

    fn describe(&self, id: NodeId, node: Option<&BasicNode>) -> String {
        let name = self
            .read()
            .state
            .nodes
            .values()
            .find(|n| node_id(&n.name) == id)
            .map(|n| n.name.clone());
        match (name, node) {
            (Some(name), _) => name,
            (None, Some(n)) => n.addr.clone(),
            (None, None) => id.to_string(),
        }
    }

    /// The leader's address, if this node knows one.
    pub fn leader_addr(&self) -> Option<String> {
        let m = self.metrics();
        let leader = m.current_leader?;
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
    }

    /// The voters of the Raft membership this node knows: their ids and addresses.
    pub fn voters(&self) -> Vec<(NodeId, String)> {
        let m = self.metrics();
        let config = m.membership_config.membership();
        config
            .voter_ids()
            .map(|id| {
                (
                    id,
                    config
                        .get_node(&id)
                        .map(|n| n.addr.clone())
                        .unwrap_or_default(),
                )
            })
            .collect()
    }

    /// The leader's id, if this node knows one.
    pub fn leader_id(&self) -> Option<NodeId> {
        self.metrics().current_leader
    }

    pub fn is_leader(&self) -> bool {
        self.metrics().state == ServerState::Leader
    }

    /// Commits `cmds` as one log entry through the leader (forwarding it there if this node is
    /// not the leader) and returns each command's result. While no leader can be reached (an
    /// election is under way, the leader just died) it keeps trying until the write timeout;
    /// it retries only what surely did not reach a leader, so nothing is applied twice.
    ///
    /// When it returns, this node's own copy has applied the write too (read your writes).
    pub async fn write(
        &self,
        cmds: Vec<Command>,
    ) -> Result<Vec<Result<(), ApplyError>>, WriteError> {
        let limit = Duration::from_millis(self.timing.write_timeout_ms);
        let deadline = tokio::time::Instant::now() + limit;
        let write = Write {
            id: RequestId {
                writer: self.writer,
                seq: self.seq.fetch_add(1, Ordering::Relaxed),
            },
            cmds,
        };
        let (index, results) = self.write_until(write, deadline).await?;
        let mut applied = self.subscribe();
        let caught_up =
            tokio::time::timeout_at(deadline + limit, applied.wait_for(|i| *i >= index)).await;
        if !matches!(caught_up, Ok(Ok(_))) {
            tracing::warn!(
                "write {index} committed but not yet applied on {}",
                self.name
            );
        }
        Ok(results)
    }

    async fn write_until(
        &self,
        write: Write,
        deadline: tokio::time::Instant,
    ) -> Result<Written, WriteError> {
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            // The same id on every attempt: a proposal that was cut from a leader's log but
            // committed after all is not applied again when this one commits too.
            let last = match self.write_here(write.clone(), remaining).await {
                Err(WriteError::Forward { leader, .. }) => {
                    match self.forward(&leader, write.clone(), remaining).await {
                        Err(Retry::NotSent(why)) => WriteError::Forward { leader, why },
                        Err(Retry::No(e)) => return Err(e),
                        Ok(r) => return Ok(r),
                    }
                }
                Err(e @ WriteError::NoLeader { .. }) => e,
                other => return other,
            };
            if tokio::time::Instant::now() + RETRY_PAUSE >= deadline {
                return Err(match last {
                    WriteError::Forward { leader, why } => WriteError::NoQuorum {
                        node: self.name.clone(),
                        voters: format!(
                            "{}; the last known leader at {leader} is unreachable: {why}",
                            self.voters_text()
                        ),
                        timeout_ms: self.timing.write_timeout_ms,
                    },
                    other => other,
                });
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Writes on this node if it is the leader; `Forward { leader }` names the leader otherwise.
    async fn write_here(&self, write: Write, limit: Duration) -> Result<Written, WriteError> {
        let core = self.core();
        let result = tokio::time::timeout(limit, core.batcher.propose(write)).await;
        match result {
            Err(_) => Err(WriteError::NoQuorum {
                node: self.name.clone(),
                voters: self.voters_text(),
                timeout_ms: self.timing.write_timeout_ms,
            }),
            Ok(Ok(written)) => Ok(written),
            Ok(Err(Failed::NotLeader(Some(leader)))) => Err(WriteError::Forward {
                leader,
                why: String::new(),
            }),
            Ok(Err(Failed::NotLeader(None))) => Err(WriteError::NoLeader {
                node: self.name.clone(),
                voters: self.voters_text(),
            }),
            Ok(Err(Failed::Other(why))) => Err(WriteError::Fatal(why)),
        }
    }

    async fn forward(&self, leader: &str, write: Write, limit: Duration) -> Result<Written, Retry> {
        let fail = |why: String| {
            Retry::No(WriteError::Forward {
                leader: leader.to_string(),
                why,
            })
        };
        let resp = self
            .http
            .post(format!("https://{leader}/raft/write"))
            .json(&write)
            .timeout(limit + Duration::from_millis(500))
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    Retry::NotSent(e.to_string())
                } else {
                    fail(e.to_string())
                }
            })?;
        let answer: Result<Written, WriteError> = resp
            .json()
            .await
            .map_err(|e| fail(format!("unreadable answer: {e}")))?;
        answer.map_err(|e| match e {
            // It is no longer the leader (an election under way): it proposed nothing.
            WriteError::Forward { .. } | WriteError::NoLeader { .. } => {
                Retry::NotSent(format!("it is no longer the leader: {e}"))
            }
            e => Retry::No(e),
        })
    }

    /// Adds a node as a learner and waits (at most `limit`) until it has caught up; only then
    /// makes it a voter while there are fewer than [`MAX_VOTERS`], so that a node that never
    /// answers never counts towards a majority. A step that does not finish within `limit` is
    /// rolled back (in the background, since Raft takes one membership change at a time and
    /// the one under way must end first). Leader only.
    pub async fn add_member(&self, name: &str, addr: &str, limit: Duration) -> Result<(), DbError> {
        let _turn = self.membership.lock().await;
        let id = node_id(name);
        let learner = tokio::time::timeout(
            limit,
            self.raft().add_learner(id, BasicNode::new(addr), true),
        )
        .await;
        match learner {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(raft_err(e)),
            Err(_) => {
                self.roll_back(id);
                return Err(DbError::Raft(format!(
                    "{name} at {addr} did not catch up as a learner within {} s; it was taken out again",
                    limit.as_secs()
                )));
            }
        }
        let voters = self.voter_ids();
        if voters.len() < MAX_VOTERS && !voters.contains(&id) {
            let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
            match tokio::time::timeout(limit, self.raft().change_membership(change, true)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    self.roll_back(id);
                    return Err(raft_err(e));
                }
                Err(_) => {
                    self.roll_back(id);
                    return Err(DbError::Raft(format!(
                        "making {name} a voter did not finish within {} s; it is being taken out again",
                        limit.as_secs()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Takes `id` out of the membership, trying for a minute while another change is under
    /// way.
    fn roll_back(&self, id: NodeId) {
        let db = self.clone();
        tokio::spawn(async move {
            for _ in 0..60 {
                let raft = db.raft();
                let voter = db.voter_ids().contains(&id);
                let done = if voter {
                    let remove = ChangeMembers::RemoveVoters(BTreeSet::from([id]));
                    raft.change_membership(remove, false).await.is_ok()
                        && raft
                            .change_membership(
                                ChangeMembers::RemoveNodes(BTreeSet::from([id])),
                                false,
                            )
                            .await
                            .is_ok()
                } else {
                    let known = db
                        .metrics()
                        .membership_config
                        .membership()
                        .get_node(&id)
                        .is_some();
                    !known
                        || raft
                            .change_membership(
                                ChangeMembers::RemoveNodes(BTreeSet::from([id])),
                                false,
                            )
                            .await
                            .is_ok()
                };
                if done {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            tracing::error!("could not take node id {id} out of the membership within 60 s");
        });
    }

    /// Removes a node from the Raft membership (voter or learner). Leader only.
    pub async fn remove_member(&self, name: &str) -> Result<(), DbError> {
        let _turn = self.membership.lock().await;
        let id = node_id(name);
        let err = raft_err;
        let voters = self.voter_ids();
        if voters.contains(&id) {
            self.raft()
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(err)?;
        }
        self.raft()
            .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
            .await
            .map_err(err)?;
        Ok(())
    }

    /// Makes learners voters while there are fewer than [`MAX_VOTERS`] voters. Leader only.
    pub async fn promote_learners(&self) -> Result<(), DbError> {
        let _turn = self.membership.lock().await;
        let m = self.metrics();
        let config = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = config.voter_ids().collect();
        let learners: Vec<NodeId> = config.learner_ids().collect();
        let room = MAX_VOTERS.saturating_sub(voters.len());
        let promote: BTreeSet<NodeId> = learners.into_iter().take(room).collect();
        if promote.is_empty() {
            return Ok(());
        }
        self.raft()
            .change_membership(ChangeMembers::AddVoterIds(promote), true)
            .await
            .map_err(|e| DbError::Raft(e.to_string()))?;
        Ok(())
    }

    /// Raft role of every member: (id, address, voter?).
    pub fn members(&self) -> Vec<(NodeId, String, bool)> {
        let m = self.metrics();
        let config = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = config.voter_ids().collect();
        config
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone(), voters.contains(id)))
            .collect()
    }

    /// `/raft/...`: Raft's own messages and writes forwarded from other nodes.
    pub fn router(&self) -> Router {
        let forwarded = Router::new()
            .route("/raft/write", post(forwarded))
            .layer(axum::extract::DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(self.clone());
        let db = self.clone();
        let current = Arc::new(move || db.raft());
        network::router(current, self.clocks.clone(), self.judge())
            .merge(self.node_routes(forwarded))
    }
}

async fn forwarded(
    State(db): State<Db>,
    Json(write): Json<Write>,
) -> Json<Result<Written, WriteError>> {
    let limit = Duration::from_millis(db.timing.write_timeout_ms);
    Json(db.write_here(write, limit).await)
}

/// What reopening the database needs (see [`Reopener::reopen`]): everything of a [`Db`] but
/// the Raft core it replaces.
struct Reopener {
    id: NodeId,
    path: Arc<std::path::PathBuf>,
    config: Arc<openraft::Config>,
    network: Network,
    data: Arc<std::sync::RwLock<SmData>>,
    applied: Arc<watch::Sender<u64>>,
    health: Health,
    last_index: Arc<AtomicU64>,
}

impl Reopener {
    /// After a write failed (a full disk, an I/O error), redb refuses every later write until
    /// the file is opened again, and openraft stops. Once the disk takes writes again, this
    /// stops the old Raft task, reopens the file and starts a new task on the same state
    /// machine data, in place of `core`'s. `Err` says why not yet.
    async fn reopen(&self, core: &std::sync::RwLock<Arc<Core>>) -> Result<(), String> {
        let old = core.read().unwrap_or_else(|p| p.into_inner()).clone();
        let _ = tokio::time::timeout(Duration::from_secs(5), old.raft.shutdown()).await;
        drop(old);
        let path = self.path.as_path().to_path_buf();
        let opened = tokio::task::spawn_blocking(move || store::reopen_for_writes(&path))
            .await
            .map_err(|e| e.to_string())??;
        let log = LogStore::new(opened.clone(), self.health.clone(), self.last_index.clone())
            .map_err(|e| e.to_string())?;
        let sm = StateMachine::with(
            opened,
            self.data.clone(),
            self.applied.clone(),
            self.health.clone(),
        );
        let raft = Raft::new(self.id, self.config.clone(), self.network.clone(), log, sm)
            .await
            .map_err(|e| e.to_string())?;
        let fresh = Core {
            batcher: Batcher::start(raft.clone()),
            raft,
        };
        *core.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        self.health.clear();
        tracing::warn!(
            "cluster database {} takes writes again: reopened, Raft restarted",
            self.path.display()
        );
        Ok(())
    }
}

/// How often a node whose database cannot write tries to reopen it.
const RECOVER_EVERY: Duration = Duration::from_secs(1);

/// Reopens the database after a failed write, once it can (see [`Reopener::reopen`]); ends
/// with the last handle.
async fn recover_loop(core: std::sync::Weak<std::sync::RwLock<Arc<Core>>>, r: Reopener) {
    let mut failed_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(RECOVER_EVERY).await;
        let Some(core) = core.upgrade() else {
            return;
        };
        if r.health.failure().is_none() {
            failed_since = None;
            continue;
        }
        let since = *failed_since.get_or_insert_with(Instant::now);
        if let Err(why) = r.reopen(&core).await {
            tracing::warn!(
                "cluster database {} still cannot take writes ({} s): {why}",
                r.path.display(),
                since.elapsed().as_secs()
            );
        }
    }
}

/// 64 random bits from the kernel (for write ids and cluster ids), or from the clock and the
/// process id if /dev/urandom cannot be read.
pub fn random_u64() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)) {
        Ok(()) => u64::from_le_bytes(b),
        Err(_) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            node_id(&format!("{t}-{}", std::process::id()))
        }
    }
}

fn raft_err(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> DbError {
    DbError::Raft(e.to_string())
}

/// A committed write: its log index and each command's result.
type Written = (u64, Vec<Result<(), ApplyError>>);

/// Whether a failed forward may be tried again.
enum Retry {
    /// The request surely did not reach the leader: no connection, or the node it reached
    /// was no longer the leader.
    NotSent(String),
    No(WriteError),
}

/// Pause between attempts while no leader can be reached.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
