//! Reading a pinned BPF ring buffer through its mmap, without consuming.
//!
//! aya's `RingBuf` advances the kernel consumer position as each item is
//! dropped, so a reader killed after the drop but before its outputs are durable
//! would lose records. Here reading and committing are separate steps: `peek`
//! returns records with their positions, and `commit(pos)` advances the consumer
//! position only when the caller says its outputs are safe.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
};

const BUSY_BIT: u32 = 1 << 31;
const DISCARD_BIT: u32 = 1 << 30;
const HDR_SIZE: u64 = 8;

struct Mapping {
    ptr: NonNull<libc::c_void>,
    len: usize,
}

impl Mapping {
    fn new(fd: BorrowedFd<'_>, len: usize, prot: i32, offset: i64) -> io::Result<Self> {
        // SAFETY: a fresh shared mapping of a ring-buffer map fd; the kernel
        // validates length, offset and protection and fails otherwise.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(p)
            .map(|ptr| Self { ptr, len })
            .ok_or_else(|| io::Error::other("mmap returned NULL"))
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len come from a successful mmap and are unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr(), self.len) };
    }
}

/// A pinned ring buffer, mapped for reading (and for committing when writable).
pub struct RingReader {
    consumer: Mapping,
    producer: Mapping,
    page: usize,
    size: u64,
    writable: bool,
}

/// One record with the position just past it (what to commit once it is handled).
pub struct RingRecord<'a> {
    pub data: &'a [u8],
    pub end_pos: u64,
}

/// What one `peek` read: the records, where it stopped and how far the
/// producer was when it started.
pub struct Peeked<'a> {
    pub records: Vec<RingRecord<'a>>,
    /// Position just past the last record read (committed or discarded):
    /// everything before it has been seen.
    pub read_to: u64,
    /// Producer position when the read started. `read_to < producer` when a
    /// record still being written stopped the read: records reserved before
    /// the read began may then only be seen by a later read.
    pub producer: u64,
}

impl RingReader {
    /// `size` is the map's max_entries (a power-of-two multiple of the page size).
    pub fn open(fd: BorrowedFd<'_>, size: u32, writable: bool) -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        let consumer = Mapping::new(fd, page, prot, 0)?;
        // Producer page then the data area, mapped twice so records never wrap.
        let producer = Mapping::new(fd, page + 2 * size as usize, libc::PROT_READ, page as i64)?;
        Ok(Self {
            consumer,
            producer,
            page,
            size: u64::from(size),
            writable,
        })
    }

    fn consumer_pos(&self) -> &AtomicU64 {
        // SAFETY: offset 0 of the consumer page is the kernel's u64 consumer_pos,
        // page-aligned, valid while the mapping lives.
        unsafe { &*self.consumer.ptr.as_ptr().cast::<AtomicU64>() }
    }

    fn producer_pos(&self) -> &AtomicU64 {
        // SAFETY: offset 0 of the producer page is the kernel's u64 producer_pos.
        unsafe { &*self.producer.ptr.as_ptr().cast::<AtomicU64>() }
    }

    /// (consumer, producer) positions: bytes consumed and produced since creation.
    pub fn positions(&self) -> (u64, u64) {
        (
            self.consumer_pos().load(Ordering::Acquire),
            self.producer_pos().load(Ordering::Acquire),
        )
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Committed records from `from` (a record boundary ≥ consumer position) up to
    /// the first one still being written. Discarded records are skipped.
    pub fn peek(&self, from: u64) -> Peeked<'_> {
        let (consumer, producer) = self.positions();
        let mut pos = from.max(consumer);
        let mut out = Vec::new();
        // SAFETY: the data area starts one page into the producer mapping.
        let data = unsafe { self.producer.ptr.as_ptr().cast::<u8>().add(self.page) };
        while pos < producer {
            let off = (pos & (self.size - 1)) as usize;
            // SAFETY: off < size and the data area is mapped twice (2*size bytes),
            // so the 8-byte header is in bounds; it is 8-byte aligned.
            let len_word = unsafe { &*data.add(off).cast::<AtomicU32>() }.load(Ordering::Acquire);
            if len_word & BUSY_BIT != 0 {
                break;
            }
            let len = u64::from(len_word & !(BUSY_BIT | DISCARD_BIT));
            let total = (len + HDR_SIZE + 7) & !7;
            if len > self.size || pos + total > producer {
                break; // not a sane record: stop rather than misread
            }
            let end_pos = pos + total;
            if len_word & DISCARD_BIT == 0 {
                // SAFETY: header + len lies within the double-mapped data area
                // (off < size, len <= size) and the kernel finished writing it.
                let bytes = unsafe {
                    std::slice::from_raw_parts(data.add(off + HDR_SIZE as usize), len as usize)
                };
                out.push(RingRecord {
                    data: bytes,
                    end_pos,
                });
            }
            pos = end_pos;
        }
        Peeked {
            records: out,
            read_to: pos,
            producer,
        }
    }

    /// Releases everything before `pos` back to the kernel.
    pub fn commit(&self, pos: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "ring buffer opened read-only",
            ));
        }
        let (consumer, producer) = self.positions();
        if pos > consumer && pos <= producer {
            // The consumer page is mapped writable (checked above).
            self.consumer_pos().store(pos, Ordering::Release);
        }
        Ok(())
    }
}
