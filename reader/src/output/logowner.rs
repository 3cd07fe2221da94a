//! One owner per log dir, and the marks that say which bytes of each log
//! file are uncommitted.
//!
//! A log dir has one owner at a time, the state dir of the collect that
//! writes it, as a pin dir has one consumer. The owner is registered in the
//! log dir itself, in `.longconn-owner`, and a collect holds an flock of
//! that file for its whole cycle: a collect with another state dir is
//! refused (naming the owner) unless it passes `--take-over`, so a second
//! reader never cuts or interleaves another's bytes.
//!
//! The same file holds one mark per log file, which is what makes cutting
//! safe whatever state is restored or copied: before a cycle appends to a
//! file it records `pending <from>` (durably: this file is fsynced), and
//! after its state commit it records `committed <len>`. A tail is cut only
//! when the mark is `pending` from exactly the length the state knows, for
//! the same file (device, inode) and the same state dir: bytes a later
//! commit made are marked `committed`, so an older state (a restored
//! backup, a copied state) never cuts them. The mark of a kill between the
//! state commit and the `committed` mark stays `pending` from the previous
//! length: the state itself then knows the longer length and cuts nothing;
//! only a state restored to exactly that previous commit inside that window
//! would cut the last cycle's bytes (the bound, documented in the README).
//!
//! The record is rewritten in place with one `pwrite` of a fixed-size,
//! padded block (a kill cannot leave half of it). A cycle marks every file
//! before it writes (`premark`) and syncs the record once: one fdatasync
//! per cycle, whatever the number of files.

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions, Permissions},
    io,
    os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

/// The owner file's name, in the log dir.
pub const OWNER_FILE: &str = ".longconn-owner";

/// The fixed size of the owner record (padded with spaces).
const BLOCK: usize = 4096;

/// What the owner file says of one log file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    pub dev: u64,
    pub ino: u64,
    /// The state dir that wrote the mark.
    pub writer: String,
    /// The pin generation (`meta.pinned_at_ns`) whose close records the
    /// marking cycle consumed: while it is the current one, records of an
    /// uncommitted tail are still in the kernel (nothing is released before
    /// the `committed` mark), so the tail may be cut and written again.
    pub pins: u64,
    pub kind: MarkKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkKind {
    /// A cycle appends past this (committed) length; not yet committed.
    Pending(u64),
    /// Committed up to this length.
    Committed(u64),
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Record {
    owner: Option<String>,
    marks: BTreeMap<String, Mark>,
}

/// Escapes `\`, newlines and spaces so one value stays one token.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            ' ' => out.push_str("\\s"),
            c => out.push(c),
        }
    }
    out
}

fn unesc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('n') => out.push('\n'),
            Some('s') => out.push(' '),
            Some(c) => out.push(c),
            None => {}
        }
    }
    out
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let mut t = String::from(
            "# longconn-reader: the one state dir writing this log dir (collect --take-over moves it)\n",
        );
        if let Some(o) = &self.owner {
            t.push_str(&format!("owner={}\n", esc(o)));
        }
        for (name, m) in &self.marks {
            let (kind, n) = match m.kind {
                MarkKind::Pending(n) => ("pending", n),
                MarkKind::Committed(n) => ("committed", n),
            };
            t.push_str(&format!(
                "mark={} {} {} {kind} {n} {} {}\n",
                esc(name),
                m.dev,
                m.ino,
                esc(&m.writer),
                m.pins
            ));
        }
        let mut b = t.into_bytes();
        if b.len() < BLOCK {
            b.resize(BLOCK - 1, b' ');
            b.push(b'\n');
        }
        b
    }

    fn decode(text: &str) -> Self {
        let mut r = Self::default();
        for line in text.lines() {
            if let Some(o) = line.strip_prefix("owner=") {
                r.owner = Some(unesc(o.trim_end()));
            } else if let Some(m) = line.strip_prefix("mark=") {
                let f: Vec<&str> = m.split(' ').collect();
                let [name, dev, ino, kind, n, writer, pins] = f[..] else {
                    continue;
                };
                let (Ok(dev), Ok(ino), Ok(n), Ok(pins)) =
                    (dev.parse(), ino.parse(), n.parse(), pins.parse())
                else {
                    continue;
                };
                let kind = match kind {
                    "pending" => MarkKind::Pending(n),
                    "committed" => MarkKind::Committed(n),
                    _ => continue,
                };
                r.marks.insert(
                    unesc(name),
                    Mark {
                        dev,
                        ino,
                        writer: unesc(writer),
                        pins,
                        kind,
                    },
                );
            }
        }
        r
    }
}

/// This collect's ownership of a log dir, held (flock) until dropped.
#[derive(Debug)]
pub struct LogOwner {
    path: PathBuf,
    me: String,
    file: File,
    record: Mutex<Record>,
    /// The pin generation this cycle consumes (0: not known yet).
    pins: AtomicU64,
    /// Files marked by `premark` this cycle and not yet written: where
    /// their appends start (device, inode, length).
    premarked: Mutex<BTreeMap<String, (u64, u64, u64)>>,
}

