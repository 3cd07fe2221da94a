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
    let child = env.spawn_in(cg, cmd);
    let st = child.wait().unwrap();
    assert!(st.success(), "client in {} failed", cg.display());
    let _ = env.take_child();
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
