//! Drawing one screen with ratatui: a status line, the table of the
//! visible lines (`table::Table`: only those are ever made into cells), and
//! a footer with the keys. Closed connections are greyed; the sort column's
//! header is underlined.

use std::time::Duration;

use ratatui::{
    layout::{Constraint, Layout},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Cell, Paragraph, Row, Table as TableWidget},
    Frame,
};

use super::{
    columns::{Column, COLUMNS},
    keys::BINDINGS,
    table::{Choice, Table},
};

/// Lines around the table: status, header row, two footer lines.
const CHROME: u16 = 4;

/// What the status line says besides the table.
pub struct Status<'a> {
    pub choice: &'a Choice,
    pub interval: Duration,
    /// The last refresh's duration (read, read-time refresh, rates).
    pub took: Duration,
    pub frozen: bool,
    /// A filter is being typed.
    pub typing: bool,
    /// Live connections the last refresh could not read (values from the
    /// last kernel-side update).
    pub unreachable: u64,
}

/// Table lines that fit a terminal `rows` high.
pub fn table_height(rows: u16) -> usize {
    usize::from(rows.saturating_sub(CHROME))
}

pub fn draw(f: &mut Frame<'_>, table: &Table, s: &Status<'_>) {
    let [status, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(2),
    ])
    .areas(f.area());
    f.render_widget(
        Paragraph::new(status_text(table, s))
            .style(Style::default().add_modifier(Modifier::REVERSED)),
        status,
    );
    let sorted = s.choice.sort_column().col;
    let header = Row::new(table.columns.iter().map(|c| {
        let style = if c.col == sorted {
            Style::default().add_modifier(Modifier::BOLD | Modifier::UNDERLINED)
        } else {
            Style::default().add_modifier(Modifier::BOLD)
        };
        Cell::from(pad(c.header, c)).style(style)
    }));
    let rows = table.rows.iter().map(|(cells, closed)| {
        let row = Row::new(
            cells
                .iter()
                .zip(&table.columns)
                .map(|(t, c)| Cell::from(pad(t, c))),
        );
        if *closed {
            row.style(Style::default().fg(Color::DarkGray))
        } else {
            row
        }
    });
    let widths = table.columns.iter().map(|c| Constraint::Length(c.width));
    f.render_widget(
        TableWidget::new(rows, widths)
            .header(header)
            .column_spacing(1),
        body,
    );
    f.render_widget(Paragraph::new(footer_lines(s)), footer);
}

/// A cell's text in its column's width: numbers right-aligned.
fn pad(text: &str, c: &Column) -> String {
    if c.numeric {
        format!("{text:>w$}", w = usize::from(c.width))
    } else {
        text.to_owned()
    }
}

fn status_text(t: &Table, s: &Status<'_>) -> String {
    let c = s.choice;
    let mut text = format!(" longconn top · {} {}", t.matched, c.view.name());
    if !c.filter.is_empty() {
        text.push_str(&format!(" matching {:?}", c.filter));
    }
    text.push_str(&format!(
        " · {} live, {} closed · every {} · refresh {} ms · sort {} {}",
        t.total - t.closed,
        t.closed,
        crate::human::duration(s.interval.as_secs_f64()),
        s.took.as_millis(),
        c.sort_column().header,
        if c.descending { "↓" } else { "↑" },
    ));
    if s.unreachable > 0 {
        text.push_str(&format!(" · {} not refreshed", s.unreachable));
    }
    if s.frozen {
        text.push_str(" · FROZEN (f resumes)");
    }
    text
}

fn footer_lines(s: &Status<'_>) -> Vec<Line<'static>> {
    let key = Style::default().add_modifier(Modifier::BOLD);
    let mut sort = vec![Span::raw(" sort:")];
    for c in COLUMNS.iter().filter(|c| c.in_view(s.choice.view)) {
        sort.push(Span::styled(format!(" {}", c.key), key));
        sort.push(Span::raw(format!(" {}", c.header)));
    }
    sort.push(Span::raw("  (again: reverse)"));
    let second = if s.typing {
        vec![
            Span::raw(" filter: "),
            Span::styled(format!("{}█", s.choice.filter), key),
            Span::raw("   Enter keep · Esc clear · words match address:port, process, workload, service, namespace, pod"),
        ]
    } else {
        let mut v = Vec::new();
        for (k, what) in BINDINGS {
            v.push(Span::styled(format!(" {k}"), key));
            v.push(Span::raw(format!(" {what} ")));
        }
        v
    };
    vec![Line::from(sort), Line::from(second)]
}
