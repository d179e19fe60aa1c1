//! The resource-type trait — the seed's resource DLL entry points — and the built-in types.
//!
//! A type is opened once per resource ([`ResourceType::open`], the seed's Open) and the
//! instance gets Online, Offline, Terminate, LooksAlive, IsAlive and Close. Every entry point
//! has a default that does nothing and succeeds: an entry point a type does not implement is
//! a no-op, never a failure. Calls are blocking; the host runs each on a thread of its own
//! under the deadlock watchdog, one call at a time per resource.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use vigil_core::params::ParamSpec;

pub mod process;

/// What a resource is told when it is opened.
#[derive(Clone, Debug)]
pub struct OpenContext {
    pub resource: String,
    pub params: BTreeMap<String, String>,
    pub node: String,
    pub epoch: u64,
    pub log_path: PathBuf,
}

/// The answer of a health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Alive,
    Failed(String),
    /// Stopped by someone outside the cluster (the service's own tools): not a failure.
    StoppedOutOfBand(String),
}

/// The answer of a long-running Online.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    Done,
    /// Still coming online; `Some` reports progress (which postpones the pending timeout).
    Pending(Option<String>),
}

pub trait ResourceType: Send + Sync {
    fn name(&self) -> &'static str;
    fn description(&self) -> &'static str;
    fn schema(&self) -> Vec<ParamSpec>;
    /// Open: parse the parameters and make an instance; no side effects yet.
    fn open(&self, ctx: OpenContext) -> Result<Box<dyn Resource>, String>;
}

pub trait Resource: Send {
    /// Start it. `Pending` makes the host call [`Resource::online_progress`] until `Done`.
    fn online(&mut self) -> Result<Progress, String> {
        Ok(Progress::Done)
    }
    fn online_progress(&mut self) -> Result<Progress, String> {
        Ok(Progress::Done)
    }
    /// Stop it gracefully (bounded by the type's own stop timeout).
    fn offline(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// Stop it now, whatever it takes.
    fn terminate(&mut self) {}
    /// The quick check.
    fn looks_alive(&mut self) -> Health {
        Health::Alive
    }
    /// True when LooksAlive only asks the kernel and never blocks: the host then runs it on
    /// its own task rather than on a thread under the watchdog (a thread hand-off costs more
    /// than the check). For built-in types that can promise it; plugins never can.
    fn looks_alive_never_blocks(&self) -> bool {
        false
    }
    /// The thorough check.
    fn is_alive(&mut self) -> Health {
        Health::Alive
    }
    fn close(&mut self) {}
    /// A descriptor that becomes readable when the resource changes by itself (a pidfd):
    /// the host runs LooksAlive at once instead of waiting for the next interval.
    fn event_fd(&self) -> Option<OwnedFd> {
        None
    }
    fn pid(&self) -> Option<u32> {
        None
    }
}

/// The built-in resource types.
pub fn builtin() -> Vec<Box<dyn ResourceType>> {
    vec![Box::new(process::ProcessType)]
}

/// A built-in type by name.
pub fn find(name: &str) -> Option<Box<dyn ResourceType>> {
    builtin().into_iter().find(|t| t.name() == name)
}
