//! Issue 18: churning workloads. Cgroups that live less than a cycle are
//! named by their path (captured by the kernel when they were made), and
//! series of workloads gone for `--series-ttl` leave the outputs and the
//! state, which return to their baseline size.

use std::{
    collections::BTreeMap,
    fs,
    io::Read,
    net::TcpListener,
    path::Path,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{sleep, JoinHandle},
    time::{Duration, Instant},
};

use longconn_tests::{env::privileged_or_skip, logs, prom, TestEnv};

/// A loopback server outside the tracked cgroups that reads every
/// connection to its end: only the clients' outbound side is tracked.
struct Sink {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        c.set_nonblocking(false).unwrap();
                        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        let mut buf = Vec::new();
                        let _ = c.read_to_end(&mut buf);
                    }
                    Err(_) => sleep(Duration::from_millis(1)),
                }
            }
        });
        Self {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Makes cgroup `cg`, runs one short client in it (one connection to
/// `port`, `bytes` sent, closed), waits for it and removes the cgroup:
/// the whole life of a Job's pod, well under a second.
fn one_shot_cgroup(env: &mut TestEnv, cg: &Path, port: u16, bytes: usize) {
    let t0 = Instant::now();
    fs::create_dir(cg).unwrap_or_else(|e| panic!("mkdir {}: {e}", cg.display()));
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!(
            "exec 3<>/dev/tcp/127.0.0.1/{port} && head -c {bytes} /dev/zero >&3 && exec 3>&-"
        ))
        .stderr(Stdio::null());
    env.spawn_in(cg, cmd);
    let mut child = env.take_child();
    let st = child.wait().unwrap();
    assert!(st.success(), "client in {} failed", cg.display());
    let deadline = Instant::now() + Duration::from_secs(5);
    while fs::remove_dir(cg).is_err() {
        assert!(Instant::now() < deadline, "cannot remove {}", cg.display());
        sleep(Duration::from_millis(5));
    }
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "{} lived {:?}",
        cg.display(),
        t0.elapsed()
    );
}

fn collect_ok(env: &TestEnv, extra: &[&str]) -> prom::Series {
    let (st, err) = env.collect(extra);
    assert!(st.success(), "collect failed: {err}");
    let p = env.out_dir().join("longconn.prom");
    prom::promtool_check(&p);
    prom::parse(&fs::read_to_string(p).unwrap())
}

/// Every workload label value of the workload families.
fn workloads(s: &prom::Series) -> Vec<String> {
    let mut w: Vec<String> = s
        .keys()
        .filter(|(n, _)| n.starts_with("longconn_workload_"))
        .filter_map(|(_, l)| l.get("workload").cloned())
        .collect();
    w.sort();
    w.dedup();
    w
}

/// A fake node's kubelet pod log directory for pod `uid` (runtime state gone).
fn kubelet_pod_dir(root: &Path, ns: &str, pod: &str, uid: &str) {
    fs::create_dir_all(root.join("var/log/pods").join(format!("{ns}_{pod}_{uid}"))).unwrap();
}

