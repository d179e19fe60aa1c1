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
use vigil_core::failover;
use vigil_core::model::{PersistentState, ResourceSpec};
use vigil_core::props::{GroupProps, ResourceProps};
use vigil_core::rcm::Input;
use vigil_rhs::types;

use vigil_db::{Db, WriteError};

use crate::clusterlog::{ClusterLog, Record};
use crate::membership;
use crate::service::{Msg, Service};
use crate::view;

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
    http: reqwest::Client,
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
) -> Router {
    let api = Api {
        tx,
        log,
        version,
        db,
        node: nm.name().to_string(),
        nm,
        http: reqwest::Client::new(),
    };
    // Node to node: refused unless the sender names this node's cluster.
    let nodes = api.db.same_cluster(
        Router::new()
            .route("/v1/nm/heartbeat", post(heartbeat))
            .route("/v1/cluster/join", post(join))
            .route("/v1/cluster/removed", post(removed)),
    );
    Router::new()
        .merge(nodes)
        .route("/v1/status", get(status))
        .route("/v1/types", get(list_types).post(register_type))
        .route("/v1/types/{name}", get(show_type).delete(unregister_type))
        .route("/v1/log", get(read_log))
        .route("/v1/cluster/identity", get(identity))
        .route("/v1/nodes/{name}", axum::routing::delete(remove_node))
        .route("/v1/nodes/{name}/drain", post(drain_node))
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
                    s.step(input);
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
    let view = api.call(|s| view::status(s)).await?;
    Ok(Json(serde_json::to_value(view).expect("status serializes")))
}

/// Built-in types, the OCF agents installed on this node, and the registered plugins.
async fn list_types(State(api): State<Api>) -> Json<Value> {
    let mut list: Vec<Value> = types::builtin()
        .iter()
        .map(|t| json!({ "name": t.name(), "kind": "builtin", "description": t.description() }))
        .collect();
    // Describing an OCF agent runs its meta-data: `vigil type show` does that for one.
    list.extend(
        types::ocf::installed().into_iter().map(
            |name| json!({ "name": name, "kind": "ocf", "description": "OCF resource agent" }),
        ),
    );
    list.extend(api.db.state().plugins.values().map(|p| {
        json!({ "name": p.name, "kind": "plugin", "description": p.description, "library": p.library })
    }));
    Json(json!({ "types": list }))
}

