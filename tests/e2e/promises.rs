//! Issue 24: one test per README promise that no other test could falsify.
//! Each was shown to fail against a build broken on purpose (see the issue's
//! closing note): a new boot is a counter reset that cuts no committed log
//! byte; a `--services` reload never moves a live connection and names new
//! ones, and a bad file changes nothing; output files belong to `--group`
//! (default `prometheus`); `longconn-pin` keeps only four capabilities once
//! its programs are attached.

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use longconn_tests::{
    env::{bin, privileged_or_skip},
    prom::{self, Series},
    traffic::Traffic,
    TestEnv,
};

fn collect_ok(env: &TestEnv, extra: &[&str]) -> Series {
    let (st, err) = env.collect(extra);
    assert!(st.success(), "collect failed: {err}");
    read_prom(env)
}

fn read_prom(env: &TestEnv) -> Series {
    let p = env.out_dir().join("longconn.prom");
    prom::promtool_check(&p);
    prom::parse(&std::fs::read_to_string(p).unwrap())
}

/// Polls `f` every 50 ms until it returns Some, for at most `secs` seconds.
fn poll<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(50));
    }
}

/// Every log file of the out dir (rotated ones included) with its bytes.
fn log_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("access.") || n.starts_with("otlp-"))
        .map(|n| {
            let bytes = std::fs::read(dir.join(&n)).unwrap();
            (n, bytes)
        })
        .collect()
}

