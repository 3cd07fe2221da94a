//! Series retirement (`--series-ttl`), and what the state keeps of workloads
//! that are gone: bounded by the live connections and the series of the
//! last TTL, never by history (DESIGN invariant 10).
//!
//! Rules, applied after the cycle's accounting and before its snapshot:
//! - each workload or service series has a start (`GroupTotals::start_unix_ns`):
//!   the cycle it first appears in, the state's start for one older than
//!   series times; it is exported as the OTLP start time and as
//!   `longconn_{workload,service}_start_time_seconds`;
//! - a series with a live connection, or whose totals changed, is seen now;
//!   one not seen for the TTL leaves the state, and so the `.prom` and the
//!   OTLP metrics. It leaves only when nothing live adds to it, so within
//!   one start time its counters never decrease; if the workload comes back
//!   its series starts again from 0 with a new start (Prometheus's rate()
//!   reads a counter reset);
//! - a key of the kernel's close totals whose cgroup is gone (not in the
//!   cgroup v2 tree) and has no live connection can grow no more: once the
//!   committed state holds all of it (unchanged this cycle) it is deleted
//!   from the kernel map, before the commit, and forgotten with it. A close
//!   racing that delete still has its record, which is counted from the
//!   record (`closetotals::account_record`: the key is not in the next read);
//! - cgroup names nothing refers to any more (no live connection, final
//!   series or close-totals key) are dropped (a cgroup seen again is looked
//!   up again).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use longconn_common::layout::TotalsKey;

use super::{
    cycle::LiveSums,
    metrics::FxBuild,
    state::{GroupKey, GroupTotals, State},
};

/// The groups and close totals as the cycle found them (before `apply`).
pub struct Before {
    workloads: BTreeMap<GroupKey, GroupTotals>,
    services: BTreeMap<GroupKey, GroupTotals>,
    close_totals: BTreeMap<TotalsKey, [u64; 8]>,
}

impl Before {
    pub fn of(state: &State) -> Self {
        Self {
            workloads: state.workloads.clone(),
            services: state.services.clone(),
            close_totals: state.close_totals.clone(),
        }
    }
}

/// Cgroups of this cycle's live connections (a connection's cgroup is
/// usually the one before it: one set insert per run of them).
#[derive(Default)]
pub struct LiveCgroups {
    set: HashSet<u64, FxBuild>,
    last: Option<u64>,
}

impl LiveCgroups {
    pub fn add(&mut self, cgroup_id: u64) {
        if self.last != Some(cgroup_id) {
            self.last = Some(cgroup_id);
            self.set.insert(cgroup_id);
        }
    }

    fn contains(&self, id: u64) -> bool {
        self.set.contains(&id)
    }
}

/// Stamps each group series (start, last seen) and retires those not seen
/// for `ttl_ns`; returns how many left.
pub fn series(
    state: &mut State,
    before: &Before,
    live: &LiveSums,
    now_unix_ns: i64,
    ttl_ns: u64,
) -> usize {
    let ttl = i64::try_from(ttl_ns).unwrap_or(i64::MAX);
    let created = state.created_unix_ns;
    let mut gone = 0;
    for (groups, was, live) in [
        (&mut state.workloads, &before.workloads, &live.workloads),
        (&mut state.services, &before.services, &live.services),
    ] {
        // A group only live connections count in (their labels changed
        // since they opened): its counters run since the state's start.
        for key in live.keys() {
            groups.entry(*key).or_insert(GroupTotals {
                start_unix_ns: created,
                ..GroupTotals::default()
            });
        }
        groups.retain(|key, t| {
            let old = was.get(key);
            if t.start_unix_ns == 0 {
                // New this cycle (or back after retirement): starts now. One
                // of a state older than series times ran since the state's start.
                t.start_unix_ns = if old.is_some() { created } else { now_unix_ns };
            }
            let changed = old.is_none_or(|o| o.counts_differ(t));
            if live.contains_key(key) || changed || t.seen_unix_ns == 0 {
                t.seen_unix_ns = now_unix_ns;
            }
            let keep = now_unix_ns.saturating_sub(t.seen_unix_ns) < ttl;
            gone += usize::from(!keep);
            keep
        });
    }
    gone
}

/// The close-totals keys that can grow no more and are wholly in the
/// committed state: their cgroup has no live connection, the sums are
/// those the cycle started from, and `gone` (given the candidates'
/// cgroups) says the cgroup is gone. They leave the state; the caller
/// deletes them from the kernel before the commit.
pub fn dead_keys(
    state: &mut State,
    before: &Before,
    live: &LiveCgroups,
    gone: impl FnOnce(&BTreeSet<u64>) -> BTreeSet<u64>,
) -> Vec<TotalsKey> {
    let quiet: Vec<TotalsKey> = state
        .close_totals
        .iter()
        .filter(|(k, v)| !live.contains(k.cgroup_id) && before.close_totals.get(*k) == Some(*v))
        .map(|(k, _)| *k)
        .collect();
    if quiet.is_empty() {
        return Vec::new();
    }
    let cgroups: BTreeSet<u64> = quiet.iter().map(|k| k.cgroup_id).collect();
    let gone = gone(&cgroups);
    let dead: Vec<TotalsKey> = quiet
        .into_iter()
        .filter(|k| gone.contains(&k.cgroup_id))
        .collect();
    for k in &dead {
        state.close_totals.remove(k);
    }
    dead
}

