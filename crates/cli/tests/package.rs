//! The Debian package, as an operator meets it: built with `scripts/package.sh`, installed
//! with `dpkg -i` on this machine (root, as CI is), its files where Debian puts them with
//! the right modes, its unit accepted by `systemd-analyze verify`, and its binary run with
//! its own config file (edited as a newcomer would) under a stand-in for systemd's
//! notification socket. The package is purged at the end, whatever happens.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::wait_until;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Purges the package when the test ends, passed or not, and the data dir the package made
/// and the test's agent filled (a purge keeps it; the test refuses a machine that had one).
struct Installed {
    had_data_dir: bool,
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "vigil"]).output();
        let _ = std::fs::remove_dir_all("/etc/vigil");
        if !self.had_data_dir {
            let _ = std::fs::remove_dir_all("/var/lib/vigil");
        }
    }
}

fn mode(path: &str) -> (u32, u32, u32) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    (m.permissions().mode() & 0o7777, m.uid(), m.gid())
}

/// The packaged unit, checked by systemd's own tool (this machine's PID 1 is not systemd,
/// but `systemd-analyze verify` reads unit files alone).
fn verify_unit(unit: &str) {
    let out = Command::new("systemd-analyze")
        .args(["verify", unit])
        .output()
        .expect(
            "systemd-analyze (Debian's systemd package; the README's test command installs it)",
        );
    let err = String::from_utf8_lossy(&out.stderr);
    // It also checks that ExecStart's binary exists: the package installed it.
    assert!(out.status.success(), "systemd-analyze verify {unit}: {err}");
    assert!(
        !err.contains("vigil.service:"),
        "systemd-analyze warns about the unit: {err}"
    );
}

