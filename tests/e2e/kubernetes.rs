//! Issue 17 (item 3): `packaging/kubernetes`. The manifests validate against
//! the official Kubernetes schema (PyPI kubernetes-validate, in the clone's
//! `.venv-k8s`, set up by scripts/test); the image builds from the
//! Containerfile with podman from the release binaries and no base image,
//! and its reader collects real traffic with only the capabilities the
//! DaemonSet grants it.

use std::{
    path::{Path, PathBuf},
    process::Command,
    thread::sleep,
    time::Duration,
};

use longconn_tests::{
    containers::{relative_cgroup, tool_or_skip, v1_trees},
    env::{bin_dir, cgroup2_root, privileged_or_skip},
    netns::Netns,
    prom,
    traffic::Traffic,
    TestEnv,
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn output(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?}: {said}");
    said
}

#[test]
fn kubernetes_manifests_validate_against_the_official_schema() {
    let python = std::env::var_os("LONGCONN_K8S_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv-k8s/bin/python"));
    if !python.exists() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "{}: missing and CI=true forbids skipping (scripts/test makes .venv-k8s)",
            python.display()
        );
        eprintln!("SKIP kubernetes_manifests_validate_against_the_official_schema: no {} (scripts/test makes it)", python.display());
        return;
    }
    let said = output(
        Command::new(&python)
            .arg(repo().join("tests/k8s_check.py"))
            .arg(repo().join("packaging/kubernetes")),
    );
    for want in [
        "daemonset.yaml: DaemonSet/longconn",
        "node-exporter-sidecar.yaml: DaemonSet/node-exporter-longconn",
        "peer-map-cronjob.yaml: CronJob/longconn-peer-map",
        "peer-map-cronjob.yaml: ClusterRole/longconn-peer-map",
        "helm/node-exporter-values.yaml: DaemonSet/prometheus-node-exporter",
    ] {
        assert!(
            said.contains(&format!("ok {want}")),
            "{want} not validated:\n{said}"
        );
    }
}

/// The capabilities the DaemonSet's reader container is given.
fn reader_capabilities() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("packaging/kubernetes/daemonset.yaml")).unwrap();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("add: ["))
        .expect("daemonset.yaml: capabilities add: [...]");
    let list = line
        .trim()
        .trim_start_matches("add: [")
        .trim_end_matches(']');
    list.split(',').map(|c| c.trim().to_owned()).collect()
}

/// A podman image of this test only, removed on drop.
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rmi", "-f", &self.0]).output();
    }
}

#[test]
fn image_builds_from_scratch_and_its_reader_collects_with_the_daemonset_capabilities() {
    let test = "image_builds_from_scratch_and_its_reader_collects_with_the_daemonset_capabilities";
    if !privileged_or_skip(test) || !tool_or_skip(test, "podman") {
        return;
    }
    let mut env = TestEnv::new("k8simage");
    let image = Image(format!(
        "localhost/longconn-test-{}:e2e",
        std::process::id()
    ));
    output(
        Command::new(repo().join("packaging/kubernetes/build-image"))
            .arg("--tag")
            .arg(&image.0)
            .arg("--bin-dir")
            .arg(bin_dir()),
    );
    // No base image: the image is the one layer the Containerfile adds.
    let layers = output(Command::new("podman").args([
        "image",
        "inspect",
        "-f",
        "{{len .RootFS.Layers}}",
        &image.0,
    ]));
    assert_eq!(layers.trim(), "1", "layers of {}", image.0);

    env.pin(&[]);
    let mut gen = Traffic::start_in(&mut env);
    gen.cmd("pair long 4");
    gen.cmd("send long c2s 30000");
    // A connection in a network namespace of its own, like a pod's: the
    // refresh reaches it only through a netnsid the reader assigns
    // (CAP_NET_ADMIN) from /proc/PID/ns/net (hostPID).
    let ns = Netns::new("k8simg");
    let mut pod = ns.traffic(&mut env);
    pod.cmd("pair long 4");
    pod.cmd("send long c2s 50000");
    sleep(Duration::from_millis(200));
    let data = env.dir.path().join("k8s");
    std::fs::create_dir(&data).unwrap();
    let caps = reader_capabilities();
    assert_eq!(
        caps,
        ["BPF", "NET_ADMIN", "SYS_PTRACE"],
        "update this test and the README with the manifest"
    );
    let pin = env.pin_dir.display().to_string();
    // The container's cgroup below the test's (v1 mirrors removed on drop).
    let rel = relative_cgroup(&env.cgroup);
    let _v1 = v1_trees(&rel);
    let reader = |caps: &[String]| {
        let mut run = Command::new("podman");
        run.args(["run", "--rm", "--pid=host", "--network=host"])
            .arg(format!("--cgroup-parent={rel}"))
            .args(["--read-only", "--security-opt=no-new-privileges"])
            .arg("--security-opt=seccomp=unconfined")
            .args([
                "--ulimit",
                "nofile=4096:4096",
                "--ulimit",
                "nproc=4096:4096",
            ])
            .args(["--user", "0:65534", "--cap-drop=all"])
            .arg(format!("--cap-add={}", caps.join(",")))
            .arg("--volume=/sys/fs/bpf:/sys/fs/bpf")
            .arg(format!(
                "--volume={}:/sys/fs/cgroup:ro",
                cgroup2_root().display()
            ))
            .arg(format!("--volume={}:/data", data.display()))
            .arg(&image.0)
            .args(["/usr/bin/longconn-reader", "--pin-dir", &pin, "collect"])
            .args(["--textfile-dir=/data/textfile", "--state-dir=/data/state"])
            .args(["--log-dir=/data/log", "--group=65534"])
            .args(["--workload-labels=workload,namespace,pod,container"]);
        let said = output(&mut run);
        let prom_path = data.join("textfile/longconn.prom");
        prom::promtool_check(&prom_path);
        let series = prom::parse(&std::fs::read_to_string(&prom_path).unwrap());
        (series, said)
    };
    let unreachable = |series: &prom::Series, reason: &str| {
        prom::value(
            series,
            "longconn_refresh_unreachable_connections",
            &[("reason", reason)],
        )
    };
    // Each of NET_ADMIN and SYS_PTRACE is needed: without either, the
    // pod-like namespace's connection cannot be refreshed.
    for missing in ["NET_ADMIN", "SYS_PTRACE"] {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let (series, said) = reader(&fewer);
        assert!(
            unreachable(&series, "netns_unreachable").is_some_and(|n| n >= 1.0),
            "without {missing} the reader still reached the namespace: {said}"
        );
    }
    let (series, said) = reader(&caps);
    let sent = prom::value(
        &series,
        "longconn_workload_sent_bytes_total",
        &[("workload", &env.workload()), ("direction", "outbound")],
    );
    assert!(
        sent.is_some_and(|b| b >= 80_000.0),
        "the containerised reader saw {sent:?} bytes of {}: {said}",
        env.workload()
    );
    for reason in ["socket_not_found", "netns_unreachable"] {
        assert_eq!(unreachable(&series, reason), Some(0.0), "{reason}: {said}");
    }
    let prom_path = data.join("textfile/longconn.prom");
    // node_exporter (gid 65534 in the chart) may read it: group 65534, 0640.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&prom_path).unwrap();
    assert_eq!((meta.gid(), meta.mode() & 0o777), (65534, 0o640));
    gen.cmd("close long");
    pod.cmd("close long");
}
