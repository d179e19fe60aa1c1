//! The cluster database's contents: nodes, groups, resources and their states.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::props::{GroupProps, ResourceProps};

/// A resource's current state, as the owner's RHS last reported it (through the RCM).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ResourceState {
    #[default]
    Offline,
    OnlinePending,
    Online,
    OfflinePending,
    Failed,
}

impl ResourceState {
    /// Whether the resource may be running (anything but Offline and Failed, after which
    /// the RCM has terminated it).
    pub fn may_run(self) -> bool {
        !matches!(self, ResourceState::Offline | ResourceState::Failed)
    }
}

/// A group's state, derived from its resources (see [`group_state`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupState {
    Online,
    PartialOnline,
    Offline,
    Failed,
    Pending,
}

/// A node's membership state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum NodeState {
    #[default]
    Up,
    Down,
    Paused,
    Joining,
    /// Seen from the node itself: it has no lease (cannot reach a quorum) and has stopped
    /// its resources.
    Isolated,
    /// Its agent stopped cleanly (shutdown policy `migrate` or `failover`) after ending
    /// every resource: its groups go elsewhere at once, with no wait for its lease, and the
    /// move counts as no failover.
    Stopped,
    /// Its agent stopped cleanly under shutdown policy `freeze`, after ending every
    /// resource: its groups stay with it and start again when it is back.
    Frozen,
}

impl NodeState {
    /// Stopped cleanly by its agent (see [`CleanStop`]).
    pub fn stopped_cleanly(self) -> bool {
        matches!(self, NodeState::Stopped | NodeState::Frozen)
    }
}

/// What a node's agent does with the node's groups when it is stopped cleanly (SIGTERM,
/// `systemctl stop`). The cluster has a default; a node's own setting overrides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ShutdownPolicy {
    /// Drain first (live where the group can migrate), then stop.
    #[default]
    Migrate,
    /// Stop at once; the groups fail over without waiting for the lease.
    Failover,
    /// Stop the resources; the groups wait for the node to come back (a quick reboot).
    Freeze,
}

impl ShutdownPolicy {
    pub const NAMES: [&str; 3] = ["migrate", "failover", "freeze"];

    pub fn name(self) -> &'static str {
        match self {
            ShutdownPolicy::Migrate => "migrate",
            ShutdownPolicy::Failover => "failover",
            ShutdownPolicy::Freeze => "freeze",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "migrate" => Ok(ShutdownPolicy::Migrate),
            "failover" => Ok(ShutdownPolicy::Failover),
            "freeze" => Ok(ShutdownPolicy::Freeze),
            _ => Err(format!(
                "shutdown policy {s:?} is not one of {}",
                Self::NAMES.join(", ")
            )),
        }
    }
}

/// A clean stop, as the stopping node recorded it (`Command::NodeStopped`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanStop {
    /// The stopped agent's incarnation: a heartbeat from another one means the node is back.
    pub incarnation: u64,
    pub policy: ShutdownPolicy,
    /// It was Paused (an operator's drain) when it stopped: it comes back Paused.
    pub paused: bool,
}

/// What the operator (or the operator's out-of-band action) wants: the seed's PersistentState.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum PersistentState {
    Online,
    #[default]
    Offline,
}

macro_rules! display_as_debug {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self, f)
            }
        }
    )*};
}
display_as_debug!(ResourceState, GroupState, NodeState, PersistentState);

impl fmt::Display for ShutdownPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    /// The node's API address (HOST:PORT).
    pub address: String,
    pub state: NodeState,
    /// A voter that hosts no resources (it only helps make a majority).
    #[serde(default)]
    pub witness: bool,
    /// Paused by `vigil node drain`: the failover manager is moving its groups off.
    #[serde(default)]
    pub draining: bool,
    /// Its fence device (a fence agent that powers it off), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<FenceDevice>,
    /// Why its fence device's last check (`monitor`) failed; none while it works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_error: Option<String>,
    /// While Stopped or Frozen: how it stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<CleanStop>,
}

/// A fence device: a program of the fence-agents protocol (`fence_ipmilan`, `fence_virsh`,
/// …) and its `key=value` arguments, given on its stdin with `action=`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceDevice {
    pub agent: String,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