/// What `claim` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Claimed {
    /// Already this state dir's, or unowned until now.
    Yes,
    /// Taken over from this state dir (`--take-over`).
    TookOver(String),
}

impl LogOwner {
    /// Makes `me` (a state dir) the owner of `log_dir` and locks it for
    /// this cycle; refuses (naming the owner) a log dir another state dir
    /// owns, unless `take_over`. Waits up to `wait` for a cycle of another
    /// state dir that holds it.
    pub fn claim(
        log_dir: &Path,
        me: &str,
        take_over: bool,
        wait: Duration,
    ) -> anyhow::Result<(Self, Claimed)> {
        let path = log_dir.join(OWNER_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot open log dir owner file {}: {e}; remove it if it is not a regular file",
                    path.display()
                )
            })?;
        let meta = file
            .metadata()
            .map_err(|e| anyhow::anyhow!("cannot stat {}: {e}", path.display()))?;
        if !meta.file_type().is_file() || meta.nlink() != 1 {
            anyhow::bail!(
                "log dir owner file {} is not a plain file (hard links or special file); remove it",
                path.display()
            );
        }
        crate::fsperm::check_own_file(&path, &meta)?;
        if meta.mode() & 0o7777 != 0o640 {
            let _ = file.set_permissions(Permissions::from_mode(0o640));
        }
        let deadline = Instant::now() + wait;
        loop {
            // Released when `file` is closed.
            match longconn_common::flock::try_exclusive(&file) {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => anyhow::bail!("cannot lock {}: {e}", path.display()),
            }
            if Instant::now() >= deadline {
                let owner = read_record(&file).owner.unwrap_or_else(|| "?".into());
                anyhow::bail!(
                    "log dir {} is being written by the collect with state dir {owner} (it holds {} for its cycle); a log dir has one owner: give this collect its own --log-dir, or retry --take-over once that cycle is over",
                    log_dir.display(),
                    path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut record = read_record(&file);
        let claimed = match &record.owner {
            Some(o) if o == me => Claimed::Yes,
            Some(o) if Path::new(o).exists() && !take_over => {
                anyhow::bail!(
                    "log dir {} belongs to the collect with state dir {o} (registered in {}); two state dirs writing one log dir cut each other's records. Give this collect its own --log-dir, run it with --state-dir {o}, or pass --take-over to move the log dir to {me}",
                    log_dir.display(),
                    path.display()
                );
            }
            Some(o) if !take_over => {
                anyhow::bail!(
                    "log dir {} belongs to the collect with state dir {o}, which no longer exists (registered in {}); pass --take-over to move the log dir to {me}",
                    log_dir.display(),
                    path.display()
                );
            }
            Some(o) => Claimed::TookOver(o.clone()),
            None => Claimed::Yes,
        };
        let owner = Self {
            path,
            me: me.to_owned(),
            file,
            record: Mutex::new(Record::default()),
            pins: AtomicU64::new(0),
            premarked: Mutex::new(BTreeMap::new()),
        };
        if record.owner.as_deref() != Some(me) {
            record.owner = Some(me.to_owned());
            owner.write(&record, true)?;
        }
        *owner.lock() = record;
        Ok((owner, claimed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self, r: &Record, sync: bool) -> anyhow::Result<()> {
        let b = r.encode();
        let done = self
            .file
            .write_all_at(&b, 0)
            .and_then(|()| {
                if b.len() > BLOCK {
                    self.file.set_len(b.len() as u64)
                } else {
                    Ok(())
                }
            })
            .and_then(|()| if sync { self.file.sync_data() } else { Ok(()) });
        done.map_err(|e| anyhow::anyhow!("cannot write {}: {e}", self.path.display()))
    }

    /// The mark of the log file `name`.
    pub fn mark(&self, name: &str) -> Option<Mark> {
        self.lock().marks.get(name).cloned()
    }

    /// Before appending to `name` (device, inode) past `from`: durably
    /// marks what follows `from` as uncommitted.
    pub fn pending(&self, name: &str, dev: u64, ino: u64, from: u64) -> io::Result<()> {
        self.set(name, dev, ino, MarkKind::Pending(from), true)
    }

    /// Before a cycle writes anything: marks `name` (device, inode) pending
    /// from `from`, where its appends will start (after any cut), without
    /// syncing; `sync` then makes every such mark durable at once, and
    /// `premarked` lets the file's first write use the mark instead of
    /// writing and syncing one of its own.
    pub fn premark(&self, name: &str, dev: u64, ino: u64, from: u64) -> io::Result<()> {
        self.set(name, dev, ino, MarkKind::Pending(from), false)?;
        self.premarked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_owned(), (dev, ino, from));
        Ok(())
    }

    /// Makes the marks written so far durable.
    pub fn sync(&self) -> io::Result<()> {
        self.file
            .sync_data()
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.path.display())))
    }

    /// Where this cycle's `premark` of `name` (device, inode) said its
    /// appends start, once: the first write takes it.
    pub fn take_premarked(&self, name: &str, dev: u64, ino: u64) -> Option<u64> {
        let mut p = self
            .premarked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match p.remove(name) {
            Some((d, i, from)) if d == dev && i == ino => Some(from),
            _ => None,
        }
    }

    /// After the state commit: `name` is committed up to `len`.
    pub fn committed(&self, name: &str, dev: u64, ino: u64, len: u64) -> io::Result<()> {
        self.set(name, dev, ino, MarkKind::Committed(len), false)
    }

    fn set(&self, name: &str, dev: u64, ino: u64, kind: MarkKind, sync: bool) -> io::Result<()> {
        let mut r = self.lock();
        r.marks.insert(
            name.to_owned(),
            Mark {
                dev,
                ino,
                writer: self.me.clone(),
                pins: self.pins.load(Ordering::Relaxed),
                kind,
            },
        );
        self.write(&r, sync)
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// Sets the pin generation this cycle consumes (before any write).
    pub fn set_pins(&self, pinned_at_ns: u64) {
        self.pins.store(pinned_at_ns, Ordering::Relaxed);
    }

    /// Where to cut `name` (device, inode, length `len`), if its bytes past
    /// some point are a tail no commit holds whose records the kernel still
    /// has for this cycle: the mark is `pending` from `from` for this file
    /// and for the pins this cycle consumes, and either this state dir
    /// wrote it from exactly the length the state knows (`known`: the
    /// committed length of this very file, if the state knows it; None
    /// for a reset state), or another state dir did (a killed cycle of the
    /// owner this one took over from). An older state (restored, copied)
    /// knows another length and cuts nothing.
    pub fn cut_point(
        &self,
        name: &str,
        dev: u64,
        ino: u64,
        len: u64,
        known: Option<u64>,
    ) -> Option<u64> {
        let pins = self.pins.load(Ordering::Relaxed);
        let m = self.mark(name)?;
        let MarkKind::Pending(from) = m.kind else {
            return None;
        };
        if m.dev != dev || m.ino != ino || pins == 0 || m.pins != pins || from >= len {
            return None;
        }
        match known {
            Some(k) if m.writer == self.me => (k == from).then_some(from),
            _ => Some(from),
        }
    }
}

