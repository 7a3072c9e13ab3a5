//! Progress bars on stderr for what takes long: reading a model's pinned weights when it opens
//! (the library's [`LoadProgress`] callback) and writing a model with `mkmodel`. Drawn by
//! `indicatif` on stderr, which hides them when stderr is not a terminal, so piped and tested
//! output never carries them. A bar clears itself when dropped.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use flashstream::{EngineOptions, LoadProgress};

/// A byte-counting bar on stderr.
pub struct Bar(ProgressBar);

impl Bar {
    /// A bar for `total` bytes (0: set later by the load callback) labelled `what`.
    pub fn bytes(what: &str, total: u64) -> Bar {
        let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        ) {
            pb.set_style(style.progress_chars("=> "));
        }
        pb.set_message(what.to_string());
        Bar(pb)
    }

    /// `n` more bytes done.
    pub fn inc(&self, n: u64) {
        self.0.inc(n);
    }

    /// The library's load callback driving this bar (it never cancels).
    pub fn load_progress(&self) -> LoadProgress {
        let pb = self.0.clone();
        LoadProgress(std::sync::Arc::new(move |done, total| {
            if pb.length() != Some(total) {
                pb.set_length(total);
            }
            pb.set_position(done);
            true
        }))
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// `opts` with a bar for reading the pinned weights; keep the bar until the load returns.
pub fn loading(opts: EngineOptions) -> (EngineOptions, Bar) {
    let bar = Bar::bytes("loading weights", 0);
    let opts = EngineOptions {
        progress: Some(bar.load_progress()),
        ..opts
    };
    (opts, bar)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_callback_moves_the_bar_and_never_cancels() {
        let bar = Bar::bytes("test", 0);
        let cb = bar.load_progress();
        assert!((cb.0)(10, 100));
        assert_eq!(bar.0.length(), Some(100));
        assert_eq!(bar.0.position(), 10);
        assert!((cb.0)(50, 200));
        bar.inc(5);
        assert_eq!((bar.0.position(), bar.0.length()), (55, Some(200)));
        // Under `cargo test` stderr is captured or piped here: no drawing.
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            assert!(bar.0.is_hidden());
        }
    }
}
