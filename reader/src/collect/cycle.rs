//! One collect cycle's accounting, as a pure function of the previous state
//! and what the kernel holds now (no I/O, so every rule is unit-tested).
//!
//! Rules:
//! - a connection is *opened* once, the first time it is seen (live or closed);
//! - a close is applied once: ring records, closed records left in the map and
//!   connections that vanished without either are merged by cookie, and a
//!   cookie applied in a recent cycle is never applied again;
//! - a live connection's exported counters never step back (max with the last
//!   seen), and at close its contribution moves from "live" to the closed
//!   totals with final counters >= the last live ones, so group sums never dip.

use std::collections::BTreeMap;

use longconn_common::{layout, ConnRecord};

use super::state::{ConnState, Counters, GroupTotals, State};
use crate::{clock::Clock, identity::Identity, output::access::AccessRecord, view};

/// Closed cookies are remembered this long (boot-time ns) to drop duplicates.
const RECENTLY_CLOSED_NS: u64 = 15 * 60 * 1_000_000_000;

pub struct Inputs<'a> {
    pub now: Clock,
    /// Records read from the map (live, plus closed ones the ring could not take).
    pub map: Vec<ConnRecord>,
    /// Ring-buffer records not yet applied, with the position just past each.
    pub ring: Vec<(ConnRecord, u64)>,
    pub long_threshold_ns: u64,
    /// Emit a close record for connections shorter than the threshold too.
    pub short_close_records: bool,
    /// Identity and (workload, service) group keys of a record.
    pub names: &'a dyn Fn(&ConnRecord) -> (Identity, String, String),
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub records: Vec<AccessRecord>,
    /// Ring position to release (unchanged when nothing new was read).
    pub ring_commit: u64,
    /// Cookies of closed records to delete from the map.
    pub map_deletes: Vec<u64>,
}

pub fn counters_of(r: &ConnRecord) -> Counters {
    Counters {
        bytes_sent: r.bytes_sent,
        bytes_received: r.bytes_received,
        packets_sent: r.packets_sent,
        packets_received: r.packets_received,
        retransmits: r.retransmits,
        lost_packets: r.lost_packets,
    }
}

