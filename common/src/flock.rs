//! flock(2) through rustix: the one way longconn takes an advisory lock on a
//! file it holds open (pin dir, collect lock, consumer and log-dir owners).

use std::{fs::File, io};

use rustix::{
    fs::{flock, FlockOperation},
    io::Errno,
};

/// Takes the exclusive lock without waiting: `Ok(true)` when taken (held
/// until `file` is closed), `Ok(false)` when another open file holds it.
pub fn try_exclusive(file: &File) -> io::Result<bool> {
    match flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(Errno::WOULDBLOCK) | Err(Errno::INTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Takes the exclusive lock, waiting for whoever holds it.
pub fn exclusive(file: &File) -> io::Result<()> {
    flock(file, FlockOperation::LockExclusive).map_err(Into::into)
}
