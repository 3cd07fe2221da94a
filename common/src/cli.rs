//! Command-line errors as one line, the way every other error of longconn is
//! reported: `PROGRAM: message; valid values (see --help)`, exit status 2.
//! `--help`, `--version` and the help clap shows for a missing subcommand are
//! printed as clap prints them. `PROGRAM --generate-docs DIR`, taken before
//! clap sees the command line and never part of the documented interface
//! (no help, completion or "did you mean" names it), writes the man pages
//! and completions of the very definition being parsed (see `docs`).

use std::{ffi::OsString, path::Path, process::ExitCode};

use crate::docs;

/// Parses the command line, or prints the error on one line and says which
/// exit code to end with. First, a closed stdout (`status | head`) ends the
/// program quietly, as it does `ss` or `cat`: Rust ignores SIGPIPE, so a
/// print would otherwise panic. `--generate-docs DIR` writes the docs of
/// `T` (described further by `pages`) and ends the program.
pub fn parse<T: clap::Parser>(program: &str, pages: &docs::Pages) -> Result<T, ExitCode> {
    // SAFETY: setting a signal's disposition to its default, before any
    // thread is started; no handler runs.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let args: Vec<OsString> = std::env::args_os().collect();
    if let [_, flag, dir] = args.as_slice() {
        if flag == docs::FLAG {
            return Err(generate_docs::<T>(program, pages, Path::new(dir)));
        }
    }
    match T::try_parse_from(args) {
        Ok(cli) => Ok(cli),
        Err(e)
            if !e.use_stderr()
                || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            e.exit()
        }
        Err(e) => {
            eprintln!("{program}: {}", one_line(&e));
            Err(ExitCode::from(e.exit_code() as u8))
        }
    }
}

fn generate_docs<T: clap::Parser>(program: &str, pages: &docs::Pages, dir: &Path) -> ExitCode {
    match docs::write(T::command(), pages, dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e}; give a writable directory");
            ExitCode::FAILURE
        }
    }
}

/// A clap error as one line: its message, the valid values and tip, without
/// the "For more information" trailer.
pub fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .collect();
    format!("{} (see --help)", parts.join("; "))
}
