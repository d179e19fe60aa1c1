//! Forming and changing the cluster: a node joins through any member (the request is passed
//! to the leader), the leader admits it as a Raft learner, makes it a voter while there are
//! fewer than five, and records it in the database; removing a node does the reverse and
//! promotes a learner in its place.

use std::time::Duration;

use serde_json::json;
use vigil_core::command::{ApplyError, Command};
use vigil_core::names::validate_name;
use vigil_db::{Db, node_id};

/// How long the leader waits for a joining node to catch up before giving up on it.
const ADMIT_LIMIT: Duration = Duration::from_secs(20);

/// Why a membership change was refused; the API maps it to a status code.
#[derive(Debug)]
pub enum Refused {
    Invalid(String),
    Conflict(String),
    NotFound(String),
    Unavailable(String),
}

impl From<ApplyError> for Refused {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Invalid(m) => Refused::Invalid(m),
            ApplyError::NotFound { .. } => Refused::NotFound(e.to_string()),
            _ => Refused::Conflict(e.to_string()),
        }
    }
}

/// Joining side, first step: trades the join token and a signing request for this node's
/// certificate, at the agent at `seed` (checked, before anything is sent, to be a node of
/// the cluster whose CA the token names). The key is made here and never leaves the node.
/// Returns the cluster's id and the node's credentials.
pub async fn certify(
    seed: &str,
    token: &str,
    name: &str,
) -> anyhow::Result<(String, vigil_tls::Creds)> {
    let parts = vigil_core::security::parse_join_token(token)
        .map_err(|e| anyhow::anyhow!("--token: {e}"))?;
    let ca_hash = parts.ca_hash.clone().unwrap_or_default();
    let (key_pem, csr) = vigil_tls::new_key(name)?;
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(vigil_tls::pinned_client(vigil_tls::Pin::Hash(
            ca_hash.clone(),
        ))?)
        .build()?;
    let resp = client
        .post(format!("https://{seed}/v1/cluster/certify"))
        .json(&json!({ "token": token, "name": name, "csr": csr }))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot get a certificate from {seed}: {} (is a vigil agent of the cluster the token names, CA {ca_hash}, running there?)",
                error_chain(&e)
            )
        })?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        let why = body["error"].as_str().unwrap_or("no reason given");
        anyhow::bail!("the cluster at {seed} refused to admit {name}: {why}");
    }
    let field = |k: &str| {
        body[k]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("the answer from {seed} has no {k}: {body}"))
    };
    let (cluster, ca_pem, cert_pem) = (field("cluster_id")?, field("ca_pem")?, field("cert_pem")?);
    if vigil_tls::ca_hash(&ca_pem)? != ca_hash {
        anyhow::bail!("{seed} answered with a CA whose hash is not the token's {ca_hash}");
    }
    Ok((
        cluster,
        vigil_tls::Creds {
            ca_pem,
            cert_pem,
            key_pem,
        },
    ))
}

/// An error with its causes (a TLS refusal is two or three levels down).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// Joining side, second step: asks the agent at `seed` (with this node's new certificate,
/// through `http`) to admit this node.
pub async fn join(
    http: &reqwest::Client,
    seed: &str,
    name: &str,
    addr: &str,
    witness: bool,
) -> anyhow::Result<()> {
    let url = format!("https://{seed}/v1/cluster/join");
    let resp = http
        .post(&url)
        .json(&json!({ "name": name, "address": addr, "witness": witness }))
        .timeout(ADMIT_LIMIT + Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the cluster at {seed}: {} (is a vigil agent running there?)",
                error_chain(&e)
            )
        })?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if status.is_success() {
        Ok(())
    } else {
        let why = body["error"].as_str().unwrap_or("no reason given");
        anyhow::bail!("the cluster at {seed} refused to admit {name}: {why}")
    }
}

