//! The watchdog backstop (`--watchdog DEVICE`): a timer outside the node's processes that
//! resets the node when they stop, so that resources cannot outlive the node's lease while
//! its agent and RHS are stuck (SIGSTOP, swapped out, a frozen cgroup, a kernel stall).
//!
//! The agent holds the device open from its start and kicks it from a thread of its own
//! only while its main loop answers and either its lease holds or nothing runs here; it
//! closes it with the magic close only on a clean stop. Stopped kicks reset the node at
//! most `timeout` after its lease ran out (the last kick was within the lease), so the
//! cluster records a silent node Down only after lease + watchdog + margin
//! (`LeaseConfig::down_after_ms`, with the cluster's timeout from the database).
//!
//! A device is the Linux watchdog character device (`WDIOC_SETTIMEOUT`, `WDIOC_KEEPALIVE`,
//! `V` then close to disarm), or a Unix socket with the same commands as lines, played by
//! `vigil watchdog-device` (the test bed: machines without `/dev/watchdog`). That one kills
//! the node's whole cgroup (its agent, RHS processes and resources) when not kicked in time.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

/// A watchdog device.
pub trait Device: Send {
    /// Arms it with `timeout`.
    fn set_timeout(&mut self, timeout: Duration) -> std::io::Result<()>;
    fn kick(&mut self) -> std::io::Result<()>;
    /// Disarms it (the magic close); only on a clean stop, with nothing running.
    fn disarm(self: Box<Self>) -> std::io::Result<()>;
}

/// `/dev/watchdog` and its kind.
struct Linux(std::fs::File);

// <linux/watchdog.h>: WDIOC_SETTIMEOUT = _IOWR('W', 6, int), WDIOC_KEEPALIVE = _IOR('W', 5, int).
const WDIOC_SETTIMEOUT: rustix::ioctl::Opcode =
    rustix::ioctl::opcode::read_write::<std::ffi::c_int>(b'W', 6);
const WDIOC_KEEPALIVE: rustix::ioctl::Opcode =
    rustix::ioctl::opcode::read::<std::ffi::c_int>(b'W', 5);

impl Device for Linux {
    fn set_timeout(&mut self, timeout: Duration) -> std::io::Result<()> {
        // Whole seconds, rounded up: a shorter timeout than the cluster reckons with is unsafe.
        let mut secs: std::ffi::c_int = timeout
            .as_millis()
            .div_ceil(1000)
            .try_into()
            .unwrap_or(std::ffi::c_int::MAX);
        // SAFETY: WDIOC_SETTIMEOUT takes (and answers) an int.
        unsafe {
            rustix::ioctl::ioctl(
                &self.0,
                rustix::ioctl::Updater::<WDIOC_SETTIMEOUT, std::ffi::c_int>::new(&mut secs),
            )
        }?;
        Ok(())
    }

    fn kick(&mut self) -> std::io::Result<()> {
        let mut dummy: std::ffi::c_int = 0;
        // SAFETY: WDIOC_KEEPALIVE takes an int it ignores.
        unsafe {
            rustix::ioctl::ioctl(
                &self.0,
                rustix::ioctl::Updater::<WDIOC_KEEPALIVE, std::ffi::c_int>::new(&mut dummy),
            )
        }?;
        Ok(())
    }

    fn disarm(mut self: Box<Self>) -> std::io::Result<()> {
        self.0.write_all(b"V")
    }
}

/// The test device's socket (see `serve_test_device`).
struct Socket(std::os::unix::net::UnixStream);

impl Device for Socket {
    fn set_timeout(&mut self, timeout: Duration) -> std::io::Result<()> {
        writeln!(self.0, "timeout {}", timeout.as_millis())
    }
    fn kick(&mut self) -> std::io::Result<()> {
        writeln!(self.0, "kick")
    }
    fn disarm(mut self: Box<Self>) -> std::io::Result<()> {
        writeln!(self.0, "V")
    }
}

/// Opens the device at `path`: a Unix socket is the test device, anything else the Linux one.
pub fn open(path: &Path) -> Result<Box<dyn Device>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("watchdog {}: {e}", path.display()))?;
    if meta.file_type().is_socket() {
        let s = std::os::unix::net::UnixStream::connect(path)
            .map_err(|e| format!("watchdog {}: {e}", path.display()))?;
        return Ok(Box::new(Socket(s)));
    }
    if !meta.file_type().is_char_device() {
        return Err(format!(
            "watchdog {} is neither a character device nor a socket",
            path.display()
        ));
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| format!("watchdog {}: {e}", path.display()))?;
    Ok(Box::new(Linux(f)))
}

/// What the kicker reads and the main loop writes.
#[derive(Default)]
pub struct Signals {
    /// When the main loop last answered a probe (monotonic ns).
    answered_ns: AtomicU64,
    /// Whether anything may run on this node (the RCM's view).
    running: AtomicBool,
    stop: AtomicBool,
}

impl Signals {
    /// The main loop's answer to a probe.
    pub fn answer(&self, running: bool) {
        self.running.store(running, Ordering::SeqCst);
        self.answered_ns.store(mono_ns(), Ordering::SeqCst);
    }
}

