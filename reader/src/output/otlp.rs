//! One collect cycle as OpenTelemetry OTLP/JSON, for the Collector's
//! `otlpjsonfile` receiver: a file source any OTLP backend can be fed from,
//! without a daemon or a network client in the reader.
//!
//! Encoding is the protobuf JSON mapping of `ExportMetricsServiceRequest` and
//! `ExportLogsServiceRequest`: lowerCamelCase field names, 64-bit integers
//! (`timeUnixNano`, `startTimeUnixNano`, `observedTimeUnixNano`, `asInt`,
//! `intValue`) as decimal strings, enums as integers.
//!
//! Invariants:
//! - Every request parses with the official schema and no unknown field
//!   (`tests/otlp_check.py` checks that with opentelemetry-proto).
//! - A returned request is one line: it holds no newline (the caller appends
//!   "\n"), and the output depends only on the arguments (metrics in family
//!   order, data points sorted by label values).
//! - Nothing the Collector would drop or refuse is written: no metric without
//!   data points, no NaN or infinite value (JSON cannot hold them), no
//!   `intValue` outside int64 (such a value is written as its decimal
//!   `stringValue` instead), no logs request without log records.
//! - Time fields come first in each data point and log record, so the
//!   cycle's time is within the first few hundred bytes of a line: a file that
//!   starts anew after rotation never looks like the previous one to the
//!   Collector's file consumer, which tells files apart by their first bytes.
//! - `startTimeUnixNano` never exceeds `timeUnixNano`.

use super::{
    access::AccessRecord,
    jsonw,
    promtext::{Family, Kind, Sample},
};

/// Who produced the data; `service.name` is always "longconn".
pub struct Resource {
    pub host_name: String,
}

const SERVICE_NAME: &str = "longconn";
const SCOPE_NAME: &str = "longconn-reader";
const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Families whose series belong to one connection.
const CONNECTION_PREFIX: &str = "longconn_connection_";
/// The family giving each connection's start time, in Unix seconds.
const CONNECTION_START: &str = "longconn_connection_start_time_seconds";
/// `AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE`.
const CUMULATIVE: i32 = 2;
/// `SeverityNumber.SEVERITY_NUMBER_INFO`.
const SEVERITY_INFO: i32 = 9;
/// Integral values below this magnitude are exact in an f64 and fit an int64.
const EXACT: f64 = (1u64 << 53) as f64;

/// The OTel attribute key of a Prometheus label or access-record field, in
/// two parts to write one after the other: a fixed key, or "longconn." and
/// the name.
fn attribute_key_parts(name: &str) -> (&'static str, &str) {
    match name {
        "local_address" => ("network.local.address", ""),
        "local_port" => ("network.local.port", ""),
        "remote_address" => ("network.peer.address", ""),
        "remote_port" => ("network.peer.port", ""),
        other => ("longconn.", other),
    }
}

/// The OTel attribute key of a Prometheus label or access-record field, as
/// the serde-based reference encoders build it.
#[cfg(test)]
fn attribute_key(name: &str) -> String {
    match name {
        "local_address" => "network.local.address".to_owned(),
        "local_port" => "network.local.port".to_owned(),
        "remote_address" => "network.peer.address".to_owned(),
        "remote_port" => "network.peer.port".to_owned(),
        other => format!("longconn.{other}"),
    }
}

fn is_port(name: &str) -> bool {
    matches!(name, "local_port" | "remote_port")
}

fn is_address(name: &str) -> bool {
    matches!(name, "local_address" | "remote_address")
}

fn network_type(address: &str) -> &'static str {
    if address.contains(':') {
        "ipv6"
    } else {
        "ipv4"
    }
}

/// The OTel metric name: counters lose the Prometheus `_total` suffix.
fn metric_name(family: &Family) -> &str {
    match family.kind {
        Kind::Counter => family.name.strip_suffix("_total").unwrap_or(&family.name),
        Kind::Gauge => &family.name,
    }
}

/// UCUM unit (or `{annotation}` for counts of things) from the name.
fn unit(name: &str) -> &'static str {
    if name.contains("_bytes") {
        "By"
    } else if name.ends_with("_seconds") {
        "s"
    } else if name.contains("connections") {
        "{connection}"
    } else if name.contains("_packets") || name.contains("retransmits") {
        "{packet}"
    } else {
        "1"
    }
}

/// The semantic-convention byte/packet direction a family's name implies.
fn io_direction(name: &str) -> Option<&'static str> {
    if name.contains("sent_") {
        Some("transmit")
    } else if name.contains("received_") {
        Some("receive")
    } else {
        None
    }
}

/// Unix seconds (rounded to the millisecond `metrics.rs` keeps) as nanos;
/// None for values that are not a time after 1970.
fn seconds_to_nanos(seconds: f64) -> Option<u64> {
    if !(seconds.is_finite() && seconds > 0.0) {
        return None;
    }
    // Saturating cast, then checked: far-future values are not times either.
    ((seconds * 1e3).round() as u64).checked_mul(1_000_000)
}

fn label_values(sample: &Sample) -> impl Iterator<Item = &str> {
    sample.labels.iter().map(|(_, v)| v.as_str())
}

/// A label set independent of label order.
fn label_key(labels: &[(String, String)]) -> Vec<(&str, &str)> {
    let mut key: Vec<(&str, &str)> = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    key.sort_unstable();
    key
}

