//! A deterministic simulator for Vigil's failover behaviour: the real pure core (RCM, Node
//! Manager, the agent's executor and operators' intents, failover manager, leases, the
//! database's `apply`) driven with virtual time over simulated
//! nodes, a simulated network and simulated resources. See [`world`] for the model and
//! [`scenario`] for the scenario file format; `tests/` runs every file in `scenarios/` and a
//! randomized run over many seeds that checks the safety invariants.

pub mod raft;
pub mod random;
pub mod rng;
pub mod scenario;
pub mod world;
