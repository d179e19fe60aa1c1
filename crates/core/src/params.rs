//! Resource-type parameter schemas (the seed's admin extension, VMCLUSEX) and their
//! validation. Parameters are stored as text; each type parses them again when it opens a
//! resource, with the same functions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamKind {
    String,
    Integer,
    Bool,
    /// A command line: a JSON array of strings, or words split like a shell would.
    Argv,
    /// `KEY=VALUE` pairs separated by commas, or a JSON object of strings.
    KeyValues,
    /// Whole numbers separated by commas, or a JSON array.
    IntegerList,
    /// A signal name (`TERM`, `SIGTERM`) or number.
    Signal,
    /// `HOST:PORT`.
    HostPort,
    /// An `http://` URL.
    HttpUrl,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamSpec {
    pub name: String,
    pub kind: ParamKind,
    pub required: bool,
    /// No two resources of the type may have the same value (OCF's `unique`).
    #[serde(default)]
    pub unique: bool,
    pub default: Option<String>,
    pub description: String,
    /// A password, key or token: its value is never shown by status, the log or the API
    /// (only its name), and is taken out of every reason and record about the resource.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
}

/// What is shown in place of a secret parameter's value.
pub const HIDDEN: &str = "(secret)";

/// The values of a resource's secret parameters, to take out of text about it: each whole
/// value, and each `VALUE` of a `KEY=VALUE` list (an environment), longest first. Parts of
/// fewer than 4 characters are left, or every digit would go; a whole value always goes.
#[derive(Clone, Debug, Default)]
pub struct Secrets {
    values: Vec<String>,
}

impl Secrets {
    pub fn new(params: &BTreeMap<String, String>, secret: &[String]) -> Secrets {
        let mut values: Vec<String> = Vec::new();
        for v in secret.iter().filter_map(|n| params.get(n)) {
            values.push(v.clone());
            // Its parts too, as a message may quote one: the words of a command line and the
            // values of KEY=VALUE lists (long enough not to hide ordinary words).
            let words = v.split_whitespace();
            let pairs = v
                .split([',', ' '])
                .filter_map(|pair| pair.split_once('=').map(|(_, v)| v));
            values.extend(
                words
                    .chain(pairs)
                    .map(|w| w.trim_matches(['\'', '"']))
                    .filter(|v| v.len() >= 4)
                    .map(str::to_string),
            );
        }
        values.retain(|v| !v.is_empty());
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Secrets { values }
    }

    /// `text` with every secret value replaced by [`HIDDEN`].
    pub fn hide(&self, text: &str) -> String {
        let mut out = text.to_string();
        for v in &self.values {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), HIDDEN);
            }
        }
        out
    }
}

/// `text` with the values of the `secret` parameters in `params` replaced by [`HIDDEN`].
pub fn redact(text: &str, params: &BTreeMap<String, String>, secret: &[String]) -> String {
    Secrets::new(params, secret).hide(text)
}

