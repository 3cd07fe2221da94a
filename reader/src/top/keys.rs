//! Keys to actions: the one place `top`'s bindings are decided, so the
//! footer and `--help` show what the loop does. Column keys come from
//! `columns::COLUMNS`; the others are listed in `BINDINGS`.
//!
//! While a filter is being typed every printable key is text; Enter keeps
//! the filter, Esc clears it. Ctrl-C quits in either mode (the terminal is
//! in raw mode, so it arrives as a key, not as SIGINT).

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::columns::{Col, Column};

/// What a key asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Quit,
    /// Sort by this column (already sorted by it: the other way).
    Sort(Col),
    /// Connections, workloads, services, connections...
    NextView,
    Freeze,
    /// Start typing a filter.
    Filter,
    Type(char),
    Backspace,
    /// Enter: keep the filter and stop typing.
    FilterDone,
    /// Esc: clear the filter.
    FilterClear,
    Up,
    Down,
    PageUp,
    PageDown,
    Top,
    Bottom,
    Nothing,
}

/// Keys that are not column keys, with what they do (footer and help).
pub const BINDINGS: &[(&str, &str)] = &[
    ("/", "filter"),
    ("Tab", "connections/workloads/services"),
    ("f", "freeze"),
    ("↑↓ PgUp PgDn", "scroll"),
    ("q", "quit"),
];

/// Characters no column may take as its sort key.
#[cfg(test)]
pub const RESERVED: &[char] = &['/', 'f', 'q'];

/// The action of `key`; `typing`: a filter is being typed.
pub fn action(key: &KeyEvent, typing: bool) -> Action {
    if key.kind == KeyEventKind::Release {
        return Action::Nothing;
    }
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    match key.code {
        KeyCode::Char('c') if ctrl => return Action::Quit,
        KeyCode::Up => return Action::Up,
        KeyCode::Down => return Action::Down,
        KeyCode::PageUp => return Action::PageUp,
        KeyCode::PageDown => return Action::PageDown,
        KeyCode::Home => return Action::Top,
        KeyCode::End => return Action::Bottom,
        KeyCode::Tab => return Action::NextView,
        _ => {}
    }
    if typing {
        return match key.code {
            KeyCode::Enter => Action::FilterDone,
            KeyCode::Esc => Action::FilterClear,
            KeyCode::Backspace => Action::Backspace,
            KeyCode::Char(c) if !ctrl && !c.is_control() => Action::Type(c),
            _ => Action::Nothing,
        };
    }
    match key.code {
        KeyCode::Char('q') => Action::Quit,
        KeyCode::Char('/') => Action::Filter,
        KeyCode::Char('f') | KeyCode::Char(' ') => Action::Freeze,
        KeyCode::Esc => Action::FilterClear,
        KeyCode::Char(c) => Column::by_key(c).map_or(Action::Nothing, |c| Action::Sort(c.col)),
        _ => Action::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn browsing_keys() {
        assert_eq!(action(&key(KeyCode::Char('q')), false), Action::Quit);
        assert_eq!(
            action(&key(KeyCode::Char('s')), false),
            Action::Sort(Col::Sent)
        );
        assert_eq!(
            action(&key(KeyCode::Char('a')), false),
            Action::Sort(Col::Age)
        );
        assert_eq!(action(&key(KeyCode::Char('/')), false), Action::Filter);
        assert_eq!(action(&key(KeyCode::Tab), false), Action::NextView);
        assert_eq!(action(&key(KeyCode::Char('f')), false), Action::Freeze);
        assert_eq!(action(&key(KeyCode::Char('Z')), false), Action::Nothing);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(action(&ctrl_c, false), Action::Quit);
        assert_eq!(action(&ctrl_c, true), Action::Quit);
    }

    #[test]
    fn while_typing_letters_are_text() {
        assert_eq!(action(&key(KeyCode::Char('q')), true), Action::Type('q'));
        assert_eq!(action(&key(KeyCode::Char('5')), true), Action::Type('5'));
        assert_eq!(action(&key(KeyCode::Enter), true), Action::FilterDone);
        assert_eq!(action(&key(KeyCode::Esc), true), Action::FilterClear);
        assert_eq!(action(&key(KeyCode::Backspace), true), Action::Backspace);
    }
}
