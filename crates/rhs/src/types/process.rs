//! The `process` type: a long-running command supervised by the RHS.
//!
//! - LooksAlive: the process has not exited (the host also watches its pidfd, so an exit is
//!   seen at once, not at the next interval).
//! - IsAlive: LooksAlive, then the optional `check_tcp`, `check_http` and `check_command`.
//! - Online starts the process in a process group of its own with `VIGIL_RESOURCE`,
//!   `VIGIL_NODE` and `VIGIL_EPOCH` set; with checks configured it stays pending until they
//!   pass. Offline sends `stop_signal` to the group, waits `stop_timeout_ms`, then SIGKILL.
//! - An exit whose code is in `stop_exit_codes` is an operator's out-of-band stop.
//!
//! Processes are spawned from one long-lived thread with a parent-death signal, so they die
//! with the RHS that supervises them.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::{Pid, PidfdFlags, Signal};
use vigil_core::params::{self, ParamKind, ParamSpec};

use super::{
    CallBound, Fault, Health, OpenContext, Progress, Resource, ResourceType, optional as spec,
};

pub struct ProcessType;

/// How long to wait for a process to vanish after SIGKILL (it only takes longer when the
/// kernel holds it, e.g. in uninterruptible I/O).
const KILL_WAIT: Duration = Duration::from_secs(2);

/// Process groups this RHS started and has not yet cleaned up, for [`kill_all_groups`].
static GROUPS: Mutex<std::collections::BTreeSet<i32>> =
    Mutex::new(std::collections::BTreeSet::new());

fn groups() -> std::sync::MutexGuard<'static, std::collections::BTreeSet<i32>> {
    GROUPS.lock().unwrap_or_else(|p| p.into_inner())
}

/// SIGKILLs every process group this RHS started. For an RHS about to exit abnormally: the
/// parent-death signal reaches only each group's leader, not what the leader forked.
pub fn kill_all_groups() {
    for pgid in std::mem::take(&mut *groups()) {
        if let Some(pid) = Pid::from_raw(pgid) {
            let _ = rustix::process::kill_process_group(pid, Signal::KILL);
        }
    }
}

impl ResourceType for ProcessType {
    fn name(&self) -> &str {
        "process"
    }

    fn description(&self) -> &'static str {
        "a long-running command supervised by the RHS"
    }

    fn schema(&self) -> Vec<ParamSpec> {
        let mut command = spec("command", ParamKind::Argv, None, "the command line to run");
        command.required = true;
        vec![
            command,
            spec(
                "env",
                ParamKind::KeyValues,
                None,
                "extra environment, KEY=VALUE,...",
            ),
            spec("cwd", ParamKind::String, None, "working directory"),
            spec(
                "user",
                ParamKind::String,
                None,
                "run as this user (name or uid; recommended: not root), in its primary group unless group is given",
            ),
            spec(
                "group",
                ParamKind::String,
                None,
                "run in this group (name or gid)",
            ),
            spec(
                "stop_signal",
                ParamKind::Signal,
                Some("TERM"),
                "signal for a graceful stop",
            ),
            spec(
                "stop_timeout_ms",
                ParamKind::Integer,
                Some("10000"),
                "wait this long after stop_signal, then SIGKILL",
            ),
            spec(
                "stop_exit_codes",
                ParamKind::IntegerList,
                None,
                "exit codes that mean 'stopped on purpose' (not restarted)",
            ),
            spec(
                "check_tcp",
                ParamKind::HostPort,
                None,
                "IsAlive: connect to HOST:PORT",
            ),
            spec(
                "check_http",
                ParamKind::HttpUrl,
                None,
                "IsAlive: GET this http:// URL, expect 2xx",
            ),
            spec(
                "check_command",
                ParamKind::Argv,
                None,
                "IsAlive: run this command, expect exit 0",
            ),
            spec(
                "check_timeout_ms",
                ParamKind::Integer,
                Some("5000"),
                "time limit of each check",
            ),
        ]
    }

    fn check(&self, params: &BTreeMap<String, String>) -> Result<CallBound, String> {
        let cfg = Config::parse(params)?;
        let stop = cfg.stop_timeout + KILL_WAIT;
        let checks = cfg.check_count() as u32 * cfg.check_timeout + Duration::from_secs(1);
        Ok(if stop >= checks {
            CallBound {
                ms: stop.as_millis() as u64,
                why: format!(
                    "Offline waits stop_timeout_ms={} plus {} ms after SIGKILL",
                    cfg.stop_timeout.as_millis(),
                    KILL_WAIT.as_millis()
                ),
            }
        } else {
            CallBound {
                ms: checks.as_millis() as u64,
                why: format!(
                    "IsAlive runs {} checks of up to check_timeout_ms={} each",
                    cfg.check_count(),
                    cfg.check_timeout.as_millis()
                ),
            }
        })
    }

    fn open(&self, ctx: OpenContext) -> Result<Box<dyn Resource>, String> {
        Ok(Box::new(ProcessResource {
            cfg: Config::parse(&ctx.params)?,
            ctx,
            child: None,
            exited: None,
            group_cleaned: true,
        }))
    }
}

