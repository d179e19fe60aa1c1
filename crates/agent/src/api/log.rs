//! The cluster log as this node holds it (`GET /v1/log`), with a long poll.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
    resource: Option<String>,
    group: Option<String>,
    /// Wait up to this long for a record after `after` (long poll).
    wait_ms: Option<u64>,
}

pub(super) async fn read_log(
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
