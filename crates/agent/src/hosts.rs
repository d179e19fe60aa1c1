//! Supervision of the RHS processes: starting `vigil rhs`, routing calls to the RHS that
//! hosts a resource, and noticing when one dies.
//!
//! Resources share the `default` RHS unless `separate_monitor` is set, which gives them one
//! each. An RHS is started when a resource needs it; a dead one is replaced by the next call
//! that needs it (the RCM's restart policy makes that call for the resources it hosted).
//! Each RHS gets the agent's end of a socket pair and a parent-death signal, so it cannot
//! outlive the agent.

use std::collections::{BTreeSet, HashMap};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use vigil_core::model::ClusterState;
use vigil_core::props::ResourceProps;
use vigil_rhs::protocol::{self, Checks, FromHost, MigrationTls, ToHost};

/// Bound of each RHS's outgoing queue.
const HOST_QUEUE: usize = 16_384;

/// What the host tasks tell the agent's main loop.
#[derive(Debug)]
pub enum HostEvent {
    Message {
        host: String,
        generation: u64,
        msg: FromHost,
    },
    Exited {
        host: String,
        generation: u64,
        reason: String,
    },
}

struct Host {
    generation: u64,
    pid: u32,
    /// When a frame (a heartbeat at least, every second) last came from it.
    heard: Arc<std::sync::Mutex<std::time::Instant>>,
    tx: mpsc::Sender<ToHost>,
    /// Resources opened in this RHS.
    resources: BTreeSet<String>,
}

pub struct Hosts {
    exe: PathBuf,
    /// An RHS that sends nothing (not even its heartbeat) for this long is killed.
    silence_limit: Duration,
    data_dir: PathBuf,
    node: String,
    /// The node's cgroup (v2) for its resources, where there is one (`cgroups.rs`).
    cgroups: Option<PathBuf>,
    hosts: HashMap<String, Host>,
    /// Which RHS each open resource lives in, and the number of its current opening.
    placement: HashMap<String, Placed>,
    events: mpsc::Sender<HostEvent>,
    next_generation: u64,
    next_instance: u64,
    /// The node's lease as every RHS must know it (see `ToHost::Lease`), from the Node
    /// Manager; each RHS's writer sends it.
    lease: watch::Receiver<Option<u64>>,
    /// Control requests waiting for their RHS's answer, by id, with the RHS asked.
    controls: HashMap<u64, (String, oneshot::Sender<Result<String, String>>)>,
    next_control: u64,
}

struct Placed {
    host: String,
    instance: u64,
}

/// The RHS a resource belongs in.
pub fn host_for(resource: &str, props: &ResourceProps) -> String {
    if props.separate_monitor {
        format!("resource-{resource}")
    } else {
        "default".to_string()
    }
}

impl Hosts {
    pub fn new(
        exe: PathBuf,
        silence_limit: Duration,
        data_dir: PathBuf,
        node: String,
        events: mpsc::Sender<HostEvent>,
        lease: watch::Receiver<Option<u64>>,
        cgroups: Option<PathBuf>,
    ) -> Self {
        Self {
            exe,
            silence_limit,
            data_dir,
            node,
            cgroups,
            hosts: HashMap::new(),
            placement: HashMap::new(),
            events,
            next_generation: 1,
            next_instance: 1,
            lease,
            controls: HashMap::new(),
            next_control: 1,
        }
    }

    /// The cgroup of `resource` on this node, where the node has cgroup v2.
    pub fn cgroup_of(&self, resource: &str) -> Option<String> {
        self.cgroups
            .as_ref()
            .map(|b| b.join(resource).display().to_string())
    }

    /// The node's cgroup for its resources, if it has one.
    pub fn cgroups(&self) -> Option<&std::path::Path> {
        self.cgroups.as_deref()
    }

    /// Whether every RHS sent something (its 1 s heartbeat at least) within `within`.
    pub fn all_answered(&self, within: Duration) -> bool {
        self.hosts
            .values()
            .all(|h| h.heard.lock().unwrap_or_else(|p| p.into_inner()).elapsed() < within)
    }

    /// The pid of each running RHS, by host name.
    pub fn pids(&self) -> Vec<(String, u32)> {
        let mut v: Vec<_> = self.hosts.iter().map(|(n, h)| (n.clone(), h.pid)).collect();
        v.sort();
        v
    }

    /// The RHS a resource is open in, if any.
    pub fn host_of(&self, resource: &str) -> Option<&str> {
        self.placement.get(resource).map(|p| p.host.as_str())
    }

    /// Whether a report about `instance` of `resource` is about its current opening (a late
    /// report about a replaced instance must not be taken for the new one's).
    pub fn is_current_instance(&self, resource: &str, instance: u64) -> bool {
        self.placement
            .get(resource)
            .is_some_and(|p| p.instance == instance)
    }

