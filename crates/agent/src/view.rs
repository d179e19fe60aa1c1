//! What the API returns for `GET /v1/status`, shared with the CLI that prints it.

use serde::{Deserialize, Serialize};
use vigil_core::model::{GroupState, NodeState, PersistentState, ResourceState, group_state};

use crate::service::Service;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusView {
    pub cluster: Option<String>,
    /// The node that answered.
    pub node: String,
    /// Index of the last command applied to this node's copy of the database.
    pub applied_index: u64,
    pub nodes: Vec<NodeView>,
    pub groups: Vec<GroupView>,
    /// The answering node's RHS processes.
    pub rhs: Vec<HostView>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    pub state: NodeState,
    pub address: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupView {
    pub name: String,
    pub state: GroupState,
    pub owner: Option<String>,
    pub epoch: u64,
    pub failure: Option<String>,
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
    /// The RHS that hosts it on the answering node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rhs: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostView {
    pub name: String,
    pub pid: u32,
}

pub fn status(s: &Service) -> StatusView {
    let db = s.state();
    let groups = db
        .groups
        .values()
        .map(|g| GroupView {
            name: g.name.clone(),
            state: group_state(db, g),
            owner: g.owner.clone(),
            epoch: g.epoch,
            failure: g.failure.clone(),
            resources: db
                .group_resources(&g.name)
                .map(|r| ResourceView {
                    name: r.name.clone(),
                    type_name: r.type_name.clone(),
                    state: r.state,
                    persistent_state: r.persistent_state,
                    owner: g.owner.clone(),
                    pid: r.pid,
                    reason: r.state_reason.clone(),
                    depends_on: r.depends_on.clone(),
                    rhs: s.hosts.host_of(&r.name).map(str::to_string),
                })
                .collect(),
        })
        .collect();
    StatusView {
        cluster: db.cluster_name.clone(),
        node: s.node.clone(),
        applied_index: s.applied_index(),
        nodes: db
            .nodes
            .values()
            .map(|n| NodeView {
                name: n.name.clone(),
                state: n.state,
                address: n.address.clone(),
            })
            .collect(),
        groups,
        rhs: s
            .hosts
            .pids()
            .into_iter()
            .map(|(name, pid)| HostView { name, pid })
            .collect(),
    }
}