impl Node {
    /// Whether the failover manager may place a group here now.
    pub fn can_take_groups(&self) -> bool {
        self.state == NodeState::Up && !self.witness
    }
}

/// Why a group is being handed to another node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveKind {
    /// `vigil group move`.
    Operator,
    /// `vigil node drain`.
    Drain,
    /// Back to a more preferred owner (`auto_failback`, `vigil node resume --failback`).
    Failback,
    /// Restarts were exhausted on the owner.
    Failover,
}

display_as_debug!(MoveKind);

/// A planned handover: the owner stops the group (reverse dependency order), then writes
/// the new owner; the target starts it only then.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    pub to: String,
    pub kind: MoveKind,
    /// Live: the running resources migrate (the type's migrate_to on the source, then
    /// migrate_from on the target) instead of stopping and starting. Set for planned moves
    /// of groups whose resources can all migrate.
    #[serde(default)]
    pub live: bool,
    /// With `live`: migrate by saving the state and restoring it on the target (quick
    /// migration), not while running.
    #[serde(default)]
    pub quick: bool,
}

/// A group that arrived by live migration: its new owner completes each resource with
/// migrate_from (not a start); the old owner keeps its copies until this is cleared, then
/// stops them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    pub from: String,
    /// The resources that migrated (those running on the source).
    pub resources: Vec<String>,
    /// By save and restore (see [`Move::quick`]).
    #[serde(default)]
    pub quick: bool,
}

/// One failover of a group, for `failover_threshold` and for not going back to a node the
/// group just failed on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverRecord {
    /// The node the group left.
    pub node: String,
    /// Leader's clock (Unix ms).
    pub at_ms: u64,
    /// The node died (the group did not fail there).
    pub node_down: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    #[serde(default)]
    pub props: GroupProps,
    /// The node that hosts the group's resources.
    pub owner: Option<String>,
    /// Fencing token: grows with every change of owner, never goes backwards.
    pub epoch: u64,
    /// Set when the group could not be kept online anywhere (failover threshold reached,
    /// no node to fail over to); cleared when it is retried or an operator acts on it.
    #[serde(default)]
    pub failure: Option<String>,
    /// When the failover manager tries a Failed group again (leader's clock, Unix ms).
    #[serde(default)]
    pub retry_at_ms: Option<u64>,
    /// The owner's RCM used up the restarts of a resource: the failover manager chooses
    /// where the group goes.
    #[serde(default)]
    pub failover_request: Option<String>,
    /// A planned handover in progress.
    #[serde(default)]
    pub moving: Option<Move>,
    /// Recent failovers, newest last (pruned to `failover_period_s`).
    #[serde(default)]
    pub failovers: Vec<FailoverRecord>,
    /// The node a drain moved the group off (for `vigil node resume --failback`).
    #[serde(default)]
    pub drained_from: Option<String>,
    /// A live migration being completed on the owner.
    #[serde(default)]
    pub migration: Option<Migration>,
    /// Planned moves that failed (their live migration did), one per target: the failover
    /// manager plans no other move to those nodes (failback, drain) until the group moves
    /// or an operator moves it.
    #[serde(default)]
    pub failed_moves: Vec<FailedMove>,
    /// An operator's move put the group where it is: it is not failed back (auto_failback
    /// returns only groups that failed over).
    #[serde(default)]
    pub operator_placed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedMove {
    pub to: String,
    pub reason: String,
}

