//! The agent's settings: a TOML file (`--config PATH`, `$VIGIL_CONFIG`, or
//! `/etc/vigil/vigil.toml` when it exists), each of whose keys is a flag of `vigil agent`
//! with `_` for `-`; a flag given on the command line overrides the file. An unknown key, a
//! value of the wrong type or out of range is refused before anything starts, naming the
//! file, the line, the key and what is allowed. `vigil agent --print-config` shows the
//! effective settings and where each came from.

use std::fmt::Display;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;
use vigil_core::model::ShutdownPolicy;

/// Read when it exists and no other file is named.
pub const DEFAULT_PATH: &str = "/etc/vigil/vigil.toml";

pub const RHS_SILENCE_MS: RangeInclusive<u64> = 2_000..=600_000;
pub const HEARTBEAT_INTERVAL_MS: RangeInclusive<u64> = 50..=60_000;
pub const HEARTBEAT_THRESHOLD: RangeInclusive<u32> = 2..=100;
/// The same, as clap takes it.
pub const HEARTBEAT_THRESHOLD_FLAG: RangeInclusive<i64> = 2..=100;
pub const CERT_LIFETIME_S: RangeInclusive<u64> = 10..=3 * 365 * 86_400;
pub const WATCHDOG_TIMEOUT_MS: RangeInclusive<u64> = 1_000..=600_000;
pub const SHUTDOWN_TIMEOUT_S: RangeInclusive<u64> = 1..=3_600;
pub const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// The file's keys (see the packaged, commented `vigil.toml` for what each means).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    name: Option<Spanned<String>>,
    /// Form a new cluster when the data dir has never held one (first node, first start).
    bootstrap: Option<Spanned<bool>>,
    listen: Option<Spanned<String>>,
    data_dir: Option<Spanned<PathBuf>>,
    cluster_name: Option<Spanned<String>>,
    witness: Option<Spanned<bool>>,
    join: Option<Spanned<String>>,
    /// A file holding the join token (the token itself stays out of the config file).
    join_token_file: Option<Spanned<PathBuf>>,
    rhs_silence_ms: Option<Spanned<u64>>,
    heartbeat_interval_ms: Option<Spanned<u64>>,
    heartbeat_threshold: Option<Spanned<u32>>,
    cert_lifetime_s: Option<Spanned<u64>>,
    watchdog: Option<Spanned<PathBuf>>,
    watchdog_timeout_ms: Option<Spanned<u64>>,
    shutdown_policy: Option<Spanned<String>>,
    shutdown_timeout_s: Option<Spanned<u64>>,
    log_level: Option<Spanned<String>>,
}