/// `params` as shown to operators: secret values replaced by [`HIDDEN`].
pub fn shown(params: &BTreeMap<String, String>, secret: &[String]) -> BTreeMap<String, String> {
    params
        .iter()
        .map(|(k, v)| {
            let v = if secret.contains(k) { HIDDEN } else { v };
            (k.clone(), v.to_string())
        })
        .collect()
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParamError {
    #[error("type {type_name} has no parameter {name:?}; its parameters are: {known}")]
    Unknown {
        type_name: String,
        name: String,
        known: String,
    },
    #[error("type {type_name} needs parameter {name:?} ({description})")]
    Missing {
        type_name: String,
        name: String,
        description: String,
    },
    #[error("parameter {name} = {value:?} is not valid: {why}")]
    Invalid {
        name: String,
        value: String,
        why: String,
    },
}

/// Checks `params` against a type's schema: no unknown names, every required one present,
/// every value of its kind.
pub fn validate(
    type_name: &str,
    schema: &[ParamSpec],
    params: &BTreeMap<String, String>,
) -> Result<(), ParamError> {
    for name in params.keys() {
        if !schema.iter().any(|s| &s.name == name) {
            return Err(ParamError::Unknown {
                type_name: type_name.to_string(),
                name: name.clone(),
                known: schema
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    for spec in schema {
        match params.get(&spec.name) {
            Some(value) => check_kind(spec.kind, value).map_err(|why| ParamError::Invalid {
                name: spec.name.clone(),
                value: if spec.secret {
                    HIDDEN.to_string()
                } else {
                    value.clone()
                },
                why,
            })?,
            None if spec.required => {
                return Err(ParamError::Missing {
                    type_name: type_name.to_string(),
                    name: spec.name.clone(),
                    description: spec.description.clone(),
                });
            }
            None => {}
        }
    }
    Ok(())
}

fn check_kind(kind: ParamKind, value: &str) -> Result<(), String> {
    match kind {
        ParamKind::String => Ok(()),
        ParamKind::Integer => value
            .trim()
            .parse::<i64>()
            .map(|_| ())
            .map_err(|_| "expected a whole number".to_string()),
        ParamKind::Bool => crate::props::parse_bool(value)
            .map(|_| ())
            .ok_or_else(|| "expected true or false".to_string()),
        ParamKind::Argv => parse_argv(value).map(|_| ()),
        ParamKind::KeyValues => parse_key_values(value).map(|_| ()),
        ParamKind::IntegerList => parse_int_list(value).map(|_| ()),
        ParamKind::Signal => parse_signal(value).map(|_| ()),
        ParamKind::HostPort => parse_host_port(value).map(|_| ()),
        ParamKind::HttpUrl => parse_http_url(value).map(|_| ()),
    }
}

/// A command line: a JSON array of strings, or words split like a POSIX shell (single and
/// double quotes, backslash escapes; no expansions). Never empty.
pub fn parse_argv(value: &str) -> Result<Vec<String>, String> {
    let argv = if value.trim_start().starts_with('[') {
        serde_json::from_str::<Vec<String>>(value)
            .map_err(|e| format!("not a JSON array of strings: {e}"))?
    } else {
        split_words(value)?
    };
    if argv.is_empty() || argv[0].is_empty() {
        return Err("the command is empty".to_string());
    }
    Ok(argv)
}

fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur: Option<String> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(w) = cur.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = cur.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("unterminated single quote".to_string()),
                    }
                }
            }
            '"' => {
                let w = cur.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c) => w.push(c),
                            None => return Err("trailing backslash".to_string()),
                        },
                        Some(c) => w.push(c),
                        None => return Err("unterminated double quote".to_string()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => cur.get_or_insert_with(String::new).push(c),
                None => return Err("trailing backslash".to_string()),
            },
            c => cur.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(cur);
    Ok(words)
}

/// `KEY=VALUE,KEY2=VALUE2` or a JSON object of strings.
pub fn parse_key_values(value: &str) -> Result<BTreeMap<String, String>, String> {
    if value.trim_start().starts_with('{') {
        return serde_json::from_str(value)
            .map_err(|e| format!("not a JSON object of strings: {e}"));
    }
    let mut out = BTreeMap::new();
    for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not KEY=VALUE"))?;
        if k.is_empty() || k.contains(char::is_whitespace) {
            return Err(format!("{k:?} is not a valid variable name"));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

pub fn parse_int_list(value: &str) -> Result<Vec<i32>, String> {
    if value.trim_start().starts_with('[') {
        return serde_json::from_str(value)
            .map_err(|e| format!("not a JSON array of numbers: {e}"));
    }
    value
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<i32>()
                .map_err(|_| format!("{p:?} is not a whole number"))
        })
        .collect()
}

const SIGNALS: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("KILL", 9),
    ("USR1", 10),
    ("USR2", 12),
    ("TERM", 15),
];

/// A signal number from `TERM`, `SIGTERM` or `15`.
pub fn parse_signal(value: &str) -> Result<i32, String> {
    let v = value.trim();
    if let Ok(n) = v.parse::<i32>() {
        return if (1..=31).contains(&n) {
            Ok(n)
        } else {
            Err("signal numbers run from 1 to 31".to_string())
        };
    }
    let name = v.strip_prefix("SIG").unwrap_or(v).to_ascii_uppercase();
    SIGNALS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, n)| *n)
        .ok_or_else(|| {
            let names: Vec<_> = SIGNALS.iter().map(|(n, _)| *n).collect();
            format!(
                "unknown signal; use a number or one of {}",
                names.join(", ")
            )
        })
}

/// `HOST:PORT` with a non-empty host and a port in 1..=65535.
pub fn parse_host_port(value: &str) -> Result<(String, u16), String> {
    let (host, port) = value
        .rsplit_once(':')
        .ok_or_else(|| "expected HOST:PORT".to_string())?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{port:?} is not a port number (1-65535)"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("the host is empty".to_string());
    }
    Ok((host.to_string(), port))
}

