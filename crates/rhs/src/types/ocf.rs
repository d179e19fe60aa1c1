//! OCF resource agents (`ocf:PROVIDER:AGENT`), as every Linux HA cluster runs them: the
//! scripts under `$OCF_ROOT/resource.d/PROVIDER/AGENT`, called as the OCF Resource Agent API
//! 1.1 says.
//!
//! - The type's parameters, their defaults and the action timeouts come from the agent's
//!   `meta-data`. `vigil_start_timeout_ms`, `vigil_stop_timeout_ms` and
//!   `vigil_monitor_timeout_ms` override the timeouts; `vigil_is_alive_depth` sets the
//!   monitor depth of IsAlive (10 by default). Every other parameter reaches the agent as
//!   `OCF_RESKEY_name`, with `OCF_ROOT`, `OCF_RESOURCE_INSTANCE`, `OCF_RESOURCE_TYPE`,
//!   `OCF_RESOURCE_PROVIDER`, `OCF_RA_VERSION_MAJOR/MINOR` and `OCF_RESKEY_CRM_meta_timeout`.
//! - Online = `validate-all` (when the agent has it) then `start`, Offline and Terminate =
//!   `stop`, LooksAlive = `monitor` with
//!   `OCF_CHECK_LEVEL=0`, IsAlive = `monitor` at `vigil_is_alive_depth`.
//! - Exit codes: 0 success (monitor: running), 7 not running, 3 unimplemented (a no-op),
//!   2/5/6 a configuration error on this node (not retried here), 8 running as promoted;
//!   anything else, a signal or a timeout is a failure naming what happened.
//! - An action runs in a process group of its own, its output appended to the resource's
//!   log; one that outlives its timeout is killed with its group. Daemons an agent starts
//!   keep running after the action ends, as agents expect.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use vigil_core::params::{ParamKind, ParamSpec};

use super::{
    CallBound, Fault, Health, OpenContext, Progress, Resource, ResourceType, wait_or_kill_group,
};

/// Where agents live unless `OCF_ROOT` says otherwise (Debian's `resource-agents`).
pub const DEFAULT_OCF_ROOT: &str = "/usr/lib/ocf";
/// Timeouts an agent's meta-data does not state.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
const META_DATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a killed action's group gets to vanish.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// Vigil's own parameters of an OCF resource (not passed to the agent).
const START_TIMEOUT: &str = "vigil_start_timeout_ms";
const STOP_TIMEOUT: &str = "vigil_stop_timeout_ms";
const MONITOR_TIMEOUT: &str = "vigil_monitor_timeout_ms";
const IS_ALIVE_DEPTH: &str = "vigil_is_alive_depth";

pub fn ocf_root() -> PathBuf {
    std::env::var_os("OCF_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_OCF_ROOT))
}

/// The agents installed under `$OCF_ROOT/resource.d`, as `ocf:PROVIDER:AGENT` names.
pub fn installed() -> Vec<String> {
    let mut out = Vec::new();
    let Ok(providers) = std::fs::read_dir(ocf_root().join("resource.d")) else {
        return out;
    };
    for p in providers.flatten() {
        let provider = p.file_name().to_string_lossy().into_owned();
        let Ok(agents) = std::fs::read_dir(p.path()) else {
            continue;
        };
        for a in agents.flatten() {
            let agent = a.file_name().to_string_lossy().into_owned();
            let executable = a.metadata().is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            });
            if executable && !agent.starts_with('.') {
                out.push(format!("ocf:{provider}:{agent}"));
            }
        }
    }
    out.sort();
    out
}

/// An OCF agent's type, read from its meta-data.
pub struct OcfType {
    name: String,
    provider: String,
    agent: String,
    path: PathBuf,
    description: String,
    params: Vec<ParamSpec>,
    /// Action name → timeout from the meta-data.
    timeouts: BTreeMap<String, Duration>,
}

