//! Writing outputs so that a reader killed at any instant never leaves a
//! partial file, a lost record or a duplicated one.

pub mod access;
pub mod applog;
pub mod atomic;
pub mod jsonw;
pub mod otlp;
pub mod promtext;

/// Group that owns every output file this process creates (`collect --group`),
/// set once at start; unset keeps the process's group.
pub static OUTPUT_GID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// Gives a freshly created output file to `OUTPUT_GID`, if set.
pub(crate) fn apply_group(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    if let Some(&gid) = OUTPUT_GID.get() {
        // SAFETY: fchown on an fd we own; uid -1 leaves the owner unchanged.
        if unsafe { libc::fchown(file.as_raw_fd(), u32::MAX, gid) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
