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

pub mod ocf;
pub mod plugin;
pub mod process;
mod qmp;
pub mod vm;

/// What a resource is told when it is opened.
#[derive(Clone, Debug)]
pub struct OpenContext {
    pub resource: String,
    pub params: BTreeMap<String, String>,
    pub node: String,
    /// This node's API address (`HOST:PORT`); types that listen (a VM's incoming
    /// migration, its forwarded ports) use its host.
    pub node_address: String,
    pub epoch: u64,
    pub log_path: PathBuf,
    /// This node's certificate for a VM's live migration (none: live migration is refused).
    pub migration_tls: Option<crate::protocol::MigrationTls>,
}

/// The answer of a health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Alive,
    Failed(String),
    /// Stopped by someone outside the cluster (the service's own tools): not a failure.
    StoppedOutOfBand(String),
    /// The configuration is wrong on this node (OCF's 2, 5 and 6): not retried here.
    Misconfigured(String),
    /// Still there, but something changed that status and the log should show (a VM paused
    /// by an I/O error or from outside, and running again): not a failure.
    Notice(String),
}

/// Why Online failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Restarted by the restart policy.
    Failed(String),
    /// The configuration is wrong on this node: not retried here, the group fails over.
    Misconfigured(String),
}

impl From<String> for Fault {
    fn from(why: String) -> Self {
        Fault::Failed(why)
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Failed(why) => f.write_str(why),
            Fault::Misconfigured(why) => write!(f, "configuration error: {why}"),
        }
    }
}

/// The answer of a long-running Online.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    Done,
    /// Still coming online; `Some` reports progress (which postpones the pending timeout).
    Pending(Option<String>),
}

/// The longest a single call into a resource may take with given parameters, and why; the
/// deadlock timeout must be longer, or a healthy but slow call would be taken for a deadlock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallBound {
    pub ms: u64,
    pub why: String,
}

pub trait ResourceType: Send + Sync {
    fn name(&self) -> &str;
    fn description(&self) -> &str;
    fn schema(&self) -> Vec<ParamSpec>;
    /// Checks parameters beyond their schema (ranges, combinations), as Open would, and says
    /// how long a call may take with them. Called where resources are created and changed.
    fn check(&self, params: &BTreeMap<String, String>) -> Result<CallBound, String>;
    /// Open: parse the parameters and make an instance; no side effects yet.
    fn open(&self, ctx: OpenContext) -> Result<Box<dyn Resource>, String>;
    /// Whether a running instance can migrate between nodes (a live move calls
    /// [`Resource::migrate_to`] on the source, then [`Resource::migrate_from`] on the target).
    fn can_migrate(&self) -> bool {
        false
    }
}

pub trait Resource: Send {
    /// Start it. `Pending` makes the host call [`Resource::online_progress`] until `Done`.
    fn online(&mut self) -> Result<Progress, Fault> {
        Ok(Progress::Done)
    }
    fn online_progress(&mut self) -> Result<Progress, Fault> {
        Ok(Progress::Done)
    }
    /// Live move, on the source: move the running instance to node `target` (`quick`: by
    /// saving its state for the target to restore, rather than while it runs). An error
    /// must leave it running here.
    /// `target_address` is the target node's API address (`HOST:PORT`). Answers what
    /// happened (for the cluster log).
    fn migrate_to(
        &mut self,
        target: &str,
        target_address: &str,
        quick: bool,
    ) -> Result<String, String> {
        let _ = (target_address, quick);
        Err(format!("this resource type cannot migrate (to {target})"))
    }
    /// Live move, on the target, before the source migrates: get ready to receive the
    /// instance from node `source` (a VM: start QEMU waiting for the incoming migration).
    fn migrate_prepare(&mut self, source: &str, quick: bool) -> Result<(), String> {
        let _ = (source, quick);
        Ok(())
    }
    /// Live move, on the target: complete the migration from node `source`; then it runs here.
    fn migrate_from(&mut self, source: &str, quick: bool) -> Result<Progress, Fault> {
        let _ = quick;
        Err(Fault::Failed(format!(
            "this resource type cannot migrate (from {source})"
        )))
    }
    /// Stop it gracefully (bounded by the type's own stop timeout). `Some(note)` when it
    /// stopped otherwise than asked (e.g. forced after the stop timeout), for the cluster log.
    fn offline(&mut self) -> Result<Option<String>, String> {
        Ok(None)
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
    /// A type-specific request (the seed's ResourceControl), answered with text.
    fn control(&mut self, request: &str) -> Result<String, String> {
        Err(format!(
            "this resource type takes no control requests (asked {request:?})"
        ))
    }
    /// A descriptor that becomes readable when the resource changes by itself (a pidfd):
    /// the host runs LooksAlive at once instead of waiting for the next interval.
    fn event_fd(&self) -> Option<OwnedFd> {
        None
    }
    fn pid(&self) -> Option<u32> {
        None
    }
    /// How it runs, for the Online record (e.g. which accelerator a VM got).
    fn describe(&self) -> Option<String> {
        None
    }
}

/// An optional parameter's schema entry.
pub(crate) fn optional(
    name: &str,
    kind: vigil_core::params::ParamKind,
    default: Option<&str>,
    description: &str,
) -> ParamSpec {
    ParamSpec {
        name: name.to_string(),
        kind,
        required: false,
        unique: false,
        default: default.map(str::to_string),
        description: description.to_string(),
        secret: false,
    }
}

/// A whole-number parameter in `min..=max` (`default` when absent); the error names it.
pub(crate) fn int_param(
    params: &BTreeMap<String, String>,
    key: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, String> {
    match params.get(key) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| {
                format!(
                    "parameter {key} = {v:?} is not valid: expected a whole number from {min} to {max}"
                )
            }),
    }
}

