//! `top`: a live view of connections with rates, for the person at the
//! terminal (like bpftop, iftop, htop), or one text frame for a script.
//!
//! Each refresh, in this order: `source` reads the map once (the read-time
//! refresh included, as `dump --json` does) and peeks the close records of
//! connections gone since the last read; `model` turns two reads into
//! rates and a short history; `table` filters, sorts and makes cells of
//! the visible lines only; `screen` draws them (or `once` prints them).
//! `keys` maps keys to actions, `session` applies them to the viewer's
//! state, `term` owns the terminal.
//!
//! Invariant: read-only. `top` never moves the ring's consumer position
//! (see `source`), so `collect` running beside it loses and duplicates
//! nothing.

mod columns;
mod keys;
mod model;
mod once;
mod screen;
mod session;
mod source;
mod table;
mod term;

use std::{
    io::IsTerminal,
    path::Path,
    process::ExitCode,
    time::{Duration, Instant},
};

use crossterm::event::{self, Event};
use longconn_common::{pinned::Access, Pins};

use crate::{argvalues, runtime, servicemap::ServiceMap};

use columns::{Col, View, COLUMNS};
use session::{Flow, Session};
use table::Choice;

/// The fastest refresh `--interval` allows.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// After the options in `top --help`: what is on the screen and how to
/// drive it, from the column table and the key bindings.
fn after_help() -> String {
    let mut s = String::from(
        "Columns (rates are per second over the last refresh, in decimal units: 8 Mbit/s\n\
         shows as 1.00MB; the key in brackets sorts by the column, again reverses):\n",
    );
    for c in COLUMNS {
        s.push_str(&format!("  [{}] {:<9} {}\n", c.key, c.header, c.help));
    }
    s.push_str("Keys:\n");
    for (k, what) in keys::BINDINGS {
        s.push_str(&format!("  {k:<13} {what}\n"));
    }
    s.push_str(
        "  Ctrl-C        quit\n\n\
         Filter: type words after /; a line is shown when every word is found in\n\
         its address:port (either end), process, pid, workload, service, namespace,\n\
         pod, container or state. Connections closed since the previous refresh are\n\
         shown greyed, once. top only reads: it never consumes close records, so\n\
         `collect` runs beside it unaffected. It needs the same access as `dump`.\n\n\
         Examples:\n  \
         longconn-reader top                        # full screen, every second\n  \
         longconn-reader top --view workloads --interval 2s\n  \
         longconn-reader top --once --filter 5432   # one text frame: rates over 1 s\n  \
         longconn-reader top --once --sort s | head # busiest senders",
    );
    s
}

#[derive(Debug, clap::Args)]
#[command(after_help = after_help())]
pub struct TopArgs {
    /// Time between refreshes (each one reads the map once), at least 100ms.
    #[arg(long, default_value = "1s", value_name = "DURATION", value_parser = interval)]
    interval: Duration,

    /// Print one text frame (rates from two reads one --interval apart)
    /// and exit; also what happens when stdout is not a terminal.
    #[arg(long)]
    once: bool,

    /// What to list first (Tab switches on screen).
    #[arg(long, value_enum, default_value_t = View::Connections)]
    view: View,

    /// Column to sort by: its key or header (e.g. s, SENT/s, age); default
    /// TREND (bytes/s both ways), busiest first.
    #[arg(long, value_name = "COLUMN", value_parser = sort_column)]
    sort: Option<Col>,

    /// Start with this filter (words, as typed after /).
    #[arg(long, value_name = "TEXT", default_value = "")]
    filter: String,

    #[command(flatten)]
    runtime: runtime::RootArg,

    /// Service map to name remote endpoints (same format as `collect --services`).
    #[arg(long, value_name = "FILE")]
    services: Option<std::path::PathBuf>,
}

fn interval(s: &str) -> Result<Duration, String> {
    let d = argvalues::duration(s)?;
    if d < MIN_INTERVAL {
        return Err(format!("{s:?} is too short: at least 100ms"));
    }
    Ok(d)
}

/// A column by its key or header (case-insensitive; "/s" optional).
fn sort_column(s: &str) -> Result<Col, String> {
    let want = s.to_ascii_lowercase();
    COLUMNS
        .iter()
        .find(|c| {
            let h = c.header.to_ascii_lowercase();
            (want.chars().count() == 1 && want.starts_with(c.key))
                || h == want
                || h.strip_suffix("/s") == Some(want.as_str())
        })
        .map(|c| c.col)
        .ok_or_else(|| {
            let names: Vec<String> = COLUMNS
                .iter()
                .map(|c| format!("{} ({})", c.header, c.key))
                .collect();
            format!("{s:?} is no column: one of {}", names.join(", "))
        })
}

