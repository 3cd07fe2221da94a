//! OTLP metrics: one ExportMetricsServiceRequest per cycle, a printer of
//! the cycle's `Snapshot`. Names, units and I/O directions come from the
//! metric table, ports and addresses from typed labels, start times from
//! each series.

use super::*;
use crate::output::snapshot::{Label, Snapshot, Value};

/// One ExportMetricsServiceRequest for the cycle, as one JSON line.
#[cfg(test)]
pub fn metrics_request(snapshot: &Snapshot, res: &Resource, now_unix_nano: u64) -> String {
    let mut out = Vec::new();
    write_metrics_request(&mut out, snapshot, res, now_unix_nano);
    utf8(out)
}

/// Appends one ExportMetricsServiceRequest for the cycle to `out`, as one
/// JSON line without its newline (straight into the file's buffer: at
/// 100k series the request is hundreds of MB).
///
/// Each point starts at its series' start (a connection's start, or the
/// state's for groups and the reader's own figures), never after
/// `now_unix_nano`. Families without a representable point are left out.
///
/// Written by hand, byte for byte as serde_json writes the request
/// `reference::metrics_request` builds.
pub fn write_metrics_request(
    out: &mut Vec<u8>,
    snapshot: &Snapshot,
    res: &Resource,
    now_unix_nano: u64,
) {
    let mut now = Vec::with_capacity(20);
    jsonw::u64(&mut now, now_unix_nano);
    let mut buf = String::new();

    let points: usize = snapshot.families().map(|(_, p)| p.len()).sum();
    // A point with a connection's labels is about 700 bytes.
    out.reserve(512 + 800 * points);
    request_start(out, "Metrics", res);
    let mut first_metric = true;
    for (desc, points) in snapshot.families() {
        // Written in place, taken back if no point is representable.
        let metric_start = out.len();
        if !first_metric {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"name":""#);
        jsonw::str_contents(out, desc.otel_name);
        out.extend_from_slice(br#"","description":""#);
        jsonw::str_contents(out, desc.help);
        out.extend_from_slice(br#"","unit":""#);
        jsonw::str_contents(out, desc.unit.ucum());
        out.extend_from_slice(match desc.kind {
            Kind::Gauge => br#"","gauge":{"dataPoints":["#.as_slice(),
            Kind::Counter => br#"","sum":{"dataPoints":["#,
        });
        let mut any_point = false;
        for point in points {
            if matches!(point.value, Value::Real(v) if !v.is_finite()) {
                continue;
            }
            if any_point {
                out.push(b',');
            }
            any_point = true;
            let series = snapshot.series(point.series);
            out.extend_from_slice(br#"{"startTimeUnixNano":""#);
            jsonw::u64(out, series.start_unix_ns.min(now_unix_nano));
            out.extend_from_slice(br#"","timeUnixNano":""#);
            out.extend_from_slice(&now);
            match as_int(point.value) {
                Some(v) => {
                    out.extend_from_slice(br#"","asInt":""#);
                    int(out, v);
                    out.extend_from_slice(br#"","attributes":["#);
                }
                None => {
                    out.extend_from_slice(br#"","asDouble":"#);
                    jsonw::f64(out, as_double(point.value));
                    out.extend_from_slice(br#","attributes":["#);
                }
            }
            point_attributes(out, &series.labels, desc.io, &mut buf);
            out.extend_from_slice(b"]}");
        }
        if !any_point {
            out.truncate(metric_start);
            continue;
        }
        first_metric = false;
        out.extend_from_slice(match desc.kind {
            Kind::Gauge => b"]}}".as_slice(),
            // CUMULATIVE, monotonic.
            Kind::Counter => br#"],"aggregationTemporality":2,"isMonotonic":true}}"#,
        });
    }
    out.extend_from_slice(b"]}]}]}");
}

/// `asInt` for counts within int64 and exact integral floats below 2^53;
/// None means `asDouble`.
pub(super) fn as_int(v: Value) -> Option<i64> {
    match v {
        Value::Count(n) => i64::try_from(n).ok(),
        // -0.0 becomes 0.
        Value::Real(v) => (v.fract() == 0.0 && v.abs() < EXACT).then_some(v as i64),
    }
}

pub(super) fn as_double(v: Value) -> f64 {
    match v {
        Value::Count(n) => n as f64,
        Value::Real(v) => v,
    }
}

/// A data point's attributes: one per label (ports as `intValue`), the
/// network attributes when the series has an address, and the family's
/// I/O direction.
fn point_attributes(out: &mut Vec<u8>, labels: &[Label], io: Option<Io>, buf: &mut String) {
    for (i, label) in labels.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"key":""#);
        let (key, name_part) = label.otel_key();
        jsonw::str_contents(out, key);
        jsonw::str_contents(out, name_part);
        match label.port() {
            Some(port) => {
                out.extend_from_slice(br#"","value":{"intValue":""#);
                jsonw::u64(out, port.into());
            }
            None => {
                out.extend_from_slice(br#"","value":{"stringValue":""#);
                jsonw::str_contents(out, label.text(buf));
            }
        }
        out.extend_from_slice(br#""}}"#);
    }
    let mut comma = !labels.is_empty();
    let mut add = |out: &mut Vec<u8>, start: &[u8], value: &str| {
        text_attr(out, if comma { start } else { &start[1..] }, value);
        comma = true;
    };
    if let Some(address) = labels.iter().find_map(Label::address) {
        add(out, attr!("network.transport"), "tcp");
        add(out, attr!("network.type"), ip_type(address));
    }
    if let Some(io) = io {
        add(out, attr!("network.io.direction"), io.name());
    }
}

/// OTel `network.type` of an address.
pub(super) fn ip_type(address: std::net::IpAddr) -> &'static str {
    if address.is_ipv6() {
        "ipv6"
    } else {
        "ipv4"
    }
}
