//! Leases: how a node knows it may still run its resources, and how the leader knows when a
//! silent node surely stopped running them. Pure arithmetic over monotonic milliseconds;
//! durations cross the network, instants never do (clocks are not shared). The protocol that
//! uses it is [`crate::nm`].
//!
//! # The protocol
//!
//! - **Quorum time.** The Raft leader sends appends (heartbeats included) to every voter. Its
//!   *quorum time* `T_q` is the latest instant `s` (its clock) such that, in every voter
//!   configuration in force, a majority acknowledged an append it sent at `s` or later, the
//!   leader itself counting as acknowledging now ([`quorum_time`]). The database layer
//!   measures this from its own appends and their answers; openraft's figure is not used,
//!   because its metrics can be older than they look.
//! - **Leases.** Every node sends a heartbeat to the leader every `interval_ms`. The leader
//!   answers with `age = now - T_q` and its last log index. The sender, which sent at `t0`,
//!   holds a lease from `t0 - age` for `lease_ms`; the leader holds one from `T_q`. A lease may
//!   be used only once the node's copy of the database has applied the index that came with it
//!   ([`Lease`]): a node never acts on a copy older than what the leader had when it vouched
//!   for it. A node without a usable lease is fenced: it stops everything it runs.
//! - **Down.** The leader records a silent node Down once [`LeaderClock::is_down`] holds, and
//!   the failover manager gives a Down node's groups away only while the *current* leader's
//!   own clock still says so (a Down record can be committed late, by a later leader, after the
//!   node got a new lease).
//!
//! # Why no node's lease outlives the moment it is declared Down
//!
//! Write `L(N)` for the start of any lease node `N` holds. We show `L(N) <= last_known(N)`,
//! with [`LeaderClock::last_known`]; Down comes `lease_ms + margin_ms` later, so every lease of
//! `N` has run out by then, with `margin_ms` to spare for clock-rate drift (below 0.01 %),
//! scheduling delay and the time fencing takes. All instants below are real time; each clock
//! measures durations faithfully within that drift.
//!
//! 1. *Every lease starts no later than its leader's quorum time when it answered.* A
//!    follower's starts at `t0 - age`; `t0` is before the answer, which the leader made at
//!    `T_q + age`. The leader's own starts at `T_q`.
//! 2. *A leader's quorum time comes before every later leader took office.* Let `L1` lead term
//!    `T1` with quorum time `s`: a majority `M` acknowledged appends of term `T1` sent at `s` or
//!    later (every configuration of `L1` is considered; see 5 for changes). `L2` leads a later
//!    term `T2 > T1` only after a majority `V` voted for it, and two majorities share a voter
//!    `v`. If `v != L1`, `v` acknowledged an append of `T1` sent at `s` or later, and did so
//!    before it voted in `T2` (once in `T2`, Raft refuses appends of `T1`), and `L2` took
//!    office after that vote. If `v = L1`, `L1` itself had moved to `T2` by then, and sends no
//!    append of `T1` afterwards (a replication task that already held one can still send it
//!    within a scheduling delay, which the margin covers). Either way `s < since(L2)`, the
//!    instant `L2`'s Node Manager saw itself lead.
//! 3. *Heard from.* When `L2` processed `N`'s heartbeat at `c`, the lease that heartbeat
//!    granted started at `t0 - age <= t0 <= c` (1). `c >= since(L2)` bounds by 2 every lease
//!    that earlier leaders granted. So `L(N) <= c` for the latest such `c`: its contact time.
//! 4. *Not heard from since `L2` took office:* `L2` granted `N` nothing, and by 1 and 2 every
//!    other lease of `N` started before `since(L2)`. A tighter bound, the *former floor*, lets
//!    `L2` record its dead predecessor Down a lease after it died rather than a lease after the
//!    election: every voter `v` reports `former(v)`, the latest instant at which
//!    - it began handling an append from the leader of a term earlier than `T2` (every append
//!      that counted for an earlier leader's quorum time was sent before that), or
//!    - it last granted a lease as the leader of an earlier term.
//!
//!    It reports the age of that instant when it sends its heartbeat, and `L2` dates it back
//!    from the arrival, which can only make it later than it was (safe). Once it is reported,
//!    `v` adds nothing older: appends of earlier terms that arrive afterwards are refused by
//!    Raft, since `v` already follows `T2`. Now take any earlier leader `L` and its quorum time
//!    `s`, with a majority `M` (of a configuration of `L`) behind it. If `L` reported, its own
//!    `former(L) >= s`. Otherwise `M \ {L}` has at least `majority - 1` voters, and if at most
//!    `majority - 1` voters did not report at all (`L` among them), at least one voter of
//!    `M \ {L}` did, and its report is `>= s`. So with reports from all but `majority - 1`
//!    voters of every configuration, `floor = max(former)` bounds every earlier lease, and
//!    `min(since, floor)` does too ([`LeaderClock::former_floor`]).
//! 5. *Membership changes* go through a joint configuration. A leader of the old configuration
//!    only is followed, before any leader of the new one only, by a leader of the joint
//!    configuration whose quorum time is later than the old one's took office (2), and whose
//!    quorum spans a majority of the new configuration too; so the floor, checked against the
//!    configuration in force, bounds the old leader's leases through it.
//!
//! # Why a node never acts on a stale copy
//!
//! Groups leave a node without its help only through Down: a node that is leased keeps its
//! groups until it hands them over itself. The leader answers a heartbeat with no lease while
//! its copy says the sender is Down, or while it is writing that record, and otherwise with its
//! last log index. Every record committed before the answer is at or below that index (the
//! leader's log holds every committed entry), and the sender uses the lease only once its copy
//! has applied that far: the records that moved its groups away are in its copy before it may
//! act. A freshly started agent is no different: it has no lease until its first answer.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::NodeState;

