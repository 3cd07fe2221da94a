//! The one table of `top`'s columns: header, sort key, width, and how a
//! line shows and sorts in it. The screen, the text frame of `--once`, the
//! key bindings, the footer and `--help` all iterate `COLUMNS`; none lists
//! columns by hand.
//!
//! A line is a connection's access event (`view::event`, the same event
//! `dump` prints) with its rates, or a group's totals; nothing here copies
//! the event's fields.

use std::borrow::Cow;

use crate::{
    clock::Clock,
    human,
    identity::{self, Identity},
    output::event::AccessEvent,
    termsafe, view,
};

use super::model::{Group, History, Rates, Row, SortKey};

/// What the table lists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum View {
    /// One line per connection.
    #[default]
    Connections,
    /// Totals per workload (cgroup, container, pod).
    Workloads,
    /// Totals per service (remote endpoint; local listening one for inbound).
    Services,
}

impl View {
    /// The next view (the Tab key).
    pub fn next(self) -> Self {
        match self {
            Self::Connections => Self::Workloads,
            Self::Workloads => Self::Services,
            Self::Services => Self::Connections,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Connections => "connections",
            Self::Workloads => "workloads",
            Self::Services => "services",
        }
    }
}

/// One line of the table.
#[derive(Clone, Copy, Debug)]
pub struct Line<'a> {
    /// A connection's access event; for a group, its name in `workload`
    /// and `service`, its mean srtt and its oldest connection's age.
    pub event: AccessEvent<'a>,
    /// None: no earlier read to take a rate from yet.
    pub rates: Option<Rates>,
    pub history: History,
    /// Closed since the previous read (shown greyed, this refresh only).
    pub closed: bool,
    /// A group's connection count (None: a connection).
    pub conns: Option<u64>,
}

impl<'a> Line<'a> {
    pub fn connection(row: Row<'_>, history: History, clock: &Clock, id: &'a Identity) -> Self {
        Self {
            event: view::event(row.rec, clock, id),
            rates: row.rates,
            history,
            closed: row.closed,
            conns: None,
        }
    }

    pub fn group(g: &'a Group) -> Self {
        Self {
            event: AccessEvent {
                workload: &g.name,
                service: &g.name,
                srtt_us: g.srtt_us,
                duration_ns: g.age_ns,
                ..AccessEvent::default()
            },
            rates: Some(g.rates),
            history: g.history,
            closed: false,
            conns: Some(g.conns),
        }
    }

    /// The texts a filter looks in.
    pub fn filter_texts(&self) -> [Cow<'a, str>; 10] {
        let e = &self.event;
        if self.conns.is_some() {
            let none = || Cow::Borrowed("");
            return [
                e.workload.into(),
                none(),
                none(),
                none(),
                none(),
                none(),
                none(),
                none(),
                none(),
                none(),
            ];
        }
        [
            identity::endpoint(e.local, e.local_port.into()).into(),
            identity::endpoint(e.remote, e.remote_port.into()).into(),
            e.comm.into(),
            e.workload.into(),
            e.service.into(),
            e.namespace.into(),
            e.pod.into(),
            e.container.into(),
            e.state.into(),
            if e.pid == 0 {
                "".into()
            } else {
                e.pid.to_string().into()
            },
        ]
    }
}

/// A column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Col {
    Group,
    Conns,
    Dir,
    Local,
    Peer,
    State,
    Sent,
    Recv,
    Trend,
    Segs,
    Retr,
    Srtt,
    Age,
    Process,
    Workload,
    Service,
}

/// Which views show a column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shown {
    Connections,
    Groups,
    Both,
}

#[derive(Debug)]
pub struct Column {
    pub col: Col,
    pub header: &'static str,
    /// The key that sorts by it (again: the other way).
    pub key: char,
    /// For `--help` and the README.
    pub help: &'static str,
    pub width: u16,
    /// Numbers: right-aligned, sorted largest first.
    pub numeric: bool,
    pub shown: Shown,
}

macro_rules! columns {
    ($($col:ident $header:literal $key:literal $width:literal $numeric:literal $shown:ident $help:literal;)*) => {
        /// Every column, in screen order.
        pub static COLUMNS: &[Column] = &[$(Column {
            col: Col::$col, header: $header, key: $key, help: $help, width: $width,
            numeric: $numeric, shown: Shown::$shown,
        },)*];
    };
}

