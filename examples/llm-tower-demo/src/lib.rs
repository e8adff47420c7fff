//! llm-tower's main demo, as a library: the same workload of LLM calls run
//! through a bare client and through the recommended stack, against a
//! chaotic provider, and a report of what each side got.
//!
//! - [`chaos`]: the embedded mock provider and its fault profile.
//! - [`workload`]: the calls, where they go, and [`run_side`].
//! - [`stack`]: the two clients, and the counters they feed.
//! - [`store`]: where the stack's limits and budget live (memory or Redis).
//! - [`report`]: per-side numbers, the table and the JSON.
//! - [`plot`]: the SVG chart of latency over time.
//!
//! The binary (`src/main.rs`) only parses flags and prints.

pub mod chaos;
pub mod plot;
pub mod report;
pub mod stack;
pub mod store;
pub mod workload;

use std::{
    io::IsTerminal,
    ops::Range,
    sync::{Arc, Mutex},
    time::Duration,
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use llm_tower::BoxError;
use llm_tower_mock::Rule;

pub use chaos::Chaos;
pub use report::{Report, SideReport};
pub use stack::Tuning;
pub use store::{DemoStore, StoreUrl};
pub use workload::{ApiFormat, Endpoint, Side, Workload, run_side};

/// What the calls are sent to.
#[derive(Clone, Debug)]
pub enum Target {
    /// A fresh embedded mock per side, with this chaos profile.
    Mock(Chaos),
    /// A real or compatible endpoint.
    Remote(Endpoint),
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct Options {
    /// The calls.
    pub workload: Workload,
    /// Where they go.
    pub target: Target,
    /// The sides to run, in order.
    pub sides: Vec<Side>,
    /// The stack's limits and retry policy.
    pub tuning: Tuning,
    /// Draw a progress bar on stderr (when it is a terminal).
    pub progress: bool,
}

/// Runs every side of `options` and reports.
pub async fn run(options: &Options) -> Result<Report, BoxError> {
    let w = &options.workload;
    let mut report = Report {
        target: match &options.target {
            Target::Mock(chaos) => chaos.describe(),
            Target::Remote(e) => e.describe(),
        },
        requests: w.requests,
        concurrency: w.concurrency,
        seed: w.seed,
        stream: if w.all_stream { "all" } else { "mix" }.to_owned(),
        store: options.tuning.store.describe(),
        bare: None,
        stack: None,
        changed_settings: options.tuning.changed_settings(),
    };
    for &side in &options.sides {
        let progress = progress_bar(options.progress);
        let side_report = match &options.target {
            Target::Remote(endpoint) => {
                run_side(side, w, endpoint, &options.tuning, &progress).await?
            }
            Target::Mock(chaos) => {
                run_mock_side(side, w, chaos, &options.tuning, &progress).await?
            }
        };
        progress.finish_and_clear();
        match side {
            Side::Bare => report.bare = Some(side_report),
            Side::Stack => report.stack = Some(side_report),
        }
    }
    Ok(report)
}

/// Runs one side against a fresh mock with `chaos`, opening its outage when
/// a third of the calls have started (unless its faults are off), and adds
/// the mock's journal to the report.
pub async fn run_mock_side(
    side: Side,
    workload: &Workload,
    chaos: &Chaos,
    tuning: &Tuning,
    progress: &ProgressBar,
) -> Result<SideReport, BoxError> {
    let mock = Arc::new(chaos.start().await?);
    let window: Arc<Mutex<Option<Range<Duration>>>> = Arc::default();
    let (m, win, length) = (mock.clone(), window.clone(), chaos.outage);
    let mut endpoint = Endpoint::mock(&mock);
    if let Some(format) = chaos.format {
        endpoint = endpoint.only(format);
    }
    if chaos.faults {
        endpoint = endpoint.with_trigger(workload.requests / 3, move || {
            let now = m.elapsed();
            if m.push_rule(Rule::outage(now..now + length)).is_ok() {
                *win.lock().unwrap_or_else(|e| e.into_inner()) = Some(now..now + length);
            }
        });
    }
    let offset = mock.elapsed();
    let report = run_side(side, workload, &endpoint, tuning, progress).await?;
    drop(endpoint);
    let mut report = report.with_journal(&mock.journal().entries(), offset);
    report.outage = window
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .map(|w| w.start.saturating_sub(offset)..w.end.saturating_sub(offset));
    Ok(report)
}

/// A progress bar on stderr, hidden unless `show` and stderr is a terminal.
pub fn progress_bar(show: bool) -> ProgressBar {
    if !show || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>5} [{bar:32.cyan/blue}] {pos:>4}/{len:4} {msg}  {elapsed}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}
