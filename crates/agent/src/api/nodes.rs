//! Nodes: heartbeats, joins and removals between nodes; an operator's drain and resume.

use super::*;

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
    body: Result<Json<vigil_core::nm::Heartbeat>, JsonRejection>,
) -> ApiResult<Json<vigil_core::nm::HeartbeatReply>> {
    let Json(hb) = body?;
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

pub(super) async fn join(
    State(api): State<Api>,
    body: Result<Json<JoinRequest>, JsonRejection>,
) -> ApiResult {
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
        .wait_for(MOVE_WAIT, move |s| intent::drain_settled(&s.state(), &n))
        .await?;
    let remaining = intent::groups_on(&api.db.state(), &name);
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