/// Lease settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    pub interval_ms: u64,
    pub threshold: u32,
    /// The cluster's watchdog timeout (0: none): a node that may run resources past its
    /// lease (its agent and RHS both stuck) is reset by its watchdog at most this long after
    /// its lease ran out, so a silent node is Down only after lease + watchdog + margin.
    pub watchdog_ms: u64,
}

impl LeaseConfig {
    /// How long a lease lasts.
    pub fn lease_ms(&self) -> u64 {
        self.interval_ms * u64::from(self.threshold)
    }

    /// Safety margin before a silent node is declared Down: a fifth of the lease, at least
    /// 200 ms. At the defaults (500 ms × 4) the lease is 2 s and the margin 0.4 s: 20 % more
    /// than the lease covers clock-rate drift (real drift is below 0.01 %), scheduling delays
    /// of hundreds of milliseconds, and the few milliseconds SIGKILL takes.
    pub fn margin_ms(&self) -> u64 {
        (self.lease_ms() / 5).max(200)
    }

    /// How long after a silent node's last lease began it is surely gone: lease, then its
    /// watchdog's timeout (if the cluster has one), then the margin.
    pub fn down_after_ms(&self) -> u64 {
        self.lease_ms() + self.watchdog_ms + self.margin_ms()
    }
}

/// Whether a node may kick its watchdog now (decision 0011), all times in one monotonic
/// clock: its main loop answered (`answered`, with every RHS answering) less than `fresh`
/// ago, and either its lease runs past `now` or nothing runs on the node. The last kick is
/// then inside the lease, so the reset comes at most the watchdog's timeout after it.
pub fn may_kick_watchdog(
    now: u64,
    answered: u64,
    fresh: u64,
    lease_until: Option<u64>,
    running: bool,
) -> bool {
    let main_ok = now.saturating_sub(answered) < fresh;
    let leased = lease_until.is_some_and(|until| now < until);
    main_ok && (leased || !running)
}