    /// Opens the resource (with its current parameters) in the RHS it belongs in, starting
    /// that RHS if needed, and brings it online. An error means no RHS could be started.
    pub fn online(&mut self, db: &ClusterState, resource: &str) -> Result<(), String> {
        self.open_for(db, resource)?;
        self.forward(
            resource,
            ToHost::Online {
                resource: resource.to_string(),
            },
        );
        Ok(())
    }

    /// Opens a new instance of `resource` in the RHS it belongs in (starting that RHS if
    /// needed), replacing an earlier instance.
    pub fn open_for(&mut self, db: &ClusterState, resource: &str) -> Result<(), String> {
        let r = db
            .resources
            .get(resource)
            .ok_or_else(|| format!("resource {resource:?} is not in the database"))?;
        let host = host_for(resource, &r.props);
        if self.placement.get(resource).is_some_and(|p| p.host != host) {
            self.close(resource);
        }
        self.ensure(&host)?;
        let instance = self.next_instance;
        self.next_instance += 1;
        let open = ToHost::Open {
            resource: resource.to_string(),
            instance,
            type_name: r.type_name.clone(),
            library: db.plugins.get(&r.type_name).map(|p| p.library.clone()),
            params: r.params.clone(),
            secret: r.secret.clone(),
            checks: Checks {
                looks_alive_ms: r.props.looks_alive_ms,
                is_alive_ms: r.props.is_alive_ms,
                deadlock_timeout_ms: r.props.deadlock_timeout_ms,
            },
            node: self.node.clone(),
            node_address: db
                .nodes
                .get(&self.node)
                .map(|n| n.address.clone())
                .unwrap_or_default(),
            epoch: db.group_epoch(&r.group),
            log_path: self.resource_log(resource),
            migration_tls: db.cluster_id.as_deref().map(|id| {
                Box::new(MigrationTls {
                    creds_dir: self.data_dir.display().to_string(),
                    hostname: vigil_tls::cluster_dns(id),
                })
            }),
            cgroup: self.cgroup_of(resource).map(|dir| {
                Box::new(vigil_rhs::protocol::CgroupSpec {
                    dir,
                    limits: vigil_rhs::protocol::Limits {
                        memory_max_mb: r.props.memory_max_mb,
                        cpu_weight: r.props.cpu_weight,
                        pids_max: r.props.pids_max,
                    },
                })
            }),
        };
        self.send(&host, open);
        let placed = Placed {
            host: host.clone(),
            instance,
        };
        self.placement.insert(resource.to_string(), placed);
        if let Some(h) = self.hosts.get_mut(&host) {
            h.resources.insert(resource.to_string());
        }
        Ok(())
    }

    /// Sends Offline to the resource's RHS; `false` if it is open nowhere (so already stopped).
    pub fn offline(&mut self, resource: &str) -> bool {
        self.forward(
            resource,
            ToHost::Offline {
                resource: resource.to_string(),
            },
        )
    }

    pub fn terminate(&mut self, resource: &str) {
        self.forward(
            resource,
            ToHost::Terminate {
                resource: resource.to_string(),
            },
        );
    }

    /// Drops the resource from its RHS; an RHS of its own is shut down.
    pub fn close(&mut self, resource: &str) {
        let Some(Placed { host, .. }) = self.placement.remove(resource) else {
            return;
        };
        self.send(
            &host,
            ToHost::Close {
                resource: resource.to_string(),
            },
        );
        let empty = self.hosts.get_mut(&host).is_some_and(|h| {
            h.resources.remove(resource);
            h.resources.is_empty()
        });
        if empty && host != "default" {
            self.send(&host, ToHost::Shutdown);
            self.hosts.remove(&host);
        }
    }

    /// Handles the death of an RHS: returns the resources it hosted (now gone), or `None` if
    /// the event is about an RHS already replaced.
    pub fn lost(&mut self, host: &str, generation: u64) -> Option<Vec<String>> {
        if self.hosts.get(host)?.generation != generation {
            return None;
        }
        let h = self.hosts.remove(host)?;
        let unanswered: Vec<u64> = self
            .controls
            .iter()
            .filter(|(_, (h, _))| h == host)
            .map(|(id, _)| *id)
            .collect();
        for id in unanswered {
            if let Some((_, reply)) = self.controls.remove(&id) {
                let _ = reply.send(Err(format!("RHS {host} exited before it answered")));
            }
        }
        for r in &h.resources {
            self.placement.remove(r);
        }
        Some(h.resources.into_iter().collect())
    }

    /// The generation of a running RHS, to tell its messages from a predecessor's.
    pub fn is_current(&self, host: &str, generation: u64) -> bool {
        self.hosts
            .get(host)
            .is_some_and(|h| h.generation == generation)
    }

