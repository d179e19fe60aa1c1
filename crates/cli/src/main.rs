//! `vigil`: the one binary. `vigil agent` is the cluster service, `vigil rhs` the resource
//! host (started by the agent, not by people), every other subcommand the command line.

mod client;
mod config;
mod demo;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::{Map, Value, json};

use client::Client;

/// Where the agent's Unix socket is on a node installed the default way.
const DEFAULT_SOCKET: &str = "/var/lib/vigil/vigil.sock";

#[derive(Parser)]
#[command(
    name = "vigil",
    version,
    about = "Vigil keeps services and VMs available on a cluster of Linux machines"
)]
struct Cli {
    /// The agent's API, https://HOST:PORT (default: the local agent's socket).
    #[arg(long, global = true, env = "VIGIL_ENDPOINT")]
    endpoint: Option<String>,
    /// The local agent's Unix socket (root on a node needs no token there).
    #[arg(long, global = true, env = "VIGIL_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// An API token (`vigil token create --role …`), for --endpoint.
    #[arg(long, global = true, env = "VIGIL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The cluster CA's certificate (ca.pem in a node's data dir), for --endpoint.
    #[arg(long, global = true, env = "VIGIL_CA")]
    ca: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a throw-away cluster, run a service on it, kill the service, watch it recover.
    Demo {
        /// Leave the cluster running and print its endpoints.
        #[arg(long)]
        keep: bool,
    },
    /// Run the cluster service on this node.
    Agent(AgentArgs),
    /// The resource host; started by the agent.
    #[command(hide = true)]
    Rhs {
        #[arg(long)]
        fd: i32,
        #[arg(long, default_value = "default")]
        host: String,
    },
    /// Loads a plugin library, checks its ABI and prints its table as JSON; run by the agent
    /// for `vigil type register`, so that a plugin is never loaded into the agent.
    #[command(hide = true)]
    PluginProbe { library: String },
    /// A watchdog device on a Unix socket for machines without /dev/watchdog (the test bed):
    /// kills the cgroup of the node whose agent connects when it stops kicking.
    #[command(hide = true)]
    WatchdogDevice {
        #[arg(long)]
        socket: PathBuf,
    },
    /// Writes the man pages (one per command) and the shell completions (bash, zsh, fish)
    /// into DIR: for packaging.
    #[command(hide = true)]
    GenDocs { dir: PathBuf },
    /// Nodes, groups and resources.
    Status {
        #[arg(long, short, value_enum, default_value = "table")]
        output: output::Format,
        /// Read through the leader, linearizably (default: this node's own copy).
        #[arg(long)]
        consistent: bool,
    },
    /// Groups: the unit of ownership and failover.
    #[command(subcommand)]
    Group(GroupCmd),
    /// Resources: what the cluster keeps running.
    #[command(subcommand)]
    Resource(ResourceCmd),
    /// Resource types and their parameters.
    #[command(subcommand, name = "type")]
    Type(TypeCmd),
    /// The cluster log.
    Log(LogArgs),
    /// Cluster nodes.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Join tokens and API tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// The nodes' certificates.
    #[command(subcommand)]
    Cert(CertCmd),
    /// Cluster-wide settings.
    #[command(subcommand)]
    Cluster(ClusterCmd),
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Show the cluster-wide settings.
    Show,
    /// Change cluster-wide settings.
    Set {
        /// What a node's clean stop (SIGTERM, `systemctl stop`) does with its groups, unless
        /// the node's own configuration says otherwise: migrate, failover or freeze.
        #[arg(long, value_parser = parse_policy)]
        shutdown_policy: vigil_core::model::ShutdownPolicy,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Make a token; its secret is shown once, here.
    Create {
        /// A join token: prints the command that joins a new node with it.
        #[arg(long, conflicts_with = "role", required_unless_present = "role")]
        join: bool,
        /// An API token with this role: admin, operator or viewer.
        #[arg(long)]
        role: Option<String>,
        /// How long it is valid (for example 1h, 30d; a join token's default is 1h).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
        /// How many nodes a join token admits (default 1).
        #[arg(long, requires = "join")]
        uses: Option<u32>,
        /// A label for it.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// The tokens (never their secrets).
    List,
    /// Revoke a token at once.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum CertCmd {
    /// Every node's certificate expiry, and the CA's.
    Status,
    /// Replace the cluster CA: every node trusts the old and the new CA, renews its
    /// certificate from the new one, then the old one is dropped (no restart). Copy the new
    /// ca.pem to the machines that pass --ca afterwards; join tokens made before are refused.
    RotateCa,
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Evict a node from the cluster (it must own no group).
    Remove { name: String },
    /// Pause a node and move all its groups off, in priority order (waits until done).
    Drain { name: String },
    /// Make a paused node Up again.
    Resume {
        name: String,
        /// Move the groups drained off it back to it.
        #[arg(long)]
        failback: bool,
    },
    /// Give a node a fence device (a fence-agents program, checked with `monitor` first),
    /// or take it away.
    FenceDevice {
        name: String,
        /// The fence agent, an absolute path (e.g. /usr/sbin/fence_ipmilan).
        #[arg(long, required_unless_present = "remove")]
        agent: Option<String>,
        /// Its arguments, as the agent takes them on stdin (e.g. ip=10.0.0.9).
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        #[arg(long, conflicts_with_all = ["agent", "params"])]
        remove: bool,
    },
    /// Power a node off with its fence device now; its groups are then recovered elsewhere.
    Fence { name: String },
}

/// Every setting but `--config`, `--print-config` and `--bootstrap` may also be a key of the
/// config file (the flag's name with `_` for `-`); a flag overrides the file.
#[derive(Args)]
struct AgentArgs {
    /// The config file (default: /etc/vigil/vigil.toml, when it exists).
    #[arg(long, env = "VIGIL_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Print the effective settings, and where each came from, and exit.
    #[arg(long)]
    print_config: bool,
    /// This node's name.
    #[arg(long)]
    name: Option<String>,
    /// API address, HOST:PORT [default: 127.0.0.1:7440].
    #[arg(long)]
    listen: Option<String>,
    /// [default: /var/lib/vigil]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Create a new cluster in an empty data dir (`--bootstrap=false` overrides the file).
    #[arg(long, conflicts_with = "join", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    bootstrap: Option<bool>,
    /// Join the cluster of the agent at HOST:PORT (with an empty data dir).
    #[arg(long, value_name = "HOST:PORT")]
    join: Option<String>,
    /// The join token (`vigil token create --join` on a member prints the whole command).
    #[arg(
        long,
        env = "VIGIL_JOIN_TOKEN",
        requires = "join",
        hide_env_values = true
    )]
    token: Option<String>,
    /// A voter that hosts no resources: two nodes and a witness survive the loss of a node
    /// (`--witness=false` overrides the file).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    witness: Option<bool>,
    /// [default: vigil]
    #[arg(long)]
    cluster_name: Option<String>,
    /// Kill and replace an RHS that sends nothing, not even its 1 s heartbeat, for this long
    /// [default: 10000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(config::RHS_SILENCE_MS))]
    rhs_silence_ms: Option<u64>,
    /// Node heartbeat interval; a lease lasts interval × threshold (2 s at the defaults)
    /// [default: 500].
    #[arg(long, value_parser = clap::value_parser!(u64).range(config::HEARTBEAT_INTERVAL_MS))]
    heartbeat_interval_ms: Option<u64>,
    /// Missed heartbeats before a node is suspected and its lease runs out [default: 4].
    #[arg(long, value_parser = clap::value_parser!(u32).range(config::HEARTBEAT_THRESHOLD_FLAG))]
    heartbeat_threshold: Option<u32>,
    /// How long the certificates this node signs are valid (renewed in their last third)
    /// [default: 7776000, 90 days].
    #[arg(long, value_parser = clap::value_parser!(u64).range(config::CERT_LIFETIME_S))]
    cert_lifetime_s: Option<u64>,
    /// A watchdog device (/dev/watchdog, or a socket of `vigil watchdog-device`): it resets
    /// this node when its agent stops kicking it while resources may run past the lease.
    #[arg(long, value_name = "DEVICE")]
    watchdog: Option<PathBuf>,
    /// The watchdog's timeout; the cluster then records a silent node Down only after
    /// lease + the longest such timeout + margin [default: 10000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(config::WATCHDOG_TIMEOUT_MS))]
    watchdog_timeout_ms: Option<u64>,
    /// What a clean stop (SIGTERM, `systemctl stop`) does with this node's groups: migrate
    /// (drain first), failover (they leave at once) or freeze (they wait for the node)
    /// [default: the cluster's, `vigil cluster set --shutdown-policy`].
    #[arg(long, value_parser = parse_policy)]
    shutdown_policy: Option<vigil_core::model::ShutdownPolicy>,
    /// How long a `migrate` stop may drain before it stops as under `failover`
    /// [default: 120].
    #[arg(long, value_parser = clap::value_parser!(u64).range(config::SHUTDOWN_TIMEOUT_S))]
    shutdown_timeout_s: Option<u64>,
    /// error, warn, info, debug or trace ($VIGIL_LOG, a tracing filter, wins) [default: info].
    #[arg(long)]
    log_level: Option<String>,
}

