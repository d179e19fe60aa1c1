//! Resource and group properties, with the defaults Windows Server Failover Clustering uses.
//!
//! Properties are the cluster's own settings for a resource (how often to check it, how to
//! restart it); parameters (see [`crate::params`]) belong to the resource type.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PropError {
    #[error("unknown property {0:?}; known properties: {1}")]
    Unknown(String, String),
    #[error("{name} must be {expected}, got {value:?}")]
    Invalid {
        name: &'static str,
        expected: Cow<'static, str>,
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
                expected: Cow::Borrowed("one of none, restart, restart_then_failover"),
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
    /// Limits of the resource's cgroup (0: none); a node whose cgroup v2 lacks the
    /// controller refuses to run the resource.
    pub memory_max_mb: u64,
    pub cpu_weight: u64,
    pub pids_max: u64,
}

impl Default for ResourceProps {
    fn default() -> Self {
        Self {
            looks_alive_ms: LOOKS_ALIVE_MS.default,
            is_alive_ms: IS_ALIVE_MS.default,
            restart_action: RestartAction::RestartThenFailover,
            restart_threshold: RESTART_THRESHOLD.default as u32,
            restart_period_s: RESTART_PERIOD_S.default,
            restart_delay_ms: RESTART_DELAY_MS.default,
            pending_timeout_ms: PENDING_TIMEOUT_MS.default,
            retry_period_on_failure_s: RETRY_PERIOD_ON_FAILURE_S.default,
            deadlock_timeout_ms: DEADLOCK_TIMEOUT_MS.default,
            separate_monitor: false,
            memory_max_mb: MEMORY_MAX_MB.default,
            cpu_weight: CPU_WEIGHT.default,
            pids_max: PIDS_MAX.default,
        }
    }
}

/// Upper bound for every millisecond property: one day. Larger values are almost surely a
/// unit mistake.
const MAX_MS: u64 = 86_400_000;
/// Upper bound for every second property: thirty days.
const MAX_S: u64 = 30 * 86_400;

/// A numeric property, declared once: its name, Windows' default, and its range. Defaults,
/// parsing, validation and the message for a bad value all come from the declaration.
#[derive(Clone, Copy, Debug)]
struct Numeric {
    name: &'static str,
    default: u64,
    min: u64,
    max: u64,
}

impl Numeric {
    const fn new(name: &'static str, default: u64, min: u64, max: u64) -> Self {
        Self {
            name,
            default,
            min,
            max,
        }
    }

    /// What a good value is, in words.
    fn expected(self) -> String {
        match self.min {
            0 => format!("at most {}", self.max),
            1 => format!("> 0 and at most {}", self.max),
            min => format!("between {min} and {}", self.max),
        }
    }

    fn check(self, v: u64) -> Result<(), PropError> {
        if (self.min..=self.max).contains(&v) {
            Ok(())
        } else {
            Err(self.invalid(v.to_string(), self.expected()))
        }
    }

    /// Parses and checks a value given as text.
    fn parse<T: TryFrom<u64>>(self, value: &str) -> Result<T, PropError> {
        let v: u64 = value
            .trim()
            .parse()
            .map_err(|_| self.invalid(value.to_string(), "a whole number".to_string()))?;
        self.check(v)?;
        T::try_from(v).map_err(|_| self.invalid(value.to_string(), self.expected()))
    }

    fn invalid(self, value: String, expected: String) -> PropError {
        PropError::Invalid {
            name: self.name,
            expected: Cow::Owned(expected),
            value,
        }
    }
}

const LOOKS_ALIVE_MS: Numeric = Numeric::new("looks_alive_ms", 5_000, 10, MAX_MS);
const IS_ALIVE_MS: Numeric = Numeric::new("is_alive_ms", 60_000, 10, MAX_MS);
const RESTART_THRESHOLD: Numeric = Numeric::new("restart_threshold", 3, 0, 1_000);
const RESTART_PERIOD_S: Numeric = Numeric::new("restart_period_s", 900, 1, MAX_S);
const RESTART_DELAY_MS: Numeric = Numeric::new("restart_delay_ms", 500, 0, MAX_MS);
const PENDING_TIMEOUT_MS: Numeric = Numeric::new("pending_timeout_ms", 180_000, 1, MAX_MS);
const RETRY_PERIOD_ON_FAILURE_S: Numeric =
    Numeric::new("retry_period_on_failure_s", 3_600, 1, MAX_S);
