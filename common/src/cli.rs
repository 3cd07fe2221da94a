//! Command-line errors as one line, the way every other error of longconn is
//! reported: `PROGRAM: message; valid values (see --help)`, exit status 2.
//! `--help`, `--version` and the help clap shows for a missing subcommand are
//! printed as clap prints them.

use std::process::ExitCode;

/// Parses the command line, or prints the error on one line and says which
/// exit code to end with. First, a closed stdout (`status | head`) ends the
/// program quietly, as it does `ss` or `cat`: Rust ignores SIGPIPE, so a
/// print would otherwise panic.
pub fn parse<T: clap::Parser>(program: &str) -> Result<T, ExitCode> {
    // SAFETY: setting a signal's disposition to its default, before any
    // thread is started; no handler runs.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    match T::try_parse() {
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