/// What the command line gave (`None`: not given).
#[derive(Default, Clone)]
pub struct Flags {
    pub name: Option<String>,
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub bootstrap: Option<bool>,
    pub join: Option<String>,
    /// With where it came from: the flag, or `$VIGIL_JOIN_TOKEN`.
    pub token: Option<(String, &'static str)>,
    pub witness: Option<bool>,
    pub cluster_name: Option<String>,
    pub rhs_silence_ms: Option<u64>,
    pub heartbeat_interval_ms: Option<u64>,
    pub heartbeat_threshold: Option<u32>,
    pub cert_lifetime_s: Option<u64>,
    pub watchdog: Option<PathBuf>,
    pub watchdog_timeout_ms: Option<u64>,
    pub shutdown_policy: Option<ShutdownPolicy>,
    pub shutdown_timeout_s: Option<u64>,
    pub log_level: Option<String>,
}

/// The effective settings, and where each came from.
pub struct Settings {
    /// `None` for what has no value: `name`, and `data_dir` must be set to start.
    pub name: Option<String>,
    pub listen: String,
    pub data_dir: PathBuf,
    pub bootstrap: bool,
    /// `bootstrap` or `join` came from the file: they apply only to a data dir that never
    /// held a cluster (`AgentOptions::first_start_from_file`).
    pub first_start_from_file: bool,
    pub join: Option<String>,
    pub token: Option<String>,
    /// Read by the agent when it joins (a member needs no token).
    pub token_file: Option<PathBuf>,
    pub witness: bool,
    pub cluster_name: String,
    pub rhs_silence_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub heartbeat_threshold: u32,
    pub cert_lifetime_s: u64,
    pub watchdog: Option<PathBuf>,
    pub watchdog_timeout_ms: u64,
    /// `None`: the cluster's policy.
    pub shutdown_policy: Option<ShutdownPolicy>,
    pub shutdown_timeout_s: u64,
    pub log_level: String,
    /// Each key, its value as shown, and its source.
    pub shown: Vec<(&'static str, String, String)>,
    /// The file read, if any.
    pub file: Option<PathBuf>,
}

/// Which file to read: `explicit` (`--config`, `$VIGIL_CONFIG`; it must exist), else the
/// default path when it exists.
pub fn path(explicit: Option<PathBuf>) -> Option<PathBuf> {
    explicit.or_else(|| {
        let p = PathBuf::from(DEFAULT_PATH);
        p.exists().then_some(p)
    })
}

/// Reads `file` (if any) and merges it under `flags`.
pub fn resolve(flags: Flags, file: Option<&Path>) -> Result<Settings, String> {
    let (text, parsed) = match file {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read config file {}: {e}", p.display()))?;
            let parsed: File =
                toml::from_str(&text).map_err(|e| format!("config file {}: {e}", p.display()))?;
            (text, parsed)
        }
        None => (String::new(), File::default()),
    };
    let mut m = Merge {
        path: file,
        text: &text,
        shown: Vec::new(),
    };
    let name = m.pick("name", flags.name, parsed.name, None, |v: &String| {
        vigil_core::names::validate_name("node", v).map_err(|e| format!("is not a node name: {e}"))
    })?;
    let listen = m.pick(
        "listen",
        flags.listen,
        parsed.listen,
        Some("127.0.0.1:7440".to_string()),
        |v: &String| address(v),
    )?;
    let data_dir = m.pick(
        "data_dir",
        flags.data_dir.map(Shown),
        parsed.data_dir.map(shown_path),
        Some(Shown(PathBuf::from("/var/lib/vigil"))),
        any,
    )?;
    let first_start_flags = flags.bootstrap.is_some() || flags.join.is_some();
    let file_first_start =
        parsed.bootstrap.as_ref().is_some_and(|b| *b.get_ref()) || parsed.join.is_some();
    let join_line = parsed.join.as_ref().map(|j| m.line(j));
    let bootstrap = m
        .pick(
            "bootstrap",
            flags.bootstrap,
            parsed.bootstrap,
            Some(false),
            any,
        )?
        .unwrap_or(false);
    let join = m.pick("join", flags.join, parsed.join, None, |v: &String| {
        address(v)
    })?;
    if bootstrap && join.is_some() {
        let what = "bootstrap and join exclude each other: a node forms a new cluster or joins one";
        return Err(match join_line {
            Some(line) => m.at(line, format!("join: {what}")),
            None => what.to_string(),
        });
    }
    let first_start_from_file = file_first_start && !first_start_flags;
    let token = flags.token.map(|(t, from)| {
        m.note("token", "<secret>", from);
        t
    });
    let token_file = m.pick(
        "join_token_file",
        None,
        parsed.join_token_file.map(shown_path),
        None,
        any,
    )?;
    let witness = m
        .pick("witness", flags.witness, parsed.witness, Some(false), any)?
        .unwrap_or(false);
    let cluster_name = m.pick(
        "cluster_name",
        flags.cluster_name,
        parsed.cluster_name,
        Some("vigil".to_string()),
        any,
    )?;
    let rhs_silence_ms = m.pick(
        "rhs_silence_ms",
        flags.rhs_silence_ms,
        parsed.rhs_silence_ms,
        Some(10_000),
        within(RHS_SILENCE_MS),
    )?;
    let heartbeat_interval_ms = m.pick(
        "heartbeat_interval_ms",
        flags.heartbeat_interval_ms,
        parsed.heartbeat_interval_ms,
        Some(500),
        within(HEARTBEAT_INTERVAL_MS),
    )?;
    let heartbeat_threshold = m.pick(
        "heartbeat_threshold",
        flags.heartbeat_threshold,
        parsed.heartbeat_threshold,
        Some(4),
        within(HEARTBEAT_THRESHOLD),
    )?;
    let cert_lifetime_s = m.pick(
        "cert_lifetime_s",
        flags.cert_lifetime_s,
        parsed.cert_lifetime_s,
        Some(90 * 86_400),
        within(CERT_LIFETIME_S),
    )?;
    let watchdog = m.pick(
        "watchdog",
        flags.watchdog.map(Shown),
        parsed.watchdog.map(shown_path),
        None,
        any,
    )?;
    let watchdog_timeout_ms = m.pick(
        "watchdog_timeout_ms",
        flags.watchdog_timeout_ms,
        parsed.watchdog_timeout_ms,
        Some(10_000),
        within(WATCHDOG_TIMEOUT_MS),
    )?;
    let policy_flag = flags.shutdown_policy.map(|p| p.name().to_string());
    let shutdown_policy = m
        .pick(
            "shutdown_policy",
            policy_flag,
            parsed.shutdown_policy,
            None,
            |v: &String| {
                ShutdownPolicy::parse(v)
                    .map(|_| ())
                    .map_err(|_| format!("is not one of {}", ShutdownPolicy::NAMES.join(", ")))
            },
        )?
        .map(|p| ShutdownPolicy::parse(&p).expect("checked"));
    if shutdown_policy.is_none()
        && let Some(last) = m.shown.last_mut()
    {
        last.1 = "(the cluster's)".to_string();
    }
    let shutdown_timeout_s = m.pick(
        "shutdown_timeout_s",
        flags.shutdown_timeout_s,
        parsed.shutdown_timeout_s,
        Some(120),
        within(SHUTDOWN_TIMEOUT_S),
    )?;
    let log_level = m.pick(
        "log_level",
        flags.log_level,
        parsed.log_level,
        Some("info".to_string()),
        |v: &String| {
            if LOG_LEVELS.contains(&v.as_str()) {
                Ok(())
            } else {
                Err(format!("is not one of {}", LOG_LEVELS.join(", ")))
            }
        },
    )?;
    let set = |v: Option<u64>| v.expect("has a default");
    Ok(Settings {
        name,
        listen: listen.expect("has a default"),
        data_dir: data_dir.expect("has a default").0,
        bootstrap,
        first_start_from_file,
        join,
        token,
        token_file: token_file.map(|t| t.0),
        witness,
        cluster_name: cluster_name.expect("has a default"),
        rhs_silence_ms: set(rhs_silence_ms),
        heartbeat_interval_ms: set(heartbeat_interval_ms),
        heartbeat_threshold: heartbeat_threshold.expect("has a default"),
        cert_lifetime_s: set(cert_lifetime_s),
        watchdog: watchdog.map(|w| w.0),
        watchdog_timeout_ms: set(watchdog_timeout_ms),
        shutdown_policy,
        shutdown_timeout_s: set(shutdown_timeout_s),
        log_level: log_level.expect("has a default"),
        shown: m.shown,
        file: file.map(Path::to_path_buf),
    })
}

impl Settings {
    /// `--print-config`: the settings as a config file would hold them, each with its source.
    pub fn print(&self) -> String {
        let mut out = match &self.file {
            Some(f) => format!("# effective settings; config file {}\n", f.display()),
            None => "# effective settings; no config file\n".to_string(),
        };
        let width = self
            .shown
            .iter()
            .map(|(k, v, _)| k.len() + v.len() + 3)
            .max()
            .unwrap_or(0);
        for (k, v, src) in &self.shown {
            // What has no value of its own is shown commented out: the output is a config file.
            let line = match v.starts_with('(') {
                true => format!("# {k} = {v}"),
                false => format!("{k} = {v}"),
            };
            out.push_str(&format!("{line:<width$}  # {src}\n"));
        }
        out
    }
}

/// A path shown in TOML form.
#[derive(Clone, Debug)]
struct Shown(PathBuf);

impl Display for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.display().to_string())
    }
}

