//! The terminal while `top` runs: raw mode, alternate screen, hidden
//! cursor; and their undoing on every way out.
//!
//! Invariant: whatever ends the run (q, Ctrl-C as a key, SIGINT, SIGTERM
//! or SIGHUP from outside, an error, a panic), the terminal is given back
//! as it was: main screen, cursor shown, cooked mode. `Guard::drop`
//! restores on return and error; the panic hook restores before the panic
//! message is printed; the signals only set a flag the loop polls.

use std::{
    io::{self, Stdout},
    sync::atomic::{AtomicBool, Ordering},
};

use crossterm::{
    cursor::{Hide, Show},
    execute,
    terminal::{disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen},
};
use ratatui::{backend::CrosstermBackend, Terminal};

/// Set by SIGINT, SIGTERM or SIGHUP.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Whether a signal asked `top` to stop.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// The terminal, set up; restored when dropped.
pub struct Guard {
    pub terminal: Terminal<CrosstermBackend<Stdout>>,
}

/// Puts the terminal in full-screen mode.
pub fn enter() -> io::Result<Guard> {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        previous(info);
    }));
    enable_raw_mode()?;
    let guard_restores = Guard {
        terminal: Terminal::new(CrosstermBackend::new(io::stdout()))?,
    };
    execute!(io::stdout(), EnterAlternateScreen, Hide)?;
    Ok(guard_restores)
}

/// Main screen, cursor shown, cooked mode (each step tried whatever the
/// others did).
fn restore() {
    let _ = execute!(io::stdout(), LeaveAlternateScreen, Show);
    let _ = disable_raw_mode();
}

impl Drop for Guard {
    fn drop(&mut self) {
        restore();
    }
}
