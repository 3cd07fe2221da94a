//! The exit codes both binaries end with, for systemd and scripts: one list,
//! from which each binary's `--help` is written (and which the README's
//! "Exit codes" repeats).

use std::process::ExitCode;

use crate::PinnedError;

/// Why a run ended. `repr(u8)`: the discriminant is the exit status.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Done = 0,
    Failed = 1,
    /// clap's own status for a bad command line.
    Usage = 2,
    NoFeature = 3,
    NoPermission = 4,
    /// `longconn-pin`: already pinned with other options; nothing changed.
    DifferentOptions = 5,
    NotConfigured = 6,
}

/// Which binary a help text is for: some codes are one binary's only, and
/// some read differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    Pin,
    Reader,
}

impl Exit {
    pub const ALL: [Exit; 7] = [
        Exit::Done,
        Exit::Failed,
        Exit::Usage,
        Exit::NoFeature,
        Exit::NoPermission,
        Exit::DifferentOptions,
        Exit::NotConfigured,
    ];

    pub fn code(self) -> u8 {
        self as u8
    }

    /// What the code means from `program`, or None if it never ends with it.
    pub fn meaning(self, program: Program) -> Option<&'static str> {
        use Program::*;
        Some(match (self, program) {
            (Exit::Done, Pin) => "done (also when already pinned, or nothing to detach)",
            (Exit::Done, Reader) => "done",
            (Exit::Failed, _) => "failed; the message says what and where",
            (Exit::Usage, _) => "bad command line",
            (Exit::NoFeature, Pin) => "a kernel feature is missing (sockops, cgroup v2, bpffs, BTF)",
            (Exit::NoFeature, Reader) => "no bpf filesystem mounted where the pins should be",
            (Exit::NoPermission, Pin) => {
                "insufficient privileges (detach and status need root to check links)"
            }
            (Exit::NoPermission, Reader) => "insufficient privileges to open the pins",
            (Exit::DifferentOptions, Pin) => {
                "already pinned with other options; nothing changed (the message says what differs and how to re-pin)"
            }
            (Exit::DifferentOptions, Reader) => return None,
            (Exit::NotConfigured, Pin) => "not pinned, or pinned by another layout version",
            (Exit::NotConfigured, Reader) => {
                "nothing pinned at --pin-dir, or pinned by another layout version"
            }
        })
    }

    /// The `Exit status` paragraph of `program`'s `--help`.
    pub fn help(program: Program) -> String {
        let mut text = String::from("Exit status (for systemd and scripts):");
        for e in Exit::ALL {
            let Some(meaning) = e.meaning(program) else {
                continue;
            };
            // Wrapped here, under the meaning's first column: clap would
            // wrap a long line to the left margin.
            text.push_str(&format!("\n  {} ", e.code()));
            let mut column = 4;
            for word in meaning.split(' ') {
                if column + 1 + word.len() > 78 {
                    text.push_str("\n    ");
                    column = 4;
                }
                text.push(' ');
                text.push_str(word);
                column += 1 + word.len();
            }
        }
        text
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e.code())
    }
}

/// An error that carries its exit code through `anyhow`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Coded {
    pub exit: Exit,
    pub message: String,
}

/// An `anyhow` error that ends the run with `exit`.
pub fn coded(exit: Exit, message: impl Into<String>) -> anyhow::Error {
    Coded {
        exit,
        message: message.into(),
    }
    .into()
}

/// The code an error ends the run with: the first `Coded` or `PinnedError`
/// in its chain, else `Failed`.
pub fn of(err: &anyhow::Error) -> Exit {
    err.chain()
        .find_map(|cause| {
            cause
                .downcast_ref::<Coded>()
                .map(|c| c.exit)
                .or_else(|| cause.downcast_ref::<PinnedError>().map(PinnedError::exit))
        })
        .unwrap_or(Exit::Failed)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(of(&e), Exit::Failed);
    }

    #[test]
    fn the_code_of_a_chain_is_its_first_coded_cause() {
        let e = coded(Exit::DifferentOptions, "x").context("outer");
        assert_eq!(of(&e), Exit::DifferentOptions);
        let e = anyhow::Error::from(PinnedError::NotPinned { dir: "/d".into() });
        assert_eq!(of(&e), Exit::NotConfigured);
        assert_eq!(of(&anyhow::anyhow!("plain")), Exit::Failed);
    }

    /// Every code but 5 is both binaries'; the help lists them in order.
    #[test]
    fn each_help_lists_its_codes_in_order() {
        let pin = Exit::help(Program::Pin);
        let reader = Exit::help(Program::Reader);
        let codes = |help: &str| -> Vec<char> {
            help.lines()
                .filter_map(|l| l.strip_prefix("  ")?.chars().next())
                .filter(char::is_ascii_digit)
                .collect()
        };
        assert_eq!(codes(&pin), "0123456".chars().collect::<Vec<_>>(), "{pin}");
        assert_eq!(
            codes(&reader),
            "012346".chars().collect::<Vec<_>>(),
            "{reader}"
        );
        assert!(pin.lines().all(|l| l.len() <= 78), "{pin}");
        assert!(!reader.contains("\n  5  "), "{reader}");
        for (i, e) in Exit::ALL.iter().enumerate() {
            assert_eq!(usize::from(e.code()), i);
        }
        let usage = clap::Error::new(clap::error::ErrorKind::InvalidValue);
        assert_eq!(i32::from(Exit::Usage.code()), usage.exit_code());
    }
}
