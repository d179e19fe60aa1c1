//! Raft messages between nodes: HTTP/JSON over mutual TLS on the agent's listener, under
//! `/raft/`. The same axum + reqwest stack as the API, so one port serves both.
//!
//! A message is taken only from a node of this cluster: its certificate chains to the
//! cluster's CA (rustls checked that in the handshake), names this cluster, and is not a
//! removed node's ([`NodeRoutes`]). And a node speaks only for itself: an append or a
//! snapshot whose leader, or a vote whose candidate, is not the node the certificate names
//! is refused and logged.
//!
//! Two clocks for the Node Manager's leases are kept here, from the messages themselves
//! (see `vigil_core::lease`):
//! - sending side: for each peer, the send time of the latest append (or snapshot chunk) it
//!   acknowledged, and in which term ([`Clocks::acked`]): the leader's quorum time;
//! - receiving side: when this node last began handling an append from each term
//!   ([`Clocks::began`]): what it reports as its former instant to a later leader.
//!

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::{NodeId, TypeConfig, node_id};
use vigil_tls::{NodeCert, Peer};

/// Terms whose append times a node keeps (older ones cannot matter: a lease is seconds).
const TERMS_KEPT: usize = 16;

/// The lease clocks measured from Raft's own messages (see the module's documentation).
#[derive(Clone, Default)]
pub struct Clocks {
    inner: Arc<Mutex<ClockData>>,
}

#[derive(Default)]
struct ClockData {
    /// Per peer: (term, send time) of the latest append it acknowledged.
    acked: BTreeMap<NodeId, (u64, Instant)>,
    /// Per term: when this node last began handling an append of that term.
    began: BTreeMap<u64, Instant>,
}

impl Clocks {
    fn lock(&self) -> std::sync::MutexGuard<'_, ClockData> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn acknowledged(&self, peer: NodeId, term: u64, sent: Instant) {
        let mut c = self.lock();
        let newer = c
            .acked
            .get(&peer)
            .is_none_or(|(t, s)| (*t, *s) < (term, sent));
        if newer {
            c.acked.insert(peer, (term, sent));
        }
    }

    fn begin(&self, term: u64) {
        let mut c = self.lock();
        c.began.insert(term, Instant::now());
        while c.began.len() > TERMS_KEPT {
            c.began.pop_first();
        }
    }

    /// The send time of the latest append of `term` that `peer` acknowledged.
    pub fn acked(&self, peer: NodeId, term: u64) -> Option<Instant> {
        self.lock()
            .acked
            .get(&peer)
            .filter(|(t, _)| *t == term)
            .map(|(_, s)| *s)
    }

    /// When this node last began handling an append of a term before `term`.
    pub fn began_before(&self, term: u64) -> Option<Instant> {
        self.lock().began.range(..term).map(|(_, t)| *t).max()
    }
}

/// The id of this node's cluster, once known (set at bootstrap or join, read from the data
/// dir at a restart).
#[derive(Clone, Default)]
pub struct ClusterId(Arc<Mutex<Option<String>>>);

impl ClusterId {
    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, id: &str) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(id.to_string());
    }
}

/// Why a peer refused this node's requests (other than with a Raft answer), by peer.
#[derive(Clone, Default)]
pub struct Refusals(Arc<Mutex<BTreeMap<NodeId, Refusal>>>);

/// A peer's refusal, as its 409 answer said it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Refusal {
    /// `other_cluster`, `not_a_voter` or `unknown_cluster`.
    pub kind: String,
    pub error: String,
}

impl Refusals {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Refusal>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, peer: NodeId) -> Option<Refusal> {
        self.lock().get(&peer).cloned()
    }

    pub fn all(&self) -> BTreeMap<NodeId, Refusal> {
        self.lock().clone()
    }
}

/// Makes connections to peers (one `reqwest` client shared by all).
#[derive(Clone)]
pub struct Network {
    http: reqwest::Client,
    clocks: Clocks,
    refusals: Refusals,
}

impl Network {
    pub fn new(http: reqwest::Client, clocks: Clocks) -> Self {
        Self {
            http,
            clocks,
            refusals: Refusals::default(),
        }
    }

    pub fn refusals(&self) -> Refusals {
        self.refusals.clone()
    }

    pub fn client(&self) -> reqwest::Client {
        self.http.clone()
    }
}

pub struct Conn {
    target: NodeId,
    addr: String,
    net: Network,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Conn;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Conn {
        Conn {
            target,
            addr: node.addr.clone(),
            net: self.clone(),
        }
    }
}

