//! What `top` knows between two reads, and the arithmetic on it: rates from
//! the cumulative counters of two reads, a short history per connection,
//! closes shown once, group totals, filtering and sorting. Pure: no kernel,
//! no terminal, so every rule here is unit-tested.
//!
//! Invariants: per-connection state is small and bounded by the live set
//! (a cookie's `Track` is dropped one refresh after its connection is gone);
//! counters are 64-bit and cumulative, a rate is the growth over the time
//! between the two refreshes of that record (never a 32-bit wrap); a
//! connection closed since the last read is shown exactly one refresh.

use std::collections::HashMap;

use longconn_common::{layout, ConnRecord};

use crate::collect::Counters;

/// `TCP_CLOSE` (include/net/tcp_states.h).
const TCP_CLOSE: u32 = 7;

/// Samples kept per connection for its sparkline.
pub const HISTORY: usize = 16;

/// Per-second growth of a connection's (or group's) counters.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub sent: f64,
    pub received: f64,
    pub segs_out: f64,
    pub segs_in: f64,
    pub retransmits: f64,
}

impl Rates {
    /// Growth from `a` to `b` over `ns` nanoseconds (zero if `ns` is 0;
    /// a counter that went down counts as no growth).
    pub fn between(a: &Counters, b: &Counters, ns: u64) -> Self {
        if ns == 0 {
            return Self::default();
        }
        let d = b.saturating_sub(*a);
        let s = ns as f64 / 1e9;
        Self {
            sent: d.bytes_sent as f64 / s,
            received: d.bytes_received as f64 / s,
            segs_out: d.packets_sent as f64 / s,
            segs_in: d.packets_received as f64 / s,
            retransmits: d.retransmits as f64 / s,
        }
    }

    /// Bytes per second both ways: the sparkline's measure.
    pub fn bytes(&self) -> f64 {
        self.sent + self.received
    }

    pub fn add(&mut self, o: &Rates) {
        self.sent += o.sent;
        self.received += o.received;
        self.segs_out += o.segs_out;
        self.segs_in += o.segs_in;
        self.retransmits += o.retransmits;
    }
}

/// The last `HISTORY` throughput samples, oldest first.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct History {
    v: [f32; HISTORY],
    len: u8,
}

impl History {
    pub fn push(&mut self, x: f64) {
        if usize::from(self.len) == HISTORY {
            self.v.copy_within(1.., 0);
            self.v[HISTORY - 1] = x as f32;
        } else {
            self.v[usize::from(self.len)] = x as f32;
            self.len += 1;
        }
    }

    pub fn values(&self) -> &[f32] {
        &self.v[..usize::from(self.len)]
    }

    /// Adds `o` sample by sample, aligned on the newest (every live
    /// connection gets a sample at each refresh, so the newest are of the
    /// same refresh).
    pub fn add(&mut self, o: &History) {
        let (a, b) = (usize::from(self.len), usize::from(o.len));
        if b > a {
            let mut v = [0f32; HISTORY];
            v[b - a..b].copy_from_slice(&self.v[..a]);
            self.v = v;
            self.len = o.len;
        }
        let n = usize::from(self.len);
        for (i, x) in o.values().iter().enumerate() {
            self.v[n - b + i] += x;
        }
    }
}

/// What is kept per connection between reads besides its last record
/// (80 bytes).
#[derive(Clone, Copy, Debug, Default)]
struct Track {
    /// The latest `update_ns` seen (when the refresh last copied its
    /// counters).
    prev_ns: u64,
    history: History,
}

/// One connection of the current refresh.
#[derive(Clone, Copy, Debug)]
pub struct Row<'a> {
    pub rec: &'a ConnRecord,
    /// None: first seen at this refresh and opened before the previous one
    /// (no earlier value to take a rate from).
    pub rates: Option<Rates>,
    /// Its recent throughput (the sparkline).
    pub history: &'a History,
    /// Closed since the previous read: shown this refresh only.
    pub closed: bool,
}

