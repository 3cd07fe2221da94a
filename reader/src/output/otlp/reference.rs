use serde::Serialize;

use crate::output::access::AccessRecord;

use super::*;
use crate::output::snapshot::{Label, Snapshot, Value};

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

/// A label's value as the previous, text-labelled model held it.
fn label_text(label: &Label) -> String {
    match label {
        Label::Direction(d) => crate::view::direction_name(*d).to_owned(),
        Label::LocalAddress(a) | Label::RemoteAddress(a) => a.to_string(),
        Label::LocalPort(p) | Label::RemotePort(p) => p.to_string(),
        Label::Netns(n) => n.to_string(),
        Label::Workload(s) | Label::Service(s) => (*s).to_owned(),
        Label::Reason(r) => r.name().to_owned(),
        Label::Group { key, index, .. } => crate::identity::split_key(key)
            .into_iter()
            .nth(*index)
            .unwrap_or_default(),
    }
}

fn point_attributes(labels: &[Label], io: Option<Io>) -> Vec<KeyValue> {
    let mut out: Vec<KeyValue> = labels
        .iter()
        .map(|label| {
            let name = label.name();
            let text = label_text(label);
            let v = match (name, text.parse::<i64>()) {
                ("local_port" | "remote_port", Ok(port)) => AnyValue::Int(port.to_string()),
                _ => AnyValue::String(text),
            };
            kv(attribute_key(name), v)
        })
        .collect();
    let address = labels
        .iter()
        .find(|l| matches!(l.name(), "local_address" | "remote_address"));
    if let Some(address) = address {
        out.push(kv("network.transport", string("tcp")));
        out.push(kv(
            "network.type",
            string(network_type(&label_text(address))),
        ));
    }
    if let Some(io) = io {
        out.push(kv("network.io.direction", string(io.name())));
    }
    out
}

/// `"asInt"` for exact integers within int64, `"asDouble"` for other
/// finite values, None (skip the point) for NaN and infinities.
fn point_value(v: Value) -> Option<(Option<String>, Option<f64>)> {
    match v {
        Value::Count(n) if n <= i64::MAX as u64 => Some((Some(n.to_string()), None)),
        Value::Count(n) => Some((None, Some(n as f64))),
        Value::Real(v) if !v.is_finite() => None,
        // -0.0 prints as 0.
        Value::Real(v) if v.fract() == 0.0 && v.abs() < EXACT => {
            Some((Some((v as i64).to_string()), None))
        }
        Value::Real(v) => Some((None, Some(v))),
    }
}

/// The serde-driven `metrics_request` the hand-written one must equal.
pub(super) fn metrics_request(snapshot: &Snapshot, res: &Resource, now_unix_nano: u64) -> String {
    let now = now_unix_nano.to_string();
    let mut metrics = Vec::new();
    for (desc, points) in snapshot.families() {
        let data_points: Vec<NumberDataPoint> = points
            .iter()
            .filter_map(|point| {
                let (as_int, as_double) = point_value(point.value)?;
                let series = snapshot.series(point.series);
                Some(NumberDataPoint {
                    start_time_unix_nano: series.start_unix_ns.min(now_unix_nano).to_string(),
                    time_unix_nano: now.clone(),
                    as_int,
                    as_double,
                    attributes: point_attributes(&series.labels, desc.io),
                })
            })
            .collect();
        if data_points.is_empty() {
            continue;
        }
        let (gauge, sum) = match desc.kind {
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
            name: desc.otel_name.to_owned(),
            description: desc.help.to_owned(),
            unit: desc.unit.ucum(),
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

/// The attributes of a record: every field but the report time (it is the
/// record's `timeUnixNano`), under its OpenTelemetry key, leaving out the
/// optional ones that are empty, zero or false; then the network
/// attributes. Listed here by hand, apart from `AccessEvent::visit`.
pub(super) fn record_attributes(r: &AccessRecord) -> Vec<KeyValue> {
    let text = |v: &str| Some(AnyValue::String(v.to_owned()));
    let uint = |v: u64| {
        Some(if i64::try_from(v).is_ok() {
            AnyValue::Int(v.to_string())
        } else {
            AnyValue::String(v.to_string())
        })
    };
    let some_text = |v: &str| (!v.is_empty()).then(|| AnyValue::String(v.to_owned()));
    let some_uint = |v: u64| if v == 0 { None } else { uint(v) };
    let fields: [(&str, Option<AnyValue>); 38] = [
        ("longconn.event", text(&r.event)),
        ("longconn.cookie", uint(r.cookie)),
        ("longconn.seq", uint(r.seq)),
        ("longconn.start_time", text(&r.start_time)),
        (
            "longconn.duration_seconds",
            Some(AnyValue::Double(r.duration_seconds)),
        ),
        ("longconn.direction", text(&r.direction)),
        ("network.local.address", text(&r.local_address)),
        ("network.local.port", uint(r.local_port.into())),
        ("network.peer.address", text(&r.remote_address)),
        ("network.peer.port", uint(r.remote_port.into())),
        ("longconn.state", text(&r.state)),
        ("longconn.failed", r.failed.then_some(AnyValue::Bool(true))),
        ("longconn.bytes_sent", uint(r.bytes_sent)),
        ("longconn.bytes_received", uint(r.bytes_received)),
        ("longconn.packets_sent", uint(r.packets_sent)),
        ("longconn.packets_received", uint(r.packets_received)),
        ("longconn.retransmits", uint(r.retransmits)),
        ("longconn.lost_packets", uint(r.lost_packets)),
        ("longconn.bytes_sent_delta", some_uint(r.bytes_sent_delta)),
        (
            "longconn.bytes_received_delta",
            some_uint(r.bytes_received_delta),
        ),
        (
            "longconn.packets_sent_delta",
            some_uint(r.packets_sent_delta),
        ),
        (
            "longconn.packets_received_delta",
            some_uint(r.packets_received_delta),
        ),
        ("longconn.retransmits_delta", some_uint(r.retransmits_delta)),
        (
            "longconn.lost_packets_delta",
            some_uint(r.lost_packets_delta),
        ),
        ("longconn.srtt_us", uint(r.srtt_us.into())),
        ("longconn.min_rtt_us", uint(r.min_rtt_us.into())),
        ("longconn.workload", text(&r.workload)),
        ("longconn.service", text(&r.service)),
        ("process.pid", some_uint(r.pid.into())),
        ("process.executable.name", some_text(&r.comm)),
        ("longconn.cgroup_id", some_uint(r.cgroup_id)),
        ("container.id", some_text(&r.container_id)),
        ("k8s.pod.uid", some_text(&r.pod_uid)),
        ("longconn.netns_cookie", some_uint(r.netns_cookie)),
        (
            "longconn.service_namespace",
            some_text(&r.service_namespace),
        ),
        ("k8s.namespace.name", some_text(&r.namespace)),
        ("k8s.pod.name", some_text(&r.pod)),
        (
            if r.pod.is_empty() {
                "container.name"
            } else {
                "k8s.container.name"
            },
            some_text(&r.container),
        ),
    ];
    let mut out: Vec<KeyValue> = fields
        .into_iter()
        .filter_map(|(key, value)| Some(kv(key, value?)))
        .collect();
    out.push(kv("network.transport", string("tcp")));
    out.push(kv("network.type", string(network_type(&r.local_address))));
    out
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
