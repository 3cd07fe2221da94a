//! The Prometheus families of one cycle, for node_exporter's textfile collector.
//!
//! The set of families, their HELP and TYPE never change between cycles (a
//! family with no samples is still declared), so scrapes stay consistent.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, HashMap},
};

use super::{
    cycle::{group_counters, LiveSums},
    state::{ConnState, Counters, State, Strings, Sym},
};
use crate::{
    identity,
    output::promtext::{Family, Kind, Sample},
    view,
};

/// A multiply-rotate hasher for the per-connection dedupe set (keys are
/// plain numbers and addresses from the kernel; SipHash's flood resistance
/// buys nothing here and costs a tenth of a cycle at 200k connections).
#[derive(Default, Clone, Copy)]
struct Fx(u64);

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

type FxBuild = std::hash::BuildHasherDefault<Fx>;

/// Values that come from outside the state: the kernel and the cycle itself.
pub struct SelfStats {
    pub now_unix: f64,
    pub cycle_seconds: f64,
    pub tracked: u64,
    pub capacity: u64,
    pub ringbuf_drops: u64,
    pub map_full_drops: u64,
    /// Live connections the last read-time refresh could not reach: (socket not found, network namespace without a netnsid).
    pub refresh_unreachable: (u64, u64),
}

fn fam(name: &str, help: &str, kind: Kind) -> Family {
    Family {
        name: name.into(),
        help: help.into(),
        kind,
        samples: Vec::new(),
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

type Pick = fn(&Counters) -> u64;
const COUNTER_FIELDS: [(&str, &str, Pick); 6] = [
    (
        "sent_bytes_total",
        "Bytes sent and acknowledged by the peer (tcp_info bytes_acked)",
        |c| c.bytes_sent,
    ),
    (
        "received_bytes_total",
        "Bytes received (tcp_info bytes_received)",
        |c| c.bytes_received,
    ),
    (
        "sent_packets_total",
        "Segments sent (tcp_info segs_out)",
        |c| c.packets_sent,
    ),
    (
        "received_packets_total",
        "Segments received (tcp_info segs_in)",
        |c| c.packets_received,
    ),
    (
        "retransmits_total",
        "Segments retransmitted (tcp_info total_retrans)",
        |c| c.retransmits,
    ),
    (
        "lost_packets_total",
        "Segments the kernel marked lost (running total of tcp_sock.lost)",
        |c| c.lost_packets,
    ),
];

/// A group's families, and how many of its label sets have a sum held at
/// u64::MAX (saturated instead of wrapping).
fn group_families(state: &State, live: &LiveSums, by_service: bool) -> (Vec<Family>, usize) {
    let prefix = if by_service {
        "longconn_service"
    } else {
        "longconn_workload"
    };
    let label_names = if by_service {
        &state.service_labels
    } else {
        &state.workload_labels
    };
    let what = if by_service {
        "service (remote endpoint; local listening endpoint for inbound)"
    } else {
        "workload (cgroup)"
    };
    let mut opened = fam(
        &format!("{prefix}_connections_opened_total"),
        &format!("TCP connections opened, per {what} and direction"),
        Kind::Counter,
    );
    let mut closed = fam(
        &format!("{prefix}_connections_closed_total"),
        &format!("Established TCP connections that closed, per {what} and direction"),
        Kind::Counter,
    );
    let mut failed = fam(
        &format!("{prefix}_connections_failed_total"),
        &format!("Connects that never established, per {what} and direction"),
        Kind::Counter,
    );
    let mut active = fam(
        &format!("{prefix}_active_connections"),
        &format!("Tracked live TCP connections, per {what} and direction"),
        Kind::Gauge,
    );
    let mut counters: Vec<Family> = COUNTER_FIELDS
        .iter()
        .map(|(suffix, help, _)| {
            fam(
                &format!("{prefix}_{suffix}"),
                &format!("{help}, per {what} and direction"),
                Kind::Counter,
            )
        })
        .collect();
    let mut saturated = 0;
    for (key, (totals, sum, live)) in group_counters(state, live, by_service) {
        saturated += usize::from(sum.saturated());
        let (direction, values) = key.split_once('|').unwrap_or(("unknown", key.as_str()));
        let mut l: Vec<(String, String)> = label_names
            .iter()
            .cloned()
            .zip(identity::split_key(values))
            .collect();
        l.push(("direction".into(), direction.into()));
        opened.samples.push(Sample {
            labels: l.clone(),
            value: totals.opened as f64,
        });
        closed.samples.push(Sample {
            labels: l.clone(),
            value: totals.closed as f64,
        });
        failed.samples.push(Sample {
            labels: l.clone(),
            value: totals.failed as f64,
        });
        active.samples.push(Sample {
            labels: l.clone(),
            value: live as f64,
        });
        for (f, (_, _, pick)) in counters.iter_mut().zip(COUNTER_FIELDS.iter()) {
            f.samples.push(Sample {
                labels: l.clone(),
                value: pick(&sum) as f64,
            });
        }
    }
    let mut out = vec![opened, closed, failed, active];
    out.append(&mut counters);
    (out, saturated)
}

fn conn_labels(c: &ConnState, strings: &Strings) -> Vec<(String, String)> {
    labels(&[
        ("direction", view::direction_name(c.direction)),
        ("local_address", &c.local_ip().to_string()),
        ("local_port", &c.local_port.to_string()),
        ("remote_address", &c.remote_ip().to_string()),
        ("remote_port", &c.remote_port.to_string()),
        // The same 4-tuple can exist in several network namespaces at once.
        ("netns", &c.id.netns_cookie.to_string()),
        ("workload", strings.get(c.id.workload)),
        ("service", strings.get(c.id.service)),
    ])
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

/// Per long connection, busiest first, capped; returns the families and how many were omitted.
fn connection_families(state: &State, live: Live) -> (Vec<Family>, usize) {
    let (chosen, omitted) = live.chosen(&state.final_series);
    let chosen: Vec<(&ConnState, Vec<(String, String)>)> = chosen
        .iter()
        .map(|c| (c, conn_labels(c, &state.strings)))
        .collect();

    let mut counters: Vec<Family> = COUNTER_FIELDS
        .iter()
        .map(|(suffix, help, _)| {
            fam(
                &format!("longconn_connection_{suffix}"),
                &format!("{help}, per long connection"),
                Kind::Counter,
            )
        })
        .collect();
    let mut srtt = fam(
        "longconn_connection_srtt_seconds",
        "Smoothed round-trip time, per long connection",
        Kind::Gauge,
    );
    let mut min_rtt = fam(
        "longconn_connection_min_rtt_seconds",
        "Minimum round-trip time seen, per long connection",
        Kind::Gauge,
    );
    let mut start = fam(
        "longconn_connection_start_time_seconds",
        "When the connection was opened (Unix seconds), per long connection",
        Kind::Gauge,
    );
    for (c, l) in chosen {
        for (f, (_, _, pick)) in counters.iter_mut().zip(COUNTER_FIELDS.iter()) {
            f.samples.push(Sample {
                labels: l.clone(),
                value: pick(&c.last) as f64,
            });
        }
        srtt.samples.push(Sample {
            labels: l.clone(),
            value: f64::from(c.srtt_us) / 1e6,
        });
        min_rtt.samples.push(Sample {
            labels: l.clone(),
            value: f64::from(c.min_rtt_us) / 1e6,
        });
        start.samples.push(Sample {
            labels: l,
            value: (c.start_unix_ns as f64 / 1e6).round() / 1e3,
        });
    }
    counters.extend([srtt, min_rtt, start]);
    (counters, omitted)
}

pub fn families(state: &State, live: Live, stats: &SelfStats) -> Vec<Family> {
    let (mut out, saturated_w) = group_families(state, &live.sums, false);
    let (by_service, saturated_s) = group_families(state, &live.sums, true);
    out.extend(by_service);
    let (conns, omitted) = connection_families(state, live);
    out.extend(conns);
    let one = |name: &str, help: &str, kind: Kind, value: f64| Family {
        name: name.into(),
        help: help.into(),
        kind,
        samples: vec![Sample {
            labels: Vec::new(),
            value,
        }],
    };
    out.extend([
        one("longconn_reader_last_success_timestamp_seconds", "When the last collect cycle finished writing (Unix seconds)", Kind::Gauge, stats.now_unix),
        one("longconn_reader_cycle_duration_seconds", "Wall time of the last collect cycle up to writing this file", Kind::Gauge, stats.cycle_seconds),
        one("longconn_reader_state_start_time_seconds", "When the reader's totals started; a change means the counters were reset", Kind::Gauge, state.created_unix_ns as f64 / 1e9),
        one("longconn_tracked_connections", "Entries in map_of_tcp_conns", Kind::Gauge, stats.tracked as f64),
        one("longconn_map_capacity_connections", "Capacity of map_of_tcp_conns (longconn-pin --max-connections)", Kind::Gauge, stats.capacity as f64),
        one("longconn_ringbuf_drops_total", "Close records that did not fit the ring buffer (kept in the map and reaped by the reader, so not lost)", Kind::Counter, stats.ringbuf_drops as f64),
        one("longconn_map_full_drops_total", "Connections not tracked because map_of_tcp_conns was full or the insert failed", Kind::Counter, stats.map_full_drops as f64),
        one("longconn_closes_without_record_total", "Connections that disappeared without a close record (accounted from their last live values)", Kind::Counter, state.closes_without_record as f64),
        one("longconn_malformed_records_total", "Map or ring-buffer records of the wrong size, skipped", Kind::Counter, state.malformed_records as f64),
        one("longconn_reader_connection_series_omitted", "Long connections not exported per connection because of --max-connection-series", Kind::Gauge, omitted as f64),
        one(SATURATED_GROUPS, "Workload and service label sets whose summed counters reached 2^64-1 and are held there instead of wrapping", Kind::Gauge, (saturated_w + saturated_s) as f64),
    ]);
    let unreachable = |reason: &str, n: u64| Sample {
        labels: vec![("reason".into(), reason.into())],
        value: n as f64,
    };
    out.push(Family {
        name: "longconn_refresh_unreachable_connections".into(),
        help: "Live connections whose counters the last read-time refresh could not read (their values are from the last kernel-side update): socket not found by its 4-tuple and cookie, or a network namespace this reader has no netnsid for".into(),
        kind: Kind::Gauge,
        samples: vec![
            unreachable("socket_not_found", stats.refresh_unreachable.0),
            unreachable("netns_unreachable", stats.refresh_unreachable.1),
        ],
    });
    out
}

/// The family counting saturated group sums (collect warns when it is not 0).
pub const SATURATED_GROUPS: &str = "longconn_reader_saturated_groups";

/// For tests and `dump`: the value of one sample by family and labels.
#[allow(dead_code)]
pub fn lookup(families: &[Family], name: &str, want: &BTreeMap<&str, &str>) -> Option<f64> {
    families
        .iter()
        .find(|f| f.name == name)?
        .samples
        .iter()
        .find_map(|s| {
            want.iter()
                .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
                .then_some(s.value)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::state::IdSyms;
    use longconn_common::{layout, testgen::Gen};

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
            refresh_unreachable: (0, 0),
        }
    }

    fn samples<'a>(families: &'a [Family], name: &str) -> Vec<&'a Sample> {
        families
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.samples.iter().collect())
            .unwrap_or_default()
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
            t.opened = i as u64 + 1;
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
        let families = families(&st, live, &stats());
        let opened = samples(&families, "longconn_workload_connections_opened_total");
        assert_eq!(opened.len(), 3);
        for (i, (w, c)) in names.iter().enumerate() {
            let want: Vec<(String, String)> =
                [("workload", *w), ("comm", *c), ("direction", "outbound")]
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect();
            let s = opened
                .iter()
                .find(|s| s.labels == want)
                .unwrap_or_else(|| panic!("{want:?} in {opened:?}"));
            assert_eq!(s.value, i as f64 + 1.0);
        }
        let conns = samples(&families, "longconn_connection_sent_bytes_total");
        let netns: Vec<&str> = conns
            .iter()
            .filter_map(|s| s.labels.iter().find(|(k, _)| k == "netns"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(netns, vec!["4096", "8192"]);
        assert_eq!(
            lookup(&families, SATURATED_GROUPS, &BTreeMap::new()),
            Some(0.0)
        );

        let text = crate::output::promtext::encode(&families);
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
        let families = families(&st, live, &stats());
        let sent = samples(&families, "longconn_workload_sent_bytes_total");
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].value, u64::MAX as f64, "saturated, not wrapped");
        // The workload group and the service group (same key) both.
        assert_eq!(
            lookup(&families, SATURATED_GROUPS, &BTreeMap::new()),
            Some(2.0)
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
