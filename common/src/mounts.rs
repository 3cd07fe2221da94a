//! Finding and, where asked, mounting the kernel filesystems longconn needs:
//! bpffs for pins, tracefs for tracepoint ids, cgroup v2 for attachment.
//!
//! Never hard-codes the cgroup v2 mount point: hosts differ (unified vs hybrid).

use std::{
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const TRACEFS_MAGIC: i64 = 0x7472_6163;
pub const TRACEFS_DIR: &str = "/sys/kernel/tracing";

fn fs_magic(path: &Path) -> io::Result<i64> {
    let st = rustix::fs::statfs(path)?;
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as i64)
}

pub fn is_bpffs(path: &Path) -> bool {
    fs_magic(path).is_ok_and(|m| m == BPF_FS_MAGIC)
}

pub fn is_cgroup2(path: &Path) -> bool {
    fs_magic(path).is_ok_and(|m| m == CGROUP2_SUPER_MAGIC)
}

/// The first cgroup2 mount in /proc/mounts (e.g. /sys/fs/cgroup or /sys/fs/cgroup/unified).
pub fn cgroup2_root() -> io::Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts")?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_src, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(dir)))
        })
        .next()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no cgroup2 filesystem in /proc/mounts",
            )
        })
}

/// /proc/mounts escapes space, tab, newline and backslash as octal. Parsed
/// here, not with procfs: procfs 0.17's `mounts()` unescapes only tab,
/// newline, backslash and `#` (procfs-core mounts.rs `unmangle_octal`), so a
/// mount point with a space (`\040`) would not be found.
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 id of a cgroup directory (its kernfs inode number).
pub fn cgroup_id(dir: &Path) -> io::Result<u64> {
    Ok(fs::metadata(dir)?.ino())
}

/// Finds the directory of cgroup `id` below `root` (breadth-first; `None` if gone).
pub fn cgroup_path_of(root: &Path, id: u64) -> Option<PathBuf> {
    let mut queue = std::collections::VecDeque::from([root.to_path_buf()]);
    while let Some(dir) = queue.pop_front() {
        if cgroup_id(&dir).ok() == Some(id) {
            return Some(dir);
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    queue.push_back(e.path());
                }
            }
        }
    }
    None
}

fn mount_fs(fstype: &str, target: &Path) -> io::Result<()> {
    rustix::mount::mount(
        fstype,
        target,
        fstype,
        rustix::mount::MountFlags::empty(),
        None,
    )?;
    Ok(())
}

/// Makes sure `bpffs_dir` (e.g. /sys/fs/bpf) is a bpf filesystem, mounting one if not.
/// Returns true when it mounted.
pub fn ensure_bpffs(bpffs_dir: &Path) -> io::Result<bool> {
    if is_bpffs(bpffs_dir) {
        return Ok(false);
    }
    fs::create_dir_all(bpffs_dir)?;
    mount_fs("bpf", bpffs_dir)?;
    Ok(true)
}

/// Makes sure tracefs is mounted at /sys/kernel/tracing (aya reads tracepoint ids there).
pub fn ensure_tracefs() -> io::Result<bool> {
    let dir = Path::new(TRACEFS_DIR);
    if fs_magic(dir).is_ok_and(|m| m == TRACEFS_MAGIC) {
        return Ok(false);
    }
    if Path::new("/sys/kernel/debug/tracing/events").is_dir() {
        return Ok(false);
    }
    mount_fs("tracefs", dir)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape_mount_path(r"/a\040b"), "/a b");
        assert_eq!(unescape_mount_path("/sys/fs/cgroup"), "/sys/fs/cgroup");
        assert_eq!(unescape_mount_path(r"/x\04"), r"/x\04");
    }
}
