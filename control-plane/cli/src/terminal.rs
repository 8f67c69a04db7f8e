//! The local terminal of `orca exec -t`: raw mode for the session's length,
//! and the window size to forward.

use std::os::fd::AsFd;

use rustix::termios::{self, OptionalActions, Termios};

/// Whether standard input is a terminal.
pub fn stdin_is_terminal() -> bool {
    termios::isatty(std::io::stdin())
}

/// The terminal's size as (columns, rows), from stdout or else stdin.
pub fn size() -> Option<(u32, u32)> {
    let of = |fd: std::os::fd::BorrowedFd<'_>| {
        termios::tcgetwinsize(fd)
            .ok()
            .filter(|w| w.ws_col > 0 && w.ws_row > 0)
            .map(|w| (u32::from(w.ws_col), u32::from(w.ws_row)))
    };
    of(std::io::stdout().as_fd()).or_else(|| of(std::io::stdin().as_fd()))
}

/// Standard input in raw mode (no echo, no line editing, no signals from keys:
/// Ctrl-C and Ctrl-D go to the remote terminal) until dropped.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Puts standard input in raw mode.
    pub fn enable() -> std::io::Result<Self> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin)?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(&stdin, OptionalActions::Now, &raw)?;
        Ok(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), OptionalActions::Now, &self.saved);
    }
}
