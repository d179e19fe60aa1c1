//! Who may call what. Every request is judged here before its handler runs:
//!
//! - a node of this cluster (its client certificate) may call every operator route: nodes
//!   pass requests on to the leader for their operators;
//! - root (or the agent's own user) on this host, over the agent's Unix socket, is admin;
//! - anyone else needs an API token (`Authorization: Bearer va1.…`) whose role is high
//!   enough for the route ([`need`]).
//!
//! A missing or bad token gets 401, a role too low 403; both say what was missing or which
//! role the route needs, and nothing runs. The node-to-node routes and the join check their
//! callers themselves (a node's certificate, a join token).

use axum::http::Method;
use vigil_core::security::{Role, TokenKind, parse_api_token};
use vigil_tls::Peer;

use super::*;

/// What a route asks of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// The route checks its caller itself (node-to-node routes, joining).
    Own,
    Role(Role),
}

/// The role `method path` needs.
pub fn need(method: &Method, path: &str) -> Need {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), segs.as_slice()) {
        (_, ["raft", ..])
        | (_, ["v1", "nm", "heartbeat"])
        | (
            _,
            [
                "v1",
                "cluster",
                "removed" | "join" | "certify" | "renew" | "sign" | "ca-key",
            ],
        )
        | (_, ["v1", "cluster", "ca-key", "held"]) => Need::Own,
        ("GET", ["v1", "tokens", ..]) => Need::Role(Role::Admin),
        ("GET", _) => Need::Role(Role::Viewer),
        ("POST", ["v1", "groups", _, "move" | "online" | "offline"])
        | ("POST", ["v1", "nodes", _, "drain" | "resume"])
        | ("POST", ["v1", "resources", _, "online" | "offline" | "fail"]) => {
            Need::Role(Role::Operator)
        }
        _ => Need::Role(Role::Admin),
    }
}

/// Who a request comes from, as far as roles go.
#[derive(Clone, Debug)]
pub enum Caller {
    Node(String),
    LocalRoot(u32),
    Token {
        id: String,
        name: String,
        role: Role,
    },
}

impl Caller {
    pub fn role(&self) -> Role {
        match self {
            Caller::Node(_) | Caller::LocalRoot(_) => Role::Admin,
            Caller::Token { role, .. } => *role,
        }
    }

    fn describe(&self) -> String {
        match self {
            Caller::Node(n) => format!("node {n}"),
            Caller::LocalRoot(uid) => format!("local user {uid}"),
            Caller::Token { id, name, .. } if name.is_empty() => format!("token {id}"),
            Caller::Token { id, name, .. } => format!("token {id} ({name})"),
        }
    }
}

fn unauthorized(message: String) -> Response {
    ApiError {
        status: StatusCode::UNAUTHORIZED,
        message,
    }
    .into_response()
}

/// Who `req` comes from; `Err`: the 401 message.
fn caller(api: &Api, req: &axum::extract::Request, need: Role) -> Result<Caller, String> {
    match req.extensions().get::<Peer>() {
        Some(Peer::Node(cert)) => {
            // Removed, replaced and not-yet-joined certificates are refused here.
            api.db.judge_cert(cert)?;
            return Ok(Caller::Node(cert.node.clone()));
        }
        Some(Peer::Local { uid }) if *uid == 0 || *uid == rustix::process::geteuid().as_raw() => {
            return Ok(Caller::LocalRoot(*uid));
        }
        _ => {}
    }
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(header) = header else {
        return Err(format!(
            "no API token: this route needs role {} or higher; pass --token TOKEN or set VIGIL_TOKEN (`vigil token create --role …` makes one), or run vigil as root on a node",
            need.name()
        ));
    };
    let token = header
        .strip_prefix("Bearer ")
        .ok_or_else(|| "the Authorization header must read `Bearer TOKEN`".to_string())?;
    let parts = parse_api_token(token).map_err(|e| format!("API token: {e}"))?;
    let hash = vigil_tls::sha256_hex(parts.secret.as_bytes());
    let state = api.db.state();
    let t = state
        .security
        .check(&parts.id, &hash, false, now_s())
        .map_err(|e| format!("API token: {e}"))?;
    match t.kind {
        TokenKind::Api(role) => Ok(Caller::Token {
            id: t.id.clone(),
            name: t.name.clone(),
            role,
        }),
        TokenKind::Join => Err(format!("token {} is a join token", t.id)),
    }
}

/// Unix seconds now.
pub fn now_s() -> u64 {
    vigil_tls::unix_s(std::time::SystemTime::now())
}

/// The middleware: refuses a call its caller may not make (see the module's documentation).
pub async fn authorize(
    State(api): State<Api>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Need::Role(role) = need(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    match caller(&api, &req, role) {
        Ok(c) if c.role() >= role => next.run(req).await,
        Ok(c) => ApiError {
            status: StatusCode::FORBIDDEN,
            message: format!(
                "{} has role {}; {} {} needs role {}",
                c.describe(),
                c.role().name(),
                req.method(),
                req.uri().path(),
                role.name()
            ),
        }
        .into_response(),
        Err(message) => unauthorized(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_runs_code_needs_admin_and_what_moves_needs_operator() {
        let post = Method::POST;
        assert_eq!(need(&Method::GET, "/v1/status"), Need::Role(Role::Viewer));
        assert_eq!(need(&Method::GET, "/v1/tokens"), Need::Role(Role::Admin));
        assert_eq!(need(&post, "/v1/resources"), Need::Role(Role::Admin));
        assert_eq!(need(&post, "/v1/types"), Need::Role(Role::Admin));
        assert_eq!(
            need(&post, "/v1/resources/r/control"),
            Need::Role(Role::Admin)
        );
        assert_eq!(
            need(&Method::PATCH, "/v1/resources/r"),
            Need::Role(Role::Admin)
        );
        assert_eq!(need(&post, "/v1/groups/g/move"), Need::Role(Role::Operator));
        assert_eq!(
            need(&post, "/v1/resources/r/fail"),
            Need::Role(Role::Operator)
        );
        assert_eq!(need(&post, "/raft/append"), Need::Own);
        assert_eq!(need(&post, "/v1/cluster/join"), Need::Own);
    }
}
