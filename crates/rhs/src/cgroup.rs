//! A cgroup (v2) per resource, where the node offers one (the agent says where, in Open).
//!
//! Every process a resource type starts while the host calls into that resource (its
//! service, its checks, an OCF agent and what it daemonizes, QEMU) is put into the
//! resource's cgroup before it runs (`cgroup.procs`, written by the child between fork and
//! exec), so a `setsid` daemon or a double fork stays inside. Ending the resource kills the
//! whole cgroup (`cgroup.kill`) after the type's own Offline or Terminate: whatever is left
//! is killed and counted. Limits (`memory.max`, `cpu.weight`, `pids.max`) are written when
//! the resource's properties ask for them; a node whose cgroup v2 lacks the controller
//! refuses the resource here, naming the property (it may run where the controller is).

use std::cell::RefCell;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::protocol::Limits;

/// How long a kill waits for the cgroup to empty.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// One resource's cgroup.
#[derive(Debug)]
pub struct Cgroup {
    dir: PathBuf,
    /// `cgroup.procs`, open for writing: a child writes "0" to it to move itself in.
    procs: OwnedFd,
}

thread_local! {
    /// The cgroup of the resource this thread is calling into.
    static CURRENT: RefCell<Option<Arc<Cgroup>>> = const { RefCell::new(None) };
}

/// Every cgroup this RHS holds (a fence or a deadlock kills them all).
static ALL: Mutex<Vec<std::sync::Weak<Cgroup>>> = Mutex::new(Vec::new());

/// Runs `f` with `cg` as the cgroup of the processes it starts.
pub fn with<T>(cg: Option<Arc<Cgroup>>, f: impl FnOnce() -> T) -> T {
    let before = CURRENT.with(|c| c.replace(cg));
    let out = f();
    CURRENT.with(|c| *c.borrow_mut() = before);
    out
}

/// The cgroup the calling thread's resource starts its processes in (kept alive by the
/// caller until the child has exec'd).
pub(crate) fn current() -> Option<Arc<Cgroup>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Kills every cgroup of this RHS (the lease ran out, or the RHS exits on a deadlock).
pub fn kill_all() {
    let all: Vec<Arc<Cgroup>> = ALL
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter_map(std::sync::Weak::upgrade)
        .collect();
    for cg in all {
        cg.write("cgroup.kill", "1").ok();
    }
}

impl Cgroup {
    /// Makes (or takes over) the cgroup at `dir`, with `limits`.
    pub fn open(dir: &Path, limits: &Limits) -> Result<Arc<Cgroup>, String> {
        match std::fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot make cgroup {}: {e}", dir.display())),
        }
        let procs = dir.join("cgroup.procs");
        let fd = rustix::fs::open(
            &procs,
            rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| format!("cannot open {}: {e}", procs.display()))?;
        let cg = Arc::new(Cgroup {
            dir: dir.to_path_buf(),
            procs: fd,
        });
        cg.limit(limits)?;
        // Left by an earlier instance whose RHS died (its daemons outlive it): a new
        // instance must not start beside them.
        match cg.kill() {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                "RHS: killed {n} process(es) an earlier instance left in {}",
                cg.dir.display()
            ),
            Err(e) => return Err(e),
        }
        let mut all = ALL.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&cg));
        Ok(cg)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The fd a child writes "0" to, to join.
    pub(crate) fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    fn write(&self, file: &str, value: &str) -> std::io::Result<()> {
        std::fs::write(self.dir.join(file), value)
    }

    fn limit(&self, limits: &Limits) -> Result<(), String> {
        let parent = self.dir.parent().unwrap_or(Path::new("/"));
        let enabled =
            std::fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
        // Property, its value, the controller, its file and what goes there.
        let wanted = [
            (
                "memory_max_mb",
                limits.memory_max_mb,
                "memory",
                "memory.max",
                limits.memory_max_mb << 20,
            ),
            (
                "cpu_weight",
                limits.cpu_weight,
                "cpu",
                "cpu.weight",
                limits.cpu_weight,
            ),
            (
                "pids_max",
                limits.pids_max,
                "pids",
                "pids.max",
                limits.pids_max,
            ),
        ];
        for (prop, set, controller, file, value) in wanted {
            if set == 0 {
                continue;
            }
            if !enabled.split_whitespace().any(|c| c == controller) {
                return Err(format!(
                    "{prop} = {set} needs cgroup v2's {controller} controller, which {} does not offer its children (cgroup.subtree_control: {:?}); the limit cannot hold on this node",
                    parent.display(),
                    enabled.trim()
                ));
            }
            self.write(file, &value.to_string())
                .map_err(|e| format!("{prop} = {set}: cannot write {value} to {file}: {e}"))?;
        }
        Ok(())
    }

    /// The processes in it now.
    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    fn populated(&self) -> bool {
        std::fs::read_to_string(self.dir.join("cgroup.events"))
            .map(|t| t.lines().any(|l| l == "populated 1"))
            .unwrap_or(false)
    }

    /// Kills every process left in it and waits until it is empty; how many there were.
    pub fn kill(&self) -> Result<usize, String> {
        let left = self.pids().len();
        if left == 0 && !self.populated() {
            return Ok(0);
        }
        self.write("cgroup.kill", "1")
            .map_err(|e| format!("cannot kill cgroup {}: {e}", self.dir.display()))?;
        let deadline = Instant::now() + KILL_WAIT;
        while self.populated() {
            if Instant::now() > deadline {
                return Err(format!(
                    "cgroup {} still holds processes {:?} {} ms after cgroup.kill",
                    self.dir.display(),
                    self.pids(),
                    KILL_WAIT.as_millis()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(left)
    }

    /// Kills what is left and removes the cgroup.
    pub fn remove(&self) {
        let _ = self.kill();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// CPU time and memory of the cgroup at `dir` (memory only where the memory controller is
/// enabled for it).
pub fn usage(dir: &Path) -> Option<(u64, Option<u64>)> {
    let cpu = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
    let usec = cpu
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())?;
    let memory = std::fs::read_to_string(dir.join("memory.current"))
        .ok()
        .and_then(|v| v.trim().parse().ok());
    Some((usec, memory))
}

/// Where this process's cgroup v2 is: the unified hierarchy's mount point joined with the
/// process's own cgroup (`None`, and why, where there is no cgroup v2).
pub fn own() -> Result<PathBuf, String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    // Fields: id parent major:minor root mount-point options... - fstype source super-options
    let mount = mounts
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .ok_or("no cgroup2 file system is mounted")?;
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let path = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("this process has no cgroup v2 (no 0:: line in /proc/self/cgroup)")?;
    let dir = mount.join(path.trim_start_matches('/'));
    let probe = dir.join("cgroup.procs");
    if !probe.exists() {
        return Err(format!("{} is not there", probe.display()));
    }
    Ok(dir)
}
