//! The failover manager's choice of a target node: the first available preferred owner, then
//! any other Up node, never the node the group is leaving, never a witness. Group placement properties
//! (possible owners, thresholds, failback, anti-affinity) extend this function.

use crate::model::{ClusterState, NodeState};

/// The node `group` should move to when it cannot stay on `leaving`; `None` when no node can
/// take it (on a one-node cluster, always).
pub fn choose_target(state: &ClusterState, group: &str, leaving: &str) -> Option<String> {
    let g = state.groups.get(group)?;
    let available = |n: &str| {
        n != leaving
            && state
                .nodes
                .get(n)
                .is_some_and(|node| node.state == NodeState::Up && !node.witness)
    };
    g.props
        .preferred_owners
        .iter()
        .find(|n| available(n))
        .or_else(|| state.nodes.keys().find(|n| available(n)))
        .cloned()
}

/// The owner of a new group: the node that took the request if it can host resources,
/// otherwise the first Up preferred owner, otherwise any Up node that is not a witness.
pub fn initial_owner(state: &ClusterState, preferred: &[String], asked: &str) -> Option<String> {
    let can_host = |n: &str| {
        state
            .nodes
            .get(n)
            .is_some_and(|node| node.state == NodeState::Up && !node.witness)
    };
    if can_host(asked) {
        return Some(asked.to_string());
    }
    preferred
        .iter()
        .find(|n| can_host(n))
        .or_else(|| state.nodes.keys().find(|n| can_host(n)))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, apply};
    use crate::props::GroupProps;

    fn cluster(nodes: &[&str], preferred: &[&str]) -> ClusterState {
        let mut s = ClusterState::default();
        for n in nodes {
            apply(
                &mut s,
                &Command::AddNode {
                    name: n.to_string(),
                    address: format!("{n}:1"),
                },
            )
            .unwrap();
        }
        let props = GroupProps {
            preferred_owners: preferred.iter().map(|s| s.to_string()).collect(),
        };
        apply(
            &mut s,
            &Command::CreateGroup {
                name: "g".into(),
                props,
                owner: Some(nodes[0].into()),
            },
        )
        .unwrap();
        s
    }

    #[test]
    fn witnesses_never_host() {
        let mut s = cluster(&["n1", "n2", "w"], &["w", "n2"]);
        apply(&mut s, &Command::MarkWitness { name: "w".into() }).unwrap();
        assert_eq!(choose_target(&s, "g", "n1").as_deref(), Some("n2"));
        assert_eq!(initial_owner(&s, &[], "w").as_deref(), Some("n1"));
        assert_eq!(
            initial_owner(&s, &["n2".into()], "w").as_deref(),
            Some("n2")
        );
        let err = apply(
            &mut s,
            &Command::SetOwner {
                group: "g".into(),
                node: "w".into(),
            },
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "node \"w\" is a witness: it hosts no resources"
        );
    }

    #[test]
    fn one_node_has_nowhere_to_go() {
        assert_eq!(choose_target(&cluster(&["n1"], &[]), "g", "n1"), None);
    }

    #[test]
    fn first_available_preferred_owner_then_any_up_node() {
        let mut s = cluster(&["n1", "n2", "n3"], &["n1", "n3", "n2"]);
        assert_eq!(choose_target(&s, "g", "n1").as_deref(), Some("n3"));
        apply(
            &mut s,
            &Command::SetNodeState {
                name: "n3".into(),
                state: NodeState::Down,
            },
        )
        .unwrap();
        assert_eq!(choose_target(&s, "g", "n1").as_deref(), Some("n2"));
        let s = cluster(&["n1", "n2"], &[]);
        assert_eq!(choose_target(&s, "g", "n1").as_deref(), Some("n2"));
    }
}