fn valid_part(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

impl OcfType {
    /// Finds the agent named `ocf:PROVIDER:AGENT` and reads its meta-data.
    pub fn load(name: &str) -> Result<OcfType, String> {
        let parts: Vec<&str> = name.split(':').collect();
        let [_, provider, agent] = parts[..] else {
            return Err(format!(
                "OCF type {name:?} is not of the form ocf:PROVIDER:AGENT (ocf:heartbeat:Dummy)"
            ));
        };
        if !valid_part(provider) || !valid_part(agent) {
            return Err(format!(
                "OCF type {name:?}: provider and agent may hold letters, digits, '_', '-' and '.'"
            ));
        }
        let path = ocf_root().join("resource.d").join(provider).join(agent);
        if !path.is_file() {
            return Err(format!(
                "OCF agent {name} not found: {} does not exist (is its package, e.g. resource-agents, installed? OCF_ROOT={})",
                path.display(),
                ocf_root().display()
            ));
        }
        let xml = meta_data(&path, provider, agent)
            .map_err(|e| format!("OCF agent {name}: meta-data: {e}"))?;
        let meta =
            parse_meta_data(&xml).map_err(|e| format!("OCF agent {name}: meta-data: {e}"))?;
        Ok(OcfType {
            name: name.to_string(),
            provider: provider.to_string(),
            agent: agent.to_string(),
            path,
            description: meta.description,
            params: meta.params,
            timeouts: meta.timeouts,
        })
    }

    /// Whether the agent advertises `action` in its meta-data.
    pub fn has_action(&self, action: &str) -> bool {
        self.timeouts.contains_key(action)
    }

    fn timeout(&self, action: &str) -> Duration {
        self.timeouts
            .get(action)
            .copied()
            .unwrap_or(DEFAULT_TIMEOUT)
    }

    fn config(&self, params: &BTreeMap<String, String>) -> Result<Config, String> {
        let ms = |key: &str, default: Duration| -> Result<Duration, String> {
            let default = default.as_millis() as u64;
            super::int_param(params, key, default, 1, 24 * 3_600_000).map(Duration::from_millis)
        };
        let depth = super::int_param(params, IS_ALIVE_DEPTH, 10, 0, 1000)? as u32;
        Ok(Config {
            start: ms(START_TIMEOUT, self.timeout("start"))?,
            stop: ms(STOP_TIMEOUT, self.timeout("stop"))?,
            monitor: ms(MONITOR_TIMEOUT, self.timeout("monitor"))?,
            migrate_to: self.timeout("migrate_to"),
            migrate_from: self.timeout("migrate_from"),
            depth,
        })
    }
}

struct Config {
    start: Duration,
    stop: Duration,
    monitor: Duration,
    migrate_to: Duration,
    migrate_from: Duration,
    depth: u32,
}

fn vigil_param(name: &str, description: &str) -> ParamSpec {
    super::optional(name, ParamKind::Integer, None, description)
}

impl ResourceType for OcfType {
    fn name(&self) -> &str {
        &self.name
    }

    fn description(&self) -> &str {
        &self.description
    }

    fn schema(&self) -> Vec<ParamSpec> {
        let mut s = self.params.clone();
        s.push(vigil_param(
            START_TIMEOUT,
            "Vigil: start timeout (default: the agent's meta-data)",
        ));
        s.push(vigil_param(
            STOP_TIMEOUT,
            "Vigil: stop timeout (default: the agent's meta-data)",
        ));
        s.push(vigil_param(
            MONITOR_TIMEOUT,
            "Vigil: monitor timeout (default: the agent's meta-data)",
        ));
        s.push(vigil_param(
            IS_ALIVE_DEPTH,
            "Vigil: OCF_CHECK_LEVEL of IsAlive's monitor (LooksAlive uses 0); default 10",
        ));
        s
    }

    fn check(&self, params: &BTreeMap<String, String>) -> Result<CallBound, String> {
        let c = self.config(params)?;
        let actions = [
            ("start", c.start),
            ("stop", c.stop),
            ("monitor", c.monitor),
            ("migrate_to", c.migrate_to),
            ("migrate_from", c.migrate_from),
        ];
        let (action, longest) = actions
            .into_iter()
            .max_by_key(|(_, d)| *d)
            .expect("five actions");
        Ok(CallBound {
            ms: (longest + KILL_GRACE).as_millis() as u64,
            why: format!(
                "{} action timeout {} ms plus {} ms to kill it",
                action,
                longest.as_millis(),
                KILL_GRACE.as_millis()
            ),
        })
    }

    /// OCF agents that advertise both migrate_to and migrate_from in their meta-data.
    fn can_migrate(&self) -> bool {
        self.has_action("migrate_to") && self.has_action("migrate_from")
    }

    fn open(&self, ctx: OpenContext) -> Result<Box<dyn Resource>, String> {
        let config = self.config(&ctx.params)?;
        let mut env: Vec<(String, String)> = vec![
            ("OCF_ROOT".into(), ocf_root().display().to_string()),
            ("OCF_RA_VERSION_MAJOR".into(), "1".into()),
            ("OCF_RA_VERSION_MINOR".into(), "1".into()),
            ("OCF_RESOURCE_INSTANCE".into(), ctx.resource.clone()),
            ("OCF_RESOURCE_TYPE".into(), self.agent.clone()),
            ("OCF_RESOURCE_PROVIDER".into(), self.provider.clone()),
            ("VIGIL_RESOURCE".into(), ctx.resource.clone()),
            ("VIGIL_NODE".into(), ctx.node.clone()),
            ("VIGIL_EPOCH".into(), ctx.epoch.to_string()),
        ];
        // The agent's own defaults apply to what is not set, as its meta-data says.
        for (k, v) in &ctx.params {
            if !k.starts_with("vigil_") {
                env.push((format!("OCF_RESKEY_{k}"), v.clone()));
            }
        }
        Ok(Box::new(OcfResource {
            type_name: self.name.clone(),
            node: ctx.node.clone(),
            validate: self
                .has_action("validate-all")
                .then(|| self.timeout("validate-all")),
            path: self.path.clone(),
            env,
            config,
            log_path: ctx.log_path,
        }))
    }
}

struct OcfResource {
    type_name: String,
    node: String,
    /// `validate-all`'s timeout, when the agent has it: run before every start, on the node
    /// that is about to start it.
    validate: Option<Duration>,
    path: PathBuf,
    env: Vec<(String, String)>,
    config: Config,
    log_path: PathBuf,
}

/// How an action ended.
enum Ended {
    Exit(i32),
    Signal(i32),
    TimedOut(Duration),
    NotStarted(String),
}

/// OCF's name for an exit code, for messages.
fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OCF_SUCCESS",
        1 => "OCF_ERR_GENERIC",
        2 => "OCF_ERR_ARGS",
        3 => "OCF_ERR_UNIMPLEMENTED",
        4 => "OCF_ERR_PERM",
        5 => "OCF_ERR_INSTALLED",
        6 => "OCF_ERR_CONFIGURED",
        7 => "OCF_NOT_RUNNING",
        8 => "OCF_RUNNING_PROMOTED",
        9 => "OCF_FAILED_PROMOTED",
        _ => "not defined by OCF",
    }
}

