//! Kernel timestamps are CLOCK_BOOTTIME; people want wall-clock times.
//!
//! One `Clock` is sampled per run so every record of a run converts with the
//! same offset. Durations use boot time only, so a wall clock set back never
//! makes a connection younger.

use chrono::{DateTime, Utc};
use rustix::time::ClockId;

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub boot_ns: u64,
    pub wall_ns: i128,
}

fn now_ns(clock: ClockId) -> i128 {
    let ts = rustix::time::clock_gettime(clock);
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl Clock {
    pub fn now() -> Self {
        Self {
            boot_ns: now_ns(ClockId::Boottime) as u64,
            wall_ns: now_ns(ClockId::Realtime),
        }
    }

    /// Wall-clock time of a CLOCK_BOOTTIME timestamp.
    pub fn wall(&self, boot_ns: u64) -> DateTime<Utc> {
        let ns = self.wall_ns - i128::from(self.boot_ns) + i128::from(boot_ns);
        DateTime::from_timestamp_nanos(ns.clamp(0, i128::from(i64::MAX)) as i64)
    }
}
