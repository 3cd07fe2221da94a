//! Issue 2: live counters in the pinned map equal tcp_info (`ss -tin`) and the
//! bytes the generator wrote; closes produce exactly one record; detach leaves
//! nothing behind.

use std::{collections::HashMap, process::Command, thread::sleep, time::Duration};

use longconn_tests::{
    env::{bin, privileged_or_skip, unprivileged},
    netns::Netns,
    ss::{self, SockKey, TcpInfo},
    traffic::Traffic,
    TestEnv,
};
use serde_json::Value;

fn port(v: &Value, k: &str) -> u16 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}")) as u16
}

/// Polls until `dump` is stable and equal to ss for every socket on `ports`,
/// or fails printing both. Returns the matching dump records by key.
fn assert_dump_equals_ss(
    env: &TestEnv,
    ports: &[u16],
    expect_sockets: usize,
) -> HashMap<SockKey, (TcpInfo, Value)> {
    assert_dump_args_equals_ss(env, &[], ports, expect_sockets)
}

fn assert_dump_args_equals_ss(
    env: &TestEnv,
    dump_args: &[&str],
    ports: &[u16],
    expect_sockets: usize,
) -> HashMap<SockKey, (TcpInfo, Value)> {
    // Without the read-time refresh the map holds what the last hook saw:
    // with `--hooks live` its counters are final once traffic stops, but
    // its RTTs may lag the socket's by the last ACK's RTT sample (the hooks
    // run before tcp_ack updates srtt), so RTTs are compared only when the
    // reader refreshes at read time.
    let rtts = !dump_args.contains(&"--no-refresh");
    let mask = |mut i: TcpInfo| {
        if !rtts {
            (i.srtt_us, i.min_rtt_us) = (0, 0);
        }
        i
    };
    let mut last = String::new();
    for _ in 0..25 {
        let before = env.dump_json(dump_args);
        let kernel: HashMap<SockKey, TcpInfo> = ss::tcp_info(ports)
            .into_iter()
            .map(|(k, i)| (k, mask(i)))
            .collect();
        let after = env.dump_json(dump_args);
        let view = |d: &[Value]| -> HashMap<SockKey, (TcpInfo, Value)> {
            d.iter()
                .map(|v| {
                    let (k, i) = ss::from_dump(v);
                    (k, (mask(i), v.clone()))
                })
                .filter(|(k, _)| ports.contains(&k.1) || ports.contains(&k.3))
                .collect()
        };
        let (b, a) = (view(&before), view(&after));
        let same = b.len() == a.len()
            && b.iter()
                .all(|(k, (i, _))| a.get(k).map(|x| &x.0) == Some(i));
        let ours: HashMap<_, _> = a.iter().map(|(k, (i, _))| (k.clone(), i.clone())).collect();
        let kernel_est: HashMap<_, _> = kernel
            .into_iter()
            .filter(|(k, _)| ours.contains_key(k))
            .collect();
        if same
            && a.len() == expect_sockets
            && kernel_est.len() == expect_sockets
            && ours == kernel_est
        {
            for (k, (i, _)) in &a {
                eprintln!("dump == ss  {}:{} -> {}:{}  {i:?}", k.0, k.1, k.2, k.3);
            }
            return a;
        }
        last = format!("dump: {ours:#?}\nss: {kernel_est:#?}");
        sleep(Duration::from_millis(200));
    }
    panic!("dump never matched ss -tin for ports {ports:?} ({expect_sockets} sockets expected)\n{last}");
}

