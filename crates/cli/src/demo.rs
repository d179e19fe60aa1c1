//! `vigil demo`: a real agent in a temporary directory, a tiny HTTP service run by the
//! cluster, the service killed, and the recovery told from the cluster log.
//!
//! One node for now: the recovery shown is restart in place. (Failover to another node
//! arrives with the replicated cluster.)

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};

use crate::client::Client;

const SERVICE: &str = r#"
import http.server, os, sys
class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("hello from node %s (resource %s, epoch %s, pid %d)\n" % (
            os.environ["VIGIL_NODE"], os.environ["VIGIL_RESOURCE"],
            os.environ["VIGIL_EPOCH"], os.getpid())).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Hello).serve_forever()
"#;

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct AgentProcess {
    child: Child,
    keep: bool,
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_agent(dir: &Path, listen: &str, keep: bool) -> anyhow::Result<AgentProcess> {
    let exe = std::env::current_exe().context("cannot find the vigil binary")?;
    let stderr = std::fs::File::create(dir.join("node1.stderr"))?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "agent",
        "--name",
        "node1",
        "--listen",
        listen,
        "--bootstrap",
        "--data-dir",
    ])
    .arg(dir.join("node1"))
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(stderr);
    if keep {
        use std::os::unix::process::CommandExt;
        // Its own process group: a Ctrl-C in this terminal does not stop a kept cluster.
        cmd.process_group(0);
    }
    Ok(AgentProcess {
        child: cmd.spawn().context("cannot start vigil agent")?,
        keep,
    })
}

async fn wait_for<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> anyhow::Result<T> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = probe().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The resource's (state, pid) from the status.
async fn resource(c: &Client, name: &str) -> Option<(String, Option<u64>)> {
    let status = c.get("/v1/status").await.ok()?;
    let r = status["groups"]
        .as_array()?
        .iter()
        .flat_map(|g| g["resources"].as_array().cloned().unwrap_or_default())
        .find(|r| r["name"] == name)?;
    Some((r["state"].as_str()?.to_string(), r["pid"].as_u64()))
}

async fn ask(url: &str) -> String {
    match reqwest::get(url).await {
        Ok(resp) => resp.text().await.unwrap_or_default().trim().to_string(),
        Err(e) => format!("(no answer: {e})"),
    }
}

fn demo_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("vigil-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

pub async fn run(keep: bool) -> anyhow::Result<()> {
    let dir = demo_dir()?;
    let listen = format!("127.0.0.1:{}", free_port()?);
    let api = format!("http://{listen}");
    println!("== starting a one-node cluster in {}", dir.display());
    let agent = start_agent(&dir, &listen, keep)?;
    let c = Client::new(&api)?;
    wait_for("the agent answers", async || c.get("/v1/status").await.ok()).await?;
    println!(
        "   agent node1 pid {} serving its API on {api}",
        agent.child.id()
    );

    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}/");
    c.post("/v1/groups", json!({ "name": "demo" })).await?;
    let command = json!(["python3", "-c", SERVICE, port.to_string()]).to_string();
    let params = json!({ "command": command, "check_http": url });
    let props = json!({ "restart_delay_ms": 100, "looks_alive_ms": 1000, "is_alive_ms": 5000 });
    c.post("/v1/resources", json!({ "name": "hello", "group": "demo", "type": "process", "params": params, "props": props }))
        .await?;
    c.post("/v1/groups/demo/online", json!({})).await?;
    let pid = wait_for("hello is Online", async || {
        match resource(&c, "hello").await {
            Some((s, Some(pid))) if s == "Online" => Some(pid),
            _ => None,
        }
    })
    .await?;
    println!("== group demo is Online; GET {url}");
    println!("   {}", ask(&url).await);

    let after = last_seq(&c).await?;
    println!("== killing the service (pid {pid}) with SIGKILL");
    let killed_at = SystemTime::now();
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        rustix::process::kill_process(p, rustix::process::Signal::KILL)?;
    }
    wait_for("hello is Online again", async || {
        match resource(&c, "hello").await {
            Some((s, Some(new))) if s == "Online" && new != pid => Some(()),
            _ => None,
        }
    })
    .await?;
    println!("== what the cluster log recorded (ms after the kill):");
    let records = c.get(&format!("/v1/log?after={after}&group=demo")).await?;
    for r in records.as_array().cloned().unwrap_or_default() {
        print_relative(&r, killed_at);
    }
    println!("== GET {url}");
    println!("   {}", ask(&url).await);
    if keep {
        println!("== the cluster keeps running (--keep):");
        println!("   API      {api}   (export VIGIL_ENDPOINT={api}; vigil status)");
        println!("   service  {url}");
        println!("   data     {}", dir.display());
        println!("   stop it  kill {}", agent.child.id());
    } else {
        drop(agent);
        let _ = std::fs::remove_dir_all(&dir);
        println!("== agent stopped; {} removed", dir.display());
    }
    Ok(())
}

async fn last_seq(c: &Client) -> anyhow::Result<u64> {
    let recs = c.get("/v1/log?after=0&limit=10000").await?;
    Ok(recs
        .as_array()
        .ok_or_else(|| anyhow!("log is not a list"))?
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .max()
        .unwrap_or(0))
}

fn print_relative(r: &Value, t0: SystemTime) {
    let at = r["time"]
        .as_str()
        .and_then(|t| humantime::parse_rfc3339(t).ok());
    let ms = at
        .and_then(|t| t.duration_since(t0).ok())
        .map_or(0.0, |d| d.as_secs_f64() * 1e3);
    let s = |k: &str| r[k].as_str().unwrap_or_default();
    let change = if s("from").is_empty() {
        String::new()
    } else {
        format!("{} -> {}  ", s("from"), s("to"))
    };
    println!(
        "   +{ms:>7.1} ms  {:<3} {:<6} {change}{}",
        s("component"),
        s("resource"),
        s("reason")
    );
}
