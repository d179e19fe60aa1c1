//! The cluster service, `vigil agent` (the seed's clussvc.exe): one per node.
//!
//! - [`service`]: the main loop that owns the cluster database, runs the RCM (from the pure
//!   core) and executes its actions.
//! - [`hosts`]: starts and supervises the RHS processes (`vigil rhs`).
//! - [`api`]: the HTTP/JSON API the CLI talks to; [`view`]: what it returns for status.
//! - [`clusterlog`]: the cluster log, one JSON line per state change.
//! - [`nm`]: heartbeats, leases, self-fencing, Down; [`fm`]: runs the failover manager on
//!   the leader.
//!
//! Not here: decisions (restart policy, dependency order, placement live in `vigil-core`),
//! health checks and resource types (in `vigil-rhs`, in other processes).

pub mod api;
pub mod ca;
pub mod cgroups;
pub mod clusterlog;
pub mod drain;
pub mod fence;
pub mod fm;
pub mod hosts;
pub mod membership;
pub mod nm;
pub mod notify;
pub mod service;
pub mod shutdown;
pub mod view;
pub mod watchdog;

use std::path::PathBuf;

use anyhow::{Context, bail};
use tokio::sync::mpsc;
use vigil_core::command::Command;
use vigil_core::event::{Component, LogEntry};
use vigil_db::{Db, Timing};

use crate::clusterlog::ClusterLog;
use crate::service::{Msg, Service};

/// Bound of the main loop's input queue.
const INPUT_QUEUE: usize = 65_536;

#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub name: String,
    pub listen: String,
    pub data_dir: PathBuf,
    pub bootstrap: bool,
    /// Join the cluster that the agent at this HOST:PORT belongs to.
    pub join: Option<String>,
    /// The join token for `join` (`vigil token create --join` on a member).
    pub token: Option<String>,
    /// A voter that hosts no resources.
    pub witness: bool,
    pub cluster_name: String,
    /// An RHS silent for this long (no heartbeat) is killed and replaced.
    pub rhs_silence_ms: u64,
    /// Node heartbeat interval; a lease lasts `heartbeat_interval_ms × heartbeat_threshold`.
    pub heartbeat_interval_ms: u64,
    pub heartbeat_threshold: u32,
    /// How long the certificates this node signs (as leader) are valid.
    pub cert_lifetime_s: u64,
    /// A watchdog device and its timeout (`watchdog.rs`).
    pub watchdog: Option<(PathBuf, std::time::Duration)>,
    /// What a clean stop does with this node's groups (`None`: the cluster's policy), and
    /// how long a `migrate` drain may take (`shutdown.rs`).
    pub shutdown_policy: Option<vigil_core::model::ShutdownPolicy>,
    pub shutdown_timeout_s: u64,
    /// `bootstrap` or `join` came from the config file: they apply to a data dir that never
    /// held a cluster, and later starts are those of the member it became (the flags
    /// refuse a data dir that holds a cluster instead).
    pub first_start_from_file: bool,
    /// A file holding the join token (`join_token_file`), read only for a join.
    pub token_file: Option<PathBuf>,
}

