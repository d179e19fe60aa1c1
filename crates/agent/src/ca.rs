//! The cluster CA's key on this node (decision 0010). The database holds the CA's
//! certificate only; the key is in `DATA_DIR/ca.key` (0600) on the voters that run
//! resources. A voter that lacks it asks the leader, then the other voters, over mutual
//! TLS, and a voter hands it only to a voter that is no witness: a learner or a witness
//! never gets it. A witness that holds it (it bootstrapped the cluster, or was made a
//! witness later) forgets it once another voter holds it. The leader signs joins and
//! renewals with it, or, when it does not hold it (a witness leads), has a holder sign for
//! it: a holder signs only for the leader it knows.
//!
//! A rotation (`vigil ca rotate`) makes a new CA at the leader, kept beside the old one
//! (`ca-next.key`) and handed on like it. Every node then trusts both (its `ca.pem` lists
//! the new CA first), renews its certificate from the new one at once, and when every
//! node's certificate is from the new CA the leader ends the rotation: the new CA becomes
//! the cluster's, the old one is trusted no more, and the holders keep only the new key.

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

/// The key of the new CA during a rotation, beside `vigil_tls::CA_KEY_FILE`.
const NEXT_KEY_FILE: &str = "ca-next.key";

/// Where this node keeps the CA key, when it holds it.
#[derive(Clone)]
pub struct CaKey {
    dir: PathBuf,
}

impl CaKey {
    pub fn new(dir: PathBuf) -> CaKey {
        CaKey { dir }
    }

    fn read(&self, file: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.join(file)).ok()
    }

    /// The CA with its key, when this node holds the key (the certificate from `db`).
    pub fn ca(&self, db: &Db) -> Option<vigil_tls::Ca> {
        let key_pem = vigil_tls::Ca::load_key(&self.dir).ok().flatten()?;
        let cert_pem = db.state().security.ca.as_ref()?.cert_pem.clone();
        Some(vigil_tls::Ca { cert_pem, key_pem })
    }

    /// The new CA of a rotation under way, with its key, when this node holds it.
    pub fn next(&self, db: &Db) -> Option<vigil_tls::Ca> {
        let key_pem = self.read(NEXT_KEY_FILE)?;
        let cert_pem = db.state().security.rotation.as_ref()?.ca.cert_pem.clone();
        Some(vigil_tls::Ca { cert_pem, key_pem })
    }

    /// The CA that signs now: the new one during a rotation (none here while this node
    /// lacks its key), the cluster's otherwise.
    pub fn signer(&self, db: &Db) -> Option<vigil_tls::Ca> {
        if db.state().security.rotation.is_some() {
            self.next(db)
        } else {
            self.ca(db)
        }
    }

    /// Keeps `ca`'s key, after checking it is the key of the CA's certificate.
    pub fn put(&self, ca: &vigil_tls::Ca) -> Result<(), String> {
        ca.check().map_err(|e| e.to_string())?;
        ca.save_key(&self.dir).map_err(|e| e.to_string())
    }

    /// Keeps the key of a rotation's new CA, after checking it.
    pub fn put_next(&self, ca: &vigil_tls::Ca) -> Result<(), String> {
        ca.check().map_err(|e| e.to_string())?;
        vigil_tls::write_private(&self.dir.join(NEXT_KEY_FILE), ca.key_pem.as_bytes())
            .map_err(|e| e.to_string())
    }

    /// Once a rotation has ended, the new key is the key (checked against the cluster's CA).
    fn promote_next(&self, db: &Db) -> Result<bool, String> {
        let Some(key_pem) = self.read(NEXT_KEY_FILE) else {
            return Ok(false);
        };
        let Some(cert) = db.state().security.ca.clone() else {
            return Ok(false);
        };
        let ca = vigil_tls::Ca {
            cert_pem: cert.cert_pem,
            key_pem,
        };
        if ca.check().is_err() {
            return Ok(false);
        }
        std::fs::rename(
            self.dir.join(NEXT_KEY_FILE),
            self.dir.join(vigil_tls::CA_KEY_FILE),
        )
        .map_err(|e| format!("cannot make {NEXT_KEY_FILE} the CA key: {e}"))?;
        Ok(true)
    }

    fn forget(&self) -> Result<(), String> {
        for f in [vigil_tls::CA_KEY_FILE, NEXT_KEY_FILE] {
            let p = self.dir.join(f);
            if let Err(e) = std::fs::remove_file(&p)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(format!("cannot remove {}: {e}", p.display()));
            }
        }
        Ok(())
    }
}