/// `T_q` of a leader: the latest instant such that, in every configuration of `configs`, a
/// majority of its voters had acknowledged an append sent then or later. `acked(voter)` is the
/// send time of the latest append the voter acknowledged in this term (the leader counts as
/// acknowledging now). `None` while some configuration has no majority yet.
pub fn quorum_time<'a>(
    configs: &'a [Vec<String>],
    acked: impl Fn(&'a str) -> Option<u64>,
) -> Option<u64> {
    let mut result: Option<u64> = None;
    for config in configs {
        let mut times: Vec<u64> = config.iter().filter_map(|v| acked(v)).collect();
        let majority = config.len() / 2 + 1;
        if config.is_empty() || times.len() < majority {
            return None;
        }
        times.sort_unstable_by(|a, b| b.cmp(a));
        let t = times[majority - 1];
        result = Some(result.map_or(t, |r| r.min(t)));
    }
    result
}

/// A grant waiting for the node's copy of the database to apply its index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Grant {
    index: u64,
    expires_ms: u64,
}

/// Most grants waiting at once; an older one that a newer one covers is dropped first.
const MAX_WAITING_GRANTS: usize = 8;

/// A node's own lease, in its own monotonic milliseconds. A grant becomes usable once the
/// node's copy has applied the log index that came with it (see the module's proof).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    /// When the usable lease runs out; `None`: never had one.
    pub expires_ms: Option<u64>,
    /// Grants whose index the copy has not reached yet, lowest index first.
    waiting: Vec<Grant>,
}

impl Lease {
    /// The leader answered a heartbeat sent at `sent_ms` with quorum age `age_ms` and its last
    /// log index `index`.
    pub fn grant(&mut self, sent_ms: u64, age_ms: u64, index: u64, cfg: &LeaseConfig) {
        let expires_ms = sent_ms.saturating_sub(age_ms) + cfg.lease_ms();
        if self.expires_ms.is_some_and(|e| e >= expires_ms) {
            return;
        }
        // A waiting grant with a higher index and an earlier end is of no more use.
        self.waiting
            .retain(|g| g.index < index || g.expires_ms > expires_ms);
        if self
            .waiting
            .iter()
            .any(|g| g.index <= index && g.expires_ms >= expires_ms)
        {
            return;
        }
        let at = self.waiting.partition_point(|g| g.index <= index);
        self.waiting.insert(at, Grant { index, expires_ms });
        if self.waiting.len() > MAX_WAITING_GRANTS {
            self.waiting.remove(0);
        }
    }

    /// The leader's own lease, from its quorum time and its last log index.
    pub fn grant_as_leader(&mut self, quorum_ms: u64, index: u64, cfg: &LeaseConfig) {
        self.grant(quorum_ms, 0, index, cfg);
    }

    /// The copy has applied `applied_index`: grants up to it become usable.
    pub fn applied(&mut self, applied_index: u64) {
        let ready = self.waiting.partition_point(|g| g.index <= applied_index);
        for g in self.waiting.drain(..ready) {
            if self.expires_ms.is_none_or(|e| g.expires_ms > e) {
                self.expires_ms = Some(g.expires_ms);
            }
        }
    }

    /// The lowest index a waiting grant needs, if the copy is behind one that would extend
    /// the lease.
    pub fn waiting_for(&self, now_ms: u64) -> Option<u64> {
        self.waiting
            .iter()
            .find(|g| g.expires_ms > now_ms)
            .map(|g| g.index)
    }

    pub fn valid(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|e| now_ms < e)
    }

    /// Forgets every grant (the copy can no longer be trusted to keep up).
    pub fn revoke(&mut self) {
        *self = Lease::default();
    }
}

