//! The cluster database's state machine: typed commands and the one function that applies
//! them. `apply` is pure and deterministic (no clock, no randomness, no I/O), so every node
//! that applies the same commands in the same order holds the same database. A command that
//! is not valid for the current state is refused with an error and changes nothing.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::deps;
use crate::model::{
    CleanStop, ClusterState, FailedMove, FailoverRecord, Group, Migration, Move, MoveKind, Node,
    NodeState, PersistentState, Plugin, Resource, ResourceSpec, ResourceState, ShutdownPolicy,
};
use crate::names::validate_name;
use crate::props::{GroupProps, ResourceProps};
use crate::security::{CaCert, CertRecord, Security, Token};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Names the cluster and records its id (made at `--bootstrap`, carried by every
    /// node-to-node message); only on an empty database.
    Bootstrap {
        cluster_name: String,
        #[serde(default)]
        cluster_id: String,
    },
    AddNode {
        name: String,
        address: String,
    },
    /// Makes a node a witness: a voter that never owns a group. Refused while it owns one.
    MarkWitness {
        name: String,
    },
    /// Removes a node; refused while it owns a group. Its certificate is revoked.
    RemoveNode {
        name: String,
    },
    /// The cluster's CA (at bootstrap); refused once there is one.
    SetCa {
        ca: CaCert,
    },
    /// Starts a CA rotation to `ca` (hash `hash`); refused while one is under way.
    BeginCaRotation {
        ca: CaCert,
        hash: String,
        at_s: u64,
    },
    /// Ends the rotation to the CA `hash`: it becomes the cluster's CA and the old one is no
    /// longer trusted. Refused unless every node's certificate is from it.
    FinishCaRotation {
        hash: String,
    },
    /// A node's fence device (`None`: it has none).
    SetFenceDevice {
        node: String,
        device: Option<crate::model::FenceDevice>,
    },
    /// Whether a node's fence device works (`error`: why its check failed).
    SetFenceHealth {
        node: String,
        error: Option<String>,
    },
    /// A node's watchdog timeout: the cluster's becomes the longest of them (it only grows).
    SetWatchdog {
        timeout_ms: u64,
    },
    /// The cluster's default shutdown policy (a node's own configuration overrides it).
    SetShutdownPolicy {
        policy: ShutdownPolicy,
    },
    /// Written by a node's own agent as it stops cleanly, once every resource on the node has
    /// ended: Stopped (its groups go elsewhere at once, counting no failover) or, under
    /// `freeze`, Frozen (they wait for it). What ran there is recorded Offline. Recorded Up
    /// again when the leader hears from another incarnation of its agent (Paused again if
    /// `paused`: an operator had paused it before the stop).
    NodeStopped {
        name: String,
        incarnation: u64,
        policy: ShutdownPolicy,
        #[serde(default)]
        paused: bool,
    },
    /// The leader heard from another run of a node's agent than the one whose clean stop
    /// is recorded: Up again (Paused if an operator had paused it), and after a `migrate`
    /// stop the groups that stop drained off move back. Refused unless the node's recorded
    /// stop is still that of `stopped_incarnation` (a later stop must not be undone).
    NodeBack {
        name: String,
        stopped_incarnation: u64,
    },
    /// Drops the CA key from a database made when it was kept there (once the leader holds
    /// it in its data dir); nothing when there is none.
    ForgetCaKey,
    /// Records the certificate issued to `node` (at its join, or at a renewal).
    Certify {
        node: String,
        cert: CertRecord,
    },
    CreateToken {
        token: Token,
    },
    /// Spends one use of join token `id` whose secret hashes to `hash`, at `at_s` (the
    /// leader's Unix seconds); refused, saying why, as [`Security::check`] refuses.
    UseToken {
        id: String,
        hash: String,
        at_s: u64,
    },
    RevokeToken {
        id: String,
    },
    SetNodeState {
        name: String,
        state: NodeState,
    },
    CreateGroup {
        name: String,
        props: GroupProps,
        owner: Option<String>,
    },
    /// Deletes a group and every resource in it; all must be stopped.
    DeleteGroup {
        name: String,
    },
    CreateResource {
        spec: ResourceSpec,
    },
    /// Replaces a resource's parameters (and which of them are secret), properties and
    /// dependencies.
    UpdateResource {
        name: String,
        params: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        secret: Vec<String>,
        props: ResourceProps,
        depends_on: Vec<String>,
    },
    DeleteResource {
        name: String,
    },
    /// Desired state of a whole group (all its resources) or of one resource. Online pulls
    /// the resources it depends on Online; Offline pushes its dependents Offline.
    SetPersistentState {
        target: Target,
        state: PersistentState,
    },
    /// Replaces a group's placement properties.
    SetGroupProps {
        group: String,
        props: GroupProps,
    },
    /// Moves ownership; the group's epoch grows by one. Ends a handover or a failover
    /// request.
    SetOwner {
        group: String,
        node: String,
    },
    /// The owner `from` completes a planned handover to `to` once nothing of the group runs
    /// on it: owner and epoch change, as with `SetOwner`. Refused unless `from` still owns the
    /// group and it is still moving to `to`: a move cancelled (or retargeted) while the
    /// handover was on its way must not land after all, since the group restarts on `from`.
    HandOver {
        group: String,
        from: String,
        to: String,
    },
    /// The failover manager gives a group whose owner is Down (or gone, or a witness, or
    /// stopped cleanly) to `to`: the resources are recorded stopped (`reason`), the failover
    /// is counted (at `at_ms`, leader's Unix ms; not after a clean stop), and owner and epoch
    /// change; `left_offline` also sets the desired state Offline (priority no_auto_start).
    /// Refused unless `from` still owns the group and is still Down, gone, a witness, Stopped
    /// or Frozen: a plan made before the node was recorded Up again must not take its group
    /// away.
    FailOver {
        group: String,
        from: Option<String>,
        to: String,
        reason: String,
        at_ms: u64,
        #[serde(default)]
        left_offline: bool,
    },
    /// A live move's source migrated `resources` to `node`: ownership (and the epoch) moves
    /// at this cutover, and the new owner completes each with migrate_from.
    MigratedOwner {
        group: String,
        node: String,
        resources: Vec<String>,
    },
    /// The new owner has completed (or given up on) every migrated resource: the old owner
    /// may now stop what is left of them.
    EndMigration {
        group: String,
    },
    /// Marks a group Failed with a reason and when to try it again, or clears the mark (and
    /// the failover count: a retry starts afresh).
    SetGroupFailure {
        group: String,
        failure: Option<String>,
        #[serde(default)]
        retry_at_ms: Option<u64>,
    },
    /// The owner's RCM used up a resource's restarts; refused when `from` no longer owns it.
    RequestFailover {
        group: String,
        from: String,
        reason: String,
    },
    /// Starts a planned handover to `to` (which must be Up, a possible owner, not a witness).
    MoveGroup {
        group: String,
        to: String,
        kind: MoveKind,
        /// A quick migration (save, move, restore) instead of a live one, for groups that
        /// can migrate.
        #[serde(default)]
        quick: bool,
    },
    /// Abandons a handover (its target went away, or its live migration failed: `failed`
    /// says why); the group stays with its owner.
    CancelMove {
        group: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failed: Option<String>,
    },
    /// Counts one failover (pruning those older than `failover_period_s`).
    RecordFailover {
        group: String,
        record: FailoverRecord,
    },
    /// `vigil node drain`: Paused, and the failover manager moves its groups off. `false`
    /// ends the drain; the node stays Paused.
    SetDraining {
        name: String,
        draining: bool,
    },
    /// `vigil node resume`: Up again; with `failback`, the groups drained off it move back.
    ResumeNode {
        name: String,
        failback: bool,
    },
    /// `vigil type register`: a plugin type every node knows by name. Refused when the name
    /// is taken (unregister first).
    RegisterPlugin {
        plugin: Plugin,
    },
    /// `vigil type unregister`: refused while a resource has the type.
    UnregisterPlugin {
        name: String,
    },
    /// The owner's RCM records a resource's current state. Refused when `node` is given and
    /// no longer owns the resource's group: a node that was cut off must not overwrite what
    /// the new owner recorded.
    RecordState {
        resource: String,
        state: ResourceState,
        reason: String,
        pid: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum Target {
    Group(String),
    Resource(String),
}

#[derive(Debug, Error, PartialEq, Eq, Clone, Serialize, Deserialize)]
pub enum ApplyError {
    #[error("{0}")]
    Invalid(String),
    #[error("{kind} {name:?} does not exist")]
    NotFound {
        kind: Cow<'static, str>,
        name: String,
    },
    #[error("{kind} {name:?} already exists")]
    Exists {
        kind: Cow<'static, str>,
        name: String,
    },
    #[error("{0}")]
    Conflict(String),
}

impl ApplyError {
    fn not_found(kind: &'static str, name: &str) -> Self {
        Self::NotFound {
            kind: kind.into(),
            name: name.to_string(),
        }
    }
}

type Result<T = ()> = std::result::Result<T, ApplyError>;

/// Refuses `params` for `resource` (of `type_name`) when a parameter named in `unique` has a
/// value that another resource of the type already has (OCF's `unique`).
pub fn check_unique(
    state: &ClusterState,
    resource: &str,
    type_name: &str,
    unique: &[String],
    params: &BTreeMap<String, String>,
    secret: &[String],
) -> Result {
    for name in unique {
        let Some(value) = params.get(name) else {
            continue;
        };
        let shown = if secret.contains(name) {
            crate::params::HIDDEN.to_string()
        } else {
            format!("{value:?}")
        };
        if let Some(other) = state.resources.values().find(|r| {
            r.name != resource && r.type_name == type_name && r.params.get(name) == Some(value)
        }) {
            return Err(ApplyError::Conflict(format!(
                "parameter {name} = {shown} must be unique among {type_name} resources, and resource {:?} has it",
                other.name
            )));
        }
    }
    Ok(())
}

/// Applies one command. On error the state is unchanged: every command checks all it
/// refuses before it changes anything, and debug builds (the tests and the simulator's
/// seeds) check that a refusal left the state exactly as it was.
pub fn apply(state: &mut ClusterState, cmd: &Command) -> Result {
    #[cfg(debug_assertions)]
    let before = state.clone();
    let result = apply_unchecked(state, cmd);
    #[cfg(debug_assertions)]
    if let Err(e) = &result {
        assert!(
            *state == before,
            "apply refused {cmd:?} ({e}) but changed the state"
        );
    }
    result
}

fn apply_unchecked(state: &mut ClusterState, cmd: &Command) -> Result {
    match cmd {
        Command::Bootstrap {
            cluster_name,
            cluster_id,
        } => {
            if state.cluster_name.is_some() {
                return Err(ApplyError::Conflict(format!(
                    "the database already holds cluster {:?}",
                    state.cluster_name.as_deref().unwrap_or_default()
                )));
            }
            validate_name("cluster", cluster_name).map_err(ApplyError::Invalid)?;
            state.cluster_name = Some(cluster_name.clone());
            state.cluster_id = Some(cluster_id.clone()).filter(|i| !i.is_empty());
        }
        Command::SetCa { ca } => {
            if state.security.ca.is_some() {
                return Err(ApplyError::Conflict(
                    "the cluster already has a CA".to_string(),
                ));
            }
            state.security.ca = Some(ca.clone());
        }
        Command::BeginCaRotation { ca, hash, at_s } => {
            if state.security.ca.is_none() {
                return Err(ApplyError::Conflict("the cluster has no CA".to_string()));
            }
            if let Some(r) = &state.security.rotation {
                return Err(ApplyError::Conflict(format!(
                    "a CA rotation to {} is under way (since Unix time {}); it ends when every node has a certificate from it",
                    r.hash, r.since_s
                )));
            }
            state.security.rotation = Some(crate::security::Rotation {
                ca: ca.clone(),
                hash: hash.clone(),
                since_s: *at_s,
            });
        }
        Command::FinishCaRotation { hash } => {
            let Some(r) = &state.security.rotation else {
                return Err(ApplyError::Conflict(
                    "no CA rotation is under way".to_string(),
                ));
            };
            if &r.hash != hash {
                return Err(ApplyError::Conflict(format!(
                    "the CA rotation under way is to {}, not {hash}",
                    r.hash
                )));
            }
            let behind: Vec<&str> = state
                .nodes
                .keys()
                .filter(|n| {
                    state.security.certs.get(*n).and_then(|c| c.issuer.as_ref()) != Some(hash)
                })
                .map(String::as_str)
                .collect();
            if !behind.is_empty() {
                return Err(ApplyError::Conflict(format!(
                    "not every node has a certificate from the new CA yet: {}",
                    behind.join(", ")
                )));
            }
            let r = state.security.rotation.take().expect("checked above");
            state.security.ca = Some(r.ca);
        }
        Command::SetFenceDevice { node, device } => {
            let n = state
                .nodes
                .get_mut(node)
                .ok_or_else(|| ApplyError::not_found("node", node))?;
            if let Some(d) = device
                && !d.agent.starts_with('/')
            {
                return Err(ApplyError::Invalid(format!(
                    "fence agent {:?} is not an absolute path",
                    d.agent
                )));
            }
            n.fence = device.clone();
            n.fence_error = None;
        }
        Command::SetFenceHealth { node, error } => {
            if let Some(n) = state.nodes.get_mut(node) {
                n.fence_error = error.clone();
            }
        }
        Command::SetWatchdog { timeout_ms } => {
            state.watchdog_ms = state.watchdog_ms.max(*timeout_ms);
        }
        Command::SetShutdownPolicy { policy } => state.shutdown_policy = *policy,
        Command::NodeStopped {
            name,
            incarnation,
            policy,
            paused,
        } => node_stopped(state, name, *incarnation, *policy, *paused)?,
        Command::ForgetCaKey => {
            if let Some(ca) = &mut state.security.ca {
                ca.legacy_key_pem = None;
            }
        }
        Command::Certify { node, cert } => {
            validate_name("node", node).map_err(ApplyError::Invalid)?;
            if state.security.revoked.contains(&cert.fingerprint) {
                return Err(ApplyError::Conflict(format!(
                    "certificate {} was revoked",
                    cert.fingerprint
                )));
            }
            let mut cert = cert.clone();
            if let Some(old) = state.security.certs.get(node) {
                if let Some(older) = &old.previous {
                    state.security.revoked.insert(older.clone());
                }
                cert.previous = Some(old.fingerprint.clone());
            }
            state.security.certs.insert(node.clone(), cert);
        }
        Command::CreateToken { token } => {
            if state.security.tokens.contains_key(&token.id) {
                return Err(ApplyError::Exists {
                    kind: "token".into(),
                    name: token.id.clone(),
                });
            }
            state
                .security
                .tokens
                .insert(token.id.clone(), token.clone());
        }
        Command::UseToken { id, hash, at_s } => {
            let sec: &Security = &state.security;
            sec.check(id, hash, true, *at_s)
                .map_err(|e| ApplyError::Conflict(e.to_string()))?;
            if let Some(t) = state.security.tokens.get_mut(id) {
                t.uses_left = t.uses_left.map(|u| u - 1);
            }
        }
        Command::RevokeToken { id } => {
            if state.security.tokens.remove(id).is_none() {
                return Err(ApplyError::not_found("token", id));
            }
        }
        Command::AddNode { name, address } => {
            validate_name("node", name).map_err(ApplyError::Invalid)?;
            if state.nodes.contains_key(name) {
                return Err(ApplyError::Exists {
                    kind: "node".into(),
                    name: name.clone(),
                });
            }
            state.nodes.insert(
                name.clone(),
                Node {
                    name: name.clone(),
                    address: address.clone(),
                    state: NodeState::Up,
                    witness: false,
                    draining: false,
                    fence: None,
                    fence_error: None,
                    stop: None,
                },
            );
            if let Some(cert) = state.security.certs.get_mut(name) {
                cert.pending = false;
            }
        }
        Command::MarkWitness { name } => {
            if !state.nodes.contains_key(name) {
                return Err(ApplyError::not_found("node", name));
            }
            if let Some(g) = state
                .groups
                .values()
                .find(|g| g.owner.as_ref() == Some(name))
            {
                return Err(ApplyError::Conflict(format!(
                    "node {name:?} owns group {:?}; a witness hosts no resources",
                    g.name
                )));
            }
            if let Some(n) = state.nodes.get_mut(name) {
                n.witness = true;
            }
        }
        Command::RemoveNode { name } => {
            if !state.nodes.contains_key(name) {
                return Err(ApplyError::not_found("node", name));
            }
            let owned: Vec<&str> = state
                .groups
                .values()
                .filter(|g| g.owner.as_ref() == Some(name))
                .map(|g| g.name.as_str())
                .collect();
            if !owned.is_empty() {
                return Err(ApplyError::Conflict(format!(
                    "node {name:?} owns group(s) {}; move them to another node first",
                    owned.join(", ")
                )));
            }
            state.nodes.remove(name);
            if let Some(cert) = state.security.certs.remove(name) {
                state.security.revoked.insert(cert.fingerprint);
                state.security.revoked.extend(cert.previous);
            }
            for g in state.groups.values_mut() {
                g.props.preferred_owners.retain(|n| n != name);
                g.props.possible_owners.retain(|n| n != name);
                if g.drained_from.as_ref() == Some(name) {
                    g.drained_from = None;
                }
                if g.moving.as_ref().is_some_and(|m| &m.to == name) {
                    g.moving = None;
                }
            }
        }
        Command::SetNodeState { name, state: s } => {
            let n = state
                .nodes
                .get_mut(name)
                .ok_or_else(|| ApplyError::not_found("node", name))?;
            n.state = *s;
            n.stop = None;
        }
        Command::NodeBack {
            name,
            stopped_incarnation,
        } => {
            let n = state
                .nodes
                .get_mut(name)
                .ok_or_else(|| ApplyError::not_found("node", name))?;
            let stop = match &n.stop {
                Some(stop) if stop.incarnation == *stopped_incarnation => stop.clone(),
                _ => {
                    return Err(ApplyError::Conflict(format!(
                        "node {name:?} is {}, not stopped by run {stopped_incarnation} of its agent",
                        n.state
                    )));
                }
            };
            n.stop = None;
            n.state = if stop.paused {
                NodeState::Paused
            } else {
                NodeState::Up
            };
            if !stop.paused && stop.policy == ShutdownPolicy::Migrate {
                fail_back(state, name);
            }
        }
        Command::CreateGroup { name, props, owner } => {
            validate_name("group", name).map_err(ApplyError::Invalid)?;
            if state.groups.contains_key(name) {
                return Err(ApplyError::Exists {
                    kind: "group".into(),
                    name: name.clone(),
                });
            }
            check_group_props(state, name, props)?;
            if let Some(owner) = owner {
                check_can_host(state, owner)?;
            }
            state.groups.insert(
                name.clone(),
                Group {
                    name: name.clone(),
                    props: props.clone(),
                    owner: owner.clone(),
                    epoch: u64::from(owner.is_some()),
                    failure: None,
                    retry_at_ms: None,
                    failover_request: None,
                    moving: None,
                    failovers: Vec::new(),
                    drained_from: None,
                    migration: None,
                    failed_moves: Vec::new(),
                    operator_placed: false,
                },
            );
        }
        Command::DeleteGroup { name } => {
            if !state.groups.contains_key(name) {
                return Err(ApplyError::not_found("group", name));
            }
            if let Some(r) = state.group_resources(name).find(|r| r.state.may_run()) {
                return Err(ApplyError::Conflict(format!(
                    "group {name:?} still has resource {:?} {}; take the group offline first",
                    r.name, r.state
                )));
            }
            state.groups.remove(name);
            state.resources.retain(|_, r| &r.group != name);
        }
        Command::CreateResource { spec } => create_resource(state, spec)?,
        Command::RegisterPlugin { plugin } => {
            let name = &plugin.name;
            if name.is_empty()
                || name.starts_with("ocf:")
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
            {
                return Err(ApplyError::Invalid(format!(
                    "plugin type name {name:?} is not valid: use lowercase letters, digits, '_' and '-'"
                )));
            }
            if let Some(old) = state.plugins.get(name) {
                return Err(ApplyError::Conflict(format!(
                    "type {name:?} is already registered (from {}); unregister it first",
                    old.library
                )));
            }
            state.plugins.insert(name.clone(), plugin.clone());
        }
        Command::UnregisterPlugin { name } => {
            if !state.plugins.contains_key(name) {
                return Err(ApplyError::not_found("plugin type", name));
            }
            let users: Vec<&str> = state
                .resources
                .values()
                .filter(|r| &r.type_name == name)
                .map(|r| r.name.as_str())
                .collect();
            if !users.is_empty() {
                return Err(ApplyError::Conflict(format!(
                    "type {name:?} is used by resource(s) {}; delete them first",
                    users.join(", ")
                )));
            }
            state.plugins.remove(name);
        }
        Command::UpdateResource {
            name,
            params,
            secret,
            props,
            depends_on,
        } => {
            let r = state
                .resources
                .get(name)
                .ok_or_else(|| ApplyError::not_found("resource", name))?;
            props
                .validate()
                .map_err(|e| ApplyError::Invalid(format!("resource {name:?}: {e}")))?;
            let group = r.group.clone();
            check_secret(name, params, secret)?;
            check_unique(state, name, &r.type_name, &r.unique, params, secret)?;
            check_dependencies(state, name, &group, depends_on)?;
            let r = state.resources.get_mut(name).expect("checked above");
            r.params = params.clone();
            r.secret = secret.clone();
            r.props = props.clone();
            r.depends_on = depends_on.clone();
        }
        Command::DeleteResource { name } => {
            let r = state
                .resources
                .get(name)
                .ok_or_else(|| ApplyError::not_found("resource", name))?;
            if r.state.may_run() {
                return Err(ApplyError::Conflict(format!(
                    "resource {name:?} is {}; take it offline first",
                    r.state
                )));
            }
            let dependents: Vec<_> = state.dependents(name).map(|d| d.name.as_str()).collect();
            if !dependents.is_empty() {
                return Err(ApplyError::Conflict(format!(
                    "resource {name:?} is a dependency of {}; remove that dependency first",
                    dependents.join(", ")
                )));
            }
            state.resources.remove(name);
        }
        Command::SetPersistentState {
            target,
            state: desired,
        } => {
            set_persistent(state, target, *desired)?;
        }
        Command::SetGroupProps { group, props } => {
            if !state.groups.contains_key(group) {
                return Err(ApplyError::not_found("group", group));
            }
            check_group_props(state, group, props)?;
            group_mut(state, group)?.props = props.clone();
        }
        Command::SetOwner { group, node } => {
            check_can_host(state, node)?;
            let g = group_mut(state, group)?;
            let by_operator = g
                .moving
                .as_ref()
                .is_some_and(|m| m.kind == MoveKind::Operator && &m.to == node);
            if g.owner.as_ref() != Some(node) {
                g.owner = Some(node.clone());
                g.epoch += 1;
                g.operator_placed = by_operator;
            }
            g.moving = None;
            g.failover_request = None;
            g.migration = None;
            g.failed_moves.clear();
        }
        Command::HandOver { group, from, to } => {
            let g = state
                .groups
                .get(group)
                .ok_or_else(|| ApplyError::not_found("group", group))?;
            if g.owner.as_ref() != Some(from) || g.moving.as_ref().is_none_or(|m| &m.to != to) {
                return Err(ApplyError::Conflict(format!(
                    "group {group:?} is no longer being handed from {from:?} to {to:?} (owner {}, moving to {})",
                    g.owner.as_deref().unwrap_or("none"),
                    g.moving.as_ref().map_or("nowhere", |m| m.to.as_str())
                )));
            }
            let set = Command::SetOwner {
                group: group.clone(),
                node: to.clone(),
            };
            apply(state, &set)?;
        }
        Command::FailOver {
            group,
            from,
            to,
            reason,
            at_ms,
            left_offline,
        } => fail_over(
            state,
            group,
            from.as_deref(),
            to,
            reason,
            *at_ms,
            *left_offline,
        )?,
        Command::MigratedOwner {
            group,
            node,
            resources,
        } => {
            check_can_host(state, node)?;
            let g = group_mut(state, group)?;
            let quick = g.moving.as_ref().is_some_and(|m| m.quick);
            let Some(from) = g
                .owner
                .clone()
                .filter(|_| g.moving.as_ref().is_some_and(|m| &m.to == node))
            else {
                return Err(ApplyError::Conflict(format!(
                    "group {group:?} is not being moved to {node:?}"
                )));
            };
            g.operator_placed = g
                .moving
                .as_ref()
                .is_some_and(|m| m.kind == MoveKind::Operator);
            g.owner = Some(node.clone());
            g.epoch += 1;
            g.moving = None;
            g.failover_request = None;
            g.failed_moves.clear();
            g.migration = Some(Migration {
                from,
                resources: resources.clone(),
                quick,
            });
        }
        Command::EndMigration { group } => group_mut(state, group)?.migration = None,
        Command::SetGroupFailure {
            group,
            failure,
            retry_at_ms,
        } => {
            let g = group_mut(state, group)?;
            g.failure = failure.clone();
            g.retry_at_ms = failure.as_ref().and(*retry_at_ms);
            g.failover_request = None;
            if failure.is_none() {
                g.failovers.clear();
            }
        }
        Command::RequestFailover {
            group,
            from,
            reason,
        } => {
            let g = group_mut(state, group)?;
            if g.owner.as_ref() != Some(from) {
                return Err(ApplyError::Conflict(format!(
                    "group {group:?} is no longer owned by {from:?}"
                )));
            }
            g.failover_request = Some(reason.clone());
        }
        Command::MoveGroup {
            group,
            to,
            kind,
            quick,
        } => move_group(state, group, to, *kind, *quick)?,
        Command::CancelMove { group, failed } => {
            let g = group_mut(state, group)?;
            if let (Some(m), Some(reason)) = (&g.moving, failed) {
                g.failed_moves.retain(|f| f.to != m.to);
                g.failed_moves.push(FailedMove {
                    to: m.to.clone(),
                    reason: reason.clone(),
                });
            }
            g.moving = None;
        }
        Command::RecordFailover { group, record } => {
            record_failover(group_mut(state, group)?, record.clone());
        }
        Command::SetDraining { name, draining } => {
            let n = state
                .nodes
                .get_mut(name)
                .ok_or_else(|| ApplyError::not_found("node", name))?;
            if *draining {
                if n.state == NodeState::Down {
                    return Err(ApplyError::Conflict(format!(
                        "node {name:?} is Down; its groups fail over by themselves"
                    )));
                }
                if n.state.stopped_cleanly() {
                    return Err(ApplyError::Conflict(format!(
                        "node {name:?} is {} (its agent stopped cleanly); it is drained when it is back, or its groups moved by `vigil group move`",
                        n.state
                    )));
                }
                n.state = NodeState::Paused;
            }
            n.draining = *draining;
        }
        Command::ResumeNode { name, failback } => {
            let n = state
                .nodes
                .get_mut(name)
                .ok_or_else(|| ApplyError::not_found("node", name))?;
            if n.state != NodeState::Paused {
                return Err(ApplyError::Conflict(format!(
                    "node {name:?} is {}, not Paused",
                    n.state
                )));
            }
            n.state = NodeState::Up;
            n.draining = false;
            if *failback {
                fail_back(state, name);
            }
            for g in state.groups.values_mut() {
                if g.drained_from.as_ref() == Some(name) {
                    g.drained_from = None;
                }
            }
        }
        Command::RecordState {
            resource,
            state: s,
            reason,
            pid,
            node,
        } => {
            let r = state
                .resources
                .get(resource)
                .ok_or_else(|| ApplyError::not_found("resource", resource))?;
            if let Some(node) = node {
                let owner = state.groups.get(&r.group).and_then(|g| g.owner.as_ref());
                if owner != Some(node) {
                    return Err(ApplyError::Conflict(format!(
                        "{node} may not record the state of {resource:?}: group {:?} is owned by {}",
                        r.group,
                        owner.map_or("no node", String::as_str)
                    )));
                }
            }
            let r = state.resources.get_mut(resource).expect("checked above");
            r.state = *s;
            r.state_reason = reason.clone();
            r.pid = *pid;
        }
    }
    Ok(())
}

/// The groups drained off `node` move back to it (`vigil node resume --failback`, and a
/// node back from a `migrate` stop); they are no longer drained from it.
fn fail_back(state: &mut ClusterState, node: &str) {
    let witness = state.nodes.get(node).is_some_and(|n| n.witness);
    let live = live_groups(state);
    for g in state.groups.values_mut() {
        if g.drained_from.as_deref() != Some(node) {
            continue;
        }
        g.drained_from = None;
        if !witness
            && g.moving.is_none()
            && g.migration.is_none()
            && g.owner.as_deref() != Some(node)
            && g.may_run_on(node)
        {
            g.moving = Some(Move {
                to: node.to_string(),
                kind: MoveKind::Failback,
                live: live.contains(&g.name),
                quick: false,
            });
        }
    }
}

/// `Command::NodeStopped`.
fn node_stopped(
    state: &mut ClusterState,
    name: &str,
    incarnation: u64,
    policy: ShutdownPolicy,
    paused: bool,
) -> Result {
    let n = state
        .nodes
        .get_mut(name)
        .ok_or_else(|| ApplyError::not_found("node", name))?;
    n.stop = Some(CleanStop {
        incarnation,
        policy,
        paused,
    });
    n.state = match policy {
        ShutdownPolicy::Freeze => NodeState::Frozen,
        ShutdownPolicy::Migrate | ShutdownPolicy::Failover => NodeState::Stopped,
    };
    n.draining = false;
    let owned: std::collections::BTreeSet<String> = state
        .groups
        .values()
        .filter(|g| g.owner.as_deref() == Some(name))
        .map(|g| g.name.clone())
        .collect();
    for r in state.resources.values_mut() {
        if owned.contains(&r.group) && r.state.may_run() {
            r.state = ResourceState::Offline;
            r.state_reason = format!("node {name} stopped cleanly (shutdown policy {policy})");
            r.pid = None;
        }
    }
    Ok(())
}

/// Most failovers a group remembers.
const MAX_FAILOVER_RECORDS: usize = 64;

/// Counts one failover, forgetting those older than `failover_period_s`.
fn record_failover(g: &mut Group, record: FailoverRecord) {
    let period_ms = g.props.failover_period_s.saturating_mul(1_000);
    g.failovers
        .retain(|f| f.at_ms.saturating_add(period_ms) > record.at_ms);
    g.failovers.push(record);
    let excess = g.failovers.len().saturating_sub(MAX_FAILOVER_RECORDS);
    g.failovers.drain(..excess);
}

fn group_mut<'a>(state: &'a mut ClusterState, group: &str) -> Result<&'a mut Group> {
    state
        .groups
        .get_mut(group)
        .ok_or_else(|| ApplyError::not_found("group", group))
}

