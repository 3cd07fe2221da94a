//! The one table of metric descriptions: every family longconn exports,
//! in the order the outputs declare them, with its name, help, kind, unit
//! and I/O direction. `collect` fills families by their place here;
//! `promtext` and `otlp` read names, units and directions only from here.
//!
//! Invariant: the table is the set of families of every cycle (a family
//! without points is still declared in `.prom`), so adding a row is the
//! only way to add a metric, and renaming one is a visible change here.

/// Prometheus metric type (OTLP: a cumulative monotonic sum or a gauge).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// What a family measures, as UCUM (or `{annotation}` for counts of things:
/// never `1`, which OTel reads as a ratio).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    Seconds,
    Connections,
    Packets,
    /// Close or map records.
    Records,
    /// Workload or service label sets.
    Groups,
}

impl Unit {
    pub fn ucum(self) -> &'static str {
        match self {
            Unit::Bytes => "By",
            Unit::Seconds => "s",
            Unit::Connections => "{connection}",
            Unit::Packets => "{packet}",
            Unit::Records => "{record}",
            Unit::Groups => "{group}",
        }
    }
}

/// The OTel `network.io.direction` of a byte or packet count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Io {
    Transmit,
    Receive,
}

impl Io {
    pub fn name(self) -> &'static str {
        match self {
            Io::Transmit => "transmit",
            Io::Receive => "receive",
        }
    }
}

/// One family's description.
#[derive(Clone, Copy, Debug)]
pub struct Desc {
    /// Prometheus name; counters end in `_total`.
    pub name: &'static str,
    /// OTel name: the Prometheus one, without a counter's `_total`.
    pub otel_name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub unit: Unit,
    pub io: Option<Io>,
}

impl Desc {
    const fn new(
        name: &'static str,
        help: &'static str,
        kind: Kind,
        unit: Unit,
        io: Option<Io>,
    ) -> Self {
        let otel_name = match kind {
            Kind::Counter => strip_total(name),
            Kind::Gauge => name,
        };
        Self {
            name,
            otel_name,
            help,
            kind,
            unit,
            io,
        }
    }
}

/// `name` without its `_total` (a counter without one fails the build).
const fn strip_total(name: &'static str) -> &'static str {
    let bytes = name.as_bytes();
    let suffix = b"_total";
    assert!(
        bytes.len() > suffix.len(),
        "a counter's name ends in _total"
    );
    let (head, tail) = bytes.split_at(bytes.len() - suffix.len());
    let mut i = 0;
    while i < suffix.len() {
        assert!(tail[i] == suffix[i], "a counter's name ends in _total");
        i += 1;
    }
    match std::str::from_utf8(head) {
        Ok(s) => s,
        Err(_) => panic!("a metric name is ASCII"),
    }
}

/// A family: its place in `METRICS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metric(pub usize);

impl Metric {
    pub fn desc(self) -> &'static Desc {
        &METRICS[self.0]
    }
    /// The family `i` rows after this one (within a block below).
    pub const fn at(self, i: usize) -> Metric {
        Metric(self.0 + i)
    }
}

/// Counter fields, in the order of the six rows `counters!` writes (group
/// and per-connection blocks alike).
pub const COUNTER_FIELDS: usize = 6;

/// The six counters of a group or connection, per `$per`.
macro_rules! counters {
    ($prefix:literal, $per:literal) => {
        [
            Desc::new(
                concat!("longconn_", $prefix, "_sent_bytes_total"),
                concat!(
                    "Bytes sent and acknowledged by the peer (tcp_info bytes_acked), per ",
                    $per
                ),
                Kind::Counter,
                Unit::Bytes,
                Some(Io::Transmit),
            ),
            Desc::new(
                concat!("longconn_", $prefix, "_received_bytes_total"),
                concat!("Bytes received (tcp_info bytes_received), per ", $per),
                Kind::Counter,
                Unit::Bytes,
                Some(Io::Receive),
            ),
            Desc::new(
                concat!("longconn_", $prefix, "_sent_packets_total"),
                concat!("Segments sent (tcp_info segs_out), per ", $per),
                Kind::Counter,
                Unit::Packets,
                Some(Io::Transmit),
            ),
            Desc::new(
                concat!("longconn_", $prefix, "_received_packets_total"),
                concat!("Segments received (tcp_info segs_in), per ", $per),
                Kind::Counter,
                Unit::Packets,
                Some(Io::Receive),
            ),
            Desc::new(
                concat!("longconn_", $prefix, "_retransmits_total"),
                concat!(
                    "Segments retransmitted (tcp_info total_retrans), per ",
                    $per
                ),
                Kind::Counter,
                Unit::Packets,
                None,
            ),
            Desc::new(
                concat!("longconn_", $prefix, "_lost_packets_total"),
                concat!(
                    "Segments the kernel marked lost (running total of tcp_sock.lost), per ",
                    $per
                ),
                Kind::Counter,
                Unit::Packets,
                None,
            ),
        ]
    };
}

