//! Leases: how a node knows it may still run its resources, and how the leader knows when a
//! silent node surely stopped running them. Pure arithmetic over monotonic milliseconds;
//! durations cross the network, instants never do (clocks are not shared).
//!
//! - Every node sends a heartbeat to the leader every `interval_ms`. The leader notes when each
//!   voter's last heartbeat arrived; its *quorum time* `T_q` is the latest instant by which a
//!   majority of voters (itself included) had been in contact.
//! - The leader answers each heartbeat with `age = now - T_q`. The sender, which sent at `t0`,
//!   takes `t0 - age` as the start of its lease. Since `t0` precedes the answer, `t0 - age`
//!   precedes `T_q`: a lease never starts after the quorum contact that backs it. A leader cut
//!   off with a minority keeps answering, but its `T_q` stops moving, so the leases it hands
//!   out stop growing and run out.
//! - A lease lasts `lease_ms` (`interval_ms × threshold`). A node whose lease has run out stops
//!   its resources (self-fencing) and calls itself Isolated.
//! - The leader declares a node Down only once `lease_ms + margin_ms` have passed since that
//!   node's last heartbeat arrived (or since the leader took office, whichever is later). The
//!   node's lease started no later than that arrival, so by then it has expired, and the
//!   margin covers clock-rate drift between the two machines, scheduling delay and the time
//!   fencing takes.

use std::collections::BTreeMap;

use crate::model::NodeState;

/// Lease settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    pub interval_ms: u64,
    pub threshold: u32,
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
}

/// The leader's record of heartbeats, in its own monotonic milliseconds.
#[derive(Clone, Debug, Default)]
pub struct LeaderClock {
    /// When this node became leader.
    pub since_ms: u64,
    /// Arrival of each node's last heartbeat.
    pub contact_ms: BTreeMap<String, u64>,
    /// For each voter, in this clock: no earlier than the arrival of the last heartbeat it
    /// sent to any other leader; 0 if it never did. See [`LeaderClock::former_bound`].
    pub former_ms: BTreeMap<String, u64>,
    /// The bound in force, set by [`LeaderClock::settle_former`].
    floor_ms: Option<u64>,
}

impl LeaderClock {
    pub fn new(since_ms: u64) -> Self {
        Self {
            since_ms,
            ..Self::default()
        }
    }

    /// A voter told how long before sending this heartbeat its last heartbeat to another
    /// leader had surely arrived, if ever (`None`: never): when it was answered, or, if the
    /// answer never came, when its request timed out. This one arrived now, so that was
    /// before `now - age`.
    pub fn heard_former(&mut self, node: &str, age_ms: Option<u64>, now_ms: u64) {
        let at = age_ms.map_or(0, |a| now_ms.saturating_sub(a));
        self.former_ms.insert(node.to_string(), at);
    }

    /// A time by which every lease any earlier leader granted has surely started, or `None`
    /// while too few voters have reported.
    ///
    /// Every lease starts no later than its leader's quorum time, and a leader's quorum time
    /// is no later than the arrival of a heartbeat from at least `majority - 1` other voters.
    /// So once every voter but `majority - 1` has said by when its last heartbeat to another
    /// leader had arrived, the latest of those bounds every earlier leader's quorum time,
    /// whichever voter it was and whoever did not report.
    pub fn former_bound(&self, voters: &[String]) -> Option<u64> {
        let majority = voters.len() / 2 + 1;
        let known: Vec<u64> = voters
            .iter()
            .filter_map(|v| self.former_ms.get(v).copied())
            .collect();
        if voters.len() - known.len() > majority - 1 {
            return None;
        }
        known.into_iter().max()
    }

    /// Brings the earlier leaders' bound into force: a node not heard from since this leader
    /// took office is Down once lease and margin have passed since the bound (if that is
    /// earlier than this leader's start).
    pub fn settle_former(&mut self, voters: &[String]) {
        self.floor_ms = self.former_bound(voters);
    }

    pub fn heard_from(&mut self, node: &str, now_ms: u64) {
        self.contact_ms.insert(node.to_string(), now_ms);
    }