/// Runs the agent until SIGTERM or SIGINT (a clean stop under its shutdown policy), telling
/// systemd through `notify` how far it is.
pub async fn run(mut opts: AgentOptions, notify: notify::Notifier) -> anyhow::Result<()> {
    notify.status("starting: opening the data dir");
    vigil_tls::install_provider();
    vigil_tls::set_node_cert_lifetime(std::time::Duration::from_secs(opts.cert_lifetime_s));
    private_data_dir(&opts)?;
    let _lock = lock_data_dir(&opts)?;
    check_identity(&opts)?;
    let tls = vigil_tls::Tls::default();
    if let Some(creds) = vigil_tls::Creds::load(&opts.data_dir)? {
        tls.load(&creds).with_context(|| {
            format!(
                "the node's certificate in {} cannot be used",
                opts.data_dir.display()
            )
        })?;
    }
    // Its clock starts before the database opens: every instant the database notes is on it.
    let nm = nm::Nm::new(
        &opts.name,
        vigil_core::lease::LeaseConfig {
            interval_ms: opts.heartbeat_interval_ms,
            threshold: opts.heartbeat_threshold,
            // The cluster's, from the database (NodeManager::lead).
            watchdog_ms: 0,
        },
    );
    notify.status("starting: opening the cluster database");
    let db = Db::open(
        &opts.data_dir.join("raft.redb"),
        &opts.name,
        Timing::default(),
        &tls,
    )
    .await?;
    let member = db.is_initialized().await?;
    let dir = opts.data_dir.display();
    let known = read_cluster_id(&opts)?;
    if opts.first_start_from_file && (member || known.is_some()) {
        opts.bootstrap = false;
        opts.join = None;
        opts.token = None;
    } else if opts.join.is_some()
        && opts.token.is_none()
        && let Some(f) = &opts.token_file
    {
        let t = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read join_token_file {}", f.display()))?;
        opts.token = Some(t.trim().to_string());
    }
    if opts.join.is_some() != opts.token.is_some() && !opts.bootstrap {
        let fix = match opts.join {
            Some(_) => {
                "--join needs --token TOKEN (`vigil token create --join` on a member prints the whole command)"
            }
            None => "--token goes with --join HOST:PORT",
        };
        bail!("{fix}");
    }

    match (member, opts.bootstrap, &opts.join, &known) {
        (true, true, _, _) => bail!(
            "data dir {dir} already holds a cluster; refusing --bootstrap over existing data (start without --bootstrap)"
        ),
        (true, false, Some(_), _) => bail!(
            "data dir {dir} already belongs to a cluster; start without --join (or remove the node and start with an empty data dir)"
        ),
        // It was a member, and its database is gone: bootstrapping would make a second
        // cluster under the same node names, which a join must not mix with the first.
        (false, _, _, Some(id)) => bail!(
            "data dir {dir} belonged to cluster {id} as node {}, but its database ({}) is missing or empty; remove the node from its cluster (`vigil node remove {}` on a member), then start it again with an empty data dir and --join HOST:PORT (or delete the data dir to start a new cluster)",
            opts.name,
            opts.data_dir.join("raft.redb").display(),
            opts.name
        ),
        (false, false, None, None) => bail!(
            "data dir {dir} holds no cluster; start the first node with --bootstrap, or join one with --join HOST:PORT"
        ),
        _ => {}
    }
    if member {
        let id = match known {
            Some(id) => id,
            // A data dir from before cluster ids: every node of that cluster derives the same.
            None => {
                let name = db.state().cluster_name.clone().unwrap_or_default();
                let id = db
                    .state()
                    .cluster_id
                    .clone()
                    .unwrap_or(format!("legacy-{name}"));
                write_cluster_id(&opts, &id)?;
                id
            }
        };
        db.set_cluster_id(&id);
        if tls.identity().is_none() {
            bail!(
                "data dir {dir} holds a member's database but no node certificate ({}, {}, {}); it was made by a Vigil without TLS: remove the node from its cluster, then join again with a token",
                vigil_tls::CA_FILE,
                vigil_tls::CERT_FILE,
                vigil_tls::KEY_FILE
            );
        }
    }
    let log = ClusterLog::open(&opts.data_dir, &opts.name)
        .with_context(|| format!("cannot open the cluster log in {dir}"))?;
    let listener = tokio::net::TcpListener::bind(&opts.listen)
        .await
        .with_context(|| format!("cannot listen on {}", opts.listen))?;
    let listen = listener.local_addr()?.to_string();
    let (host_tx, mut host_rx) = mpsc::channel(INPUT_QUEUE);
    let (tx, rx) = mpsc::channel::<Msg>(INPUT_QUEUE);
    let mut svc = Service::new(&opts, &listen, db.clone(), log.clone(), host_tx, nm)?;
    let router = api::router(
        tx.clone(),
        log.clone(),
        svc.subscribe(),
        db.clone(),
        svc.nm.clone(),
        tls.clone(),
        ca::CaKey::new(opts.data_dir.clone()),
    )
    .merge(db.router());
    let socket = local_socket(&opts)?;
    tokio::spawn(vigil_tls::server::serve(
        listener,
        tls.server_config(),
        router.clone(),
    ));
    tokio::spawn(vigil_tls::server::serve_local(socket, router));
    if !member {
        notify.status(if opts.bootstrap {
            "starting: forming a new cluster"
        } else {
            "starting: joining the cluster"
        });
        form_or_join(&opts, &listen, &db, &log, &tls).await?;
    }
    private_data_dir(&opts)?;
    log.append([LogEntry::new(
        Component::NM,
        format!(
            "agent {} up, API on https://{listen} and {}, pid {}",
            opts.name,
            opts.data_dir.join(SOCKET).display(),
            std::process::id()
        ),
    )]);
    eprintln!("vigil agent {} listening on https://{listen}", opts.name);
    let forward = tx.clone();
    tokio::spawn(async move {
        while let Some(e) = host_rx.recv().await {
            if forward.send(Msg::Host(e)).await.is_err() {
                return;
            }
        }
    });
    let applied = tx.clone();
    let mut applied_rx = db.subscribe();
    tokio::spawn(async move {
        while applied_rx.changed().await.is_ok() {
            if applied.send(Msg::Applied).await.is_err() {
                return;
            }
        }
    });
    let main = tx.clone();
    tokio::spawn(nm::run(
        svc.nm.clone(),
        db.clone(),
        log.clone(),
        move |input| {
            let main = main.clone();
            async move { main.send(Msg::Rcm(input)).await.is_ok() }
        },
    ));
    let (fm_done, fm_rounds) = tokio::sync::watch::channel(0);
    svc.fm_rounds = fm_rounds;
    tokio::spawn(fm::run(db.clone(), log.clone(), svc.nm.clone(), fm_done));
    tokio::spawn(fence::run_fencer(svc.nm.clone(), db.clone(), log.clone()));
    tokio::spawn(shutdown::on_signal(
        db.clone(),
        log.clone(),
        opts.name.clone(),
        shutdown::Policy {
            own: opts.shutdown_policy,
            timeout: std::time::Duration::from_secs(opts.shutdown_timeout_s),
        },
        notify.clone(),
        tx.clone(),
    ));
    if let Some(every) = notify.watchdog_interval() {
        // Pinged by the main loop itself, when it answers (service.rs): a hung loop is
        // restarted by systemd.
        let probe = tx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every / 3);
            loop {
                tick.tick().await;
                if probe.send(Msg::SystemdProbe).await.is_err() {
                    return;
                }
            }
        });
    }
    tokio::spawn(watch_removal(db.clone(), tx.clone()));
    tokio::spawn(renew_certificate(
        db.clone(),
        tls.clone(),
        log.clone(),
        opts.data_dir.clone(),
    ));
    tokio::spawn(ca::keep(
        db.clone(),
        ca::CaKey::new(opts.data_dir.clone()),
        db.peer_client(),
        log.clone(),
        opts.name.clone(),
    ));
    let watchdog = match &opts.watchdog {
        Some((device, timeout)) => {
            let (w, signals) = arm_watchdog(&db, &log, &svc, tx.clone(), device, *timeout).await?;
            svc.watchdog = Some(signals);
            Some(w)
        }
        None => None,
    };
    svc.notify = notify.clone();
    notify.ready();
    notify.status("running: waiting for a lease from a quorum");
    let result = service::run(svc, rx).await;
    // A clean stop ended every resource: the magic close. After a failure the device is
    // left to fire.
    if result.is_ok()
        && let Some(w) = watchdog
    {
        w.disarm();
    }
    result.map_err(|e| anyhow::anyhow!("agent stopped: {e}"))
}