fn check_group_props(state: &ClusterState, group: &str, props: &GroupProps) -> Result {
    props
        .validate()
        .map_err(|e| ApplyError::Invalid(format!("group {group:?}: {e}")))?;
    check_nodes_exist(
        state,
        props.preferred_owners.iter().chain(&props.possible_owners),
    )
}

fn move_group(
    state: &mut ClusterState,
    group: &str,
    to: &str,
    kind: MoveKind,
    quick: bool,
) -> Result {
    check_can_host(state, to)?;
    let node = &state.nodes[to];
    if node.state != NodeState::Up {
        return Err(ApplyError::Conflict(format!(
            "node {to:?} is {}; a group can only move to an Up node",
            node.state
        )));
    }
    let g = state
        .groups
        .get(group)
        .ok_or_else(|| ApplyError::not_found("group", group))?;
    if !g.may_run_on(to) {
        return Err(ApplyError::Invalid(format!(
            "node {to:?} is not a possible owner of group {group:?} (possible owners: {})",
            g.props.possible_owners.join(", ")
        )));
    }
    if g.owner.as_deref() == Some(to) {
        return Err(ApplyError::Conflict(format!(
            "group {group:?} is already owned by {to:?}"
        )));
    }
    if let Some(m) = &g.migration {
        return Err(ApplyError::Conflict(format!(
            "group {group:?} is still completing its live migration from {:?}; try again",
            m.from
        )));
    }
    // A failover move follows a failure: the group stops, nothing is migrated.
    let live = kind != MoveKind::Failover && live_groups(state).contains(group);
    if quick && !live {
        return Err(ApplyError::Invalid(format!(
            "group {group:?} cannot be quick-migrated: not every resource of it can migrate"
        )));
    }
    // Every refusal is above: from here on the command changes the state.
    let g = group_mut(state, group)?;
    g.drained_from = match kind {
        MoveKind::Drain => g.owner.clone(),
        MoveKind::Failover => g.drained_from.take(),
        MoveKind::Operator | MoveKind::Failback => None,
    };
    g.failover_request = None;
    if kind == MoveKind::Operator {
        // An operator's move is a deliberate retry.
        g.failed_moves.clear();
    }
    g.moving = Some(Move {
        to: to.to_string(),
        kind,
        live,
        quick,
    });
    Ok(())
}