/// The leader's record of one term, in its own monotonic milliseconds.
#[derive(Clone, Debug, Default)]
pub struct LeaderClock {
    /// The Raft term this record is for.
    pub term: u64,
    /// When this node saw itself lead the term.
    pub since_ms: u64,
    /// When each node's last heartbeat was processed.
    pub contact_ms: BTreeMap<String, u64>,
    /// Each voter's former instant (see the module's proof, step 4), in this clock.
    pub former_ms: BTreeMap<String, u64>,
    /// Since when each node has been reporting no recent answer from a leader (in this
    /// clock); absent while its answers arrive.
    pub unanswered_since_ms: BTreeMap<String, u64>,
    /// When this leader last granted each node a lease.
    pub granted_ms: BTreeMap<String, u64>,
    /// When each node's fence device last reported it off (this leader ran it).
    pub fenced_ms: BTreeMap<String, u64>,
    /// The incarnation of each node's agent, from its last heartbeat (this node's own too):
    /// another one than a clean stop recorded means the node is back.
    pub incarnation: BTreeMap<String, u64>,
}

impl LeaderClock {
    pub fn new(term: u64, since_ms: u64) -> Self {
        Self {
            term,
            since_ms,
            ..Self::default()
        }
    }

    pub fn heard_from(&mut self, node: &str, now_ms: u64) {
        self.contact_ms.insert(node.to_string(), now_ms);
    }

    /// `node`'s heartbeat came from its agent's incarnation `incarnation`. The latest run
    /// is kept (runs count up: their start times): a heartbeat of an earlier run that arrives
    /// late does not hide the later one.
    pub fn heard_incarnation(&mut self, node: &str, incarnation: u64) {
        let i = self.incarnation.entry(node.to_string()).or_insert(0);
        *i = (*i).max(incarnation);
    }

    /// `node`'s fence device reported it off now.
    pub fn fenced(&mut self, node: &str, now_ms: u64) {
        self.fenced_ms.insert(node.to_string(), now_ms);
    }

    /// Whether `node` was fenced (powered off) and not heard from since: it runs nothing.
    pub fn is_fenced(&self, node: &str) -> bool {
        self.fenced_ms
            .get(node)
            .is_some_and(|f| self.contact_ms.get(node).is_none_or(|c| c <= f))
    }

    /// `node` said, in a heartbeat processed now, that it last got an answer `age_ms` before
    /// sending it (`None`: never, e.g. just started). More than `stale_ms` is no recent one.
    pub fn heard_answers(&mut self, node: &str, age_ms: Option<u64>, stale_ms: u64, now_ms: u64) {
        if age_ms.is_some_and(|a| a <= stale_ms) {
            self.unanswered_since_ms.remove(node);
        } else {
            self.unanswered_since_ms
                .entry(node.to_string())
                .or_insert(now_ms);
        }
    }

    /// This leader granted `node` a lease now.
    pub fn granted(&mut self, node: &str, now_ms: u64) {
        self.granted_ms.insert(node.to_string(), now_ms);
    }

    /// Heard from, but reporting for a lease that no answer reached it: its link is cut one
    /// way (or slower than the answers' timeout). It gets no more leases from this leader,
    /// and is judged by its last grant, not its last heartbeat.
    pub fn is_deaf(&self, node: &str, lease_ms: u64, now_ms: u64) -> bool {
        self.unanswered_since_ms
            .get(node)
            .is_some_and(|since| now_ms >= since + lease_ms)
    }

    /// `node` reported, in a heartbeat processed now, that its former instant was `age_ms`
    /// before it sent it (`None`: it has none).
    pub fn heard_former(&mut self, node: &str, age_ms: Option<u64>, now_ms: u64) {
        let at = age_ms.map_or(0, |a| now_ms.saturating_sub(a));
        let known = self.former_ms.entry(node.to_string()).or_insert(at);
        *known = (*known).max(at);
    }

