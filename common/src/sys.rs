//! The few bpf(2) commands aya 0.14 has no API for: opening a pin read-only,
//! batched map lookups (7x faster than per-key iteration at 100k entries), and
//! running a pinned program once (aya loads programs but cannot test-run them).
//! Crate-private: the element commands are reached only through `Checked`,
//! which checks a map's type and key and value sizes first.

use std::{
    ffi::CString,
    io,
    marker::PhantomData,
    mem::size_of,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use aya::maps::{MapData, MapType};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
const BPF_MAP_FREEZE: libc::c_long = 22;
pub const BPF_F_RDONLY: u32 = 1 << 3;

#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a repr(C) prefix of union bpf_attr for `cmd`, valid for
    // reads and writes of size_of::<T>() bytes; the kernel zero-checks the rest.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `struct __sk_buff` up to the end of `cb[5]`: the part of a tc program's
/// context a test run may set (everything else here must stay zero).
#[repr(C)]
#[derive(Default)]
struct SkBuffCtx {
    _before_ifindex: [u32; 10],
    /// The run's device (`skb->dev`): 0 for loopback, else an ifindex of
    /// this network namespace (ENODEV if it has none).
    ifindex: u32,
    _tc_index: u32,
    cb: [u32; 5],
}

/// BPF_PROG_TEST_RUN of a tc program that ignores its packet, with
/// `skb->cb[..args.len()]` set to `args`; returns the program's return value
/// and `skb->cb` as the program left it (its results).
pub fn prog_run(prog: BorrowedFd<'_>, args: &[u32]) -> io::Result<(u32, [u32; 5])> {
    prog_run_on(prog, 0, args)
}

/// `prog_run` on device `ifindex` of this network namespace (0: loopback):
/// socket lookups in the program then match sockets bound to that device.
pub fn prog_run_on(
    prog: BorrowedFd<'_>,
    ifindex: u32,
    args: &[u32],
) -> io::Result<(u32, [u32; 5])> {
    // A zeroed Ethernet frame: the least a tc program accepts.
    let packet = [0u8; 64];
    let mut ctx = SkBuffCtx {
        ifindex,
        ..SkBuffCtx::default()
    };
    for (slot, a) in ctx.cb.iter_mut().zip(args) {
        *slot = *a;
    }
    // The kernel returns the whole `struct __sk_buff` (ENOSPC if the buffer
    // is shorter); cb is at the same offset as in the input.
    #[repr(C)]
    struct CtxOut {
        ctx: SkBuffCtx,
        _rest: [u8; 512],
    }
    let mut ctx_out = CtxOut {
        ctx: SkBuffCtx::default(),
        _rest: [0; 512],
    };
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: packet.len() as u32,
        data_in: packet.as_ptr() as u64,
        repeat: 1,
        ctx_size_in: std::mem::size_of::<SkBuffCtx>() as u32,
        ctx_in: &ctx as *const SkBuffCtx as u64,
        ctx_size_out: std::mem::size_of::<CtxOut>() as u32,
        ctx_out: &mut ctx_out as *mut CtxOut as u64,
        ..Default::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok((attr.retval, ctx_out.ctx.cb))
}

/// BPF_OBJ_GET with file flags (0 or BPF_F_RDONLY).
pub fn obj_get(path: &Path, file_flags: u32) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let mut attr = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags,
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: on success BPF_OBJ_GET returns a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Plain data the kernel may fill: every byte pattern of its size is a
/// valid value.
///
/// # Safety
/// Implement only for types of which any `size_of::<Self>()` bytes are a
/// valid value (integers and arrays of them; no references, no enums).
pub(crate) unsafe trait Pod: Copy + 'static {}
// SAFETY: any 8 bytes are a u64.
unsafe impl Pod for u64 {}
// SAFETY: any N bytes are a [u8; N].
unsafe impl<const N: usize> Pod for [u8; N] {}

/// A zeroed `T` (all-zero bytes are a valid `T`, as any bytes are).
fn zeroed<T: Pod>() -> T {
    // SAFETY: T: Pod, so the all-zero pattern is a valid T.
    unsafe { std::mem::zeroed() }
}

/// The map kinds longconn reads element-wise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Hash,
    PerCpuHash,
    LruHash,
}

