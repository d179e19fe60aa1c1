//! The CLI's HTTP client: JSON in, JSON out, the agent's `{"error": ...}` turned into an
//! error message, and a hint when the agent cannot be reached.
//!
//! Two ways to an agent: its Unix socket (root on a node, no token), or its HTTPS port with
//! an API token, checking that the server is a node of the cluster whose CA it was given.

use anyhow::{Context, anyhow};
use reqwest::Method;
use serde_json::Value;

/// `name` as one path segment: every byte but the unreserved ones percent-encoded, so that a
/// name can never reach another route (`..`, `/`, `?`).
pub fn seg(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where and how the CLI reaches an agent.
#[derive(Clone, Debug, Default)]
pub struct Target {
    /// `https://HOST:PORT`; `None`: the local socket.
    pub endpoint: Option<String>,
    pub socket: std::path::PathBuf,
    pub token: Option<String>,
    /// The cluster CA's certificate (PEM file).
    pub ca: Option<std::path::PathBuf>,
}

pub struct Client {
    base: String,
    /// What the errors call the agent.
    shown: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(t: &Target) -> anyhow::Result<Self> {
        vigil_tls::install_provider();
        let Some(endpoint) = &t.endpoint else {
            if !t.socket.exists() {
                return Err(anyhow!(
                    "no agent socket at {} (run vigil as root on a node, pass --socket PATH, or --endpoint https://HOST:PORT with --token and --ca)",
                    t.socket.display()
                ));
            }
            return Ok(Self {
                base: "http://localhost".to_string(),
                shown: t.socket.display().to_string(),
                token: t.token.clone(),
                http: reqwest::Client::builder()
                    .unix_socket(t.socket.clone())
                    .build()
                    .context("cannot build the HTTP client")?,
            });
        };
        if !endpoint.starts_with("https://") {
            return Err(anyhow!(
                "--endpoint / VIGIL_ENDPOINT {endpoint:?} must start with https://"
            ));
        }
        let ca = t.ca.as_ref().ok_or_else(|| {
            anyhow!(
                "--endpoint {endpoint} needs --ca FILE (or VIGIL_CA): the cluster CA's certificate, ca.pem in any node's data dir, to check the agent is the cluster's"
            )
        })?;
        let pem = std::fs::read_to_string(ca)
            .with_context(|| format!("cannot read --ca {}", ca.display()))?;
        let config = vigil_tls::pinned_client(vigil_tls::Pin::Ca(pem))
            .map_err(|e| anyhow!("--ca {}: {e}", ca.display()))?;
        Ok(Self {
            base: endpoint.trim_end_matches('/').to_string(),
            shown: endpoint.trim_end_matches('/').to_string(),
            token: t.token.clone(),
            http: reqwest::Client::builder()
                .tls_backend_preconfigured(config)
                .build()
                .context("cannot build the HTTP client")?,
        })
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.send(Method::PUT, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.send(Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send(Method::DELETE, path, None).await
    }

    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.map_err(|e| {
            anyhow!(
                "cannot reach the agent at {}: {} (is `vigil agent` running? set --endpoint or VIGIL_ENDPOINT)",
                self.shown,
                vigil_agent::membership::error_chain(&e)
            )
        })?;
        let status = resp.status();
        let text = resp.text().await.context("reading the agent's answer")?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            Ok(value)
        } else {
            let msg = value["error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string());
            Err(anyhow!("{msg} (HTTP {})", status.as_u16()))
        }
    }
}
