//! An append-only log file with size-based rotation, written in two steps so
//! that a record is in the files exactly once even when the process is
//! SIGKILLed at any instant, and so that no byte another cycle committed is
//! ever removed, whatever happened to the caller's state.
//!
//! Protocol (the caller keeps a `Committed` per file in its durable state):
//! 1. `tail(known)` … `finish()` appends records and fsyncs; it returns the
//!    new position (file identity and length) — not yet committed;
//! 2. the caller durably records that position (its commit point), then
//!    calls `publish` (a file created in step 1 is written under a hidden
//!    name, `.<name>.new`, and renamed into place only now);
//! 3. `rotate_if_full(pos)` rotates a file that reached `max_bytes`.
//!
//! Cutting rule: a tail is cut only when the log dir's owner file marks it
//! as the uncommitted tail of this state dir (`logowner`: `pending` from
//! exactly the committed length the state knows, same device and inode):
//! the tail of a run killed before its commit. A state older than the log
//! (a restored backup, a copied state) finds the bytes after its length
//! marked `committed` and cuts nothing. A state that does not know the file
//! (reset after a kill) cuts only a tail marked `pending` by its own state
//! dir, back to where that run started. Any other file (another log dir, a
//! replaced file, no owner mark) is never cut: records go after its end,
//! after a newline if it ends mid-line. A
//! file created by a killed run is still hidden under its `.new` name, so
//! it is known to hold nothing committed and is simply replaced; one
//! committed but not yet published is published by `recover` at the next
//! start. Rotation moves only committed bytes, and an interrupted rotation
//! resumes at its first gap instead of shifting (and so dropping) a rotated
//! file twice.
//!
//! A file at the path with more than one hard link is never written
//! through: it is moved aside (`<name>.linked-<time>`) with one line on
//! stderr and a new file is started. An existing file's mode is reset to
//! `mode`.
//!
//! One writer at a time: callers serialize `collect` runs (a lock file).

use std::{
    ffi::OsString,
    fs::{self, File, OpenOptions, Permissions},
    io,
    os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use super::logowner::LogOwner;

use super::atomic::{fsync_dir, parent_dir, with_path};

/// What a state knows of one log file: the file its committed length
/// belongs to (device and inode) and that length.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Committed {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
}

impl Committed {
    fn of(m: &fs::Metadata, len: u64) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
            len,
        }
    }
    fn is(&self, m: &fs::Metadata) -> bool {
        self.dev == m.dev() && self.ino == m.ino()
    }
}

/// Step 1's result for one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    /// The position to commit.
    pub pos: Committed,
    /// The file was created under its hidden name: `publish` after the commit.
    pub created: bool,
}

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
    /// Mode of the files, e.g. 0o640 (not masked by umask; existing files are reset to it).
    pub mode: u32,
    /// The log dir's owner record, whose marks say which tail is uncommitted
    /// (None: nothing is ever cut).
    pub owner: Option<Arc<LogOwner>>,
}

/// O_NOFOLLOW: a symlink at the path fails with ELOOP instead of being written
/// through. O_NONBLOCK: a FIFO planted there fails instead of hanging; it has
/// no effect on regular files.
const OPEN_FLAGS: libc::c_int = libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;

/// `.<name>.new` beside `path`: a file created by a cycle, until its commit.
pub fn hidden_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(".new");
    parent_dir(path).join(name)
}