#[derive(Debug)]
struct Config {
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: Option<String>,
    /// Run as (uid, gid).
    run_as: Option<(u32, u32)>,
    stop_signal: i32,
    stop_timeout: Duration,
    stop_exit_codes: Vec<i32>,
    check_tcp: Option<String>,
    check_http: Option<(String, String)>,
    check_command: Option<Vec<String>>,
    check_timeout: Duration,
}

impl Config {
    fn parse(p: &BTreeMap<String, String>) -> Result<Self, String> {
        let bad = |name: &str, why: String| format!("parameter {name}: {why}");
        let get = |name: &str| p.get(name).map(String::as_str);
        // A day at most: longer is a mistake, and the deadlock bound would refuse it anyway.
        let ms = |name: &str, default: u64, min: u64| -> Result<Duration, String> {
            super::int_param(p, name, default, min, 86_400_000).map(Duration::from_millis)
        };
        // A process cannot take a NUL byte in its arguments, environment or directory: say so
        // now, not when it is started.
        if let Some((name, _)) = p.iter().find(|(_, v)| v.contains('\0')) {
            return Err(bad(
                name,
                "contains a NUL byte, which no command line, environment or path can hold"
                    .to_string(),
            ));
        }
        Ok(Self {
            argv: params::parse_argv(get("command").ok_or("parameter command is required")?)
                .map_err(|e| bad("command", e))?,
            env: get("env")
                .map_or(Ok(BTreeMap::new()), params::parse_key_values)
                .map_err(|e| bad("env", e))?,
            cwd: get("cwd").map(str::to_string),
            run_as: run_as(get("user"), get("group"))?,
            stop_signal: get("stop_signal")
                .map_or(Ok(15), params::parse_signal)
                .map_err(|e| bad("stop_signal", e))?,
            stop_timeout: ms("stop_timeout_ms", 10_000, 0)?,
            stop_exit_codes: get("stop_exit_codes")
                .map_or(Ok(Vec::new()), params::parse_int_list)
                .and_then(
                    |codes| match codes.iter().find(|c| !(0..=255).contains(*c)) {
                        Some(c) => Err(format!("{c} is not an exit code (they run from 0 to 255)")),
                        None => Ok(codes),
                    },
                )
                .map_err(|e| bad("stop_exit_codes", e))?,
            check_tcp: get("check_tcp")
                .map(|v| params::parse_host_port(v).map(|_| v.to_string()))
                .transpose()
                .map_err(|e| bad("check_tcp", e))?,
            check_http: get("check_http")
                .map(params::parse_http_url)
                .transpose()
                .map_err(|e| bad("check_http", e))?,
            check_command: get("check_command")
                .map(params::parse_argv)
                .transpose()
                .map_err(|e| bad("check_command", e))?,
            check_timeout: ms("check_timeout_ms", 5_000, 1)?,
        })
    }

    fn check_count(&self) -> usize {
        [
            self.check_tcp.is_some(),
            self.check_http.is_some(),
            self.check_command.is_some(),
        ]
        .into_iter()
        .filter(|c| *c)
        .count()
    }

    fn has_checks(&self) -> bool {
        self.check_count() > 0
    }
}

