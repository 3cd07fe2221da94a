//! An append-only log file with size-based rotation whose appends happen
//! exactly once even when the process is SIGKILLed and the append is retried.
//!
//! Invariant: after `append(committed_len, body)` returns, the records of
//! `body` are durably in the log or in its newest rotated file exactly once,
//! and the log's bytes past `committed_len` are exactly `body` (plus the header
//! for a new file). A retry with the same arguments after a kill anywhere
//! inside `append` gives the same files as one completed call: a tail past
//! `committed_len` is cut off and rewritten, a completed rotation is detected
//! from the rotated file's tail, and an interrupted rotation resumes at its
//! first gap instead of shifting (and so dropping) a rotated file twice.
//!
//! One writer at a time: callers serialize `collect` runs (systemd does).

use std::{
    ffi::OsString,
    fs::{self, File, OpenOptions, Permissions},
    io,
    os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use super::atomic::{fsync_dir, parent_dir, with_path};

#[derive(Clone, Debug)]
pub struct AppendLog {
    /// The live file, e.g. `out/access.csv`.
    pub path: PathBuf,
    /// Rotate once the file reaches this size.
    pub max_bytes: u64,
    /// Rotated files kept: `path.1` (newest) .. `path.<keep>`; older ones are deleted.
    pub keep: usize,
    /// Written at the start of every new file (may be empty).
    pub header: Vec<u8>,
    /// Mode of new files, e.g. 0o640 (not masked by umask).
    pub mode: u32,
}

/// O_NOFOLLOW: a symlink at the path fails with ELOOP instead of being written
/// through. O_NONBLOCK: a FIFO planted there fails instead of hanging; it has
/// no effect on regular files.
const OPEN_FLAGS: libc::c_int = libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;

impl AppendLog {
    /// `path.<n>`.
    pub fn rotated(&self, n: usize) -> PathBuf {
        let mut p = OsString::from(self.path.as_os_str());
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    /// Appends `body` (whole records, each ending in '\n') exactly once.
    ///
    /// `committed_len` is the file length the caller durably recorded after
    /// its previous successful append (0 for a new or rotated file); the
    /// caller records it with `body` before calling, and records the returned
    /// length after. Returns 0 when the file was rotated away.
    pub fn append(&self, committed_len: u64, body: &[u8]) -> io::Result<u64> {
        let file = match self.open_existing()? {
            Some(file) => file,
            None if self.already_rotated(committed_len, body)? => {
                // A previous call appended and rotated; make sure its renames are durable.
                fsync_dir(parent_dir(&self.path))?;
                return Ok(0);
            }
            None => self.create()?,
        };
        let new_len = self.write_tail(&file, committed_len, body)?;
        drop(file);
        if new_len < self.max_bytes {
            return Ok(new_len);
        }
        self.rotate()?;
        Ok(0)
    }

    /// Opens the live file for writing, or None if it does not exist.
    fn open_existing(&self) -> io::Result<Option<File>> {
        let opened = OpenOptions::new()
            .write(true)
            .custom_flags(OPEN_FLAGS)
            .open(&self.path);
        match opened {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(with_path(&self.path)(e)),
        }
    }

    /// Creates the live file with exactly `mode`, durably.
    fn create(&self) -> io::Result<File> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(OPEN_FLAGS)
            .mode(self.mode)
            .open(&self.path)
            .and_then(|f| {
                super::apply_group(&f)?;
                f.set_permissions(Permissions::from_mode(self.mode))
                    .map(|()| f)
            })
            .map_err(with_path(&self.path))?;
        fsync_dir(parent_dir(&self.path))?;
        Ok(file)
    }

    /// Cuts the file to `committed_len`, writes the header if it is then
    /// empty, then `body`, fsyncs, and returns the resulting length.
    fn write_tail(&self, file: &File, committed_len: u64, body: &[u8]) -> io::Result<u64> {
        let ctx = with_path(&self.path);
        let meta = file.metadata().map_err(with_path(&self.path))?;
        if !meta.file_type().is_file() {
            return Err(ctx(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        let mut len = meta.len();
        if len > committed_len {
            // The tail of a run killed before its caller recorded the new length.
            file.set_len(committed_len).map_err(with_path(&self.path))?;
            len = committed_len;
        }
        // len < committed_len: replaced by someone else; continue from its end.
        let write = |bytes: &[u8], at: u64| {
            file.write_all_at(bytes, at)
                .map(|()| at + bytes.len() as u64)
        };
        let result = if len == 0 {
            write(&self.header, 0)
        } else {
            Ok(len)
        };
        result
            .and_then(|at| write(body, at))
            .and_then(|at| file.sync_all().map(|()| at))
            .map_err(ctx)
    }

    /// Whether a previous call with these arguments completed its append and
    /// rotated the file away: the newest rotated file then ends with `body`
    /// (and is exactly header + body when it started empty). With `keep == 0`
    /// there is nothing to inspect and the caller's record is trusted.
    fn already_rotated(&self, committed_len: u64, body: &[u8]) -> io::Result<bool> {
        if self.keep == 0 {
            return Ok(committed_len > 0);
        }
        let newest = self.rotated(1);
        let file = match File::options()
            .read(true)
            .custom_flags(OPEN_FLAGS)
            .open(&newest)
        {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(with_path(&newest)(e)),
        };
        let ctx = with_path(&newest);
        let len = file.metadata().map_err(with_path(&newest))?.len();
        let body_len = body.len() as u64;
        // Not checked against committed_len + body: the live file may have
        // been replaced by a shorter one before that append.
        let fresh_len = self.header.len() as u64 + body_len;
        if len < body_len || (committed_len == 0 && len != fresh_len) {
            return Ok(false);
        }
        let mut tail = vec![0; body.len()];
        file.read_exact_at(&mut tail, len - body_len).map_err(ctx)?;
        if tail != body {
            return Ok(false);
        }
        if committed_len > 0 {
            return Ok(true);
        }
        let mut head = vec![0; self.header.len()];
        file.read_exact_at(&mut head, 0)
            .map_err(with_path(&newest))?;
        Ok(head == self.header)
    }

    /// Moves the live file to `path.1`, shifting older rotated files up and
    /// dropping the one past `keep`. Shifting stops at the first free slot, so
    /// a rotation interrupted between renames resumes without shifting twice.
    fn rotate(&self) -> io::Result<()> {
        if self.keep == 0 {
            remove_if_exists(&self.path)?;
        } else {
            let gap = (1..=self.keep)
                .find(|&i| !exists(&self.rotated(i)))
                .unwrap_or(self.keep);
            for i in (1..gap).rev() {
                let (from, to) = (self.rotated(i), self.rotated(i + 1));
                rename_if_exists(&from, &to)?;
            }
            let newest = self.rotated(1);
            fs::rename(&self.path, &newest).map_err(with_path(&self.path))?;
        }
        remove_if_exists(&self.rotated(self.keep + 1))?;
        fsync_dir(parent_dir(&self.path))
    }
}

/// Whether anything (even a dangling symlink) is at `path`.
fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

fn rename_if_exists(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(with_path(from)(e)),
        _ => Ok(()),
    }
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(with_path(path)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::symlink;

    const HEADER: &[u8] = b"h\n";

    fn log(dir: &Path, max_bytes: u64, keep: usize) -> AppendLog {
        AppendLog {
            path: dir.join("access.csv"),
            max_bytes,
            keep,
            header: HEADER.to_vec(),
            mode: 0o640,
        }
    }

    /// Directory listing with contents: "name=content" sorted by name.
    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let content = fs::read(e.path()).unwrap();
                format!(
                    "{}={}",
                    e.file_name().to_str().unwrap(),
                    String::from_utf8(content).unwrap()
                )
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn appends_grow_the_file_with_one_header() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path(), 1000, 2);
        // (body, expected returned length)
        let cases: &[(&str, u64)] = &[("a\n", 4), ("bb\ncc\n", 10), ("", 10), ("d\n", 12)];
        let mut committed = 0;
        for &(body, want) in cases {
            committed = log.append(committed, body.as_bytes()).unwrap();
            assert_eq!(committed, want, "{body:?}");
        }
        assert_eq!(listing(dir.path()), ["access.csv=h\na\nbb\ncc\nd\n"]);
        let mode = fs::metadata(&log.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }

    #[test]
    fn empty_header_writes_nothing_extra() {
        let dir = tempfile::tempdir().unwrap();
        let log = AppendLog {
            header: Vec::new(),
            ..log(dir.path(), 1000, 1)
        };
        assert_eq!(log.append(0, b"x\n").unwrap(), 2);
        assert_eq!(listing(dir.path()), ["access.csv=x\n"]);
    }

    #[test]
    fn rotation_at_max_bytes_then_new_file_with_header() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path(), 8, 3);
        // (body, returned length, listing after)
        let cases: &[(&str, u64, &[&str])] = &[
            ("a\n", 4, &["access.csv=h\na\n"]),
            ("b\nc\n", 0, &["access.csv.1=h\na\nb\nc\n"]),
            (
                "d\n",
                4,
                &["access.csv.1=h\na\nb\nc\n", "access.csv=h\nd\n"],
            ),
            (
                "eeeeeeee\n",
                0,
                &["access.csv.1=h\nd\neeeeeeee\n", "access.csv.2=h\na\nb\nc\n"],
            ),
            // One body larger than max_bytes on a fresh file rotates at once.
            (
                "ffffffff\n",
                0,
                &[
                    "access.csv.1=h\nffffffff\n",
                    "access.csv.2=h\nd\neeeeeeee\n",
                    "access.csv.3=h\na\nb\nc\n",
                ],
            ),
        ];
        let mut committed = 0;
        for &(body, want, files) in cases {
            committed = log.append(committed, body.as_bytes()).unwrap();
            assert_eq!(committed, want, "{body:?}");
            assert_eq!(listing(dir.path()), files, "{body:?}");
        }
    }

    #[test]
    fn keep_two_keeps_exactly_two_with_every_record_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path(), 20, 2);
        let mut committed = 0;
        let mut rotations = 0;
        for i in 0..100 {
            committed = log
                .append(committed, format!("{i:03}\n").as_bytes())
                .unwrap();
            rotations += usize::from(committed == 0);
        }
        assert_eq!(rotations, 20);
        let mut names: Vec<String> = listing(dir.path())
            .iter()
            .map(|l| l[..l.find('=').unwrap()].to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["access.csv.1", "access.csv.2"]);
        // Each file is "h\n" + 5 records of 4 bytes = 22 >= 20; the kept ones are the last 10.
        let records: Vec<String> = [log.rotated(2), log.rotated(1)]
            .iter()
            .flat_map(|p| {
                let text = fs::read_to_string(p).unwrap();
                assert!(text.starts_with("h\n"), "{text:?}");
                text.lines().skip(1).map(str::to_string).collect::<Vec<_>>()
            })
            .collect();
        let want: Vec<String> = (90..100).map(|i| format!("{i:03}")).collect();
        assert_eq!(records, want);
    }

    #[test]
    fn keep_zero_deletes_on_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path(), 6, 0);
        assert_eq!(log.append(0, b"a\n").unwrap(), 4);
        assert_eq!(log.append(4, b"b\n").unwrap(), 0);
        assert!(listing(dir.path()).is_empty());
        // Retry after a kill following the deletion: nothing recreated.
        assert_eq!(log.append(4, b"b\n").unwrap(), 0);
        assert!(listing(dir.path()).is_empty());
    }

    #[test]
    fn retry_after_partial_write_gives_one_clean_append() {
        // (garbage left by the killed run past the committed length)
        let garbage: &[&[u8]] = &[b"", b"partial rec", b"c\nd\n", b"c\nd\nc\nd\n"];
        for tail in garbage {
            let dir = tempfile::tempdir().unwrap();
            let log = log(dir.path(), 1000, 1);
            let committed = log.append(0, b"a\nb\n").unwrap();
            assert_eq!(committed, 6);
            fs::OpenOptions::new()
                .append(true)
                .open(&log.path)
                .unwrap()
                .write_all(tail)
                .unwrap();

            assert_eq!(log.append(committed, b"c\nd\n").unwrap(), 10);
            assert_eq!(
                listing(dir.path()),
                ["access.csv=h\na\nb\nc\nd\n"],
                "{tail:?}"
            );
        }
    }

    #[test]
    fn retry_of_first_append_rewrites_header_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path(), 1000, 1);
        fs::write(&log.path, b"h\nhalf").unwrap();
        assert_eq!(log.append(0, b"a\n").unwrap(), 4);
        assert_eq!(listing(dir.path()), ["access.csv=h\na\n"]);
    }

    #[test]
    fn retry_after_rotation_duplicates_nothing() {
        // (records already in the live file, body that makes it rotate)
        let cases: &[(&str, &str)] = &[("a\n", "b\nc\n"), ("", "bbbbbbbbbb\n")];
        for &(before, body) in cases {
            let dir = tempfile::tempdir().unwrap();
            let log = log(dir.path(), 8, 2);
            fs::write(log.rotated(1), b"h\nold\n").unwrap();
            let committed = if before.is_empty() {
                0
            } else {
                log.append(0, before.as_bytes()).unwrap()
            };
            assert_eq!(log.append(committed, body.as_bytes()).unwrap(), 0);
            let once = listing(dir.path());
            assert_eq!(
                once,
                [
                    format!("access.csv.1=h\n{before}{body}"),
                    "access.csv.2=h\nold\n".to_string()
                ]
            );

            // Killed before the caller recorded 0: retried with the old arguments.
            assert_eq!(log.append(committed, body.as_bytes()).unwrap(), 0);
            assert_eq!(listing(dir.path()), once, "{before:?} {body:?}");
        }
    }

    #[test]
    fn retry_after_rotation_interrupted_between_renames() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path(), 8, 3);
        fs::write(log.rotated(1), b"B").unwrap();
        fs::write(log.rotated(2), b"C").unwrap();
        fs::write(log.rotated(3), b"D").unwrap();
        let committed = log.append(0, b"a\n").unwrap();
        // The killed run renamed .2 -> .3 (dropping D) and stopped.
        fs::rename(log.rotated(2), log.rotated(3)).unwrap();
        fs::OpenOptions::new()
            .append(true)
            .open(&log.path)
            .unwrap()
            .write_all(b"b\nc\n")
            .unwrap();

        assert_eq!(log.append(committed, b"b\nc\n").unwrap(), 0);
        assert_eq!(
            listing(dir.path()),
            [
                "access.csv.1=h\na\nb\nc\n",
                "access.csv.2=B",
                "access.csv.3=C"
            ]
        );
    }

    #[test]
    fn missing_file_with_committed_len_that_was_not_rotated_is_recreated() {
        // Someone deleted the live file; .1 is an older rotation, not ours.
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path(), 1000, 1);
        fs::write(log.rotated(1), b"h\nold\n").unwrap();
        assert_eq!(log.append(40, b"new\n").unwrap(), 6);
        assert_eq!(
            listing(dir.path()),
            ["access.csv.1=h\nold\n", "access.csv=h\nnew\n"]
        );
    }

    #[test]
    fn symlink_at_path_fails_naming_it_and_leaves_target() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path(), 1000, 1);
        let target = dir.path().join("victim");
        fs::write(&target, b"keep me").unwrap();
        symlink(&target, &log.path).unwrap();
        for committed in [0, 7] {
            let err = log.append(committed, b"a\n").unwrap_err();
            assert_eq!(err.raw_os_error(), None);
            assert_eq!(
                err.to_string(),
                format!(
                    "{}: Too many levels of symbolic links (os error 40)",
                    log.path.display()
                )
            );
            assert_eq!(fs::read(&target).unwrap(), b"keep me");
        }
    }
}