impl Conn {
    async fn post<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let url = format!("https://{}/raft/{path}", self.addr);
        let resp = self
            .net
            .http
            .post(&url)
            .json(req)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| {
                if let Some(why) = certificate_refused(&e) {
                    let refusal = Refusal {
                        kind: "bad_certificate".to_string(),
                        error: format!(
                            "the node at {} has no certificate of this cluster (another cluster's node, or not a vigil node): {why}",
                            self.addr
                        ),
                    };
                    let old = self.net.refusals.lock().insert(self.target, refusal.clone());
                    if old.as_ref() != Some(&refusal) {
                        tracing::warn!("{}", refusal.error);
                    }
                    return RPCError::Unreachable(Unreachable::new(&AnyErr(refusal.error)));
                }
                // Only a refused connection is Unreachable, after which openraft sends the peer
                // nothing for 500 ms, longer than an election timeout. A slow answer (an append
                // outlives its heartbeat-long deadline when the peer's disk or CPU is busy) is
                // tried again at the next heartbeat instead, so that a live peer does not go
                // half a second without one and start an election.
                if e.is_connect() && !e.is_timeout() {
                    RPCError::Unreachable(Unreachable::new(&e))
                } else {
                    RPCError::Network(NetworkError::new(&e))
                }
            })?;
        if resp.status() == StatusCode::CONFLICT {
            // Another cluster's node, or one that refuses this one: never a Raft answer.
            let refusal: Refusal = resp.json().await.unwrap_or(Refusal {
                kind: "unknown".to_string(),
                error: "refused without a reason".to_string(),
            });
            let why = refusal.error.clone();
            let new = self
                .net
                .refusals
                .lock()
                .insert(self.target, refusal.clone());
            if new.as_ref() != Some(&refusal) {
                tracing::warn!("node at {} refuses this one: {why}", self.addr);
            }
            return Err(RPCError::Unreachable(Unreachable::new(&AnyErr(why))));
        }
        self.net.refusals.lock().remove(&self.target);
        let result: Result<Resp, RaftError<NodeId, E>> = resp
            .json()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// The TLS refusal in a request's error, if the peer's certificate (or ours, as the peer
/// said) was refused.
fn certificate_refused(e: &reqwest::Error) -> Option<String> {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        let text = s.to_string();
        if text.contains("certificate") || text.contains("UnknownIssuer") {
            return Some(text);
        }
        source = s.source();
    }
    None
}

/// A refusal's text as an error.
#[derive(Debug)]
struct AnyErr(String);

impl std::fmt::Display for AnyErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AnyErr {}

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let (term, sent) = (rpc.vote.leader_id().get_term(), Instant::now());
        let resp: AppendEntriesResponse<NodeId> =
            self.post("append", &rpc, option.hard_ttl()).await?;
        // Anything but a higher vote means the peer follows this term (a conflict is about
        // the log, not the leadership).
        if !matches!(resp, AppendEntriesResponse::HigherVote(_)) {
            self.net.clocks.acknowledged(self.target, term, sent);
        }
        Ok(resp)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let (vote, sent) = (rpc.vote, Instant::now());
        let resp: InstallSnapshotResponse<NodeId> =
            self.post("snapshot", &rpc, option.hard_ttl()).await?;
        if resp.vote <= vote {
            self.net
                .clocks
                .acknowledged(self.target, vote.leader_id().get_term(), sent);
        }
        Ok(resp)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.post("vote", &rpc, option.hard_ttl()).await
    }
}

/// Largest Raft request accepted.
const RAFT_BODY_LIMIT: usize = 64 * 1024 * 1024;

/// The Raft node to hand a message to (a new one after the database was reopened).
pub type CurrentRaft = Arc<dyn Fn() -> Raft<TypeConfig> + Send + Sync>;

#[derive(Clone)]
struct Receiver {
    raft: CurrentRaft,
    clocks: Clocks,
}

/// A 409 answer: this node refuses the request, saying why (`kind`, for the sender to act on).
fn refuse(kind: &str, error: String) -> Response {
    let body = Refusal {
        kind: kind.to_string(),
        error,
    };
    (StatusCode::CONFLICT, Json(body)).into_response()
}

/// The receiving side: `/raft/append`, `/raft/vote`, `/raft/snapshot`.
pub fn router(raft: CurrentRaft, clocks: Clocks, nodes: NodeRoutes) -> Router {
    let routes = Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        // Entry batches and snapshot chunks outgrow axum's 2 MB default.
        .layer(axum::extract::DefaultBodyLimit::max(RAFT_BODY_LIMIT))
        .with_state(Receiver { raft, clocks });
    nodes.wrap(routes)
}

/// The node a node-to-node request comes from, as its certificate names it.
#[derive(Clone, Debug)]
pub struct Sender {
    pub id: NodeId,
    pub name: String,
}

/// Decides whether a certificate is a current node's of this cluster (the cluster's id,
/// and the certificates revoked at removals, are the database's).
/// The second argument: the request is the node's own join.
pub type Judge = Arc<dyn Fn(&NodeCert, bool) -> Result<(), Refusal> + Send + Sync>;

