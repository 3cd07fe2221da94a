//! An append-only log file with size-based rotation, written in two steps so
//! that a record is in the files exactly once even when the process is
//! SIGKILLed at any instant.
//!
//! Protocol (the caller keeps `committed_len` in its own durable state):
//! 1. `write_uncommitted(committed_len, body)` cuts any tail past
//!    `committed_len` (left by a killed run), appends `body`, fsyncs, and
//!    returns the new length — not yet committed;
//! 2. the caller durably records that length (its commit point);
//! 3. `rotate_if_full(len)` rotates a file that reached `max_bytes` and
//!    returns the length to record next (0 after rotating).
//!
//! A run killed before 2 leaves a tail that the next run cuts off; a run
//! killed after a rotation leaves no live file with a non-zero committed
//! length, which the next run reads as "rotated, start a new file". Rotation
//! moves only committed bytes, and an interrupted rotation resumes at its
//! first gap instead of shifting (and so dropping) a rotated file twice.
//!
//! One writer at a time: callers serialize `collect` runs (a lock file).

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

    /// Step 1: appends `body` (whole records, each ending in '\n') after the
    /// first `committed_len` bytes, durably, and returns the new length.
    #[cfg(test)]
    pub fn write_uncommitted(&self, committed_len: u64, body: &[u8]) -> io::Result<u64> {
        let mut tail = self.tail(committed_len);
        tail.buf().extend_from_slice(body);
        tail.finish()
    }

    /// Step 1, streamed: records are appended to `Tail::buf` and written out
    /// in large blocks; `Tail::finish` makes them durable and returns the new
    /// length. Nothing is touched until the first byte is written.
    pub fn tail(&self, committed_len: u64) -> Tail<'_> {
        Tail {
            log: self,
            committed: committed_len,
            file: None,
            at: committed_len,
            buf: Vec::new(),
        }
    }

    /// Step 3: rotates the live file if it reached `max_bytes`; returns the
    /// length to record (0 once rotated, or when a previous run rotated it).
    pub fn rotate_if_full(&self, committed_len: u64) -> io::Result<u64> {
        if committed_len < self.max_bytes {
            return Ok(committed_len);
        }
        match fs::symlink_metadata(&self.path) {
            // Rotated by a run killed before recording it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(with_path(&self.path)(e)),
            // Only a file holding what was committed is rotated.
            Ok(m) if m.len() >= self.max_bytes => self.rotate().map(|()| 0),
            Ok(m) => Ok(m.len()),
        }
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

    /// Opens (or creates) the live file, cuts it to `committed_len`, writes
    /// the header if it is then empty; returns it and where the body starts.
    fn start(&self, committed_len: u64) -> io::Result<(File, u64)> {
        let file = match self.open_existing()? {
            Some(file) => file,
            // Missing with committed bytes: rotated away after its commit.
            None => self.create()?,
        };
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
        if len == 0 {
            file.write_all_at(&self.header, 0).map_err(ctx)?;
            len = self.header.len() as u64;
        }
        Ok((file, len))
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

/// Buffered bytes are written out once they reach this size.
const TAIL_BLOCK: usize = 1 << 20;

/// Step 1 in progress (see `AppendLog::tail`).
pub struct Tail<'a> {
    log: &'a AppendLog,
    committed: u64,
    file: Option<File>,
    at: u64,
    buf: Vec<u8>,
}

impl Tail<'_> {
    /// The buffer to append whole records to; call `flush_if_full` after.
    pub fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Writes the buffer out once it holds a large block.
    pub fn flush_if_full(&mut self) -> io::Result<()> {
        if self.buf.len() >= TAIL_BLOCK {
            self.write_out()?;
        }
        Ok(())
    }

    fn write_out(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.file.is_none() {
            let (file, at) = self.log.start(self.committed)?;
            self.file = Some(file);
            self.at = at;
        }
        if let Some(file) = &self.file {
            file.write_all_at(&self.buf, self.at)
                .map_err(with_path(&self.log.path))?;
            start_writeback(file, self.at, self.buf.len());
        }
        self.at += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Writes what is left and fsyncs; returns the new (uncommitted) length,
    /// or the committed one when nothing was written.
    pub fn finish(mut self) -> io::Result<u64> {
        self.write_out()?;
        match &self.file {
            Some(file) => file
                .sync_all()
                .map(|()| self.at)
                .map_err(with_path(&self.log.path)),
            None => Ok(self.committed),
        }
    }
}

/// Starts writing `len` bytes at `at` back to disk without waiting, so the
/// final fsync finds most of a large append already written while the cycle
/// went on encoding. Advisory: an error only means the fsync does it all.
fn start_writeback(file: &File, at: u64, len: usize) {
    use std::os::fd::AsRawFd;
    let (Ok(at), Ok(len)) = (libc::off64_t::try_from(at), libc::off64_t::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range only reads its integer arguments; the fd is
    // open for the lifetime of `file`.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), at, len, libc::SYNC_FILE_RANGE_WRITE);
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

    /// One complete cycle: write, commit, rotate.
    fn cycle(l: &AppendLog, committed: u64, body: &[u8]) -> u64 {
        let len = l.write_uncommitted(committed, body).unwrap();
        l.rotate_if_full(len).unwrap()
    }

    fn records(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).unwrap().flatten() {
            for line in fs::read_to_string(e.path()).unwrap().lines() {
                if line != "h" {
                    out.push(line.to_owned());
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn appends_grow_the_file_with_one_header() {
        let d = tempfile::tempdir().unwrap();
        let l = log(d.path(), 1 << 20, 3);
        let n = cycle(&l, 0, b"a\n");
        assert_eq!(n, 4);
        let n = cycle(&l, n, b"bb\n");
        assert_eq!(n, 7);
        assert_eq!(fs::read(&l.path).unwrap(), b"h\na\nbb\n");
        assert_eq!(
            fs::metadata(&l.path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(cycle(&l, n, b""), 7, "an empty body writes nothing");
    }

    #[test]
    fn rotation_keeps_exactly_keep_files_and_every_kept_record_once() {
        let d = tempfile::tempdir().unwrap();
        let l = log(d.path(), 20, 2);
        let mut n = 0;
        for i in 0..100 {
            n = cycle(&l, n, format!("r{i:03}\n").as_bytes());
        }
        assert!(l.rotated(1).exists() && l.rotated(2).exists() && !l.rotated(3).exists());
        let recs = records(d.path());
        let mut dedup = recs.clone();
        dedup.dedup();
        assert_eq!(recs, dedup, "no record twice");
        assert_eq!(recs.last().unwrap(), "r099", "the newest record is kept");
        let first: usize = recs[0][1..].parse().unwrap();
        assert_eq!(recs.len(), 100 - first, "no gap among kept records");
        assert!(
            fs::read(l.rotated(1)).unwrap().starts_with(HEADER),
            "every file starts with the header"
        );
    }

    #[test]
    fn a_tail_left_by_a_killed_run_is_cut_and_rewritten_once() {
        let d = tempfile::tempdir().unwrap();
        let l = log(d.path(), 1 << 20, 3);
        let n = cycle(&l, 0, b"a\n");
        // Killed after writing, before committing: the next run retries from n.
        l.write_uncommitted(n, b"b1\nb2\n").unwrap();
        fs::OpenOptions::new()
            .append(true)
            .open(&l.path)
            .unwrap()
            .write_all(b"par")
            .unwrap();
        let m = cycle(&l, n, b"c\n");
        assert_eq!(fs::read(&l.path).unwrap(), b"h\na\nc\n");
        assert_eq!(m, 6);
    }

    #[test]
    fn a_run_killed_after_rotating_duplicates_nothing() {
        let d = tempfile::tempdir().unwrap();
        let l = log(d.path(), 8, 3);
        let len = l.write_uncommitted(0, b"aaaa\nbbbb\n").unwrap();
        // committed len, then killed after rotating but before recording 0.
        assert_eq!(l.rotate_if_full(len).unwrap(), 0);
        let n = cycle(&l, len, b"c\n");
        assert_eq!(fs::read(l.rotated(1)).unwrap(), b"h\naaaa\nbbbb\n");
        assert_eq!(fs::read(&l.path).unwrap(), b"h\nc\n");
        assert_eq!(n, 4);
        // A stale committed length never rotates the new, short file.
        assert_eq!(l.rotate_if_full(len).unwrap(), 4);
        assert_eq!(fs::read(&l.path).unwrap(), b"h\nc\n");
    }

    #[test]
    fn a_rotation_killed_between_renames_resumes_without_loss() {
        let d = tempfile::tempdir().unwrap();
        let l = log(d.path(), 4, 3);
        let mut n = 0;
        for i in 0..3 {
            n = cycle(&l, n, format!("r{i}\n").as_bytes());
        }
        // Simulate a kill after the first rename of the next rotation.
        let len = l.write_uncommitted(n, b"r3\n").unwrap();
        fs::rename(l.rotated(2), l.rotated(3)).unwrap();
        let n = l.rotate_if_full(len).unwrap();
        cycle(&l, n, b"r4\n");
        assert_eq!(
            records(d.path()),
            vec!["r2", "r3", "r4"],
            "keep=3: the three newest rotated files, each record once"
        );
    }

    #[test]
    fn keep_zero_deletes_on_rotation() {
        let d = tempfile::tempdir().unwrap();
        let l = log(d.path(), 4, 0);
        cycle(&l, 0, b"abcd\n");
        assert!(!l.path.exists() && !l.rotated(1).exists());
    }

    #[test]
    fn symlink_at_path_fails_naming_it_and_leaves_target() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("target");
        fs::write(&target, b"keep").unwrap();
        let l = log(d.path(), 1 << 20, 3);
        symlink(&target, &l.path).unwrap();
        let e = l.write_uncommitted(0, b"x\n").unwrap_err();
        assert!(e.to_string().contains(&l.path.display().to_string()), "{e}");
        assert_eq!(fs::read(&target).unwrap(), b"keep");
    }
}