/// A new boot (another /proc/sys/kernel/random/boot_id, bind-mounted in a
/// private mount namespace for one `collect`) restarts every total from the
/// connections alive now, moves the start time, and cuts no committed byte
/// of any log.
#[test]
fn a_new_boot_is_a_counter_reset_that_cuts_no_log_byte() {
    if !privileged_or_skip("a_new_boot_is_a_counter_reset_that_cuts_no_log_byte") {
        return;
    }
    let mut env = TestEnv::new("newboot");
    env.pin(&[]);
    let mut gen = Traffic::start_in(&mut env);
    let wl = env.workload();
    let total = |s: &Series, name: &str| {
        prom::value(s, name, &[("workload", &wl), ("direction", "outbound")])
    };
    gen.cmd("pair before 4");
    gen.cmd("send before c2s 100000");
    gen.cmd("close before");
    // This boot: the closed connection is in the totals (SYN + data + FIN).
    let before = poll(10, "the close of `before` in the totals", || {
        let s = collect_ok(&env, &[]);
        (total(&s, "longconn_workload_connections_closed_total") == Some(1.0)).then_some(s)
    });
    assert_eq!(
        total(&before, "longconn_workload_sent_bytes_total"),
        Some(100_002.0)
    );
    let start_before =
        prom::value(&before, "longconn_reader_state_start_time_seconds", &[]).expect("start time");
    let logs_before = log_files(&env.out_dir());
    assert!(
        logs_before.get("access.csv").is_some_and(|b| !b.is_empty()),
        "no access.csv: {:?}",
        logs_before.keys()
    );

    // A connection alive across the "reboot": 5000 bytes + SYN acked.
    let p = gen.cmd("pair after 4");
    let client_port = p["client_port"].as_u64().unwrap();
    gen.cmd("send after c2s 5000");
    poll(10, "the live connection's 5001 acked bytes in dump", || {
        env.dump_json(&["--port", &client_port.to_string()])
            .iter()
            .any(|c| c["direction"] == "outbound" && c["bytes_sent"].as_u64() == Some(5001))
            .then_some(())
    });

    let boot_file = env.path("boot_id");
    std::fs::write(&boot_file, "0badb007-0000-4000-8000-000000000024\n").unwrap();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$0" /proc/sys/kernel/random/boot_id && exec "$@""#)
        .arg(&boot_file)
        .arg(bin("longconn-reader"))
        .arg("--pin-dir")
        .arg(&env.pin_dir)
        .arg("collect")
        .arg("--out-dir")
        .arg(env.out_dir())
        .output()
        .expect("run unshare");
    assert!(
        out.status.success(),
        "collect after a new boot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = read_prom(&env);
    // Totals from 0: only the connection alive now, nothing of the closed one.
    assert_eq!(
        total(&after, "longconn_workload_sent_bytes_total"),
        Some(5001.0),
        "sent bytes after a new boot: the closed connection's 100002 must be gone"
    );
    assert_eq!(
        total(&after, "longconn_workload_connections_closed_total"),
        Some(0.0),
        "closes after a new boot"
    );
    assert_eq!(
        total(&after, "longconn_workload_connections_opened_total"),
        Some(1.0),
        "opened after a new boot: the live connection, seen anew"
    );
    let start_after =
        prom::value(&after, "longconn_reader_state_start_time_seconds", &[]).expect("start time");
    assert!(
        start_after > start_before,
        "the start time must move on a counter reset: {start_before} then {start_after}"
    );
    // Every byte each log held before is still there, in place.
    let logs_after = log_files(&env.out_dir());
    for (name, old) in &logs_before {
        let new = logs_after
            .get(name)
            .unwrap_or_else(|| panic!("{name} disappeared after a new boot"));
        assert!(
            new.len() >= old.len() && new[..old.len()] == old[..],
            "{name}: committed bytes were cut or changed after a new boot ({} bytes before, {} after)",
            old.len(),
            new.len()
        );
    }
}

/// `active_connections` and `sent_bytes_total` of `service` (outbound).
fn service(s: &Series, svc: &str, name: &str) -> Option<f64> {
    prom::value(
        s,
        &format!("longconn_service_{name}"),
        &[("service", svc), ("direction", "outbound")],
    )
}

/// A `--services` reload: a live connection keeps the series it started in
/// (with every byte it sends afterwards), a valid new map names connections
/// opened after it, and a file with a bad line changes nothing at all, not
/// even through its good lines.
#[test]
fn service_map_reload_keeps_live_connections_and_names_new_ones() {
    if !privileged_or_skip("service_map_reload_keeps_live_connections_and_names_new_ones") {
        return;
    }
    let mut env = TestEnv::new("svcreload");
    env.pin(&[]);
    let mut gen = Traffic::start_in(&mut env);
    let map = env.path("services.csv");
    let map_s = map.to_str().unwrap().to_owned();
    let with_map = ["--services", map_s.as_str()];

    std::fs::write(&map, "127.0.0.0/8,*,alpha,one\n").unwrap();
    gen.cmd("pair old 4");
    gen.cmd("send old c2s 1000");
    let s = collect_ok(&env, &with_map);
    assert_eq!(service(&s, "alpha", "active_connections"), Some(1.0));

    // A valid new map: `old` stays in alpha with all its bytes; `new` is beta.
    std::fs::write(&map, "127.0.0.0/8,*,beta,two\n").unwrap();
    gen.cmd("pair new 4");
    gen.cmd("send old c2s 7000");
    gen.cmd("send new c2s 3000");
    let sent = |s: &Series, svc: &str| service(s, svc, "sent_bytes_total").unwrap_or(0.0);
    let s = poll(10, "all 11002 acked bytes in the service totals", || {
        let s = collect_ok(&env, &with_map);
        (sent(&s, "alpha") + sent(&s, "beta") == 11002.0).then_some(s)
    });
    assert_eq!(
        (sent(&s, "alpha"), sent(&s, "beta")),
        (8001.0, 3001.0),
        "sent bytes (alpha, beta): `old` (8001) must stay in alpha, `new` (3001) is beta"
    );
    assert_eq!(
        service(&s, "alpha", "active_connections"),
        Some(1.0),
        "the live connection moved out of its series"
    );
    assert_eq!(
        service(&s, "beta", "active_connections"),
        Some(1.0),
        "the new connection is not named by the new map"
    );
    for svc in ["alpha", "beta"] {
        assert_eq!(
            prom::value(
                &s,
                "longconn_service_active_connections",
                &[("service", svc), ("direction", "outbound")]
            ),
            prom::value(
                &s,
                "longconn_service_connections_opened_total",
                &[("service", svc), ("direction", "outbound")]
            ),
            "{svc}: one connection, opened once"
        );
    }

    // A bad line after a good one: nothing of this file applies.
    std::fs::write(&map, "127.0.0.0/8,*,gamma,three\n10.0.0.0/40,80,bad,\n").unwrap();
    gen.cmd("pair later 4");
    let (st, err) = env.collect(&with_map);
    assert_eq!(st.code(), Some(1), "a bad map is a partial failure: {err}");
    assert!(err.contains(&format!("{map_s}:2: ")), "{err}");
    let s = read_prom(&env);
    assert_eq!(
        service(&s, "beta", "active_connections"),
        Some(2.0),
        "`later` must be named by the last good map (beta)"
    );
    assert_eq!(service(&s, "alpha", "active_connections"), Some(1.0));
    for svc in ["gamma", "bad"] {
        assert!(
            prom::value(
                &s,
                "longconn_service_active_connections",
                &[("service", svc)]
            )
            .is_none(),
            "a line of the rejected file was applied: service {svc} exists"
        );
    }
}

/// Every output file of the out dir (logs, rotated logs, .prom), not the state.
fn output_files(dir: &Path) -> Vec<PathBuf> {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("access.") || n.starts_with("otlp-") || n == "longconn.prom"
        })
        .collect();
    files
}

fn gid_of(group: &str) -> u32 {
    let out = Command::new("getent")
        .args(["group", group])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "no group {group} (prometheus-node-exporter creates `prometheus`; scripts/test installs it)"
    );
    String::from_utf8_lossy(&out.stdout)
        .split(':')
        .nth(2)
        .and_then(|g| g.trim().parse().ok())
        .unwrap_or_else(|| panic!("getent group {group}: bad line"))
}