#[test]
fn live_counters_equal_tcp_info_and_close_is_recorded_once() {
    if !privileged_or_skip("live_counters_equal_tcp_info_and_close_is_recorded_once") {
        return;
    }
    let mut env = TestEnv::new("foundation");
    env.pin(&[]);
    let mut gen = Traffic::start_in(&mut env);

    // Persistent IPv4 connection with asymmetric traffic.
    let asym = gen.cmd("pair asym 4");
    let (asym_c, asym_s) = (port(&asym, "client_port"), port(&asym, "server_port"));
    gen.cmd("send asym c2s 1048576");
    gen.cmd("send asym s2c 307200");
    // Idle long connection.
    let idle = gen.cmd("pair idle 4");
    // IPv6 connection whose server end only receives.
    let oneway = gen.cmd("pair oneway 6");
    gen.cmd("send oneway c2s 524288");
    // A connection outside the cgroup: not tracked.
    let mut outside = Traffic::start_outside();
    let out = outside.cmd("pair outside 4");
    outside.cmd("send outside c2s 10000");
    let out_ports = [port(&out, "client_port"), port(&out, "server_port")];

    sleep(Duration::from_millis(300));
    let ports = [
        asym_s,
        port(&idle, "server_port"),
        port(&oneway, "server_port"),
    ];
    // Exactness comes from reading the sockets at dump time: before any
    // refresh, the map as the kernel hooks left it (no per-segment hook by
    // default) still holds the values of the handshake.
    let raw = env.dump_json(&["--no-refresh", "--port", &asym_s.to_string()]);
    let raw_server = raw
        .iter()
        .find(|v| v["local_port"].as_u64() == Some(u64::from(asym_s)))
        .expect("asym server in dump --no-refresh");
    assert!(
        raw_server["bytes_received"].as_u64().unwrap_or(0) < 1_048_576,
        "without the read-time refresh the map should lag: {raw_server}"
    );
    let live = assert_dump_equals_ss(&env, &ports, 6);

    // Generator bytes: bytes_received is exactly what the peer wrote; the
    // active opener's bytes_acked also counts its SYN.
    let find = |lp: u16| {
        live.iter()
            .find(|(k, _)| k.1 == lp)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no record with local port {lp}"))
    };
    let (c, _) = find(asym_c);
    assert_eq!(
        (c.bytes_acked, c.bytes_received),
        (1_048_576 + 1, 307_200),
        "asym client vs generator"
    );
    let (s, sv) = find(asym_s);
    assert_eq!(
        (s.bytes_acked, s.bytes_received),
        (307_200, 1_048_576),
        "asym server vs generator"
    );
    assert_eq!(sv["direction"], "inbound");
    assert_eq!(c.bytes_acked - 1, 1_048_576);
    let (o, ov) = find(port(&oneway, "server_port"));
    assert_eq!(
        (o.bytes_acked, o.bytes_received),
        (0, 524_288),
        "one-way receiver vs generator"
    );
    assert_eq!(ov["remote_addr"], "::1");
    let (_, cv) = find(asym_c);
    assert_eq!(cv["direction"], "outbound");
    assert_eq!(cv["state"], "ESTAB");
    assert_eq!(
        cv["pid"].as_u64(),
        Some(u64::from(gen.pid())),
        "connect() caller's pid"
    );
    assert!(cv["start_time"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z') && t.contains('T')));

    // Outside the cgroup: not in the map.
    let all = env.dump_json(&[]);
    assert!(
        all.iter()
            .all(|v| !out_ports.contains(&(v["local_port"].as_u64().unwrap_or(0) as u16))),
        "a connection outside the cgroup was tracked"
    );

    // A failed connect is recorded as failed at close.
    let failed = gen.cmd(&format!("fail {}", out_ports[1] ^ 0x5a5a | 1));
    assert_eq!(failed["failed"], true);

    // Close: exactly one record per socket, final counters, entries gone.
    let asym_cookies: Vec<u64> = live
        .iter()
        .filter(|(k, _)| k.1 == asym_c || k.1 == asym_s)
        .map(|(_, (_, v))| v["cookie"].as_u64().unwrap())
        .collect();
    gen.cmd("close asym");
    // Poll until both closes are waiting (not a fixed sleep), then exact.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let closed = loop {
        let closed = env.dump_json(&["--closed"]);
        let seen = asym_cookies
            .iter()
            .all(|c| closed.iter().any(|v| v["cookie"].as_u64() == Some(*c)));
        if seen || std::time::Instant::now() > deadline {
            break closed;
        }
        sleep(Duration::from_millis(50));
    };
    for cookie in &asym_cookies {
        let recs: Vec<&Value> = closed
            .iter()
            .filter(|v| v["cookie"].as_u64() == Some(*cookie))
            .collect();
        assert_eq!(
            recs.len(),
            1,
            "cookie {cookie}: expected exactly one close record, got {recs:?}"
        );
        let r = recs[0];
        assert_eq!(r["state"], "CLOSED");
        assert_eq!(r["closed"], true);
        assert_eq!(r["failed"], false);
        // The FIN counts once in each direction's byte counters.
        let (want_sent, want_recv) = if r["direction"] == "outbound" {
            (1_048_576 + 2, 307_200 + 1)
        } else {
            (307_200 + 1, 1_048_576 + 1)
        };
        assert_eq!(
            (r["bytes_sent"].as_u64(), r["bytes_received"].as_u64()),
            (Some(want_sent), Some(want_recv)),
            "final counters of {r}"
        );
    }
    assert!(
        closed
            .iter()
            .any(|v| v["failed"] == true && v["direction"] == "outbound"),
        "no failed-connect record in {closed:?}"
    );
    let live_after = env.dump_json(&[]);
    assert!(
        live_after
            .iter()
            .all(|v| !asym_cookies.contains(&v["cookie"].as_u64().unwrap())),
        "closed entries still in the map"
    );
    drop(outside);
    drop(gen);

    // Detach: no link, program or pin left.
    let mut cg_before = bpftool_cgroup(&env.cgroup);
    assert!(
        !cg_before.is_empty(),
        "expected sockops on {}: {cg_before:?}",
        env.cgroup.display()
    );
    // The pinned refresh program is not attached anywhere; it must go too.
    let refresh = Command::new("bpftool")
        .args(["-j", "prog", "show", "pinned"])
        .arg(env.pin_dir.join("refresh_conns"))
        .output()
        .unwrap();
    let refresh: Value = serde_json::from_slice(&refresh.stdout).unwrap_or(Value::Null);
    cg_before.push(
        refresh["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("no pinned refresh program: {refresh}")),
    );
    let out = env.pin_cmd().arg("detach").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!env.pin_dir.exists(), "pin dir still exists after detach");
    let mut left = Vec::new();
    for _ in 0..50 {
        left = bpftool_cgroup(&env.cgroup);
        let progs_alive = cg_before.iter().any(|id| {
            Command::new("bpftool")
                .args(["prog", "show", "id", &id.to_string()])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        });
        if left.is_empty() && !progs_alive {
            return;
        }
        sleep(Duration::from_millis(100));
    }
    panic!("after detach, programs still attached or loaded: {left:?} (before: {cg_before:?})");
}

/// Program ids attached to a cgroup, from `bpftool cgroup show -j`.
fn bpftool_cgroup(cg: &std::path::Path) -> Vec<u64> {
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cg)
        .output()
        .expect("bpftool");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(vec![]));
    v.as_array()
        .map(|a| a.iter().filter_map(|p| p["id"].as_u64()).collect())
        .unwrap_or_default()
}

