//! What `up`, `down` and `restart` tell the user while they work: one live line per service on a
//! terminal (indicatif), plain timestamped lines otherwise, always on stderr.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Progress output for one command.
pub struct Progress {
    live: Option<MultiProgress>,
    bars: Mutex<BTreeMap<String, ProgressBar>>,
    quiet: bool,
    t0: Instant,
}

impl Progress {
    /// Live lines when stderr is a terminal (and `plain` is false), timestamped lines otherwise.
    pub fn new(plain: bool, quiet: bool) -> Progress {
        let live = (!plain && !quiet && std::io::stderr().is_terminal())
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)));
        Progress {
            live,
            bars: Mutex::new(BTreeMap::new()),
            quiet,
            t0: Instant::now(),
        }
    }

    /// Time since the command began.
    pub fn elapsed(&self) -> Duration {
        self.t0.elapsed()
    }

    fn bar(&self, svc: &str) -> Option<ProgressBar> {
        let live = self.live.as_ref()?;
        let mut bars = self.bars.lock().ok()?;
        Some(
            bars.entry(svc.to_string())
                .or_insert_with(|| {
                    let b = live.add(ProgressBar::new_spinner());
                    b.set_style(
                        ProgressStyle::with_template("{spinner} {prefix:<12} {msg} {elapsed:>4}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    b.set_prefix(svc.to_string());
                    b.enable_steady_tick(Duration::from_millis(100));
                    b
                })
                .clone(),
        )
    }

    fn plain(&self, svc: &str, text: &str) {
        if self.quiet {
            return;
        }
        let ts = humantime::format_rfc3339_millis(SystemTime::now());
        eprintln!("{ts} {svc}: {text}");
    }

    /// A phase in progress (waiting on X, starting, probing, stopping).
    pub fn phase(&self, svc: &str, text: &str) {
        match self.bar(svc) {
            Some(b) => b.set_message(text.to_string()),
            None => self.plain(svc, text),
        }
    }

    /// The service's work is over (healthy, skipped, stopped).
    pub fn done(&self, svc: &str, text: &str) {
        match self.bar(svc) {
            Some(b) => {
                b.set_style(
                    ProgressStyle::with_template("✓ {prefix:<12} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                b.finish_with_message(text.to_string());
            }
            None => self.plain(svc, text),
        }
    }

    /// The service failed.
    pub fn failed(&self, svc: &str, text: &str) {
        match self.bar(svc) {
            Some(b) => {
                b.set_style(
                    ProgressStyle::with_template("✗ {prefix:<12} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                b.abandon_with_message(text.to_string());
            }
            None => self.plain(svc, text),
        }
    }

    /// A message not tied to one service.
    pub fn note(&self, text: &str) {
        if self.quiet {
            return;
        }
        match &self.live {
            Some(m) => {
                let _ = m.println(text);
            }
            None => self.plain("stack", text),
        }
    }

    /// The closing line with the total time.
    pub fn summary(&self, text: &str) {
        if let Ok(bars) = self.bars.lock() {
            for b in bars.values() {
                if !b.is_finished() {
                    b.abandon();
                }
            }
        }
        if !self.quiet {
            eprintln!("{text} in {:.2}s", self.elapsed().as_secs_f64());
        }
    }
}
