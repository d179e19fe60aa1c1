//! The Node Manager's decisions: heartbeats, leases, self-fencing, and which nodes to record
//! Down or Up. [`NodeManager`] is driven like the RCM: the environment (the agent, or the
//! simulator) calls it with what it observes (a [`Replica`] view of its Raft node, the cluster
//! database, the time) and carries out the [`NmAction`]s it returns. The arithmetic and the
//! proof of safety are in [`crate::lease`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::{Component, LogEntry};
use crate::lease::{LeaderClock, Lease, LeaseConfig, NodeRecord};
use crate::model::{ClusterState, NodeState};

/// What a node observes of its Raft replica at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replica {
    /// The term this node is in.
    pub term: u64,
    /// The leader of `term` as this node knows it, by name.
    pub leader: Option<String>,
    /// This node leads `term`.
    pub leading: bool,
    /// The voter configurations in force (two during a joint change), by node name.
    pub voters: Vec<Vec<String>>,
    /// The last index in this node's log, and the last one applied to its copy.
    pub last_log_index: u64,
    pub applied_index: u64,
    /// While leading: the quorum time (see [`crate::lease::quorum_time`]), this node's ms.
    pub quorum_ms: Option<u64>,
    /// The latest instant this node began handling an append (or snapshot) from the leader
    /// of a term earlier than `term`.
    pub former_append_ms: Option<u64>,
    /// Why this node's database cannot write, if it cannot.
    pub storage_failure: Option<String>,
}

/// Sent by every node to the leader every heartbeat interval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub name: String,
    /// The term of the leader it is sent to, as the sender knows it.
    pub term: u64,
    /// How long before sending this the sender's former instant was (see
    /// [`crate::lease`], step 4); `None`: it has none.
    pub former_age_ms: Option<u64>,
    /// How long before sending this the sender last got an answer from a leader (`None`:
    /// never). A node that is heard but gets no answers (a link cut one way, or slower than
    /// the answers' timeout) cannot be leased; the leader must not wait on it forever.
    #[serde(default)]
    pub answered_age_ms: Option<u64>,
    /// Which run of the sender's agent sent it (fixed at its start): after a clean stop, a
    /// heartbeat of another incarnation says the node is back.
    #[serde(default)]
    pub incarnation: u64,
}

/// The leader's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub leader: String,
    pub term: u64,
    /// How old the leader's quorum time was when it answered; `None`: no lease.
    pub quorum_age_ms: Option<u64>,
    /// The leader's last log index when it answered: the sender may use the lease once its
    /// copy has applied this far.
    pub log_index: u64,
    /// Why no lease, when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// What the Node Manager is told, through [`NodeManager::step`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NmInput {
    /// Every tenth of a heartbeat interval ([`NodeManager::tick_ms`]): the leader renews its
    /// own lease and decides node records; a follower sends its heartbeat when due; both
    /// check their lease.
    Tick,
    /// A heartbeat arrived. Answered with one [`NmAction::Reply`].
    Heartbeat(Heartbeat),
    /// The answer to the heartbeat sent at `sent_ms` (`None`: none came in time, or it
    /// failed).
    Answered {
        sent_ms: u64,
        reply: Option<HeartbeatReply>,
    },
    /// A node record asked for by [`NmAction::Record`] was written, or failed to be.
    Written { node: String },
    /// `node`'s fence device, run by this leader, reported it off: it is Down at once.
    Fenced { node: String },
}

/// What the environment must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NmAction {
    /// Send `heartbeat` to the leader (at `to`'s address) and report its answer as
    /// [`NmInput::Answered`], passing back `sent_ms`; wait for it at most `timeout_ms`.
    Send {
        to: String,
        heartbeat: Heartbeat,
        sent_ms: u64,
        timeout_ms: u64,
    },
    /// Write the node state to the database and report it as [`NmInput::Written`].
    Record(NodeRecord),
    /// The answer to an [`NmInput::Heartbeat`]: `Err` when this node does not lead.
    Reply(Result<HeartbeatReply, String>),
    /// Fenced (no usable lease: stop everything, start nothing) or not any more: for the RCM.
    Fence {
        fenced: bool,
        reason: String,
    },
    Log(LogEntry),
}

/// What status may claim about the answering node's copy of the database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "standing", rename_all = "snake_case")]
pub enum Standing {
    /// Leased, and current: applied everything the leader vouched for.
    Current { applied_index: u64 },
    /// Leased by an answer whose index its copy has not applied yet: what it says may be
    /// older than the leader's.
    CatchingUp {
        applied_index: u64,
        needs_index: u64,
    },
    /// No lease: its copy (as of `applied_index`) may be stale, and it runs nothing.
    Fenced { applied_index: u64, reason: String },
}

