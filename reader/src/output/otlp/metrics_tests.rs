//! Tests of the OTLP metrics printer: attributes, start times and values
//! from typed points, the table's names and units, and byte equality with
//! the serde reference on generated Snapshots. Exact bytes for a fixed
//! Snapshot are the golden file (`output/golden.rs`).

use std::net::IpAddr;

use longconn_common::layout;
use longconn_testgen::Gen;
use serde_json::{json, Value as Json};

use super::*;
use crate::output::{
    golden,
    snapshot::{table, Label, Reason, Snapshot, Value, METRICS},
};

fn res() -> Resource {
    golden::resource()
}

fn metrics(line: &str) -> Vec<Json> {
    assert!(!line.contains('\n'), "{line}");
    let v: Json = serde_json::from_str(line).unwrap();
    v["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
        .as_array()
        .unwrap()
        .clone()
}

fn points(metric: &Json) -> &Vec<Json> {
    let data = if metric.get("sum").is_some() {
        &metric["sum"]
    } else {
        &metric["gauge"]
    };
    data["dataPoints"].as_array().unwrap()
}

fn attr<'a>(point: &'a Json, key: &str) -> Option<&'a Json> {
    point["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|kv| kv["key"] == key)
        .map(|kv| &kv["value"])
}

/// Every family with a point is a metric named, described and unitised
/// by its table row, with its I/O direction on each point; families
/// without points are left out.
#[test]
fn names_units_and_io_direction_come_from_the_table() {
    let keys = golden::workload_keys();
    let snap = golden::fixture(&keys);
    let m = metrics(&metrics_request(&snap, &res(), golden::NOW));
    let with_points: Vec<_> = snap.families().filter(|(_, p)| !p.is_empty()).collect();
    assert_eq!(m.len(), with_points.len());
    assert!(
        with_points.len() < METRICS.len(),
        "the fixture has empty families"
    );
    for (metric, (desc, _)) in m.iter().zip(with_points) {
        assert_eq!(metric["name"], desc.otel_name);
        assert_eq!(metric["description"], desc.help);
        assert_eq!(metric["unit"], desc.unit.ucum());
        match desc.kind {
            Kind::Counter => {
                assert_eq!(metric["sum"]["aggregationTemporality"], 2, "{}", desc.name);
                assert_eq!(metric["sum"]["isMonotonic"], true, "{}", desc.name);
            }
            Kind::Gauge => assert!(metric.get("sum").is_none(), "{}", desc.name),
        }
        for p in points(metric) {
            assert_eq!(
                attr(p, "network.io.direction").and_then(|v| v["stringValue"].as_str()),
                desc.io.map(Io::name),
                "{}",
                desc.name
            );
        }
    }
    // (name, unit, direction): spot checks of the table itself.
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("longconn_workload_sent_bytes", "By", Some("transmit")),
        (
            "longconn_workload_received_packets",
            "{packet}",
            Some("receive"),
        ),
        ("longconn_workload_retransmits", "{packet}", None),
        ("longconn_workload_connections_opened", "{connection}", None),
        ("longconn_connection_srtt_seconds", "s", None),
        ("longconn_ringbuf_drops", "{record}", None),
        ("longconn_map_full_drops", "{connection}", None),
        ("longconn_reader_saturated_groups", "{group}", None),
        (
            "longconn_refresh_unreachable_connections",
            "{connection}",
            None,
        ),
    ];
    for (name, unit, io) in cases {
        let d = METRICS.iter().find(|d| d.otel_name == *name).unwrap();
        assert_eq!((d.unit.ucum(), d.io.map(Io::name)), (*unit, *io), "{name}");
    }
}

