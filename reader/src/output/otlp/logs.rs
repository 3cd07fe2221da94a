//! OTLP logs: one LogRecord per access record, streamed into bounded lines.

use super::*;

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
        crate::output::access::estimate(records, LOG_RECORD_FIXED) + 300 + res.host_name.len(),
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
pub(super) const LOG_RECORD_FIXED: usize = 2700;

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
