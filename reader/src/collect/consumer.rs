//! One consumer of a pin dir's close records.
//!
//! The close ring is shared: every `collect` that reads a pin dir releases
//! what it applied, so two collects with different state dirs on one pin
//! dir would each take part of the closes (each output missing the other's
//! share). A collect therefore registers its state dir as *the* consumer of
//! the pin dir, for the current pin generation (`meta.pinned_at_ns`), in a
//! small file under `/run/lock` (world-writable and sticky on Debian, so an
//! unprivileged reader can register too; cleared at boot, like the pins):
//! `/run/lock/longconn-consumer-<hash of the pin dir>`. A collect with
//! another state dir is refused with a message naming the registered one,
//! unless it is started with `--take-over`. A registration of an older pin
//! generation (the pins were re-made) is simply replaced.
//!
//! The check is made under an flock of the registration file, before
//! anything is consumed, and the flock is held for the whole cycle (until
//! the ring space is released): two concurrent `--take-over`s, or a
//! take-over during the consumer's cycle, leave exactly one consumer — the
//! one that waits longer than `--lock-wait` for the flock is refused
//! (exit 1) before it reads the ring. As a backstop for what the registry
//! cannot see (no /run/lock, a registration removed by hand), a cycle also
//! checks that nobody released ring records past its own committed position.

use std::{
    fs::{File, OpenOptions, Permissions},
    io::{self, Read, Seek, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

/// Where registrations live.
pub const REGISTRY_DIR: &str = longconn_common::pins::CONSUMER_REGISTRY_DIR;

/// A registration: which state dir consumes which pin generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub pin_dir: String,
    pub pinned_at_ns: u64,
    pub state_dir: String,
}

impl Record {
    fn encode(&self) -> String {
        format!(
            "# longconn-reader: the one collect consuming this pin dir's close records\npin_dir={}\npinned_at_ns={}\nstate_dir={}\n",
            self.pin_dir, self.pinned_at_ns, self.state_dir
        )
    }

    fn decode(text: &str) -> Option<Self> {
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                .map(str::to_owned)
        };
        Some(Self {
            pin_dir: field("pin_dir")?,
            pinned_at_ns: field("pinned_at_ns")?.parse().ok()?,
            state_dir: field("state_dir")?,
        })
    }
}

/// The registration file of `pin_dir` (a canonical path) under `dir`.
pub fn registration_path(dir: &Path, pin_dir: &str) -> PathBuf {
    longconn_common::pins::consumer_registration(dir, pin_dir)
}

/// What `register` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Registered {
    /// This state dir was already the consumer of this pin generation.
    Already,
    /// This state dir is the consumer, newly (a new pin generation, or no
    /// registration before).
    Yes,
    /// This state dir took over from another (`--take-over`).
    TookOver(String),
    /// No registry could be written (the reason); the backstop check remains.
    Unavailable(String),
}

/// Makes `me.state_dir` the consumer of `me.pin_dir` for `me.pinned_at_ns`
/// in `dir`, or fails naming the registered consumer.
pub fn register(
    dir: &Path,
    me: &Record,
    take_over: bool,
    wait: std::time::Duration,
) -> anyhow::Result<(Registered, Option<File>)> {
    let path = registration_path(dir, &me.pin_dir);
    let opened = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(&path);
    let mut file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            // Someone else's registration (sticky dir): readable, not ours to change.
            return match read_only(&path)? {
                Some(r) if r.state_dir == me.state_dir && r.pinned_at_ns == me.pinned_at_ns => {
                    Ok((Registered::Already, None))
                }
                Some(r) if r.pinned_at_ns == me.pinned_at_ns && r.pin_dir == me.pin_dir => {
                    Err(refusal(&path, me, &r))
                }
                _ => Ok((
                    Registered::Unavailable(format!("cannot write {}: {e}", path.display())),
                    None,
                )),
            };
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok((
                Registered::Unavailable(format!("{} does not exist", dir.display())),
                None,
            ))
        }
        // A sandbox without it (systemd ProtectSystem=strict and no
        // ReadWritePaths=/run/lock).
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => {
            return Ok((
                Registered::Unavailable(format!("{} is read-only here", dir.display())),
                None,
            ))
        }
        Err(e) => anyhow::bail!(
            "cannot open consumer registration {}: {e}; remove it if it is not a regular file",
            path.display()
        ),
    };
    let meta = file.metadata()?;
    if !meta.file_type().is_file() || meta.nlink() != 1 {
        anyhow::bail!(
            "consumer registration {} is not a plain file (hard links or special file); remove it",
            path.display()
        );
    }
    // Exact mode whatever the umask (readable by any reader that checks it).
    if meta.uid() == rustix::process::geteuid().as_raw() && meta.mode() & 0o7777 != 0o644 {
        file.set_permissions(Permissions::from_mode(0o644))?;
    }
    // A plain second consumer is refused at once, without waiting for the
    // consumer's cycle to end.
    if !take_over {
        if let Some(r) = read_only(&path)? {
            if r.pinned_at_ns == me.pinned_at_ns
                && r.pin_dir == me.pin_dir
                && r.state_dir != me.state_dir
            {
                return Err(refusal(&path, me, &r));
            }
        }
    }
    lock_within(&mut file, &path, me, wait)?;
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let current = Record::decode(&text);
    let outcome = match &current {
        Some(r) if *r == *me => return Ok((Registered::Already, Some(file))),
        Some(r) if r.pinned_at_ns == me.pinned_at_ns && r.pin_dir == me.pin_dir => {
            if !take_over {
                return Err(refusal(&path, me, r));
            }
            Registered::TookOver(r.state_dir.clone())
        }
        // Empty, unreadable or of another pin generation: ours now.
        _ => Registered::Yes,
    };
    file.set_len(0)?;
    file.rewind()?;
    file.write_all(me.encode().as_bytes())
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok((outcome, Some(file)))
}

