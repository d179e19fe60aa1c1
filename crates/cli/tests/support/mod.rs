//! Test harness: real `vigil agent` processes on free 127.0.0.1 ports with temporary data
//! dirs, driven through the real `vigil` CLI. Every process a test starts is killed by pid
//! when its `Agent` drops, also when the test fails.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const VIGIL_BUILT: &str = env!("CARGO_BIN_EXE_vigil");

/// The binary under test: the one this build made, or `VIGIL_TEST_BIN` (to run the same tests
/// against another build, e.g. to see a test fail on the code before a fix).
pub static VIGIL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    std::env::var("VIGIL_TEST_BIN").unwrap_or_else(|_| VIGIL_BUILT.to_string())
});
/// Each agent's Unix socket, by its listen address: the harness reaches an agent as root on
/// its node does, with no token (the tests of tokens and TLS use [`https`]).
static SOCKETS: LazyLock<Mutex<HashMap<String, PathBuf>>> = LazyLock::new(Default::default);

/// The Unix socket of the agent listening on `listen`.
pub fn socket_of(listen: &str) -> PathBuf {
    SOCKETS
        .lock()
        .unwrap()
        .get(listen)
        .cloned()
        .unwrap_or_else(|| panic!("no agent of this test listens on {listen}"))
}

/// `vigil` run against the agent at `listen`, over its socket.
pub fn cli_at(listen: &str) -> Command {
    let mut c = Command::new(&*VIGIL);
    c.env("VIGIL_SOCKET", socket_of(listen))
        .env_remove("VIGIL_ENDPOINT")
        .env_remove("VIGIL_TOKEN");
    c
}

