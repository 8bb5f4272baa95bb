//! A progress bar for scans of the whole log, on stderr and only when stderr is a terminal.

use std::io::IsTerminal as _;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

const TEMPLATE: &str =
    "{msg:>10} [{bar:40}] {human_pos}/{human_len} events ({per_sec}, {eta} left)";

#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar labelled `what` ("verifying"), hidden when stderr is not a terminal.
    pub fn new(what: &'static str) -> Self {
        let bar = if std::io::stderr().is_terminal() {
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        if let Ok(style) = ProgressStyle::with_template(TEMPLATE) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what);
        Self { bar }
    }

    /// A counter without a known end, labelled `what` and counting `unit`s.
    pub fn counter(what: &'static str, unit: &'static str) -> Self {
        let progress = Self::new(what);
        let template = format!("{{msg:>10}} {{spinner}} {{human_pos}} {unit} ({{per_sec}})");
        if let Ok(style) = ProgressStyle::with_template(&template) {
            progress.bar.set_style(style);
        }
        progress
    }

    /// Sets a counter's count.
    pub fn set(&self, done: u64) {
        self.bar.set_position(done);
    }

    /// The store's progress callback: `done` events out of `total`.
    pub fn update(&self, done: u64, total: u64) {
        self.bar.set_length(total);
        self.bar.set_position(done);
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // On an error path the bar must not stay drawn over the message.
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_template_parses() {
        assert!(indicatif::ProgressStyle::with_template(super::TEMPLATE).is_ok());
    }
}