    /// `T_q`: the latest instant by which a majority of `voters` had been in contact, the
    /// leader (`me`) counting as in contact now. `None` until a majority has been heard.
    pub fn quorum_ms(&self, me: &str, voters: &[String], now_ms: u64) -> Option<u64> {
        if voters.is_empty() {
            return None;
        }
        let mut times: Vec<u64> = voters
            .iter()
            .filter_map(|v| {
                if v == me {
                    Some(now_ms)
                } else {
                    self.contact_ms.get(v).copied()
                }
            })
            .collect();
        let majority = voters.len() / 2 + 1;
        if times.len() < majority {
            return None;
        }
        times.sort_unstable_by(|a, b| b.cmp(a));
        Some(times[majority - 1])
    }

    /// Whether `node` has surely stopped running resources: its lease, which started no later
    /// than its last heartbeat's arrival (or this leader's start), has expired with margin.
    pub fn is_down(&self, node: &str, cfg: &LeaseConfig, now_ms: u64) -> bool {
        // A node the earlier leaders' bound says is without a lease, but which is alive, needs
        // a moment to find this leader: two heartbeat intervals after it took office.
        let found_time =
            self.contact_ms.contains_key(node) || now_ms >= self.since_ms + 2 * cfg.interval_ms;
        found_time && now_ms >= self.last_known(node) + cfg.lease_ms() + cfg.margin_ms()
    }

    /// The node states the leader `me` should record now: Down for a node (Up or Paused)
    /// whose lease has surely expired, Up for a Down node heard from again, and Up for
    /// itself if it was recorded Down while away. Nothing while the leader itself has no
    /// quorum contact: only a leader in contact with a quorum may say who is Down.
    pub fn node_records<'a>(
        &self,
        me: &str,
        voters: &[String],
        nodes: impl IntoIterator<Item = (&'a str, NodeState)>,
        cfg: &LeaseConfig,
        now_ms: u64,
    ) -> Vec<NodeRecord> {
        let quorum = self.quorum_ms(me, voters, now_ms);
        if quorum.is_none_or(|q| now_ms >= q + cfg.lease_ms()) {
            return Vec::new();
        }
        let record = |node: &str, state, reason| NodeRecord {
            node: node.to_string(),
            state,
            reason,
        };
        nodes
            .into_iter()
            .filter_map(|(node, state)| {
                let last = self.contact_ms.get(node).copied();
                match state {
                    NodeState::Down if node == me => Some(record(
                        node,
                        NodeState::Up,
                        format!("node {node} leads a quorum again; Up"),
                    )),
                    _ if node == me => None,
                    NodeState::Up | NodeState::Paused if self.is_down(node, cfg, now_ms) => {
                        Some(record(
                            node,
                            NodeState::Down,
                            format!(
                                "node {node} silent for {} ms (lease {} ms + margin {} ms): its lease has expired; Down",
                                now_ms.saturating_sub(last.unwrap_or(self.since_ms)),
                                cfg.lease_ms(),
                                cfg.margin_ms()
                            ),
                        ))
                    }
                    NodeState::Down if last.is_some() && !self.is_down(node, cfg, now_ms) => {
                        Some(record(
                            node,
                            NodeState::Up,
                            format!("node {node} heard from again; Up"),
                        ))
                    }
                    _ => None,
                }
            })
            .collect()
    }

    /// Missed `threshold` heartbeats in a row.
    pub fn is_suspect(&self, node: &str, cfg: &LeaseConfig, now_ms: u64) -> bool {
        now_ms >= self.last_known(node) + cfg.lease_ms()
    }

    /// The node's last heartbeat, or, if it has heard none since, this leader's start (or
    /// the earlier leaders' bound, when known and earlier).
    fn last_known(&self, node: &str) -> u64 {
        let start = self
            .floor_ms
            .map_or(self.since_ms, |f| f.min(self.since_ms));
        self.contact_ms.get(node).copied().unwrap_or(0).max(start)
    }
}

/// A node state the leader should write to the cluster database, with the log's reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    pub node: String,
    pub state: NodeState,
    pub reason: String,
}

