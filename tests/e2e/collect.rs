//! Issue 3: the collect cycle. Real traffic in a private cgroup, real
//! `collect` runs, authorities: the generator's byte counts, promtool, and a
//! real node_exporter scrape.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use longconn_tests::{
    env::privileged_or_skip,
    logs,
    prom::{self, NodeExporter, Series},
    traffic::Traffic,
    TestEnv,
};

/// Access records from every file matching `name*` in `dir`, oldest file first.
fn access_records(dir: &Path, name: &str) -> Vec<HashMap<String, String>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let f = p.file_name().unwrap().to_string_lossy();
            f.starts_with(name) && !f.contains(".tmp")
        })
        .collect();
    // access.csv.N (oldest = highest N) ... access.csv.1, access.csv
    files.sort_by_key(|p| {
        std::cmp::Reverse(
            p.extension()
                .and_then(|e| e.to_str())
                .and_then(|e| e.parse::<u32>().ok())
                .unwrap_or(0),
        )
    });
    let mut out = Vec::new();
    for f in files {
        let mut r = csv::Reader::from_path(&f).unwrap();
        let headers = r.headers().unwrap().clone();
        for row in r.records() {
            let row = row.unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            out.push(
                headers
                    .iter()
                    .zip(row.iter())
                    .map(|(h, v)| (h.to_owned(), v.to_owned()))
                    .collect(),
            );
        }
    }
    out
}

fn num(r: &HashMap<String, String>, k: &str) -> u64 {
    r[k].parse().unwrap_or_else(|_| panic!("{k}={:?}", r[k]))
}

/// Every counter (`*_total`) present in both scrapes must not decrease.
fn assert_monotonic(prev: &Series, now: &Series, cycle: usize) {
    for ((name, labels), v) in prev {
        if !name.ends_with("_total") || name.starts_with("longconn_connection_") {
            continue;
        }
        let after = now
            .get(&(name.clone(), labels.clone()))
            .unwrap_or_else(|| panic!("cycle {cycle}: {name}{labels:?} disappeared"));
        assert!(
            after >= v,
            "cycle {cycle}: {name}{labels:?} went back from {v} to {after}"
        );
    }
}

fn run_collect(env: &TestEnv, extra: &[&str]) -> Series {
    let (st, err) = env.collect(extra);
    assert!(st.success(), "collect failed: {err}");
    let prom_path = env.out_dir().join("longconn.prom");
    prom::promtool_check(&prom_path);
    prom::parse(&std::fs::read_to_string(prom_path).unwrap())
}