/// Connection points: typed labels as semantic-convention attributes,
/// ports as integers, the network type from the address, and each
/// series' own start (to the ns, never after now); groups start at the
/// state's start and have no network attributes.
#[test]
fn connection_attributes_and_start_times() {
    let keys = golden::workload_keys();
    let mut snap = golden::fixture(&keys);
    // A start after now is clamped.
    let late = snap.add_series(vec![Label::Direction(layout::DIR_OUTBOUND)], u64::MAX);
    snap.push(table::SERIES_OMITTED, late, Value::Count(1));
    let m = metrics(&metrics_request(&snap, &res(), golden::NOW));
    let find = |name: &str| m.iter().find(|m| m["name"] == name).unwrap();
    let received = points(find("longconn_connection_received_bytes"));
    // Sorted by label values as text: 10.0.0.1 < 2001:db8::1.
    let (p4, p6) = (&received[0], &received[1]);
    assert_eq!(p4["startTimeUnixNano"], "1763999001123456789");
    assert_eq!(p6["startTimeUnixNano"], "1763999000125000000");
    for (point, net, local, lport, rport, netns) in [
        (p4, "ipv4", "10.0.0.1", "5432", "43211", "4026531840"),
        (p6, "ipv6", "2001:db8::1", "5432", "43210", "4026531841"),
    ] {
        assert_eq!(point["timeUnixNano"], golden::NOW.to_string());
        let want = [
            ("longconn.direction", json!({"stringValue": "inbound"})),
            ("network.local.address", json!({"stringValue": local})),
            ("network.local.port", json!({"intValue": lport})),
            ("network.peer.port", json!({"intValue": rport})),
            ("longconn.netns", json!({"stringValue": netns})),
            (
                "longconn.workload",
                json!({"stringValue": "system.slice/db.service"}),
            ),
            ("longconn.service", json!({"stringValue": ""})),
            ("network.transport", json!({"stringValue": "tcp"})),
            ("network.type", json!({"stringValue": net})),
            ("network.io.direction", json!({"stringValue": "receive"})),
        ];
        for (key, value) in want {
            assert_eq!(attr(point, key), Some(&value), "{key}");
        }
        assert_eq!(point["attributes"].as_array().unwrap().len(), 11);
    }
    let start = points(find("longconn_connection_start_time_seconds"));
    assert_eq!(start[1]["startTimeUnixNano"], "1763999000125000000");
    let omitted = points(find("longconn_reader_connection_series_omitted"));
    assert_eq!(
        omitted[0]["startTimeUnixNano"],
        golden::STATE_START.to_string()
    );
    assert_eq!(omitted[1]["startTimeUnixNano"], golden::NOW.to_string());
    let g = &points(find("longconn_workload_active_connections"))[0];
    assert_eq!(g["startTimeUnixNano"], golden::STATE_START.to_string());
    assert_eq!(attr(g, "network.transport"), None);
    assert_eq!(
        attr(g, "longconn.workload").unwrap()["stringValue"],
        "/a\"b\\c\nd"
    );
    assert_eq!(
        attr(g, "longconn.comm").unwrap()["stringValue"],
        "x\u{1f}y é"
    );
    let r = &points(find("longconn_refresh_unreachable_connections"))[0];
    assert_eq!(
        attr(r, "longconn.reason").unwrap()["stringValue"],
        "netns_unreachable"
    );
}

#[test]
fn values() {
    // (value, asInt, asDouble); neither means the point is skipped.
    let cases: &[(Value, Option<&str>, Option<f64>)] = &[
        (Value::Count(0), Some("0"), None),
        (Value::Count(1 << 60), Some("1152921504606846976"), None),
        (
            Value::Count(i64::MAX as u64),
            Some("9223372036854775807"),
            None,
        ),
        (
            Value::Count(i64::MAX as u64 + 1),
            None,
            Some(9223372036854775808.0),
        ),
        (Value::Count(u64::MAX), None, Some(18446744073709551615.0)),
        (Value::Real(0.0), Some("0"), None),
        (Value::Real(-0.0), Some("0"), None),
        (Value::Real(-3.0), Some("-3"), None),
        (
            Value::Real(((1u64 << 53) - 1) as f64),
            Some("9007199254740991"),
            None,
        ),
        (
            Value::Real((1u64 << 53) as f64),
            None,
            Some(9007199254740992.0),
        ),
        (Value::Real(1e300), None, Some(1e300)),
        (Value::Real(0.5), None, Some(0.5)),
        (Value::Real(f64::NAN), None, None),
        (Value::Real(f64::INFINITY), None, None),
        (Value::Real(f64::NEG_INFINITY), None, None),
    ];
    for &(v, int, double) in cases {
        let mut snap = Snapshot::default();
        let s = snap.add_series(Vec::new(), 1);
        snap.push(table::CYCLE_DURATION, s, v);
        let line = metrics_request(&snap, &res(), golden::NOW);
        let m = metrics(&line);
        if int.is_none() && double.is_none() {
            assert!(m.is_empty(), "{v:?}: {line}");
            continue;
        }
        let p = &points(&m[0])[0];
        assert_eq!(p["asInt"].as_str(), int, "{v:?}");
        assert_eq!(p["asDouble"].as_f64(), double, "{v:?}");
    }
    let line = metrics_request(&Snapshot::default(), &res(), golden::NOW);
    assert!(metrics(&line).is_empty());
}

