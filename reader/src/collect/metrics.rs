//! The metric `Snapshot` of one cycle: group sums, the chosen
//! per-connection series and the reader's own figures, as typed points in
//! the families of the metric table (`output::snapshot::table`).
//!
//! The set of families never changes between cycles (a family with no
//! points is still declared), so scrapes stay consistent; memory follows
//! the live set: at most `--max-connection-series` connection series.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, HashMap},
};

use super::{
    cycle::LiveSums,
    state::{ConnState, Counters, GroupKey, GroupTotals, State, Sym},
};
use crate::{
    identity,
    output::snapshot::{
        table::{self, COUNTER_FIELDS},
        Label, Metric, Reason, Snapshot, Value,
    },
};

/// A multiply-rotate hasher for the per-connection dedupe set (keys are
/// plain numbers and addresses from the kernel; SipHash's flood resistance
/// buys nothing here and costs a tenth of a cycle at 200k connections).
#[derive(Default, Clone, Copy)]
pub(super) struct Fx(u64);

impl std::hash::Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(w));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(v.into());
    }
    fn write_u16(&mut self, v: u16) {
        self.write_u64(v.into());
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

pub(super) type FxBuild = std::hash::BuildHasherDefault<Fx>;

/// Values that come from outside the state: the kernel and the cycle itself.
pub struct SelfStats {
    pub now_unix: f64,
    pub cycle_seconds: f64,
    pub tracked: u64,
    pub capacity: u64,
    pub ringbuf_drops: u64,
    pub map_full_drops: u64,
    /// Closes whose access-log record could not be kept (kernel counter).
    pub close_records_unlogged: u64,
    /// Live connections the last read-time refresh could not reach: (socket not found, network namespace without a netnsid).
    pub refresh_unreachable: (u64, u64),
}

type Pick = fn(&Counters) -> u64;
/// The counter rows of a group or connection block, in table order.
const PICKS: [Pick; COUNTER_FIELDS] = [
    |c| c.bytes_sent,
    |c| c.bytes_received,
    |c| c.packets_sent,
    |c| c.packets_received,
    |c| c.retransmits,
    |c| c.lost_packets,
];

/// Closed totals plus live sums per group key: the exported values.
fn group_sums(
    state: &State,
    live: &LiveSums,
    by_service: bool,
) -> BTreeMap<GroupKey, (GroupTotals, Counters, u64)> {
    let (groups, live) = if by_service {
        (&state.services, &live.services)
    } else {
        (&state.workloads, &live.workloads)
    };
    let mut sums: BTreeMap<GroupKey, (GroupTotals, Counters, u64)> = groups
        .iter()
        .map(|(k, t)| (*k, (*t, t.closed_counters, 0)))
        .collect();
    for (key, (counters, n)) in live {
        let e = sums.entry(*key).or_default();
        e.1.add(*counters);
        e.2 += n;
    }
    sums
}

/// A group block's points; returns how many of its label sets have a sum
/// held at u64::MAX (saturated instead of wrapping).
fn group_points<'a>(
    snap: &mut Snapshot<'a>,
    state: &'a State,
    live: &LiveSums,
    by_service: bool,
) -> usize {
    let (block, label_names) = if by_service {
        (table::SERVICE, &state.service_labels)
    } else {
        (table::WORKLOAD, &state.workload_labels)
    };
    let mut saturated = 0;
    for ((direction, key), (totals, sum, live)) in group_sums(state, live, by_service) {
        let start = series_start(state, &totals);
        saturated += usize::from(sum.saturated());
        let key = state.strings.get(key);
        let n = label_names.len().min(identity::key_len(key));
        let mut labels: Vec<Label<'a>> = label_names[..n]
            .iter()
            .enumerate()
            .map(|(index, name)| Label::Group { name, key, index })
            .collect();
        labels.push(Label::Direction(direction));
        let series = snap.add_series(labels, start);
        let count = |n: u64| Value::Count(n);
        // Unix seconds to the millisecond, as a connection's start.
        let start_s = (start as f64 / 1e6).round() / 1e3;
        snap.push(block.at(table::GROUP_START), series, Value::Real(start_s));
        // Opened = every connection accounted: closed, failed or live. (The
        // kernel's close totals carry closes the reader never saw live.)
        let opened = totals
            .closed
            .saturating_add(totals.failed)
            .saturating_add(live);
        snap.push(block.at(table::GROUP_OPENED), series, count(opened));
        snap.push(block.at(table::GROUP_CLOSED), series, count(totals.closed));
        snap.push(block.at(table::GROUP_FAILED), series, count(totals.failed));
        snap.push(block.at(table::GROUP_ACTIVE), series, count(live));
        for (i, pick) in PICKS.iter().enumerate() {
            snap.push(
                block.at(table::GROUP_COUNTERS + i),
                series,
                count(pick(&sum)),
            );
        }
    }
    saturated
}

