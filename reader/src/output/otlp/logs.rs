//! OTLP logs: one LogRecord per access event, streamed into bounded lines.
//! The attributes are a `Visit` printer of the event (keys from its field
//! table), leaving out what says nothing: optional fields that are empty or
//! zero, and the report time, which is the record's `timeUnixNano`.

use super::*;
use crate::output::{
    event::{self, AccessEvent, Field, Value, Visit},
    text,
};

/// One ExportLogsServiceRequest with one LogRecord per event, as one JSON
/// line; None when there are none (a request without log records is not
/// written). `LogsWriter` in one go, for tests.
#[cfg(test)]
pub fn logs_request(
    events: &[AccessEvent<'_>],
    res: &Resource,
    now_unix_nano: u64,
) -> Option<String> {
    let mut out = Vec::new();
    let mut w = LogsWriter::new(res, now_unix_nano, usize::MAX);
    for e in events {
        w.push(&mut out, e);
    }
    w.finish(&mut out);
    (!out.is_empty()).then(|| {
        out.pop(); // the newline: a request is returned without it
        utf8(out)
    })
}

/// Log records handed over one at a time, as request lines of at most
/// `per_line` records each.
pub struct LogsWriter<'a> {
    res: &'a Resource,
    observed: Vec<u8>,
    per_line: usize,
    in_line: usize,
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
        }
    }

    /// Appends `e`'s log record to `out` (opening, closing lines as needed).
    pub fn push(&mut self, out: &mut Vec<u8>, e: &AccessEvent<'_>) {
        if self.in_line == 0 {
            request_start(out, "Logs", self.res);
        } else {
            out.push(b',');
        }
        log_record(out, e, &self.observed);
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

/// The attributes of one log record.
struct Attributes<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
}

impl Visit for Attributes<'_> {
    fn field(&mut self, f: &'static Field, v: Value<'_>) {
        if !f.log || (f.optional && v.is_empty()) || std::ptr::eq(f, &event::f::REPORT_TIME) {
            return;
        }
        let out = &mut *self.out;
        if !std::mem::take(&mut self.first) {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"key":""#);
        out.extend_from_slice(f.otel.as_bytes());
        out.extend_from_slice(br#"","value":{""#);
        match v {
            Value::Text(s) | Value::Symbol(s) => {
                out.extend_from_slice(br#"stringValue":""#);
                jsonw::str_contents(out, s);
                out.push(b'"');
            }
            Value::Uint(n) => {
                out.extend_from_slice(if i64::try_from(n).is_ok() {
                    br#"intValue":""#
                } else {
                    br#"stringValue":""#
                });
                jsonw::u64(out, n);
                out.push(b'"');
            }
            Value::Seconds(ns) => {
                out.extend_from_slice(br#"doubleValue":"#);
                jsonw::f64(out, ns as f64 / 1e9);
            }
            Value::Time(t) => {
                out.extend_from_slice(br#"stringValue":""#);
                text::rfc3339_micros(out, t);
                out.push(b'"');
            }
            Value::Addr(ip) => {
                out.extend_from_slice(br#"stringValue":""#);
                text::ip(out, ip);
                out.push(b'"');
            }
            Value::Bool(b) => {
                out.extend_from_slice(br#"boolValue":"#);
                out.extend_from_slice(if b { b"true" } else { b"false" });
            }
        }
        out.extend_from_slice(b"}}");
    }
}

/// One LogRecord: times, severity, the sentence as body, the event's
/// attributes, then `network.transport` and `network.type`.
fn log_record(out: &mut Vec<u8>, e: &AccessEvent<'_>, observed: &[u8]) {
    out.extend_from_slice(br#"{"timeUnixNano":""#);
    jsonw::u64(out, e.report_unix_ns.max(0) as u64);
    out.extend_from_slice(br#"","observedTimeUnixNano":""#);
    out.extend_from_slice(observed);
    out.extend_from_slice(br#"","severityNumber":"#);
    jsonw::u64(out, SEVERITY_INFO as u64);
    out.extend_from_slice(br#","severityText":"INFO","body":{"stringValue":""#);
    sentence_into(out, e);
    out.extend_from_slice(br#""},"attributes":["#);
    e.visit(&mut Attributes { out, first: true });
    text_attr(out, attr!("network.transport"), "tcp");
    text_attr(
        out,
        attr!("network.type"),
        if e.local.is_ipv4() { "ipv4" } else { "ipv6" },
    );
    out.extend_from_slice(b"]}");
}

/// The log body, escaped for a JSON string: the event as one sentence.
fn sentence_into(out: &mut Vec<u8>, e: &AccessEvent<'_>) {
    let endpoint = |out: &mut Vec<u8>, ip: std::net::IpAddr, port: u16| {
        if ip.is_ipv6() {
            out.push(b'[');
            text::ip(out, ip);
            out.extend_from_slice(b"]:");
        } else {
            text::ip(out, ip);
            out.push(b':');
        }
        jsonw::u64(out, port.into());
    };
    out.extend_from_slice(e.kind.name().as_bytes());
    out.push(b' ');
    out.extend_from_slice(e.direction.as_bytes());
    out.push(b' ');
    endpoint(out, e.local, e.local_port);
    out.extend_from_slice(b" -> ");
    endpoint(out, e.remote, e.remote_port);
    out.push(b' ');
    out.extend_from_slice(e.state.as_bytes());
    if e.failed {
        out.extend_from_slice(b" (connect failed)");
    }
    out.extend_from_slice(b" for ");
    one_decimal(out, e.duration_ns as f64 / 1e9);
    out.extend_from_slice(b"s: sent ");
    jsonw::u64(out, e.total.bytes_sent);
    out.extend_from_slice(b" B (+");
    jsonw::u64(out, e.delta.bytes_sent);
    out.extend_from_slice(b"), received ");
    jsonw::u64(out, e.total.bytes_received);
    out.extend_from_slice(b" B (+");
    jsonw::u64(out, e.delta.bytes_received);
    out.extend_from_slice(b"), retransmits ");
    jsonw::u64(out, e.total.retransmits);
    out.extend_from_slice(b", lost ");
    jsonw::u64(out, e.total.lost_packets);
    out.extend_from_slice(b", srtt ");
    jsonw::u64(out, e.srtt_us.into());
    out.extend_from_slice(b"us");
}

/// `v` as `format!("{v:.1}")` writes it: the exact value rounded to one
/// decimal, ties to even. Non-negative values with a binary exponent in
/// reach are done in integers; others (negative, NaN, infinite) by std.
pub(super) fn one_decimal(out: &mut Vec<u8>, v: f64) {
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