fn shown_path(s: Spanned<PathBuf>) -> Spanned<Shown> {
    let span = s.span();
    Spanned::new(span, Shown(s.into_inner()))
}

fn any<T>(_: &T) -> Result<(), String> {
    Ok(())
}

fn address(v: &str) -> Result<(), String> {
    match v.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err("is not HOST:PORT".to_string()),
    }
}

fn within<T: PartialOrd + Display + Copy>(
    range: RangeInclusive<T>,
) -> impl Fn(&T) -> Result<(), String> {
    move |v| {
        if range.contains(v) {
            Ok(())
        } else {
            Err(format!(
                "is out of range: allowed {}..={}",
                range.start(),
                range.end()
            ))
        }
    }
}

struct Merge<'a> {
    path: Option<&'a Path>,
    text: &'a str,
    shown: Vec<(&'static str, String, String)>,
}

impl Merge<'_> {
    fn line<T>(&self, s: &Spanned<T>) -> usize {
        let end = s.span().start.min(self.text.len());
        self.text[..end].matches('\n').count() + 1
    }

    fn source(&self, line: usize) -> String {
        match self.path {
            Some(p) => format!("{}:{line}", p.display()),
            None => "file".to_string(),
        }
    }

    fn at(&self, line: usize, what: String) -> String {
        match self.path {
            Some(p) => format!("config file {}, line {line}: {what}", p.display()),
            None => what,
        }
    }

    fn note(&mut self, key: &'static str, value: impl Display, source: &str) {
        self.shown
            .push((key, value.to_string(), source.to_string()));
    }

    /// The flag's value if given, else the file's (checked), else `default`.
    fn pick<T: Clone + Toml>(
        &mut self,
        key: &'static str,
        flag: Option<T>,
        file: Option<Spanned<T>>,
        default: Option<T>,
        check: impl Fn(&T) -> Result<(), String>,
    ) -> Result<Option<T>, String> {
        // A bad value in the file is refused even when a flag overrides it: the file is
        // wrong, and the next start without the flag would fail.
        let from_file = match file {
            Some(s) => {
                let line = self.line(&s);
                let v = s.into_inner();
                check(&v).map_err(|why| self.at(line, format!("{key} = {} {why}", v.toml())))?;
                Some((v, line))
            }
            None => None,
        };
        let (value, source) = match (flag, from_file, default) {
            (Some(v), ..) => (Some(v), "flag".to_string()),
            (None, Some((v, line)), _) => (Some(v), self.source(line)),
            (None, None, d) => (d, "default".to_string()),
        };
        let show = value.as_ref().map_or("(unset)".to_string(), Toml::toml);
        self.shown.push((key, show, source));
        Ok(value)
    }
}

