//! Group metrics exact at any close rate: the kernel's close totals.
//!
//! The kernel adds the final counters of every close to a per-CPU value
//! keyed by (cgroup, netns, comm, direction, peer endpoint) — the endpoint
//! is the remote one outbound, the local listening one inbound — *before* it
//! writes the close record, whatever then happens to the record (ring,
//! overflow map, or dropped when both are full). So the group totals of
//! closed connections come from those sums, and close records feed only
//! the access log (and the final per-connection series).
//!
//! A cycle reads the sums first, before the live map and the close
//! records, and accounts per key what they grew by since the sums the
//! state last saw (`State::close_totals`), under the key's workload and
//! service names. Why this order, and what it implies:
//! - a connection live in the map read was still open when the sums were
//!   read: it is in the live sums, not in the close totals (never twice);
//! - a close record read this cycle whose close the sums already hold
//!   (its `close_seq` is at most its CPU's `seq_end`) is accounted;
//! - a close record whose close the sums do not hold yet (it closed between
//!   the two reads) is accounted from the record now and added to the
//!   last-seen sums, so the sums' growth next cycle does not count it again;
//! - a connection known live last cycle that vanished without a record
//!   (its record was dropped: only possible when no reader had read it, i.e.
//!   it closed before the previous cycle's refresh reached it) closed before
//!   this cycle's read of the sums: they hold it.
//!
//! Exactly once across kills: the last-seen sums are committed in the same
//! state write as the totals they were added to; a run killed before the
//! commit starts again from the same sums, and the records it reads again
//! get the same treatment. Counters never go backwards: a connection leaves
//! the live sums in the cycle its final counters enter the close totals.

use std::collections::HashMap;

use longconn_common::{
    layout::{self, Totals, TotalsKey},
    pinned::TotalsSnapshot,
    ConnRecord,
};

use super::state::{Counters, GroupKey, GroupTotals, State};

/// Sums of one key over CPUs: closed, failed, then the six counters.
pub type Sums = [u64; 8];

/// One read of the kernel's close totals.
#[derive(Debug, Default)]
pub struct Read {
    /// Each key's sums over CPUs.
    sums: Vec<(TotalsKey, Sums)>,
    /// Each key's `seq_end` per CPU: which closes the read holds.
    seq: HashMap<TotalsKey, Vec<u64>>,
}

fn sums_of(values: &[Totals]) -> Sums {
    let mut s = [0u64; 8];
    for v in values {
        // Every close adds one to seq_end; the established ones are those
        // that did not fail (the kernel does not count them apart).
        let fields = [
            v.seq_end.wrapping_sub(v.failed),
            v.failed,
            v.bytes_sent,
            v.bytes_received,
            v.packets_sent,
            v.packets_received,
            v.retransmits,
            v.lost_packets,
        ];
        for (acc, x) in s.iter_mut().zip(fields) {
            *acc = acc.wrapping_add(x);
        }
    }
    s
}

/// A closing record's contribution: one close (or failure) and its counters.
fn record_sums(r: &ConnRecord) -> Sums {
    let failed = r.flags & layout::F_FAILED != 0;
    [
        u64::from(!failed),
        u64::from(failed),
        r.bytes_sent,
        r.bytes_received,
        r.packets_sent,
        r.packets_received,
        r.retransmits,
        r.lost_packets,
    ]
}

impl Read {
    pub fn new(snap: TotalsSnapshot) -> Self {
        let mut r = Self::default();
        for (key, values) in snap.keys {
            r.sums.push((key, sums_of(&values)));
            r.seq
                .insert(key, values.iter().map(|v| v.seq_end).collect());
        }
        r
    }

    /// Records standing for every key (their identity fields only), to
    /// resolve the keys' cgroup names with the connections'.
    pub fn key_records(&self) -> Vec<ConnRecord> {
        self.sums.iter().map(|(k, _)| k.as_record()).collect()
    }

    /// Whether this read holds the close of record `r`.
    fn holds(&self, r: &ConnRecord) -> bool {
        self.seq
            .get(&TotalsKey::of(r))
            .and_then(|per_cpu| per_cpu.get(r.close_cpu as usize))
            .is_some_and(|end| *end >= r.close_seq)
    }
}

fn add(t: &mut GroupTotals, d: &Sums) {
    t.closed = t.closed.saturating_add(d[0]);
    t.failed = t.failed.saturating_add(d[1]);
    t.closed_counters.add(Counters {
        bytes_sent: d[2],
        bytes_received: d[3],
        packets_sent: d[4],
        packets_received: d[5],
        retransmits: d[6],
        lost_packets: d[7],
    });
}

fn add_to_groups(state: &mut State, (w, s): (GroupKey, GroupKey), d: &Sums) {
    add(state.workloads.entry(w).or_default(), d);
    add(state.services.entry(s).or_default(), d);
}

