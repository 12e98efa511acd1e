//! How `kiln` talks to its user: numbered steps, spinners on long steps
//! (only on a terminal), and quiet mode.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

pub struct Ui {
    pub quiet: bool,
}

impl Ui {
    /// Prints `[n/total] message` on stderr.
    pub fn step(&self, n: u32, total: u32, msg: &str) {
        if !self.quiet {
            eprintln!("[{n}/{total}] {msg}");
        }
    }

    /// A one-line note on stderr.
    pub fn note(&self, msg: &str) {
        if !self.quiet {
            eprintln!("kiln: {msg}");
        }
    }

    /// A spinner for a long step; hidden when quiet or when stderr is not a terminal.
    pub fn spinner(&self, msg: &str) -> ProgressBar {
        if self.quiet || !std::io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        let pb = ProgressBar::new_spinner();
        pb.set_style(ProgressStyle::with_template("      {spinner} {elapsed} {msg}").unwrap());
        pb.set_message(msg.to_string());
        pb.enable_steady_tick(Duration::from_millis(100));
        pb
    }
}
