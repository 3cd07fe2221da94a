//! From the model and the viewer's choices (view, sort, filter, scroll) to
//! the cells of the lines on screen. Shared by the screen and `--once`.
//!
//! Cost: names are worked out for every connection only when a filter, a
//! name sort or a group view needs them; otherwise only for the visible
//! lines. Cells (text) are made for the visible lines only.

use crate::{
    clock::Clock,
    identity::{Identifier, Identity},
};

use super::{
    columns::{Col, Column, Line, View},
    model::{self, Model},
};

/// What the viewer chose.
#[derive(Clone, Debug)]
pub struct Choice {
    pub view: View,
    pub sort: Col,
    pub descending: bool,
    pub filter: String,
    /// First line shown.
    pub offset: usize,
}

impl Choice {
    /// The sort column in `view` (a column the view lacks: its first rate).
    pub fn sort_column(&self) -> &'static Column {
        let c = Column::of(self.sort);
        if c.in_view(self.view) {
            c
        } else {
            Column::of(Col::Trend)
        }
    }

    /// Sort by `col`; already sorted by it: the other way round. Numbers
    /// start largest first, text in order.
    pub fn sort_by(&mut self, col: Col) {
        if self.sort == col {
            self.descending = !self.descending;
        } else {
            self.sort = col;
            self.descending = Column::of(col).numeric || col == Col::Trend;
        }
    }
}

/// The lines to show.
#[derive(Debug, Default)]
pub struct Table {
    pub columns: Vec<&'static Column>,
    /// Cells of each shown line, and whether it closed (greyed).
    pub rows: Vec<(Vec<String>, bool)>,
    /// Lines that pass the filter (shown or not).
    pub matched: usize,
    /// Lines before the filter.
    pub total: usize,
    /// Of them closed since the previous read.
    pub closed: usize,
    /// The first line shown (the offset, clamped).
    pub offset: usize,
}

/// The table of `model` as chosen, lines `offset..offset + height` (all
/// with `height` None); `text`: without the sparkline (`--once`).
pub fn build(
    model: &Model,
    ident: &Identifier<'_>,
    clock: &Clock,
    choice: &Choice,
    height: Option<usize>,
    text: bool,
) -> Table {
    let columns: Vec<&'static Column> = Column::of_view(choice.view, text).collect();
    let sort = choice.sort_column();
    let words = model::filter_words(&choice.filter);
    let keep = |l: &Line<'_>| {
        words.is_empty() || {
            let t = l.filter_texts();
            model::matches(&words, t.iter().map(|c| c.as_ref()))
        }
    };
    let window = |n: usize| {
        let h = height.unwrap_or(n);
        let offset = choice.offset.min(n.saturating_sub(h));
        (offset, (offset + h).min(n))
    };
    let mut table = Table {
        total: model.rows.len(),
        closed: model.rows.iter().filter(|r| r.closed).count(),
        ..Table::default()
    };
    let cells = |l: &Line<'_>| columns.iter().map(|c| c.text(l)).collect::<Vec<_>>();
    match choice.view {
        View::Connections => {
            let named = !words.is_empty()
                || matches!(sort.col, Col::Process | Col::Workload | Col::Service);
            let none = Identity::default();
            let ids: Vec<Identity> = if named {
                names(&model.rows, ident)
            } else {
                Vec::new()
            };
            let mut lines: Vec<(usize, Line<'_>)> = model
                .rows
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let id = ids.get(i).unwrap_or(&none);
                    (
                        i,
                        Line::connection(r, model.history(r.rec.cookie), clock, id),
                    )
                })
                .filter(|(_, l)| keep(l))
                .collect();
            model::sort_by(&mut lines, choice.descending, |(_, l)| sort.sort_key(l));
            let (from, to) = window(lines.len());
            table.matched = lines.len();
            table.offset = from;
            for (i, l) in &lines[from..to] {
                let id;
                let l = if named {
                    *l
                } else {
                    id = ident.identify(&model.rows[*i].rec);
                    Line::connection(&model.rows[*i], l.history, clock, &id)
                };
                table.rows.push((cells(&l), l.closed));
            }
        }
        View::Workloads | View::Services => {
            let ids = names(&model.rows, ident);
            let workloads = choice.view == View::Workloads;
            let groups = model::groups(
                model.rows.iter().zip(ids.iter().map(|id| {
                    if workloads {
                        id.workload.as_str()
                    } else {
                        id.service.as_str()
                    }
                })),
                |cookie| model.history(cookie),
                clock.boot_ns,
            );
            let mut lines: Vec<Line<'_>> = groups.iter().map(Line::group).filter(keep).collect();
            model::sort_by(&mut lines, choice.descending, |l| sort.sort_key(l));
            let (from, to) = window(lines.len());
            table.matched = lines.len();
            table.offset = from;
            for l in &lines[from..to] {
                table.rows.push((cells(l), false));
            }
        }
    }
    table.columns = columns;
    table
}

/// Every row's names.
fn names(rows: &[model::Row], ident: &Identifier<'_>) -> Vec<Identity> {
    rows.iter()
        .map(|r| ident.identify(&r.rec))
        .collect::<Vec<_>>()
}