/// Where a group is in its life, derived from its fields by one precedence, which every
/// decision (the failover manager's plan, the RCM, the API's waits, status) matches on:
///
/// 1. **Failed** (`failure`) until an operator acts or `retry_at_ms` (leader's Unix ms)
///    passes. Nothing of it runs; a move or a failover request is moot.
/// 2. **FailoverRequested** (`failover_request`): its owner's RCM used up a resource's
///    restarts and waits for the failover manager to place it. It outranks a move: the
///    failover manager answers the request (a failover ends any move).
/// 3. **Moving** (`moving`): a planned handover, cold or live.
/// 4. **Completing** (`migration`): it arrived by live migration; its new owner completes
///    each migrated resource, and the old owner keeps its copies until then.
/// 5. **Placed**: on its owner (or on none), nothing under way.
///
/// The migration's handshake (the old owner keeps its copies until the new owner says it
/// has completed) outlives a later failure or failover request, so the RCM reads
/// [`Group::migration`] itself for that; everything else goes by the phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase<'a> {
    Failed {
        reason: &'a str,
        retry_at_ms: Option<u64>,
    },
    FailoverRequested {
        reason: &'a str,
    },
    Moving(&'a Move),
    Completing(&'a Migration),
    Placed,
}

impl Phase<'_> {
    /// Nothing of the group may start on its owner: it failed, awaits a failover decision,
    /// or is being handed over.
    pub fn holds(&self) -> bool {
        match self {
            Phase::Failed { .. } | Phase::FailoverRequested { .. } | Phase::Moving(_) => true,
            Phase::Completing(_) | Phase::Placed => false,
        }
    }
}

impl std::fmt::Display for Phase<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Phase::Failed {
                reason,
                retry_at_ms: Some(t),
            } => write!(f, "failed until {t} (Unix ms): {reason}"),
            Phase::Failed {
                reason,
                retry_at_ms: None,
            } => write!(f, "failed: {reason}"),
            Phase::FailoverRequested { reason } => write!(f, "failover requested: {reason}"),
            Phase::Moving(m) => {
                let how = match (m.live, m.quick) {
                    (true, true) => ", quick migration",
                    (true, false) => ", live migration",
                    _ => "",
                };
                write!(f, "moving to {} ({} move{how})", m.to, m.kind)
            }
            Phase::Completing(mi) => write!(f, "completing its migration from {}", mi.from),
            Phase::Placed => write!(f, "placed"),
        }
    }
}

impl Group {
    /// See [`Phase`].
    pub fn phase(&self) -> Phase<'_> {
        if let Some(reason) = &self.failure {
            Phase::Failed {
                reason,
                retry_at_ms: self.retry_at_ms,
            }
        } else if let Some(reason) = &self.failover_request {
            Phase::FailoverRequested { reason }
        } else if let Some(m) = &self.moving {
            Phase::Moving(m)
        } else if let Some(mi) = &self.migration {
            Phase::Completing(mi)
        } else {
            Phase::Placed
        }
    }

    /// See [`Phase::holds`].
    pub fn is_held(&self) -> bool {
        self.phase().holds()
    }

    /// The planned handover under way, if that is the group's phase.
    pub fn moving(&self) -> Option<&Move> {
        match self.phase() {
            Phase::Moving(m) => Some(m),
            Phase::Failed { .. }
            | Phase::FailoverRequested { .. }
            | Phase::Completing(_)
            | Phase::Placed => None,
        }
    }

    /// Whether `node` is one of the group's possible owners.
    pub fn may_run_on(&self, node: &str) -> bool {
        self.props.possible_owners.is_empty()
            || self.props.possible_owners.iter().any(|n| n == node)
    }
}

/// What an operator gives to create a resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceSpec {
    pub name: String,
    pub group: String,
    pub type_name: String,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    #[serde(default)]
    pub props: ResourceProps,
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Its type can migrate a running instance between nodes (see [`Move::live`]).
    #[serde(default)]
    pub migratable: bool,
    /// Parameters its type's schema marks unique: no other resource of the type may have the
    /// same value (OCF's `unique`). Checked by `apply`, so two creates cannot race past it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unique: Vec<String>,
    /// Parameters whose values are secret (the type's schema says so, or the operator did):
    /// never shown, and taken out of reasons and records ([`crate::params::redact`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    pub name: String,
    pub group: String,
    pub type_name: String,
    pub params: BTreeMap<String, String>,
    pub props: ResourceProps,
    /// Resources in the same group that must be Online before this one.
    pub depends_on: Vec<String>,
    pub persistent_state: PersistentState,
    /// Last state recorded by the owner's RCM.
    pub state: ResourceState,
    pub state_reason: String,
    pub pid: Option<u32>,
    /// Its type can migrate a running instance between nodes.
    #[serde(default)]
    pub migratable: bool,
    /// Parameters that must be unique among resources of its type (see [`ResourceSpec`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unique: Vec<String>,
    /// Parameters whose values are secret (the type's schema says so, or the operator did):
    /// never shown, and taken out of reasons and records ([`crate::params::redact`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret: Vec<String>,
}