/// At a run's start, for each file the state knows: a file committed but
/// not yet published (the previous run was killed between its commit and
/// the rename) is renamed into place. Returns whether it published one.
pub fn recover(path: &Path, known: &Committed) -> io::Result<bool> {
    if fs::symlink_metadata(path).is_ok() {
        return Ok(false);
    }
    let hidden = hidden_path(path);
    match fs::symlink_metadata(&hidden) {
        Ok(m) if m.file_type().is_file() && known.is(&m) && m.len() == known.len => {
            fs::rename(&hidden, path).map_err(with_path(&hidden))?;
            fsync_dir(parent_dir(path))?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

impl AppendLog {
    /// `path.<n>`.
    pub fn rotated(&self, n: usize) -> PathBuf {
        let mut p = OsString::from(self.path.as_os_str());
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    /// The file's name in its log dir (the key of its owner mark).
    fn name(&self) -> String {
        self.path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    }

    /// Before the cycle writes: marks the live file pending from where this
    /// cycle's appends will start (the same decision `start` makes), not
    /// yet durable: the caller syncs the owner record once for every file.
    /// A file that is not there, not a plain single-link file, or that
    /// changes before `start` simply gets its own mark there.
    pub fn premark(&self, known: Option<Committed>) -> io::Result<()> {
        let Some(o) = &self.owner else {
            return Ok(());
        };
        let m = match fs::symlink_metadata(&self.path) {
            Ok(m) if m.file_type().is_file() && m.nlink() == 1 => m,
            _ => return Ok(()),
        };
        let name = self.name();
        let known_len = known.filter(|k| k.is(&m)).map(|k| k.len);
        let from = o
            .cut_point(&name, m.dev(), m.ino(), m.len(), known_len)
            .unwrap_or(m.len());
        o.premark(&name, m.dev(), m.ino(), from)
            .map_err(with_path(&self.path))
    }

    /// After the caller's commit of `pos`: marks it committed in the log
    /// dir's owner file.
    pub fn mark_committed(&self, pos: &Committed) -> io::Result<()> {
        match &self.owner {
            Some(o) => o.committed(&self.name(), pos.dev, pos.ino, pos.len),
            None => Ok(()),
        }
    }

    /// Step 1 in one call: appends `body` (whole records, each ending in
    /// '\n') and returns the new, uncommitted position.
    #[cfg(test)]
    pub fn write_uncommitted(
        &self,
        known: Option<Committed>,
        body: &[u8],
    ) -> io::Result<Option<Written>> {
        let mut tail = self.tail(known);
        tail.buf().extend_from_slice(body);
        tail.finish()
    }

    /// Step 1, streamed: records are appended to `Tail::buf` and written out
    /// in large blocks; `Tail::finish` makes them durable and returns the new
    /// position. Nothing is touched until the first byte is written.
    pub fn tail(&self, known: Option<Committed>) -> Tail<'_> {
        Tail {
            log: self,
            known,
            file: None,
            created: false,
            at: 0,
            buf: Vec::new(),
        }
    }

    /// Step 2, after the commit: renames a file created in step 1 into place.
    pub fn publish(&self) -> io::Result<()> {
        let hidden = hidden_path(&self.path);
        fs::rename(&hidden, &self.path).map_err(with_path(&hidden))?;
        fsync_dir(parent_dir(&self.path))
    }

    /// Step 3: rotates the live file if it is the committed one and reached
    /// `max_bytes`; returns what the state knows afterwards (nothing once
    /// rotated, or when a previous run rotated it).
    pub fn rotate_if_full(&self, pos: Committed) -> io::Result<Option<Committed>> {
        if pos.len < self.max_bytes {
            return Ok(Some(pos));
        }
        match fs::symlink_metadata(&self.path) {
            // Rotated by a run killed before recording it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(with_path(&self.path)(e)),
            // Only the file holding what was committed is rotated.
            Ok(m) if pos.is(&m) && m.len() >= self.max_bytes => self.rotate().map(|()| None),
            Ok(_) => Ok(Some(pos)),
        }
    }

    /// Opens the live file for writing, or None if it does not exist.
    fn open_existing(&self) -> io::Result<Option<File>> {
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(OPEN_FLAGS)
            .open(&self.path);
        match opened {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(with_path(&self.path)(e)),
        }
    }

    /// Creates the hidden new file with exactly `mode` (a stale one, left by
    /// a run killed before its commit, holds nothing committed).
    fn create_hidden(&self) -> io::Result<File> {
        let hidden = hidden_path(&self.path);
        match fs::remove_file(&hidden) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(with_path(&hidden)(e)),
            _ => {}
        }
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .custom_flags(OPEN_FLAGS)
            .mode(self.mode)
            .open(&hidden)
            .and_then(|f| {
                super::apply_group(&f)?;
                f.set_permissions(Permissions::from_mode(self.mode))
                    .map(|()| f)
            })
            .map_err(with_path(&hidden))
    }

    /// Whether a non-empty file of a format with a header (CSV) starts
    /// with another one.
    fn other_header(&self, file: &File, len: u64) -> io::Result<bool> {
        if self.header.is_empty() || len == 0 {
            return Ok(false);
        }
        let mut start = vec![0u8; self.header.len()];
        let mut n = 0;
        while n < start.len() {
            match file.read_at(&mut start[n..], n as u64)? {
                0 => break,
                k => n += k,
            }
        }
        Ok(start[..n] != self.header[..])
    }

    /// Moves the live file aside as `<name>.<tag>-<time>`, so that it is
    /// never written through (nor cut); says so in one line (`why` with
    /// `{}` for the new name).
    fn set_aside(&self, tag: &str, why: &str) -> io::Result<()> {
        let mut aside = OsString::from(self.path.as_os_str());
        aside.push(format!(
            ".{tag}-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
        ));
        let aside = PathBuf::from(aside);
        fs::rename(&self.path, &aside).map_err(with_path(&self.path))?;
        fsync_dir(parent_dir(&self.path))?;
        eprintln!(
            "longconn-reader: {} {} and started a new file",
            self.path.display(),
            why.replace("{}", &aside.display().to_string())
        );
        Ok(())
    }

    /// Opens the live file (or creates the hidden new one), cuts a tail the
    /// state positively knows is uncommitted, ends a partial line, writes
    /// the header if the file is empty; returns it, whether it was created
    /// and where the body starts.
    fn start(&self, known: Option<Committed>) -> io::Result<(File, bool, u64)> {
        let ctx = || with_path(&self.path);
        let mut existing = self.open_existing()?;
        if let Some(file) = &existing {
            let meta = file.metadata().map_err(ctx())?;
            if !meta.file_type().is_file() {
                return Err(ctx()(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not a regular file",
                )));
            }
            if meta.nlink() > 1 {
                existing = None;
                self.set_aside(
                    "linked",
                    &format!(
                        "had {} hard links; moved it aside as {{}} (never written through)",
                        meta.nlink()
                    ),
                )?;
            } else if self.other_header(file, meta.len()).map_err(ctx())? {
                // Rows of these columns under another header would be
                // misread by every CSV reader (a reader upgrade that added
                // fields).
                existing = None;
                self.set_aside(
                    "columns",
                    "has another header (written with other columns); moved it aside as {}",
                )?;
            }
        }
        let (file, created) = match existing {
            Some(file) => (file, false),
            None => (self.create_hidden()?, true),
        };
        let meta = file.metadata().map_err(ctx())?;
        if !created {
            crate::fsperm::check_own_file(&self.path, &meta)
                .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e.to_string()))?;
        }
        if !created && meta.mode() & 0o7777 != self.mode {
            if let Err(e) = file.set_permissions(Permissions::from_mode(self.mode)) {
                eprintln!(
                    "longconn-reader: {}: cannot reset mode {:o} to {:o}: {e}",
                    self.path.display(),
                    meta.mode() & 0o7777,
                    self.mode
                );
            }
        }
        let mut len = meta.len();
        let name = self.name();
        let owner = self.owner.as_deref();
        let known_len = known.filter(|k| k.is(&meta)).map(|k| k.len);
        // This cycle's premark of this very file already decided (and
        // durably marked) where its appends start.
        let premarked = owner
            .filter(|_| !created)
            .and_then(|o| o.take_premarked(&name, meta.dev(), meta.ino()))
            .filter(|&from| from <= len);
        let cut_to = match (owner, premarked) {
            (Some(_), Some(from)) => (from < len).then_some(from),
            (Some(o), None) if !created => {
                o.cut_point(&name, meta.dev(), meta.ino(), len, known_len)
            }
            // No owner record: nothing is ever cut.
            _ => None,
        };
        if let Some(to) = cut_to {
            file.set_len(to).map_err(ctx())?;
            len = to;
        }
        if let (Some(o), None) = (owner, premarked) {
            o.pending(&name, meta.dev(), meta.ino(), len)
                .map_err(ctx())?;
        }
        if len == 0 {
            file.write_all_at(&self.header, 0).map_err(ctx())?;
            len = self.header.len() as u64;
        } else {
            let mut last = [0u8; 1];
            file.read_exact_at(&mut last, len - 1).map_err(ctx())?;
            if last[0] != b'\n' {
                file.write_all_at(b"\n", len).map_err(ctx())?;
                len += 1;
            }
        }
        Ok((file, created, len))
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
    known: Option<Committed>,
    file: Option<File>,
    created: bool,
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
            let (file, created, at) = self.log.start(self.known)?;
            self.file = Some(file);
            self.created = created;
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

    /// Writes what is left and fsyncs (the directory too for a new file);
    /// returns the new (uncommitted) position, or None when nothing was
    /// written.
    pub fn finish(mut self) -> io::Result<Option<Written>> {
        self.write_out()?;
        let Some(file) = &self.file else {
            return Ok(None);
        };
        let ctx = || with_path(&self.log.path);
        file.sync_all().map_err(ctx())?;
        if self.created {
            fsync_dir(parent_dir(&self.log.path))?;
        }
        let meta = file.metadata().map_err(ctx())?;
        Ok(Some(Written {
            pos: Committed::of(&meta, self.at),
            created: self.created,
        }))
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
            owner: Some(Arc::new({
                let o = LogOwner::claim(dir, "/state", false, std::time::Duration::ZERO)
                    .unwrap()
                    .0;
                o.set_pins(1);
                o
            })),
        }
    }

    /// Step 1 and the publish of step 2 (the caller's commit in between).
    fn write(l: &AppendLog, known: Option<Committed>, body: &[u8]) -> Option<Committed> {
        match l.write_uncommitted(known, body).unwrap() {
            Some(w) => {
                l.mark_committed(&w.pos).unwrap();
                if w.created {
                    l.publish().unwrap();
                }
                Some(w.pos)
            }
            None => known,
        }
    }

    /// One complete cycle: write, commit, publish, rotate.
    fn cycle(l: &AppendLog, known: Option<Committed>, body: &[u8]) -> Option<Committed> {
        match write(l, known, body) {
            Some(pos) => l.rotate_if_full(pos).unwrap(),
            None => None,
        }
    }

    fn len(k: Option<Committed>) -> u64 {
        k.map_or(0, |k| k.len)
    }

    fn records(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
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
        let n = cycle(&l, None, b"a\n");
        assert_eq!(len(n), 4);
        let n = cycle(&l, n, b"bb\n");
        assert_eq!(len(n), 7);
        assert_eq!(fs::read(&l.path).unwrap(), b"h\na\nbb\n");
        assert_eq!(
            fs::metadata(&l.path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(cycle(&l, n, b""), n, "an empty body writes nothing");
    }

    /// Issue 17: a CSV file written with other columns (an older reader's
    /// header) is moved aside whole; rows of the new columns go to a new
    /// file under the new header.
    #[test]
    fn a_file_with_another_header_is_moved_aside() {
        let d = tempfile::tempdir().unwrap();
        let l = log(d.path(), 1 << 20, 3);
        fs::write(&l.path, b"old,columns\n1,2\n").unwrap();
        let n = cycle(&l, None, b"a\n");
        assert_eq!(fs::read(&l.path).unwrap(), b"h\na\n");
        assert_eq!(len(n), 4);
        let aside: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("access.csv.columns-"))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert_eq!(
            fs::read(d.path().join(&aside[0])).unwrap(),
            b"old,columns\n1,2\n",
            "kept whole"
        );
        // The same header is kept and appended to.
        let n = cycle(&l, n, b"b\n");
        assert_eq!(fs::read(&l.path).unwrap(), b"h\na\nb\n");
        assert_eq!(len(n), 6);
    }

    #[test]
    fn rotation_keeps_exactly_keep_files_and_every_kept_record_once() {
        let d = tempfile::tempdir().unwrap();
        let l = log(d.path(), 20, 2);
        let mut n = None;
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
        let n = cycle(&l, None, b"a\n");
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
        assert_eq!(len(m), 6);
    }

    /// The state knows nothing (reset), or knows another file (replaced,
    /// another log dir): nothing is cut; a partial last line is ended.
    #[test]
    fn a_file_the_state_does_not_know_is_never_cut() {
        let d = tempfile::tempdir().unwrap();
        let l = log(d.path(), 1 << 20, 3);
        let n = cycle(&l, None, b"a\nb\n");
        fs::OpenOptions::new()
            .append(true)
            .open(&l.path)
            .unwrap()
            .write_all(b"par")
            .unwrap();
        let m = cycle(&l, None, b"c\n");
        assert_eq!(fs::read(&l.path).unwrap(), b"h\na\nb\npar\nc\n");
        // A stale position of another file (same name, other inode).
        let other = Committed {
            ino: n.unwrap().ino ^ 1,
            ..n.unwrap()
        };
        cycle(&l, Some(other), b"d\n");
        assert_eq!(fs::read(&l.path).unwrap(), b"h\na\nb\npar\nc\nd\n");
        // Known but shorter than committed (cut by someone else): continue at its end.
        fs::OpenOptions::new()
            .write(true)
            .open(&l.path)
            .unwrap()
            .set_len(3)
            .unwrap();
        cycle(&l, m, b"e\n");
        assert_eq!(fs::read(&l.path).unwrap(), b"h\na\ne\n");
    }

    /// Issue 22 item C: a reset state (it knows no file) cuts the tail its
    /// own killed run left, marked pending, and nothing committed.
    #[test]
    fn a_reset_state_cuts_only_a_killed_runs_tail() {
        let d = tempfile::tempdir().unwrap();
        let l = log(d.path(), 1 << 20, 3);
        let n = cycle(&l, None, b"a\n");
        l.write_uncommitted(n, b"b\n").unwrap();
        cycle(&l, None, b"c\n");
        assert_eq!(fs::read(&l.path).unwrap(), b"h\na\nc\n");
    }

    /// A file created by a run killed before its commit is still hidden and
    /// is replaced; one committed but killed before its publish is published.
    #[test]
    fn new_files_appear_only_once_committed() {
        let d = tempfile::tempdir().unwrap();
        let l = log(d.path(), 1 << 20, 3);
        let w = l.write_uncommitted(None, b"lost\n").unwrap().unwrap();
        assert!(w.created && !l.path.exists(), "hidden until published");
        // Killed here; the next run writes again from nothing.
        let w = l.write_uncommitted(None, b"a\n").unwrap().unwrap();
        // Committed w.pos, then killed before the publish.
        assert!(!recover(&l.path, &Committed { len: 3, ..w.pos }).unwrap());
        assert!(recover(&l.path, &w.pos).unwrap());
        assert_eq!(fs::read(&l.path).unwrap(), b"h\na\n");
        assert!(!hidden_path(&l.path).exists());
        assert!(!recover(&l.path, &w.pos).unwrap(), "once");
        cycle(&l, Some(w.pos), b"b\n");
        assert_eq!(fs::read(&l.path).unwrap(), b"h\na\nb\n");
    }

    #[test]
    fn a_run_killed_after_rotating_duplicates_nothing() {
        let d = tempfile::tempdir().unwrap();
        let l = log(d.path(), 8, 3);
        let pos = write(&l, None, b"aaaa\nbbbb\n").unwrap();
        // committed pos, then killed after rotating but before recording it.
        assert_eq!(l.rotate_if_full(pos).unwrap(), None);
        let n = cycle(&l, Some(pos), b"c\n");
        assert_eq!(fs::read(l.rotated(1)).unwrap(), b"h\naaaa\nbbbb\n");
        assert_eq!(fs::read(&l.path).unwrap(), b"h\nc\n");
        assert_eq!(len(n), 4);
        // A stale committed position never rotates the new, short file.
        assert_eq!(l.rotate_if_full(pos).unwrap(), Some(pos));
        assert_eq!(fs::read(&l.path).unwrap(), b"h\nc\n");
    }

    #[test]
    fn a_rotation_killed_between_renames_resumes_without_loss() {
        let d = tempfile::tempdir().unwrap();
        let l = log(d.path(), 4, 3);
        let mut n = None;
        for i in 0..3 {
            n = cycle(&l, n, format!("r{i}\n").as_bytes());
        }
        // Simulate a kill after the first rename of the next rotation.
        let pos = write(&l, n, b"r3\n").unwrap();
        fs::rename(l.rotated(2), l.rotated(3)).unwrap();
        let n = l.rotate_if_full(pos).unwrap();
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
        cycle(&l, None, b"abcd\n");
        assert!(!l.path.exists() && !l.rotated(1).exists());
    }

    #[test]
    fn symlink_at_path_fails_naming_it_and_leaves_target() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("target");
        fs::write(&target, b"keep").unwrap();
        let l = log(d.path(), 1 << 20, 3);
        symlink(&target, &l.path).unwrap();
        let e = l.write_uncommitted(None, b"x\n").unwrap_err();
        assert!(e.to_string().contains(&l.path.display().to_string()), "{e}");
        assert_eq!(fs::read(&target).unwrap(), b"keep");
    }

    /// Issue 12 item 7: a hard-linked file is moved aside, never written
    /// through or cut; a too-open existing file gets the mode back.
    #[test]
    fn hard_links_are_set_aside_and_modes_reset() {
        let d = tempfile::tempdir().unwrap();
        let l = log(d.path(), 1 << 20, 3);
        let n = cycle(&l, None, b"a\n");
        let other = d.path().join("elsewhere");
        fs::hard_link(&l.path, &other).unwrap();
        // Even with a known position longer than... a tail "to cut".
        let short = Committed {
            len: 2,
            ..n.unwrap()
        };
        let m = cycle(&l, Some(short), b"b\n");
        assert_eq!(
            fs::read(&other).unwrap(),
            b"h\na\n",
            "linked file untouched"
        );
        assert_eq!(fs::read(&l.path).unwrap(), b"h\nb\n");
        assert_eq!(fs::metadata(&l.path).unwrap().nlink(), 1);
        let aside: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("access.csv.linked-")
            })
            .collect();
        assert_eq!(aside.len(), 1);
        fs::set_permissions(&l.path, Permissions::from_mode(0o666)).unwrap();
        cycle(&l, m, b"c\n");
        assert_eq!(
            fs::metadata(&l.path).unwrap().permissions().mode() & 0o7777,
            0o640
        );
    }
}