/// A group block: connections opened, closed, failed and active, then the counters.
macro_rules! group {
    ($prefix:literal, $what:literal) => {
        [
            Desc::new(
                concat!("longconn_", $prefix, "_connections_opened_total"),
                concat!("TCP connections opened, per ", $what, " and direction"),
                Kind::Counter,
                Unit::Connections,
                None,
            ),
            Desc::new(
                concat!("longconn_", $prefix, "_connections_closed_total"),
                concat!(
                    "Established TCP connections that closed, per ",
                    $what,
                    " and direction"
                ),
                Kind::Counter,
                Unit::Connections,
                None,
            ),
            Desc::new(
                concat!("longconn_", $prefix, "_connections_failed_total"),
                concat!(
                    "Connects that never established, per ",
                    $what,
                    " and direction"
                ),
                Kind::Counter,
                Unit::Connections,
                None,
            ),
            Desc::new(
                concat!("longconn_", $prefix, "_active_connections"),
                concat!(
                    "Tracked live TCP connections, per ",
                    $what,
                    " and direction"
                ),
                Kind::Gauge,
                Unit::Connections,
                None,
            ),
            Desc::new(
                concat!("longconn_", $prefix, "_start_time_seconds"),
                concat!(
                    "When the counters of this ",
                    $what,
                    " and direction started (Unix seconds); a change means they restarted from 0 (the series was retired after --series-ttl without connections and came back, or the reader's totals were reset)"
                ),
                Kind::Gauge,
                Unit::Seconds,
                None,
            ),
        ]
    };
}

/// Group block rows: `GROUP_OPENED..GROUP_START`, then the counters.
pub const GROUP_OPENED: usize = 0;
pub const GROUP_CLOSED: usize = 1;
pub const GROUP_FAILED: usize = 2;
pub const GROUP_ACTIVE: usize = 3;
/// The series' start (`GroupTotals::start_unix_ns`), per group.
pub const GROUP_START: usize = 4;
pub const GROUP_COUNTERS: usize = 5;
const GROUP_ROWS: usize = GROUP_COUNTERS + COUNTER_FIELDS;

/// First rows of each block.
pub const WORKLOAD: Metric = Metric(0);
pub const SERVICE: Metric = Metric(GROUP_ROWS);
/// Per long connection: the counters, then `CONN_SRTT`, `CONN_MIN_RTT`, `CONN_START`.
pub const CONNECTION: Metric = Metric(2 * GROUP_ROWS);
pub const CONN_SRTT: usize = COUNTER_FIELDS;
pub const CONN_MIN_RTT: usize = COUNTER_FIELDS + 1;
pub const CONN_START: usize = COUNTER_FIELDS + 2;
const SELF: usize = CONNECTION.0 + COUNTER_FIELDS + 3;

/// The reader's own figures, one row each.
pub const LAST_SUCCESS: Metric = Metric(SELF);
pub const CYCLE_DURATION: Metric = Metric(SELF + 1);
pub const STATE_START: Metric = Metric(SELF + 2);
pub const TRACKED: Metric = Metric(SELF + 3);
pub const CAPACITY: Metric = Metric(SELF + 4);
pub const RINGBUF_DROPS: Metric = Metric(SELF + 5);
pub const MAP_FULL_DROPS: Metric = Metric(SELF + 6);
pub const CLOSES_WITHOUT_RECORD: Metric = Metric(SELF + 7);
pub const MALFORMED: Metric = Metric(SELF + 8);
pub const SERIES_OMITTED: Metric = Metric(SELF + 9);
pub const SATURATED_GROUPS: Metric = Metric(SELF + 10);
pub const REFRESH_UNREACHABLE: Metric = Metric(SELF + 11);
pub const CLOSE_RECORDS_UNLOGGED: Metric = Metric(SELF + 12);
const ROWS: usize = SELF + 13;

