//! The RHS process: `vigil rhs --fd N`, started by the agent with one end of a socket pair.
//!
//! One task per resource serializes the calls into its instance and keeps its timers:
//! LooksAlive every `looks_alive_ms`, IsAlive every `is_alive_ms`, and LooksAlive at once when
//! the resource's event descriptor (a pidfd) becomes readable. As in Windows: a LooksAlive
//! that says no triggers an IsAlive at once; an IsAlive that says no makes the resource
//! Failed and calls Terminate.
//!
//! Every call into a type runs on a blocking thread under a watchdog: a call that does not
//! return within `deadlock_timeout_ms` is reported as a deadlock and the whole RHS exits
//! (its processes die with it through their parent-death signal); the agent restarts it.
//! When the agent goes away (end of stream), every resource is terminated and the RHS exits:
//! a node that cannot vouch for its resources must not run them.

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use vigil_core::params::Secrets;
use vigil_core::rcm::Report;

use crate::protocol::{self, Checks, FromHost, ToHost};
use crate::types::{self, Fault, Health, OpenContext, Progress, Resource};

/// How often a pending Online is polled for progress.
const PENDING_POLL: Duration = Duration::from_millis(50);
/// How long a shutdown waits for resources to terminate.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(20);
/// Bound of the queue of messages to the agent.
const OUT_QUEUE: usize = 4_096;
/// Threads for calls into resource types. Calls are short or bounded by the watchdog, and
/// fewer threads keep the RHS small, which makes every fork of a resource process cheaper.
const BLOCKING_THREADS: usize = 16;
/// Bound of each resource's command queue.
const CMD_QUEUE: usize = 64;

type Outgoing = (FromHost, Option<oneshot::Sender<()>>);

/// Runs the RHS on an inherited socket descriptor until the agent goes away.
/// The agent may run with a low `oom_score_adj` (the systemd unit's `OOMScoreAdjust`, so
/// that the OOM killer spares it); its resources must not inherit that. An RHS and what it
/// starts are ordinary processes to the OOM killer: a resource that runs away with memory is
/// killed (and restarted or failed over), not the services around it. Raising one's own
/// score needs no privilege.
fn ordinary_to_the_oom_killer() {
    let path = "/proc/self/oom_score_adj";
    let low = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .is_some_and(|v| v < 0);
    if low && let Err(e) = std::fs::write(path, "0") {
        tracing::warn!("cannot reset {path} to 0 (resources keep the agent's): {e}");
    }
}

pub fn main(fd: RawFd) -> Result<(), String> {
    // SAFETY: the agent passes this descriptor to us and nothing else in this process owns it.
    let stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
    // The agent cleared close-on-exec to hand it over; restore it so that the resources this
    // RHS starts do not hold the agent's socket open after the RHS is gone.
    rustix::io::fcntl_setfd(&stream, rustix::io::FdFlags::CLOEXEC)
        .map_err(|e| format!("RHS socket fd {fd}: {e}"))?;
    ordinary_to_the_oom_killer();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(Duration::from_secs(60))
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
        .map_err(|e| format!("cannot start the RHS runtime: {e}"))?;
    rt.block_on(serve(stream))
}

