//! Fence agents: a node may have a fence device, a program of the fence-agents protocol
//! (Debian's `fence-agents`: `fence_ipmilan`, `fence_virsh`, `fence_xvm`, …). It gets
//! `key=value` lines on stdin, one of them `action=off|on|status|monitor`, and answers by its
//! exit code: 0 done (for `status`: on), 2 for `status`: off, anything else a failure.
//!
//! The leader fences a node with a device once it has been silent for two heartbeat
//! intervals, and records it Down as soon as the device reports it off and `status` confirms it, without waiting for
//! its lease (`NmInput::Fenced`). A fence that fails or times out is logged and tried again;
//! the node is then Down only once its lease (and the cluster's watchdog timeout) ran out,
//! as without a device: never on the assumption that it is dead. The leader also checks
//! every device (`monitor`) when it is set and every `MONITOR_EVERY`, and a broken one
//! shows in status.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use vigil_core::command::Command;
use vigil_core::event::{Component, LogEntry};
use vigil_core::model::FenceDevice;
use vigil_db::Db;

use crate::clusterlog::ClusterLog;

/// How long a fence action may take.
pub const TIMEOUT: Duration = Duration::from_secs(20);
/// How often the leader checks every device.
const MONITOR_EVERY: Duration = Duration::from_secs(5);
/// A failed fence is tried again after this.
const RETRY: Duration = Duration::from_secs(1);

/// Runs `device` with `action` for node `node` (`nodename=`, as pacemaker passes it); `Ok`
/// with the exit code when it ran to the end within `TIMEOUT`.
pub async fn run(device: &FenceDevice, node: &str, action: &str) -> Result<i32, String> {
    let mut child = tokio::process::Command::new(&device.agent)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run fence agent {}: {e}", device.agent))?;
    let mut input = format!("action={action}\nnodename={node}\n");
    for (k, v) in &device.params {
        input.push_str(&format!("{k}={v}\n"));
    }
    let mut stdin = child.stdin.take().expect("piped");
    let _ = stdin.write_all(input.as_bytes()).await;
    drop(stdin);
    match tokio::time::timeout(TIMEOUT, child.wait_with_output()).await {
        Err(_) => Err(format!(
            "fence agent {} ({action}) did not finish within {} s",
            device.agent,
            TIMEOUT.as_secs()
        )),
        Ok(Err(e)) => Err(format!("fence agent {}: {e}", device.agent)),
        Ok(Ok(out)) => Ok(out.status.code().unwrap_or(-1)),
    }
}

/// Powers `node` off with its device: `Ok` once `off` exited 0 *and* `status` then says off
/// (exit 2). An agent that reports success while the node still runs (a wrong plug, a
/// device that lies) is a failed fence, not a dead node.
pub async fn off(device: &FenceDevice, node: &str) -> Result<(), String> {
    match run(device, node, "off").await? {
        0 => {}
        code => return Err(format!("fence agent {} (off) exited {code}", device.agent)),
    }
    match run(device, node, "status").await? {
        2 => Ok(()),
        0 => Err(format!(
            "fence agent {} reported off, but status says {node} is still on",
            device.agent
        )),
        code => Err(format!(
            "fence agent {} reported off, but status (exit {code}) cannot confirm it",
            device.agent
        )),
    }
}

/// Checks a device (`monitor`).
pub async fn monitor(device: &FenceDevice, node: &str) -> Result<(), String> {
    match run(device, node, "monitor").await? {
        0 => Ok(()),
        code => Err(format!(
            "fence agent {} (monitor) exited {code}",
            device.agent
        )),
    }
}

/// Fences `node` now (the leader, `vigil node fence` or a silent node): on success the Node
/// Manager records it Down at once. Logged either way.
pub async fn fence(
    nm: &crate::nm::Nm,
    db: &Db,
    log: &ClusterLog,
    node: &str,
    why: &str,
) -> Result<u128, String> {
    let device = db
        .state()
        .nodes
        .get(node)
        .and_then(|n| n.fence.clone())
        .ok_or_else(|| format!("node {node} has no fence device"))?;
    log.append([LogEntry::new(
        Component::NM,
        format!("fencing node {node} ({why}): {} off", device.agent),
    )]);
    let started = Instant::now();
    match off(&device, node).await {
        Ok(()) => {
            let ms = started.elapsed().as_millis();
            nm.fenced(db, log, node);
            log.append([LogEntry::new(
                Component::NM,
                format!("node {node} fenced: its fence device reported it off in {ms} ms"),
            )]);
            Ok(ms)
        }
        Err(e) => {
            log.append([LogEntry::new(
                Component::NM,
                format!(
                    "fence of node {node} failed: {e}; tried again, and until it succeeds {node} is Down only once its lease (and watchdog) ran out"
                ),
            )]);
            Err(e)
        }
    }
}

/// At the leader: fences silent nodes that have a device, and checks the devices.
pub async fn run_fencer(nm: crate::nm::Nm, db: Db, log: ClusterLog) {
    let busy: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut retry_at: BTreeMap<String, Instant> = BTreeMap::new();
    let mut last_monitor = Instant::now() - MONITOR_EVERY;
    let tick = Duration::from_millis(nm.interval_ms() / 5).max(Duration::from_millis(20));
    loop {
        tokio::time::sleep(tick).await;
        if !db.is_leader() {
            continue;
        }
        for node in nm.fence_candidates(&db) {
            if busy
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&node)
                || retry_at.get(&node).is_some_and(|t| Instant::now() < *t)
            {
                continue;
            }
            busy.lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(node.clone());
            retry_at.insert(node.clone(), Instant::now() + RETRY);
            let (nm, db, log, busy) = (nm.clone(), db.clone(), log.clone(), busy.clone());
            tokio::spawn(async move {
                let why = format!("silent for {} ms", 2 * nm.interval_ms());
                let _ = fence(&nm, &db, &log, &node, &why).await;
                busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&node);
            });
        }
        if last_monitor.elapsed() >= MONITOR_EVERY {
            last_monitor = Instant::now();
            let (db, log) = (db.clone(), log.clone());
            tokio::spawn(async move { monitor_all(&db, &log).await });
        }
    }
}

/// Checks every device and records what changed.
async fn monitor_all(db: &Db, log: &ClusterLog) {
    let nodes: Vec<(String, FenceDevice, Option<String>)> = db
        .state()
        .nodes
        .values()
        .filter_map(|n| Some((n.name.clone(), n.fence.clone()?, n.fence_error.clone())))
        .collect();
    for (node, device, was) in nodes {
        let now = monitor(&device, &node).await.err();
        if now != was {
            let say = match &now {
                Some(e) => format!("the fence device of node {node} is broken: {e}"),
                None => format!("the fence device of node {node} works again"),
            };
            let cmd = Command::SetFenceHealth {
                node: node.clone(),
                error: now,
            };
            if db.write(vec![cmd]).await.is_ok() {
                log.append([LogEntry::new(Component::NM, say)]);
            }
        }
    }
}