/// Every family, in output order.
pub static METRICS: [Desc; ROWS] = join(&[
    &group!("workload", "workload (cgroup)"),
    &counters!("workload", "workload (cgroup) and direction"),
    &group!(
        "service",
        "service (remote endpoint; local listening endpoint for inbound)"
    ),
    &counters!(
        "service",
        "service (remote endpoint; local listening endpoint for inbound) and direction"
    ),
    &counters!("connection", "long connection"),
    &[
        Desc::new(
            "longconn_connection_srtt_seconds",
            "Smoothed round-trip time, per long connection",
            Kind::Gauge,
            Unit::Seconds,
            None,
        ),
        Desc::new(
            "longconn_connection_min_rtt_seconds",
            "Minimum round-trip time seen, per long connection",
            Kind::Gauge,
            Unit::Seconds,
            None,
        ),
        Desc::new(
            "longconn_connection_start_time_seconds",
            "When the connection was opened (Unix seconds), per long connection",
            Kind::Gauge,
            Unit::Seconds,
            None,
        ),
        Desc::new(
            "longconn_reader_last_success_timestamp_seconds",
            "When the last collect cycle finished writing (Unix seconds)",
            Kind::Gauge,
            Unit::Seconds,
            None,
        ),
        Desc::new(
            "longconn_reader_cycle_duration_seconds",
            "Wall time of the last collect cycle up to writing this file",
            Kind::Gauge,
            Unit::Seconds,
            None,
        ),
        Desc::new(
            "longconn_reader_state_start_time_seconds",
            "When the reader's totals started; a change means the counters were reset",
            Kind::Gauge,
            Unit::Seconds,
            None,
        ),
        Desc::new(
            "longconn_tracked_connections",
            "Entries in map_of_tcp_conns",
            Kind::Gauge,
            Unit::Connections,
            None,
        ),
        Desc::new(
            "longconn_map_capacity_connections",
            "Capacity of map_of_tcp_conns (longconn-pin --max-connections)",
            Kind::Gauge,
            Unit::Connections,
            None,
        ),
        Desc::new(
            "longconn_ringbuf_drops_total",
            "Close records the ring buffer could not take: kept in an overflow map and delivered by the next collect when the reader knows the connection or it is long, else counted in longconn_close_records_unlogged_total (in the group metrics either way)",
            Kind::Counter,
            Unit::Records,
            None,
        ),
        Desc::new(
            "longconn_map_full_drops_total",
            "Connections not tracked because map_of_tcp_conns was full or the insert failed",
            Kind::Counter,
            Unit::Connections,
            None,
        ),
        Desc::new(
            "longconn_closes_without_record_total",
            "Connections that disappeared without a close record (accounted from their last live values)",
            Kind::Counter,
            Unit::Connections,
            None,
        ),
        Desc::new(
            "longconn_malformed_records_total",
            "Map or ring-buffer records of the wrong size, skipped",
            Kind::Counter,
            Unit::Records,
            None,
        ),
        Desc::new(
            "longconn_reader_connection_series_omitted",
            "Long connections not exported per connection because of --max-connection-series",
            Kind::Gauge,
            Unit::Connections,
            None,
        ),
        Desc::new(
            "longconn_reader_saturated_groups",
            "Workload and service label sets whose summed counters reached 2^64-1 and are held there instead of wrapping",
            Kind::Gauge,
            Unit::Groups,
            None,
        ),
        Desc::new(
            "longconn_refresh_unreachable_connections",
            "Live connections whose counters the last read-time refresh could not read (their values are from the last kernel-side update): socket not found by its 4-tuple and cookie, or a network namespace this reader has no netnsid for",
            Kind::Gauge,
            Unit::Connections,
            None,
        ),
        Desc::new(
            "longconn_close_records_unlogged_total",
            "Closes whose access-log close record could not be kept (ring buffer full, connection short and not yet seen by a reader); their counters are in the group metrics",
            Kind::Counter,
            Unit::Records,
            None,
        ),
    ],
]);