async fn serve(stream: std::os::unix::net::UnixStream) -> Result<(), String> {
    stream
        .set_nonblocking(true)
        .map_err(|e| format!("RHS socket: {e}"))?;
    let stream =
        tokio::net::UnixStream::from_std(stream).map_err(|e| format!("RHS socket: {e}"))?;
    let (rd, mut wr) = stream.into_split();
    let mut rd = protocol::FrameReader::new(rd);
    let hello = FromHost::Hello {
        version: protocol::VERSION,
        pid: std::process::id(),
    };
    protocol::write_frame(&mut wr, &hello)
        .await
        .map_err(|e| e.to_string())?;
    match rd.next::<ToHost>().await {
        Ok(Some(ToHost::Hello { version })) if version == protocol::VERSION => {}
        Ok(Some(ToHost::Hello { version })) => {
            return Err(format!(
                "the agent speaks RHS protocol version {version}, this RHS speaks {}",
                protocol::VERSION
            ));
        }
        other => return Err(format!("expected Hello from the agent, got {other:?}")),
    }
    let (out, out_rx) = mpsc::channel::<Outgoing>(OUT_QUEUE);
    tokio::spawn(write_loop(wr, out_rx));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
    let mut heartbeat = interval(protocol::HEARTBEAT_MS);
    let mut d = Dispatcher {
        workers: HashMap::new(),
        tasks: JoinSet::new(),
        out,
        lease: None,
        fenced: false,
    };
    loop {
        let until_lease = d
            .lease
            .map(|l| Duration::from_nanos(l.saturating_sub(protocol::mono_ns())));
        let frame = tokio::select! {
            // The deadline first: it is what keeps a node without a lease from running
            // anything, whatever else is ready.
            biased;
            _ = tokio::time::sleep(until_lease.unwrap_or(Duration::MAX)), if until_lease.is_some() && !d.fenced => {
                // This process may have been stopped or starved past the deadline while the
                // agent went on renewing it: what the agent sent meanwhile is on the socket.
                // Read all of it before acting on the deadline.
                match rd.ready::<ToHost>() {
                    Ok(waiting) => {
                        for msg in waiting {
                            if !d.handle(msg).await {
                                return d.shut_down().await;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::error!("RHS: {e}; shutting down");
                        return d.shut_down().await;
                    }
                }
                if d.lease.is_some_and(|l| l <= protocol::mono_ns()) && !d.fenced {
                    d.fence().await;
                }
                continue;
            }
            frame = rd.next::<ToHost>() => frame,
            // The agent's parent-death signal: it is gone.
            _ = term.recv() => break,
            _ = heartbeat.tick() => {
                let _ = d.out.try_send((FromHost::Alive, None));
                continue;
            }
        };
        let msg = match frame {
            Ok(Some(msg)) => msg,
            Ok(None) => break,
            Err(e) => {
                tracing::error!("RHS: {e}; shutting down");
                break;
            }
        };
        if !d.handle(msg).await {
            break;
        }
    }
    d.shut_down().await
}

/// The RHS's own state: its resources' workers and the node's lease as the agent last said.
struct Dispatcher {
    workers: HashMap<String, Slot>,
    tasks: JoinSet<()>,
    out: mpsc::Sender<Outgoing>,
    /// The lease deadline (CLOCK_MONOTONIC ns), enforced once the agent has sent one.
    lease: Option<u64>,
    /// The deadline passed (or no lease): everything was terminated, nothing may start.
    fenced: bool,
}

impl Dispatcher {
    /// The lease ran out with no renewal from the agent: every resource is terminated, and
    /// each is reported, so that the RCM applies its restart policy if the node is in fact
    /// still leased (the agent went on renewing, but this process did not hear it in time).
    async fn fence(&mut self) {
        tracing::error!(
            "RHS: the node's lease ran out with no renewal from the agent; terminating every resource"
        );
        self.fenced = true;
        // The kill first, before anything awaits: each worker's own Terminate and report
        // follow, and may wait behind a call in progress.
        types::process::kill_all_groups();
        crate::cgroup::kill_all();
        for slot in self.workers.values() {
            let _ = slot.tx.send(Cmd::Fence).await;
        }
    }

    /// Handles one message from the agent; `false` when the RHS should stop.
    async fn handle(&mut self, msg: ToHost) -> bool {
        match msg {
            ToHost::Hello { .. } => {}
            ToHost::Shutdown => return false,
            ToHost::Lease { until_mono_ns } => {
                self.lease = Some(until_mono_ns.unwrap_or(0));
                self.fenced = until_mono_ns.is_none_or(|u| u <= protocol::mono_ns());
            }
            ToHost::Online { ref resource } if self.fenced => {
                let status = FromHost::Status {
                    resource: resource.clone(),
                    instance: 0,
                    report: Report::Failed,
                    reason: "the node has no lease (RHS fenced)".to_string(),
                    pid: None,
                };
                let _ = self.out.send((status, None)).await;
            }
            ToHost::Open {
                resource,
                instance,
                type_name,
                library,
                params,
                secret,
                checks,
                node,
                node_address,
                epoch,
                log_path,
                migration_tls,
                cgroup,
            } => {
                // The new instance opens only after the old one has closed.
                let previous = match self.workers.remove(&resource) {
                    Some(old) => {
                        let close = ToHost::Close {
                            resource: resource.clone(),
                        };
                        let _ = old.tx.send(Cmd::Agent(close)).await;
                        Some(old.done)
                    }
                    None => None,
                };
                let secrets = Secrets::new(&params, &secret);
                let ctx = OpenContext {
                    resource: resource.clone(),
                    params,
                    node,
                    node_address,
                    epoch,
                    log_path: log_path.into(),
                    migration_tls: migration_tls.map(|t| *t),
                };
                let (tx, rx) = mpsc::channel(CMD_QUEUE);
                let (done_tx, done) = oneshot::channel();
                self.workers.insert(resource, Slot { tx, done });
                let opening = Opening {
                    cgroup: cgroup.map(|c| (PathBuf::from(c.dir), c.limits)),
                    ctx,
                    instance,
                    type_name,
                    library,
                    checks,
                    secrets,
                    previous,
                    done: done_tx,
                };
                self.tasks.spawn(Worker::run(opening, rx, self.out.clone()));
            }
            ToHost::Online { ref resource }
            | ToHost::Offline { ref resource }
            | ToHost::Terminate { ref resource } => {
                if let Some(slot) = self.workers.get(resource) {
                    let _ = slot.tx.send(Cmd::Agent(msg.clone())).await;
                } else if matches!(msg, ToHost::Online { .. }) {
                    let status = FromHost::Status {
                        resource: resource.clone(),
                        instance: 0,
                        report: Report::Failed,
                        reason: "not open in this RHS".to_string(),
                        pid: None,
                    };
                    let _ = self.out.send((status, None)).await;
                }
            }
            ToHost::MigrateTo { ref resource, .. }
            | ToHost::MigratePrepare { ref resource, .. }
            | ToHost::MigrateFrom { ref resource, .. } => {
                if let Some(slot) = self.workers.get(resource) {
                    let _ = slot.tx.send(Cmd::Agent(msg.clone())).await;
                } else {
                    let report = if !matches!(msg, ToHost::MigrateFrom { .. }) {
                        Report::MigrateFailed
                    } else {
                        Report::Failed
                    };
                    let status = FromHost::Status {
                        resource: resource.clone(),
                        instance: 0,
                        report,
                        reason: "not open in this RHS".to_string(),
                        pid: None,
                    };
                    let _ = self.out.send((status, None)).await;
                }
            }
            ToHost::Control {
                ref resource, id, ..
            } => {
                if let Some(slot) = self.workers.get(resource) {
                    let _ = slot.tx.send(Cmd::Agent(msg.clone())).await;
                } else {
                    let reply = FromHost::ControlReply {
                        id,
                        result: Err(format!("{resource} is not open in this RHS")),
                    };
                    let _ = self.out.send((reply, None)).await;
                }
            }
            ToHost::Close { resource } => {
                if let Some(slot) = self.workers.remove(&resource) {
                    let _ = slot.tx.send(Cmd::Agent(ToHost::Close { resource })).await;
                }
            }
        }
        while self.tasks.try_join_next().is_some() {}
        true
    }

    /// The agent is gone or asked us to stop: terminate everything, bounded.
    async fn shut_down(mut self) -> Result<(), String> {
        for (resource, slot) in self.workers.drain() {
            let terminate = ToHost::Terminate {
                resource: resource.clone(),
            };
            let _ = slot.tx.send(Cmd::Agent(terminate)).await;
            let _ = slot.tx.send(Cmd::Agent(ToHost::Close { resource })).await;
        }
        let _ = tokio::time::timeout(SHUTDOWN_LIMIT, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        types::process::kill_all_groups();
        crate::cgroup::kill_all();
        Ok(())
    }
}

/// A resource's worker as the dispatcher sees it.
struct Slot {
    tx: mpsc::Sender<Cmd>,
    /// Resolves (by its sender dropping) when the worker has ended.
    done: oneshot::Receiver<()>,
}

/// What the dispatcher tells a worker (moved, never stored: its size does not matter).
#[allow(clippy::large_enum_variant)]
enum Cmd {
    /// The agent's message about this resource.
    Agent(ToHost),
    /// The node's lease ran out: terminate, and say so if anything was running.
    Fence,
}

/// What a new worker needs to open its resource.
struct Opening {
    /// The resource's cgroup and its limits, where the node offers cgroup v2.
    cgroup: Option<(PathBuf, protocol::Limits)>,
    ctx: OpenContext,
    instance: u64,
    type_name: String,
    library: Option<String>,
    checks: Checks,
    secrets: Secrets,
    /// The worker of the instance this one replaces; wait for it to end first.
    previous: Option<oneshot::Receiver<()>>,
    /// Dropped when this worker ends.
    done: oneshot::Sender<()>,
}

async fn write_loop(mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Outgoing>) {
    while let Some((msg, ack)) = rx.recv().await {
        if let Err(e) = protocol::write_frame(&mut wr, &msg).await {
            tracing::error!("RHS: cannot write to the agent: {e}");
            return;
        }
        if let Some(ack) = ack {
            let _ = ack.send(());
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Offline,
    Pending,
    Online,
    /// Migrated to another node: no checks; what is left waits for Offline.
    Migrated,
}

// One value per turn of a worker's loop, on its stack: boxing the command would allocate.
#[allow(clippy::large_enum_variant)]
enum Wake {
    Cmd(Option<ToHost>),
    Fence,
    LooksAlive,
    IsAlive,
    Event,
    Poll,
}

type Instance = Arc<Mutex<Box<dyn Resource>>>;

struct Worker {
    name: String,
    /// This opening's number (see `ToHost::Open`).
    instance_id: u64,
    checks: Checks,
    /// Taken out of every reason and reply.
    secrets: Secrets,
    instance: Option<Instance>,
    open_error: Option<String>,
    /// The cgroup every process of the resource starts in.
    cgroup: Option<Arc<crate::cgroup::Cgroup>>,
    /// The type promises LooksAlive never blocks: run it here, not on a thread.
    inline_looks_alive: bool,
    phase: Phase,
    event: Option<AsyncFd<OwnedFd>>,
    out: mpsc::Sender<Outgoing>,
}

impl Worker {
    async fn run(opening: Opening, mut rx: mpsc::Receiver<Cmd>, out: mpsc::Sender<Outgoing>) {
        let Opening {
            cgroup,
            ctx,
            instance,
            type_name,
            library,
            checks,
            secrets,
            previous,
            done: _done,
        } = opening;
        if let Some(previous) = previous {
            // Bounded: each call of the old worker is under the watchdog.
            let _ = previous.await;
        }
        let mut w = Worker {
            name: ctx.resource.clone(),
            instance_id: instance,
            checks,
            secrets,
            instance: None,
            open_error: None,
            cgroup: None,
            inline_looks_alive: false,
            phase: Phase::Offline,
            event: None,
            out,
        };
        // Finding the type runs agent scripts (OCF meta-data) or loads a library (a plugin's
        // initializers): under the watchdog like every call into a type.
        let found = match cgroup.map(|(dir, limits)| crate::cgroup::Cgroup::open(&dir, &limits)) {
            Some(Err(e)) => Ok(Err(e)),
            cg => {
                w.cgroup = cg.and_then(Result::ok);
                let cg = w.cgroup.clone();
                w.guarded("Open", move || {
                    crate::cgroup::with(cg, || {
                        types::find(&type_name, library.as_deref()).and_then(|ty| ty.open(ctx))
                    })
                })
                .await
            }
        };
        match found {
            Ok(Ok(instance)) => {
                w.inline_looks_alive = instance.looks_alive_never_blocks();
                w.instance = Some(Arc::new(Mutex::new(instance)));
            }
            Ok(Err(e)) | Err(e) => w.open_error = Some(e),
        }
        let mut looks = interval(w.checks.looks_alive_ms);
        let mut is = interval(w.checks.is_alive_ms);
        let mut poll = tokio::time::interval(PENDING_POLL);
        loop {
            let online = w.phase == Phase::Online;
            let wake = tokio::select! {
                // Commands first: a Terminate must not wait behind timer ticks.
                biased;
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Agent(msg)) => Wake::Cmd(Some(msg)),
                    Some(Cmd::Fence) => Wake::Fence,
                    None => Wake::Cmd(None),
                },
                _ = looks.tick(), if online => Wake::LooksAlive,
                _ = is.tick(), if online => Wake::IsAlive,
                _ = readable(&w.event), if w.event.is_some() => Wake::Event,
                _ = poll.tick(), if w.phase == Phase::Pending => Wake::Poll,
            };
            match wake {
                Wake::Cmd(Some(ToHost::Online { .. })) => {
                    w.online().await;
                    looks = interval(w.checks.looks_alive_ms);
                    is = interval(w.checks.is_alive_ms);
                }
                Wake::Cmd(Some(ToHost::Offline { .. })) => w.offline().await,
                Wake::Cmd(Some(ToHost::MigrateTo {
                    target,
                    target_address,
                    quick,
                    ..
                })) => w.migrate_to(target, target_address, quick).await,
                Wake::Cmd(Some(ToHost::MigratePrepare { source, quick, .. })) => {
                    let result = w
                        .call("MigratePrepare", move |r| r.migrate_prepare(&source, quick))
                        .await;
                    if let Ok(Err(e)) | Err(e) = result {
                        w.report(Report::MigrateFailed, e, None).await;
                    }
                }
                Wake::Cmd(Some(ToHost::MigrateFrom { source, quick, .. })) => {
                    w.migrate_from(source, quick).await;
                    looks = interval(w.checks.looks_alive_ms);
                    is = interval(w.checks.is_alive_ms);
                }
                Wake::Cmd(Some(ToHost::Terminate { .. })) => {
                    w.stop_watching();
                    w.terminate().await;
                }
                Wake::Fence => w.fence().await,
                Wake::Cmd(None | Some(ToHost::Close { .. })) => {
                    w.stop_watching();
                    w.call("Close", |r| r.close()).await.ok();
                    if let Some(cg) = w.cgroup.take() {
                        let _ = tokio::task::spawn_blocking(move || cg.remove()).await;
                    }
                    return;
                }
                Wake::Cmd(Some(ToHost::Control { id, request, .. })) => {
                    let result = w
                        .call("Control", move |r| r.control(&request))
                        .await
                        .and_then(|r| r)
                        .map(|ok| w.secrets.hide(&ok))
                        .map_err(|e| w.secrets.hide(&e));
                    let _ = w
                        .out
                        .send((FromHost::ControlReply { id, result }, None))
                        .await;
                }
                Wake::Cmd(Some(_)) => {}
                Wake::LooksAlive | Wake::Event => w.check(true).await,
                Wake::IsAlive => w.check(false).await,
                Wake::Poll => w.progress().await,
            }
        }
    }

    /// Runs `f` on a blocking thread under the deadlock watchdog. A panic in the type is an
    /// error; a call that outlives `deadlock_timeout_ms` ends this RHS.
    async fn guarded<T: Send + 'static>(
        &self,
        entry: &'static str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        let limit = Duration::from_millis(self.checks.deadlock_timeout_ms);
        match tokio::time::timeout(limit, tokio::task::spawn_blocking(f)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("{entry} panicked in the resource type: {e}")),
            Err(_) => self.deadlock(entry).await,
        }
    }

    async fn call<T: Send + 'static>(
        &self,
        entry: &'static str,
        f: impl FnOnce(&mut dyn Resource) -> T + Send + 'static,
    ) -> Result<T, String> {
        let Some(instance) = self.instance.clone() else {
            return Err(self
                .open_error
                .clone()
                .unwrap_or_else(|| "not open".to_string()));
        };
        let cg = self.cgroup.clone();
        self.guarded(entry, move || {
            let mut guard = instance.lock().unwrap_or_else(|p| p.into_inner());
            crate::cgroup::with(cg, || f(guard.as_mut()))
        })
        .await
    }

    /// After the type's own Offline or Terminate: whatever is left in the resource's cgroup
    /// (a daemon that left its process group) is killed. What was found, for the reason.
    async fn sweep(&self) -> Option<String> {
        let cg = self.cgroup.clone()?;
        let killed = tokio::task::spawn_blocking(move || cg.kill()).await.ok()?;
        match killed {
            Ok(0) => None,
            Ok(n) => Some(format!("{n} process(es) left in its cgroup were killed")),
            Err(e) => {
                tracing::error!("RHS: resource {}: {e}", self.name);
                Some(e)
            }
        }
    }

    /// Terminate, then the cgroup's leftovers.
    async fn terminate(&self) -> Option<String> {
        self.call("Terminate", |r| r.terminate()).await.ok();
        self.sweep().await
    }

    async fn deadlock(&self, entry: &'static str) -> ! {
        tracing::error!(
            "RHS: {entry} of resource {} did not return within {} ms; exiting",
            self.name,
            self.checks.deadlock_timeout_ms
        );
        let (ack, acked) = oneshot::channel();
        let msg = FromHost::Deadlock {
            resource: self.name.clone(),
            instance: self.instance_id,
            entry_point: entry.to_string(),
        };
        if self.out.send((msg, Some(ack))).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), acked).await;
        }
        // Exiting kills each process's leader (parent-death signal); not what it forked.
        types::process::kill_all_groups();
        crate::cgroup::kill_all();
        std::process::exit(70)
    }

    async fn report(&self, report: Report, reason: impl Into<String>, pid: Option<u32>) {
        let msg = FromHost::Status {
            resource: self.name.clone(),
            instance: self.instance_id,
            report,
            reason: self.secrets.hide(&reason.into()),
            pid,
        };
        let _ = self.out.send((msg, None)).await;
    }

    fn stop_watching(&mut self) {
        self.phase = Phase::Offline;
        self.event = None;
    }

    async fn online(&mut self) {
        self.come_online("Online", "coming online", |r| r.online())
            .await;
    }

    /// Online, or MigrateFrom: brings the instance up through `entry` (`pending`: what status
    /// says while it answers Pending without a message of its own).
    async fn come_online(
        &mut self,
        entry: &'static str,
        pending: &str,
        f: impl FnOnce(&mut dyn Resource) -> Result<Progress, Fault> + Send + 'static,
    ) {
        if let Some(e) = &self.open_error {
            let reason = format!("Open failed: {e}");
            self.report(Report::Failed, reason, None).await;
            return;
        }
        self.phase = Phase::Pending;
        match self.call(entry, f).await {
            Ok(Ok(Progress::Done)) => self.became_online().await,
            Ok(Ok(Progress::Pending(msg))) => {
                self.watch().await;
                let progress = msg.is_some();
                let reason = msg.unwrap_or_else(|| pending.to_string());
                self.report(Report::OnlinePending { progress }, reason, None)
                    .await;
            }
            Ok(Err(e)) => self.failed_with(e, &format!("{entry} failed")).await,
            Err(e) => self.failed(format!("{entry} failed: {e}")).await,
        }
    }

    async fn migrate_to(&mut self, target: String, target_address: String, quick: bool) {
        if self.phase != Phase::Online {
            let reason = "it is not online here".to_string();
            self.report(Report::MigrateFailed, reason, None).await;
            return;
        }
        let to = target.clone();
        let result = self
            .call("MigrateTo", move |r| {
                r.migrate_to(&to, &target_address, quick)
            })
            .await;
        match result {
            Ok(Ok(done)) => {
                self.stop_watching();
                self.phase = Phase::Migrated;
                let reason = format!("now running on {target}: {done}");
                self.report(Report::Migrated, reason, None).await;
            }
            Ok(Err(e)) | Err(e) => self.report(Report::MigrateFailed, e, None).await,
        }
    }

    async fn migrate_from(&mut self, source: String, quick: bool) {
        self.come_online("MigrateFrom", "completing the migration", move |r| {
            r.migrate_from(&source, quick)
        })
        .await;
    }

    async fn progress(&mut self) {
        match self.call("Online", |r| r.online_progress()).await {
            Ok(Ok(Progress::Done)) => self.became_online().await,
            Ok(Ok(Progress::Pending(Some(msg)))) => {
                self.report(Report::OnlinePending { progress: true }, msg, None)
                    .await;
            }
            Ok(Ok(Progress::Pending(None))) => {}
            Ok(Err(e)) => self.failed_with(e, "Online failed").await,
            Err(e) => self.failed(format!("Online failed: {e}")).await,
        }
    }

    async fn became_online(&mut self) {
        let (fd, pid, how) = self
            .call("Online", |r| (r.event_fd(), r.pid(), r.describe()))
            .await
            .unwrap_or((None, None, None));
        self.watch_fd(fd);
        self.phase = Phase::Online;
        let reason = how.map_or_else(|| "online".to_string(), |h| format!("online: {h}"));
        self.report(Report::Online, reason, pid).await;
    }

    /// Starts watching the resource's event descriptor, if its type has one.
    async fn watch(&mut self) {
        let fd = self.call("Online", |r| r.event_fd()).await.ok().flatten();
        self.watch_fd(fd);
    }

    fn watch_fd(&mut self, fd: Option<OwnedFd>) {
        // SAFETY: the AsyncFd owns `fd`, so it stays open and the same until the AsyncFd drops.
        self.event = fd.and_then(|fd| unsafe { AsyncFd::register(fd) }.ok());
    }

    async fn offline(&mut self) {
        self.stop_watching();
        match self.call("Offline", |r| r.offline()).await {
            Ok(Ok(note)) => {
                let notes: Vec<String> = note.into_iter().chain(self.sweep().await).collect();
                let reason = if notes.is_empty() {
                    "stopped".to_string()
                } else {
                    format!("stopped: {}", notes.join("; "))
                };
                self.report(Report::Offline, reason, None).await
            }
            Ok(Err(e)) | Err(e) => {
                // Ended by force before the report: a worker's Failed always means its
                // instance is ended, and the RCM does not terminate it again.
                self.terminate().await;
                self.report(Report::Failed, format!("Offline failed: {e}"), None)
                    .await
            }
        }
    }

    /// The node's lease ran out: terminated, and reported if it was running (the agent, if
    /// it is in fact still leased, then applies the restart policy).
    async fn fence(&mut self) {
        let running = matches!(self.phase, Phase::Online | Phase::Pending);
        self.stop_watching();
        self.terminate().await;
        if running {
            let reason =
                "terminated by its RHS: the node's lease ran out with no renewal from the agent";
            self.report(Report::Failed, reason, None).await;
        }
    }

    async fn failed(&mut self, reason: String) {
        self.stop_watching();
        self.terminate().await;
        self.report(Report::Failed, reason, None).await;
    }

    async fn failed_with(&mut self, fault: Fault, context: &str) {
        match fault {
            Fault::Failed(why) => self.failed(format!("{context}: {why}")).await,
            Fault::Misconfigured(why) => self.misconfigured(format!("{context}: {why}")).await,
        }
    }

    /// A configuration error on this node: terminated, and not to be restarted here.
    async fn misconfigured(&mut self, reason: String) {
        self.stop_watching();
        self.terminate().await;
        self.report(Report::FailedHere, reason, None).await;
    }

    /// LooksAlive (`quick`) or IsAlive; a LooksAlive "no" is confirmed by IsAlive at once.
    async fn check(&mut self, quick: bool) {
        let first = if quick && self.inline_looks_alive {
            let instance = self.instance.as_ref().expect("online implies open");
            Ok(instance
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .looks_alive())
        } else if quick {
            self.call("LooksAlive", |r| r.looks_alive()).await
        } else {
            self.call("IsAlive", |r| r.is_alive()).await
        };
        let health = match first {
            Ok(Health::Alive) => return,
            // Running, with something to say: no need to confirm.
            Ok(Health::Notice(_)) => first,
            Ok(_) if quick => self.call("IsAlive", |r| r.is_alive()).await,
            other => other,
        };
        match health {
            Ok(Health::Alive) => {}
            Ok(Health::Notice(what)) => self.report(Report::Notice, what, None).await,
            Ok(Health::Failed(why)) | Err(why) => self.failed(format!("IsAlive: {why}")).await,
            Ok(Health::Misconfigured(why)) => self.misconfigured(format!("IsAlive: {why}")).await,
            Ok(Health::StoppedOutOfBand(why)) => {
                self.stop_watching();
                self.terminate().await;
                self.report(Report::StoppedOutOfBand, why, None).await;
            }
        }
    }
}

fn interval(ms: u64) -> Interval {
    let period = Duration::from_millis(ms.max(1));
    let mut i = tokio::time::interval_at(Instant::now() + period, period);
    i.set_missed_tick_behavior(MissedTickBehavior::Delay);
    i
}

/// Resolves when the resource's event descriptor has something new. The readiness is
/// cleared: the check it triggers consumes the event (a VM's QMP events) or sees the
/// change for good (a pidfd of an exited process); only a new event wakes us again.
async fn readable(fd: &Option<AsyncFd<OwnedFd>>) {
    match fd {
        Some(fd) => {
            if let Ok(mut guard) = fd.readable().await {
                guard.clear_ready();
            }
        }
        None => std::future::pending().await,
    }
}
