//! The progress bar of long commands: on stderr, only when stderr is a terminal, so that the
//! output of a command in a script or a log holds results and errors only.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// A bar counting up to `total` events, with their rate and the time left.
pub fn events(total: u64) -> ProgressBar {
    let target = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    // The template is a constant; it parses, or the bar falls back to indicatif's default.
    if let Ok(style) = ProgressStyle::with_template(
        "{elapsed_precise} [{wide_bar}] {human_pos}/{human_len} events, {rate} events/s, ETA {eta} {msg}",
    ) {
        let rate = |state: &ProgressState, out: &mut dyn std::fmt::Write| {
            // A progress line that cannot be written is no reason to stop the work.
            let _ = write!(out, "{:.0}", state.per_sec());
        };
        bar.set_style(style.with_key("rate", rate).progress_chars("=> "));
    }
    bar
}
