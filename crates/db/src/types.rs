//! The Raft type configuration: what a log entry carries and what applying it returns.

use std::io::Cursor;

use serde::{Deserialize, Serialize};
use vigil_core::command::{ApplyError, Command};

pub type NodeId = u64;

/// One log entry's payload: commands applied in order (a batch is one entry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub cmds: Vec<Command>,
}

/// Each command's result, in order.
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
