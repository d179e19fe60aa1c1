//! A small Raft for the simulator: every node has its own log, commit index and applied copy
//! of the database, and learns of entries only through messages, which the world delivers
//! with latency (or not at all). Enough of Raft for what the Node Manager and the RCM depend
//! on: terms and elections (votes for up-to-date logs only), appends with acknowledgements
//! that carry the leader's send time (its quorum time, as the agent's database measures it),
//! commit by a majority of the current term, and a durable log, term, vote and commit index
//! that survive a power-off, so a node restarts from its own, possibly old, copy.
//!
//! Not modelled: membership changes (the voters are fixed), snapshots, pipelining limits.

use std::collections::{BTreeMap, BTreeSet};

use vigil_core::command::{Command, apply};
use vigil_core::model::ClusterState;

/// Leader heartbeats (empty appends), as the agent's Raft timing.
pub const HEARTBEAT_MS: u64 = 100;
/// Most entries one append carries.
const MAX_ENTRIES: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub term: u64,
    pub cmds: Vec<Command>,
}

/// What survives a power-off.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    pub term: u64,
    pub voted_for: Option<String>,
    pub log: Vec<Entry>,
    /// Saved as it advances (openraft saves it too), so a restart applies this far at once.
    pub commit: u64,
    /// The leader of `term` it followed (openraft's committed vote names it): a restarted
    /// node knows where to send its heartbeats before it hears from anyone.
    pub leader: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    Append {
        term: u64,
        leader: String,
        prev_index: u64,
        prev_term: u64,
        entries: Vec<Entry>,
        commit: u64,
        /// The leader's clock when it sent this (echoed in the answer).
        sent_at: u64,
    },
    AppendReply {
        term: u64,
        from: String,
        /// The append matched (`false`: a log conflict, the term was accepted all the same).
        ok: bool,
        match_index: u64,
        sent_at: u64,
    },
    Vote {
        term: u64,
        candidate: String,
        last_index: u64,
        last_term: u64,
    },
    VoteReply {
        term: u64,
        from: String,
        granted: bool,
    },
}

