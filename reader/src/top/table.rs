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
    model::{self, History, Model, SortKey},
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
        total: model.len(),
        closed: model.closed(),
        ..Table::default()
    };
    let cells = |l: &Line<'_>| columns.iter().map(|c| c.text(l)).collect::<Vec<_>>();
    match choice.view {
        View::Connections => {
            let named = !words.is_empty()
                || matches!(sort.col, Col::Process | Col::Workload | Col::Service);
            let none = Identity::default();
            let ids: Vec<Identity> = if named {
                names(model, ident)
            } else {
                Vec::new()
            };
            // Keys of the lines kept, not the lines: the sort moves 16 bytes
            // a line. The history is not a sort key (TREND sorts by rates).
            let mut order: Vec<(SortKey, usize)> = Vec::with_capacity(model.len());
            for (i, row) in model.rows().enumerate() {
                let l =
                    Line::connection(row, History::default(), clock, ids.get(i).unwrap_or(&none));
                if keep(&l) {
                    order.push((sort.sort_key(&l), i));
                }
            }
            model::sort_keyed(&mut order, choice.descending);
            let (from, to) = window(order.len());
            table.matched = order.len();
            table.offset = from;
            for &(_, i) in &order[from..to] {
                let row = model.row(i);
                let id;
                let id = match ids.get(i) {
                    Some(id) => id,
                    None => {
                        id = ident.identify(row.rec);
                        &id
                    }
                };
                let l = Line::connection(row, *row.history, clock, id);
                table.rows.push((cells(&l), l.closed));
            }
        }
        View::Workloads | View::Services => {
            let ids = names(model, ident);
            let workloads = choice.view == View::Workloads;
            let groups = model::groups(
                model.rows().zip(ids.iter().map(|id| {
                    if workloads {
                        id.workload.as_str()
                    } else {
                        id.service.as_str()
                    }
                })),
                clock.boot_ns,
            );
            let mut order: Vec<(SortKey, Line<'_>)> = groups
                .iter()
                .map(Line::group)
                .filter(keep)
                .map(|l| (sort.sort_key(&l), l))
                .collect();
            model::sort_keyed(&mut order, choice.descending);
            let (from, to) = window(order.len());
            table.matched = order.len();
            table.offset = from;
            for (_, l) in &order[from..to] {
                table.rows.push((cells(l), false));
            }
        }
    }
    table.columns = columns;
    table
}

/// Every row's names.
fn names(model: &Model, ident: &Identifier<'_>) -> Vec<Identity> {
    model
        .rows()
        .map(|r| ident.identify(r.rec))
        .collect::<Vec<_>>()
}