/// Opens and arms the watchdog, and makes the cluster's watchdog timeout at least this
/// node's (the others then wait for it before they record this node Down).
async fn arm_watchdog(
    db: &Db,
    log: &ClusterLog,
    svc: &Service,
    probe: mpsc::Sender<service::Msg>,
    device: &std::path::Path,
    timeout: std::time::Duration,
) -> anyhow::Result<(watchdog::Watchdog, std::sync::Arc<watchdog::Signals>)> {
    let timeout_ms = timeout.as_millis() as u64;
    if db.state().watchdog_ms < timeout_ms {
        let results = db
            .write(vec![Command::SetWatchdog { timeout_ms }])
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot record the watchdog timeout in the cluster: {e}")
            })?;
        for r in results {
            r.map_err(|e| anyhow::anyhow!("cannot record the watchdog timeout: {e}"))?;
        }
    }
    let dev = watchdog::open(device).map_err(anyhow::Error::msg)?;
    let armed = watchdog::Watchdog::start(dev, timeout, svc.nm.lease_watch(), probe)
        .map_err(anyhow::Error::msg)?;
    log.append([LogEntry::new(
        Component::NM,
        format!(
            "watchdog {} armed ({timeout_ms} ms): kicked while {}'s lease holds or nothing runs here; the cluster waits lease + {} ms + margin before it records a silent node Down",
            device.display(),
            svc.node,
            db.state().watchdog_ms
        ),
    )]);
    Ok(armed)
}

