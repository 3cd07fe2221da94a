//! One collect at a time per state dir: an flock held for the whole cycle.
//!
//! The holder writes its pid into the lock file when it gets the lock, so
//! the file's mtime says since when it holds it. A run that cannot get the
//! lock within its wait skips the cycle (exit 0: an overlap is normal when
//! a cycle runs long); if the holder has held it for more than
//! `STUCK_AFTER`, it is probably stuck, and the run fails (exit 1) naming
//! it, so that a hung collect does not turn every later cycle into a
//! silent skip.

use std::{
    fs::{File, OpenOptions, Permissions},
    io::{self, Read},
    os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt},
    path::Path,
    time::{Duration, Instant, SystemTime},
};

/// A holder older than this is reported as stuck.
pub const STUCK_AFTER: Duration = Duration::from_secs(60);

/// Takes the lock, waiting up to `wait`; `Ok(None)` if another run still
/// holds it (and has not held it for long); an error if the holder looks stuck.
pub fn acquire(path: &Path, wait: Duration) -> io::Result<Option<File>> {
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                return io::Error::new(
                    e.kind(),
                    format!(
                        "lock {} is a symlink (never followed); remove it: collect makes a plain file there",
                        path.display()
                    ),
                );
            }
            io::Error::new(
                e.kind(),
                format!("cannot open lock {}: {e}", path.display()),
            )
        })?;
    let deadline = Instant::now() + wait;
    loop {
        let taken = longconn_common::flock::try_exclusive(&f).map_err(|err| {
            io::Error::new(err.kind(), format!("cannot lock {}: {err}", path.display()))
        })?;
        if taken {
            // Exact mode whatever the umask; the pid and mtime say who holds it since when.
            let mark = f
                .set_permissions(Permissions::from_mode(0o600))
                .and_then(|()| f.set_len(0))
                .and_then(|()| f.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0));
            mark.map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot write lock {}: {e}", path.display()),
                )
            })?;
            return Ok(Some(f));
        }
        if Instant::now() >= deadline {
            let held = f
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .unwrap_or_default();
            if held > STUCK_AFTER {
                let mut pid = String::new();
                let _ = f.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "another collect (pid {}) has held {} for {}s; it looks stuck (e.g. reading a FIFO): check it and kill it",
                        if pid.is_empty() { "?" } else { pid },
                        path.display(),
                        held.as_secs()
                    ),
                ));
            }
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_skips_and_a_stuck_holder_fails() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("collect.lock");
        let held = acquire(&p, Duration::ZERO).unwrap().unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            format!("{}\n", std::process::id())
        );
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(acquire(&p, Duration::from_millis(100)).unwrap().is_none());
        let old = SystemTime::now() - Duration::from_secs(120);
        held.set_modified(old).unwrap();
        let e = acquire(&p, Duration::ZERO).unwrap_err().to_string();
        assert!(
            e.contains("looks stuck") && e.contains(&std::process::id().to_string()),
            "{e}"
        );
        drop(held);
        assert!(acquire(&p, Duration::ZERO).unwrap().is_some());
    }

    /// Issue 22 item 8: a symlink at the lock's path is named as one.
    #[test]
    fn a_symlinked_lock_is_reported_as_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("collect.lock");
        std::os::unix::fs::symlink(d.path().join("elsewhere"), &p).unwrap();
        let e = acquire(&p, Duration::ZERO).unwrap_err().to_string();
        assert!(
            e.contains("is a symlink") && e.contains("collect.lock"),
            "{e}"
        );
        assert!(!d.path().join("elsewhere").exists());
    }
}