fn conn_state(
    r: &ConnRecord,
    prev: Option<&ConnState>,
    (id, wkey, skey): (Identity, String, String),
    clock: &Clock,
) -> ConnState {
    let now = counters_of(r);
    ConnState {
        // Wall-clock start fixed at first sight: a clock set back later does
        // not rewrite when the connection started.
        start_unix_ns: prev.map_or_else(
            || clock.wall(r.start_ns).timestamp_nanos_opt().unwrap_or(0),
            |p| p.start_unix_ns,
        ),
        seq: prev.map_or(0, |p| p.seq),
        last: prev.map_or(now, |p| p.last.max(now)),
        reported: prev.map_or(Counters::default(), |p| p.reported),
        start_ns: r.start_ns,
        update_ns: r.update_ns,
        direction: r.direction,
        local: r.local_ip().to_string(),
        local_port: r.local_port as u16,
        remote: r.remote_ip().to_string(),
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

pub fn group_key(direction: u32, name: &str) -> String {
    format!("{}|{name}", view::direction_name(direction))
}

fn record(c: &ConnState, now: &Clock, event: &str, end_ns: u64) -> AccessRecord {
    let d = c.last.saturating_sub(c.reported);
    AccessRecord {
        report_time: now
            .wall(now.boot_ns)
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        event: event.into(),
        cookie: 0,
        seq: c.seq,
        start_time: chrono::DateTime::from_timestamp_nanos(c.start_unix_ns)
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        duration_seconds: end_ns.saturating_sub(c.start_ns) as f64 / 1e9,
        direction: view::direction_name(c.direction).into(),
        local_address: c.local.clone(),
        local_port: c.local_port,
        remote_address: c.remote.clone(),
        remote_port: c.remote_port,
        state: layout::tcp_state_name(c.state).into(),
        failed: c.flags & layout::F_FAILED != 0,
        bytes_sent: c.last.bytes_sent,
        bytes_received: c.last.bytes_received,
        packets_sent: c.last.packets_sent,
        packets_received: c.last.packets_received,
        retransmits: c.last.retransmits,
        lost_packets: c.last.lost_packets,
        bytes_sent_delta: d.bytes_sent,
        bytes_received_delta: d.bytes_received,
        packets_sent_delta: d.packets_sent,
        packets_received_delta: d.packets_received,
        retransmits_delta: d.retransmits,
        lost_packets_delta: d.lost_packets,
        srtt_us: c.srtt_us,
        min_rtt_us: c.min_rtt_us,
        workload: c.id.workload.clone(),
        service: c.id.service.clone(),
        pid: c.id.pid,
        comm: c.id.comm.clone(),
        cgroup_id: c.cgroup_id,
        container_id: c.id.container_id.clone(),
        pod_uid: c.id.pod_uid.clone(),
        netns_cookie: c.id.netns_cookie,
        service_namespace: c.id.service_namespace.clone(),
    }
}

fn open(state: &mut State, c: &ConnState) {
    state
        .workloads
        .entry(group_key(c.direction, &c.wkey))
        .or_default()
        .opened += 1;
    state
        .services
        .entry(group_key(c.direction, &c.skey))
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

pub fn apply(state: &mut State, inp: Inputs<'_>) -> Outcome {
    let mut out = Outcome {
        ring_commit: state.ring_applied,
        ..Default::default()
    };
    let now = inp.now;

    // 1. Closes: ring first, then closed records left in the map; one per cookie.
    let mut closes: BTreeMap<u64, ConnRecord> = BTreeMap::new();
    for (r, end) in &inp.ring {
        out.ring_commit = out.ring_commit.max(*end);
        if !state.recently_closed.contains_key(&r.cookie) {
            closes.entry(r.cookie).or_insert(*r);
        }
    }
    for r in inp.map.iter().filter(|r| r.is_closed()) {
        out.map_deletes.push(r.cookie);
        if !state.recently_closed.contains_key(&r.cookie) {
            closes.entry(r.cookie).or_insert(*r);
        }
    }
    // 2. Live: in the map, not closed.
    let live: BTreeMap<u64, &ConnRecord> = inp
        .map
        .iter()
        .filter(|r| !r.is_closed() && !closes.contains_key(&r.cookie))
        .map(|r| (r.cookie, r))
        .collect();

    let mut prev_conns = std::mem::take(&mut state.conns);
    let mut closed_now: Vec<(u64, ConnState, bool)> = Vec::new(); // (cookie, state, had_record)

    for (cookie, r) in &closes {
        let prev = prev_conns.remove(cookie);
        let named = match &prev {
            Some(p) => (p.id.clone(), p.wkey.clone(), p.skey.clone()),
            None => (inp.names)(r),
        };
        let c = conn_state(r, prev.as_ref(), named, &now);
        if prev.is_none() {
            open(state, &c);
        }
        closed_now.push((*cookie, c, true));
    }
    // 3. Vanished: known last cycle, gone from the map, no close record.
    let vanished: Vec<u64> = prev_conns
        .keys()
        .filter(|k| !live.contains_key(k))
        .copied()
        .collect();
    for cookie in vanished {
        if let Some(mut c) = prev_conns.remove(&cookie) {
            c.flags |= layout::F_CLOSED;
            if c.flags & layout::F_ESTABLISHED == 0 {
                c.flags |= layout::F_FAILED;
            }
            c.state = 7; // TCP_CLOSE
            state.closes_without_record += 1;
            closed_now.push((cookie, c, false));
        }
    }

    let mut final_series = Vec::new();
    for (cookie, mut c, had_record) in closed_now {
        let end = if had_record {
            c.update_ns.max(c.start_ns)
        } else {
            now.boot_ns
        };
        close_totals(
            state
                .workloads
                .entry(group_key(c.direction, &c.wkey))
                .or_default(),
            &c,
        );
        close_totals(
            state
                .services
                .entry(group_key(c.direction, &c.skey))
                .or_default(),
            &c,
        );
        let long = end.saturating_sub(c.start_ns) >= inp.long_threshold_ns;
        if long || inp.short_close_records {
            c.seq += 1;
            let mut rec = record(&c, &now, "close", end);
            rec.cookie = cookie;
            out.records.push(rec);
        }
        if long {
            final_series.push(c);
        }
        state.recently_closed.insert(cookie, now.boot_ns);
    }

    // 4. Live connections: open new ones, periodic record for long ones.
    for (cookie, r) in &live {
        let prev = prev_conns.remove(cookie);
        let named = match &prev {
            Some(p) => (p.id.clone(), p.wkey.clone(), p.skey.clone()),
            None => (inp.names)(r),
        };
        let mut c = conn_state(r, prev.as_ref(), named, &now);
        if prev.is_none() {
            open(state, &c);
        }
        if now.boot_ns.saturating_sub(c.start_ns) >= inp.long_threshold_ns {
            c.seq += 1;
            let mut rec = record(&c, &now, "periodic", now.boot_ns);
            rec.cookie = *cookie;
            out.records.push(rec);
            c.reported = c.last;
        }
        state.conns.insert(*cookie, c);
    }

    state.final_series = final_series;
    state
        .recently_closed
        .retain(|_, t| now.boot_ns.saturating_sub(*t) < RECENTLY_CLOSED_NS);
    state.ring_applied = out.ring_commit;
    out
}

/// Exported counters of a group: closed totals plus its live connections.
pub fn group_counters(
    state: &State,
    by_service: bool,
) -> BTreeMap<String, (GroupTotals, Counters, u64)> {
    let groups = if by_service {
        &state.services
    } else {
        &state.workloads
    };
    let mut out: BTreeMap<String, (GroupTotals, Counters, u64)> = groups
        .iter()
        .map(|(k, t)| (k.clone(), (*t, t.closed_counters, 0)))
        .collect();
    for c in state.conns.values() {
        let key = group_key(c.direction, if by_service { &c.skey } else { &c.wkey });
        let e = out.entry(key).or_default();
        e.1.add(c.last);
        e.2 += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn names(_: &ConnRecord) -> (Identity, String, String) {
        let id = Identity {
            workload: "/app".into(),
            service: "127.0.0.1:80".into(),
            ..Default::default()
        };
        (id, "/app".into(), "127.0.0.1:80".into())
    }

    fn cycle(
        state: &mut State,
        now_s: u64,
        map: Vec<ConnRecord>,
        ring: Vec<ConnRecord>,
    ) -> Outcome {
        let base = state.ring_applied;
        let ring = ring
            .into_iter()
            .enumerate()
            .map(|(i, r)| (r, base + 192 * (i as u64 + 1)))
            .collect();
        apply(
            state,
            Inputs {
                now: Clock {
                    boot_ns: now_s * S,
                    wall_ns: 1_700_000_000 * S as i128,
                },
                map,
                ring,
                long_threshold_ns: 5 * S,
                short_close_records: true,
                names: &names,
            },
        )
    }

    fn sent_total(state: &State) -> u64 {
        group_counters(state, false)
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
        assert_eq!(st.workloads["outbound|/app"].opened, 1);
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
        let t = st.workloads["outbound|/app"];
        assert_eq!((t.opened, t.closed, t.failed), (1, 1, 0));
        assert!(st.conns.is_empty());
        assert_eq!(
            st.final_series.len(),
            1,
            "a closed long connection is exported once more"
        );

        // The same close again (replayed ring record) is not applied twice.
        let o = cycle(&mut st, 30, vec![], vec![closed(rec(1, 1, 1600, 0), 24)]);
        assert!(o.records.is_empty());
        assert_eq!(st.workloads["outbound|/app"].closed, 1);
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
        let t = st.workloads["outbound|/app"];
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
        assert_eq!(st.workloads["outbound|/app"].closed, 3);
        // Still in the map next cycle (delete failed): deleted again, not re-applied.
        let o = cycle(&mut st, 35, vec![closed(rec(4, 29, 10, 0), 29)], vec![]);
        assert_eq!(o.map_deletes, vec![4]);
        assert!(o.records.is_empty());
        assert_eq!(st.workloads["outbound|/app"].closed, 3);
    }

    #[test]
    fn close_seen_in_map_and_ring_in_one_cycle_counts_once() {
        let mut st = State::default();
        let live = rec(1, 1, 100, 0);
        let o = cycle(&mut st, 10, vec![live], vec![closed(rec(1, 1, 120, 0), 9)]);
        assert_eq!(o.records.len(), 1);
        assert_eq!(o.records[0].event, "close");
        assert_eq!(st.workloads["outbound|/app"].opened, 1);
        assert_eq!(sent_total(&st), 120);
        assert!(st.conns.is_empty());
    }

    #[test]
    fn wall_clock_set_back_keeps_start_time_and_durations_sane() {
        let mut st = State::default();
        let rec1 = |now_s: u64, wall_s: i128, st: &mut State| {
            apply(
                st,
                Inputs {
                    now: Clock {
                        boot_ns: now_s * S,
                        wall_ns: wall_s * S as i128,
                    },
                    map: vec![rec(1, 1, 100, 0)],
                    ring: vec![],
                    long_threshold_ns: 5 * S,
                    short_close_records: true,
                    names: &names,
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
    }
}