struct ProcessResource {
    cfg: Config,
    ctx: OpenContext,
    child: Option<Child>,
    exited: Option<ExitStatus>,
    /// The process group was killed after its leader exited: its id may be reused now, so
    /// it must not be signalled again.
    group_cleaned: bool,
}

impl ProcessResource {
    fn start(&mut self) -> Result<u32, String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.ctx.log_path)
            .map_err(|e| format!("cannot open log file {}: {e}", self.ctx.log_path.display()))?;
        let log_err = log
            .try_clone()
            .map_err(|e| format!("cannot duplicate log file: {e}"))?;
        let mut cmd = Command::new(&self.cfg.argv[0]);
        cmd.args(&self.cfg.argv[1..])
            .envs(&self.cfg.env)
            .env("VIGIL_RESOURCE", &self.ctx.resource)
            .env("VIGIL_NODE", &self.ctx.node)
            .env("VIGIL_EPOCH", self.ctx.epoch.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0);
        if let Some(cwd) = &self.cfg.cwd {
            cmd.current_dir(cwd);
        }
        if let Some((uid, gid)) = self.cfg.run_as {
            // std sets the groups to `gid` alone, then the gid, then the uid.
            cmd.uid(uid).gid(gid);
        }
        let child = spawn(cmd).map_err(|e| format!("cannot start {:?}: {e}", self.cfg.argv[0]))?;
        let pid = child.id();
        groups().insert(pid as i32);
        self.child = Some(child);
        self.exited = None;
        self.group_cleaned = false;
        Ok(pid)
    }

    /// Reaps the process if it exited; `Some` once it has.
    fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none()
            && let Some(child) = &mut self.child
            && let Ok(Some(status)) = child.try_wait()
        {
            self.exited = Some(status);
        }
        self.exited
    }

    fn running(&mut self) -> bool {
        self.child.is_some() && self.exit_status().is_none()
    }

    fn classify(&self, status: ExitStatus) -> Health {
        match (status.code(), status.signal()) {
            (Some(code), _) if self.cfg.stop_exit_codes.contains(&code) => {
                Health::StoppedOutOfBand(format!(
                    "exited with code {code}, listed in stop_exit_codes"
                ))
            }
            (Some(code), _) => Health::Failed(format!("exited with code {code}")),
            (_, Some(sig)) => Health::Failed(format!("killed by signal {sig}")),
            _ => Health::Failed(format!("ended: {status}")),
        }
    }

    fn signal_group(&self, sig: i32) {
        if let Some(pid) = self
            .child
            .as_ref()
            .and_then(|c| Pid::from_raw(c.id() as i32))
        {
            // SAFETY: `sig` comes from parse_signal, which allows only 1..=31.
            let sig = unsafe { Signal::from_raw_unchecked(sig) };
            // ESRCH: already gone, which is what we want.
            let _ = rustix::process::kill_process_group(pid, sig);
        }
    }

    /// The leader exited: kill what it left in its group, once, and forget the group.
    fn clean_group(&mut self) {
        if self.group_cleaned || self.exit_status().is_none() {
            return;
        }
        self.signal_group(9);
        self.group_cleaned = true;
        if let Some(c) = &self.child {
            groups().remove(&(c.id() as i32));
        }
    }

    /// Waits up to `limit` for the process to exit.
    fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if !self.running() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn checks(&mut self) -> Result<(), String> {
        let timeout = self.cfg.check_timeout;
        if let Some(addr) = &self.cfg.check_tcp {
            connect(addr, timeout).map_err(|e| format!("check_tcp {addr}: {e}"))?;
        }
        if let Some((authority, path)) = &self.cfg.check_http {
            http_get(authority, path, timeout)
                .map_err(|e| format!("check_http http://{authority}{path}: {e}"))?;
        }
        if let Some(argv) = &self.cfg.check_command {
            run_check(argv, timeout)
                .map_err(|e| format!("check_command {:?}: {e}", argv.join(" ")))?;
        }
        Ok(())
    }
}

