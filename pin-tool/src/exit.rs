//! Exit codes that systemd and scripts can act on (see `--help`).

use std::process::ExitCode;

use longconn_common::PinnedError;

pub const FAILURE: u8 = 1;
pub const NO_FEATURE: u8 = 3;
pub const NO_PERMISSION: u8 = 4;
/// Already pinned with other options; nothing changed.
pub const DIFFERENT_OPTIONS: u8 = 5;
pub const NOT_CONFIGURED: u8 = 6;

/// An error that carries its exit code through `anyhow`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Coded {
    pub code: u8,
    pub message: String,
}

pub fn coded(code: u8, message: impl Into<String>) -> anyhow::Error {
    Coded {
        code,
        message: message.into(),
    }
    .into()
}

pub fn code_of(err: &anyhow::Error) -> ExitCode {
    for cause in err.chain() {
        if let Some(c) = cause.downcast_ref::<Coded>() {
            return ExitCode::from(c.code);
        }
        if let Some(p) = cause.downcast_ref::<PinnedError>() {
            return ExitCode::from(p.exit_code());
        }
    }
    ExitCode::from(FAILURE)
}

#[cfg(test)]
mod tests {
    use longconn_common::PinnedError;

    /// main prints `{err:#}` (message, then each cause): a pinned map that
    /// vanished (detach mid-collect) names its OS error once, not twice.
    #[test]
    fn pinned_io_error_text_appears_once_in_the_chain() {
        let e = anyhow::Error::from(PinnedError::Io {
            path: "/sys/fs/bpf/x/closed_conns".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        });
        let text = format!("{e:#}");
        assert_eq!(text.matches("os error 2").count(), 1, "{text}");
        assert!(
            text.starts_with("cannot open /sys/fs/bpf/x/closed_conns: "),
            "{text}"
        );
    }
}
