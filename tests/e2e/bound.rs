//! Sockets bound to a device are reached by the read-time refresh (issue 16).
//!
//! The kernel's socket lookup matches a socket bound to a device
//! (SO_BINDTODEVICE, a VRF, an IPv6 link-local scope: `sk_bound_dev_if`)
//! only on that device, so the reader refreshes such records in runs on it.
//! Here both ends of a connection are bound to the two ends of a veth pair
//! in a private network namespace, and `dump` equals `ss -tin` with no
//! socket counted `socket_not_found`, read from inside that namespace (the
//! devices are the reader's own) and from the host's (the kernel compares
//! ifindexes, so there a device of another namespace is named by an
//! interface of the host with the same index). VRF devices cannot be made
//! on this kernel (CONFIG_NET_VRF is off); a socket in a VRF is bound to it
//! the same way (`sk_bound_dev_if` = the VRF's ifindex).

use std::{collections::HashMap, path::Path, process::Command, thread::sleep, time::Duration};

use longconn_tests::{
    env::{bin, privileged_or_skip},
    netns::Netns,
    prom,
    ss::{self, SockKey, TcpInfo},
    TestEnv,
};
use serde_json::Value;

fn port(v: &Value, k: &str) -> u16 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}")) as u16
}

/// `longconn-reader --pin-dir … ARGS`, run inside network namespace `ns`
/// (`nsenter --net`: unlike `ip netns exec` it keeps this mount namespace,
/// where the pins are); stdout, asserting success.
fn reader_in(env: &TestEnv, ns: &Netns, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .arg(bin("longconn-reader"))
        .arg("--pin-dir")
        .arg(&env.pin_dir)
        .args(args)
        .output()
        .expect("run nsenter longconn-reader");
    assert!(
        out.status.success(),
        "longconn-reader {args:?} in {}: {}",
        ns.name,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

fn ifindex_in(ns: &Netns, dev: &str) -> u32 {
    let out = ns
        .cmd(&["cat", &format!("/sys/class/net/{dev}/ifindex")])
        .output()
        .expect("read ifindex");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("ifindex of {dev} in {}", ns.name))
}

/// Whether the host's network namespace has an interface with this index.
fn host_has_ifindex(index: u32) -> bool {
    std::fs::read_dir("/sys/class/net")
        .map(|dir| {
            dir.flatten().any(|e| {
                std::fs::read_to_string(e.path().join("ifindex"))
                    .is_ok_and(|s| s.trim() == index.to_string())
            })
        })
        .unwrap_or(false)
}

/// Dumps (with `dump`) until the two bound sockets equal `ss -tin` in `ns`,
/// or panics with the last difference.
fn assert_dump_equals_ss(ns: &Netns, server: u16, dump: impl Fn() -> String, from: &str) {
    let mut last = String::new();
    for _ in 0..25 {
        let text = dump();
        let v: Vec<Value> = serde_json::from_str(&text).expect("dump --json array");
        let ours: HashMap<SockKey, TcpInfo> = v.iter().map(ss::from_dump).collect();
        let kernel = ss::tcp_info_in(Some(&ns.name), &[server]);
        if ours.len() == 2 && ours == kernel {
            for (k, i) in &ours {
                eprintln!(
                    "bound, read from {from}: dump == ss  {}:{} -> {}:{}  {i:?}",
                    k.0, k.1, k.2, k.3
                );
            }
            return;
        }
        last = format!("dump {ours:?}\nss   {kernel:?}");
        sleep(Duration::from_millis(200));
    }
    panic!("bound sockets, read from {from}: dump != ss -tin\n{last}");
}

fn unreachable(out: &Path, reason: &str) -> Option<f64> {
    let text = std::fs::read_to_string(out.join("longconn.prom")).expect("longconn.prom");
    prom::value(
        &prom::parse(&text),
        "longconn_refresh_unreachable_connections",
        &[("reason", reason)],
    )
}

#[test]
fn device_bound_sockets_are_refreshed_and_equal_ss() {
    if !privileged_or_skip("device_bound_sockets_are_refreshed_and_equal_ss") {
        return;
    }
    let mut env = TestEnv::new("bound");
    env.pin(&[]);
    let ns = Netns::new("bound");
    ns.run(&[
        "ip", "link", "add", "lcva", "type", "veth", "peer", "name", "lcvb",
    ]);
    ns.run(&["ip", "addr", "add", "10.77.0.1/24", "dev", "lcva"]);
    ns.run(&["ip", "addr", "add", "10.77.0.2/24", "dev", "lcvb"]);
    ns.run(&["ip", "link", "set", "lcva", "up"]);
    ns.run(&["ip", "link", "set", "lcvb", "up"]);
    // Both addresses are local: accept a packet from a local address that
    // arrives on the other veth end (the bound sockets force that path).
    for dev in ["all", "lcva", "lcvb"] {
        ns.run(&[
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{dev}.accept_local=1"),
        ]);
    }
    let mut gen = ns.traffic(&mut env);
    let p = gen.cmd("bpair b 10.77.0.2 lcva lcvb");
    let server = port(&p, "server_port");
    gen.cmd("send b c2s 1048576");
    gen.cmd("send b s2c 65536");
    sleep(Duration::from_millis(300));
    let raw = ss::raw_in(Some(&ns.name), &[server]);
    assert_eq!(raw.len(), 2, "two sockets: {raw:?}");

    // From inside the namespace: the devices are the reader's own.
    let sport = server.to_string();
    assert_dump_equals_ss(
        &ns,
        server,
        || reader_in(&env, &ns, &["dump", "--json", "--port", &sport]),
        "their namespace",
    );
    let out = env.path("out-in-ns");
    reader_in(
        &env,
        &ns,
        &["collect", "--out-dir", out.to_str().expect("utf8 path")],
    );
    assert_eq!(unreachable(&out, "socket_not_found"), Some(0.0));
    assert_eq!(unreachable(&out, "netns_unreachable"), Some(0.0));

    // From the host's namespace: reached when it has interfaces with the
    // same indexes (nothing else can name another namespace's device).
    let (a, b) = (ifindex_in(&ns, "lcva"), ifindex_in(&ns, "lcvb"));
    if host_has_ifindex(a) && host_has_ifindex(b) {
        assert_dump_equals_ss(
            &ns,
            server,
            || {
                let v = env.dump_json(&["--port", &sport]);
                serde_json::to_string(&v).expect("json")
            },
            "the host namespace",
        );
    } else {
        eprintln!(
            "bound: the host has no interface with index {a} or {b}: host-side read not checked"
        );
    }
    gen.cmd("close b");
}