/// Every connection of the current refresh, and what is kept to compute
/// the next one's rates.
///
/// Cost: a read returns the map in the same order each time (the kernel's
/// hash buckets, in order), so a record is matched with its previous one
/// by walking the previous read alongside it, not by a hash lookup per
/// record; only a record out of step (a connection opened or closed in
/// between) is looked up, in an index of the previous read built the first
/// time one is. Everything per connection lives in vectors in read order,
/// reused from refresh to refresh.
#[derive(Debug, Default)]
pub struct Model {
    prev_read_ns: Option<u64>,
    /// The one before it, during a refresh.
    prev_read: Option<u64>,
    /// When the current and previous reads started (CLOCK_BOOTTIME ns).
    pub read_ns: u64,
    pub interval_ns: u64,
    /// The records of the current refresh as read, then the last `closed`
    /// ones: connections closed since the previous read. `rates` and
    /// `tracks` go with them, index for index.
    recs: Vec<ConnRecord>,
    rates: Vec<Option<Rates>>,
    tracks: Vec<Track>,
    closed: usize,
    /// The previous refresh's live records and their tracks, during a
    /// refresh; `seen`: which of them this read has met so far, `met` how
    /// many, `next` the one expected next.
    old: Vec<ConnRecord>,
    old_tracks: Vec<Track>,
    seen: Vec<bool>,
    met: usize,
    next: usize,
    /// Cookie to index in `old`, built at the first record out of step.
    index: HashMap<u64, usize, foldhash::fast::RandomState>,
    indexed: bool,
}

impl Model {
    /// Takes one read whole (`begin`, `add`, `finish`).
    #[cfg(test)]
    pub fn update(
        &mut self,
        live: Vec<ConnRecord>,
        read_ns: u64,
        finals: impl FnOnce(&[u64]) -> Vec<ConnRecord>,
    ) {
        self.begin(read_ns);
        self.add(&live);
        self.finish(finals);
    }

    /// Starts a refresh whose read started at `read_ns`.
    pub fn begin(&mut self, read_ns: u64) {
        let prev_read = self.prev_read_ns.replace(read_ns);
        self.prev_read = prev_read;
        self.interval_ns = prev_read.map_or(0, |p| read_ns.saturating_sub(p));
        self.read_ns = read_ns;
        // Connections shown closed are forgotten; the live ones become
        // `old`, and the vectors of the refresh before are reused.
        let live = self.recs.len() - self.closed.min(self.recs.len());
        self.recs.truncate(live);
        self.tracks.truncate(live);
        self.closed = 0;
        std::mem::swap(&mut self.recs, &mut self.old);
        std::mem::swap(&mut self.tracks, &mut self.old_tracks);
        let expect = self.old.len() + self.old.len() / 8;
        self.recs.clear();
        self.recs.reserve(expect);
        self.tracks.clear();
        self.tracks.reserve(expect);
        self.rates.clear();
        self.rates.reserve(expect);
        self.seen.clear();
        self.seen.resize(self.old.len(), false);
        self.met = 0;
        self.next = 0;
        self.index.clear();
        self.indexed = false;
    }

    /// Live records of the refresh, a batch at a time (as they are read).
    pub fn add(&mut self, batch: &[ConnRecord]) {
        for rec in batch {
            let before = self.previous(rec.cookie);
            self.push(*rec, before);
        }
    }

    /// Where `cookie` was in the previous read: the record expected next,
    /// or else looked up in the index.
    fn previous(&mut self, cookie: u64) -> Option<usize> {
        let at = if self.old.get(self.next).is_some_and(|r| r.cookie == cookie) {
            self.next
        } else if self.old.is_empty() {
            return None;
        } else {
            if !self.indexed {
                self.index
                    .extend(self.old.iter().enumerate().map(|(i, r)| (r.cookie, i)));
                self.indexed = true;
            }
            *self.index.get(&cookie)?
        };
        self.next = at + 1;
        if !std::mem::replace(&mut self.seen[at], true) {
            self.met += 1;
        }
        Some(at)
    }