/// 64-bit FNV-1a of `text`: stable across processes and builds.
pub(crate) fn fnv(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Waits up to `limit` for `child` (the leader of its own process group) to exit; past that,
/// kills its whole group, reaps it and returns `None`.
pub(crate) fn wait_or_kill_group(
    child: &mut std::process::Child,
    limit: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            _ => {
                if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                }
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// The built-in resource types.
pub fn builtin() -> Vec<Box<dyn ResourceType>> {
    vec![Box::new(process::ProcessType), Box::new(vm::VmType)]
}

/// A type by name: a built-in one, an OCF agent (`ocf:PROVIDER:AGENT`, from its meta-data),
/// or a plugin loaded from `library` (in an RHS only: the agent never loads plugins).
pub fn find(name: &str, library: Option<&str>) -> Result<Box<dyn ResourceType>, String> {
    if let Some(t) = builtin().into_iter().find(|t| t.name() == name) {
        return Ok(t);
    }
    if name.starts_with("ocf:") {
        return Ok(Box::new(ocf::OcfType::load(name)?));
    }
    let Some(library) = library else {
        let known: Vec<String> = builtin().iter().map(|t| t.name().to_string()).collect();
        return Err(format!(
            "unknown resource type {name:?}; known types: {}, ocf:PROVIDER:AGENT, and registered plugins (vigil type list)",
            known.join(", ")
        ));
    };
    let t = plugin::PluginType::load(library)?;
    if t.name() != name {
        return Err(format!(
            "plugin {library} is now type {:?}, not {name:?}: register it again",
            t.name()
        ));
    }
    Ok(Box::new(t))
}

/// A type's parameters checked against its schema and by the type itself, and its calls'
/// bound checked against `deadlock_timeout_ms`; the error names what is wrong. A registered
/// plugin (`registered`) is checked against the schema it gave at registration.
pub fn validate(
    type_name: &str,
    params: &BTreeMap<String, String>,
    deadlock_timeout_ms: u64,
    registered: Option<&vigil_core::model::Plugin>,
) -> Result<Checked, String> {
    if let Some(info) = registered.filter(|i| i.name == type_name) {
        vigil_core::params::validate(type_name, &info.schema, params).map_err(|e| e.to_string())?;
        return Ok(Checked {
            schema: info.schema.clone(),
            can_migrate: false,
        });
    }
    let ty = find(type_name, None)?;
    vigil_core::params::validate(type_name, &ty.schema(), params).map_err(|e| e.to_string())?;
    let bound = ty.check(params)?;
    if bound.ms >= deadlock_timeout_ms {
        return Err(format!(
            "deadlock_timeout_ms={deadlock_timeout_ms} must be longer than the longest call this {type_name} resource may make: {} ({} ms)",
            bound.why, bound.ms
        ));
    }
    Ok(Checked {
        schema: ty.schema(),
        can_migrate: ty.can_migrate(),
    })
}

/// What [`validate`] learned about the type.
pub struct Checked {
    /// The schema the parameters were checked against.
    pub schema: Vec<ParamSpec>,
    /// See [`ResourceType::can_migrate`]; plugins (ABI version 1) cannot.
    pub can_migrate: bool,
}
