//! Issue 17 item 2: peers named like kmesh's destination workload and
//! service, with no daemon. The real `services-from-kubectl` turns recorded
//! kubectl documents (tests/data/kubectl, sources in its README) into the
//! `--services` map; real connections to a ClusterIP:port and to a pod IP of
//! those documents (addresses put on the loopback of a network namespace of
//! the test's own) are then named namespace/service and namespace/pod in
//! `dump`, `.prom` and every access log. A same-node pod is named from a
//! libcni result cache file (the shape of tests/data/cni's real one) and the
//! runtime state of its sandbox.

use std::{
    collections::HashMap,
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::Stdio,
    thread::sleep,
    time::Duration,
};

use longconn_tests::{env::privileged_or_skip, logs, netns::Netns, prom, TestEnv};

/// The recorded documents, fed to the converter one after another.
const RECORDED: &[&str] = &[
    "pods.json",
    "service-clusterip.json",
    "service-headless.json",
    "endpointslices.json",
];

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data").join(rel)
}

/// `longconn-reader services-from-kubectl` on `input`: (status, stdout, stderr).
fn convert(env: &TestEnv, input: &[u8]) -> (std::process::ExitStatus, String, String) {
    let mut child = env
        .reader_cmd()
        .arg("services-from-kubectl")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run services-from-kubectl");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// A peer every output must name: the server's address and port, and the
/// service and namespace it must carry on both ends.
struct Peer {
    addr: &'static str,
    port: u16,
    service: String,
    namespace: &'static str,
}

/// `dump --json`, `.prom` and the three access logs (after the pairs
/// closed) name each peer, outbound and inbound.
fn assert_peers_named(env: &TestEnv, dump_args: &[&str], series: &prom::Series, peers: &[Peer]) {
    let dump = env.dump_json(dump_args);
    for p in peers {
        for (dir, addr_key, port_key) in [
            ("outbound", "remote_addr", "remote_port"),
            ("inbound", "local_addr", "local_port"),
        ] {
            let c = dump
                .iter()
                .find(|c| c["direction"] == dir && c[addr_key] == p.addr && c[port_key] == p.port)
                .unwrap_or_else(|| {
                    panic!("dump --json: no {dir} {}:{}: {dump:#?}", p.addr, p.port)
                });
            assert_eq!(c["service"], p.service.as_str(), "dump service of {c}");
            assert_eq!(c["service_namespace"], p.namespace, "dump namespace of {c}");
            let mut labels = vec![("service", p.service.as_str()), ("direction", dir)];
            if !p.namespace.is_empty() {
                labels.push(("service_namespace", p.namespace));
            }
            assert_eq!(
                prom::value(series, "longconn_service_active_connections", &labels),
                Some(1.0),
                ".prom: {}/{} {dir}",
                p.namespace,
                p.service
            );
        }
    }
}

/// Every close record of each peer's connections names it, in each format.
fn assert_logs_named(env: &TestEnv, peers: &[Peer]) {
    let out = env.out_dir();
    for (what, recs) in logs::every_format(&out) {
        for p in peers {
            let port = p.port.to_string();
            // CSV and JSON Lines say local_address, logs::otlp_logs local_addr.
            let get = |r: &HashMap<String, String>, k: &str| {
                r.get(k)
                    .or_else(|| r.get(&k.replace("_address", "_addr")))
                    .cloned()
                    .unwrap_or_default()
            };
            let closes: Vec<_> = recs
                .iter()
                .filter(|r| {
                    get(r, "event") == "close"
                        && ((get(r, "remote_address") == p.addr && get(r, "remote_port") == port)
                            || (get(r, "local_address") == p.addr && get(r, "local_port") == port))
                })
                .collect();
            assert_eq!(
                closes.len(),
                2,
                "{what}: close records of {}:{port}",
                p.addr
            );
            for r in closes {
                assert_eq!(get(r, "service"), p.service, "{what}: {r:?}");
                assert_eq!(get(r, "service_namespace"), p.namespace, "{what}: {r:?}");
            }
        }
    }
}

/// Collect with `extra`; asserts success and returns `.prom`.
fn collect(env: &TestEnv, extra: &[&str]) -> prom::Series {
    let mut args = vec!["--service-labels", "service,service_namespace"];
    args.extend_from_slice(extra);
    let (st, err) = env.collect(&args);
    assert!(st.success(), "collect failed: {err}");
    let p = env.out_dir().join("longconn.prom");
    prom::promtool_check(&p);
    prom::parse(&fs::read_to_string(p).unwrap())
}

#[test]
fn a_peer_pod_and_a_clusterip_service_are_named_from_a_recorded_kubectl_document() {
    if !privileged_or_skip(
        "a_peer_pod_and_a_clusterip_service_are_named_from_a_recorded_kubectl_document",
    ) {
        return;
    }
    let mut env = TestEnv::new("peers");
    env.all_outputs();
    // The real binary, the recorded documents: exactly the golden map.
    let input: Vec<u8> = RECORDED
        .iter()
        .flat_map(|f| fs::read(data(&format!("kubectl/{f}"))).unwrap())
        .collect();
    let (st, map, err) = convert(&env, &input);
    assert!(st.success(), "services-from-kubectl: {err}");
    assert_eq!(
        map,
        fs::read_to_string(data("kubectl/services.csv")).unwrap(),
        "services-from-kubectl output"
    );
    assert_eq!(err.lines().count(), 1, "one summary line: {err}");
    assert!(
        err.contains("2 pods, 2 services, 2 endpointslices")
            && err.contains("1 services without a ClusterIP"),
        "{err}"
    );
    let map_path = env.path("services.csv");
    fs::write(&map_path, &map).unwrap();
    let map_s = map_path.to_str().unwrap();

    // The ClusterIP, a pod IP and an endpoint of the documents, as local
    // addresses of a namespace of the test's own; real connections to them.
    let ns = Netns::new("peers");
    for ip in ["10.47.248.116", "10.244.0.5", "10.244.0.3"] {
        ns.run(&["ip", "addr", "add", &format!("{ip}/32"), "dev", "lo"]);
    }
    env.pin(&[]);
    let mut g = ns.traffic(&mut env);
    let mut pair = |name: &str, addr: &str, port: Option<u16>| -> u16 {
        let port = port.map(|p| format!(" {p}")).unwrap_or_default();
        let v = g.cmd(&format!("pair {name} 4 {addr}{port}"));
        g.cmd(&format!("send {name} c2s 5000"));
        v["server_port"].as_u64().unwrap() as u16
    };
    let svc = pair("svc", "10.47.248.116", Some(4001));
    let pod = pair("pod", "10.244.0.5", None);
    let ep = pair("ep", "10.244.0.3", Some(9153));
    let other = pair("other", "10.244.0.3", None);
    let peers = [
        Peer {
            addr: "10.47.248.116",
            port: svc,
            service: "dictionary1".into(),
            namespace: "default",
        },
        Peer {
            addr: "10.244.0.5",
            port: pod,
            service: "t1".into(),
            namespace: "default",
        },
        Peer {
            addr: "10.244.0.3",
            port: ep,
            service: "kube-dns".into(),
            namespace: "kube-system",
        },
        // An endpoint's address on a port its service does not expose (and
        // no pod rule: that pod is not in the recorded pod list) stays
        // address:port.
        Peer {
            addr: "10.244.0.3",
            port: other,
            service: format!("10.244.0.3:{other}"),
            namespace: "",
        },
    ];
    let extra = ["--services", map_s, "--cni-results", "none"];
    let s = collect(&env, &extra);
    assert_peers_named(&env, &extra, &s, &peers);
    for name in ["svc", "pod", "ep", "other"] {
        g.cmd(&format!("close {name}"));
    }
    sleep(Duration::from_millis(300));
    collect(&env, &extra);
    assert_logs_named(&env, &peers);
}

#[test]
fn a_same_node_pod_is_named_from_its_cni_result() {
    if !privileged_or_skip("a_same_node_pod_is_named_from_its_cni_result") {
        return;
    }
    let mut env = TestEnv::new("cnipeer");
    env.all_outputs();
    // A pod sandbox as containerd's CRI plugin leaves it on the node, and
    // libcni's cache of its attachment: the recorded file with this
    // sandbox's id (and its 12-character alias) in place of the recorded one.
    let node = env.path("node");
    let recorded_id = "98b8b5f8cf502ba102679325faeee30d378636147e72477c8b30e86f649b480b";
    let id = format!("{:08x}", std::process::id()).repeat(8);
    let bundle = node
        .join("run/containerd/io.containerd.runtime.v2.task/k8s.io")
        .join(&id);
    fs::create_dir_all(&bundle).unwrap();
    fs::write(
        bundle.join("config.json"),
        format!(r#"{{"ociVersion":"1.0.2-dev","process":{{"args":["/pause"]}},"annotations":{{"io.kubernetes.cri.container-type":"sandbox","io.kubernetes.cri.sandbox-id":"{id}","io.kubernetes.cri.sandbox-log-directory":"/var/log/pods/shop_web-0_6c3b0e6e-2c47-4a5e-9a4f-0d2b6f3c1a77","io.kubernetes.cri.sandbox-name":"web-0","io.kubernetes.cri.sandbox-namespace":"shop"}}}}"#),
    )
    .unwrap();
    let results = node.join("var/lib/cni/results");
    fs::create_dir_all(&results).unwrap();
    let recorded = fs::read_to_string(data(&format!("cni/podman-{recorded_id}-eth0"))).unwrap();
    let cached = recorded
        .replace(recorded_id, &id)
        .replace(&recorded_id[..12], &id[..12]);
    fs::write(results.join(format!("podman-{id}-eth0")), cached).unwrap();
    // The recorded address, on the loopback of a namespace of the test's own.
    let ns = Netns::new("cnipeer");
    ns.run(&["ip", "addr", "add", "10.88.0.13/32", "dev", "lo"]);
    env.pin(&[]);
    let mut g = ns.traffic(&mut env);
    let a = g.cmd("pair a 4 10.88.0.13")["server_port"]
        .as_u64()
        .unwrap() as u16;
    let b = g.cmd("pair b 4 10.88.0.13 4001")["server_port"]
        .as_u64()
        .unwrap() as u16;
    for name in ["a", "b"] {
        g.cmd(&format!("send {name} c2s 3000"));
    }
    // A --services line for one port of that address: the file wins there.
    let map = env.path("services.csv");
    fs::write(&map, "10.88.0.13,4001,front,shop\n").unwrap();
    let root = node.to_str().unwrap();
    let extra = ["--runtime-root", root, "--services", map.to_str().unwrap()];
    let peers = [
        Peer {
            addr: "10.88.0.13",
            port: a,
            service: "web-0".into(),
            namespace: "shop",
        },
        Peer {
            addr: "10.88.0.13",
            port: b,
            service: "front".into(),
            namespace: "shop",
        },
    ];
    // Once the results directory is 2 s old, a scan is kept in the state.
    sleep(Duration::from_millis(2100));
    let s = collect(&env, &extra);
    assert!(
        env.out_dir().join("cni-peers.json").is_file(),
        "scan not kept"
    );
    assert_peers_named(&env, &extra, &s, &peers);
    // Off: the address is an address again.
    let off = env.dump_json(&["--runtime-root", root, "--cni-results", "none"]);
    assert!(
        off.iter()
            .any(|c| c["remote_addr"] == "10.88.0.13" && c["service"] == format!("10.88.0.13:{a}")),
        "--cni-results none: {off:#?}"
    );
    g.cmd("close a");
    g.cmd("close b");
    sleep(Duration::from_millis(300));
    collect(&env, &extra);
    assert_logs_named(&env, &peers);
}

/// The CronJob's own script (peer-map-cronjob.yaml), run by a POSIX shell
/// with the real reader and a stand-in `kubectl` that prints the recorded
/// documents and records what it is asked to apply: the ConfigMap gets
/// exactly the golden map; when kubectl's output is not JSON the script
/// fails before applying anything (the last ConfigMap stays).
#[test]
fn the_cronjob_script_turns_kubectl_output_into_the_configmap() {
    let yaml = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/kubernetes/peer-map-cronjob.yaml"),
    )
    .unwrap();
    // The block scalar after `- |` in the peer-map container's command.
    let lines: Vec<&str> = yaml.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim() == "- |")
        .expect("peer-map-cronjob.yaml: command block `- |`");
    let indent = lines[at + 1].len() - lines[at + 1].trim_start().len();
    let script: String = lines[at + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent)
        .map(|l| format!("{}\n", l.get(indent..).unwrap_or("")))
        .collect();
    assert!(script.contains("services-from-kubectl"), "{script}");
    let t = tempfile::tempdir().unwrap();
    let (dir, bin) = (t.path(), t.path().join("bin"));
    fs::create_dir(&bin).unwrap();
    let reader = longconn_tests::env::bin("longconn-reader");
    // The script's /tmp/ first: the reader's own path may be under /tmp
    // (a checkout there) and must stay as it is.
    let script = script
        .replace("/tmp/", &format!("{}/", dir.display()))
        .replace("/longconn/longconn-reader", reader.to_str().unwrap());
    let kubectl = format!(
        r#"#!/bin/sh
echo "$*" >> {d}/calls
case "$*" in
  "get pods,services,endpointslices -A -o json") cat $KUBECTL_GET ;;
  "-n longconn create configmap longconn-services --from-file=services.csv={d}/services.csv --dry-run=client -o yaml")
    cp {d}/services.csv {d}/configmap-data; echo "kind: ConfigMap" ;;
  "apply -f -") cat > {d}/applied ;;
  *) echo "kubectl stand-in: unexpected $*" >&2; exit 2 ;;