/// When a group series' counters started (Unix ns): its own start (see
/// `retire`), never before the state's (a reset restarts every sum).
fn series_start(state: &State, t: &GroupTotals) -> u64 {
    let own = u64::try_from(t.start_unix_ns).unwrap_or(0);
    own.max(state_start(state))
}

/// When the reader's totals started (Unix ns): the start of every series
/// but a connection's and a group's.
fn state_start(state: &State) -> u64 {
    u64::try_from(state.created_unix_ns).unwrap_or(0)
}

fn conn_labels<'a>(c: &ConnState, state: &'a State) -> Vec<Label<'a>> {
    vec![
        Label::Direction(c.direction),
        Label::LocalAddress(c.local_ip()),
        Label::LocalPort(c.local_port),
        Label::RemoteAddress(c.remote_ip()),
        Label::RemotePort(c.remote_port),
        Label::Netns(c.id.netns_cookie),
        Label::Workload(state.strings.get(c.id.workload)),
        Label::Service(state.strings.get(c.id.service)),
    ]
}

/// A per-connection series' label set (addresses, netns cookie and names as stored).
type LabelKey = (u32, [u8; 16], u16, [u8; 16], u16, u64, Sym, Sym);

fn label_key(c: &ConnState) -> LabelKey {
    (
        c.direction,
        c.local,
        c.local_port,
        c.remote,
        c.remote_port,
        c.id.netns_cookie,
        c.id.workload,
        c.id.service,
    )
}

/// A member of `TopSeries`, ordered so that the heap's top is the worst:
/// fewest bytes, then latest.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Worst {
    rank: (Reverse<u64>, u64),
    key: LabelKey,
}

/// What the cycle's live connections contribute to the metrics, gathered as
/// they stream by (they are never all in memory): group sums, and the
/// per-connection series to export.
///
/// Series: among long live connections (cookie order) then the final
/// series, busiest first (bytes sent + received), earlier first among
/// equals, each label set once (its first), at most `cap`; the same choice
/// as sorting them all, deduplicating and truncating, kept in O(cap) by a
/// heap of the current best `cap` label sets. A label set's winner is never
/// displaced by a later, worse duplicate, and one dropped for `cap` better
/// sets cannot come back: the heap's worst only improves.
pub struct Live {
    pub sums: LiveSums,
    cap: usize,
    long_threshold_ns: u64,
    now_boot: u64,
    pos: u64,
    members: HashMap<LabelKey, (u64, u64, ConnState), FxBuild>,
    heap: BinaryHeap<Worst>,
    /// A 128-bit hash of every candidate's label set, to count distinct ones.
    keys: Vec<u128>,
}

impl Live {
    pub fn new(cap: usize, long_threshold_ns: u64, now_boot: u64) -> Self {
        Self {
            sums: LiveSums::default(),
            cap,
            long_threshold_ns,
            now_boot,
            pos: 0,
            members: HashMap::default(),
            heap: BinaryHeap::new(),
            keys: Vec::new(),
        }
    }

    /// One live connection, in cookie order.
    pub fn add(&mut self, c: &ConnState) {
        self.sums.add(c);
        if self.now_boot.saturating_sub(c.start_ns) >= self.long_threshold_ns {
            self.candidate(c);
        }
    }

    fn candidate(&mut self, c: &ConnState) {
        let bytes = c.last.bytes_sent.saturating_add(c.last.bytes_received);
        let pos = self.pos;
        self.pos += 1;
        let key = label_key(c);
        self.keys.push(hash128(&key));
        if self.cap == 0 {
            return;
        }
        let better = |(b, p): (u64, u64), (ob, op): (u64, u64)| b > ob || (b == ob && p < op);
        if let Some(m) = self.members.get_mut(&key) {
            if better((bytes, pos), (m.0, m.1)) {
                *m = (bytes, pos, *c);
                self.heap.push(Worst {
                    rank: (Reverse(bytes), pos),
                    key,
                });
            }
            return;
        }
        if self.members.len() >= self.cap {
            // Drop stale entries (a label set's earlier, replaced member).
            while let Some(w) = self.heap.peek() {
                if self.members.get(&w.key).is_some_and(|m| m.1 == w.rank.1) {
                    break;
                }
                self.heap.pop();
            }
            match self.heap.peek() {
                Some(w) if better((bytes, pos), (w.rank.0 .0, w.rank.1)) => {
                    if let Some(w) = self.heap.pop() {
                        self.members.remove(&w.key);
                    }
                }
                _ => return,
            }
        }
        self.members.insert(key, (bytes, pos, *c));
        self.heap.push(Worst {
            rank: (Reverse(bytes), pos),
            key,
        });
    }

