//! The simulated cluster: nodes running the real RCM and Node Manager of `vigil-core` over
//! the simulator's own Raft ([`crate::raft`]), resources that take time to start and stop,
//! and a network with latency that can be cut (whole sides, or one direction of one link),
//! slowed, and whose nodes can be stopped (SIGSTOP: their messages wait) or powered off
//! (they restart from their own disk, with its old copy of the database). Virtual time only;
//! every choice comes from the seed, so a scenario or a random run always plays out the same.
//!
//! Each node's RCM and Node Manager see only that node's applied copy of the database, and
//! the Node Manager's heartbeats and the Raft messages travel with latency: a node's copy can
//! lag, a restarted node starts from its stale copy, and an election can race a lease.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use vigil_core::command::{Command, apply};
use vigil_core::event::LogEntry;
use vigil_core::exec;
use vigil_core::failover;
use vigil_core::intent;
use vigil_core::lease::LeaseConfig;
use vigil_core::model::{ClusterState, NodeState, ResourceState, ShutdownPolicy};
use vigil_core::nm::{Heartbeat, HeartbeatReply, NmInput, NodeManager, Replica as NmView};
use vigil_core::rcm::{Action, Input, Rcm, Report};

use crate::raft::{self, Disk, Replica, Role};
use crate::rng::Rng;

/// Unix ms at virtual time 0: 2026-01-01 00:00 UTC (a scenario may start later in the day).
pub const EPOCH_BASE_MS: u64 = 1_767_225_600_000;
/// How long the agent's write loop keeps trying an RCM record while there is no leader (the
/// database's write timeout).
const RCM_WRITE_TIMEOUT_MS: u64 = 5_000;
/// A runaway guard: no run handles more events than this.
const MAX_EVENTS: u64 = 20_000_000;
/// Raft's election timeout: this much, plus a node's rank (in name order) times
/// [`ELECTION_STEP_MS`], plus the seed's jitter.
const ELECTION_MIN_MS: u64 = 300;
const ELECTION_STEP_MS: u64 = 50;
/// And up to this much at random on every wait (from the node's own seed).
const ELECTION_SPREAD_MS: u64 = 150;

/// 64-bit FNV-1a: a node's own seed from its name.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

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

/// What travels between nodes (and from a node's RHS to its agent).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Net {
    Raft(raft::Msg),
    Heartbeat {
        hb: Heartbeat,
        sent_ms: u64,
    },
    HeartbeatReply {
        reply: Option<HeartbeatReply>,
        sent_ms: u64,
    },
    /// A write sent to the leader (the node itself, if it leads), numbered by its writer.
    Forward {
        id: u64,
        cmds: Vec<Command>,
    },
    /// The leader's answer: committed, or not (it does not lead, or lost its leadership).
    ForwardReply {
        id: u64,
        committed: bool,
    },
    /// The RHS of the node reports on a resource instance.
    Report {
        resource: String,
        instance: u64,
        report: ReportKind,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Ev {
    /// Every node's Node Manager and Raft timers, and the RHS deadlines: every tick.
    Tick,
    RcmTick(String),
    /// The database changed under this node's RCM.
    Applied(String),
    Deliver {
        from: String,
        to: String,
        net: Net,
    },
    /// A heartbeat's answer did not come in time.
    HeartbeatTimeout {
        node: String,
        sent_ms: u64,
    },
    /// A stopped (SIGSTOP) node continues.
    Resume(String),
    /// A full disk has room again.
    DiskBack(String),
    FmWake,
    /// A scripted step, by index into the world's script.
    Script(usize),
}

#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// The RHS ended the instance: the lease it last heard of ran out.
    Fenced,
    /// The instance failed by itself.
    Died,
}

/// A running agent: its Raft replica, Node Manager and RCM.
struct Agent {
    raft: Replica,
    nm: NodeManager,
    rcm: Rcm,
    wake: Option<u64>,
    /// Heartbeats sent and not answered yet, by send time.
    heartbeats: BTreeSet<u64>,
    /// Node records proposed, by log index.
    records: BTreeMap<u64, vigil_core::lease::NodeRecord>,
    /// RCM records waiting to be committed, in order, with when they give up: one at a
    /// time, as the agent's write loop does.
    rcm_queue: VecDeque<(u64, Vec<Command>)>,
    /// The head of `rcm_queue` is with a leader: its number, and when to send it again.
    in_flight: Option<(u64, u64)>,
    next_write: u64,
    /// Leading: writes forwarded to it, by log index, with who sent them.
    forwarded: BTreeMap<u64, (String, u64)>,
    /// The failover manager's plan being committed (its index), when this node leads.
    fm_pending: Option<u64>,
    /// The highest epoch of each group this node's copy has shown.
    epochs: BTreeMap<String, u64>,
    /// The last term in which it was said to lead.
    said_term: u64,
}

struct SimNode {
    powered: bool,
    /// Network side: nodes talk when both are powered and on the same side.
    side: u32,
    disk: Disk,
    agent: Option<Agent>,
    /// Stopped (SIGSTOP) until then: what arrives waits in `inbox`.
    stopped_until: Option<u64>,
    inbox: Vec<(String, Net)>,
    /// The lease deadline the node's RHS processes last heard of; they end everything past it.
    rhs_deadline: Option<u64>,
    /// Extra latency on every message to and from this node.
    slow_ms: u64,
    /// Extra latency on Raft's messages only (replication lags, heartbeats do not).
    lag_ms: u64,
    election_ms: u64,
    election_seed: u64,
    /// Its agent is stopping cleanly (`Step::CleanStop`).
    shutdown: Option<Shutdown>,
}