esac
"#,
        d = dir.display()
    );
    fs::write(bin.join("kubectl"), kubectl).unwrap();
    let mut perm = fs::metadata(bin.join("kubectl")).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    fs::set_permissions(bin.join("kubectl"), perm).unwrap();
    let recorded = dir.join("recorded.json");
    let input: Vec<u8> = RECORDED
        .iter()
        .flat_map(|f| fs::read(data(&format!("kubectl/{f}"))).unwrap())
        .collect();
    fs::write(&recorded, input).unwrap();
    let run = |get: &Path| {
        std::process::Command::new("/bin/sh")
            .args(["-ec", &script])
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .env("KUBECTL_GET", get)
            .output()
            .unwrap()
    };
    let out = run(&recorded);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::read_to_string(dir.join("configmap-data")).unwrap(),
        fs::read_to_string(data("kubectl/services.csv")).unwrap()
    );
    assert_eq!(
        fs::read_to_string(dir.join("applied")).unwrap(),
        "kind: ConfigMap\n"
    );
    // Not JSON (kubectl printed an error page): no apply.
    fs::remove_file(dir.join("applied")).unwrap();
    let bad = dir.join("bad.json");
    fs::write(
        &bad,
        "error: You must be logged in to the server (Unauthorized)\n",
    )
    .unwrap();
    let out = run(&bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("services-from-kubectl") || err.contains("not JSON"),
        "{err}"
    );
    assert!(
        !dir.join("applied").exists(),
        "applied after a failed conversion"
    );
}
