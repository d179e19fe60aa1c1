//! The agent's HTTP/JSON API (`/v1/...`). Handlers validate input, then run a closure inside
//! the main loop (see [`crate::service`]) so that reading, checking and writing the database
//! happen as one step. Every error is `{"error": "..."}` with a status code that fits.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use vigil_core::command::{ApplyError, Command, Target, check_unique};
use vigil_core::event::{Component, LogEntry};
use vigil_core::exec;
use vigil_core::failover;
use vigil_core::intent;
use vigil_core::model::{PersistentState, ResourceSpec};
use vigil_core::props::{GroupProps, ResourceProps};
use vigil_core::rcm::Input;

use vigil_db::{Db, WriteError};

use crate::clusterlog::{ClusterLog, Record};
use crate::membership;
use crate::service::{Msg, Service};
use crate::view;

pub mod auth;
mod groups;
mod log;
mod nodes;
mod resources;
mod security;
mod types;

use groups::{
    create_group, delete_group, group_action, move_group, set_desired, stop_then_delete,
    update_group,
};
use log::read_log;
use nodes::{
    cluster_settings, drain_node, fence_node, heartbeat, identity, join, remove_fence_device,
    remove_node, removed, resume_node, set_cluster_settings, set_fence_device,
};
use resources::{
    control_resource, create_resource, delete_resource, prop_text, resource_action, update_resource,
};
use security::{
    ca_key_held, certify, certs, create_token, hand_ca_key, list_tokens, renew, revoke_token,
    rotate_ca, sign_for_leader,
};
use types::{list_types, register_type, show_type, unregister_type};

/// How long a delete waits for the resources to stop before giving up.
const STOP_WAIT: Duration = Duration::from_secs(120);
/// Longest long-poll of `GET /v1/log`.
const MAX_LOG_WAIT_MS: u64 = 60_000;
/// Most records one `GET /v1/log` returns.
const MAX_LOG_LIMIT: usize = 10_000;

#[derive(Clone)]
pub struct Api {
    tx: mpsc::Sender<Msg>,
    log: ClusterLog,
    version: watch::Receiver<u64>,
    db: Db,
    nm: crate::nm::Nm,
    /// This node's requests to its peers (mutual TLS).
    http: reqwest::Client,
    tls: vigil_tls::Tls,
    /// The CA key, when this node holds it.
    ca_key: crate::ca::CaKey,
    /// This node's name.
    node: String,
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn bad(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
    fn unavailable() -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "the agent is shutting down".to_string(),
        }
    }
}

impl From<ApplyError> for ApiError {
    fn from(e: ApplyError) -> Self {
        let status = match e {
            ApplyError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApplyError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApplyError::Exists { .. } | ApplyError::Conflict(_) => StatusCode::CONFLICT,
        };
        Self {
            status,
            message: e.to_string(),
        }
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: e.to_string(),
        }
    }
}

