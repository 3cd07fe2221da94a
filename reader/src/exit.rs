//! Exit codes that systemd and scripts can act on (see `--help`).

use std::process::ExitCode;

use longconn_common::PinnedError;

pub const FAILURE: u8 = 1;
pub const NO_PERMISSION: u8 = 4;
pub const NOT_CONFIGURED: u8 = 6;

pub fn code_of(err: &anyhow::Error) -> ExitCode {
    for cause in err.chain() {
        if let Some(p) = cause.downcast_ref::<PinnedError>() {
            return ExitCode::from(match p {
                PinnedError::NotPinned { .. }
                | PinnedError::Layout { .. }
                | PinnedError::NoBpffs { .. } => NOT_CONFIGURED,
                PinnedError::Permission { .. } => NO_PERMISSION,
                _ => FAILURE,
            });
        }
    }
    ExitCode::from(FAILURE)
}
