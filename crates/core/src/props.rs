//! Resource and group properties, with the defaults Windows Server Failover Clustering uses.
//!
//! Properties are the cluster's own settings for a resource (how often to check it, how to
//! restart it); parameters (see [`crate::params`]) belong to the resource type.

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PropError {
    #[error("unknown property {0:?}; known properties: {1}")]
    Unknown(String, String),
    #[error("{name} must be {expected}, got {value:?}")]
    Invalid {
        name: &'static str,
        expected: &'static str,
        value: String,
    },
}

/// What the RCM does when a resource fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RestartAction {
    /// Leave it Failed.
    None,
    /// Restart in place up to the threshold, then leave it Failed.
    Restart,
    /// Restart in place up to the threshold, then fail the group over to another node.
    #[default]
    RestartThenFailover,
}

impl RestartAction {
    pub fn parse(value: &str) -> Result<Self, PropError> {
        match value {
            "none" => Ok(Self::None),
            "restart" => Ok(Self::Restart),
            "restart_then_failover" => Ok(Self::RestartThenFailover),
            _ => Err(PropError::Invalid {
                name: "restart_action",
                expected: "one of none, restart, restart_then_failover",
                value: value.to_string(),
            }),
        }
    }
}

/// A resource's cluster properties. Every field has a default, so a JSON object may give any
/// subset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResourceProps {
    /// LooksAlive (the quick check) interval.
    pub looks_alive_ms: u64,
    /// IsAlive (the thorough check) interval.
    pub is_alive_ms: u64,
    pub restart_action: RestartAction,
    /// Restarts allowed within `restart_period_s` before the restart action gives up.
    pub restart_threshold: u32,
    pub restart_period_s: u64,
    pub restart_delay_ms: u64,
    /// A pending Online/Offline that reports no progress for this long is terminated.
    pub pending_timeout_ms: u64,
    /// After giving up, try again this long after the failure.
    pub retry_period_on_failure_s: u64,
    /// A call into the resource type that does not return within this is a deadlock: the
    /// RHS is killed and restarted and the resource moved to a monitor of its own.
    pub deadlock_timeout_ms: u64,
    /// Host the resource in an RHS process of its own.
    pub separate_monitor: bool,
}

impl Default for ResourceProps {
    fn default() -> Self {
        Self {
            looks_alive_ms: 5_000,
            is_alive_ms: 60_000,
            restart_action: RestartAction::RestartThenFailover,
            restart_threshold: 3,
            restart_period_s: 900,
            restart_delay_ms: 500,
            pending_timeout_ms: 180_000,
            retry_period_on_failure_s: 3_600,
            deadlock_timeout_ms: 60_000,
            separate_monitor: false,
        }
    }
}

/// Upper bound for every millisecond property: one day. Larger values are almost surely a
/// unit mistake.
const MAX_MS: u64 = 86_400_000;
/// Upper bound for every second property: thirty days.
const MAX_S: u64 = 30 * 86_400;

impl ResourceProps {
    pub const NAMES: &'static [&'static str] = &[
        "looks_alive_ms",
        "is_alive_ms",
        "restart_action",
        "restart_threshold",
        "restart_period_s",
        "restart_delay_ms",
        "pending_timeout_ms",
        "retry_period_on_failure_s",
        "deadlock_timeout_ms",
        "separate_monitor",
    ];

    /// Checks every property's range; the error names the first bad one and its value.
    pub fn validate(&self) -> Result<(), PropError> {
        range(
            "looks_alive_ms",
            self.looks_alive_ms,
            10,
            MAX_MS,
            "between 10 and 86400000",
        )?;
        range(
            "is_alive_ms",
            self.is_alive_ms,
            10,
            MAX_MS,
            "between 10 and 86400000",
        )?;
        range(
            "restart_threshold",
            self.restart_threshold.into(),
            0,
            1_000,
            "between 0 and 1000",
        )?;
        range(
            "restart_period_s",
            self.restart_period_s,
            1,
            MAX_S,
            "> 0 and at most 2592000",
        )?;
        range(
            "restart_delay_ms",
            self.restart_delay_ms,
            0,
            MAX_MS,
            "at most 86400000",
        )?;
        range(
            "pending_timeout_ms",
            self.pending_timeout_ms,
            1,
            MAX_MS,
            "> 0 and at most 86400000",
        )?;
        range(
            "retry_period_on_failure_s",
            self.retry_period_on_failure_s,
            1,
            MAX_S,
            "> 0 and at most 2592000",
        )?;
        range(
            "deadlock_timeout_ms",
            self.deadlock_timeout_ms,
            100,
            MAX_MS,
            "between 100 and 86400000",
        )?;
        Ok(())
    }

    /// Sets one property from its text form (CLI `--prop k=v`, API); on error nothing changes.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), PropError> {
        let mut next = self.clone();
        next.set_unchecked(name, value)?;
        next.validate()?;
        *self = next;
        Ok(())
    }

    fn set_unchecked(&mut self, name: &str, value: &str) -> Result<(), PropError> {
        match name {
            "looks_alive_ms" => self.looks_alive_ms = parse_num(name_of(name), value)?,
            "is_alive_ms" => self.is_alive_ms = parse_num(name_of(name), value)?,
            "restart_action" => self.restart_action = RestartAction::parse(value)?,
            "restart_threshold" => {
                self.restart_threshold = parse_num::<u32>(name_of(name), value)?;
            }
            "restart_period_s" => self.restart_period_s = parse_num(name_of(name), value)?,
            "restart_delay_ms" => self.restart_delay_ms = parse_num(name_of(name), value)?,
            "pending_timeout_ms" => self.pending_timeout_ms = parse_num(name_of(name), value)?,
            "retry_period_on_failure_s" => {
                self.retry_period_on_failure_s = parse_num(name_of(name), value)?;
            }
            "deadlock_timeout_ms" => self.deadlock_timeout_ms = parse_num(name_of(name), value)?,
            "separate_monitor" => {
                self.separate_monitor = parse_bool(value).ok_or_else(|| PropError::Invalid {
                    name: "separate_monitor",
                    expected: "true or false",
                    value: value.to_string(),
                })?;
            }
            _ => return Err(PropError::Unknown(name.to_string(), Self::NAMES.join(", "))),
        }
        Ok(())
    }
}