#[test]
fn collect_cycles_reconcile_with_generator_and_node_exporter() {
    if !privileged_or_skip("collect_cycles_reconcile_with_generator_and_node_exporter") {
        return;
    }
    let mut env = TestEnv::new("collect");
    env.pin(&[]);
    let mut gen = Traffic::start_in(&mut env);
    let wl = env.workload();

    let long = gen.cmd("pair long 4");
    gen.cmd("pair idle 4");
    let long_client_port = long["client_port"].as_u64().unwrap().to_string();
    let idle_pairs = 1u64;
    let (mut long_bytes, mut churned) = (0u64, 0u64);
    let started = Instant::now();
    let mut next_send = Duration::ZERO;
    let mut next_collect = Duration::from_secs(3);
    let mut prev: Option<Series> = None;
    let mut cycles = 0;
    // 11 cycles at least 3 s apart (counted, not a wall-clock window: a
    // loaded machine makes them later, never fewer); the long connection gets
    // 10 kB every 2 s, short connections churn.
    let want_cycles = 11;
    while cycles < want_cycles {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "{cycles} cycles in 180 s"
        );
        let t = started.elapsed();
        if t >= next_send {
            gen.cmd("send long c2s 10000");
            long_bytes += 10_000;
            gen.cmd("churn 5");
            churned += 5;
            next_send = t + Duration::from_secs(2);
        }
        if t >= next_collect {
            let now = run_collect(&env, &[]);
            cycles += 1;
            if let Some(p) = &prev {
                assert_monotonic(p, &now, cycles);
            }
            prev = Some(now);
            next_collect = started.elapsed() + Duration::from_secs(3);
        }
        sleep(Duration::from_millis(50));
    }
    gen.cmd("close long");
    gen.cmd("close idle");
    // Poll until the closes are applied (not a fixed sleep).
    let conns = churned + 1 + idle_pairs;
    let deadline = Instant::now() + Duration::from_secs(20);
    let last = loop {
        let last = run_collect(&env, &[]);
        let closed = prom::value(
            &last,
            "longconn_workload_connections_closed_total",
            &[("workload", &wl), ("direction", "inbound")],
        );
        if closed == Some(conns as f64) || Instant::now() > deadline {
            break last;
        }
        sleep(Duration::from_millis(100));
    };
    assert_monotonic(prev.as_ref().unwrap(), &last, cycles + 1);

    // Reconcile closed totals with the generator, to the byte. Per connection,
    // tcp_info counts the FIN once each way and the active opener's SYN once.
    let g = |name: &str, dir: &str| {
        prom::value(&last, name, &[("workload", &wl), ("direction", dir)])
            .unwrap_or_else(|| panic!("{name} {dir} missing"))
    };
    for dir in ["outbound", "inbound"] {
        assert_eq!(
            g("longconn_workload_connections_opened_total", dir),
            conns as f64,
            "{dir} opened"
        );
        assert_eq!(
            g("longconn_workload_connections_closed_total", dir),
            conns as f64,
            "{dir} closed"
        );
        assert_eq!(g("longconn_workload_connections_failed_total", dir), 0.0);
        assert_eq!(g("longconn_workload_active_connections", dir), 0.0);
    }
    let data_c2s = churned * 1000 + long_bytes;
    let data_s2c = churned * 1000;
    assert_eq!(
        g("longconn_workload_sent_bytes_total", "outbound"),
        (data_c2s + 2 * conns) as f64,
        "client bytes_acked = data + SYN + FIN"
    );
    assert_eq!(
        g("longconn_workload_received_bytes_total", "outbound"),
        (data_s2c + conns) as f64,
        "client bytes_received = data + FIN"
    );
    assert_eq!(
        g("longconn_workload_sent_bytes_total", "inbound"),
        (data_s2c + conns) as f64,
        "server bytes_acked = data + FIN"
    );
    assert_eq!(
        g("longconn_workload_received_bytes_total", "inbound"),
        (data_c2s + conns) as f64,
        "server bytes_received = data + FIN"
    );

    // The held connection: one record per cycle once long, deltas sum to totals.
    let recs = access_records(&env.out_dir(), "access.csv");
    let mine: Vec<_> = recs
        .iter()
        .filter(|r| r["local_port"] == long_client_port && r["workload"] == wl)
        .collect();
    let periodic = mine.iter().filter(|r| r["event"] == "periodic").count();
    // The connection is 5 s old (--long-threshold) from the second cycle
    // on (cycles are at least 3 s apart): a record in each of those.
    assert!(
        periodic >= want_cycles - 1,
        "expected a periodic record per cycle after 5 s, got {periodic} in {want_cycles} cycles"
    );
    let seqs: Vec<u64> = mine.iter().map(|r| num(r, "seq")).collect();
    assert_eq!(
        seqs,
        (1..=mine.len() as u64).collect::<Vec<_>>(),
        "sequence numbers"
    );
    let last_rec = mine.last().unwrap();
    assert_eq!(last_rec["event"], "close");
    for (total, delta) in [
        ("bytes_sent", "bytes_sent_delta"),
        ("bytes_received", "bytes_received_delta"),
        ("packets_sent", "packets_sent_delta"),
        ("packets_received", "packets_received_delta"),
    ] {
        let sum: u64 = mine.iter().map(|r| num(r, delta)).sum();
        assert_eq!(
            sum,
            num(last_rec, total),
            "deltas of {total} sum to the final total"
        );
    }
    assert_eq!(num(last_rec, "bytes_sent"), long_bytes + 2);
    // The idle connection.
    let idle_periodic = recs
        .iter()
        .filter(|r| {
            r["event"] == "periodic"
                && r["workload"] == wl
                && r["bytes_sent"] == "1"
                && r["direction"] == "outbound"
        })
        .count();
    // The idle one: its first record, then a heartbeat only every
    // --idle-record-interval (60 s, longer than this test), then its close.
    assert_eq!(
        idle_periodic, 1,
        "idle long connection: one record, no heartbeat within 60 s"
    );
    // Each connection closed exactly once in the log.
    let mut closes: BTreeMap<&str, u32> = BTreeMap::new();
    for r in recs
        .iter()
        .filter(|r| r["event"] == "close" && r["workload"] == wl)
    {
        *closes.entry(r["cookie"].as_str()).or_default() += 1;
    }
    assert_eq!(closes.len() as u64, 2 * conns);
    assert!(closes.values().all(|&n| n == 1));

    // A real node_exporter reads the file without error and serves our values.
    let ne = NodeExporter::start(&env.out_dir());
    let scraped = prom::parse(&ne.scrape());
    assert_eq!(
        prom::value(&scraped, "node_textfile_scrape_error", &[]),
        Some(0.0),
        "node_textfile_scrape_error"
    );
    for dir in ["outbound", "inbound"] {
        for name in [
            "longconn_workload_connections_closed_total",
            "longconn_workload_sent_bytes_total",
            "longconn_workload_received_bytes_total",
        ] {
            assert_eq!(
                prom::value(&scraped, name, &[("workload", &wl), ("direction", dir)]),
                Some(g(name, dir)),
                "scraped {name} {dir}"
            );
        }
    }
    assert!(prom::value(
        &scraped,
        "longconn_reader_last_success_timestamp_seconds",
        &[]
    )
    .is_some());
}

