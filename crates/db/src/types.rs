//! The Raft type configuration: what a log entry carries and what applying it returns.

use std::collections::{BTreeMap, VecDeque};
use std::io::Cursor;

use serde::{Deserialize, Serialize};
use vigil_core::command::{ApplyError, Command};

pub type NodeId = u64;

/// Names one write, the same on every attempt: a write proposed again (its first proposal was
/// cut from a leader's log, but may still be committed by a later one) is applied once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId {
    /// Random per database handle (a process), so ids of different nodes never meet.
    pub writer: u64,
    pub seq: u64,
}

/// One writer's commands, applied in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    pub id: RequestId,
    pub cmds: Vec<Command>,
}

/// One log entry's payload: writes applied in order (group commit puts several in one entry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    #[serde(default)]
    pub writes: Vec<Write>,
    /// Entries written before request ids: their commands, as one write without an id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmds: Vec<Command>,
}

/// Each command's result, in order (every write's, one after another).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub results: Vec<Result<(), ApplyError>>,
}

openraft::declare_raft_types!(
    /// Vigil's Raft types.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = openraft::BasicNode,
);

/// Most recent writes whose ids (and results) the state machine remembers. A duplicate is
/// proposed within the write timeout of its first proposal and committed at most an election
/// later; this covers that many seconds at several thousand writes per second.
pub const REMEMBERED_WRITES: usize = 32_768;

/// What applying a write returned, kept small: most writes have no error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// This many commands, all applied.
    Applied(usize),
    Results(Vec<Result<(), ApplyError>>),
}

impl Outcome {
    pub fn of(results: &[Result<(), ApplyError>]) -> Self {
        if results.iter().all(Result::is_ok) {
            Outcome::Applied(results.len())
        } else {
            Outcome::Results(results.to_vec())
        }
    }

    pub fn results(&self) -> Vec<Result<(), ApplyError>> {
        match self {
            Outcome::Applied(n) => vec![Ok(()); *n],
            Outcome::Results(r) => r.clone(),
        }
    }
}

/// The ids of the last [`REMEMBERED_WRITES`] writes applied, with their outcomes. Part of the
/// state machine (and its snapshots), so every replica skips the same duplicates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<(RequestId, Outcome)>", into = "Vec<(RequestId, Outcome)>")]
pub struct AppliedWrites {
    order: VecDeque<RequestId>,
    outcomes: BTreeMap<RequestId, Outcome>,
}

impl AppliedWrites {
    pub fn get(&self, id: &RequestId) -> Option<&Outcome> {
        self.outcomes.get(id)
    }

    pub fn insert(&mut self, id: RequestId, outcome: Outcome) {
        if self.outcomes.insert(id, outcome).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > REMEMBERED_WRITES {
            if let Some(old) = self.order.pop_front() {
                self.outcomes.remove(&old);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

impl From<Vec<(RequestId, Outcome)>> for AppliedWrites {
    fn from(v: Vec<(RequestId, Outcome)>) -> Self {
        let mut a = AppliedWrites::default();
        for (id, o) in v {
            a.insert(id, o);
        }
        a
    }
}

impl From<AppliedWrites> for Vec<(RequestId, Outcome)> {
    fn from(mut a: AppliedWrites) -> Self {
        a.order
            .iter()
            .filter_map(|id| a.outcomes.remove(id).map(|o| (*id, o)))
            .collect()
    }
}

/// A node's Raft id from its name (64-bit FNV-1a): stable, and the same on every node, so a
/// joining node knows its id before it is a member. Names are unique in the database; a hash
/// collision between two names is refused at join.
pub fn node_id(name: &str) -> NodeId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
