//! How the CLI prints: readable tables for people, `--output json` for scripts.

use clap::ValueEnum;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::Value;
use vigil_agent::view::StatusView;
use vigil_core::nm::Standing;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    t
}

pub fn status(v: &Value, format: Format) -> anyhow::Result<()> {
    if let Format::Json = format {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    let s: StatusView = serde_json::from_value(v.clone())?;
    println!(
        "cluster {}  (answered by {}, leader {}, term {}, database index {})",
        s.cluster.as_deref().unwrap_or("-"),
        s.node,
        s.leader.as_deref().unwrap_or("unknown"),
        s.term,
        s.applied_index
    );
    match &s.standing {
        Standing::Current { .. } => {}
        Standing::CatchingUp {
            applied_index,
            needs_index,
        } => println!(
            "NOTE: {} is catching up: its copy of the database is at index {applied_index}, behind the index {needs_index} its leader vouched for; what follows may be older than the cluster's",
            s.node
        ),
        Standing::Fenced {
            applied_index,
            reason,
        } => println!(
            "WARNING: {} is fenced ({reason}). What follows is its last copy of the database (index {applied_index}) and may be stale; it runs nothing. Ask another node for the cluster's view.",
            s.node
        ),
    }
    if let Some(why) = s
        .certificate
        .as_ref()
        .and_then(|c| c.renewal_error.as_ref())
    {
        println!(
            "WARNING: {}'s certificate could not be renewed: {why}",
            s.node
        );
    }
    for n in s.nodes.iter().filter(|n| n.fence_error.is_some()) {
        println!(
            "WARNING: the fence device of {} is broken: {}",
            n.name,
            n.fence_error.as_deref().unwrap_or_default()
        );
    }
    let mut nodes = table(&["NODE", "STATE", "ROLE", "ADDRESS"]);
    for n in &s.nodes {
        nodes.add_row(vec![
            n.name.clone(),
            n.state.to_string(),
            n.role.clone(),
            n.address.clone(),
        ]);
    }
    println!("{nodes}");
    let mut groups = table(&[
        "GROUP", "RESOURCE", "TYPE", "STATE", "DESIRED", "OWNER", "PID", "CPU", "MEM", "REASON",
    ]);
    for g in &s.groups {
        let failure = g.failure.clone().unwrap_or_default();
        let mut owner = g.owner.clone().unwrap_or_default();
        if let Some(m) = &g.moving {
            owner = format!("{owner} -> {} ({})", m.to, m.kind);
        }
        groups.add_row(vec![
            g.name.clone(),
            String::new(),
            String::new(),
            g.state.to_string(),
            String::new(),
            owner,
            String::new(),
            String::new(),
            String::new(),
            failure,
        ]);
        for r in &g.resources {
            groups.add_row(vec![
                String::new(),
                r.name.clone(),
                r.type_name.clone(),
                r.state.to_string(),
                r.persistent_state.to_string(),
                r.owner.clone().unwrap_or_default(),
                r.pid.map(|p| p.to_string()).unwrap_or_default(),
                // From the resource's cgroup, for what runs on the answering node.
                r.usage
                    .as_ref()
                    .map(|u| format!("{:.2}s", u.cpu_ms as f64 / 1000.0))
                    .unwrap_or_default(),
                r.usage
                    .as_ref()
                    .and_then(|u| u.memory_bytes)
                    .map(|b| format!("{:.1}M", b as f64 / 1048576.0))
                    .unwrap_or_default(),
                r.reason.clone(),
            ]);
        }
    }
    println!("{groups}");
    Ok(())
}

pub fn types(v: &Value) -> anyhow::Result<()> {
    let mut t = table(&["TYPE", "KIND", "DESCRIPTION"]);
    for ty in v["types"].as_array().cloned().unwrap_or_default() {
        t.add_row(vec![
            ty["name"].as_str().unwrap_or_default(),
            ty["kind"].as_str().unwrap_or_default(),
            ty["description"].as_str().unwrap_or_default(),
        ]);
    }
    println!("{t}");
    Ok(())
}

pub fn type_show(ty: &Value) -> anyhow::Result<()> {
    println!(
        "{} ({}): {}",
        ty["name"].as_str().unwrap_or_default(),
        ty["kind"].as_str().unwrap_or_default(),
        ty["description"].as_str().unwrap_or_default()
    );
    if let Some(lib) = ty["library"].as_str() {
        println!("library {lib}, ABI version {}", ty["abi_version"]);
    }
    let mut t = table(&[
        "PARAMETER",
        "KIND",
        "REQUIRED",
        "UNIQUE",
        "DEFAULT",
        "DESCRIPTION",
    ]);
    let flag = |v: &Value| if v.as_bool() == Some(true) { "yes" } else { "" }.to_string();
    for p in ty["parameters"].as_array().cloned().unwrap_or_default() {
        t.add_row(vec![
            p["name"].as_str().unwrap_or_default().to_string(),
            p["kind"].as_str().unwrap_or_default().to_string(),
            flag(&p["required"]),
            flag(&p["unique"]),
            p["default"].as_str().unwrap_or_default().to_string(),
            p["description"].as_str().unwrap_or_default().to_string(),
        ]);
    }
    println!("{t}");
    Ok(())
}

/// One cluster log record: a JSON line, or
/// `TIME NODE COMPONENT group/resource FROM -> TO  REASON [epoch N]`.
pub fn log_record(r: &Value, format: Format) -> anyhow::Result<()> {
    if let Format::Json = format {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
    let subject = match (s("group"), s("resource")) {
        (g, res) if g.is_empty() && res.is_empty() => "-".to_string(),
        (g, res) if res.is_empty() => g,
        (g, res) if g.is_empty() => res,
        (g, res) => format!("{g}/{res}"),
    };
    let change = match (s("from"), s("to")) {
        (f, t) if !f.is_empty() || !t.is_empty() => format!("{f} -> {t}  "),
        _ => String::new(),
    };
    let epoch = r["epoch"]
        .as_u64()
        .filter(|e| *e > 0)
        .map(|e| format!(" [epoch {e}]"))
        .unwrap_or_default();
    println!(
        "{} {} {:<3} {} {change}{}{epoch}",
        s("time"),
        s("node"),
        s("component"),
        subject,
        s("reason")
    );
    Ok(())
}

/// Unix seconds as an RFC 3339 time.
pub fn unix_time(s: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(s))
        .to_string()
}

fn opt_time(v: &Value) -> String {
    v.as_u64().map_or("never".to_string(), unix_time)
}

pub fn tokens(v: &Value) {
    let mut t = table(&["ID", "NAME", "KIND", "ROLE", "EXPIRES", "USES LEFT"]);
    for tok in v["tokens"].as_array().into_iter().flatten() {
        t.add_row(vec![
            tok["id"].as_str().unwrap_or("").to_string(),
            tok["name"].as_str().unwrap_or("").to_string(),
            tok["kind"].as_str().unwrap_or("").to_string(),
            tok["role"].as_str().unwrap_or("-").to_string(),
            opt_time(&tok["expires_s"]),
            tok["uses_left"]
                .as_u64()
                .map_or("-".to_string(), |u| u.to_string()),
        ]);
    }
    println!("{t}");
}

pub fn certs(v: &Value) {
    let now = v["now_s"].as_u64().unwrap_or(0);
    let days = |s: u64| format!("{:.1} days", s.saturating_sub(now) as f64 / 86_400.0);
    if let Some(na) = v["ca"]["not_after_s"].as_u64() {
        println!(
            "CA {}  expires {} (in {})",
            v["ca"]["hash"].as_str().unwrap_or("?"),
            unix_time(na),
            days(na)
        );
    }
    if let Some(r) = v["rotation"].as_object() {
        let behind: Vec<&str> = r["behind"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        println!(
            "CA rotation to {} under way since {}; nodes still on the old CA: {}",
            r["hash"].as_str().unwrap_or("?"),
            unix_time(r["since_s"].as_u64().unwrap_or(0)),
            if behind.is_empty() {
                "none".to_string()
            } else {
                behind.join(", ")
            }
        );
    }
    let mut t = table(&["NODE", "EXPIRES", "IN", "FINGERPRINT", "ISSUER"]);
    for n in v["nodes"].as_array().into_iter().flatten() {
        let node = n["node"].as_str().unwrap_or("").to_string();
        match n["not_after_s"].as_u64() {
            Some(na) => t.add_row(vec![
                node,
                unix_time(na),
                days(na),
                n["fingerprint"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(16)
                    .collect(),
                n["issuer"]
                    .as_str()
                    .map_or("-".to_string(), |h| h.chars().take(23).collect()),
            ]),
            None => t.add_row(vec![
                node,
                "no certificate recorded".to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]),
        };
    }
    println!("{t}");
}