/// One type with its parameter schema (the seed's admin extension).
async fn show_type(State(api): State<Api>, Path(name): Path<String>) -> ApiResult {
    let registered = api.db.state().plugins.get(&name).cloned();
    if let Some(p) = registered {
        return Ok(Json(json!({
            "name": p.name, "kind": "plugin", "description": p.description,
            "library": p.library, "abi_version": p.abi_version, "parameters": p.schema,
        })));
    }
    let n = name.clone();
    let found = tokio::task::spawn_blocking(move || {
        types::find(&n, None).map(|t| (t.description().to_string(), t.schema()))
    })
    .await
    .map_err(|e| ApiError::bad(e.to_string()))?;
    let (description, schema) = found.map_err(|e| ApiError {
        status: StatusCode::NOT_FOUND,
        message: e,
    })?;
    let kind = if name.starts_with("ocf:") {
        "ocf"
    } else {
        "builtin"
    };
    Ok(Json(json!({
        "name": name, "kind": kind, "description": description, "parameters": schema,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterType {
    /// Absolute path of the plugin's shared library (the same on every node).
    library: String,
}

/// How long loading a plugin to read its table may take.
const PROBE_LIMIT: Duration = Duration::from_secs(10);

/// `vigil type register PATH`: the library is loaded in a throw-away `vigil plugin-probe`
/// process (never in the agent), which checks the ABI and reads the name and schema.
async fn register_type(
    State(api): State<Api>,
    body: Result<Json<RegisterType>, JsonRejection>,
) -> ApiResult {
    let Json(req) = body?;
    let plugin = probe_plugin(&req.library).await?;
    if types::builtin().iter().any(|t| t.name() == plugin.name) {
        return Err(ApiError::from(ApplyError::Conflict(format!(
            "plugin {} is named {:?}, which is a built-in type",
            req.library, plugin.name
        ))));
    }
    let name = plugin.name.clone();
    let log = db_log(format!(
        "type {name} registered: plugin {} (ABI version {})",
        plugin.library, plugin.abi_version
    ));
    let p = pending(vec![Command::RegisterPlugin { plugin }], vec![log])?;
    api.commit(p).await?;
    Ok(Json(json!({ "registered": name })))
}

async fn probe_plugin(library: &str) -> ApiResult<vigil_core::model::Plugin> {
    use std::os::unix::process::ExitStatusExt;
    let exe = std::env::current_exe().map_err(|e| ApiError::bad(e.to_string()))?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(["plugin-probe", library])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(PROBE_LIMIT, cmd.output())
        .await
        .map_err(|_| {
            ApiError::bad(format!(
                "plugin {library}: loading it did not finish within {} s",
                PROBE_LIMIT.as_secs()
            ))
        })?
        .map_err(|e| ApiError::bad(format!("cannot run the plugin probe: {e}")))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let said = said.strip_prefix("error: ").unwrap_or(&said).to_string();
        return Err(ApiError::bad(match out.status.signal() {
            Some(sig) => {
                format!("plugin {library}: loading it crashed the probe (signal {sig}) {said}")
            }
            None if said.is_empty() => format!(
                "plugin {library}: the probe exited with {} and said nothing",
                out.status
            ),
            None => said,
        }));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| ApiError::bad(format!("plugin {library}: unreadable probe answer: {e}")))
}

async fn unregister_type(State(api): State<Api>, Path(name): Path<String>) -> ApiResult {
    let log = db_log(format!("type {name} unregistered"));
    let p = pending(
        vec![Command::UnregisterPlugin { name: name.clone() }],
        vec![log],
    )?;
    api.commit(p).await?;
    Ok(Json(json!({ "unregistered": name })))
}

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct JoinRequest {
    name: String,
    address: String,
    #[serde(default)]
    witness: bool,
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
        self.forward(&leader, "the leader", method, path, body)
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
    ) -> ApiResult<Json<Value>> {
        let (header, cluster) = self.db.cluster_header();
        let mut req = self
            .http
            .request(method, format!("http://{addr}{path}"))
            .header(header, cluster);
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

async fn heartbeat(
    State(api): State<Api>,
    body: Result<Json<vigil_core::nm::Heartbeat>, JsonRejection>,
) -> ApiResult<Json<vigil_core::nm::HeartbeatReply>> {
    let Json(hb) = body?;
    api.nm
        .on_heartbeat(&api.db, &hb)
        .map(Json)
        .map_err(|message| ApiError {
            status: StatusCode::CONFLICT,
            message,
        })
}

/// Which cluster this node belongs to, and its name (what a joining node asks first, and
/// what the leader asks a joining node).
async fn identity(State(api): State<Api>) -> Json<Value> {
    let cluster_name = api.db.state().cluster_name.clone();
    Json(json!({
        "id": api.db.cluster_id(),
        "name": cluster_name,
        "node": api.node,
    }))
}

#[derive(Deserialize)]
struct RemovedNotice {
    by: String,
}

/// The leader removed this node from the cluster: it stops.
async fn removed(
    State(api): State<Api>,
    body: Result<Json<RemovedNotice>, JsonRejection>,
) -> ApiResult {
    let Json(notice) = body?;
    let reason = format!("the leader {} removed it", notice.by);
    api.tx
        .send(Msg::Removed { reason })
        .await
        .map_err(|_| ApiError::unavailable())?;
    Ok(Json(json!({ "stopping": api.node })))
}

async fn join(State(api): State<Api>, body: Result<Json<JoinRequest>, JsonRejection>) -> ApiResult {
    let Json(req) = body?;
    let body = serde_json::to_value(&req).expect("serializes");
    if let Some(answer) = api
        .on_leader(reqwest::Method::POST, "/v1/cluster/join", Some(body))
        .await?
    {
        return Ok(answer);
    }
    membership::admit(&api.db, &req.name, &req.address, req.witness).await?;
    let log = LogEntry::new(
        Component::NM,
        format!("node {} at {} admitted", req.name, req.address),
    );
    api.log.append([log]);
    Ok(Json(json!({ "joined": req.name })))
}

/// A name from the request's path, checked before it is used, above all before it is put into
/// a path forwarded to another node: decoded, `..%2Fgroups%2Fweb` would name another route.
fn path_name(kind: &str, name: &str) -> ApiResult<()> {
    vigil_core::model::validate_name(kind, name).map_err(ApiError::bad)
}

async fn remove_node(State(api): State<Api>, Path(name): Path<String>) -> ApiResult {
    path_name("node", &name)?;
    let path = format!("/v1/nodes/{name}");
    if let Some(answer) = api.on_leader(reqwest::Method::DELETE, &path, None).await? {
        return Ok(answer);
    }
    membership::remove(&api.db, &name).await?;
    api.log
        .append([LogEntry::new(Component::NM, format!("node {name} removed"))]);
    Ok(Json(json!({ "removed": name })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateGroup {
    name: String,
    /// Group properties by name (see [`GroupProps::NAMES`]); lists as JSON arrays or
    /// comma-separated text.
    #[serde(default)]
    props: BTreeMap<String, Value>,
    /// Shorthand for `props.preferred_owners`.
    #[serde(default)]
    preferred_owners: Vec<String>,
}

/// Group property changes from JSON (`["a","b"]` or `"a,b"`, numbers, text, `null` to clear).
fn apply_group_props(props: &mut GroupProps, changes: &BTreeMap<String, Value>) -> ApiResult<()> {
    for (k, v) in changes {
        let text = match v {
            Value::Null => String::new(),
            Value::Array(items) => items
                .iter()
                .map(|i| prop_text(k, i))
                .collect::<ApiResult<Vec<_>>>()?
                .join(","),
            v => prop_text(k, v)?,
        };
        props
            .set(k, &text)
            .map_err(|e| ApiError::bad(e.to_string()))?;
    }
    Ok(())
}

async fn create_group(
    State(api): State<Api>,
    body: Result<Json<CreateGroup>, JsonRejection>,
) -> ApiResult {
    let Json(mut req) = body?;
    if !req.preferred_owners.is_empty() {
        req.props.insert(
            "preferred_owners".to_string(),
            json!(req.preferred_owners.clone()),
        );
    }
    let mut props = GroupProps::default();
    apply_group_props(&mut props, &req.props)?;
    let name = req.name.clone();
    // Only reads this node's copy of the database: no trip through the main loop.
    let owner = failover::initial_owner(&api.db.state(), &props, &api.node)
    .ok_or_else(|| {
        ApiError::from(ApplyError::Conflict(
            "no node can host the group: no Up node that is not a witness among its possible owners".to_string(),
        ))
    })?;
    let log = db_log(format!("group {} created, owner {owner}", req.name));
    let cmd = Command::CreateGroup {
        name: req.name.clone(),
        props,
        owner: Some(owner),
    };
    let p = pending(vec![cmd], vec![log.group(&req.name, 1)])?;
    api.commit(p).await?;
    Ok(Json(json!({ "created": name })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateGroup {
    props: BTreeMap<String, Value>,
}

async fn update_group(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: Result<Json<UpdateGroup>, JsonRejection>,
) -> ApiResult {
    let Json(req) = body?;
    let n = name.clone();
    let p = api
        .call(move |s| {
            let g = s.state().groups.get(&n).cloned().ok_or_else(|| {
                ApiError::from(ApplyError::NotFound {
                    kind: "group".into(),
                    name: n.clone(),
                })
            })?;
            let mut props = g.props.clone();
            apply_group_props(&mut props, &req.props)?;
            let log = db_log(format!("group {n} properties changed")).group(&n, g.epoch);
            let cmd = Command::SetGroupProps { group: n, props };
            pending(vec![cmd], vec![log]).map_err(ApiError::from)
        })
        .await??;
    api.commit(p).await?;
    Ok(Json(json!({ "updated": name })))
}

/// How long `move`, `drain` and `resume` wait for the cluster to finish.
const MOVE_WAIT: Duration = Duration::from_secs(300);

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MoveRequest {
    /// Target node; by default the failover manager's choice.
    #[serde(default)]
    to: Option<String>,
    /// `live` (the default for groups that can migrate) or `quick` (save, move, restore).
    #[serde(default)]
    migration: Option<String>,
}

/// `vigil group move`: a planned handover (the owner stops the group, then the target starts
/// it). Answers once the group is settled on the target.
async fn move_group(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: Option<Json<MoveRequest>>,
) -> ApiResult {
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let quick = match req.migration.as_deref() {
        None | Some("live") => false,
        Some("quick") => true,
        Some(other) => {
            return Err(ApiError::bad(format!(
                "migration {other:?} is not valid: expected live or quick"
            )));
        }
    };
    let (cmd, from, to) = {
        let state = api.db.state();
        let g = state.groups.get(&name).ok_or_else(|| {
            ApiError::from(ApplyError::NotFound {
                kind: "group".into(),
                name: name.clone(),
            })
        })?;
        let from = g.owner.clone().unwrap_or_default();
        let to = match req.to {
            Some(to) => to,
            None => failover::choose_target(&state, &name, Some(&from), true, crate::fm::unix_ms())
                .ok_or_else(|| {
                    ApiError::from(ApplyError::Conflict(format!(
                        "no other node can take group {name:?} (none is Up, unpaused and a possible owner)"
                    )))
                })?,
        };
        let cmd = Command::MoveGroup {
            group: name.clone(),
            to: to.clone(),
            kind: vigil_core::model::MoveKind::Operator,
            quick,
        };
        (cmd, from, to)
    };
    let epoch = api.db.state().group_epoch(&name);
    let log = LogEntry::new(Component::FM, format!("operator moves the group to {to}"))
        .group(&name, epoch)
        .change(&from, &to);
    api.commit(pending(vec![cmd], vec![log])?).await?;
    let (g, target) = (name.clone(), to.clone());
    let settled = api
        .wait_for(MOVE_WAIT, move |s| {
            let db = s.state();
            db.groups.get(&g).is_none_or(|x| {
                let arrived = x.owner.as_deref() == Some(target.as_str());
                // A migration is over when the target has completed it, not at the cutover.
                x.moving.is_none()
                    && x.migration.is_none()
                    && (!arrived || x.failure.is_some() || vigil_core::model::settled(&db, &g))
            })
        })
        .await?;
    let state = api.db.state();
    let g = state.groups.get(&name);
    let owner = g.and_then(|g| g.owner.clone());
    if !settled {
        return Err(ApiError {
            status: StatusCode::GATEWAY_TIMEOUT,
            message: format!(
                "group {name:?} did not settle on {to} within {} s (owner now {})",
                MOVE_WAIT.as_secs(),
                owner.as_deref().unwrap_or("none")
            ),
        });
    }
    if owner.as_deref() != Some(to.as_str()) {
        let why = g
            .and_then(|g| g.failed_moves.iter().find(|f| f.to == to))
            .map_or(String::new(), |f| format!(" ({})", f.reason));
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            message: format!(
                "group {name:?} did not move to {to}{why}: owner is {} (see `vigil log --group {name}`)",
                owner.as_deref().unwrap_or("none")
            ),
        });
    }
    let state_now = g.map(|g| vigil_core::model::group_state(&state, g));
    Ok(Json(json!({
        "group": name, "from": from, "to": to,
        "epoch": g.map_or(0, |g| g.epoch), "state": state_now,
    })))
}

/// `vigil node drain`: Paused, and every group moved off in priority order. Answers once
/// the drain has ended, with the groups that could not move.
async fn drain_node(State(api): State<Api>, Path(name): Path<String>) -> ApiResult {
    let cmd = Command::SetDraining {
        name: name.clone(),
        draining: true,
    };
    let log = LogEntry::new(
        Component::NM,
        format!("operator drains node {name}: Paused"),
    );
    api.commit(pending(vec![cmd], vec![log])?).await?;
    let n = name.clone();
    let done = api
        .wait_for(MOVE_WAIT, move |s| {
            let db = s.state();
            db.nodes.get(&n).is_none_or(|x| !x.draining)
                && !db
                    .groups
                    .values()
                    .any(|g| g.moving.is_some() && g.drained_from.as_deref() == Some(n.as_str()))
        })
        .await?;
    let remaining: Vec<String> = api
        .db
        .state()
        .groups
        .values()
        .filter(|g| g.owner.as_deref() == Some(name.as_str()))
        .map(|g| g.name.clone())
        .collect();
    if !done {
        return Err(ApiError {
            status: StatusCode::GATEWAY_TIMEOUT,
            message: format!(
                "drain of {name} not finished within {} s; still on it: {}",
                MOVE_WAIT.as_secs(),
                remaining.join(", ")
            ),
        });
    }
    Ok(Json(
        json!({ "node": name, "state": "Paused", "remaining": remaining }),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ResumeRequest {
    /// Move the groups drained off the node back to it.
    #[serde(default)]
    failback: bool,
}

async fn resume_node(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: Option<Json<ResumeRequest>>,
) -> ApiResult {
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let back: Vec<String> = api
        .db
        .state()
        .groups
        .values()
        .filter(|g| req.failback && g.drained_from.as_deref() == Some(name.as_str()))
        .map(|g| g.name.clone())
        .collect();
    let cmd = Command::ResumeNode {
        name: name.clone(),
        failback: req.failback,
    };
    let what = if req.failback {
        format!(
            "operator resumes node {name}: Up; failing back {}",
            back.join(", ")
        )
    } else {
        format!("operator resumes node {name}: Up")
    };
    api.commit(pending(
        vec![cmd],
        vec![LogEntry::new(Component::NM, what)],
    )?)
    .await?;
    let (n, groups) = (name.clone(), back.clone());
    let done = api
        .wait_for(MOVE_WAIT, move |s| {
            let db = s.state();
            groups
                .iter()
                .all(|g| db.groups.get(g).is_none_or(|g| g.moving.is_none()))
        })
        .await?;
    if !done {
        return Err(ApiError {
            status: StatusCode::GATEWAY_TIMEOUT,
            message: format!(
                "node {n} resumed, but the failback did not finish within {} s",
                MOVE_WAIT.as_secs()
            ),
        });
    }
    Ok(Json(
        json!({ "node": name, "state": "Up", "failed_back": back }),
    ))
}

async fn delete_group(State(api): State<Api>, Path(name): Path<String>) -> ApiResult {
    stop_then_delete(&api, Target::Group(name.clone())).await?;
    Ok(Json(json!({ "deleted": name })))
}

/// Deletes a group or resource the way an operator expects: desired Offline, wait (bounded)
/// until nothing of it runs, then remove it from the database.
async fn stop_then_delete(api: &Api, target: Target) -> ApiResult<()> {
    set_desired(api, target.clone(), PersistentState::Offline).await?;
    let t = target.clone();
    let stopped = api
        .wait_for(STOP_WAIT, move |s| {
            let db = s.state();
            match &t {
                Target::Group(g) => !db.group_resources(g).any(|r| r.state.may_run()),
                Target::Resource(r) => db.resources.get(r).is_none_or(|r| !r.state.may_run()),
            }
        })
        .await?;
    let (kind, name, cmd, log) = match target {
        Target::Group(g) => {
            let log =
                db_log(format!("group {g} deleted")).group(&g, api.db.state().group_epoch(&g));
            ("group", g.clone(), Command::DeleteGroup { name: g }, log)
        }
        Target::Resource(r) => {
            let log = db_log(format!("resource {r} deleted")).resource(&r);
            (
                "resource",
                r.clone(),
                Command::DeleteResource { name: r },
                log,
            )
        }
    };
    if !stopped {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            message: format!(
                "{kind} {name:?} did not stop within {} s; it was not deleted",
                STOP_WAIT.as_secs()
            ),
        });
    }
    api.commit(pending(vec![cmd], vec![log])?).await
}

async fn group_action(
    State(api): State<Api>,
    Path((name, action)): Path<(String, String)>,
) -> ApiResult {
    let desired = match action.as_str() {
        "online" => PersistentState::Online,
        "offline" => PersistentState::Offline,
        other => {
            return Err(ApiError::bad(format!(
                "unknown group action {other:?}; use online or offline"
            )));
        }
    };
    set_desired(&api, Target::Group(name.clone()), desired).await?;
    Ok(Json(json!({ "group": name, "persistent_state": desired })))
}

/// Records an operator's desired state; the RCM forgets past failures of every resource it
/// changed (the target, and the providers or dependents the change spread to).
async fn set_desired(api: &Api, target: Target, desired: PersistentState) -> ApiResult<()> {
    let p = api
        .call(move |s| {
            let db = s.state();
            let before: BTreeMap<String, PersistentState> = db
                .resources
                .values()
                .map(|r| (r.name.clone(), r.persistent_state))
                .collect();
            let group = match &target {
                Target::Group(g) => Some(g.clone()),
                Target::Resource(r) => db.resources.get(r).map(|r| r.group.clone()),
            };
            let mut log = db_log(format!("operator set desired state to {desired}"));
            if let Some(g) = &group {
                log = log.group(g, db.group_epoch(g));
            }
            let mut touched: Vec<String> = match &target {
                Target::Group(g) => db.group_resources(g).map(|r| r.name.clone()).collect(),
                Target::Resource(r) => {
                    log = log.resource(r);
                    vec![r.clone()]
                }
            };
            let cmd = Command::SetPersistentState {
                target,
                state: desired,
            };
            pending_then(vec![cmd], vec![log], move |s| {
                touched.extend(
                    s.state()
                        .resources
                        .values()
                        .filter(|r| before.get(&r.name) != Some(&r.persistent_state))
                        .map(|r| r.name.clone()),
                );
                Input::Operator { resources: touched }
            })
        })
        .await??;
    api.commit(p).await?;
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateResource {
    name: String,
    group: String,
    #[serde(rename = "type")]
    type_name: String,
    #[serde(default)]
    params: BTreeMap<String, String>,
    #[serde(default)]
    props: BTreeMap<String, Value>,
    #[serde(default)]
    depends_on: Vec<String>,
}

/// A property's text form from JSON (`5000`, `"5000"`, `true`).
fn prop_text(name: &str, v: &Value) -> ApiResult<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(ApiError::bad(format!(
            "property {name} must be a string, number or boolean, got {other}"
        ))),
    }
}

fn apply_props(props: &mut ResourceProps, changes: &BTreeMap<String, Value>) -> ApiResult<()> {
    for (k, v) in changes {
        props
            .set(k, &prop_text(k, v)?)
            .map_err(|e| ApiError::bad(e.to_string()))?;
    }
    Ok(())
}

/// Checks parameters against the type (its schema, its own checks, the deadlock bound) and
/// the type's unique parameters against the other resources (`apply` checks those again, when
/// the write lands). Finding an OCF type runs its meta-data, so this runs off the async
/// threads and outside the main loop. Answers whether the type can migrate, and the names of
/// its unique parameters.
async fn check_params(
    api: &Api,
    resource: &str,
    type_name: &str,
    p: &BTreeMap<String, String>,
    props: &ResourceProps,
) -> ApiResult<(bool, Vec<String>)> {
    let plugin = api.db.state().plugins.get(type_name).cloned();
    let (t, params, deadlock) = (type_name.to_string(), p.clone(), props.deadlock_timeout_ms);
    let checked = tokio::task::spawn_blocking(move || {
        types::validate(&t, &params, deadlock, plugin.as_ref())
    })
    .await
    .map_err(|e| ApiError::bad(e.to_string()))?
    .map_err(ApiError::bad)?;
    let unique: Vec<String> = checked
        .schema
        .iter()
        .filter(|s| s.unique)
        .map(|s| s.name.clone())
        .collect();
    let state = api.db.state();
    check_unique(&state, resource, type_name, &unique, p)?;
    Ok((checked.can_migrate, unique))
}

async fn create_resource(
    State(api): State<Api>,
    body: Result<Json<CreateResource>, JsonRejection>,
) -> ApiResult {
    let Json(req) = body?;
    let mut props = ResourceProps::default();
    apply_props(&mut props, &req.props)?;
    let (migratable, unique) =
        check_params(&api, &req.name, &req.type_name, &req.params, &props).await?;
    let name = req.name.clone();
    let spec = ResourceSpec {
        name: req.name,
        group: req.group,
        type_name: req.type_name,
        params: req.params,
        props,
        depends_on: req.depends_on,
        migratable,
        unique,
    };
    let p = api
        .call(move |s| {
            let log = db_log(format!(
                "resource {} ({}) created in group {}",
                spec.name, spec.type_name, spec.group
            ))
            .group(&spec.group, s.state().group_epoch(&spec.group))
            .resource(&spec.name);
            pending(vec![Command::CreateResource { spec }], vec![log])
        })
        .await??;
    api.commit(p).await?;
    Ok(Json(json!({ "created": name })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateResource {
    /// `null` removes a parameter.
    #[serde(default)]
    params: BTreeMap<String, Option<String>>,
    #[serde(default)]
    props: BTreeMap<String, Value>,
    #[serde(default)]
    depends_on: Option<Vec<String>>,
}

async fn update_resource(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: Result<Json<UpdateResource>, JsonRejection>,
) -> ApiResult {
    let Json(req) = body?;
    let n = name.clone();
    let read = api
        .call(move |s| {
            s.state().resources.get(&n).cloned().ok_or_else(|| {
                ApiError::from(ApplyError::NotFound {
                    kind: "resource".into(),
                    name: n.clone(),
                })
            })
        })
        .await??;
    let mut params = read.params.clone();
    for (k, v) in &req.params {
        match v {
            Some(v) => params.insert(k.clone(), v.clone()),
            None => params.remove(k),
        };
    }
    let mut props = read.props.clone();
    apply_props(&mut props, &req.props)?;
    // Checking may run an agent's meta-data: not inside the main loop.
    check_params(&api, &name, &read.type_name, &params, &props).await?;
    let n = name.clone();
    let p = api
        .call(move |s| {
            let state = s.state();
            let unchanged = state.resources.get(&n).is_some_and(|r| {
                r.params == read.params && r.props == read.props && r.depends_on == read.depends_on
            });
            if !unchanged {
                return Err(ApiError::from(ApplyError::Conflict(format!(
                    "resource {n:?} changed while this update was being checked; try again"
                ))));
            }
            let cmd = Command::UpdateResource {
                name: n.clone(),
                params,
                props,
                depends_on: req.depends_on.unwrap_or(read.depends_on.clone()),
            };
            let log = db_log(format!(
                "resource {n} changed (parameters take effect at its next online)"
            ))
            .group(&read.group, state.group_epoch(&read.group))
            .resource(&n);
            pending(vec![cmd], vec![log]).map_err(ApiError::from)
        })
        .await??;
    api.commit(p).await?;
    Ok(Json(json!({ "updated": name })))
}

async fn delete_resource(State(api): State<Api>, Path(name): Path<String>) -> ApiResult {
    let n = name.clone();
    let dependents: Vec<String> = api
        .call(move |s| s.state().dependents(&n).map(|d| d.name.clone()).collect())
        .await?;
    if !dependents.is_empty() {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            message: format!(
                "resource {name:?} is a dependency of {}; remove that dependency first",
                dependents.join(", ")
            ),
        });
    }
    stop_then_delete(&api, Target::Resource(name.clone())).await?;
    Ok(Json(json!({ "deleted": name })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlRequest {
    request: String,
}

/// Longest wait for a control request's answer (the call itself is under the deadlock
/// watchdog of its RHS).
const CONTROL_WAIT: Duration = Duration::from_secs(60);

/// `vigil resource control NAME REQUEST` (the seed's ResourceControl): answered by the
/// resource's type on the node that owns its group; any node passes it there.
async fn control_resource(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: Result<Json<ControlRequest>, JsonRejection>,
) -> ApiResult {
    let Json(req) = body?;
    let owner = {
        let state = api.db.state();
        let r = state.resources.get(&name).ok_or_else(|| {
            ApiError::from(ApplyError::NotFound {
                kind: "resource".into(),
                name: name.clone(),
            })
        })?;
        let owner = state.groups.get(&r.group).and_then(|g| g.owner.clone());
        owner.and_then(|o| state.nodes.get(&o).map(|n| (o, n.address.clone())))
    };
    let Some((owner, address)) = owner else {
        return Err(ApiError::from(ApplyError::Conflict(format!(
            "resource {name:?} has no owner to ask"
        ))));
    };
    if owner != api.node {
        path_name("resource", &name)?;
        let path = format!("/v1/resources/{name}/control");
        let body = json!({ "request": req.request });
        return api
            .forward(
                &address,
                &format!("its owner {owner}"),
                reqwest::Method::POST,
                &path,
                Some(body),
            )
            .await;
    }
    let (tx, rx) = oneshot::channel();
    let (n, request) = (name.clone(), req.request.clone());
    api.call(move |s| s.hosts.control(&n, request, tx)).await?;
    let answer = tokio::time::timeout(CONTROL_WAIT, rx)
        .await
        .map_err(|_| ApiError {
            status: StatusCode::GATEWAY_TIMEOUT,
            message: format!(
                "no answer from {name}'s RHS within {} s",
                CONTROL_WAIT.as_secs()
            ),
        })?
        .map_err(|_| ApiError::unavailable())?;
    match answer {
        Ok(reply) => Ok(Json(
            json!({ "resource": name, "node": owner, "reply": reply }),
        )),
        Err(why) => Err(ApiError::from(ApplyError::Conflict(format!(
            "{name} on {owner}: {why}"
        )))),
    }
}

async fn resource_action(
    State(api): State<Api>,
    Path((name, action)): Path<(String, String)>,
) -> ApiResult {
    match action.as_str() {
        "online" => {
            set_desired(
                &api,
                Target::Resource(name.clone()),
                PersistentState::Online,
            )
            .await?
        }
        "offline" => {
            set_desired(
                &api,
                Target::Resource(name.clone()),
                PersistentState::Offline,
            )
            .await?
        }
        "fail" => {
            let n = name.clone();
            api.call(move |s| {
                let state = s.state().resources.get(&n).map(|r| r.state);
                let state = state.ok_or_else(|| ApplyError::NotFound {
                    kind: "resource".into(),
                    name: n.clone(),
                })?;
                if !state.may_run() {
                    return Err(ApplyError::Conflict(format!(
                        "resource {n:?} is {state}; only a running resource can be failed"
                    )));
                }
                s.log.append([
                    LogEntry::new(Component::RCM, "operator simulates a failure").resource(&n),
                ]);
                s.step(Input::SimulateFailure {
                    resource: n.clone(),
                });
                Ok(())
            })
            .await??;
        }
        other => {
            return Err(ApiError::bad(format!(
                "unknown resource action {other:?}; use online, offline or fail"
            )));
        }
    }
    Ok(Json(json!({ "resource": name, "action": action })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
    resource: Option<String>,
    group: Option<String>,
    /// Wait up to this long for a record after `after` (long poll).
    wait_ms: Option<u64>,
}

async fn read_log(
    State(api): State<Api>,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<Record>>> {
    let Query(q) = query.map_err(|e| ApiError::bad(format!("query: {}", e.body_text())))?;
    let limit = q.limit.unwrap_or(1_000).min(MAX_LOG_LIMIT);
    let matches = |r: &Record| {
        q.resource
            .as_ref()
            .is_none_or(|x| r.entry.resource.as_ref() == Some(x))
            && q.group
                .as_ref()
                .is_none_or(|x| r.entry.group.as_ref() == Some(x))
    };
    let mut records = api.log.read(q.after, limit, matches);
    if records.is_empty()
        && let Some(wait) = q.wait_ms
    {
        let mut seq = api.log.subscribe();
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(wait.min(MAX_LOG_WAIT_MS));
        while records.is_empty() {
            if !matches!(
                tokio::time::timeout_at(deadline, seq.changed()).await,
                Ok(Ok(()))
            ) {
                break;
            }
            records = api.log.read(q.after, limit, matches);
        }
    }
    Ok(Json(records))
}
