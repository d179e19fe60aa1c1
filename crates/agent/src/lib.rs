//! The cluster service, `vigil agent` (the seed's clussvc.exe): one per node.
//!
//! - [`service`]: the main loop that owns the cluster database, runs the RCM (from the pure
//!   core) and executes its actions.
//! - [`hosts`]: starts and supervises the RHS processes (`vigil rhs`).
//! - [`api`]: the HTTP/JSON API the CLI talks to; [`view`]: what it returns for status.
//! - [`clusterlog`]: the cluster log, one JSON line per state change.
//!
//! Not here: decisions (restart policy, dependency order, placement live in `vigil-core`),
//! health checks and resource types (in `vigil-rhs`, in other processes).

pub mod api;
pub mod clusterlog;
pub mod hosts;
pub mod service;
pub mod view;

use std::path::PathBuf;

use anyhow::{Context, bail};
use tokio::sync::mpsc;
use vigil_core::command::Command;
use vigil_core::event::{Component, LogEntry};
use vigil_db::Database;

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
    pub cluster_name: String,
    /// An RHS silent for this long (no heartbeat) is killed and replaced.
    pub rhs_silence_ms: u64,
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(opts: AgentOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("cannot create data dir {}", opts.data_dir.display()))?;
    let _lock = lock_data_dir(&opts)?;
    let mut db = Database::open(&opts.data_dir.join("cluster.redb"))?;
    let log = ClusterLog::open(&opts.data_dir, &opts.name)
        .with_context(|| format!("cannot open the cluster log in {}", opts.data_dir.display()))?;
    prepare_database(&mut db, &opts, &log)?;
    let listener = tokio::net::TcpListener::bind(&opts.listen)
        .await
        .with_context(|| format!("cannot listen on {}", opts.listen))?;
    let listen = listener.local_addr()?.to_string();
    let (host_tx, mut host_rx) = mpsc::channel(INPUT_QUEUE);
    let (tx, rx) = mpsc::channel::<Msg>(INPUT_QUEUE);
    let svc = Service::new(&opts, &listen, db, log.clone(), host_tx)?;
    let router = api::router(tx.clone(), log.clone(), svc.subscribe());
    log.append([LogEntry::new(
        Component::NM,
        format!(
            "agent {} up, API on http://{listen}, pid {}",
            opts.name,
            std::process::id()
        ),
    )]);
    eprintln!("vigil agent {} listening on http://{listen}", opts.name);
    let forward = tx.clone();
    tokio::spawn(async move {
        while let Some(e) = host_rx.recv().await {
            if forward.send(Msg::Host(e)).await.is_err() {
                return;
            }
        }
    });
    let stop = tx.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = stop.send(Msg::Shutdown).await;
    });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!("API server stopped: {e}");
        }
    });
    service::run(svc, rx)
        .await
        .map_err(|e| anyhow::anyhow!("agent stopped: {e}"))
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
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

/// Creates the cluster on `--bootstrap`, or checks that the data dir belongs to this node.
fn prepare_database(
    db: &mut Database,
    opts: &AgentOptions,
    log: &ClusterLog,
) -> anyhow::Result<()> {
    let dir = opts.data_dir.display();
    match (&db.state().cluster_name, opts.bootstrap) {
        (None, false) => bail!(
            "data dir {dir} holds no cluster; start the first node with --bootstrap to create one"
        ),
        (Some(name), true) => bail!(
            "data dir {dir} already holds cluster {name:?}; refusing --bootstrap over existing data (start without --bootstrap)"
        ),
        (None, true) => {
            let cmds = [
                Command::Bootstrap {
                    cluster_name: opts.cluster_name.clone(),
                },
                Command::AddNode {
                    name: opts.name.clone(),
                    address: opts.listen.clone(),
                },
            ];
            for r in db.submit(&cmds)? {
                r.map_err(|e| anyhow::anyhow!("cannot bootstrap: {e}"))?;
            }
            log.append([LogEntry::new(
                Component::DB,
                format!(
                    "cluster {} created with node {}",
                    opts.cluster_name, opts.name
                ),
            )]);
        }
        (Some(_), false) => {
            if !db.state().nodes.contains_key(&opts.name) {
                let known: Vec<_> = db.state().nodes.keys().cloned().collect();
                bail!(
                    "data dir {dir} belongs to node(s) {}, not {:?}; use the same --name",
                    known.join(", "),
                    opts.name
                );
            }
        }
    }
    Ok(())
}