impl OcfResource {
    fn run(&self, action: &str, timeout: Duration, depth: Option<u32>) -> Ended {
        self.run_with(action, timeout, depth, &[])
    }

    fn run_with(
        &self,
        action: &str,
        timeout: Duration,
        depth: Option<u32>,
        extra: &[(&str, &str)],
    ) -> Ended {
        let mut cmd = Command::new(&self.path);
        cmd.arg(action)
            .env_clear()
            .env("PATH", action_path())
            .env("LANG", "C")
            .env(
                "OCF_RESKEY_CRM_meta_timeout",
                timeout.as_millis().to_string(),
            )
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .process_group(0);
        if let Some(depth) = depth {
            cmd.env("OCF_CHECK_LEVEL", depth.to_string());
        }
        cmd.envs(extra.iter().copied());
        match OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
        {
            Ok(f) => {
                let err = f
                    .try_clone()
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null());
                cmd.stdout(Stdio::from(f)).stderr(err);
            }
            Err(_) => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return Ended::NotStarted(format!("cannot run {}: {e}", self.path.display())),
        };
        match wait_or_kill_group(&mut child, timeout) {
            Some(status) => ended(status),
            None => Ended::TimedOut(timeout),
        }
    }

    fn describe(&self, action: &str, how: &Ended) -> String {
        match how {
            Ended::Exit(c) => format!(
                "{} {action} exited with {c} ({})",
                self.type_name,
                code_name(*c)
            ),
            Ended::Signal(s) => format!("{} {action} was killed by signal {s}", self.type_name),
            Ended::TimedOut(t) => format!(
                "{} {action} did not finish within {} ms; killed",
                self.type_name,
                t.as_millis()
            ),
            Ended::NotStarted(why) => format!("{} {action}: {why}", self.type_name),
        }
    }

    fn monitor(&self, depth: u32) -> Health {
        let how = self.run("monitor", self.config.monitor, Some(depth));
        match how {
            Ended::Exit(0 | 3 | 8) => Health::Alive,
            Ended::Exit(2 | 5 | 6) => Health::Misconfigured(self.describe("monitor", &how)),
            _ => Health::Failed(self.describe(&format!("monitor (depth {depth})"), &how)),
        }
    }

    fn stop(&self) -> Result<(), String> {
        match self.run("stop", self.config.stop, None) {
            // Stopping what is not running succeeds; an agent without stop has nothing to stop.
            Ended::Exit(0 | 3 | 7) => Ok(()),
            how => Err(self.describe("stop", &how)),
        }
    }
}

