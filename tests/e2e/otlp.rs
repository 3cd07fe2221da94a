//! Issue 5: OTLP/JSON files the OpenTelemetry Collector ingests as-is, checked
//! with the official protobuf schema, their values against authorities that
//! are not longconn's: the bytes the generator wrote and `ss -tin` at the
//! same instant.

use std::{
    collections::{BTreeMap, HashMap},
    thread::sleep,
    time::{Duration, Instant},
};

use longconn_tests::{
    env::privileged_or_skip,
    logs, prom,
    ss::{self, SockKey, TcpInfo},
    traffic::Traffic,
    TestEnv,
};
use serde_json::Value;

fn attr_label(key: &str) -> Option<String> {
    Some(match key {
        "network.local.address" => "local_address".into(),
        "network.local.port" => "local_port".into(),
        "network.peer.address" => "remote_address".into(),
        "network.peer.port" => "remote_port".into(),
        "network.transport" | "network.type" | "network.io.direction" => return None,
        k => k.strip_prefix("longconn.")?.to_owned(),
    })
}

fn attr_value(v: &Value) -> String {
    logs::attr_value(v)
}

/// Prometheus-shaped series from one ExportMetricsServiceRequest, plus each
/// series' start time.
/// Each series' start time, by (metric name, labels).
pub(crate) type StartTimes = BTreeMap<(String, BTreeMap<String, String>), String>;

pub(crate) fn otlp_series(line: &str) -> (prom::Series, StartTimes) {
    let v: Value = serde_json::from_str(line).unwrap();
    let (mut series, mut starts) = (prom::Series::new(), BTreeMap::new());
    for m in v["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
        .as_array()
        .unwrap()
    {
        let (points, name) = if m.get("sum").is_some() {
            assert_eq!(m["sum"]["aggregationTemporality"], 2, "cumulative");
            assert_eq!(m["sum"]["isMonotonic"], true);
            (
                &m["sum"]["dataPoints"],
                format!("{}_total", m["name"].as_str().unwrap()),
            )
        } else {
            (
                &m["gauge"]["dataPoints"],
                m["name"].as_str().unwrap().to_owned(),
            )
        };
        for p in points.as_array().unwrap() {
            let labels: BTreeMap<String, String> = p["attributes"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|kv| Some((attr_label(kv["key"].as_str()?)?, attr_value(kv))))
                        .collect()
                })
                .unwrap_or_default();
            let value = match p.get("asInt") {
                Some(i) => i.as_str().unwrap().parse::<f64>().unwrap(),
                None => p["asDouble"].as_f64().unwrap(),
            };
            starts.insert(
                (name.clone(), labels.clone()),
                p["startTimeUnixNano"].as_str().unwrap().to_owned(),
            );
            series.insert((name.clone(), labels), value);
        }
    }
    (series, starts)
}

/// `ss -tin` for the sockets with an endpoint at one of `servers`
/// (address, port): `ss` filters by port number only, and another test's
/// socket may hold the same number on another address or family.
fn ss_of(servers: &[(&str, u16)]) -> HashMap<SockKey, TcpInfo> {
    let ports: Vec<u16> = servers.iter().map(|s| s.1).collect();
    ss::tcp_info(&ports)
        .into_iter()
        .filter(|((la, lp, ra, rp), _)| {
            servers
                .iter()
                .any(|&(a, p)| (la == a && *lp == p) || (ra == a && *rp == p))
        })
        .collect()
}

/// `ss_of(servers)` once two reads in a row agree and `ready` holds (the
/// last ACKs of a transfer have arrived): a quiescent instant.
fn quiescent_ss(
    servers: &[(&str, u16)],
    sockets: usize,
    ready: impl Fn(&HashMap<SockKey, TcpInfo>) -> bool,
) -> HashMap<SockKey, TcpInfo> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut prev = ss_of(servers);
    loop {
        sleep(Duration::from_millis(50));
        let now = ss_of(servers);
        if now == prev && now.len() == sockets && ready(&now) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "ss -tin never settled for {servers:?}: {now:#?}"
        );
        prev = now;
    }
}

