//! Scenario files: a cluster, timed steps, and the event log expected from them.
//!
//! ```text
//! # comment
//! nodes n1 n2 n3                 # hosting voters
//! witness w                      # a voter that hosts nothing
//! heartbeat 500 4                # interval_ms threshold (the defaults)
//! start-hour 21                  # virtual time 0 is 21:00 UTC (for failback windows)
//! group web preferred=n1,n2 possible=n1,n2 threshold=2 period=21600 retry=60
//!           failback=immediate|never|window:S-E priority=high anti=CLASS
//! resource web/app start=100 stop=50 threshold=3 delay=500 period=900
//!           action=restart_then_failover depends=a,b
//! online web                     # desired Online at time 0
//! at 10s power off n1            # also: power on N (from its own, old, disk),
//!                                #   partition a b | c, cut a -> b (one way), heal,
//!                                #   slow N 300ms (every message to or from N),
//!                                #   lag N 300ms (only Raft's: N's copy lags),
//!                                #   stop N for 3s (SIGSTOP of its agent, not its RHS),
//!                                #   disk N full for 3s (its database cannot write),
//!                                #   shutdown N migrate|failover|freeze (SIGTERM: a
//!                                #   clean stop; `power on N` starts it again),
//!                                #   fail R, break R on N [COUNT], fix R on N,
//!                                #   move G [to N], drain N, resume N [failback],
//!                                #   set G KEY=VALUE..., online G, offline G
//! run 60s                        # how long to simulate (default 60s)
//! expect n2 RCM web/app Offline -> OnlinePending   # in order, each a substring of
//!                                                  # one log line (without the time)
//! never RCM web/app Failed       # no log line contains this
//! final web Online n2            # group state and owner at the end; also `final web
//!                                # Failed`, `final web Offline n1`
//! ```
//!
//! Log lines read `NODE COMPONENT GROUP[/RESOURCE] [FROM -> TO ]REASON`; the simulator's
//! own lines use the component `SIM`. Safety invariants are checked after every event.

use std::collections::BTreeMap;

use vigil_core::command::{Command, Target, apply};
use vigil_core::lease::LeaseConfig;
use vigil_core::model::{ClusterState, GroupState, PersistentState, ResourceSpec, group_state};
use vigil_core::props::{GroupProps, ResourceProps};

use crate::world::{EPOCH_BASE_MS, ResourceSim, Step, World};

#[derive(Debug)]
enum Check {
    Expect(String),
    Never(String),
    Final {
        group: String,
        state: GroupState,
        owner: Option<String>,
    },
}

/// A parsed scenario.
pub struct Scenario {
    db: ClusterState,
    cfg: LeaseConfig,
    start_hour: u64,
    sims: BTreeMap<String, ResourceSim>,
    steps: Vec<(u64, Step)>,
    run_ms: u64,
    checks: Vec<Check>,
}

/// What a run produced, for the error report.
pub struct Outcome {
    pub log: Vec<(u64, String)>,
    pub violations: Vec<String>,
    pub failures: Vec<String>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.violations.is_empty() && self.failures.is_empty()
    }

    pub fn report(&self) -> String {
        let mut s = String::new();
        for v in &self.violations {
            s.push_str(&format!("INVARIANT VIOLATED: {v}\n"));
        }
        for f in &self.failures {
            s.push_str(&format!("CHECK FAILED: {f}\n"));
        }
        s.push_str("--- log ---\n");
        for (t, line) in &self.log {
            s.push_str(&format!("{:>9.3}s {line}\n", *t as f64 / 1000.0));
        }
        s
    }
}

fn parse_time(s: &str) -> Result<u64, String> {
    let bad = || format!("bad time {s:?}: use e.g. 10s, 1.5s or 250ms");
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse().map_err(|_| bad());
    }
    if let Some(m) = s.strip_suffix("min") {
        return m.parse::<u64>().map(|m| m * 60_000).map_err(|_| bad());
    }
    let secs = s.strip_suffix('s').ok_or_else(bad)?;
    let v: f64 = secs.parse().map_err(|_| bad())?;
    Ok((v * 1000.0).round() as u64)
}

