//! Resource types as plugins, on real agents: OCF agents from Debian's `resource-agents`
//! (and a misbehaving test agent), and C-ABI plugins (the example plugin built by cargo, and
//! a C plugin built here with cc against the shipped header).

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::{Agent, Net, alive, kill9, read, wait_until};

/// Debian's resource agents (installed by the test command).
fn heartbeat_agents_installed() {
    assert!(
        Path::new("/usr/lib/ocf/resource.d/heartbeat/Dummy").exists(),
        "Debian's resource-agents package is missing: run the README's test command"
    );
}

/// The example plugin cargo built for these tests (a dev-dependency: it sits next to them).
fn example_plugin() -> String {
    let deps = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let lib = deps.join("libvigil_example_plugin.so");
    assert!(lib.exists(), "{} was not built", lib.display());
    lib.display().to_string()
}

/// Builds `tests/plugins/odd.c` against the shipped header into `dir`.
fn c_plugin(dir: &Path, abi: Option<u32>) -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = dir.join(format!("odd-{}.so", abi.unwrap_or(0)));
    let mut cc = Command::new("cc");
    cc.args(["-shared", "-fPIC", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg("-I")
        .arg(here.join("../plugin/include"))
        .arg(here.join("tests/plugins/odd.c"));
    if let Some(abi) = abi {
        cc.arg(format!("-DABI={abi}u"));
    }
    let done = cc.output().expect("cc runs");
    assert!(
        done.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    out
}

/// An OCF_ROOT holding only the test agent `ocf:vigiltest:Odd`.
fn test_ocf_root(dir: &Path) -> PathBuf {
    let root = dir.join("ocf");
    let agents = root.join("resource.d/vigiltest");
    std::fs::create_dir_all(&agents).unwrap();
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(here.join("tests/plugins/Odd"), agents.join("Odd")).unwrap();
    std::fs::set_permissions(agents.join("Odd"), std::fs::Permissions::from_mode(0o755)).unwrap();
    root
}

fn resource_count(a: &Agent) -> usize {
    a.status()["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["resources"].as_array().unwrap().len())
        .sum()
}

#[test]
fn ocf_dummy_comes_online_is_monitored_and_goes_offline() {
    heartbeat_agents_installed();
    let a = Agent::start();
    let state = a.dir.path().join("d.state");
    let state_param = format!("state={}", state.display());
    a.ok(&["group", "create", "g"]);
    a.create(
        "d",
        "g",
        "ocf:heartbeat:Dummy",
        std::slice::from_ref(&state_param),
        &[
            "--looks-alive-ms",
            "200",
            "--is-alive-ms",
            "400",
            "--online",
        ],
    );
    a.wait_state("d", "Online");
    assert!(state.exists(), "start made the state file");
    // Someone removes what the agent tracks: monitor says 7 (not running), and it restarts.
    std::fs::remove_file(&state).unwrap();
    wait_until("monitor saw it stopped", || {
        a.logged("d", "exited with 7 (OCF_NOT_RUNNING)")
    });
    wait_until("restarted in place", || {
        a.logged("d", "restarting in place") && a.state("d") == "Online"
    });
    assert!(state.exists());
    a.ok(&["resource", "offline", "d"]);
    a.wait_state("d", "Offline");
    assert!(!state.exists(), "stop removed the state file");

    // Bad input: a clear error naming the problem, nothing stored changes.
    let before = resource_count(&a);
    let e = a.create_refused("d2", "g", "ocf:heartbeat:Dummy", &["nope=1"]);
    assert!(e.contains("no parameter \"nope\""), "{e}");
    let e = a.create_refused(
        "d2",
        "g",
        "ocf:heartbeat:Dummy",
        std::slice::from_ref(&state_param),
    );
    assert!(e.contains("must be unique") && e.contains("\"d\""), "{e}");
    let e = a.create_refused("d2", "g", "ocf:heartbeat:NoSuchAgent", support::NO_PARAMS);
    assert!(e.contains("ocf:heartbeat:NoSuchAgent not found"), "{e}");
    let e = a.create_refused("d2", "g", "ocf:heartbeat:IPaddr2", support::NO_PARAMS);
    assert!(e.contains("needs parameter \"ip\""), "{e}");
    let e = a.create_refused(
        "d2",
        "g",
        "ocf:heartbeat:Dummy",
        &["vigil_start_timeout_ms=soon"],
    );
    assert!(
        e.contains("vigil_start_timeout_ms") && e.contains("\"soon\""),
        "{e}"
    );
    let e = a.err(&[
        "resource",
        "set",
        "d",
        "--param",
        "vigil_stop_timeout_ms=400000",
    ]);
    assert!(e.contains("deadlock_timeout_ms"), "{e}");
    assert_eq!(resource_count(&a), before);
    assert_eq!(a.state("d"), "Offline");

    // Discovery: the agent is listed, and its schema comes from its meta-data.
    assert!(a.ok(&["type", "list"]).contains("ocf:heartbeat:IPaddr2"));
    let show = a.ok(&["type", "show", "ocf:heartbeat:Dummy"]);
    assert!(show.contains("vigil_is_alive_depth"), "{show}");
    let (code, t) = support::http(&a.listen, "GET", "/v1/types/ocf:heartbeat:Dummy", None);
    assert_eq!(code, 200, "{t}");
    let param = |name: &str| {
        t["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no parameter {name} in {t}"))
    };
    // From Dummy's meta-data: `state` is unique, `fake` has a default.
    assert_eq!(param("state")["unique"], true, "{t}");
    assert_eq!(param("fake")["default"], "dummy", "{t}");
}

#[test]
fn ocf_anything_supervises_a_real_process_and_restarts_it() {
    heartbeat_agents_installed();
    let a = Agent::start();
    let pidfile = a.dir.path().join("sleeper.pid");
    let logfile = a.dir.path().join("sleeper.log");
    a.ok(&["group", "create", "g"]);
    a.create(
        "sleeper",
        "g",
        "ocf:heartbeat:anything",
        &[
            "binfile=/bin/sleep".into(),
            "cmdline_options=1000".into(),
            format!("pidfile={}", pidfile.display()),
            format!("logfile={}", logfile.display()),
        ],
        &["--looks-alive-ms", "200", "--online"],
    );
    a.wait_state("sleeper", "Online");
    let pid_of = || read(&pidfile).trim().parse::<u32>().ok();
    let first = pid_of().expect("anything wrote its pid file");
    a.seen_pid(first);
    assert!(alive(first));
    kill9(first);
    wait_until("a new sleeper", || {
        pid_of().is_some_and(|p| p != first && alive(p)) && a.state("sleeper") == "Online"
    });
    let second = pid_of().unwrap();
    a.seen_pid(second);
    let reasons = a.reasons("sleeper");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("ocf:heartbeat:anything monitor")),
        "{reasons:#?}"
    );
    assert!(a.logged("sleeper", "restart 1 of"));
    a.ok(&["resource", "offline", "sleeper"]);
    a.wait_state("sleeper", "Offline");
    wait_until("stop ended the sleeper", || !alive(second));
}