    /// The former floor: an instant by which every lease granted by a leader of an earlier
    /// term had started, once all but `majority - 1` voters of every configuration in
    /// `configs` have reported (step 4 of the module's proof); `None` before that.
    pub fn former_floor(&self, configs: &[Vec<String>]) -> Option<u64> {
        if configs.is_empty() {
            return None;
        }
        for config in configs {
            let majority = config.len() / 2 + 1;
            let silent = config
                .iter()
                .filter(|v| !self.former_ms.contains_key(*v))
                .count();
            if silent > majority - 1 {
                return None;
            }
        }
        self.former_ms.values().copied().max()
    }

    /// An instant no lease of `node` started after (the module's proof, steps 3 and 4; for
    /// a deaf node, this leader's last grant bounds the leases it gave it).
    pub fn last_known(
        &self,
        node: &str,
        configs: &[Vec<String>],
        lease_ms: u64,
        now_ms: u64,
    ) -> u64 {
        let before_this_term = || {
            self.former_floor(configs)
                .map_or(self.since_ms, |f| f.min(self.since_ms))
        };
        match self.contact_ms.get(node) {
            Some(_) if self.is_deaf(node, lease_ms, now_ms) => self
                .granted_ms
                .get(node)
                .copied()
                .map_or_else(before_this_term, |g| g.max(before_this_term())),
            Some(c) => *c,
            None => before_this_term(),
        }
    }

    /// Whether `node` surely holds no lease: lease and margin have passed since
    /// [`LeaderClock::last_known`]. A node not heard from in this term also gets two heartbeat
    /// intervals after the election to find this leader (a liveness rule, not a safety one).
    pub fn is_down(
        &self,
        node: &str,
        configs: &[Vec<String>],
        cfg: &LeaseConfig,
        now: u64,
    ) -> bool {
        if self.is_fenced(node) {
            return true;
        }
        let found_time =
            self.contact_ms.contains_key(node) || now >= self.since_ms + 2 * cfg.interval_ms;
        found_time
            && now >= self.last_known(node, configs, cfg.lease_ms(), now) + cfg.down_after_ms()
    }

    /// Missed `threshold` heartbeats in a row.
    pub fn is_suspect(
        &self,
        node: &str,
        configs: &[Vec<String>],
        cfg: &LeaseConfig,
        now: u64,
    ) -> bool {
        now >= self.last_known(node, configs, cfg.lease_ms(), now) + cfg.lease_ms()
    }