fn parse_policy(s: &str) -> Result<vigil_core::model::ShutdownPolicy, String> {
    vigil_core::model::ShutdownPolicy::parse(s)
}

#[derive(Args, Default)]
struct GroupFlags {
    /// Nodes to fail over to, most preferred first (comma-separated).
    #[arg(long, value_name = "A,B,C")]
    preferred_owners: Option<String>,
    /// Nodes the group may run on (comma-separated; empty: every node).
    #[arg(long, value_name = "A,B,C")]
    possible_owners: Option<String>,
    /// Failovers allowed within --failover-period-s before the group stays Failed
    /// (default: nodes - 1).
    #[arg(long)]
    failover_threshold: Option<u32>,
    /// Default 21600.
    #[arg(long)]
    failover_period_s: Option<u64>,
    /// How long a Failed group waits before it is tried again (default 3600).
    #[arg(long)]
    retry_period_on_failure_s: Option<u64>,
    /// never | immediate | window:START-END (hours, UTC).
    #[arg(long)]
    auto_failback: Option<String>,
    /// high | medium | low | no_auto_start.
    #[arg(long)]
    priority: Option<String>,
    /// Groups of one class avoid sharing a node.
    #[arg(long)]
    anti_affinity_class: Option<String>,
}

impl GroupFlags {
    fn props(&self) -> Map<String, Value> {
        let flags: [(&str, Option<Value>); 8] = [
            (
                "preferred_owners",
                self.preferred_owners.clone().map(Value::from),
            ),
            (
                "possible_owners",
                self.possible_owners.clone().map(Value::from),
            ),
            (
                "failover_threshold",
                self.failover_threshold.map(Value::from),
            ),
            ("failover_period_s", self.failover_period_s.map(Value::from)),
            (
                "retry_period_on_failure_s",
                self.retry_period_on_failure_s.map(Value::from),
            ),
            ("auto_failback", self.auto_failback.clone().map(Value::from)),
            ("priority", self.priority.clone().map(Value::from)),
            (
                "anti_affinity_class",
                self.anti_affinity_class.clone().map(Value::from),
            ),
        ];
        flags
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
            .collect()
    }
}