    /// Ends the refresh: `finals` gives the close records (peeked, not
    /// consumed) of the cookies seen live at the previous read and gone
    /// now. A gone connection without one keeps its last values, marked
    /// closed.
    pub fn finish(&mut self, finals: impl FnOnce(&[u64]) -> Vec<ConnRecord>) {
        if self.met == self.old.len() {
            return;
        }
        let gone: Vec<usize> = (0..self.old.len()).filter(|&i| !self.seen[i]).collect();
        let cookies: Vec<u64> = gone.iter().map(|&i| self.old[i].cookie).collect();
        let mut finals: HashMap<u64, ConnRecord> = finals(&cookies)
            .into_iter()
            .map(|r| (r.cookie, r))
            .collect();
        self.closed = gone.len();
        for i in gone {
            let last = self.old[i];
            let rec = finals.remove(&last.cookie).unwrap_or_else(|| {
                let mut r = last;
                r.flags |= layout::F_CLOSED;
                r.state = TCP_CLOSE;
                r
            });
            self.push(rec, Some(i));
        }
    }

    /// Appends `rec` with its rates since `before` (its index in the
    /// previous read, if it was in it), adding them to its history.
    fn push(&mut self, rec: ConnRecord, before: Option<usize>) {
        let now = Counters::of(&rec);
        let (rates, track) = match before {
            Some(i) => {
                let t = self.old_tracks[i];
                // The refresh stamps each record when it copies its
                // counters: the exact time between two copies. A record
                // the refresh could not reach keeps its stamp; then the
                // time between the reads.
                let ns = if rec.update_ns > t.prev_ns {
                    rec.update_ns - t.prev_ns
                } else {
                    self.prev_read.map_or(0, |p| self.read_ns.saturating_sub(p))
                };
                let rates = Rates::between(&Counters::of(&self.old[i]), &now, ns);
                let mut history = t.history;
                history.push(rates.bytes());
                let prev_ns = t.prev_ns.max(rec.update_ns);
                (Some(rates), Track { prev_ns, history })
            }
            None => {
                // Opened since the previous read: everything it counted
                // is new, since its start.
                let rates = self.prev_read.filter(|&p| rec.start_ns >= p).map(|_| {
                    let end = if rec.update_ns > rec.start_ns {
                        rec.update_ns
                    } else {
                        self.read_ns
                    };
                    Rates::between(&Counters::default(), &now, end.saturating_sub(rec.start_ns))
                });
                let mut history = History::default();
                if let Some(r) = &rates {
                    history.push(r.bytes());
                }
                let prev_ns = rec.update_ns;
                (rates, Track { prev_ns, history })
            }
        };
        self.recs.push(rec);
        self.rates.push(rates);
        self.tracks.push(track);
    }

    /// Connections of the current refresh (closed ones included).
    pub fn len(&self) -> usize {
        self.recs.len()
    }

    /// Of them closed since the previous read.
    pub fn closed(&self) -> usize {
        self.closed
    }

    pub fn row(&self, i: usize) -> Row<'_> {
        Row {
            rec: &self.recs[i],
            rates: self.rates[i],
            history: &self.tracks[i].history,
            closed: i >= self.recs.len() - self.closed,
        }
    }

    pub fn rows(&self) -> impl Iterator<Item = Row<'_>> + '_ {
        (0..self.recs.len()).map(|i| self.row(i))
    }

    /// Connections the model keeps state for: those of this refresh (the
    /// live set and those shown closed) and, for the next, the live set of
    /// the previous one.
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.tracks.len()
    }
}

/// Words of a filter: every word must be found, case-insensitively, in
/// one of a line's texts (addresses with ports, process, workload,
/// service, namespace, pod, container, state).
pub fn filter_words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_lowercase).collect()
}

/// Whether every word of `words` is in one of `texts`.
pub fn matches<'t>(words: &[String], texts: impl Iterator<Item = &'t str> + Clone) -> bool {
    words.iter().all(|w| {
        texts.clone().any(|t| {
            if t.is_ascii() {
                contains_ignore_ascii_case(t, w)
            } else {
                t.to_lowercase().contains(w.as_str())
            }
        })
    })
}

