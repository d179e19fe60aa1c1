//! `vigil demo`: three real agents in a temporary directory, a tiny HTTP service run by the
//! cluster that answers with the node serving it, the owner node killed, and the failover
//! told from the cluster logs; the service then answers from its new node.

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
    name: String,
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
        while Instant::now() < deadline && !matches!(self.child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A killed agent leaves its resources' cgroup (and what a daemon left in it).
        vigil_agent::cgroups::end_agent(&self.name, self.child.id());
    }
}

fn start_agent(
    dir: &Path,
    name: &str,
    listen: &str,
    join: Option<(&str, &str)>,
    keep: bool,
) -> anyhow::Result<AgentProcess> {
    let exe = std::env::current_exe().context("cannot find the vigil binary")?;
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.stderr")))?;
    let mut cmd = Command::new(exe);
    cmd.args(["agent", "--name", name, "--listen", listen, "--data-dir"])
        .arg(dir.join(name))
        // A throw-away cluster: its end moves nothing (a config file of the machine is not
        // read).
        .args(["--shutdown-policy", "freeze"])
        .env("VIGIL_CONFIG", "/dev/null")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    match join {
        Some((seed, token)) => cmd.args(["--join", seed, "--token", token]),
        None if dir.join(name).exists() => &mut cmd,
        None => cmd.arg("--bootstrap"),
    };
    if keep {
        use std::os::unix::process::CommandExt;
        // Its own process group: a Ctrl-C in this terminal does not stop a kept cluster.
        cmd.process_group(0);
    }
    Ok(AgentProcess {
        name: name.to_string(),
        child: cmd.spawn().context("cannot start vigil agent")?,
        keep,
    })
}