#[derive(Subcommand)]
enum GroupCmd {
    Create {
        name: String,
        #[command(flatten)]
        flags: GroupFlags,
    },
    /// Change placement properties.
    Set {
        name: String,
        #[command(flatten)]
        flags: GroupFlags,
    },
    /// Move to another node: stopped here (reverse dependency order), then started there.
    Move {
        name: String,
        /// Target node (default: the failover manager's choice).
        #[arg(long)]
        to: Option<String>,
        /// For groups that can migrate (VMs): live (the default) or quick (save, move,
        /// restore).
        #[arg(long)]
        migration: Option<String>,
    },
    /// Take every resource offline, then delete the group and its resources.
    Delete {
        name: String,
    },
    Online {
        name: String,
    },
    Offline {
        name: String,
    },
}

#[derive(Args, Default)]
struct PropFlags {
    /// Any property as NAME=VALUE (see `vigil type show`); the flags below are shorthands.
    #[arg(long = "prop", value_name = "NAME=VALUE")]
    props: Vec<String>,
    #[arg(long)]
    looks_alive_ms: Option<u64>,
    #[arg(long)]
    is_alive_ms: Option<u64>,
    /// none | restart | restart_then_failover
    #[arg(long)]
    restart_action: Option<String>,
    #[arg(long)]
    restart_threshold: Option<u32>,
    #[arg(long)]
    restart_period_s: Option<u64>,
    #[arg(long)]
    restart_delay_ms: Option<u64>,
    #[arg(long)]
    pending_timeout_ms: Option<u64>,
    #[arg(long)]
    retry_period_on_failure_s: Option<u64>,
    #[arg(long)]
    deadlock_timeout_ms: Option<u64>,
    /// Host the resource in an RHS process of its own.
    #[arg(long)]
    separate_monitor: bool,
}

