//! Prometheus text exposition format 0.0.4, for node_exporter's textfile
//! collector.
//!
//! Invariant: the output depends only on the input (families in the given
//! order, samples sorted by label values, no timestamps), and every family
//! gets its HELP and TYPE lines even without samples, so the set of series
//! descriptions is the same every cycle.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

#[derive(Clone, Debug)]
pub struct Family {
    /// Full metric name; counters already end in `_total`.
    pub name: String,
    pub help: String,
    pub kind: Kind,
    pub samples: Vec<Sample>,
}

#[derive(Clone, Debug)]
pub struct Sample {
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A valid metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn check_name(name: &str) -> bool {
    check(name, |c| c.is_ascii_alphabetic() || c == b'_' || c == b':')
}

/// A valid label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn check_label_name(name: &str) -> bool {
    check(name, |c| c.is_ascii_alphabetic() || c == b'_')
}

fn check(name: &str, first: impl Fn(u8) -> bool) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(&first) && bytes.all(|c| first(c) || c.is_ascii_digit())
}

/// The whole exposition text, ending in a newline (empty for no families).
pub fn encode(families: &[Family]) -> String {
    let mut out = String::new();
    for family in families {
        debug_assert!(check_name(&family.name), "metric name {:?}", family.name);
        let kind = match family.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        out.push_str("# HELP ");
        out.push_str(&family.name);
        out.push(' ');
        escape_into(&mut out, &family.help, false);
        out.push_str("\n# TYPE ");
        out.push_str(&family.name);
        out.push(' ');
        out.push_str(kind);
        out.push('\n');

        let mut samples: Vec<&Sample> = family.samples.iter().collect();
        samples.sort_by(|a, b| label_values(a).cmp(label_values(b)));
        debug_assert!(
            samples.windows(2).all(|w| w[0].labels != w[1].labels),
            "duplicate series in {}",
            family.name
        );
        for sample in samples {
            out.push_str(&family.name);
            if !sample.labels.is_empty() {
                out.push('{');
                for (i, (name, value)) in sample.labels.iter().enumerate() {
                    debug_assert!(check_label_name(name), "label name {name:?}");
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(name);
                    out.push_str("=\"");
                    escape_into(&mut out, value, true);
                    out.push('"');
                }
                out.push('}');
            }
            out.push(' ');
            out.push_str(&format_value(sample.value));
            out.push('\n');
        }
    }
    out
}

fn label_values(sample: &Sample) -> impl Iterator<Item = &str> {
    sample.labels.iter().map(|(_, v)| v.as_str())
}

/// Escapes `\` and newline, and `"` too in label values.
fn escape_into(out: &mut String, text: &str, quote: bool) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// Integral values below 2^53 as integers, other finite ones in Rust's
/// shortest round-trip form (never an exponent), and NaN, +Inf, -Inf.
fn format_value(v: f64) -> String {
    const EXACT: f64 = (1u64 << 53) as f64;
    if v.is_nan() {
        "NaN".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else if v.fract() == 0.0 && v.abs() < EXACT {
        // Exact: |v| < 2^53 fits i64; -0.0 prints as 0.
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(labels: &[(&str, &str)], value: f64) -> Sample {
        Sample {
            labels: labels
                .iter()
                .map(|&(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value,
        }
    }

    fn family(name: &str, help: &str, kind: Kind, samples: Vec<Sample>) -> Family {
        Family {
            name: name.to_string(),
            help: help.to_string(),
            kind,
            samples,
        }
    }

    #[test]
    fn counter_gauge_and_empty_family() {
        let families = [
            family(
                "longconn_bytes_sent_total",
                "Bytes sent by tracked connections.\nSee C:\\docs.",
                Kind::Counter,
                vec![
                    sample(
                        &[("direction", "outbound"), ("workload", "web\\\"a\"\nb")],
                        1048577.0,
                    ),
                    sample(&[("direction", "inbound"), ("workload", "db")], 0.5),
                ],
            ),
            family(
                "longconn_connections",
                "Tracked connections.",
                Kind::Gauge,
                vec![sample(&[], 3.0)],
            ),
            family(
                "longconn_map_full_total",
                "Inserts refused.",
                Kind::Counter,
                vec![],
            ),
        ];
        let want = r#"# HELP longconn_bytes_sent_total Bytes sent by tracked connections.\nSee C:\\docs.
# TYPE longconn_bytes_sent_total counter
longconn_bytes_sent_total{direction="inbound",workload="db"} 0.5
longconn_bytes_sent_total{direction="outbound",workload="web\\\"a\"\nb"} 1048577
# HELP longconn_connections Tracked connections.
# TYPE longconn_connections gauge
longconn_connections 3
# HELP longconn_map_full_total Inserts refused.
# TYPE longconn_map_full_total counter
"#;
        assert_eq!(encode(&families), want);
        assert_eq!(encode(&[]), "");
    }

    #[test]
    fn values() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (-0.0, "0"),
            (-3.0, "-3"),
            (1048577.0, "1048577"),
            (0.000081, "0.000081"),
            (1.5, "1.5"),
            (1e-7, "0.0000001"),
            (((1u64 << 53) - 1) as f64, "9007199254740991"),
            ((1u64 << 53) as f64, "9007199254740992"),
            ((1u64 << 60) as f64, "1152921504606847000"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
        ];
        for &(v, want) in cases {
            assert_eq!(format_value(v), want, "{v:e}");
        }
    }

    #[test]
    fn names() {
        let cases: &[(&str, bool, bool)] = &[
            ("longconn_up", true, true),
            ("_x9", true, true),
            ("ns:rate_5m", true, false),
            (":a", true, false),
            ("9a", false, false),
            ("", false, false),
            ("a-b", false, false),
            ("a b", false, false),
            ("é", false, false),
        ];
        for &(name, metric, label) in cases {
            assert_eq!(check_name(name), metric, "{name:?}");
            assert_eq!(check_label_name(name), label, "{name:?}");
        }
    }

    #[test]
    fn promtool_accepts_the_output() {
        let promtool = std::path::Path::new("/usr/bin/promtool");
        if !promtool.exists() {
            crate::testskip::skip(
                "promtool_accepts_the_output",
                "no /usr/bin/promtool (apt-get install prometheus; scripts/test does)",
            );
            return;
        }
        let families = [
            family(
                "longconn_connections",
                "Live tracked TCP connections.",
                Kind::Gauge,
                vec![
                    sample(&[("direction", "outbound"), ("service", "api")], 12.0),
                    sample(&[("direction", "inbound"), ("service", "")], 3.0),
                ],
            ),
            family(
                "longconn_sent_bytes_total",
                "Bytes sent by\nclosed and live \"tracked\" connections.",
                Kind::Counter,
                vec![sample(
                    &[("direction", "outbound"), ("service", "a\\b\"c\nd")],
                    1e15,
                )],
            ),
            family(
                "longconn_map_full_total",
                "Connections not tracked: map full.",
                Kind::Counter,
                vec![],
            ),
            family(
                "longconn_collect_duration_seconds",
                "Duration of the last collect.",
                Kind::Gauge,
                vec![sample(&[], 0.000081)],
            ),
            family(
                "longconn_rtt_seconds",
                "Smoothed RTT.",
                Kind::Gauge,
                vec![sample(&[], f64::NAN)],
            ),
            family(
                "longconn_last_collect_timestamp_seconds",
                "Time of the last collect.",
                Kind::Gauge,
                vec![sample(&[], 1.7641e9)],
            ),
        ];
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("longconn.prom");
        std::fs::write(&file, encode(&families)).unwrap();
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
}
