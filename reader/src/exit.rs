//! Exit codes that systemd and scripts can act on (see `--help`).

use std::process::ExitCode;

use longconn_common::PinnedError;

pub const FAILURE: u8 = 1;

pub fn code_of(err: &anyhow::Error) -> ExitCode {
    for cause in err.chain() {
        if let Some(p) = cause.downcast_ref::<PinnedError>() {
            return ExitCode::from(p.exit_code());
        }
    }
    ExitCode::from(FAILURE)
}
