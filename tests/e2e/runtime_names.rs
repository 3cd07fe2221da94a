//! Issue 17 item 1: workloads named from the node's own runtime state —
//! a real podman container, a real containerd (1.6, runc) container with
//! the CRI plugin's annotations in kubelet-shaped cgroups (systemd and
//! cgroupfs drivers), and CRI-O and kubelet-log file trees of the real
//! layout with real cgroups of the matching shape. Each name reaches
//! `dump` (table and JSON), `.prom`, both access logs and OTLP.

use std::{
    collections::HashMap,
    fs,
    io::Read,
    net::TcpListener,
    path::{Path, PathBuf},
    thread::sleep,
    time::{Duration, Instant},
};

use longconn_tests::{
    containers::{self, Containerd, Podman},
    env::privileged_or_skip,
    logs,
    netns::Netns,
    prom,
    traffic::Traffic,
    TestEnv,
};

/// What a workload must be called everywhere.
#[derive(Debug)]
struct Want<'a> {
    workload: &'a str,
    namespace: &'a str,
    pod: &'a str,
    container: &'a str,
    pod_uid: &'a str,
    container_id: &'a str,
}

impl Want<'_> {
    /// The names every output must carry, by their key.
    fn names(&self) -> [(&'static str, &str); 5] {
        [
            ("namespace", self.namespace),
            ("pod", self.pod),
            ("container", self.container),
            ("pod_uid", self.pod_uid),
            ("container_id", self.container_id),
        ]
    }
}

const LABELS: &str = "workload,namespace,pod,container";

fn runtime_root(root: &Path) -> [String; 2] {
    ["--runtime-root".into(), root.display().to_string()]
}

/// One collect with every output and the name labels; asserts success.
fn collect(env: &TestEnv, root: &Path) -> prom::Series {
    let rr = runtime_root(root);
    let mut args = vec![
        "--long-threshold",
        "1s",
        "--idle-record-interval",
        "5s",
        "--workload-labels",
        LABELS,
    ];
    args.extend(rr.iter().map(String::as_str));
    let (st, err) = env.collect(&args);
    assert!(st.success(), "collect failed: {err}");
    let p = env.out_dir().join("longconn.prom");
    prom::promtool_check(&p);
    prom::parse(&fs::read_to_string(p).unwrap())
}

/// `want` is how `dump` (JSON and table), `.prom`, the access logs (CSV,
/// JSON Lines) and OTLP logs name at least one connection, and every
/// record of that workload carries the same names.
fn assert_named(env: &TestEnv, root: &Path, series: &prom::Series, want: &Want<'_>) {
    let rr = runtime_root(root);
    let rr: Vec<&str> = rr.iter().map(String::as_str).collect();
    // dump --json
    let dump = env.dump_json(&rr);
    let mine: Vec<_> = dump
        .iter()
        .filter(|c| c["workload"] == want.workload)
        .collect();
    assert!(!mine.is_empty(), "dump --json has no {want:?}: {dump:#?}");
    for c in &mine {
        for (k, v) in want.names() {
            assert_eq!(c[k].as_str().unwrap_or(""), v, "dump --json {k} of {c}");
        }
    }
    // dump table: the workload and container columns.
    let mut args = vec!["dump", "--workload", want.workload];
    args.extend(&rr);
    let table = env.reader(&args);
    assert!(
        table.lines().skip(1).any(|l| l.contains(want.workload)
            && (want.container.is_empty() || l.contains(want.container))),
        "dump table lacks {want:?}:\n{table}"
    );
    // .prom: the group families carry the names as labels.
    let active = prom::value(
        series,
        "longconn_workload_active_connections",
        &[
            ("workload", want.workload),
            ("namespace", want.namespace),
            ("pod", want.pod),
            ("container", want.container),
        ],
    );
    assert!(
        active.is_some_and(|v| v >= 1.0),
        "no .prom series for {want:?}"
    );
    // Access logs: CSV, JSON Lines, OTLP logs.
    let out = env.out_dir();
    for (what, recs) in logs::every_format(&out) {
        let mine: Vec<&HashMap<String, String>> = recs
            .iter()
            .filter(|r| r.get("workload").map(String::as_str) == Some(want.workload))
            .collect();
        assert!(!mine.is_empty(), "{what}: no record of {want:?}");
        for r in mine {
            for (k, v) in want.names() {
                // Compact forms leave empty names out.
                let got = r.get(k).map(String::as_str).unwrap_or("");
                assert_eq!(got, v, "{what}: {k} of {r:?}");
            }
        }
    }
}

/// A 64-hex container id unique to this test run.
fn container_id(n: u32) -> String {
    let seed = format!("{:08x}{:08x}", std::process::id(), n);
    seed.repeat(4)
}

fn pod_uid(n: u32) -> String {
    format!(
        "6c3b0e6e-2c47-4a5e-9a4f-{:04x}{:08x}",
        n,
        std::process::id()
    )
}

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

/// A cgroup below the test's, made with its parents (removed with it).
fn cgroup(env: &TestEnv, rel: &str) -> PathBuf {
    let p = env.cgroup.join(rel);
    fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
    p
}

