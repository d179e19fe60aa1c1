//! VM resources on real QEMU, with firmware-only guests (no disk, no kernel: the VM sits in
//! its firmware, ignores ACPI power-down, answers QMP and migrates; the cheapest fixture).

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use support::{
    Agent, alive, assert_same_guest_continues, count, get, guest_memory, kill9, linux_vm,
    two_nodes, wait_until,
};

fn qemu_installed() {
    assert!(
        std::process::Command::new("qemu-system-x86_64")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "qemu-system-x86_64 is missing: run the README's test command"
    );
}

/// A firmware-only VM resource `name` in group `group`, brought online.
fn firmware_vm(a: &Agent, group: &str, name: &str, extra: &[&str]) {
    a.ok(&["group", "create", group, "--preferred-owners", &a.name]);
    let mut params = vec!["stop_timeout_ms=1000"];
    if !extra.iter().any(|e| e.starts_with("memory_mb=")) {
        params.push("memory_mb=64");
    }
    let mut extra = extra.to_vec();
    extra.extend(["--looks-alive-ms", "200", "--online"]);
    a.create(name, group, "vm", &params, &extra);
}

/// The downtime a migration record reports ("… downtime 4 ms …"); None when it has none.
fn downtime_ms(record: &str) -> Option<u64> {
    let after = &record[record.find("downtime ")? + "downtime ".len()..];
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    after[digits.len()..].starts_with(" ms").then_some(())?;
    digits.parse().ok()
}

/// Sends one QMP command on the operators' monitor socket of `resource` on `a`; its answer
/// (empty when QEMU closed the socket first).
fn outside_qmp(a: &Agent, resource: &str, command: &str) -> String {
    let path: PathBuf = a
        .data_dir()
        .join("resources")
        .join(format!("{resource}.monitor"));
    let s = UnixStream::connect(&path).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains("QMP"), "{line}");
    for cmd in ["qmp_capabilities", command] {
        writeln!(w, "{{\"execute\": \"{cmd}\"}}").unwrap();
        line.clear();
        // After `quit`, QEMU may close the socket before it answers.
        let _ = r.read_line(&mut line);
    }
    line
}

#[test]
fn a_firmware_vm_runs_restarts_after_kill_and_stops_by_force_after_its_timeout() {
    qemu_installed();
    let a = Agent::start();
    firmware_vm(&a, "g", "vm1", &[]);
    a.wait_state("vm1", "Online");
    let reason = a.resource("vm1")["reason"].as_str().unwrap().to_string();
    assert!(
        reason == "online: QEMU running under KVM" || reason == "online: QEMU running under TCG",
        "the Online record says which accelerator: {reason}"
    );
    let first = a.pid_of("vm1").expect("QEMU's pid");
    a.seen_pid(first);
    // QEMU vanishing without a shutdown event is a failure: restarted in place.
    kill9(first);
    wait_until("a new QEMU", || {
        a.state("vm1") == "Online" && a.pid_of("vm1").is_some_and(|p| p != first)
    });
    let second = a.pid_of("vm1").unwrap();
    a.seen_pid(second);
    assert!(
        a.logged("vm1", "QEMU exited without a shutdown event"),
        "{:#?}",
        a.reasons("vm1")
    );
    // The firmware ignores ACPI power-down: forced off after stop_timeout_ms.
    a.ok(&["resource", "offline", "vm1"]);
    a.wait_state("vm1", "Offline");
    wait_until("QEMU ended", || !alive(second));
    assert!(
        a.logged(
            "vm1",
            "stopped: no power-off within stop_timeout_ms=1000; turned off"
        ),
        "{:#?}",
        a.reasons("vm1")
    );
}

#[test]
fn a_quit_from_outside_the_cluster_is_an_out_of_band_stop() {
    qemu_installed();
    let a = Agent::start();
    firmware_vm(&a, "g", "vm1", &[]);
    a.wait_online("vm1");
    outside_qmp(&a, "vm1", "quit");
    wait_until("vm1 is Offline", || a.state("vm1") == "Offline");
    assert_eq!(a.resource("vm1")["persistent_state"], "Offline");
    assert!(a.logged("vm1", "host-qmp-quit"), "{:#?}", a.reasons("vm1"));
    // The RCM's decision, not a pause, says it will not come back.
    wait_until("the RCM decided not to restart", || {
        a.logged("vm1", "not restarting")
    });
    assert_eq!(a.state("vm1"), "Offline", "not restarted");
}