fn contains_ignore_ascii_case(hay: &str, needle: &str) -> bool {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    n.is_empty() || h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

/// A sort key: numbers sort numerically, text as text.
#[derive(Clone, Debug, PartialEq, PartialOrd)]
pub enum SortKey {
    Num(f64),
    Text(String),
}

/// Orders keyed items by key, descending or not; ties keep their order
/// (the sort is stable), so equal lines do not swap places between
/// refreshes.
pub fn sort_keyed<T>(items: &mut [(SortKey, T)], descending: bool) {
    if descending {
        items.sort_by(|a, b| Ordered::cmp_keys(&b.0, &a.0));
    } else {
        items.sort_by(|a, b| Ordered::cmp_keys(&a.0, &b.0));
    }
}

/// A total order on keys (NaN above every number; numbers before text).
struct Ordered;

impl Ordered {
    fn cmp_keys(a: &SortKey, b: &SortKey) -> std::cmp::Ordering {
        use SortKey::*;
        match (a, b) {
            (Num(a), Num(b)) => a.total_cmp(b),
            (Text(a), Text(b)) => a.cmp(b),
            (Num(_), Text(_)) => std::cmp::Ordering::Less,
            (Text(_), Num(_)) => std::cmp::Ordering::Greater,
        }
    }
}

/// Totals of one group (workload or service) over its live connections.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Group {
    pub name: String,
    pub conns: u64,
    pub rates: Rates,
    pub history: History,
    /// Mean smoothed RTT of its connections, µs.
    pub srtt_us: u32,
    /// Its oldest connection's age, ns.
    pub age_ns: u64,
}