/// The kicker thread and what it reads.
pub struct Watchdog {
    signals: Arc<Signals>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Arms `device` with `timeout` and kicks it from a thread: every quarter of the timeout
    /// it asks the main loop (`probe`), and kicks when the main loop answered within half
    /// the timeout and the lease holds (or nothing runs here).
    pub fn start(
        mut device: Box<dyn Device>,
        timeout: Duration,
        lease: watch::Receiver<Option<u64>>,
        probe: mpsc::Sender<crate::service::Msg>,
    ) -> Result<(Watchdog, Arc<Signals>), String> {
        device
            .set_timeout(timeout)
            .map_err(|e| format!("cannot arm the watchdog: {e}"))?;
        device
            .kick()
            .map_err(|e| format!("cannot kick the watchdog: {e}"))?;
        let signals = Arc::new(Signals::default());
        signals.answered_ns.store(mono_ns(), Ordering::SeqCst);
        let period = (timeout / 4).max(Duration::from_millis(20));
        let fresh = (timeout / 2).as_nanos() as u64;
        let s = signals.clone();
        let thread = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || {
                let mut device = Some(device);
                while !s.stop.load(Ordering::SeqCst) {
                    let _ = probe.try_send(crate::service::Msg::WatchdogProbe);
                    let now = mono_ns();
                    let kick = vigil_core::lease::may_kick_watchdog(
                        now,
                        s.answered_ns.load(Ordering::SeqCst),
                        fresh,
                        *lease.borrow(),
                        s.running.load(Ordering::SeqCst),
                    );
                    if kick
                        && let Some(d) = device.as_mut()
                        && let Err(e) = d.kick()
                    {
                        tracing::error!("cannot kick the watchdog: {e}");
                    }
                    std::thread::sleep(period);
                }
                if let Some(d) = device.take()
                    && let Err(e) = d.disarm()
                {
                    tracing::error!("cannot disarm the watchdog: {e}");
                }
            })
            .map_err(|e| format!("cannot start the watchdog thread: {e}"))?;
        Ok((
            Watchdog {
                signals: signals.clone(),
                thread: Some(thread),
            },
            signals,
        ))
    }

    /// A clean stop (every resource ended): the magic close.
    pub fn disarm(mut self) {
        self.signals.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn mono_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// `vigil watchdog-device --socket PATH`: a watchdog device on a Unix socket, for machines
/// without one. One node connects; when it stops kicking for its timeout (or goes away
/// without the magic close), the device kills that node's cgroup: the cgroup of the
/// connecting agent's parent (`<node cgroup>/.agent` → `<node cgroup>`), that is the agent,
/// its RHS processes and every resource. Runs until it fired or was disarmed.
pub fn serve_test_device(path: &Path) -> Result<(), String> {
    let _ = std::fs::remove_file(path);
    let listener = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    let (stream, _) = listener
        .accept()
        .map_err(|e| format!("cannot accept on {}: {e}", path.display()))?;
    let peer = rustix::net::sockopt::socket_peercred(&stream)
        .map_err(|e| format!("cannot tell who connected: {e}"))?;
    let pid = peer.pid.as_raw_nonzero().get() as u32;
    let node = node_cgroup(pid)?;
    eprintln!(
        "watchdog-device: node cgroup {} (agent pid {pid})",
        node.display()
    );
    let (tx, rx) = std::sync::mpsc::channel::<Option<String>>();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(Some(line)).is_err() {
                return;
            }
        }
        let _ = tx.send(None);
    });
    let mut timeout: Option<Duration> = None;
    let mut last = Instant::now();
    let mut disarmed = false;
    loop {
        let wait = timeout.map_or(Duration::from_secs(3600), |t| {
            (last + t).saturating_duration_since(Instant::now())
        });
        match rx.recv_timeout(wait) {
            Ok(Some(line)) => match line.split_whitespace().collect::<Vec<_>>().as_slice() {
                ["timeout", ms] => {
                    timeout = ms.parse().ok().map(Duration::from_millis);
                    last = Instant::now();
                }
                ["kick"] => last = Instant::now(),
                ["V"] => disarmed = true,
                other => eprintln!("watchdog-device: ignored {other:?}"),
            },
            Ok(None) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                if disarmed {
                    eprintln!("watchdog-device: disarmed");
                    return Ok(());
                }
                // Closed without the magic close: the timer runs on, as a real device's.
                let Some(t) = timeout else { return Ok(()) };
                std::thread::sleep((last + t).saturating_duration_since(Instant::now()));
                return fire(&node, last.elapsed());
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                return fire(&node, last.elapsed());
            }
        }
    }
}

fn fire(node: &Path, since: Duration) -> Result<(), String> {
    eprintln!(
        "watchdog-device: not kicked for {} ms: killing every process of {}",
        since.as_millis(),
        node.display()
    );
    std::fs::write(node.join("cgroup.kill"), "1")
        .map_err(|e| format!("cannot kill {}: {e}", node.display()))
}

/// The node cgroup of the agent `pid`: the parent of its own cgroup (`.agent`).
fn node_cgroup(pid: u32) -> Result<PathBuf, String> {
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| format!("cannot read the cgroup of pid {pid}: {e}"))?;
    let path = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| format!("pid {pid} has no cgroup v2"))?;
    let rel = Path::new(path.trim_start_matches('/'));
    if rel.file_name().is_none_or(|n| n != crate::cgroups::AGENT) {
        return Err(format!(
            "pid {pid} is in cgroup {path}, not in a node's {} cgroup: the test device needs the agent to run with cgroup v2",
            crate::cgroups::AGENT
        ));
    }
    let mount = vigil_rhs::cgroup::own()?;
    // `own` is this process's cgroup; the node's is under the same mount.
    let root = mount_root(&mount)?;
    Ok(root.join(rel.parent().unwrap_or(Path::new(""))))
}

/// The cgroup2 mount point (from a path inside it and this process's cgroup).
fn mount_root(own: &Path) -> Result<PathBuf, String> {
    let mine = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let rel = mine
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/")
        .trim_start_matches('/');
    let mut root = own.to_path_buf();
    for _ in Path::new(rel).components() {
        root.pop();
    }
    Ok(root)
}