impl From<crate::drain::DrainError> for ApiError {
    fn from(e: crate::drain::DrainError) -> Self {
        match e {
            crate::drain::DrainError::Write(e) => e.into(),
            crate::drain::DrainError::Refused(e) => e.into(),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        Self::bad(format!("request body: {}", e.body_text()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

type ApiResult<T = Json<Value>> = Result<T, ApiError>;

pub fn router(
    tx: mpsc::Sender<Msg>,
    log: ClusterLog,
    version: watch::Receiver<u64>,
    db: Db,
    nm: crate::nm::Nm,
    tls: vigil_tls::Tls,
    ca_key: crate::ca::CaKey,
) -> Router {
    let api = Api {
        ca_key,
        tx,
        log,
        version,
        http: db.peer_client(),
        db,
        node: nm.name().to_string(),
        nm,
        tls,
    };
    // Node to node: refused unless the caller is a node of this cluster.
    let nodes = api.db.node_routes(
        Router::new()
            .route("/v1/nm/heartbeat", post(heartbeat))
            .route("/v1/cluster/join", post(join))
            .route("/v1/cluster/removed", post(removed))
            .route("/v1/cluster/renew", post(renew))
            .route("/v1/cluster/sign", post(sign_for_leader))
            .route("/v1/cluster/ca-key", post(hand_ca_key))
            .route("/v1/cluster/ca-key/held", post(ca_key_held)),
    );
    Router::new()
        .merge(nodes)
        .route("/v1/cluster/certify", post(certify))
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/tokens/{id}", axum::routing::delete(revoke_token))
        .route("/v1/certs", get(certs))
        .route("/v1/ca/rotate", post(rotate_ca))
        .route("/v1/status", get(status))
        .route("/v1/types", get(list_types).post(register_type))
        .route("/v1/types/{name}", get(show_type).delete(unregister_type))
        .route("/v1/log", get(read_log))
        .route("/v1/cluster/identity", get(identity))
        .route(
            "/v1/cluster/settings",
            get(cluster_settings).put(set_cluster_settings),
        )
        .route("/v1/nodes/{name}", axum::routing::delete(remove_node))
        .route("/v1/nodes/{name}/drain", post(drain_node))
        .route(
            "/v1/nodes/{name}/fence-device",
            post(set_fence_device).delete(remove_fence_device),
        )
        .route("/v1/nodes/{name}/fence", post(fence_node))
        .route("/v1/nodes/{name}/resume", post(resume_node))
        .route("/v1/groups", post(create_group))
        .route(
            "/v1/groups/{name}",
            axum::routing::delete(delete_group).patch(update_group),
        )
        .route("/v1/groups/{name}/move", post(move_group))
        .route("/v1/groups/{name}/{action}", post(group_action))
        .route("/v1/resources", post(create_resource))
        .route(
            "/v1/resources/{name}",
            axum::routing::delete(delete_resource).patch(update_resource),
        )
        .route("/v1/resources/{name}/control", post(control_resource))
        .route("/v1/resources/{name}/{action}", post(resource_action))
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                message: "no such API path".to_string(),
            }
        })
        .layer(axum::middleware::from_fn_with_state(
            api.clone(),
            auth::authorize,
        ))
        .with_state(api)
        .layer(axum::middleware::from_fn(json_errors))
}

/// Every error answer is `{"error": "..."}`, also those axum makes itself (a method the path
/// does not take, a body its extractor refused): their text, or what the status means, with
/// the method and path.
async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let resp = next.run(req).await;
    let status = resp.status();
    let json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let what = status.canonical_reason().unwrap_or("error").to_lowercase();
    let message = if text.is_empty() {
        match status {
            StatusCode::METHOD_NOT_ALLOWED => {
                format!("{method} is not allowed on {path}")
            }
            _ => format!("{method} {path}: {what}"),
        }
    } else {
        format!("{method} {path}: {text}")
    };
    let mut out = (parts.status, Json(json!({ "error": message }))).into_response();
    if let Some(allow) = parts.headers.get(axum::http::header::ALLOW) {
        out.headers_mut()
            .insert(axum::http::header::ALLOW, allow.clone());
    }
    out
}

/// What the RCM gets once an operator change is applied here (beyond the reconcile pass every
/// applied entry triggers anyway).
type Then = Box<dyn FnOnce(&Service) -> Input + Send>;

/// An operator change prepared in the main loop, to be written through the cluster database.
struct Pending {
    cmds: Vec<Command>,
    log: Vec<LogEntry>,
    /// The RCM's input once the change is applied here.
    then: Option<Then>,
}

fn pending(cmds: Vec<Command>, log: Vec<LogEntry>) -> Result<Pending, ApplyError> {
    Ok(Pending {
        cmds,
        log,
        then: None,
    })
}

fn pending_then(
    cmds: Vec<Command>,
    log: Vec<LogEntry>,
    then: impl FnOnce(&Service) -> Input + Send + 'static,
) -> Result<Pending, ApplyError> {
    Ok(Pending {
        cmds,
        log,
        then: Some(Box::new(then)),
    })
}

impl Api {
    /// Writes a prepared change through the cluster database (the leader), then logs it and
    /// lets the RCM act on it here.
    async fn commit(&self, p: Pending) -> ApiResult<()> {
        let results = self.db.write(p.cmds).await.map_err(ApiError::from)?;
        if let Some(e) = results.into_iter().find_map(Result::err) {
            return Err(e.into());
        }
        self.log.append(p.log);
        match p.then {
            Some(then) => {
                self.call(move |s| {
                    let input = then(s);
                    exec::settle(s, input);
                })
                .await
            }
            None => Ok(()),
        }
    }

