//! Nodes: heartbeats, joins and removals between nodes; an operator's drain and resume.

use axum::Extension;
use vigil_db::network::Sender;
use vigil_tls::Peer;

use super::*;

/// The header with which a node passes a joining node's certificate fingerprint on to the
/// leader (the leader checks it against the certificate it issued).
const JOINER_HEADER: &str = "x-vigil-joiner";

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JoinRequest {
    name: String,
    address: String,
    #[serde(default)]
    witness: bool,
}

pub(super) async fn heartbeat(
    State(api): State<Api>,
    Extension(from): Extension<Sender>,
    body: Result<Json<vigil_core::nm::Heartbeat>, JsonRejection>,
) -> ApiResult<Json<vigil_core::nm::HeartbeatReply>> {
    let Json(hb) = body?;
    if hb.name != from.name {
        let message = format!(
            "a heartbeat from node {} (its certificate says so) in the name of {}: a node speaks only for itself",
            from.name, hb.name
        );
        tracing::warn!("refused {message}");
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            message,
        });
    }
    api.nm
        .on_heartbeat(&api.db, &api.log, &api.http, hb)
        .map(Json)
        .map_err(|message| ApiError {
            status: StatusCode::CONFLICT,
            message,
        })
}

/// Which cluster this node belongs to, and its name (what a joining node asks first, and
/// what the leader asks a joining node).
pub(super) async fn identity(State(api): State<Api>) -> Json<Value> {
    let cluster_name = api.db.state().cluster_name.clone();
    Json(json!({
        "id": api.db.cluster_id(),
        "name": cluster_name,
        "node": api.node,
    }))
}

#[derive(Deserialize)]
pub(super) struct RemovedNotice {
    by: String,
}

/// The leader removed this node from the cluster: it stops.
pub(super) async fn removed(
    State(api): State<Api>,
    Extension(from): Extension<Sender>,
    body: Result<Json<RemovedNotice>, JsonRejection>,
) -> ApiResult {
    let Json(notice) = body?;
    // Only the leader removes nodes (it tells the node once the removal is written).
    let leader = api.db.raft().metrics().borrow().current_leader;
    if leader != Some(from.id) || notice.by != from.name {
        let message = format!(
            "a removal notice from node {} (in the name of {}), which is not this node's leader",
            from.name, notice.by
        );
        tracing::warn!("refused {message}");
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            message,
        });
    }
    let reason = format!("the leader {} removed it", notice.by);
    api.tx
        .send(Msg::Removed { reason })
        .await
        .map_err(|_| ApiError::unavailable())?;
    Ok(Json(json!({ "stopping": api.node })))
}

/// The second step of a join: the new node, with the certificate it got for its join token
/// (see `certify`), asks to be admitted. Only the leader admits: elsewhere the request is
/// passed on, with the certificate's fingerprint.
pub(super) async fn join(
    State(api): State<Api>,
    Extension(peer): Extension<Peer>,
    Extension(from): Extension<Sender>,
    headers: axum::http::HeaderMap,
    body: Result<Json<JoinRequest>, JsonRejection>,
) -> ApiResult {
    let Json(req) = body?;
    let fingerprint = match &peer {
        Peer::Node(cert) if cert.node == req.name => cert.fingerprint.clone(),
        // A member passing a joining node's request on.
        Peer::Node(_) if api.db.state().nodes.contains_key(&from.name) => headers
            .get(JOINER_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        _ => {
            return Err(ApiError {
                status: StatusCode::FORBIDDEN,
                message: format!(
                    "node {} cannot ask to admit {}: a node joins with the certificate issued to it for a join token",
                    from.name, req.name
                ),
            });
        }
    };
    if !api.db.is_leader() {
        let leader = api.db.leader_addr().ok_or_else(|| ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "no leader is known right now; try again".to_string(),
        })?;
        let body = serde_json::to_value(&req).expect("serializes");
        return api
            .forward(
                &leader,
                "the leader",
                reqwest::Method::POST,
                "/v1/cluster/join",
                Some(body),
                &[(JOINER_HEADER, &fingerprint)],
            )
            .await;
    }
    let issued = api
        .db
        .state()
        .security
        .certs
        .get(&req.name)
        .map(|c| c.fingerprint.clone());
    if issued.as_deref() != Some(fingerprint.as_str()) || fingerprint.is_empty() {
        return Err(ApiError {
            status: StatusCode::FORBIDDEN,
            message: format!(
                "the certificate {} is not the one issued to {} for its join token; join again with a new token",
                if fingerprint.is_empty() {
                    "(none)"
                } else {
                    &fingerprint
                },
                req.name
            ),
        });
    }
    membership::admit(&api.db, &req.name, &req.address, req.witness).await?;
    let log = LogEntry::new(
        Component::NM,
        format!("node {} at {} admitted", req.name, req.address),
    );
    api.log.append([log]);
    Ok(Json(json!({ "joined": req.name })))
}