/// Whether `pid` has exec'd `exe` (its /proc/PID/exe points at it): a kill
/// after this lands in the reader, not in the fork/exec of the test harness.
fn wait_exec(pid: u32, exe: &Path) -> bool {
    let link = PathBuf::from(format!("/proc/{pid}/exe"));
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match std::fs::read_link(&link) {
            Ok(p) if p == exe => return true,
            Ok(_) => std::thread::yield_now(),
            Err(_) => return false, // exited (or never started)
        }
    }
    false
}

/// Every log format, rotated files included, read back and checked for
/// exactly-once closes; all formats must carry the same closes. Returns the
/// closes (from the CSV) and the number of files read per format.
fn closes_in_every_log(dir: &Path, wl: &str) -> (BTreeMap<u64, logs::Record>, Vec<usize>) {
    let mut per_format = Vec::new();
    let mut counts = Vec::new();
    for (name, read) in [
        (
            "access.csv",
            logs::csv as fn(&[PathBuf]) -> Vec<logs::Record>,
        ),
        ("access.jsonl", logs::jsonl),
        ("otlp-logs.jsonl", logs::otlp_logs),
    ] {
        let files = logs::files(dir, name);
        counts.push(files.len());
        let recs = read(&files);
        per_format.push((name, logs::exactly_once(name, &recs, wl)));
    }
    let fields = [
        "event",
        "seq",
        "direction",
        "local_port",
        "remote_port",
        "bytes_sent",
        "bytes_received",
        "packets_sent",
        "packets_received",
    ];
    let view = |m: &BTreeMap<u64, logs::Record>| -> BTreeMap<u64, Vec<String>> {
        m.iter()
            .map(|(c, r)| (*c, fields.iter().map(|f| r[*f].clone()).collect()))
            .collect()
    };
    let csv = view(&per_format[0].1);
    for (name, m) in &per_format[1..] {
        let other = view(m);
        let only_csv: Vec<_> = csv.keys().filter(|c| !other.contains_key(c)).collect();
        let only_other: Vec<_> = other.keys().filter(|c| !csv.contains_key(c)).collect();
        assert!(
            only_csv.is_empty() && only_other.is_empty(),
            "{name} and access.csv disagree on closes: only in access.csv {only_csv:?}, only in {name} {only_other:?}"
        );
        for (c, v) in &csv {
            assert_eq!(
                &other[c], v,
                "{name} vs access.csv, close of cookie {c} ({fields:?})"
            );
        }
    }
    (per_format.swap_remove(0).1, counts)
}

