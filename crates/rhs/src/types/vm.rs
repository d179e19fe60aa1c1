//! The `vm` type: a QEMU/KVM virtual machine driven through QMP (the seed's VMCLUSRES).
//!
//! - Online starts `qemu-system-x86_64` (its own process group, a parent-death signal) with
//!   a QMP socket, and waits until `query-status` says running; with `guest_check_http` (or
//!   `guest_check_tcp`) it stays pending until the guest answers. A state saved by `offline_action=save` is
//!   restored instead of booting.
//! - Offline: `shutdown` (ACPI power-down, forced after `stop_timeout_ms`), `save` (the
//!   memory state to `state_dir`, then quit) or `turn_off`. Terminate kills QEMU.
//! - LooksAlive: QEMU runs, its QMP events say nothing bad, `query-status` is running.
//!   IsAlive adds: every disk readable (`qemu-img info`), and the guest probe.
//! - QEMU has a second QMP socket, `DATA_DIR/resources/NAME.monitor`, for tools outside the
//!   cluster (QMP serves one client per socket; Vigil holds the first).
//! - QMP events are watched continuously (the QMP socket is the event descriptor): a guest
//!   power-off, an outside `quit` or a SIGTERM is an operator's out-of-band stop (not
//!   restarted); QEMU vanishing without such an event is a failure; a pause (I/O error or an
//!   outside `stop`) is reported in status and the log (and again when it runs on), not
//!   treated as a failure.
//! - Live migration: the target starts QEMU with `-incoming defer`, gives it TLS
//!   credentials (this node's certificate, `verify-peer=on`) and an authorization that lets
//!   in only a client whose certificate names the source node, then listens on ADDR:PORT
//!   (prepare); the source gives its QEMU its own certificate, checks the target's against
//!   the name every member's certificate carries, migrates with `downtime-limit` and
//!   `max-bandwidth` and waits for completion (a failure or timeout cancels it and leaves the
//!   VM running there); the target then waits until its QEMU runs. The memory stream is
//!   TLS end to end; nothing without a cluster certificate can feed the target. Total time
//!   and QEMU's reported downtime are logged. (A quick migration goes through `state_dir`,
//!   storage both nodes trust.)
//! - `accel=auto` uses KVM when `/dev/kvm` opens, TCG otherwise; the Online reason says
//!   which.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vigil_core::params::{self, ParamKind, ParamSpec};

use super::qmp::Qmp;
use super::{
    CallBound, Fault, Health, OpenContext, Progress, Resource, ResourceType, int_param as int,
    optional as spec,
};
use crate::protocol::MigrationTls;

pub struct VmType;

/// The QEMU binary (from `qemu-system-x86`).
const QEMU: &str = "qemu-system-x86_64";
/// How long QEMU has to open its QMP socket and answer.
const QMP_START: Duration = Duration::from_secs(10);
/// Bound of a QMP command in a health check.
const QMP_CHECK: Duration = Duration::from_secs(2);
/// How long a check of the guest (TCP) or of a disk may take.
const PROBE: Duration = Duration::from_secs(2);
/// A guest connection still open this long after connecting is the guest's own.
const GUEST_SETTLE: Duration = Duration::from_millis(300);
/// QEMU object ids of the migration's TLS credentials and of who may connect.
const TLS_ID: &str = "vigil-migration-tls";
const AUTHZ_ID: &str = "vigil-migration-authz";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OfflineAction {
    Shutdown,
    Save,
    TurnOff,
}

#[derive(Clone, Debug)]
struct Config {
    memory_mb: u64,
    cpus: u64,
    disks: Vec<PathBuf>,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    append: Option<String>,
    net: Option<String>,
    machine: String,
    extra_args: Vec<String>,
    offline_action: OfflineAction,
    stop_timeout: Duration,
    state_dir: Option<PathBuf>,
    accel: String,
    guest_check_tcp: Option<String>,
    /// `HOST:PORT/path` (from an `http://` URL), `{node_ip}` not yet replaced.
    guest_check_http: Option<String>,
    migration_port: u16,
    migration_downtime_ms: u64,
    migration_bandwidth_mbps: u64,
    migration_timeout: Duration,
}

fn path(params: &BTreeMap<String, String>, key: &str) -> Result<Option<PathBuf>, String> {
    match params.get(key).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) if !v.starts_with('/') => Err(format!(
            "parameter {key} = {v:?} is not valid: expected an absolute path"
        )),
        Some(v) if !Path::new(v).exists() => Err(format!(
            "parameter {key} = {v:?} is not valid: {v} does not exist"
        )),
        Some(v) => Ok(Some(PathBuf::from(v))),
    }
}