    /// The node states the leader `me` should record now: Down for a node (Up or Paused) that
    /// surely holds no lease, Up for a Down node heard from in this term and not down, and Up
    /// for itself if it was recorded Down while away. Nothing while its own quorum time is
    /// more than a lease old: only a leader in contact with a quorum may say who is Down.
    /// `skip` are nodes whose record is being written.
    #[allow(clippy::too_many_arguments)]
    pub fn node_records<'a>(
        &self,
        me: &str,
        configs: &[Vec<String>],
        quorum_ms: Option<u64>,
        nodes: impl IntoIterator<Item = (&'a str, NodeState, Option<u64>)>,
        skip: &BTreeSet<String>,
        cfg: &LeaseConfig,
        now: u64,
    ) -> Vec<NodeRecord> {
        if quorum_ms.is_none_or(|q| now >= q + cfg.lease_ms()) {
            return Vec::new();
        }
        let record = |node: &str, state, reason| NodeRecord {
            node: node.to_string(),
            state,
            reason,
            back_from: None,
        };
        nodes
            .into_iter()
            .filter(|(node, ..)| !skip.contains(*node))
            .filter_map(|(node, state, stopped)| match state {
                NodeState::Down if node == me => Some(record(
                    node,
                    NodeState::Up,
                    format!("node {node} leads a quorum again; Up"),
                )),
                // Stopped cleanly, and heard from since, by another incarnation of its agent
                // (a heartbeat sent before the stop carries the stopped one).
                NodeState::Stopped | NodeState::Frozen
                    if self
                        .incarnation
                        .get(node)
                        .is_some_and(|i| Some(*i) != stopped)
                        && (node == me
                            || (self.contact_ms.contains_key(node)
                                && !self.is_down(node, configs, cfg, now))) =>
                {
                    Some(NodeRecord {
                        back_from: stopped,
                        ..record(
                            node,
                            NodeState::Up,
                            format!("node {node} is back (its agent started again after a clean stop); Up"),
                        )
                    })
                }
                _ if node == me => None,
                NodeState::Up | NodeState::Paused if self.is_fenced(node) => Some(record(
                    node,
                    NodeState::Down,
                    format!("node {node} was fenced: its fence device reported it off; Down"),
                )),
                NodeState::Up | NodeState::Paused if self.is_down(node, configs, cfg, now) => {
                    let since = self.last_known(node, configs, cfg.lease_ms(), now);
                    let what = if self.is_deaf(node, cfg.lease_ms(), now) {
                        "gets no answers (heard, but its link back is cut); its last lease from this leader started"
                    } else if self.contact_ms.contains_key(node) {
                        "silent for"
                    } else {
                        "not heard from in this term; every lease it may hold started at least"
                    };
                    let watchdog = match cfg.watchdog_ms {
                        0 => String::new(),
                        w => format!(" + watchdog {w} ms"),
                    };
                    Some(record(
                        node,
                        NodeState::Down,
                        format!(
                            "node {node} {what} {} ms ago (lease {} ms{watchdog} + margin {} ms): its lease has expired; Down",
                            now.saturating_sub(since),
                            cfg.lease_ms(),
                            cfg.margin_ms()
                        ),
                    ))
                }
                NodeState::Down
                    if self.contact_ms.contains_key(node)
                        && !self.is_down(node, configs, cfg, now) =>
                {
                    Some(record(
                        node,
                        NodeState::Up,
                        format!("node {node} heard from again; Up"),
                    ))
                }
                _ => None,
            })
            .collect()
    }
}