/// Accounts what each key's sums grew by since the state last saw them,
/// under the (workload, service) groups `groups` names for the key's
/// identity; the state then holds the sums read.
pub fn account_growth(
    state: &mut State,
    read: &Read,
    groups: &mut dyn FnMut(&mut State, &ConnRecord) -> (GroupKey, GroupKey),
) {
    for (key, now) in &read.sums {
        let seen = state.close_totals.get(key).copied().unwrap_or_default();
        let mut grew = [0u64; 8];
        let mut kept = seen;
        for i in 0..8 {
            grew[i] = now[i].saturating_sub(seen[i]);
            kept[i] = now[i].max(seen[i]);
        }
        if grew != [0; 8] {
            let g = groups(state, &key.as_record());
            add_to_groups(state, g, &grew);
        }
        state.close_totals.insert(*key, kept);
    }
}

/// Takes the sums read as already accounted (a new state's starting
/// point on pins with a history: see `collect::read_kernel`).
pub fn adopt(state: &mut State, read: &Read) {
    for (key, now) in &read.sums {
        state.close_totals.insert(*key, *now);
    }
}

/// What to do with a close read from its record this cycle.
#[derive(Debug, PartialEq, Eq)]
pub enum Close {
    /// The kernel's sums read this cycle hold it: accounted by the growth.
    InSums,
    /// Accounted from the record now (and remembered in the last-seen sums
    /// when the kernel will add it there).
    FromRecord,
}

/// Accounts a close whose record was read this cycle, if the sums read do
/// not hold it: from the record, into `groups`. A close the kernel could
/// not add to its sums (`close_seq` 0: that map was full) is only ever
/// accounted here.
pub fn account_record(
    state: &mut State,
    read: &Read,
    r: &ConnRecord,
    groups: (GroupKey, GroupKey),
) -> Close {
    if r.close_seq != 0 && read.holds(r) {
        return Close::InSums;
    }
    let d = record_sums(r);
    add_to_groups(state, groups, &d);
    if r.close_seq != 0 {
        let seen = state.close_totals.entry(TotalsKey::of(r)).or_default();
        for (acc, x) in seen.iter_mut().zip(d) {
            *acc = acc.saturating_add(x);
        }
    }
    Close::FromRecord
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(cookie: u64, seq: u64, cpu: u32, sent: u64) -> ConnRecord {
        ConnRecord {
            cookie,
            bytes_sent: sent,
            family: layout::AF_INET,
            remote_addr: [u32::from_ne_bytes([127, 0, 0, 1]), 0, 0, 0],
            remote_port: 80,
            direction: layout::DIR_OUTBOUND,
            flags: layout::F_ESTABLISHED | layout::F_CLOSED,
            close_seq: seq,
            close_cpu: cpu,
            ..Default::default()
        }
    }

    /// The kernel's per-CPU values after `closes` (cpu, sent) in order.
    fn kernel(closes: &[(u32, u64)]) -> TotalsSnapshot {
        let mut per_cpu = vec![Totals::default(); 2];
        for (cpu, sent) in closes {
            let v = &mut per_cpu[*cpu as usize];
            v.seq_begin += 1;
            v.bytes_sent += sent;
            v.seq_end += 1;
        }
        TotalsSnapshot {
            keys: vec![(TotalsKey::of(&rec(0, 0, 0, 0)), per_cpu)],
        }
    }

    const G: (GroupKey, GroupKey) = ((1, 1), (1, 2));

    fn sent(state: &State) -> (u64, u64) {
        let t = state.workloads.get(&G.0).copied().unwrap_or_default();
        (t.closed, t.closed_counters.bytes_sent)
    }

    /// Closes read before, between and after the reads of the sums are
    /// each accounted once, over several cycles, whichever way they come.
    #[test]
    fn each_close_is_accounted_once_whatever_the_read_order() {
        let mut st = State::default();
        let mut groups = |_: &mut State, _: &ConnRecord| G;
        // Cycle 1: two closes on CPU 0 in the sums; a third (CPU 1) closed
        // after the sums were read, its record read.
        let read = Read::new(kernel(&[(0, 10), (0, 20)]));
        account_growth(&mut st, &read, &mut groups);
        assert_eq!(sent(&st), (2, 30));
        assert_eq!(
            account_record(&mut st, &read, &rec(1, 1, 0, 10), G),
            Close::InSums
        );
        assert_eq!(
            account_record(&mut st, &read, &rec(3, 1, 1, 5), G),
            Close::FromRecord
        );
        assert_eq!(sent(&st), (3, 35));
        // Cycle 2: the sums now hold it; one more close without any record.
        let read = Read::new(kernel(&[(0, 10), (0, 20), (1, 5), (1, 7)]));
        account_growth(&mut st, &read, &mut groups);
        assert_eq!(
            sent(&st),
            (4, 42),
            "the late one once, the unrecorded one once"
        );
        // Cycle 2 again (a run killed before its commit would start from
        // the committed state: same result).
        let mut again = st.clone();
        account_growth(&mut again, &read, &mut groups);
        assert_eq!(sent(&again), (4, 42), "nothing new");
    }

    /// A close the kernel could not add to its sums is counted from its record.
    #[test]
    fn a_close_missing_from_the_sums_counts_from_its_record() {
        let mut st = State::default();
        let read = Read::new(TotalsSnapshot::default());
        let mut r = rec(9, 0, 0, 100);
        r.flags |= layout::F_TOTALS_MISS;
        assert_eq!(account_record(&mut st, &read, &r, G), Close::FromRecord);
        assert_eq!(sent(&st), (1, 100));
        assert!(st.close_totals.is_empty());
    }
}