/// A default migration port per resource (both sides compute the same one).
fn default_port(resource: &str) -> u16 {
    let h = super::fnv(resource);
    49152 + (h % 8192) as u16
}

impl Config {
    fn parse(resource: &str, params: &BTreeMap<String, String>) -> Result<Config, String> {
        let mut disks = Vec::new();
        if let Some(list) = params.get("disks").filter(|v| !v.is_empty()) {
            for d in list.split(',').map(str::trim).filter(|d| !d.is_empty()) {
                if !d.starts_with('/') {
                    return Err(format!(
                        "parameter disks: {d:?} is not valid: expected an absolute path"
                    ));
                }
                if !Path::new(d).is_file() {
                    return Err(format!("parameter disks: disk image {d} does not exist"));
                }
                disks.push(PathBuf::from(d));
            }
        }
        let offline_action = match params.get("offline_action").map(String::as_str) {
            None | Some("shutdown") => OfflineAction::Shutdown,
            Some("save") => OfflineAction::Save,
            Some("turn_off") => OfflineAction::TurnOff,
            Some(other) => {
                return Err(format!(
                    "parameter offline_action = {other:?} is not valid: expected shutdown, save or turn_off"
                ));
            }
        };
        let state_dir = path(params, "state_dir")?;
        if let Some(d) = &state_dir
            && !d.is_dir()
        {
            return Err(format!(
                "parameter state_dir: {} is not a directory",
                d.display()
            ));
        }
        if offline_action == OfflineAction::Save && state_dir.is_none() {
            return Err(
                "offline_action=save needs state_dir (where the state is saved)".to_string(),
            );
        }
        let accel = params
            .get("accel")
            .map_or("auto", String::as_str)
            .to_string();
        if !["auto", "kvm", "tcg"].contains(&accel.as_str()) {
            return Err(format!(
                "parameter accel = {accel:?} is not valid: expected auto, kvm or tcg"
            ));
        }
        let extra_args = match params.get("extra_args") {
            None => Vec::new(),
            Some(v) => params::parse_argv(v).map_err(|e| format!("parameter extra_args: {e}"))?,
        };
        let kernel = path(params, "kernel")?;
        let initrd = path(params, "initrd")?;
        if initrd.is_some() && kernel.is_none() {
            return Err("initrd needs kernel".to_string());
        }
        Ok(Config {
            memory_mb: int(params, "memory_mb", 256, 16, 1 << 20)?,
            cpus: int(params, "cpus", 1, 1, 256)?,
            disks,
            kernel,
            initrd,
            append: params.get("append").cloned(),
            net: params
                .get("net")
                .filter(|v| !v.is_empty() && *v != "none")
                .cloned(),
            machine: params
                .get("machine")
                .map_or("q35", String::as_str)
                .to_string(),
            extra_args,
            offline_action,
            stop_timeout: Duration::from_millis(int(
                params,
                "stop_timeout_ms",
                30_000,
                1,
                3_600_000,
            )?),
            state_dir,
            accel,
            guest_check_tcp: params.get("guest_check_tcp").cloned(),
            guest_check_http: match params.get("guest_check_http") {
                None => None,
                Some(url) => {
                    // Checked with a stand-in address; the node's own replaces it at run time.
                    params::parse_http_url(&url.replace("{node_ip}", "127.0.0.1")).map_err(
                        |e| format!("parameter guest_check_http = {url:?} is not valid: {e}"),
                    )?;
                    Some(url.clone())
                }
            },
            migration_port: int(
                params,
                "migration_port",
                u64::from(default_port(resource)),
                1024,
                65535,
            )? as u16,
            migration_downtime_ms: int(params, "migration_downtime_ms", 300, 1, 60_000)?,
            migration_bandwidth_mbps: int(params, "migration_bandwidth_mbps", 0, 0, 1 << 20)?,
            migration_timeout: Duration::from_millis(int(
                params,
                "migration_timeout_ms",
                40_000,
                1_000,
                3_600_000,
            )?),
        })
    }
}

impl ResourceType for VmType {
    fn name(&self) -> &str {
        "vm"
    }

    fn description(&self) -> &str {
        "a QEMU/KVM virtual machine, driven through QMP"
    }