const DEADLOCK_TIMEOUT_MS: Numeric = Numeric::new("deadlock_timeout_ms", 60_000, 100, MAX_MS);
/// cgroup limits: 0 is none (cgroup v2's cpu.weight runs 1 to 10000).
const MEMORY_MAX_MB: Numeric = Numeric::new("memory_max_mb", 0, 0, 1 << 30);
const CPU_WEIGHT: Numeric = Numeric::new("cpu_weight", 0, 0, 10_000);
const PIDS_MAX: Numeric = Numeric::new("pids_max", 0, 0, 1 << 22);
/// Group properties (`failover_threshold` has no default: `None`, see [`GroupProps`]).
const FAILOVER_THRESHOLD: Numeric = Numeric::new("failover_threshold", 0, 0, 1_000);
const FAILOVER_PERIOD_S: Numeric = Numeric::new("failover_period_s", 21_600, 1, MAX_S);

/// One settable property of `P`: its name (once, here or in its [`Numeric`]) and how its
/// text form is parsed into `P`. The unknown-property message, the API's list and `set`
/// all come from the table.
struct Settable<P> {
    name: &'static str,
    set: fn(&mut P, &str) -> Result<(), PropError>,
}

/// The property names of a table, comma-separated (for "unknown property" messages).
fn names<P>(table: &[Settable<P>]) -> String {
    let names: Vec<&str> = table.iter().map(|p| p.name).collect();
    names.join(", ")
}

fn set_in<P>(table: &[Settable<P>], p: &mut P, name: &str, value: &str) -> Result<(), PropError> {
    let prop = table
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| PropError::Unknown(name.to_string(), names(table)))?;
    (prop.set)(p, value)
}

/// A numeric property: its declaration (which names it) and the field it sets.
macro_rules! numeric {
    ($decl:ident, $field:ident) => {
        Settable {
            name: $decl.name,
            set: |p, v| {
                p.$field = $decl.parse(v)?;
                Ok(())
            },
        }
    };
}

const RESOURCE_PROPS: &[Settable<ResourceProps>] = &[
    numeric!(LOOKS_ALIVE_MS, looks_alive_ms),
    numeric!(IS_ALIVE_MS, is_alive_ms),
    Settable {
        name: "restart_action",
        set: |p, v| {
            p.restart_action = RestartAction::parse(v)?;
            Ok(())
        },
    },
    numeric!(RESTART_THRESHOLD, restart_threshold),
    numeric!(RESTART_PERIOD_S, restart_period_s),
    numeric!(RESTART_DELAY_MS, restart_delay_ms),
    numeric!(PENDING_TIMEOUT_MS, pending_timeout_ms),
    numeric!(RETRY_PERIOD_ON_FAILURE_S, retry_period_on_failure_s),
    numeric!(DEADLOCK_TIMEOUT_MS, deadlock_timeout_ms),
    numeric!(MEMORY_MAX_MB, memory_max_mb),
    numeric!(CPU_WEIGHT, cpu_weight),
    numeric!(PIDS_MAX, pids_max),
    Settable {
        name: "separate_monitor",
        set: |p, v| {
            p.separate_monitor = parse_bool(v).ok_or_else(|| PropError::Invalid {
                name: "separate_monitor",
                expected: Cow::Borrowed("true or false"),
                value: v.to_string(),
            })?;
            Ok(())
        },
    },
];

