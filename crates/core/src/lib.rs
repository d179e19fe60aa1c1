//! Vigil's pure core: everything the cluster *decides*, with no I/O.
//!
//! - [`model`]: nodes, groups, resources and their states (the cluster database's contents).
//! - [`command`]: the typed changes to the cluster database and the one deterministic
//!   [`command::apply`] that performs them. The `db` crate persists (and later replicates)
//!   exactly this state machine.
//! - [`props`] and [`params`]: resource properties with Windows' defaults, and the parameter
//!   schemas resource types declare, both validated with errors that name the bad value.
//! - [`deps`]: dependency order inside a group and cycle refusal.
//! - [`restart`]: the restart policy (threshold within period, delay, exhaustion).
//! - [`failover`]: the choice of the node a failed group goes to.
//! - [`rcm`]: the Resource Control Manager's reconcile loop: (database, local state, event,
//!   now) → actions. The agent executes the actions and feeds results back as events.
//! - [`event`]: the cluster log's structured entries.
//!
//! Not here: sockets, processes, files, clocks, async. Time enters as `now_ms`, a monotonic
//! millisecond count chosen by the caller, so the simulator and tests drive it directly.

pub mod command;
pub mod deps;
pub mod event;
pub mod failover;
pub mod lease;
pub mod model;
pub mod nm;
pub mod params;
pub mod props;
pub mod rcm;
pub mod restart;