#[test]
fn crio_kubelet_log_and_systemd_layouts_are_named_once() {
    if !privileged_or_skip("crio_kubelet_log_and_systemd_layouts_are_named_once") {
        return;
    }
    let mut env = TestEnv::new("rtfiles");
    env.all_outputs();
    let root = env.path("node");
    let (id1, id2, id3) = (container_id(1), container_id(2), container_id(3));
    let (uid1, uid2, uid3) = (pod_uid(1), pod_uid(2), pod_uid(3));
    // CRI-O, systemd driver; its spec in /run's containers storage.
    let cg1 = cgroup(
        &env,
        &format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/crio-{id1}.scope",
            uid1.replace('-', "_")
        ),
    );
    // CRI-O, cgroupfs driver; its spec in /var/lib's containers storage.
    let cg2 = cgroup(&env, &format!("kubepods/besteffort/pod{uid2}/crio-{id2}"));
    // Any runtime (containerd's cgroupfs shape), named by kubelet's log link only.
    let cg3 = cgroup(&env, &format!("kubepods/burstable/pod{uid3}/{id3}"));
    // A systemd service.
    let cg4 = cgroup(&env, "system.slice/web.service");
    let crio = |pod: &str, ns: &str, uid: &str, ctr: &str| {
        format!(
            r#"{{"ociVersion":"1.0.2-dev","process":{{"args":["/app"]}},"annotations":{{"io.container.manager":"cri-o","io.kubernetes.container.name":"{ctr}","io.kubernetes.cri-o.ContainerName":"k8s_{ctr}_{pod}_{ns}_{uid}_0","io.kubernetes.cri-o.ContainerType":"container","io.kubernetes.pod.name":"{pod}","io.kubernetes.pod.namespace":"{ns}","io.kubernetes.pod.uid":"{uid}"}}}}"#
        )
    };
    write(
        &root,
        &format!("run/containers/storage/overlay-containers/{id1}/userdata/config.json"),
        &crio("web-0", "shop", &uid1, "nginx"),
    );
    write(
        &root,
        &format!("var/lib/containers/storage/overlay-containers/{id2}/userdata/config.json"),
        &crio("db-0", "data", &uid2, "postgres"),
    );
    let logdir = root.join("var/log/containers");
    fs::create_dir_all(&logdir).unwrap();
    std::os::unix::fs::symlink(
        format!("/var/log/pods/batch_job-7_{uid3}/worker/0.log"),
        logdir.join(format!("job-7_batch_worker-{id3}.log")),
    )
    .unwrap();

    env.pin(&[]);
    let mut gens: Vec<Traffic> = [&cg1, &cg2, &cg3, &cg4]
        .iter()
        .map(|cg| Traffic::start_in_cgroup(&mut env, cg))
        .collect();
    for (i, g) in gens.iter_mut().enumerate() {
        g.cmd(&format!("pair p{i} 4"));
        g.cmd(&format!("send p{i} c2s 10000"));
    }
    sleep(Duration::from_millis(1200));
    let s = collect(&env, &root);
    let wants = [
        Want {
            workload: "shop/web-0",
            namespace: "shop",
            pod: "web-0",
            container: "nginx",
            pod_uid: &uid1,
            container_id: &id1,
        },
        Want {
            workload: "data/db-0",
            namespace: "data",
            pod: "db-0",
            container: "postgres",
            pod_uid: &uid2,
            container_id: &id2,
        },
        Want {
            workload: "batch/job-7",
            namespace: "batch",
            pod: "job-7",
            container: "worker",
            pod_uid: &uid3,
            container_id: &id3,
        },
        Want {
            workload: "web.service",
            namespace: "",
            pod: "",
            container: "",
            pod_uid: "",
            container_id: "",
        },
    ];
    for w in &wants {
        assert_named(&env, &root, &s, w);
    }

    // Resolved once: the state remembers the names; the runtime's files
    // are not read again (gone here), and a new connection of the same
    // cgroup is named as before.
    fs::remove_dir_all(&root).unwrap();
    gens[0].cmd("pair again 4");
    gens[0].cmd("send again c2s 1000");
    gens[0].cmd("close again");
    sleep(Duration::from_millis(200));
    let s = collect(&env, &PathBuf::from("/nonexistent"));
    assert!(
        prom::value(
            &s,
            "longconn_workload_connections_closed_total",
            &[
                ("workload", "shop/web-0"),
                ("namespace", "shop"),
                ("pod", "web-0"),
                ("container", "nginx"),
                ("direction", "outbound"),
            ],
        )
        .is_some_and(|v| v >= 1.0),
        "the close of a connection opened after the files went is not under the remembered name"
    );
}

/// Accepts connections on 0.0.0.0 and reads them to the end, on a thread
/// (the server outside the container).
fn sink_server() -> u16 {
    let l = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 4096];
                while s.read(&mut buf).is_ok_and(|n| n > 0) {}
            });
        }
    });
    port
}