/// A Snapshot with every awkward label and value, in random families.
fn generated<'a>(g: &mut Gen, keys: &'a [String], names: &'a [String]) -> Snapshot<'a> {
    const TEXTS: &[&str] = &["", "web", "a\"b\nc\\\u{0}é", "\u{1f}", "outbound"];
    const ADDRS: &[&str] = &[
        "10.0.0.1",
        "2001:db8::1",
        "::ffff:10.0.0.1",
        "::",
        "0.0.0.0",
    ];
    let mut snap = Snapshot::default();
    let label = |g: &mut Gen| -> Label<'a> {
        let addr: IpAddr = ADDRS[g.below(ADDRS.len())].parse().unwrap();
        match g.below(11) {
            0 => Label::Direction(g.below(4) as u32),
            1 => Label::LocalAddress(addr),
            2 => Label::RemoteAddress(addr),
            3 => Label::LocalPort(g.u64() as u16),
            4 => Label::RemotePort([0, 80, u16::MAX][g.below(3)]),
            5 => Label::Netns(g.u64() >> g.below(64)),
            6 => Label::Workload(TEXTS[g.below(TEXTS.len())]),
            7 => Label::Service(TEXTS[g.below(TEXTS.len())]),
            8 => Label::Reason([Reason::SocketNotFound, Reason::NetnsUnreachable][g.below(2)]),
            _ => Label::Group {
                name: &names[g.below(names.len())],
                key: &keys[g.below(keys.len())],
                index: g.below(3),
            },
        }
    };
    let value = |g: &mut Gen| match g.below(4) {
        0 => Value::Count(
            [
                0,
                1,
                i64::MAX as u64,
                i64::MAX as u64 + 1,
                u64::MAX,
                1 << 53,
            ][g.below(6)],
        ),
        1 => Value::Count(g.u64() >> g.below(64)),
        2 => Value::Real(f64::from_bits(g.u64())),
        _ => Value::Real(
            [
                0.0,
                -0.0,
                f64::NAN,
                f64::INFINITY,
                -3.0,
                1e300,
                0.5,
                EXACT,
                EXACT - 1.0,
                1e21,
                1e-7,
            ][g.below(11)],
        ),
    };
    let series: Vec<_> = (0..1 + g.below(6))
        .map(|_| {
            let labels = (0..g.below(8)).map(|_| label(g)).collect();
            let start = [0, golden::NOW, u64::MAX, g.u64()][g.below(4)];
            snap.add_series(labels, start)
        })
        .collect();
    for _ in 0..g.below(12) {
        let metric = table::Metric(g.below(METRICS.len()));
        for s in &series {
            if g.below(2) == 0 {
                snap.push(metric, *s, value(g));
            }
        }
    }
    snap.sort();
    snap
}

/// The hand-written metrics request equals the serde one byte for byte.
#[test]
fn metrics_request_equals_the_serde_reference() {
    let mut g = Gen::new(37);
    let keys: Vec<String> = (0..4)
        .map(|_| {
            let n = 1 + g.below(3);
            crate::identity::join_key((0..n).map(|_| g.text(&["a\\s", "\u{1f}", "é\"\n", ""])))
        })
        .collect();
    let names: Vec<String> = ["workload", "comm", "x\"y"].map(String::from).to_vec();
    let hosts = [
        res(),
        Resource {
            host_name: String::new(),
        },
        Resource {
            host_name: "h\"\u{1}é".into(),
        },
    ];
    for i in 0..20_000 {
        let snap = generated(&mut g, &keys, &names);
        let host = &hosts[i % hosts.len()];
        let now = [golden::NOW, 0, u64::MAX, g.u64()][i % 4];
        assert_eq!(
            metrics_request(&snap, host, now),
            reference::metrics_request(&snap, host, now),
            "{snap:?}"
        );
    }
}

/// A cycle's Snapshot at `n` connection series (for the benchmarks).
pub(super) fn realistic_snapshot(n: u32) -> Snapshot<'static> {
    const WORKLOADS: &[&str] = &[
        "system.slice/nginx.service",
        "kubepods/pod-1/ctr",
        "user.slice",
    ];
    let mut snap = Snapshot::default();
    for i in 0..n {
        let local = IpAddr::from([10, 0, (i >> 8) as u8, i as u8]);
        let remote = IpAddr::from([10, 1, (i >> 8) as u8, i as u8]);
        let series = snap.add_series(
            vec![
                Label::Direction(1 + i % 2),
                Label::LocalAddress(local),
                Label::LocalPort(40_000 + (i % 20_000) as u16),
                Label::RemoteAddress(remote),
                Label::RemotePort(443),
                Label::Netns(4_026_531_840),
                Label::Workload(WORKLOADS[i as usize % WORKLOADS.len()]),
                Label::Service("10.1.0.1:443"),
            ],
            1_763_999_000_125_000_000 + u64::from(i),
        );
        let v = u64::from(i) * 1_234_567 % 9_999_999;
        for f in 0..table::COUNTER_FIELDS {
            snap.push(table::CONNECTION.at(f), series, Value::Count(v + f as u64));
        }
        snap.push(
            table::CONNECTION.at(table::CONN_SRTT),
            series,
            Value::Real(v as f64 / 1e6),
        );
        snap.push(
            table::CONNECTION.at(table::CONN_MIN_RTT),
            series,
            Value::Real(v as f64 / 2e6),
        );
        snap.push(
            table::CONNECTION.at(table::CONN_START),
            series,
            Value::Real(1_763_999_000.125 + f64::from(i)),
        );
    }
    snap.sort();
    snap
}