#[derive(Subcommand)]
enum ResourceCmd {
    Create {
        name: String,
        #[arg(long)]
        group: String,
        #[arg(long = "type")]
        type_name: String,
        /// A type parameter as NAME=VALUE (repeat).
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// A parameter whose value is secret (a password, a key): never shown by status,
        /// the log or the API, only its name (repeat).
        #[arg(long = "secret-param", value_name = "NAME=VALUE")]
        secret_params: Vec<String>,
        #[command(flatten)]
        props: PropFlags,
        /// A resource of the same group that must be Online first (repeat).
        #[arg(long)]
        depends_on: Vec<String>,
        /// Bring it online right away.
        #[arg(long)]
        online: bool,
    },
    /// Change parameters, properties or dependencies (effective at the next online).
    Set {
        name: String,
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Set a parameter and keep its value secret from now on (repeat).
        #[arg(long = "secret-param", value_name = "NAME=VALUE")]
        secret_params: Vec<String>,
        #[arg(long = "unset-param", value_name = "NAME")]
        unset_params: Vec<String>,
        #[command(flatten)]
        props: PropFlags,
        /// Replace the dependencies (repeat); `--no-dependencies` clears them.
        #[arg(long)]
        depends_on: Vec<String>,
        #[arg(long, conflicts_with = "depends_on")]
        no_dependencies: bool,
    },
    Online {
        name: String,
    },
    Offline {
        name: String,
    },
    /// Take it offline, then delete it.
    Delete {
        name: String,
    },
    /// Simulate a failure (like Test-ClusterResourceFailure).
    Fail {
        name: String,
    },
    /// Send a type-specific request to the resource on its owner (ResourceControl); prints
    /// the type's answer.
    Control {
        name: String,
        request: String,
    },
}

#[derive(Subcommand)]
enum TypeCmd {
    /// Built-in types, the OCF agents installed here, and registered plugins.
    List,
    /// A type's parameters.
    Show { name: String },
    /// Register a plugin (a shared library with Vigil's C ABI, at the same absolute path on
    /// every node); its name and parameters come from the library.
    Register { library: String },
    /// Unregister a plugin type (refused while a resource uses it).
    Unregister { name: String },
}

#[derive(Args)]
struct LogArgs {
    /// Keep printing new records.
    #[arg(long, short)]
    follow: bool,
    #[arg(long)]
    resource: Option<String>,
    #[arg(long)]
    group: Option<String>,
    /// Only records after this sequence number.
    #[arg(long, default_value_t = 0)]
    after: u64,
    #[arg(long, short, value_enum, default_value = "table")]
    output: output::Format,
}

