//! One read of the kernel per refresh, the same read `dump --json` makes:
//! the live map in batches, each refreshed from its socket by the pinned
//! `refresh_conns` program, then the cgroup names of ids not seen before.
//!
//! Invariant: `top` never consumes a close record. The ring is mapped
//! read-only (`Access::ReadOnly`: `RingReader::commit` refuses) and only
//! peeked, so `collect` sees every record as if `top` were not running.

use std::{
    collections::{BTreeMap, HashSet},
    time::{Duration, Instant},
};

use longconn_common::{pinned::RefreshStats, ring::RingReader, ConnRecord, Pins};

use crate::{
    clock::Clock,
    identity::{self, Cgroup, Identifier},
    runtime::Roots,
    servicemap::ServiceMap,
};

/// What one read found.
pub struct Read {
    pub live: Vec<ConnRecord>,
    /// Sampled as the read started.
    pub clock: Clock,
    /// How long the read and refresh took.
    pub took: Duration,
    /// Records of the wrong size, skipped.
    pub bad: u64,
    pub refresh: RefreshStats,
}

pub struct Source<'p> {
    pins: &'p Pins,
    /// None when the ring cannot be mapped (closes then keep their last
    /// live values).
    ring: Option<RingReader>,
    cgroups: BTreeMap<u64, Cgroup>,
    roots: Roots,
    services: ServiceMap,
}

impl<'p> Source<'p> {
    pub fn new(pins: &'p Pins, roots: Roots, services: ServiceMap) -> Self {
        Self {
            pins,
            ring: pins.ring().ok(),
            cgroups: BTreeMap::new(),
            roots,
            services,
        }
    }

    /// Reads and refreshes every live connection once.
    pub fn read(&mut self) -> anyhow::Result<Read> {
        let clock = Clock::now();
        let start = Instant::now();
        let mut live = Vec::new();
        let (bad, refresh) = self
            .pins
            .stream_live(true, |batch| live.extend_from_slice(&batch))?;
        identity::resolve_cgroups(&mut self.cgroups, &live, &self.roots);
        Ok(Read {
            live,
            clock,
            took: start.elapsed(),
            bad,
            refresh,
        })
    }

    /// The close records of `cookies` waiting in the ring for `collect`,
    /// peeked from the consumer position on (never committed).
    pub fn finals(&self, cookies: &[u64]) -> Vec<ConnRecord> {
        let Some(ring) = &self.ring else {
            return Vec::new();
        };
        let want: HashSet<u64> = cookies.iter().copied().collect();
        ring.peek(0)
            .records
            .iter()
            .filter(|r| {
                r.data
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .is_some_and(|b| want.contains(&u64::from_ne_bytes(b)))
            })
            .filter_map(|r| ConnRecord::decode(r.data))
            .collect()
    }

    /// Names records (workload, service) with what the reads resolved.
    pub fn identifier(&self) -> Identifier<'_> {
        Identifier::new(&self.cgroups, &self.services)
    }
}