columns! {
    // column header key width numeric views help
    Group "GROUP" 'n' 32 false Groups "the workload or service";
    Conns "CONNS" 'k' 6 true Groups "live connections in the group";
    Dir "DIR" 'd' 3 false Connections "out (connect) or in (accept)";
    Local "LOCAL" 'l' 22 false Connections "local address:port";
    Peer "PEER" 'p' 22 false Connections "remote address:port";
    State "STATE" 'e' 10 false Connections "TCP state";
    Sent "SENT/s" 's' 9 true Both "bytes/s sent and acknowledged (tcp_info bytes_acked)";
    Recv "RECV/s" 'r' 9 true Both "bytes/s received (tcp_info bytes_received)";
    Trend "TREND" 'h' 16 false Both "bytes/s both ways, last 16 refreshes (sorts by the latest)";
    Segs "SEGS/s" 'g' 13 true Both "segments/s out/in (segs_out/segs_in)";
    Retr "RETR/s" 'x' 7 true Both "retransmits/s (total_retrans)";
    Srtt "SRTT" 't' 8 true Both "smoothed round-trip time (groups: mean)";
    Age "AGE" 'a' 7 true Both "time since the connection opened (groups: oldest)";
    Process "PROCESS" 'c' 18 false Connections "comm/pid that called connect() or listen()";
    Workload "WORKLOAD" 'w' 28 false Connections "workload: namespace/pod, container, unit or cgroup";
    Service "SERVICE" 'v' 24 false Connections "service (--services name, else endpoint)";
}

impl Column {
    pub fn of(col: Col) -> &'static Column {
        COLUMNS.iter().find(|c| c.col == col).unwrap_or(&COLUMNS[0])
    }

    pub fn by_key(key: char) -> Option<&'static Column> {
        COLUMNS.iter().find(|c| c.key == key)
    }

    pub fn in_view(&self, v: View) -> bool {
        match self.shown {
            Shown::Both => true,
            Shown::Connections => v == View::Connections,
            Shown::Groups => v != View::Connections,
        }
    }

    /// The columns of view `v` (`text`: without the sparkline).
    pub fn of_view(v: View, text: bool) -> impl Iterator<Item = &'static Column> {
        COLUMNS
            .iter()
            .filter(move |c| c.in_view(v) && !(text && c.col == Col::Trend))
    }

    /// What line `l` shows in this column (names escaped for a terminal).
    pub fn text(&self, l: &Line<'_>) -> String {
        let e = &l.event;
        let rate = |f: fn(&Rates) -> f64| l.rates.as_ref().map_or("-".into(), |r| bytes_rate(f(r)));
        match self.col {
            Col::Group => termsafe::escape(e.workload).into_owned(),
            Col::Conns => l.conns.unwrap_or(1).to_string(),
            Col::Dir => match e.direction {
                "outbound" => "out".into(),
                "inbound" => "in".into(),
                other => other.into(),
            },
            Col::Local => identity::endpoint(e.local, e.local_port.into()),
            Col::Peer => identity::endpoint(e.remote, e.remote_port.into()),
            Col::State => if e.failed { "FAILED" } else { e.state }.into(),
            Col::Sent => rate(|r| r.sent),
            Col::Recv => rate(|r| r.received),
            Col::Trend => sparkline(l.history.values()),
            Col::Segs => l.rates.as_ref().map_or("-".into(), |r| {
                format!("{}/{}", count_rate(r.segs_out), count_rate(r.segs_in))
            }),
            Col::Retr => l
                .rates
                .as_ref()
                .map_or("-".into(), |r| format!("{:.1}", r.retransmits)),
            Col::Srtt => human::micros(e.srtt_us),
            Col::Age => human::duration(e.duration_ns as f64 / 1e9),
            Col::Process => {
                if e.pid == 0 {
                    "-".into()
                } else {
                    format!("{}/{}", termsafe::escape(e.comm), e.pid)
                }
            }
            Col::Workload => termsafe::escape(e.workload).into_owned(),
            Col::Service => termsafe::escape(e.service).into_owned(),
        }
    }

    /// Line `l`'s key in this column (an unknown rate sorts below 0).
    pub fn sort_key(&self, l: &Line<'_>) -> SortKey {
        let e = &l.event;
        let rate = |f: fn(&Rates) -> f64| SortKey::Num(l.rates.as_ref().map_or(-1.0, f));
        match self.col {
            Col::Group | Col::Workload => SortKey::Text(e.workload.into()),
            Col::Service => SortKey::Text(e.service.into()),
            Col::Conns => SortKey::Num(l.conns.unwrap_or(1) as f64),
            Col::Dir => SortKey::Text(e.direction.into()),
            // Address, then port as a number.
            Col::Local => SortKey::Text(format!("{}{:05}", sortable(e.local), e.local_port)),
            Col::Peer => SortKey::Text(format!("{}{:05}", sortable(e.remote), e.remote_port)),
            Col::State => SortKey::Text(e.state.into()),
            Col::Sent => rate(|r| r.sent),
            Col::Recv => rate(|r| r.received),
            Col::Trend => rate(Rates::bytes),
            Col::Segs => rate(|r| r.segs_out + r.segs_in),
            Col::Retr => rate(|r| r.retransmits),
            Col::Srtt => SortKey::Num(f64::from(e.srtt_us)),
            Col::Age => SortKey::Num(e.duration_ns as f64),
            Col::Process => SortKey::Text(format!("{}{:010}", e.comm, e.pid)),
        }
    }
}

