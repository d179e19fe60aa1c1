//! Group commit on the leader: writes that arrive while earlier ones are still being
//! committed share one log entry.
//!
//! openraft appends every proposal to the log on its own (a durable redb commit each), one
//! after another in its core task, so under many concurrent writers that task, not the disk
//! or the network, limits throughput. Commands in one entry are applied one by one, each
//! with its own result, exactly as if each writer's commands had been an entry of their own:
//! joining writers changes nothing but the number of entries.
//!
//! A lone write goes out at once; only while [`IN_FLIGHT`] proposals are outstanding do new
//! writes wait, and then they leave together with the next free slot.

use std::sync::Arc;

use crate::types::{Request, TypeConfig, Write};
use openraft::Raft;
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Proposals outstanding at once (so the Raft task never waits for one to come back before
/// it can append the next).
const IN_FLIGHT: usize = 2;

/// At most this many commands in one entry.
const MAX_COMMANDS: usize = 512;

/// How a proposal ended, for every writer in it.
pub(crate) type Outcome = Result<(u64, Vec<Result<(), vigil_core::command::ApplyError>>), Failed>;

/// Why a proposal was not committed here.
#[derive(Clone, Debug)]
pub(crate) enum Failed {
    /// This node is not the leader; `Some(addr)` is the one it knows.
    NotLeader(Option<String>),
    Other(String),
}

struct Waiting {
    write: Write,
    reply: oneshot::Sender<Outcome>,
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub(crate) struct Batcher {
    tx: mpsc::UnboundedSender<Waiting>,
}

impl Batcher {
    /// Starts the batching task for `raft`; it ends when every `Batcher` is dropped.
    pub(crate) fn start(raft: Raft<TypeConfig>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, rx));
        Self { tx }
    }

    /// Proposes `write` and waits for the outcome (the caller bounds the wait).
    pub(crate) async fn propose(&self, write: Write) -> Outcome {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Waiting { write, reply })
            .map_err(|_| Failed::Other("the Raft task has stopped".to_string()))?;
        rx.await
            .map_err(|_| Failed::Other("the Raft task has stopped".to_string()))?
    }
}

async fn run(raft: Raft<TypeConfig>, mut rx: mpsc::UnboundedReceiver<Waiting>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        // Writes that arrive while every slot is taken queue up behind this one.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // A writer that stopped waiting (its write timed out, e.g. while there was no quorum)
        // was told its write failed: it must not be proposed afterwards.
        let mut batch: Vec<Waiting> = std::iter::once(first)
            .filter(|w| !w.reply.is_closed())
            .collect();
        let mut count: usize = batch.iter().map(|w| w.write.cmds.len()).sum();
        while count < MAX_COMMANDS {
            match rx.try_recv() {
                Ok(w) if w.reply.is_closed() => {}
                Ok(w) => {
                    count += w.write.cmds.len();
                    batch.push(w);
                }
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let _slot = slot;
            propose(&raft, batch).await;
        });
    }
}

/// One entry for the whole batch; each writer gets its own commands' results back.
async fn propose(raft: &Raft<TypeConfig>, batch: Vec<Waiting>) {
    let request = Request {
        writes: batch.iter().map(|w| w.write.clone()).collect(),
        cmds: Vec::new(),
    };
    match raft.client_write(request).await {
        Ok(resp) => {
            let index = resp.log_id.index;
            let mut results = resp.data.results.into_iter();
            for w in batch {
                let mine = results.by_ref().take(w.write.cmds.len()).collect();
                let _ = w.reply.send(Ok((index, mine)));
            }
        }
        Err(e) => {
            let failed = match e {
                RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                    Failed::NotLeader(f.leader_node.map(|n| n.addr))
                }
                other => Failed::Other(other.to_string()),
            };
            for w in batch {
                let _ = w.reply.send(Err(failed.clone()));
            }
        }
    }
}