impl Resource for OcfResource {
    fn online(&mut self) -> Result<Progress, Fault> {
        if let Some(timeout) = self.validate {
            match self.run("validate-all", timeout, None) {
                Ended::Exit(0 | 3) => {}
                how @ Ended::Exit(2 | 5 | 6) => {
                    return Err(Fault::Misconfigured(self.describe("validate-all", &how)));
                }
                how => return Err(Fault::Failed(self.describe("validate-all", &how))),
            }
        }
        match self.run("start", self.config.start, None) {
            Ended::Exit(0 | 3) => Ok(Progress::Done),
            how @ Ended::Exit(2 | 5 | 6) => Err(Fault::Misconfigured(self.describe("start", &how))),
            how => Err(Fault::Failed(self.describe("start", &how))),
        }
    }

    /// OCF knows one way to migrate; a quick move uses it too.
    fn migrate_to(
        &mut self,
        target: &str,
        _target_address: &str,
        _quick: bool,
    ) -> Result<String, String> {
        let env = [
            ("OCF_RESKEY_CRM_meta_migrate_source", self.node.as_str()),
            ("OCF_RESKEY_CRM_meta_migrate_target", target),
        ];
        match self.run_with("migrate_to", self.config.migrate_to, None, &env) {
            Ended::Exit(0) => Ok(format!("{} migrate_to {target} done", self.type_name)),
            how => Err(self.describe("migrate_to", &how)),
        }
    }

    fn migrate_from(&mut self, source: &str, _quick: bool) -> Result<Progress, Fault> {
        let env = [
            ("OCF_RESKEY_CRM_meta_migrate_source", source),
            ("OCF_RESKEY_CRM_meta_migrate_target", self.node.as_str()),
        ];
        match self.run_with("migrate_from", self.config.migrate_from, None, &env) {
            Ended::Exit(0) => Ok(Progress::Done),
            how @ Ended::Exit(2 | 5 | 6) => {
                Err(Fault::Misconfigured(self.describe("migrate_from", &how)))
            }
            how => Err(Fault::Failed(self.describe("migrate_from", &how))),
        }
    }

    fn offline(&mut self) -> Result<Option<String>, String> {
        self.stop().map(|()| None)
    }

    /// A stop that fails is tried once more: Terminate answers to no one, and the RHS reports
    /// the resource ended after it.
    fn terminate(&mut self) {
        for attempt in 1..=2 {
            match self.stop() {
                Ok(()) => return,
                Err(e) => tracing::warn!("terminate, stop attempt {attempt} of 2: {e}"),
            }
        }
    }

    fn looks_alive(&mut self) -> Health {
        self.monitor(0)
    }

    fn is_alive(&mut self) -> Health {
        self.monitor(self.config.depth)
    }
}

/// Agents call `ip`, `iptables` and friends: the sbin directories come first.
fn action_path() -> String {
    let inherited = std::env::var("PATH").unwrap_or_default();
    format!("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{inherited}")
}