/// The CAs a node trusts, as `ca.pem` lists them: the new one of a rotation first, then the
/// cluster's.
pub fn bundle(state: &vigil_core::model::ClusterState) -> String {
    let sec = &state.security;
    sec.rotation
        .iter()
        .map(|r| r.ca.cert_pem.as_str())
        .chain(sec.ca.iter().map(|c| c.cert_pem.as_str()))
        .collect::<Vec<_>>()
        .join("")
}

/// The CA that issued `cert_pem`, among the ones the cluster trusts now (its hash).
pub fn issuer(state: &vigil_core::model::ClusterState, cert_pem: &str) -> Option<String> {
    let sec = &state.security;
    let cas: Vec<&str> = sec
        .rotation
        .iter()
        .map(|r| r.ca.cert_pem.as_str())
        .chain(sec.ca.iter().map(|c| c.cert_pem.as_str()))
        .collect();
    vigil_tls::issuer_hash(cert_pem, &cas)
}

/// The hash of the CA new certificates come from (what a join token names).
pub fn newest_hash(state: &vigil_core::model::ClusterState) -> Option<String> {
    match &state.security.rotation {
        Some(r) => Some(r.hash.clone()),
        None => state
            .security
            .ca
            .as_ref()
            .and_then(|c| vigil_tls::ca_hash(&c.cert_pem).ok()),
    }
}

