//! Replace a whole file so that readers (node_exporter, people) see either the
//! old content or the new one, never a torn mix, even if we are killed.
//!
//! Invariant: the new content is written and fsynced under a private temp name
//! in the same directory, then renamed over the target and the directory is
//! fsynced. The temp file is opened with O_EXCL|O_NOFOLLOW, so a symlink
//! planted at its name is never followed; a symlink at the target is replaced,
//! never written through.

use std::{
    ffi::{OsStr, OsString},
    fs::{self, File, OpenOptions, Permissions},
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

/// Distinguishes temp names of concurrent or successive calls within one process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Temp names tried before giving up when they already exist (left by a killed
/// run whose pid we now reuse).
const TEMP_ATTEMPTS: u32 = 16;

/// Adds the path to an io error, keeping its kind.
pub(crate) fn with_path(path: &Path) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// The directory holding `path` ("." for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes renames, creations and deletions inside `dir` durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .and_then(|d| d.sync_all())
        .map_err(with_path(dir))
}

/// Atomically replaces `path` with `bytes`, file mode `mode` (not masked by umask).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_with(path, mode, |w| w.write_all(bytes))
}

/// Like `write_atomic`, with the content streamed by `fill` through a
/// buffered writer (no copy of the whole content in memory).
pub fn write_atomic_with(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file path", path.display()),
        )
    })?;
    let dir = parent_dir(path);
    let (tmp, file) = create_temp(dir, name, mode, &COUNTER)?;
    let written = fill_file(&file, &tmp, mode, fill);
    drop(file);
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, path).map_err(with_path(path))) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fsync_dir(dir)
}

/// A fresh temp file beside `path` (see `create_temp`) with exactly `mode`
/// and the output group, for a caller that renames it over `path` itself.
pub(crate) fn create_temp_for(path: &Path, mode: u32) -> io::Result<(PathBuf, File)> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file path", path.display()),
        )
    })?;
    let (tmp, file) = create_temp(parent_dir(path), name, mode, &COUNTER)?;
    let set = super::apply_group(&file)
        .and_then(|()| file.set_permissions(Permissions::from_mode(mode)))
        .map_err(with_path(&tmp));
    if let Err(e) = set {
        drop(file);
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok((tmp, file))
}

