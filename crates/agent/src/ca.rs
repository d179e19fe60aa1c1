//! The cluster CA's key on this node (decision 0010). The database holds the CA's
//! certificate only; the key is in `DATA_DIR/ca.key` (0600) on the voters that run
//! resources. A voter that lacks it asks the leader, then the other voters, over mutual
//! TLS, and a voter hands it only to a voter that is no witness: a learner or a witness
//! never gets it. A witness that holds it (it bootstrapped the cluster, or was made a
//! witness later) forgets it once another voter holds it. The leader signs joins and
//! renewals with it, or, when it does not hold it (a witness leads), has a holder sign for
//! it: a holder signs only for the leader it knows.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use vigil_core::command::Command;
use vigil_core::event::{Component, LogEntry};
use vigil_db::Db;

use crate::clusterlog::ClusterLog;

/// How often a node checks whether it should fetch the key or forget it.
const CHECK: Duration = Duration::from_secs(1);
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// Where this node keeps the CA key, when it holds it.
#[derive(Clone)]
pub struct CaKey {
    dir: PathBuf,
}

impl CaKey {
    pub fn new(dir: PathBuf) -> CaKey {
        CaKey { dir }
    }

    /// The CA with its key, when this node holds the key (the certificate from `db`).
    pub fn ca(&self, db: &Db) -> Option<vigil_tls::Ca> {
        let key_pem = vigil_tls::Ca::load_key(&self.dir).ok().flatten()?;
        let cert_pem = db.state().security.ca.as_ref()?.cert_pem.clone();
        Some(vigil_tls::Ca { cert_pem, key_pem })
    }

    /// Keeps `ca`'s key, after checking it is the key of the CA's certificate.
    pub fn put(&self, ca: &vigil_tls::Ca) -> Result<(), String> {
        ca.check().map_err(|e| e.to_string())?;
        ca.save_key(&self.dir).map_err(|e| e.to_string())
    }

    fn forget(&self) -> Result<(), String> {
        let p = self.dir.join(vigil_tls::CA_KEY_FILE);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("cannot remove {}: {e}", p.display()))
            }
            _ => Ok(()),
        }
    }
}

/// Whether `node` may hold the CA key as this copy knows the cluster: a voter of the Raft
/// membership, and a member that is no witness.
pub fn may_hold(db: &Db, node: &str) -> bool {
    db.state().nodes.get(node).is_some_and(|n| !n.witness)
        && db
            .voters()
            .iter()
            .any(|(id, _)| *id == vigil_db::node_id(node))
}

/// The other voters' addresses, the leader's first.
fn holders_to_ask(db: &Db, me: &str) -> Vec<String> {
    let mine = vigil_db::node_id(me);
    let leader = db.leader_id();
    let mut voters: Vec<(bool, String)> = db
        .voters()
        .into_iter()
        .filter(|(id, addr)| *id != mine && !addr.is_empty())
        .map(|(id, addr)| (Some(id) != leader, addr))
        .collect();
    voters.sort();
    voters.into_iter().map(|(_, a)| a).collect()
}

async fn ask(http: &reqwest::Client, addr: &str, path: &str, body: Value) -> Result<Value, String> {
    let resp = http
        .post(format!("https://{addr}{path}"))
        .json(&body)
        .timeout(ASK_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("{addr}: {}", crate::membership::error_chain(&e)))?;
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        return Err(format!(
            "{addr}: {}",
            v["error"].as_str().unwrap_or("no reason given")
        ));
    }
    Ok(v)
}

/// Why a certificate was not signed.
#[derive(Debug)]
pub enum SignError {
    /// The request is bad (a malformed signing request).
    Bad(String),
    /// No node holding the key signed it.
    Unavailable(String),
}

