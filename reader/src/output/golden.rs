//! Golden-file tests: a fixed Snapshot, printed by each metrics encoder,
//! must give exactly the bytes checked in under `golden/`. A change to an
//! output format shows up as a diff here, reviewed like code.
//!
//! Regenerate after an intended change:
//! `LONGCONN_BLESS=1 cargo test --release -p longconn-reader golden`.

use std::net::IpAddr;

use longconn_common::layout;

use super::{
    otlp, promtext,
    snapshot::{table, Label, Reason, Snapshot, Value},
};
use crate::identity::join_key;

/// The cycle time of the fixture (Unix ns).
pub const NOW: u64 = 1_764_000_005_000_000_000;
/// The state's start: groups and the reader's own figures start here.
pub const STATE_START: u64 = 1_764_000_000_000_000_000;

pub const WORKLOAD_LABELS: [&str; 2] = ["workload", "comm"];

/// Group keys of the fixture: one plain, one whose values need escaping
/// in every format (quote, backslash, newline, the key separator, UTF-8).
pub fn workload_keys() -> [String; 2] {
    [
        join_key(["system.slice/db.service", "postgres"]),
        join_key(["/a\"b\\c\nd", "x\u{1f}y é"]),
    ]
}

/// A Snapshot with every kind of family and value: group counters and
/// gauges (one at u64::MAX), a v4 and a v6 connection with their own
/// start times, the reader's figures, a labelled gauge, and the service
/// block empty (declared in `.prom`, left out of OTLP).
pub fn fixture(keys: &[String; 2]) -> Snapshot<'_> {
    let mut s = Snapshot::default();
    for (i, key) in keys.iter().enumerate() {
        let mut labels: Vec<Label> = WORKLOAD_LABELS
            .iter()
            .enumerate()
            .map(|(index, name)| Label::Group { name, key, index })
            .collect();
        let dir = [layout::DIR_OUTBOUND, layout::DIR_INBOUND][i];
        labels.push(Label::Direction(dir));
        let series = s.add_series(labels, STATE_START);
        let w = table::WORKLOAD;
        let i = i as u64;
        s.push(w.at(table::GROUP_OPENED), series, Value::Count(12 + i));
        s.push(w.at(table::GROUP_CLOSED), series, Value::Count(10 + i));
        s.push(w.at(table::GROUP_FAILED), series, Value::Count(i));
        s.push(w.at(table::GROUP_ACTIVE), series, Value::Count(2));
        for f in 0..table::COUNTER_FIELDS {
            let v = match (i, f) {
                (1, 0) => u64::MAX,
                (0, 0) => 9_007_199_254_740_993,
                _ => 1_048_577 * (f as u64 + 1) + i,
            };
            s.push(w.at(table::GROUP_COUNTERS + f), series, Value::Count(v));
        }
    }
    let conns: [(IpAddr, u16, IpAddr, u16, u64); 2] = [
        (
            "10.0.0.1".parse().unwrap(),
            5432,
            "10.0.0.2".parse().unwrap(),
            43211,
            1_763_999_001_123_456_789,
        ),
        (
            "2001:db8::1".parse().unwrap(),
            5432,
            "2001:db8::2".parse().unwrap(),
            43210,
            1_763_999_000_125_000_000,
        ),
    ];
    for (i, (local, lport, remote, rport, start)) in conns.into_iter().enumerate() {
        let series = s.add_series(
            vec![
                Label::Direction(layout::DIR_INBOUND),
                Label::LocalAddress(local),
                Label::LocalPort(lport),
                Label::RemoteAddress(remote),
                Label::RemotePort(rport),
                Label::Netns(4_026_531_840 + i as u64),
                Label::Workload("system.slice/db.service"),
                Label::Service(""),
            ],
            start,
        );
        let c = table::CONNECTION;
        for f in 0..table::COUNTER_FIELDS {
            let v = [1_048_578, 307_201, 40, 30, 2 * i as u64, i as u64][f];
            s.push(c.at(f), series, Value::Count(v));
        }
        s.push(c.at(table::CONN_SRTT), series, Value::Real(0.000085));
        s.push(c.at(table::CONN_MIN_RTT), series, Value::Real(0.000012));
        let start_s = (start as f64 / 1e6).round() / 1e3;
        s.push(c.at(table::CONN_START), series, Value::Real(start_s));
    }
    let none = s.add_series(Vec::new(), STATE_START);
    let singles = [
        (table::LAST_SUCCESS, Value::Real(1_764_000_005.012345)),
        (table::CYCLE_DURATION, Value::Real(0.012)),
        (table::STATE_START, Value::Real(1_764_000_000.0)),
        (table::TRACKED, Value::Count(4)),
        (table::CAPACITY, Value::Count(131_072)),
        (table::RINGBUF_DROPS, Value::Count(0)),
        (table::MAP_FULL_DROPS, Value::Count(3)),
        (table::CLOSES_WITHOUT_RECORD, Value::Count(1)),
        (table::MALFORMED, Value::Count(0)),
        (table::SERIES_OMITTED, Value::Count(0)),
        (table::SATURATED_GROUPS, Value::Count(1)),
    ];
    for (m, v) in singles {
        s.push(m, none, v);
    }
    for (reason, n) in [(Reason::SocketNotFound, 1), (Reason::NetnsUnreachable, 0)] {
        let series = s.add_series(vec![Label::Reason(reason)], STATE_START);
        s.push(table::REFRESH_UNREACHABLE, series, Value::Count(n));
    }
    s.sort();
    s
}