    pub fn set_pid(&mut self, host: &str, pid: u32) {
        if let Some(h) = self.hosts.get_mut(host) {
            h.pid = pid;
        }
    }

    /// Asks every RHS to terminate its resources and exit.
    pub fn shutdown_all(&mut self) {
        for h in self.hosts.values() {
            let _ = h.tx.try_send(ToHost::Shutdown);
        }
    }

    fn resource_log(&self, resource: &str) -> String {
        self.data_dir
            .join("resources")
            .join(format!("{resource}.log"))
            .display()
            .to_string()
    }

    /// Whether `resource` is open in an RHS.
    pub fn is_open(&self, resource: &str) -> bool {
        self.placement.contains_key(resource)
    }

    /// Forwards a live-move step to the RHS hosting `resource`; false if none does.
    pub fn migrate(&mut self, resource: &str, msg: ToHost) -> bool {
        self.forward(resource, msg)
    }

    /// Sends a control request to the RHS hosting `resource`; `reply` gets its answer.
    pub fn control(
        &mut self,
        resource: &str,
        request: String,
        reply: oneshot::Sender<Result<String, String>>,
    ) {
        let Some(host) = self.placement.get(resource).map(|p| p.host.clone()) else {
            let _ = reply.send(Err(format!(
                "{resource} is not open in any RHS on {}",
                self.node
            )));
            return;
        };
        let id = self.next_control;
        self.next_control += 1;
        self.controls.insert(id, (host.clone(), reply));
        let msg = ToHost::Control {
            resource: resource.to_string(),
            id,
            request,
        };
        self.send(&host, msg);
    }

    pub fn control_reply(&mut self, id: u64, result: Result<String, String>) {
        if let Some((_, reply)) = self.controls.remove(&id) {
            let _ = reply.send(result);
        }
    }

    fn forward(&mut self, resource: &str, msg: ToHost) -> bool {
        match self.placement.get(resource).map(|p| p.host.clone()) {
            Some(host) => {
                self.send(&host, msg);
                true
            }
            None => false,
        }
    }

    fn send(&mut self, host: &str, msg: ToHost) {
        if let Some(h) = self.hosts.get(host)
            && h.tx.try_send(msg).is_err()
        {
            // A full queue means the RHS stopped reading: it is as good as dead.
            tracing::error!(
                "RHS {host} (pid {}) is not reading its socket; killing it",
                h.pid
            );
            kill(h.pid);
        }
    }

    fn ensure(&mut self, host: &str) -> Result<(), String> {
        if self.hosts.contains_key(host) {
            return Ok(());
        }
        std::fs::create_dir_all(self.data_dir.join("resources"))
            .map_err(|e| format!("cannot create {}/resources: {e}", self.data_dir.display()))?;
        let (ours, theirs) =
            UnixStream::pair().map_err(|e| format!("cannot make a socket pair: {e}"))?;
        let fd = theirs.as_raw_fd();
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("rhs")
            .arg("--fd")
            .arg(fd.to_string())
            .arg("--host")
            .arg(host)
            .stdin(Stdio::null())
            .kill_on_drop(false);
        // SAFETY: only async-signal-safe calls (fcntl, prctl) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // SAFETY: `fd` is open in the child: it is the inherited socket end.
                let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
                rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
                // SIGTERM, not SIGKILL: the RHS then kills its resources' whole process groups
                // before it goes.
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::TERM,
                ))?;
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start RHS {:?}: {e}", self.exe.display()))?;
        drop(theirs);
        let pid = child.id().unwrap_or(0);
        let generation = self.next_generation;
        self.next_generation += 1;
        let (tx, rx) = mpsc::channel(HOST_QUEUE);
        ours.set_nonblocking(true).map_err(|e| e.to_string())?;
        let stream = tokio::net::UnixStream::from_std(ours).map_err(|e| e.to_string())?;
        let (rd, wr) = stream.into_split();
        tokio::spawn(write_loop(wr, rx, self.lease.clone()));
        let events = self.events.clone();
        let name = host.to_string();
        let silence_limit = self.silence_limit;
        let heard = Arc::new(std::sync::Mutex::new(std::time::Instant::now()));
        let heard_by_reader = heard.clone();
        tokio::spawn(async move {
            let (reason, hung) = read_loop(
                rd,
                &events,
                &name,
                generation,
                silence_limit,
                &heard_by_reader,
            )
            .await;
            if hung {
                let _ = child.start_kill();
            }
            let status =
                match tokio::time::timeout(std::time::Duration::from_secs(5), child.wait()).await {
                    Ok(Ok(s)) => s.to_string(),
                    _ => "still running; killed".to_string(),
                };
            let _ = child.start_kill();
            let reason = format!("RHS {name} (pid {pid}) exited: {reason}; {status}");
            let _ = events
                .send(HostEvent::Exited {
                    host: name,
                    generation,
                    reason,
                })
                .await;
        });
        self.hosts.insert(
            host.to_string(),
            Host {
                generation,
                pid,
                heard,
                tx,
                resources: BTreeSet::new(),
            },
        );
        Ok(())
    }
}

