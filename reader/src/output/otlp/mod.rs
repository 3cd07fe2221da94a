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
    jsonw,
    snapshot::{Io, Kind},
};

/// Who produced the data; `service.name` is always "longconn".
pub struct Resource {
    pub host_name: String,
}

const SERVICE_NAME: &str = "longconn";
const SCOPE_NAME: &str = "longconn-reader";
const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");
/// `AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE`.
const CUMULATIVE: i32 = 2;
/// `SeverityNumber.SEVERITY_NUMBER_INFO`.
const SEVERITY_INFO: i32 = 9;
/// Integral values below this magnitude are exact in an f64 and fit an int64.
const EXACT: f64 = (1u64 << 53) as f64;

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

#[cfg(test)]
fn network_type(address: &str) -> &'static str {
    if address.contains(':') {
        "ipv6"
    } else {
        "ipv4"
    }
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
#[cfg(test)]
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

/// RFC 3339 as Unix nanos; 0 ("unknown" in OTLP) when it does not parse or
/// is before 1970.
#[cfg(test)]
fn rfc3339_nanos(text: &str) -> u64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0)
}

mod logs;
mod metrics;

#[cfg(test)]
pub use logs::logs_request;
pub use logs::LogsWriter;
#[cfg(test)]
pub use metrics::metrics_request;
pub use metrics::write_metrics_request;

#[cfg(test)]
mod metrics_tests;
/// The serde-based encoders the hand-written ones must equal byte for byte
/// (the previous implementation, kept for the property tests).
#[cfg(test)]
mod reference;
#[cfg(test)]
mod tests;
