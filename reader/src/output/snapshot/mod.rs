//! The metric points of one cycle as numbers and symbols, before any text:
//! what `collect` measured. `promtext` and `otlp` are two printers of it;
//! each renders names (from `table::METRICS`), labels and values itself,
//! and neither reads the other's output.
//!
//! Invariants: a Snapshot holds every family of the table, in table order,
//! empty ones included, so the set of families is the same every cycle.
//! After `sort`, each family's points are in the order of their label
//! values as text (the order both printers write). Labels borrow names
//! from the reader's state; nothing here allocates per label or value.

use std::{fmt::Write as _, net::IpAddr};

pub mod table;
pub use table::{Desc, Io, Kind, Metric, METRICS};

use crate::{identity, view};

/// A point's value: counts exact, measurements as floating point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Count(u64),
    Real(f64),
}

/// Why a live connection's counters could not be refreshed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    SocketNotFound,
    NetnsUnreachable,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::SocketNotFound => "socket_not_found",
            Reason::NetnsUnreachable => "netns_unreachable",
        }
    }
}

/// One label: its name is the variant (or, for a configured group label,
/// carried), its value typed.
#[derive(Clone, Copy, Debug)]
pub enum Label<'a> {
    /// `layout::DIR_*`.
    Direction(u32),
    LocalAddress(IpAddr),
    LocalPort(u16),
    RemoteAddress(IpAddr),
    RemotePort(u16),
    /// The netns cookie: the same 4-tuple can exist in several network
    /// namespaces at once.
    Netns(u64),
    Workload(&'a str),
    Service(&'a str),
    Reason(Reason),
    /// A `--workload-labels`/`--service-labels` label: its name, and the
    /// group key (`identity::join_key`) whose `index`-th value it is.
    Group {
        name: &'a str,
        key: &'a str,
        index: usize,
    },
}

impl<'a> Label<'a> {
    /// The Prometheus label name.
    pub fn name(&self) -> &'a str {
        match self {
            Label::Direction(_) => "direction",
            Label::LocalAddress(_) => "local_address",
            Label::LocalPort(_) => "local_port",
            Label::RemoteAddress(_) => "remote_address",
            Label::RemotePort(_) => "remote_port",
            Label::Netns(_) => "netns",
            Label::Workload(_) => "workload",
            Label::Service(_) => "service",
            Label::Reason(_) => "reason",
            Label::Group { name, .. } => name,
        }
    }

    /// The OTel attribute key, in two parts written one after the other:
    /// a semantic-convention key, or "longconn." and the label name.
    pub fn otel_key(&self) -> (&'static str, &'a str) {
        match self {
            Label::LocalAddress(_) => ("network.local.address", ""),
            Label::LocalPort(_) => ("network.local.port", ""),
            Label::RemoteAddress(_) => ("network.peer.address", ""),
            Label::RemotePort(_) => ("network.peer.port", ""),
            other => ("longconn.", other.name()),
        }
    }

    pub fn port(&self) -> Option<u16> {
        match self {
            Label::LocalPort(p) | Label::RemotePort(p) => Some(*p),
            _ => None,
        }
    }

    pub fn address(&self) -> Option<IpAddr> {
        match self {
            Label::LocalAddress(a) | Label::RemoteAddress(a) => Some(*a),
            _ => None,
        }
    }

    /// The value as text: borrowed where it is text already, else written
    /// into `buf` (cleared first).
    pub fn text<'s>(&'s self, buf: &'s mut String) -> &'s str {
        buf.clear();
        // Writing to a String cannot fail.
        let _ = match self {
            Label::Direction(d) => return view::direction_name(*d),
            Label::LocalAddress(a) | Label::RemoteAddress(a) => write!(buf, "{a}"),
            Label::LocalPort(p) | Label::RemotePort(p) => write!(buf, "{p}"),
            Label::Netns(n) => write!(buf, "{n}"),
            Label::Workload(s) | Label::Service(s) => return s,
            Label::Reason(r) => return r.name(),
            Label::Group { key, index, .. } => {
                return identity::key_value(key, *index, buf).unwrap_or("")
            }
        };
        buf
    }
}