/// A root collect gives every output file, rotated ones included, to
/// `prometheus` by default and to an explicit `--group` otherwise; files
/// are 0640, the state 0600.
#[test]
fn output_files_belong_to_the_group_prometheus_by_default() {
    if !privileged_or_skip("output_files_belong_to_the_group_prometheus_by_default") {
        return;
    }
    let prometheus = gid_of("prometheus");
    let nogroup = gid_of("nogroup");
    let mut env = TestEnv::new("owner");
    env.all_outputs();
    env.pin(&[]);
    let mut gen = Traffic::start_in(&mut env);
    for (label, extra, want) in [
        ("default", &[][..], prometheus),
        ("--group nogroup", &["--group", "nogroup"][..], nogroup),
    ] {
        let out = env.path(&format!("out-{want}"));
        // Records enough to rotate every log at 4 KiB, cycle after cycle.
        for _ in 0..3 {
            gen.cmd("churn 20");
            let o = env
                .reader_cmd()
                .arg("collect")
                .arg("--out-dir")
                .arg(&out)
                .args(["--log-max-bytes", "4KiB", "--take-over"])
                .args(longconn_tests::env::ALL_OUTPUTS)
                .args(extra)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "collect ({label}): {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let files = output_files(&out);
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want_name in [
            "longconn.prom",
            "access.csv.1",
            "access.jsonl.1",
            "otlp-metrics.jsonl.1",
            "otlp-logs.jsonl.1",
        ] {
            assert!(
                names.iter().any(|n| n == want_name),
                "{label}: no {want_name} in {names:?}"
            );
        }
        for f in &files {
            let m = std::fs::metadata(f).unwrap();
            assert_eq!(
                (m.gid(), format!("{:o}", m.mode() & 0o7777)),
                (want, "640".to_owned()),
                "{label}: {} (gid, mode)",
                f.display()
            );
        }
        let state = std::fs::metadata(out.join("state.bin")).unwrap();
        assert_eq!(state.mode() & 0o7777, 0o600, "{label}: state.bin mode");
    }
}

/// The capability sets of a process, from /proc/PID/status.
fn cap_sets(pid: u32) -> Option<BTreeMap<String, u64>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(
        status
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.starts_with("Cap")
                    .then(|| (k.to_owned(), u64::from_str_radix(v.trim(), 16).ok()))
                    .and_then(|(k, v)| Some((k, v?)))
            })
            .collect(),
    )
}

/// `longconn-pin` holds only CAP_BPF, CAP_CHOWN, CAP_FOWNER and
/// CAP_DAC_OVERRIDE once attached: its sets are read from /proc while it
/// pins into its staging directory (created after the drop), with the
/// final rename held back by strace so the window is certain.
#[test]
fn pin_keeps_only_four_capabilities_after_attaching() {
    if !privileged_or_skip("pin_keeps_only_four_capabilities_after_attaching") {
        return;
    }
    // CAP_CHOWN 0, CAP_DAC_OVERRIDE 1, CAP_FOWNER 3, CAP_BPF 39.
    const KEPT: u64 = 1 | 1 << 1 | 1 << 3 | 1 << 39;
    let env = TestEnv::new("capdrop");
    let mut strace = Command::new("strace");
    strace
        .args([
            "-qq",
            "-o",
            "/dev/null",
            "-e",
            "trace=rename,renameat,renameat2",
        ])
        .args(["-e", "inject=rename,renameat,renameat2:delay_enter=3s"])
        .arg(bin("longconn-pin"))
        .arg("--pin-dir")
        .arg(&env.pin_dir)
        .arg("--cgroup")
        .arg(&env.cgroup)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = strace.spawn().expect("run strace (apt-get install strace)");
    let strace_pid = child.id();
    let pin_pid: u32 = poll(10, "longconn-pin started under strace", || {
        let kids =
            std::fs::read_to_string(format!("/proc/{strace_pid}/task/{strace_pid}/children"))
                .ok()?;
        let pid: u32 = kids.split_whitespace().next()?.parse().ok()?;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        exe.ends_with("longconn-pin").then_some(pid)
    });
    let staging = env
        .pin_dir
        .parent()
        .unwrap()
        .join(format!("longconn-staging-{pin_pid}"));
    let caps = poll(20, "longconn-pin's staging directory", || {
        if !staging.exists() {
            return None;
        }
        let caps = cap_sets(pin_pid)?;
        // Still pinning: the sets were read between the drop and the end.
        staging.exists().then_some(caps)
    });
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "longconn-pin under strace: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(env.pin_dir.exists(), "nothing pinned");
    let show = |v: u64| format!("{v:016x}");
    for (set, want) in [
        ("CapEff", KEPT),
        ("CapPrm", KEPT),
        ("CapBnd", KEPT),
        ("CapInh", 0),
        ("CapAmb", 0),
    ] {
        let got = *caps
            .get(set)
            .unwrap_or_else(|| panic!("no {set} in /proc/{pin_pid}/status: {caps:?}"));
        assert_eq!(
            show(got),
            show(want),
            "{set} of longconn-pin after attaching: {}",
            "only CAP_BPF, CAP_CHOWN, CAP_FOWNER and CAP_DAC_OVERRIDE may remain"
        );
    }
}
