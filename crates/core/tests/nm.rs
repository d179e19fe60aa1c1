//! The Node Manager's decisions (`nm::NodeManager`): leases that wait for the copy, refusals,
//! records, and fencing when the database cannot write.

use vigil_core::command::{Command, apply};
use vigil_core::lease::LeaseConfig;
use vigil_core::model::{ClusterState, NodeState};
use vigil_core::nm::{
    Heartbeat, HeartbeatReply, NmAction, NmInput, NodeManager, Replica, Standing,
};

const CFG: LeaseConfig = LeaseConfig {
    interval_ms: 500,
    threshold: 4,
    watchdog_ms: 0,
};

fn db(nodes: &[&str]) -> ClusterState {
    let mut s = ClusterState::default();
    for n in nodes {
        let cmd = Command::AddNode {
            name: n.to_string(),
            address: format!("{n}:7440"),
        };
        apply(&mut s, &cmd).unwrap();
    }
    s
}

fn set(s: &mut ClusterState, node: &str, state: NodeState) {
    let cmd = Command::SetNodeState {
        name: node.into(),
        state,
    };
    apply(s, &cmd).unwrap();
}

/// The tests' shorthand for [`NodeManager::step`]'s inputs.
trait Steps {
    fn tick(&mut self, r: &Replica, db: &ClusterState, now: u64) -> Vec<NmAction>;
    fn heartbeat(
        &mut self,
        r: &Replica,
        db: &ClusterState,
        hb: &Heartbeat,
        now: u64,
    ) -> Result<HeartbeatReply, String>;
    fn answered(&mut self, sent_ms: u64, reply: Option<&HeartbeatReply>, now: u64);
    fn written(&mut self, node: &str);
}

impl Steps for NodeManager {
    fn tick(&mut self, r: &Replica, db: &ClusterState, now: u64) -> Vec<NmAction> {
        self.step(r, db, NmInput::Tick, now)
    }

    fn heartbeat(
        &mut self,
        r: &Replica,
        db: &ClusterState,
        hb: &Heartbeat,
        now: u64,
    ) -> Result<HeartbeatReply, String> {
        match &self.step(r, db, NmInput::Heartbeat(hb.clone()), now)[..] {
            [NmAction::Reply(reply)] => reply.clone(),
            other => panic!("a heartbeat is answered with one reply, not {other:?}"),
        }
    }

    /// Answers and written records decide nothing at once: they show at the next tick.
    fn answered(&mut self, sent_ms: u64, reply: Option<&HeartbeatReply>, now: u64) {
        let input = NmInput::Answered {
            sent_ms,
            reply: reply.cloned(),
        };
        let out = self.step(&Replica::default(), &ClusterState::default(), input, now);
        assert_eq!(out, []);
    }

    fn written(&mut self, node: &str) {
        let input = NmInput::Written { node: node.into() };
        let out = self.step(&Replica::default(), &ClusterState::default(), input, 0);
        assert_eq!(out, []);
    }
}

fn voters() -> Vec<Vec<String>> {
    vec![vec!["a".into(), "b".into(), "c".into()]]
}

/// `b` following leader `a` in term 2, its copy at `applied`.
fn follower(applied: u64) -> Replica {
    Replica {
        term: 2,
        leader: Some("a".into()),
        leading: false,
        voters: voters(),
        last_log_index: applied,
        applied_index: applied,
        ..Replica::default()
    }
}

/// `a` leading term 2 with quorum time `quorum_ms` and `last` entries.
fn leader(quorum_ms: Option<u64>, last: u64) -> Replica {
    Replica {
        term: 2,
        leader: Some("a".into()),
        leading: true,
        voters: voters(),
        last_log_index: last,
        applied_index: last,
        quorum_ms,
        ..Replica::default()
    }
}

fn fences(actions: &[NmAction]) -> Vec<bool> {
    actions
        .iter()
        .filter_map(|a| match a {
            NmAction::Fence { fenced, .. } => Some(*fenced),
            _ => None,
        })
        .collect()
}