/// Group properties. Placement properties of the failover manager grow here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupProps {
    /// Nodes to fail over to, most preferred first.
    pub preferred_owners: Vec<String>,
}

fn name_of(name: &str) -> &'static str {
    ResourceProps::NAMES
        .iter()
        .find(|n| **n == name)
        .copied()
        .unwrap_or("property")
}

fn parse_num<T: std::str::FromStr>(name: &'static str, value: &str) -> Result<T, PropError> {
    value.trim().parse().map_err(|_| PropError::Invalid {
        name,
        expected: "a whole number",
        value: value.to_string(),
    })
}

pub fn parse_bool(value: &str) -> Option<bool> {
    match value.trim() {
        "true" | "yes" | "1" | "on" => Some(true),
        "false" | "no" | "0" | "off" => Some(false),
        _ => None,
    }
}

fn range(
    name: &'static str,
    v: u64,
    lo: u64,
    hi: u64,
    expected: &'static str,
) -> Result<(), PropError> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(PropError::Invalid {
            name,
            expected,
            value: v.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_windows_defaults_and_valid() {
        let p = ResourceProps::default();
        assert_eq!((p.looks_alive_ms, p.is_alive_ms), (5_000, 60_000));
        assert_eq!(
            (p.restart_threshold, p.restart_period_s, p.restart_delay_ms),
            (3, 900, 500)
        );
        assert_eq!(p.restart_action, RestartAction::RestartThenFailover);
        assert_eq!(
            (p.pending_timeout_ms, p.retry_period_on_failure_s),
            (180_000, 3_600)
        );
        assert_eq!(p.deadlock_timeout_ms, 60_000);
        p.validate().unwrap();
    }

    #[test]
    fn bad_values_name_the_property_and_value() {
        let mut p = ResourceProps::default();
        let err = p.set("restart_period_s", "0").unwrap_err();
        assert_eq!(
            err.to_string(),
            "restart_period_s must be > 0 and at most 2592000, got \"0\""
        );
        assert_eq!(p, ResourceProps::default(), "a refused set changes nothing");
        let err = p.set("looks_alive_ms", "soon").unwrap_err();
        assert_eq!(
            err.to_string(),
            "looks_alive_ms must be a whole number, got \"soon\""
        );
        let err = p.set("restart_action", "reboot").unwrap_err();
        assert!(err.to_string().contains("\"reboot\""), "{err}");
        let err = p.set("colour", "blue").unwrap_err();
        assert!(
            err.to_string().starts_with("unknown property \"colour\""),
            "{err}"
        );
    }

    #[test]
    fn partial_json_takes_defaults_and_unknown_fields_are_refused() {
        let p: ResourceProps = serde_json::from_str(r#"{"restart_threshold": 7}"#).unwrap();
        assert_eq!(p.restart_threshold, 7);
        assert_eq!(p.looks_alive_ms, 5_000);
        assert!(serde_json::from_str::<ResourceProps>(r#"{"restart_treshold": 7}"#).is_err());
    }
}
