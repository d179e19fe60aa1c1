//! Agent ↔ RHS protocol over a Unix stream socket: frames of a 4-byte big-endian length and
//! a JSON message. Both sides send [`Hello`](ToHost::Hello) first with [`VERSION`]; a
//! mismatch ends the connection with an error naming both versions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vigil_core::rcm::Report;

pub const VERSION: u32 = 3;

/// CLOCK_MONOTONIC now, in nanoseconds: comparable between processes on one machine.
pub fn mono_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}
/// Largest frame either side accepts.
pub const MAX_FRAME_BYTES: usize = 4 << 20;

/// Settings the RHS needs from a resource's properties.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checks {
    pub looks_alive_ms: u64,
    pub is_alive_ms: u64,
    pub deadlock_timeout_ms: u64,
}

/// Where a resource's cgroup is, and its limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupSpec {
    pub dir: String,
    #[serde(default)]
    pub limits: Limits,
}

/// A resource's cgroup limits (0: none), from its properties.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub memory_max_mb: u64,
    pub cpu_weight: u64,
    pub pids_max: u64,
}

/// Where a VM's live migration finds this node's certificate, and the name every member's
/// certificate carries (the source checks the target's against it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationTls {
    /// Holds `ca.pem`, `node.pem` and `node.key` (the agent's data dir).
    pub creds_dir: String,
    pub hostname: String,
}

/// Agent → RHS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum ToHost {
    Hello {
        version: u32,
    },
    /// Load a resource (replacing an earlier instance of the same name, which is closed
    /// first). `instance` numbers this opening; every report about it carries the number, so
    /// the agent can drop late reports about an instance it has replaced.
    Open {
        resource: String,
        instance: u64,
        type_name: String,
        /// A plugin type's shared library (from its registration).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        library: Option<String>,
        params: BTreeMap<String, String>,
        /// The parameters whose values are secret: no report or reply repeats them.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        secret: Vec<String>,
        checks: Checks,
        node: String,
        /// This node's API address (`HOST:PORT`).
        #[serde(default)]
        node_address: String,
        epoch: u64,
        /// Where the resource's own output goes.
        log_path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        migration_tls: Option<Box<MigrationTls>>,
        /// The resource's cgroup (v2), where the node offers one: the host makes it and
        /// starts every process of the resource in it (`cgroup.rs`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cgroup: Option<Box<CgroupSpec>>,
    },
    Online {
        resource: String,
    },
    Offline {
        resource: String,
    },
    Terminate {
        resource: String,
    },
    /// Live move, on the source: migrate the running instance to node `target`. Answered
    /// with a `Migrated` or `MigrateFailed` status.
    MigrateTo {
        resource: String,
        target: String,
        /// The target's API address (`HOST:PORT`).
        #[serde(default)]
        target_address: String,
        /// Save and restore rather than live.
        #[serde(default)]
        quick: bool,
    },
    /// Live move, on the target, before the source migrates: get ready to receive the
    /// instance from `source`. Answered only on failure (a `MigrateFailed` status).
    MigratePrepare {
        resource: String,
        source: String,
        #[serde(default)]
        quick: bool,
    },
    /// Live move, on the target: complete the migration from `source`; answered like Online.
    MigrateFrom {
        resource: String,
        source: String,
        #[serde(default)]
        quick: bool,
    },
    /// A type-specific request (the seed's ResourceControl); answered by `ControlReply`.
    Control {
        resource: String,
        id: u64,
        request: String,
    },
    Close {
        resource: String,
    },
    /// The node's lease runs until this CLOCK_MONOTONIC instant (ns; one clock for every
    /// process on the machine). Past it without a newer one, the RHS terminates everything
    /// itself: a stopped or hung agent cannot keep resources running. `None`: no lease.
    Lease {
        until_mono_ns: Option<u64>,
    },
    /// Terminate every resource and exit.
    Shutdown,
}

/// How often an RHS says it is alive; the agent kills one that stays silent much longer.
pub const HEARTBEAT_MS: u64 = 1_000;