/// An `http://HOST:PORT/PATH` URL, split into (host:port, path). HTTPS is not supported by
/// the built-in check.
pub fn parse_http_url(value: &str) -> Result<(String, String), String> {
    let rest = value.strip_prefix("http://").ok_or_else(|| {
        "expected an http:// URL (https is not supported by this check)".to_string()
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let authority = if authority.contains(':') {
        parse_host_port(authority)?;
        authority.to_string()
    } else if authority.is_empty() {
        return Err("the host is empty".to_string());
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, kind: ParamKind, required: bool) -> ParamSpec {
        ParamSpec {
            name: name.into(),
            kind,
            required,
            unique: false,
            default: None,
            description: format!("the {name}"),
            secret: false,
        }
    }

    #[test]
    fn argv_splits_like_a_shell_or_takes_json() {
        assert_eq!(parse_argv("sleep 10").unwrap(), ["sleep", "10"]);
        assert_eq!(
            parse_argv(r#"sh -c 'echo "hi there"; exit 3'"#).unwrap(),
            ["sh", "-c", "echo \"hi there\"; exit 3"]
        );
        assert_eq!(parse_argv(r#"["a b", "c"]"#).unwrap(), ["a b", "c"]);
        assert!(parse_argv("").is_err());
        assert!(
            parse_argv("echo 'oops")
                .unwrap_err()
                .contains("unterminated")
        );
    }

    #[test]
    fn small_parsers() {
        assert_eq!(parse_signal("SIGTERM"), Ok(15));
        assert_eq!(parse_signal("int"), Ok(2));
        assert_eq!(parse_signal("9"), Ok(9));
        assert!(parse_signal("SIGFOO").is_err());
        assert_eq!(parse_int_list("0, 143").unwrap(), [0, 143]);
        assert_eq!(parse_key_values("A=1,B=x=y").unwrap()["B"], "x=y");
        assert!(parse_key_values("A").is_err());
        assert_eq!(parse_host_port("127.0.0.1:80").unwrap().1, 80);
        assert!(parse_host_port("127.0.0.1:0").is_err());
        assert_eq!(
            parse_http_url("http://localhost:8080/health").unwrap(),
            ("localhost:8080".to_string(), "/health".to_string())
        );
        assert!(parse_http_url("https://x").is_err());
    }

    #[test]
    fn validation_names_the_bad_parameter() {
        let schema = [
            spec("command", ParamKind::Argv, true),
            spec("stop_signal", ParamKind::Signal, false),
        ];
        let mut p = BTreeMap::new();
        let err = validate("process", &schema, &p).unwrap_err();
        assert!(
            err.to_string().contains("needs parameter \"command\""),
            "{err}"
        );
        p.insert("command".into(), "sleep 1".into());
        validate("process", &schema, &p).unwrap();
        p.insert("stop_signal".into(), "SIGNOPE".into());
        let err = validate("process", &schema, &p).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("parameter stop_signal = \"SIGNOPE\""),
            "{err}"
        );
        p.remove("stop_signal");
        p.insert("comand".into(), "x".into());
        let err = validate("process", &schema, &p).unwrap_err();
        assert!(err.to_string().contains("no parameter \"comand\""), "{err}");
    }

    #[test]
    fn a_secret_value_is_never_echoed() {
        let mut schema = [spec("port", ParamKind::Integer, true)];
        schema[0].secret = true;
        let p = BTreeMap::from([("port".to_string(), "hunter2".to_string())]);
        let err = validate("t", &schema, &p).unwrap_err().to_string();
        assert!(!err.contains("hunter2") && err.contains(HIDDEN), "{err}");
        let p = BTreeMap::from([
            ("env".to_string(), "PW=s3cr3t-pw,X=1".to_string()),
            ("command".to_string(), "run-it".to_string()),
        ]);
        let secret = ["env".to_string()];
        assert_eq!(
            redact(
                "env PW=s3cr3t-pw,X=1 had s3cr3t-pw; X=1 ran run-it",
                &p,
                &secret
            ),
            "env (secret) had (secret); X=1 ran run-it"
        );
        assert_eq!(shown(&p, &secret)["env"], HIDDEN);
        assert_eq!(shown(&p, &secret)["command"], "run-it");
        // A word of a secret command line, quoted alone, is hidden too.
        let p = BTreeMap::from([(
            "command".to_string(),
            "/opt/login --token='open-sesame' now".to_string(),
        )]);
        let secret = ["command".to_string()];
        assert_eq!(
            redact(
                "cannot start \"/opt/login\": gone; token open-sesame",
                &p,
                &secret
            ),
            "cannot start \"(secret)\": gone; token (secret)"
        );
    }
}