/// A clean stop under way, as `agent/src/shutdown.rs` and `service::stop_cleanly` make it.
#[derive(Clone, Debug)]
struct Shutdown {
    policy: ShutdownPolicy,
    /// A start was asked for while it stopped: it starts once stopped (as systemd queues a
    /// start job behind a stop job).
    start_after: bool,
    /// An operator had paused the node before the stop.
    paused: bool,
    phase: ShutdownPhase,
}

#[derive(Clone, Copy, Debug)]
enum ShutdownPhase {
    /// `migrate`: draining, at most until then.
    Draining { until: u64 },
    /// Every resource ended; `NodeStopped` is being written (given up at `until`).
    Recording { until: u64, incarnation: u64 },
}

/// A `migrate` stop's drain limit (the agent's `shutdown_timeout_s`, shortened).
const SHUTDOWN_DRAIN_MS: u64 = 30_000;
/// How long a stopping node waits for its `NodeStopped` record.
const STOPPED_RECORD_MS: u64 = 10_000;

/// A step the scenario (or a random run) takes at a given time.
#[derive(Clone, Debug)]
// A scenario's few steps: their size does not matter, and matching on `Operator(Command)`
// reads better unboxed.
#[allow(clippy::large_enum_variant)]
pub enum Step {
    PowerOff(String),
    PowerOn(String),
    /// Sides of a partition; nodes not named stay on side 0 with the first.
    Partition(Vec<Vec<String>>),
    /// Messages from the first node to the second are lost (the other way still works).
    Cut(String, String),
    /// Every cut, partition and slowness ends.
    Heal,
    /// Messages to and from the node take this much longer.
    Slow(String, u64),
    /// Raft's messages to and from the node take this much longer: its copy lags (a
    /// catch-up, a busy disk), while its heartbeats go through as fast as ever.
    Lag(String, u64),
    /// The node's agent is stopped (SIGSTOP) for this long; its RHS is not.
    Stop(String, u64),
    /// SIGTERM of the node's agent: a clean stop under `policy` (`shutdown.rs`). Its agent
    /// is gone afterwards (powered off, its disk kept); `PowerOn` starts it again.
    CleanStop(String, ShutdownPolicy),
    /// The node's disk is full for this long: its database cannot write, its Raft core
    /// stops, and it is reopened once there is room.
    DiskFull(String, u64),
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
    /// The database before the first log entry.
    base: ClusterState,
    voters: Vec<String>,
    /// (time, sequence) of every pending event, and the events by sequence.
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    pending: BTreeMap<u64, Ev>,
    seq: u64,
    script: Vec<Step>,
    pub sims: BTreeMap<String, ResourceSim>,
    /// Truth: where each resource's process runs (node → instance).
    running: BTreeMap<String, BTreeMap<String, u64>>,
    instance: u64,
    broken: BTreeMap<(String, String), Option<u32>>,
    /// The cluster log: (virtual ms, "node COMPONENT subject from -> to reason").
    pub log: Vec<(u64, String)>,
    pub violations: Vec<String>,
    /// (resource, node): the node is ready to receive the resource by live migration.
    prepared: BTreeSet<(String, String)>,
    /// Links that lose messages (from, to).
    cuts: BTreeSet<(String, String)>,
    /// When the last message on each connection (from, to, Raft or not) arrives: each keeps
    /// its order, as TCP does; Raft's and the heartbeats' are different connections.
    link_free: BTreeMap<(String, String, bool), u64>,
    rng: Rng,
    /// Up to this much random latency on every message (0: every message takes 1 ms).
    jitter_ms: u64,
    events: u64,
}

impl World {
    /// A cluster whose database is `db` (nodes, groups, resources already in it); every
    /// node starts powered, on one side, with no lease yet; the first node leads.
    pub fn new(db: ClusterState, cfg: LeaseConfig, base_ms: u64) -> Self {
        Self::with_seed(db, cfg, base_ms, None)
    }

    /// The same, with latency jitter and election timeouts drawn from `seed`.
    pub fn with_seed(db: ClusterState, cfg: LeaseConfig, base_ms: u64, seed: Option<u64>) -> Self {
        let voters: Vec<String> = db.nodes.keys().cloned().collect();
        let mut w = Self {
            now: 0,
            cfg,
            base_ms,
            nodes: BTreeMap::new(),
            base: db,
            voters: voters.clone(),
            queue: BinaryHeap::new(),
            pending: BTreeMap::new(),
            seq: 0,
            script: Vec::new(),
            sims: BTreeMap::new(),
            running: BTreeMap::new(),
            instance: 0,
            broken: BTreeMap::new(),
            log: Vec::new(),
            violations: Vec::new(),
            prepared: BTreeSet::new(),
            cuts: BTreeSet::new(),
            link_free: BTreeMap::new(),
            rng: Rng::new(seed.unwrap_or(0)),
            jitter_ms: if seed.is_some() { 20 } else { 0 },
            events: 0,
        };
        for (rank, n) in voters.iter().enumerate() {
            let jitter = if seed.is_some() { w.rng.below(200) } else { 0 };
            let node = SimNode {
                powered: true,
                side: 0,
                disk: Disk::default(),
                agent: None,
                stopped_until: None,
                inbox: Vec::new(),
                rhs_deadline: None,
                slow_ms: 0,
                lag_ms: 0,
                election_ms: ELECTION_MIN_MS + rank as u64 * ELECTION_STEP_MS + jitter,
                election_seed: seed.unwrap_or(0) ^ fnv(n),
                shutdown: None,
            };
            w.nodes.insert(n.clone(), node);
            w.boot(n);
        }
        if let Some(first) = voters.first().cloned() {
            let now = w.now;
            let out = w.agent(&first).raft.lead_from_start(now);
            w.say_elected(&first);
            w.send_raft(&first, out);
            w.applied(&first);
        }
        w.push(0, Ev::Tick);
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
        self.queue.push(Reverse((t.max(self.now), self.seq)));
        self.pending.insert(self.seq, ev);
    }

