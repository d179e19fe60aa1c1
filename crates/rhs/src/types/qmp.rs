//! A small blocking QMP client (the QEMU Machine Protocol): line-delimited JSON over a Unix
//! socket. After the greeting and `qmp_capabilities`, commands carry an `id` and are answered
//! by `return` or `error`; asynchronous `event`s may arrive at any time, also between a
//! command and its answer, and are kept until taken. QEMU serves one client per socket, so
//! one connection carries both commands and events.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Longest line QEMU may send (a `query-*` answer is a few kB).
const MAX_LINE: usize = 4 << 20;

pub struct Qmp {
    stream: UnixStream,
    buf: Vec<u8>,
    events: VecDeque<Value>,
    next_id: u64,
}

impl Qmp {
    /// Connects to the socket at `path` (retrying until `limit`: QEMU creates it shortly
    /// after it starts), reads the greeting and enters command mode.
    pub fn connect(path: &Path, limit: Duration) -> Result<Qmp, String> {
        let deadline = Instant::now() + limit;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!(
                        "QMP socket {} did not accept within {} ms: {e}",
                        path.display(),
                        limit.as_millis()
                    ));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        let mut q = Qmp {
            stream,
            buf: Vec::new(),
            events: VecDeque::new(),
            next_id: 1,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let greeting = q
            .read_line(left.max(Duration::from_millis(100)))
            .map_err(|e| format!("QMP socket {}: no greeting: {e}", path.display()))?;
        if greeting.get("QMP").is_none() {
            return Err(format!("expected the QMP greeting, got {greeting}"));
        }
        q.execute("qmp_capabilities", None, limit)?;
        Ok(q)
    }

    /// Runs `command` and returns its `return` value; an `error` answer is an error naming
    /// its class and description.
    pub fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        limit: Duration,
    ) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.stream
            .set_write_timeout(Some(limit.max(Duration::from_millis(1))))
            .map_err(|e| e.to_string())?;
        self.stream
            .write_all(line.as_bytes())
            .map_err(|e| format!("QMP {command}: cannot send: {e}"))?;
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "QMP {command}: no answer within {} ms",
                    limit.as_millis()
                ));
            }
            let v = self
                .read_line(left)
                .map_err(|e| format!("QMP {command}: {e}"))?;
            if v.get("event").is_some() {
                self.events.push_back(v);
                continue;
            }
            if v.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            let e = &v["error"];
            return Err(format!(
                "QMP {command}: {} ({})",
                e["desc"].as_str().unwrap_or("error without a description"),
                e["class"].as_str().unwrap_or("?")
            ));
        }
    }

    /// Reads whatever QEMU has sent without waiting; `Err` when the connection is gone
    /// (QEMU exited).
    pub fn poll(&mut self) -> Result<(), String> {
        self.stream
            .set_nonblocking(true)
            .map_err(|e| e.to_string())?;
        let result = self.fill();
        let _ = self.stream.set_nonblocking(false);
        match result {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.to_string()),
        }
        while let Some(v) = self.take_line()? {
            if v.get("event").is_some() {
                self.events.push_back(v);
            }
        }
        Ok(())
    }

    /// The events received so far, oldest first.
    pub fn take_events(&mut self) -> Vec<Value> {
        self.events.drain(..).collect()
    }

    /// A descriptor that becomes readable when QEMU sends something (an event) or goes away.
    pub fn event_fd(&self) -> Option<OwnedFd> {
        self.stream.as_fd().try_clone_to_owned().ok()
    }

    fn read_line(&mut self, limit: Duration) -> Result<Value, String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = self.take_line()? {
                return Ok(v);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no answer within {} ms", limit.as_millis()));
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|e| e.to_string())?;
            match self.fill() {
                Ok(()) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// One read into the buffer; the end of the stream is an error.
    fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "QEMU closed the QMP connection",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    fn take_line(&mut self) -> Result<Option<Value>, String> {
        let Some(end) = self.buf.iter().position(|b| *b == b'\n') else {
            if self.buf.len() > MAX_LINE {
                return Err(format!("QMP line longer than {MAX_LINE} bytes"));
            }
            return Ok(None);
        };
        let line: Vec<u8> = self.buf.drain(..=end).collect();
        serde_json::from_slice(&line)
            .map(Some)
            .map_err(|e| format!("QMP sent something that is not JSON ({e})"))
    }
}