impl Resource for ProcessResource {
    fn online(&mut self) -> Result<Progress, Fault> {
        if self.running() {
            return Ok(Progress::Done);
        }
        let pid = self.start()?;
        if self.cfg.has_checks() {
            Ok(Progress::Pending(Some(format!(
                "started pid {pid}; waiting for its checks to pass"
            ))))
        } else {
            Ok(Progress::Done)
        }
    }

    fn online_progress(&mut self) -> Result<Progress, Fault> {
        if let Some(status) = self.exit_status() {
            return Err(format!("exited while coming online: {status}").into());
        }
        match self.checks() {
            Ok(()) => Ok(Progress::Done),
            Err(_) => Ok(Progress::Pending(None)),
        }
    }

    fn offline(&mut self) -> Result<Option<String>, String> {
        if !self.running() {
            return Ok(None);
        }
        self.signal_group(self.cfg.stop_signal);
        let mut note = None;
        if !self.wait_exit(self.cfg.stop_timeout) {
            self.signal_group(9);
            if !self.wait_exit(KILL_WAIT) {
                return Err(format!(
                    "still running {} ms after SIGKILL",
                    KILL_WAIT.as_millis()
                ));
            }
            note = Some(format!(
                "still running stop_timeout_ms={} after signal {}; killed",
                self.cfg.stop_timeout.as_millis(),
                self.cfg.stop_signal
            ));
        }
        // Whatever the leader left behind in its group goes too.
        self.clean_group();
        Ok(note)
    }

    fn terminate(&mut self) {
        if self.child.is_some() {
            self.signal_group(9);
            self.wait_exit(KILL_WAIT);
            self.clean_group();
        }
    }

    fn looks_alive(&mut self) -> Health {
        match self.exit_status() {
            None if self.child.is_some() => Health::Alive,
            None => Health::Failed("not started".to_string()),
            Some(status) => self.classify(status),
        }
    }

    fn looks_alive_never_blocks(&self) -> bool {
        // `try_wait` is one non-blocking waitid(2).
        true
    }

    fn is_alive(&mut self) -> Health {
        match self.looks_alive() {
            Health::Alive => match self.checks() {
                Ok(()) => Health::Alive,
                Err(e) => Health::Failed(e),
            },
            other => other,
        }
    }

    fn close(&mut self) {
        self.terminate();
    }

    fn event_fd(&self) -> Option<OwnedFd> {
        let pid = Pid::from_raw(self.child.as_ref()?.id() as i32)?;
        rustix::process::pidfd_open(pid, PidfdFlags::empty()).ok()
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, String> {
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve: {e}"))?
        .collect();
    let mut last = "no address".to_string();
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// A minimal HTTP/1.0 GET; success is a 2xx status line.
pub(crate) fn http_get(authority: &str, path: &str, timeout: Duration) -> Result<(), String> {
    let mut s = connect(authority, timeout)?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(e.to_string()),
        }
    }
    let line = String::from_utf8_lossy(&head[..n]);
    let status = line.split_whitespace().nth(1).unwrap_or("");
    if line.starts_with("HTTP/") && status.starts_with('2') && status.len() == 3 {
        Ok(())
    } else {
        Err(format!("answered {:?}", line.lines().next().unwrap_or("")))
    }
}

fn run_check(argv: &[String], timeout: Duration) -> Result<(), String> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let mut child = spawn(cmd).map_err(|e| format!("cannot start: {e}"))?;
    match super::wait_or_kill_group(&mut child, timeout) {
        Some(status) if status.success() => Ok(()),
        Some(status) => Err(format!("{status}")),
        None => Err(format!(
            "no answer within check_timeout_ms={}",
            timeout.as_millis()
        )),
    }
}

/// Spawns `cmd` (which must lead a process group of its own) like a `process` resource: with
/// a parent-death signal, its group killed by [`kill_all_groups`] until [`forget_group`].
pub(crate) fn spawn_in_group(cmd: Command) -> std::io::Result<Child> {
    let child = spawn(cmd)?;
    groups().insert(child.id() as i32);
    Ok(child)
}