/// The Node Manager of one node.
#[derive(Clone, Debug)]
pub struct NodeManager {
    me: String,
    /// This run of the agent (see [`Heartbeat::incarnation`]).
    incarnation: u64,
    cfg: LeaseConfig,
    lease: Lease,
    fenced: bool,
    /// Why it is fenced, as last said.
    fence_reason: String,
    /// While leading: this term's record.
    clock: Option<LeaderClock>,
    /// The last instant (and term) at which this node granted a lease as leader.
    led: Option<(u64, u64)>,
    /// Node records being written, and the state each writes.
    writing: BTreeMap<String, NodeState>,
    /// Following: when the last heartbeat was sent, and to which leader and term.
    last_sent_ms: Option<u64>,
    last_target: Option<(String, u64)>,
    /// The last heartbeat got no lease-granting answer.
    unanswered: bool,
    /// When the last lease-granting answer came.
    answered_ms: Option<u64>,
    /// When the last answer of any kind came (a refusal too).
    answered_any_ms: Option<u64>,
    /// Why the last answer granted no lease.
    refused: Option<String>,
    /// The last storage failure: why, and the last tick it was seen at (see
    /// [`NodeManager::storage_trouble`]).
    storage: Option<(String, u64)>,
}

impl NodeManager {
    /// A node that has no lease yet.
    pub fn new(me: &str, cfg: LeaseConfig) -> Self {
        Self {
            me: me.to_string(),
            incarnation: 0,
            cfg,
            lease: Lease::default(),
            fenced: true,
            fence_reason: "no lease yet: waiting for contact with a quorum".to_string(),
            clock: None,
            led: None,
            writing: BTreeMap::new(),
            last_sent_ms: None,
            last_target: None,
            unanswered: false,
            answered_ms: None,
            answered_any_ms: None,
            refused: None,
            storage: None,
        }
    }

    /// This Node Manager's agent run is `incarnation` (distinct for every start of a node).
    pub fn with_incarnation(mut self, incarnation: u64) -> Self {
        self.incarnation = incarnation;
        self
    }

