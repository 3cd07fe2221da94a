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

use super::model::Model;
use crate::{
    clock::Clock,
    identity::{self, Cgroup, Identifier},
    runtime::Roots,
    servicemap::ServiceMap,
};

/// What one read found besides the records (handed to the model).
pub struct Read {
    /// Sampled as the read started.
    pub clock: Clock,
    /// How long the read, the read-time refresh and the rates took.
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

    /// Reads and refreshes every live connection once into `model`:
    /// threads read and refresh the map a batch at a time while this one
    /// takes the batch before into the model (rates), as `dump --json`
    /// overlaps reading and rendering (`Pins::stream_live`).
    pub fn read(&mut self, model: &mut Model) -> anyhow::Result<Read> {
        let clock = Clock::now();
        let start = Instant::now();
        model.begin(clock.boot_ns);
        let pins = self.pins;
        let (bad, refresh) = pins.stream_live(true, |batch| model.add(&batch))?;
        model.finish(|cookies| self.finals(cookies));
        identity::resolve_cgroups(
            &mut self.cgroups,
            model.rows().map(|r| r.rec),
            &self.roots,
            &|ids| crate::collect::captured_paths(pins, ids),
        );
        Ok(Read {
            clock,
            took: start.elapsed(),
            bad,
            refresh,
        })
    }

    /// The close records of `cookies` waiting in the ring for `collect`,
    /// peeked from the consumer position on (never committed).
    fn finals(&self, cookies: &[u64]) -> Vec<ConnRecord> {
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