fn main() -> ExitCode {
    vigil_tls::install_provider();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Agent(a) => run_agent(a),
        Cmd::PluginProbe { library } => probe_plugin(&library),
        Cmd::WatchdogDevice { socket } => {
            vigil_agent::watchdog::serve_test_device(&socket).map_err(anyhow::Error::msg)
        }
        Cmd::Rhs { fd, host } => {
            init_tracing();
            raise_fd_limit();
            vigil_rhs::host::main(fd).map_err(|e| anyhow::anyhow!("RHS {host}: {e}"))
        }
        Cmd::GenDocs { dir } => gen_docs(&dir),
        Cmd::Demo { keep } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(demo::run(keep))),
        command => {
            end_quietly_on_closed_pipe();
            let target = client::Target {
                endpoint: cli.endpoint,
                socket: cli.socket,
                token: cli.token,
                ca: cli.ca,
            };
            run_client(&target, command)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The CLI's output piped into a reader that stops early (`vigil type list | head -n1`):
/// end the way other Unix tools do, by SIGPIPE, instead of a panic on the next print. (Rust
/// ignores SIGPIPE by default; the agent keeps that, since a client that hangs up must not
/// end it.)
fn end_quietly_on_closed_pipe() {
    // SAFETY: setting a signal's disposition to its default, before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Lifts the open-files limit to its hard maximum: an RHS holds a pidfd per process it
/// supervises, and 1 024 (a common default) is too few for a busy node.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
}

fn init_tracing() {
    init_tracing_at("info");
}

/// `vigil gen-docs DIR`: `DIR/man/vigil.1`, `vigil-agent.1`, `vigil-group-move.1`, … and
/// `DIR/completions/vigil.bash`, `_vigil`, `vigil.fish`.
fn gen_docs(dir: &std::path::Path) -> anyhow::Result<()> {
    use clap::CommandFactory;
    use clap_complete::Shell;
    let man = dir.join("man");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d)
            .map_err(|e| anyhow::anyhow!("cannot make {}: {e}", d.display()))?;
    }
    let mut cmd = Cli::command();
    cmd.build();
    fn pages(cmd: &clap::Command, name: String, out: &mut Vec<(String, clap::Command)>) {
        if cmd.is_hide_set() {
            return;
        }
        let page = cmd
            .clone()
            .name(name.clone())
            .bin_name(name.replace('-', " "));
        out.push((name.clone(), page));
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            pages(sub, format!("{name}-{}", sub.get_name()), out);
        }
    }
    let mut all = Vec::new();
    pages(&cmd, "vigil".to_string(), &mut all);
    for (name, page) in all {
        let mut text = Vec::new();
        clap_mangen::Man::new(page).render(&mut text)?;
        let path = man.join(format!("{name}.1"));
        std::fs::write(&path, text)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    for (shell, file) in [
        (Shell::Bash, "vigil.bash"),
        (Shell::Zsh, "_vigil"),
        (Shell::Fish, "vigil.fish"),
    ] {
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "vigil", &mut text);
        let path = completions.join(file);
        std::fs::write(&path, text)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// `$VIGIL_LOG` (a tracing filter) if set, else `level` (openraft's own chatter from warn
/// up only, unless the level asks for debugging).
fn init_tracing_at(level: &str) {
    let quiet_raft = match level {
        "debug" | "trace" => level.to_string(),
        _ => format!("{level},openraft=warn"),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(quiet_raft));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn run_agent(a: AgentArgs) -> anyhow::Result<()> {
    let token = a.token.map(|t| {
        let from = if std::env::var_os("VIGIL_JOIN_TOKEN").is_some() {
            "env VIGIL_JOIN_TOKEN"
        } else {
            "flag"
        };
        (t, from)
    });
    let flags = config::Flags {
        name: a.name,
        listen: a.listen,
        data_dir: a.data_dir,
        bootstrap: a.bootstrap,
        join: a.join,
        token,
        witness: a.witness,
        cluster_name: a.cluster_name,
        rhs_silence_ms: a.rhs_silence_ms,
        heartbeat_interval_ms: a.heartbeat_interval_ms,
        heartbeat_threshold: a.heartbeat_threshold,
        cert_lifetime_s: a.cert_lifetime_s,
        watchdog: a.watchdog,
        watchdog_timeout_ms: a.watchdog_timeout_ms,
        shutdown_policy: a.shutdown_policy,
        shutdown_timeout_s: a.shutdown_timeout_s,
        log_level: a.log_level,
    };
    if let Some(p) = a.config.as_ref().filter(|p| !p.exists()) {
        anyhow::bail!("config file {} does not exist", p.display());
    }
    let file = config::path(a.config);
    let s = config::resolve(flags, file.as_deref()).map_err(anyhow::Error::msg)?;
    if a.print_config {
        print!("{}", s.print());
        return Ok(());
    }
    let Some(name) = s.name else {
        anyhow::bail!(
            "no node name: pass --name NAME, or set name = \"NAME\" in the config file ({})",
            s.file
                .as_ref()
                .map_or(config::DEFAULT_PATH.to_string(), |f| f
                    .display()
                    .to_string())
        );
    };
    if (s.token.is_some() || s.token_file.is_some()) && s.join.is_none() {
        anyhow::bail!("a join token goes with --join HOST:PORT (or join = \"HOST:PORT\")");
    }
    // Before any thread runs: the environment is changed.
    // SAFETY: single-threaded here; the runtime starts below.
    let notify =
        unsafe { vigil_agent::notify::Notifier::take_from_env() }.map_err(anyhow::Error::msg)?;
    init_tracing_at(&s.log_level);
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(vigil_agent::run(
        vigil_agent::AgentOptions {
            name,
            listen: s.listen,
            data_dir: s.data_dir,
            bootstrap: s.bootstrap,
            join: s.join,
            token: s.token,
            witness: s.witness,
            cluster_name: s.cluster_name,
            rhs_silence_ms: s.rhs_silence_ms,
            heartbeat_interval_ms: s.heartbeat_interval_ms,
            heartbeat_threshold: s.heartbeat_threshold,
            cert_lifetime_s: s.cert_lifetime_s,
            watchdog: s
                .watchdog
                .map(|d| (d, std::time::Duration::from_millis(s.watchdog_timeout_ms))),
            shutdown_policy: s.shutdown_policy,
            shutdown_timeout_s: s.shutdown_timeout_s,
            first_start_from_file: s.first_start_from_file,
            token_file: s.token_file,
        },
        notify,
    ))
}

fn run_client(target: &client::Target, command: Cmd) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = Client::new(target)?;
    rt.block_on(client_command(&client, command))
}

/// `NAME=VALUE` pairs into a JSON object of strings; the error names the bad argument.
fn pairs(flag: &str, items: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut m = Map::new();
    for item in items {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("{flag} {item:?} is not NAME=VALUE"))?;
        m.insert(k.to_string(), Value::String(v.to_string()));
    }
    Ok(m)
}