/// Waits until `dump` shows a connection of `workload`.
fn wait_for(env: &TestEnv, root: &Path, workload: &str) {
    let rr = runtime_root(root);
    let rr: Vec<&str> = rr.iter().map(String::as_str).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if env.dump_json(&rr).iter().any(|c| c["workload"] == workload) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no connection of {workload} within 20 s: {:#?}",
            env.dump_json(&rr)
        );
        sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_podman_container_is_named_by_its_container_name() {
    if !privileged_or_skip("a_podman_container_is_named_by_its_container_name")
        || !containers::tool_or_skip(
            "a_podman_container_is_named_by_its_container_name",
            "podman",
        )
    {
        return;
    }
    let mut env = TestEnv::new("podman");
    env.all_outputs();
    env.pin(&[]);
    let port = sink_server();
    let name = format!("lc-test-{}-cache", std::process::id());
    let script = format!("while true; do echo hello; sleep 0.2; done | nc 10.88.0.1 {port}");
    let dir = env.path("podman");
    fs::create_dir_all(&dir).unwrap();
    let ctr = Podman::run(&dir, &env.cgroup, &name, &["sh", "-c", &script]);
    let id = ctr.id();
    // Podman's own state on this node (its containers storage).
    let root = PathBuf::from("/");
    wait_for(&env, &root, &name);
    sleep(Duration::from_millis(1200));
    let s = collect(&env, &root);
    assert_named(
        &env,
        &root,
        &s,
        &Want {
            workload: &name,
            namespace: "",
            pod: "",
            container: &name,
            pod_uid: "",
            container_id: &id,
        },
    );
    // Its own network namespace: the peer is the host's end of the bridge.
    let dump = env.dump_json(&[]);
    let c = dump
        .iter()
        .find(|c| c["workload"] == name.as_str())
        .unwrap();
    assert_eq!(c["remote_addr"], "10.88.0.1", "{c}");
    assert_eq!(c["direction"], "outbound", "{c}");
    drop(ctr);
}

#[test]
fn a_containerd_cri_container_is_named_namespace_pod_container() {
    let test = "a_containerd_cri_container_is_named_namespace_pod_container";
    if !privileged_or_skip(test)
        || !containers::tool_or_skip(test, "containerd")
        || !containers::tool_or_skip(test, "runc")
    {
        return;
    }
    let mut env = TestEnv::new("ctrd");
    env.all_outputs();
    env.pin(&[]);
    let root = env.path("node");
    let (ns_a, ns_b) = (Netns::new("ctrda"), Netns::new("ctrdb"));
    let mut ctrd = Containerd::start(&root);
    let (id_a, id_b) = (container_id(11), container_id(12));
    let (sandbox_a, sandbox_b) = (container_id(21), container_id(22));
    let (uid_a, uid_b) = (pod_uid(11), pod_uid(12));
    // The kubelet's cgroup of each driver (systemd's shape made by runc's
    // cgroupfs driver: systemd is not PID 1 here).
    let cg_a = env.cgroup.join(format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{id_a}.scope",
        uid_a.replace('-', "_")
    ));
    let cg_b = env
        .cgroup
        .join(format!("kubepods/besteffort/pod{uid_b}/{id_b}"));
    // The server's stdin is a pipe that stays open (a background job's
    // would be /dev/null, and busybox nc ends at its stdin's end).
    let script = "sleep 100000 | nc -l -p 9000 >/dev/null & sleep 0.3; while true; do echo x; sleep 0.2; done | nc 127.0.0.1 9000";
    // What containerd 1.6's CRI plugin puts on a container's spec
    // (DefaultCRIAnnotations: no sandbox-uid before 1.7; the uid is in
    // the cgroup path).
    for (id, sandbox, cg, ns, pod, ctr, netns) in [
        (&id_a, &sandbox_a, &cg_a, "shop", "web-0", "nginx", &ns_a),
        (&id_b, &sandbox_b, &cg_b, "batch", "job-1", "worker", &ns_b),
    ] {
        ctrd.run(
            id,
            cg,
            &[
                ("io.kubernetes.cri.container-type", "container"),
                ("io.kubernetes.cri.sandbox-id", sandbox),
                ("io.kubernetes.cri.sandbox-namespace", ns),
                ("io.kubernetes.cri.sandbox-name", pod),
                ("io.kubernetes.cri.container-name", ctr),
                ("io.kubernetes.cri.image-name", "localhost/busybox:test"),
            ],
            &netns.path(),
            &["sh", "-c", script],
        );
        assert!(ctrd.bundle(id).join("config.json").is_file());
    }
    wait_for(&env, &root, "shop/web-0");
    wait_for(&env, &root, "batch/job-1");
    sleep(Duration::from_millis(1200));
    let s = collect(&env, &root);
    for w in [
        Want {
            workload: "shop/web-0",
            namespace: "shop",
            pod: "web-0",
            container: "nginx",
            pod_uid: &uid_a,
            container_id: &id_a,
        },
        Want {
            workload: "batch/job-1",
            namespace: "batch",
            pod: "job-1",
            container: "worker",
            pod_uid: &uid_b,
            container_id: &id_b,
        },
    ] {
        assert_named(&env, &root, &s, &w);
    }
    drop(ctrd);
}