#[test]
fn an_ocf_configuration_error_is_not_retried_on_that_node_and_the_group_moves() {
    let dir = tempfile::tempdir().unwrap();
    let root = test_ocf_root(dir.path());
    let (n1, _n2) = two_nodes_with_the_test_agent(&root);
    let state = dir.path().join("odd.state");
    n1.ok(&["group", "create", "g", "--preferred-owners", "n1,n2"]);
    n1.create(
        "odd",
        "g",
        "ocf:vigiltest:Odd",
        &[format!("state={}", state.display()), "bad_on=n1".into()],
        &["--online"],
    );
    wait_until("odd is Online on n2", || {
        n1.state("odd") == "Online" && n1.group("g")["owner"] == "n2"
    });
    assert_eq!(
        read(&PathBuf::from(format!("{}.n2", state.display()))).trim(),
        "n2"
    );
    let reasons = n1.reasons("odd");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("exited with 6 (OCF_ERR_CONFIGURED)")),
        "{reasons:#?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("misconfigured on n1")),
        "{reasons:#?}"
    );
    // The RCM's decision is logged with the failure: a restart would be "restart 1 of …".
    assert!(
        !reasons.iter().any(|r| r.contains("restart 1 of")),
        "a configuration error must not be restarted on the same node: {reasons:#?}"
    );
    // A control request through n1 is answered by the owner, n2 (an OCF agent takes none).
    let e = n1.err(&["resource", "control", "odd", "status"]);
    assert!(
        e.contains("odd on n2: this resource type takes no control requests"),
        "{e}"
    );
}