pub fn run(pin_dir: &Path, args: &TopArgs) -> anyhow::Result<ExitCode> {
    let pins = Pins::open(pin_dir, Access::ReadOnly)?;
    let services = match &args.services {
        Some(path) => ServiceMap::load(path).map_err(anyhow::Error::msg)?.0,
        None => ServiceMap::default(),
    };
    let mut source = source::Source::new(&pins, args.runtime.roots(), services);
    let mut choice = Choice {
        view: args.view,
        sort: Col::Trend,
        descending: true,
        filter: args.filter.clone(),
        offset: 0,
    };
    if let Some(col) = args.sort {
        choice.sort_by(col);
    }
    let tty = std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
    if args.once || !tty {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        once::run(&mut source, &choice, args.interval, &mut out)?;
        std::io::Write::flush(&mut out)?;
    } else {
        interactive(&mut source, choice, args.interval)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Records of the wrong size, on stderr (not while the screen is up).
fn warn_bad(bad: u64) {
    if bad > 0 {
        eprintln!("longconn-reader: skipped {bad} map records of the wrong size");
    }
}

/// The full-screen loop, in its phase order: refresh when due (unless
/// frozen), redraw when something changed, wait for a key or a resize and
/// apply it (`session`).
fn interactive(
    source: &mut source::Source<'_>,
    choice: Choice,
    interval: Duration,
) -> anyhow::Result<()> {
    let mut guard = term::enter().map_err(|e| {
        anyhow::anyhow!("cannot set up the terminal for top: {e}; use --once for text")
    })?;
    let mut s = Session::new(choice, screen::table_height(guard.terminal.size()?.height));
    let mut model = model::Model::default();
    let mut last = Last {
        clock: crate::clock::Clock::now(),
        took: Duration::ZERO,
        unreachable: 0,
    };
    let mut dirty = true;
    let panic_on_purpose = std::env::var_os(PANIC_ON_PURPOSE).is_some();
    while !term::stop_requested() {
        if s.due(Instant::now()) {
            let read = source.read(&mut model)?;
            last = Last {
                clock: read.clock,
                took: read.took,
                unreachable: read.refresh.not_found + read.refresh.netns_unknown,
            };
            s.next = Instant::now() + interval.saturating_sub(read.took);
            dirty = true;
        }
        if dirty {
            let table = table::build(
                &model,
                &source.identifier(),
                &last.clock,
                &s.choice,
                Some(s.height),
                false,
            );
            s.choice.offset = table.offset;
            let status = screen::Status {
                choice: &s.choice,
                interval,
                took: last.took,
                frozen: s.frozen,
                typing: s.typing,
                unreachable: last.unreachable,
            };
            guard.terminal.draw(|f| screen::draw(f, &table, &status))?;
            if panic_on_purpose {
                panic!("{PANIC_ON_PURPOSE} is set: top panics after its first frame");
            }
        }
        dirty = match input(s.wait(Instant::now()))? {
            None => false,
            Some(Event::Resize(_, rows)) => {
                s.height = screen::table_height(rows);
                guard.terminal.autoresize()?;
                true
            }
            Some(Event::Key(key)) => match s.act(keys::action(&key, s.typing), Instant::now()) {
                Flow::Quit => break,
                Flow::Continue => true,
                Flow::Unchanged => false,
            },
            Some(_) => false,
        };
    }
    drop(guard);
    Ok(())
}

/// A test hook, as git's `GIT_TEST_*`: set, the full-screen loop panics
/// once its first frame is drawn, so an end-to-end test proves that the
/// panic hook gives the terminal back (`term`). Nothing else reads it.
const PANIC_ON_PURPOSE: &str = "LONGCONN_TEST_TOP_PANIC";

/// What the last refresh read, for the status line.
struct Last {
    clock: crate::clock::Clock,
    took: Duration,
    unreachable: u64,
}

/// The next terminal event within `wait`, if any.
fn input(wait: Duration) -> std::io::Result<Option<Event>> {
    if event::poll(wait)? {
        event::read().map(Some)
    } else {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_columns_by_key_or_header() {
        assert_eq!(sort_column("s"), Ok(Col::Sent));
        assert_eq!(sort_column("SENT/s"), Ok(Col::Sent));
        assert_eq!(sort_column("sent"), Ok(Col::Sent));
        assert_eq!(sort_column("age"), Ok(Col::Age));
        let e = sort_column("nope").unwrap_err();
        assert!(e.contains("SENT/s (s)") && !e.contains('\n'), "{e}");
        assert!(interval("50ms").is_err());
        assert_eq!(interval("2s"), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn help_lists_every_column_and_key() {
        let h = after_help();
        for c in COLUMNS {
            assert!(h.contains(&format!("[{}] {}", c.key, c.header)), "{h}");
        }
        assert!(h.lines().all(|l| l.chars().count() <= 100), "{h}");
    }
}