/// A node state the leader should write to the cluster database, with the log's reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    pub node: String,
    pub state: NodeState,
    pub reason: String,
    /// Up after the clean stop of this incarnation (`Command::NodeBack`, refused when the
    /// node's stop is another one by the time it applies).
    pub back_from: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: LeaseConfig = LeaseConfig {
        interval_ms: 500,
        threshold: 4,
        watchdog_ms: 0,
    };

    #[test]
    fn the_watchdog_is_kicked_only_while_the_main_loop_answers_and_the_lease_holds_or_nothing_runs()
    {
        // Answered 100 ago, fresh for 500: kicked while leased, or idle.
        assert!(may_kick_watchdog(1_000, 900, 500, Some(1_001), true));
        assert!(
            !may_kick_watchdog(1_000, 900, 500, Some(1_000), true),
            "lease over"
        );
        assert!(!may_kick_watchdog(1_000, 900, 500, None, true), "no lease");
        assert!(
            may_kick_watchdog(1_000, 900, 500, None, false),
            "nothing runs"
        );
        // The main loop (or an RHS) stopped answering: never, whatever the lease.
        assert!(!may_kick_watchdog(1_000, 500, 500, Some(5_000), true));
        assert!(!may_kick_watchdog(1_000, 500, 500, None, false));
    }

    fn voters(v: &[&str]) -> Vec<Vec<String>> {
        vec![v.iter().map(|s| s.to_string()).collect()]
    }

    #[test]
    fn defaults_give_a_two_second_lease_and_400_ms_of_margin() {
        assert_eq!((CFG.lease_ms(), CFG.margin_ms()), (2_000, 400));
    }

    #[test]
    fn quorum_time_is_the_majoritys_oldest_acknowledgement_in_every_configuration() {
        let acks: BTreeMap<&str, u64> = [("a", 100), ("b", 90), ("c", 95), ("d", 50), ("e", 10)]
            .into_iter()
            .collect();
        let acked = |v: &str| acks.get(v).copied();
        assert_eq!(quorum_time(&voters(&["a", "b", "c"]), acked), Some(95));
        assert_eq!(quorum_time(&voters(&["a", "b", "x"]), acked), Some(90));
        assert_eq!(quorum_time(&voters(&["a", "x", "y"]), acked), None);
        // Joint: both majorities.
        let joint = vec![
            voters(&["a", "b", "c"])[0].clone(),
            voters(&["a", "d", "e"])[0].clone(),
        ];
        assert_eq!(quorum_time(&joint, acked), Some(50));
        assert_eq!(quorum_time(&[], acked), None);
    }

    #[test]
    fn a_lease_is_usable_only_once_the_copy_has_applied_its_index() {
        let mut lease = Lease::default();
        // Sent at 1000 (follower clock); answered with a quorum age of 300 ms at index 40.
        lease.grant(1_000, 300, 40, &CFG);
        assert!(!lease.valid(1_100), "the copy has not applied 40 yet");
        assert_eq!(lease.waiting_for(1_100), Some(40));
        lease.applied(39);
        assert!(!lease.valid(1_100));
        lease.applied(40);
        assert_eq!(lease.expires_ms, Some(700 + 2_000));
        assert!(lease.valid(2_699) && !lease.valid(2_700));
        // An older answer never shortens it; a newer one waits for its own index.
        lease.grant(900, 300, 10, &CFG);
        lease.applied(50);
        assert_eq!(lease.expires_ms, Some(2_700));
        lease.grant(1_500, 0, 60, &CFG);
        assert_eq!(lease.expires_ms, Some(2_700), "60 not applied yet");
        lease.applied(60);
        assert_eq!(lease.expires_ms, Some(3_500));
    }

    #[test]
    fn grants_waiting_for_the_copy_stay_few() {
        let mut lease = Lease::default();
        for i in 0..100u64 {
            lease.grant(1_000 + i * 10, 0, 100 + i, &CFG);
        }
        assert!(lease.waiting.len() <= MAX_WAITING_GRANTS);
        lease.applied(1_000);
        assert_eq!(lease.expires_ms, Some(1_000 + 99 * 10 + 2_000));
    }

    #[test]
    fn down_only_after_lease_and_margin_since_the_last_contact() {
        let v = voters(&["a", "b"]);
        let mut c = LeaderClock::new(1, 0);
        c.heard_from("b", 10_000);
        assert!(!c.is_suspect("b", &v, &CFG, 11_999));
        assert!(c.is_suspect("b", &v, &CFG, 12_000));
        assert!(!c.is_down("b", &v, &CFG, 12_399));
        assert!(c.is_down("b", &v, &CFG, 12_400));
        // A new leader knows nothing older than its own start.
        let fresh = LeaderClock::new(2, 50_000);
        assert!(!fresh.is_down("b", &v, &CFG, 52_399));
        assert!(fresh.is_down("b", &v, &CFG, 52_400));
    }

    #[test]
    fn the_former_floor_needs_all_but_majority_minus_one_voters() {
        let v = voters(&["a", "b", "c"]);
        // a led until it died at 10 000; b (the new leader, since 10 600) and c last began an
        // append from a at 10 450 and 9 950 (in b's clock).
        let mut clock = LeaderClock::new(2, 10_600);
        clock.heard_former("b", Some(0), 10_450);
        assert_eq!(
            clock.former_floor(&v),
            None,
            "c could hold the only lease evidence"
        );
        clock.heard_former("c", Some(700), 10_650);
        assert_eq!(clock.former_floor(&v), Some(10_450));
        assert!(!clock.is_down("a", &v, &CFG, 12_849));
        assert!(clock.is_down("a", &v, &CFG, 12_850));
        // A node that answers soon after the election is judged from its contact.
        clock.heard_from("c", 10_700);
        assert!(!clock.is_down("c", &v, &CFG, 13_099));
        // A node never heard from: not before two intervals after the election either.
        let mut late = LeaderClock::new(3, 20_000);
        late.heard_former("b", Some(0), 5_000);
        late.heard_former("c", Some(0), 5_000);
        assert!(!late.is_down("a", &v, &CFG, 20_999));
        assert!(late.is_down("a", &v, &CFG, 21_000));
        // Without the reports: from the leader's start.
        let fresh = LeaderClock::new(2, 10_600);
        assert!(!fresh.is_down("a", &v, &CFG, 12_999));
        // Five voters: two may stay silent.
        let five = voters(&["a", "b", "c", "d", "e"]);
        let mut clock = LeaderClock::new(2, 0);
        clock.heard_former("b", None, 100);
        clock.heard_former("c", Some(50), 100);
        assert_eq!(clock.former_floor(&five), None);
        clock.heard_former("d", Some(10), 100);
        assert_eq!(clock.former_floor(&five), Some(90));
    }

    #[test]
    fn a_former_report_never_moves_back() {
        let mut clock = LeaderClock::new(2, 0);
        clock.heard_former("b", Some(0), 500);
        clock.heard_former("b", Some(400), 600);
        assert_eq!(clock.former_ms["b"], 500);
    }

    #[test]
    fn the_leader_records_down_up_and_itself_only_with_a_quorum() {
        let v = voters(&["a", "b", "c"]);
        let mut clock = LeaderClock::new(1, 0);
        clock.heard_from("b", 10_000);
        clock.heard_from("c", 10_000);
        let nodes = [
            ("a", NodeState::Down, None),
            ("b", NodeState::Paused, None),
            ("c", NodeState::Up, None),
        ];
        let none = BTreeSet::new();
        let states = |clock: &LeaderClock, quorum, skip: &BTreeSet<String>, now| {
            clock
                .node_records("a", &v, quorum, nodes, skip, &CFG, now)
                .into_iter()
                .map(|r| (r.node, r.state))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            states(&clock, Some(10_900), &none, 11_000),
            [("a".into(), NodeState::Up)]
        );
        // c keeps in contact; b (Paused, drained) falls silent and is Down in time.
        clock.heard_from("c", 12_000);
        assert_eq!(
            states(&clock, Some(12_300), &none, 12_400),
            [("a".into(), NodeState::Up), ("b".into(), NodeState::Down)]
        );
        let writing: BTreeSet<String> = ["b".to_string()].into();
        assert_eq!(
            states(&clock, Some(12_300), &writing, 12_400),
            [("a".into(), NodeState::Up)],
            "b's record is being written"
        );
        // Without a recent quorum time the leader records nothing at all.
        assert_eq!(states(&clock, Some(12_300), &none, 14_400), []);
        assert_eq!(states(&clock, None, &none, 12_400), []);
    }

    /// The proof's steps 1 and 3 for all delays: a follower's lease ends no later than the
    /// leader's contact time plus the lease, so margin before Down.
    #[test]
    fn the_follower_lease_always_ends_before_the_leader_calls_it_down() {
        for d1 in [0u64, 1, 50, 400, 3_000] {
            for d2 in [0u64, 3, 200] {
                for age in [0u64, 100, 1_500] {
                    let sent = 10_000; // follower sends (shared timeline for the proof)
                    let processed = sent + d1; // leader notes contact
                    let mut lease = Lease::default();
                    lease.grant(sent, age, 7, &CFG);
                    let _answered = processed + d2;
                    lease.applied(7);
                    let v = voters(&["l", "f"]);
                    let mut clock = LeaderClock::new(1, 0);
                    clock.heard_from("f", processed);
                    let expiry = lease.expires_ms.unwrap();
                    let down_at = processed + CFG.lease_ms() + CFG.margin_ms();
                    assert!(
                        expiry + CFG.margin_ms() <= down_at,
                        "d1={d1} d2={d2} age={age}"
                    );
                    assert!(clock.is_down("f", &v, &CFG, down_at));
                    assert!(!clock.is_down("f", &v, &CFG, down_at - 1));
                }
            }
        }
    }
}