/// A value as TOML writes it: strings and paths quoted, numbers and booleans bare.
trait Toml {
    fn toml(&self) -> String;
}

impl Toml for String {
    fn toml(&self) -> String {
        format!("{self:?}")
    }
}

impl Toml for Shown {
    fn toml(&self) -> String {
        format!("{:?}", self.0.display().to_string())
    }
}

macro_rules! bare {
    ($($t:ty),*) => {$(
        impl Toml for $t {
            fn toml(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
bare!(u32, u64, bool);

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vigil.toml");
        std::fs::write(&p, text).unwrap();
        match resolve(Flags::default(), Some(&p)) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_bad_key_type_or_value_is_refused_with_the_line_and_what_is_allowed() {
        let e = refused("name = \"n1\"\nheartbeat_intervall_ms = 500\n");
        assert!(
            e.contains("line 2") && e.contains("heartbeat_intervall_ms"),
            "{e}"
        );
        assert!(e.contains("heartbeat_interval_ms"), "the allowed keys: {e}");
        let e = refused("name = \"n1\"\n\nheartbeat_interval_ms = \"fast\"\n");
        assert!(e.contains("line 3") && e.contains("expected u64"), "{e}");
        let e = refused("heartbeat_interval_ms = 10\n");
        assert!(
            e.contains("line 1") && e.contains("heartbeat_interval_ms = 10"),
            "{e}"
        );
        assert!(e.contains("allowed 50..=60000"), "{e}");
        let e = refused("name = \"n1\"\nshutdown_policy = \"pause\"\n");
        assert!(e.contains("line 2") && e.contains("\"pause\""), "{e}");
        assert!(e.contains("migrate, failover, freeze"), "{e}");
        let e = refused("log_level = \"loud\"\n");
        assert!(e.contains("error, warn, info, debug, trace"), "{e}");
        let e = refused("listen = \"7440\"\n");
        assert!(e.contains("is not HOST:PORT"), "{e}");
    }

    #[test]
    fn a_flag_overrides_the_file_and_print_config_says_where_each_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vigil.toml");
        std::fs::write(
            &p,
            "name = \"n1\"\nheartbeat_interval_ms = 250\nshutdown_policy = \"freeze\"\n",
        )
        .unwrap();
        let flags = Flags {
            heartbeat_interval_ms: Some(300),
            ..Flags::default()
        };
        let s = resolve(flags, Some(&p)).unwrap();
        assert_eq!(s.name.as_deref(), Some("n1"));
        assert_eq!(s.heartbeat_interval_ms, 300);
        assert_eq!(s.shutdown_policy, Some(ShutdownPolicy::Freeze));
        assert_eq!(s.heartbeat_threshold, 4);
        let text = s.print();
        let line = |k: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("{k} =")))
                .unwrap_or_else(|| panic!("{k} missing: {text}"))
                .to_string()
        };
        assert!(
            line("name").ends_with(&format!("# {}:1", p.display())),
            "{text}"
        );
        assert!(
            line("heartbeat_interval_ms").contains("300")
                && line("heartbeat_interval_ms").ends_with("# flag")
        );
        assert!(line("heartbeat_threshold").ends_with("# default"), "{text}");
        assert!(line("shutdown_policy").contains("\"freeze\""), "{text}");
    }
}