fn read_record(file: &File) -> Record {
    let mut buf = vec![0u8; 64 * 1024];
    let n = file.read_at(&mut buf, 0).unwrap_or(0);
    Record::decode(&String::from_utf8_lossy(&buf[..n]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_owner_and_take_over() {
        let d = tempfile::tempdir().unwrap();
        let (a, c) = LogOwner::claim(d.path(), "/a", false, Duration::ZERO).unwrap();
        assert_eq!(c, Claimed::Yes);
        // Held: another state dir waits, then is refused naming the owner.
        let e = LogOwner::claim(d.path(), "/b", true, Duration::from_millis(50))
            .unwrap_err()
            .to_string();
        assert!(e.contains("state dir /a"), "{e}");
        drop(a);
        // /a no longer exists: the message says so.
        let e = LogOwner::claim(d.path(), "/b", false, Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/a") && e.contains("--take-over"), "{e}");
        let (b, c) = LogOwner::claim(d.path(), "/b", true, Duration::ZERO).unwrap();
        assert_eq!(c, Claimed::TookOver("/a".into()));
        b.set_pins(7);
        b.pending("access.csv", 1, 2, 10).unwrap();
        assert_eq!(b.cut_point("access.csv", 1, 2, 15, Some(10)), Some(10));
        assert_eq!(
            b.cut_point("access.csv", 1, 2, 15, None),
            Some(10),
            "reset state"
        );
        assert_eq!(
            b.cut_point("access.csv", 1, 2, 15, Some(9)),
            None,
            "older state"
        );
        assert_eq!(
            b.cut_point("access.csv", 1, 3, 15, Some(10)),
            None,
            "other file"
        );
        assert_eq!(
            b.cut_point("access.csv", 1, 2, 10, Some(10)),
            None,
            "no tail"
        );
        b.set_pins(8);
        assert_eq!(
            b.cut_point("access.csv", 1, 2, 15, Some(10)),
            None,
            "other pins"
        );
        b.set_pins(7);
        b.committed("access.csv", 1, 2, 20).unwrap();
        assert_eq!(
            b.cut_point("access.csv", 1, 2, 25, Some(10)),
            None,
            "committed"
        );
        drop(b);
        let (b, _) = LogOwner::claim(d.path(), "/b", false, Duration::ZERO).unwrap();
        assert_eq!(
            b.mark("access.csv").unwrap().kind,
            MarkKind::Committed(20),
            "marks survive"
        );
    }

    #[test]
    fn record_round_trips_odd_names() {
        let mut r = Record {
            owner: Some("/x y\\z\nw".into()),
            ..Default::default()
        };
        r.marks.insert(
            "a b".into(),
            Mark {
                dev: 1,
                ino: 2,
                writer: "/s p".into(),
                pins: 9,
                kind: MarkKind::Pending(3),
            },
        );
        let b = r.encode();
        assert_eq!(b.len(), BLOCK);
        assert_eq!(Record::decode(&String::from_utf8(b).unwrap()), r);
    }
}