#[test]
fn cgroups_gone_before_the_next_collect_are_named_by_their_path() {
    if !privileged_or_skip("cgroups_gone_before_the_next_collect_are_named_by_their_path") {
        return;
    }
    let mut env = TestEnv::new("churnnames");
    let sink = Sink::start();
    env.pin(&[]);
    // Pods whose runtime state is gone: named from the kubelet's pod log
    // directory, found by the pod uid in the cgroup path.
    let root = env.path("node");
    let pods = 10;
    let uid = |i: usize| format!("0f9a7c1e-1b2c-4d5e-8f90-{i:012}");
    for i in 0..pods {
        kubelet_pod_dir(&root, "batch", &format!("job-{i}"), &uid(i));
    }
    let runtime_root = root.to_string_lossy().into_owned();
    let extra = ["--runtime-root", runtime_root.as_str()];
    collect_ok(&env, &extra);

    let n = 200;
    let mut want: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..n {
        let (dir, name) = if i < pods {
            let d = format!("kubepods-besteffort-pod{}.slice", uid(i).replace('-', "_"));
            (d, format!("batch/job-{i}"))
        } else {
            let d = format!("job-{i}");
            (d.clone(), format!("{}/{d}", env.workload()))
        };
        let cg = env.cgroup.join(&dir);
        one_shot_cgroup(&mut env, &cg, sink.port, 100 + i);
        want.insert(name, 100 + i);
    }
    sleep(Duration::from_millis(200));
    let s = collect_ok(&env, &extra);
    let got = workloads(&s);
    let unnamed: Vec<&String> = got.iter().filter(|w| w.starts_with("cgroup:")).collect();
    assert!(unnamed.is_empty(), "named by id: {unnamed:?}");
    for (wl, bytes) in &want {
        let v = |name: &str| {
            prom::value(&s, name, &[("workload", wl), ("direction", "outbound")])
                .unwrap_or_else(|| panic!("{name} of {wl} missing"))
        };
        assert_eq!(v("longconn_workload_connections_closed_total"), 1.0, "{wl}");
        // bytes_acked counts the SYN and the FIN.
        assert_eq!(
            v("longconn_workload_sent_bytes_total"),
            (*bytes + 2) as f64,
            "{wl}"
        );
    }
    // The access log names each close by its workload too.
    let recs = logs::csv(&logs::files(&env.out_dir(), "access.csv"));
    let logged: BTreeMap<String, usize> = recs.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r["workload"].clone()).or_default() += 1;
        m
    });
    for wl in want.keys() {
        assert_eq!(logged.get(wl), Some(&1), "access.csv rows of {wl}");
    }
    assert!(
        !logged.keys().any(|w| w.starts_with("cgroup:")),
        "{logged:?}"
    );
    let pod_rows: Vec<_> = recs
        .iter()
        .filter(|r| r["namespace"] == "batch")
        .map(|r| (r["pod"].clone(), r["pod_uid"].clone()))
        .collect();
    assert_eq!(pod_rows.len(), pods, "{pod_rows:?}");
    assert!(pod_rows
        .iter()
        .all(|(p, u)| p.starts_with("job-") && u.len() == 36));
    drop(sink);
}

/// Counter samples by (name, labels): (their series' start, value).
type Counted = BTreeMap<(String, BTreeMap<String, String>), (f64, f64)>;

/// Every counter sample of one exposition by (name, labels), with the start
/// of its series (`longconn_{workload,service}_start_time_seconds` of its
/// group labels).
fn counters_with_starts(s: &prom::Series) -> Counted {
    let start_of = |name: &str, labels: &BTreeMap<String, String>| {
        let family = if name.starts_with("longconn_workload_") {
            "longconn_workload_start_time_seconds"
        } else {
            "longconn_service_start_time_seconds"
        };
        s.get(&(family.to_owned(), labels.clone()))
            .copied()
            .unwrap_or_else(|| panic!("no {family} for {labels:?}"))
    };
    s.iter()
        .filter(|((n, _), _)| {
            (n.starts_with("longconn_workload_") || n.starts_with("longconn_service_"))
                && n.ends_with("_total")
        })
        .map(|((n, l), v)| ((n.clone(), l.clone()), (start_of(n, l), *v)))
        .collect()
}

/// No counter decreases within one start time: each sample against the
/// last one seen of its series (`seen`, updated).
fn never_decrease(seen: &mut Counted, now: Counted, what: &str) {
    for (k, (start, v)) in now {
        if let Some((s0, v0)) = seen.get(&k) {
            assert!(
                start >= *s0,
                "{what}: {k:?} start went back {s0} -> {start}"
            );
            if start == *s0 {
                assert!(
                    v >= *v0,
                    "{what}: {k:?} decreased {v0} -> {v} within one start"
                );
            }
        }
        seen.insert(k, (start, v));
    }
}

/// The same for the OTLP metrics: each counter point by (name, attributes),
/// with its startTimeUnixNano.
fn otlp_counters(out: &Path) -> Vec<Counted> {
    let text = fs::read_to_string(out.join("otlp-metrics.jsonl")).unwrap();
    text.lines()
        .map(|line| {
            let (series, starts) = super::otlp::otlp_series(line);
            series
                .into_iter()
                .filter(|((n, _), _)| {
                    (n.starts_with("longconn_workload_") || n.starts_with("longconn_service_"))
                        && n.ends_with("_total")
                })
                .map(|(k, v)| {
                    let start: f64 = starts[&k].parse().unwrap();
                    (k, (start, v))
                })
                .collect()
        })
        .collect()
}

fn sample_lines(env: &TestEnv) -> usize {
    let text = fs::read_to_string(env.out_dir().join("longconn.prom")).unwrap();
    text.lines().filter(|l| !l.starts_with('#')).count()
}