fn sends(actions: &[NmAction]) -> Vec<&Heartbeat> {
    actions
        .iter()
        .filter_map(|a| match a {
            NmAction::Send { heartbeat, .. } => Some(heartbeat),
            _ => None,
        })
        .collect()
}

#[test]
fn a_lease_is_used_only_once_the_copy_has_applied_what_the_leader_vouched_for() {
    let s = db(&["a", "b", "c"]);
    let mut la = NodeManager::new("a", CFG);
    let mut b = NodeManager::new("b", CFG);
    // b's copy is at 5 (say, an old data dir); the leader's log reaches 40.
    let out = b.tick(&follower(5), &s, 1_000);
    let hb = sends(&out)[0].clone();
    let reply = la
        .heartbeat(&leader(Some(990), 40), &s, &hb, 1_001)
        .unwrap();
    assert_eq!((reply.quorum_age_ms, reply.log_index), (Some(11), 40));
    b.answered(1_000, Some(&reply), 1_002);
    let out = b.tick(&follower(5), &s, 1_050);
    assert!(fences(&out).is_empty(), "still fenced: {out:?}");
    assert!(b.is_fenced());
    assert!(matches!(
        b.standing(&follower(5), 1_050),
        Standing::Fenced {
            applied_index: 5,
            ..
        }
    ));
    let out = b.tick(&follower(40), &s, 1_100);
    assert_eq!(fences(&out), [false], "current now: {out:?}");
    assert_eq!(b.lease_until_ms(1_100), Some(1_000 - 11 + 2_000));
}

#[test]
fn the_leader_grants_no_lease_to_a_node_recorded_down_or_being_recorded_down() {
    let mut s = db(&["a", "b", "c"]);
    let mut la = NodeManager::new("a", CFG);
    let hb = |name: &str| Heartbeat {
        name: name.into(),
        term: 2,
        former_age_ms: None,
        answered_age_ms: Some(0),
        incarnation: 0,
    };
    la.heartbeat(&leader(Some(0), 3), &s, &hb("b"), 0).unwrap();
    la.heartbeat(&leader(Some(0), 3), &s, &hb("c"), 0).unwrap();
    // c falls silent; a decides Down at lease + margin and starts writing it.
    la.heartbeat(&leader(Some(2_350), 3), &s, &hb("b"), 2_350)
        .unwrap();
    let out = la.tick(&leader(Some(2_350), 3), &s, 2_400);
    assert!(
        out.iter().any(
            |a| matches!(a, NmAction::Record(r) if r.node == "c" && r.state == NodeState::Down)
        ),
        "{out:?}"
    );
    // c comes back before the record is written: no lease (its copy would not show it).
    let reply = la
        .heartbeat(&leader(Some(2_390), 4), &s, &hb("c"), 2_410)
        .unwrap();
    assert_eq!(reply.quorum_age_ms, None);
    assert!(reply.refused.unwrap().contains("recorded Down"));
    // Written: still none while the copy says Down; Up is recorded since c was heard.
    la.written("c");
    set(&mut s, "c", NodeState::Down);
    let reply = la
        .heartbeat(&leader(Some(2_400), 5), &s, &hb("c"), 2_420)
        .unwrap();
    assert_eq!(reply.quorum_age_ms, None);
    let out = la.tick(&leader(Some(2_400), 5), &s, 2_450);
    assert!(
        out.iter()
            .any(|a| matches!(a, NmAction::Record(r) if r.node == "c" && r.state == NodeState::Up)),
        "{out:?}"
    );
    la.written("c");
    set(&mut s, "c", NodeState::Up);
    let reply = la
        .heartbeat(&leader(Some(2_450), 6), &s, &hb("c"), 2_460)
        .unwrap();
    assert_eq!((reply.quorum_age_ms, reply.log_index), (Some(10), 6));
}