pub(super) async fn remove_node(State(api): State<Api>, Path(name): Path<String>) -> ApiResult {
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

/// `vigil node drain`: Paused, and every group moved off in priority order. Answers once
/// the drain has ended, with the groups that could not move.
pub(super) async fn drain_node(State(api): State<Api>, Path(name): Path<String>) -> ApiResult {
    let drained = crate::drain::drain(&api.db, &api.log, &name, "operator", MOVE_WAIT).await?;
    if !drained.done {
        return Err(ApiError {
            status: StatusCode::GATEWAY_TIMEOUT,
            message: format!(
                "drain of {name} not finished within {} s; still on it: {}",
                MOVE_WAIT.as_secs(),
                drained.remaining.join(", ")
            ),
        });
    }
    Ok(Json(
        json!({ "node": name, "state": "Paused", "remaining": drained.remaining }),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ResumeRequest {
    /// Move the groups drained off the node back to it.
    #[serde(default)]
    failback: bool,
}

pub(super) async fn resume_node(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: Option<Json<ResumeRequest>>,
) -> ApiResult {
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let back = match req.failback {
        true => intent::failback_groups(&api.db.state(), &name),
        false => Vec::new(),
    };
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
            intent::moves_settled(&s.state(), &groups)
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FenceDeviceRequest {
    agent: String,
    #[serde(default)]
    params: BTreeMap<String, String>,
}

/// Gives node `name` a fence device, once the leader (which runs it) has checked it with
/// `monitor`.
pub(super) async fn set_fence_device(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: Result<Json<FenceDeviceRequest>, JsonRejection>,
) -> ApiResult {
    let Json(req) = body?;
    path_name("node", &name)?;
    let forwarded = json!({ "agent": req.agent, "params": req.params });
    if let Some(answer) = api
        .on_leader(
            reqwest::Method::POST,
            &format!("/v1/nodes/{name}/fence-device"),
            Some(forwarded),
        )
        .await?
    {
        return Ok(answer);
    }
    if !api.db.state().nodes.contains_key(&name) {
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("node {name:?} not found"),
        });
    }
    if !req.agent.starts_with('/') {
        return Err(ApiError::bad(format!(
            "fence agent {:?} is not an absolute path",
            req.agent
        )));
    }
    let device = vigil_core::model::FenceDevice {
        agent: req.agent,
        params: req.params,
    };
    crate::fence::monitor(&device, &name)
        .await
        .map_err(|e| ApiError::bad(format!("the fence device of {name} does not work: {e}")))?;
    let log = LogEntry::new(
        Component::NM,
        format!(
            "node {name} has a fence device now: {} (checked with monitor)",
            device.agent
        ),
    );
    let cmd = Command::SetFenceDevice {
        node: name.clone(),
        device: Some(device),
    };
    api.commit(pending(vec![cmd], vec![log])?).await?;
    Ok(Json(json!({ "node": name, "fence_device": "set" })))
}

pub(super) async fn remove_fence_device(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> ApiResult {
    let cmd = Command::SetFenceDevice {
        node: name.clone(),
        device: None,
    };
    let log = LogEntry::new(
        Component::NM,
        format!("node {name} has no fence device now"),
    );
    api.commit(pending(vec![cmd], vec![log])?).await?;
    Ok(Json(json!({ "node": name, "fence_device": "removed" })))
}

/// `vigil node fence NAME`: the leader powers the node off with its device; it is then
/// recorded Down and its groups recovered.
pub(super) async fn fence_node(State(api): State<Api>, Path(name): Path<String>) -> ApiResult {
    path_name("node", &name)?;
    if let Some(answer) = api
        .on_leader(
            reqwest::Method::POST,
            &format!("/v1/nodes/{name}/fence"),
            Some(json!({})),
        )
        .await?
    {
        return Ok(answer);
    }
    if name == api.node {
        return Err(ApiError::bad(format!(
            "{name} leads: it cannot fence itself; fence it from another node once another leads"
        )));
    }
    let ms = crate::fence::fence(&api.nm, &api.db, &api.log, &name, "operator")
        .await
        .map_err(|message| ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message,
        })?;
    Ok(Json(json!({ "node": name, "fenced_in_ms": ms as u64 })))
}

/// The cluster-wide settings an operator may change.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Settings {
    /// What a node's clean stop does with its groups, unless the node's own configuration
    /// says otherwise: migrate, failover or freeze.
    shutdown_policy: Option<String>,
}

pub(super) async fn cluster_settings(State(api): State<Api>) -> ApiResult {
    let s = api.db.state();
    Ok(Json(json!({ "shutdown_policy": s.shutdown_policy })))
}

/// `vigil cluster set`.
pub(super) async fn set_cluster_settings(
    State(api): State<Api>,
    body: Result<Json<Settings>, JsonRejection>,
) -> ApiResult {
    let Json(req) = body?;
    let Some(policy) = req.shutdown_policy else {
        return Err(ApiError::bad("nothing to set: give shutdown_policy"));
    };
    let policy = vigil_core::model::ShutdownPolicy::parse(&policy).map_err(ApiError::bad)?;
    let log = LogEntry::new(
        Component::NM,
        format!("operator sets the cluster's shutdown policy: {policy}"),
    );
    api.commit(pending(
        vec![Command::SetShutdownPolicy { policy }],
        vec![log],
    )?)
    .await?;
    cluster_settings(State(api)).await
}