    fn schema(&self) -> Vec<ParamSpec> {
        use ParamKind::*;
        vec![
            spec("memory_mb", Integer, Some("256"), "guest memory in MiB"),
            spec("cpus", Integer, Some("1"), "virtual CPUs"),
            spec(
                "disks",
                String,
                None,
                "disk images, comma-separated absolute paths (shared storage)",
            ),
            spec("kernel", String, None, "a kernel to boot directly"),
            spec("initrd", String, None, "its initramfs"),
            spec("append", String, None, "its command line"),
            spec(
                "net",
                String,
                Some("none"),
                "QEMU -netdev options, e.g. user,hostfwd=tcp:{node_ip}:8080-:80 ({node_ip}: this node's address)",
            ),
            spec("machine", String, Some("q35"), "QEMU machine type"),
            spec("extra_args", Argv, None, "more QEMU arguments"),
            spec(
                "offline_action",
                String,
                Some("shutdown"),
                "shutdown (ACPI, forced after stop_timeout_ms) | save (state to state_dir) | turn_off",
            ),
            spec(
                "stop_timeout_ms",
                Integer,
                Some("30000"),
                "how long a graceful shutdown may take",
            ),
            spec(
                "state_dir",
                String,
                None,
                "where saved state goes (shared storage)",
            ),
            spec(
                "accel",
                String,
                Some("auto"),
                "auto (KVM when /dev/kvm works, else TCG) | kvm | tcg",
            ),
            spec(
                "guest_check_tcp",
                String,
                None,
                "IsAlive: connect to HOST:PORT ({node_ip} allowed); through user networking prefer guest_check_http",
            ),
            spec(
                "guest_check_http",
                String,
                None,
                "IsAlive: GET this http:// URL, expect 2xx ({node_ip} allowed)",
            ),
            spec(
                "migration_port",
                Integer,
                None,
                "TCP port for incoming live migrations (default: from the name)",
            ),
            spec(
                "migration_downtime_ms",
                Integer,
                Some("300"),
                "live migration: QEMU's downtime limit",
            ),
            spec(
                "migration_bandwidth_mbps",
                Integer,
                Some("0"),
                "live migration: MiB/s, 0 = unlimited",
            ),
            spec(
                "migration_timeout_ms",
                Integer,
                Some("120000"),
                "a live migration taking longer is cancelled",
            ),
        ]
    }

    fn check(&self, params: &BTreeMap<String, String>) -> Result<CallBound, String> {
        let c = Config::parse("check", params)?;
        let (why, ms) = if c.migration_timeout > c.stop_timeout {
            ("migration_timeout_ms", c.migration_timeout)
        } else {
            ("stop_timeout_ms", c.stop_timeout)
        };
        Ok(CallBound {
            ms: (ms + QMP_START).as_millis() as u64,
            why: format!("{why} plus {} ms for QEMU to start", QMP_START.as_millis()),
        })
    }

    fn can_migrate(&self) -> bool {
        true
    }

    fn open(&self, ctx: OpenContext) -> Result<Box<dyn Resource>, String> {
        let cfg = Config::parse(&ctx.resource, &ctx.params)?;
        let dir = ctx
            .log_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(std::env::temp_dir);
        Ok(Box::new(Vm {
            qmp_path: dir.join(format!("{}.qmp", ctx.resource)),
            monitor: dir.join(format!("{}.monitor", ctx.resource)),
            console: dir.join(format!("{}.console", ctx.resource)),
            cfg,
            ctx,
            child: None,
            qmp: None,
            accel: String::new(),
            migrated_away: false,
            paused: None,
            shutdown: None,
            arrival: None,
            reported_pause: None,
        }))
    }
}

struct Vm {
    cfg: Config,
    ctx: OpenContext,
    qmp_path: PathBuf,
    /// The operators' QMP socket.
    monitor: PathBuf,
    console: PathBuf,
    child: Option<Child>,
    qmp: Option<Qmp>,
    /// The accelerator this QEMU runs with.
    accel: String,
    /// Migrated to another node: what is left here is only to be ended.
    migrated_away: bool,
    /// Why the VM is paused, once seen.
    paused: Option<String>,
    /// What a SHUTDOWN event said, kept for the checks that follow it.
    shutdown: Option<Health>,
    /// How the last arrival went (a quick migration's downtime), for the Online record.
    arrival: Option<String>,
    /// The pause that was last reported (not a failure: status and the log show it).
    reported_pause: Option<String>,
}