#[test]
fn a_new_leader_vouches_for_a_silent_predecessor_only_after_lease_and_margin() {
    let s = db(&["a", "b", "c"]);
    let mut lb = NodeManager::new("b", CFG);
    let r = Replica {
        term: 3,
        leader: Some("b".into()),
        leading: true,
        voters: voters(),
        quorum_ms: Some(10_000),
        // b last began an append from a (term 2) at 9 000.
        former_append_ms: Some(9_000),
        ..Replica::default()
    };
    lb.tick(&r, &s, 10_000);
    assert!(
        !lb.surely_down(&r, "a", 12_399),
        "no reports but its own yet"
    );
    assert!(lb.surely_down(&r, "a", 12_400), "since the election");
    // c reports that its last append from a began 1 200 ms before its heartbeat.
    let mut lb = NodeManager::new("b", CFG);
    lb.tick(&r, &s, 10_000);
    let hb = Heartbeat {
        name: "c".into(),
        term: 3,
        former_age_ms: Some(1_200),
        answered_age_ms: Some(0),
        incarnation: 0,
    };
    lb.heartbeat(&r, &s, &hb, 10_100).unwrap();
    // floor = max(9 000, 8 900) = 9 000: Down at 11 400, but not before two intervals after
    // the election (11 000) either.
    assert!(!lb.surely_down(&r, "a", 11_399));
    assert!(lb.surely_down(&r, "a", 11_400));
    // A report sent for another term does not count.
    let mut lb = NodeManager::new("b", CFG);
    lb.tick(&r, &s, 10_000);
    let stale = Heartbeat { term: 2, ..hb };
    lb.heartbeat(&r, &s, &stale, 10_100).unwrap();
    assert!(!lb.surely_down(&r, "a", 11_400));
}

#[test]
fn a_node_whose_database_cannot_write_fences_itself_goes_silent_and_needs_a_new_lease() {
    let s = db(&["a", "b", "c"]);
    let mut la = NodeManager::new("a", CFG);
    let mut b = NodeManager::new("b", CFG);
    let out = b.tick(&follower(7), &s, 0);
    let reply = la
        .heartbeat(&leader(Some(0), 7), &s, sends(&out)[0], 1)
        .unwrap();
    b.answered(0, Some(&reply), 2);
    assert_eq!(fences(&b.tick(&follower(7), &s, 10)), [false]);
    let out = b.tick(&follower(7), &s, 500);
    let reply = la
        .heartbeat(&leader(Some(500), 7), &s, sends(&out)[0], 501)
        .unwrap();
    b.answered(500, Some(&reply), 502);
    let broken = Replica {
        storage_failure: Some("raft.redb: No space left on device".into()),
        ..follower(7)
    };
    let out = b.tick(&broken, &s, 600);
    assert_eq!(fences(&out), [true]);
    assert!(sends(&out).is_empty(), "a broken node sends no heartbeat");
    let why = b.standing(&broken, 600);
    assert!(
        matches!(&why, Standing::Fenced { reason, .. } if reason.contains("No space left")),
        "{why:?}"
    );
    // Writing again at 700: still out (fenced, silent) for lease + margin after the last
    // failure, so that the leader records it Down.
    for t in (700..3_000).step_by(50) {
        let out = b.tick(&follower(7), &s, t);
        assert!(fences(&out).is_empty() && sends(&out).is_empty(), "at {t}");
        assert!(b.is_fenced());
    }
    // Then the old grant is gone; it waits for a new one.
    let out = b.tick(&follower(7), &s, 3_000);
    assert!(fences(&out).is_empty());
    assert!(b.is_fenced());
    let reply = la
        .heartbeat(&leader(Some(3_000), 9), &s, sends(&out)[0], 3_001)
        .unwrap();
    b.answered(3_000, Some(&reply), 3_002);
    assert!(
        fences(&b.tick(&follower(8), &s, 3_050)).is_empty(),
        "9 not applied"
    );
    assert_eq!(fences(&b.tick(&follower(9), &s, 3_100)), [false]);
}