/// Signs `csr` as node `node`'s certificate: here if this node holds the key, otherwise at
/// a voter that does. The caller is the leader (joins and renewals are signed there).
pub async fn sign(
    db: &Db,
    http: &reqwest::Client,
    key: &CaKey,
    me: &str,
    csr: &str,
    node: &str,
) -> Result<vigil_tls::Issued, SignError> {
    let cluster = db.state().cluster_id.clone().unwrap_or_default();
    if let Some(ca) = key.ca(db) {
        return ca
            .sign(
                csr,
                &cluster,
                node,
                vigil_tls::node_cert_lifetime(),
                std::time::SystemTime::now(),
            )
            .map_err(|e| SignError::Bad(e.to_string()));
    }
    let bad = SignError::Unavailable;
    let mut why = Vec::new();
    for addr in holders_to_ask(db, me) {
        let body = json!({ "csr": csr, "node": node });
        match ask(http, &addr, "/v1/cluster/sign", body).await {
            Ok(v) => {
                let pem = v["cert_pem"].as_str().unwrap_or_default();
                let (issued, cert) = vigil_tls::issued_from_pem(pem)
                    .map_err(|e| bad(format!("the certificate {addr} signed: {e}")))?;
                if cert.node != node || cert.cluster != cluster {
                    return Err(bad(format!(
                        "{addr} signed a certificate for node {} of cluster {}, not for {node} of {cluster}",
                        cert.node, cert.cluster
                    )));
                }
                return Ok(issued);
            }
            Err(e) => why.push(e),
        }
    }
    Err(bad(format!(
        "this node does not hold the CA key and no voter signed for it ({})",
        if why.is_empty() {
            "there is no other voter".to_string()
        } else {
            why.join("; ")
        }
    )))
}

/// Keeps the key where it belongs: fetches it while this node may hold it and does not,
/// forgets it once this node may not and another voter holds it, and moves a key kept in
/// the database (made before it moved out) to the data dir and out of the database.
pub async fn keep(db: Db, key: CaKey, http: reqwest::Client, log: ClusterLog, me: String) {
    loop {
        tokio::time::sleep(CHECK).await;
        let state = db.state();
        let Some(cert) = state.security.ca.clone() else {
            continue;
        };
        let held = key.ca(&db).is_some();
        let eligible = may_hold(&db, &me);
        if let Some(legacy) = &cert.legacy_key_pem {
            if eligible && !held {
                let ca = vigil_tls::Ca {
                    cert_pem: cert.cert_pem.clone(),
                    key_pem: legacy.clone(),
                };
                if let Err(e) = key.put(&ca) {
                    tracing::warn!("cannot keep the CA key from the database: {e}");
                }
                continue;
            }
            if held && db.is_leader() {
                if let Err(e) = db.write(vec![Command::ForgetCaKey]).await {
                    tracing::warn!("cannot drop the CA key from the database: {e}");
                } else {
                    log.append([LogEntry::new(
                        Component::DB,
                        "the CA key moved out of the database into the data dirs of the voters that run resources".to_string(),
                    )]);
                }
            }
            continue;
        }
        if eligible && !held {
            for addr in holders_to_ask(&db, &me) {
                let got = ask(&http, &addr, "/v1/cluster/ca-key", json!({})).await;
                let Ok(v) = got else { continue };
                let ca = vigil_tls::Ca {
                    cert_pem: cert.cert_pem.clone(),
                    key_pem: v["key_pem"].as_str().unwrap_or_default().to_string(),
                };
                match key.put(&ca) {
                    Ok(()) => {
                        log.append([LogEntry::new(
                            Component::NM,
                            format!("{me} holds the CA key now (from {addr})"),
                        )]);
                        break;
                    }
                    Err(e) => tracing::warn!("the CA key from {addr}: {e}"),
                }
            }
        } else if !eligible && held {
            for addr in holders_to_ask(&db, &me) {
                let got = ask(&http, &addr, "/v1/cluster/ca-key/held", json!({})).await;
                if got.is_ok_and(|v| v["held"] == true) {
                    forget(&key, &log, &me, &addr);
                    break;
                }
            }
        }
    }
}

/// This node may not hold the key (a witness, or no voter) and `holder` does: it forgets it.
pub fn forget(key: &CaKey, log: &ClusterLog, me: &str, holder: &str) {
    match key.forget() {
        Ok(()) => log.append([LogEntry::new(
            Component::NM,
            format!("{me} no longer holds the CA key ({holder} does; a witness or a learner does not keep it)"),
        )]),
        Err(e) => tracing::warn!("{e}"),
    }
}