/// Whether `/dev/kvm` can be used.
fn kvm_works() -> bool {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

impl Vm {
    fn node_ip(&self) -> String {
        let a = &self.ctx.node_address;
        let host = a.rsplit_once(':').map_or(a.as_str(), |(h, _)| h);
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string()
    }

    fn substitute(&self, text: &str) -> String {
        text.replace("{node_ip}", &self.node_ip())
    }

    fn argv(&self, incoming: Option<String>) -> Result<Vec<String>, String> {
        let accel = match self.cfg.accel.as_str() {
            "auto" if kvm_works() => "kvm",
            "auto" => "tcg",
            other => other,
        };
        let mut a: Vec<String> = vec![
            "-name".into(),
            self.ctx.resource.clone(),
            "-machine".into(),
            format!("{},accel={accel}", self.cfg.machine),
            "-m".into(),
            self.cfg.memory_mb.to_string(),
            "-smp".into(),
            self.cfg.cpus.to_string(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", self.qmp_path.display()),
            // A second monitor for tools outside the cluster (what they do there is an
            // out-of-band change, seen through the events on ours).
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", self.monitor.display()),
            "-serial".into(),
            format!("file:{}", self.console.display()),
        ];
        if let Some(k) = &self.cfg.kernel {
            a.extend(["-kernel".into(), k.display().to_string()]);
        }
        if let Some(i) = &self.cfg.initrd {
            a.extend(["-initrd".into(), i.display().to_string()]);
        }
        if let Some(x) = &self.cfg.append {
            a.extend(["-append".into(), x.clone()]);
        }
        for (i, d) in self.cfg.disks.iter().enumerate() {
            let format = disk_format(d)?;
            a.extend([
                "-drive".into(),
                format!("file={},if=virtio,format={format},index={i}", d.display()),
            ]);
        }
        if let Some(net) = &self.cfg.net {
            a.extend([
                "-netdev".into(),
                format!("{},id=net0", self.substitute(net)),
                "-device".into(),
                "virtio-net-pci,netdev=net0".into(),
            ]);
        }
        a.extend(self.cfg.extra_args.iter().cloned());
        if let Some(i) = incoming {
            a.extend(["-incoming".into(), i]);
        }
        Ok(a)
    }

    /// Starts QEMU (waiting for an incoming migration when `incoming` says from where) and
    /// connects to its QMP socket.
    fn launch(&mut self, incoming: Option<String>) -> Result<(), String> {
        self.kill();
        let _ = std::fs::remove_file(&self.qmp_path);
        let _ = std::fs::remove_file(&self.monitor);
        let argv = self.argv(incoming)?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.ctx.log_path)
            .map_err(|e| format!("cannot open {}: {e}", self.ctx.log_path.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(QEMU);
        cmd.args(&argv)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0);
        let child = super::process::spawn_in_group(cmd)
            .map_err(|e| format!("cannot start {QEMU}: {e} (is qemu-system-x86 installed?)"))?;
        self.accel = argv[3].rsplit('=').next().unwrap_or("?").to_string();
        self.child = Some(child);
        self.migrated_away = false;
        self.paused = None;
        self.shutdown = None;
        self.arrival = None;
        self.reported_pause = None;
        match Qmp::connect(&self.qmp_path, QMP_START) {
            Ok(q) => {
                self.qmp = Some(q);
                Ok(())
            }
            Err(e) => {
                let why = match self.exited() {
                    Some(status) => format!(
                        "QEMU exited at start ({status}); see {}",
                        self.ctx.log_path.display()
                    ),
                    None => format!(
                        "QEMU runs but its QMP socket does not answer: {e}; see {}",
                        self.ctx.log_path.display()
                    ),
                };
                self.kill();
                Err(why)
            }
        }
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn kill(&mut self) {
        self.qmp = None;
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = rustix::process::Pid::from_raw(c.id() as i32) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            let _ = c.wait();
            super::process::forget_group(c.id());
        }
    }

    fn qmp(
        &mut self,
        command: &str,
        args: Option<Value>,
        limit: Duration,
    ) -> Result<Value, String> {
        let q = self.qmp.as_mut().ok_or("QEMU is not running")?;
        q.execute(command, args, limit)
    }

    fn status(&mut self) -> Result<String, String> {
        let s = self.qmp("query-status", None, QMP_CHECK)?;
        Ok(s["status"].as_str().unwrap_or("?").to_string())
    }

    /// Reads pending QMP events; a stop that was not ours is reported here.
    fn events(&mut self) -> Option<Health> {
        if let Some(h) = &self.shutdown {
            return Some(h.clone());
        }
        let q = self.qmp.as_mut()?;
        // An error means the connection is gone (QEMU exited); its exit status decides.
        let _ = q.poll();
        for ev in q.take_events() {
            let name = ev["event"].as_str().unwrap_or("");
            let data = &ev["data"];
            match name {
                "SHUTDOWN" => {
                    let reason = data["reason"].as_str().unwrap_or("?");
                    let guest = data["guest"].as_bool().unwrap_or(false);
                    let verdict = match reason {
                        "guest-shutdown" | "host-qmp-quit" | "host-signal" => {
                            Health::StoppedOutOfBand(if guest {
                                "the guest powered itself off".to_string()
                            } else {
                                format!("QEMU was stopped outside the cluster ({reason})")
                            })
                        }
                        other => Health::Failed(format!("the VM shut down: {other}")),
                    };
                    self.shutdown = Some(verdict.clone());
                    return Some(verdict);
                }
                "STOP" => self.paused = Some("paused (STOP event)".to_string()),
                "RESUME" => self.paused = None,
                "BLOCK_IO_ERROR" => {
                    self.paused = Some(format!(
                        "I/O error on {}: {}",
                        data["device"].as_str().unwrap_or("?"),
                        data["reason"].as_str().unwrap_or("?")
                    ));
                }
                _ => {}
            }
        }
        None
    }

    fn quick_check(&mut self) -> Health {
        if let Some(h) = self.events() {
            return h;
        }
        if let Some(status) = self.exited() {
            return Health::Failed(format!("QEMU exited without a shutdown event: {status}"));
        }
        match self.status() {
            Ok(s) if s == "running" => match self.reported_pause.take() {
                Some(was) => Health::Notice(format!("running again (was {was})")),
                None => Health::Alive,
            },
            // Paused by an I/O error or from outside: QEMU and the guest are there; say so
            // (once) rather than restart what someone may be looking at.
            Ok(s) if s == "paused" || s == "io-error" => {
                let why = format!(
                    "the VM is {s}{}",
                    self.paused
                        .as_ref()
                        .map_or(String::new(), |p| format!(" ({p})"))
                );
                if self.reported_pause.as_deref() == Some(why.as_str()) {
                    Health::Alive
                } else {
                    self.reported_pause = Some(why.clone());
                    Health::Notice(why)
                }
            }
            Ok(s) => Health::Failed(format!("the VM is {s}")),
            Err(e) => {
                // QMP broke: QEMU is going away; its events and exit decide.
                let gone = self.wait_exit(Duration::from_secs(1));
                match self.events() {
                    Some(h) => h,
                    None if gone => Health::Failed(format!(
                        "QEMU exited without a shutdown event: {}",
                        self.exited().map_or("?".to_string(), |s| s.to_string())
                    )),
                    None => Health::Failed(e),
                }
            }
        }
    }

    fn guest_check(&self) -> Result<(), String> {
        if let Some(url) = &self.cfg.guest_check_http {
            let url = self.substitute(url);
            let (authority, path) = params::parse_http_url(&url)?;
            super::process::http_get(&authority, &path, PROBE)
                .map_err(|e| format!("guest_check_http {url}: {e}"))?;
        }
        let Some(addr) = &self.cfg.guest_check_tcp else {
            return Ok(());
        };
        let addr = self.substitute(addr);
        let sa = addr
            .to_socket_addrs()
            .map_err(|e| format!("guest_check_tcp {addr}: {e}"))?
            .next()
            .ok_or_else(|| format!("guest_check_tcp {addr}: no address"))?;
        let mut conn = TcpStream::connect_timeout(&sa, PROBE)
            .map_err(|e| format!("guest_check_tcp {addr}: {e}"))?;
        // Through QEMU's user networking the host side accepts at once, then closes when
        // nothing listens in the guest: a connection that stays open (or speaks) is the
        // guest's.
        conn.set_read_timeout(Some(GUEST_SETTLE))
            .map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        match std::io::Read::read(&mut conn, &mut byte) {
            Ok(0) => Err(format!(
                "guest_check_tcp {addr}: closed at once (nothing listens in the guest)"
            )),
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(format!("guest_check_tcp {addr}: {e}")),
        }
    }

    /// Waits until QEMU has exited, up to `limit`.
    fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.exited().is_some()
    }

    fn state_file(&self) -> Option<PathBuf> {
        self.cfg
            .state_dir
            .as_ref()
            .map(|d| d.join(format!("{}.state", self.ctx.resource)))
    }

    /// Sets the migration's limits and its TLS settings: `tls` gives the credentials' id with
    /// the target's expected name (source) or the authorization's id (target); `None` is a
    /// migration to or from a file, without TLS.
    fn set_migration_parameters(&mut self, tls: Option<Tls<'_>>) -> Result<(), String> {
        let bandwidth = match self.cfg.migration_bandwidth_mbps {
            0 => 1u64 << 40,
            mbps => mbps << 20,
        };
        let (hostname, authz) = match tls {
            Some(Tls::Client { hostname }) => (hostname, ""),
            Some(Tls::Server) => ("", AUTHZ_ID),
            None => ("", ""),
        };
        self.qmp(
            "migrate-set-parameters",
            Some(json!({
                "downtime-limit": self.cfg.migration_downtime_ms,
                "max-bandwidth": bandwidth,
                "tls-creds": if tls.is_some() { TLS_ID } else { "" },
                "tls-hostname": hostname,
                "tls-authz": authz,
            })),
            QMP_CHECK,
        )
        .map(|_| ())
    }

    /// This node's certificate as QEMU's TLS credentials for a live migration (`server`: the
    /// target, letting in only `source`'s certificate; otherwise the source). QEMU reads the
    /// files when the object is made: the copies in QEMU's layout are removed right after.
    fn add_tls(&mut self, source: Option<&str>) -> Result<MigrationTls, String> {
        let tls = self.ctx.migration_tls.clone().ok_or_else(|| {
            "live migration needs this node's certificate, and the agent gave none".to_string()
        })?;
        let endpoint = if source.is_some() { "server" } else { "client" };
        let dir = self
            .ctx
            .log_path
            .with_file_name(format!("{}.tls-{endpoint}", self.ctx.resource));
        let made = (|| {
            write_tls_dir(&dir, Path::new(&tls.creds_dir), endpoint)?;
            for id in [TLS_ID, AUTHZ_ID] {
                // From an earlier attempt (its files may have been renewed since).
                let _ = self.qmp("object-del", Some(json!({ "id": id })), QMP_CHECK);
            }
            self.qmp(
                "object-add",
                Some(json!({
                    "qom-type": "tls-creds-x509", "id": TLS_ID, "dir": dir.display().to_string(),
                    "endpoint": endpoint, "verify-peer": true,
                })),
                QMP_CHECK,
            )?;
            if let Some(source) = source {
                // GnuTLS's form of the subject of the source's certificate.
                let identity = format!("CN={source}");
                self.qmp(
                    "object-add",
                    Some(
                        json!({ "qom-type": "authz-simple", "id": AUTHZ_ID, "identity": identity }),
                    ),
                    QMP_CHECK,
                )?;
            }
            Ok(())
        })();
        let _ = std::fs::remove_dir_all(&dir);
        made.map_err(|e: String| format!("cannot give QEMU this node's certificate: {e}"))?;
        Ok(tls)
    }

    /// Polls `query-migrate` until it completes; returns QEMU's answer.
    fn wait_migration(&mut self, what: &str) -> Result<Value, String> {
        let deadline = Instant::now() + self.cfg.migration_timeout;
        loop {
            let m = self.qmp("query-migrate", None, QMP_CHECK)?;
            match m["status"].as_str().unwrap_or("") {
                "completed" => return Ok(m),
                "failed" | "cancelled" => {
                    return Err(format!(
                        "{what} {}: {}",
                        m["status"].as_str().unwrap_or("?"),
                        m["error-desc"].as_str().unwrap_or("no reason given")
                    ));
                }
                _ if Instant::now() >= deadline => {
                    let _ = self.qmp("migrate_cancel", None, QMP_CHECK);
                    return Err(format!(
                        "{what} did not finish within migration_timeout_ms={}; cancelled",
                        self.cfg.migration_timeout.as_millis()
                    ));
                }
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    fn wait_running(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return Err(format!(
                    "QEMU exited: {status}; see {}",
                    self.ctx.log_path.display()
                ));
            }
            match self.status() {
                Ok(s) if s == "running" => return Ok(()),
                status if Instant::now() >= deadline => {
                    let said = match status {
                        Ok(s) => format!("QEMU reports status {s:?}"),
                        Err(e) => format!("QEMU does not answer: {e}"),
                    };
                    return Err(format!(
                        "the VM is not running after {} ms ({said}); see {}",
                        limit.as_millis(),
                        self.ctx.log_path.display()
                    ));
                }
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    fn started(&mut self) -> Result<Progress, Fault> {
        if self.cfg.guest_check_tcp.is_some() || self.cfg.guest_check_http.is_some() {
            Ok(Progress::Pending(Some(format!(
                "QEMU running ({}); waiting for the guest",
                self.accel
            ))))
        } else {
            Ok(Progress::Done)
        }
    }
}

impl Vm {
    fn quick_file(&self) -> Result<PathBuf, String> {
        self.cfg
            .state_dir
            .as_ref()
            .map(|d| d.join(format!("{}.migration", self.ctx.resource)))
            .ok_or_else(|| "a quick migration needs state_dir (shared by both nodes)".to_string())
    }

    /// Pauses the VM and saves its state to `file`; if that fails, the VM runs on.
    fn save_state(&mut self, file: &Path) -> Result<(), String> {
        self.qmp("stop", None, QMP_CHECK)?;
        let saved = (|| {
            self.set_migration_parameters(None)?;
            let uri = format!("file:{}", file.display());
            self.qmp("migrate", Some(json!({ "uri": uri })), QMP_CHECK)?;
            self.wait_migration("saving the state")
        })();
        if saved.is_err() {
            let _ = self.qmp("cont", None, QMP_CHECK);
        }
        saved.map(|_| ())
    }

    /// Starts QEMU waiting for the state saved in `file`, loads it and runs the VM; the file
    /// is used up.
    fn restore_state(&mut self, file: &Path) -> Result<(), String> {
        self.launch(Some("defer".into()))?;
        self.set_migration_parameters(None)?;
        let uri = format!("file:{}", file.display());
        self.qmp("migrate-incoming", Some(json!({ "uri": uri })), QMP_CHECK)?;
        self.wait_migration("restoring the saved state")?;
        self.qmp("cont", None, QMP_CHECK)?;
        self.wait_running(QMP_START)?;
        let _ = std::fs::remove_file(file);
        Ok(())
    }

    /// Quick migration, source side: pause, save the state to `state_dir`, note when the
    /// guest stopped (the target measures the downtime from it).
    fn save_for(&mut self, target: &str) -> Result<String, String> {
        let file = self.quick_file()?;
        let stopped_ms = unix_ms();
        self.save_state(&file)?;
        std::fs::write(file.with_extension("stopped"), stopped_ms.to_string())
            .map_err(|e| format!("cannot write next to {}: {e}", file.display()))?;
        self.migrated_away = true;
        Ok(format!(
            "quick migration to {target}: state saved to {} in {} ms",
            file.display(),
            unix_ms().saturating_sub(stopped_ms)
        ))
    }

    /// Quick migration, target side: start QEMU waiting for the saved state, load it, run.
    fn restore_from(&mut self, source: &str) -> Result<(), String> {
        let file = self.quick_file()?;
        if !file.exists() {
            return Err(format!("no state from {source} at {}", file.display()));
        }
        self.restore_state(&file)?;
        let stopped = std::fs::read_to_string(file.with_extension("stopped"))
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok());
        let _ = std::fs::remove_file(file.with_extension("stopped"));
        self.arrival = Some(match stopped {
            Some(t) => format!(
                "quick migration from {source}: downtime {} ms",
                unix_ms().saturating_sub(t)
            ),
            None => format!("quick migration from {source}"),
        });
        Ok(())
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A disk image's format, as `qemu-img info` sees it (also: it is readable).
fn disk_format(disk: &Path) -> Result<String, String> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "--force-share"])
        .arg(disk)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run qemu-img: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "disk {}: {}",
            disk.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "disk {}: qemu-img said something unreadable: {e}",
            disk.display()
        )
    })?;
    Ok(v["format"].as_str().unwrap_or("raw").to_string())
}