/// A hash map whose type, key size and value size were checked against
/// `K` and `V` before any element syscall: the buffers below are sized from
/// `K` and `V`, so the kernel never writes past them. For a per-CPU map, `V`
/// is one CPU's value rounded up to 8 bytes (as the kernel copies them) and
/// each element is one `V` per possible CPU.
pub(crate) struct Checked<'a, K, V> {
    fd: BorrowedFd<'a>,
    copies: usize,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<'a, K: Pod, V: Pod> Checked<'a, K, V> {
    pub(crate) fn new(map: &'a MapData, kind: Kind) -> io::Result<Self> {
        let info = map.info().map_err(io::Error::other)?;
        let found = match info.map_type() {
            Ok(MapType::Hash) => Some(Kind::Hash),
            Ok(MapType::PerCpuHash) => Some(Kind::PerCpuHash),
            Ok(MapType::LruHash) => Some(Kind::LruHash),
            _ => None,
        };
        let (key, value) = (info.key_size() as usize, info.value_size() as usize);
        let value_as_copied = match kind {
            Kind::Hash | Kind::LruHash => value,
            Kind::PerCpuHash => value.next_multiple_of(8),
        };
        if found != Some(kind) || key != size_of::<K>() || value_as_copied != size_of::<V>() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "map {:?} is {found:?} with {key}-byte keys and {value}-byte values; expected {kind:?} with {} and {}",
                    info.name_as_str().unwrap_or("?"),
                    size_of::<K>(),
                    size_of::<V>()
                ),
            ));
        }
        let copies = match kind {
            Kind::Hash | Kind::LruHash => 1,
            Kind::PerCpuHash => aya::util::nr_cpus().map_err(|(_, e)| e)?,
        };
        Ok(Self {
            fd: map.fd().as_fd(),
            copies,
            _types: PhantomData,
        })
    }

    /// Every (key, value) of the map, read in batches of `chunk` entries.
    /// Calls `each(key, values)` per entry (one value, or one per possible
    /// CPU); entries changing meanwhile may be seen once, or not at all if
    /// deleted.
    pub(crate) fn lookup_batch(
        &self,
        chunk: u32,
        mut each: impl FnMut(&K, &[V]),
    ) -> io::Result<()> {
        let mut chunk = chunk.max(1);
        let mut keys = vec![zeroed::<K>(); chunk as usize];
        let mut values = vec![zeroed::<V>(); chunk as usize * self.copies];
        let mut token_in = [0u8; 8];
        let mut token_out = [0u8; 8];
        let mut first = true;
        loop {
            let mut attr = BatchAttr {
                in_batch: if first { 0 } else { token_in.as_ptr() as u64 },
                out_batch: token_out.as_mut_ptr() as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: chunk,
                map_fd: self.fd.as_raw_fd() as u32,
                elem_flags: 0,
                flags: 0,
            };
            let done = match bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) {
                Ok(_) => false,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && attr.count == 0 => {
                    // One hash bucket holds more than `chunk` entries: grow and retry.
                    chunk = chunk.saturating_mul(2);
                    keys.resize(chunk as usize, zeroed());
                    values.resize(chunk as usize * self.copies, zeroed());
                    continue;
                }
                Err(e) => return Err(e),
            };
            let n = (attr.count as usize).min(chunk as usize);
            for (key, values) in keys[..n].iter().zip(values.chunks_exact(self.copies)) {
                each(key, values);
            }
            if done {
                return Ok(());
            }
            token_in = token_out;
            first = false;
        }
    }

    /// BPF_MAP_LOOKUP_ELEM: the key's value (one per possible CPU for a
    /// per-CPU map).
    pub(crate) fn lookup(&self, key: &K) -> io::Result<Vec<V>> {
        let mut values = vec![zeroed::<V>(); self.copies];
        let mut attr = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: key as *const K as u64,
            value: values.as_mut_ptr() as u64,
            ..Default::default()
        };
        bpf(BPF_MAP_LOOKUP_ELEM, &mut attr)?;
        Ok(values)
    }

    /// BPF_MAP_DELETE_ELEM for one key.
    pub(crate) fn delete(&self, key: &K) -> io::Result<()> {
        let mut attr = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: key as *const K as u64,
            ..Default::default()
        };
        bpf(BPF_MAP_DELETE_ELEM, &mut attr).map(|_| ())
    }

    /// BPF_MAP_DELETE_BATCH of `keys`, in order. On an error, how many keys
    /// were deleted before the one that failed.
    pub(crate) fn delete_batch(&self, keys: &[K]) -> Result<(), (usize, io::Error)> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            count: keys.len() as u32,
            map_fd: self.fd.as_raw_fd() as u32,
            ..Default::default()
        };
        match bpf(BPF_MAP_DELETE_BATCH, &mut attr) {
            Ok(_) => Ok(()),
            Err(e) => Err(((attr.count as usize).min(keys.len()), e)),
        }
    }
}

#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// BPF_MAP_FREEZE: no write through the bpf syscall succeeds from now on,
/// whoever holds a writable fd (programs are unaffected).
pub fn map_freeze(map: BorrowedFd<'_>) -> io::Result<()> {
    #[repr(C)]
    #[derive(Default)]
    struct FreezeAttr {
        map_fd: u32,
    }
    let mut attr = FreezeAttr {
        map_fd: map.as_raw_fd() as u32,
    };
    bpf(BPF_MAP_FREEZE, &mut attr).map(|_| ())
}
