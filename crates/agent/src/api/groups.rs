//! Groups: create, change, move, bring online or offline, delete.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateGroup {
    name: String,
    /// Group properties by name (see [`GroupProps::names`]); lists as JSON arrays or
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

pub(super) async fn create_group(
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
pub(super) struct UpdateGroup {
    props: BTreeMap<String, Value>,
}

pub(super) async fn update_group(
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct MoveRequest {
    /// Target node; by default the failover manager's choice.
    #[serde(default)]
    to: Option<String>,
    /// `live` (the default for groups that can migrate) or `quick` (save, move, restore).
    #[serde(default)]
    migration: Option<String>,
}

/// `vigil group move`: a planned handover (the owner stops the group, then the target starts
/// it). Answers once the group is settled on the target.
pub(super) async fn move_group(
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
    let intent::OperatorMove { from, to, cmd, log } = intent::move_group(
        &api.db.state(),
        &name,
        req.to.as_deref(),
        quick,
        crate::fm::unix_ms(),
    )?;
    api.commit(pending(vec![cmd], vec![log])?).await?;
    let (g, target) = (name.clone(), to.clone());
    let settled = api
        .wait_for(MOVE_WAIT, move |s| {
            intent::move_settled(&s.state(), &g, &target)
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
    intent::move_outcome(&state, &name, &to).map_err(|message| ApiError {
        status: StatusCode::CONFLICT,
        message,
    })?;
    let state_now = g.map(|g| vigil_core::model::group_state(&state, g));
    Ok(Json(json!({
        "group": name, "from": from, "to": to,
        "epoch": g.map_or(0, |g| g.epoch), "state": state_now,
    })))
}

pub(super) async fn delete_group(State(api): State<Api>, Path(name): Path<String>) -> ApiResult {
    stop_then_delete(&api, Target::Group(name.clone())).await?;
    Ok(Json(json!({ "deleted": name })))
}

/// Deletes a group or resource the way an operator expects: desired Offline, wait (bounded)
/// until nothing of it runs, then remove it from the database.
pub(super) async fn stop_then_delete(api: &Api, target: Target) -> ApiResult<()> {
    set_desired(api, target.clone(), PersistentState::Offline).await?;
    let t = target.clone();
    let stopped = api
        .wait_for(STOP_WAIT, move |s| intent::stopped(&s.state(), &t))
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

pub(super) async fn group_action(
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
pub(super) async fn set_desired(
    api: &Api,
    target: Target,
    desired: PersistentState,
) -> ApiResult<()> {
    let p = api
        .call(move |s| {
            let (cmd, log, touch) = intent::set_desired(&s.state(), target, desired);
            pending_then(vec![cmd], vec![log], move |s| Input::Operator {
                resources: touch.resources(&s.state()),
            })
        })
        .await??;
    api.commit(p).await?;
    Ok(())
}
