//! Resources: create with checked parameters, change, delete, control requests, and the
//! online, offline and simulated-failure actions.

use vigil_core::params;
use vigil_rhs::types;

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateResource {
    name: String,
    group: String,
    #[serde(rename = "type")]
    type_name: String,
    #[serde(default)]
    params: BTreeMap<String, String>,
    /// Parameters to treat as secret, beyond those the type's schema marks (`--secret-param`).
    #[serde(default)]
    secret: Vec<String>,
    #[serde(default)]
    props: BTreeMap<String, Value>,
    #[serde(default)]
    depends_on: Vec<String>,
}

/// A property's text form from JSON (`5000`, `"5000"`, `true`).
pub(super) fn prop_text(name: &str, v: &Value) -> ApiResult<String> {
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

/// What [`check_params`] found out about a resource's type.
struct Checked {
    migratable: bool,
    /// Its unique parameters.
    unique: Vec<String>,
    /// The parameters that are secret: the schema's, and those asked for, that have a value.
    secret: Vec<String>,
}

/// Checks parameters against the type (its schema, its own checks, the deadlock bound) and
/// the type's unique parameters against the other resources (`apply` checks those again, when
/// the write lands). Finding an OCF type runs its meta-data, so this runs off the async
/// threads and outside the main loop. `secret` names the parameters the operator says are
/// secret; no error repeats their values.
async fn check_params(
    api: &Api,
    resource: &str,
    type_name: &str,
    p: &BTreeMap<String, String>,
    secret: &[String],
    props: &ResourceProps,
) -> ApiResult<Checked> {
    if let Some(n) = secret.iter().find(|n| !p.contains_key(*n)) {
        return Err(ApiError::bad(format!(
            "secret parameter {n:?} has no value (give it with --secret-param {n}=VALUE)"
        )));
    }
    let plugin = api.db.state().plugins.get(type_name).cloned();
    let (t, params, deadlock) = (type_name.to_string(), p.clone(), props.deadlock_timeout_ms);
    let checked = tokio::task::spawn_blocking(move || {
        types::validate(&t, &params, deadlock, plugin.as_ref())
    })
    .await
    .map_err(|e| ApiError::bad(e.to_string()))?
    .map_err(|e| ApiError::bad(params::redact(&e, p, secret)))?;
    let unique: Vec<String> = checked
        .schema
        .iter()
        .filter(|s| s.unique)
        .map(|s| s.name.clone())
        .collect();
    let mut all_secret: Vec<String> = checked
        .schema
        .iter()
        .filter(|s| s.secret && p.contains_key(&s.name))
        .map(|s| s.name.clone())
        .chain(secret.iter().cloned())
        .collect();
    all_secret.sort();
    all_secret.dedup();
    let state = api.db.state();
    check_unique(&state, resource, type_name, &unique, p, &all_secret)?;
    Ok(Checked {
        migratable: checked.can_migrate,
        unique,
        secret: all_secret,
    })
}

pub(super) async fn create_resource(
    State(api): State<Api>,
    body: Result<Json<CreateResource>, JsonRejection>,
) -> ApiResult {
    let Json(req) = body?;
    let mut props = ResourceProps::default();
    apply_props(&mut props, &req.props)?;
    let checked = check_params(
        &api,
        &req.name,
        &req.type_name,
        &req.params,
        &req.secret,
        &props,
    )
    .await?;
    let name = req.name.clone();
    let spec = ResourceSpec {
        name: req.name,
        group: req.group,
        type_name: req.type_name,
        params: req.params,
        props,
        depends_on: req.depends_on,
        migratable: checked.migratable,
        unique: checked.unique,
        secret: checked.secret,
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
pub(super) struct UpdateResource {
    /// `null` removes a parameter.
    #[serde(default)]
    params: BTreeMap<String, Option<String>>,
    /// Parameters to treat as secret from now on (a secret one stays secret).
    #[serde(default)]
    secret: Vec<String>,
    #[serde(default)]
    props: BTreeMap<String, Value>,
    #[serde(default)]
    depends_on: Option<Vec<String>>,
}

pub(super) async fn update_resource(
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
    let secret: Vec<String> = (read.secret.iter())
        .filter(|n| params.contains_key(*n))
        .chain(&req.secret)
        .cloned()
        .collect();
    // Checking may run an agent's meta-data: not inside the main loop.
    let checked = check_params(&api, &name, &read.type_name, &params, &secret, &props).await?;
    let n = name.clone();
    let p = api
        .call(move |s| {
            let state = s.state();
            let unchanged = state.resources.get(&n).is_some_and(|r| {
                r.params == read.params
                    && r.secret == read.secret
                    && r.props == read.props
                    && r.depends_on == read.depends_on
            });
            if !unchanged {
                return Err(ApiError::from(ApplyError::Conflict(format!(
                    "resource {n:?} changed while this update was being checked; try again"
                ))));
            }
            let cmd = Command::UpdateResource {
                name: n.clone(),
                params,
                secret: checked.secret,
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

pub(super) async fn delete_resource(State(api): State<Api>, Path(name): Path<String>) -> ApiResult {
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
pub(super) struct ControlRequest {
    request: String,
}

/// Longest wait for a control request's answer (the call itself is under the deadlock
/// watchdog of its RHS).
const CONTROL_WAIT: Duration = Duration::from_secs(60);

/// `vigil resource control NAME REQUEST` (the seed's ResourceControl): answered by the
/// resource's type on the node that owns its group; any node passes it there.
pub(super) async fn control_resource(
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
                &[],
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

pub(super) async fn resource_action(
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
                exec::settle(
                    s,
                    Input::SimulateFailure {
                        resource: n.clone(),
                    },
                );
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
