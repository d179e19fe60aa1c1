//! The node's cgroup (v2) for its resources: `<the agent's cgroup>/vigil-<node>-<pid>`,
//! one child per resource (made by the RHS, `vigil_rhs::cgroup`). At start the agent makes
//! it, enables for it the controllers its parent lets it have (for the resources' limits),
//! and kills what a former agent of this node left behind (a `setsid` daemon of a resource
//! outlives the agent that was killed; it must not outlive its cgroup). Without cgroup v2
//! it says so once and resources are ended by process group.

use std::path::{Path, PathBuf};

/// The agent's own cgroup inside the node's (resource names cannot start with '.'): the
/// node's cgroup then holds the whole node, which a watchdog's test device kills at once.
pub const AGENT: &str = ".agent";

/// The node's cgroup, or why there is none. The agent moves itself (and so the RHS
/// processes it starts) into its `AGENT` child.
pub fn prepare(node: &str) -> Result<PathBuf, String> {
    let own = vigil_rhs::cgroup::own()?;
    sweep(&own, node);
    let base = own.join(format!("vigil-{node}-{}", std::process::id()));
    std::fs::create_dir_all(&base)
        .map_err(|e| format!("cannot make cgroup {}: {e}", base.display()))?;
    // The root cgroup has none; every other one has it from Linux 5.14.
    if !base.join("cgroup.kill").exists() {
        let _ = std::fs::remove_dir(&base);
        return Err(format!(
            "{} has no cgroup.kill (Linux 5.14 or later is needed)",
            base.display()
        ));
    }
    let agent = base.join(AGENT);
    std::fs::create_dir_all(&agent)
        .map_err(|e| format!("cannot make cgroup {}: {e}", agent.display()))?;
    std::fs::write(agent.join("cgroup.procs"), "0")
        .map_err(|e| format!("cannot move the agent into {}: {e}", agent.display()))?;
    // Controllers the parent offers: enabled for the resources' cgroups (limits).
    let offered = std::fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
    for c in offered.split_whitespace() {
        if ["memory", "cpu", "pids"].contains(&c) {
            let _ = std::fs::write(base.join("cgroup.subtree_control"), format!("+{c}"));
        }
    }
    Ok(base)
}

/// Kills and removes the cgroups of this node's former agents (`vigil-<node>-<pid>` whose
/// process is gone).
fn sweep(own: &Path, node: &str) {
    let prefix = format!("vigil-{node}-");
    let Ok(entries) = std::fs::read_dir(own) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(&prefix)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !running(pid) && end(&e.path()) {
            tracing::warn!(
                "killed what a former agent of {node} left in {}",
                e.path().display()
            );
        }
    }
}

/// Ends what agent `node` with pid `pid` (dead now) left in its cgroup, and removes it: for
/// whoever killed that agent (the demo, the tests).
pub fn end_agent(node: &str, pid: u32) {
    if let Ok(own) = vigil_rhs::cgroup::own() {
        let dir = own.join(format!("vigil-{node}-{pid}"));
        if dir.exists() {
            end(&dir);
        }
    }
}

/// Kills every process in the cgroup `dir` and its children, and removes them (waiting a
/// little for the kill; a cgroup that stays busy is left for later). Whether it is gone.
fn end(dir: &Path) -> bool {
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    for _ in 0..250 {
        let subs: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|s| s.path())
            .filter(|p| p.is_dir())
            .collect();
        if subs.iter().all(|s| std::fs::remove_dir(s).is_ok()) && std::fs::remove_dir(dir).is_ok() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

/// Kills whatever is left in the resources' cgroups under `base` (an RHS that exited has
/// killed its own already) and removes them. Whether none is left.
pub fn end_resources(base: &Path) -> bool {
    let left: Vec<PathBuf> = std::fs::read_dir(base)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name() != AGENT && e.path().is_dir())
        .map(|e| e.path())
        .collect();
    // Every one ended, even after one that would not go.
    left.iter().filter(|dir| !end(dir)).count() == 0
}

/// Removes the node's cgroup (a clean stop, once every resource has ended); the agent moves
/// back to the cgroup it started in.
pub fn remove(base: &Path) {
    if let Some(parent) = base.parent() {
        let _ = std::fs::write(parent.join("cgroup.procs"), "0");
    }
    for sub in std::fs::read_dir(base).into_iter().flatten().flatten() {
        let _ = std::fs::remove_dir(sub.path());
    }
    let _ = std::fs::remove_dir(base);
}

/// Whether process `pid` runs (a zombie does not: it is dead, only not yet reaped).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().next());
        !matches!(state, Some("Z") | Some("X"))
    })
}

/// Removes the node's cgroup when dropped: an agent that stops on an error (a refused join,
/// a database failure) leaves none behind. A killed agent's is swept at the next start.
pub struct Guard(pub PathBuf);

impl Drop for Guard {
    fn drop(&mut self) {
        remove(&self.0);
    }
}
