//! One collect cycle's accounting, as a pure function of the previous state
//! and what the kernel holds now (no I/O, so every rule is unit-tested).
//!
//! Rules:
//! - a connection is *opened* once, the first time it is seen (live or closed);
//! - a close is applied once: ring records, closed records left in the map and
//!   connections that vanished without either are merged by cookie; ring
//!   records are new only past the applied ring position, and a close that
//!   could still be read again is held in `State::settling` only until it can
//!   no longer be (one cycle), so nothing about closes outlives the live set;
//! - a live connection's exported counters never step back (max with the last
//!   seen), and at close its contribution moves from "live" to the closed
//!   totals with final counters >= the last live ones, so group sums never dip.

use std::{collections::BTreeMap, io};

use longconn_common::{layout, ConnRecord};

use super::closetotals;
use super::state::{
    addr_bytes, ConnState, Counters, GroupKey, GroupTotals, IdSyms, Prev, Settling, State, Strings,
};
use crate::{
    clock::Clock,
    identity::{Cgroup, Identity},
    output::event::{AccessEvent, EventKind},
    view,
};

pub struct Inputs<'a> {
    pub now: Clock,
    /// Records read from the map (live, plus closed ones the ring could not take).
    pub map: Vec<ConnRecord>,
    /// Ring-buffer records not yet applied, with the position just past each.
    pub ring: Vec<(ConnRecord, u64)>,
    /// Where the ring read stopped (everything before it was read) and the
    /// producer position when it started (see `ring::Peeked`).
    pub ring_read_to: u64,
    pub ring_producer: u64,
    pub long_threshold_ns: u64,
    /// Emit a close record for connections shorter than the threshold too.
    pub short_close_records: bool,
    /// Identity and (workload, service) group keys of a record.
    pub names: &'a dyn Fn(&ConnRecord) -> (Identity, String, String),
    /// What is known of each cgroup: the runtime names of a connection's
    /// workload (namespace, pod, container) are its cgroup's.
    pub cgroups: &'a BTreeMap<u64, Cgroup>,
    /// New (workload, service) label selections: every previous connection's
    /// group keys are recomputed.
    pub relabel: Option<(&'a [String], &'a [String])>,
    /// Whether anything reads the access records (else they are counted,
    /// sequence numbers advance, but none is formatted).
    pub records: bool,
    /// A long connection with no change since its last record gets one
    /// again (a heartbeat) only this long after it (boot-time ns).
    pub idle_record_ns: u64,
    /// The kernel's close totals, read before the map: the closed totals
    /// come from them (`closetotals`). None: from each close's record or
    /// last live values (tests of the record path).
    pub totals: Option<&'a closetotals::Read>,
}

#[derive(Debug, Default)]
pub struct Outcome {
    /// Access records emitted.
    pub records: u64,
    /// Ring position to release (unchanged when nothing new was read).
    pub ring_commit: u64,
    /// Cookies of closed records to delete from the map.
    pub map_deletes: Vec<u64>,
}

/// What `apply` hands the next state, in cookie order.
pub enum Kept<'a> {
    /// A live connection, and its state last cycle as stored (None: new).
    Live(u64, Option<&'a ConnState>, &'a ConnState),
    /// One of last cycle's connections that is no longer live.
    Gone(u64),
}

/// (identity, workload key, service key), interned.
type Named = (IdSyms, u32, u32);

fn conn_state(
    r: &ConnRecord,
    prev: Option<&ConnState>,
    (id, wkey, skey): Named,
    clock: &Clock,
) -> ConnState {
    let now = Counters::of(r);
    ConnState {
        // Wall-clock start fixed at first sight: a clock set back later does
        // not rewrite when the connection started.
        start_unix_ns: prev.map_or_else(
            || clock.wall(r.start_ns).timestamp_nanos_opt().unwrap_or(0),
            |p| p.start_unix_ns,
        ),
        seq: prev.map_or(0, |p| p.seq),
        recorded_ns: prev.map_or(0, |p| p.recorded_ns),
        last: prev.map_or(now, |p| p.last.max(now)),
        reported: prev.map_or(Counters::default(), |p| p.reported),
        start_ns: r.start_ns,
        update_ns: r.update_ns,
        direction: r.direction,
        local: addr_bytes(r.local_ip()),
        local_port: r.local_port as u16,
        remote: addr_bytes(r.remote_ip()),
        remote_port: r.remote_port as u16,
        state: r.state,
        flags: r.flags,
        srtt_us: r.srtt_us,
        min_rtt_us: r.min_rtt_us,
        cgroup_id: r.cgroup_id,
        id,
        wkey,
        skey,
    }
}