impl ResourceProps {
    /// The names of the properties `set` takes.
    pub fn names() -> impl Iterator<Item = &'static str> {
        RESOURCE_PROPS.iter().map(|p| p.name)
    }

    /// Checks every property's range; the error names the first bad one and its value.
    pub fn validate(&self) -> Result<(), PropError> {
        LOOKS_ALIVE_MS.check(self.looks_alive_ms)?;
        IS_ALIVE_MS.check(self.is_alive_ms)?;
        RESTART_THRESHOLD.check(self.restart_threshold.into())?;
        RESTART_PERIOD_S.check(self.restart_period_s)?;
        RESTART_DELAY_MS.check(self.restart_delay_ms)?;
        PENDING_TIMEOUT_MS.check(self.pending_timeout_ms)?;
        RETRY_PERIOD_ON_FAILURE_S.check(self.retry_period_on_failure_s)?;
        DEADLOCK_TIMEOUT_MS.check(self.deadlock_timeout_ms)?;
        MEMORY_MAX_MB.check(self.memory_max_mb)?;
        CPU_WEIGHT.check(self.cpu_weight)?;
        PIDS_MAX.check(self.pids_max)
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
        set_in(RESOURCE_PROPS, self, name, value)
    }
}

/// When a group goes back to a more preferred owner that has come back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Failback {
    #[default]
    Never,
    Immediate,
    /// Only while the hour of day (UTC) is in `start..end` (wrapping past midnight when
    /// `start > end`).
    Window {
        start: u8,
        end: u8,
    },
}

impl Failback {
    pub fn parse(value: &str) -> Result<Self, PropError> {
        let bad = || PropError::Invalid {
            name: "auto_failback",
            expected: Cow::Borrowed(
                "never, immediate or window:START-END (hours 0-23, START != END)",
            ),
            value: value.to_string(),
        };
        match value.trim() {
            "never" => Ok(Self::Never),
            "immediate" => Ok(Self::Immediate),
            w => {
                let (s, e) = w
                    .strip_prefix("window:")
                    .and_then(|r| r.split_once('-'))
                    .ok_or_else(bad)?;
                let hour = |h: &str| h.trim().parse::<u8>().ok().filter(|h| *h < 24);
                match (hour(s), hour(e)) {
                    (Some(start), Some(end)) if start != end => Ok(Self::Window { start, end }),
                    _ => Err(bad()),
                }
            }
        }
    }

    /// Whether a failback may happen at `unix_ms`.
    pub fn allows(self, unix_ms: u64) -> bool {
        match self {
            Self::Never => false,
            Self::Immediate => true,
            Self::Window { start, end } => {
                let hour = ((unix_ms / 3_600_000) % 24) as u8;
                if start < end {
                    (start..end).contains(&hour)
                } else {
                    hour >= start || hour < end
                }
            }
        }
    }

    /// The next time at or after `unix_ms` when a failback is allowed (`None`: never).
    pub fn next_allowed(self, unix_ms: u64) -> Option<u64> {
        match self {
            Self::Never => None,
            Self::Immediate => Some(unix_ms),
            Self::Window { start, .. } => {
                if self.allows(unix_ms) {
                    return Some(unix_ms);
                }
                let day = unix_ms / 86_400_000 * 86_400_000;
                let today = day + u64::from(start) * 3_600_000;
                Some(if today > unix_ms {
                    today
                } else {
                    today + 86_400_000
                })
            }
        }
    }
}

impl TryFrom<String> for Failback {
    type Error = PropError;
    fn try_from(s: String) -> Result<Self, PropError> {
        Self::parse(&s)
    }
}

impl From<Failback> for String {
    fn from(f: Failback) -> String {
        f.to_string()
    }
}

impl std::fmt::Display for Failback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Never => f.write_str("never"),
            Self::Immediate => f.write_str("immediate"),
            Self::Window { start, end } => write!(f, "window:{start}-{end}"),
        }
    }
}

/// The order in which groups are placed after a node failure and moved by a drain.
/// `NoAutoStart` groups are placed but left offline after a failover.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    High,
    #[default]
    Medium,
    Low,
    NoAutoStart,
}

impl Priority {
    pub fn parse(value: &str) -> Result<Self, PropError> {
        match value.trim() {
            "high" => Ok(Self::High),
            "medium" => Ok(Self::Medium),
            "low" => Ok(Self::Low),
            "no_auto_start" => Ok(Self::NoAutoStart),
            _ => Err(PropError::Invalid {
                name: "priority",
                expected: Cow::Borrowed("one of high, medium, low, no_auto_start"),
                value: value.to_string(),
            }),
        }
    }
}