/// `--param` and `--secret-param` pairs together, and the names of the secret ones. A
/// malformed secret pair is refused without repeating it.
fn with_secrets(
    params: &[String],
    secret: &[String],
) -> anyhow::Result<(Map<String, Value>, Vec<String>)> {
    let mut m = pairs("--param", params)?;
    let mut names = Vec::new();
    for (i, item) in secret.iter().enumerate() {
        let Some((k, v)) = item.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            anyhow::bail!("--secret-param number {} is not NAME=VALUE", i + 1);
        };
        m.insert(k.to_string(), Value::String(v.to_string()));
        names.push(k.to_string());
    }
    Ok((m, names))
}

fn prop_map(p: &PropFlags) -> anyhow::Result<Map<String, Value>> {
    let mut m = pairs("--prop", &p.props)?;
    let flags: [(&str, Option<Value>); 9] = [
        ("looks_alive_ms", p.looks_alive_ms.map(Value::from)),
        ("is_alive_ms", p.is_alive_ms.map(Value::from)),
        ("restart_action", p.restart_action.clone().map(Value::from)),
        ("restart_threshold", p.restart_threshold.map(Value::from)),
        ("restart_period_s", p.restart_period_s.map(Value::from)),
        ("restart_delay_ms", p.restart_delay_ms.map(Value::from)),
        ("pending_timeout_ms", p.pending_timeout_ms.map(Value::from)),
        (
            "retry_period_on_failure_s",
            p.retry_period_on_failure_s.map(Value::from),
        ),
        (
            "deadlock_timeout_ms",
            p.deadlock_timeout_ms.map(Value::from),
        ),
    ];
    for (k, v) in flags {
        if let Some(v) = v {
            m.insert(k.to_string(), v);
        }
    }
    if p.separate_monitor {
        m.insert("separate_monitor".to_string(), Value::Bool(true));
    }
    Ok(m)
}

async fn token_command(c: &Client, t: TokenCmd) -> anyhow::Result<()> {
    match t {
        TokenCmd::Create {
            join,
            role,
            ttl,
            uses,
            name,
        } => {
            let mut body = json!({ "kind": if join { "join" } else { "api" }, "name": name });
            if let Some(r) = role {
                body["role"] = json!(r);
            }
            if let Some(t) = ttl {
                body["ttl_s"] = json!(t.as_secs().max(1));
            }
            if let Some(u) = uses {
                body["uses"] = json!(u);
            }
            let v = c.post("/v1/tokens", body).await?;
            println!("{}", v["token"].as_str().unwrap_or_default());
            if let Some(cmd) = v["command"].as_str() {
                eprintln!("join a node with:\n  {cmd}");
            }
            if let Some(e) = v["expires_s"].as_u64() {
                eprintln!(
                    "token {} expires at {}",
                    v["id"].as_str().unwrap_or("?"),
                    output::unix_time(e)
                );
            }
        }
        TokenCmd::List => {
            let v = c.get("/v1/tokens").await?;
            output::tokens(&v);
        }
        TokenCmd::Revoke { id } => {
            c.delete(&format!("/v1/tokens/{}", client::seg(&id)))
                .await?;
            println!("token {id} revoked");
        }
    }
    Ok(())
}