#[test]
fn reader_killed_at_random_points_loses_and_duplicates_nothing() {
    if !privileged_or_skip("reader_killed_at_random_points_loses_and_duplicates_nothing") {
        return;
    }
    let mut env = TestEnv::new("sigkill");
    env.pin(&[]);
    let mut gen = Traffic::start_in(&mut env);
    let wl = env.workload();
    // Small files: every format rotates many times while runs are killed.
    // 1000 kept files: none is deleted, so every record can be counted.
    let args = [
        "--log-max-bytes",
        "4KiB",
        "--log-keep",
        "1000",
        "--access-log",
        "csv,jsonl",
        "--otlp",
        "logs",
    ];
    let collect_cmd = || {
        let mut c = env.collect_cmd();
        c.args(args);
        c
    };
    let exe = std::fs::canonicalize(longconn_tests::env::bin("longconn-reader")).unwrap();
    let mut churned = 0u64;
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let (mut killed, mut attempts, mut missed_exec) = (0u64, 0u64, 0u64);
    let mut prev: Option<Series> = None;
    // Kills that landed after exec, spread over a whole cycle; the cycle's
    // length is learned from the runs that finished before their kill.
    let want: u64 = std::env::var("LONGCONN_KILL_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let t = Instant::now();
    run_collect(&env, &args);
    let mut cycle_us = (t.elapsed().as_micros() as u64).max(1000);
    let started = Instant::now();
    while killed < want {
        assert!(
            attempts < 10 * want,
            "only {killed} of {attempts} collect runs were killed after exec ({missed_exec} exec not seen, cycle {cycle_us} us)"
        );
        attempts += 1;
        if attempts % 3 == 0 {
            gen.cmd("churn 4");
            churned += 4;
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Up to 1.2 cycles: some runs finish, and the last phases
        // (release, rotation) are hit as often as the first.
        let delay = Duration::from_micros(seed % (cycle_us * 6 / 5));
        let mut child = collect_cmd()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let execd = wait_exec(child.id(), &exe);
        sleep(delay);
        let _ = child.kill();
        let st = child.wait().unwrap();
        match (st.code(), execd) {
            (None, true) => killed += 1,
            (None, false) => missed_exec += 1,
            (Some(_), _) => {}
        }
        // Every tenth attempt a whole run, timed: the kill window follows
        // the cycle's real length (it grows with the files and the load).
        if attempts % 10 == 0 {
            let t = Instant::now();
            let st = collect_cmd()
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(st.success(), "an unkilled run after kills failed: {st}");
            cycle_us = ((3 * cycle_us + t.elapsed().as_micros() as u64) / 4).max(1000);
        }
        // Occasionally two readers at once: one waits or skips, neither corrupts.
        if attempts % 97 == 7 {
            let a = collect_cmd().spawn().unwrap();
            let b = collect_cmd().spawn().unwrap();
            for mut c in [a, b] {
                assert!(c.wait().unwrap().success());
            }
        }
        let p = env.out_dir().join("longconn.prom");
        if p.exists() {
            if attempts % 100 == 0 {
                prom::promtool_check(&p);
            }
            let now = prom::parse(&std::fs::read_to_string(&p).unwrap());
            if let Some(pr) = &prev {
                assert_monotonic(pr, &now, attempts as usize);
            }
            prev = Some(now);
        }
    }
    let kill_time = started.elapsed();
    // Poll (not sleep) until a clean run has every close.
    let deadline = Instant::now() + Duration::from_secs(20);
    let last = loop {
        let last = run_collect(&env, &args);
        let closed = prom::value(
            &last,
            "longconn_workload_connections_closed_total",
            &[("workload", &wl), ("direction", "inbound")],
        );
        if closed == Some(churned as f64) || Instant::now() > deadline {
            break last;
        }
        sleep(Duration::from_millis(100));
    };
    let g = |name: &str, dir: &str| {
        prom::value(&last, name, &[("workload", &wl), ("direction", dir)])
            .unwrap_or_else(|| panic!("{name} {dir}"))
    };
    for dir in ["outbound", "inbound"] {
        assert_eq!(
            g("longconn_workload_connections_opened_total", dir),
            churned as f64,
            "{dir} opened"
        );
        assert_eq!(
            g("longconn_workload_connections_closed_total", dir),
            churned as f64,
            "{dir} closed"
        );
    }
    assert_eq!(
        g("longconn_workload_sent_bytes_total", "outbound"),
        (churned * 1002) as f64
    );
    assert_eq!(
        g("longconn_workload_received_bytes_total", "inbound"),
        (churned * 1001) as f64
    );
    // Every log, every rotated file: each close exactly once, no gap, no
    // torn line, the same closes in each format, with the generator's bytes.
    let (closes, files) = closes_in_every_log(&env.out_dir(), &wl);
    logs::schema_check("logs", &logs::files(&env.out_dir(), "otlp-logs.jsonl"));
    assert_eq!(
        closes.len() as u64,
        2 * churned,
        "every close in every log (both ends of {churned} connections)"
    );
    for (cookie, r) in &closes {
        let want = if r["direction"] == "outbound" {
            ("1002", "1001")
        } else {
            ("1001", "1001")
        };
        assert_eq!(
            (r["bytes_sent"].as_str(), r["bytes_received"].as_str()),
            want,
            "close of cookie {cookie}: generator wrote 1000 bytes each way"
        );
    }
    eprintln!(
        "sigkill: {killed} of {attempts} collect runs killed after exec ({missed_exec} kills before exec seen, not counted) within a {cycle_us} us cycle in {kill_time:?}; {churned} connections reconciled; files per format (csv, jsonl, otlp logs) {files:?}"
    );
    assert!(
        files.iter().all(|&n| n >= 20),
        "too little rotation during the kills: files per format (csv, jsonl, otlp logs) {files:?}"
    );
}

#[test]
fn rotation_during_heavy_logging_keeps_every_record_once() {
    if !privileged_or_skip("rotation_during_heavy_logging_keeps_every_record_once") {
        return;
    }
    let mut env = TestEnv::new("rotate");
    env.all_outputs();
    env.pin(&[]);
    let mut gen = Traffic::start_in(&mut env);
    let wl = env.workload();
    let mut churned = 0;
    for _ in 0..6 {
        gen.cmd("churn 40");
        churned += 40;
        run_collect(&env, &["--log-max-bytes", "8KiB", "--log-keep", "1000"]);
    }
    let files = std::fs::read_dir(env.out_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("access.csv."))
        .count();
    assert!(
        files >= 5,
        "expected a rotation per cycle, got {files} rotated files"
    );
    for name in ["access.csv", "access.jsonl"] {
        let recs: Vec<HashMap<String, String>> = if name.ends_with("csv") {
            access_records(&env.out_dir(), name)
        } else {
            let mut v = Vec::new();
            for e in std::fs::read_dir(env.out_dir()).unwrap().flatten() {
                if e.file_name().to_string_lossy().starts_with(name) {
                    for line in std::fs::read_to_string(e.path()).unwrap().lines() {
                        let j: serde_json::Value = serde_json::from_str(line).unwrap();
                        v.push(
                            j.as_object()
                                .unwrap()
                                .iter()
                                .map(|(k, v)| {
                                    (k.clone(), v.to_string().trim_matches('"').to_owned())
                                })
                                .collect(),
                        );
                    }
                }
            }
            v
        };
        let mut seen: BTreeMap<(String, String), u32> = BTreeMap::new();
        for r in recs.iter().filter(|r| r["workload"] == wl) {
            *seen
                .entry((r["cookie"].clone(), r["seq"].clone()))
                .or_default() += 1;
        }
        assert_eq!(
            seen.len(),
            2 * churned,
            "{name}: one close record per socket across rotated files"
        );
        assert!(
            seen.values().all(|&n| n == 1),
            "{name}: a record appears twice"
        );
    }
}

#[test]
fn systemd_units_verify() {
    let dir = tempfile::tempdir().unwrap();
    let bins = longconn_tests::env::bin_dir();
    let mut paths = Vec::new();
    for unit in [
        "longconn-pin.service",
        "longconn-reader.service",
        "longconn-reader.timer",
    ] {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../packaging/systemd")
                .join(unit),
        )
        .unwrap();
        let text = text
            .replace("/usr/local/sbin/", &format!("{}/", bins.display()))
            .replace("/usr/local/bin/", &format!("{}/", bins.display()));
        let p = dir.path().join(unit);
        std::fs::write(&p, text).unwrap();
        paths.push(p);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .expect("systemd-analyze");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let problems: Vec<&str> = said.lines().filter(|l| l.contains("longconn")).collect();
    assert!(
        out.status.success() && problems.is_empty(),
        "systemd-analyze verify: {said}"
    );
}
