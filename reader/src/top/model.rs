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

/// What is kept per connection between reads (128 bytes).
#[derive(Clone, Copy, Debug)]
struct Track {
    prev: Counters,
    /// The record's `update_ns` at the previous read (when the refresh
    /// copied those counters).
    prev_ns: u64,
    history: History,
    /// The refresh (`Model::frame`) that last saw it live.
    seen: u32,
}

/// One connection of the current refresh.
#[derive(Clone, Copy, Debug)]
pub struct Row<'a> {
    pub rec: &'a ConnRecord,
    /// None: first seen at this refresh and opened before the previous one
    /// (no earlier value to take a rate from).
    pub rates: Option<Rates>,
    /// Closed since the previous read: shown this refresh only.
    pub closed: bool,
}

/// Every connection of the current refresh, and what is kept to compute
/// the next one's rates.
#[derive(Debug, Default)]
pub struct Model {
    tracks: HashMap<u64, Track>,
    frame: u32,
    prev_read_ns: Option<u64>,
    /// The one before it, during a refresh.
    prev_read: Option<u64>,
    /// When the current and previous reads started (CLOCK_BOOTTIME ns).
    pub read_ns: u64,
    pub interval_ns: u64,
    /// The records of the current refresh as read, then the last
    /// `closed` ones: connections closed since the previous read. Its
    /// vector is reused from refresh to refresh (`begin`): paging in a
    /// fresh one each time was a tenth of a refresh at 36k connections.
    recs: Vec<ConnRecord>,
    rates: Vec<Option<Rates>>,
    closed: usize,
    /// The previous refresh's live records, during a refresh.
    old: Vec<ConnRecord>,
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
        self.frame = self.frame.wrapping_add(1);
        let prev_read = self.prev_read_ns.replace(read_ns);
        self.prev_read = prev_read;
        self.interval_ns = prev_read.map_or(0, |p| read_ns.saturating_sub(p));
        self.read_ns = read_ns;
        let old_live = self.recs.len() - self.closed.min(self.recs.len());
        for r in &self.recs[old_live..] {
            self.tracks.remove(&r.cookie);
        }
        self.recs.truncate(old_live);
        self.closed = 0;
        // The previous refresh's records become `old` (for `finish` to
        // find the gone ones); its vector is reused, not paged in anew.
        std::mem::swap(&mut self.recs, &mut self.old);
        self.recs.clear();
        self.recs.reserve(self.old.len() + self.old.len() / 8);
        self.rates.clear();
        self.rates.reserve(self.old.len() + self.old.len() / 8);
    }

    /// Live records of the refresh, a batch at a time (as they are read).
    pub fn add(&mut self, batch: &[ConnRecord]) {
        let prev_read = self.prev_read();
        for rec in batch {
            let rates = observe(&mut self.tracks, rec, prev_read, self.read_ns, self.frame);
            self.recs.push(*rec);
            self.rates.push(rates);
        }
    }

    /// Ends the refresh: `finals` gives the close records (peeked, not
    /// consumed) of the cookies seen live at the previous read and gone
    /// now. A gone connection without one keeps its last values, marked
    /// closed.
    pub fn finish(&mut self, finals: impl FnOnce(&[u64]) -> Vec<ConnRecord>) {
        let (frame, prev_read) = (self.frame, self.prev_read());
        let gone: Vec<&ConnRecord> = self
            .old
            .iter()
            .filter(|r| self.tracks.get(&r.cookie).is_some_and(|t| t.seen != frame))
            .collect();
        self.closed = gone.len();
        if !gone.is_empty() {
            let cookies: Vec<u64> = gone.iter().map(|r| r.cookie).collect();
            let mut finals: HashMap<u64, ConnRecord> = finals(&cookies)
                .into_iter()
                .map(|r| (r.cookie, r))
                .collect();
            for last in gone {
                let rec = finals.remove(&last.cookie).unwrap_or_else(|| {
                    let mut r = *last;
                    r.flags |= layout::F_CLOSED;
                    r.state = TCP_CLOSE;
                    r
                });
                let rates = observe(&mut self.tracks, &rec, prev_read, self.read_ns, frame);
                self.recs.push(rec);
                self.rates.push(rates);
            }
        }
        // Every row shown was seen at this refresh; tracks of connections
        // neither live nor shown closed (evicted from the map, or closed
        // while frozen) are dropped, so state follows the live set.
        if self.tracks.len() != self.recs.len() {
            self.tracks.retain(|_, t| t.seen == frame);
        }
    }

    /// When the previous read started (None at the first).
    fn prev_read(&self) -> Option<u64> {
        self.prev_read
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
            rates: self.rates.get(i).copied().flatten(),
            closed: i >= self.recs.len() - self.closed,
        }
    }

    pub fn rows(&self) -> impl Iterator<Item = Row<'_>> + '_ {
        (0..self.recs.len()).map(|i| self.row(i))
    }

    /// The throughput history of connection `cookie` (shown or live).
    pub fn history(&self, cookie: u64) -> History {
        self.tracks
            .get(&cookie)
            .map_or(History::default(), |t| t.history)
    }

    /// Connections the model keeps state for (bounded by the live set plus
    /// those shown closed).
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.tracks.len()
    }
}

/// Rates of `rec` since its previous read (added to its history).
fn observe(
    tracks: &mut HashMap<u64, Track>,
    rec: &ConnRecord,
    prev_read: Option<u64>,
    read_ns: u64,
    frame: u32,
) -> Option<Rates> {
    let now = Counters::of(rec);
    match tracks.get_mut(&rec.cookie) {
        Some(t) => {
            // The refresh stamps each record when it copies its
            // counters: the exact time between two copies. A record
            // the refresh could not reach keeps its stamp; then the
            // time between the reads.
            let ns = if rec.update_ns > t.prev_ns {
                rec.update_ns - t.prev_ns
            } else {
                prev_read.map_or(0, |p| read_ns.saturating_sub(p))
            };
            let rates = Rates::between(&t.prev, &now, ns);
            t.prev = now;
            t.prev_ns = t.prev_ns.max(rec.update_ns);
            t.history.push(rates.bytes());
            t.seen = frame;
            Some(rates)
        }
        None => {
            // Opened since the previous read: everything it counted
            // is new, since its start.
            let rates = prev_read.filter(|&p| rec.start_ns >= p).map(|_| {
                let end = if rec.update_ns > rec.start_ns {
                    rec.update_ns
                } else {
                    read_ns
                };
                Rates::between(&Counters::default(), &now, end.saturating_sub(rec.start_ns))
            });
            let mut history = History::default();
            if let Some(r) = &rates {
                history.push(r.bytes());
            }
            tracks.insert(
                rec.cookie,
                Track {
                    prev: now,
                    prev_ns: rec.update_ns,
                    history,
                    seen: frame,
                },
            );
            rates
        }
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
/// workload; `history` gives a row's history by cookie. `now_ns` is the
/// read time (for ages).
pub fn groups<'r>(
    rows: impl Iterator<Item = (Row<'r>, &'r str)>,
    history: impl Fn(u64) -> History,
    now_ns: u64,
) -> Vec<Group> {
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
        g.history.add(&history(row.rec.cookie));
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
        assert_eq!(m.history(1).values(), &[1_000_000.0, 500_000.0]);
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
        assert_eq!(std::mem::size_of::<Track>(), 128);
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
        let row = |i: usize, sent: f64| Row {
            rec: &recs[i],
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
        let mut g = groups(rows.into_iter().zip(names), |_| History::default(), 10);
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