/// `--hooks live` (tcp-probe + egress + ACK callbacks) keeps the map itself fresh: read raw,
/// without the read-time refresh, it equals tcp_info once traffic stops.
#[test]
fn live_hooks_keep_the_map_itself_fresh() {
    if !privileged_or_skip("live_hooks_keep_the_map_itself_fresh") {
        return;
    }
    let mut env = TestEnv::new("livehooks");
    env.pin(&["--hooks", "live"]);
    let mut gen = Traffic::start_in(&mut env);
    let asym = gen.cmd("pair asym 4");
    gen.cmd("send asym c2s 1048576");
    gen.cmd("send asym s2c 307200");
    sleep(Duration::from_millis(300));
    let server = port(&asym, "server_port");
    let live = assert_dump_args_equals_ss(&env, &["--no-refresh"], &[server], 2);
    let s = live
        .iter()
        .find(|(k, _)| k.1 == server)
        .map(|(_, v)| v.0.clone())
        .expect("server socket");
    assert_eq!((s.bytes_acked, s.bytes_received), (307_200, 1_048_576));
    let status = env.pin_cmd().arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("tcp-probe,egress,ack")
            && text.contains("tp_tcp_probe")
            && text.contains("cgroup_skb_egress"),
        "status names the live hooks: {text}"
    );
}