fn ended(status: ExitStatus) -> Ended {
    match (status.code(), status.signal()) {
        (Some(c), _) => Ended::Exit(c),
        (None, Some(s)) => Ended::Signal(s),
        _ => Ended::Exit(1),
    }
}

/// Runs `AGENT meta-data` and returns its output.
fn meta_data(path: &Path, provider: &str, agent: &str) -> Result<String, String> {
    let mut child = Command::new(path)
        .arg("meta-data")
        .env_clear()
        .env("PATH", action_path())
        .env("LANG", "C")
        .env("OCF_ROOT", ocf_root())
        .env("OCF_RA_VERSION_MAJOR", "1")
        .env("OCF_RA_VERSION_MINOR", "1")
        .env("OCF_RESOURCE_TYPE", agent)
        .env("OCF_RESOURCE_PROVIDER", provider)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    // Read on threads so a chatty agent cannot block on a full pipe while we wait.
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = std::io::Read::read_to_end(&mut r, &mut buf);
            buf
        })
    };
    let out = read(Box::new(child.stdout.take().expect("piped")));
    let err = read(Box::new(child.stderr.take().expect("piped")));
    let Some(status) = wait_or_kill_group(&mut child, META_DATA_TIMEOUT) else {
        return Err(format!(
            "no answer within {} ms",
            META_DATA_TIMEOUT.as_millis()
        ));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    if !status.success() {
        let said = String::from_utf8_lossy(&err);
        let said = said.lines().last().unwrap_or("").trim();
        return Err(format!(
            "{status}{}",
            if said.is_empty() {
                String::new()
            } else {
                format!(": {said}")
            }
        ));
    }
    String::from_utf8(out).map_err(|_| "the output is not UTF-8 text".to_string())
}

/// What Vigil needs from an agent's meta-data.
#[derive(Debug, PartialEq)]
pub struct MetaData {
    pub description: String,
    pub params: Vec<ParamSpec>,
    pub timeouts: BTreeMap<String, Duration>,
}

/// Parses OCF meta-data XML (`<resource-agent>` with `<parameters>` and `<actions>`).
pub fn parse_meta_data(xml: &str) -> Result<MetaData, String> {
    let doc = roxmltree::Document::parse_with_options(
        xml,
        roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        },
    )
    .map_err(|e| format!("not valid XML: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().name() != "resource-agent" {
        return Err(format!(
            "the root element is <{}>, not <resource-agent>",
            root.tag_name().name()
        ));
    }
    fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, tag: &str) -> Option<roxmltree::Node<'a, 'i>> {
        n.children()
            .find(|c| c.is_element() && c.tag_name().name() == tag)
    }
    let desc = |n: roxmltree::Node<'_, '_>| {
        child(n, "shortdesc")
            .and_then(|d| d.text())
            .unwrap_or("")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut params = Vec::new();
    if let Some(ps) = child(root, "parameters") {
        for p in ps
            .children()
            .filter(|c| c.is_element() && c.tag_name().name() == "parameter")
        {
            let name = p
                .attribute("name")
                .ok_or("a <parameter> has no name")?
                .to_string();
            let flag = |attr: &str| matches!(p.attribute(attr), Some("1" | "true" | "yes"));
            let content = child(p, "content");
            let kind = match content.and_then(|c| c.attribute("type")) {
                Some("integer") => ParamKind::Integer,
                Some("boolean") => ParamKind::Bool,
                _ => ParamKind::String,
            };
            params.push(ParamSpec {
                name,
                kind,
                required: flag("required"),
                unique: flag("unique"),
                default: content
                    .and_then(|c| c.attribute("default"))
                    .filter(|d| !d.is_empty())
                    .map(str::to_string),
                description: desc(p),
                // OCF meta-data has no such mark: `--secret-param` marks them.
                secret: false,
            });
        }
    }
    let mut timeouts = BTreeMap::new();
    if let Some(acts) = child(root, "actions") {
        for a in acts
            .children()
            .filter(|c| c.is_element() && c.tag_name().name() == "action")
        {
            let Some(name) = a.attribute("name") else {
                continue;
            };
            let t = match a.attribute("timeout") {
                Some(t) => parse_duration(t)
                    .ok_or_else(|| format!("action {name}: timeout {t:?} is not a duration"))?,
                None => DEFAULT_TIMEOUT,
            };
            // The first entry of an action wins (agents list monitor once per depth/role).
            timeouts.entry(name.to_string()).or_insert(t);
        }
    }
    for needed in ["start", "stop"] {
        if !timeouts.contains_key(needed) {
            return Err(format!("it lists no {needed} action"));
        }
    }
    Ok(MetaData {
        description: desc(root),
        params,
        timeouts,
    })
}