#[test]
fn a_disk_that_fails_now_and_then_keeps_the_node_out_until_it_has_held_for_a_lease() {
    // A reopened database takes a small write and fails the next large one: failing from
    // 600 to 1 600, writing until 2 600, failing again until 3 000. Answering heartbeats in
    // between would keep the leader from ever recording the node Down, and its groups would
    // run nowhere.
    let s = db(&["a", "b", "c"]);
    let mut b = NodeManager::new("b", CFG);
    let mut la = NodeManager::new("a", CFG);
    let out = b.tick(&follower(7), &s, 0);
    let reply = la
        .heartbeat(&leader(Some(0), 7), &s, sends(&out)[0], 1)
        .unwrap();
    b.answered(0, Some(&reply), 2);
    assert_eq!(fences(&b.tick(&follower(7), &s, 10)), [false]);
    let broken = Replica {
        storage_failure: Some("raft.redb: No space left on device".into()),
        ..follower(7)
    };
    let failing = |t: u64| (600..1_600).contains(&t) || (2_600..3_000).contains(&t);
    let mut first_send = None;
    for t in (600..8_000).step_by(50) {
        let r = if failing(t) { &broken } else { &follower(7) };
        let out = b.tick(r, &s, t);
        if !sends(&out).is_empty() {
            first_send = Some(t);
            break;
        }
        assert!(b.is_fenced(), "at {t}");
    }
    // The last failure was seen at 2 950; lease + margin is 2 400 ms.
    assert_eq!(first_send, Some(5_350));
}

#[test]
fn a_follower_reports_its_former_instant_and_retries_at_once_after_a_miss() {
    let s = db(&["a", "b", "c"]);
    let mut b = NodeManager::new("b", CFG);
    let r = Replica {
        former_append_ms: Some(400),
        ..follower(1)
    };
    let out = b.tick(&r, &s, 1_000);
    assert_eq!(sends(&out)[0].former_age_ms, Some(600));
    assert_eq!(sends(&out)[0].term, 2);
    // Not due again within the interval once answered...
    b.answered(1_000, None, 1_010);
    // ...but a missed answer is retried at the next tick.
    assert_eq!(sends(&b.tick(&r, &s, 1_050)).len(), 1);
}

#[test]
fn a_node_heard_but_getting_no_answers_is_leased_no_more_and_recorded_down_from_its_last_grant() {
    let mut s = db(&["a", "b", "c"]);
    let mut la = NodeManager::new("a", CFG);
    let hb = |answered: Option<u64>| Heartbeat {
        name: "c".into(),
        term: 2,
        former_age_ms: None,
        answered_age_ms: answered,
        incarnation: 0,
    };
    let voters_b = Heartbeat {
        name: "b".into(),
        ..hb(Some(0))
    };
    let r = |t| leader(Some(t), 3);
    // c is answered at 0; then its answers stop reaching it (a one-way cut), while its
    // heartbeats keep arriving and say so: an answer older than the interval plus the answers'
    // timeout (1 500 ms) is no recent one, from 2 000 on.
    let first = la.heartbeat(&r(0), &s, &hb(Some(0)), 0).unwrap();
    assert!(first.quorum_age_ms.is_some());
    let beat = |la: &mut NodeManager, s: &ClusterState, t: u64| {
        la.heartbeat(&r(t), s, &voters_b, t).unwrap();
        la.heartbeat(&r(t), s, &hb(Some(t)), t).unwrap()
    };
    for t in (500..4_000).step_by(500) {
        assert!(
            beat(&mut la, &s, t).quorum_age_ms.is_some(),
            "granted at {t}"
        );
    }
    // A lease of such reports (from 2 000): no more grants.
    let reply = beat(&mut la, &s, 4_000);
    assert_eq!(reply.quorum_age_ms, None);
    assert!(reply.refused.unwrap().contains("no answer from a leader"));
    // Down a lease and a margin after its last grant (at 3 500), though it is heard.
    for t in (4_100..5_900).step_by(100) {
        beat(&mut la, &s, t);
        let out = la.tick(&r(t), &s, t);
        assert!(
            !out.iter().any(|a| matches!(a, NmAction::Record(_))),
            "recorded at {t}: {out:?}"
        );
    }
    beat(&mut la, &s, 5_900);
    let out = la.tick(&r(5_900), &s, 5_900);
    assert!(
        out.iter().any(
            |a| matches!(a, NmAction::Record(r) if r.node == "c" && r.state == NodeState::Down)
        ),
        "{out:?}"
    );
    la.written("c");
    set(&mut s, "c", NodeState::Down);
    // Still deaf: not recorded Up again (no flapping); heard with fresh answers (its
    // refusals reach it again): Up.
    beat(&mut la, &s, 6_000);
    let out = la.tick(&r(6_000), &s, 6_000);
    assert!(
        !out.iter().any(|a| matches!(a, NmAction::Record(_))),
        "{out:?}"
    );
    la.heartbeat(&r(6_100), &s, &hb(Some(10)), 6_100).unwrap();
    let out = la.tick(&r(6_100), &s, 6_100);
    assert!(
        out.iter()
            .any(|a| matches!(a, NmAction::Record(r) if r.node == "c" && r.state == NodeState::Up)),
        "{out:?}"
    );
}