/// See [`Command::FailOver`].
fn fail_over(
    state: &mut ClusterState,
    group: &str,
    from: Option<&str>,
    to: &str,
    reason: &str,
    at_ms: u64,
    left_offline: bool,
) -> Result {
    check_can_host(state, to)?;
    let g = state
        .groups
        .get(group)
        .ok_or_else(|| ApplyError::not_found("group", group))?;
    if g.owner.as_deref() != from {
        return Err(ApplyError::Conflict(format!(
            "group {group:?} is owned by {}, not {}: the failover was planned on an older state",
            g.owner.as_deref().unwrap_or("no node"),
            from.unwrap_or("no node")
        )));
    }
    let from_state = from.and_then(|f| state.nodes.get(f)).map(|n| n.state);
    if let Some(n) = from.and_then(|f| state.nodes.get(f))
        && n.state != NodeState::Down
        && !n.state.stopped_cleanly()
        && !n.witness
    {
        return Err(ApplyError::Conflict(format!(
            "node {:?} is {} again: its group {group:?} stays with it",
            n.name, n.state
        )));
    }
    for r in state.resources.values_mut().filter(|r| r.group == group) {
        if r.state.may_run() {
            r.state = ResourceState::Offline;
            r.state_reason = format!("{reason}: not running");
            r.pid = None;
        }
        if left_offline {
            r.persistent_state = PersistentState::Offline;
        }
    }
    let g = group_mut(state, group)?;
    // A clean stop is no failure: it counts toward no failover threshold.
    let clean = from_state.is_some_and(NodeState::stopped_cleanly);
    if let Some(node) = from.filter(|_| !clean) {
        let record = FailoverRecord {
            node: node.to_string(),
            at_ms,
            node_down: true,
        };
        record_failover(g, record);
    }
    g.owner = Some(to.to_string());
    g.epoch += 1;
    g.moving = None;
    g.failover_request = None;
    g.migration = None;
    g.failed_moves.clear();
    g.operator_placed = false;
    Ok(())
}