#[test]
fn retransmits_under_real_loss_equal_tcp_info() {
    if !privileged_or_skip("retransmits_under_real_loss_equal_tcp_info") {
        return;
    }
    let mut env = TestEnv::new("loss");
    env.pin(&[]);
    let ns = Netns::new("loss");
    // The generator runs in the test cgroup and in the private netns.
    let mut gen = ns.traffic(&mut env);
    let p = gen.cmd("pair lossy 4");
    let server = port(&p, "server_port");
    // Drop 1 in 25 segments arriving for the server (input hook: a real loss
    // that TCP detects and repairs, not a local send failure).
    ns.run(&["nft", "add", "table", "inet", "lcloss"]);
    ns.run(&[
        "nft",
        "add",
        "chain",
        "inet",
        "lcloss",
        "input",
        "{ type filter hook input priority 0 ; }",
    ]);
    ns.run(&[
        "nft",
        "add",
        "rule",
        "inet",
        "lcloss",
        "input",
        "tcp",
        "dport",
        &server.to_string(),
        "numgen",
        "random",
        "mod",
        &std::env::var("LONGCONN_LOSS_MOD").unwrap_or_else(|_| "25".into()),
        "==",
        "0",
        "drop",
    ]);
    for _ in 0..8 {
        gen.cmd("send lossy c2s 1048576");
    }
    // A small reverse transfer after the bulk one: with per-segment hooks the
    // server's bytes_acked could stay one ACK behind tcp_info (no hook runs
    // after that last ACK); the default reads the socket at dump time.
    gen.cmd("send lossy s2c 65536");
    ns.run(&["nft", "delete", "table", "inet", "lcloss"]);
    sleep(Duration::from_millis(500));
    let mut last = String::new();
    for _ in 0..25 {
        let dump = env.dump_json(&["--port", &server.to_string()]);
        let kernel = ss::tcp_info_in(Some(&ns.name), &[server]);
        let ours: HashMap<SockKey, TcpInfo> = dump.iter().map(ss::from_dump).collect();
        let client = ours.values().map(|i| i.total_retrans).max().unwrap_or(0);
        if ours.len() == 2 && ours == kernel && client > 0 {
            for (k, i) in &ours {
                eprintln!(
                    "under loss: dump == ss  {}:{} -> {}:{}  {i:?}",
                    k.0, k.1, k.2, k.3
                );
            }
            let c = dump.iter().find(|v| v["direction"] == "outbound").unwrap();
            assert_eq!(
                c["bytes_sent"].as_u64(),
                Some(8 * 1_048_576 + 1),
                "every byte the generator wrote, acked once"
            );
            // bytes_retrans, total retransmits, srtt and min RTT: equal to
            // ss above (`ours == kernel`); here, that the loss was real.
            let ci = &ours[&ss::from_dump(c).0];
            assert!(ci.bytes_retrans > 0 && ci.total_retrans > 0, "{ci:?}");
            let srv = dump.iter().find(|v| v["direction"] == "inbound").unwrap();
            assert_eq!(
                srv["bytes_received"].as_u64(),
                Some(8 * 1_048_576),
                "the receiver got every byte once"
            );
            // ss prints `lost:` from tcpi_lost, the segments marked lost and
            // not yet repaired (tp->lost_out): zero once the transfer is
            // acked. lost_packets is the running total (tp->lost), which no
            // outside tool reports per socket; it must have counted the
            // losses, and cannot exceed the segments sent.
            let raw = ss::raw_in(Some(&ns.name), &[server]);
            assert!(
                raw.values().all(|r| !r.contains_key("lost")),
                "ss shows unrepaired losses on a quiescent connection: {raw:?}"
            );
            let lost = c["lost_packets"].as_u64().unwrap();
            assert!(
                lost > 0 && lost <= ci.segs_out,
                "losses counted as a running total: {c}"
            );
            eprintln!(
                "under loss: lost_packets {lost}, bytes_retrans {}, retransmits {}",
                ci.bytes_retrans, ci.total_retrans
            );
            return;
        }
        last = format!("dump: {ours:#?}\nss: {kernel:#?}");
        sleep(Duration::from_millis(200));
    }
    panic!("under loss, dump never matched ss -tin with retransmits > 0\n{last}");
}