fn kv(word: &str) -> Result<(&str, &str), String> {
    word.split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {word:?}"))
}

/// A group property's full name from its scenario abbreviation.
fn group_prop_name(key: &str) -> &str {
    match key {
        "preferred" => "preferred_owners",
        "possible" => "possible_owners",
        "threshold" => "failover_threshold",
        "period" => "failover_period_s",
        "retry" => "retry_period_on_failure_s",
        "failback" => "auto_failback",
        "anti" => "anti_affinity_class",
        other => other,
    }
}

impl Scenario {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut s = Scenario {
            db: ClusterState::default(),
            cfg: LeaseConfig {
                interval_ms: 500,
                threshold: 4,
                watchdog_ms: 0,
            },
            start_hour: 0,
            sims: BTreeMap::new(),
            steps: Vec::new(),
            run_ms: 60_000,
            checks: Vec::new(),
        };
        let setup = |db: &mut ClusterState, cmd: Command| {
            apply(db, &cmd).map_err(|e| format!("{cmd:?}: {e}"))
        };
        setup(
            &mut s.db,
            Command::Bootstrap {
                cluster_name: "sim".into(),
                cluster_id: String::new(),
            },
        )?;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let err = |e: String| format!("line {}: {e}: {raw:?}", i + 1);
            let rest = line[words[0].len()..].trim().to_string();
            match words[0] {
                "nodes" | "witness" => {
                    for n in &words[1..] {
                        let add = Command::AddNode {
                            name: n.to_string(),
                            address: format!("{n}:7440"),
                        };
                        setup(&mut s.db, add).map_err(err)?;
                        if words[0] == "witness" {
                            let mark = Command::MarkWitness {
                                name: n.to_string(),
                            };
                            setup(&mut s.db, mark).map_err(err)?;
                        }
                    }
                }
                "heartbeat" => {
                    let (i, t) = (words.get(1), words.get(2));
                    let (Some(i), Some(t)) = (i, t) else {
                        return Err(err("heartbeat INTERVAL_MS THRESHOLD".into()));
                    };
                    s.cfg = LeaseConfig {
                        interval_ms: i.parse().map_err(|_| err("bad interval".into()))?,
                        threshold: t.parse().map_err(|_| err("bad threshold".into()))?,
                        watchdog_ms: 0,
                    };
                }
                "start-hour" => {
                    s.start_hour = words
                        .get(1)
                        .and_then(|h| h.parse().ok())
                        .filter(|h| *h < 24)
                        .ok_or_else(|| err("start-hour 0-23".into()))?;
                }
                "group" => {
                    let name = words.get(1).ok_or_else(|| err("group NAME".into()))?;
                    let mut props = GroupProps::default();
                    for w in &words[2..] {
                        let (k, v) = kv(w).map_err(err)?;
                        props
                            .set(group_prop_name(k), v)
                            .map_err(|e| err(e.to_string()))?;
                    }
                    let owner = props
                        .preferred_owners
                        .iter()
                        .chain(s.db.nodes.keys())
                        .find(|n| s.db.nodes.get(*n).is_some_and(|n| n.can_take_groups()))
                        .cloned();
                    let cmd = Command::CreateGroup {
                        name: name.to_string(),
                        props,
                        owner,
                    };
                    setup(&mut s.db, cmd).map_err(err)?;
                }
                "resource" => {
                    let path = words.get(1).ok_or_else(|| err("resource G/R".into()))?;
                    let (group, name) = path
                        .split_once('/')
                        .ok_or_else(|| err("resource GROUP/NAME".into()))?;
                    let mut props = ResourceProps {
                        restart_delay_ms: 500,
                        ..ResourceProps::default()
                    };
                    let mut sim = ResourceSim::default();
                    let mut depends_on = Vec::new();
                    let mut migratable = false;
                    for w in &words[2..] {
                        let (k, v) = kv(w).map_err(err)?;
                        let num = || v.parse::<u64>().map_err(|_| err(format!("bad {k}")));
                        match k {
                            "start" => sim.start_ms = num()?,
                            "stop" => sim.stop_ms = num()?,
                            "migrate" => sim.migrate_ms = num()?,
                            "migrate_fails" => sim.migrate_fails = v == "yes",
                            "migratable" => migratable = v == "yes",
                            "depends" => depends_on = v.split(',').map(String::from).collect(),
                            _ => {
                                let name = match k {
                                    "threshold" => "restart_threshold",
                                    "delay" => "restart_delay_ms",
                                    "period" => "restart_period_s",
                                    "action" => "restart_action",
                                    "retry" => "retry_period_on_failure_s",
                                    other => other,
                                };
                                props.set(name, v).map_err(|e| err(e.to_string()))?;
                            }
                        }
                    }
                    s.sims.insert(name.to_string(), sim);
                    let spec = ResourceSpec {
                        name: name.to_string(),
                        group: group.to_string(),
                        type_name: "sim".into(),
                        params: BTreeMap::new(),
                        props,
                        depends_on,
                        migratable,
                        unique: Vec::new(),
                        secret: Vec::new(),
                    };
                    setup(&mut s.db, Command::CreateResource { spec }).map_err(err)?;
                }
                "online" => {
                    let g = words.get(1).ok_or_else(|| err("online GROUP".into()))?;
                    let cmd = Command::SetPersistentState {
                        target: Target::Group(g.to_string()),
                        state: PersistentState::Online,
                    };
                    setup(&mut s.db, cmd).map_err(err)?;
                }
                "at" => {
                    let t = parse_time(words.get(1).copied().unwrap_or("")).map_err(err)?;
                    let step = parse_step(&words[2..]).map_err(err)?;
                    s.steps.push((t, step));
                }
                "run" => {
                    s.run_ms = parse_time(words.get(1).copied().unwrap_or("")).map_err(err)?;
                }
                "expect" => s.checks.push(Check::Expect(rest)),
                "never" => s.checks.push(Check::Never(rest)),
                "final" => {
                    let group = words
                        .get(1)
                        .ok_or_else(|| err("final GROUP STATE".into()))?;
                    let state = match words.get(2).copied() {
                        Some("Online") => GroupState::Online,
                        Some("Offline") => GroupState::Offline,
                        Some("Failed") => GroupState::Failed,
                        Some("PartialOnline") => GroupState::PartialOnline,
                        other => return Err(err(format!("unknown group state {other:?}"))),
                    };
                    s.checks.push(Check::Final {
                        group: group.to_string(),
                        state,
                        owner: words.get(3).map(|o| o.to_string()),
                    });
                }
                other => return Err(err(format!("unknown directive {other:?}"))),
            }
        }
        Ok(s)
    }

    pub fn run(self) -> Outcome {
        let base = EPOCH_BASE_MS + self.start_hour * 3_600_000;
        let mut w = World::new(self.db, self.cfg, base);
        w.sims = self.sims;
        for (t, step) in self.steps {
            w.at(t, step);
        }
        w.run_until(self.run_ms);
        let mut failures = Vec::new();
        let mut cursor = 0;
        for c in &self.checks {
            match c {
                Check::Expect(text) => {
                    match w.log[cursor..].iter().position(|(_, l)| l.contains(text)) {
                        Some(i) => cursor += i + 1,
                        None => {
                            failures
                                .push(format!("expected (in order) a line containing {text:?}"));
                            break;
                        }
                    }
                }
                Check::Never(text) => {
                    if let Some((t, l)) = w.log.iter().find(|(_, l)| l.contains(text)) {
                        failures.push(format!("{text:?} must never happen, but at {t} ms: {l}"));
                    }
                }
                Check::Final {
                    group,
                    state,
                    owner,
                } => {
                    let Some(g) = w.db().groups.get(group) else {
                        failures.push(format!("no group {group}"));
                        continue;
                    };
                    let actual = group_state(w.db(), g);
                    if actual != *state
                        || owner.as_ref().is_some_and(|o| g.owner.as_ref() != Some(o))
                    {
                        failures.push(format!(
                            "final: expected {group} {state:?} on {owner:?}, got {actual:?} on {:?}",
                            g.owner
                        ));
                    }
                }
            }
        }
        if let Err(e) = w.truth_matches_db() {
            failures.push(e);
        }
        Outcome {
            log: w.log,
            violations: w.violations,
            failures,
        }
    }
}