/// Two agents whose OCF_ROOT holds only `ocf:vigiltest:Odd`.
fn two_nodes_with_the_test_agent(root: &Path) -> (Agent, Agent) {
    let with_root = |a: &mut Agent, join: Option<&Agent>| {
        let mut cmd = a.agent_command(join.is_none());
        if let Some(seed) = join {
            cmd.args(support::join_args(&seed.listen));
        }
        cmd.env("OCF_ROOT", root);
        a.spawn_with(cmd);
    };
    let mut n1 = Agent::new("n1");
    with_root(&mut n1, None);
    let mut n2 = Agent::new("n2");
    with_root(&mut n2, Some(&n1));
    wait_until("n2 is Up", || n1.node_state("n2").as_deref() == Some("Up"));
    (n1, n2)
}

#[test]
fn a_planned_move_of_a_migratable_ocf_resource_migrates_it_instead_of_restarting_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = test_ocf_root(dir.path());
    let (n1, n2) = two_nodes_with_the_test_agent(&root);
    let state = dir.path().join("mig.state");
    let journal = dir.path().join("journal");
    n1.ok(&["group", "create", "g", "--preferred-owners", "n1,n2"]);
    n1.create(
        "mig",
        "g",
        "ocf:vigiltest:Odd",
        &[
            format!("state={}", state.display()),
            format!("journal={}", journal.display()),
        ],
        &["--online"],
    );
    wait_until("mig is Online on n1", || n1.state("mig") == "Online");
    let epoch = n1.group("g")["epoch"].as_u64().unwrap();
    n1.ok(&["group", "move", "g", "--to", "n2"]);
    wait_until("mig is Online on n2 and n1 stopped its part", || {
        n1.state("mig") == "Online"
            && n1.group("g")["owner"] == "n2"
            && read(&journal).lines().count() == 4
    });
    let lines: Vec<String> = read(&journal).lines().map(str::to_string).collect();
    assert_eq!(
        lines,
        [
            "n1 start",
            "n1 migrate_to n2",
            "n2 migrate_from n1",
            "n1 stop"
        ],
        "migrate_to on the source, migrate_from on the target, then the source's stop"
    );
    assert_eq!(n1.group("g")["epoch"].as_u64().unwrap(), epoch + 1);
    // Each side's cluster log tells its part.
    let source = n1.reasons("mig");
    assert!(
        source
            .iter()
            .any(|r| r.contains("migrate_to done: now running on n2")),
        "{source:#?}"
    );
    let target = n2.reasons("mig");
    assert!(
        target
            .iter()
            .any(|r| r.contains("completing the live migration from n1")),
        "{target:#?}"
    );
}

