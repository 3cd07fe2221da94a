//! Kernel timestamps are CLOCK_BOOTTIME; people want wall-clock times.
//!
//! One `Clock` is sampled per run so every record of a run converts with the
//! same offset. Durations use boot time only, so a wall clock set back never
//! makes a connection younger.

use chrono::{DateTime, Utc};

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub boot_ns: u64,
    pub wall_ns: i128,
}

fn now_ns(clock: libc::clockid_t) -> i128 {
    // SAFETY: timespec is plain data; clock_gettime fills it for a valid clock id.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid clock id and out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl Clock {
    pub fn now() -> Self {
        Self {
            boot_ns: now_ns(libc::CLOCK_BOOTTIME) as u64,
            wall_ns: now_ns(libc::CLOCK_REALTIME),
        }
    }

    /// Wall-clock time of a CLOCK_BOOTTIME timestamp.
    pub fn wall(&self, boot_ns: u64) -> DateTime<Utc> {
        let ns = self.wall_ns - i128::from(self.boot_ns) + i128::from(boot_ns);
        DateTime::from_timestamp_nanos(ns.clamp(0, i128::from(i64::MAX)) as i64)
    }
}