/// A new cluster (`--bootstrap`) or a new member of one (`--join`).
async fn form_or_join(
    opts: &AgentOptions,
    listen: &str,
    db: &Db,
    log: &ClusterLog,
    tls: &vigil_tls::Tls,
) -> anyhow::Result<()> {
    if opts.bootstrap {
        let id = format!(
            "{:016x}{:016x}",
            vigil_db::random_u64(),
            vigil_db::random_u64()
        );
        // The CA, and this node's certificate from it (its key made here, as every node's).
        let now = std::time::SystemTime::now();
        let ca = vigil_tls::Ca::generate(&id, now)?;
        let (key_pem, csr) = vigil_tls::new_key(&opts.name)?;
        let issued = ca.sign(&csr, &id, &opts.name, vigil_tls::node_cert_lifetime(), now)?;
        let creds = vigil_tls::Creds {
            ca_pem: ca.cert_pem.clone(),
            cert_pem: issued.cert_pem.clone(),
            key_pem,
        };
        creds.save(&opts.data_dir)?;
        ca.save_key(&opts.data_dir)?;
        tls.load(&creds)?;
        write_cluster_id(opts, &id)?;
        db.set_cluster_id(&id);
        db.initialize(listen).await?;
        let cmds = vec![
            Command::Bootstrap {
                cluster_name: opts.cluster_name.clone(),
                cluster_id: id.clone(),
            },
            Command::SetCa {
                ca: vigil_core::security::CaCert {
                    cert_pem: ca.cert_pem.clone(),
                    legacy_key_pem: None,
                },
            },
            Command::Certify {
                node: opts.name.clone(),
                cert: vigil_core::security::CertRecord {
                    fingerprint: issued.fingerprint.clone(),
                    not_before_s: issued.not_before_s,
                    not_after_s: issued.not_after_s,
                    previous: None,
                    pending: false,
                    issuer: Some(ca.hash()),
                },
            },
            Command::AddNode {
                name: opts.name.clone(),
                address: listen.to_string(),
            },
        ]
        .into_iter()
        .chain(opts.witness.then(|| Command::MarkWitness {
            name: opts.name.clone(),
        }))
        .collect::<Vec<_>>();
        for r in db
            .write(cmds)
            .await
            .map_err(|e| anyhow::anyhow!("cannot bootstrap: {e}"))?
        {
            r.map_err(|e| anyhow::anyhow!("cannot bootstrap: {e}"))?;
        }
        log.append([LogEntry::new(
            Component::DB,
            format!(
                "cluster {} (id {id}) created with node {}",
                opts.cluster_name, opts.name
            ),
        )]);
        return Ok(());
    }
    let seed = opts.join.as_deref().expect("checked by the caller");
    let token = opts.token.as_deref().expect("checked at the start");
    let (id, creds) = membership::certify(seed, token, &opts.name).await?;
    creds.save(&opts.data_dir)?;
    tls.load(&creds)?;
    write_cluster_id(opts, &id)?;
    db.set_cluster_id(&id);
    membership::join(&db.peer_client(), seed, &opts.name, listen, opts.witness).await?;
    // Our own AddNode arrives with the log.
    let mut applied = db.subscribe();
    let name = opts.name.clone();
    let seen = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            if db.state().nodes.contains_key(&name) {
                return;
            }
            if applied.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    if seen.is_err() {
        bail!("joined through {seed}, but this node's registration did not arrive within 30 s");
    }
    log.append([LogEntry::new(
        Component::NM,
        format!("node {} joined the cluster through {seed}", opts.name),
    )]);
    Ok(())
}