/// Whether `node` must renew its certificate now: a rotation is under way and its
/// certificate is not from the new CA.
pub fn must_renew(state: &vigil_core::model::ClusterState, node: &str) -> bool {
    state.security.rotation.as_ref().is_some_and(|r| {
        state
            .security
            .certs
            .get(node)
            .and_then(|c| c.issuer.as_ref())
            != Some(&r.hash)
    })
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
    if let Some(ca) = key.signer(db) {
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

/// Keeps the key where it belongs: fetches the key (and a rotation's new key) while this
/// node may hold it and does not, forgets it once this node may not and another voter
/// holds it, moves a key kept in the database (made before it moved out) to the data dir,
/// and at the leader ends a rotation once every node has a certificate from the new CA.
pub async fn keep(db: Db, key: CaKey, http: reqwest::Client, log: ClusterLog, me: String) {
    loop {
        tokio::time::sleep(CHECK).await;
        let state = db.state();
        let Some(cert) = state.security.ca.clone() else {
            continue;
        };
        let eligible = may_hold(&db, &me);
        if let Some(legacy) = &cert.legacy_key_pem {
            legacy_key(&db, &key, &log, &cert.cert_pem, legacy, eligible).await;
            continue;
        }
        match key.promote_next(&db) {
            Ok(true) => log.append([LogEntry::new(
                Component::NM,
                format!("{me} holds only the new CA's key now (the rotation ended)"),
            )]),
            Ok(false) => {}
            Err(e) => tracing::warn!("{e}"),
        }
        let held = key.ca(&db).is_some();
        let next_missing = state.security.rotation.is_some() && key.next(&db).is_none();
        if eligible && (!held || next_missing) {
            fetch(&db, &key, &http, &log, &me, &state).await;
        } else if !eligible && held {
            for addr in holders_to_ask(&db, &me) {
                let got = ask(&http, &addr, "/v1/cluster/ca-key/held", json!({})).await;
                if got.is_ok_and(|v| v["held"] == true) {
                    forget(&key, &log, &me, &addr);
                    break;
                }
            }
        }
        if let Some(r) = &state.security.rotation
            && db.is_leader()
            && state.nodes.keys().all(|n| !must_renew(&state, n))
        {
            let hash = r.hash.clone();
            match db.write(vec![Command::FinishCaRotation { hash: hash.clone() }]).await {
                Ok(results) if results.iter().all(Result::is_ok) => log.append([LogEntry::new(
                    Component::NM,
                    format!(
                        "CA rotation done: every node has a certificate from the CA {hash}; the old CA is no longer trusted"
                    ),
                )]),
                Ok(results) => tracing::info!("the CA rotation cannot end yet: {results:?}"),
                Err(e) => tracing::warn!("cannot end the CA rotation: {e}"),
            }
        }
    }
}

/// Makes this node's `ca.pem` (and its TLS) trust the CAs the database says, once they
/// differ. Called by the one task that writes the node's credentials (the renewal's).
pub fn trust(dir: &std::path::Path, tls: &vigil_tls::Tls, state: &vigil_core::model::ClusterState) {
    let want = bundle(state);
    let Ok(Some(creds)) = vigil_tls::Creds::load(dir) else {
        return;
    };
    if creds.ca_pem == want || want.is_empty() {
        return;
    }
    let creds = vigil_tls::Creds {
        ca_pem: want,
        ..creds
    };
    // A node whose certificate is from neither CA (it missed a whole rotation) keeps what
    // it has; it cannot talk to the cluster either way.
    if let Err(e) = tls.load(&creds).and_then(|_| creds.save(dir)) {
        tracing::warn!("cannot trust the cluster's CAs as its database lists them: {e}");
    }
}

/// A key kept in an older database: a voter that may hold it takes it into its data dir,
/// and a leader holding it there drops it from the database.
async fn legacy_key(
    db: &Db,
    key: &CaKey,
    log: &ClusterLog,
    cert_pem: &str,
    legacy: &str,
    eligible: bool,
) {
    let held = key.ca(db).is_some();
    if eligible && !held {
        let ca = vigil_tls::Ca {
            cert_pem: cert_pem.to_string(),
            key_pem: legacy.to_string(),
        };
        if let Err(e) = key.put(&ca) {
            tracing::warn!("cannot keep the CA key from the database: {e}");
        }
        return;
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
}

/// Asks the other voters for the keys this node lacks (the CA's, a rotation's new one).
async fn fetch(
    db: &Db,
    key: &CaKey,
    http: &reqwest::Client,
    log: &ClusterLog,
    me: &str,
    state: &vigil_core::model::ClusterState,
) {
    let Some(cert) = &state.security.ca else {
        return;
    };
    for addr in holders_to_ask(db, me) {
        let Ok(v) = ask(http, &addr, "/v1/cluster/ca-key", json!({})).await else {
            continue;
        };
        let mut got = Vec::new();
        if key.ca(db).is_none()
            && let Some(k) = v["key_pem"].as_str()
        {
            let ca = vigil_tls::Ca {
                cert_pem: cert.cert_pem.clone(),
                key_pem: k.to_string(),
            };
            match key.put(&ca) {
                Ok(()) => got.push("the CA key"),
                Err(e) => tracing::warn!("the CA key from {addr}: {e}"),
            }
        }
        if let Some(r) = &state.security.rotation
            && key.next(db).is_none()
            && let Some(k) = v["next_key_pem"].as_str()
        {
            let ca = vigil_tls::Ca {
                cert_pem: r.ca.cert_pem.clone(),
                key_pem: k.to_string(),
            };
            match key.put_next(&ca) {
                Ok(()) => got.push("the new CA's key"),
                Err(e) => tracing::warn!("the new CA key from {addr}: {e}"),
            }
        }
        if !got.is_empty() {
            log.append([LogEntry::new(
                Component::NM,
                format!("{me} holds {} now (from {addr})", got.join(" and ")),
            )]);
        }
        let done =
            key.ca(db).is_some() && (state.security.rotation.is_none() || key.next(db).is_some());
        if done {
            break;
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
