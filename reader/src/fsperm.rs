//! Refusing unsafe places, like OpenSSH's StrictModes: the reader writes
//! only into directories that no other user can rearrange and only into
//! files it created itself.
//!
//! - a directory (state, log, textfile) must be owned by this user or root,
//!   and not writable by others unless it is sticky (other users could
//!   rename, replace or plant files in it);
//! - an existing output file (log, state, lock) must be owned by this user
//!   (a file someone else created there is never adopted, appended to or
//!   cut).
//!
//! Each refusal is one line saying what to fix; the check runs before
//! anything is written there.

use std::{fs, os::unix::fs::MetadataExt, path::Path};

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn user(uid: u32) -> String {
    // SAFETY: getpwuid returns NULL or a pointer to static storage that
    // stays valid until the next getpw* call; we copy the name at once.
    let pw = unsafe { libc::getpwuid(uid) };
    if pw.is_null() {
        return format!("uid {uid}");
    }
    // SAFETY: pw is non-NULL; pw_name is a NUL-terminated string.
    let name = unsafe { std::ffi::CStr::from_ptr((*pw).pw_name) };
    format!("{} (uid {uid})", name.to_string_lossy())
}

/// Refuses a directory another user could rearrange (see the module doc).
/// `what` names it, e.g. "--log-dir".
pub fn check_dir(dir: &Path, what: &str) -> anyhow::Result<()> {
    let m = fs::metadata(dir)
        .map_err(|e| anyhow::anyhow!("cannot stat {what} {}: {e}", dir.display()))?;
    let me = euid();
    if m.uid() != me && m.uid() != 0 {
        anyhow::bail!(
            "{what} {} is owned by {}, not by this reader ({}) or root: that user could replace the files in it; chown it to {}, or choose another {what}",
            dir.display(),
            user(m.uid()),
            user(me),
            user(me)
        );
    }
    let mode = m.mode();
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        anyhow::bail!(
            "{what} {} is writable by others (mode {:o}) without the sticky bit: another user could replace the files in it; chmod o-w {} (or chmod +t), or choose another {what}",
            dir.display(),
            mode & 0o7777,
            dir.display()
        );
    }
    Ok(())
}

/// Refuses an existing file at `path` that this user did not create (owned
/// by someone else); a missing file is fine.
pub fn check_file(path: &Path) -> anyhow::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) => check_own_file(path, &m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => anyhow::bail!("cannot stat {}: {e}", path.display()),
    }
}

/// Refuses `path` (with metadata `m`) if this user does not own it.
pub fn check_own_file(path: &Path, m: &fs::Metadata) -> anyhow::Result<()> {
    let me = euid();
    if m.uid() != me {
        anyhow::bail!(
            "{} is owned by {}, not by this reader ({}): it did not create it and will not write into it; remove it (or chown it to {}) if it should be longconn's",
            path.display(),
            user(m.uid()),
            user(me),
            user(me)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn open_dirs_are_refused_unless_sticky() {
        let d = tempfile::tempdir().unwrap();
        check_dir(d.path(), "--out-dir").unwrap();
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_dir(d.path(), "--out-dir").unwrap_err().to_string();
        assert!(
            e.contains("writable by others") && e.contains("chmod"),
            "{e}"
        );
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o1777)).unwrap();
        check_dir(d.path(), "--out-dir").unwrap();
        check_file(&d.path().join("missing")).unwrap();
        fs::write(d.path().join("mine"), b"").unwrap();
        check_file(&d.path().join("mine")).unwrap();
    }
}
