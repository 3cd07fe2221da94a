use super::logs::one_decimal;
use super::*;
use crate::output::access::testdata::{self, OwnedEvent};
use crate::output::access::AccessRecord;
use crate::output::event::{all_fields, EventKind};

const START: u64 = 1_764_000_000_000_000_000;
const NOW: u64 = 1_764_000_005_000_000_000;

fn res() -> Resource {
    Resource {
        host_name: "h1".into(),
    }
}

fn sample(labels: &[(&str, &str)], value: f64) -> Sample {
    Sample {
        labels: labels
            .iter()
            .map(|&(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        value,
    }
}

fn family(name: &str, kind: Kind, samples: Vec<Sample>) -> Family {
    Family {
        name: name.to_string(),
        help: format!("Help of {name}"),
        kind,
        samples,
    }
}

fn parse(line: &str) -> serde_json::Value {
    assert!(!line.contains('\n'), "{line}");
    serde_json::from_str(line).unwrap()
}

/// The metrics of a request, by name.
fn metrics(line: &str) -> Vec<serde_json::Value> {
    let v = parse(line);
    v["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
        .as_array()
        .unwrap()
        .clone()
}

fn points(metric: &serde_json::Value) -> &Vec<serde_json::Value> {
    let data = if metric.get("sum").is_some() {
        &metric["sum"]
    } else {
        &metric["gauge"]
    };
    data["dataPoints"].as_array().unwrap()
}

fn attr<'a>(point: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    point["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|kv| kv["key"] == key)
        .map(|kv| &kv["value"])
}

#[test]
fn counter_exact() {
    let families = [family(
        "longconn_workload_sent_bytes_total",
        Kind::Counter,
        vec![sample(
            &[("workload", "web"), ("direction", "outbound")],
            1048577.0,
        )],
    )];
    let want = r#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"longconn"}},{"key":"host.name","value":{"stringValue":"h1"}}]},"scopeMetrics":[{"scope":{"name":"longconn-reader","version":"VERSION"},"metrics":[{"name":"longconn_workload_sent_bytes","description":"Help of longconn_workload_sent_bytes_total","unit":"By","sum":{"dataPoints":[{"startTimeUnixNano":"1764000000000000000","timeUnixNano":"1764000005000000000","asInt":"1048577","attributes":[{"key":"longconn.workload","value":{"stringValue":"web"}},{"key":"longconn.direction","value":{"stringValue":"outbound"}},{"key":"network.io.direction","value":{"stringValue":"transmit"}}]}],"aggregationTemporality":2,"isMonotonic":true}}]}]}]}"#
        .replace("VERSION", env!("CARGO_PKG_VERSION"));
    assert_eq!(metrics_request(&families, &res(), START, NOW), want);
}

#[test]
fn gauge_exact_and_empty_families_skipped() {
    let families = [
        family("longconn_map_full_drops_total", Kind::Counter, vec![]),
        family(
            "longconn_rtt_seconds",
            Kind::Gauge,
            vec![sample(&[], f64::NAN)],
        ),
        family(
            "longconn_reader_cycle_duration_seconds",
            Kind::Gauge,
            vec![sample(&[], 0.000081)],
        ),
    ];
    let want = r#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"longconn"}},{"key":"host.name","value":{"stringValue":"h1"}}]},"scopeMetrics":[{"scope":{"name":"longconn-reader","version":"VERSION"},"metrics":[{"name":"longconn_reader_cycle_duration_seconds","description":"Help of longconn_reader_cycle_duration_seconds","unit":"s","gauge":{"dataPoints":[{"startTimeUnixNano":"1764000000000000000","timeUnixNano":"1764000005000000000","asDouble":0.000081,"attributes":[]}]}}]}]}]}"#
        .replace("VERSION", env!("CARGO_PKG_VERSION"));
    assert_eq!(metrics_request(&families, &res(), START, NOW), want);
}

#[test]
fn no_families_is_still_a_valid_request() {
    let line = metrics_request(&[], &res(), START, NOW);
    assert_eq!(metrics(&line).len(), 0);
}

#[test]
fn values() {
    // (value, asInt, asDouble); neither means the point is skipped.
    let cases: &[(f64, Option<&str>, Option<f64>)] = &[
        (0.0, Some("0"), None),
        (-0.0, Some("0"), None),
        (-3.0, Some("-3"), None),
        (1048577.0, Some("1048577"), None),
        (((1u64 << 53) - 1) as f64, Some("9007199254740991"), None),
        ((1u64 << 53) as f64, None, Some(9007199254740992.0)),
        (1e300, None, Some(1e300)),
        (0.5, None, Some(0.5)),
        (f64::NAN, None, None),
        (f64::INFINITY, None, None),
        (f64::NEG_INFINITY, None, None),
    ];
    for &(v, int, double) in cases {
        let families = [family("longconn_x", Kind::Gauge, vec![sample(&[], v)])];
        let line = metrics_request(&families, &res(), START, NOW);
        let m = metrics(&line);
        if int.is_none() && double.is_none() {
            assert!(m.is_empty(), "{v}: {line}");
            continue;
        }
        let p = &points(&m[0])[0];
        assert_eq!(p["asInt"].as_str(), int, "{v}");
        assert_eq!(p["asDouble"].as_f64(), double, "{v}");
    }
}

#[test]
fn nan_sample_skipped_others_kept() {
    let families = [family(
        "longconn_connection_srtt_seconds",
        Kind::Gauge,
        vec![
            sample(&[("workload", "a")], f64::NAN),
            sample(&[("workload", "b")], 0.25),
        ],
    )];
    let line = metrics_request(&families, &res(), START, NOW);
    let m = metrics(&line);
    let p = points(&m[0]);
    assert_eq!(p.len(), 1);
    assert_eq!(
        attr(&p[0], "longconn.workload").unwrap()["stringValue"],
        "b"
    );
    assert_eq!(p[0]["asDouble"], 0.25);
}

#[test]
fn names_units_and_io_direction() {
    // (family, kind, metric name, unit, network.io.direction)
    let cases: &[(&str, Kind, &str, &str, Option<&str>)] = &[
        (
            "longconn_workload_sent_bytes_total",
            Kind::Counter,
            "longconn_workload_sent_bytes",
            "By",
            Some("transmit"),
        ),
        (
            "longconn_service_received_bytes_total",
            Kind::Counter,
            "longconn_service_received_bytes",
            "By",
            Some("receive"),
        ),
        (
            "longconn_connection_sent_packets_total",
            Kind::Counter,
            "longconn_connection_sent_packets",
            "{packet}",
            Some("transmit"),
        ),
        (
            "longconn_connection_received_packets_total",
            Kind::Counter,
            "longconn_connection_received_packets",
            "{packet}",
            Some("receive"),
        ),
        (
            "longconn_workload_retransmits_total",
            Kind::Counter,
            "longconn_workload_retransmits",
            "{packet}",
            None,
        ),
        (
            "longconn_workload_lost_packets_total",
            Kind::Counter,
            "longconn_workload_lost_packets",
            "{packet}",
            None,
        ),
        (
            "longconn_workload_connections_opened_total",
            Kind::Counter,
            "longconn_workload_connections_opened",
            "{connection}",
            None,
        ),
        (
            "longconn_service_active_connections",
            Kind::Gauge,
            "longconn_service_active_connections",
            "{connection}",
            None,
        ),
        (
            "longconn_map_capacity_connections",
            Kind::Gauge,
            "longconn_map_capacity_connections",
            "{connection}",
            None,
        ),
        (
            "longconn_connection_srtt_seconds",
            Kind::Gauge,
            "longconn_connection_srtt_seconds",
            "s",
            None,
        ),
        (
            "longconn_reader_state_start_time_seconds",
            Kind::Gauge,
            "longconn_reader_state_start_time_seconds",
            "s",
            None,
        ),
        (
            "longconn_ringbuf_drops_total",
            Kind::Counter,
            "longconn_ringbuf_drops",
            "1",
            None,
        ),
        (
            "longconn_connection_series_omitted",
            Kind::Gauge,
            "longconn_connection_series_omitted",
            "1",
            None,
        ),
        // Only a counter's `_total` is stripped.
        (
            "longconn_odd_total",
            Kind::Gauge,
            "longconn_odd_total",
            "1",
            None,
        ),
    ];
    for &(name, kind, want_name, want_unit, want_io) in cases {
        let families = [family(name, kind, vec![sample(&[("workload", "w")], 1.0)])];
        let line = metrics_request(&families, &res(), START, NOW);
        let m = &metrics(&line)[0];
        assert_eq!(m["name"], want_name, "{name}");
        assert_eq!(m["unit"], want_unit, "{name}");
        assert_eq!(m["description"], format!("Help of {name}"), "{name}");
        match kind {
            Kind::Counter => {
                assert_eq!(m["sum"]["aggregationTemporality"], 2, "{name}");
                assert_eq!(m["sum"]["isMonotonic"], true, "{name}");
                assert!(m.get("gauge").is_none(), "{name}");
            }
            Kind::Gauge => assert!(m.get("sum").is_none(), "{name}"),
        }
        let p = &points(m)[0];
        assert_eq!(
            attr(p, "network.io.direction").and_then(|v| v["stringValue"].as_str()),
            want_io,
            "{name}"
        );
    }
}

fn conn_labels(local: &str, lport: &str, remote: &str, rport: &str) -> Vec<(&'static str, String)> {
    vec![
        ("direction", "inbound".into()),
        ("local_address", local.into()),
        ("local_port", lport.into()),
        ("remote_address", remote.into()),
        ("remote_port", rport.into()),
        ("workload", "system.slice/db.service".into()),
        ("service", "".into()),
    ]
}

fn conn_sample(labels: &[(&str, String)], value: f64) -> Sample {
    Sample {
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        value,
    }
}

#[test]
fn connection_attributes_and_start_times() {
    let v6 = conn_labels("2001:db8::1", "5432", "2001:db8::2", "43210");
    let v4 = conn_labels("10.0.0.1", "5432", "10.0.0.2", "43211");
    let mut v4_reordered = v4.clone();
    v4_reordered.reverse();
    let families = [
        family(
            "longconn_connection_received_bytes_total",
            Kind::Counter,
            vec![conn_sample(&v6, 7.0), conn_sample(&v4, 8.0)],
        ),
        family(
            CONNECTION_START,
            Kind::Gauge,
            vec![
                conn_sample(&v6, 1_763_999_000.125),
                // Label order does not matter; a start after now is clamped.
                conn_sample(&v4_reordered, 1_764_000_006.0),
            ],
        ),
        family(
            "longconn_connection_series_omitted",
            Kind::Gauge,
            vec![sample(&[], 0.0)],
        ),
        family(
            "longconn_workload_active_connections",
            Kind::Gauge,
            vec![sample(&[("workload", "w"), ("direction", "outbound")], 1.0)],
        ),
    ];
    let line = metrics_request(&families, &res(), START, NOW);
    let m = metrics(&line);
    assert_eq!(m.len(), 4);

    // Sorted by label values: inbound, 10.0.0.1 < 2001:db8::1.
    let p = points(&m[0]);
    let (p4, p6) = (&p[0], &p[1]);
    assert_eq!(p6["startTimeUnixNano"], "1763999000125000000");
    assert_eq!(p4["startTimeUnixNano"], NOW.to_string());
    for (point, net, local, lport, rport) in [
        (p6, "ipv6", "2001:db8::1", "5432", "43210"),
        (p4, "ipv4", "10.0.0.1", "5432", "43211"),
    ] {
        assert_eq!(point["timeUnixNano"], NOW.to_string());
        let want = [
            (
                "longconn.direction",
                serde_json::json!({"stringValue": "inbound"}),
            ),
            (
                "network.local.address",
                serde_json::json!({"stringValue": local}),
            ),
            ("network.local.port", serde_json::json!({"intValue": lport})),
            ("network.peer.port", serde_json::json!({"intValue": rport})),
            (
                "longconn.workload",
                serde_json::json!({"stringValue": "system.slice/db.service"}),
            ),
            ("longconn.service", serde_json::json!({"stringValue": ""})),
            (
                "network.transport",
                serde_json::json!({"stringValue": "tcp"}),
            ),
            ("network.type", serde_json::json!({"stringValue": net})),
            (
                "network.io.direction",
                serde_json::json!({"stringValue": "receive"}),
            ),
        ];
        for (key, value) in want {
            assert_eq!(attr(point, key), Some(&value), "{key}");
        }
        assert_eq!(point["attributes"].as_array().unwrap().len(), 10);
    }
    // The start-time family itself starts at each connection's start.
    assert_eq!(points(&m[1])[1]["startTimeUnixNano"], "1763999000125000000");
    // No labels to match: the group start.
    assert_eq!(points(&m[2])[0]["startTimeUnixNano"], START.to_string());
    // Group series: no network attributes.
    let g = &points(&m[3])[0];
    assert_eq!(g["startTimeUnixNano"], START.to_string());
    assert_eq!(attr(g, "network.transport"), None);
    assert_eq!(attr(g, "network.type"), None);
}

#[test]
fn bad_port_label_stays_a_string() {
    let families = [family(
        "longconn_x",
        Kind::Gauge,
        vec![sample(&[("local_port", "http")], 1.0)],
    )];
    let line = metrics_request(&families, &res(), START, NOW);
    let m = metrics(&line);
    let p = &points(&m[0])[0];
    assert_eq!(
        attr(p, "network.local.port").unwrap()["stringValue"],
        "http"
    );
}

fn record() -> OwnedEvent {
    OwnedEvent {
        report_unix_ns: 1_795_628_485_572_859_000,
        kind: EventKind::Periodic,
        cookie: 4097,
        seq: 2,
        start_unix_ns: 1_795_628_477_572_859_000,
        duration_ns: 8_000_000_000,
        direction: "outbound",
        local: Some([127, 0, 0, 1].into()),
        local_port: 43276,
        remote: Some([127, 0, 0, 1].into()),
        remote_port: 47001,
        state: "ESTAB",
        failed: false,
        total: crate::collect::Counters {
            bytes_sent: 1048578,
            bytes_received: 307201,
            packets_sent: 40,
            packets_received: 30,
            retransmits: 0,
            lost_packets: 0,
        },
        delta: crate::collect::Counters {
            bytes_sent: 1000,
            packets_sent: 1,
            ..Default::default()
        },
        srtt_us: 85,
        min_rtt_us: 12,
        names: [
            "user.slice".into(),
            "127.0.0.1:47001".into(),
            "curl".into(),
            String::new(),
            String::new(),
            String::new(),
        ],
        pid: 4242,
        cgroup_id: 77,
        netns_cookie: 0,
    }
}

/// `logs_request` of owned events.
fn logs(events: &[OwnedEvent], res: &Resource, now: u64) -> Option<String> {
    let events: Vec<_> = events.iter().map(OwnedEvent::event).collect();
    logs_request(&events, res, now)
}

/// The oracle's request for the same events.
fn logs_reference(events: &[OwnedEvent], res: &Resource, now: u64) -> Option<String> {
    let records: Vec<AccessRecord> = events
        .iter()
        .map(|e| AccessRecord::from_event(&e.event()))
        .collect();
    reference::logs_request(&records, res, now)
}

/// Golden bytes: optional fields that are empty or zero and the report
/// time (it is `timeUnixNano`) are left out; names follow the semantic
/// conventions where one exists.
#[test]
fn log_record_exact() {
    let line = logs(&[record()], &res(), NOW).unwrap();
    let want = r#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"longconn"}},{"key":"host.name","value":{"stringValue":"h1"}}]},"scopeLogs":[{"scope":{"name":"longconn-reader","version":"VERSION"},"logRecords":[{"timeUnixNano":"1795628485572859000","observedTimeUnixNano":"1764000005000000000","severityNumber":9,"severityText":"INFO","body":{"stringValue":"periodic outbound 127.0.0.1:43276 -> 127.0.0.1:47001 ESTAB for 8.0s: sent 1048578 B (+1000), received 307201 B (+0), retransmits 0, lost 0, srtt 85us"},"attributes":[{"key":"longconn.event","value":{"stringValue":"periodic"}},{"key":"longconn.cookie","value":{"intValue":"4097"}},{"key":"longconn.seq","value":{"intValue":"2"}},{"key":"longconn.start_time","value":{"stringValue":"2026-11-25T17:41:17.572859Z"}},{"key":"longconn.duration_seconds","value":{"doubleValue":8.0}},{"key":"longconn.direction","value":{"stringValue":"outbound"}},{"key":"network.local.address","value":{"stringValue":"127.0.0.1"}},{"key":"network.local.port","value":{"intValue":"43276"}},{"key":"network.peer.address","value":{"stringValue":"127.0.0.1"}},{"key":"network.peer.port","value":{"intValue":"47001"}},{"key":"longconn.state","value":{"stringValue":"ESTAB"}},{"key":"longconn.bytes_sent","value":{"intValue":"1048578"}},{"key":"longconn.bytes_received","value":{"intValue":"307201"}},{"key":"longconn.packets_sent","value":{"intValue":"40"}},{"key":"longconn.packets_received","value":{"intValue":"30"}},{"key":"longconn.retransmits","value":{"intValue":"0"}},{"key":"longconn.lost_packets","value":{"intValue":"0"}},{"key":"longconn.bytes_sent_delta","value":{"intValue":"1000"}},{"key":"longconn.packets_sent_delta","value":{"intValue":"1"}},{"key":"longconn.srtt_us","value":{"intValue":"85"}},{"key":"longconn.min_rtt_us","value":{"intValue":"12"}},{"key":"longconn.workload","value":{"stringValue":"user.slice"}},{"key":"longconn.service","value":{"stringValue":"127.0.0.1:47001"}},{"key":"process.pid","value":{"intValue":"4242"}},{"key":"process.executable.name","value":{"stringValue":"curl"}},{"key":"longconn.cgroup_id","value":{"intValue":"77"}},{"key":"network.transport","value":{"stringValue":"tcp"}},{"key":"network.type","value":{"stringValue":"ipv4"}}]}]}]}]}"#
        .replace("VERSION", env!("CARGO_PKG_VERSION"));
    assert_eq!(line, want);
}

#[test]
fn every_required_field_is_an_attribute() {
    let line = logs(&[OwnedEvent::default()], &res(), NOW).unwrap();
    let v = parse(&line);
    let r = &v["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0];
    let required: Vec<_> = all_fields()
        .into_iter()
        .filter(|f| !f.optional && f.name != "report_time")
        .collect();
    for f in &required {
        assert!(attr(r, f.otel).is_some(), "{}", f.otel);
    }
    let n = r["attributes"].as_array().unwrap().len();
    assert_eq!(n, required.len() + 2);
}

#[test]
fn no_records_no_request() {
    assert_eq!(logs(&[], &res(), NOW), None);
}

#[test]
fn log_edge_cases() {
    let mut nasty = record();
    nasty.kind = EventKind::Close;
    nasty.local = Some("2001:db8::1".parse().unwrap());
    nasty.local_port = 80;
    nasty.remote = Some("2001:db8::2".parse().unwrap());
    nasty.remote_port = 43210;
    nasty.state = "SYN-SENT";
    nasty.failed = true;
    nasty.total.bytes_sent = u64::MAX;
    nasty.cookie = i64::MAX as u64;
    nasty.names[2] = "a\"b\nc\\".into();
    let line = logs(&[record(), nasty], &res(), NOW).unwrap();
    let v = parse(&line);
    let recs = v["resourceLogs"][0]["scopeLogs"][0]["logRecords"]
        .as_array()
        .unwrap();
    assert_eq!(recs.len(), 2);
    let r = &recs[1];
    assert_eq!(
        r["body"]["stringValue"],
        "close outbound [2001:db8::1]:80 -> [2001:db8::2]:43210 SYN-SENT (connect failed) for 8.0s: sent 18446744073709551615 B (+1000), received 307201 B (+0), retransmits 0, lost 0, srtt 85us"
    );
    assert_eq!(
        attr(r, "longconn.bytes_sent").unwrap(),
        &serde_json::json!({"stringValue": "18446744073709551615"})
    );
    assert_eq!(
        attr(r, "longconn.cookie").unwrap(),
        &serde_json::json!({"intValue": "9223372036854775807"})
    );
    assert_eq!(
        attr(r, "longconn.failed").unwrap(),
        &serde_json::json!({"boolValue": true})
    );
    assert_eq!(
        attr(r, "process.executable.name").unwrap()["stringValue"],
        "a\"b\nc\\"
    );
    assert_eq!(attr(r, "network.type").unwrap()["stringValue"], "ipv6");
    assert_eq!(attr(r, "longconn.event").unwrap()["stringValue"], "close");
    assert_eq!(
        attr(&recs[0], "longconn.failed"),
        None,
        "false says nothing"
    );
}

#[test]
fn time_parsing() {
    let cases: &[(&str, u64)] = &[
        ("2026-11-25T17:41:25.572859Z", 1_795_628_485_572_859_000),
        (
            "2026-11-25T18:41:25.572859+01:00",
            1_795_628_485_572_859_000,
        ),
        ("1970-01-01T00:00:00Z", 0),
        ("1969-12-31T23:59:59Z", 0),
        ("", 0),
        ("2026-11-25 17:41:25", 0),
    ];
    for &(text, want) in cases {
        assert_eq!(rfc3339_nanos(text), want, "{text:?}");
    }
    let seconds: &[(f64, Option<u64>)] = &[
        (1_763_999_000.125, Some(1_763_999_000_125_000_000)),
        (1_763_999_000.000_4, Some(1_763_999_000_000_000_000)),
        (0.0, None),
        (-1.0, None),
        (f64::NAN, None),
        (1e30, None),
    ];
    for &(s, want) in seconds {
        assert_eq!(seconds_to_nanos(s), want, "{s}");
    }
}

/// Requests shaped like a real cycle, with every edge this module handles.
fn sample_lines() -> (Vec<String>, Vec<String>) {
    let v6 = conn_labels("2001:db8::1", "5432", "2001:db8::2", "43210");
    let v4 = conn_labels("10.0.0.1", "5432", "10.0.0.2", "43211");
    let families = vec![
        family(
            "longconn_workload_connections_opened_total",
            Kind::Counter,
            vec![
                sample(&[("workload", "a\"b\nc\\"), ("direction", "outbound")], 3.0),
                sample(&[("workload", "é"), ("direction", "inbound")], 1e300),
            ],
        ),
        family("longconn_workload_retransmits_total", Kind::Counter, vec![]),
        family(
            "longconn_connection_sent_bytes_total",
            Kind::Counter,
            vec![conn_sample(&v6, 1048577.0), conn_sample(&v4, -0.0)],
        ),
        family(
            "longconn_connection_srtt_seconds",
            Kind::Gauge,
            vec![conn_sample(&v6, 0.000085), conn_sample(&v4, f64::NAN)],
        ),
        family(
            CONNECTION_START,
            Kind::Gauge,
            vec![
                conn_sample(&v6, 1_763_999_000.125),
                conn_sample(&v4, 1_763_999_001.0),
            ],
        ),
        family(
            "longconn_connection_series_omitted",
            Kind::Gauge,
            vec![sample(&[], 0.0)],
        ),
    ];
    let metrics = vec![
        metrics_request(&families, &res(), START, NOW),
        metrics_request(&[], &res(), START, NOW),
        metrics_request(
            &families,
            &Resource {
                host_name: String::new(),
            },
            0,
            0,
        ),
    ];
    let mut nasty = record();
    nasty.local = Some("::ffff:10.0.0.1".parse().unwrap());
    nasty.total.bytes_sent = u64::MAX;
    nasty.cookie = u64::MAX;
    nasty.names[2] = "a\"b\nc\\\u{0}é".into();
    nasty.failed = true;
    let logs = vec![
        logs(&[record()], &res(), NOW).unwrap(),
        logs(&[record(), nasty, OwnedEvent::default()], &res(), NOW).unwrap(),
    ];
    (metrics, logs)
}

#[test]
fn every_line_is_one_json_object() {
    let (metrics, logs) = sample_lines();
    for line in metrics.iter().chain(&logs) {
        assert!(!line.contains('\n') && !line.contains('\r'), "{line}");
        assert!(parse(line).is_object());
    }
}

/// Runs tests/otlp_check.py with the official OTLP schema, with the
/// python LONGCONN_OTLP_PYTHON names (one with opentelemetry-proto);
/// without it the test skips, which fails under CI=true.
#[test]
fn official_schema_accepts_the_output() {
    let Some(python) = std::env::var_os("LONGCONN_OTLP_PYTHON") else {
        crate::testskip::skip(
            "official_schema_accepts_the_output",
            "LONGCONN_OTLP_PYTHON unset: name a python with opentelemetry-proto (scripts/test makes .venv-otlp and sets it)",
        );
        return;
    };
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/otlp_check.py");
    let dir = tempfile::tempdir().unwrap();
    let run = |signal: &str, name: &str, lines: &[String]| {
        let file = dir.path().join(name);
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&file, text).unwrap();
        let out = std::process::Command::new(&python)
            .arg(&script)
            .arg(signal)
            .arg(&file)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (metrics, logs) = sample_lines();
    let (code, text) = run("metrics", "otlp-metrics.jsonl", &metrics);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(text, format!("{} lines valid\n", metrics.len()));
    let (code, text) = run("logs", "otlp-logs.jsonl", &logs);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(text, format!("{} lines valid\n", logs.len()));

    // The validator itself rejects what the Collector would.
    let unknown = metrics[0].replacen("\"unit\"", "\"units\"", 1);
    let (code, text) = run("metrics", "bad.jsonl", &[metrics[1].clone(), unknown]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("bad.jsonl:2:"), "{text}");
    let (code, text) = run("logs", "swapped.jsonl", &metrics[..1]);
    assert_eq!(code, Some(1), "{text}");
    let (code, text) = run("metrics", "empty.jsonl", &[]);
    assert_eq!(code, Some(2), "{text}");
}

/// The logs request equals the serde one byte for byte, for events with
/// every awkward value, alone and in requests of several events.
#[test]
fn logs_request_equals_the_serde_reference() {
    let mut g = longconn_common::testgen::Gen::new(29);
    let mut events = vec![record(), OwnedEvent::default()];
    events.extend((0..100_000).map(|_| testdata::generated(&mut g)));
    events.extend((0..3000).map(testdata::realistic));
    let hosts = [
        res(),
        Resource {
            host_name: String::new(),
        },
        Resource {
            host_name: "h\"\u{1}é".into(),
        },
    ];
    for (i, e) in events.iter().enumerate() {
        let one = std::slice::from_ref(e);
        let host = &hosts[i % hosts.len()];
        assert_eq!(
            logs(one, host, NOW),
            logs_reference(one, host, NOW),
            "{e:?}"
        );
    }
    for (i, batch) in events.chunks(1000).enumerate() {
        let now = [NOW, 0, u64::MAX][i % 3];
        assert_eq!(logs(batch, &res(), now), logs_reference(batch, &res(), now));
    }
}

/// `one_decimal` is `{:.1}`, ties to even included.
#[test]
fn one_decimal_equals_std() {
    let mut g = longconn_common::testgen::Gen::new(31);
    let mut cases = vec![
        0.0,
        -0.0,
        0.05,
        0.15,
        0.25,
        0.35,
        0.45,
        0.95,
        1.25,
        2.5,
        0.75,
        9.95,
        99.95,
        1e-7,
        1e21,
        1e300,
        f64::MAX,
        f64::MIN_POSITIVE,
        5e-324,
        2f64.powi(117),
        2f64.powi(118),
        2f64.powi(-126),
        2f64.powi(-127),
        f64::NAN,
        f64::INFINITY,
        -f64::INFINITY,
        -1.25,
    ];
    for i in 0..500_000u64 {
        cases.push(match i % 5 {
            0 => f64::from_bits(g.next()),
            1 => (g.next() >> (i % 64)) as f64 / 1e9,
            2 => (g.next() % 100_000) as f64 / 20.0,
            3 => (g.next() % 1_000_000) as f64 / 1000.0 + 0.05,
            _ => (g.next() >> (i % 64)) as f64 * 2f64.powi((i % 140) as i32 - 70),
        });
    }
    for v in cases {
        let mut out = Vec::new();
        one_decimal(&mut out, v);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{v:.1}"),
            "bits {:#x}",
            v.to_bits()
        );
    }
}

/// Encoding cost per record of a realistic cycle, before (serde) and
/// after (by hand): `cargo test --release -p longconn-reader
/// bench_encoders -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_encoders() {
    use crate::output::access::{self, testdata};
    use std::hint::black_box;
    const N: usize = 30_000;
    let owned: Vec<OwnedEvent> = (0..N as u64).map(testdata::realistic).collect();
    let events: Vec<_> = owned.iter().map(OwnedEvent::event).collect();
    let oracle: Vec<AccessRecord> = events.iter().map(AccessRecord::from_event).collect();
    let (events, oracle, host) = (&events, &oracle, &res());
    // Before and after in turns (the machine may be shared), best of 11
    // runs each, in ns per record.
    let time = |before: &dyn Fn() -> usize, after: &dyn Fn() -> usize| {
        let run = |f: &dyn Fn() -> usize| {
            let start = std::time::Instant::now();
            black_box(f());
            start.elapsed().as_nanos() as f64 / N as f64
        };
        (0..11).fold((f64::INFINITY, f64::INFINITY), |(b, a), _| {
            (b.min(run(before)), a.min(run(after)))
        })
    };
    let chunked = |f: &dyn Fn(usize) -> usize| (0..N).step_by(1000).map(|at| f(at)).sum::<usize>();
    let rows = [
        (
            "csv",
            time(
                &|| access::encode_csv_reference(black_box(oracle)).len(),
                &|| access::encode_csv(black_box(events)).len(),
            ),
        ),
        (
            "otlp logs",
            time(
                &|| {
                    chunked(&|at| {
                        reference::logs_request(&oracle[at..at + 1000], host, NOW)
                            .map_or(0, |l| l.len())
                    })
                },
                &|| {
                    chunked(&|at| {
                        logs_request(&events[at..at + 1000], host, NOW).map_or(0, |l| l.len())
                    })
                },
            ),
        ),
    ];
    let (mut before, mut after) = (0.0, 0.0);
    for (name, (b, a)) in rows {
        println!(
            "{name:>10}: before {b:7.0} ns/record, after {a:6.0} ns/record ({:.1}x)",
            b / a
        );
        before += b;
        after += a;
    }
    println!(
        "{:>10}: before {before:7.0} ns/record, after {after:6.0} ns/record ({:.1}x)",
        "all",
        before / after
    );

    // The metrics request of a cycle at the default 1000 connection series.
    let conns: Vec<Vec<(String, String)>> = (0..1000u64)
        .map(|i| {
            let r = AccessRecord::from_event(&testdata::realistic(i).event());
            vec![
                ("direction".into(), r.direction),
                ("local_address".into(), r.local_address),
                ("local_port".into(), r.local_port.to_string()),
                ("remote_address".into(), r.remote_address),
                ("remote_port".into(), r.remote_port.to_string()),
                ("workload".into(), r.workload),
                ("service".into(), r.service),
            ]
        })
        .collect();
    let families: Vec<Family> = [
        "sent_bytes_total",
        "received_bytes_total",
        "sent_packets_total",
        "received_packets_total",
        "retransmits_total",
        "lost_packets_total",
        "srtt_seconds",
        "min_rtt_seconds",
        "start_time_seconds",
    ]
    .iter()
    .enumerate()
    .map(|(f, suffix)| Family {
        name: format!("longconn_connection_{suffix}"),
        help: format!("Help of {suffix}"),
        kind: if suffix.ends_with("_total") {
            Kind::Counter
        } else {
            Kind::Gauge
        },
        samples: conns
            .iter()
            .enumerate()
            .map(|(i, labels)| Sample {
                labels: labels.clone(),
                value: if f == 8 {
                    1_763_999_000.125 + i as f64
                } else {
                    (i * 1_234_567 % 9_999_999) as f64 / [1.0, 1e6][f / 6]
                },
            })
            .collect(),
    })
    .collect();
    let points = 9 * conns.len();
    // In turns, best of 7 each, in ms per request.
    let run = |encode: fn(&[Family], &Resource, u64, u64) -> String| {
        let start = std::time::Instant::now();
        black_box(encode(black_box(&families), host, START, NOW));
        start.elapsed().as_nanos() as f64 / 1e6
    };
    let (b, a) = (0..7).fold((f64::INFINITY, f64::INFINITY), |(b, a), _| {
        (
            b.min(run(reference::metrics_request)),
            a.min(run(metrics_request)),
        )
    });
    println!(
        "   metrics: before {b:7.1} ms/request, after {a:6.1} ms/request ({:.1}x) of {points} data points",
        b / a
    );
}

/// Families with every awkward name, label and value.
fn generated_families(g: &mut longconn_common::testgen::Gen) -> Vec<Family> {
    const NAMES: &[&str] = &[
        "longconn_workload_sent_bytes_total",
        "longconn_connection_received_packets_total",
        "longconn_connection_srtt_seconds",
        CONNECTION_START,
        "longconn_workload_connections_opened_total",
        "longconn_x_retransmits",
        "longconn_total",
        "a\"b\\c\n\u{1}é",
    ];
    const LABELS: &[&str] = &[
        "direction",
        "local_address",
        "local_port",
        "remote_address",
        "remote_port",
        "workload",
        "service",
        "x\"y",
    ];
    const VALUES: &[&str] = &[
        "10.0.0.1",
        "2001:db8::1",
        "",
        "80",
        "+80",
        "0080",
        "-1",
        "99999999999999999999",
        "9223372036854775807",
        "-9223372036854775808",
        "a\"b\nc\\\u{0}é",
        "outbound",
    ];
    let value = |g: &mut longconn_common::testgen::Gen| match g.below(6) {
        0 => f64::from_bits(g.next()),
        1 => [
            0.0,
            -0.0,
            f64::NAN,
            f64::INFINITY,
            -3.0,
            1e300,
            0.5,
            EXACT,
            EXACT - 1.0,
            -EXACT,
            1e21,
            1e-7,
        ][g.below(12)],
        2 => 1_763_999_000.0 + g.below(4) as f64 + [0.0, 0.125, 0.0004][g.below(3)],
        _ => (g.next() >> g.below(64)) as f64 / [1.0, 1e6, 3.0][g.below(3)],
    };
    // A few label sets, shared between families as in a real cycle.
    let sets: Vec<Vec<(String, String)>> = (0..1 + g.below(6))
        .map(|_| {
            (0..g.below(8))
                .map(|_| {
                    let name = if g.below(6) == 0 {
                        g.text(LABELS)
                    } else {
                        LABELS[g.below(LABELS.len())].to_owned()
                    };
                    let v = if g.below(3) == 0 {
                        g.text(VALUES)
                    } else {
                        VALUES[g.below(VALUES.len())].to_owned()
                    };
                    (name, v)
                })
                .collect()
        })
        .collect();
    (0..g.below(6))
        .map(|_| Family {
            name: if g.below(5) == 0 {
                g.text(NAMES)
            } else {
                NAMES[g.below(NAMES.len())].to_owned()
            },
            help: g.text(&["Help", "a\"b\n"]),
            kind: if g.below(2) == 0 {
                Kind::Counter
            } else {
                Kind::Gauge
            },
            samples: (0..g.below(5))
                .map(|_| {
                    let mut labels = sets[g.below(sets.len())].clone();
                    if g.below(4) == 0 {
                        labels.reverse();
                    }
                    Sample {
                        labels,
                        value: value(g),
                    }
                })
                .collect(),
        })
        .collect()
}

/// The hand-written metrics request equals the serde one byte for byte.
#[test]
fn metrics_request_equals_the_serde_reference() {
    let mut g = longconn_common::testgen::Gen::new(37);
    let hosts = [
        res(),
        Resource {
            host_name: String::new(),
        },
        Resource {
            host_name: "h\"\u{1}é".into(),
        },
    ];
    for i in 0..30_000 {
        let families = generated_families(&mut g);
        let host = &hosts[i % hosts.len()];
        let (start, now) = match i % 4 {
            0 => (START, NOW),
            1 => (NOW, START),
            2 => (0, u64::MAX),
            _ => (g.next(), g.next()),
        };
        assert_eq!(
            metrics_request(&families, host, start, now),
            reference::metrics_request(&families, host, start, now),
            "{families:?}"
        );
    }
}

#[test]
fn logs_writer_equals_logs_request_per_chunk() {
    let owned: Vec<OwnedEvent> = (0..2500).map(testdata::realistic).collect();
    let events: Vec<_> = owned.iter().map(OwnedEvent::event).collect();
    let res = res();
    for per in [1, 7, 1000] {
        let mut want = Vec::new();
        for chunk in events.chunks(per) {
            want.extend_from_slice(logs_request(chunk, &res, NOW).unwrap().as_bytes());
            want.push(b'\n');
        }
        let mut got = Vec::new();
        let mut w = LogsWriter::new(&res, NOW, per);
        for e in &events {
            w.push(&mut got, e);
        }
        w.finish(&mut got);
        assert_eq!(got, want, "{per} per line");
    }
}
