//! The one rule for names of clusters, nodes, groups, resources and anti-affinity classes.

/// Names are used in URLs, file names and log lines: keep them plain.
pub fn validate_name(kind: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{kind} name {name:?} is not valid: use 1-64 characters from a-z A-Z 0-9 - _ . (not starting with '.')"
        ))
    }
}