/// The start of an attribute, up to the value's type name:
/// `,{"key":"K","value":{"`.
macro_rules! attr {
    ($key:literal) => {
        concat!(r#",{"key":""#, $key, r#"","value":{""#).as_bytes()
    };
}

/// A `stringValue` attribute; `start` is from `attr!`.
fn text_attr(out: &mut Vec<u8>, start: &[u8], value: &str) {
    out.extend_from_slice(start);
    out.extend_from_slice(br#"stringValue":""#);
    jsonw::str_contents(out, value);
    out.extend_from_slice(br#""}}"#);
}

/// An `intValue` attribute, or the decimal `stringValue` beyond int64.
fn uint_attr(out: &mut Vec<u8>, start: &[u8], value: u64) {
    out.extend_from_slice(start);
    out.extend_from_slice(if i64::try_from(value).is_ok() {
        br#"intValue":""#
    } else {
        br#"stringValue":""#
    });
    jsonw::u64(out, value);
    out.extend_from_slice(br#""}}"#);
}

/// One ExportMetricsServiceRequest for the cycle, as one JSON line.
///
/// `group_start_unix_nano` is the start time of every workload, service and
/// self series: the reader state's creation time (a state reset gives a new
/// one, which tells consumers the cumulative sums restarted). Per-connection
/// series (families named `longconn_connection_*`) start at their
/// connection's start time, taken from the `longconn_connection_start_time_seconds`
/// sample with the same labels; a series without one uses the group start.
/// Families without a representable sample are left out.
///
/// Written by hand, byte for byte as serde_json writes the request
/// `reference::metrics_request` builds.
pub fn metrics_request(
    families: &[Family],
    res: &Resource,
    group_start_unix_nano: u64,
    now_unix_nano: u64,
) -> String {
    let connection_starts: std::collections::HashMap<Vec<(&str, &str)>, u64> = families
        .iter()
        .filter(|f| f.name == CONNECTION_START)
        .flat_map(|f| f.samples.iter())
        .filter_map(|s| Some((label_key(&s.labels), seconds_to_nanos(s.value)?)))
        .collect();
    let mut now = Vec::with_capacity(20);
    jsonw::u64(&mut now, now_unix_nano);

    let points: usize = families.iter().map(|f| f.samples.len()).sum();
    // A point with a connection's labels is about 700 bytes.
    let mut out = Vec::with_capacity(512 + 800 * points);
    request_start(&mut out, "Metrics", res);
    let mut first_metric = true;
    for family in families {
        let per_connection = family.name.starts_with(CONNECTION_PREFIX);
        let io = io_direction(&family.name);
        let mut samples: Vec<&Sample> = family.samples.iter().collect();
        samples.sort_by(|a, b| label_values(a).cmp(label_values(b)));

        // Written in place, taken back if no sample is representable.
        let metric_start = out.len();
        if !first_metric {
            out.push(b',');
        }
        let name = metric_name(family);
        out.extend_from_slice(br#"{"name":""#);
        jsonw::str_contents(&mut out, name);
        out.extend_from_slice(br#"","description":""#);
        jsonw::str_contents(&mut out, &family.help);
        out.extend_from_slice(br#"","unit":""#);
        jsonw::str_contents(&mut out, unit(name));
        out.extend_from_slice(match family.kind {
            Kind::Gauge => br#"","gauge":{"dataPoints":["#.as_slice(),
            Kind::Counter => br#"","sum":{"dataPoints":["#,
        });
        let mut any_point = false;
        for sample in samples {
            let v = sample.value;
            if !v.is_finite() {
                continue;
            }
            if any_point {
                out.push(b',');
            }
            any_point = true;
            let start = per_connection
                .then(|| connection_starts.get(&label_key(&sample.labels)).copied())
                .flatten()
                .unwrap_or(group_start_unix_nano)
                .min(now_unix_nano);
            out.extend_from_slice(br#"{"startTimeUnixNano":""#);
            jsonw::u64(&mut out, start);
            out.extend_from_slice(br#"","timeUnixNano":""#);
            out.extend_from_slice(&now);
            if v.fract() == 0.0 && v.abs() < EXACT {
                // `"asInt"` for exact integers; -0.0 prints as 0.
                out.extend_from_slice(br#"","asInt":""#);
                int(&mut out, v as i64);
                out.extend_from_slice(br#"","attributes":["#);
            } else {
                out.extend_from_slice(br#"","asDouble":"#);
                jsonw::f64(&mut out, v);
                out.extend_from_slice(br#","attributes":["#);
            }
            point_attributes(&mut out, &sample.labels, io);
            out.extend_from_slice(b"]}");
        }
        if !any_point {
            out.truncate(metric_start);
            continue;
        }
        first_metric = false;
        out.extend_from_slice(match family.kind {
            Kind::Gauge => b"]}}".as_slice(),
            // CUMULATIVE, monotonic.
            Kind::Counter => br#"],"aggregationTemporality":2,"isMonotonic":true}}"#,
        });
    }
    out.extend_from_slice(b"]}]}]}");
    utf8(out)
}

const _: () = assert!(CUMULATIVE == 2 && SEVERITY_INFO == 9);

/// The start of a request up to its list of metrics or log records:
/// `kind` is "Metrics" or "Logs".
fn request_start(out: &mut Vec<u8>, kind: &str, res: &Resource) {
    out.extend_from_slice(br#"{"resource"#);
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(br#"":[{"resource":{"attributes":["#);
    text_attr(out, &attr!("service.name")[1..], SERVICE_NAME);
    text_attr(out, attr!("host.name"), &res.host_name);
    out.extend_from_slice(br#"]},"scope"#);
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(br#"":[{"scope":{"name":""#);
    jsonw::str_contents(out, SCOPE_NAME);
    out.extend_from_slice(br#"","version":""#);
    jsonw::str_contents(out, SCOPE_VERSION);
    out.extend_from_slice(br#""},""#);
    out.extend_from_slice(if kind == "Logs" {
        b"logRecords".as_slice()
    } else {
        b"metrics"
    });
    out.extend_from_slice(br#"":["#);
}

/// The request as a String: the encoders write only the bytes of `&str`s
/// and ASCII.
fn utf8(out: Vec<u8>) -> String {
    match String::from_utf8(out) {
        Ok(line) => line,
        Err(e) => unreachable!("an OTLP request is not UTF-8: {e}"),
    }
}

/// Appends `v` in decimal.
fn int(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    jsonw::u64(out, v.unsigned_abs());
}

/// A data point's attributes: one per label (ports that parse as integers
/// as `intValue`), network attributes when an address label is set, and the
/// I/O direction the family's name implies.
fn point_attributes(out: &mut Vec<u8>, labels: &[(String, String)], io: Option<&'static str>) {
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"key":""#);
        let (key, name_part) = attribute_key_parts(name);
        jsonw::str_contents(out, key);
        jsonw::str_contents(out, name_part);
        match (is_port(name), value.parse::<i64>()) {
            (true, Ok(port)) => {
                out.extend_from_slice(br#"","value":{"intValue":""#);
                int(out, port);
            }
            _ => {
                out.extend_from_slice(br#"","value":{"stringValue":""#);
                jsonw::str_contents(out, value);
            }
        }
        out.extend_from_slice(br#""}}"#);
    }
    let mut comma = !labels.is_empty();
    let mut add = |out: &mut Vec<u8>, start: &[u8], value: &str| {
        text_attr(out, if comma { start } else { &start[1..] }, value);
        comma = true;
    };
    let address = labels
        .iter()
        .find(|(name, value)| is_address(name) && !value.is_empty());
    if let Some((_, address)) = address {
        add(out, attr!("network.transport"), "tcp");
        add(out, attr!("network.type"), network_type(address));
    }
    if let Some(io) = io {
        add(out, attr!("network.io.direction"), io);
    }
}

/// RFC 3339 as Unix nanos; 0 ("unknown" in OTLP) when it does not parse or
/// is before 1970.
fn rfc3339_nanos(text: &str) -> u64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0)
}

/// One ExportLogsServiceRequest with one LogRecord per access record, as one
/// JSON line; None when there are no records (a request without log records
/// is not written).
///
/// Written by hand, byte for byte as serde_json writes the request
/// `reference::logs_request` builds: this runs once per access record, up to
/// 100 000 times per cycle.
#[cfg(test)]
pub fn logs_request(
    records: &[AccessRecord],
    res: &Resource,
    now_unix_nano: u64,
) -> Option<String> {
    if records.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(
        super::access::estimate(records, LOG_RECORD_FIXED) + 300 + res.host_name.len(),
    );
    request_start(&mut out, "Logs", res);
    let mut observed = Vec::with_capacity(20);
    jsonw::u64(&mut observed, now_unix_nano);
    // Records of one cycle share their report time: parse each text once.
    let mut last_time: Option<(&str, u64)> = None;
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let time = match last_time {
            Some((text, nanos)) if text == r.report_time => nanos,
            _ => {
                let nanos = rfc3339_nanos(&r.report_time);
                last_time = Some((&r.report_time, nanos));
                nanos
            }
        };
        log_record(&mut out, r, time, &observed);
    }
    out.extend_from_slice(b"]}]}]}");
    Some(utf8(out))
}

/// `logs_request` streamed: the same lines, byte for byte, for records
/// handed over one at a time, a new line every `per_line` records.
pub struct LogsWriter<'a> {
    res: &'a Resource,
    observed: Vec<u8>,
    per_line: usize,
    in_line: usize,
    /// The last report time parsed, as text and Unix nanos.
    time: Option<(String, u64)>,
}

impl<'a> LogsWriter<'a> {
    pub fn new(res: &'a Resource, now_unix_nano: u64, per_line: usize) -> Self {
        let mut observed = Vec::with_capacity(20);
        jsonw::u64(&mut observed, now_unix_nano);
        Self {
            res,
            observed,
            per_line: per_line.max(1),
            in_line: 0,
            time: None,
        }
    }

    /// Appends `r`'s log record to `out` (opening, closing lines as needed).
    pub fn push(&mut self, out: &mut Vec<u8>, r: &AccessRecord) {
        if self.in_line == 0 {
            request_start(out, "Logs", self.res);
        } else {
            out.push(b',');
        }
        let time = match &self.time {
            Some((text, nanos)) if *text == r.report_time => *nanos,
            _ => {
                let nanos = rfc3339_nanos(&r.report_time);
                self.time = Some((r.report_time.clone(), nanos));
                nanos
            }
        };
        log_record(out, r, time, &self.observed);
        self.in_line += 1;
        if self.in_line == self.per_line {
            self.finish(out);
        }
    }

    /// Closes the open line, if any.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.in_line > 0 {
            out.extend_from_slice(b"]}]}]}\n");
            self.in_line = 0;
        }
    }
}

/// Bytes of a log record outside the record's strings (written once in the
/// body and once as attributes), numbers at typical lengths.
#[cfg(test)]
const LOG_RECORD_FIXED: usize = 2700;

/// One LogRecord: times, severity, the sentence as body, then every field
/// of the record as an attribute (`CSV_COLUMNS` order, keys from
/// `attribute_key`), then `network.transport` and `network.type`.
fn log_record(out: &mut Vec<u8>, r: &AccessRecord, time_unix_nano: u64, observed: &[u8]) {
    // Every field by name, so a field added to the struct does not compile
    // until it is exported here too.
    let AccessRecord {
        report_time,
        event,
        cookie,
        seq,
        start_time,
        duration_seconds,
        direction,
        local_address,
        local_port,
        remote_address,
        remote_port,
        state,
        failed,
        bytes_sent,
        bytes_received,
        packets_sent,
        packets_received,
        retransmits,
        lost_packets,
        bytes_sent_delta,
        bytes_received_delta,
        packets_sent_delta,
        packets_received_delta,
        retransmits_delta,
        lost_packets_delta,
        srtt_us,
        min_rtt_us,
        workload,
        service,
        pid,
        comm,
        cgroup_id,
        container_id,
        pod_uid,
        netns_cookie,
        service_namespace,
    } = r;
    out.extend_from_slice(br#"{"timeUnixNano":""#);
    jsonw::u64(out, time_unix_nano);
    out.extend_from_slice(br#"","observedTimeUnixNano":""#);
    out.extend_from_slice(observed);
    out.extend_from_slice(br#"","severityNumber":"#);
    jsonw::u64(out, SEVERITY_INFO as u64);
    out.extend_from_slice(br#","severityText":"INFO","body":{"stringValue":""#);
    sentence_into(out, r);
    out.extend_from_slice(br#""},"attributes":["#);

    // The first attribute has no leading comma.
    text_attr(out, &attr!("longconn.report_time")[1..], report_time);
    text_attr(out, attr!("longconn.event"), event);
    uint_attr(out, attr!("longconn.cookie"), *cookie);
    uint_attr(out, attr!("longconn.seq"), *seq);
    text_attr(out, attr!("longconn.start_time"), start_time);
    if duration_seconds.is_finite() {
        out.extend_from_slice(attr!("longconn.duration_seconds"));
        out.extend_from_slice(br#"doubleValue":"#);
        jsonw::f64(out, *duration_seconds);
        out.extend_from_slice(b"}}");
    }
    text_attr(out, attr!("longconn.direction"), direction);
    text_attr(out, attr!("network.local.address"), local_address);
    uint_attr(out, attr!("network.local.port"), (*local_port).into());
    text_attr(out, attr!("network.peer.address"), remote_address);
    uint_attr(out, attr!("network.peer.port"), (*remote_port).into());
    text_attr(out, attr!("longconn.state"), state);
    out.extend_from_slice(attr!("longconn.failed"));
    out.extend_from_slice(if *failed {
        br#"boolValue":true}}"#.as_slice()
    } else {
        br#"boolValue":false}}"#.as_slice()
    });
    uint_attr(out, attr!("longconn.bytes_sent"), *bytes_sent);
    uint_attr(out, attr!("longconn.bytes_received"), *bytes_received);
    uint_attr(out, attr!("longconn.packets_sent"), *packets_sent);
    uint_attr(out, attr!("longconn.packets_received"), *packets_received);
    uint_attr(out, attr!("longconn.retransmits"), *retransmits);
    uint_attr(out, attr!("longconn.lost_packets"), *lost_packets);
    uint_attr(out, attr!("longconn.bytes_sent_delta"), *bytes_sent_delta);
    uint_attr(
        out,
        attr!("longconn.bytes_received_delta"),
        *bytes_received_delta,
    );
    uint_attr(
        out,
        attr!("longconn.packets_sent_delta"),
        *packets_sent_delta,
    );
    uint_attr(
        out,
        attr!("longconn.packets_received_delta"),
        *packets_received_delta,
    );
    uint_attr(out, attr!("longconn.retransmits_delta"), *retransmits_delta);
    uint_attr(
        out,
        attr!("longconn.lost_packets_delta"),
        *lost_packets_delta,
    );
    uint_attr(out, attr!("longconn.srtt_us"), (*srtt_us).into());
    uint_attr(out, attr!("longconn.min_rtt_us"), (*min_rtt_us).into());
    text_attr(out, attr!("longconn.workload"), workload);
    text_attr(out, attr!("longconn.service"), service);
    uint_attr(out, attr!("longconn.pid"), (*pid).into());
    text_attr(out, attr!("longconn.comm"), comm);
    uint_attr(out, attr!("longconn.cgroup_id"), *cgroup_id);
    text_attr(out, attr!("longconn.container_id"), container_id);
    text_attr(out, attr!("longconn.pod_uid"), pod_uid);
    uint_attr(out, attr!("longconn.netns_cookie"), *netns_cookie);
    text_attr(out, attr!("longconn.service_namespace"), service_namespace);

    text_attr(out, attr!("network.transport"), "tcp");
    let address = [local_address, remote_address]
        .into_iter()
        .find(|a| !a.is_empty());
    if let Some(address) = address {
        text_attr(out, attr!("network.type"), network_type(address));
    }
    out.extend_from_slice(b"]}");
}

/// The log body, escaped for a JSON string: the record as one sentence
/// (what `sentence` formats).
fn sentence_into(out: &mut Vec<u8>, r: &AccessRecord) {
    let text = jsonw::str_contents;
    let endpoint = |out: &mut Vec<u8>, address: &str, port: u16| {
        if address.contains(':') {
            out.push(b'[');
            text(out, address);
            out.extend_from_slice(b"]:");
        } else {
            text(out, address);
            out.push(b':');
        }
        jsonw::u64(out, port.into());
    };
    text(out, &r.event);
    out.push(b' ');
    text(out, &r.direction);
    out.push(b' ');
    endpoint(out, &r.local_address, r.local_port);
    out.extend_from_slice(b" -> ");
    endpoint(out, &r.remote_address, r.remote_port);
    out.push(b' ');
    text(out, &r.state);
    if r.failed {
        out.extend_from_slice(b" (connect failed)");
    }
    out.extend_from_slice(b" for ");
    one_decimal(out, r.duration_seconds);
    out.extend_from_slice(b"s: sent ");
    jsonw::u64(out, r.bytes_sent);
    out.extend_from_slice(b" B (+");
    jsonw::u64(out, r.bytes_sent_delta);
    out.extend_from_slice(b"), received ");
    jsonw::u64(out, r.bytes_received);
    out.extend_from_slice(b" B (+");
    jsonw::u64(out, r.bytes_received_delta);
    out.extend_from_slice(b"), retransmits ");
    jsonw::u64(out, r.retransmits);
    out.extend_from_slice(b", lost ");
    jsonw::u64(out, r.lost_packets);
    out.extend_from_slice(b", srtt ");
    jsonw::u64(out, r.srtt_us.into());
    out.extend_from_slice(b"us");
}

/// `v` as `format!("{v:.1}")` writes it: the exact value rounded to one
/// decimal, ties to even. Non-negative values with a binary exponent in
/// reach are done in integers; others (negative, NaN, infinite) by std.
fn one_decimal(out: &mut Vec<u8>, v: f64) {
    const FRACTION_BITS: u32 = 52;
    let bits = v.to_bits();
    let biased = ((bits >> FRACTION_BITS) & 0x7ff) as i32;
    if v.is_sign_negative() || biased == 0x7ff || biased == 0 {
        // Negative, NaN, infinite, zero or subnormal.
        if v == 0.0 && !v.is_sign_negative() {
            out.extend_from_slice(b"0.0");
        } else if let Err(e) = std::io::Write::write_fmt(out, format_args!("{v:.1}")) {
            unreachable!("writing to a Vec failed: {e}");
        }
        return;
    }
    // v = mantissa * 2^exponent exactly.
    let mantissa = u128::from((bits & ((1 << FRACTION_BITS) - 1)) | (1 << FRACTION_BITS));
    let exponent = biased - 1075;
    let tenths = if exponent >= 0 {
        if exponent > 64 {
            // Beyond u128 (v > 2^117): rare, left to std.
            if let Err(e) = std::io::Write::write_fmt(out, format_args!("{v:.1}")) {
                unreachable!("writing to a Vec failed: {e}");
            }
            return;
        }
        (mantissa << exponent) * 10
    } else {
        // 10v = 10 * mantissa / 2^shift, rounded half to even.
        let shift = -exponent as u32;
        let scaled = mantissa * 10;
        if shift >= 127 {
            0
        } else {
            let q = scaled >> shift;
            let r = scaled & ((1u128 << shift) - 1);
            let half = 1u128 << (shift - 1);
            if r > half || (r == half && q & 1 == 1) {
                q + 1
            } else {
                q
            }
        }
    };
    let whole = tenths / 10;
    let tenth = (tenths % 10) as u8;
    match u64::try_from(whole) {
        Ok(whole) => jsonw::u64(out, whole),
        Err(_) => {
            if let Err(e) = std::io::Write::write_fmt(out, format_args!("{whole}")) {
                unreachable!("writing to a Vec failed: {e}");
            }
        }
    }
    out.push(b'.');
    out.push(b'0' + tenth);
}

/// The serde-based encoders the hand-written ones must equal byte for byte
/// (the previous implementation, kept for the property tests).
#[cfg(test)]
mod reference {
    use serde::Serialize;

    use super::*;

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct MetricsRequest {
        resource_metrics: [ResourceMetrics; 1],
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct ResourceMetrics {
        resource: ResourceJson,
        scope_metrics: [ScopeMetrics; 1],
    }

    #[derive(Serialize)]
    struct ResourceJson {
        attributes: Vec<KeyValue>,
    }

    #[derive(Serialize)]
    struct Scope {
        name: &'static str,
        version: &'static str,
    }

    const SCOPE: Scope = Scope {
        name: SCOPE_NAME,
        version: SCOPE_VERSION,
    };

    #[derive(Serialize)]
    struct ScopeMetrics {
        scope: Scope,
        metrics: Vec<Metric>,
    }

    #[derive(Serialize)]
    struct Metric {
        name: String,
        description: String,
        unit: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        gauge: Option<Gauge>,
        #[serde(skip_serializing_if = "Option::is_none")]
        sum: Option<Sum>,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Gauge {
        data_points: Vec<NumberDataPoint>,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Sum {
        data_points: Vec<NumberDataPoint>,
        aggregation_temporality: i32,
        is_monotonic: bool,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct NumberDataPoint {
        start_time_unix_nano: String,
        time_unix_nano: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        as_int: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        as_double: Option<f64>,
        attributes: Vec<KeyValue>,
    }

    #[derive(Serialize)]
    pub(super) struct KeyValue {
        key: String,
        value: AnyValue,
    }

    #[derive(Serialize)]
    enum AnyValue {
        #[serde(rename = "stringValue")]
        String(String),
        /// Decimal int64.
        #[serde(rename = "intValue")]
        Int(String),
        /// Finite only.
        #[serde(rename = "doubleValue")]
        Double(f64),
        #[serde(rename = "boolValue")]
        Bool(bool),
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct LogsRequest {
        resource_logs: [ResourceLogs; 1],
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct ResourceLogs {
        resource: ResourceJson,
        scope_logs: [ScopeLogs; 1],
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct ScopeLogs {
        scope: Scope,
        log_records: Vec<LogRecord>,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct LogRecord {
        time_unix_nano: String,
        observed_time_unix_nano: String,
        severity_number: i32,
        severity_text: &'static str,
        body: AnyValue,
        attributes: Vec<KeyValue>,
    }

    fn kv(key: impl Into<String>, value: AnyValue) -> KeyValue {
        KeyValue {
            key: key.into(),
            value,
        }
    }

    fn string(s: &str) -> AnyValue {
        AnyValue::String(s.to_owned())
    }

    fn resource(res: &Resource) -> ResourceJson {
        ResourceJson {
            attributes: vec![
                kv("service.name", string(SERVICE_NAME)),
                kv("host.name", string(&res.host_name)),
            ],
        }
    }

    /// Serializes a request built only of strings, integers, bools and finite
    /// f64s: serde_json has no error for these, so an error is a bug here.
    pub(super) fn to_line<T: Serialize>(request: &T) -> String {
        match serde_json::to_string(request) {
            Ok(line) => line,
            Err(e) => unreachable!("encoding an OTLP request failed: {e}"),
        }
    }

    fn point_attributes(labels: &[(String, String)], io: Option<&'static str>) -> Vec<KeyValue> {
        let mut out: Vec<KeyValue> = labels
            .iter()
            .map(|(name, value)| {
                let v = match (is_port(name), value.parse::<i64>()) {
                    (true, Ok(port)) => AnyValue::Int(port.to_string()),
                    _ => string(value),
                };
                kv(attribute_key(name), v)
            })
            .collect();
        let address = labels
            .iter()
            .find(|(name, value)| is_address(name) && !value.is_empty());
        if let Some((_, address)) = address {
            out.push(kv("network.transport", string("tcp")));
            out.push(kv("network.type", string(network_type(address))));
        }
        if let Some(io) = io {
            out.push(kv("network.io.direction", string(io)));
        }
        out
    }

    /// `"asInt"` for exact integers, `"asDouble"` for other finite values, None
    /// (skip the point) for NaN and infinities.
    fn point_value(v: f64) -> Option<(Option<String>, Option<f64>)> {
        if !v.is_finite() {
            None
        } else if v.fract() == 0.0 && v.abs() < EXACT {
            // -0.0 prints as 0.
            Some((Some((v as i64).to_string()), None))
        } else {
            Some((None, Some(v)))
        }
    }

    /// The serde-driven `metrics_request` the hand-written one must equal.
    pub(super) fn metrics_request(
        families: &[Family],
        res: &Resource,
        group_start_unix_nano: u64,
        now_unix_nano: u64,
    ) -> String {
        let connection_starts: std::collections::HashMap<Vec<(&str, &str)>, u64> = families
            .iter()
            .filter(|f| f.name == CONNECTION_START)
            .flat_map(|f| f.samples.iter())
            .filter_map(|s| Some((label_key(&s.labels), seconds_to_nanos(s.value)?)))
            .collect();
        let now = now_unix_nano.to_string();

        let mut metrics = Vec::new();
        for family in families {
            let per_connection = family.name.starts_with(CONNECTION_PREFIX);
            let io = io_direction(&family.name);
            let mut samples: Vec<&Sample> = family.samples.iter().collect();
            samples.sort_by(|a, b| label_values(a).cmp(label_values(b)));
            let data_points: Vec<NumberDataPoint> = samples
                .into_iter()
                .filter_map(|sample| {
                    let (as_int, as_double) = point_value(sample.value)?;
                    let start = per_connection
                        .then(|| connection_starts.get(&label_key(&sample.labels)).copied())
                        .flatten()
                        .unwrap_or(group_start_unix_nano)
                        .min(now_unix_nano);
                    Some(NumberDataPoint {
                        start_time_unix_nano: start.to_string(),
                        time_unix_nano: now.clone(),
                        as_int,
                        as_double,
                        attributes: point_attributes(&sample.labels, io),
                    })
                })
                .collect();
            if data_points.is_empty() {
                continue;
            }
            let name = metric_name(family);
            let (gauge, sum) = match family.kind {
                Kind::Gauge => (Some(Gauge { data_points }), None),
                Kind::Counter => (
                    None,
                    Some(Sum {
                        data_points,
                        aggregation_temporality: CUMULATIVE,
                        is_monotonic: true,
                    }),
                ),
            };
            metrics.push(Metric {
                name: name.to_owned(),
                description: family.help.clone(),
                unit: unit(name),
                gauge,
                sum,
            });
        }

        to_line(&MetricsRequest {
            resource_metrics: [ResourceMetrics {
                resource: resource(res),
                scope_metrics: [ScopeMetrics {
                    scope: SCOPE,
                    metrics,
                }],
            }],
        })
    }

    /// `addr:port`, IPv6 addresses in brackets.
    fn endpoint(address: &str, port: u16) -> String {
        if address.contains(':') {
            format!("[{address}]:{port}")
        } else {
            format!("{address}:{port}")
        }
    }

    /// The log body: the record as one sentence.
    fn sentence(r: &AccessRecord) -> String {
        format!(
            "{} {} {} -> {} {}{} for {:.1}s: sent {} B (+{}), received {} B (+{}), retransmits {}, lost {}, srtt {}us",
            r.event,
            r.direction,
            endpoint(&r.local_address, r.local_port),
            endpoint(&r.remote_address, r.remote_port),
            r.state,
            if r.failed { " (connect failed)" } else { "" },
            r.duration_seconds,
            r.bytes_sent,
            r.bytes_sent_delta,
            r.bytes_received,
            r.bytes_received_delta,
            r.retransmits,
            r.lost_packets,
            r.srtt_us,
        )
    }

    /// Every field of the record (in declaration order, which `CSV_COLUMNS`
    /// follows), then the network attributes derived from the addresses.
    ///
    /// The fields come from the record's serde form, so a field added to
    /// `AccessRecord` is exported without a change here: integers as intValue
    /// (beyond int64 as their decimal stringValue), floats as doubleValue (a
    /// non-finite one, which serde writes as null, is left out), bools as
    /// boolValue, strings as stringValue.
    pub(super) fn record_attributes(r: &AccessRecord) -> Vec<KeyValue> {
        // Built field by field (no serde_json::Value): this runs once per access
        // record, tens of thousands of times per cycle under churn. Order and
        // names follow CSV_COLUMNS; a test checks it against the serde form.
        let text = |v: &str| Some(AnyValue::String(v.to_owned()));
        let uint = |v: u64| {
            Some(if i64::try_from(v).is_ok() {
                AnyValue::Int(v.to_string())
            } else {
                AnyValue::String(v.to_string())
            })
        };
        let fields: [(&str, Option<AnyValue>); 36] = [
            ("report_time", text(&r.report_time)),
            ("event", text(&r.event)),
            ("cookie", uint(r.cookie)),
            ("seq", uint(r.seq)),
            ("start_time", text(&r.start_time)),
            (
                "duration_seconds",
                r.duration_seconds
                    .is_finite()
                    .then_some(AnyValue::Double(r.duration_seconds)),
            ),
            ("direction", text(&r.direction)),
            ("local_address", text(&r.local_address)),
            ("local_port", uint(r.local_port.into())),
            ("remote_address", text(&r.remote_address)),
            ("remote_port", uint(r.remote_port.into())),
            ("state", text(&r.state)),
            ("failed", Some(AnyValue::Bool(r.failed))),
            ("bytes_sent", uint(r.bytes_sent)),
            ("bytes_received", uint(r.bytes_received)),
            ("packets_sent", uint(r.packets_sent)),
            ("packets_received", uint(r.packets_received)),
            ("retransmits", uint(r.retransmits)),
            ("lost_packets", uint(r.lost_packets)),
            ("bytes_sent_delta", uint(r.bytes_sent_delta)),
            ("bytes_received_delta", uint(r.bytes_received_delta)),
            ("packets_sent_delta", uint(r.packets_sent_delta)),
            ("packets_received_delta", uint(r.packets_received_delta)),
            ("retransmits_delta", uint(r.retransmits_delta)),
            ("lost_packets_delta", uint(r.lost_packets_delta)),
            ("srtt_us", uint(r.srtt_us.into())),
            ("min_rtt_us", uint(r.min_rtt_us.into())),
            ("workload", text(&r.workload)),
            ("service", text(&r.service)),
            ("pid", uint(r.pid.into())),
            ("comm", text(&r.comm)),
            ("cgroup_id", uint(r.cgroup_id)),
            ("container_id", text(&r.container_id)),
            ("pod_uid", text(&r.pod_uid)),
            ("netns_cookie", uint(r.netns_cookie)),
            ("service_namespace", text(&r.service_namespace)),
        ];
        let mut out: Vec<KeyValue> = fields
            .into_iter()
            .filter_map(|(name, value)| Some(kv(attribute_key(name), value?)))
            .collect();
        out.push(kv("network.transport", string("tcp")));
        let address = [&r.local_address, &r.remote_address]
            .into_iter()
            .find(|a| !a.is_empty());
        if let Some(address) = address {
            out.push(kv("network.type", string(network_type(address))));
        }
        out
    }

    /// The serde-driven form the direct one must equal (tests only).
    pub(super) fn record_attributes_via_serde(r: &AccessRecord) -> Vec<KeyValue> {
        use crate::output::access::CSV_COLUMNS;
        let mut fields = match serde_json::to_value(r) {
            Ok(serde_json::Value::Object(fields)) => fields,
            // A struct of plain fields always serializes to an object.
            Ok(other) => unreachable!("AccessRecord serialized to {other}"),
            Err(e) => unreachable!("AccessRecord did not serialize: {e}"),
        };
        let mut ordered: Vec<(String, serde_json::Value)> = CSV_COLUMNS
            .iter()
            .filter_map(|&name| Some((name.to_owned(), fields.remove(name)?)))
            .collect();
        // Defensive: a field CSV_COLUMNS lacks (access.rs tests forbid that).
        ordered.extend(fields);
        let mut out: Vec<KeyValue> = ordered
            .into_iter()
            .filter_map(|(name, value)| Some(kv(attribute_key(&name), any_value(value)?)))
            .collect();
        out.push(kv("network.transport", string("tcp")));
        let address = [&r.local_address, &r.remote_address]
            .into_iter()
            .find(|a| !a.is_empty());
        if let Some(address) = address {
            out.push(kv("network.type", string(network_type(address))));
        }
        out
    }

    fn any_value(value: serde_json::Value) -> Option<AnyValue> {
        use serde_json::Value;
        Some(match value {
            Value::Null => return None,
            Value::Bool(b) => AnyValue::Bool(b),
            Value::String(s) => AnyValue::String(s),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    AnyValue::Int(i.to_string())
                } else if let Some(u) = n.as_u64() {
                    AnyValue::String(u.to_string())
                } else {
                    // serde_json numbers are finite.
                    AnyValue::Double(n.as_f64()?)
                }
            }
            nested @ (Value::Array(_) | Value::Object(_)) => AnyValue::String(nested.to_string()),
        })
    }

    /// The serde-driven `logs_request` the hand-written one must equal.
    pub(super) fn logs_request(
        records: &[AccessRecord],
        res: &Resource,
        now_unix_nano: u64,
    ) -> Option<String> {
        if records.is_empty() {
            return None;
        }
        let observed = now_unix_nano.to_string();
        let log_records = records
            .iter()
            .map(|r| LogRecord {
                time_unix_nano: rfc3339_nanos(&r.report_time).to_string(),
                observed_time_unix_nano: observed.clone(),
                severity_number: SEVERITY_INFO,
                severity_text: "INFO",
                body: AnyValue::String(sentence(r)),
                attributes: record_attributes(r),
            })
            .collect();
        Some(to_line(&LogsRequest {
            resource_logs: [ResourceLogs {
                resource: resource(res),
                scope_logs: [ScopeLogs {
                    scope: SCOPE,
                    log_records,
                }],
            }],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::reference::{record_attributes, record_attributes_via_serde, to_line};
    use super::*;
    use crate::output::access::CSV_COLUMNS;

    #[test]
    fn direct_attributes_equal_the_serde_form() {
        let mut r = AccessRecord {
            report_time: "2026-11-25T17:41:25.572859Z".into(),
            event: "close".into(),
            cookie: u64::MAX,
            seq: 2,
            duration_seconds: 1.5,
            local_address: "::1".into(),
            local_port: 80,
            comm: "a\"b".into(),
            failed: true,
            ..Default::default()
        };
        assert_eq!(
            to_line(&record_attributes(&r)),
            to_line(&record_attributes_via_serde(&r))
        );
        r.duration_seconds = f64::NAN;
        r.cookie = 7;
        assert_eq!(
            to_line(&record_attributes(&r)),
            to_line(&record_attributes_via_serde(&r))
        );
        assert_eq!(
            record_attributes(&r).len(),
            CSV_COLUMNS.len() - 1 + 2,
            "NaN duration left out; transport and type added"
        );
    }

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

    fn conn_labels(
        local: &str,
        lport: &str,
        remote: &str,
        rport: &str,
    ) -> Vec<(&'static str, String)> {
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

    fn record() -> AccessRecord {
        AccessRecord {
            report_time: "2026-11-25T17:41:25.572859Z".into(),
            event: "periodic".into(),
            cookie: 4097,
            seq: 2,
            start_time: "2026-11-25T17:41:17.572859Z".into(),
            duration_seconds: 8.0,
            direction: "outbound".into(),
            local_address: "127.0.0.1".into(),
            local_port: 43276,
            remote_address: "127.0.0.1".into(),
            remote_port: 47001,
            state: "ESTAB".into(),
            failed: false,
            bytes_sent: 1048578,
            bytes_received: 307201,
            packets_sent: 40,
            packets_received: 30,
            retransmits: 0,
            lost_packets: 0,
            bytes_sent_delta: 1000,
            bytes_received_delta: 0,
            packets_sent_delta: 1,
            packets_received_delta: 0,
            retransmits_delta: 0,
            lost_packets_delta: 0,
            srtt_us: 85,
            min_rtt_us: 12,
            workload: "user.slice".into(),
            service: "127.0.0.1:47001".into(),
            pid: 4242,
            comm: "curl".into(),
            cgroup_id: 77,
            ..Default::default()
        }
    }

    #[test]
    fn log_record_exact() {
        let line = logs_request(&[record()], &res(), NOW).unwrap();
        let want = r#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"longconn"}},{"key":"host.name","value":{"stringValue":"h1"}}]},"scopeLogs":[{"scope":{"name":"longconn-reader","version":"VERSION"},"logRecords":[{"timeUnixNano":"1795628485572859000","observedTimeUnixNano":"1764000005000000000","severityNumber":9,"severityText":"INFO","body":{"stringValue":"periodic outbound 127.0.0.1:43276 -> 127.0.0.1:47001 ESTAB for 8.0s: sent 1048578 B (+1000), received 307201 B (+0), retransmits 0, lost 0, srtt 85us"},"attributes":[{"key":"longconn.report_time","value":{"stringValue":"2026-11-25T17:41:25.572859Z"}},{"key":"longconn.event","value":{"stringValue":"periodic"}},{"key":"longconn.cookie","value":{"intValue":"4097"}},{"key":"longconn.seq","value":{"intValue":"2"}},{"key":"longconn.start_time","value":{"stringValue":"2026-11-25T17:41:17.572859Z"}},{"key":"longconn.duration_seconds","value":{"doubleValue":8.0}},{"key":"longconn.direction","value":{"stringValue":"outbound"}},{"key":"network.local.address","value":{"stringValue":"127.0.0.1"}},{"key":"network.local.port","value":{"intValue":"43276"}},{"key":"network.peer.address","value":{"stringValue":"127.0.0.1"}},{"key":"network.peer.port","value":{"intValue":"47001"}},{"key":"longconn.state","value":{"stringValue":"ESTAB"}},{"key":"longconn.failed","value":{"boolValue":false}},{"key":"longconn.bytes_sent","value":{"intValue":"1048578"}},{"key":"longconn.bytes_received","value":{"intValue":"307201"}},{"key":"longconn.packets_sent","value":{"intValue":"40"}},{"key":"longconn.packets_received","value":{"intValue":"30"}},{"key":"longconn.retransmits","value":{"intValue":"0"}},{"key":"longconn.lost_packets","value":{"intValue":"0"}},{"key":"longconn.bytes_sent_delta","value":{"intValue":"1000"}},{"key":"longconn.bytes_received_delta","value":{"intValue":"0"}},{"key":"longconn.packets_sent_delta","value":{"intValue":"1"}},{"key":"longconn.packets_received_delta","value":{"intValue":"0"}},{"key":"longconn.retransmits_delta","value":{"intValue":"0"}},{"key":"longconn.lost_packets_delta","value":{"intValue":"0"}},{"key":"longconn.srtt_us","value":{"intValue":"85"}},{"key":"longconn.min_rtt_us","value":{"intValue":"12"}},{"key":"longconn.workload","value":{"stringValue":"user.slice"}},{"key":"longconn.service","value":{"stringValue":"127.0.0.1:47001"}},{"key":"longconn.pid","value":{"intValue":"4242"}},{"key":"longconn.comm","value":{"stringValue":"curl"}},{"key":"longconn.cgroup_id","value":{"intValue":"77"}},{"key":"longconn.container_id","value":{"stringValue":""}},{"key":"longconn.pod_uid","value":{"stringValue":""}},{"key":"longconn.netns_cookie","value":{"intValue":"0"}},{"key":"longconn.service_namespace","value":{"stringValue":""}},{"key":"network.transport","value":{"stringValue":"tcp"}},{"key":"network.type","value":{"stringValue":"ipv4"}}]}]}]}]}"#
            .replace("VERSION", env!("CARGO_PKG_VERSION"));
        assert_eq!(line, want);
    }

    #[test]
    fn every_record_field_is_an_attribute() {
        let line = logs_request(&[record()], &res(), NOW).unwrap();
        let v = parse(&line);
        let r = &v["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0];
        for column in CSV_COLUMNS {
            assert!(attr(r, &attribute_key(column)).is_some(), "{column}");
        }
        let n = r["attributes"].as_array().unwrap().len();
        assert_eq!(n, CSV_COLUMNS.len() + 2);
    }

    #[test]
    fn no_records_no_request() {
        assert_eq!(logs_request(&[], &res(), NOW), None);
    }

    #[test]
    fn log_edge_cases() {
        let nasty = AccessRecord {
            report_time: "not a time".into(),
            event: "close".into(),
            local_address: "2001:db8::1".into(),
            local_port: 80,
            remote_address: "2001:db8::2".into(),
            remote_port: 43210,
            state: "SYN_SENT".into(),
            failed: true,
            duration_seconds: f64::NAN,
            bytes_sent: u64::MAX,
            cookie: i64::MAX as u64,
            comm: "a\"b\nc\\".into(),
            ..record()
        };
        let line = logs_request(&[record(), nasty], &res(), NOW).unwrap();
        let v = parse(&line);
        let recs = v["resourceLogs"][0]["scopeLogs"][0]["logRecords"]
            .as_array()
            .unwrap();
        assert_eq!(recs.len(), 2);
        let r = &recs[1];
        assert_eq!(r["timeUnixNano"], "0");
        assert_eq!(
            r["body"]["stringValue"],
            "close outbound [2001:db8::1]:80 -> [2001:db8::2]:43210 SYN_SENT (connect failed) for NaNs: sent 18446744073709551615 B (+1000), received 307201 B (+0), retransmits 0, lost 0, srtt 85us"
        );
        assert_eq!(attr(r, "longconn.duration_seconds"), None);
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
            attr(r, "longconn.comm").unwrap()["stringValue"],
            "a\"b\nc\\"
        );
        assert_eq!(attr(r, "network.type").unwrap()["stringValue"], "ipv6");
        assert_eq!(attr(r, "longconn.event").unwrap()["stringValue"], "close");
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
        let nasty = AccessRecord {
            report_time: "bad".into(),
            local_address: "::ffff:10.0.0.1".into(),
            duration_seconds: f64::INFINITY,
            bytes_sent: u64::MAX,
            cookie: u64::MAX,
            comm: "a\"b\nc\\\u{0}é".into(),
            failed: true,
            ..record()
        };
        let logs = vec![
            logs_request(&[record()], &res(), NOW).unwrap(),
            logs_request(&[record(), nasty, AccessRecord::default()], &res(), NOW).unwrap(),
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
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/otlp_check.py");
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

    /// The hand-written logs request equals the serde one byte for byte, for
    /// records with every awkward value, alone and in requests of several
    /// records (sharing a report time or not), and the attribute list it
    /// writes is the record's serde form.
    #[test]
    fn logs_request_equals_the_serde_reference() {
        use crate::output::access::testdata;
        let mut g = longconn_common::testgen::Gen::new(29);
        let mut records = vec![record(), AccessRecord::default()];
        records.extend((0..100_000).map(|_| testdata::generated(&mut g)));
        records.extend((0..3000).map(testdata::realistic));
        let hosts = [
            res(),
            Resource {
                host_name: String::new(),
            },
            Resource {
                host_name: "h\"\u{1}é".into(),
            },
        ];
        for (i, r) in records.iter().enumerate() {
            let one = std::slice::from_ref(r);
            let host = &hosts[i % hosts.len()];
            assert_eq!(
                logs_request(one, host, NOW),
                reference::logs_request(one, host, NOW),
                "{r:?}"
            );
            if i % 10 == 0 {
                assert_eq!(
                    to_line(&record_attributes(r)),
                    to_line(&record_attributes_via_serde(r)),
                    "{r:?}"
                );
            }
        }
        for (i, batch) in records.chunks(1000).enumerate() {
            let now = [NOW, 0, u64::MAX][i % 3];
            assert_eq!(
                logs_request(batch, &res(), now),
                reference::logs_request(batch, &res(), now)
            );
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

    /// The size estimate of realistic records is near the encoded size.
    #[test]
    fn logs_size_estimate_is_close() {
        use crate::output::access::{estimate, testdata};
        let records: Vec<AccessRecord> = (0..1000).map(testdata::realistic).collect();
        let len = logs_request(&records, &res(), NOW).unwrap().len();
        let estimate = estimate(&records, LOG_RECORD_FIXED) + 300 + res().host_name.len();
        assert!(
            estimate >= len && estimate < len + len / 5,
            "{estimate} for {len}"
        );
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
        let records: Vec<AccessRecord> = (0..N as u64).map(testdata::realistic).collect();
        let (records, host) = (&records, &res());
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
        let logs = |encode: fn(&[AccessRecord], &Resource, u64) -> Option<String>| {
            move || {
                records
                    .chunks(1000)
                    .map(|chunk| encode(black_box(chunk), host, NOW).map_or(0, |l| l.len()))
                    .sum::<usize>()
            }
        };
        let rows = [
            (
                "csv",
                time(
                    &|| access::encode_csv_reference(black_box(records)).len(),
                    &|| access::encode_csv(black_box(records)).len(),
                ),
            ),
            (
                "jsonl",
                time(
                    &|| access::encode_jsonl_reference(black_box(records)).len(),
                    &|| access::encode_jsonl(black_box(records)).len(),
                ),
            ),
            (
                "otlp logs",
                time(&logs(reference::logs_request), &logs(logs_request)),
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
                let r = testdata::realistic(i);
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
        let records: Vec<AccessRecord> = (0..2500)
            .map(crate::output::access::testdata::realistic)
            .collect();
        let res = res();
        for per in [1, 7, 1000] {
            let mut want = Vec::new();
            for chunk in records.chunks(per) {
                want.extend_from_slice(logs_request(chunk, &res, NOW).unwrap().as_bytes());
                want.push(b'\n');
            }
            let mut got = Vec::new();
            let mut w = LogsWriter::new(&res, NOW, per);
            for r in &records {
                w.push(&mut got, r);
            }
            w.finish(&mut got);
            assert_eq!(got, want, "{per} per line");
        }
    }
}
