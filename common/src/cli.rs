//! Command-line errors as one line, the way every other error of longconn is
//! reported: `PROGRAM: message; valid values (see --help)`, exit status 2.
//! `--help`, `--version` and the help clap shows for a missing subcommand are
//! printed as clap prints them. A hidden `generate-docs DIR` subcommand,
//! added here and never part of the documented interface, writes the man
//! pages and completions of the very definition being parsed (see `docs`).

use std::{path::PathBuf, process::ExitCode};

use crate::docs;

/// Parses the command line, or prints the error on one line and says which
/// exit code to end with. First, a closed stdout (`status | head`) ends the
/// program quietly, as it does `ss` or `cat`: Rust ignores SIGPIPE, so a
/// print would otherwise panic. `generate-docs DIR` writes the docs of `T`
/// (described further by `pages`) and ends the program.
pub fn parse<T: clap::Parser>(program: &str, pages: &docs::Pages) -> Result<T, ExitCode> {
    // SAFETY: setting a signal's disposition to its default, before any
    // thread is started; no handler runs.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let parsed = with_docs_subcommand(T::command())
        .try_get_matches()
        .and_then(|m| match m.subcommand() {
            Some((docs::SUBCOMMAND, sub)) => Ok(Err(sub
                .get_one::<PathBuf>("dir")
                .cloned()
                .unwrap_or_default())),
            _ => T::from_arg_matches(&m)
                .map(Ok)
                .map_err(|e| e.format(&mut T::command())),
        });
    match parsed {
        Ok(Err(dir)) => match docs::write(T::command(), pages, &dir) {
            Ok(()) => Err(ExitCode::SUCCESS),
            Err(e) => {
                eprintln!("{program}: {e}; give a writable directory");
                Err(ExitCode::FAILURE)
            }
        },
        Ok(Ok(cli)) => Ok(cli),
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

/// `cmd` with the hidden `generate-docs DIR` subcommand.
fn with_docs_subcommand(cmd: clap::Command) -> clap::Command {
    cmd.subcommand(
        clap::Command::new(docs::SUBCOMMAND)
            .hide(true)
            .about("Write the man pages and shell completions under DIR (for packaging)")
            .arg(
                clap::Arg::new("dir")
                    .required(true)
                    .value_name("DIR")
                    .value_parser(clap::value_parser!(PathBuf)),
            ),
    )
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