impl Resource for Vm {
    fn online(&mut self) -> Result<Progress, Fault> {
        if self.child.is_some()
            && self.exited().is_none()
            && self.status().is_ok_and(|s| s == "running")
        {
            return Ok(Progress::Done);
        }
        let saved = self.state_file().filter(|f| f.exists());
        match saved {
            Some(file) => self.restore_state(&file)?,
            None => {
                self.launch(None)?;
                self.wait_running(QMP_START)?;
            }
        }
        self.started()
    }

    fn online_progress(&mut self) -> Result<Progress, Fault> {
        if let Health::Failed(why) = self.quick_check() {
            return Err(Fault::Failed(why));
        }
        match self.guest_check() {
            Ok(()) => Ok(Progress::Done),
            Err(_) => Ok(Progress::Pending(None)),
        }
    }

    fn offline(&mut self) -> Result<Option<String>, String> {
        if self.child.is_none() || self.exited().is_some() {
            self.kill();
            return Ok(None);
        }
        if self.migrated_away {
            let _ = self.qmp("quit", None, QMP_CHECK);
            self.wait_exit(Duration::from_secs(5));
            self.kill();
            return Ok(None);
        }
        let mut note = None;
        match self.cfg.offline_action {
            OfflineAction::TurnOff => {
                let _ = self.qmp("quit", None, QMP_CHECK);
                self.wait_exit(Duration::from_secs(5));
            }
            OfflineAction::Shutdown => {
                let _ = self.qmp("system_powerdown", None, QMP_CHECK);
                if !self.wait_exit(self.cfg.stop_timeout) {
                    note = Some(format!(
                        "no power-off within stop_timeout_ms={}; turned off",
                        self.cfg.stop_timeout.as_millis()
                    ));
                }
            }
            OfflineAction::Save => {
                let file = self.state_file().expect("checked at parse");
                self.save_state(&file)?;
                let _ = self.qmp("quit", None, QMP_CHECK);
                self.wait_exit(Duration::from_secs(5));
            }
        }
        self.kill();
        Ok(note)
    }

