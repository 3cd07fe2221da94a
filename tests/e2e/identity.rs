//! Issue 4: workload and service identity, with bounded label cardinality.

use std::{
    collections::{BTreeSet, HashMap},
    process::Command,
    thread::sleep,
    time::Duration,
};

use longconn_tests::{env::privileged_or_skip, prom, traffic::Traffic, TestEnv};

fn csv_rows(path: &std::path::Path) -> Vec<HashMap<String, String>> {
    let mut r = csv::Reader::from_path(path).unwrap();
    let h = r.headers().unwrap().clone();
    r.records()
        .map(|row| {
            h.iter()
                .zip(row.unwrap().iter())
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .collect()
}

fn collect_ok(env: &TestEnv, extra: &[&str]) -> prom::Series {
    let (st, err) = env.collect(extra);
    assert!(st.success(), "collect failed: {err}");
    let p = env.out_dir().join("longconn.prom");
    prom::promtool_check(&p);
    prom::parse(&std::fs::read_to_string(p).unwrap())
}

#[test]
fn two_cgroups_are_two_workloads_named_by_process_and_cgroup() {
    if !privileged_or_skip("two_cgroups_are_two_workloads_named_by_process_and_cgroup") {
        return;
    }
    let mut env = TestEnv::new("twowl");
    let (a, b) = (env.child_cgroup("a"), env.child_cgroup("b"));
    env.pin(&[]);
    let mut ga = Traffic::start_in_cgroup(&mut env, &a);
    let mut gb = Traffic::start_in_cgroup(&mut env, &b);
    ga.cmd("pair x 4");
    ga.cmd("send x c2s 100000");
    ga.cmd("churn 3");
    gb.cmd("pair y 4");
    gb.cmd("send y c2s 200000");
    gb.cmd("send y s2c 50000");
    ga.cmd("close x");
    gb.cmd("close y");
    sleep(Duration::from_millis(300));
    let s = collect_ok(&env, &[]);
    let (wa, wb) = (
        format!("{}/a", env.workload()),
        format!("{}/b", env.workload()),
    );
    let v = |wl: &str, name: &str, dir: &str| {
        prom::value(&s, name, &[("workload", wl), ("direction", dir)])
            .unwrap_or_else(|| panic!("{name} {wl} {dir} missing"))
    };
    // Client side: bytes_acked = data + SYN + FIN; bytes_received = data + FIN.
    assert_eq!(
        v(&wa, "longconn_workload_sent_bytes_total", "outbound"),
        (100_000 + 2 + 3 * 1002) as f64
    );
    assert_eq!(
        v(&wa, "longconn_workload_received_bytes_total", "outbound"),
        (1 + 3 * 1001) as f64
    );
    assert_eq!(
        v(&wb, "longconn_workload_sent_bytes_total", "outbound"),
        (200_000 + 2) as f64
    );
    assert_eq!(
        v(&wb, "longconn_workload_received_bytes_total", "outbound"),
        (50_000 + 1) as f64
    );
    assert_eq!(
        v(&wa, "longconn_workload_connections_closed_total", "inbound"),
        4.0
    );
    assert_eq!(
        v(&wb, "longconn_workload_connections_closed_total", "inbound"),
        1.0
    );

    let rows = csv_rows(&env.out_dir().join("access.csv"));
    let (pa, pb) = (ga.pid().to_string(), gb.pid().to_string());
    for r in &rows {
        let want_pid = if r["workload"] == wa {
            &pa
        } else if r["workload"] == wb {
            &pb
        } else {
            panic!("unexpected workload {:?}", r["workload"])
        };
        assert_eq!(&r["pid"], want_pid, "process of {r:?}");
        assert_eq!(
            r["comm"], "longconn-traffi",
            "comm (15 chars, as the kernel keeps it)"
        );
    }
    assert_eq!(rows.len(), 2 * 4 + 2, "one close record per socket");
}

#[test]
fn service_map_names_destinations_and_bad_files_keep_the_last_good_map() {
    if !privileged_or_skip("service_map_names_destinations_and_bad_files_keep_the_last_good_map") {
        return;
    }
    let mut env = TestEnv::new("svcmap");
    env.pin(&[]);
    let mut gen = Traffic::start_in(&mut env);
    let p4 = gen.cmd("pair web 4");
    let p6 = gen.cmd("pair api 6");
    let (port4, _port6) = (
        p4["server_port"].as_u64().unwrap(),
        p6["server_port"].as_u64().unwrap(),
    );
    let map = env.path("services.csv");
    // A port-range rule and a CIDR rule; the first match wins.
    std::fs::write(&map, format!("# cidr,ports,name,namespace\n127.0.0.0/8,{}-{},web,frontend\n::/0,*,api,backend\n*,*,never-first,\n", port4 - 1, port4 + 1)).unwrap();
    let map_s = map.to_str().unwrap();
    let s = collect_ok(&env, &["--services", map_s]);
    for (svc, dir) in [
        ("web", "outbound"),
        ("web", "inbound"),
        ("api", "outbound"),
        ("api", "inbound"),
    ] {
        assert_eq!(
            prom::value(
                &s,
                "longconn_service_active_connections",
                &[("service", svc), ("direction", dir)]
            ),
            Some(1.0),
            "{svc} {dir}"
        );
    }
    let out = env.reader(&["dump", "--json", "--services", map_s, "--service", "api"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 2, "dump --service api: {out}");
    assert!(arr
        .iter()
        .all(|c| c["service"] == "api" && c["service_namespace"] == "backend"));
    gen.cmd("close web");
    sleep(Duration::from_millis(200));
    collect_ok(&env, &["--services", map_s]);
    let rows = csv_rows(&env.out_dir().join("access.csv"));
    let web: Vec<_> = rows.iter().filter(|r| r["event"] == "close").collect();
    assert_eq!(web.len(), 2);
    assert!(
        web.iter()
            .all(|r| r["service"] == "web" && r["service_namespace"] == "frontend"),
        "{web:?}"
    );

    // The last good map is kept beside the state, written when it changes,
    // not in the head that every cycle's journal entry rewrites.
    let good = std::fs::read_to_string(&map).unwrap();
    let kept = env.out_dir().join("services.last-good");
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), good);
    let written = std::fs::metadata(&kept).unwrap().modified().unwrap();
    collect_ok(&env, &["--services", map_s]);
    assert_eq!(
        std::fs::metadata(&kept).unwrap().modified().unwrap(),
        written
    );
    let needle = good.lines().next().unwrap().as_bytes();
    for f in ["state.bin", "state.journal"] {
        let state = std::fs::read(env.out_dir().join(f)).unwrap();
        assert!(
            !state.windows(needle.len()).any(|w| w == needle),
            "the service map's text is in {f}"
        );
    }

    // A bad line: one error naming file:line, exit 1, the last good map stays.
    // The file's good line names another service: applying it would show.
    std::fs::write(&map, "::/0,*,not-applied,backend\n10.0.0.0/40,80,bad,\n").unwrap();
    gen.cmd("pair later 6");
    let (st, err) = env.collect(&["--services", map_s]);
    assert_eq!(st.code(), Some(1), "partial failure exits 1: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains(&format!("{map_s}:2: prefix length \"40\"")),
        "{err}"
    );
    let s = prom::parse(&std::fs::read_to_string(env.out_dir().join("longconn.prom")).unwrap());
    assert_eq!(
        prom::value(
            &s,
            "longconn_service_active_connections",
            &[("service", "api"), ("direction", "outbound")]
        ),
        Some(2.0),
        "new connection named by the last good map"
    );
    for svc in ["bad", "not-applied"] {
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

#[test]
fn process_that_exits_keeps_its_connection_attributed() {
    if !privileged_or_skip("process_that_exits_keeps_its_connection_attributed") {
        return;
    }
    let mut env = TestEnv::new("orphan");
    env.pin(&[]);
    let mut srv = Traffic::start_in(&mut env);
    let port = srv.cmd("listen 4")["port"].as_u64().unwrap();
    // bash connects, hands the socket to a background sleep and exits.
    let mut sh = Command::new("bash");
    sh.args(["-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{port}; echo hi >&3; sleep 2 <&3 3<&- >/dev/null 2>&1 & echo $$; exit 0")]);
    env.spawn_in_cgroup(sh);
    let mut child = env.take_child();
    let mut pid = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut pid).ok();
    let _ = child.wait();
    let bash_pid: u32 = pid.trim().parse().expect("bash pid");
    sleep(Duration::from_millis(300));
    assert!(
        !std::path::Path::new(&format!("/proc/{bash_pid}")).exists(),
        "bash should have exited"
    );
    let live = env.dump_json(&["--port", &port.to_string()]);
    let out: Vec<_> = live
        .iter()
        .filter(|c| c["direction"] == "outbound")
        .collect();
    assert_eq!(out.len(), 1, "{live:?}");
    assert_eq!(
        (out[0]["comm"].as_str(), out[0]["pid"].as_u64()),
        (Some("bash"), Some(u64::from(bash_pid)))
    );
    let inbound: Vec<_> = live
        .iter()
        .filter(|c| c["direction"] == "inbound")
        .collect();
    assert_eq!(
        inbound[0]["comm"], "longconn-traffi",
        "inbound: the listening socket's owner"
    );
    assert_eq!(inbound[0]["pid"].as_u64(), Some(u64::from(srv.pid())));
    collect_ok(&env, &[]);
    // `sleep 2` exits and the socket closes: poll until its close is logged.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let rows = loop {
        collect_ok(&env, &[]);
        let csv = env.out_dir().join("access.csv");
        // No file until the first record (the connection is short).
        let rows = if csv.exists() {
            csv_rows(&csv)
        } else {
            Vec::new()
        };
        let closed = rows
            .iter()
            .any(|r| r["event"] == "close" && r["direction"] == "outbound");
        if closed || std::time::Instant::now() > deadline {
            break rows;
        }
        sleep(Duration::from_millis(200));
    };
    let close: Vec<_> = rows
        .iter()
        .filter(|r| r["event"] == "close" && r["direction"] == "outbound")
        .collect();
    assert_eq!(close.len(), 1, "{rows:?}");
    assert_eq!(
        (close[0]["comm"].as_str(), close[0]["pid"].as_str()),
        ("bash", bash_pid.to_string().as_str())
    );
    assert_eq!(close[0]["workload"], env.workload());
}