fn parse_step(words: &[&str]) -> Result<Step, String> {
    Ok(match words {
        ["power", "off", n] => Step::PowerOff(n.to_string()),
        ["shutdown", n, policy] => Step::CleanStop(
            n.to_string(),
            vigil_core::model::ShutdownPolicy::parse(policy)?,
        ),
        ["power", "on", n] => Step::PowerOn(n.to_string()),
        ["heal"] => Step::Heal,
        ["stop", n, "for", t] => Step::Stop(n.to_string(), parse_time(t)?),
        ["disk", n, "full", "for", t] => Step::DiskFull(n.to_string(), parse_time(t)?),
        ["cut", a, "->", b] => Step::Cut(a.to_string(), b.to_string()),
        ["slow", n, t] => Step::Slow(n.to_string(), parse_time(t)?),
        ["lag", n, t] => Step::Lag(n.to_string(), parse_time(t)?),
        ["partition", ..] => Step::Partition(
            words[1..]
                .split(|w| *w == "|")
                .map(|side| side.iter().map(|s| s.to_string()).collect())
                .collect(),
        ),
        ["fail", r] => Step::Fail(r.to_string()),
        ["break", r, "on", n, rest @ ..] => Step::Break {
            resource: r.to_string(),
            node: n.to_string(),
            count: match rest.first() {
                Some(c) => Some(c.parse().map_err(|_| format!("bad count {c:?}"))?),
                None => None,
            },
        },
        ["fix", r, "on", n] => Step::Fix {
            resource: r.to_string(),
            node: n.to_string(),
        },
        ["move", g] => Step::Move {
            group: g.to_string(),
            to: None,
        },
        ["move", g, "to", n] => Step::Move {
            group: g.to_string(),
            to: Some(n.to_string()),
        },
        ["drain", n] => Step::Operator(Command::SetDraining {
            name: n.to_string(),
            draining: true,
        }),
        ["resume", n, rest @ ..] => Step::Operator(Command::ResumeNode {
            name: n.to_string(),
            failback: rest.first() == Some(&"failback"),
        }),
        ["online", g] | ["offline", g] => Step::Operator(Command::SetPersistentState {
            target: Target::Group(g.to_string()),
            state: if words[0] == "online" {
                PersistentState::Online
            } else {
                PersistentState::Offline
            },
        }),
        ["set", g, pairs @ ..] => {
            // Applied to the group's current properties when the step runs.
            let mut changes = Vec::new();
            for p in pairs {
                let (k, v) = kv(p)?;
                changes.push((group_prop_name(k).to_string(), v.to_string()));
            }
            Step::SetGroup {
                group: g.to_string(),
                changes,
            }
        }
        _ => {
            return Err(format!(
                "unknown step {:?}; steps are: power off|on N, partition A B | C, cut A -> B, \
                 slow N TIME, lag N TIME, stop N for TIME, disk N full for TIME, shutdown N migrate|failover|freeze, heal, fail R, break R on N [COUNT], fix R on N, \
                 move G [to N], drain N, resume N [failback], set G KEY=VALUE..., online G, \
                 offline G",
                words.join(" ")
            ));
        }
    })
}
