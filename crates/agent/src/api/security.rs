//! Tokens (`/v1/tokens`), certificates (`/v1/certs`), and the first step of a join
//! (`/v1/cluster/certify`): a new node trades a join token and a signing request for its
//! certificate.

use vigil_core::security::{CertRecord, Role, Token, TokenKind, parse_join_token, token_string};
use vigil_tls::Ca;

use super::auth::now_s;
use super::*;

/// A join token's default lifetime.
const JOIN_TTL_S: u64 = 3600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewToken {
    /// `join` or `api`.
    kind: String,
    /// An API token's role.
    role: Option<String>,
    ttl_s: Option<u64>,
    /// A join token's uses (default 1).
    uses: Option<u32>,
    #[serde(default)]
    name: String,
}

pub(super) async fn create_token(
    State(api): State<Api>,
    body: Result<Json<NewToken>, JsonRejection>,
) -> ApiResult {
    let Json(req) = body?;
    let kind = match (req.kind.as_str(), req.role.as_deref()) {
        ("join", None) => TokenKind::Join,
        ("join", Some(_)) => return Err(ApiError::bad("a join token has no role")),
        ("api", Some(r)) => TokenKind::Api(Role::parse(r).map_err(ApiError::bad)?),
        ("api", None) => {
            return Err(ApiError::bad(
                "an API token needs a role: admin, operator or viewer",
            ));
        }
        (other, _) => {
            return Err(ApiError::bad(format!(
                "token kind {other:?} is not join or api"
            )));
        }
    };
    if req.ttl_s == Some(0) {
        return Err(ApiError::bad(
            "ttl_s 0: a token must live at least a second",
        ));
    }
    if req.uses == Some(0) {
        return Err(ApiError::bad(
            "uses 0: a join token must have at least one use",
        ));
    }
    if req.uses.is_some() && kind != TokenKind::Join {
        return Err(ApiError::bad("only a join token has a use count"));
    }
    if req.name.len() > 128 || req.name.chars().any(char::is_control) {
        return Err(ApiError::bad(
            "token name: at most 128 characters, none of them control characters",
        ));
    }
    let now = now_s();
    let ttl = match kind {
        TokenKind::Join => Some(req.ttl_s.unwrap_or(JOIN_TTL_S)),
        TokenKind::Api(_) => req.ttl_s,
    };
    let (id, secret) = (vigil_tls::random_hex::<8>(), vigil_tls::random_hex::<16>());
    let token = Token {
        id: id.clone(),
        name: req.name.clone(),
        kind,
        hash: vigil_tls::sha256_hex(secret.as_bytes()),
        created_s: now,
        expires_s: ttl.map(|t| now.saturating_add(t)),
        uses_left: match kind {
            TokenKind::Join => Some(req.uses.unwrap_or(1)),
            TokenKind::Api(_) => None,
        },
    };
    // A join token names the CA new certificates come from (a rotation's new one).
    let ca_hash = crate::ca::newest_hash(&api.db.state()).unwrap_or_default();
    let text = token_string(kind, &id, &secret, &ca_hash);
    let what = match kind {
        TokenKind::Join => "join token".to_string(),
        TokenKind::Api(r) => format!("API token with role {}", r.name()),
    };
    let log = LogEntry::new(Component::NM, format!("{what} {id} created"));
    api.commit(pending(
        vec![Command::CreateToken {
            token: token.clone(),
        }],
        vec![log],
    )?)
    .await?;
    let address = api
        .db
        .state()
        .nodes
        .get(&api.node)
        .map(|n| n.address.clone())
        .unwrap_or_default();
    let command = (kind == TokenKind::Join).then(|| {
        format!("vigil agent --name NAME --listen HOST:PORT --data-dir DIR --join {address} --token {text}")
    });
    Ok(Json(json!({
        "id": id,
        "token": text,
        "kind": req.kind,
        "role": req.role,
        "expires_s": token.expires_s,
        "uses": token.uses_left,
        "command": command,
    })))
}

fn token_view(t: &Token) -> Value {
    let (kind, role) = match t.kind {
        TokenKind::Join => ("join", None),
        TokenKind::Api(r) => ("api", Some(r.name())),
    };
    json!({
        "id": t.id,
        "name": t.name,
        "kind": kind,
        "role": role,
        "created_s": t.created_s,
        "expires_s": t.expires_s,
        "uses_left": t.uses_left,
    })
}