    fn terminate(&mut self) {
        self.kill();
    }

    fn looks_alive(&mut self) -> Health {
        self.quick_check()
    }

    fn is_alive(&mut self) -> Health {
        let h = self.quick_check();
        if h != Health::Alive {
            return h;
        }
        for d in self.cfg.disks.clone() {
            if let Err(e) = disk_format(&d) {
                return Health::Failed(e);
            }
        }
        match self.guest_check() {
            Ok(()) => Health::Alive,
            Err(e) => Health::Failed(e),
        }
    }

    fn close(&mut self) {
        // An instance closed while QEMU runs (the agent replaced it) ends it: nothing may run
        // unsupervised.
        self.kill();
    }

    fn event_fd(&self) -> Option<OwnedFd> {
        self.qmp.as_ref().and_then(Qmp::event_fd)
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn describe(&self) -> Option<String> {
        let mut d = format!("QEMU running under {}", self.accel.to_uppercase());
        if let Some(a) = &self.arrival {
            d.push_str("; ");
            d.push_str(a);
        }
        Some(d)
    }

    fn migrate_prepare(&mut self, source: &str, quick: bool) -> Result<(), String> {
        if quick {
            // The state arrives as a file; QEMU starts when it is there (MigrateFrom).
            return Ok(());
        }
        self.launch(Some("defer".into()))?;
        let listening = (|| {
            self.add_tls(Some(source))?;
            self.set_migration_parameters(Some(Tls::Server))?;
            let uri = format!("tcp:{}:{}", self.node_ip(), self.cfg.migration_port);
            self.qmp("migrate-incoming", Some(json!({ "uri": uri })), QMP_CHECK)
        })();
        if let Err(e) = listening {
            self.kill();
            return Err(e);
        }
        Ok(())
    }

    fn migrate_to(
        &mut self,
        target: &str,
        target_address: &str,
        quick: bool,
    ) -> Result<String, String> {
        if quick {
            return self.save_for(target);
        }
        let host = target_address
            .rsplit_once(':')
            .map_or(target_address, |(h, _)| h);
        let uri = format!("tcp:{host}:{}", self.cfg.migration_port);
        let tls = self.add_tls(None)?;
        self.set_migration_parameters(Some(Tls::Client {
            hostname: &tls.hostname,
        }))?;
        let started = Instant::now();
        // The target's QEMU may still be starting: retry the connection for a little while.
        let mut tries = 0;
        let m = loop {
            self.qmp("migrate", Some(json!({ "uri": uri })), QMP_CHECK)?;
            match self.wait_migration(&format!("live migration to {target}")) {
                Ok(m) => break m,
                Err(e) if tries < 20 && e.contains("Connection refused") => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        };
        self.migrated_away = true;
        Ok(format!(
            "live migration to {target} done in {} ms (QEMU: total {}, downtime {}, limit {} ms)",
            started.elapsed().as_millis(),
            reported_ms(&m["total-time"]),
            reported_ms(&m["downtime"]),
            self.cfg.migration_downtime_ms
        ))
    }

    fn migrate_from(&mut self, source: &str, quick: bool) -> Result<Progress, Fault> {
        if quick {
            self.restore_from(source)?;
            return self.started();
        }
        if self.qmp.is_none() {
            return Err(Fault::Failed(format!(
                "nothing was prepared here to receive the VM from {source} (see this node's log for its prepare step); it starts afresh"
            )));
        }
        self.wait_running(self.cfg.migration_timeout)?;
        self.started()
    }
}
/// A live migration's side of TLS (see [`Vm::set_migration_parameters`]).
#[derive(Clone, Copy)]
enum Tls<'a> {
    Client { hostname: &'a str },
    Server,
}

/// Copies the node's credentials from `creds` into `dir` under the names QEMU's
/// `tls-creds-x509` looks for, readable by their owner only.
fn write_tls_dir(dir: &Path, creds: &Path, endpoint: &str) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let _ = std::fs::remove_dir_all(dir);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    let key = format!("{endpoint}-key.pem");
    let cert = format!("{endpoint}-cert.pem");
    for (from, to) in [
        ("ca.pem", "ca-cert.pem"),
        ("node.pem", &cert),
        ("node.key", &key),
    ] {
        let from = creds.join(from);
        let text =
            std::fs::read(&from).map_err(|e| format!("cannot read {}: {e}", from.display()))?;
        let to = dir.join(to);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&to)
            .map_err(|e| format!("cannot write {}: {e}", to.display()))?;
        std::io::Write::write_all(&mut f, &text)
            .map_err(|e| format!("cannot write {}: {e}", to.display()))?;
    }
    Ok(())
}

/// A duration QEMU reports in ms ("4 ms"), or that it did not.
fn reported_ms(v: &serde_json::Value) -> String {
    v.as_u64()
        .map_or_else(|| "not reported".to_string(), |ms| format!("{ms} ms"))
}