/// Writes to one RHS: the hello, the lease, then what the main loop queues. A change of the
/// lease (`lease`, published by the Node Manager) goes before anything still queued, so the
/// RHS learns of a renewal however many commands wait, and never receives a command under a
/// lease older than the one the command was decided under.
async fn write_loop(
    mut wr: tokio::net::unix::OwnedWriteHalf,
    mut rx: mpsc::Receiver<ToHost>,
    mut lease: watch::Receiver<Option<u64>>,
) {
    let hello = ToHost::Hello {
        version: protocol::VERSION,
    };
    if protocol::write_frame(&mut wr, &hello).await.is_err() {
        return;
    }
    lease.mark_changed();
    loop {
        let msg = tokio::select! {
            biased;
            Ok(()) = lease.changed() => ToHost::Lease {
                until_mono_ns: *lease.borrow_and_update(),
            },
            msg = rx.recv() => match msg {
                Some(msg) => msg,
                None => return,
            },
        };
        if protocol::write_frame(&mut wr, &msg).await.is_err() {
            return;
        }
    }
}

/// Forwards the RHS's messages until it goes away; returns why it went, and whether it hung
/// (sent nothing, not even a heartbeat, for `silence_limit`).
async fn read_loop(
    mut rd: tokio::net::unix::OwnedReadHalf,
    events: &mpsc::Sender<HostEvent>,
    host: &str,
    generation: u64,
    silence_limit: Duration,
    heard: &std::sync::Mutex<std::time::Instant>,
) -> (String, bool) {
    let mut greeted = false;
    loop {
        let frame =
            match tokio::time::timeout(silence_limit, protocol::read_frame::<_, FromHost>(&mut rd))
                .await
            {
                Ok(frame) => frame,
                Err(_) => {
                    let why = format!(
                        "sent nothing for {} ms (hung); killed",
                        silence_limit.as_millis()
                    );
                    return (why, true);
                }
            };
        *heard.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
        let msg = match frame {
            Ok(Some(msg)) => msg,
            Ok(None) if greeted => return ("closed its socket".to_string(), false),
            Ok(None) => return ("closed its socket before saying Hello".to_string(), false),
            Err(e) => return (e.to_string(), false),
        };
        match (&msg, greeted) {
            (FromHost::Hello { version, .. }, false) if *version != protocol::VERSION => {
                let why = format!(
                    "it speaks protocol version {version}, this agent {}",
                    protocol::VERSION
                );
                return (why, true);
            }
            (FromHost::Hello { .. }, false) => greeted = true,
            (_, false) => return (format!("expected Hello, got {msg:?}"), true),
            (FromHost::Alive, true) => continue,
            _ => {}
        }
        let event = HostEvent::Message {
            host: host.to_string(),
            generation,
            msg,
        };
        if events.send(event).await.is_err() {
            return ("the agent is stopping".to_string(), false);
        }
    }
}

fn kill(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A renewal published while commands wait for a busy RHS is written before them (the
    /// lease used to travel through the main loop and then this queue: a burst of work left
    /// 5 000 resources fenced by their RHS under a lease the agent held).
    #[tokio::test]
    async fn a_lease_change_goes_to_the_rhs_before_what_is_queued() {
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        let (_, wr) = ours.into_split();
        let (tx, rx) = mpsc::channel(16);
        let (lease_tx, lease_rx) = watch::channel(Some(1));
        let online = |r: &str| ToHost::Online {
            resource: r.to_string(),
        };
        for r in ["a", "b", "c"] {
            tx.try_send(online(r)).unwrap();
        }
        lease_tx.send_replace(Some(2));
        let writer = tokio::spawn(write_loop(wr, rx, lease_rx));
        let mut rd = theirs;
        let mut next = async || {
            protocol::read_frame::<_, ToHost>(&mut rd)
                .await
                .unwrap()
                .unwrap()
        };
        assert!(matches!(next().await, ToHost::Hello { .. }));
        let lease = |until: u64| ToHost::Lease {
            until_mono_ns: Some(until),
        };
        assert_eq!(next().await, lease(2), "the latest lease, before the queue");
        for r in ["a", "b", "c"] {
            assert_eq!(next().await, online(r));
        }
        // Later changes still arrive, in order with what is queued after them.
        lease_tx.send_replace(Some(3));
        assert_eq!(next().await, lease(3));
        tx.send(online("d")).await.unwrap();
        assert_eq!(next().await, online("d"));
        drop(tx);
        writer.await.unwrap();
    }
}