pub(super) async fn list_tokens(State(api): State<Api>) -> Json<Value> {
    let state = api.db.state();
    let tokens: Vec<Value> = state.security.tokens.values().map(token_view).collect();
    Json(json!({ "tokens": tokens }))
}

pub(super) async fn revoke_token(State(api): State<Api>, Path(id): Path<String>) -> ApiResult {
    if !api.db.state().security.tokens.contains_key(&id) {
        return Err(ApplyError::NotFound {
            kind: "token".into(),
            name: id,
        }
        .into());
    }
    let log = LogEntry::new(Component::NM, format!("token {id} revoked"));
    api.commit(pending(
        vec![Command::RevokeToken { id: id.clone() }],
        vec![log],
    )?)
    .await?;
    Ok(Json(json!({ "revoked": id })))
}

/// Every node's certificate (as the database last recorded it) and the CA's.
pub(super) async fn certs(State(api): State<Api>) -> Json<Value> {
    let state = api.db.state();
    let now = now_s();
    let ca = state
        .security
        .ca
        .as_ref()
        .and_then(|ca| vigil_tls::validity(&ca.cert_pem).ok())
        .map(
            |(nb, na)| json!({ "not_before_s": nb, "not_after_s": na, "hash": api.tls.ca_hash() }),
        );
    let nodes: Vec<Value> = state
        .nodes
        .keys()
        .map(|n| match state.security.certs.get(n) {
            Some(c) => json!({
                "node": n,
                "fingerprint": c.fingerprint,
                "not_before_s": c.not_before_s,
                "not_after_s": c.not_after_s,
                "expires_in_s": c.not_after_s.saturating_sub(now),
                "issuer": c.issuer,
            }),
            None => json!({ "node": n, "missing": true }),
        })
        .collect();
    let rotation = state.security.rotation.as_ref().map(|r| {
        json!({
            "hash": r.hash,
            "since_s": r.since_s,
            "behind": state.nodes.keys().filter(|n| crate::ca::must_renew(&state, n)).collect::<Vec<_>>(),
        })
    });
    Json(json!({ "now_s": now, "ca": ca, "rotation": rotation, "nodes": nodes }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RenewRequest {
    csr: String,
}

/// A member's new certificate (a renewal: same key, same name). Only the leader signs; the
/// name is the one the member's current certificate gives.
pub(super) async fn renew(
    State(api): State<Api>,
    axum::Extension(from): axum::Extension<vigil_db::network::Sender>,
    axum::Extension(peer): axum::Extension<vigil_tls::Peer>,
    body: Result<Json<RenewRequest>, JsonRejection>,
) -> ApiResult {
    let Json(req) = body?;
    // Only in the last third of the current certificate's life (or during a CA rotation,
    // while it is from the old CA): a member cannot stock up certificates to use after its
    // removal.
    if let vigil_tls::Peer::Node(cert) = &peer
        && !vigil_tls::renewal_due(cert.not_before_s, cert.not_after_s, now_s())
        && !crate::ca::must_renew(&api.db.state(), &from.name)
    {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            message: format!(
                "the certificate of {} is not due for renewal (it expires at Unix time {})",
                from.name, cert.not_after_s
            ),
        });
    }
    if !api.db.is_leader() {
        return Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!("{} is not the leader; renew at the leader", api.node),
        });
    }
    let state = api.db.state();
    if !state.nodes.contains_key(&from.name) {
        return Err(ApiError {
            status: StatusCode::FORBIDDEN,
            message: format!("{} is not a member of this cluster", from.name),
        });
    }
    let issued = api.sign(&req.csr, &from.name).await?;
    let record = Command::Certify {
        node: from.name.clone(),
        cert: CertRecord {
            fingerprint: issued.fingerprint.clone(),
            not_before_s: issued.not_before_s,
            not_after_s: issued.not_after_s,
            previous: None,
            pending: false,
            issuer: crate::ca::issuer(&api.db.state(), &issued.cert_pem),
        },
    };
    let results = api.db.write(vec![record]).await?;
    if let Some(e) = results.into_iter().find_map(Result::err) {
        return Err(e.into());
    }
    Ok(Json(json!({ "cert_pem": issued.cert_pem })))
}

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CertifyRequest {
    token: String,
    name: String,
    csr: String,
}