    pub fn name(&self) -> &str {
        &self.me
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// How often [`NmInput::Tick`] is to be given: a tenth of the heartbeat interval.
    pub fn tick_ms(&self) -> u64 {
        (self.cfg.interval_ms / 10).max(1)
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.cfg
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced
    }

    /// When the usable lease runs (or ran) out; `None`: never had one.
    pub fn lease_expires_ms(&self) -> Option<u64> {
        self.lease.expires_ms
    }

    /// The usable lease's end, while it is valid.
    pub fn lease_until_ms(&self, now: u64) -> Option<u64> {
        self.lease
            .expires_ms
            .filter(|_| !self.fenced && self.lease.valid(now))
    }

    /// What status may say of this node's copy.
    pub fn standing(&self, r: &Replica, now: u64) -> Standing {
        let applied_index = r.applied_index;
        if self.fenced {
            return Standing::Fenced {
                applied_index,
                reason: self.fence_reason.clone(),
            };
        }
        match self.lease.waiting_for(now) {
            Some(needs_index) if needs_index > applied_index => Standing::CatchingUp {
                applied_index,
                needs_index,
            },
            _ => Standing::Current { applied_index },
        }
    }

    /// Why this node keeps out because its database failed to write: while a write fails
    /// (reported at every tick), and for a lease and margin after the last failure. Fenced and
    /// silent all that time, so the leader records it Down and its groups move: a disk that
    /// takes a small write after a failure and fails the next large one (a reopened file can
    /// have free pages inside it) must not keep the node answering heartbeats, and its
    /// groups nowhere, forever.
    fn storage_trouble(&self, now: u64) -> Option<String> {
        let (why, at) = self.storage.as_ref()?;
        let hold = self.cfg.lease_ms() + self.cfg.margin_ms();
        if now < at + self.tick_ms() {
            Some(format!(
                "the cluster database on this node cannot write ({why})"
            ))
        } else if now < at + hold {
            Some(format!(
                "the cluster database on this node could not write {} ms ago ({why}); it stays out for {} ms more, so that a disk that fails now and then does not keep its groups",
                now - at,
                at + hold - now
            ))
        } else {
            None
        }
    }

    /// Milliseconds since `node` was last heard from, as this node knows it: the leader knows
    /// everyone's, a follower its own last answered heartbeat.
    pub fn heartbeat_age_ms(&self, node: &str, now: u64) -> Option<u64> {
        match &self.clock {
            Some(_) if node == self.me => Some(0),
            Some(c) => c.contact_ms.get(node).map(|t| now.saturating_sub(*t)),
            None if node == self.me => self.answered_ms.map(|t| now.saturating_sub(t)),
            None => None,
        }
    }

    /// Whether, by this leader's own clock, `node` surely holds no lease now. The failover
    /// manager gives a Down node's groups away only while this holds (a Down record may have
    /// been written by an earlier leader and committed after the node got a new lease).
    pub fn surely_down(&self, r: &Replica, node: &str, now: u64) -> bool {
        match &self.clock {
            Some(c) if r.leading && c.term == r.term && node != self.me => {
                c.is_down(node, &r.voters, &self.cfg, now)
            }
            _ => false,
        }
    }

    /// This term's leader record, started when this node first sees itself lead it.
    fn clock_for(&mut self, r: &Replica, now: u64) -> &mut LeaderClock {
        if self.clock.as_ref().is_none_or(|c| c.term != r.term) {
            let mut clock = LeaderClock::new(r.term, now);
            // This node's own former instant counts like anyone's.
            let former = self.former_ms(r);
            clock.heard_former(&self.me, former.map(|f| now.saturating_sub(f)), now);
            clock.heard_incarnation(&self.me, self.incarnation);
            self.clock = Some(clock);
        }
        self.clock.as_mut().expect("set above")
    }

    /// The latest instant this node counted for an earlier term's leader (an append it began
    /// handling, or a lease it granted as that leader).
    fn former_ms(&self, r: &Replica) -> Option<u64> {
        let led = self.led.filter(|(t, _)| *t < r.term).map(|(_, ms)| ms);
        r.former_append_ms.max(led)
    }

    /// The one way in: `input`, with what this node observes of its replica and its copy of
    /// the database at `now`, and what the environment must do about it.
    pub fn step(
        &mut self,
        r: &Replica,
        db: &ClusterState,
        input: NmInput,
        now: u64,
    ) -> Vec<NmAction> {
        // The cluster's watchdog timeout counts in every Down decision (`LeaseConfig`).
        self.cfg.watchdog_ms = db.watchdog_ms;
        match input {
            NmInput::Tick => self.tick(r, db, now),
            NmInput::Heartbeat(hb) => vec![NmAction::Reply(self.heartbeat(r, db, &hb, now))],
            NmInput::Answered { sent_ms, reply } => {
                self.answered(sent_ms, reply.as_ref(), now);
                Vec::new()
            }
            NmInput::Written { node } => {
                self.writing.remove(&node);
                Vec::new()
            }
            NmInput::Fenced { node } => {
                if r.leading {
                    self.clock_for(r, now).fenced(&node, now);
                }
                Vec::new()
            }
        }
    }

    /// Whether this leader may give the groups of `node`, recorded Stopped or Frozen, away
    /// at once: the run of its agent whose clean stop is recorded is the latest run this
    /// leader has heard from it (its own run, if it is the node), or its lease has surely
    /// run out anyway. A stop record that commits late, after another run of the agent has
    /// started (and may run the groups), is vouched for by neither.
    pub fn stop_vouched(&self, r: &Replica, db: &ClusterState, node: &str, now: u64) -> bool {
        let Some(c) = self
            .clock
            .as_ref()
            .filter(|c| r.leading && c.term == r.term)
        else {
            return false;
        };
        let Some(stopped) = db
            .nodes
            .get(node)
            .filter(|n| n.state.stopped_cleanly())
            .and_then(|n| n.stop.as_ref())
            .map(|s| s.incarnation)
        else {
            return false;
        };
        c.incarnation.get(node) == Some(&stopped)
            || (node != self.me && c.is_down(node, &r.voters, &self.cfg, now))
    }

    /// The nodes this leader should fence now: Up or Paused, with a fence device, silent
    /// for two heartbeat intervals (well inside their lease) and not fenced since.
    pub fn fence_candidates(&self, r: &Replica, db: &ClusterState, now: u64) -> Vec<String> {
        let Some(c) = self
            .clock
            .as_ref()
            .filter(|c| r.leading && c.term == r.term)
        else {
            return Vec::new();
        };
        // Only a leader in contact with a quorum: one cut off in a minority must not power
        // off the nodes it no longer hears.
        if r.quorum_ms.is_none_or(|q| now >= q + self.cfg.lease_ms()) {
            return Vec::new();
        }
        let silent_after = 2 * self.cfg.interval_ms;
        db.nodes
            .values()
            .filter(|n| n.name != self.me && n.fence.is_some())
            .filter(|n| matches!(n.state, NodeState::Up | NodeState::Paused))
            .filter(|n| !c.is_fenced(&n.name))
            .filter(|n| {
                let last = c.contact_ms.get(&n.name).copied().unwrap_or(c.since_ms);
                now >= last + silent_after
            })
            .map(|n| n.name.clone())
            .collect()
    }

    fn tick(&mut self, r: &Replica, db: &ClusterState, now: u64) -> Vec<NmAction> {
        let mut out = Vec::new();
        if let Some(why) = &r.storage_failure {
            if self.storage_trouble(now).is_none() {
                // The copy may be rebuilt from disk: every grant must be earned again.
                self.lease.revoke();
            }
            self.storage = Some((why.clone(), now));
        }
        if r.leading {
            self.lead(r, db, now, &mut out);
        } else {
            self.clock = None;
            self.follow(r, now, &mut out);
        }
        self.check_lease(r, now, &mut out);
        out
    }

    fn lead(&mut self, r: &Replica, db: &ClusterState, now: u64, out: &mut Vec<NmAction>) {
        let cfg = self.cfg;
        self.clock_for(r, now);
        if r.storage_failure.is_some() {
            return;
        }
        if let Some(q) = r.quorum_ms {
            self.lease.grant_as_leader(q, r.last_log_index, &cfg);
            self.led = Some((r.term, now));
        }
        let skip = self.writing.keys().cloned().collect();
        let clock = self.clock.as_ref().expect("set above");
        let nodes = db.nodes.values().map(|n| {
            let stopped = n.stop.as_ref().map(|s| s.incarnation);
            (n.name.as_str(), n.state, stopped)
        });
        let records = clock.node_records(&self.me, &r.voters, r.quorum_ms, nodes, &skip, &cfg, now);
        for record in records {
            self.writing.insert(record.node.clone(), record.state);
            out.push(NmAction::Record(record));
        }
    }

    fn follow(&mut self, r: &Replica, now: u64, out: &mut Vec<NmAction>) {
        if self.storage_trouble(now).is_some() {
            // Silent, so that the leader records this node Down once its lease is surely gone.
            return;
        }
        let Some(leader) = r.leader.clone().filter(|l| *l != self.me) else {
            self.unanswered = true;
            return;
        };
        let target = Some((leader.clone(), r.term));
        // Every interval; and at every tick while the leader is new or the last heartbeat went
        // unanswered, so that a change of leader costs no lease.
        let due = target != self.last_target
            || self.unanswered
            || self
                .last_sent_ms
                .is_none_or(|t| now >= t + self.cfg.interval_ms);
        if !due {
            return;
        }
        self.last_sent_ms = Some(now);
        self.last_target = target;
        let former_age_ms = self.former_ms(r).map(|f| now.saturating_sub(f));
        let answered_age_ms = self.answered_any_ms.map(|a| now.saturating_sub(a));
        out.push(NmAction::Send {
            to: leader,
            heartbeat: Heartbeat {
                name: self.me.clone(),
                term: r.term,
                former_age_ms,
                answered_age_ms,
                incarnation: self.incarnation,
            },
            sent_ms: now,
            // Half a lease: an answer that takes longer than the interval still renews (a
            // lease starts from the send time), so a slow link costs no lease.
            timeout_ms: self.cfg.lease_ms() / 2,
        });
    }

    /// A heartbeat arrived (on the leader). `Err` when this node does not lead.
    fn heartbeat(
        &mut self,
        r: &Replica,
        db: &ClusterState,
        hb: &Heartbeat,
        now: u64,
    ) -> Result<HeartbeatReply, String> {
        if !r.leading {
            return Err(match &r.leader {
                Some(l) => format!("{} is not the leader; the leader is {l}", self.me),
                None => format!("{} is not the leader, and knows of none", self.me),
            });
        }
        let lease_ms = self.cfg.lease_ms();
        let clock = self.clock_for(r, now);
        clock.heard_from(&hb.name, now);
        clock.heard_incarnation(&hb.name, hb.incarnation);
        if hb.term == r.term {
            clock.heard_former(&hb.name, hb.former_age_ms, now);
        }
        // An answer older than the interval and the answers' timeout is no recent one.
        let stale_ms = self.cfg.interval_ms + lease_ms / 2;
        let clock = self.clock.as_mut().expect("set above");
        clock.heard_answers(&hb.name, hb.answered_age_ms, stale_ms, now);
        let deaf = clock.is_deaf(&hb.name, lease_ms, now);
        let refused = if let Some(why) = &r.storage_failure {
            Some(format!(
                "the leader {} cannot write its database: {why}",
                self.me
            ))
        } else if r.quorum_ms.is_none() {
            Some(format!("the leader {} has no quorum contact", self.me))
        } else if let Some(state) = db
            .nodes
            .get(&hb.name)
            .map(|n| n.state)
            .filter(|s| *s == NodeState::Down || s.stopped_cleanly())
            .or_else(|| {
                (self.writing.get(&hb.name) == Some(&NodeState::Down)).then_some(NodeState::Down)
            })
        {
            Some(format!(
                "node {} is recorded {state}; it gets a lease once it is recorded Up again",
                hb.name
            ))
        } else if deaf {
            Some(format!(
                "node {} has had no answer from a leader for over {lease_ms} ms although the leader hears it: its lease cannot be kept, and it will be recorded Down",
                hb.name
            ))
        } else {
            None
        };
        let quorum_age_ms = match (&refused, r.quorum_ms) {
            (None, Some(q)) => {
                self.led = Some((r.term, now));
                let clock = self.clock.as_mut().expect("set above");
                clock.granted(&hb.name, now);
                Some(now.saturating_sub(q))
            }
            _ => None,
        };
        Ok(HeartbeatReply {
            leader: self.me.clone(),
            term: r.term,
            quorum_age_ms,
            log_index: r.last_log_index,
            refused,
        })
    }

    /// The answer to the heartbeat sent at `sent_ms` (`None`: none came, or it failed).
    fn answered(&mut self, sent_ms: u64, reply: Option<&HeartbeatReply>, now: u64) {
        if reply.is_some() {
            self.answered_any_ms = Some(now);
        }
        match reply {
            Some(HeartbeatReply {
                quorum_age_ms: Some(age),
                log_index,
                ..
            }) if self.storage_trouble(now).is_none() => {
                let cfg = self.cfg;
                self.lease.grant(sent_ms, *age, *log_index, &cfg);
                self.answered_ms = Some(now);
                self.unanswered = false;
                self.refused = None;
            }
            Some(reply) => {
                self.unanswered = true;
                self.refused = reply.refused.clone();
            }
            None => self.unanswered = true,
        }
    }

    fn check_lease(&mut self, r: &Replica, now: u64, out: &mut Vec<NmAction>) {
        self.lease.applied(r.applied_index);
        // One check early: fenced at the last tick before the lease runs out, not the first
        // after, so that the RCM stops everything before the RHS processes' own deadline (the
        // lease's end) ends it behind its back.
        let usable = self.storage_trouble(now).is_none() && self.lease.valid(now + self.tick_ms());
        // Unfenced only by a lease with a heartbeat interval left: one about to run out (its
        // leader's quorum time is old) would start resources only to stop them again.
        let usable = usable && (!self.fenced || self.lease.valid(now + self.cfg.interval_ms));
        if self.fenced != usable {
            return;
        }
        self.fenced = !usable;
        let reason = if usable {
            format!(
                "lease granted: contact with a quorum, and this node's copy of the database is current (index {}); resources may run here",
                r.applied_index
            )
        } else {
            self.why_fenced(r, now)
        };
        self.fence_reason = reason.clone();
        out.push(NmAction::Log(LogEntry::new(Component::NM, reason.clone())));
        out.push(NmAction::Fence {
            fenced: !usable,
            reason,
        });
    }

    fn why_fenced(&self, r: &Replica, now: u64) -> String {
        let then = "self-fencing, terminating every resource here; Isolated";
        if let Some(why) = self.storage_trouble(now) {
            return format!("{why}: {then}");
        }
        let behind = self
            .lease
            .waiting_for(now)
            .filter(|i| *i > r.applied_index)
            .map(|i| {
                format!(
                    "; this node's copy of the database is at index {}, behind the index {i} the leader vouched for",
                    r.applied_index
                )
            })
            .unwrap_or_default();
        let refused = self
            .refused
            .as_ref()
            .map(|w| format!("; the leader says: {w}"))
            .unwrap_or_default();
        match self.lease.expires_ms {
            Some(e) => format!(
                "lease expired {} ms ago (no quorum contact for {} ms){behind}{refused}: {then}",
                now.saturating_sub(e),
                self.cfg.lease_ms()
            ),
            None => {
                format!("no lease yet (no quorum contact){behind}{refused}: nothing may run here")
            }
        }
    }
}