/// Groups that can move live: they have resources, and every one of them can migrate.
fn live_groups(state: &ClusterState) -> std::collections::BTreeSet<String> {
    let mut live: BTreeMap<&str, bool> = BTreeMap::new();
    for r in state.resources.values() {
        let all = live.entry(r.group.as_str()).or_insert(true);
        *all &= r.migratable;
    }
    live.into_iter()
        .filter(|(_, all)| *all)
        .map(|(g, _)| g.to_string())
        .collect()
}

/// A group's owner must be a node that may host resources.
fn check_can_host(state: &ClusterState, node: &str) -> Result {
    match state.nodes.get(node) {
        None => Err(ApplyError::not_found("node", node)),
        Some(n) if n.witness => Err(ApplyError::Invalid(format!(
            "node {node:?} is a witness: it hosts no resources"
        ))),
        Some(_) => Ok(()),
    }
}

fn check_nodes_exist<'a>(
    state: &ClusterState,
    nodes: impl IntoIterator<Item = &'a String>,
) -> Result {
    for n in nodes {
        if !state.nodes.contains_key(n) {
            return Err(ApplyError::not_found("node", n));
        }
    }
    Ok(())
}

fn create_resource(state: &mut ClusterState, spec: &ResourceSpec) -> Result {
    validate_name("resource", &spec.name).map_err(ApplyError::Invalid)?;
    if state.resources.contains_key(&spec.name) {
        return Err(ApplyError::Exists {
            kind: "resource".into(),
            name: spec.name.clone(),
        });
    }
    if !state.groups.contains_key(&spec.group) {
        return Err(ApplyError::not_found("group", &spec.group));
    }
    spec.props
        .validate()
        .map_err(|e| ApplyError::Invalid(format!("resource {:?}: {e}", spec.name)))?;
    check_dependencies(state, &spec.name, &spec.group, &spec.depends_on)?;
    check_secret(&spec.name, &spec.params, &spec.secret)?;
    check_unique(
        state,
        &spec.name,
        &spec.type_name,
        &spec.unique,
        &spec.params,
        &spec.secret,
    )?;
    state.resources.insert(
        spec.name.clone(),
        Resource {
            name: spec.name.clone(),
            group: spec.group.clone(),
            type_name: spec.type_name.clone(),
            params: spec.params.clone(),
            props: spec.props.clone(),
            depends_on: spec.depends_on.clone(),
            persistent_state: PersistentState::Offline,
            state: ResourceState::Offline,
            state_reason: String::new(),
            pid: None,
            migratable: spec.migratable,
            unique: spec.unique.clone(),
            secret: spec.secret.clone(),
        },
    );
    Ok(())
}