/// Sums `rows` (live ones) into groups named by `name`, e.g. each row's
/// workload. `now_ns` is the read time (for ages).
pub fn groups<'r>(rows: impl Iterator<Item = (Row<'r>, &'r str)>, now_ns: u64) -> Vec<Group> {
    let mut by: HashMap<&str, (Group, u64)> = HashMap::new();
    for (row, name) in rows.filter(|(r, _)| !r.closed) {
        let (g, srtt_sum) = by.entry(name).or_insert_with(|| {
            (
                Group {
                    name: name.to_owned(),
                    ..Group::default()
                },
                0,
            )
        });
        g.conns += 1;
        if let Some(r) = &row.rates {
            g.rates.add(r);
        }
        g.history.add(row.history);
        *srtt_sum += u64::from(row.rec.srtt_us);
        g.age_ns = g.age_ns.max(now_ns.saturating_sub(row.rec.start_ns));
    }
    by.into_values()
        .map(|(mut g, sum)| {
            g.srtt_us = u32::try_from(sum / g.conns.max(1)).unwrap_or(u32::MAX);
            g
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(cookie: u64, sent: u64, update_ns: u64) -> ConnRecord {
        ConnRecord {
            cookie,
            start_ns: 1_000,
            update_ns,
            bytes_sent: sent,
            packets_sent: sent / 1000,
            state: 1,
            ..ConnRecord::default()
        }
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_rate_is_growth_over_the_time_between_two_refreshes_of_the_record() {
        let mut m = Model::default();
        m.update(vec![rec(1, 5_000, 10 * S)], 10 * S, |_| vec![]);
        assert_eq!(m.row(0).rates, None, "first sight of an older connection");
        // Read at 11 s, but this record was refreshed 2 s after its last copy.
        m.update(vec![rec(1, 2_005_000, 12 * S)], 11 * S, |_| vec![]);
        let r = m.row(0).rates.unwrap();
        assert_eq!(r.sent, 1_000_000.0);
        assert_eq!(r.segs_out, 1000.0);
        assert_eq!(m.interval_ns, S);
        // Not refreshed (same stamp): the time between the reads.
        m.update(vec![rec(1, 3_005_000, 12 * S)], 13 * S, |_| vec![]);
        assert_eq!(m.row(0).rates.unwrap().sent, 500_000.0);
        assert_eq!(m.row(0).history.values(), &[1_000_000.0, 500_000.0]);
    }

    #[test]
    fn counters_never_wrap_and_large_values_stay_exact() {
        let mut m = Model::default();
        let big = u64::MAX - 10;
        m.update(vec![rec(1, big, S)], S, |_| vec![]);
        m.update(vec![rec(1, 5, 2 * S)], 2 * S, |_| vec![]);
        assert_eq!(m.row(0).rates.unwrap().sent, 0.0, "a reset is no growth");
        let mut m = Model::default();
        m.update(vec![rec(1, 1 << 40, S)], S, |_| vec![]);
        m.update(
            vec![rec(1, (1 << 40) + 1 + (1 << 33), 2 * S)],
            2 * S,
            |_| vec![],
        );
        assert_eq!(m.row(0).rates.unwrap().sent, (1u64 << 33) as f64 + 1.0);
    }

    #[test]
    fn a_connection_opened_between_reads_is_rated_from_its_start() {
        let mut m = Model::default();
        m.update(vec![], 10 * S, |_| vec![]);
        let mut r = rec(7, 1_000_000, 11 * S);
        r.start_ns = 10 * S + S / 2;
        m.update(vec![r], 11 * S, |_| vec![]);
        assert_eq!(m.row(0).rates.unwrap().sent, 2_000_000.0);
    }

    #[test]
    fn a_close_is_shown_once_from_its_peeked_record_then_forgotten() {
        let mut m = Model::default();
        m.update(vec![rec(1, 0, S), rec(2, 0, S)], S, |_| vec![]);
        m.update(vec![rec(2, 10, 2 * S)], 2 * S, |gone| {
            assert_eq!(gone, &[1]);
            let mut f = rec(1, 500_000, S + S / 2);
            f.flags = layout::F_CLOSED;
            vec![f]
        });
        let closed: Vec<Row> = m.rows().filter(|r| r.closed).collect();
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].rec.cookie, 1);
        assert_eq!(closed[0].rates.unwrap().sent, 1_000_000.0, "over 0.5 s");
        assert!(closed[0].rec.is_closed());
        m.update(vec![rec(2, 20, 3 * S)], 3 * S, |gone| {
            assert!(gone.is_empty(), "{gone:?}");
            vec![]
        });
        assert_eq!(m.len(), 1);
        assert_eq!(m.tracked(), 1, "state follows the live set");
    }

    #[test]
    fn records_out_of_step_with_the_previous_read_are_matched_by_cookie() {
        let mut m = Model::default();
        let read = |m: &mut Model, cookies: &[u64], t: u64, sent: u64| {
            let live = cookies.iter().map(|&c| rec(c, c * sent, t * S)).collect();
            m.update(live, t * S, |_| vec![]);
        };
        read(&mut m, &[1, 2, 3, 4], 1, 1_000);
        // 2 closed, 5 opened before the first read (no rate), same order.
        read(&mut m, &[1, 5, 3, 4], 2, 2_000);
        let sent = |m: &Model| -> Vec<(u64, Option<f64>, bool)> {
            m.rows()
                .map(|r| (r.rec.cookie, r.rates.map(|r| r.sent), r.closed))
                .collect()
        };
        assert_eq!(
            sent(&m),
            [
                (1, Some(1_000.0), false),
                (5, None, false),
                (3, Some(3_000.0), false),
                (4, Some(4_000.0), false),
                (2, Some(0.0), true),
            ]
        );
        // Another order altogether, and a cookie read twice.
        read(&mut m, &[4, 3, 3, 1, 5], 3, 4_000);
        assert_eq!(
            sent(&m),
            [
                (4, Some(8_000.0), false),
                (3, Some(6_000.0), false),
                (3, Some(6_000.0), false),
                (1, Some(2_000.0), false),
                (5, Some(10_000.0), false),
            ]
        );
        assert_eq!(m.row(0).history.values(), &[4_000.0, 8_000.0]);
        assert_eq!(m.closed(), 0);
    }

    #[test]
    fn a_close_without_a_record_keeps_its_last_values_marked_closed() {
        let mut m = Model::default();
        m.update(vec![rec(1, 100, S)], S, |_| vec![]);
        m.update(vec![], 2 * S, |_| vec![]);
        assert!(m.row(0).closed);
        assert!(m.row(0).rec.is_closed());
        assert_eq!(m.row(0).rec.bytes_sent, 100);
        assert_eq!(layout::tcp_state_name(m.row(0).rec.state), "CLOSED");
    }

    #[test]
    fn per_connection_state_stays_small() {
        assert_eq!(std::mem::size_of::<Track>(), 80);
        // The records of a refresh, with their rates.
        assert_eq!(
            std::mem::size_of::<ConnRecord>() + std::mem::size_of::<Option<Rates>>(),
            256
        );
    }

    #[test]
    fn history_keeps_the_newest_and_groups_align_on_them() {
        let mut h = History::default();
        for i in 0..20 {
            h.push(f64::from(i));
        }
        assert_eq!(h.values().len(), HISTORY);
        assert_eq!(h.values()[0], 4.0);
        assert_eq!(h.values()[HISTORY - 1], 19.0);
        let mut short = History::default();
        short.push(100.0);
        short.push(200.0);
        let mut sum = short;
        sum.add(&h);
        assert_eq!(sum.values().len(), HISTORY);
        assert_eq!(sum.values()[HISTORY - 1], 219.0);
        assert_eq!(sum.values()[HISTORY - 2], 118.0);
        assert_eq!(sum.values()[0], 4.0);
    }

    #[test]
    fn groups_sum_rates_count_live_connections_and_keep_the_oldest() {
        let recs: Vec<ConnRecord> = [(1, 100, 5), (2, 300, 2), (3, 50, 1), (4, 0, 0)]
            .map(|(cookie, srtt_us, start_ns)| ConnRecord {
                cookie,
                srtt_us,
                start_ns,
                ..ConnRecord::default()
            })
            .to_vec();
        let none = History::default();
        let row = |i: usize, sent: f64| Row {
            rec: &recs[i],
            history: &none,
            rates: Some(Rates {
                sent,
                ..Rates::default()
            }),
            closed: false,
        };
        let mut closed = row(3, 1e9);
        closed.closed = true;
        let rows = [row(0, 10.0), row(1, 5.0), row(2, 1.0), closed];
        let names = ["a", "a", "b", "a"];
        let mut g = groups(rows.into_iter().zip(names), 10);
        g.sort_by(|x, y| x.name.cmp(&y.name));
        assert_eq!(g.len(), 2);
        assert_eq!(
            (g[0].conns, g[0].rates.sent, g[0].srtt_us, g[0].age_ns),
            (2, 15.0, 200, 8)
        );
        assert_eq!((g[1].conns, g[1].rates.sent), (1, 1.0));
    }

    #[test]
    fn filters_need_every_word_somewhere_ignoring_case() {
        let texts = ["127.0.0.1:5201", "iperf3", "/longconn-test-x", "Web"];
        let m = |f: &str| matches(&filter_words(f), texts.iter().copied());
        assert!(m(""));
        assert!(m("5201"));
        assert!(m("IPERF 5201"));
        assert!(m("web"));
        assert!(!m("5202"));
        assert!(!m("iperf3 nginx"));
        assert!(matches(&filter_words("ÉTÉ"), ["été"].iter().copied()));
    }

    #[test]
    fn sorting_is_stable_both_ways_numbers_before_text() {
        let order = |v: &[(SortKey, i32)]| v.iter().map(|x| x.1).collect::<Vec<_>>();
        let mut v: Vec<(SortKey, i32)> = [(1, 2.0), (2, 1.0), (3, 2.0), (4, f64::NAN)]
            .map(|(i, x)| (SortKey::Num(x), i))
            .to_vec();
        sort_keyed(&mut v, true);
        assert_eq!(order(&v), [4, 1, 3, 2]);
        sort_keyed(&mut v, false);
        assert_eq!(order(&v), [2, 1, 3, 4]);
        let mut t: Vec<(SortKey, i32)> = [("b", 1), ("a", 2), ("c", 3)]
            .map(|(x, i)| (SortKey::Text(x.into()), i))
            .to_vec();
        t.push((SortKey::Num(0.0), 4));
        sort_keyed(&mut t, false);
        assert_eq!(order(&t), [4, 2, 1, 3]);
    }
}
