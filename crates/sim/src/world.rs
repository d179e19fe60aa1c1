//! The simulated cluster: nodes with their real RCM, lease and leader clock from
//! `vigil-core`, a committed database standing in for Raft, resources that take time to
//! start and stop, and a network that can be cut. Virtual time only; every choice is
//! deterministic, so a scenario or a seed always plays out the same way.
//!
//! Raft is modelled by its guarantees, not its messages: a write commits when its node can
//! reach the elected leader and the leader's side holds a majority of voters; every node on
//! that side sees the commit at once, the others keep their last copy. A leader cut off with
//! a minority keeps answering heartbeats on its side (as a real one does until it learns
//! better), but cannot commit.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use vigil_core::command::{Command, apply};
use vigil_core::event::LogEntry;
use vigil_core::failover;
use vigil_core::lease::LeaseConfig;
use vigil_core::model::{ClusterState, NodeState, ResourceState};
use vigil_core::nm::{NmAction, NodeManager, Replica};
use vigil_core::rcm::{Action, Input, Rcm, Report};

/// Unix ms at virtual time 0: 2026-01-01 00:00 UTC (a scenario may start later in the day).
pub const EPOCH_BASE_MS: u64 = 1_767_225_600_000;
/// How long an election takes once the leader is lost.
const ELECTION_MS: u64 = 400;
/// How long the agent's write loop keeps trying an RCM record while there is no leader (the
/// database's write timeout).
const RCM_WRITE_TIMEOUT_MS: u64 = 5_000;
/// A runaway guard: no run handles more events than this.
const MAX_EVENTS: u64 = 20_000_000;

/// How a resource behaves in the simulation.
#[derive(Clone, Debug)]
pub struct ResourceSim {
    pub start_ms: u64,
    pub stop_ms: u64,
    /// How long a migrate_to takes (the instance moves to the target when it ends).
    pub migrate_ms: u64,
    /// Every migrate_to fails (the instance stays where it was).
    pub migrate_fails: bool,
}

