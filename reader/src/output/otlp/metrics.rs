//! OTLP metrics: one ExportMetricsServiceRequest per cycle.

use super::*;

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