#[test]
fn ten_thousand_short_connections_add_no_per_port_series() {
    if !privileged_or_skip("ten_thousand_short_connections_add_no_per_port_series") {
        return;
    }
    let mut env = TestEnv::new("cardinality");
    env.pin(&[]);
    let mut gen = Traffic::start_in(&mut env);
    let mut port = 0;
    for _ in 0..10 {
        port = gen.cmd("churn 1000")["port"].as_u64().unwrap();
        collect_ok(&env, &[]);
    }
    sleep(Duration::from_millis(200));
    let s = collect_ok(&env, &[]);
    let wl = env.workload();
    for dir in ["outbound", "inbound"] {
        assert_eq!(
            prom::value(
                &s,
                "longconn_workload_connections_closed_total",
                &[("workload", &wl), ("direction", dir)]
            ),
            Some(10_000.0)
        );
    }
    let mut label_sets = BTreeSet::new();
    for (name, labels) in s.keys() {
        assert!(
            !labels.contains_key("local_port") || name.starts_with("longconn_connection_"),
            "{name} has a port label"
        );
        if name.starts_with("longconn_connection_") {
            panic!("a short connection got a per-connection series: {name}{labels:?}");
        }
        label_sets.insert(labels.clone());
    }
    // Every churn round used a new listener port: 10 services per direction.
    let services: BTreeSet<_> = s
        .keys()
        .filter(|(n, _)| n == "longconn_service_connections_opened_total")
        .map(|(_, l)| l["service"].clone())
        .collect();
    assert_eq!(services.len(), 10, "{services:?}");
    assert!(services.contains(&format!("127.0.0.1:{port}")));
    // 2 workload directions, 10 services x 2 directions, the unlabelled
    // self-metrics, and the 2 `reason`s of longconn_refresh_unreachable_connections.
    assert!(
        label_sets.len() <= 2 + 2 * 10 + 1 + 2,
        "{} label sets: cardinality grew with connections",
        label_sets.len()
    );
}
