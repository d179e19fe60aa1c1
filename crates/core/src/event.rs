//! Cluster log entries: one per state change or decision, with the component that made it.

use serde::{Deserialize, Serialize};

/// The part of Vigil that wrote a log entry (the seed's component names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Component {
    /// Resource Host Subsystem: health checks and resource-type calls.
    RHS,
    /// Resource Control Manager: state changes, restarts.
    RCM,
    /// Failover Manager: where groups go.
    FM,
    /// Node Manager: membership.
    NM,
    /// Database Manager: configuration changes.
    DB,
}

/// What happened, without when and where: the agent stamps time, node and sequence number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub component: Component,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    pub reason: String,
    #[serde(default)]
    pub epoch: u64,
}

impl LogEntry {
    pub fn new(component: Component, reason: impl Into<String>) -> Self {
        Self {
            component,
            group: None,
            resource: None,
            from: None,
            to: None,
            reason: reason.into(),
            epoch: 0,
        }
    }

    pub fn group(mut self, group: &str, epoch: u64) -> Self {
        self.group = Some(group.to_string());
        self.epoch = epoch;
        self
    }

    pub fn resource(mut self, resource: &str) -> Self {
        self.resource = Some(resource.to_string());
        self
    }

    pub fn change(mut self, from: impl ToString, to: impl ToString) -> Self {
        self.from = Some(from.to_string());
        self.to = Some(to.to_string());
        self
    }
}
