//! The refresh's work array, mapped, and the lock that gives one reader at a
//! time the use of it.
//!
//! Why a work array: one run of the refresh program refreshes only the
//! records a reader names in the pinned array `refresh_work` (one chunk),
//! so no single BPF_PROG_TEST_RUN holds its CPU (not preemptible, softirqs
//! off) for more than one chunk, whatever the map size. The reader writes
//! the records to refresh and reads the refreshed counters through a shared mapping: no
//! syscall per record, and no second read of the map.
//!
//! Invariant: the array is shared by every reader of a pin dir, so a reader
//! fills it, runs the program and reads it back under an exclusive flock of
//! the pin dir, one chunk at a time.

use std::{
    fs::File,
    io,
    os::fd::{AsRawFd, BorrowedFd},
    path::Path,
    ptr::NonNull,
    time::{Duration, Instant},
};

use crate::layout::RefreshSlot;

/// The `refresh_work` array, mapped read-write.
pub struct WorkArray {
    ptr: NonNull<RefreshSlot>,
    slots: usize,
    len: usize,
}

impl WorkArray {
    /// Maps `slots` slots of a BPF_F_MMAPABLE array of `RefreshSlot` values
    /// (the caller has checked the value size and the slot count).
    pub fn map(fd: BorrowedFd<'_>, slots: usize) -> io::Result<Self> {
        let page = rustix::param::page_size();
        let len = (slots * RefreshSlot::SIZE).div_ceil(page).max(1) * page;
        // SAFETY: a fresh shared mapping of an array map fd; the kernel checks
        // that the map is mmapable, that `len` fits it and that the fd allows
        // writing, and fails otherwise.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(p.cast::<RefreshSlot>())
            .map(|ptr| Self { ptr, slots, len })
            .ok_or_else(|| io::Error::other("mmap returned NULL"))
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Puts `slot` (a record to refresh, status cleared) in slot `i`
    /// (no-op past the last slot).
    pub fn set(&self, i: usize, slot: RefreshSlot) {
        if i >= self.slots {
            return;
        }
        // SAFETY: i < slots, and the mapping holds `slots` values of RefreshSlot::SIZE bytes
        // from its page-aligned start, so the slot is in bounds and aligned.
        // Volatile: the memory is shared with the kernel and other readers
        // (who wait for the lock held around each chunk).
        unsafe { self.ptr.as_ptr().add(i).write_volatile(slot) };
    }

    /// Slot `i` as the refresh program left it (status 0, "not refreshed",
    /// past the last slot).
    pub fn get(&self, i: usize) -> RefreshSlot {
        if i >= self.slots {
            return RefreshSlot::default();
        }
        // SAFETY: as in `set`; every bit pattern is a valid RefreshSlot.
        unsafe { self.ptr.as_ptr().add(i).read_volatile() }
    }
}

// SAFETY: the mapping belongs to the process, not to the thread that made
// it, so its owner may move to another thread (a read refreshes on its own
// thread: `Pins::pipeline`). Not Sync: `set` and `get` take `&self`, and two
// threads writing the slots at once would race.
unsafe impl Send for WorkArray {}

impl Drop for WorkArray {
    fn drop(&mut self) {
        // SAFETY: ptr/len come from a successful mmap and are unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// An exclusive flock of a pin dir: released when dropped (or when the
/// process dies, so a killed reader never leaves it held).
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Waits up to `wait` for the lock; `Ok(None)` if another process held it
    /// all that time.
    pub fn acquire(dir: &Path, wait: Duration) -> io::Result<Option<Self>> {
        let file = File::open(dir)?;
        let deadline = Instant::now() + wait;
        loop {
            if crate::flock::try_exclusive(&file)? {
                return Ok(Some(Self { _file: file }));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }
}