/// Group properties: where a group may run and how the failover manager places it, with
/// Windows' defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupProps {
    /// Nodes to fail over to, most preferred first.
    pub preferred_owners: Vec<String>,
    /// Nodes the group may run on; empty means every node.
    pub possible_owners: Vec<String>,
    /// Failovers allowed within `failover_period_s` before the group stays Failed; `None`
    /// means the number of nodes that can host groups, minus one.
    pub failover_threshold: Option<u32>,
    pub failover_period_s: u64,
    /// A group left Failed (failover threshold reached, no node to go to) is tried again
    /// after this long.
    pub retry_period_on_failure_s: u64,
    pub auto_failback: Failback,
    pub priority: Priority,
    /// Groups of the same class avoid sharing a node when they can.
    pub anti_affinity_class: Option<String>,
}

impl Default for GroupProps {
    fn default() -> Self {
        Self {
            preferred_owners: Vec::new(),
            possible_owners: Vec::new(),
            failover_threshold: None,
            failover_period_s: FAILOVER_PERIOD_S.default,
            retry_period_on_failure_s: RETRY_PERIOD_ON_FAILURE_S.default,
            auto_failback: Failback::Never,
            priority: Priority::Medium,
            anti_affinity_class: None,
        }
    }
}

/// A comma-separated list; empty items are dropped.
fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// An empty value clears an optional property.
fn given(v: &str) -> Option<&str> {
    Some(v.trim()).filter(|v| !v.is_empty())
}

const GROUP_PROPS: &[Settable<GroupProps>] = &[
    Settable {
        name: "preferred_owners",
        set: |p, v| {
            p.preferred_owners = list(v);
            Ok(())
        },
    },
    Settable {
        name: "possible_owners",
        set: |p, v| {
            p.possible_owners = list(v);
            Ok(())
        },
    },
    Settable {
        name: FAILOVER_THRESHOLD.name,
        set: |p, v| {
            p.failover_threshold = given(v).map(|v| FAILOVER_THRESHOLD.parse(v)).transpose()?;
            Ok(())
        },
    },
    numeric!(FAILOVER_PERIOD_S, failover_period_s),
    numeric!(RETRY_PERIOD_ON_FAILURE_S, retry_period_on_failure_s),
    Settable {
        name: "auto_failback",
        set: |p, v| {
            p.auto_failback = Failback::parse(v)?;
            Ok(())
        },
    },
    Settable {
        name: "priority",
        set: |p, v| {
            p.priority = Priority::parse(v)?;
            Ok(())
        },
    },
    Settable {
        name: "anti_affinity_class",
        set: |p, v| {
            p.anti_affinity_class = given(v).map(str::to_string);
            Ok(())
        },
    },
];

impl GroupProps {
    /// The names of the properties `set` takes.
    pub fn names() -> impl Iterator<Item = &'static str> {
        GROUP_PROPS.iter().map(|p| p.name)
    }

    pub fn validate(&self) -> Result<(), PropError> {
        if let Some(t) = self.failover_threshold {
            FAILOVER_THRESHOLD.check(t.into())?;
        }
        FAILOVER_PERIOD_S.check(self.failover_period_s)?;
        RETRY_PERIOD_ON_FAILURE_S.check(self.retry_period_on_failure_s)?;
        if let Some(c) = &self.anti_affinity_class
            && crate::names::validate_name("anti-affinity class", c).is_err()
        {
            return Err(PropError::Invalid {
                name: "anti_affinity_class",
                expected: Cow::Borrowed("1-64 characters from a-z A-Z 0-9 - _ ."),
                value: c.clone(),
            });
        }
        Ok(())
    }

    /// Sets one property from its text form (CLI, API); on error nothing changes. Lists are
    /// comma-separated; an empty value clears a list or an optional property.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), PropError> {
        let mut next = self.clone();
        set_in(GROUP_PROPS, &mut next, name, value)?;
        next.validate()?;
        *self = next;
        Ok(())
    }
}