impl Default for ResourceSim {
    fn default() -> Self {
        Self {
            start_ms: 100,
            stop_ms: 50,
            migrate_ms: 200,
            migrate_fails: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// Heartbeats (every fifth pulse), lease checks and the leader's Down/Up, every
    /// interval / 10 (as the agent's Node Manager).
    Pulse,
    RcmTick(String),
    /// The database changed under this node's RCM.
    Applied(String),
    Report {
        node: String,
        resource: String,
        instance: u64,
        report: ReportKind,
    },
    Election,
    FmWake,
    /// A scripted step, by index into the world's script.
    Script(usize),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum ReportKind {
    Online,
    StartFailed,
    Offline,
    /// migrate_to ended: `target` gets the instance unless it fails or the target is off.
    Migrated {
        target: String,
    },
    /// migrate_from found no instance arrived on this node.
    ArrivalMissing,
}

struct Agent {
    rcm: Rcm,
    /// The real Node Manager.
    nm: NodeManager,
    view: ClusterState,
    /// Set while this node believes it leads.
    leads: bool,
    /// The term it knows, and where its heartbeats go.
    term: u64,
    leader: Option<String>,
    wake: Option<u64>,
    /// The index of the last write its copy has.
    applied: u64,
    /// While leading: the last instant its side held a majority (its quorum time).
    quorum_ms: Option<u64>,
    /// Per term: the last instant it heard from that term's leader (an append).
    appended: BTreeMap<u64, u64>,
}

struct SimNode {
    powered: bool,
    /// Network side: nodes talk when both are powered and on the same side.
    side: u32,
    agent: Option<Agent>,
    /// The database copy on its disk (what a restarted agent starts from).
    disk: ClusterState,
}

/// A step the scenario (or a random run) takes at a given time.
#[derive(Clone, Debug)]
pub enum Step {
    PowerOff(String),
    PowerOn(String),
    /// Sides of a partition; nodes not named stay on side 0 with the first.
    Partition(Vec<Vec<String>>),
    Heal,
    /// The resource fails wherever it runs.
    Fail(String),
    /// The next `count` starts of the resource on the node fail (`None`: all).
    Break {
        resource: String,
        node: String,
        count: Option<u32>,
    },
    Fix {
        resource: String,
        node: String,
    },
    /// An operator command, written through the leader.
    Operator(Command),
    /// `vigil group move G [--to N]`.
    Move {
        group: String,
        to: Option<String>,
    },
    /// `vigil group set G KEY=VALUE...` (scenario abbreviations allowed).
    SetGroup {
        group: String,
        changes: Vec<(String, String)>,
    },
}

pub struct World {
    pub now: u64,
    pub cfg: LeaseConfig,
    /// Virtual time 0 in Unix ms (the failover manager's clock).
    pub base_ms: u64,
    nodes: BTreeMap<String, SimNode>,
    /// The committed database.
    pub db: ClusterState,
    leader: Option<String>,
    queue: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
    script: Vec<Step>,
    pub sims: BTreeMap<String, ResourceSim>,
    /// The current Raft term, and the number of writes committed.
    term: u64,
    index: u64,
    /// Truth: where each resource's process runs (node → instance).
    running: BTreeMap<String, BTreeMap<String, u64>>,
    instance: u64,
    broken: BTreeMap<(String, String), Option<u32>>,
    /// The cluster log: (virtual ms, "node COMPONENT subject from -> to reason").
    pub log: Vec<(u64, String)>,
    pub violations: Vec<String>,
    fm_wake: Option<u64>,
    /// (resource, node): the node is ready to receive the resource by live migration.
    prepared: BTreeSet<(String, String)>,
    /// RCM records waiting for a leader, per node, in order (see [`World::write_rcm`]).
    rcm_queue: BTreeMap<String, std::collections::VecDeque<(u64, Vec<Command>)>>,
    epochs: BTreeMap<String, u64>,
    events: u64,
    pulses: u64,
}

impl World {
    /// A cluster whose database is `db` (nodes, groups, resources already in it); every
    /// node starts powered, on one side, with no lease yet; the first node leads.
    pub fn new(db: ClusterState, cfg: LeaseConfig, base_ms: u64) -> Self {
        let mut w = Self {
            now: 0,
            cfg,
            base_ms,
            nodes: BTreeMap::new(),
            db,
            leader: None,
            queue: BinaryHeap::new(),
            seq: 0,
            script: Vec::new(),
            sims: BTreeMap::new(),
            running: BTreeMap::new(),
            instance: 0,
            broken: BTreeMap::new(),
            log: Vec::new(),
            violations: Vec::new(),
            fm_wake: None,
            rcm_queue: BTreeMap::new(),
            prepared: BTreeSet::new(),
            epochs: BTreeMap::new(),
            events: 0,
            pulses: 0,
            term: 0,
            index: 0,
        };
        let names: Vec<String> = w.db.nodes.keys().cloned().collect();
        for n in &names {
            w.nodes.insert(
                n.clone(),
                SimNode {
                    powered: true,
                    side: 0,
                    agent: None,
                    disk: w.db.clone(),
                },
            );
            w.boot(n);
        }
        w.leader = names.first().cloned();
        if let Some(l) = w.leader.clone() {
            w.take_office(&l);
        }
        w.push(0, Ev::Pulse);
        w.push(0, Ev::FmWake);
        w
    }

    pub fn at(&mut self, t: u64, step: Step) {
        self.script.push(step);
        let i = self.script.len() - 1;
        self.push(t, Ev::Script(i));
    }

    fn push(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((t.max(self.now), self.seq, ev)));
    }

    /// Runs every event up to and including `until`.
    pub fn run_until(&mut self, until: u64) {
        while let Some(Reverse((t, _, _))) = self.queue.peek() {
            if *t > until {
                break;
            }
            let Reverse((t, _, ev)) = self.queue.pop().expect("peeked");
            self.now = t;
            self.events += 1;
            if self.events > MAX_EVENTS {
                self.violations
                    .push(format!("runaway: more than {MAX_EVENTS} events"));
                return;
            }
            self.handle(ev);
            self.check_invariants();
        }
        self.now = until;
    }

    /// Where each resource runs, as the processes would show it.
    pub fn running_on(&self, resource: &str) -> Vec<String> {
        self.running
            .get(resource)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn note(&mut self, node: &str, entry: &LogEntry) {
        let subject = match (&entry.group, &entry.resource) {
            (Some(g), Some(r)) => format!("{g}/{r}"),
            (Some(g), None) => g.clone(),
            (None, Some(r)) => r.clone(),
            (None, None) => "-".to_string(),
        };
        let change = match (&entry.from, &entry.to) {
            (Some(f), Some(t)) => format!("{f} -> {t} "),
            _ => String::new(),
        };
        let line = format!(
            "{node} {:?} {subject} {change}{}",
            entry.component, entry.reason
        );
        self.log.push((self.now, line));
    }

    fn say(&mut self, node: &str, what: String) {
        self.log.push((self.now, format!("{node} SIM {what}")));
    }

    fn boot(&mut self, name: &str) {
        let n = self.nodes.get_mut(name).expect("known node");
        n.agent = Some(Agent {
            rcm: Rcm::new(name),
            nm: NodeManager::new(name, self.cfg),
            view: n.disk.clone(),
            leads: false,
            term: 0,
            leader: None,
            wake: None,
            applied: 0,
            quorum_ms: None,
            appended: BTreeMap::new(),
        });
        // Nothing runs before the first lease, as in the agent.
        self.rcm_step(
            name,
            Input::Fence {
                fenced: true,
                reason: "agent started: waiting for a lease".to_string(),
            },
        );
        if let Some(l) = self.leader.clone()
            && self.connected(name, &l)
        {
            self.agent(name).leader = Some(l);
            self.sync_view(name);
        }
    }

    fn agent(&mut self, name: &str) -> &mut Agent {
        self.nodes
            .get_mut(name)
            .and_then(|n| n.agent.as_mut())
            .expect("a powered node has an agent")
    }

    fn powered(&self, name: &str) -> bool {
        self.nodes.get(name).is_some_and(|n| n.powered)
    }

    fn connected(&self, a: &str, b: &str) -> bool {
        match (self.nodes.get(a), self.nodes.get(b)) {
            (Some(x), Some(y)) => x.powered && y.powered && x.side == y.side,
            _ => false,
        }
    }

    /// The powered nodes that can reach `node` (itself included).
    fn side_of(&self, node: &str) -> Vec<String> {
        self.nodes
            .keys()
            .filter(|n| self.connected(n, node))
            .cloned()
            .collect()
    }

    fn voters(&self) -> Vec<String> {
        self.db.nodes.keys().cloned().collect()
    }

    /// The side holding a majority of the voters, if any: its powered members.
    fn majority(&self) -> Option<Vec<String>> {
        let voters = self.voters();
        let mut sides: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for v in &voters {
            if let Some(n) = self.nodes.get(v).filter(|n| n.powered) {
                sides.entry(n.side).or_default().push(v.clone());
            }
        }
        sides.into_values().find(|s| s.len() * 2 > voters.len())
    }

    fn take_office(&mut self, leader: &str) {
        let now = self.now;
        self.term += 1;
        let term = self.term;
        let a = self.agent(leader);
        a.leads = true;
        a.quorum_ms = Some(now);
        let side: Vec<String> = self.side_of(leader);
        for n in side {
            let a = self.agent(&n);
            a.leader = Some(leader.to_string());
            a.term = term;
            if n != leader {
                a.leads = false;
            }
            self.sync_view(&n);
        }
        self.say(leader, "elected leader".to_string());
        self.push(now, Ev::FmWake);
        self.flush_rcm_all();
    }

    /// RCM records, as the agent's write loop sends them: in order, and a write that finds
    /// no leader keeps trying (through elections) for up to [`RCM_WRITE_TIMEOUT_MS`].
    fn write_rcm(&mut self, n: &str, cmds: Vec<Command>) {
        let deadline = self.now + RCM_WRITE_TIMEOUT_MS;
        self.rcm_queue
            .entry(n.to_string())
            .or_default()
            .push_back((deadline, cmds));
        self.flush_rcm(n);
    }

    fn flush_rcm(&mut self, n: &str) {
        while let Some((deadline, cmds)) = self.rcm_queue.get(n).and_then(|q| q.front()).cloned() {
            if !self.powered(n) || self.now > deadline || self.write(n, cmds) {
                if let Some(q) = self.rcm_queue.get_mut(n) {
                    q.pop_front();
                }
            } else {
                break;
            }
        }
    }

    fn flush_rcm_all(&mut self) {
        let waiting: Vec<String> = self.rcm_queue.keys().cloned().collect();
        for n in waiting {
            self.flush_rcm(&n);
        }
    }

    /// After a power or network change: keep the leader if it still has a majority, else
    /// elect one after the election time.
    fn topology_changed(&mut self) {
        let majority = self.majority();
        let keep = self
            .leader
            .as_ref()
            .is_some_and(|l| majority.as_ref().is_some_and(|m| m.contains(l)));
        if keep {
            let l = self.leader.clone().expect("kept");
            // Nodes that can reach it again follow it and catch up.
            let side: Vec<String> = self.side_of(&l);
            for n in side {
                let term = self.term;
                let a = self.agent(&n);
                if a.leader.as_deref() != Some(l.as_str()) {
                    a.leader = Some(l.clone());
                    a.term = term;
                    if n != l {
                        a.leads = false;
                    }
                }
                self.sync_view(&n);
            }
            self.flush_rcm_all();
        } else if self.leader.take().is_some() || majority.is_some() {
            self.push(self.now + ELECTION_MS, Ev::Election);
        }
        // Nodes cut off from the leader they follow stop hearing from it.
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for n in names {
            if !self.powered(&n) {
                continue;
            }
            let follows = self.agent(&n).leader.clone();
            if let Some(l) = follows
                && l != n
                && !self.connected(&n, &l)
            {
                self.agent(&n).leader = None;
            }
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Pulse => self.pulse(),
            Ev::RcmTick(n) => {
                if self.powered(&n) {
                    self.agent(&n).wake = None;
                    self.rcm_step(&n, Input::Tick);
                }
            }
            Ev::Applied(n) => {
                if self.powered(&n) {
                    self.rcm_step(&n, Input::Tick);
                }
            }
            Ev::Report {
                node,
                resource,
                instance,
                report,
            } => self.report(&node, &resource, instance, report),
            Ev::Election => {
                if self.leader.is_none()
                    && let Some(m) = self.majority()
                {
                    let l = m[0].clone();
                    self.leader = Some(l.clone());
                    self.take_office(&l);
                }
            }
            Ev::FmWake => self.run_fm(),
            Ev::Script(i) => {
                let step = self.script[i].clone();
                self.script_step(step);
            }
        }
    }

    fn pulse(&mut self) {
        let period = (self.cfg.interval_ms / 10).max(1);
        self.pulses += 1;
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        let majority = self.majority();
        let now = self.now;
        for n in &names {
            if !self.powered(n) {
                continue;
            }
            // Raft's own appends: a leader whose side holds a majority has quorum contact now;
            // its followers hear from it.
            let leader = self.agent(n).leader.clone();
            let elected = self.leader.as_deref() == Some(n.as_str());
            let a = self.agent(n);
            // Only the leader of the current term gets acknowledgements (a deposed one is
            // refused with the higher term).
            if a.leads && elected && majority.as_ref().is_some_and(|m| m.contains(n)) {
                a.quorum_ms = Some(now);
            }
            if let Some(l) = leader
                && l != *n
                && self.connected(n, &l)
            {
                let term = self.agent(n).term;
                self.agent(n).appended.insert(term, now);
            }
            self.nm_tick(n);
        }
        self.push(self.now + period, Ev::Pulse);
    }

    /// What node `n` observes of its (simulated) Raft replica.
    fn replica(&mut self, n: &str) -> Replica {
        let voters = vec![self.voters()];
        let a = self.agent(n);
        Replica {
            term: a.term,
            leader: a.leader.clone(),
            leading: a.leads,
            voters,
            last_log_index: a.applied,
            applied_index: a.applied,
            quorum_ms: a.quorum_ms.filter(|_| a.leads),
            former_append_ms: a.appended.range(..a.term).map(|(_, t)| *t).max(),
            storage_failure: None,
        }
    }

    /// The node's Node Manager, every tenth of an interval; heartbeats are delivered at once.
    fn nm_tick(&mut self, n: &str) {
        let now = self.now;
        let r = self.replica(n);
        let a = self.agent(n);
        let actions = a.nm.tick(&r, &a.view, now);
        for action in actions {
            match action {
                NmAction::Send {
                    to,
                    heartbeat,
                    sent_ms,
                } => {
                    let reply = if self.connected(n, &to) && self.agent(&to).leads {
                        let r = self.replica(&to);
                        let leader = self.agent(&to);
                        leader.nm.heartbeat(&r, &leader.view, &heartbeat, now).ok()
                    } else {
                        None
                    };
                    self.agent(n).nm.answered(sent_ms, reply.as_ref(), now);
                }
                NmAction::Record(record) => {
                    let cmd = Command::SetNodeState {
                        name: record.node.clone(),
                        state: record.state,
                    };
                    if self.write(n, vec![cmd]) {
                        self.say(n, format!("NM node {} {}", record.node, record.state));
                    }
                    self.agent(n).nm.written(&record.node);
                }
                NmAction::Fence { fenced, reason } => {
                    let short = if fenced {
                        "lease expired: self-fencing"
                    } else {
                        "lease granted"
                    };
                    self.say(n, format!("NM {short}"));
                    self.rcm_step(n, Input::Fence { fenced, reason });
                }
                NmAction::Log(_) => {}
            }
        }
    }

    fn run_fm(&mut self) {
        let Some(l) = self.leader.clone() else {
            return;
        };
        let unix = self.base_ms + self.now;
        let (now, r) = (self.now, self.replica(&l));
        let down: Vec<String> = self
            .db
            .nodes
            .values()
            .filter(|n| n.state == NodeState::Down)
            .map(|n| n.name.clone())
            .collect();
        let leader = self.agent(&l);
        let lease_gone = down
            .into_iter()
            .filter(|n| leader.nm.surely_down(&r, n, now))
            .collect();
        let plan = failover::plan(&self.db, unix, &lease_gone);
        if plan.awaiting_leases {
            self.push(now + self.cfg.interval_ms / 10, Ev::FmWake);
        }
        for e in &plan.log {
            self.note(&l, e);
        }
        if let Some(w) = plan.wake_at_ms {
            let at = w.saturating_sub(self.base_ms).max(self.now + 1);
            if self.fm_wake.is_none_or(|x| x <= self.now || at < x) {
                self.fm_wake = Some(at);
                self.push(at, Ev::FmWake);
            }
        }
        if !plan.commands.is_empty() {
            self.write(&l, plan.commands);
        }
    }

    /// A write from `node`: committed if it reaches a leader with a majority, else lost.
    fn write(&mut self, node: &str, cmds: Vec<Command>) -> bool {
        let Some(l) = self.leader.clone() else {
            return false;
        };
        if !self.connected(node, &l) {
            return false;
        }
        let now = self.now;
        for c in &cmds {
            // Safety: a node is declared Down only once it surely has no lease.
            if let Command::SetNodeState {
                name,
                state: NodeState::Down,
            } = c
                && let Some(a) = self.nodes.get(name).and_then(|x| x.agent.as_ref())
                && let Some(until) = a.nm.lease_until_ms(now)
            {
                self.violations.push(format!(
                    "{now} ms: {name} recorded Down while its lease runs until {until}"
                ));
            }
            let _ = apply(&mut self.db, c);
        }
        self.index += 1;
        let side: Vec<String> = self.side_of(&l);
        for n in side {
            self.sync_view(&n);
        }
        self.push(self.now, Ev::FmWake);
        true
    }

    fn sync_view(&mut self, n: &str) {
        let db = self.db.clone();
        let now = self.now;
        let index = self.index;
        let node = self.nodes.get_mut(n).expect("known");
        node.disk = db.clone();
        if let Some(a) = node.agent.as_mut() {
            a.applied = index;
            if a.view != db {
                a.view = db;
                self.push(now, Ev::Applied(n.to_string()));
            }
        }
    }

    fn rcm_step(&mut self, n: &str, input: Input) {
        let now = self.now;
        let a = self.agent(n);
        let actions = a.rcm.step(&a.view, input, now);
        let wake = a.rcm.next_wakeup_ms(&a.view);
        let mut cmds = Vec::new();
        for action in actions {
            match action {
                Action::Online { resource } => self.rhs_online(n, &resource),
                Action::Offline { resource } => self.rhs_offline(n, &resource),
                Action::Terminate { resource } => self.rhs_terminate(n, &resource),
                Action::MigrateTo {
                    resource, target, ..
                } => self.rhs_migrate_to(n, &resource, &target),
                Action::MigrateFrom { resource, .. } => self.rhs_migrate_from(n, &resource),
                Action::MigratePrepare { resource, .. } => {
                    self.prepared.insert((resource, n.to_string()));
                }
                Action::Close { .. } => {}
                Action::Db(c) => cmds.push(c),
                Action::Log(e) => self.note(n, &e),
            }
        }
        if !cmds.is_empty() {
            self.write_rcm(n, cmds);
        }
        if let Some(t) = wake {
            let t = t.max(now + 1);
            let a = self.agent(n);
            if a.wake.is_none_or(|w| t < w) {
                a.wake = Some(t);
                self.push(t, Ev::RcmTick(n.to_string()));
            }
        }
    }

    fn sim(&self, resource: &str) -> ResourceSim {
        self.sims.get(resource).cloned().unwrap_or_default()
    }

    fn rhs_online(&mut self, n: &str, r: &str) {
        self.instance += 1;
        let inst = self.instance;
        let now = self.now;
        let others: Vec<String> = self.running_on(r).into_iter().filter(|x| x != n).collect();
        if !others.is_empty() {
            self.violations.push(format!(
                "{now} ms: {r} starts on {n} while it runs on {}",
                others.join(", ")
            ));
        }
        self.running
            .entry(r.to_string())
            .or_default()
            .insert(n.to_string(), inst);
        let key = (r.to_string(), n.to_string());
        let fails = match self.broken.get_mut(&key) {
            Some(None) => true,
            Some(Some(c)) if *c > 0 => {
                *c -= 1;
                true
            }
            _ => false,
        };
        let report = if fails {
            ReportKind::StartFailed
        } else {
            ReportKind::Online
        };
        let at = now + self.sim(r).start_ms;
        self.report_at(at, n, r, inst, report);
    }

    /// The instance of `r` running on `n` (0: none).
    fn instance_on(&self, r: &str, n: &str) -> u64 {
        self.running
            .get(r)
            .and_then(|m| m.get(n))
            .copied()
            .unwrap_or(0)
    }

    /// The RHS of `n` reports `kind` about instance `instance` of `r` at `at`.
    fn report_at(&mut self, at: u64, n: &str, r: &str, instance: u64, report: ReportKind) {
        let ev = Ev::Report {
            node: n.to_string(),
            resource: r.to_string(),
            instance,
            report,
        };
        self.push(at, ev);
    }

    fn rhs_offline(&mut self, n: &str, r: &str) {
        let inst = self.instance_on(r, n);
        let at = self.now + if inst == 0 { 0 } else { self.sim(r).stop_ms };
        self.report_at(at, n, r, inst, ReportKind::Offline);
    }

    fn rhs_migrate_to(&mut self, n: &str, r: &str, target: &str) {
        let at = self.now + self.sim(r).migrate_ms;
        let target = target.to_string();
        let inst = self.instance_on(r, n);
        self.report_at(at, n, r, inst, ReportKind::Migrated { target });
    }

    /// The instance arrived with migrate_to; completing it takes a start's time.
    fn rhs_migrate_from(&mut self, n: &str, r: &str) {
        let inst = self.instance_on(r, n);
        let at = self.now + self.sim(r).start_ms;
        let report = if inst == 0 {
            ReportKind::ArrivalMissing
        } else {
            ReportKind::Online
        };
        self.report_at(at, n, r, inst, report);
    }

    fn rhs_terminate(&mut self, n: &str, r: &str) {
        self.prepared.remove(&(r.to_string(), n.to_string()));
        if let Some(m) = self.running.get_mut(r) {
            m.remove(n);
        }
    }

    fn report(&mut self, n: &str, r: &str, instance: u64, kind: ReportKind) {
        if !self.powered(n) {
            return;
        }
        let current = self.running.get(r).and_then(|m| m.get(n)).copied();
        let (report, reason) = match kind {
            ReportKind::Online if current == Some(instance) => {
                (Report::Online, "started".to_string())
            }
            ReportKind::StartFailed if current == Some(instance) => {
                self.rhs_terminate(n, r);
                (Report::Failed, "start failed".to_string())
            }
            ReportKind::Offline if current == Some(instance) || instance == 0 => {
                self.rhs_terminate(n, r);
                (Report::Offline, "stopped".to_string())
            }
            ReportKind::Migrated { target } if current == Some(instance) && instance != 0 => {
                // The target must be reachable, prepared, and hold its lease.
                let ready = self.powered(&target)
                    && self.prepared.contains(&(r.to_string(), target.clone()))
                    && self.connected(n, &target)
                    && self
                        .nodes
                        .get(&target)
                        .and_then(|x| x.agent.as_ref())
                        .is_some_and(|a| a.nm.lease_until_ms(self.now).is_some());
                if self.sim(r).migrate_fails || !ready {
                    (Report::MigrateFailed, "migration failed".to_string())
                } else {
                    self.rhs_terminate(n, r);
                    self.prepared.remove(&(r.to_string(), target.clone()));
                    self.instance += 1;
                    let inst = self.instance;
                    self.running
                        .entry(r.to_string())
                        .or_default()
                        .insert(target.clone(), inst);
                    (Report::Migrated, format!("now running on {target}"))
                }
            }
            ReportKind::ArrivalMissing => (Report::Failed, "nothing arrived".to_string()),
            // A stale report about an instance already gone.
            _ => return,
        };
        self.rcm_step(
            n,
            Input::Report {
                resource: r.to_string(),
                report,
                reason,
                pid: None,
            },
        );
    }

    fn script_step(&mut self, step: Step) {
        match step {
            Step::PowerOff(n) => {
                if !self.powered(&n) {
                    return;
                }
                self.say(&n, "power off".to_string());
                for m in self.running.values_mut() {
                    m.remove(&n);
                }
                self.prepared.retain(|(_, on)| on != &n);
                let node = self.nodes.get_mut(&n).expect("known");
                node.powered = false;
                node.agent = None;
                self.topology_changed();
            }
            Step::PowerOn(n) => {
                if self.powered(&n) {
                    return;
                }
                self.say(&n, "power on".to_string());
                self.nodes.get_mut(&n).expect("known").powered = true;
                self.boot(&n);
                self.topology_changed();
            }
            Step::Partition(sides) => {
                self.say("-", format!("partition {sides:?}"));
                for node in self.nodes.values_mut() {
                    node.side = 0;
                }
                for (i, side) in sides.iter().enumerate() {
                    for n in side {
                        if let Some(node) = self.nodes.get_mut(n) {
                            node.side = i as u32;
                        }
                    }
                }
                self.topology_changed();
            }
            Step::Heal => {
                self.say("-", "network healed".to_string());
                for node in self.nodes.values_mut() {
                    node.side = 0;
                }
                self.topology_changed();
            }
            Step::Fail(r) => {
                for n in self.running_on(&r) {
                    self.say(&n, format!("{r} fails"));
                    self.rhs_terminate(&n, &r);
                    self.rcm_step(
                        &n,
                        Input::Report {
                            resource: r.clone(),
                            report: Report::Failed,
                            reason: "simulated failure".to_string(),
                            pid: None,
                        },
                    );
                }
            }
            Step::Break {
                resource,
                node,
                count,
            } => {
                self.broken.insert((resource, node), count);
            }
            Step::Fix { resource, node } => {
                self.broken.remove(&(resource, node));
            }
            Step::Operator(cmd) => self.operator(vec![cmd]),
            Step::SetGroup { group, changes } => {
                let Some(mut props) = self.db.groups.get(&group).map(|g| g.props.clone()) else {
                    self.say("-", format!("operator: no group {group}"));
                    return;
                };
                for (k, v) in &changes {
                    if let Err(e) = crate::scenario::group_prop(&mut props, k, v) {
                        self.say("-", format!("operator: refused: {e}"));
                        return;
                    }
                }
                self.operator(vec![Command::SetGroupProps { group, props }]);
            }
            Step::Move { group, to } => {
                let from = self.db.groups.get(&group).and_then(|g| g.owner.clone());
                let to = to.or_else(|| {
                    failover::choose_target(
                        &self.db,
                        &group,
                        from.as_deref(),
                        true,
                        self.base_ms + self.now,
                    )
                });
                match to {
                    Some(to) => self.operator(vec![Command::MoveGroup {
                        group,
                        to,
                        kind: vigil_core::model::MoveKind::Operator,
                        quick: false,
                    }]),
                    None => self.say("-", format!("operator: no node can take {group}")),
                }
            }
        }
    }

    /// An operator command through the leader; the owners' RCMs forget past failures of
    /// what it touched, as the API does.
    fn operator(&mut self, cmds: Vec<Command>) {
        let Some(l) = self.leader.clone() else {
            self.say("-", format!("operator: no leader, refused {cmds:?}"));
            return;
        };
        let mut probe = self.db.clone();
        for c in &cmds {
            if let Err(e) = apply(&mut probe, c) {
                self.say("-", format!("operator: refused: {e}"));
                return;
            }
        }
        self.say("-", format!("operator: {cmds:?}"));
        let touched: Vec<String> = self.db.resources.keys().cloned().collect();
        self.write(&l, cmds);
        let owners: BTreeSet<String> = self
            .db
            .groups
            .values()
            .filter_map(|g| g.owner.clone())
            .filter(|o| self.powered(o))
            .collect();
        for o in owners {
            self.rcm_step(
                &o,
                Input::Operator {
                    resources: touched.clone(),
                },
            );
        }
    }

    fn check_invariants(&mut self) {
        let now = self.now;
        for (r, nodes) in &self.running {
            if nodes.len() > 1 {
                let v = format!(
                    "{now} ms: {r} runs on {} at once",
                    nodes.keys().cloned().collect::<Vec<_>>().join(" and ")
                );
                if self.violations.last() != Some(&v) {
                    self.violations.push(v);
                }
            }
        }
        for g in self.db.groups.values() {
            let last = self.epochs.entry(g.name.clone()).or_insert(g.epoch);
            if g.epoch < *last {
                self.violations.push(format!(
                    "{now} ms: epoch of {} went back from {last} to {}",
                    g.name, g.epoch
                ));
            }
            *last = g.epoch;
            if let Some(o) = &g.owner
                && self.db.nodes.get(o).is_some_and(|n| n.witness)
            {
                self.violations
                    .push(format!("{now} ms: group {} owned by witness {o}", g.name));
            }
        }
        // A node whose lease has run out stops everything within one lease check.
        let grace = self.cfg.interval_ms / 10 + 1;
        for (name, node) in &self.nodes {
            let Some(a) = &node.agent else {
                continue;
            };
            let expired_long_ago = a.nm.lease_expires_ms().is_some_and(|e| now >= e + grace);
            if expired_long_ago {
                let runs: Vec<&String> = self
                    .running
                    .iter()
                    .filter(|(_, m)| m.contains_key(name))
                    .map(|(r, _)| r)
                    .collect();
                if !runs.is_empty() {
                    self.violations.push(format!(
                        "{now} ms: {name} runs {runs:?} {} ms after its lease expired",
                        now - a.nm.lease_expires_ms().unwrap_or(0)
                    ));
                }
            }
        }
    }

    /// Whether every resource recorded Online runs exactly on its group's owner.
    pub fn truth_matches_db(&self) -> Result<(), String> {
        for r in self.db.resources.values() {
            let owner = self.db.groups.get(&r.group).and_then(|g| g.owner.clone());
            let on = self.running_on(&r.name);
            if r.state == ResourceState::Online && (on.len() != 1 || Some(&on[0]) != owner.as_ref())
            {
                return Err(format!(
                    "{} is recorded Online on {owner:?} but runs on {on:?}",
                    r.name
                ));
            }
        }
        Ok(())
    }
}