#[test]
fn a_watchdog_delays_down_by_its_timeout_and_a_fence_ends_the_wait() {
    let mut s = db(&["a", "b", "c"]);
    s.watchdog_ms = 3_000;
    let mut la = NodeManager::new("a", CFG);
    let r = leader(Some(10_000), 5);
    la.tick(&r, &s, 10_000);
    let hb = |name: &str| Heartbeat {
        name: name.into(),
        term: 2,
        former_age_ms: None,
        answered_age_ms: Some(0),
        incarnation: 0,
    };
    la.heartbeat(&r, &s, &hb("c"), 10_000).unwrap();
    // lease 2 000 + watchdog 3 000 + margin 400 after the last contact.
    assert!(!la.surely_down(&r, "c", 15_399));
    assert!(la.surely_down(&r, "c", 15_400));
    // No fence device: nothing to fence.
    let r = leader(Some(11_000), 5);
    assert!(la.fence_candidates(&r, &s, 11_000).is_empty());
    s.nodes.get_mut("c").unwrap().fence = Some(vigil_core::model::FenceDevice {
        agent: "/usr/sbin/fence_dummy".into(),
        params: Default::default(),
    });
    // Silent for two intervals (1 000 ms): fence it; a leader without a recent quorum does not.
    assert!(la.fence_candidates(&r, &s, 10_999).is_empty());
    assert_eq!(la.fence_candidates(&r, &s, 11_000), ["c"]);
    assert!(
        la.fence_candidates(&leader(Some(8_000), 5), &s, 11_000)
            .is_empty()
    );
    // Fenced: Down at once, and not fenced again; heard from again: not Down.
    la.step(&r, &s, NmInput::Fenced { node: "c".into() }, 11_100);
    assert!(la.surely_down(&r, "c", 11_100));
    assert!(la.fence_candidates(&r, &s, 11_200).is_empty());
    la.heartbeat(&r, &s, &hb("c"), 11_300).unwrap();
    assert!(!la.surely_down(&r, "c", 11_300));
}

