//! The CLI's HTTP client: JSON in, JSON out, the agent's `{"error": ...}` turned into an
//! error message, and a hint when the agent cannot be reached.

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

pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(endpoint: &str) -> anyhow::Result<Self> {
        if !endpoint.starts_with("http://") {
            return Err(anyhow!(
                "--endpoint / VIGIL_ENDPOINT {endpoint:?} must start with http://"
            ));
        }
        Ok(Self {
            base: endpoint.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
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

    pub async fn patch(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.send(Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send(Method::DELETE, path, None).await
    }

    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.map_err(|e| {
            anyhow!(
                "cannot reach the agent at {}: {e} (is `vigil agent` running? set --endpoint or VIGIL_ENDPOINT)",
                self.base
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