    /// The series to export, in order, and how many label sets were left out.
    fn chosen(mut self, final_series: &[ConnState]) -> (Vec<ConnState>, usize) {
        for c in final_series {
            self.candidate(c);
        }
        let mut chosen: Vec<(u64, u64, ConnState)> = self.members.into_values().collect();
        chosen.sort_unstable_by_key(|(b, p, _)| (Reverse(*b), *p));
        self.keys.sort_unstable();
        self.keys.dedup();
        let omitted = self.keys.len().saturating_sub(chosen.len());
        (chosen.into_iter().map(|(_, _, c)| c).collect(), omitted)
    }
}

fn hash128(key: &LabelKey) -> u128 {
    use std::hash::{Hash, Hasher};
    let mut a = Fx(0x243f_6a88_85a3_08d3);
    let mut b = Fx(0x1319_8a2e_0370_7344);
    key.hash(&mut a);
    key.hash(&mut b);
    (u128::from(a.finish()) << 64) | u128::from(b.finish() ^ 0x9e37_79b9_7f4a_7c15)
}

/// Per long connection, busiest first, capped; returns how many were omitted.
fn connection_points<'a>(snap: &mut Snapshot<'a>, state: &'a State, live: Live) -> usize {
    let (chosen, omitted) = live.chosen(&state.final_series);
    let block = table::CONNECTION;
    for c in &chosen {
        // A start before 1970 is not a time: the state's start instead.
        let start = match u64::try_from(c.start_unix_ns) {
            Ok(ns) if ns > 0 => ns,
            _ => state_start(state),
        };
        let series = snap.add_series(conn_labels(c, state), start);
        for (i, pick) in PICKS.iter().enumerate() {
            snap.push(block.at(i), series, Value::Count(pick(&c.last)));
        }
        let seconds = |us: u32| Value::Real(f64::from(us) / 1e6);
        snap.push(block.at(table::CONN_SRTT), series, seconds(c.srtt_us));
        snap.push(block.at(table::CONN_MIN_RTT), series, seconds(c.min_rtt_us));
        // Unix seconds to the millisecond.
        let start_s = (c.start_unix_ns as f64 / 1e6).round() / 1e3;
        snap.push(block.at(table::CONN_START), series, Value::Real(start_s));
    }
    omitted
}