/// RHS → agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum FromHost {
    Hello {
        version: u32,
        pid: u32,
    },
    /// Sent every [`HEARTBEAT_MS`] by the RHS's own loop: silence means it is wedged.
    Alive,
    Status {
        resource: String,
        instance: u64,
        report: Report,
        reason: String,
        pid: Option<u32>,
    },
    /// The answer to `ToHost::Control` number `id`.
    ControlReply {
        id: u64,
        result: Result<String, String>,
    },
    /// A call did not return within the deadlock timeout; the RHS exits right after this.
    Deadlock {
        resource: String,
        instance: u64,
        entry_point: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("RHS socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("RHS frame of {0} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("RHS sent a message that is not valid: {0}")]
    Decode(#[from] serde_json::Error),
}

pub async fn write_frame<W, M>(w: &mut W, msg: &M) -> Result<(), FrameError>
where
    W: AsyncWriteExt + Unpin,
    M: Serialize,
{
    let body = serde_json::to_vec(msg)?;
    if body.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame).await?;
    Ok(())
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub async fn read_frame<R, M>(r: &mut R) -> Result<Option<M>, FrameError>
where
    R: AsyncReadExt + Unpin,
    M: for<'de> Deserialize<'de>,
{
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some(serde_json::from_slice(&body)?))
}

/// Reads frames from the agent's socket, keeping what it has read of a frame between calls:
/// [`FrameReader::next`] can be cancelled at any await without losing a byte, and
/// [`FrameReader::ready`] takes every frame already waiting without blocking.
pub struct FrameReader {
    rd: tokio::net::unix::OwnedReadHalf,
    buf: Vec<u8>,
    eof: bool,
}

impl FrameReader {
    pub fn new(rd: tokio::net::unix::OwnedReadHalf) -> Self {
        Self {
            rd,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// A complete frame at the front of the buffer, taken out.
    fn take<M: for<'de> Deserialize<'de>>(&mut self) -> Result<Option<M>, FrameError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MAX_FRAME_BYTES {
            return Err(FrameError::TooLarge(len));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let msg = serde_json::from_slice(&self.buf[4..4 + len])?;
        self.buf.drain(..4 + len);
        Ok(Some(msg))
    }

    /// Reads what the socket has now; whether it is at its end. `direct`: ask the kernel even
    /// if tokio has not seen the socket become readable yet (after this process was stopped,
    /// its timer can be handled before its I/O events).
    fn fill(&mut self, direct: bool) -> Result<bool, FrameError> {
        use std::os::fd::AsFd;
        let mut chunk = [0u8; 64 * 1024];
        loop {
            let read = if direct {
                let fd = self.rd.as_ref().as_fd();
                rustix::io::read(fd, &mut chunk).map_err(std::io::Error::from)
            } else {
                self.rd.try_read(&mut chunk)
            };
            match read {
                Ok(0) => {
                    self.eof = true;
                    return Ok(true);
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The next frame; `Ok(None)` at a clean end of stream.
    pub async fn next<M: for<'de> Deserialize<'de>>(&mut self) -> Result<Option<M>, FrameError> {
        loop {
            if let Some(m) = self.take()? {
                return Ok(Some(m));
            }
            if self.eof {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            self.rd.readable().await?;
            self.fill(false)?;
        }
    }

    /// Every complete frame already on the socket, without waiting for more.
    pub fn ready<M: for<'de> Deserialize<'de>>(&mut self) -> Result<Vec<M>, FrameError> {
        if !self.eof {
            self.fill(true)?;
        }
        let mut frames = Vec::new();
        while let Some(m) = self.take()? {
            frames.push(m);
        }
        Ok(frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_limits_hold() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let msg = FromHost::Status {
            resource: "web".into(),
            instance: 3,
            report: Report::OnlinePending { progress: true },
            reason: "waiting".into(),
            pid: Some(7),
        };
        write_frame(&mut a, &msg).await.unwrap();
        let got: Option<FromHost> = read_frame(&mut b).await.unwrap();
        assert_eq!(got, Some(msg));
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let err = read_frame::<_, FromHost>(&mut b).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(_)), "{err}");
        drop(a);
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&3u32.to_be_bytes()).await.unwrap();
        a.write_all(b"{x}").await.unwrap();
        drop(a);
        assert!(matches!(
            read_frame::<_, FromHost>(&mut b).await,
            Err(FrameError::Decode(_))
        ));
        assert!(read_frame::<_, FromHost>(&mut b).await.unwrap().is_none());
    }
}