#[test]
fn otlp_files_parse_with_the_official_schema_and_equal_generator_and_ss() {
    if !privileged_or_skip("otlp_files_parse_with_the_official_schema_and_equal_generator_and_ss") {
        return;
    }
    let mut env = TestEnv::new("otlp");
    env.all_outputs();
    env.pin(&[]);
    let mut gen = Traffic::start_in(&mut env);
    let wl = env.workload();
    let long = gen.cmd("pair long 4");
    let v6 = gen.cmd("pair v6 6");
    let port = |v: &Value, k: &str| v[k].as_u64().unwrap() as u16;
    let servers = [
        ("127.0.0.1", port(&long, "server_port")),
        ("::1", port(&v6, "server_port")),
    ];
    // Generator counts: (long c2s, long s2c, v6 c2s, v6 s2c), churned.
    let (mut long_c2s, mut v6_s2c, mut churned) = (0u64, 0u64, 0u64);
    let born = Instant::now();
    let threshold = Duration::from_secs(1);
    let mut prev: Option<(prom::Series, BTreeMap<_, String>)> = None;
    let (mut checked_starts, mut checked_conn) = (0, 0);
    for cycle in 0..4 {
        long_c2s += gen.cmd("send long c2s 50000")["bytes"].as_u64().unwrap();
        v6_s2c += gen.cmd("send v6 s2c 20000")["bytes"].as_u64().unwrap();
        gen.cmd("churn 3");
        churned += 3;
        // The pairs become long connections (poll the clock, not a fixed sleep).
        while born.elapsed() < threshold + Duration::from_millis(200) {
            sleep(Duration::from_millis(50));
        }
        // What the kernel says just before and just after the cycle: the
        // connection is quiescent, so both reads are the cycle's instant.
        let acked = |m: &HashMap<SockKey, TcpInfo>| {
            m.values()
                .map(|i| i.bytes_acked)
                .collect::<std::collections::BTreeSet<_>>()
                .is_superset(&[long_c2s + 1, v6_s2c].into())
        };
        let before = quiescent_ss(&servers, 4, acked);
        let (st, err) = env.collect(&["--long-threshold", "1s"]);
        assert!(st.success(), "{err}");
        let after = ss_of(&servers);
        assert_eq!(before, after, "traffic moved during the cycle");
        let lines = std::fs::read_to_string(env.out_dir().join("otlp-metrics.jsonl")).unwrap();
        let last = lines.lines().last().unwrap();
        assert_eq!(
            lines.lines().count(),
            cycle + 1,
            "one metrics line per cycle"
        );
        let (series, starts) = otlp_series(last);
        // Per connection: every counter and RTT equals ss -tin.
        for ((la, lp, ra, rp), i) in &after {
            let labels = [
                ("local_address", la.as_str()),
                ("local_port", &lp.to_string()),
                ("remote_address", ra.as_str()),
                ("remote_port", &rp.to_string()),
            ];
            let find = |name: &str| {
                let hits: Vec<f64> = series
                    .iter()
                    .filter(|((n, l), _)| {
                        n == name
                            && labels
                                .iter()
                                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
                    })
                    .map(|(_, v)| *v)
                    .collect();
                assert_eq!(hits.len(), 1, "OTLP {name} of {labels:?}: {hits:?}");
                hits[0]
            };
            for (name, want) in [
                ("longconn_connection_sent_bytes_total", i.bytes_acked),
                ("longconn_connection_received_bytes_total", i.bytes_received),
                ("longconn_connection_sent_packets_total", i.segs_out),
                ("longconn_connection_received_packets_total", i.segs_in),
                ("longconn_connection_retransmits_total", i.total_retrans),
            ] {
                assert_eq!(find(name), want as f64, "{name} of {labels:?} vs ss {i:?}");
            }
            for (name, want_us) in [
                ("longconn_connection_srtt_seconds", i.srtt_us),
                ("longconn_connection_min_rtt_seconds", i.min_rtt_us),
            ] {
                let got = find(name);
                assert!(
                    (got * 1e6 - want_us as f64).abs() < 0.5,
                    "{name} of {labels:?}: OTLP {got} s, ss {want_us} us"
                );
            }
            checked_conn += 1;
        }
        // Per connection and per workload: the generator's bytes. tcp_info
        // counts the active opener's SYN in bytes_acked, and each FIN once
        // each way (closed churn connections: 1000 data bytes each way).
        let conn = |lp: u16, name: &str| {
            series
                .iter()
                .find(|((n, l), _)| n == name && l.get("local_port") == Some(&lp.to_string()))
                .map(|(_, v)| *v)
                .unwrap_or_else(|| panic!("no OTLP {name} for local port {lp}"))
        };
        assert_eq!(
            conn(
                port(&long, "client_port"),
                "longconn_connection_sent_bytes_total"
            ),
            (long_c2s + 1) as f64,
            "long client: data + SYN"
        );
        assert_eq!(
            conn(
                port(&v6, "client_port"),
                "longconn_connection_received_bytes_total"
            ),
            v6_s2c as f64,
            "v6 client received what the server wrote"
        );
        let w = |name: &str, dir: &str| {
            prom::value(&series, name, &[("workload", &wl), ("direction", dir)])
                .unwrap_or_else(|| panic!("OTLP {name} {dir} missing"))
        };
        for (name, dir, want) in [
            (
                "longconn_workload_connections_opened_total",
                "outbound",
                churned + 2,
            ),
            (
                "longconn_workload_connections_opened_total",
                "inbound",
                churned + 2,
            ),
            (
                "longconn_workload_connections_closed_total",
                "outbound",
                churned,
            ),
            (
                "longconn_workload_connections_closed_total",
                "inbound",
                churned,
            ),
            ("longconn_workload_active_connections", "outbound", 2),
            ("longconn_workload_active_connections", "inbound", 2),
            (
                "longconn_workload_sent_bytes_total",
                "outbound",
                churned * 1002 + long_c2s + 1 + 1,
            ),
            (
                "longconn_workload_received_bytes_total",
                "outbound",
                churned * 1001 + v6_s2c,
            ),
            (
                "longconn_workload_sent_bytes_total",
                "inbound",
                churned * 1001 + v6_s2c,
            ),
            (
                "longconn_workload_received_bytes_total",
                "inbound",
                churned * 1001 + long_c2s,
            ),
        ] {
            assert_eq!(w(name, dir), want as f64, "{name} {dir} vs the generator");
        }
        if let Some((pseries, pstarts)) = &prev {
            for (k, s) in &starts {
                if let Some(ps) = pstarts.get(k) {
                    assert_eq!(s, ps, "start time of {k:?} changed between cycles");
                    checked_starts += 1;
                }
                if k.0.ends_with("_total") {
                    if let (Some(a), Some(b)) = (pseries.get(k), series.get(k)) {
                        assert!(b >= a, "{k:?} went back {a} -> {b}");
                    }
                }
            }
        }
        prev = Some((series, starts));
    }
    assert!(
        checked_starts > 50,
        "start times compared for {checked_starts} series only"
    );
    assert_eq!(
        checked_conn,
        4 * 4,
        "4 sockets compared with ss in 4 cycles"
    );
    gen.cmd("close long");
    // Poll until the close is in the logs (not a fixed sleep).
    let long_client = port(&long, "client_port").to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let closes = loop {
        let (st, err) = env.collect(&["--long-threshold", "1s"]);
        assert!(st.success(), "{err}");
        let recs = logs::otlp_logs(&logs::files(&env.out_dir(), "otlp-logs.jsonl"));
        let closes = logs::exactly_once("otlp-logs.jsonl", &recs, &wl);
        if closes.values().any(|r| r["local_port"] == long_client) {
            break closes;
        }
        assert!(
            Instant::now() < deadline,
            "the long connection's close never reached otlp-logs.jsonl"
        );
        sleep(Duration::from_millis(100));
    };

    logs::schema_check("metrics", &[env.out_dir().join("otlp-metrics.jsonl")]);
    logs::schema_check("logs", &[env.out_dir().join("otlp-logs.jsonl")]);

    // Log records: each close once, with the generator's bytes.
    assert_eq!(
        closes.len() as u64,
        2 * churned + 2,
        "closes: churn + the long pair"
    );
    for r in closes.values() {
        let lp = r["local_port"].as_str();
        let want = if lp == long_client {
            (long_c2s + 2, 1)
        } else if lp == port(&long, "server_port").to_string() {
            (1, long_c2s + 1)
        } else if r["direction"] == "outbound" {
            (1002, 1001)
        } else {
            (1001, 1001)
        };
        assert_eq!(
            (
                r["bytes_sent"].parse::<u64>().unwrap(),
                r["bytes_received"].parse::<u64>().unwrap()
            ),
            want,
            "OTLP close record vs the generator: {r:?}"
        );
    }
    let mut otlp_recs = Vec::new();
    for line in std::fs::read_to_string(env.out_dir().join("otlp-logs.jsonl"))
        .unwrap()
        .lines()
    {
        let v: Value = serde_json::from_str(line).unwrap();
        for r in v["resourceLogs"][0]["scopeLogs"][0]["logRecords"]
            .as_array()
            .unwrap()
        {
            assert_eq!(r["severityNumber"], 9);
            assert!(r["body"]["stringValue"]
                .as_str()
                .is_some_and(|b| b.contains(" -> ")));
            let a: BTreeMap<String, String> = r["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|kv| Some((attr_label(kv["key"].as_str()?)?, attr_value(kv))))
                .collect();
            otlp_recs.push((
                a["cookie"].clone(),
                a["seq"].clone(),
                a["bytes_sent"].clone(),
                a["bytes_received"].clone(),
                a["event"].clone(),
            ));
        }
    }
    // And one for one the access log's records (the same cycle's records in
    // two encodings).
    let mut csv = csv::Reader::from_path(env.out_dir().join("access.csv")).unwrap();
    let h = csv.headers().unwrap().clone();
    let idx = |n: &str| h.iter().position(|x| x == n).unwrap();
    let access: Vec<_> = csv
        .records()
        .map(|r| {
            let r = r.unwrap();
            (
                r[idx("cookie")].to_owned(),
                r[idx("seq")].to_owned(),
                r[idx("bytes_sent")].to_owned(),
                r[idx("bytes_received")].to_owned(),
                r[idx("event")].to_owned(),
            )
        })
        .collect();
    assert!(access.len() > 20);
    assert_eq!(
        otlp_recs, access,
        "OTLP log records equal the access-log records"
    );
}