/// Takes the registration's flock, waiting up to `wait` for the cycle of
/// the collect that holds it; fails naming that collect's state dir (as
/// the file says) if it is still held.
fn lock_within(
    file: &mut File,
    path: &Path,
    me: &Record,
    wait: std::time::Duration,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        // Released when `file` is closed.
        match longconn_common::flock::try_exclusive(file) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => anyhow::bail!("cannot lock {}: {e}", path.display()),
        }
        if std::time::Instant::now() >= deadline {
            let holder = read_only(path)
                .ok()
                .flatten()
                .map_or_else(|| "?".to_owned(), |r| r.state_dir);
            anyhow::bail!(
                "pin dir {} is being consumed right now by the collect with state dir {holder} (it holds {} for its cycle); {} consumed nothing. Run one collect per pin dir; to move the consumer, retry --take-over once that cycle is over",
                me.pin_dir,
                path.display(),
                me.state_dir
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn read_only(path: &Path) -> anyhow::Result<Option<Record>> {
    let mut text = String::new();
    match File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
    {
        Ok(_) => Ok(Record::decode(&text)),
        Err(_) => Ok(None),
    }
}

fn refusal(path: &Path, me: &Record, r: &Record) -> anyhow::Error {
    let gone = if Path::new(&r.state_dir).exists() {
        ""
    } else {
        " (that directory no longer exists)"
    };
    anyhow::anyhow!(
        "pin dir {} is already consumed by the collect with state dir {}{gone} (registered in {}); a second consumer would split the close records between them. Run collect with that state dir, or pass --take-over to make {} the consumer from now on",
        me.pin_dir,
        r.state_dir,
        path.display(),
        me.state_dir
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(state: &str, generation: u64) -> Record {
        Record {
            pin_dir: "/sys/fs/bpf/x".into(),
            pinned_at_ns: generation,
            state_dir: state.into(),
        }
    }

    fn register(d: &Path, me: &Record, take_over: bool) -> anyhow::Result<Registered> {
        super::register(d, me, take_over, std::time::Duration::ZERO).map(|(r, _)| r)
    }

    /// Issue 22 item 4: the registration stays locked for the cycle; a
    /// concurrent take-over is refused before it consumes anything.
    #[test]
    fn a_take_over_during_a_cycle_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let held =
            super::register(d.path(), &rec("/a", 1), true, std::time::Duration::ZERO).unwrap();
        assert_eq!(held.0, Registered::Yes);
        let e = super::register(
            d.path(),
            &rec("/b", 1),
            true,
            std::time::Duration::from_millis(60),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("state dir /a") && e.contains("consumed nothing"),
            "{e}"
        );
        drop(held);
        assert_eq!(
            register(d.path(), &rec("/b", 1), true).unwrap(),
            Registered::TookOver("/a".into())
        );
    }

    #[test]
    fn one_consumer_per_pin_generation() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            register(d.path(), &rec("/a", 1), false).unwrap(),
            Registered::Yes
        );
        assert_eq!(
            register(d.path(), &rec("/a", 1), false).unwrap(),
            Registered::Already
        );
        let e = register(d.path(), &rec("/b", 1), false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("state dir /a") && e.contains("--take-over") && e.contains("/b"),
            "{e}"
        );
        assert_eq!(
            register(d.path(), &rec("/b", 1), true).unwrap(),
            Registered::TookOver("/a".into())
        );
        assert!(register(d.path(), &rec("/a", 1), false).is_err());
        // New pins: the first collect registers.
        assert_eq!(
            register(d.path(), &rec("/a", 2), false).unwrap(),
            Registered::Yes
        );
        let p = registration_path(d.path(), "/sys/fs/bpf/x");
        assert_eq!(
            Record::decode(&std::fs::read_to_string(&p).unwrap()),
            Some(rec("/a", 2))
        );
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert!(matches!(
            register(&d.path().join("missing"), &rec("/a", 2), false).unwrap(),
            Registered::Unavailable(_)
        ));
    }
}