    /// Runs `f` in the main loop and returns its result.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Service) -> T + Send + 'static,
    ) -> ApiResult<T> {
        let (tx, rx) = oneshot::channel();
        let msg = Msg::Call(Box::new(move |s| {
            let _ = tx.send(f(s));
        }));
        self.tx
            .send(msg)
            .await
            .map_err(|_| ApiError::unavailable())?;
        rx.await.map_err(|_| ApiError::unavailable())
    }

    /// Waits until `done` holds, re-checking after every batch of the main loop.
    async fn wait_for(
        &self,
        limit: Duration,
        done: impl Fn(&Service) -> bool + Clone + Send + 'static,
    ) -> ApiResult<bool> {
        let mut version = self.version.clone();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            version.borrow_and_update();
            let check = done.clone();
            if self.call(move |s| check(s)).await? {
                return Ok(true);
            }
            if tokio::time::timeout_at(deadline, version.changed())
                .await
                .is_err()
            {
                return Ok(false);
            }
        }
    }
}

fn db_log(reason: String) -> LogEntry {
    LogEntry::new(Component::DB, reason)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusQuery {
    /// Linearizable: answered by the leader once it has confirmed its leadership with a
    /// majority and applied everything committed before the request.
    #[serde(default)]
    consistent: bool,
}

async fn status(
    State(api): State<Api>,
    query: Result<Query<StatusQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(q) = query.map_err(|e| ApiError::bad(format!("query: {}", e.body_text())))?;
    if q.consistent {
        if let Some(answer) = api
            .on_leader(reqwest::Method::GET, "/v1/status?consistent=true", None)
            .await?
        {
            return Ok(answer);
        }
        let limit = Duration::from_secs(5);
        match tokio::time::timeout(limit, api.db.raft().ensure_linearizable()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(ApiError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message: format!("cannot serve a consistent read: {e}"),
                });
            }
            Err(_) => {
                return Err(ApiError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message: "cannot serve a consistent read: leadership not confirmed by a majority within 5 s".to_string(),
                });
            }
        }
    }
    let mut view = api.call(|s| view::status(s)).await?;
    view.certificate = api.tls.identity().map(|c| view::CertView {
        not_after_s: c.not_after_s,
        renewal_error: api.tls.renewal_error(),
    });
    Ok(Json(serde_json::to_value(view).expect("status serializes")))
}

impl From<membership::Refused> for ApiError {
    fn from(r: membership::Refused) -> Self {
        let (status, message) = match r {
            membership::Refused::Invalid(m) => (StatusCode::BAD_REQUEST, m),
            membership::Refused::Conflict(m) => (StatusCode::CONFLICT, m),
            membership::Refused::NotFound(m) => (StatusCode::NOT_FOUND, m),
            membership::Refused::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
        };
        Self { status, message }
    }
}

impl Api {
    /// Membership changes run on the leader: elsewhere, the request is passed on to it and
    /// its answer passed back.
    async fn on_leader(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> ApiResult<Option<Json<Value>>> {
        if self.db.is_leader() {
            return Ok(None);
        }
        let leader = self.db.leader_addr().ok_or_else(|| ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "no leader is known right now (an election may be under way, or this node is cut off); try again".to_string(),
        })?;
        self.forward(&leader, "the leader", method, path, body, &[])
            .await
            .map(Some)
    }

    /// Sends the request to another node's API (`who` names it in errors) and passes its
    /// answer on.
    async fn forward(
        &self,
        addr: &str,
        who: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> ApiResult<Json<Value>> {
        let mut req = self.http.request(method, format!("https://{addr}{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.map_err(|e| ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!("cannot reach {who} at {addr}: {e}"),
        })?;
        let status =
            StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let value: Value = resp.json().await.unwrap_or_default();
        if status.is_success() {
            Ok(Json(value))
        } else {
            let message = value["error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("{who} refused without a reason"));
            Err(ApiError { status, message })
        }
    }
}

/// A name from the request's path, checked before it is used, above all before it is put into
/// a path forwarded to another node: decoded, `..%2Fgroups%2Fweb` would name another route.
fn path_name(kind: &str, name: &str) -> ApiResult<()> {
    vigil_core::names::validate_name(kind, name).map_err(ApiError::bad)
}

/// How long `move`, `drain` and `resume` wait for the cluster to finish.
const MOVE_WAIT: Duration = Duration::from_secs(300);
