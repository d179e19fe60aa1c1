//! `vigil agent --config`: a bad file is refused at start, with the file, the line, the key
//! and what is allowed, and nothing starts (no data dir is made); a flag overrides the file;
//! `--print-config` says where each setting came from.

mod support;

use std::process::Command;

/// Runs `vigil agent --config FILE` (plus `args`) with `text` as the file; its exit and
/// stderr.
fn agent_with(text: &str, args: &[&str]) -> (bool, String, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vigil.toml");
    let data = dir.path().join("data");
    std::fs::write(&file, format!("data_dir = \"{}\"\n{text}", data.display())).unwrap();
    let out = Command::new(&*support::VIGIL)
        .arg("agent")
        .arg("--config")
        .arg(&file)
        .args(args)
        .env("VIGIL_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        dir,
    )
}

#[test]
fn each_bad_setting_is_refused_at_start_naming_the_line_the_key_and_what_is_allowed() {
    let cases: [(&str, &[&str]); 7] = [
        (
            "name = \"n1\"\nheartbeat_intervall_ms = 500\n",
            &[
                "line 3",
                "unknown field `heartbeat_intervall_ms`",
                "`heartbeat_interval_ms`",
            ],
        ),
        (
            "name = \"n1\"\nheartbeat_interval_ms = \"fast\"\n",
            &["line 3", "heartbeat_interval_ms", "expected u64"],
        ),
        (
            "name = \"n1\"\nheartbeat_interval_ms = 10\n",
            &[
                "line 3",
                "heartbeat_interval_ms = 10 is out of range: allowed 50..=60000",
            ],
        ),
        (
            "name = \"n1\"\nshutdown_policy = \"pause\"\n",
            &[
                "line 3",
                "shutdown_policy = \"pause\" is not one of migrate, failover, freeze",
            ],
        ),
        (
            "name = \"n1\"\nlisten = \"7440\"\n",
            &["line 3", "listen = \"7440\" is not HOST:PORT"],
        ),
        (
            "name = \"n1\"\nlog_level = \"loud\"\n",
            &["log_level = \"loud\" is not one of error, warn, info, debug, trace"],
        ),
        (
            "name = \"n1\"\nbootstrap = true\njoin = \"127.0.0.1:7440\"\n",
            &["bootstrap and join exclude each other"],
        ),
    ];
    for (text, wanted) in cases {
        let (ok, _, err, dir) = agent_with(text, &[]);
        assert!(!ok, "accepted: {text}");
        for w in wanted {
            assert!(err.contains(w), "{text:?}: {w:?} not in {err}");
        }
        assert!(err.contains("vigil.toml"), "the file is named: {err}");
        assert!(
            !dir.path().join("data").exists(),
            "{text:?}: something started"
        );
    }
    // A bad value is refused even where a flag would override it: the next start without
    // the flag would fail.
    let (ok, _, err, _dir) = agent_with(
        "name = \"n1\"\nheartbeat_interval_ms = 10\n",
        &["--heartbeat-interval-ms", "500"],
    );
    assert!(!ok && err.contains("heartbeat_interval_ms = 10"), "{err}");
    // No name anywhere.
    let (ok, _, err, _dir) = agent_with("", &[]);
    assert!(!ok && err.contains("no node name"), "{err}");
}

#[test]
fn print_config_shows_each_effective_setting_and_its_source() {
    let (ok, out, err, dir) = agent_with(
        "name = \"n1\"\nshutdown_policy = \"freeze\"\nheartbeat_interval_ms = 250\n",
        &["--print-config", "--heartbeat-interval-ms", "300"],
    );
    assert!(ok, "{err}");
    let file = dir.path().join("vigil.toml").display().to_string();
    let line = |key: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{key} =")))
            .unwrap_or_else(|| panic!("{key} not shown: {out}"))
            .to_string()
    };
    assert!(line("name").ends_with(&format!("# {file}:2")), "{out}");
    assert!(line("shutdown_policy").contains("\"freeze\""), "{out}");
    assert!(
        line("shutdown_policy").ends_with(&format!("# {file}:3")),
        "{out}"
    );
    assert!(line("heartbeat_interval_ms").contains("300"), "{out}");
    assert!(line("heartbeat_interval_ms").ends_with("# flag"), "{out}");
    assert!(line("heartbeat_threshold").ends_with("# default"), "{out}");
    assert!(
        !dir.path().join("data").exists(),
        "--print-config starts nothing"
    );
    // A boolean flag overrides the file both ways.
    let (ok, out, err, _dir) = agent_with(
        "name = \"n1\"\nwitness = true\n",
        &["--print-config", "--witness=false"],
    );
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("witness = false") && l.ends_with("# flag")),
        "{out}"
    );
}