#[test]
fn an_offline_whose_stop_fails_is_ended_by_its_rhs_before_it_is_reported() {
    // The RHS owns Terminate after a failure it reports: a failed stop is followed by its
    // Terminate (a second stop here), and the RCM, told the instance was ended, sends none.
    let dir = tempfile::tempdir().unwrap();
    let root = test_ocf_root(dir.path());
    let mut a = Agent::new("n1");
    let mut cmd = a.agent_command(true);
    cmd.env("OCF_ROOT", &root);
    a.spawn_with(cmd);
    a.ok(&["group", "create", "g"]);
    let state = dir.path().join("odd.state");
    a.create(
        "odd",
        "g",
        "ocf:vigiltest:Odd",
        &[format!("state={}", state.display())],
        &["--online"],
    );
    a.wait_state("odd", "Online");
    let running = dir.path().join("odd.state.n1");
    assert!(running.exists());
    std::fs::write(dir.path().join("odd.state.stopfail"), "").unwrap();
    a.ok(&["resource", "offline", "odd"]);
    wait_until("the failed stop is reported", || {
        a.logged("odd", "Offline failed")
    });
    a.wait_state("odd", "Offline");
    wait_until("the RHS's Terminate stopped it", || !running.exists());
}

#[test]
fn an_ocf_agent_that_answers_garbage_or_hangs_is_a_failure_with_a_clear_reason() {
    let dir = tempfile::tempdir().unwrap();
    let root = test_ocf_root(dir.path());
    let mut a = Agent::new("n1");
    let mut cmd = a.agent_command(true);
    cmd.env("OCF_ROOT", &root);
    a.spawn_with(cmd);
    a.ok(&["group", "create", "g"]);
    let garbage = dir.path().join("garbage.state");
    a.create(
        "garbage",
        "g",
        "ocf:vigiltest:Odd",
        &[
            format!("state={}", garbage.display()),
            "mode=garbage".into(),
        ],
        &[
            "--looks-alive-ms",
            "200",
            "--restart-action",
            "none",
            "--online",
        ],
    );
    wait_until("garbage failed", || a.state("garbage") == "Failed");
    assert!(a.logged(
        "garbage",
        "ocf:vigiltest:Odd monitor (depth 10) exited with 99 (not defined by OCF)"
    ));
    a.ok(&["group", "create", "h"]);
    let hang = dir.path().join("hang.state");
    a.create(
        "hang",
        "h",
        "ocf:vigiltest:Odd",
        &[
            format!("state={}", hang.display()),
            "vigil_monitor_timeout_ms=300".into(),
        ],
        &[
            "--looks-alive-ms",
            "200",
            "--restart-action",
            "none",
            "--online",
        ],
    );
    a.wait_state("hang", "Online");
    std::fs::write(format!("{}.hang", hang.display()), "").unwrap();
    wait_until("hang failed", || a.state("hang") == "Failed");
    // validate-all runs before start: OCF_ERR_ARGS is a configuration error, not restarted.
    a.ok(&["group", "create", "v"]);
    let invalid = dir.path().join("invalid.state");
    a.create(
        "invalid",
        "v",
        "ocf:vigiltest:Odd",
        &[format!("state={}", invalid.display()), "mode=bogus".into()],
        &["--online"],
    );
    wait_until("invalid failed and the RCM decided", || {
        a.state("invalid") == "Failed" && a.logged("invalid", "misconfigured on")
    });
    let reasons = a.reasons("invalid");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("validate-all exited with 2 (OCF_ERR_ARGS)")),
        "{reasons:#?}"
    );
    assert!(
        !reasons.iter().any(|r| r.contains("restart 1 of")),
        "{reasons:#?}"
    );
    assert!(a.logged("hang", "did not finish within 300 ms; killed"));
    // The agent process itself never noticed a thing.
    assert!(alive(a.pid()));
}