/// Runs the reader as uid/gid 65534 (in the group the pins were given to), no capabilities.
fn reader_as_nobody(env: &TestEnv, args: &[&str]) -> std::process::Output {
    unprivileged(65534, &[], &bin("longconn-reader"))
        .arg("--pin-dir")
        .arg(&env.pin_dir)
        .args(args)
        .output()
        .unwrap()
}

/// Sockets of another network namespace are read through a netnsid: a reader that cannot
/// assign one (no root) says how many connections it could not reach and shows their
/// handshake-time values; a root reader assigns it and then equals `ss -tin` in that
/// namespace; afterwards the unprivileged reader reaches them too (the id is recorded).
#[test]
fn other_netns_is_reached_through_a_netnsid_and_unreachable_ones_are_counted() {
    if !privileged_or_skip(
        "other_netns_is_reached_through_a_netnsid_and_unreachable_ones_are_counted",
    ) {
        return;
    }
    let mut env = TestEnv::new("netnsid");
    env.pin(&["--group", "65534"]);
    let ns = Netns::new("nsid");
    let mut gen = ns.traffic(&mut env);
    let p = gen.cmd("pair x 4");
    let server = port(&p, "server_port");
    gen.cmd("send x c2s 1048576");
    gen.cmd("send x s2c 65536");
    let ids = Command::new("ip")
        .args(["netns", "list-id"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&ids.stdout).contains(&ns.name),
        "the new namespace has no netnsid yet"
    );

    // Unprivileged: cannot assign a netnsid, so both ends are unreachable, and said so.
    let o = reader_as_nobody(&env, &["dump", "--json", "--port", &server.to_string()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("2 in network namespaces this reader cannot reach"),
        "stderr: {err}"
    );
    let stale: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(stale.len(), 2);
    assert!(
        stale
            .iter()
            .all(|v| v["bytes_received"].as_u64() == Some(0)),
        "no refresh reached them: {stale:?}"
    );
    let out = env.path("nobody-out");
    std::fs::create_dir(&out).unwrap();
    std::os::unix::fs::chown(&out, Some(65534), Some(65534)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = reader_as_nobody(
        &env,
        &[
            "collect",
            "--out-dir",
            out.to_str().unwrap(),
            "--group",
            "65534",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let prom =
        longconn_tests::prom::parse(&std::fs::read_to_string(out.join("longconn.prom")).unwrap());
    let unreachable = |reason: &str| {
        longconn_tests::prom::value(
            &prom,
            "longconn_refresh_unreachable_connections",
            &[("reason", reason)],
        )
    };
    assert_eq!(unreachable("netns_unreachable"), Some(2.0));
    assert_eq!(unreachable("socket_not_found"), Some(0.0));

    // Root: assigns the netnsid and reads both ends exactly.
    let mut last = String::new();
    let mut matched = false;
    for _ in 0..25 {
        let dump = env.dump_json(&["--port", &server.to_string()]);
        let kernel = ss::tcp_info_in(Some(&ns.name), &[server]);
        let ours: HashMap<SockKey, TcpInfo> = dump.iter().map(ss::from_dump).collect();
        if ours.len() == 2 && ours == kernel {
            matched = true;
            break;
        }
        last = format!("dump: {ours:#?}\nss: {kernel:#?}");
        sleep(Duration::from_millis(200));
    }
    assert!(matched, "dump never matched ss -tin in {}\n{last}", ns.name);
    let status = env.pin_cmd().arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("refresh:      2 read from their socket | socket not found 0 | in a network namespace this reader cannot reach 0"),
        "status: {text}"
    );
    let ids = Command::new("ip")
        .args(["netns", "list-id"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&ids.stdout).contains(&ns.name),
        "root's reader assigned a netnsid: {}",
        String::from_utf8_lossy(&ids.stdout)
    );

    // Unprivileged again: the recorded netnsid reaches them now.
    gen.cmd("send x c2s 1000");
    let o = reader_as_nobody(&env, &["dump", "--json", "--port", &server.to_string()]);
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let fresh: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    let srv = fresh.iter().find(|v| v["direction"] == "inbound").unwrap();
    assert_eq!(
        srv["bytes_received"].as_u64(),
        Some(1_048_576 + 1000),
        "{srv}"
    );
}

/// The refresh runs in chunks through one pinned work array shared by every
/// reader of a pin dir: readers running at the same moment each get every
/// record refreshed (none reads another's chunk), more records than one
/// chunk holds included.
#[test]
fn concurrent_readers_each_refresh_every_record() {
    if !privileged_or_skip("concurrent_readers_each_refresh_every_record") {
        return;
    }
    let mut env = TestEnv::new("foundation");
    env.pin(&[]);
    let mut gen = Traffic::start_in(&mut env);
    // 1500 pairs: 3000 records, more than one chunk (2048).
    gen.cmd("pairs many 1500 4");
    gen.cmd("pump many 1000");
    sleep(Duration::from_millis(300));
    let counters = |v: &Value| {
        let f = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
        (
            f("bytes_sent"),
            f("bytes_received"),
            f("packets_sent"),
            f("packets_received"),
        )
    };
    let by_cookie = |d: &[Value]| -> HashMap<u64, (u64, u64, u64, u64)> {
        d.iter()
            .map(|v| (v["cookie"].as_u64().unwrap(), counters(v)))
            .collect()
    };
    // The map itself still holds handshake-time values (no per-segment hook):
    // a record a reader did not refresh would show them.
    let raw = by_cookie(&env.dump_json(&["--no-refresh"]));
    assert_eq!(raw.len(), 3000, "records in the map");
    let fresh = raw.values().filter(|c| c.0 >= 1000 || c.1 >= 1000).count();
    assert_eq!(
        fresh, 0,
        "records already fresh in the map before any refresh"
    );

    let readers: Vec<_> = (0..4)
        .map(|_| {
            env.reader_cmd()
                .args(["dump", "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let dumps: Vec<HashMap<u64, (u64, u64, u64, u64)>> = readers
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success() && out.stderr.is_empty(),
                "dump: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
            by_cookie(&v)
        })
        .collect();
    let reference = by_cookie(&env.dump_json(&[]));
    assert_eq!(reference.len(), 3000);
    // Every client sent 1000 bytes (bytes_acked counts the SYN too).
    let clients = reference.values().filter(|c| c.0 == 1001).count();
    assert_eq!(clients, 1500, "clients with bytes_sent 1001");
    for (i, d) in dumps.iter().enumerate() {
        let differ: Vec<_> = reference
            .iter()
            .filter(|(k, v)| d.get(k) != Some(v))
            .take(5)
            .collect();
        assert!(
            differ.is_empty() && d.len() == reference.len(),
            "concurrent reader {i}: {} records, differing from a later dump: {differ:?}",
            d.len()
        );
    }
    drop(gen);
}

/// Layout 7: the refresh writes each socket's counters into the reader's
/// work slot only, widened against the 64-bit totals the slot carries; it
/// writes the map record (the base the close path widens against) only once
/// that base has fallen 2^30 segments behind. Driven by hand: a slot whose
/// packet total is 2^30 + 1000 behind the socket's must be widened across
/// that gap and bring the record forward; an ordinary slot must leave the
/// record as it is.
#[test]
fn the_refresh_writes_its_slot_and_the_record_only_when_its_base_has_aged() {
    use longconn_common::{
        bpfcall as sys,
        layout::{self, RefreshSlot},
        pinned::Access,
        pins,
        refresh::{DirLock, WorkArray},
        Pins,
    };
    use std::os::fd::AsFd;
    if !privileged_or_skip("the_refresh_writes_its_slot_and_the_record_only_when_its_base_has_aged")
    {
        return;
    }
    let mut env = TestEnv::new("widenbase");
    env.pin(&[]);
    let mut gen = Traffic::start_in(&mut env);
    let p = gen.cmd("pair w 1");
    gen.cmd("send w c2s 100000");
    let server = port(&p, "server_port");
    let pinned = Pins::open(&env.pin_dir, Access::ReadWrite).expect("open pins");
    let find = |recs: Vec<layout::ConnRecord>| {
        recs.into_iter()
            .find(|r| r.local_port == u32::from(server) && r.direction == layout::DIR_INBOUND)
            .expect("the server's record")
    };
    // Settled: a refreshed read gives the socket's own totals.
    sleep(Duration::from_millis(300));
    let fresh = find(pinned.connections_refreshed().expect("refreshed read").0);
    assert!(fresh.packets_received > 2, "{fresh:?}");
    let raw = || find(pinned.connections_unrefreshed().expect("raw read").0);
    let before = raw();

    let prog = sys::obj_get(&env.pin_dir.join(pins::REFRESH), 0).expect("refresh program");
    let work_fd = sys::obj_get(&env.pin_dir.join(pins::REFRESH_WORK), 0).expect("work array");
    let work = WorkArray::map(work_fd.as_fd(), layout::REFRESH_CHUNK as usize).expect("mmap");
    let run = |slot: RefreshSlot| {
        let _lock = DirLock::acquire(&env.pin_dir, Duration::from_secs(5))
            .expect("lock")
            .expect("pin dir lock free");
        work.set(0, slot);
        let mut cb = [0u32; 4];
        cb[layout::REFRESH_CB_COUNT] = 1;
        cb[layout::REFRESH_CB_NETNS_LO] = fresh.netns_cookie as u32;
        cb[layout::REFRESH_CB_NETNS_HI] = (fresh.netns_cookie >> 32) as u32;
        sys::prog_run(prog.as_fd(), &cb).expect("test run");
        work.get(0)
    };

    // An ordinary slot: the counters come back, the record is not written.
    let got = run(RefreshSlot::of(&before));
    assert_eq!(got.status, layout::REFRESH_OK, "{got:?}");
    assert_eq!(
        (got.packets_received, got.bytes_received),
        (fresh.packets_received, fresh.bytes_received)
    );
    assert_eq!(
        raw().update_ns,
        before.update_ns,
        "an ordinary refresh leaves the record as it is"
    );

    // A slot whose received-packet total is 2^30 + 1000 behind the socket.
    let gap = (1u64 << 30) + 1000;
    let mut aged = RefreshSlot::of(&before);
    aged.packets_received = u64::from((fresh.packets_received as u32).wrapping_sub(gap as u32));
    let got = run(aged);
    assert_eq!(got.status, layout::REFRESH_OK, "{got:?}");
    assert_eq!(
        got.packets_received,
        aged.packets_received + gap,
        "widened across the gap"
    );
    let after = raw();
    assert!(
        after.update_ns > before.update_ns,
        "the aged base brought the record forward"
    );
    assert_eq!(
        (after.packets_received, after.bytes_received),
        (fresh.packets_received, fresh.bytes_received),
        "the record's own totals, widened against its own base"
    );
}