/// Drops the names of cgroups nothing refers to any more.
pub fn cgroups(state: &mut State, live: &LiveCgroups) {
    let used: BTreeSet<u64> = state
        .final_series
        .iter()
        .map(|c| c.cgroup_id)
        .chain(state.close_totals.keys().map(|k| k.cgroup_id))
        .collect();
    state
        .cgroups
        .retain(|id, _| live.contains(*id) || used.contains(id));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::state::Counters;

    const S: i64 = 1_000_000_000;
    const TTL: u64 = 60 * S as u64;

    fn closed(state: &mut State, key: GroupKey, bytes: u64) {
        let t = state.workloads.entry(key).or_default();
        t.closed += 1;
        t.closed_counters.add(Counters {
            bytes_sent: bytes,
            ..Counters::default()
        });
    }

    /// A series is stamped when it appears, kept while it changes or has a
    /// live connection, retired a TTL after, and comes back from 0 with a
    /// new start; within one start its counters never decrease.
    #[test]
    fn series_leave_after_the_ttl_and_come_back_from_zero() {
        let mut st = State {
            created_unix_ns: 10 * S,
            ..State::default()
        };
        let w = st.strings.intern("job");
        let key = (1, w);
        let mut live = LiveSums::default();
        let cycle = |st: &mut State, live: &LiveSums, now: i64, bytes: Option<u64>| {
            let before = Before::of(st);
            if let Some(b) = bytes {
                closed(st, key, b);
            }
            series(st, &before, live, now, TTL)
        };
        assert_eq!(cycle(&mut st, &live, 100 * S, Some(5)), 0);
        let t = st.workloads[&key];
        assert_eq!((t.start_unix_ns, t.seen_unix_ns), (100 * S, 100 * S));
        // Quiet but live: kept.
        live.workloads.insert(key, (Counters::default(), 1));
        assert_eq!(cycle(&mut st, &live, 500 * S, None), 0);
        live.workloads.clear();
        // Quiet, nothing live: kept until the TTL has passed.
        assert_eq!(cycle(&mut st, &live, 559 * S, None), 0);
        assert_eq!(st.workloads[&key].closed_counters.bytes_sent, 5);
        assert_eq!(cycle(&mut st, &live, 560 * S, None), 1);
        assert!(st.workloads.is_empty());
        // Back: from 0, a new start.
        assert_eq!(cycle(&mut st, &live, 700 * S, Some(7)), 0);
        let t = st.workloads[&key];
        assert_eq!((t.closed, t.closed_counters.bytes_sent), (1, 7));
        assert_eq!(t.start_unix_ns, 700 * S);
    }

    /// A series of a state older than series times keeps the state's start.
    #[test]
    fn old_series_keep_the_states_start() {
        let mut st = State {
            created_unix_ns: 10 * S,
            ..State::default()
        };
        let key = (1, st.strings.intern("old"));
        closed(&mut st, key, 1);
        let before = Before::of(&st);
        series(&mut st, &before, &LiveSums::default(), 20 * S, TTL);
        assert_eq!(st.workloads[&key].start_unix_ns, 10 * S);
    }

    fn key(cgroup_id: u64, port: u32) -> TotalsKey {
        TotalsKey {
            cgroup_id,
            port,
            ..TotalsKey::default()
        }
    }

    /// Only keys of gone cgroups without live connections, unchanged this
    /// cycle, leave (and the names of their cgroups with them).
    #[test]
    fn close_totals_of_gone_cgroups_leave_once_accounted() {
        let mut st = State::default();
        for (id, port) in [(1, 80), (2, 80), (3, 80), (4, 80)] {
            st.close_totals.insert(key(id, port), [1; 8]);
            st.cgroups.insert(id, Default::default());
        }
        st.cgroups.insert(9, Default::default());
        let before = Before::of(&st);
        // Cgroup 3's key grew this cycle; cgroup 2 has a live connection;
        // cgroup 4 is alive.
        st.close_totals.insert(key(3, 80), [2; 8]);
        let mut live = LiveCgroups::default();
        live.add(2);
        let dead = dead_keys(&mut st, &before, &live, |c| {
            assert_eq!(c, &BTreeSet::from([1, 4]));
            BTreeSet::from([1, 3])
        });
        assert_eq!(dead, [key(1, 80)]);
        cgroups(&mut st, &live);
        assert_eq!(st.cgroups.keys().copied().collect::<Vec<_>>(), [2, 3, 4]);
    }
}