/// A new node's certificate, for a join token (checked, then one use spent) and a signing
/// request. Only the leader signs: elsewhere the request is passed on.
pub(super) async fn certify(
    State(api): State<Api>,
    body: Result<Json<CertifyRequest>, JsonRejection>,
) -> ApiResult {
    let Json(req) = body?;
    let refuse = |message: String| ApiError {
        status: StatusCode::FORBIDDEN,
        message,
    };
    let parts = parse_join_token(&req.token).map_err(|e| refuse(e.to_string()))?;
    path_name("node", &req.name)?;
    let forwarded = serde_json::to_value(&req).expect("serializes");
    if let Some(answer) = api
        .on_leader(
            reqwest::Method::POST,
            "/v1/cluster/certify",
            Some(forwarded),
        )
        .await?
    {
        return Ok(answer);
    }
    let state = api.db.state();
    let ca = state.security.ca.clone().ok_or_else(|| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: "this cluster has no CA (it was made before Vigil had one)".to_string(),
    })?;
    let cluster = state.cluster_id.clone().unwrap_or_default();
    let ours = vigil_tls::ca_hash(&ca.cert_pem).unwrap_or_default();
    let rotating = state.security.rotation.as_ref().map(|r| r.hash.as_str());
    if parts.ca_hash.as_deref() != Some(ours.as_str()) && parts.ca_hash.as_deref() != rotating {
        return Err(refuse(format!(
            "the token names the cluster CA {}, this cluster's is {ours}: a token of another cluster",
            parts.ca_hash.unwrap_or_default()
        )));
    }
    if state.nodes.contains_key(&req.name) {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            message: format!("node name {:?} is already taken", req.name),
        });
    }
    // Nodes speak for themselves by Raft id (a hash of the name): two names with one id
    // would let one speak for the other.
    let id = vigil_db::node_id(&req.name);
    if let Some(other) = state
        .nodes
        .keys()
        .chain(state.security.certs.keys())
        .find(|n| *n != &req.name && vigil_db::node_id(n) == id)
    {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            message: format!(
                "node name {:?} hashes to the same Raft id as node {other:?}; choose another name",
                req.name
            ),
        });
    }
    let hash = vigil_tls::sha256_hex(parts.secret.as_bytes());
    let now = now_s();
    state
        .security
        .check(&parts.id, &hash, true, now)
        .map_err(|e| refuse(e.to_string()))?;
    let issued = api.sign(&req.csr, &req.name).await?;
    let spend = Command::UseToken {
        id: parts.id.clone(),
        hash,
        at_s: now,
    };
    let record = Command::Certify {
        node: req.name.clone(),
        cert: CertRecord {
            fingerprint: issued.fingerprint.clone(),
            not_before_s: issued.not_before_s,
            not_after_s: issued.not_after_s,
            previous: None,
            pending: true,
            issuer: crate::ca::issuer(&state, &issued.cert_pem),
        },
    };
    let results = api.db.write(vec![spend]).await?;
    if let Some(e) = results.into_iter().find_map(Result::err) {
        return Err(refuse(e.to_string()));
    }
    let results = api.db.write(vec![record]).await?;
    if let Some(e) = results.into_iter().find_map(Result::err) {
        return Err(e.into());
    }
    api.log.append([LogEntry::new(
        Component::NM,
        format!(
            "certificate issued to joining node {} with join token {}",
            req.name, parts.id
        ),
    )]);
    Ok(Json(json!({
        "cluster_id": cluster,
        "ca_pem": crate::ca::bundle(&state),
        "cert_pem": issued.cert_pem,
    })))
}