pub fn parse_bool(value: &str) -> Option<bool> {
    match value.trim() {
        "true" | "yes" | "1" | "on" => Some(true),
        "false" | "no" | "0" | "off" => Some(false),
        _ => None,
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
    fn each_numeric_property_is_declared_once_with_a_default_in_its_range() {
        let all = [
            LOOKS_ALIVE_MS,
            IS_ALIVE_MS,
            RESTART_THRESHOLD,
            RESTART_PERIOD_S,
            RESTART_DELAY_MS,
            PENDING_TIMEOUT_MS,
            RETRY_PERIOD_ON_FAILURE_S,
            DEADLOCK_TIMEOUT_MS,
            FAILOVER_THRESHOLD,
            FAILOVER_PERIOD_S,
        ];
        for n in all {
            if n.name != "failover_threshold" {
                // (failover_threshold's default is "none", not a number.)
                n.check(n.default).unwrap();
            }
            assert!(
                ResourceProps::names().any(|p| p == n.name)
                    || GroupProps::names().any(|p| p == n.name),
                "{} is not a property",
                n.name
            );
            // The message says the declared range, whatever the value's type.
            let mut r = ResourceProps::default();
            let mut g = GroupProps::default();
            let over = (n.max + 1).to_string();
            let err = if ResourceProps::names().any(|p| p == n.name) {
                r.set(n.name, &over).unwrap_err()
            } else {
                g.set(n.name, &over).unwrap_err()
            };
            // Each property's text goes through its own declaration.
            assert!(
                err.to_string()
                    .starts_with(&format!("{} must be {}", n.name, n.expected())),
                "{err}"
            );
        }
        let mut p = ResourceProps::default();
        let err = p.set("restart_threshold", "4294967297").unwrap_err();
        assert_eq!(
            err.to_string(),
            "restart_threshold must be at most 1000, got \"4294967297\""
        );
    }

    #[test]
    fn group_defaults_and_bad_values() {
        let mut g = GroupProps::default();
        assert_eq!(
            (g.failover_period_s, g.failover_threshold, g.priority),
            (21_600, None, Priority::Medium)
        );
        assert_eq!(g.auto_failback, Failback::Never);
        g.set("auto_failback", "window:22-6").unwrap();
        assert_eq!(g.auto_failback, Failback::Window { start: 22, end: 6 });
        let err = g.set("auto_failback", "window:5-25").unwrap_err();
        assert!(err.to_string().contains("\"window:5-25\""), "{err}");
        assert_eq!(g.auto_failback, Failback::Window { start: 22, end: 6 });
        let err = g.set("priority", "urgent").unwrap_err();
        assert!(err.to_string().contains("\"urgent\""), "{err}");
        g.set("preferred_owners", "n1, n2,n3").unwrap();
        assert_eq!(g.preferred_owners, ["n1", "n2", "n3"]);
        let json = serde_json::to_string(&g).unwrap();
        assert!(json.contains("\"window:22-6\""), "{json}");
        assert_eq!(serde_json::from_str::<GroupProps>(&json).unwrap(), g);
    }

    #[test]
    fn failback_windows_wrap_past_midnight() {
        let h = |hour: u64| hour * 3_600_000 + 86_400_000 * 100;
        let w = Failback::Window { start: 22, end: 6 };
        assert!(w.allows(h(23)) && w.allows(h(2)) && !w.allows(h(6)) && !w.allows(h(12)));
        assert_eq!(w.next_allowed(h(12)), Some(h(22)));
        assert_eq!(w.next_allowed(h(23)), Some(h(23)));
        let day = Failback::Window { start: 1, end: 3 };
        assert_eq!(day.next_allowed(h(4)), Some(h(25)));
        assert_eq!(Failback::Never.next_allowed(h(1)), None);
    }

    #[test]
    fn partial_json_takes_defaults_and_unknown_fields_are_refused() {
        let p: ResourceProps = serde_json::from_str(r#"{"restart_threshold": 7}"#).unwrap();
        assert_eq!(p.restart_threshold, 7);
        assert_eq!(p.looks_alive_ms, 5_000);
        assert!(serde_json::from_str::<ResourceProps>(r#"{"restart_treshold": 7}"#).is_err());
    }
}