/// Node-to-node routes: refused unless the peer is a node of this cluster (see the
/// module's documentation); the handlers get the [`Sender`].
#[derive(Clone)]
pub struct NodeRoutes(pub Judge);

impl NodeRoutes {
    pub fn wrap<S: Clone + Send + Sync + 'static>(&self, router: Router<S>) -> Router<S> {
        router.layer(axum::middleware::from_fn_with_state(
            self.clone(),
            node_peer,
        ))
    }
}

async fn node_peer(State(nodes): State<NodeRoutes>, mut req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<Peer>().cloned();
    let path = req.uri().path().to_string();
    let cert = match peer {
        Some(Peer::Node(cert)) => cert,
        _ => {
            tracing::warn!("refused {path} from a client without a node certificate");
            let body = Refusal {
                kind: "not_a_node".to_string(),
                error: format!(
                    "{path} is for the cluster's nodes: it needs a node certificate from this cluster's CA"
                ),
            };
            return (StatusCode::FORBIDDEN, Json(body)).into_response();
        }
    };
    if let Err(refusal) = (nodes.0)(&cert, path == "/v1/cluster/join") {
        tracing::warn!("refused {path} from node {}: {}", cert.node, refusal.error);
        return (StatusCode::CONFLICT, Json(refusal)).into_response();
    }
    req.extensions_mut().insert(Sender {
        id: node_id(&cert.node),
        name: cert.node,
    });
    next.run(req).await
}

/// A leader's appends are taken only if it is in this copy's Raft membership (a voter or a
/// learner), or this copy knows no membership yet (a joining node). openraft itself takes
/// an append from any node with a high enough vote.
fn not_a_member(r: &Receiver, from: &Sender) -> Option<Response> {
    let raft = (r.raft)();
    let metrics = raft.metrics();
    let m = metrics.borrow();
    let config = m.membership_config.membership();
    let mut nodes = config.nodes().map(|(id, _)| *id).peekable();
    // No membership known: a joining node, which takes its first leader's word.
    nodes.peek()?;
    if nodes.any(|id| id == from.id) {
        return None;
    }
    tracing::warn!(
        "refused Raft messages from {}: not in this node's membership",
        from.name
    );
    Some(refuse(
        "not_a_voter",
        format!(
            "node {} is not a member of this cluster's Raft (as this node knows it)",
            from.name
        ),
    ))
}

/// A 409 answer for a node that speaks for another: its certificate names `from`.
fn impostor(from: &Sender, what: &str, claimed: Option<NodeId>) -> Response {
    let claimed = claimed.map_or("no node".to_string(), |c| format!("node id {c}"));
    tracing::warn!(
        "refused a {what} from node {} (id {}) in the name of {claimed}",
        from.name,
        from.id
    );
    refuse(
        "impostor",
        format!(
            "a {what} from node {} (its certificate says so) in the name of {claimed}: a node speaks only for itself",
            from.name
        ),
    )
}

async fn append(
    State(r): State<Receiver>,
    Extension(from): Extension<Sender>,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Response {
    let leader = req.vote.leader_id().voted_for();
    if leader != Some(from.id) {
        return impostor(&from, "Raft append", leader);
    }
    if let Some(refused) = not_a_member(&r, &from) {
        return refused;
    }
    // Noted before Raft sees it: the leader sent it earlier still (see the module's docs).
    r.clocks.begin(req.vote.leader_id().get_term());
    Json((r.raft)().append_entries(req).await).into_response()
}

/// A candidate that is not a voter here (a node removed while it was away, which still
/// believes it votes) is refused before Raft sees its higher term: it must not disturb the
/// cluster, and the refusal tells it it was removed.
async fn vote(
    State(r): State<Receiver>,
    Extension(from): Extension<Sender>,
    Json(req): Json<VoteRequest<NodeId>>,
) -> Response {
    let raft = (r.raft)();
    let candidate = req.vote.leader_id().voted_for();
    if candidate != Some(from.id) {
        return impostor(&from, "Raft vote request", candidate);
    }
    let voter = candidate.is_some_and(|c| {
        raft.metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == c)
    });
    if !voter {
        let who = candidate.map_or("an unnamed node".to_string(), |c| format!("node id {c}"));
        return refuse(
            "not_a_voter",
            format!("{who} is not a voter of this cluster (it was removed, or never was one)"),
        );
    }
    Json(raft.vote(req).await).into_response()
}

async fn snapshot(
    State(r): State<Receiver>,
    Extension(from): Extension<Sender>,
    Json(req): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Response {
    let leader = req.vote.leader_id().voted_for();
    if leader != Some(from.id) {
        return impostor(&from, "Raft snapshot", leader);
    }
    if let Some(refused) = not_a_member(&r, &from) {
        return refused;
    }
    r.clocks.begin(req.vote.leader_id().get_term());
    Json((r.raft)().install_snapshot(req).await).into_response()
}