#[test]
fn the_package_installs_its_files_and_its_binary_runs_with_its_own_config_under_systemd_notify() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = run(Command::new("bash")
        .arg("scripts/package.sh")
        .env("PROFILE", "dev")
        .current_dir(&root));
    let deb = out
        .lines()
        .rfind(|l| l.ends_with(".deb"))
        .unwrap_or_else(|| panic!("no .deb named in {out}"))
        .to_string();
    // It installs, edits and purges the package: never on a machine that has one.
    let installed = Command::new("dpkg")
        .args(["-s", "vigil"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        !installed
            && !Path::new("/etc/vigil").exists()
            && !Path::new("/var/lib/vigil/raft.redb").exists(),
        "this machine has Vigil installed (package, /etc/vigil or /var/lib/vigil): the package test will not touch it"
    );
    let _purge = Installed {
        had_data_dir: Path::new("/var/lib/vigil").exists(),
    };
    run(Command::new("dpkg").arg("-i").arg(root.join(&deb)));

    // The binary, its version, and every file where Debian puts it, with its mode.
    let version = run(Command::new("/usr/bin/vigil").arg("--version"));
    assert_eq!(
        version.trim(),
        format!("vigil {}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(mode("/usr/bin/vigil"), (0o755, 0, 0));
    assert_eq!(mode("/lib/systemd/system/vigil.service"), (0o644, 0, 0));
    assert_eq!(mode("/etc/vigil"), (0o750, 0, 0));
    assert_eq!(mode("/etc/vigil/vigil.toml"), (0o640, 0, 0));
    assert_eq!(mode("/var/lib/vigil"), (0o700, 0, 0));
    assert_eq!(mode("/usr/include/vigil/vigil_plugin.h"), (0o644, 0, 0));
    for f in [
        "/usr/share/man/man1/vigil.1.gz",
        "/usr/share/man/man1/vigil-agent.1.gz",
        "/usr/share/man/man1/vigil-group-move.1.gz",
        "/usr/share/man/man1/vigil-node-drain.1.gz",
        "/usr/share/bash-completion/completions/vigil",
        "/usr/share/zsh/vendor-completions/_vigil",
        "/usr/share/fish/vendor_completions.d/vigil.fish",
    ] {
        assert_eq!(mode(f).0, 0o644, "{f}");
    }
    let conffiles = run(Command::new("dpkg-query").args(["--control-show", "vigil", "conffiles"]));
    assert!(conffiles.contains("/etc/vigil/vigil.toml"), "{conffiles}");
    let page = run(Command::new("sh").args(["-c", "zcat /usr/share/man/man1/vigil-agent.1.gz"]));
    assert!(
        page.contains("shutdown\\-policy") || page.contains("shutdown-policy"),
        "{page}"
    );
    verify_unit("/lib/systemd/system/vigil.service");

    // The packaged config, every line commented: as shipped, it sets nothing.
    let shipped = std::fs::read_to_string("/etc/vigil/vigil.toml").unwrap();
    let printed = run(Command::new("/usr/bin/vigil").args(["agent", "--print-config"]));
    assert!(
        printed.contains("config file /etc/vigil/vigil.toml"),
        "{printed}"
    );
    assert!(printed.contains("# name = (unset)"), "{printed}");
    let refused = Command::new("/usr/bin/vigil")
        .arg("agent")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("no node name"),
        "{err}"
    );

    // A newcomer uncomments name, listen and bootstrap, then starts the agent as the unit
    // does (its data dir the package's /var/lib/vigil), under a stand-in for systemd.
    let dir = tempfile::tempdir().unwrap();
    let data = Path::new("/var/lib/vigil");
    let listen = format!("127.0.0.90:{}", support::free_port());
    let edited = shipped
        .replace("#name = \"n1\"", "name = \"n1\"")
        .replace(
            "#listen = \"127.0.0.1:7440\"",
            &format!("listen = \"{listen}\""),
        )
        .replace("#bootstrap = true", "bootstrap = true");
    assert_ne!(edited, shipped);
    std::fs::write("/etc/vigil/vigil.toml", &edited).unwrap();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // The unit's OOMScoreAdjust=-900, where this machine lets root lower a score (it needs
    // CAP_SYS_RESOURCE, which a container may lack).
    let can_lower = Command::new("choom")
        .args(["-n", "-900", "--", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !can_lower {
        eprintln!("no CAP_SYS_RESOURCE here: the OOM score check is left out");
    }
    let mut agent = Command::new(if can_lower { "choom" } else { "env" });
    if can_lower {
        agent.args(["-n", "-900", "--"]);
    }
    let mut agent = agent
        .args([
            "/usr/bin/vigil",
            "agent",
            "--config",
            "/etc/vigil/vigil.toml",
        ])
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "1000000")
        .env("VIGIL_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.path().join("agent.stderr")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let pid = agent.id();
    let guard = KillOnDrop(pid);
    // READY=1, STATUS= lines, and WATCHDOG=1 from the main loop (WATCHDOG_USEC = 1 s).
    let mut seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + support::WAIT;
    let got = |seen: &[String], what: &str| seen.iter().any(|m| m.contains(what));
    while !(got(&seen, "READY=1") && got(&seen, "WATCHDOG=1") && got(&seen, "STATUS=running")) {
        assert!(
            Instant::now() < deadline,
            "from the agent: {seen:#?}; its stderr: {}",
            support::read(&dir.path().join("agent.stderr"))
        );
        let mut buf = [0u8; 4096];
        if let Ok(n) = notify.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    let ready = seen.iter().position(|m| m == "READY=1").unwrap();
    assert!(
        seen[..ready]
            .iter()
            .any(|m| m.starts_with("STATUS=starting")),
        "STATUS lines before READY: {seen:#?}"
    );
    // The agent keeps the unit's low OOM score; the resources it starts do not.
    // The CLI as root on the node: the default socket, /var/lib/vigil/vigil.sock.
    let cli = |args: &[&str]| {
        run(Command::new("/usr/bin/vigil")
            .env_remove("VIGIL_SOCKET")
            .env_remove("VIGIL_ENDPOINT")
            .args(args))
    };
    cli(&["group", "create", "web"]);
    cli(&[
        "resource",
        "create",
        "site",
        "--group",
        "web",
        "--type",
        "process",
        "--param",
        "command=sleep 1000",
        "--online",
    ]);
    let mut site = None;
    wait_until("site is Online", || {
        let s: serde_json::Value =
            serde_json::from_str(&cli(&["status", "--output", "json"])).unwrap();
        let r = s["groups"][0]["resources"][0].clone();
        site = r["pid"].as_u64();
        r["state"] == "Online"
    });
    let score = |pid: u64| {
        std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
            .unwrap()
            .trim()
            .to_string()
    };
    assert!(data.join("raft.redb").exists() && data.join("vigil.sock").exists());
    assert_eq!(mode("/var/lib/vigil").0, 0o700);
    if can_lower {
        assert_eq!(score(u64::from(pid)), "-900");
        assert_eq!(score(site.unwrap()), "0");
    }

    // `systemctl stop`: SIGTERM, and a clean exit (one node: nothing to drain to).
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = agent.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    assert!(!support::alive(site.unwrap() as u32));
    let mut rest = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = notify.recv(&mut buf) {
        rest.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(rest.iter().any(|m| m == "STOPPING=1"), "{rest:#?}");
    drop(guard);
}

/// Kills the agent (by pid) if the test ends before it stopped.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if support::alive(self.0) {
            support::kill9(self.0);
        }
    }
}
