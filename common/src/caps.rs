//! Which capabilities this process holds, to say what is missing before a
//! syscall fails with a bare EPERM.

pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// The effective capability set from /proc/self/status (0 if unreadable).
pub fn effective() -> u64 {
    procfs::process::Process::myself()
        .and_then(|p| p.status())
        .map(|s| s.capeff)
        .unwrap_or(0)
}

pub fn has(set: u64, cap: u32) -> bool {
    set & (1u64 << cap) != 0
}

/// Names of `wanted` capabilities missing from the effective set.
pub fn missing(wanted: &[(u32, &'static str)]) -> Vec<&'static str> {
    let eff = effective();
    wanted
        .iter()
        .filter(|(c, _)| !has(eff, *c))
        .map(|(_, n)| *n)
        .collect()
}

pub const CAP_CHOWN: u32 = 0;
pub const CAP_DAC_OVERRIDE: u32 = 1;
pub const CAP_FOWNER: u32 = 3;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Drops every capability but `keep` from this process: bounding set,
/// ambient set, and the effective/permitted/inheritable sets. Irreversible.
pub fn retain_only(keep: &[u32]) -> std::io::Result<()> {
    let mask: u64 = keep.iter().fold(0, |m, c| m | (1u64 << c));
    for cap in 0..64u32 {
        if mask & (1u64 << cap) == 0 {
            // SAFETY: prctl with integer arguments; EINVAL for caps the kernel
            // does not know is expected and ignored.
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
        }
    }
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let lo = mask as u32;
    let hi = (mask >> 32) as u32;
    let data = [
        CapData {
            effective: lo,
            permitted: lo,
            inheritable: 0,
        },
        CapData {
            effective: hi,
            permitted: hi,
            inheritable: 0,
        },
    ];
    // SAFETY: capset(2) with a version-3 header and a two-element data array,
    // both valid for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