/// A group's key as text ("direction|label values"), for outputs.
#[cfg(test)]
pub fn group_key(direction: u32, name: &str) -> String {
    format!("{}|{name}", view::direction_name(direction))
}

/// Connection `c`'s access event for this cycle (names borrowed from
/// `strings`).
fn event<'s>(
    strings: &'s Strings,
    cgroups: &'s BTreeMap<u64, Cgroup>,
    c: &ConnState,
    report_unix_ns: i64,
    kind: EventKind,
    cookie: u64,
    end_ns: u64,
) -> AccessEvent<'s> {
    let names = cgroups.get(&c.cgroup_id).and_then(|g| g.names.as_ref());
    AccessEvent {
        report_unix_ns,
        kind,
        cookie,
        seq: c.seq,
        start_unix_ns: c.start_unix_ns,
        duration_ns: end_ns.saturating_sub(c.start_ns),
        direction: view::direction_name(c.direction),
        local: c.local_ip(),
        local_port: c.local_port,
        remote: c.remote_ip(),
        remote_port: c.remote_port,
        state: layout::tcp_state_name(c.state),
        failed: c.flags & layout::F_FAILED != 0,
        total: c.last,
        delta: c.last.saturating_sub(c.reported),
        srtt_us: c.srtt_us,
        min_rtt_us: c.min_rtt_us,
        workload: strings.get(c.id.workload),
        service: strings.get(c.id.service),
        pid: c.id.pid,
        comm: strings.get(c.id.comm),
        cgroup_id: c.cgroup_id,
        container_id: strings.get(c.id.container_id),
        pod_uid: strings.get(c.id.pod_uid),
        namespace: names.map_or("", |n| &n.namespace),
        pod: names.map_or("", |n| &n.pod),
        container: names.map_or("", |n| &n.container),
        netns_cookie: c.id.netns_cookie,
        service_namespace: strings.get(c.id.service_namespace),
        bytes_retrans: 0,
        update_age_ns: 0,
    }
}

fn open(state: &mut State, c: &ConnState) {
    state
        .workloads
        .entry((c.direction, c.wkey))
        .or_default()
        .opened += 1;
    state
        .services
        .entry((c.direction, c.skey))
        .or_default()
        .opened += 1;
}

fn close_totals(t: &mut GroupTotals, c: &ConnState) {
    if c.flags & layout::F_FAILED != 0 {
        t.failed += 1;
    } else {
        t.closed += 1;
    }
    t.closed_counters.add(c.last);
}

/// The interned names of a connection seen for the first time.
fn name(state: &mut State, inp: &Inputs<'_>, r: &ConnRecord) -> Named {
    let (id, w, s) = (inp.names)(r);
    (
        IdSyms::intern(&id, &mut state.strings),
        state.strings.intern(&w),
        state.strings.intern(&s),
    )
}

/// Puts the records read from the map (hash order) in cookie order, moving
/// each once: the permutation is applied in place, cycle by cycle, so no
/// second copy of the records is held. The merge then reads them in memory
/// order; read in hash order, each record was a cache miss (87 % of
/// `conn_state`'s time at 100k connections, `perf annotate`).
fn sort_by_cookie(map: &mut [ConnRecord]) {
    let mut order: Vec<(u64, usize)> = map.iter().enumerate().map(|(i, r)| (r.cookie, i)).collect();
    order.sort_unstable();
    let mut placed = vec![false; map.len()];
    for start in 0..map.len() {
        if placed[start] {
            continue;
        }
        // Follow the cycle through `start`: position j takes the record at
        // order[j].1, which has not moved yet (only this cycle's records
        // move); the first one, set aside, closes the cycle. One copy per
        // record.
        let first = map[start];
        let mut j = start;
        loop {
            placed[j] = true;
            let from = order[j].1;
            if from == start {
                map[j] = first;
                break;
            }
            map[j] = map[from];
            j = from;
        }
    }
}