/// A new join token from the agent at `seed`.
pub fn join_token(seed: &str) -> String {
    let out = cli_at(seed)
        .args(["token", "create", "--join"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "vigil token create --join at {seed} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The agent options that join the cluster of the agent at `seed`, with a new join token.
pub fn join_args(seed: &str) -> Vec<String> {
    vec![
        "--join".to_string(),
        seed.to_string(),
        "--token".to_string(),
        join_token(seed),
    ]
}

/// Upper bound for anything a test waits for; generous for a busy 2-core machine.
pub const WAIT: Duration = Duration::from_secs(30);

pub struct Agent {
    pub name: String,
    pub endpoint: String,
    pub listen: String,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    /// Every pid seen belonging to this agent (RHS, resources), killed on drop.
    seen: std::cell::RefCell<Vec<u32>>,
    /// The network namespace it runs in (see [`Net`]).
    netns: Option<String>,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Agent {
    /// Bootstraps a one-node cluster in a new temp dir and waits until its API answers.
    pub fn start() -> Agent {
        let mut a = Agent::new("n1");
        a.spawn(true);
        a
    }

    /// An agent named `name` with its own temp dir and port, not started yet.
    pub fn new(name: &str) -> Agent {
        Agent::at(name, format!("127.0.0.1:{}", free_port()), None)
    }

    /// An agent named `name` listening on `ip` (a 127.0.0.x address of its own: what it
    /// binds for its resources then never collides with another agent's).
    pub fn on(name: &str, ip: &str) -> Agent {
        Agent::at(name, format!("{ip}:{}", free_port()), None)
    }

    fn at(name: &str, listen: String, netns: Option<String>) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        SOCKETS.lock().unwrap().insert(
            listen.clone(),
            dir.path().join("data").join(vigil_agent::SOCKET),
        );
        Agent {
            name: name.into(),
            endpoint: format!("https://{listen}"),
            listen,
            dir,
            child: None,
            seen: Default::default(),
            netns,
        }
    }

    /// Starts a new agent that joins the cluster of `seed`.
    pub fn join(name: &str, seed: &Agent) -> Agent {
        let mut a = Agent::new(name);
        let mut cmd = a.agent_command(false);
        cmd.args(join_args(&seed.listen));
        a.spawn_with(cmd);
        a
    }

    /// Starts this (not yet started) agent joining the cluster of `seed`.
    pub fn start_joining(mut self, seed: &Agent) -> Agent {
        let mut cmd = self.agent_command(false);
        cmd.args(join_args(&seed.listen));
        self.spawn_with(cmd);
        self
    }

    /// Whether the agent process is running.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the agent process (again) on the same data dir.
    pub fn spawn(&mut self, bootstrap: bool) {
        let cmd = self.agent_command(bootstrap);
        self.spawn_with(cmd);
    }

    /// Starts the agent with a command made by [`Agent::agent_command`] plus options.
    pub fn spawn_with(&mut self, mut cmd: Command) {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.stderr"))
            .unwrap();
        cmd.stdout(Stdio::null()).stderr(stderr);
        self.child = Some(cmd.spawn().unwrap());
        wait_until("the agent's API answers", || self.try_status().is_some());
    }

    /// Starts the agent with `cmd` without waiting for its API (it may refuse to start).
    pub fn spawn_nowait(&mut self, mut cmd: Command) {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.stderr"))
            .unwrap();
        cmd.stdout(Stdio::null()).stderr(stderr);
        self.child = Some(cmd.spawn().unwrap());
    }

    pub fn agent_command(&self, bootstrap: bool) -> Command {
        let mut cmd = match &self.netns {
            // `ip netns exec` execs the agent: the child's pid is the agent's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, &VIGIL]);
                c
            }
            None => Command::new(&*VIGIL),
        };
        cmd.args([
            "agent",
            "--name",
            &self.name,
            "--listen",
            &self.listen,
            "--data-dir",
        ])
        .arg(self.data_dir());
        if bootstrap {
            cmd.arg("--bootstrap");
        }
        cmd.env("VIGIL_LOG", "warn");
        // No config file: an installed /etc/vigil/vigil.toml (the package test's) must not
        // change the tests' agents.
        cmd.env("VIGIL_CONFIG", "/dev/null");
        cmd
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// kill -9 the agent and reap it, and end what is left in its cgroups (a daemon of a
    /// resource outlives a killed agent there).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id();
            let _ = c.kill();
            let _ = c.wait();
            vigil_agent::cgroups::end_agent(&self.name, pid);
        }
    }

    /// SIGTERM (a clean stop under the node's shutdown policy) and waits, at most `limit`,
    /// for the agent to exit; its exit status, or `None` (then it is killed).
    pub fn stop(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        if let Some(pid) = rustix::process::Pid::from_raw(c.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(c);
        self.kill();
        None
    }

    /// Runs the CLI against this agent.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli_at(&self.listen).args(args).output().unwrap()
    }

    /// The cluster CA's certificate, as this node keeps it.
    pub fn ca_file(&self) -> PathBuf {
        self.data_dir().join("ca.pem")
    }

    /// Runs the CLI inside network namespace `ns` (to ask a node that is cut off) and
    /// expects success; returns stdout.
    pub fn ok_in(&self, ns: &str, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, &VIGIL])
            .args(args)
            .env("VIGIL_SOCKET", socket_of(&self.listen))
            .env_remove("VIGIL_ENDPOINT")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "vigil {args:?} in {ns} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs the CLI and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "vigil {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs the CLI and expects failure; returns stderr.
    pub fn err(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(!out.status.success(), "vigil {args:?} should have failed");
        String::from_utf8(out.stderr).unwrap()
    }

    /// `vigil status --output json`, or `None` if the agent does not answer.
    pub fn try_status_value(&self) -> Option<Value> {
        self.try_status()
    }

    fn try_status(&self) -> Option<Value> {
        let out = self.cli(&["status", "--output", "json"]);
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let mut seen = self.seen.borrow_mut();
        for h in v["rhs"].as_array().into_iter().flatten() {
            seen.extend(h["pid"].as_u64().map(|p| p as u32));
        }
        for g in v["groups"].as_array().into_iter().flatten() {
            for r in g["resources"].as_array().into_iter().flatten() {
                seen.extend(r["pid"].as_u64().map(|p| p as u32));
            }
        }
        Some(v)
    }

    /// Remembers a pid to kill when the agent drops (for processes status does not show).
    pub fn seen_pid(&self, pid: u32) {
        self.seen.borrow_mut().push(pid);
    }

    pub fn status(&self) -> Value {
        self.try_status().expect("status answers")
    }

    /// The resource's entry in `vigil status --output json`.
    pub fn resource(&self, name: &str) -> Value {
        let v = self.status();
        for g in v["groups"].as_array().unwrap() {
            for r in g["resources"].as_array().unwrap() {
                if r["name"] == name {
                    return r.clone();
                }
            }
        }
        panic!("no resource {name} in {v:#}")
    }

    /// A node's state as this agent reports it (`None` if it does not answer).
    pub fn node_state(&self, node: &str) -> Option<String> {
        let v = self.try_status()?;
        v["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["name"] == node)
            .map(|n| n["state"].as_str().unwrap_or_default().to_string())
    }

    pub fn group(&self, name: &str) -> Value {
        let v = self.status();
        v["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == name)
            .cloned()
            .unwrap()
    }

    pub fn state(&self, resource: &str) -> String {
        self.resource(resource)["state"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn pid_of(&self, resource: &str) -> Option<u32> {
        self.resource(resource)["pid"].as_u64().map(|p| p as u32)
    }

    pub fn rhs_pid(&self, host: &str) -> Option<u32> {
        let v = self.status();
        v["rhs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == host)
            .and_then(|h| h["pid"].as_u64())
            .map(|p| p as u32)
    }

    pub fn wait_state(&self, resource: &str, state: &str) {
        wait_until(&format!("{resource} is {state}"), || {
            self.state(resource) == state
        });
    }

    /// Waits until `resource` is Online; its pid, remembered to be killed on drop.
    pub fn wait_online(&self, resource: &str) -> u32 {
        self.wait_state(resource, "Online");
        let pid = self
            .pid_of(resource)
            .unwrap_or_else(|| panic!("{resource} is Online without a pid"));
        self.seen_pid(pid);
        pid
    }

    /// The cluster log as JSON records.
    pub fn log(&self) -> Vec<Value> {
        self.ok(&["log", "--output", "json"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Log reasons for one resource, oldest first.
    pub fn reasons(&self, resource: &str) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|r| r["resource"] == resource)
            .map(|r| r["reason"].as_str().unwrap().to_string())
            .collect()
    }

    /// `vigil resource create NAME --group GROUP --type TYPE --param P … EXTRA…`.
    /// Whether some cluster log reason of `resource` contains `text`.
    pub fn logged(&self, resource: &str, text: &str) -> bool {
        self.reasons(resource).iter().any(|r| r.contains(text))
    }

    pub fn create<P: AsRef<str>>(
        &self,
        name: &str,
        group: &str,
        ty: &str,
        params: &[P],
        extra: &[&str],
    ) {
        self.ok(&create_args(name, group, ty, params, extra));
    }

    /// The same, refused: the error message.
    pub fn create_refused<P: AsRef<str>>(
        &self,
        name: &str,
        group: &str,
        ty: &str,
        params: &[P],
    ) -> String {
        self.err(&create_args(name, group, ty, params, &[]))
    }

    /// Creates group `group` with one process resource running `command` plus extra args.
    pub fn process(&self, group: &str, name: &str, command: &str, extra: &[&str]) {
        if self.status()["groups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["name"] != group)
        {
            self.ok(&["group", "create", group]);
        }
        let param = format!("command={command}");
        let mut args = vec![
            "resource", "create", name, "--group", group, "--type", "process", "--param", &param,
        ];
        args.extend_from_slice(extra);
        self.ok(&args);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.try_status();
        self.kill();
        for pid in self.seen.borrow().iter() {
            kill9(*pid);
        }
    }
}

/// A resource created without parameters (`Agent::create`).
pub const NO_PARAMS: &[&str] = &[];

fn create_args<'a, P: AsRef<str>>(
    name: &'a str,
    group: &'a str,
    ty: &'a str,
    params: &'a [P],
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec!["resource", "create", name, "--group", group, "--type", ty];
    for p in params {
        args.extend(["--param", p.as_ref()]);
    }
    args.extend_from_slice(extra);
    args
}

pub fn kill9(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// Alive means: exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X"))
        }
        Err(_) => false,
    }
}

/// Polls `cond` every 20 ms until it holds; fails the test after [`WAIT`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Network namespaces made by a test: one per agent, joined by veth pairs to a bridge in the
/// root namespace, so that a node can be cut off for real (link down, both directions). The
/// addresses (10.250.S.x/24) exist only inside these namespaces and on the test's bridge.
/// Everything is deleted on drop; drop the agents first (declare the `Net` before them).
pub struct Net {
    tag: String,
    subnet: u32,
    hosts: std::cell::RefCell<Vec<u8>>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("the ip command (iproute2) runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Net {
    pub fn new() -> Net {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let net = Net {
            tag: format!("v{}{}", pid % 100_000, k),
            subnet: (pid + k * 7) % 250 + 1,
            hosts: Default::default(),
        };
        ip(&["link", "add", &net.bridge(), "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("10.250.{}.254/24", net.subnet),
            "dev",
            &net.bridge(),
        ]);
        ip(&["link", "set", &net.bridge(), "up"]);
        net
    }

    fn bridge(&self) -> String {
        format!("{}b", self.tag)
    }

    pub fn ns(&self, i: u8) -> String {
        format!("{}n{i}", self.tag)
    }

    fn veth(&self, i: u8) -> String {
        format!("{}h{i}", self.tag)
    }

    pub fn addr(&self, i: u8) -> String {
        format!("10.250.{}.{i}", self.subnet)
    }

    /// Creates host `i` (namespace, veth, address) if it does not exist yet.
    pub fn host(&self, i: u8) {
        if self.hosts.borrow().contains(&i) {
            return;
        }
        let (ns, veth) = (self.ns(i), self.veth(i));
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&["link", "set", &veth, "master", &self.bridge(), "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/24", self.addr(i)),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        self.hosts.borrow_mut().push(i);
    }

    /// Cuts host `i` off, both directions.
    pub fn cut(&self, i: u8) {
        ip(&["link", "set", &self.veth(i), "down"]);
    }

    pub fn heal(&self, i: u8) {
        ip(&["link", "set", &self.veth(i), "up"]);
    }

    /// Moves `hosts` to a second bridge: they reach each other but nobody else (nor the
    /// test, whose address is on the first bridge).
    pub fn split(&self, hosts: &[u8]) {
        let other = format!("{}c", self.tag);
        if !self.hosts.borrow().contains(&0) {
            ip(&["link", "add", &other, "type", "bridge"]);
            ip(&["link", "set", &other, "up"]);
            self.hosts.borrow_mut().push(0);
        }
        for i in hosts {
            ip(&["link", "set", &self.veth(*i), "master", &other]);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in self.hosts.borrow().iter() {
            let _ = Command::new("ip")
                .args(["link", "del", &self.veth(*i)])
                .output();
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(*i)])
                .output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .output();
    }
}

impl Agent {
    /// An agent named `name` on host `i` of `net`, not started yet.
    pub fn in_net(net: &Net, i: u8, name: &str) -> Agent {
        net.host(i);
        Agent::at(name, format!("{}:7440", net.addr(i)), Some(net.ns(i)))
    }

    /// The cluster log records of this node, read from its data dir (works while it is cut off).
    pub fn log_file(&self) -> Vec<Value> {
        read(&self.data_dir().join("cluster.log"))
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// One HTTP/1.1 request to the agent listening on `addr` (HOST:PORT), over its Unix socket
/// (as root on its node), with a JSON body; returns status and JSON.
pub fn http(addr: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    http_with(addr, method, path, body, &[])
}

/// [`http`] with extra headers.
pub fn http_with(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut s = std::os::unix::net::UnixStream::connect(socket_of(addr)).unwrap();
    exchange(&mut s, method, path, body, headers).unwrap()
}

/// Writes one request and reads its answer (`Connection: close`).
pub fn exchange(
    s: &mut (impl std::io::Read + std::io::Write),
    method: &str,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, Value)> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    // One write: a request in pieces waits on Nagle and delayed acks (40 ms a time).
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes())?;
    s.flush()?;
    let mut raw = Vec::new();
    // A TLS peer may close without close_notify once it has answered.
    if let Err(e) = s.read_to_end(&mut raw)
        && raw.is_empty()
    {
        return Err(e);
    }
    let resp = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// One HTTPS request to `addr` with the TLS client `config` (a node's, or one pinned to a
/// cluster CA); `Err`: the connection or the handshake failed (the error says which).
pub fn https(
    addr: &str,
    config: std::sync::Arc<vigil_tls::rustls::ClientConfig>,
    method: &str,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Result<(u16, Value), String> {
    let tcp = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(WAIT))
        .map_err(|e| e.to_string())?;
    let name = vigil_tls::rustls::pki_types::ServerName::try_from("vigil").unwrap();
    let conn = vigil_tls::rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let mut s = vigil_tls::rustls::StreamOwned::new(conn, tcp);
    exchange(&mut s, method, path, body, headers).map_err(|e| e.to_string())
}

/// A client that accepts only a node of the cluster whose join token (or CA file) it holds.
pub fn pinned(pin: vigil_tls::Pin) -> std::sync::Arc<vigil_tls::rustls::ClientConfig> {
    std::sync::Arc::new(vigil_tls::pinned_client(pin).unwrap())
}

/// Certifies a new node `name` with a join token from the agent at `seed`, as `vigil agent
/// --join` does (but without starting an agent): its credentials, loaded.
pub fn certified(seed: &str, name: &str) -> vigil_tls::Tls {
    vigil_tls::install_provider();
    let token = join_token(seed);
    let hash = vigil_core::security::parse_join_token(&token)
        .unwrap()
        .ca_hash
        .unwrap();
    let (key_pem, csr) = vigil_tls::new_key(name).unwrap();
    let body = serde_json::json!({ "token": token, "name": name, "csr": csr });
    let (code, v) = https(
        seed,
        pinned(vigil_tls::Pin::Hash(hash)),
        "POST",
        "/v1/cluster/certify",
        Some(body),
        &[],
    )
    .unwrap();
    assert_eq!(code, 200, "{v}");
    let tls = vigil_tls::Tls::default();
    tls.load(&vigil_tls::Creds {
        ca_pem: v["ca_pem"].as_str().unwrap().to_string(),
        cert_pem: v["cert_pem"].as_str().unwrap().to_string(),
        key_pem,
    })
    .unwrap();
    tls
}

/// The Linux test guest (`scripts/make-test-guest.py`), built once into target/test-guest.
pub fn guest() -> (String, String) {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let dir = root.join("target/test-guest");
        let out = std::process::Command::new("python3")
            .arg(root.join("scripts/make-test-guest.py"))
            .arg(&dir)
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "building the test guest: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    });
    (
        dir.join("vmlinux").display().to_string(),
        dir.join("initrd").display().to_string(),
    )
}

/// A Linux guest VM `name` in group `group` on `a` (TCG: this machine's KVM cannot boot
/// Linux in useful time), its HTTP port 80 forwarded to `{node_ip}:port`; Online once the
/// guest answers there.
pub fn linux_vm(a: &Agent, group: &str, name: &str, port: u16, extra: &[&str]) {
    let (kernel, initrd) = guest();
    a.ok(&["group", "create", group, "--preferred-owners", &a.name]);
    let params = [
        "accel=tcg".to_string(),
        "memory_mb=256".to_string(),
        format!("kernel={kernel}"),
        format!("initrd={initrd}"),
        "append=console=ttyS0 quiet".to_string(),
        format!("net=user,hostfwd=tcp:{{node_ip}}:{port}-:80"),
        format!("guest_check_http=http://{{node_ip}}:{port}/count"),
        "stop_timeout_ms=10000".to_string(),
    ];
    let mut extra = extra.to_vec();
    extra.extend(["--looks-alive-ms", "500", "--online"]);
    a.create(name, group, "vm", &params, &extra);
}

/// A two-node cluster: n1 bootstrapped on `ip1`, n2 joined on `ip2` and Up.
pub fn two_nodes(ip1: &str, ip2: &str) -> (Agent, Agent) {
    let mut n1 = Agent::on("n1", ip1);
    n1.spawn(true);
    let n2 = Agent::on("n2", ip2).start_joining(&n1);
    wait_until("n2 is Up", || n1.node_state("n2").as_deref() == Some("Up"));
    (n1, n2)
}

/// GET http://addr/path, the body.
pub fn get(addr: &str, path: &str) -> Option<String> {
    use std::io::Read;
    let sa: std::net::SocketAddr = addr.parse().ok()?;
    let mut s =
        std::net::TcpStream::connect_timeout(&sa, std::time::Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    std::io::Write::write_all(&mut s, format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    if !body.starts_with("HTTP/1.") || !body.contains(" 200 ") {
        return None;
    }
    body.split("\r\n\r\n").nth(1).map(|b| b.trim().to_string())
}

pub fn count(addr: &str) -> Option<u64> {
    get(addr, "/count")?.parse().ok()
}

/// What the test guest at `addr` holds in memory: its kernel's boot id (new on every boot)
/// and its counter (+1 every 100 ms of guest time).
#[derive(Debug, Clone, PartialEq)]
pub struct GuestMemory {
    pub boot: String,
    pub count: u64,
}

pub fn guest_memory(addr: &str) -> Option<GuestMemory> {
    Some(GuestMemory {
        boot: get(addr, "/boot")?,
        count: count(addr)?,
    })
}

/// The guest now answering at `addr` is the one `before` saw, memory and all: the same boot
/// id, a counter that did not go back, and that then goes on counting. (A counter read right
/// after a restore may not have ticked yet: guest time stands still while it is moved.)
pub fn assert_same_guest_continues(before: &GuestMemory, addr: &str) -> GuestMemory {
    let after = guest_memory(addr).expect("the guest answers");
    assert_eq!(
        after.boot, before.boot,
        "the same boot, not a new one ({before:?} -> {after:?})"
    );
    assert!(
        after.count >= before.count,
        "the counter did not go back ({before:?} -> {after:?})"
    );
    wait_until("the guest's counter goes on", || {
        count(addr).is_some_and(|c| c > after.count)
    });
    after
}

/// A service every copy of which appends `NODE EPOCH NANOSECONDS` to one shared file every
/// 20 ms (the nodes of a test share the filesystem, also across network namespaces): the
/// file shows which node ran it when, and with which epoch.
pub struct Beats {
    pub path: PathBuf,
}

/// One copy's life as its beats show it: from its first beat to its last, on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub node: String,
    pub epoch: u64,
    pub from_ns: u128,
    pub to_ns: u128,
}

impl Beats {
    pub fn new(dir: &Path) -> Beats {
        Beats {
            path: dir.join("beats"),
        }
    }

    /// The `process` resource parameter that runs the service.
    pub fn command(&self) -> String {
        format!(
            "command=sh -c 'while :; do echo \"$VIGIL_NODE $VIGIL_EPOCH $(date +%s%N)\" >> {}; sleep 0.02; done'",
            self.path.display()
        )
    }

    /// (ns, node, epoch) of every beat, in time order.
    pub fn all(&self) -> Vec<(u128, String, u64)> {
        let mut beats: Vec<(u128, String, u64)> = read(&self.path)
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((
                    f.get(2)?.parse().ok()?,
                    f[0].to_string(),
                    f[1].parse().ok()?,
                ))
            })
            .collect();
        beats.sort();
        beats
    }

    /// Beats written by `node`.
    pub fn count(&self, node: &str) -> usize {
        self.all().iter().filter(|b| b.1 == node).count()
    }

    /// The copies that ran: beats of one node and epoch less than `gap_ms` apart belong to
    /// one copy.
    pub fn runs(&self, gap_ms: u64) -> Vec<Run> {
        let gap = u128::from(gap_ms) * 1_000_000;
        let mut open: Vec<Run> = Vec::new();
        for (t, node, epoch) in self.all() {
            match open
                .iter_mut()
                .rev()
                .find(|r| r.node == node && r.epoch == epoch && t - r.to_ns <= gap)
            {
                Some(r) => r.to_ns = t,
                None => open.push(Run {
                    node,
                    epoch,
                    from_ns: t,
                    to_ns: t,
                }),
            }
        }
        open.sort_by_key(|r| r.from_ns);
        open
    }

    /// Pairs of copies on different nodes that ran at the same time for longer than
    /// `tolerance_ms` (a copy's last beat can be up to one beat period old when it dies).
    pub fn overlaps(&self, tolerance_ms: u64) -> Vec<(Run, Run, u64)> {
        let runs = self.runs(200);
        let tol = u128::from(tolerance_ms) * 1_000_000;
        let mut out = Vec::new();
        for (i, a) in runs.iter().enumerate() {
            for b in &runs[i + 1..] {
                if a.node == b.node {
                    continue;
                }
                let overlap = a
                    .to_ns
                    .min(b.to_ns)
                    .saturating_sub(a.from_ns.max(b.from_ns));
                if overlap > tol {
                    out.push((a.clone(), b.clone(), (overlap / 1_000_000) as u64));
                }
            }
        }
        out
    }

    /// Fails the test if two copies ran at once (beyond one beat period), naming them.
    pub fn assert_never_two(&self) {
        let o = self.overlaps(40);
        assert!(
            o.is_empty(),
            "two copies ran at once: {}",
            o.iter()
                .map(|(a, b, ms)| format!(
                    "{} (epoch {}) and {} (epoch {}) for {ms} ms",
                    a.node, a.epoch, b.node, b.epoch
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
}

/// A tmpfs mounted on `dir` for the life of the value (drop it after the agents using it).
pub struct Tmpfs(pub std::path::PathBuf);

impl Tmpfs {
    pub fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }

    /// Fills the file system; returns the file that fills it.
    pub fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.join("fill");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 1 << 20];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .args(["-l"])
            .arg(&self.0)
            .output();
    }
}

/// The RHS processes of the agent `agent` (its children running `vigil rhs`).
pub fn rhs_pids(agent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            ppid == Some(agent) && String::from_utf8_lossy(&cmd).contains("rhs")
        })
        .collect()
}

pub fn signal(pids: &[u32], sig: rustix::process::Signal) {
    for p in pids {
        if let Some(pid) = rustix::process::Pid::from_raw(*p as i32) {
            let _ = rustix::process::kill_process(pid, sig);
        }
    }
}

/// A fence agent of the fence-agents protocol for the tests and benches: `key=value` lines
/// on stdin. It powers off the node whose cgroup is `cgroup=` (`cgroup.kill`), or whose
/// network namespace is `netns=` (every process in it: an agent under `ip netns exec` has
/// no cgroup v2); `status` says whether anything still runs there; `monitor` and `on`
/// succeed. Every action fails while the file `broken=` exists, and while the file `lie=`
/// exists `off` reports success without doing anything and `status` says on. Each call is
/// appended to `log=`, if given.
const FENCE_AGENT: &str = r#"#!/usr/bin/env python3
import os, signal, subprocess, sys
args = dict(l.rstrip("\n").split("=", 1) for l in sys.stdin if "=" in l)
action = args.get("action")
if "log" in args:
    with open(args["log"], "a") as f:
        f.write(action + " " + args.get("nodename", "") + "\n")
if os.path.exists(args.get("broken", "/nonexistent")):
    sys.exit(1)
if os.path.exists(args.get("lie", "/nonexistent")) and action in ("off", "status"):
    sys.exit(0)

def netns_pids():
    out = subprocess.run(["ip", "netns", "pids", args["netns"]], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]

def running():
    if "netns" in args:
        return bool(netns_pids())
    cg = args["cgroup"]
    return os.path.exists(cg) and "populated 1" in open(cg + "/cgroup.events").read()

def off():
    if "netns" in args:
        for p in netns_pids():
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    elif os.path.exists(args["cgroup"]):
        with open(args["cgroup"] + "/cgroup.kill", "w") as f:
            f.write("1")

if action in ("monitor", "on"):
    sys.exit(0)
if action == "off":
    off()
    sys.exit(0)
if action == "status":
    sys.exit(0 if running() else 2)
sys.exit(1)
"#;

/// Writes the test fence agent into `dir` (executable); its path.
pub fn fence_agent(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fence_test");
    std::fs::write(&path, FENCE_AGENT).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Milliseconds from `t0` to the first record after it of `resource` reaching Online in
/// `a`'s log.
pub fn online_after(a: &Agent, resource: &str, t0: std::time::SystemTime) -> f64 {
    let at = a
        .log()
        .into_iter()
        .filter(|r| r["resource"] == resource && r["to"] == "Online")
        .map(|r| humantime::parse_rfc3339(r["time"].as_str().unwrap()).unwrap())
        .find(|at| *at > t0)
        .expect("an Online record after the fault");
    at.duration_since(t0).unwrap_or_default().as_secs_f64() * 1e3
}