#[test]
fn a_pause_from_outside_is_reported_not_restarted() {
    qemu_installed();
    let a = Agent::start();
    firmware_vm(&a, "g", "vm1", &[]);
    let pid = a.wait_online("vm1");
    outside_qmp(&a, "vm1", "stop");
    wait_until("status shows the pause", || {
        a.resource("vm1")["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("the VM is paused"))
    });
    assert_eq!(a.state("vm1"), "Online");
    outside_qmp(&a, "vm1", "cont");
    wait_until("status shows it running again", || {
        a.resource("vm1")["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("running again"))
    });
    assert_eq!(a.pid_of("vm1"), Some(pid), "never restarted");
    assert!(a.logged("vm1", "Notice: the VM is paused"));
}

#[test]
fn bad_vm_parameters_are_refused_before_anything_starts() {
    let a = Agent::start();
    a.ok(&["group", "create", "g"]);
    let e = a.create_refused("v", "g", "vm", &["memory_mb=lots"]);
    assert!(e.contains("memory_mb = \"lots\""), "{e}");
    let e = a.create_refused("v", "g", "vm", &["disks=/nonexistent/disk.img"]);
    assert!(
        e.contains("disk image /nonexistent/disk.img does not exist"),
        "{e}"
    );
    let e = a.create_refused("v", "g", "vm", &["offline_action=save"]);
    assert!(e.contains("needs state_dir"), "{e}");
    let e = a.create_refused("v", "g", "vm", &["accel=fast"]);
    assert!(e.contains("accel = \"fast\""), "{e}");
    assert!(
        a.status()["groups"][0]["resources"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_planned_move_migrates_the_vm_live_and_a_failed_one_leaves_it_running() {
    qemu_installed();
    let mut n1 = Agent::on("n1", "127.0.0.2");
    n1.spawn(true);
    let n2 = Agent::on("n2", "127.0.0.3").start_joining(&n1);
    // A witness keeps a majority when n1 is killed below.
    let mut w = Agent::on("w", "127.0.0.4");
    let mut cmd = w.agent_command(false);
    cmd.args(support::join_args(&n1.listen)).arg("--witness");
    w.spawn_with(cmd);
    wait_until("n2 and w are Up", || {
        n1.node_state("n2").as_deref() == Some("Up") && n1.node_state("w").as_deref() == Some("Up")
    });
    // 2 GiB that the firmware never touches: cheap to run, slow to migrate at 1 MiB/s.
    a_vm_group(&n1);
    let source = n1.wait_online("vm1");
    let epoch = n1.group("g")["epoch"].as_u64().unwrap();
    // Instances opened from now on (n2's) migrate slowly; n1's keeps the default.
    n1.ok(&[
        "resource",
        "set",
        "vm1",
        "--param",
        "migration_bandwidth_mbps=1",
    ]);

    n1.ok(&["group", "move", "g", "--to", "n2"]);
    wait_until("vm1 runs on n2", || {
        n1.group("g")["owner"] == "n2"
            && n1.state("vm1") == "Online"
            && n1.pid_of("vm1").is_some_and(|p| p != source)
    });
    let target = n1.pid_of("vm1").unwrap();
    n2.seen_pid(target);
    assert_eq!(n1.group("g")["epoch"].as_u64().unwrap(), epoch + 1);
    wait_until("the source's QEMU ended", || !alive(source));
    let done = n1
        .reasons("vm1")
        .into_iter()
        .find(|r| r.contains("live migration to n2 done in"))
        .expect("the source logs the migration");
    assert!(
        downtime_ms(&done).is_some() && done.contains("limit 300 ms"),
        "{done}"
    );
    assert!(
        n2.reasons("vm1")
            .iter()
            .any(|r| r.contains("completing the live migration from n1")),
        "{:#?}",
        n2.reasons("vm1")
    );
    assert!(
        !n2.reasons("vm1").iter().any(|r| r.contains("Failed")),
        "completed, not restarted: {:#?}",
        n2.reasons("vm1")
    );

    // The way back fails: n1 (the target) is killed while the migration runs. The VM keeps
    // running on n2, the same QEMU, and the group stays there.
    let mut back = support::cli_at(&n2.listen)
        .args(["group", "move", "g", "--to", "n1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the migration back is under way", || {
        n2.reasons("vm1")
            .iter()
            .any(|r| r.contains("live migration to n1 (Operator move): migrate_to started"))
    });
    // The 2 GiB take ~5 s at 1 MiB/s: kill the target once QEMU says RAM is on its way.
    wait_until("the migration streams", || {
        let answer: serde_json::Value =
            serde_json::from_str(&outside_qmp(&n2, "vm1", "query-migrate")).unwrap_or_default();
        answer["return"]["status"] == "active"
            && answer["return"]["ram"]["transferred"]
                .as_u64()
                .is_some_and(|b| b > 0)
    });
    // The stream is TLS with the cluster's certificates, the target's name checked.
    let params: serde_json::Value =
        serde_json::from_str(&outside_qmp(&n2, "vm1", "query-migrate-parameters")).unwrap();
    assert_eq!(
        params["return"]["tls-creds"], "vigil-migration-tls",
        "{params}"
    );
    assert!(
        params["return"]["tls-hostname"]
            .as_str()
            .is_some_and(|h| h.starts_with("vigil-")),
        "{params}"
    );
    n1.kill();
    wait_until("n2 gave the migration up", || {
        n2.reasons("vm1")
            .iter()
            .any(|r| r.contains("live migration to n1 failed"))
    });
    let _ = back.kill();
    let _ = back.wait();
    wait_until("the move is cancelled", || {
        n2.group("g")["owner"] == "n2" && n2.group("g")["moving"].is_null()
    });
    assert_eq!(n2.state("vm1"), "Online");
    assert_eq!(
        n2.pid_of("vm1"),
        Some(target),
        "the same QEMU, never restarted"
    );
    assert!(alive(target));
    drop((w, n2));
}

/// Group g on `a` with a firmware VM of 2 GiB, online.
fn a_vm_group(a: &Agent) {
    firmware_vm(a, "g", "vm1", &["--param", "memory_mb=2048"]);
}

#[test]
fn a_linux_guest_answers_powers_off_by_acpi_and_its_own_power_off_is_out_of_band() {
    qemu_installed();
    let mut a = Agent::on("n1", "127.0.0.5");
    a.spawn(true);
    linux_vm(&a, "g", "linux", 18085, &[]);
    a.wait_state("linux", "Online");
    let addr = "127.0.0.5:18085";
    wait_until("the guest serves its counter", || count(addr).is_some());
    let first = guest_memory(addr).unwrap();
    wait_until("the counter moves", || {
        count(addr).is_some_and(|c| c > first.count)
    });
    a.seen_pid(a.pid_of("linux").unwrap());
    // Offline: ACPI power-down, which this guest honours (well before stop_timeout_ms).
    a.ok(&["resource", "offline", "linux"]);
    a.wait_state("linux", "Offline");
    assert!(!a.reasons("linux").iter().any(|r| r.contains("turned off")));
    // The guest powers itself off: the operator's intent, not a failure.
    a.ok(&["resource", "online", "linux"]);
    a.wait_online("linux");
    let booted = guest_memory(addr).expect("the guest answers again");
    assert_ne!(
        booted.boot, first.boot,
        "a new boot has a new boot id (what the migration tests rely on)"
    );
    assert_eq!(
        get(addr, "/cgi-bin/poweroff").as_deref(),
        Some("powering off"),
        "the guest takes the request"
    );
    wait_until("linux is Offline", || a.state("linux") == "Offline");
    assert_eq!(a.resource("linux")["persistent_state"], "Offline");
    assert!(
        a.logged("linux", "the guest powered itself off"),
        "{:#?}",
        a.reasons("linux")
    );
    a.kill();
}

/// Waits until the guest of `linux` (group g) answers at `addr` on n2 and the database
/// records it Online there; its QEMU is n2's to clean up.
fn arrived_on_n2(n1: &Agent, n2: &Agent, addr: &str) {
    wait_until("the guest answers on n2, which records it Online", || {
        count(addr).is_some()
            && n1.group("g")["owner"] == "n2"
            && n1.state("linux") == "Online"
            && n1.pid_of("linux").is_some()
    });
    n2.seen_pid(n1.pid_of("linux").unwrap());
}

#[test]
fn a_live_migration_keeps_the_guest_answering_and_its_memory() {
    qemu_installed();
    let (n1, n2) = two_nodes("127.0.0.6", "127.0.0.7");
    linux_vm(
        &n1,
        "g",
        "linux",
        18086,
        &["--param", "migration_port=47216"],
    );
    let source = n1.wait_online("linux");
    let before = guest_memory("127.0.0.6:18086").expect("the guest answers on n1");
    n1.ok(&["group", "move", "g", "--to", "n2"]);
    arrived_on_n2(&n1, &n2, "127.0.0.7:18086");
    assert_same_guest_continues(&before, "127.0.0.7:18086");
    wait_until("the source QEMU on n1 ended", || !alive(source));
    assert!(
        count("127.0.0.6:18086").is_none(),
        "nothing answers on n1 any more"
    );
    let done = n1
        .reasons("linux")
        .into_iter()
        .find(|r| r.contains("live migration to n2 done in"))
        .expect("the migration is logged with its downtime");
    assert!(
        !n2.reasons("linux").iter().any(|r| r.contains("Failed")),
        "completed, not restarted: {:#?}",
        n2.reasons("linux")
    );
    assert!(downtime_ms(&done).is_some(), "{done}");
}

#[test]
fn a_quick_migration_saves_moves_and_restores_the_guest_with_its_memory() {
    qemu_installed();
    let state = tempfile::tempdir().unwrap();
    let (n1, n2) = two_nodes("127.0.0.8", "127.0.0.9");
    let state_dir = format!("state_dir={}", state.path().display());
    linux_vm(&n1, "g", "linux", 18088, &["--param", &state_dir]);
    n1.wait_online("linux");
    wait_until("the guest answers on n1", || {
        guest_memory("127.0.0.8:18088").is_some()
    });
    let before = guest_memory("127.0.0.8:18088").unwrap();
    n1.ok(&["group", "move", "g", "--to", "n2", "--migration", "quick"]);
    arrived_on_n2(&n1, &n2, "127.0.0.9:18088");
    assert_same_guest_continues(&before, "127.0.0.9:18088");
    let arrived = n2
        .reasons("linux")
        .into_iter()
        .find(|r| r.contains("quick migration from n1: downtime"))
        .expect("the target logs the downtime");
    assert!(downtime_ms(&arrived).is_some(), "{arrived}");
    let e = n1.err(&[
        "group",
        "move",
        "g",
        "--to",
        "n1",
        "--migration",
        "sideways",
    ]);
    assert!(e.contains("migration \"sideways\" is not valid"), "{e}");
}

#[test]
fn offline_action_save_keeps_the_guest_memory_until_the_next_online() {
    qemu_installed();
    let state = tempfile::tempdir().unwrap();
    let mut a = Agent::on("n1", "127.0.0.12");
    a.spawn(true);
    let state_dir = format!("state_dir={}", state.path().display());
    linux_vm(
        &a,
        "g",
        "linux",
        18092,
        &["--param", &state_dir, "--param", "offline_action=save"],
    );
    a.wait_online("linux");
    wait_until("the guest answers", || {
        guest_memory("127.0.0.12:18092").is_some()
    });
    let before = guest_memory("127.0.0.12:18092").unwrap();
    a.ok(&["resource", "offline", "linux"]);
    a.wait_state("linux", "Offline");
    assert!(
        state.path().join("linux.state").exists(),
        "the state was saved"
    );
    a.ok(&["resource", "online", "linux"]);
    a.wait_online("linux");
    assert_same_guest_continues(&before, "127.0.0.12:18092");
    assert!(
        !state.path().join("linux.state").exists(),
        "the state was used up"
    );
    a.kill();
}

#[test]
fn a_disk_that_goes_away_fails_the_thorough_check_naming_it() {
    qemu_installed();
    let a = Agent::start();
    let disk = a.dir.path().join("disk.qcow2");
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("16M")
        .status()
        .unwrap();
    assert!(made.success());
    let disks = format!("disks={}", disk.display());
    firmware_vm(
        &a,
        "g",
        "vm1",
        &[
            "--param",
            &disks,
            "--is-alive-ms",
            "300",
            "--restart-action",
            "none",
        ],
    );
    a.wait_online("vm1");
    std::fs::remove_file(&disk).unwrap();
    wait_until("vm1 failed", || a.state("vm1") == "Failed");
    let reasons = a.reasons("vm1");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains(&format!("disk {}", disk.display()))),
        "{reasons:#?}"
    );
}

#[test]
fn a_drain_moves_a_vm_off_live() {
    qemu_installed();
    let (n1, n2) = two_nodes("127.0.0.13", "127.0.0.14");
    firmware_vm(&n1, "g", "vm1", &["--param", "migration_port=47218"]);
    let source = n1.wait_online("vm1");
    n1.ok(&["node", "drain", "n1"]);
    let arrived = || {
        n1.group("g")["owner"] == "n2"
            && n1.state("vm1") == "Online"
            && n1.pid_of("vm1").is_some_and(|p| p != source)
    };
    let deadline = std::time::Instant::now() + support::WAIT;
    while !arrived() {
        // What each side said, should it not arrive (seen once under a loaded run).
        assert!(
            std::time::Instant::now() < deadline,
            "vm1 did not arrive on n2: {}\nn1: {:#?}\nn2: {:#?}",
            n1.group("g"),
            n1.reasons("vm1"),
            n2.reasons("vm1")
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    n2.seen_pid(n1.pid_of("vm1").unwrap());
    assert!(
        n1.logged(
            "vm1",
            "live migration to n2 (Drain move): migrate_to started"
        ),
        "{:#?}",
        n1.reasons("vm1")
    );
    assert!(
        !n2.reasons("vm1").iter().any(|r| r.contains("Failed")),
        "completed, not restarted: {:#?}",
        n2.reasons("vm1")
    );
}