/// A node's own lease, in its own monotonic milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    /// When the lease runs out; `None`: never granted.
    pub expires_ms: Option<u64>,
}

impl Lease {
    /// The leader answered a heartbeat sent at `sent_ms` with quorum age `age_ms`.
    pub fn renew(&mut self, sent_ms: u64, age_ms: u64, cfg: &LeaseConfig) {
        let start = sent_ms.saturating_sub(age_ms);
        let expires = start + cfg.lease_ms();
        if self.expires_ms.is_none_or(|e| expires > e) {
            self.expires_ms = Some(expires);
        }
    }

    /// The leader's own lease, from its quorum time.
    pub fn renew_as_leader(&mut self, quorum_ms: u64, cfg: &LeaseConfig) {
        self.renew(quorum_ms, 0, cfg);
    }

    pub fn valid(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|e| now_ms < e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: LeaseConfig = LeaseConfig {
        interval_ms: 500,
        threshold: 4,
    };

    fn voters(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn defaults_give_a_two_second_lease_and_400_ms_of_margin() {
        assert_eq!((CFG.lease_ms(), CFG.margin_ms()), (2_000, 400));
    }

    #[test]
    fn quorum_time_is_the_majoritys_oldest_contact() {
        let mut c = LeaderClock::new(0);
        let v = voters(&["a", "b", "c"]);
        assert_eq!(c.quorum_ms("a", &v, 100), None, "nobody heard yet");
        c.heard_from("b", 90);
        assert_eq!(c.quorum_ms("a", &v, 100), Some(90));
        c.heard_from("c", 95);
        assert_eq!(c.quorum_ms("a", &v, 100), Some(95));
        assert_eq!(
            c.quorum_ms("a", &voters(&["a"]), 100),
            Some(100),
            "alone, it is its own quorum"
        );
    }

    #[test]
    fn a_leader_cut_off_with_a_minority_hands_out_leases_that_run_out() {
        // Five voters; the leader a keeps only b after t=1000.
        let v = voters(&["a", "b", "c", "d", "e"]);
        let mut clock = LeaderClock::new(0);
        for n in ["b", "c", "d", "e"] {
            clock.heard_from(n, 1_000);
        }
        let mut b = Lease::default();
        for t in (1_000..10_000).step_by(500) {
            clock.heard_from("b", t);
            let tq = clock.quorum_ms("a", &v, t).unwrap();
            assert_eq!(tq, 1_000, "b and a alone are no majority");
            // b sent its heartbeat 5 ms before the answer.
            b.renew(t - 5, t - tq, &CFG);
        }
        assert!(b.valid(2_990));
        assert!(
            !b.valid(3_000),
            "b's lease ends by 2 s after the last majority contact"
        );
    }

    #[test]
    fn a_lease_never_starts_after_the_quorum_contact_behind_it() {
        let mut lease = Lease::default();
        // Sent at 1000 (follower clock); answered with a quorum age of 300 ms.
        lease.renew(1_000, 300, &CFG);
        assert_eq!(lease.expires_ms, Some(700 + 2_000));
        // An older answer never shortens it.
        lease.renew(900, 300, &CFG);
        assert_eq!(lease.expires_ms, Some(2_700));
    }

    #[test]
    fn down_only_after_lease_and_margin_since_the_last_heartbeat() {
        let mut c = LeaderClock::new(0);
        c.heard_from("b", 10_000);
        assert!(!c.is_suspect("b", &CFG, 11_999));
        assert!(c.is_suspect("b", &CFG, 12_000));
        assert!(!c.is_down("b", &CFG, 12_399));
        assert!(c.is_down("b", &CFG, 12_400));
        // A new leader knows nothing older than its own start.
        let fresh = LeaderClock::new(50_000);
        assert!(!fresh.is_down("b", &CFG, 52_399));
        assert!(fresh.is_down("b", &CFG, 52_400));
    }

    #[test]
    fn a_new_leader_bounds_the_old_leaders_leases_from_the_voters_reports() {
        let v = voters(&["a", "b", "c"]);
        // a led until it died at 10 000; b (the new leader, since 10 600) and c had their
        // last heartbeats to a answered by 10 450 and 9 950 (in b's clock).
        let mut clock = LeaderClock::new(10_600);
        clock.heard_former("b", Some(0), 10_450);
        assert_eq!(
            clock.former_bound(&v),
            None,
            "c has not reported: its heartbeats could still renew a"
        );
        clock.heard_former("c", Some(700), 10_650);
        assert_eq!(clock.former_bound(&v), Some(10_450));
        clock.settle_former(&v);
        // a's lease started by 10 450 at the latest: Down at 10 450 + 2 000 + 400.
        assert!(!clock.is_down("a", &CFG, 12_849));
        assert!(clock.is_down("a", &CFG, 12_850));
        // A node that answers soon after the election is not Down: it had no lease (its
        // leader vanished), but it finds this one within two intervals.
        clock.heard_from("c", 10_700);
        assert!(!clock.is_down("c", &CFG, 12_900));
        // A node never heard from: not before two intervals after the election either.
        let mut late = LeaderClock::new(20_000);
        late.heard_former("b", Some(0), 5_000);
        late.heard_former("c", Some(0), 5_000);
        late.settle_former(&v);
        assert!(!late.is_down("a", &CFG, 20_999));
        assert!(late.is_down("a", &CFG, 21_000));
        // Without the reports: from the leader's start.
        let fresh = LeaderClock::new(10_600);
        assert!(!fresh.is_down("a", &CFG, 12_999));
        // Five voters: two may stay silent (the old leader and one more).
        let five = voters(&["a", "b", "c", "d", "e"]);
        let mut clock = LeaderClock::new(0);
        clock.heard_former("b", None, 100);
        clock.heard_former("c", Some(50), 100);
        assert_eq!(clock.former_bound(&five), None);
        clock.heard_former("d", Some(10), 100);
        assert_eq!(clock.former_bound(&five), Some(90));
    }

    #[test]
    fn the_leader_records_down_up_and_itself_only_with_a_quorum() {
        let v = voters(&["a", "b", "c"]);
        let mut clock = LeaderClock::new(0);
        clock.heard_from("b", 10_000);
        clock.heard_from("c", 10_000);
        let nodes = [
            ("a", NodeState::Down),
            ("b", NodeState::Paused),
            ("c", NodeState::Up),
        ];
        let states = |clock: &LeaderClock, now| -> Vec<(String, NodeState)> {
            clock
                .node_records("a", &v, nodes, &CFG, now)
                .into_iter()
                .map(|r| (r.node, r.state))
                .collect()
        };
        assert_eq!(states(&clock, 11_000), [("a".into(), NodeState::Up)]);
        // c keeps the quorum; b (Paused, drained) falls silent and is Down in time.
        clock.heard_from("c", 12_000);
        assert_eq!(
            states(&clock, 12_400),
            [("a".into(), NodeState::Up), ("b".into(), NodeState::Down)]
        );
        // Without quorum contact the leader records nothing at all.
        assert_eq!(states(&clock, 14_400), []);
    }

    #[test]
    fn the_follower_lease_always_ends_before_the_leader_calls_it_down() {
        // Whatever the network delays (d1 there, d2 back) and quorum age, the follower's
        // lease ends no later than leader-side arrival + lease, before Down (+ margin).
        for d1 in [0u64, 1, 50, 400] {
            for d2 in [0u64, 3, 200] {
                for age in [0u64, 100, 1_500] {
                    let sent = 10_000; // follower sends (shared timeline for the proof)
                    let arrival = sent + d1; // leader notes contact
                    let mut lease = Lease::default();
                    lease.renew(sent, age, &CFG);
                    let _answered = arrival + d2;
                    let mut clock = LeaderClock::new(0);
                    clock.heard_from("f", arrival);
                    let expiry = lease.expires_ms.unwrap();
                    let down_at = arrival + CFG.lease_ms() + CFG.margin_ms();
                    assert!(
                        expiry + CFG.margin_ms() <= down_at,
                        "d1={d1} d2={d2} age={age}"
                    );
                    assert!(clock.is_down("f", &CFG, down_at));
                }
            }
        }
    }
}