/// The cycle's Snapshot, sorted, and how many group label sets have a
/// saturated sum (`table::SATURATED_GROUPS`).
pub fn snapshot<'a>(state: &'a State, live: Live, stats: &SelfStats) -> (Snapshot<'a>, u64) {
    let mut snap = Snapshot::default();
    let saturated = group_points(&mut snap, state, &live.sums, false)
        + group_points(&mut snap, state, &live.sums, true);
    let omitted = connection_points(&mut snap, state, live);
    let saturated = saturated as u64;
    let start = state_start(state);
    let none = snap.add_series(Vec::new(), start);
    let (real, count) = (Value::Real, Value::Count);
    let singles: [(Metric, Value); 12] = [
        (table::LAST_SUCCESS, real(stats.now_unix)),
        (table::CYCLE_DURATION, real(stats.cycle_seconds)),
        (table::STATE_START, real(state.created_unix_ns as f64 / 1e9)),
        (table::TRACKED, count(stats.tracked)),
        (table::CAPACITY, count(stats.capacity)),
        (table::RINGBUF_DROPS, count(stats.ringbuf_drops)),
        (table::MAP_FULL_DROPS, count(stats.map_full_drops)),
        (
            table::CLOSES_WITHOUT_RECORD,
            count(state.closes_without_record),
        ),
        (table::MALFORMED, count(state.malformed_records)),
        (table::SERIES_OMITTED, count(omitted as u64)),
        (table::SATURATED_GROUPS, count(saturated)),
        (
            table::CLOSE_RECORDS_UNLOGGED,
            count(stats.close_records_unlogged),
        ),
    ];
    for (metric, value) in singles {
        snap.push(metric, none, value);
    }
    let (not_found, netns) = stats.refresh_unreachable;
    for (reason, n) in [
        (Reason::SocketNotFound, not_found),
        (Reason::NetnsUnreachable, netns),
    ] {
        let series = snap.add_series(vec![Label::Reason(reason)], start);
        snap.push(table::REFRESH_UNREACHABLE, series, count(n));
    }
    snap.sort();
    (snap, saturated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::state::IdSyms;
    use longconn_common::layout;
    use longconn_testgen::Gen;

    /// The previous implementation: every candidate in memory, stable sort
    /// busiest first, first of each label set, truncated.
    fn reference(live: &[ConnState], fin: &[ConnState], cap: usize) -> (Vec<ConnState>, usize) {
        let mut c: Vec<&ConnState> = live.iter().chain(fin.iter()).collect();
        c.sort_by_key(|c| Reverse(c.last.bytes_sent.saturating_add(c.last.bytes_received)));
        let mut seen = std::collections::HashSet::new();
        c.retain(|c| seen.insert(label_key(c)));
        let omitted = c.len().saturating_sub(cap);
        c.truncate(cap);
        (c.into_iter().copied().collect(), omitted)
    }

    fn stats() -> SelfStats {
        SelfStats {
            now_unix: 1.7e9,
            cycle_seconds: 0.01,
            tracked: 0,
            capacity: 1,
            ringbuf_drops: 0,
            map_full_drops: 0,
            close_records_unlogged: 0,
            refresh_unreachable: (0, 0),
        }
    }

    /// A family's points as (label name, text) pairs and values.
    fn samples(snap: &Snapshot, metric: Metric) -> Vec<(Vec<(String, String)>, Value)> {
        let mut buf = String::new();
        snap.points(metric)
            .iter()
            .map(|p| {
                let labels = snap
                    .series(p.series)
                    .labels
                    .iter()
                    .map(|l| (l.name().to_owned(), l.text(&mut buf).to_owned()))
                    .collect();
                (labels, p.value)
            })
            .collect()
    }

    /// Workloads whose names collided when values were joined raw with 0x1f
    /// (issue 12 item 3) are two series with their own values; the same
    /// 4-tuple in two network namespaces is two connection series (item 8).
    #[test]
    fn colliding_names_and_netns_give_distinct_series() {
        use crate::identity::Identity;
        let mut st = State {
            workload_labels: vec!["workload".into(), "comm".into()],
            service_labels: vec!["service".into()],
            ..Default::default()
        };
        let names = [
            ("/a\u{1f}b", "x"),
            ("/a", "b\u{1f}x"),
            ("/q\"\\\n", "\u{1b}[2J"),
        ];
        for (i, (w, c)) in names.iter().enumerate() {
            let id = Identity {
                workload: (*w).into(),
                comm: (*c).into(),
                ..Default::default()
            };
            let key = st.strings.intern(&id.key(&st.workload_labels));
            let t = st.workloads.entry((layout::DIR_OUTBOUND, key)).or_default();
            t.closed = i as u64 + 1;
        }
        let mut live = Live::new(10, 0, 100);
        let wkey = Identity {
            workload: names[1].0.into(),
            comm: names[1].1.into(),
            ..Default::default()
        }
        .key(&st.workload_labels);
        let (wl, svc) = (st.strings.intern(&wkey), st.strings.intern("127.0.0.1:80"));
        for (cookie, netns) in [(1u64, 4096u64), (2, 8192)] {
            live.add(&ConnState {
                seq: cookie,
                direction: layout::DIR_OUTBOUND,
                local: crate::collect::state::addr_bytes([127, 0, 0, 1].into()),
                local_port: 40001,
                remote: crate::collect::state::addr_bytes([127, 0, 0, 1].into()),
                remote_port: 40000,
                id: IdSyms {
                    workload: wl,
                    service: svc,
                    netns_cookie: netns,
                    ..Default::default()
                },
                wkey: wl,
                skey: svc,
                ..Default::default()
            });
        }
        let (snap, saturated) = snapshot(&st, live, &stats());
        let opened = samples(&snap, table::WORKLOAD.at(table::GROUP_OPENED));
        assert_eq!(opened.len(), 3);
        for (i, (w, c)) in names.iter().enumerate() {
            let want: Vec<(String, String)> =
                [("workload", *w), ("comm", *c), ("direction", "outbound")]
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect();
            let s = opened
                .iter()
                .find(|s| s.0 == want)
                .unwrap_or_else(|| panic!("{want:?} in {opened:?}"));
            // Opened: closed plus live (the two live connections are names[1]'s).
            let live = if i == 1 { 2 } else { 0 };
            assert_eq!(s.1, Value::Count(i as u64 + 1 + live));
        }
        let conns = samples(&snap, table::CONNECTION);
        let netns: Vec<&str> = conns
            .iter()
            .filter_map(|s| s.0.iter().find(|(k, _)| k == "netns"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(netns, vec!["4096", "8192"]);
        assert_eq!(saturated, 0);
        assert_eq!(
            samples(&snap, table::SATURATED_GROUPS),
            vec![(vec![], Value::Count(0))]
        );

        let text = crate::output::promtext::encode(&snap);
        let promtool = std::path::Path::new("/usr/bin/promtool");
        if promtool.exists() {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("longconn.prom");
            std::fs::write(&file, &text).unwrap();
            let out = std::process::Command::new(promtool)
                .args(["check", "metrics"])
                .stdin(std::fs::File::open(&file).unwrap())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Group sums saturate at u64::MAX instead of wrapping, and say so.
    #[test]
    fn group_sums_saturate_visibly() {
        let mut st = State {
            workload_labels: vec!["workload".into()],
            service_labels: vec!["service".into()],
            ..Default::default()
        };
        let w = st.strings.intern("/big");
        let t = st.workloads.entry((layout::DIR_OUTBOUND, w)).or_default();
        t.closed_counters.bytes_sent = u64::MAX - 10;
        let mut live = Live::new(0, 0, 100);
        for cookie in 0..3 {
            live.add(&ConnState {
                seq: cookie,
                direction: layout::DIR_OUTBOUND,
                last: Counters {
                    bytes_sent: u64::MAX / 2,
                    ..Default::default()
                },
                wkey: w,
                skey: w,
                ..Default::default()
            });
        }
        let (snap, saturated) = snapshot(&st, live, &stats());
        let sent = samples(&snap, table::WORKLOAD.at(table::GROUP_COUNTERS));
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].1, Value::Count(u64::MAX), "saturated, not wrapped");
        // The workload group and the service group (same key) both.
        assert_eq!(saturated, 2);
        assert_eq!(
            samples(&snap, table::SATURATED_GROUPS),
            vec![(vec![], Value::Count(2))]
        );
        let mut c = Counters {
            packets_sent: u64::MAX - 1,
            ..Default::default()
        };
        assert!(!c.saturated());
        c.add(Counters {
            packets_sent: 5,
            ..Default::default()
        });
        assert_eq!(c.packets_sent, u64::MAX);
        assert!(c.saturated());
    }

    /// The streamed choice equals the sort-everything one, with many ties,
    /// duplicate label sets and caps around the candidate count.
    #[test]
    fn streamed_series_choice_equals_sorting_all() {
        let mut g = Gen::new(17);
        for round in 0..400 {
            let n = g.below(300);
            let keys = 1 + g.below(60);
            let conn = |g: &mut Gen, i: u64| ConnState {
                seq: i,
                last: Counters {
                    bytes_sent: g.below(8) as u64 * if g.below(5) == 0 { u64::MAX / 2 } else { 1 },
                    bytes_received: g.below(4) as u64,
                    ..Default::default()
                },
                local_port: g.below(keys) as u16,
                direction: 1 + g.below(2) as u32,
                ..Default::default()
            };
            let live: Vec<ConnState> = (0..n as u64).map(|i| conn(&mut g, i)).collect();
            let fin: Vec<ConnState> = (0..g.below(20) as u64)
                .map(|i| conn(&mut g, 1000 + i))
                .collect();
            let cap = [0, 1, 5, keys, 1000][round % 5];
            let mut acc = Live::new(cap, 0, 0);
            for c in &live {
                acc.add(c);
            }
            let (got, omitted) = acc.chosen(&fin);
            let (want, want_omitted) = reference(&live, &fin, cap);
            let seqs = |v: &[ConnState]| v.iter().map(|c| c.seq).collect::<Vec<_>>();
            assert_eq!(seqs(&got), seqs(&want), "round {round}");
            assert_eq!(omitted, want_omitted, "round {round}");
        }
    }
}