/// A registered plugin type (`vigil type register`): a shared library with Vigil's C ABI,
/// at the same path on every node that hosts its resources.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plugin {
    pub name: String,
    pub library: String,
    pub description: String,
    pub abi_version: u32,
    pub schema: Vec<crate::params::ParamSpec>,
}

/// The whole cluster database.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub cluster_name: Option<String>,
    /// Made at bootstrap; every node-to-node message carries it.
    #[serde(default)]
    pub cluster_id: Option<String>,
    pub nodes: BTreeMap<String, Node>,
    pub groups: BTreeMap<String, Group>,
    pub resources: BTreeMap<String, Resource>,
    /// Registered plugin types by name.
    #[serde(default)]
    pub plugins: BTreeMap<String, Plugin>,
    /// The CA, issued certificates and tokens (never shown by the API).
    #[serde(default)]
    pub security: crate::security::Security,
    /// The longest watchdog timeout of the nodes that have one (0: none): every node's Down
    /// arithmetic adds it (`LeaseConfig::watchdog_ms`).
    #[serde(default)]
    pub watchdog_ms: u64,
    /// What a node's agent does with its groups on a clean stop, unless the node's own
    /// configuration says otherwise.
    #[serde(default)]
    pub shutdown_policy: ShutdownPolicy,
}

impl ClusterState {
    /// The resources of a group, in name order.
    pub fn group_resources<'a>(
        &'a self,
        group: &'a str,
    ) -> impl Iterator<Item = &'a Resource> + 'a {
        self.resources.values().filter(move |r| r.group == group)
    }

    /// Resources (anywhere) that name `resource` in their `depends_on`.
    pub fn dependents<'a>(&'a self, resource: &'a str) -> impl Iterator<Item = &'a Resource> + 'a {
        self.resources
            .values()
            .filter(move |r| r.depends_on.iter().any(|d| d == resource))
    }

    pub fn group_epoch(&self, group: &str) -> u64 {
        self.groups.get(group).map_or(0, |g| g.epoch)
    }
}

/// A group's state from its resources' recorded states.
pub fn group_state(state: &ClusterState, group: &Group) -> GroupState {
    match group.phase() {
        Phase::Failed { .. } => return GroupState::Failed,
        Phase::FailoverRequested { .. }
        | Phase::Moving(_)
        | Phase::Completing(_)
        | Phase::Placed => {}
    }
    let (mut online, mut offline, mut failed, mut pending, mut total) = (0, 0, 0, 0, 0);
    for r in state.group_resources(&group.name) {
        total += 1;
        match r.state {
            ResourceState::Online => online += 1,
            ResourceState::Offline => offline += 1,
            ResourceState::Failed => failed += 1,
            ResourceState::OnlinePending | ResourceState::OfflinePending => pending += 1,
        }
    }
    if pending > 0 {
        GroupState::Pending
    } else if total == 0 || offline == total {
        GroupState::Offline
    } else if online == total {
        GroupState::Online
    } else if online == 0 && failed > 0 {
        GroupState::Failed
    } else {
        GroupState::PartialOnline
    }
}

/// A resource has come to rest: at its desired state, or Failed.
pub fn at_rest(r: &Resource) -> bool {
    matches!(
        (r.persistent_state, r.state),
        (PersistentState::Online, ResourceState::Online)
            | (PersistentState::Offline, ResourceState::Offline)
            | (_, ResourceState::Failed)
    )
}

/// A group has come to rest where it is: not moving, no migration being completed, and every
/// resource at rest (see [`at_rest`]). A group just handed over has not: its resources are
/// recorded stopped, and wanted Online.
pub fn settled(state: &ClusterState, group: &str) -> bool {
    state
        .groups
        .get(group)
        .is_none_or(|g| g.moving.is_none() && g.migration.is_none())
        && state.group_resources(group).all(at_rest)
}
