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

use serde::Serialize;

use super::{
    access::AccessRecord,
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
struct KeyValue {
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
fn to_line<T: Serialize>(request: &T) -> String {
    match serde_json::to_string(request) {
        Ok(line) => line,
        Err(e) => unreachable!("encoding an OTLP request failed: {e}"),
    }
}

/// The OTel attribute key of a Prometheus label or access-record field.
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

/// One ExportMetricsServiceRequest for the cycle, as one JSON line.
///
/// `group_start_unix_nano` is the start time of every workload, service and
/// self series: the reader state's creation time (a state reset gives a new
/// one, which tells consumers the cumulative sums restarted). Per-connection
/// series (families named `longconn_connection_*`) start at their
/// connection's start time, taken from the `longconn_connection_start_time_seconds`
/// sample with the same labels; a series without one uses the group start.
/// Families without a representable sample are left out.
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
fn record_attributes(r: &AccessRecord) -> Vec<KeyValue> {
    // Built field by field (no serde_json::Value): this runs once per access
    // record, tens of thousands of times per cycle under churn. Order and
    // names follow CSV_COLUMNS; a test checks it against the serde form.
    let text = |v: &str| Some(AnyValue::String(v.to_owned()));
    let uint = |v: u64| {
        Some(if i64::try_from(v).is_ok() { AnyValue::Int(v.to_string()) } else { AnyValue::String(v.to_string()) })
    };
    let fields: [(&str, Option<AnyValue>); 36] = [
        ("report_time", text(&r.report_time)),
        ("event", text(&r.event)),
        ("cookie", uint(r.cookie)),
        ("seq", uint(r.seq)),
        ("start_time", text(&r.start_time)),
        ("duration_seconds", r.duration_seconds.is_finite().then_some(AnyValue::Double(r.duration_seconds))),
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
    let mut out: Vec<KeyValue> =
        fields.into_iter().filter_map(|(name, value)| Some(kv(attribute_key(name), value?))).collect();
    out.push(kv("network.transport", string("tcp")));
    let address = [&r.local_address, &r.remote_address].into_iter().find(|a| !a.is_empty());
    if let Some(address) = address {
        out.push(kv("network.type", string(network_type(address))));
    }
    out
}

/// The serde-driven form the direct one must equal (tests only).
#[cfg(test)]
fn record_attributes_via_serde(r: &AccessRecord) -> Vec<KeyValue> {
    use super::access::CSV_COLUMNS;
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

#[cfg(test)]
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
pub fn logs_request(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::access::CSV_COLUMNS;

    #[test]
    fn direct_attributes_equal_the_serde_form() {
        let mut r = AccessRecord { report_time: "2026-11-25T17:41:25.572859Z".into(), event: "close".into(), cookie: u64::MAX, seq: 2, duration_seconds: 1.5, local_address: "::1".into(), local_port: 80, comm: "a\"b".into(), failed: true, ..Default::default() };
        assert_eq!(to_line(&record_attributes(&r)), to_line(&record_attributes_via_serde(&r)));
        r.duration_seconds = f64::NAN;
        r.cookie = 7;
        assert_eq!(to_line(&record_attributes(&r)), to_line(&record_attributes_via_serde(&r)));
        assert_eq!(record_attributes(&r).len(), CSV_COLUMNS.len() - 1 + 2, "NaN duration left out; transport and type added");
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

    /// Runs tests/otlp_check.py with the official OTLP schema when
    /// LONGCONN_OTLP_PYTHON names a python with opentelemetry-proto.
    #[test]
    fn official_schema_accepts_the_output() {
        let Some(python) = std::env::var_os("LONGCONN_OTLP_PYTHON") else {
            eprintln!("LONGCONN_OTLP_PYTHON not set: skipping the schema check");
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
}
