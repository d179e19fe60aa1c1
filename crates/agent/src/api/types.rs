//! Resource types: the built-in ones, the OCF agents installed here, and plugins (registered
//! after a throw-away process has loaded them).

use vigil_rhs::types;

use super::*;

/// Built-in types, the OCF agents installed on this node, and the registered plugins.
pub(super) async fn list_types(State(api): State<Api>) -> Json<Value> {
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
pub(super) async fn show_type(State(api): State<Api>, Path(name): Path<String>) -> ApiResult {
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
pub(super) struct RegisterType {
    /// Absolute path of the plugin's shared library (the same on every node).
    library: String,
}

/// How long loading a plugin to read its table may take.
const PROBE_LIMIT: Duration = Duration::from_secs(10);

/// `vigil type register PATH`: the library is loaded in a throw-away `vigil plugin-probe`
/// process (never in the agent), which checks the ABI and reads the name and schema.
pub(super) async fn register_type(
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

pub(super) async fn unregister_type(State(api): State<Api>, Path(name): Path<String>) -> ApiResult {
    let log = db_log(format!("type {name} unregistered"));
    let p = pending(
        vec![Command::UnregisterPlugin { name: name.clone() }],
        vec![log],
    )?;
    api.commit(p).await?;
    Ok(Json(json!({ "unregistered": name })))
}