/// The blocks above as one array (checked to fill it exactly).
const fn join<const N: usize>(blocks: &[&[Desc]]) -> [Desc; N] {
    let filler = Desc::new("", "", Kind::Gauge, Unit::Seconds, None);
    let mut out = [filler; N];
    let (mut b, mut k) = (0, 0);
    while b < blocks.len() {
        let mut i = 0;
        while i < blocks[b].len() {
            out[k] = blocks[b][i];
            k += 1;
            i += 1;
        }
        b += 1;
    }
    assert!(k == N, "the table's blocks fill it exactly");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::promtext::check_name;

    /// The named rows are where the names say, every name is valid and
    /// unique, and counters end in `_total` (the OTel name without it).
    #[test]
    fn rows_are_where_their_names_say() {
        let cases: &[(Metric, &str)] = &[
            (
                WORKLOAD.at(GROUP_OPENED),
                "longconn_workload_connections_opened_total",
            ),
            (
                WORKLOAD.at(GROUP_ACTIVE),
                "longconn_workload_active_connections",
            ),
            (
                WORKLOAD.at(GROUP_START),
                "longconn_workload_start_time_seconds",
            ),
            (
                SERVICE.at(GROUP_START),
                "longconn_service_start_time_seconds",
            ),
            (
                WORKLOAD.at(GROUP_COUNTERS),
                "longconn_workload_sent_bytes_total",
            ),
            (
                SERVICE.at(GROUP_CLOSED),
                "longconn_service_connections_closed_total",
            ),
            (
                SERVICE.at(GROUP_FAILED),
                "longconn_service_connections_failed_total",
            ),
            (
                SERVICE.at(GROUP_COUNTERS + 5),
                "longconn_service_lost_packets_total",
            ),
            (CONNECTION, "longconn_connection_sent_bytes_total"),
            (CONNECTION.at(CONN_SRTT), "longconn_connection_srtt_seconds"),
            (
                CONNECTION.at(CONN_MIN_RTT),
                "longconn_connection_min_rtt_seconds",
            ),
            (
                CONNECTION.at(CONN_START),
                "longconn_connection_start_time_seconds",
            ),
            (
                LAST_SUCCESS,
                "longconn_reader_last_success_timestamp_seconds",
            ),
            (CYCLE_DURATION, "longconn_reader_cycle_duration_seconds"),
            (STATE_START, "longconn_reader_state_start_time_seconds"),
            (TRACKED, "longconn_tracked_connections"),
            (CAPACITY, "longconn_map_capacity_connections"),
            (RINGBUF_DROPS, "longconn_ringbuf_drops_total"),
            (MAP_FULL_DROPS, "longconn_map_full_drops_total"),
            (
                CLOSES_WITHOUT_RECORD,
                "longconn_closes_without_record_total",
            ),
            (MALFORMED, "longconn_malformed_records_total"),
            (SERIES_OMITTED, "longconn_reader_connection_series_omitted"),
            (SATURATED_GROUPS, "longconn_reader_saturated_groups"),
            (
                REFRESH_UNREACHABLE,
                "longconn_refresh_unreachable_connections",
            ),
            (
                CLOSE_RECORDS_UNLOGGED,
                "longconn_close_records_unlogged_total",
            ),
        ];
        for (m, name) in cases {
            assert_eq!(m.desc().name, *name);
        }
        assert_eq!(METRICS.len(), 44);
        let mut names: Vec<&str> = METRICS.iter().map(|d| d.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), METRICS.len(), "unique names");
        for d in &METRICS {
            assert!(check_name(d.name), "{}", d.name);
            assert!(d.name.starts_with("longconn_"), "{}", d.name);
            assert!(!d.help.is_empty(), "{}", d.name);
            match d.kind {
                Kind::Counter => assert_eq!(format!("{}_total", d.otel_name), d.name),
                Kind::Gauge => {
                    assert_eq!(d.otel_name, d.name);
                    assert!(!d.name.ends_with("_total"), "{}", d.name);
                }
            }
            // Units follow Prometheus' base-unit suffixes.
            if d.name.ends_with("_seconds") {
                assert_eq!(d.unit, Unit::Seconds, "{}", d.name);
            }
            if d.name.contains("_bytes") {
                assert_eq!(d.unit, Unit::Bytes, "{}", d.name);
            }
        }
    }
}
