//! Prometheus text exposition format 0.0.4, for node_exporter's textfile
//! collector.
//!
//! A printer of the cycle's `Snapshot`: names, help and types come from
//! the metric table, label and value text is made here and nowhere else.
//!
//! Invariant: the output depends only on the input (families in table
//! order, points in the sorted Snapshot's order, no timestamps), and every
//! family gets its HELP and TYPE lines even without samples, so the set of
//! series descriptions is the same every cycle.

use std::fmt::Write as _;

use super::snapshot::{Kind, Snapshot, Value};

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

/// The whole exposition text of a sorted Snapshot: every family of the
/// table, ending in a newline.
pub fn encode(snapshot: &Snapshot) -> String {
    let points: usize = snapshot.families().map(|(_, p)| p.len()).sum();
    // A point with a connection's labels is about 250 bytes.
    let mut out = String::with_capacity(8192 + 256 * points);
    let mut buf = String::new();
    for (desc, points) in snapshot.families() {
        debug_assert!(check_name(desc.name), "metric name {:?}", desc.name);
        let kind = match desc.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        out.push_str("# HELP ");
        out.push_str(desc.name);
        out.push(' ');
        escape_into(&mut out, desc.help, false);
        out.push_str("\n# TYPE ");
        out.push_str(desc.name);
        out.push(' ');
        out.push_str(kind);
        out.push('\n');
        for point in points {
            let labels = &snapshot.series(point.series).labels;
            out.push_str(desc.name);
            if !labels.is_empty() {
                out.push('{');
                for (i, label) in labels.iter().enumerate() {
                    debug_assert!(check_label_name(label.name()), "label name {label:?}");
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(label.name());
                    out.push_str("=\"");
                    escape_into(&mut out, label.text(&mut buf), true);
                    out.push('"');
                }
                out.push('}');
            }
            out.push(' ');
            match point.value {
                // Exact, where the float the scraper parses it into may
                // round (beyond 2^53): both read as the same float.
                Value::Count(v) => {
                    let _ = write!(out, "{v}");
                }
                Value::Real(v) => format_value(&mut out, v),
            }
            out.push('\n');
        }
    }
    out
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
fn format_value(out: &mut String, v: f64) {
    const EXACT: f64 = (1u64 << 53) as f64;
    // Writing to a String cannot fail.
    let _ = if v.is_nan() {
        write!(out, "NaN")
    } else if v.is_infinite() {
        write!(out, "{}", if v > 0.0 { "+Inf" } else { "-Inf" })
    } else if v.fract() == 0.0 && v.abs() < EXACT {
        // Exact: |v| < 2^53 fits i64; -0.0 prints as 0.
        write!(out, "{}", v as i64)
    } else {
        write!(out, "{v}")
    };
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let mut out = String::new();
            format_value(&mut out, v);
            assert_eq!(out, want, "{v:e}");
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
}