fn state_len(env: &TestEnv) -> u64 {
    fs::metadata(env.out_dir().join("state.bin")).unwrap().len()
}

#[test]
fn series_of_gone_workloads_retire_and_a_returning_one_starts_again() {
    if !privileged_or_skip("series_of_gone_workloads_retire_and_a_returning_one_starts_again") {
        return;
    }
    let mut env = TestEnv::new("churnttl");
    let sink = Sink::start();
    env.pin(&[]);
    let extra = ["--series-ttl", "2s", "--otlp", "metrics"];
    let mut seen = BTreeMap::new();
    let mut collect = |env: &TestEnv, what: &str| {
        let s = collect_ok(env, &extra);
        never_decrease(&mut seen, counters_with_starts(&s), what);
        s
    };
    collect(&env, "baseline");
    collect(&env, "baseline");
    let (base_lines, base_state) = (sample_lines(&env), state_len(&env));

    // 1000 workloads, each one cgroup living under a second with one
    // connection; collects in between (the first ones retire meanwhile).
    let n = 1000;
    let mut most = 0;
    let mut peak_state = 0;
    for i in 0..n {
        let cg = env.cgroup.join(format!("wl-{i}"));
        one_shot_cgroup(&mut env, &cg, sink.port, 10);
        if i % 200 == 199 {
            let s = collect(&env, "churn");
            most = most.max(workloads(&s).len());
            peak_state = peak_state.max(state_len(&env));
        }
    }
    assert!(most >= 200, "at most {most} workloads in one .prom");
    let wl7 = format!("{}/wl-{}", env.workload(), n - 1);
    let s = collect(&env, "after churn");
    let start_before = prom::value(
        &s,
        "longconn_workload_start_time_seconds",
        &[("workload", &wl7), ("direction", "outbound")],
    )
    .expect("the last workload's start");

    // Quiet: every series retires after the TTL, the state follows.
    sleep(Duration::from_millis(2500));
    let mut tries = 0;
    loop {
        collect(&env, "quiet");
        let (lines, st) = (sample_lines(&env), state_len(&env));
        if lines == base_lines && st <= base_state + 1024 {
            break;
        }
        tries += 1;
        assert!(
            tries < 8,
            "after the TTL: {lines} samples (baseline {base_lines}), state.bin {st} B (baseline {base_state}, peak {peak_state})"
        );
        sleep(Duration::from_millis(500));
    }
    eprintln!(
        "series: baseline {base_lines} samples, most {most} workloads in one .prom; state.bin: baseline {base_state} B, peak {peak_state} B, after the TTL {} B ({} quiet cycles)",
        state_len(&env),
        tries + 1
    );
    assert!(
        peak_state > base_state + 50_000,
        "peak state {peak_state} B"
    );

    // The last workload returns: from 0, with a new start.
    let cg = env.cgroup.join(format!("wl-{}", n - 1));
    one_shot_cgroup(&mut env, &cg, sink.port, 10);
    let s = collect(&env, "returned");
    let v = |name: &str| {
        prom::value(&s, name, &[("workload", &wl7), ("direction", "outbound")])
            .unwrap_or_else(|| panic!("{name} of {wl7}"))
    };
    assert_eq!(v("longconn_workload_connections_closed_total"), 1.0);
    assert_eq!(v("longconn_workload_sent_bytes_total"), 12.0);
    assert!(
        v("longconn_workload_start_time_seconds") > start_before,
        "a new start time"
    );

    // The OTLP metrics tell the same: a new start for the returning series,
    // never a decrease within one start.
    let mut otlp_seen = BTreeMap::new();
    let lines = otlp_counters(&env.out_dir());
    for (i, line) in lines.iter().enumerate() {
        never_decrease(&mut otlp_seen, line.clone(), &format!("otlp line {i}"));
    }
    let key = (
        "longconn_workload_connections_closed_total".to_owned(),
        BTreeMap::from([
            ("workload".to_owned(), wl7.clone()),
            ("direction".to_owned(), "outbound".to_owned()),
        ]),
    );
    let starts: Vec<f64> = lines
        .iter()
        .filter_map(|l| l.get(&key))
        .map(|p| p.0)
        .collect();
    assert!(starts.len() >= 2, "{starts:?}");
    assert!(
        starts.last() > starts.first(),
        "OTLP start times {starts:?}"
    );
    drop(sink);
}
