//! `top` without a terminal (`--once`, or stdout not a terminal): one text
//! frame of rates from two reads one interval apart, for scripts and logs.
//! The same model, columns and table as the screen, without the sparkline;
//! every line, not a screenful. Its first line says what each refresh
//! (read, read-time refresh, rates), the table of a 50-line screen (filter,
//! sort, text of the visible lines) and this table (text of every line)
//! took: `scripts/bench` compares them with `dump --json`.

use std::{
    io::Write,
    time::{Duration, Instant},
};

use super::{
    model::Model,
    source::Source,
    table::{self, Choice},
};

/// Lines of the screen whose cost the first line reports.
const SCREEN_LINES: usize = 50;

/// Reads twice, `interval` apart, and writes the frame to `out`.
pub fn run(
    source: &mut Source<'_>,
    choice: &Choice,
    interval: Duration,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut model = Model::default();
    let first = source.read(&mut model)?;
    std::thread::sleep(interval.saturating_sub(first.took));
    let second = source.read(&mut model)?;
    let (refresh1, refresh2) = (first.took, second.took);
    let unreached = second.refresh.not_found + second.refresh.netns_unknown;
    super::warn_bad(second.bad);
    let ident = source.identifier();
    // What a refresh of the screen adds: filter and sort every line, make
    // text of a screenful (timed for `scripts/bench`, not printed).
    let start = Instant::now();
    let screenful = Some(SCREEN_LINES);
    let _ = table::build(&model, &ident, &second.clock, choice, screenful, false);
    let screen = start.elapsed();
    let start = Instant::now();
    let t = table::build(&model, &ident, &second.clock, choice, None, true);
    let made = start.elapsed();
    writeln!(
        out,
        "interval {:.2}s; refreshes took {} ms and {} ms, a {SCREEN_LINES}-line screen {} ms, this table {} ms; {} {}{}; {} live, {} closed since the first read{}",
        model.interval_ns as f64 / 1e9,
        refresh1.as_millis(),
        refresh2.as_millis(),
        screen.as_millis(),
        made.as_millis(),
        t.matched,
        choice.view.name(),
        if choice.filter.is_empty() {
            String::new()
        } else {
            format!(" matching {:?}", choice.filter)
        },
        t.total - t.closed,
        t.closed,
        if unreached > 0 {
            format!("; {unreached} not refreshed (values from their last kernel-side update)")
        } else {
            String::new()
        },
    )?;
    write_text(out, &t)
}

/// The table as aligned text: a header, one line each, numbers right-aligned.
fn write_text(out: &mut impl Write, t: &table::Table) -> anyhow::Result<()> {
    let mut widths: Vec<usize> = t.columns.iter().map(|c| c.header.chars().count()).collect();
    for (cells, _) in &t.rows {
        for (w, c) in widths.iter_mut().zip(cells) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| -> String {
        let mut s = String::new();
        for ((text, w), col) in cells.zip(&widths).zip(&t.columns) {
            if !s.is_empty() {
                s.push_str("  ");
            }
            if col.numeric {
                s.push_str(&format!("{text:>w$}"));
            } else {
                s.push_str(&format!("{text:<w$}"));
            }
        }
        s.trim_end().to_owned()
    };
    writeln!(out, "{}", line(&mut t.columns.iter().map(|c| c.header)))?;
    for (cells, _) in &t.rows {
        writeln!(out, "{}", line(&mut cells.iter().map(String::as_str)))?;
    }
    Ok(())
}