/// Every parameter named secret is one the resource has.
fn check_secret(resource: &str, params: &BTreeMap<String, String>, secret: &[String]) -> Result {
    match secret.iter().find(|n| !params.contains_key(*n)) {
        Some(n) => Err(ApplyError::Invalid(format!(
            "resource {resource:?}: secret parameter {n:?} has no value"
        ))),
        None => Ok(()),
    }
}

/// Every dependency exists, is in the same group, and `name` with `depends_on` closes no cycle.
fn check_dependencies(
    state: &ClusterState,
    name: &str,
    group: &str,
    depends_on: &[String],
) -> Result {
    for d in depends_on {
        let dep = state.resources.get(d).ok_or_else(|| {
            ApplyError::Invalid(format!(
                "resource {name:?} depends on {d:?}, which does not exist"
            ))
        })?;
        if dep.group != group {
            return Err(ApplyError::Invalid(format!(
                "resource {name:?} (group {group:?}) cannot depend on {d:?} of group {:?}: dependencies stay within a group",
                dep.group
            )));
        }
    }
    let mut graph: BTreeMap<&str, Vec<&str>> = state
        .group_resources(group)
        .map(|r| {
            (
                r.name.as_str(),
                r.depends_on.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    graph.insert(name, depends_on.iter().map(String::as_str).collect());
    deps::online_order(&graph)
        .map(|_| ())
        .map_err(|cycle| ApplyError::Invalid(format!("dependency cycle refused: {cycle}")))
}

fn set_persistent(state: &mut ClusterState, target: &Target, desired: PersistentState) -> Result {
    let mut todo: Vec<String> = match target {
        Target::Group(g) => {
            if !state.groups.contains_key(g) {
                return Err(ApplyError::not_found("group", g));
            }
            state.group_resources(g).map(|r| r.name.clone()).collect()
        }
        Target::Resource(r) => {
            if !state.resources.contains_key(r) {
                return Err(ApplyError::not_found("resource", r));
            }
            vec![r.clone()]
        }
    };
    // Online spreads to providers, Offline to dependents, transitively.
    let mut seen = std::collections::BTreeSet::new();
    while let Some(name) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let Some(r) = state.resources.get_mut(&name) else {
            continue;
        };
        r.persistent_state = desired;
        match desired {
            PersistentState::Online => todo.extend(r.depends_on.iter().cloned()),
            PersistentState::Offline => {
                todo.extend(state.dependents(&name).map(|d| d.name.clone()));
            }
        }
    }
    // An operator bringing anything of a Failed group online tries the group again.
    if desired == PersistentState::Online || matches!(target, Target::Group(_)) {
        let groups: std::collections::BTreeSet<String> = seen
            .iter()
            .filter_map(|r| state.resources.get(r).map(|r| r.group.clone()))
            .chain(match target {
                Target::Group(g) => Some(g.clone()),
                Target::Resource(_) => None,
            })
            .collect();
        for g in groups {
            if let Some(g) = state.groups.get_mut(&g) {
                g.failure = None;
                g.retry_at_ms = None;
                g.failovers.clear();
            }
        }
    }
    Ok(())
}