/// A client on node `name`'s Unix socket, once the agent has made it.
async fn local_client(dir: &Path, name: &str) -> anyhow::Result<Client> {
    let socket = dir.join(name).join(vigil_agent::SOCKET);
    wait_for(&format!("{name}'s socket"), async || {
        socket.exists().then_some(())
    })
    .await?;
    Client::new(&crate::client::Target {
        socket,
        ..Default::default()
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

const NODES: [&str; 3] = ["node1", "node2", "node3"];

/// The demo group's owner and state, as `c`'s node knows it.
async fn group(c: &Client) -> Option<(String, String)> {
    let status = c.get("/v1/status").await.ok()?;
    let g = status["groups"]
        .as_array()?
        .iter()
        .find(|g| g["name"] == "demo")?
        .clone();
    Some((
        g["owner"].as_str()?.to_string(),
        g["state"].as_str()?.to_string(),
    ))
}

pub async fn run(keep: bool) -> anyhow::Result<()> {
    let dir = demo_dir()?;
    println!("== starting a three-node cluster in {}", dir.display());
    let mut listens = Vec::new();
    let mut agents = Vec::new();
    let mut clients: Vec<Client> = Vec::new();
    for (i, name) in NODES.iter().enumerate() {
        let listen = format!("127.0.0.1:{}", free_port()?);
        // Each further node joins with a join token made on the first.
        let token = match clients.first() {
            Some(first) => {
                let v = first
                    .post("/v1/tokens", json!({ "kind": "join", "ttl_s": 600 }))
                    .await?;
                Some(v["token"].as_str().unwrap_or_default().to_string())
            }
            None => None,
        };
        let seed = listens.first().map(String::as_str).zip(token.as_deref());
        let agent = start_agent(&dir, name, &listen, seed, keep)?;
        let c = local_client(&dir, name).await?;
        let n = i + 1;
        wait_for(&format!("{name} is Up"), async || {
            let v = c.get("/v1/status").await.ok()?;
            let nodes = v["nodes"].as_array()?;
            (nodes.len() == n && nodes.iter().all(|x| x["state"] == "Up")).then_some(())
        })
        .await?;
        println!(
            "   {name}: agent pid {}, API https://{listen}",
            agent.child.id()
        );
        listens.push(listen);
        agents.push(agent);
        clients.push(c);
    }

    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}/");
    let c = &clients[1];
    c.post(
        "/v1/groups",
        json!({ "name": "demo", "props": { "preferred_owners": ["node2", "node3", "node1"] } }),
    )
    .await?;
    let command = json!(["python3", "-c", SERVICE, port.to_string()]).to_string();
    let params = json!({ "command": command, "check_http": url });
    let props = json!({ "restart_delay_ms": 100, "looks_alive_ms": 1000, "is_alive_ms": 5000 });
    c.post("/v1/resources", json!({ "name": "hello", "group": "demo", "type": "process", "params": params, "props": props }))
        .await?;
    c.post("/v1/groups/demo/online", json!({})).await?;
    let owner = wait_for("group demo is Online", async || {
        group(c)
            .await
            .filter(|(_, s)| s == "Online")
            .map(|(o, _)| o)
    })
    .await?;
    println!("== group demo (a small HTTP service) is Online on {owner}; GET {url}");
    println!("   {}", ask(&url).await);

    let i = NODES.iter().position(|n| *n == owner).unwrap_or(0);
    let watcher = &clients[(i + 1) % NODES.len()];
    let after: Vec<u64> = {
        let mut v = Vec::new();
        for c in &clients {
            v.push(last_seq(c).await.unwrap_or(0));
        }
        v
    };
    println!(
        "== killing {owner}'s agent (pid {}) with SIGKILL: the whole node is gone",
        agents[i].child.id()
    );
    let killed_at = SystemTime::now();
    agents[i].child.kill()?;
    agents[i].child.wait()?;
    let new_owner = wait_for("group demo is Online on another node", async || {
        group(watcher)
            .await
            .filter(|(o, s)| s == "Online" && *o != owner)
            .map(|(o, _)| o)
    })
    .await?;
    let took = killed_at.elapsed().map_or(0.0, |d| d.as_secs_f64());
    println!(
        "== demo is Online on {new_owner}, {took:.2} s after the kill. The cluster logs (ms after the kill):"
    );
    let mut records = Vec::new();
    for (j, c) in clients.iter().enumerate() {
        if j == i {
            // The dead node's own log, from its data dir: what it did before it died.
            continue;
        }
        let recs = c.get(&format!("/v1/log?after={}", after[j])).await?;
        records.extend(recs.as_array().cloned().unwrap_or_default());
    }
    records.sort_by(|a, b| a["time"].as_str().cmp(&b["time"].as_str()));
    for r in records.iter().filter(|r| interesting(r)) {
        print_relative(r, killed_at);
    }
    println!("== GET {url}");
    println!("   {}", ask(&url).await);
    if keep {
        // Bring the killed node back, so the kept cluster has all three.
        let listen = &listens[i];
        agents[i] = start_agent(&dir, NODES[i], listen, None, true)?;
        println!(
            "== the cluster keeps running (--keep); {} restarted:",
            NODES[i]
        );
        for (j, name) in NODES.iter().enumerate() {
            println!(
                "   {name}  API https://{}  pid {}",
                listens[j],
                agents[j].child.id()
            );
        }
        println!("   service  {url}");
        println!(
            "   export VIGIL_SOCKET={}; vigil status",
            dir.join(NODES[0]).join(vigil_agent::SOCKET).display()
        );
        println!("   data     {}", dir.display());
        let pids: Vec<String> = agents.iter().map(|a| a.child.id().to_string()).collect();
        println!("   stop it  kill {}", pids.join(" "));
    } else {
        drop(agents);
        let _ = std::fs::remove_dir_all(&dir);
        println!("== agents stopped; {} removed", dir.display());
    }
    Ok(())
}

/// The records that tell the failover: node membership, failover decisions, the group's
/// resources changing state.
fn interesting(r: &Value) -> bool {
    match r["component"].as_str() {
        Some("FM") => true,
        Some("NM") => r["reason"]
            .as_str()
            .is_some_and(|s| s.contains("Down") || s.contains("elected")),
        Some("RCM") => r["group"] == "demo" && r["resource"].is_string(),
        _ => false,
    }
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
        "   +{ms:>7.1} ms  {:<5} {:<3} {:<6} {change}{}",
        s("node"),
        s("component"),
        s("resource"),
        s("reason")
    );
}