/// Leader side: admits `name` at `addr` (a witness: a voter that hosts nothing).
pub async fn admit(db: &Db, name: &str, addr: &str, witness: bool) -> Result<(), Refused> {
    validate_name("node", name).map_err(Refused::Invalid)?;
    {
        let state = db.state();
        if let Some(n) = state.nodes.get(name) {
            return Err(Refused::Conflict(format!(
                "node name {name:?} is already taken (by the node at {})",
                n.address
            )));
        }
        if let Some(n) = state.nodes.values().find(|n| n.address == addr) {
            return Err(Refused::Conflict(format!(
                "address {addr} is already node {:?}'s",
                n.name
            )));
        }
        if let Some(n) = state
            .nodes
            .values()
            .find(|n| node_id(&n.name) == node_id(name))
        {
            return Err(Refused::Conflict(format!(
                "node name {name:?} hashes to the same Raft id as node {:?}; choose another name",
                n.name
            )));
        }
    }
    probe(db, name, addr).await?;
    db.add_member(name, addr, ADMIT_LIMIT)
        .await
        .map_err(|e| Refused::Unavailable(format!("cannot add {name} at {addr}: {e}")))?;
    let mut cmds = vec![Command::AddNode {
        name: name.to_string(),
        address: addr.to_string(),
    }];
    if witness {
        cmds.push(Command::MarkWitness {
            name: name.to_string(),
        });
    }
    write(db, cmds).await
}

/// Leader side: a joining node must answer, as itself and of this cluster, at the address it
/// gives: the leader replicates to that address, and a voter nobody reaches costs the cluster
/// its majority.
async fn probe(db: &Db, name: &str, addr: &str) -> Result<(), Refused> {
    let unreachable = |why: String| {
        Refused::Unavailable(format!(
            "cannot reach {name} at {addr} ({why}): a node must answer at the address it joins with; is that its --listen address, reachable from the leader?"
        ))
    };
    let answer: serde_json::Value = db
        .peer_client()
        .get(format!("https://{addr}/v1/cluster/identity"))
        .timeout(PROBE_LIMIT)
        .send()
        .await
        .map_err(|e| unreachable(error_chain(&e)))?
        .json()
        .await
        .map_err(|e| unreachable(format!("not a vigil agent: {e}")))?;
    let (id, node) = (answer["id"].as_str(), answer["node"].as_str());
    if node != Some(name) || id != db.cluster_id().as_deref() {
        return Err(Refused::Conflict(format!(
            "the agent at {addr} is node {} of cluster {}, not {name} joining cluster {}",
            node.unwrap_or("?"),
            id.unwrap_or("?"),
            db.cluster_id().unwrap_or_default()
        )));
    }
    Ok(())
}

/// How long the leader waits for a joining node to answer its probe.
const PROBE_LIMIT: Duration = Duration::from_secs(5);

/// Leader side: removes `name` from the database and from the Raft membership, then tells it.
pub async fn remove(db: &Db, name: &str) -> Result<(), Refused> {
    let address = db.state().nodes.get(name).map(|n| n.address.clone());
    write(
        db,
        vec![Command::RemoveNode {
            name: name.to_string(),
        }],
    )
    .await?;
    if let Some(addr) = address {
        notify_removed(db, name, &addr);
    }
    db.remove_member(name).await.map_err(|e| {
        Refused::Unavailable(format!(
            "{name} is out of the database, but its Raft membership change failed: {e}"
        ))
    })?;
    db.promote_learners().await.map_err(|e| {
        Refused::Unavailable(format!(
            "{name} removed, but promoting a learner failed: {e}"
        ))
    })
}

/// Tells a removed node it was removed (best effort: one that does not hear it learns it
/// when the voters refuse its votes).
fn notify_removed(db: &Db, name: &str, addr: &str) {
    let (name, addr, by) = (name.to_string(), addr.to_string(), db.name().to_string());
    let http = db.peer_client();
    tokio::spawn(async move {
        let sent = http
            .post(format!("https://{addr}/v1/cluster/removed"))
            .json(&json!({ "by": by }))
            .timeout(PROBE_LIMIT)
            .send()
            .await;
        if let Err(e) = sent {
            tracing::info!("could not tell {name} at {addr} it was removed: {e}");
        }
    });
}

async fn write(db: &Db, cmds: Vec<Command>) -> Result<(), Refused> {
    let results = db
        .write(cmds)
        .await
        .map_err(|e| Refused::Unavailable(e.to_string()))?;
    results
        .into_iter()
        .find_map(Result::err)
        .map_or(Ok(()), |e| Err(Refused::from(e)))
}