#[test]
fn a_floating_ip_moves_with_its_group_between_two_namespaces() {
    heartbeat_agents_installed();
    let net = Net::new();
    let mut n1 = Agent::in_net(&net, 1, "n1");
    n1.spawn(true);
    let n2 = Agent::in_net(&net, 2, "n2").start_joining(&n1);
    wait_until("n2 is Up", || n1.node_state("n2").as_deref() == Some("Up"));
    let vip = net.addr(100);
    n1.ok(&["group", "create", "web", "--preferred-owners", "n1,n2"]);
    n1.create(
        "ip",
        "web",
        "ocf:heartbeat:IPaddr2",
        &[
            format!("ip={vip}"),
            "cidr_netmask=24".into(),
            "nic=eth0".into(),
        ],
        &[],
    );
    // A service on every address of its node that answers with the node's name.
    let script = n1.dir.path().join("server.py");
    std::fs::write(
        &script,
        "import http.server, os\n\
         class H(http.server.BaseHTTPRequestHandler):\n\
         \x20   def do_GET(s):\n\
         \x20       b = os.environ['VIGIL_NODE'].encode()\n\
         \x20       s.send_response(200)\n\
         \x20       s.send_header('Content-Length', str(len(b)))\n\
         \x20       s.end_headers()\n\
         \x20       s.wfile.write(b)\n\
         \x20   def log_message(s, *a):\n\
         \x20       pass\n\
         http.server.HTTPServer(('0.0.0.0', 8080), H).serve_forever()\n",
    )
    .unwrap();
    n1.create(
        "http",
        "web",
        "process",
        &[
            format!("command=python3 {}", script.display()),
            "check_tcp=127.0.0.1:8080".into(),
        ],
        &["--depends-on", "ip"],
    );
    n1.ok(&["group", "online", "web"]);
    let answer = || {
        use std::io::{Read, Write};
        let addr: std::net::SocketAddr = format!("{vip}:8080").parse().unwrap();
        let mut s =
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(500))
                .ok()?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .ok()?;
        write!(s, "GET / HTTP/1.0\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        body.rsplit("\r\n\r\n").next().map(str::to_string)
    };
    wait_until("the floating IP answers from n1", || {
        answer().as_deref() == Some("n1")
    });
    let on = |i: u8| {
        let out = Command::new("ip")
            .args(["-n", &net.ns(i), "-o", "addr", "show", "dev", "eth0"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains(&format!("{vip}/24"))
    };
    assert!(on(1) && !on(2));
    n1.ok(&["group", "move", "web", "--to", "n2"]);
    wait_until("the floating IP answers from n2", || {
        answer().as_deref() == Some("n2")
    });
    assert!(on(2) && !on(1), "the address left n1 and is on n2 only");
    assert_eq!(n1.state("ip"), "Online");
    drop((n2, n1));
}

#[test]
fn the_example_plugin_is_registered_brought_online_checked_failed_and_restarted() {
    let a = Agent::start();
    let lib = example_plugin();
    assert_eq!(
        a.ok(&["type", "register", &lib]).trim(),
        "type marker registered"
    );
    assert!(a.ok(&["type", "list"]).contains("marker"));
    let show = a.ok(&["type", "show", "marker"]);
    assert!(
        show.contains("ABI version 1") && show.contains("path"),
        "{show}"
    );
    let marker = a.dir.path().join("marker");
    a.ok(&["group", "create", "g"]);
    a.create(
        "m",
        "g",
        "marker",
        &[
            format!("path={}", marker.display()),
            "pending_polls=3".into(),
        ],
        &["--looks-alive-ms", "200", "--online"],
    );
    a.wait_state("m", "Online");
    assert_eq!(read(&marker), "m on n1 epoch 1\n");
    // Its Online said "pending" three times first; the host kept asking.
    assert!(a.logged("m", "OnlinePending: coming online"));
    // LooksAlive notices the marker is gone, IsAlive confirms; restarted in place.
    std::fs::remove_file(&marker).unwrap();
    wait_until("the plugin's check failed", || {
        a.logged("m", &format!("IsAlive: marker {}", marker.display()))
    });
    wait_until("restarted by the plugin's online", || {
        a.logged("m", "restarting in place") && a.state("m") == "Online"
    });
    assert_eq!(read(&marker), "m on n1 epoch 1\n");
    // The control entry (ResourceControl), answered by the plugin in its RHS.
    assert_eq!(
        a.ok(&["resource", "control", "m", "path"]).trim(),
        marker.display().to_string()
    );
    let e = a.err(&["resource", "control", "m", "colour"]);
    assert!(e.contains("unknown request \"colour\"; known: path"), "{e}");
    a.ok(&["resource", "offline", "m"]);
    a.wait_state("m", "Offline");
    assert!(!marker.exists());

    // Registration refuses what it cannot use, and stores nothing.
    let e = a.err(&["type", "register", &lib]);
    assert!(e.contains("already registered"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let wrong = c_plugin(dir.path(), Some(999));
    let e = a.err(&["type", "register", wrong.to_str().unwrap()]);
    assert!(
        e.contains("speaks plugin ABI version 999; this Vigil speaks version 1"),
        "{e}"
    );
    let e = a.err(&["type", "register", "/etc/hostname"]);
    assert!(e.contains("/etc/hostname: cannot be loaded"), "{e}");
    let libc = [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("libc");
    let e = a.err(&["type", "register", libc]);
    assert!(e.contains("no vigil_plugin_entry symbol"), "{e}");
    let e = a.create_refused("m2", "g", "marker", &["colour=red"]);
    assert!(e.contains("no parameter \"colour\""), "{e}");
    let e = a.err(&["type", "unregister", "marker"]);
    assert!(e.contains("used by resource(s) m"), "{e}");
    let types = a.ok(&["type", "list"]);
    assert!(
        types.contains("marker") && !types.contains("odd"),
        "{types}"
    );
    a.ok(&["resource", "delete", "m"]);
    a.ok(&["type", "unregister", "marker"]);
    assert!(!a.ok(&["type", "list"]).contains("marker"));
}

#[test]
fn a_plugin_that_answers_garbage_fails_with_a_clear_log_line() {
    let a = Agent::start();
    let dir = tempfile::tempdir().unwrap();
    let odd = c_plugin(dir.path(), None);
    a.ok(&["type", "register", odd.to_str().unwrap()]);
    a.ok(&["group", "create", "g"]);
    a.create(
        "o",
        "g",
        "odd",
        support::NO_PARAMS,
        &[
            "--is-alive-ms",
            "200",
            "--restart-action",
            "none",
            "--online",
        ],
    );
    wait_until("o failed", || a.state("o") == "Failed");
    assert!(a.logged(
        "o",
        "the plugin's is_alive answered status 42, which plugin ABI version 1 does not define"
    ));
    assert!(a.logged("o", "garbage"));
    assert!(alive(a.pid()));
}

#[test]
fn a_crashing_or_hanging_plugin_takes_down_only_its_own_rhs() {
    let a = Agent::start();
    a.ok(&["type", "register", &example_plugin()]);
    // A bystander in the shared RHS: it must not notice anything.
    a.process("keep", "keeper", "sleep 1000", &["--online"]);
    let keeper = a.wait_online("keeper");
    let shared = a.rhs_pid("default").unwrap();

    let crash = a.dir.path().join("crash");
    a.ok(&["group", "create", "c"]);
    a.create(
        "crash",
        "c",
        "marker",
        &[
            format!("path={}", crash.display()),
            "fault=segv_on_online".into(),
        ],
        &[
            "--separate-monitor",
            "--restart-threshold",
            "1",
            "--restart-action",
            "restart",
            "--online",
        ],
    );
    wait_until("crash gave up", || {
        a.state("crash") == "Failed" && a.logged("crash", "staying Failed")
    });
    let segv = a
        .log()
        .into_iter()
        .filter_map(|r| r["reason"].as_str().map(str::to_string))
        .any(|r| r.starts_with("RHS resource-crash") && r.contains("SIGSEGV"));
    assert!(segv, "the RHS's death by SIGSEGV is logged: {:#?}", a.log());

    let hang = a.dir.path().join("hang");
    a.ok(&["group", "create", "h"]);
    a.create(
        "hang",
        "h",
        "marker",
        &[
            format!("path={}", hang.display()),
            "fault=hang_on_is_alive".into(),
        ],
        &[
            "--separate-monitor",
            "--is-alive-ms",
            "200",
            "--deadlock-timeout-ms",
            "1000",
            "--restart-action",
            "none",
            "--online",
        ],
    );
    wait_until("the hang is caught", || {
        a.logged(
            "hang",
            "IsAlive did not return within deadlock_timeout_ms=1000",
        )
    });
    wait_until("hang is Failed", || a.state("hang") == "Failed");

    assert_eq!(a.state("keeper"), "Online");
    assert_eq!(a.pid_of("keeper"), Some(keeper));
    assert!(alive(keeper));
    assert_eq!(
        a.rhs_pid("default"),
        Some(shared),
        "the shared RHS lived on"
    );
    assert!(alive(a.pid()));
}

#[test]
fn a_secret_parameter_is_never_shown_in_status_errors_logs_or_replies() {
    let a = Agent::start();
    a.ok(&["group", "create", "g"]);
    // Made secret by the operator: a command line that cannot start, so its error quotes it.
    a.ok(&[
        "resource",
        "create",
        "p",
        "--group",
        "g",
        "--type",
        "process",
        "--secret-param",
        "command=/nonexistent/hunter2-lamp --token=open-sesame",
        "--online",
    ]);
    wait_until("the start failed", || a.logged("p", "cannot start"));
    assert_eq!(a.resource("p")["params"]["command"], "(secret)");
    let failed: Vec<String> = a
        .reasons("p")
        .into_iter()
        .filter(|r| r.contains("cannot start"))
        .collect();
    assert!(failed.iter().all(|r| r.contains("(secret)")), "{failed:?}");
    // Refused values are named by parameter, not repeated.
    let e = a.err(&[
        "resource",
        "create",
        "q",
        "--group",
        "g",
        "--type",
        "process",
        "--param",
        "command=/bin/true",
        "--secret-param",
        "stop_signal=SIGhunter2x",
    ]);
    assert!(e.contains("stop_signal") && !e.contains("hunter2"), "{e}");
    let e = a.err(&["resource", "set", "p", "--secret-param", "hunter2-alone"]);
    assert!(
        e.contains("--secret-param number 1 is not NAME=VALUE") && !e.contains("hunter2"),
        "{e}"
    );
    // A plain --param later keeps a secret parameter secret.
    a.ok(&["resource", "set", "p", "--param", "command=/bin/sleep 600"]);
    assert_eq!(a.resource("p")["params"]["command"], "(secret)");

    // Made secret by the type's schema: the example plugin's password, given as a plain
    // --param, and quoted back by the plugin in a control reply.
    a.ok(&["type", "register", &example_plugin()]);
    let marker = a.dir.path().join("marker");
    a.create(
        "m",
        "g",
        "marker",
        &[
            format!("path={}", marker.display()),
            "password=hunter2-pw".into(),
        ],
        &["--online"],
    );
    a.wait_state("m", "Online");
    let m = a.resource("m");
    assert_eq!(m["params"]["password"], "(secret)");
    assert_eq!(m["params"]["path"], marker.display().to_string());
    assert_eq!(
        a.ok(&["resource", "control", "m", "password"]).trim(),
        "the password is Some(\"(secret)\")"
    );

    // Nowhere an operator or a log reader looks holds the values.
    let shown = [
        a.ok(&["status", "--output", "json"]),
        a.ok(&["log", "--output", "json"]),
        read(&a.data_dir().join("cluster.log")),
        read(&a.dir.path().join("agent.stderr")),
    ];
    for text in shown {
        for value in ["hunter2", "open-sesame"] {
            assert!(!text.contains(value), "{value} shown in: {text}");
        }
    }
}
