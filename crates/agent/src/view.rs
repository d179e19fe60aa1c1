//! What the API returns for `GET /v1/status`, shared with the CLI that prints it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vigil_core::model::{GroupState, NodeState, PersistentState, ResourceState, group_state};

use crate::service::Service;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusView {
    pub cluster: Option<String>,
    /// The cluster's id (made at bootstrap; every node-to-node message carries it).
    #[serde(default)]
    pub cluster_id: Option<String>,
    /// The node that answered.
    pub node: String,
    /// The cluster's watchdog timeout (0: none): a silent node is Down after lease + this +
    /// margin.
    #[serde(default)]
    pub watchdog_ms: u64,
    /// The cluster's shutdown policy (a node's own configuration may override it).
    #[serde(default)]
    pub shutdown_policy: vigil_core::model::ShutdownPolicy,
    /// Index of the last log entry applied to this node's copy of the database.
    pub applied_index: u64,
    /// Index of the last entry in this node's Raft log, and of its last snapshot.
    pub last_log_index: u64,
    pub snapshot_index: u64,
    /// The Raft leader as this node knows it.
    pub leader: Option<String>,
    /// How far what this node says can be trusted: current, catching up with what its leader
    /// vouched for, or fenced (its copy may be stale, and it runs nothing).
    pub standing: vigil_core::nm::Standing,
    pub term: u64,
    pub nodes: Vec<NodeView>,
    pub groups: Vec<GroupView>,
    /// The answering node's RHS processes.
    pub rhs: Vec<HostView>,
    /// The answering node's certificate: when it expires, and why its renewal failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertView>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CertView {
    pub not_after_s: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_error: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    pub state: NodeState,
    pub address: String,
    /// Raft role: leader, voter, learner (or none: recorded, but not a Raft member).
    pub role: String,
    /// Since the node's last heartbeat, as the answering node knows it.
    pub heartbeat_age_ms: Option<u64>,
    /// Why that node refuses the answering node's Raft messages, if it does (it belongs to
    /// another cluster, or says the answering node is not a voter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// Its fence agent (its arguments are not shown: they hold passwords).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_agent: Option<String>,
    /// Why its fence device's last check failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_error: Option<String>,
    /// Stopped or Frozen: the shutdown policy it stopped under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_under: Option<vigil_core::model::ShutdownPolicy>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupView {
    pub name: String,
    pub state: GroupState,
    pub owner: Option<String>,
    pub epoch: u64,
    pub failure: Option<String>,
    /// Where it is in its life ([`vigil_core::model::Phase`]): "placed", "moving to n2 (Drain
    /// move)", "failed until …: why", …
    #[serde(default)]
    pub phase: String,
    /// A handover in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving: Option<vigil_core::model::Move>,
    /// Placement properties.
    #[serde(default)]
    pub props: vigil_core::props::GroupProps,
    pub resources: Vec<ResourceView>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResourceView {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub state: ResourceState,
    pub persistent_state: PersistentState,
    pub owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub reason: String,
    pub depends_on: Vec<String>,
    /// Its parameters, with each secret one's value shown as `(secret)`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
    /// The RHS that hosts it on the answering node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rhs: Option<String>,
    /// What it uses on the answering node, from its cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageView>,
}

/// A resource's CPU time and memory, read from its cgroup on the answering node (memory
/// only where the node's cgroup v2 has the memory controller).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UsageView {
    pub cpu_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostView {
    pub name: String,
    pub pid: u32,
}

pub fn status(s: &Service) -> StatusView {
    let metrics = s.db.metrics();
    let members = s.db.members();
    let db = s.state();
    let witnesses: Vec<String> = db
        .nodes
        .values()
        .filter(|n| n.witness)
        .map(|n| n.name.clone())
        .collect();
    let role = |name: &str| {
        let id = vigil_db::node_id(name);
        match members.iter().find(|(m, _, _)| *m == id) {
            _ if metrics.current_leader == Some(id) => "leader",
            Some((_, _, true)) if witnesses.iter().any(|w| w == name) => "witness",
            Some((_, _, true)) => "voter",
            Some((_, _, false)) => "learner",
            None => "none",
        }
        .to_string()
    };
    let applied_index = s.applied_index();
    let standing = s.nm.standing(&s.nm.replica(&s.db));
    let fenced = s.nm.is_fenced();
    let refused: std::collections::BTreeMap<String, String> = db
        .nodes
        .keys()
        .filter_map(|n| s.db.refused_by(n).map(|r| (n.clone(), r)))
        .collect();
    let leader = metrics
        .current_leader
        .and_then(|id| db.nodes.values().find(|n| vigil_db::node_id(&n.name) == id))
        .map(|n| n.name.clone());
    let groups = db
        .groups
        .values()
        .map(|g| GroupView {
            name: g.name.clone(),
            state: group_state(&db, g),
            owner: g.owner.clone(),
            epoch: g.epoch,
            failure: g.failure.clone(),
            phase: g.phase().to_string(),
            moving: g.moving().cloned(),
            props: g.props.clone(),
            resources: db
                .group_resources(&g.name)
                .map(|r| {
                    let mut view = ResourceView {
                        name: r.name.clone(),
                        type_name: r.type_name.clone(),
                        state: r.state,
                        persistent_state: r.persistent_state,
                        owner: g.owner.clone(),
                        pid: r.pid,
                        reason: r.state_reason.clone(),
                        depends_on: r.depends_on.clone(),
                        params: vigil_core::params::shown(&r.params, &r.secret),
                        rhs: s.hosts.host_of(&r.name).map(str::to_string),
                        usage: s
                            .hosts
                            .host_of(&r.name)
                            .and(s.hosts.cgroup_of(&r.name))
                            .and_then(|d| vigil_rhs::cgroup::usage(std::path::Path::new(&d)))
                            .map(|(usec, memory_bytes)| UsageView {
                                cpu_ms: usec / 1000,
                                memory_bytes,
                            }),
                    };
                    // A fenced node cannot record what it stopped, but it knows: for what
                    // its copy says it hosts, say what runs here, not the old record.
                    if fenced && g.owner.as_deref() == Some(s.node.as_str()) {
                        let (state, pid, reason) = s.local_state(&r.name);
                        (view.state, view.pid, view.reason) = (state, pid, reason);
                    }
                    view
                })
                .collect(),
        })
        .collect();
    StatusView {
        cluster: db.cluster_name.clone(),
        cluster_id: s.db.cluster_id(),
        node: s.node.clone(),
        watchdog_ms: db.watchdog_ms,
        shutdown_policy: db.shutdown_policy,
        applied_index,
        last_log_index: metrics.last_log_index.unwrap_or(0),
        snapshot_index: metrics.snapshot.map_or(0, |l| l.index),
        leader,
        standing,
        term: metrics.current_term,
        nodes: db
            .nodes
            .values()
            .map(|n| NodeView {
                name: n.name.clone(),
                state: if n.name == s.node && s.nm.is_fenced() {
                    NodeState::Isolated
                } else {
                    n.state
                },
                heartbeat_age_ms: s.nm.heartbeat_age_ms(&n.name),
                address: n.address.clone(),
                role: role(&n.name),
                refused: refused.get(&n.name).cloned(),
                fence_agent: n.fence.as_ref().map(|f| f.agent.clone()),
                fence_error: n.fence_error.clone(),
                stopped_under: n.stop.as_ref().map(|s| s.policy),
            })
            .collect(),
        groups,
        rhs: s
            .hosts
            .pids()
            .into_iter()
            .map(|(name, pid)| HostView { name, pid })
            .collect(),
        certificate: None,
    }
}