/// An address as text that sorts in address order.
fn sortable(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => format!("4{:08x}", u32::from(v4)),
        std::net::IpAddr::V6(v6) => format!("6{:032x}", u128::from(v6)),
    }
}

/// Bytes per second in decimal units, as network rates are given
/// (8 Mbit/s = 1.00MB): 3 significant digits, no space (one word a cell).
pub fn bytes_rate(b: f64) -> String {
    if b < 999.5 {
        format!("{b:.0}B")
    } else if b < 999_500.0 {
        format!("{:.1}kB", b / 1e3)
    } else if b < 999_500_000.0 {
        format!("{:.2}MB", b / 1e6)
    } else {
        format!("{:.2}GB", b / 1e9)
    }
}

/// A count per second, whole, with k/M above ten thousand.
fn count_rate(n: f64) -> String {
    if n < 9999.5 {
        format!("{n:.0}")
    } else if n < 9_999_500.0 {
        format!("{:.0}k", n / 1e3)
    } else {
        format!("{:.0}M", n / 1e6)
    }
}

/// A sparkline of `v` (oldest first), scaled to its own largest value;
/// zero is the lowest bar, so the text has no spaces.
pub fn sparkline(v: &[f32]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = v.iter().copied().fold(0f32, f32::max);
    v.iter()
        .map(|&x| {
            if max <= 0.0 || x <= 0.0 {
                BARS[0]
            } else {
                BARS[((x / max * 7.0).round() as usize).min(7)]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_leave_room_for_the_other_keys() {
        let mut keys: Vec<char> = COLUMNS.iter().map(|c| c.key).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), COLUMNS.len());
        for reserved in super::super::keys::RESERVED {
            assert!(!keys.contains(reserved), "{reserved} is a column key");
        }
        for c in COLUMNS {
            assert!(!c.header.contains(' '), "one word a header: {}", c.header);
        }
    }

    #[test]
    fn rates_read_as_decimal_units() {
        for (b, want) in [
            (0.0, "0B"),
            (999.0, "999B"),
            (999.6, "1.0kB"),
            (976_562.5, "976.6kB"),
            (1_000_000.0, "1.00MB"),
            (1_234_567.0, "1.23MB"),
            (2.5e9, "2.50GB"),
        ] {
            assert_eq!(bytes_rate(b), want, "{b}");
        }
        assert_eq!(count_rate(88.4), "88");
        assert_eq!(count_rate(12_345.0), "12k");
    }

    #[test]
    fn sparklines_scale_to_their_own_peak() {
        assert_eq!(sparkline(&[0.0, 1.0, 2.0, 4.0]), "▁▃▅█");
        assert_eq!(sparkline(&[0.0, 0.0]), "▁▁");
        assert_eq!(sparkline(&[]), "");
    }

    #[test]
    fn a_connection_line_shows_the_event_and_its_rates() {
        let rec = longconn_common::ConnRecord {
            cookie: 9,
            family: 2,
            local_addr: [u32::from_ne_bytes([127, 0, 0, 1]), 0, 0, 0],
            remote_addr: [u32::from_ne_bytes([127, 0, 0, 1]), 0, 0, 0],
            local_port: 40000,
            remote_port: 5201,
            direction: longconn_common::layout::DIR_OUTBOUND,
            state: 1,
            srtt_us: 250,
            pid: 42,
            ..Default::default()
        };
        let row = Row {
            rec: &rec,
            history: &History::default(),
            rates: Some(Rates {
                sent: 1e6,
                received: 10.0,
                segs_out: 80.0,
                segs_in: 40.0,
                retransmits: 0.5,
            }),
            closed: false,
        };
        let id = Identity {
            comm: "iperf3\x1b".into(),
            workload: "/w".into(),
            ..Identity::default()
        };
        let clock = Clock {
            boot_ns: 0,
            wall_ns: 0,
        };
        let line = Line::connection(row, History::default(), &clock, &id);
        let cells: Vec<String> = Column::of_view(View::Connections, true)
            .map(|c| c.text(&line))
            .collect();
        assert_eq!(
            cells,
            [
                "out",
                "127.0.0.1:40000",
                "127.0.0.1:5201",
                "ESTAB",
                "1.00MB",
                "10B",
                "80/40",
                "0.5",
                "250us",
                "0.0s",
                "iperf3\\x1b/42",
                "/w",
                ""
            ]
        );
        let texts = line.filter_texts();
        assert!(texts.iter().any(|t| t == "127.0.0.1:40000"));
    }
}
