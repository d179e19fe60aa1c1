//! The Resource Host Subsystem (the seed's RHS.exe): `vigil rhs` runs in a child process of
//! the agent, hosts resource types, calls their entry points, runs LooksAlive and IsAlive on
//! each resource's own intervals, reacts to events at once, and reports state changes.
//!
//! - [`protocol`]: the versioned, length-delimited messages between agent and RHS.
//! - [`types`]: the resource-type trait ([`types::ResourceType`], [`types::Resource`]) and the
//!   built-in types, one module each.
//! - [`host`]: the RHS process itself: one task per resource, every call into a type on a
//!   thread of its own under a deadlock watchdog.
//!
//! The RHS never touches the cluster database: the agent's RCM hands it what it needs.

pub mod cgroup;
pub mod host;
pub mod protocol;
pub mod types;
