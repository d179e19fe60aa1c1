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
//! - [`intent`]: operators' requests (move, drain, desired state) as commands, and when
//!   each has been carried out; the API and the simulator share them.
//! - [`rcm`]: the Resource Control Manager's reconcile loop: (database, local state, event,
//!   now) → actions. The agent executes the actions and feeds results back as events.
//! - [`security`]: the CA, issued certificates and tokens as the database holds them, and
//!   the rules for a token's use.
//! - [`event`]: the cluster log's structured entries.
//! - [`exec`]: carrying out the RCM's and the Node Manager's actions over a small
//!   environment trait, one implementation shared by the agent, the simulator and tests.
//!
//! Not here: sockets, processes, files, clocks, async. Time enters as `now_ms`, a monotonic
//! millisecond count chosen by the caller, so the simulator and tests drive it directly.

pub mod command;
pub mod deps;
pub mod event;
pub mod exec;
pub mod failover;
pub mod intent;
pub mod lease;
pub mod model;
pub mod names;
pub mod nm;
pub mod params;
pub mod props;
pub mod rcm;
pub mod restart;
pub mod security;