pub fn resource() -> otlp::Resource {
    otlp::Resource {
        host_name: "h1".into(),
    }
}

/// The fixture's OTLP line, with the crate version as `VERSION` so that a
/// version bump is not a format change.
fn otlp_line(s: &Snapshot) -> String {
    let version = format!("\"version\":\"{}\"", env!("CARGO_PKG_VERSION"));
    otlp::metrics_request(s, &resource(), NOW).replace(&version, "\"version\":\"VERSION\"") + "\n"
}

/// Compares `got` with the checked-in `file`, or rewrites it under
/// LONGCONN_BLESS=1. `pretty` turns a text into lines to diff.
fn check(file: &str, want: &str, got: &str, pretty: fn(&str) -> String) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/output/golden")
        .join(file);
    if std::env::var_os("LONGCONN_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, got).unwrap();
        return;
    }
    if want == got {
        return;
    }
    let (w, g) = (pretty(want), pretty(got));
    let mut diff = String::new();
    let (wl, gl): (Vec<&str>, Vec<&str>) = (w.lines().collect(), g.lines().collect());
    for i in 0..wl.len().max(gl.len()) {
        let (a, b) = (wl.get(i), gl.get(i));
        if a != b {
            diff += &format!(
                "line {}:\n- {}\n+ {}\n",
                i + 1,
                a.unwrap_or(&""),
                b.unwrap_or(&"")
            );
        }
    }
    let at = want
        .bytes()
        .zip(got.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    panic!(
        "{} differs from the encoder's output (first difference at byte {at}; - golden, + now):\n{diff}\nIf the change is intended: LONGCONN_BLESS=1 cargo test --release -p longconn-reader golden",
        path.display()
    );
}

fn json_pretty(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| text.to_owned())
}

#[test]
fn golden_prom() {
    let keys = workload_keys();
    let got = promtext::encode(&fixture(&keys));
    check(
        "metrics.prom",
        include_str!("golden/metrics.prom"),
        &got,
        str::to_owned,
    );
}

#[test]
fn golden_otlp_metrics() {
    let keys = workload_keys();
    let got = otlp_line(&fixture(&keys));
    check(
        "otlp-metrics.json",
        include_str!("golden/otlp-metrics.json"),
        &got,
        json_pretty,
    );
}

/// promtool (when installed) accepts the golden exposition without a lint.
#[test]
fn promtool_accepts_the_golden_file() {
    let promtool = std::path::Path::new("/usr/bin/promtool");
    if !promtool.exists() {
        crate::testskip::skip(
            "promtool_accepts_the_golden_file",
            "no /usr/bin/promtool (apt-get install prometheus; scripts/test does)",
        );
        return;
    }
    let file =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/output/golden/metrics.prom");
    let out = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert_eq!(text, "");
}