    /// Runs every event up to and including `until`.
    pub fn run_until(&mut self, until: u64) {
        while let Some(Reverse((t, _))) = self.queue.peek() {
            if *t > until {
                break;
            }
            let Reverse((t, seq)) = self.queue.pop().expect("peeked");
            let ev = self.pending.remove(&seq).expect("queued with its event");
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

    /// The cluster's database as its leader (the most current node) has applied it.
    pub fn db(&self) -> &ClusterState {
        let best = self
            .nodes
            .values()
            .filter_map(|n| n.agent.as_ref())
            .max_by_key(|a| (a.raft.role == Role::Leader, a.raft.term(), a.raft.applied))
            .map(|a| &a.raft.state);
        best.unwrap_or(&self.base)
    }

    /// Where each resource's process runs, as the processes would show it.
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

    /// Starts the node's agent from its disk: its copy is what its log held when it stopped.
    fn boot(&mut self, name: &str) {
        let now = self.now;
        let n = self.nodes.get_mut(name).expect("known node");
        let raft = Replica::start(
            name,
            self.voters.clone(),
            self.base.clone(),
            n.disk.clone(),
            raft::Election {
                min_ms: n.election_ms,
                spread_ms: ELECTION_SPREAD_MS,
                seed: n.election_seed,
            },
            now,
        );
        let epochs = raft
            .state
            .groups
            .values()
            .map(|g| (g.name.clone(), g.epoch))
            .collect();
        n.agent = Some(Agent {
            raft,
            // Every start is another incarnation (a heartbeat says which).
            nm: NodeManager::new(name, self.cfg).with_incarnation(now + 1),
            rcm: Rcm::new(name),
            wake: None,
            heartbeats: BTreeSet::new(),
            records: BTreeMap::new(),
            rcm_queue: VecDeque::new(),
            in_flight: None,
            next_write: 1,
            forwarded: BTreeMap::new(),
            fm_pending: None,
            epochs,
            said_term: 0,
        });
        // Nothing runs before the first lease, as in the agent.
        self.rcm_step(
            name,
            Input::Fence {
                fenced: true,
                reason: "agent started: waiting for a lease".to_string(),
            },
        );
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

    fn stopped(&self, name: &str) -> bool {
        self.nodes
            .get(name)
            .is_some_and(|n| n.stopped_until.is_some())
    }

    /// Whether a message from `a` gets to `b` now.
    fn reaches(&self, a: &str, b: &str) -> bool {
        match (self.nodes.get(a), self.nodes.get(b)) {
            (Some(x), Some(y)) => {
                x.powered
                    && y.powered
                    && x.side == y.side
                    && !self.cuts.contains(&(a.to_string(), b.to_string()))
            }
            _ => false,
        }
    }

    /// Sends `net` from `from` to `to`, with latency; lost if the link is down.
    fn send(&mut self, from: &str, to: &str, net: Net) {
        if !self.reaches(from, to) {
            return;
        }
        let jitter = if self.jitter_ms > 0 {
            self.rng.below(self.jitter_ms + 1)
        } else {
            0
        };
        let mut slow = self.nodes[from].slow_ms + self.nodes[to].slow_ms;
        if matches!(net, Net::Raft(_)) {
            slow += self.nodes[from].lag_ms + self.nodes[to].lag_ms;
        }
        let link = (
            from.to_string(),
            to.to_string(),
            matches!(net, Net::Raft(_)),
        );
        let at =
            (self.now + 1 + jitter + slow).max(self.link_free.get(&link).copied().unwrap_or(0));
        self.link_free.insert(link, at);
        let ev = Ev::Deliver {
            from: from.to_string(),
            to: to.to_string(),
            net,
        };
        self.push(at, ev);
    }

    fn send_raft(&mut self, from: &str, out: raft::Out) {
        for (to, msg) in out {
            self.send(from, &to, Net::Raft(msg));
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Tick => self.tick(),
            Ev::RcmTick(n) => {
                if self.powered(&n) && !self.stopped(&n) {
                    self.agent(&n).wake = None;
                    self.rcm_step(&n, Input::Tick);
                }
            }
            Ev::Applied(n) => {
                if self.powered(&n) && !self.stopped(&n) {
                    self.rcm_step(&n, Input::Tick);
                }
            }
            Ev::Deliver { from, to, net } => {
                if !self.reaches(&from, &to) && !matches!(net, Net::Report { .. }) {
                    return;
                }
                if self.stopped(&to) {
                    self.nodes
                        .get_mut(&to)
                        .expect("known")
                        .inbox
                        .push((from, net));
                } else {
                    self.receive(&to, &from, net);
                }
            }
            Ev::HeartbeatTimeout { node, sent_ms } => {
                if self.powered(&node)
                    && !self.stopped(&node)
                    && self.agent(&node).heartbeats.remove(&sent_ms)
                {
                    let answered = NmInput::Answered {
                        sent_ms,
                        reply: None,
                    };
                    self.nm_inform(&node, answered);
                }
            }
            Ev::Resume(n) => self.resume(&n),
            Ev::DiskBack(n) => {
                let now = self.now;
                if self.powered(&n) && self.agent(&n).raft.broken {
                    self.say(&n, "disk has room again: database reopened".to_string());
                    self.agent(&n).raft.reopen(now);
                }
            }
            Ev::FmWake => self.run_fm(),
            Ev::Script(i) => {
                let step = self.script[i].clone();
                self.script_step(step);
            }
        }
    }

    /// A stopped node continues: it handles what waited for it, in order of arrival.
    fn resume(&mut self, n: &str) {
        let Some(node) = self.nodes.get_mut(n) else {
            return;
        };
        if node.stopped_until.is_none_or(|t| t > self.now) {
            return;
        }
        node.stopped_until = None;
        let waiting = std::mem::take(&mut node.inbox);
        self.say(n, format!("continues ({} messages waited)", waiting.len()));
        for (from, net) in waiting {
            if self.powered(n) {
                self.receive(n, &from, net);
            }
        }
        // Its RCM's timers that fell due while it was stopped run now.
        if self.powered(n) {
            self.agent(n).wake = None;
            self.rcm_step(n, Input::Tick);
        }
    }

    fn receive(&mut self, to: &str, from: &str, net: Net) {
        if !self.powered(to) {
            return;
        }
        let now = self.now;
        match net {
            Net::Raft(msg) => {
                let out = self.agent(to).raft.handle(msg, now);
                self.send_raft(to, out);
                self.applied(to);
            }
            Net::Heartbeat { hb, sent_ms } => {
                let out = exec::nm_step(&mut On { w: self, n: to }, NmInput::Heartbeat(hb));
                let reply = out.reply.and_then(Result::ok);
                self.send(to, from, Net::HeartbeatReply { reply, sent_ms });
            }
            Net::HeartbeatReply { reply, sent_ms } => {
                if self.agent(to).heartbeats.remove(&sent_ms) {
                    self.nm_inform(to, NmInput::Answered { sent_ms, reply });
                }
            }
            Net::Forward { id, cmds } => match self.agent(to).raft.propose(cmds, now) {
                Some((index, out)) => {
                    self.agent(to)
                        .forwarded
                        .insert(index, (from.to_string(), id));
                    self.send_raft(to, out);
                    self.applied(to);
                }
                None => self.send(
                    to,
                    from,
                    Net::ForwardReply {
                        id,
                        committed: false,
                    },
                ),
            },
            Net::ForwardReply { id, committed } => {
                let a = self.agent(to);
                if a.in_flight.is_some_and(|(i, _)| i == id) {
                    a.in_flight = None;
                    if committed {
                        a.rcm_queue.pop_front();
                    }
                    self.flush_rcm(to);
                }
            }
            Net::Report {
                resource,
                instance,
                report,
            } => self.report(to, &resource, instance, report),
        }
    }

    /// Applies what the node's replica has committed; its RCM, Node Manager and failover
    /// manager hear of it.
    fn applied(&mut self, n: &str) {
        let done = self.agent(n).raft.apply_committed();
        if done.is_empty() {
            return;
        }
        let now = self.now;
        for index in &done {
            let a = self.agent(n);
            if a.fm_pending == Some(*index) {
                a.fm_pending = None;
            }
            if let Some((from, id)) = a.forwarded.remove(index) {
                self.send(
                    n,
                    &from,
                    Net::ForwardReply {
                        id,
                        committed: true,
                    },
                );
            }
            if let Some(record) = self.agent(n).records.remove(index) {
                self.say(n, format!("NM node {} {}", record.node, record.state));
                self.nm_inform(n, NmInput::Written { node: record.node });
            }
        }
        self.check_epochs(n);
        self.push(now, Ev::Applied(n.to_string()));
        if self.agent(n).raft.role == Role::Leader {
            self.push(now, Ev::FmWake);
        }
    }

    /// The epoch of a group, as a node's copy shows it, never goes back.
    fn check_epochs(&mut self, n: &str) {
        let now = self.now;
        let a = self.agent(n);
        let mut back = Vec::new();
        for g in a.raft.state.groups.values() {
            let seen = a.epochs.entry(g.name.clone()).or_insert(g.epoch);
            if g.epoch < *seen {
                back.push(format!(
                    "{now} ms: on {n}, the epoch of {} went back from {seen} to {}",
                    g.name, g.epoch
                ));
            }
            *seen = (*seen).max(g.epoch);
        }
        self.violations.extend(back);
    }

    /// What node `n`'s Node Manager observes of its replica.
    fn view(&self, n: &str) -> NmView {
        let now = self.now;
        let a = self.nodes[n]
            .agent
            .as_ref()
            .expect("a running node has an agent");
        NmView {
            term: a.raft.term(),
            leader: a.raft.leader.clone(),
            leading: a.raft.role == Role::Leader,
            voters: vec![a.raft.voters().to_vec()],
            last_log_index: a.raft.last_index(),
            applied_index: a.raft.applied,
            quorum_ms: a.raft.quorum_ms(now),
            former_append_ms: a.raft.former_append_ms(),
            storage_failure: a
                .raft
                .broken
                .then(|| "simulated: No space left on device".to_string()),
        }
    }

    /// Every tick: each running node's Raft timers, Node Manager and write queue; each RHS's
    /// lease deadline.
    fn tick(&mut self) {
        let period = (self.cfg.interval_ms / 10).max(1);
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for n in &names {
            if !self.powered(n) {
                continue;
            }
            self.rhs_deadline(n);
            if self.stopped(n) {
                continue;
            }
            let now = self.now;
            let out = self.agent(n).raft.tick(now);
            self.send_raft(n, out);
            self.applied(n);
            self.say_elected(n);
            self.nm_tick(n);
            self.flush_rcm(n);
            self.shutdown_step(n);
        }
        self.push(self.now + period, Ev::Tick);
    }

    /// Says once per term that `n` leads.
    fn say_elected(&mut self, n: &str) {
        let a = self.agent(n);
        let term = a.raft.term();
        if a.raft.role != Role::Leader || a.said_term == term {
            return;
        }
        a.said_term = term;
        self.say(n, format!("elected leader (term {term})"));
    }

    /// The node's RHS processes end everything once the lease they last heard of is over,
    /// whether or not the agent is stopped; each ending is reported to the agent.
    fn rhs_deadline(&mut self, n: &str) {
        let now = self.now;
        let Some(deadline) = self.nodes[n].rhs_deadline else {
            return;
        };
        if now < deadline {
            return;
        }
        let victims: Vec<(String, u64)> = self
            .running
            .iter()
            .filter_map(|(r, m)| m.get(n).map(|i| (r.clone(), *i)))
            .collect();
        if victims.is_empty() {
            return;
        }
        self.say(
            n,
            "RHS: the lease ran out; terminating every resource".to_string(),
        );
        for (r, inst) in victims {
            self.rhs_terminate(n, &r);
            self.report_at(now, n, &r, inst, ReportKind::Fenced);
        }
    }

    /// An input that only informs the node's Node Manager (an answer, a written record).
    fn nm_inform(&mut self, n: &str, input: NmInput) {
        let out = exec::nm_step(&mut On { w: self, n }, input);
        debug_assert!(out.rcm.is_empty() && out.reply.is_none(), "{out:?}");
    }

    /// The node's Node Manager, every tick: the agent's [`exec::nm_step`] on this node.
    fn nm_tick(&mut self, n: &str) {
        let inputs = exec::nm_step(&mut On { w: self, n }, NmInput::Tick).rcm;
        for input in inputs {
            if let Input::Fence { fenced, .. } = &input {
                let short = if *fenced {
                    "lease expired: self-fencing"
                } else {
                    "lease granted"
                };
                self.say(n, format!("NM {short}"));
            }
            self.rcm_step(n, input);
        }
    }

    fn run_fm(&mut self) {
        let leaders: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, x)| x.powered && x.stopped_until.is_none())
            .filter(|(_, x)| {
                x.agent
                    .as_ref()
                    .is_some_and(|a| a.raft.role == Role::Leader)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for l in leaders {
            if self.agent(&l).fm_pending.is_some() {
                continue;
            }
            let (now, unix, view) = (self.now, self.base_ms + self.now, self.view(&l));
            let a = self.agent(&l);
            let lease_gone = a
                .raft
                .state
                .nodes
                .values()
                .filter(|n| {
                    (n.state == NodeState::Down && a.nm.surely_down(&view, &n.name, now))
                        || (n.state.stopped_cleanly()
                            && a.nm.stop_vouched(&view, &a.raft.state, &n.name, now))
                })
                .map(|n| n.name.clone())
                .collect();
            let plan = failover::plan(&a.raft.state, unix, &lease_gone);
            if plan.awaiting_leases {
                self.push(now + (self.cfg.interval_ms / 10).max(1), Ev::FmWake);
            }
            if let Some(w) = plan.wake_at_ms {
                let at = w.saturating_sub(self.base_ms).max(now + 1);
                self.push(at, Ev::FmWake);
            }
            if plan.commands.is_empty() {
                for e in &plan.log {
                    self.note(&l, e);
                }
                continue;
            }
            if let Some((index, out)) = self.agent(&l).raft.propose(plan.commands, now) {
                self.agent(&l).fm_pending = Some(index);
                for e in &plan.log {
                    self.note(&l, e);
                }
                self.send_raft(&l, out);
                self.applied(&l);
            }
        }
    }

    /// RCM records, as the agent's write loop sends them: in order, one at a time, to the
    /// leader it knows (itself too), each until it is committed; a record that is not within
    /// [`RCM_WRITE_TIMEOUT_MS`] is given up.
    fn write_rcm(&mut self, n: &str, cmds: Vec<Command>) {
        let deadline = self.now + RCM_WRITE_TIMEOUT_MS;
        self.agent(n).rcm_queue.push_back((deadline, cmds));
        self.flush_rcm(n);
    }

    /// How long a writer waits for the leader's answer before it sends the write again.
    const RESEND_MS: u64 = 1_000;

    fn flush_rcm(&mut self, n: &str) {
        let now = self.now;
        let a = self.agent(n);
        // A leader that lost its leadership answers what was forwarded to it: not committed.
        if a.raft.role != Role::Leader && !a.forwarded.is_empty() {
            let lost: Vec<(String, u64)> = std::mem::take(&mut a.forwarded).into_values().collect();
            for (from, id) in lost {
                self.send(
                    n,
                    &from,
                    Net::ForwardReply {
                        id,
                        committed: false,
                    },
                );
            }
        }
        let a = self.agent(n);
        while a.rcm_queue.front().is_some_and(|(d, _)| now > *d) {
            a.rcm_queue.pop_front();
            a.in_flight = None;
        }
        if a.in_flight.is_some_and(|(_, resend)| now < resend) {
            return;
        }
        let (Some((_, cmds)), Some(leader)) = (a.rcm_queue.front().cloned(), a.raft.leader.clone())
        else {
            return;
        };
        let id = a.next_write;
        a.next_write += 1;
        a.in_flight = Some((id, now + Self::RESEND_MS));
        self.send(n, &leader, Net::Forward { id, cmds });
    }

    /// One input to the node's RCM: the agent's [`exec::settle`] on this node.
    fn rcm_step(&mut self, n: &str, input: Input) {
        // A stopping agent's main loop runs no RCM once it ends its resources.
        if self.nodes[n]
            .shutdown
            .as_ref()
            .is_some_and(|s| matches!(s.phase, ShutdownPhase::Recording { .. }))
        {
            return;
        }
        exec::settle(&mut On { w: self, n }, input);
        let now = self.now;
        let a = self.agent(n);
        if let Some(t) = a.rcm.next_wakeup_ms(&a.raft.state) {
            let t = t.max(now + 1);
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
        if self.nodes[n].rhs_deadline.is_some_and(|d| now >= d) {
            // The RHS refuses to start anything past the lease it knows.
            self.report_at(now, n, r, 0, ReportKind::StartFailed);
            return;
        }
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

    /// The RHS of `n` reports `kind` about instance `instance` of `r` at `at` (it waits for
    /// a stopped agent).
    fn report_at(&mut self, at: u64, n: &str, r: &str, instance: u64, report: ReportKind) {
        let ev = Ev::Deliver {
            from: n.to_string(),
            to: n.to_string(),
            net: Net::Report {
                resource: r.to_string(),
                instance,
                report,
            },
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
            ReportKind::StartFailed if instance == 0 => (
                Report::Failed,
                "the node has no lease (RHS fenced)".to_string(),
            ),
            ReportKind::StartFailed if current == Some(instance) => {
                self.rhs_terminate(n, r);
                (Report::Failed, "start failed".to_string())
            }
            ReportKind::Offline if current == Some(instance) || instance == 0 => {
                self.rhs_terminate(n, r);
                (Report::Offline, "stopped".to_string())
            }
            // About an instance that was ended: as the agent does, a report about an older
            // instance than the one running now is dropped.
            ReportKind::Fenced if current.is_none_or(|c| c == instance) => (
                Report::Failed,
                "terminated by its RHS: the node's lease ran out".to_string(),
            ),
            ReportKind::Died if current.is_none_or(|c| c == instance) => {
                (Report::Failed, "simulated failure".to_string())
            }
            ReportKind::Migrated { target } if current == Some(instance) && instance != 0 => {
                // The target must be reachable, prepared, and hold its lease.
                let ready = self.powered(&target)
                    && self.prepared.contains(&(r.to_string(), target.clone()))
                    && self.reaches(n, &target)
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
                    let others = self.running_on(r);
                    if !others.is_empty() {
                        self.violations.push(format!(
                            "{} ms: {r} arrives on {target} while it runs on {}",
                            self.now,
                            others.join(", ")
                        ));
                    }
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
                ended: instance != 0,
            },
        );
    }

    /// The node's agent and everything it ran are gone; its disk stays.
    fn power_off(&mut self, n: &str) {
        for m in self.running.values_mut() {
            m.remove(n);
        }
        self.prepared.retain(|(_, on)| on != n);
        let node = self.nodes.get_mut(n).expect("known");
        if let Some(a) = node.agent.take() {
            node.disk = a.raft.disk;
        }
        node.powered = false;
        node.stopped_until = None;
        node.inbox.clear();
        node.rhs_deadline = None;
        node.shutdown = None;
    }

    /// A stopping node ends every resource (its main loop no longer runs the RCM), then
    /// records its clean stop behind the RCM's own records.
    fn end_for_stop(&mut self, n: &str) {
        for m in self.running.values_mut() {
            m.remove(n);
        }
        self.prepared.retain(|(_, on)| on != n);
        let incarnation = self.agent(n).nm.incarnation();
        let until = self.now + STOPPED_RECORD_MS;
        let node = self.nodes.get_mut(n).expect("known");
        let Some(stop) = node.shutdown.as_mut() else {
            return;
        };
        stop.phase = ShutdownPhase::Recording { until, incarnation };
        let cmd = Command::NodeStopped {
            name: n.to_string(),
            incarnation,
            policy: stop.policy,
            paused: stop.paused,
        };
        self.say(n, "agent stopping: its resources ended".to_string());
        self.write_rcm(n, vec![cmd]);
    }

    /// A clean stop's next step, at every tick.
    fn shutdown_step(&mut self, n: &str) {
        let Some(stop) = self.nodes[n].shutdown.clone() else {
            return;
        };
        let now = self.now;
        match stop.phase {
            ShutdownPhase::Draining { until } => {
                let s = &self.agent(n).raft.state;
                let paused = s.nodes.get(n).is_some_and(|x| x.state == NodeState::Paused);
                if paused && intent::drain_settled(s, n) {
                    self.say(n, "shutdown drain done".to_string());
                    self.end_for_stop(n);
                } else if now >= until {
                    self.say(
                        n,
                        "shutdown drain not finished: stopping as under failover".to_string(),
                    );
                    self.end_for_stop(n);
                }
            }
            ShutdownPhase::Recording { until, incarnation } => {
                let recorded = self.agent(n).raft.state.nodes.get(n).is_some_and(|x| {
                    x.state.stopped_cleanly()
                        && x.stop
                            .as_ref()
                            .is_some_and(|c| c.incarnation == incarnation)
                });
                if recorded || now >= until {
                    let what = if recorded {
                        "stopped cleanly: agent gone"
                    } else {
                        "its clean stop was not recorded: agent gone"
                    };
                    self.say(n, what.to_string());
                    self.power_off(n);
                    if stop.start_after {
                        self.say(n, "power on (asked for while it stopped)".to_string());
                        self.nodes.get_mut(n).expect("known").powered = true;
                        self.boot(n);
                    }
                }
            }
        }
    }

    fn script_step(&mut self, step: Step) {
        match step {
            Step::PowerOff(n) => {
                if !self.powered(&n) {
                    return;
                }
                self.say(&n, "power off".to_string());
                self.power_off(&n);
            }
            Step::CleanStop(n, policy) => {
                if !self.powered(&n) || self.stopped(&n) || self.nodes[&n].shutdown.is_some() {
                    return;
                }
                self.say(&n, format!("agent asked to stop: shutdown policy {policy}"));
                let paused = self
                    .agent(&n)
                    .raft
                    .state
                    .nodes
                    .get(&n)
                    .is_some_and(|x| x.state == NodeState::Paused);
                let phase = ShutdownPhase::Draining {
                    until: self.now + SHUTDOWN_DRAIN_MS,
                };
                self.nodes.get_mut(&n).expect("known").shutdown = Some(Shutdown {
                    policy,
                    start_after: false,
                    paused,
                    phase,
                });
                if policy == ShutdownPolicy::Migrate {
                    let drain = Command::SetDraining {
                        name: n.clone(),
                        draining: true,
                    };
                    self.write_rcm(&n, vec![drain]);
                } else {
                    self.end_for_stop(&n);
                }
            }
            Step::PowerOn(n) => {
                if let Some(stop) = self.nodes.get_mut(&n).and_then(|x| x.shutdown.as_mut()) {
                    stop.start_after = true;
                    return;
                }
                if self.powered(&n) {
                    return;
                }
                self.say(&n, "power on".to_string());
                self.nodes.get_mut(&n).expect("known").powered = true;
                self.boot(&n);
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
            }
            Step::Cut(a, b) => {
                self.say("-", format!("cut {a} -> {b}"));
                self.cuts.insert((a, b));
            }
            Step::Heal => {
                self.say("-", "network healed".to_string());
                self.cuts.clear();
                for node in self.nodes.values_mut() {
                    node.side = 0;
                    node.slow_ms = 0;
                    node.lag_ms = 0;
                }
            }
            Step::Slow(n, ms) => {
                self.say(&n, format!("messages take {ms} ms longer"));
                if let Some(node) = self.nodes.get_mut(&n) {
                    node.slow_ms = ms;
                }
            }
            Step::Lag(n, ms) => {
                self.say(
                    &n,
                    format!("replication to and from it takes {ms} ms longer"),
                );
                if let Some(node) = self.nodes.get_mut(&n) {
                    node.lag_ms = ms;
                }
            }
            Step::Stop(n, ms) => {
                if !self.powered(&n) || self.stopped(&n) {
                    return;
                }
                self.say(&n, format!("agent stopped for {ms} ms"));
                let until = self.now + ms;
                self.nodes.get_mut(&n).expect("known").stopped_until = Some(until);
                self.push(until, Ev::Resume(n));
            }
            Step::DiskFull(n, ms) => {
                if !self.powered(&n) {
                    return;
                }
                self.say(
                    &n,
                    format!("disk full for {ms} ms: the database cannot write"),
                );
                self.agent(&n).raft.broken = true;
                self.push(self.now + ms, Ev::DiskBack(n));
            }
            Step::Fail(r) => {
                for n in self.running_on(&r) {
                    self.say(&n, format!("{r} fails"));
                    // The RHS's worker ends its instance, then reports about it.
                    let inst = self.instance_on(&r, &n);
                    self.rhs_terminate(&n, &r);
                    let now = self.now;
                    self.report_at(now, &n, &r, inst, ReportKind::Died);
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
            Step::Operator(Command::SetPersistentState { target, state }) => {
                let (cmd, _, touch) = intent::set_desired(self.db(), target, state);
                self.operator(cmd, Some(touch));
            }
            Step::Operator(cmd) => self.operator(cmd, None),
            Step::SetGroup { group, changes } => {
                let Some(mut props) = self.db().groups.get(&group).map(|g| g.props.clone()) else {
                    self.say("-", format!("operator: no group {group}"));
                    return;
                };
                for (k, v) in &changes {
                    if let Err(e) = props.set(k, v) {
                        self.say("-", format!("operator: refused: {e}"));
                        return;
                    }
                }
                self.operator(Command::SetGroupProps { group, props }, None);
            }
            Step::Move { group, to } => {
                let now = self.base_ms + self.now;
                match intent::move_group(self.db(), &group, to.as_deref(), false, now) {
                    Ok(m) => self.operator(m.cmd, None),
                    Err(e) => self.say("-", format!("operator: {e}")),
                }
            }
        }
    }

    /// The node an operator's request reaches the cluster through: the leader of the highest
    /// term that runs.
    fn operator_leader(&self) -> Option<String> {
        self.nodes
            .iter()
            .filter(|(_, x)| x.powered && x.stopped_until.is_none())
            .filter_map(|(n, x)| x.agent.as_ref().map(|a| (n, a)))
            .filter(|(_, a)| a.raft.role == Role::Leader)
            .max_by_key(|(_, a)| a.raft.term())
            .map(|(n, _)| n.clone())
    }

    /// An operator command through the leader. A desired-state change (`touch`) then makes
    /// the owners' RCMs forget past failures of what it touched, as the API does.
    fn operator(&mut self, cmd: Command, touch: Option<intent::Touch>) {
        let Some(l) = self.operator_leader() else {
            self.say("-", format!("operator: no leader, refused {cmd:?}"));
            return;
        };
        let mut probe = self.agent(&l).raft.state.clone();
        if let Err(e) = apply(&mut probe, &cmd) {
            self.say("-", format!("operator: refused: {e}"));
            return;
        }
        self.say("-", format!("operator: {cmd:?}"));
        let now = self.now;
        if let Some((_, out)) = self.agent(&l).raft.propose(vec![cmd], now) {
            self.send_raft(&l, out);
            self.applied(&l);
        }
        let Some(touch) = touch else {
            return;
        };
        let touched = touch.resources(&probe);
        let owners: BTreeSet<String> = probe
            .groups
            .values()
            .filter_map(|g| g.owner.clone())
            .filter(|o| self.powered(o) && !self.stopped(o))
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
        let db = self.db();
        let witnessed: Vec<String> = db
            .groups
            .values()
            .filter_map(|g| {
                let o = g.owner.as_ref()?;
                db.nodes
                    .get(o)
                    .is_some_and(|n| n.witness)
                    .then(|| format!("{now} ms: group {} owned by witness {o}", g.name))
            })
            .collect();
        self.violations.extend(witnessed);
        // A node whose lease has run out stops everything within one tick (its RHS does, if
        // its agent is stopped).
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

    /// Each node's Raft, lease and copy, for a failing run's report.
    pub fn describe_nodes(&self) -> String {
        let mut out = String::new();
        for (name, n) in &self.nodes {
            let Some(a) = &n.agent else {
                out.push_str(&format!("  {name}: powered off\n"));
                continue;
            };
            let me = a.raft.state.nodes.get(name).map(|x| x.state);
            out.push_str(&format!(
                "  {name}: {:?} term {} leader {:?} log {} commit {} applied {}; fenced {}; stopped {:?}; itself recorded {me:?}; RCM wake {:?}\n",
                a.raft.role,
                a.raft.term(),
                a.raft.leader,
                a.raft.last_index(),
                a.raft.disk.commit,
                a.raft.applied,
                a.nm.is_fenced(),
                n.stopped_until,
                a.rcm.next_wakeup_ms(&a.raft.state),
            ));
        }
        out
    }

    /// Whether every resource recorded Online runs exactly on its group's owner.
    pub fn truth_matches_db(&self) -> Result<(), String> {
        let db = self.db();
        for r in db.resources.values() {
            let owner = db.groups.get(&r.group).and_then(|g| g.owner.clone());
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

/// One simulated node as its agent's executor sees the world ([`exec`]): virtual time, its
/// replica's copy, the simulated RHS and network.
struct On<'w> {
    w: &'w mut World,
    n: &'w str,
}

impl exec::Env for On<'_> {
    fn now_ms(&self) -> u64 {
        self.w.now
    }

    fn log(&mut self, entries: Vec<LogEntry>) {
        for e in &entries {
            self.w.note(self.n, e);
        }
    }
}

impl exec::RcmEnv for On<'_> {
    fn with_rcm<R>(&mut self, decide: impl FnOnce(&mut Rcm, &ClusterState) -> R) -> R {
        let a = self.w.agent(self.n);
        decide(&mut a.rcm, &a.raft.state)
    }

    fn write(&mut self, cmds: Vec<Command>) -> bool {
        self.w.write_rcm(self.n, cmds);
        false
    }

    /// The simulated RHS takes every call; what it does comes later, as a report.
    fn call(&mut self, call: Action) -> Result<(), String> {
        let (w, n) = (&mut *self.w, self.n);
        match call {
            Action::Online { resource } => w.rhs_online(n, &resource),
            Action::Offline { resource } => w.rhs_offline(n, &resource),
            Action::Terminate { resource } => w.rhs_terminate(n, &resource),
            Action::MigrateTo {
                resource, target, ..
            } => w.rhs_migrate_to(n, &resource, &target),
            Action::MigrateFrom { resource, .. } => w.rhs_migrate_from(n, &resource),
            Action::MigratePrepare { resource, .. } => {
                w.prepared.insert((resource, n.to_string()));
            }
            Action::Close { .. } => {}
            Action::Db(_) | Action::Log(_) => unreachable!("exec::settle passes calls only"),
        }
        Ok(())
    }
}

impl exec::NmEnv for On<'_> {
    fn replica(&self) -> NmView {
        self.w.view(self.n)
    }

    fn with_nm<R>(&mut self, decide: impl FnOnce(&mut NodeManager, &ClusterState) -> R) -> R {
        let a = self.w.agent(self.n);
        decide(&mut a.nm, &a.raft.state)
    }

    /// The agent tells its RHS processes (same machine, no delay).
    fn publish_lease(&mut self, until_ms: Option<u64>, _now_ms: u64) {
        let node = self.w.nodes.get_mut(self.n).expect("known");
        node.rhs_deadline = Some(until_ms.unwrap_or(0));
    }

    fn send_heartbeat(&mut self, to: String, heartbeat: Heartbeat, sent_ms: u64, timeout_ms: u64) {
        let (w, n) = (&mut *self.w, self.n);
        w.agent(n).heartbeats.insert(sent_ms);
        w.push(
            w.now + timeout_ms,
            Ev::HeartbeatTimeout {
                node: n.to_string(),
                sent_ms,
            },
        );
        w.send(
            n,
            &to,
            Net::Heartbeat {
                hb: heartbeat,
                sent_ms,
            },
        );
    }

    /// Proposed to the node's replica (a lone voter commits it at once); noted once applied.
    fn record(&mut self, cmd: Command, record: vigil_core::lease::NodeRecord) -> bool {
        let (w, n) = (&mut *self.w, self.n);
        let now = w.now;
        let a = w.agent(n);
        let Some((index, out)) = a.raft.propose(vec![cmd], now) else {
            return false;
        };
        a.records.insert(index, record);
        w.send_raft(n, out);
        w.applied(n);
        true
    }
}
