//! Randomized runs: a cluster, groups and faults drawn from a seed, played through the
//! simulator while the safety invariants are checked after every event; then every fault
//! is repaired and the cluster must settle with every group Online on exactly one node.

use std::collections::BTreeMap;

use vigil_core::command::{Command, Target, apply};
use vigil_core::lease::LeaseConfig;
use vigil_core::model::{
    ClusterState, GroupState, PersistentState, ResourceSpec, ShutdownPolicy, group_state,
};
use vigil_core::props::{Failback, GroupProps, Priority, ResourceProps};

use crate::rng::Rng;
use crate::world::{EPOCH_BASE_MS, ResourceSim, Step, World};

/// How long faults are injected, and how long the repaired cluster has to settle.
const CHAOS_MS: u64 = 180_000;
const SETTLE_MS: u64 = 150_000;

fn setup(rng: &mut Rng) -> (ClusterState, BTreeMap<String, ResourceSim>, Vec<String>) {
    let mut db = ClusterState::default();
    let ok = |db: &mut ClusterState, c: Command| apply(db, &c).expect("valid setup");
    ok(
        &mut db,
        Command::Bootstrap {
            cluster_name: "random".into(),
            cluster_id: String::new(),
        },
    );
    let hosts = 2 + rng.below(3) as usize;
    let mut names: Vec<String> = (1..=hosts).map(|i| format!("n{i}")).collect();
    for n in &names {
        let add = Command::AddNode {
            name: n.clone(),
            address: format!("{n}:7440"),
        };
        ok(&mut db, add);
    }
    if hosts == 2 || rng.below(3) == 0 {
        let add = Command::AddNode {
            name: "w".into(),
            address: "w:7440".into(),
        };
        ok(&mut db, add);
        ok(&mut db, Command::MarkWitness { name: "w".into() });
    }
    let mut sims = BTreeMap::new();
    let groups = 1 + rng.below(4);
    for gi in 0..groups {
        let g = format!("g{gi}");
        let mut preferred = names.clone();
        for i in (1..preferred.len()).rev() {
            preferred.swap(i, rng.below(i as u64 + 1) as usize);
        }
        preferred.truncate(1 + rng.below(hosts as u64) as usize);
        let props = GroupProps {
            preferred_owners: preferred.clone(),
            retry_period_on_failure_s: 30,
            auto_failback: *rng.pick(&[Failback::Never, Failback::Immediate]),
            priority: *rng.pick(&[Priority::High, Priority::Medium, Priority::Low]),
            anti_affinity_class: (rng.below(2) == 0).then(|| "anti".to_string()),
            ..GroupProps::default()
        };
        ok(
            &mut db,
            Command::CreateGroup {
                name: g.clone(),
                props,
                owner: Some(preferred[0].clone()),
            },
        );
        let count = 1 + rng.below(3);
        let migratable = rng.below(3) == 0;
        for ri in 0..count {
            let r = format!("{g}r{ri}");
            let depends_on = if ri > 0 && rng.below(2) == 0 {
                vec![format!("{g}r{}", rng.below(ri))]
            } else {
                vec![]
            };
            let props = ResourceProps {
                restart_threshold: rng.below(3) as u32,
                restart_delay_ms: 100 + rng.below(900),
                pending_timeout_ms: 10_000,
                ..ResourceProps::default()
            };
            let spec = ResourceSpec {
                name: r.clone(),
                group: g.clone(),
                type_name: "sim".into(),
                params: BTreeMap::new(),
                props,
                depends_on,
                migratable,
                unique: Vec::new(),
                secret: Vec::new(),
            };
            ok(&mut db, Command::CreateResource { spec });
            sims.insert(
                r,
                ResourceSim {
                    start_ms: 20 + rng.below(500),
                    stop_ms: 10 + rng.below(300),
                    migrate_ms: 20 + rng.below(500),
                    migrate_fails: migratable && rng.below(4) == 0,
                },
            );
        }
        ok(
            &mut db,
            Command::SetPersistentState {
                target: Target::Group(g),
                state: PersistentState::Online,
            },
        );
    }
    if db.nodes.contains_key("w") {
        names.push("w".into());
    }
    (db, sims, names)
}