/// A label set and when its series started (Unix ns): a connection's
/// start, or for groups and the reader's own figures the state's start
/// (a state reset restarts their sums).
#[derive(Clone, Debug)]
pub struct Series<'a> {
    pub labels: Vec<Label<'a>>,
    pub start_unix_ns: u64,
}

/// A series' place in a Snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeriesId(u32);

#[derive(Clone, Copy, Debug)]
pub struct Point {
    pub series: SeriesId,
    pub value: Value,
}

#[derive(Clone, Debug)]
pub struct Snapshot<'a> {
    /// Per row of `METRICS`.
    points: Vec<Vec<Point>>,
    series: Vec<Series<'a>>,
}

impl Default for Snapshot<'_> {
    fn default() -> Self {
        Self {
            points: METRICS.iter().map(|_| Vec::new()).collect(),
            series: Vec::new(),
        }
    }
}

impl<'a> Snapshot<'a> {
    pub fn add_series(&mut self, labels: Vec<Label<'a>>, start_unix_ns: u64) -> SeriesId {
        let id = SeriesId(self.series.len() as u32);
        self.series.push(Series {
            labels,
            start_unix_ns,
        });
        id
    }

    /// A point of `series` in family `metric`; at most one per series and family.
    pub fn push(&mut self, metric: Metric, series: SeriesId, value: Value) {
        if let Some(points) = self.points.get_mut(metric.0) {
            points.push(Point { series, value });
        }
    }

    pub fn series(&self, id: SeriesId) -> &Series<'a> {
        &self.series[id.0 as usize]
    }

    /// Every family in table order, with its points.
    pub fn families(&self) -> impl Iterator<Item = (&'static Desc, &[Point])> {
        METRICS.iter().zip(self.points.iter().map(Vec::as_slice))
    }

    /// The points of one family.
    #[cfg(test)]
    pub fn points(&self, metric: Metric) -> &[Point] {
        self.points.get(metric.0).map_or(&[], Vec::as_slice)
    }

    /// Puts each family's points in the order of their label values as
    /// text. Each label set's text is made once, not per comparison.
    pub fn sort(&mut self) {
        let mut buf = String::new();
        let keys: Vec<Vec<u8>> = self
            .series
            .iter()
            .map(|s| {
                let mut key = Vec::new();
                for l in &s.labels {
                    order_key(&mut key, l.text(&mut buf));
                }
                key
            })
            .collect();
        let mut order: Vec<u32> = (0..self.series.len() as u32).collect();
        order.sort_by(|a, b| keys[*a as usize].cmp(&keys[*b as usize]));
        let mut rank = vec![0u32; order.len()];
        for (r, s) in order.into_iter().enumerate() {
            rank[s as usize] = r as u32;
        }
        for points in &mut self.points {
            points.sort_unstable_by_key(|p| rank[p.series.0 as usize]);
        }
    }
}

/// Appends `text` so that comparing keys byte-wise compares the label
/// value sequences (each text compared as str, a shorter prefix first):
/// NUL is written as 0 1, and each value ends with 0 0.
fn order_key(key: &mut Vec<u8>, text: &str) {
    for &b in text.as_bytes() {
        key.push(b);
        if b == 0 {
            key.push(1);
        }
    }
    key.extend_from_slice(&[0, 0]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-wise order of the keys is the order of the value lists.
    #[test]
    fn order_keys_order_like_value_lists() {
        let lists: &[&[&str]] = &[
            &[],
            &[""],
            &["", ""],
            &["a"],
            &["a", ""],
            &["a\0"],
            &["a\0b"],
            &["a", "b"],
            &["ab"],
            &["ab", ""],
            &["b"],
            &["\0"],
            &["é"],
            &["10.0.0.1", "80"],
            &["2001:db8::1", "443"],
            &["9.0.0.1", "1"],
        ];
        let key = |l: &[&str]| {
            let mut k = Vec::new();
            for t in l {
                order_key(&mut k, t);
            }
            k
        };
        for a in lists {
            for b in lists {
                assert_eq!(key(a).cmp(&key(b)), a.cmp(b), "{a:?} {b:?}");
            }
        }
    }
}
