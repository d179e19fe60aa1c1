//! systemd's notification protocol (`sd_notify`): `READY=1`, `STATUS=…`, `WATCHDOG=1` and
//! `STOPPING=1` as datagrams to the socket named by `$NOTIFY_SOCKET`. Without that variable
//! (the agent is not run by a `Type=notify` unit) every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where notifications go, if anywhere; cheap to clone.
#[derive(Clone, Default)]
pub struct Notifier {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    socket: UnixDatagram,
    addr: std::os::unix::net::SocketAddr,
    /// `$WATCHDOG_USEC`, when systemd watches this process.
    watchdog: Option<Duration>,
    /// The last `STATUS=` sent (sent again only when it changes).
    status: Mutex<String>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` and `$WATCHDOG_USEC` (for this process: `$WATCHDOG_PID`) and
    /// removes them from the environment, so that no resource started later takes them for
    /// its own.
    ///
    /// # Safety
    /// Changes the environment: call it before any other thread runs.
    pub unsafe fn take_from_env() -> Result<Self, String> {
        let path = std::env::var_os("NOTIFY_SOCKET");
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        // SAFETY: the caller guarantees no other thread reads or writes the environment.
        unsafe {
            for v in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
                std::env::remove_var(v);
            }
        }
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = path.to_string_lossy().into_owned();
        let addr = match text.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            }
            None => std::os::unix::net::SocketAddr::from_pathname(&text),
        }
        .map_err(|e| format!("NOTIFY_SOCKET={text:?} is no usable socket address: {e}"))?;
        let own = std::process::id().to_string();
        let watchdog = match (usec, pid) {
            (Some(_), Some(p)) if p != own => None,
            (Some(u), _) => {
                let us: u64 = u
                    .parse()
                    .map_err(|_| format!("WATCHDOG_USEC={u:?} is not a number of microseconds"))?;
                (us > 0).then(|| Duration::from_micros(us))
            }
            (None, _) => None,
        };
        let socket = UnixDatagram::unbound()
            .map_err(|e| format!("cannot make a socket for NOTIFY_SOCKET: {e}"))?;
        Ok(Self {
            inner: Some(Arc::new(Inner {
                socket,
                addr,
                watchdog,
                status: Mutex::new(String::new()),
            })),
        })
    }

    fn send(&self, message: &str) {
        if let Some(i) = &self.inner
            && let Err(e) = i.socket.send_to_addr(message.as_bytes(), &i.addr)
        {
            tracing::warn!("cannot notify systemd ({message:?}): {e}");
        }
    }

    /// The node has its database open and has joined or loaded its cluster.
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// What the agent does or waits for, as `systemctl status` shows it.
    pub fn status(&self, text: &str) {
        let Some(i) = &self.inner else {
            return;
        };
        let mut last = i.status.lock().unwrap_or_else(|p| p.into_inner());
        if *last != text {
            *last = text.to_string();
            self.send(&format!("STATUS={text}"));
        }
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// The main loop made progress (see `service::run`).
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// How often systemd expects `WATCHDOG=1`, if it watches.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.inner.as_ref().and_then(|i| i.watchdog)
    }
}