/// `20s`, `20`, `2m`, `2min`, `500ms`, `1h` (Pacemaker's forms).
fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().ok()?;
    let ms = match unit.trim() {
        "" | "s" | "sec" => n * 1_000,
        "ms" | "msec" => n,
        "m" | "min" => n * 60_000,
        "h" | "hr" => n * 3_600_000,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMMY: &str = r#"<?xml version="1.0"?>
<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">
<resource-agent name="Dummy" version="1.0">
<shortdesc lang="en">Example stateless
  resource agent</shortdesc>
<parameters>
<parameter name="state" unique="1">
<shortdesc lang="en">State file</shortdesc>
<content type="string" default="/run/x.state" />
</parameter>
<parameter name="count" required="1">
<content type="integer"/>
</parameter>
<parameter name="on">
<content type="boolean" default="false"/>
</parameter>
</parameters>
<actions>
<action name="start" timeout="20s" />
<action name="stop" timeout="2min" />
<action name="monitor" timeout="500ms" depth="0" />
<action name="monitor" timeout="30s" depth="10" />
</actions>
</resource-agent>"#;

    #[test]
    fn meta_data_gives_the_schema_and_the_timeouts() {
        let m = parse_meta_data(DUMMY).unwrap();
        assert_eq!(m.description, "Example stateless resource agent");
        let names: Vec<_> = m.params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["state", "count", "on"]);
        assert!(m.params[0].unique && !m.params[0].required);
        assert_eq!(m.params[0].default.as_deref(), Some("/run/x.state"));
        assert!(m.params[1].required);
        assert_eq!(m.params[1].kind, ParamKind::Integer);
        assert_eq!(m.params[2].kind, ParamKind::Bool);
        assert_eq!(m.timeouts["start"], Duration::from_secs(20));
        assert_eq!(m.timeouts["stop"], Duration::from_secs(120));
        assert_eq!(m.timeouts["monitor"], Duration::from_millis(500));
    }

    #[test]
    fn bad_meta_data_says_what_is_wrong() {
        assert!(
            parse_meta_data("garbage <<")
                .unwrap_err()
                .contains("not valid XML")
        );
        assert!(
            parse_meta_data("<other/>")
                .unwrap_err()
                .contains("not <resource-agent>")
        );
        let no_stop = r#"<resource-agent name="x"><actions><action name="start" timeout="5s"/></actions></resource-agent>"#;
        assert!(parse_meta_data(no_stop).unwrap_err().contains("no stop"));
        let bad_timeout = r#"<resource-agent name="x"><actions><action name="start" timeout="soon"/><action name="stop"/></actions></resource-agent>"#;
        assert!(
            parse_meta_data(bad_timeout)
                .unwrap_err()
                .contains("\"soon\"")
        );
    }

    #[test]
    fn durations_in_pacemaker_forms() {
        assert_eq!(parse_duration("20s"), Some(Duration::from_secs(20)));
        assert_eq!(parse_duration("20"), Some(Duration::from_secs(20)));
        assert_eq!(parse_duration("2min"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_duration("5 parsecs"), None);
    }

    #[test]
    fn names_must_be_ocf_provider_agent() {
        let e = OcfType::load("ocf:heartbeat").err().unwrap();
        assert!(e.contains("ocf:PROVIDER:AGENT"), "{e}");
        let e = OcfType::load("ocf:../..:x").err().unwrap();
        assert!(e.contains("provider and agent"), "{e}");
        let e = OcfType::load("ocf:heartbeat:NoSuchAgent").err().unwrap();
        assert!(e.contains("not found") && e.contains("NoSuchAgent"), "{e}");
    }
}