impl Msg {
    fn term(&self) -> u64 {
        match self {
            Msg::Append { term, .. }
            | Msg::AppendReply { term, .. }
            | Msg::Vote { term, .. }
            | Msg::VoteReply { term, .. } => *term,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    Candidate,
    Leader,
}

/// One node's replica.
#[derive(Clone, Debug)]
pub struct Replica {
    pub me: String,
    voters: Vec<String>,
    pub disk: Disk,
    pub role: Role,
    /// The leader of the current term, once known.
    pub leader: Option<String>,
    /// The copy of the database, as far as it has applied the log.
    pub state: ClusterState,
    pub applied: u64,
    base: ClusterState,
    election_timeout_ms: u64,
    /// Up to this much more, drawn anew for every wait (Raft's randomized timeouts: without
    /// them, two candidates can split the vote forever).
    election_spread_ms: u64,
    rng: u64,
    election_at: u64,
    votes: BTreeSet<String>,
    next: BTreeMap<String, u64>,
    matched: BTreeMap<String, u64>,
    /// Per peer: (term, send time) of the latest append it acknowledged.
    acks: BTreeMap<String, (u64, u64)>,
    /// Per term: when this node last began handling an append of that term.
    began: BTreeMap<u64, u64>,
    last_heartbeat: u64,
    /// Its database cannot write (a full disk): the Raft core has stopped, as openraft's does
    /// after a failed write; it sends, answers and accepts nothing until [`Replica::reopen`].
    pub broken: bool,
}

pub type Out = Vec<(String, Msg)>;

/// A node's election timeout: at least `min_ms`, up to `spread_ms` more drawn from `seed`.
#[derive(Clone, Copy, Debug)]
pub struct Election {
    pub min_ms: u64,
    pub spread_ms: u64,
    pub seed: u64,
}

impl Replica {
    /// A node starting at `now` from `disk` (its state machine rebuilt from `base`, the
    /// database before the first entry, and its log up to its saved commit index).
    pub fn start(
        me: &str,
        voters: Vec<String>,
        base: ClusterState,
        disk: Disk,
        election: Election,
        now: u64,
    ) -> Self {
        let leader = disk.leader.clone().filter(|l| l != me);
        let mut r = Self {
            me: me.to_string(),
            voters,
            disk,
            role: Role::Follower,
            leader,
            state: base.clone(),
            applied: 0,
            base,
            election_timeout_ms: election.min_ms,
            election_spread_ms: election.spread_ms,
            rng: election.seed | 1,
            election_at: now + election.min_ms,
            votes: BTreeSet::new(),
            next: BTreeMap::new(),
            matched: BTreeMap::new(),
            acks: BTreeMap::new(),
            began: BTreeMap::new(),
            last_heartbeat: 0,
            broken: false,
        };
        r.apply_committed();
        r
    }

    /// The disk has room again: the database is reopened and a new Raft core starts on what
    /// it had stored, as the agent's recovery does.
    pub fn reopen(&mut self, now: u64) {
        let election = Election {
            min_ms: self.election_timeout_ms,
            spread_ms: self.election_spread_ms,
            seed: self.rng,
        };
        *self = Replica::start(
            &self.me,
            self.voters.clone(),
            self.base.clone(),
            self.disk.clone(),
            election,
            now,
        );
    }

    /// The next election timeout.
    fn election_wait(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.election_timeout_ms + self.rng % (self.election_spread_ms + 1)
    }

    pub fn term(&self) -> u64 {
        self.disk.term
    }

    pub fn last_index(&self) -> u64 {
        self.disk.log.len() as u64
    }

    fn term_at(&self, index: u64) -> u64 {
        match index {
            0 => 0,
            i => self.disk.log.get(i as usize - 1).map_or(0, |e| e.term),
        }
    }

    fn majority(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    fn peers(&self) -> Vec<String> {
        self.voters
            .iter()
            .filter(|v| **v != self.me)
            .cloned()
            .collect()
    }

    /// Leads from now (the first node of a fresh simulation, as if elected in term 1).
    pub fn lead_from_start(&mut self, now: u64) -> Out {
        self.disk.term = 1;
        self.disk.voted_for = Some(self.me.clone());
        self.become_leader(now)
    }

    fn become_leader(&mut self, now: u64) -> Out {
        self.role = Role::Leader;
        self.leader = Some(self.me.clone());
        self.disk.leader = Some(self.me.clone());
        for p in self.peers() {
            self.next.insert(p.clone(), self.last_index() + 1);
            self.matched.insert(p, 0);
        }
        // A blank entry of its own term, so that earlier entries commit with it.
        self.disk.log.push(Entry {
            term: self.disk.term,
            cmds: Vec::new(),
        });
        self.advance_commit();
        self.replicate(now)
    }

    fn step_down(&mut self, term: u64, now: u64) {
        if term > self.disk.term {
            self.disk.term = term;
            self.disk.voted_for = None;
            self.leader = None;
            self.disk.leader = None;
        }
        if self.role != Role::Follower {
            self.role = Role::Follower;
            self.election_at = now + self.election_wait();
        }
    }

    /// Appends to every peer, from what each is known to have.
    fn replicate(&mut self, now: u64) -> Out {
        self.last_heartbeat = now;
        self.peers()
            .into_iter()
            .map(|p| {
                let next = self.next.get(&p).copied().unwrap_or(1).max(1);
                let prev_index = next - 1;
                let entries: Vec<Entry> = self
                    .disk
                    .log
                    .iter()
                    .skip(prev_index as usize)
                    .take(MAX_ENTRIES)
                    .cloned()
                    .collect();
                let msg = Msg::Append {
                    term: self.disk.term,
                    leader: self.me.clone(),
                    prev_index,
                    prev_term: self.term_at(prev_index),
                    entries,
                    commit: self.disk.commit,
                    sent_at: now,
                };
                (p, msg)
            })
            .collect()
    }

    /// Time passed: a leader sends its heartbeats; a follower whose leader fell silent (or a
    /// candidate without a majority) starts an election.
    pub fn tick(&mut self, now: u64) -> Out {
        if self.broken {
            return Vec::new();
        }
        match self.role {
            Role::Leader if now >= self.last_heartbeat + HEARTBEAT_MS => self.replicate(now),
            Role::Leader => Vec::new(),
            _ if now >= self.election_at => self.campaign(now),
            _ => Vec::new(),
        }
    }

    fn campaign(&mut self, now: u64) -> Out {
        self.disk.term += 1;
        self.disk.voted_for = Some(self.me.clone());
        self.role = Role::Candidate;
        self.leader = None;
        self.disk.leader = None;
        self.votes = BTreeSet::from([self.me.clone()]);
        self.election_at = now + self.election_wait();
        if self.votes.len() >= self.majority() {
            return self.become_leader(now);
        }
        let (last_index, last_term) = (self.last_index(), self.term_at(self.last_index()));
        self.peers()
            .into_iter()
            .map(|p| {
                let msg = Msg::Vote {
                    term: self.disk.term,
                    candidate: self.me.clone(),
                    last_index,
                    last_term,
                };
                (p, msg)
            })
            .collect()
    }

    /// A message arrived.
    pub fn handle(&mut self, msg: Msg, now: u64) -> Out {
        if self.broken {
            return Vec::new();
        }
        if msg.term() > self.disk.term {
            self.step_down(msg.term(), now);
        }
        match msg {
            Msg::Append {
                term,
                leader,
                prev_index,
                prev_term,
                entries,
                commit,
                sent_at,
            } => self.on_append(
                term, leader, prev_index, prev_term, entries, commit, sent_at, now,
            ),
            Msg::AppendReply {
                term,
                from,
                ok,
                match_index,
                sent_at,
            } => self.on_append_reply(term, from, ok, match_index, sent_at, now),
            Msg::Vote {
                term,
                candidate,
                last_index,
                last_term,
            } => {
                let up_to_date =
                    (last_term, last_index) >= (self.term_at(self.last_index()), self.last_index());
                let granted = term == self.disk.term
                    && up_to_date
                    && self.disk.voted_for.as_ref().is_none_or(|v| *v == candidate);
                if granted {
                    self.disk.voted_for = Some(candidate.clone());
                    self.election_at = now + self.election_wait();
                }
                let reply = Msg::VoteReply {
                    term: self.disk.term,
                    from: self.me.clone(),
                    granted,
                };
                vec![(candidate, reply)]
            }
            Msg::VoteReply {
                term,
                from,
                granted,
            } => {
                if self.role != Role::Candidate || term != self.disk.term || !granted {
                    return Vec::new();
                }
                self.votes.insert(from);
                if self.votes.len() >= self.majority() {
                    return self.become_leader(now);
                }
                Vec::new()
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_append(
        &mut self,
        term: u64,
        leader: String,
        prev_index: u64,
        prev_term: u64,
        entries: Vec<Entry>,
        commit: u64,
        sent_at: u64,
        now: u64,
    ) -> Out {
        self.began.insert(term, now);
        let reply = |me: &Self, ok, match_index| {
            let msg = Msg::AppendReply {
                term: me.disk.term,
                from: me.me.clone(),
                ok,
                match_index,
                sent_at,
            };
            vec![(leader.clone(), msg)]
        };
        if term < self.disk.term {
            return reply(self, false, 0);
        }
        if self.role != Role::Follower {
            self.role = Role::Follower;
        }
        self.leader = Some(leader.clone());
        self.disk.leader = Some(leader.clone());
        self.election_at = now + self.election_wait();
        if prev_index > self.last_index() || self.term_at(prev_index) != prev_term {
            let hint = prev_index.saturating_sub(1).min(self.last_index());
            return reply(self, false, hint);
        }
        for (i, e) in entries.iter().enumerate() {
            let index = prev_index + 1 + i as u64;
            if index <= self.last_index() {
                if self.term_at(index) == e.term {
                    continue;
                }
                debug_assert!(
                    index > self.disk.commit,
                    "{}: a committed entry ({index}) would be cut",
                    self.me
                );
                self.disk.log.truncate(index as usize - 1);
            }
            self.disk.log.push(e.clone());
        }
        let last_new = prev_index + entries.len() as u64;
        if commit > self.disk.commit {
            self.disk.commit = commit.min(last_new).max(self.disk.commit);
        }
        reply(self, true, last_new)
    }

    fn on_append_reply(
        &mut self,
        term: u64,
        from: String,
        ok: bool,
        match_index: u64,
        sent_at: u64,
        now: u64,
    ) -> Out {
        if self.role != Role::Leader || term != self.disk.term {
            return Vec::new();
        }
        // The peer follows this term: its answer counts for the quorum time either way.
        let newer = self
            .acks
            .get(&from)
            .is_none_or(|(t, s)| (*t, *s) < (term, sent_at));
        if newer {
            self.acks.insert(from.clone(), (term, sent_at));
        }
        if !ok {
            self.next.insert(from, match_index + 1);
            return self.replicate_to_lagging(now);
        }
        let m = self.matched.entry(from.clone()).or_insert(0);
        *m = (*m).max(match_index);
        self.next.insert(from, *m + 1);
        self.advance_commit();
        Vec::new()
    }

    /// After a conflict, the peers that are behind get an append at once (not at the next
    /// heartbeat).
    fn replicate_to_lagging(&mut self, now: u64) -> Out {
        let last = self.last_index();
        let lagging = self
            .next
            .iter()
            .any(|(p, n)| *n <= last && self.matched.get(p).copied().unwrap_or(0) < last);
        if lagging {
            self.replicate(now)
        } else {
            Vec::new()
        }
    }

    fn advance_commit(&mut self) {
        let mut indexes: Vec<u64> = self
            .peers()
            .iter()
            .map(|p| self.matched.get(p).copied().unwrap_or(0))
            .chain([self.last_index()])
            .collect();
        indexes.sort_unstable_by(|a, b| b.cmp(a));
        let n = indexes[self.majority() - 1];
        if n > self.disk.commit && self.term_at(n) == self.disk.term {
            self.disk.commit = n;
        }
    }

    /// A write on the leader: appended, and sent to every peer. Its index, or `None` if this
    /// node does not lead.
    pub fn propose(&mut self, cmds: Vec<Command>, now: u64) -> Option<(u64, Out)> {
        if self.role != Role::Leader || self.broken {
            return None;
        }
        self.disk.log.push(Entry {
            term: self.disk.term,
            cmds,
        });
        let index = self.last_index();
        // Alone, it is its own majority.
        self.advance_commit();
        Some((index, self.replicate(now)))
    }

    /// Applies what is committed and not applied yet; the indexes applied.
    pub fn apply_committed(&mut self) -> Vec<u64> {
        let mut done = Vec::new();
        while self.applied < self.disk.commit {
            self.applied += 1;
            let entry = &self.disk.log[self.applied as usize - 1];
            for c in &entry.cmds {
                let _ = apply(&mut self.state, c);
            }
            done.push(self.applied);
        }
        done
    }

    /// While leading: the quorum time (see `vigil_core::lease::quorum_time`).
    pub fn quorum_ms(&self, now: u64) -> Option<u64> {
        if self.role != Role::Leader {
            return None;
        }
        let term = self.disk.term;
        let acked = |v: &str| {
            if v == self.me {
                return Some(now);
            }
            self.acks
                .get(v)
                .filter(|(t, _)| *t == term)
                .map(|(_, s)| *s)
        };
        vigil_core::lease::quorum_time(std::slice::from_ref(&self.voters), acked)
    }

    /// When this node last began handling an append of a term before the current one.
    pub fn former_append_ms(&self) -> Option<u64> {
        self.began.range(..self.disk.term).map(|(_, t)| *t).max()
    }

    pub fn voters(&self) -> &[String] {
        &self.voters
    }

    /// The database before the first entry (for a restarted node's replay).
    pub fn base(&self) -> &ClusterState {
        &self.base
    }
}