/// Removes `dir/.<name>.tmp-<pid>-<n>` files left by runs that were killed
/// mid-write: every one but this process's when `any_pid` (the caller's
/// lock makes it the only writer), else those whose pid is gone. Call with
/// the collect lock held. Returns how many were removed; errors are ignored
/// (a leftover is only wasted space).
pub fn remove_stale_temps(dir: &Path, name: &str, any_pid: bool) -> usize {
    let prefix = format!(".{name}.tmp-");
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let file_name = e.file_name();
        let Some(rest) = file_name.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id()
            && (any_pid || !Path::new(&format!("/proc/{pid}")).exists())
            && fs::remove_file(e.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// `dir/.<name>.tmp-<pid>-<n>`.
fn temp_path(dir: &Path, name: &OsStr, n: u64) -> PathBuf {
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}-{n}", std::process::id()));
    dir.join(tmp_name)
}

/// Creates a fresh temp file in `dir`, never following a symlink; a name that
/// already exists is skipped.
fn create_temp(
    dir: &Path,
    name: &OsStr,
    mode: u32,
    counter: &AtomicU64,
) -> io::Result<(PathBuf, File)> {
    let mut attempt = 0;
    loop {
        let tmp = temp_path(dir, name, counter.fetch_add(1, Ordering::Relaxed));
        // create_new = O_CREAT|O_EXCL: an existing file or symlink at `tmp` fails.
        let opened = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(mode)
            .open(&tmp);
        match opened {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt + 1 < TEMP_ATTEMPTS => {
                attempt += 1;
            }
            Err(e) => return Err(with_path(&tmp)(e)),
        }
    }
}

/// Sets the exact mode, writes everything and fsyncs.
fn fill_file(
    file: &File,
    tmp: &Path,
    mode: u32,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    super::apply_group(file)
        .and_then(|()| file.set_permissions(Permissions::from_mode(mode)))
        .and_then(|()| {
            let mut w = io::BufWriter::with_capacity(1 << 18, file);
            fill(&mut w)?;
            w.flush()
        })
        .and_then(|()| file.sync_all())
        .map_err(with_path(tmp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temps_of_dead_runs_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id();
        // pid_max is at most 4194304: this pid cannot be alive.
        for name in [
            ".state.bin.tmp-99999999-3".to_owned(),
            format!(".state.bin.tmp-{me}-0"),
            ".state.bin.tmp-1-0".to_owned(),
            ".other.tmp-99999999-0".to_owned(),
            "state.bin".to_owned(),
        ] {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        assert_eq!(remove_stale_temps(dir.path(), "state.bin", false), 1);
        let mut left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut want = vec![
            format!(".state.bin.tmp-{me}-0"),
            ".state.bin.tmp-1-0".to_owned(),
            ".other.tmp-99999999-0".to_owned(),
            "state.bin".to_owned(),
        ];
        want.sort();
        assert_eq!(left, want);
        // Issue 22 item 8: under the lock, whatever the pid (pid 1 lives).
        assert_eq!(remove_stale_temps(dir.path(), "state.bin", true), 1);
        assert!(!dir.path().join(".state.bin.tmp-1-0").exists());
        assert!(dir.path().join(format!(".state.bin.tmp-{me}-0")).exists());
    }
    use std::os::unix::fs::symlink;

    fn mode_of(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_content_with_exact_mode() {
        let cases: &[(&[u8], u32)] = &[(b"first\n", 0o640), (b"", 0o600), (b"x y\nz\n", 0o664)];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.prom");
        for &(bytes, mode) in cases {
            write_atomic(&path, bytes, mode).unwrap();
            assert_eq!(fs::read(&path).unwrap(), bytes);
            assert_eq!(mode_of(&path), mode, "mode {mode:o}");
        }
        assert_eq!(names(dir.path()), ["metrics.prom"]);
    }

    #[test]
    fn symlink_at_target_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("victim");
        fs::write(&target, b"keep me").unwrap();
        let path = dir.path().join("out.prom");
        symlink(&target, &path).unwrap();

        write_atomic(&path, b"new\n", 0o640).unwrap();

        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_file());
        assert_eq!(fs::read(&path).unwrap(), b"new\n");
        assert_eq!(fs::read(&target).unwrap(), b"keep me");
        assert_eq!(names(dir.path()), ["out.prom", "victim"]);
    }

    #[test]
    fn planted_temp_names_are_skipped_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("victim");
        fs::write(&target, b"keep me").unwrap();
        let name = OsStr::new("out.prom");
        let pid = std::process::id();
        // (symlinks planted at temp numbers 0.., temp number then used or None if all taken)
        let cases: &[(u64, Option<u64>)] = &[(0, Some(0)), (2, Some(2)), (16, None)];
        for &(planted, used) in cases {
            let sub = tempfile::tempdir_in(dir.path()).unwrap();
            for n in 0..planted {
                symlink(&target, temp_path(sub.path(), name, n)).unwrap();
            }
            let got = create_temp(sub.path(), name, 0o640, &AtomicU64::new(0));
            match (got, used) {
                (Ok((tmp, mut file)), Some(n)) => {
                    let want = sub.path().join(format!(".out.prom.tmp-{pid}-{n}"));
                    assert_eq!(tmp, want);
                    file.write_all(b"new").unwrap();
                    assert!(fs::symlink_metadata(&tmp).unwrap().file_type().is_file());
                }
                (Err(e), None) => {
                    assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
                    let last = sub.path().join(format!(".out.prom.tmp-{pid}-15"));
                    assert!(
                        e.to_string().starts_with(&format!("{}: ", last.display())),
                        "{e}"
                    );
                }
                (got, _) => panic!("planted {planted}: {got:?}"),
            }
            assert_eq!(fs::read(&target).unwrap(), b"keep me");
        }
    }

    #[test]
    fn failure_leaves_no_temp_and_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        // Renaming a file over a non-empty directory fails after the temp was written.
        let path = dir.path().join("busy");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inside"), b"").unwrap();

        let err = write_atomic(&path, b"data", 0o640).unwrap_err();

        assert!(
            err.to_string()
                .starts_with(&format!("{}: ", path.display())),
            "{err}"
        );
        assert_eq!(names(dir.path()), ["busy"]);
    }

    #[test]
    fn fsync_dir_error_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let err = fsync_dir(&missing).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(
            err.to_string()
                .starts_with(&format!("{}: ", missing.display())),
            "{err}"
        );
        fsync_dir(dir.path()).unwrap();
    }

    #[test]
    fn parent_of_bare_name_is_cwd() {
        for (path, dir) in [("a", "."), ("d/a", "d"), ("/a", "/")] {
            assert_eq!(parent_dir(Path::new(path)), Path::new(dir), "{path}");
        }
    }
}