/// Applies one cycle to `state`, given last cycle's connections `prev`:
/// hands each access record to `emit` as it is made (live connections
/// first, then closes, each by cookie) and each live connection's new state
/// (and each that left) to `keep`, in cookie order. `state.conns` is not
/// used.
pub fn apply(
    state: &mut State,
    mut inp: Inputs<'_>,
    prev: &Prev,
    keep: &mut dyn FnMut(Kept<'_>) -> io::Result<()>,
    emit: &mut dyn FnMut(&AccessEvent<'_>),
) -> io::Result<Outcome> {
    let mut out = Outcome {
        ring_commit: state.ring_applied.max(inp.ring_read_to),
        ..Default::default()
    };
    let now = inp.now;
    let report_unix_ns = now.wall(now.boot_ns).timestamp_nanos_opt().unwrap_or(0);

    // 0. What the kernel's close totals grew by (read first: see closetotals).
    if let Some(read) = inp.totals {
        closetotals::account_growth(state, read, &mut |st, r| {
            let (_, w, s) = name(st, &inp, r);
            ((r.direction, w), (r.direction, s))
        });
    }

    // 1. Closes: ring first, then closed records left in the map; one per cookie.
    let mut closes: BTreeMap<u64, ConnRecord> = BTreeMap::new();
    for (r, end) in &inp.ring {
        out.ring_commit = out.ring_commit.max(*end);
        if *end > state.ring_applied && !state.settling.contains_key(&r.cookie) {
            closes.entry(r.cookie).or_insert(*r);
        }
    }
    for r in inp.map.iter().filter(|r| r.is_closed()) {
        out.map_deletes.push(r.cookie);
        if !state.settling.contains_key(&r.cookie) {
            closes.entry(r.cookie).or_insert(*r);
        }
    }
    // 2. Live: in the map, not closed; in cookie order, in memory too.
    let mut map = std::mem::take(&mut inp.map);
    sort_by_cookie(&mut map);
    let live: Vec<(u64, &ConnRecord)> = map
        .iter()
        .filter(|r| !r.is_closed() && !closes.contains_key(&r.cookie))
        .map(|r| (r.cookie, r))
        .collect();

    // 3. One pass over last cycle's connections (cookie order), merged by
    //    cookie with the live ones: open new connections, a periodic record
    //    for long ones, each live connection (and each that left) to `keep`;
    //    the ones that left are closing now, or vanished. Last cycle's state
    //    is read once per cycle.
    let mut close_prev: BTreeMap<u64, ConnState> = BTreeMap::new();
    let mut vanished: Vec<(u64, ConnState)> = Vec::new();
    let mut scan = prev.scan();
    let mut at = scan.advance()?;
    let mut left = |cookie: u64, mut c: ConnState, state: &mut State| {
        relabel(state, &inp, &mut c);
        if closes.contains_key(&cookie) {
            close_prev.insert(cookie, c);
        } else {
            vanished.push((cookie, c));
        }
    };
    for &(cookie, r) in &live {
        while let Some(k) = at.filter(|k| *k < cookie) {
            if let Some(c) = scan.current() {
                keep(Kept::Gone(k))?;
                left(k, *c, state);
            }
            at = scan.advance()?;
        }
        // Last cycle's state, read in place; copied only to relabel.
        let stored = if at == Some(cookie) {
            scan.current()
        } else {
            None
        };
        let relabeled = match (stored, inp.relabel) {
            (Some(s), Some(_)) => {
                let mut c = *s;
                relabel(state, &inp, &mut c);
                Some(c)
            }
            _ => None,
        };
        let p = relabeled.as_ref().or(stored);
        let named = match p {
            Some(p) => (p.id, p.wkey, p.skey),
            None => name(state, &inp, r),
        };
        let mut c = conn_state(r, p, named, &now);
        if p.is_none() {
            open(state, &c);
        }
        // A long connection's record: the first, any change, else a
        // heartbeat every `idle_record_ns`.
        let long = now.boot_ns.saturating_sub(c.start_ns) >= inp.long_threshold_ns;
        let changed = c.last != c.reported || p.is_some_and(|p| p.state != c.state);
        let heartbeat = now.boot_ns.saturating_sub(c.recorded_ns) >= inp.idle_record_ns;
        if long && (c.seq == 0 || changed || heartbeat) {
            c.seq += 1;
            if inp.records {
                emit(&event(
                    &state.strings,
                    inp.cgroups,
                    &c,
                    report_unix_ns,
                    EventKind::Periodic,
                    cookie,
                    now.boot_ns,
                ));
            }
            out.records += 1;
            c.reported = c.last;
            c.recorded_ns = now.boot_ns;
        }
        keep(Kept::Live(cookie, stored, &c))?;
        if stored.is_some() {
            at = scan.advance()?;
        }
    }
    while let Some(k) = at {
        if let Some(c) = scan.current() {
            keep(Kept::Gone(k))?;
            left(k, *c, state);
        }
        at = scan.advance()?;
    }
    drop(scan);

    // (cookie, state, its close record if read)
    let mut closed_now: Vec<(u64, ConnState, Option<ConnRecord>)> = Vec::new();

    for (cookie, r) in &closes {
        let p = close_prev.remove(cookie);
        let named = match &p {
            Some(p) => (p.id, p.wkey, p.skey),
            None => name(state, &inp, r),
        };
        let c = conn_state(r, p.as_ref(), named, &now);
        if p.is_none() {
            open(state, &c);
        }
        closed_now.push((*cookie, c, Some(*r)));
    }
    // 4. Vanished: known last cycle, gone from the map, no close record.
    //    A record for it can still come from the ring (reserved before the
    //    map was read, behind one still being written): held until read past.
    //    With the kernel's close totals, a connection vanishes only when
    //    its record was dropped (ring and overflow full; counted by the
    //    kernel as unlogged) or is late in the ring: the totals hold its
    //    close, and a late record is an ordinal close record then.
    for (cookie, mut c) in vanished {
        state.closes_without_record += 1;
        if inp.totals.is_some() {
            continue;
        }
        state
            .settling
            .insert(cookie, Settling::RingBefore(inp.ring_producer));
        c.flags |= layout::F_CLOSED;
        if c.flags & layout::F_ESTABLISHED == 0 {
            c.flags |= layout::F_FAILED;
        }
        c.state = 7; // TCP_CLOSE
        closed_now.push((cookie, c, None));
    }

    let mut final_series = Vec::new();
    for (cookie, mut c, record) in closed_now {
        let end = if record.is_some() {
            c.update_ns.max(c.start_ns)
        } else {
            now.boot_ns
        };
        match (inp.totals, &record) {
            (Some(read), Some(r)) => {
                let groups = ((c.direction, c.wkey), (c.direction, c.skey));
                closetotals::account_record(state, read, r, groups);
            }
            (None, _) | (Some(_), None) => {
                close_totals(
                    state.workloads.entry((c.direction, c.wkey)).or_default(),
                    &c,
                );
                close_totals(state.services.entry((c.direction, c.skey)).or_default(), &c);
            }
        }
        let long = end.saturating_sub(c.start_ns) >= inp.long_threshold_ns;
        if long || inp.short_close_records {
            c.seq += 1;
            if inp.records {
                emit(&event(
                    &state.strings,
                    inp.cgroups,
                    &c,
                    report_unix_ns,
                    EventKind::Close,
                    cookie,
                    end,
                ));
            }
            out.records += 1;
        }
        if long {
            final_series.push(c);
        }
    }
    // Closes read from the map stay there until deleted after the commit:
    // the next cycle deletes them before it reads the map, should this run
    // not get to it.
    for cookie in &out.map_deletes {
        state.settling.insert(*cookie, Settling::Reap);
    }

    state.final_series = final_series;
    let read_to = out.ring_commit;
    state.settling.retain(|_, until| match until {
        Settling::Reap => true,
        Settling::RingBefore(p) => *p > read_to,
    });
    state.ring_applied = out.ring_commit;
    Ok(out)
}

/// Group keys of `c` for changed label selections (`Inputs::relabel`).
fn relabel(state: &mut State, inp: &Inputs<'_>, c: &mut ConnState) {
    if let Some((w, s)) = inp.relabel {
        let mut id = c.id.identity(&state.strings);
        if let Some(n) = inp.cgroups.get(&c.cgroup_id).and_then(|g| g.names.as_ref()) {
            id.namespace = n.namespace.clone();
            id.pod = n.pod.clone();
            id.container = n.container.clone();
        }
        c.wkey = state.strings.intern(&id.key(w));
        c.skey = state.strings.intern(&id.key(s));
    }
}

/// Live connections per group: their counters summed, and how many.
#[derive(Debug, Default)]
pub struct LiveSums {
    pub workloads: BTreeMap<GroupKey, (Counters, u64)>,
    pub services: BTreeMap<GroupKey, (Counters, u64)>,
}

impl LiveSums {
    pub fn add(&mut self, c: &ConnState) {
        for (groups, key) in [(&mut self.workloads, c.wkey), (&mut self.services, c.skey)] {
            let e = groups.entry((c.direction, key)).or_default();
            e.0.add(c.last);
            e.1 += 1;
        }
    }
}

/// Exported counters of a group: closed totals plus its live connections,
/// by group key text ("direction|label values"), for tests (the metrics use
/// `metrics::group_sums`).
#[cfg(test)]
pub fn group_counters(
    state: &State,
    live: &LiveSums,
    by_service: bool,
) -> BTreeMap<String, (GroupTotals, Counters, u64)> {
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
    sums.into_iter()
        .map(|((dir, key), v)| (group_key(dir, state.strings.get(key)), v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::state::Conns;

    const S: u64 = 1_000_000_000;

    fn rec(cookie: u64, start_s: u64, sent: u64, flags: u32) -> ConnRecord {
        ConnRecord {
            cookie,
            start_ns: start_s * S,
            update_ns: start_s * S,
            bytes_sent: sent,
            bytes_received: sent / 2,
            packets_sent: sent / 100,
            family: layout::AF_INET,
            local_addr: [u32::from_ne_bytes([127, 0, 0, 1]), 0, 0, 0],
            remote_addr: [u32::from_ne_bytes([127, 0, 0, 1]), 0, 0, 0],
            local_port: 40000 + cookie as u32,
            remote_port: 80,
            direction: layout::DIR_OUTBOUND,
            state: 1,
            flags: layout::F_ESTABLISHED | flags,
            ..Default::default()
        }
    }

    fn closed(mut r: ConnRecord, at_s: u64) -> ConnRecord {
        r.flags |= layout::F_CLOSED;
        r.state = 7;
        r.update_ns = at_s * S;
        r
    }

    static NO_CGROUPS: BTreeMap<u64, Cgroup> = BTreeMap::new();

    fn names(_: &ConnRecord) -> (Identity, String, String) {
        let id = Identity {
            workload: "/app".into(),
            service: "127.0.0.1:80".into(),
            ..Default::default()
        };
        (id, "/app".into(), "127.0.0.1:80".into())
    }

    /// An outcome with the records emitted.
    struct Out {
        records: Vec<crate::output::access::AccessRecord>,
        ring_commit: u64,
        map_deletes: Vec<u64>,
    }

    /// One cycle with the connections kept in `state.conns` between cycles.
    fn run(state: &mut State, inp: Inputs<'_>) -> Out {
        let mut records = Vec::new();
        let prev = Prev::Mem(std::mem::take(&mut state.conns));
        let mut kept = Vec::new();
        let o = apply(
            state,
            inp,
            &prev,
            &mut |k| {
                if let Kept::Live(k, _, c) = k {
                    kept.push((k, *c));
                }
                Ok(())
            },
            &mut |e| records.push(crate::output::access::AccessRecord::from_event(e)),
        )
        .unwrap();
        state.conns = Conns::from_sorted(kept);
        assert_eq!(o.records, records.len() as u64);
        Out {
            records,
            ring_commit: o.ring_commit,
            map_deletes: o.map_deletes,
        }
    }

    /// The totals of the one workload group.
    fn wl(st: &State) -> GroupTotals {
        let k = st.strings.iter().position(|s| s == "/app").unwrap() as u32;
        st.workloads[&(layout::DIR_OUTBOUND, k)]
    }

    fn cycle(state: &mut State, now_s: u64, map: Vec<ConnRecord>, ring: Vec<ConnRecord>) -> Out {
        let base = state.ring_applied;
        let ring: Vec<_> = ring
            .into_iter()
            .enumerate()
            .map(|(i, r)| (r, base + 192 * (i as u64 + 1)))
            .collect();
        let read_to = ring.last().map_or(base, |(_, end)| *end);
        ring_cycle(state, now_s, map, ring, read_to, read_to)
    }

    /// One cycle with ring records at given positions, the ring read up to
    /// `read_to` while its producer was at `producer`.
    fn ring_cycle(
        state: &mut State,
        now_s: u64,
        map: Vec<ConnRecord>,
        ring: Vec<(ConnRecord, u64)>,
        read_to: u64,
        producer: u64,
    ) -> Out {
        run(
            state,
            Inputs {
                now: Clock {
                    boot_ns: now_s * S,
                    wall_ns: 1_700_000_000 * S as i128,
                },
                map,
                ring,
                ring_read_to: read_to,
                ring_producer: producer,
                long_threshold_ns: 5 * S,
                short_close_records: true,
                names: &names,
                cgroups: &NO_CGROUPS,
                relabel: None,
                records: true,
                idle_record_ns: 5 * S,
                totals: None,
            },
        )
    }

    fn sent_total(state: &State) -> u64 {
        let mut live = LiveSums::default();
        for c in state.conns.values() {
            live.add(c);
        }
        group_counters(state, &live, false)
            .values()
            .map(|(_, c, _)| c.bytes_sent)
            .sum()
    }

    #[test]
    fn periodic_records_carry_deltas_and_close_moves_totals_without_dip() {
        let mut st = State::default();
        let o = cycle(&mut st, 10, vec![rec(1, 1, 1000, 0)], vec![]);
        assert_eq!(o.records.len(), 1);
        assert_eq!(
            (
                o.records[0].event.as_str(),
                o.records[0].seq,
                o.records[0].bytes_sent_delta
            ),
            ("periodic", 1, 1000)
        );
        assert_eq!(wl(&st).opened, 1);
        assert_eq!(sent_total(&st), 1000);

        let o = cycle(&mut st, 15, vec![rec(1, 1, 1500, 0)], vec![]);
        assert_eq!(
            (
                o.records[0].seq,
                o.records[0].bytes_sent,
                o.records[0].bytes_sent_delta
            ),
            (2, 1500, 500)
        );
        assert_eq!(sent_total(&st), 1500);

        // A stale kernel value never makes exports step back.
        let o = cycle(&mut st, 20, vec![rec(1, 1, 1400, 0)], vec![]);
        assert_eq!(
            (o.records[0].bytes_sent, o.records[0].bytes_sent_delta),
            (1500, 0)
        );

        let o = cycle(&mut st, 25, vec![], vec![closed(rec(1, 1, 1600, 0), 24)]);
        assert_eq!(o.records.len(), 1);
        let r = &o.records[0];
        assert_eq!(
            (
                r.event.as_str(),
                r.seq,
                r.bytes_sent,
                r.bytes_sent_delta,
                r.state.as_str()
            ),
            ("close", 4, 1600, 100, "CLOSED")
        );
        assert_eq!(sent_total(&st), 1600);
        let t = wl(&st);
        assert_eq!((t.opened, t.closed, t.failed), (1, 1, 0));
        assert!(st.conns.is_empty());
        assert_eq!(
            st.final_series.len(),
            1,
            "a closed long connection is exported once more"
        );

        // The same close again (a ring record read again at its position,
        // as after a kill before the release) is not applied twice.
        let at = st.ring_applied;
        let o = ring_cycle(
            &mut st,
            30,
            vec![],
            vec![(closed(rec(1, 1, 1600, 0), 24), at)],
            at,
            at,
        );
        assert!(o.records.is_empty());
        assert_eq!(wl(&st).closed, 1);
        assert_eq!(sent_total(&st), 1600);
        assert!(st.final_series.is_empty());
    }

    #[test]
    fn short_failed_and_vanished_connections() {
        let mut st = State::default();
        // Seen only at close: opened and closed in one cycle.
        let o = cycle(&mut st, 10, vec![], vec![closed(rec(1, 9, 300, 0), 9)]);
        assert_eq!(
            o.records.len(),
            1,
            "short close record (switchable, on here)"
        );
        // A connect that never established.
        let mut f = closed(rec(2, 9, 0, 0), 9);
        f.flags = layout::F_CLOSED | layout::F_FAILED;
        cycle(&mut st, 11, vec![], vec![f]);
        let t = wl(&st);
        assert_eq!((t.opened, t.closed, t.failed), (2, 1, 1));

        // Live last cycle, then gone with no record: closed from the last values.
        cycle(&mut st, 20, vec![rec(3, 12, 5000, 0)], vec![]);
        let o = cycle(&mut st, 25, vec![], vec![]);
        assert_eq!(st.closes_without_record, 1);
        assert_eq!(o.records[0].event, "close");
        assert_eq!(sent_total(&st), 300 + 5000);

        // A closed record left in the map (ring full) is applied and deleted.
        let o = cycle(&mut st, 30, vec![closed(rec(4, 29, 10, 0), 29)], vec![]);
        assert_eq!(o.map_deletes, vec![4]);
        assert_eq!(wl(&st).closed, 3);
        // Still in the map next cycle (delete failed): deleted again, not re-applied.
        let o = cycle(&mut st, 35, vec![closed(rec(4, 29, 10, 0), 29)], vec![]);
        assert_eq!(o.map_deletes, vec![4]);
        assert!(o.records.is_empty());
        assert_eq!(wl(&st).closed, 3);
    }

    #[test]
    fn close_seen_in_map_and_ring_in_one_cycle_counts_once() {
        let mut st = State::default();
        let live = rec(1, 1, 100, 0);
        let o = cycle(&mut st, 10, vec![live], vec![closed(rec(1, 1, 120, 0), 9)]);
        assert_eq!(o.records.len(), 1);
        assert_eq!(o.records[0].event, "close");
        assert_eq!(wl(&st).opened, 1);
        assert_eq!(sent_total(&st), 120);
        assert!(st.conns.is_empty());
    }

    #[test]
    fn wall_clock_set_back_keeps_start_time_and_durations_sane() {
        let mut st = State::default();
        let rec1 = |now_s: u64, wall_s: i128, st: &mut State| {
            run(
                st,
                Inputs {
                    now: Clock {
                        boot_ns: now_s * S,
                        wall_ns: wall_s * S as i128,
                    },
                    map: vec![rec(1, 1, 100, 0)],
                    ring: vec![],
                    ring_read_to: 0,
                    ring_producer: 0,
                    long_threshold_ns: 5 * S,
                    short_close_records: true,
                    names: &names,
                    cgroups: &NO_CGROUPS,
                    relabel: None,
                    records: true,
                    idle_record_ns: 5 * S,
                    totals: None,
                },
            )
        };
        let a = rec1(10, 1_700_000_010, &mut st);
        // The wall clock is set back one hour between cycles.
        let b = rec1(15, 1_700_000_015 - 3600, &mut st);
        assert_eq!(
            a.records[0].start_time, b.records[0].start_time,
            "start time is not rewritten"
        );
        assert_eq!(a.records[0].start_time, "2023-11-14T22:13:21.000000Z");
        assert_eq!(
            (a.records[0].duration_seconds, b.records[0].duration_seconds),
            (9.0, 14.0),
            "durations from CLOCK_BOOTTIME"
        );
    }

    #[test]
    fn ring_position_advances_to_the_last_record() {
        let mut st = State::default();
        let o = cycle(
            &mut st,
            10,
            vec![],
            vec![closed(rec(1, 9, 1, 0), 9), closed(rec(2, 9, 1, 0), 9)],
        );
        assert_eq!(o.ring_commit, 384);
        assert_eq!(st.ring_applied, 384);
        let o = cycle(&mut st, 11, vec![], vec![]);
        assert_eq!(o.ring_commit, 384);
        // Discarded records are read past too (no record, a later position).
        let o = ring_cycle(&mut st, 12, vec![], vec![], 576, 576);
        assert_eq!(o.ring_commit, 576);
    }

    /// Issue 20: what is remembered about closes follows the live set, not
    /// the close rate: after a cycle of 10 000 ring closes nothing is held.
    #[test]
    fn ring_closes_leave_nothing_behind() {
        let mut st = State::default();
        for c in 0..3u64 {
            let ring = (0..10_000)
                .map(|i| closed(rec(c * 10_000 + i + 1, 1, 10, 0), 2))
                .collect();
            let o = cycle(&mut st, 10 + c * 5, vec![], ring);
            assert_eq!(o.records.len(), 10_000);
            assert!(st.settling.is_empty(), "cycle {c}: {:?}", st.settling.len());
        }
        assert_eq!(wl(&st).closed, 30_000);
    }

    /// A close kept in the map (ring full) is held until its entry is reaped
    /// (`take_reaps`, before the next read), and applied once whatever
    /// happens in between.
    #[test]
    fn map_kept_closes_are_held_until_reaped() {
        let mut st = State::default();
        let o = cycle(&mut st, 10, vec![closed(rec(4, 9, 10, 0), 9)], vec![]);
        assert_eq!((o.records.len(), o.map_deletes.clone()), (1, vec![4]));
        assert_eq!(st.settling.get(&4), Some(&Settling::Reap));
        // Killed before its delete, and this run's reap failed too.
        let o = cycle(&mut st, 15, vec![closed(rec(4, 9, 10, 0), 9)], vec![]);
        assert!(o.records.is_empty());
        assert_eq!(wl(&st).closed, 1);
        // The next run reaps it before reading: nothing is held after that.
        assert_eq!(super::super::state::take_reaps(&mut st), vec![4]);
        cycle(&mut st, 20, vec![], vec![]);
        assert!(st.settling.is_empty());
        assert_eq!(wl(&st).closed, 1);
    }

    /// A connection that left the map while its close record was behind one
    /// still being written: applied without a record, then its record comes
    /// a cycle later and is not applied again.
    #[test]
    fn a_late_ring_record_of_a_vanished_connection_counts_once() {
        let mut st = State::default();
        cycle(&mut st, 10, vec![rec(7, 1, 100, 0)], vec![]);
        // Gone from the map; the read stopped at 0 with the producer at 384.
        let o = ring_cycle(&mut st, 15, vec![], vec![], 0, 384);
        assert_eq!(o.records.len(), 1);
        assert_eq!(st.closes_without_record, 1);
        assert_eq!(st.settling.get(&7), Some(&Settling::RingBefore(384)));
        let o = ring_cycle(
            &mut st,
            20,
            vec![],
            vec![(closed(rec(7, 1, 120, 0), 12), 192)],
            384,
            384,
        );
        assert!(o.records.is_empty());
        let t = wl(&st);
        assert_eq!((t.opened, t.closed), (1, 1));
        assert!(st.settling.is_empty(), "read past: nothing held");
    }

    /// Issue 21: with the kernel's close totals, a close is counted once
    /// whether the sums read before the map hold it (its record only logs
    /// it), do not yet (counted from its record, skipped in the sums'
    /// next growth) or it has no record at all (counted from the sums).
    #[test]
    fn close_totals_count_each_close_once_whatever_its_record() {
        use longconn_common::{
            layout::{Totals, TotalsKey},
            pinned::TotalsSnapshot,
        };
        let sums = |closes: &[u64]| {
            let mut v = Totals::default();
            for sent in closes {
                v.seq_begin += 1;
                v.seq_end += 1;
                v.bytes_sent += sent;
            }
            closetotals::Read::new(TotalsSnapshot {
                keys: vec![(TotalsKey::of(&rec(0, 0, 0, 0)), vec![v])],
            })
        };
        let step = |st: &mut State, now_s: u64, map, ring: Vec<ConnRecord>, read| {
            let base = st.ring_applied;
            let ring: Vec<_> = ring
                .into_iter()
                .enumerate()
                .map(|(i, r)| (r, base + 208 * (i as u64 + 1)))
                .collect();
            let to = ring.last().map_or(base, |(_, e)| *e);
            run(
                st,
                Inputs {
                    now: Clock {
                        boot_ns: now_s * S,
                        wall_ns: 1_700_000_000 * S as i128,
                    },
                    map,
                    ring,
                    ring_read_to: to,
                    ring_producer: to,
                    long_threshold_ns: 5 * S,
                    short_close_records: true,
                    names: &names,
                    cgroups: &NO_CGROUPS,
                    relabel: None,
                    records: true,
                    idle_record_ns: 5 * S,
                    totals: Some(&read),
                },
            )
        };
        let stamped = |r: ConnRecord, seq: u64| ConnRecord {
            close_seq: seq,
            ..r
        };
        let mut st = State::default();
        // Cycle 1: connection 1 live.
        step(&mut st, 10, vec![rec(1, 1, 1000, 0)], vec![], sums(&[]));
        assert_eq!((wl(&st).closed, sent_total(&st)), (0, 1000));
        // Cycle 2: 1 closed (in the sums, record in the ring); 2 closed
        // unseen, record dropped (sums only); 3 closed after the sums were
        // read (record only); 4 was live and vanished, record dropped.
        step(&mut st, 12, vec![rec(4, 11, 50, 0)], vec![], sums(&[]));
        let ring = vec![
            stamped(closed(rec(1, 1, 1200, 0), 14), 1),
            stamped(closed(rec(3, 14, 70, 0), 14), 4),
        ];
        let o = step(&mut st, 15, vec![], ring, sums(&[1200, 300, 60]));
        assert_eq!(o.records.len(), 2, "two close records, the others unlogged");
        assert_eq!(wl(&st).closed, 4);
        assert_eq!(sent_total(&st), 1200 + 300 + 60 + 70);
        // Cycle 3: the sums now hold 3 too: nothing counted twice.
        step(&mut st, 20, vec![], vec![], sums(&[1200, 300, 60, 70]));
        assert_eq!((wl(&st).closed, sent_total(&st)), (4, 1630));
        assert!(st.settling.is_empty());
    }

    /// An idle long connection gets a record when it changes and otherwise
    /// one heartbeat per idle-record interval; its close is always recorded.
    #[test]
    fn sort_by_cookie_puts_every_record_in_order_once() {
        for n in [0usize, 1, 2, 7, 1000] {
            // A scrambled order with cycles of every length.
            let mut map: Vec<ConnRecord> = (0..n as u64)
                .map(|i| rec((i * 7919 + 13) % 100_003, 0, i, 0))
                .collect();
            let mut want = map.clone();
            want.sort_by_key(|r| r.cookie);
            sort_by_cookie(&mut map);
            assert_eq!(map, want, "{n} records");
        }
    }

    #[test]
    fn idle_long_connections_get_heartbeats() {
        let mut st = State::default();
        let step = |st: &mut State, now_s: u64, sent: u64| {
            run(
                st,
                Inputs {
                    now: Clock {
                        boot_ns: now_s * S,
                        wall_ns: 1_700_000_000 * S as i128,
                    },
                    map: vec![rec(1, 1, sent, 0)],
                    ring: vec![],
                    ring_read_to: 0,
                    ring_producer: 0,
                    long_threshold_ns: 5 * S,
                    short_close_records: true,
                    names: &names,
                    cgroups: &NO_CGROUPS,
                    relabel: None,
                    records: true,
                    idle_record_ns: 60 * S,
                    totals: None,
                },
            )
            .records
            .len()
        };
        // First record once long; then nothing while idle, until 60 s after it.
        let got: Vec<usize> = [(10, 100), (15, 100), (20, 100), (65, 100), (70, 100)]
            .into_iter()
            .map(|(t, sent)| step(&mut st, t, sent))
            .collect();
        assert_eq!(got, vec![1, 0, 0, 0, 1], "heartbeat 60 s after the first");
        // A change is recorded in the next cycle, with its delta.
        assert_eq!(step(&mut st, 75, 150), 1);
        assert_eq!(step(&mut st, 80, 150), 0);
        let o = cycle(&mut st, 85, vec![], vec![closed(rec(1, 1, 150, 0), 84)]);
        assert_eq!(o.records.len(), 1, "the close is always recorded");
        assert_eq!(o.records[0].bytes_sent_delta, 0);
        assert_eq!(o.records[0].seq, 4);
    }
}