async fn client_command(c: &Client, command: Cmd) -> anyhow::Result<()> {
    match command {
        Cmd::Status { output, consistent } => {
            let path = if consistent {
                "/v1/status?consistent=true"
            } else {
                "/v1/status"
            };
            output::status(&c.get(path).await?, output)?
        }
        Cmd::Group(g) => match g {
            GroupCmd::Create { name, flags } => {
                c.post(
                    "/v1/groups",
                    json!({ "name": name, "props": flags.props() }),
                )
                .await?;
                println!("group {name} created");
            }
            GroupCmd::Set { name, flags } => {
                let props = flags.props();
                if props.is_empty() {
                    anyhow::bail!("nothing to change: give at least one property flag");
                }
                c.patch(
                    &format!("/v1/groups/{}", client::seg(&name)),
                    json!({ "props": props }),
                )
                .await?;
                println!("group {name} updated");
            }
            GroupCmd::Move {
                name,
                to,
                migration,
            } => {
                let mut body = json!({});
                if let Some(to) = to {
                    body["to"] = json!(to);
                }
                if let Some(m) = migration {
                    body["migration"] = json!(m);
                }
                let r = c
                    .post(&format!("/v1/groups/{}/move", client::seg(&name)), body)
                    .await?;
                println!(
                    "group {name} moved from {} to {} (epoch {}), {}",
                    r["from"].as_str().unwrap_or("?"),
                    r["to"].as_str().unwrap_or("?"),
                    r["epoch"],
                    r["state"].as_str().unwrap_or("?")
                );
            }
            GroupCmd::Delete { name } => {
                c.delete(&format!("/v1/groups/{}", client::seg(&name)))
                    .await?;
                println!("group {name} deleted");
            }
            GroupCmd::Online { name } => desired(c, "groups", &name, "online").await?,
            GroupCmd::Offline { name } => desired(c, "groups", &name, "offline").await?,
        },
        Cmd::Resource(r) => resource_command(c, r).await?,
        Cmd::Type(t) => match t {
            TypeCmd::List => output::types(&c.get("/v1/types").await?)?,
            TypeCmd::Show { name } => {
                output::type_show(&c.get(&format!("/v1/types/{}", client::seg(&name))).await?)?
            }
            TypeCmd::Register { library } => {
                let library =
                    std::path::absolute(&library).map_err(|e| anyhow::anyhow!("{library}: {e}"))?;
                let r = c.post("/v1/types", json!({ "library": library })).await?;
                println!("type {} registered", r["registered"].as_str().unwrap_or(""));
            }
            TypeCmd::Unregister { name } => {
                c.delete(&format!("/v1/types/{}", client::seg(&name)))
                    .await?;
                println!("type {name} unregistered");
            }
        },
        Cmd::Log(l) => log_command(c, l).await?,
        Cmd::Token(t) => token_command(c, t).await?,
        Cmd::Cert(CertCmd::Status) => {
            let v = c.get("/v1/certs").await?;
            output::certs(&v);
        }
        Cmd::Cert(CertCmd::RotateCa) => {
            let v = c.post("/v1/ca/rotate", json!({})).await?;
            println!(
                "CA rotation to {} begun: every node renews its certificate from the new CA; `vigil cert status` shows the nodes still to renew",
                v["rotating_to"].as_str().unwrap_or("?")
            );
        }
        Cmd::Node(NodeCmd::FenceDevice {
            name,
            agent,
            params,
            remove,
        }) => {
            let path = format!("/v1/nodes/{}/fence-device", client::seg(&name));
            if remove {
                c.delete(&path).await?;
                println!("node {name} has no fence device now");
            } else {
                let params = pairs("--param", &params)?;
                c.post(&path, json!({ "agent": agent, "params": params }))
                    .await?;
                println!("node {name} has a fence device (checked with monitor)");
            }
        }
        Cmd::Node(NodeCmd::Fence { name }) => {
            let v = c
                .post(
                    &format!("/v1/nodes/{}/fence", client::seg(&name)),
                    json!({}),
                )
                .await?;
            println!(
                "node {name} fenced in {} ms: it is Down and its groups are recovered elsewhere",
                v["fenced_in_ms"]
            );
        }
        Cmd::Node(NodeCmd::Remove { name }) => {
            c.delete(&format!("/v1/nodes/{}", client::seg(&name)))
                .await?;
            println!("node {name} removed");
        }
        Cmd::Node(NodeCmd::Drain { name }) => {
            let r = c
                .post(
                    &format!("/v1/nodes/{}/drain", client::seg(&name)),
                    json!({}),
                )
                .await?;
            let remaining: Vec<&str> = r["remaining"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if remaining.is_empty() {
                println!("node {name} drained: Paused, no groups left on it");
            } else {
                println!(
                    "node {name} Paused; no node could take: {}",
                    remaining.join(", ")
                );
            }
        }
        Cmd::Node(NodeCmd::Resume { name, failback }) => {
            let r = c
                .post(
                    &format!("/v1/nodes/{}/resume", client::seg(&name)),
                    json!({ "failback": failback }),
                )
                .await?;
            println!("node {name} resumed: Up");
            if let Some(back) = r["failed_back"].as_array().filter(|a| !a.is_empty()) {
                let names: Vec<&str> = back.iter().filter_map(Value::as_str).collect();
                println!("failed back: {}", names.join(", "));
            }
        }
        Cmd::Cluster(ClusterCmd::Show) => {
            let r = c.get("/v1/cluster/settings").await?;
            println!(
                "shutdown_policy = {}",
                r["shutdown_policy"].as_str().unwrap_or("?")
            );
        }
        Cmd::Cluster(ClusterCmd::Set { shutdown_policy }) => {
            let body = json!({ "shutdown_policy": shutdown_policy.name() });
            let r = c.put("/v1/cluster/settings", body).await?;
            println!(
                "the cluster's shutdown policy is {}",
                r["shutdown_policy"].as_str().unwrap_or("?")
            );
        }
        Cmd::Agent(_)
        | Cmd::Rhs { .. }
        | Cmd::PluginProbe { .. }
        | Cmd::WatchdogDevice { .. }
        | Cmd::GenDocs { .. }
        | Cmd::Demo { .. } => {
            unreachable!("handled in main")
        }
    }
    Ok(())
}

async fn desired(c: &Client, kind: &str, name: &str, action: &str) -> anyhow::Result<()> {
    c.post(
        &format!("/v1/{kind}/{}/{action}", client::seg(name)),
        json!({}),
    )
    .await?;
    println!(
        "{} {name}: desired state set to {action}",
        kind.trim_end_matches('s')
    );
    Ok(())
}

async fn resource_command(c: &Client, cmd: ResourceCmd) -> anyhow::Result<()> {
    match cmd {
        ResourceCmd::Create {
            name,
            group,
            type_name,
            params,
            secret_params,
            props,
            depends_on,
            online,
        } => {
            let (params, secret) = with_secrets(&params, &secret_params)?;
            let body = json!({
                "name": name, "group": group, "type": type_name,
                "params": params, "secret": secret, "props": prop_map(&props)?,
                "depends_on": depends_on,
            });
            c.post("/v1/resources", body).await?;
            println!("resource {name} created");
            if online {
                desired(c, "resources", &name, "online").await?;
            }
        }
        ResourceCmd::Set {
            name,
            params,
            secret_params,
            unset_params,
            props,
            depends_on,
            no_dependencies,
        } => {
            let (mut p, secret) = with_secrets(&params, &secret_params)?;
            for k in unset_params {
                p.insert(k, Value::Null);
            }
            let mut body = json!({ "params": p, "secret": secret, "props": prop_map(&props)? });
            if no_dependencies || !depends_on.is_empty() {
                body["depends_on"] = json!(depends_on);
            }
            c.patch(&format!("/v1/resources/{}", client::seg(&name)), body)
                .await?;
            println!("resource {name} updated");
        }
        ResourceCmd::Online { name } => desired(c, "resources", &name, "online").await?,
        ResourceCmd::Offline { name } => desired(c, "resources", &name, "offline").await?,
        ResourceCmd::Delete { name } => {
            c.delete(&format!("/v1/resources/{}", client::seg(&name)))
                .await?;
            println!("resource {name} deleted");
        }
        ResourceCmd::Fail { name } => {
            c.post(
                &format!("/v1/resources/{}/fail", client::seg(&name)),
                json!({}),
            )
            .await?;
            println!("resource {name}: failure simulated");
        }
        ResourceCmd::Control { name, request } => {
            let r = c
                .post(
                    &format!("/v1/resources/{}/control", client::seg(&name)),
                    json!({ "request": request }),
                )
                .await?;
            println!("{}", r["reply"].as_str().unwrap_or_default());
        }
    }
    Ok(())
}

async fn log_command(c: &Client, l: LogArgs) -> anyhow::Result<()> {
    let mut after = l.after;
    loop {
        let mut path = format!("/v1/log?after={after}&limit=1000");
        if let Some(r) = &l.resource {
            path.push_str(&format!("&resource={r}"));
        }
        if let Some(g) = &l.group {
            path.push_str(&format!("&group={g}"));
        }
        if l.follow {
            path.push_str("&wait_ms=30000");
        }
        let records = c.get(&path).await?;
        let records = records.as_array().cloned().unwrap_or_default();
        for r in &records {
            output::log_record(r, l.output)?;
            after = after.max(r["seq"].as_u64().unwrap_or(after));
        }
        if records.is_empty() && !l.follow {
            return Ok(());
        }
    }
}

fn probe_plugin(library: &str) -> anyhow::Result<()> {
    let t = vigil_rhs::types::plugin::PluginType::load(library).map_err(anyhow::Error::msg)?;
    println!("{}", serde_json::to_string(t.info())?);
    Ok(())
}