/// One randomized run; `Err` carries the violations or the settle failure, with the log.
pub fn run(seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let (db, sims, nodes) = setup(&mut rng);
    let resources: Vec<String> = db.resources.keys().cloned().collect();
    let groups: Vec<String> = db.groups.keys().cloned().collect();
    let hosts: Vec<String> = db
        .nodes
        .values()
        .filter(|n| !n.witness)
        .map(|n| n.name.clone())
        .collect();
    let cfg = LeaseConfig {
        interval_ms: 500,
        threshold: 4,
        watchdog_ms: 0,
    };
    let mut w = World::with_seed(db, cfg, EPOCH_BASE_MS, Some(seed));
    w.sims = sims;
    let mut t = 5_000;
    while t < CHAOS_MS {
        let step = match rng.below(19) {
            0 | 1 => Step::PowerOff(rng.pick(&nodes).clone()),
            2 | 3 => Step::PowerOn(rng.pick(&nodes).clone()),
            4 => {
                let cut = rng.pick(&nodes).clone();
                let rest: Vec<String> = nodes.iter().filter(|n| **n != cut).cloned().collect();
                Step::Partition(vec![rest, vec![cut]])
            }
            5 => Step::Heal,
            6 | 7 => Step::Fail(rng.pick(&resources).clone()),
            8 => Step::Move {
                group: rng.pick(&groups).clone(),
                to: None,
            },
            9 => Step::Operator(Command::SetDraining {
                name: rng.pick(&hosts).clone(),
                draining: true,
            }),
            10 => Step::Operator(Command::ResumeNode {
                name: rng.pick(&hosts).clone(),
                failback: rng.below(2) == 0,
            }),
            // SIGSTOP of an agent, for half a second to six.
            11 | 12 => Step::Stop(rng.pick(&nodes).clone(), 500 + rng.below(5_500)),
            // One direction of one link.
            13 => {
                let a = rng.pick(&nodes).clone();
                let others: Vec<String> = nodes.iter().filter(|n| **n != a).cloned().collect();
                let b = rng.pick(&others).clone();
                Step::Cut(a, b)
            }
            // One node's links are slow; or only its replication lags.
            14 if rng.below(2) == 0 => Step::Slow(rng.pick(&nodes).clone(), rng.below(700)),
            14 => Step::Lag(rng.pick(&nodes).clone(), rng.below(3_000)),
            // A full disk, once or a few times in a row (a reopened file can take a small
            // write and fail the next large one).
            15 => {
                let n = rng.pick(&nodes).clone();
                let first = 500 + rng.below(3_000);
                let mut at = t + first;
                for _ in 0..rng.below(3) {
                    at += 200 + rng.below(1_000);
                    let full = 500 + rng.below(2_000);
                    w.at(at, Step::DiskFull(n.clone(), full));
                    at += full;
                }
                Step::DiskFull(n, first)
            }
            // SIGTERM: a clean stop under a shutdown policy, started again soon after (or
            // only at the repair).
            16 | 17 => {
                let n = rng.pick(&nodes).clone();
                let policy = *rng.pick(&[
                    ShutdownPolicy::Migrate,
                    ShutdownPolicy::Failover,
                    ShutdownPolicy::Freeze,
                ]);
                if rng.below(3) != 0 {
                    w.at(t + 200 + rng.below(15_000), Step::PowerOn(n.clone()));
                }
                Step::CleanStop(n, policy)
            }
            // A short blip: off and back on its old disk soon after.
            _ => {
                let n = rng.pick(&nodes).clone();
                w.at(t + 200 + rng.below(4_000), Step::PowerOn(n.clone()));
                Step::PowerOff(n)
            }
        };
        w.at(t, step);
        t += 500 + rng.below(12_000);
    }
    // Repair everything, then let the cluster settle.
    w.at(CHAOS_MS, Step::Heal);
    for n in &nodes {
        w.at(CHAOS_MS, Step::PowerOn(n.clone()));
    }
    for n in &hosts {
        w.at(
            CHAOS_MS + 1,
            Step::Operator(Command::ResumeNode {
                name: n.clone(),
                failback: false,
            }),
        );
    }
    w.run_until(CHAOS_MS + SETTLE_MS);
    if std::env::var("DUMP").is_ok() {
        for (t, line) in &w.log {
            eprintln!("{:>9.3}s {line}", *t as f64 / 1000.0);
        }
    }
    let mut problems: Vec<String> = w.violations.clone();
    if problems.is_empty() {
        for g in w.db().groups.values() {
            let state = group_state(w.db(), g);
            if state != GroupState::Online {
                problems.push(format!(
                    "after settling, group {} is {state:?} on {:?} ({:?})",
                    g.name, g.owner, g.failure
                ));
            }
        }
        if let Err(e) = w.truth_matches_db() {
            problems.push(e);
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let mut report = format!("seed {seed}:\n{}", w.describe_nodes());
    for p in &problems {
        report.push_str(&format!("  {p}\n"));
    }
    for (t, line) in &w.log {
        report.push_str(&format!("{:>9.3}s {line}\n", *t as f64 / 1000.0));
    }
    Err(report)
}