/// The group of `pid` is gone (reaped and cleaned up).
pub(crate) fn forget_group(pid: u32) {
    groups().remove(&(pid as i32));
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawner threads. A spawn blocks its thread until the child has exec'd, so several threads
/// start many processes faster (200 at once: about twice as fast with 4 as with 1).
const SPAWNERS: usize = 4;

/// Spawns with a parent-death signal (SIGKILL), so the child dies with this RHS, from
/// threads that live as long as the process: the signal fires when the *thread* that forked
/// exits, so children must not be forked from short-lived threads.
/// The child joins the cgroup of the resource being called (`cgroup::current`) before it
/// runs, so nothing it forks can start outside.
fn spawn(mut cmd: Command) -> std::io::Result<Child> {
    let cgroup = crate::cgroup::current();
    // SAFETY: prctl and write are async-signal-safe; nothing else runs between fork and
    // exec. The cgroup (and so its fd) lives as long as `cmd`, which owns the closure.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            if let Some(cg) = &cgroup {
                let fd = std::os::fd::BorrowedFd::borrow_raw(cg.procs_fd());
                rustix::io::write(fd, b"0")?;
            }
            Ok(())
        });
    }
    static SPAWNERS_TX: Mutex<Vec<mpsc::Sender<SpawnRequest>>> = Mutex::new(Vec::new());
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let tx = {
        let mut senders = SPAWNERS_TX.lock().unwrap_or_else(|p| p.into_inner());
        if senders.is_empty() {
            for i in 0..SPAWNERS {
                let (tx, rx) = mpsc::channel::<SpawnRequest>();
                std::thread::Builder::new()
                    .name(format!("spawner-{i}"))
                    .spawn(move || {
                        for (mut cmd, reply) in rx {
                            let _ = reply.send(cmd.spawn());
                        }
                    })
                    .map_err(|e| {
                        std::io::Error::other(format!("cannot start a spawner thread: {e}"))
                    })?;
                senders.push(tx);
            }
        }
        let i = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % senders.len();
        senders[i].clone()
    };
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.send((cmd, reply_tx))
        .map_err(|_| std::io::Error::other("spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("spawner thread is gone"))?
}

/// The (uid, gid) of the `user` and `group` parameters: names from /etc/passwd and
/// /etc/group, or numbers; the user's primary group unless `group` is given.
fn run_as(user: Option<&str>, group: Option<&str>) -> Result<Option<(u32, u32)>, String> {
    // NAME:x:ID:... lines; for passwd the primary gid is the fourth field.
    fn lookup(file: &str, name: &str) -> Option<Vec<String>> {
        std::fs::read_to_string(file).ok()?.lines().find_map(|l| {
            let f: Vec<String> = l.split(':').map(str::to_string).collect();
            (f.len() >= 3 && (f[0] == name || f[2] == name)).then_some(f)
        })
    }
    let number = |f: &[String], i: usize| f.get(i).and_then(|v| v.parse::<u32>().ok());
    let (uid, primary) = match user {
        None => (None, None),
        Some(u) => match lookup("/etc/passwd", u) {
            Some(f) => (number(&f, 2), number(&f, 3)),
            None => match u.parse::<u32>() {
                Ok(uid) => (Some(uid), None),
                Err(_) => {
                    return Err(format!(
                        "parameter user: no user {u:?} on this node (not in /etc/passwd, not a number)"
                    ));
                }
            },
        },
    };
    let gid = match group {
        None => primary,
        Some(g) => match lookup("/etc/group", g).and_then(|f| number(&f, 2)) {
            Some(gid) => Some(gid),
            None => Some(g.parse::<u32>().map_err(|_| {
                format!(
                    "parameter group: no group {g:?} on this node (not in /etc/group, not a number)"
                )
            })?),
        },
    };
    match (uid, gid) {
        (None, None) => Ok(None),
        (Some(uid), Some(gid)) => Ok(Some((uid, gid))),
        (Some(uid), None) => Err(format!(
            "parameter user: uid {uid} has no entry in /etc/passwd; give group too"
        )),
        (None, Some(_)) => Err("parameter group needs user".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_runs_as_its_user_and_group() {
        assert!(
            run_as(Some("no-such-user-x"), None)
                .unwrap_err()
                .contains("no user \"no-such-user-x\"")
        );
        assert!(run_as(None, Some("0")).unwrap_err().contains("needs user"));
        assert_eq!(run_as(Some("root"), None), Ok(Some((0, 0))));
        if !rustix::process::geteuid().is_root() {
            eprintln!("(not root: cannot start a process as another user here)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let out = dir.path().join("ids");
        let script = format!("id -u > {0}; id -g >> {0}; id -G >> {0}", out.display());
        let mut r = open(&[
            ("command", &format!("sh -c '{script}'")),
            ("user", "nobody"),
            ("group", "nogroup"),
        ]);
        r.online().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let ids = std::fs::read_to_string(&out).unwrap();
        let ids: Vec<&str> = ids.lines().collect();
        assert_eq!(ids, ["65534", "65534", "65534"], "uid, gid, groups");
    }

    fn open(params: &[(&str, &str)]) -> Box<dyn Resource> {
        let dir = std::env::temp_dir();
        let ctx = OpenContext {
            resource: "r".into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            node: "n1".into(),
            node_address: "127.0.0.1:7440".into(),
            epoch: 4,
            log_path: dir.join(format!("vigil-process-test-{}.log", std::process::id())),
            migration_tls: None,
        };
        ProcessType.open(ctx).unwrap()
    }

    #[test]
    fn a_process_runs_is_checked_and_stops() {
        let mut r = open(&[("command", "sleep 30")]);
        assert_eq!(r.online(), Ok(Progress::Done));
        assert_eq!(r.looks_alive(), Health::Alive);
        assert!(r.event_fd().is_some());
        r.offline().unwrap();
        assert_eq!(
            r.looks_alive(),
            Health::Failed("killed by signal 15".into())
        );
    }

    #[test]
    fn exits_are_failures_unless_listed_as_stops() {
        let mut r = open(&[("command", "sh -c 'exit 3'"), ("stop_exit_codes", "0,3")]);
        r.online().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(matches!(r.is_alive(), Health::StoppedOutOfBand(m) if m.contains("code 3")));
        let mut r = open(&[("command", "sh -c 'exit 4'"), ("stop_exit_codes", "0,3")]);
        r.online().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(r.is_alive(), Health::Failed("exited with code 4".into()));
    }

    #[test]
    fn environment_carries_resource_node_and_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let script = format!(
            "echo $VIGIL_RESOURCE $VIGIL_NODE $VIGIL_EPOCH $EXTRA > {}",
            out.display()
        );
        let mut r = open(&[
            ("command", &format!("sh -c '{script}'")),
            ("env", "EXTRA=x"),
        ]);
        r.online().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(std::fs::read_to_string(out).unwrap().trim(), "r n1 4 x");
    }

    #[test]
    fn checks_gate_online_and_fail_is_alive() {
        let mut r = open(&[
            ("command", "sleep 30"),
            ("check_command", "false"),
            ("check_timeout_ms", "1000"),
        ]);
        assert!(matches!(r.online(), Ok(Progress::Pending(Some(_)))));
        assert_eq!(r.online_progress(), Ok(Progress::Pending(None)));
        assert!(matches!(r.is_alive(), Health::Failed(m) if m.starts_with("check_command")));
        r.terminate();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut r = open(&[("command", "sleep 30"), ("check_tcp", &addr)]);
        r.online().unwrap();
        assert_eq!(r.online_progress(), Ok(Progress::Done));
        drop(listener);
        assert!(matches!(r.is_alive(), Health::Failed(m) if m.starts_with("check_tcp")));
        r.terminate();
    }

    #[test]
    fn bad_parameters_are_named() {
        let ctx = |p: &[(&str, &str)]| OpenContext {
            resource: "r".into(),
            params: p
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            node: "n".into(),
            node_address: "127.0.0.1:7440".into(),
            epoch: 1,
            log_path: "/dev/null".into(),
            migration_tls: None,
        };
        let err = ProcessType
            .open(ctx(&[("command", "x"), ("stop_timeout_ms", "soon")]))
            .err()
            .unwrap();
        assert_eq!(
            err,
            "parameter stop_timeout_ms = \"soon\" is not valid: expected a whole number from 0 to 86400000"
        );
        assert!(
            ProcessType
                .open(ctx(&[]))
                .err()
                .unwrap()
                .contains("command")
        );
    }
}