/// A node that stopped cleanly is never recorded Down, however long it is silent, and gets
/// no lease while recorded Stopped. A heartbeat sent by the stopped agent (in flight as it
/// stopped) does not bring it back; one from the agent's next start records it Up.
#[test]
fn a_cleanly_stopped_node_is_never_down_and_is_back_only_with_another_incarnation() {
    use vigil_core::model::ShutdownPolicy;
    let mut s = db(&["a", "b", "c"]);
    let mut la = NodeManager::new("a", CFG).with_incarnation(1);
    let hb = |name: &str, incarnation| Heartbeat {
        name: name.into(),
        term: 2,
        former_age_ms: None,
        answered_age_ms: Some(0),
        incarnation,
    };
    la.heartbeat(&leader(Some(0), 3), &s, &hb("b", 20), 0)
        .unwrap();
    la.heartbeat(&leader(Some(0), 3), &s, &hb("c", 30), 0)
        .unwrap();
    let cmd = Command::NodeStopped {
        name: "c".into(),
        incarnation: 30,
        policy: ShutdownPolicy::Freeze,
        paused: false,
    };
    apply(&mut s, &cmd).unwrap();
    let records = |out: Vec<NmAction>| -> Vec<(String, NodeState)> {
        out.into_iter()
            .filter_map(|a| match a {
                NmAction::Record(r) => Some((r.node, r.state)),
                _ => None,
            })
            .collect()
    };
    // Long past lease + margin: b (heard) stays Up, c (silent, Frozen) is not recorded Down.
    for now in [1_000, 3_000, 10_000] {
        la.heartbeat(&leader(Some(now), 3), &s, &hb("b", 20), now)
            .unwrap();
        let out = la.tick(&leader(Some(now), 3), &s, now + 10);
        assert_eq!(records(out), [], "at {now}");
    }
    // The stopped agent's last heartbeat: no lease, and still Frozen.
    let reply = la
        .heartbeat(&leader(Some(10_000), 3), &s, &hb("c", 30), 10_020)
        .unwrap();
    assert_eq!(reply.quorum_age_ms, None);
    assert!(reply.refused.unwrap().contains("recorded Frozen"));
    assert_eq!(records(la.tick(&leader(Some(10_000), 3), &s, 10_030)), []);
    // The next start: Up.
    la.heartbeat(&leader(Some(10_000), 3), &s, &hb("c", 31), 10_040)
        .unwrap();
    assert_eq!(
        records(la.tick(&leader(Some(10_000), 3), &s, 10_050)),
        [("c".to_string(), NodeState::Up)]
    );
}

/// The failover manager gives a Stopped node's groups away at once only on this leader's
/// word: the stopped run is the latest it heard. A stop record that lands after another run
/// started (its heartbeats heard) is not vouched for, nor made so by a late heartbeat of the
/// stopped run; the node is recorded back instead.
#[test]
fn a_stop_is_vouched_only_for_the_latest_run_this_leader_heard() {
    use vigil_core::model::ShutdownPolicy;
    let hb = |incarnation| Heartbeat {
        name: "c".into(),
        term: 2,
        former_age_ms: None,
        answered_age_ms: Some(0),
        incarnation,
    };
    let stop = |s: &mut ClusterState, incarnation| {
        let cmd = Command::NodeStopped {
            name: "c".into(),
            incarnation,
            policy: ShutdownPolicy::Failover,
            paused: false,
        };
        apply(s, &cmd).unwrap();
    };
    let r = leader(Some(1_000), 3);
    // The common case: the stopped run is the one heard.
    let mut s = db(&["a", "b", "c"]);
    let mut la = NodeManager::new("a", CFG).with_incarnation(1);
    la.heartbeat(&r, &s, &hb(30), 1_000).unwrap();
    stop(&mut s, 30);
    assert!(la.stop_vouched(&r, &s, "c", 1_010));
    // A late record: run 31 was heard (and may run the groups) before run 30's stop landed.
    let mut s = db(&["a", "b", "c"]);
    let mut la = NodeManager::new("a", CFG).with_incarnation(1);
    la.heartbeat(&r, &s, &hb(30), 1_000).unwrap();
    la.heartbeat(&r, &s, &hb(31), 1_100).unwrap();
    stop(&mut s, 30);
    assert!(!la.stop_vouched(&r, &s, "c", 1_110));
    // A heartbeat of run 30 that arrives late changes nothing.
    la.heartbeat(&r, &s, &hb(30), 1_120).unwrap();
    assert!(!la.stop_vouched(&r, &s, "c", 1_130));
    // The leader records it back, ending that stop and no other.
    let out = la.tick(&leader(Some(1_130), 3), &s, 1_140);
    let back: Vec<_> = out
        .iter()
        .filter_map(|a| match a {
            NmAction::Record(r) => Some((r.node.clone(), r.state, r.back_from)),
            _ => None,
        })
        .collect();
    assert_eq!(back, [("c".to_string(), NodeState::Up, Some(30))]);
    // A follower vouches for nothing.
    let follower = Replica {
        leading: false,
        ..r.clone()
    };
    assert!(!la.stop_vouched(&follower, &s, "c", 1_150));
}