impl Api {
    /// A certificate for node `node` from signing request `csr` (here, or at a voter that
    /// holds the CA key: `ca::sign`).
    async fn sign(&self, csr: &str, node: &str) -> ApiResult<vigil_tls::Issued> {
        crate::ca::sign(&self.db, &self.http, &self.ca_key, &self.node, csr, node)
            .await
            .map_err(|e| match e {
                crate::ca::SignError::Bad(m) => ApiError::bad(m),
                crate::ca::SignError::Unavailable(message) => ApiError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message,
                },
            })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SignRequest {
    csr: String,
    node: String,
}

/// A certificate signed for the leader, which does not hold the CA key (`ca::sign`). Only
/// the leader this node knows may ask.
pub(super) async fn sign_for_leader(
    State(api): State<Api>,
    axum::Extension(from): axum::Extension<vigil_db::network::Sender>,
    body: Result<Json<SignRequest>, JsonRejection>,
) -> ApiResult {
    let Json(req) = body?;
    path_name("node", &req.node)?;
    if api.db.leader_id() != Some(from.id) {
        return Err(ApiError {
            status: StatusCode::FORBIDDEN,
            message: format!(
                "{} is not the leader {} knows; only the leader has certificates signed",
                from.name, api.node
            ),
        });
    }
    let Some(ca) = api.ca_key.signer(&api.db) else {
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("{} does not hold the CA key", api.node),
        });
    };
    let cluster = api.db.state().cluster_id.clone().unwrap_or_default();
    let issued = ca
        .sign(
            &req.csr,
            &cluster,
            &req.node,
            vigil_tls::node_cert_lifetime(),
            std::time::SystemTime::now(),
        )
        .map_err(|e| ApiError::bad(e.to_string()))?;
    api.log.append([LogEntry::new(
        Component::NM,
        format!(
            "certificate for {} signed for the leader {} (it does not hold the CA key)",
            req.node, from.name
        ),
    )]);
    Ok(Json(json!({ "cert_pem": issued.cert_pem })))
}

/// The CA key, for a voter that is no witness (`ca::keep`). A node that may not hold it
/// itself (a witness) forgets it once it has handed it on.
pub(super) async fn hand_ca_key(
    State(api): State<Api>,
    axum::Extension(from): axum::Extension<vigil_db::network::Sender>,
) -> ApiResult {
    if !crate::ca::may_hold(&api.db, &from.name) {
        return Err(ApiError {
            status: StatusCode::FORBIDDEN,
            message: format!(
                "{} may not hold the CA key: only voters that are no witness do",
                from.name
            ),
        });
    }
    let (ca, next) = (api.ca_key.ca(&api.db), api.ca_key.next(&api.db));
    if ca.is_none() && next.is_none() {
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("{} does not hold the CA key", api.node),
        });
    }
    if !crate::ca::may_hold(&api.db, &api.node) && api.db.state().security.rotation.is_none() {
        crate::ca::forget(&api.ca_key, &api.log, &api.node, &from.name);
    }
    Ok(Json(json!({
        "key_pem": ca.map(|c| c.key_pem),
        "next_key_pem": next.map(|c| c.key_pem),
    })))
}

/// Whether this node holds the CA key (a witness asks before it forgets its own).
pub(super) async fn ca_key_held(State(api): State<Api>) -> Json<Value> {
    Json(json!({ "held": api.ca_key.ca(&api.db).is_some() }))
}

/// Starts a CA rotation (`vigil ca rotate`): a new CA, made at the leader, which must be a
/// node that may hold CA keys (a voter that is no witness).
pub(super) async fn rotate_ca(State(api): State<Api>) -> ApiResult {
    if let Some(answer) = api
        .on_leader(reqwest::Method::POST, "/v1/ca/rotate", Some(json!({})))
        .await?
    {
        return Ok(answer);
    }
    let state = api.db.state();
    if let Some(r) = &state.security.rotation {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            message: format!(
                "a CA rotation to {} is under way (since Unix time {}); it ends when every node has a certificate from it",
                r.hash, r.since_s
            ),
        });
    }
    if !crate::ca::may_hold(&api.db, &api.node) || api.ca_key.ca(&api.db).is_none() {
        return Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!(
                "the leader {} holds no CA key (a witness holds none); rotate the CA while a voter that runs resources leads",
                api.node
            ),
        });
    }
    let cluster = state.cluster_id.clone().unwrap_or_default();
    let now = std::time::SystemTime::now();
    let ca = Ca::generate(&cluster, now).map_err(|e| ApiError::bad(e.to_string()))?;
    let hash = ca.hash();
    api.ca_key.put_next(&ca).map_err(|message| ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message,
    })?;
    let begin = Command::BeginCaRotation {
        ca: vigil_core::security::CaCert {
            cert_pem: ca.cert_pem.clone(),
            legacy_key_pem: None,
        },
        hash: hash.clone(),
        at_s: now_s(),
    };
    let log = LogEntry::new(
        Component::NM,
        format!(
            "CA rotation to {hash} begun: every node trusts both CAs and renews its certificate from the new one"
        ),
    );
    api.commit(pending(vec![begin], vec![log])?).await?;
    Ok(Json(json!({ "rotating_to": hash })))
}