/// A data dir belongs to one node name: starting it under another name would make a second
/// node with the first one's Raft log.
fn check_identity(opts: &AgentOptions) -> anyhow::Result<()> {
    let path = opts.data_dir.join("node-name");
    match std::fs::read_to_string(&path) {
        Ok(name) if name.trim() == opts.name => Ok(()),
        Ok(name) => bail!(
            "data dir {} belongs to node {:?}, not {:?}; use the same --name",
            opts.data_dir.display(),
            name.trim(),
            opts.name
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            vigil_core::names::validate_name("node", &opts.name).map_err(|e| anyhow::anyhow!(e))?;
            std::fs::write(&path, format!("{}\n", opts.name))
                .with_context(|| format!("cannot write {}", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Stops the agent once the voters refuse it as one of theirs (it was removed while it was
/// away, and did not hear the leader's notice).
async fn watch_removal(db: Db, main: mpsc::Sender<Msg>) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        if let Some(reason) = db.removed() {
            let _ = main.send(Msg::Removed { reason }).await;
            return;
        }
    }
}

/// Renews this node's certificate in the last third of its life (or at once during a CA
/// rotation, from the new CA), at the leader, with the same key, and swaps it in without a
/// restart. A failure is logged (once per reason) and shown in status, and tried again.
/// The one writer of the node's credentials files: it also makes them trust the CAs the
/// database lists (`ca::trust`).
async fn renew_certificate(db: Db, tls: vigil_tls::Tls, log: ClusterLog, dir: PathBuf) {
    let check = (vigil_tls::node_cert_lifetime() / 20).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    );
    let mut last = tokio::time::Instant::now();
    loop {
        // A rotation is noticed within a second; the lifetime is checked every `check`.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let Some(me) = tls.identity() else { continue };
        ca::trust(&dir, &tls, &db.state());
        let now = vigil_tls::unix_s(std::time::SystemTime::now());
        // During a CA rotation, until this node's own certificate is from the new CA.
        let state = db.state();
        let rotating = state.security.rotation.as_ref().is_some_and(|r| {
            vigil_tls::Creds::load(&dir)
                .ok()
                .flatten()
                .and_then(|c| ca::issuer(&state, &c.cert_pem))
                .as_ref()
                != Some(&r.hash)
        });
        let due =
            last.elapsed() >= check && vigil_tls::renewal_due(me.not_before_s, me.not_after_s, now);
        if !rotating && !due {
            continue;
        }
        last = tokio::time::Instant::now();
        match renew_once(&db, &dir, &me.node).await {
            Ok(creds) => match tls.load(&creds) {
                Ok(new) => {
                    tls.set_renewal_error(None);
                    log.append([LogEntry::new(
                        Component::NM,
                        format!(
                            "certificate of {} renewed; valid until Unix time {}",
                            new.node, new.not_after_s
                        ),
                    )]);
                }
                Err(e) => tls.set_renewal_error(Some(e.to_string())),
            },
            Err(why) => {
                let why = format!(
                    "{why}; the certificate expires at Unix time {} ({} s from now)",
                    me.not_after_s,
                    me.not_after_s.saturating_sub(now)
                );
                if tls.renewal_error().as_deref().map(|w| w.split(';').next())
                    != Some(why.split(';').next())
                {
                    log.append([LogEntry::new(
                        Component::NM,
                        format!("certificate renewal failed: {why}"),
                    )]);
                }
                tls.set_renewal_error(Some(why));
            }
        }
    }
}

async fn renew_once(
    db: &Db,
    dir: &std::path::Path,
    name: &str,
) -> Result<vigil_tls::Creds, String> {
    let old = vigil_tls::Creds::load(dir)
        .map_err(|e| e.to_string())?
        .ok_or("the node's credentials are gone from its data dir")?;
    let csr = vigil_tls::request_for(&old.key_pem, name).map_err(|e| e.to_string())?;
    let leader = db.leader_addr().ok_or("no leader is known")?;
    let resp = db
        .peer_client()
        .post(format!("https://{leader}/v1/cluster/renew"))
        .json(&serde_json::json!({ "csr": csr }))
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| {
            format!(
                "cannot reach the leader at {leader}: {}",
                membership::error_chain(&e)
            )
        })?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        return Err(format!(
            "the leader at {leader} refused: {}",
            body["error"].as_str().unwrap_or("no reason given")
        ));
    }
    let creds = vigil_tls::Creds {
        cert_pem: body["cert_pem"].as_str().unwrap_or_default().to_string(),
        ca_pem: ca::bundle(&db.state()),
        ..old
    };
    vigil_tls::Tls::default()
        .load(&creds)
        .map_err(|e| format!("the leader's answer: {e}"))?;
    creds.save(dir).map_err(|e| e.to_string())?;
    Ok(creds)
}

/// The file in the data dir that holds the id of the node's cluster.
fn cluster_id_path(opts: &AgentOptions) -> PathBuf {
    opts.data_dir.join("cluster-id")
}

fn read_cluster_id(opts: &AgentOptions) -> anyhow::Result<Option<String>> {
    let path = cluster_id_path(opts);
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(Some(id.trim().to_string())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn write_cluster_id(opts: &AgentOptions, id: &str) -> anyhow::Result<()> {
    let path = cluster_id_path(opts);
    std::fs::write(&path, format!("{id}\n"))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The agent's Unix socket in its data dir: local root's way in, without a token.
pub const SOCKET: &str = "vigil.sock";

/// Binds the agent's Unix socket (mode 0600: only its owner, root, may connect; the agent
/// checks the peer's uid as well).
fn local_socket(opts: &AgentOptions) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = opts.data_dir.join(SOCKET);
    // A socket left by an agent that died (the data dir's lock is ours: no agent runs here).
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} private", path.display()))?;
    Ok(listener)
}

/// The data dir is its owner's only (0700), and so is each file in it (0600: the database,
/// the keys, the cluster log). Called at the start (for files of an older agent) and once
/// the agent's files exist. (The agent keeps the default umask: its resource processes
/// inherit it, and their files are theirs to decide.)
fn private_data_dir(opts: &AgentOptions) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = &opts.data_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data dir {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make data dir {} private", dir.display()))?;
    for entry in std::fs::read_dir(dir)?.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_file() && mode & 0o077 != 0 {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode & 0o700))
                .with_context(|| format!("cannot make {} private", entry.path().display()))?;
        }
    }
    Ok(())
}

/// One agent per data dir: a second one would run every resource twice.
fn lock_data_dir(opts: &AgentOptions) -> anyhow::Result<std::fs::File> {
    let path = opts.data_dir.join("agent.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        bail!(
            "data dir {} is in use by another vigil agent (lock {} is held)",
            opts.data_dir.display(),
            path.display()
        );
    }
    Ok(file)
}
