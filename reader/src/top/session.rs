//! The interactive view's state between two keys or refreshes, and what a
//! key changes in it: pure (no terminal, no kernel), so every binding's
//! effect is unit-tested. `mod.rs` runs the loop around it.

use std::time::{Duration, Instant};

use super::{keys::Action, table::Choice};

/// What the loop does after an action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Nothing changed: no redraw.
    Unchanged,
    Quit,
}

pub struct Session {
    pub choice: Choice,
    pub frozen: bool,
    /// A filter is being typed.
    pub typing: bool,
    /// When the next refresh is due.
    pub next: Instant,
    /// Table lines on screen.
    pub height: usize,
}

impl Session {
    pub fn new(choice: Choice, height: usize) -> Self {
        Self {
            choice,
            frozen: false,
            typing: false,
            next: Instant::now(),
            height,
        }
    }

    /// Whether a refresh is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        !self.frozen && now >= self.next
    }

    /// How long to wait for a key before looking again.
    pub fn wait(&self, now: Instant) -> Duration {
        const TICK: Duration = Duration::from_millis(250);
        if self.frozen {
            TICK
        } else {
            self.next.saturating_duration_since(now).min(TICK)
        }
    }

    /// Applies `action` (`now`: when it came).
    pub fn act(&mut self, action: Action, now: Instant) -> Flow {
        let c = &mut self.choice;
        let page = self.height.max(1);
        match action {
            Action::Quit => return Flow::Quit,
            Action::Sort(col) => c.sort_by(col),
            Action::NextView => {
                c.view = c.view.next();
                c.offset = 0;
            }
            Action::Freeze => {
                self.frozen = !self.frozen;
                // Unfreezing reads at once.
                self.next = now;
            }
            Action::Filter => self.typing = true,
            Action::Type(ch) => {
                c.filter.push(ch);
                c.offset = 0;
            }
            Action::Backspace => {
                c.filter.pop();
            }
            Action::FilterDone => self.typing = false,
            Action::FilterClear => {
                self.typing = false;
                c.filter.clear();
            }
            Action::Up => c.offset = c.offset.saturating_sub(1),
            Action::Down => c.offset = c.offset.saturating_add(1),
            Action::PageUp => c.offset = c.offset.saturating_sub(page),
            Action::PageDown => c.offset = c.offset.saturating_add(page),
            Action::Top => c.offset = 0,
            // `table::build` clamps it to the last screenful.
            Action::Bottom => c.offset = usize::MAX,
            Action::Nothing => return Flow::Unchanged,
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::columns::{Col, View};

    fn session() -> Session {
        let choice = Choice {
            view: View::Connections,
            sort: Col::Trend,
            descending: true,
            filter: String::new(),
            offset: 0,
        };
        Session::new(choice, 10)
    }

    #[test]
    fn freezing_stops_refreshes_and_unfreezing_refreshes_at_once() {
        let mut s = session();
        let t0 = Instant::now();
        s.next = t0 + Duration::from_secs(1);
        assert!(!s.due(t0));
        s.act(Action::Freeze, t0);
        assert!(s.frozen && !s.due(t0 + Duration::from_secs(5)));
        assert_eq!(s.wait(t0), Duration::from_millis(250));
        let t1 = t0 + Duration::from_secs(2);
        s.act(Action::Freeze, t1);
        assert!(!s.frozen && s.due(t1));
    }

    #[test]
    fn typing_a_filter_then_keeping_or_clearing_it() {
        let mut s = session();
        let now = Instant::now();
        s.choice.offset = 7;
        s.act(Action::Filter, now);
        for ch in "4321x".chars() {
            s.act(Action::Type(ch), now);
        }
        s.act(Action::Backspace, now);
        assert_eq!((s.choice.filter.as_str(), s.choice.offset), ("4321", 0));
        s.act(Action::FilterDone, now);
        assert!(!s.typing);
        assert_eq!(s.choice.filter, "4321");
        s.act(Action::FilterClear, now);
        assert!(s.choice.filter.is_empty());
    }

    #[test]
    fn sorting_scrolling_views_and_quitting() {
        let mut s = session();
        let now = Instant::now();
        s.act(Action::Sort(Col::Sent), now);
        assert_eq!((s.choice.sort, s.choice.descending), (Col::Sent, true));
        s.act(Action::Sort(Col::Sent), now);
        assert!(!s.choice.descending, "again: the other way");
        s.act(Action::Sort(Col::Workload), now);
        assert!(!s.choice.descending, "text starts in order");
        s.act(Action::PageDown, now);
        s.act(Action::Down, now);
        assert_eq!(s.choice.offset, 11);
        s.act(Action::PageUp, now);
        s.act(Action::Up, now);
        s.act(Action::Up, now);
        assert_eq!(s.choice.offset, 0);
        s.act(Action::NextView, now);
        assert_eq!(s.choice.view, View::Workloads);
        assert_eq!(s.act(Action::Nothing, now), Flow::Unchanged);
        assert_eq!(s.act(Action::Quit, now), Flow::Quit);
    }
}
