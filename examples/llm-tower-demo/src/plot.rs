//! An SVG chart of per-call latency over time, one panel per side, with the
//! mock's faults and outage marked (and breaker states, once there is a
//! breaker). Written by hand: no plotting crate.

use std::{fmt::Write as _, time::Duration};

use crate::report::{Report, SideReport};

const WIDTH: f64 = 960.0;
const PANEL: f64 = 300.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 44.0;
/// The strip under each panel where faults are marked.
const RUG: f64 = 14.0;

/// Colour of each fault the mock injects.
fn fault_colour(fault: &str) -> &'static str {
    match fault {
        "rate_limited" | "quota" => "#e6a100",
        "status_500" => "#8c564b",
        "status_503" | "overloaded" => "#d62728",
        "slow_first_token" | "slow_first_byte" | "stall" => "#9467bd",
        "drop" | "truncate" => "#1f77b4",
        "error_event" | "malformed" => "#e377c2",
        _ => "#7f7f7f",
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The chart of `report` as an SVG document.
pub fn render(report: &Report) -> String {
    let sides = report.sides();
    let height = TOP + sides.len() as f64 * (PANEL + BOTTOM + TOP) + 10.0;
    // One time axis (call starts and faults) and one latency axis for every
    // panel, so they compare.
    let t_max = sides
        .iter()
        .flat_map(|s| {
            s.records
                .iter()
                .map(|r| r.start)
                .chain(s.fault_marks.iter().map(|m| m.at))
        })
        .max()
        .unwrap_or(Duration::from_secs(1))
        .as_secs_f64()
        .max(0.001)
        * 1.02;
    let lat_max_ms = sides
        .iter()
        .flat_map(|s| s.records.iter().map(|r| r.latency.as_secs_f64() * 1000.0))
        .fold(10.0_f64, f64::max);
    let decades = (1.0_f64, lat_max_ms.log10().ceil().max(2.0));

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="20" font-size="14" font-weight="bold">{}</text>"#,
        escape(&format!(
            "llm-tower demo: latency per call over time ({} calls, concurrency {}, seed {}, {})",
            report.requests, report.concurrency, report.seed, report.target
        ))
    );
    for (i, side) in sides.iter().enumerate() {
        let top = TOP + i as f64 * (PANEL + BOTTOM + TOP) + 10.0;
        panel(&mut svg, side, top, t_max, decades);
    }
    svg.push_str("</svg>\n");
    svg
}

fn panel(svg: &mut String, side: &SideReport, top: f64, t_max: f64, (lo, hi): (f64, f64)) {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = PANEL - RUG;
    let x = |t: f64| LEFT + t / t_max * plot_w;
    let y = |ms: f64| {
        let v = ms.max(10f64.powf(lo)).log10();
        top + plot_h - (v - lo) / (hi - lo) * plot_h
    };
    let bottom = top + plot_h;

    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="{:.1}" font-weight="bold">{} — {}/{} calls succeeded ({:.1}%), {} attempts, p99 {:.0} ms</text>"#,
        top - 8.0,
        side.side,
        side.succeeded,
        side.calls,
        side.success_rate,
        side.attempts,
        side.latency_ms.p99
    );
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{top:.1}" width="{plot_w:.1}" height="{PANEL}" fill="#fafafa" stroke="#ccc"/>"##
    );
    // The outage window.
    if let Some(w) = &side.outage {
        let (x0, x1) = (x(w.start.as_secs_f64()), x(w.end.as_secs_f64()));
        let _ = writeln!(
            svg,
            r##"<rect x="{x0:.1}" y="{top:.1}" width="{:.1}" height="{PANEL}" fill="#d62728" fill-opacity="0.10"/><text x="{:.1}" y="{:.1}" fill="#d62728" font-size="11">outage</text>"##,
            (x1 - x0).max(1.0),
            x0 + 3.0,
            top + 13.0
        );
    }
    // Breaker states, when the stack has a breaker.
    match &side.breaker {
        Some(states) => {
            for (j, (at, state)) in states.iter().enumerate() {
                let end = states
                    .get(j + 1)
                    .map_or(t_max, |(next, _)| next.as_secs_f64());
                let colour = match state.as_str() {
                    "open" => "#d62728",
                    "half_open" | "half-open" => "#e6a100",
                    _ => "#2a9d4b",
                };
                let (x0, x1) = (x(at.as_secs_f64()), x(end));
                let _ = writeln!(
                    svg,
                    r#"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="4" fill="{colour}"><title>breaker {}</title></rect>"#,
                    top + 1.0,
                    (x1 - x0).max(1.0),
                    escape(state)
                );
            }
        }
        None => {
            let _ = writeln!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" fill="#888" font-size="11" text-anchor="end">breaker: n/a</text>"##,
                LEFT + plot_w - 4.0,
                top + 13.0
            );
        }
    }
    // Latency grid, one line per decade.
    let mut d = lo as i32;
    while d as f64 <= hi {
        let ms = 10f64.powi(d);
        let gy = y(ms);
        let label = if ms >= 1000.0 {
            format!("{} s", ms / 1000.0)
        } else {
            format!("{ms} ms")
        };
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{gy:.1}" x2="{:.1}" y2="{gy:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#555">{label}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            gy + 4.0
        );
        d += 1;
    }
    // Time ticks.
    let step = nice_step(t_max);
    let mut t = 0.0;
    while t <= t_max + 1e-9 {
        let tx = x(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{tx:.1}" y1="{:.1}" x2="{tx:.1}" y2="{:.1}" stroke="#999"/><text x="{tx:.1}" y="{:.1}" text-anchor="middle" fill="#555">{}</text>"##,
            top + PANEL,
            top + PANEL + 4.0,
            top + PANEL + 17.0,
            fmt_secs(t)
        );
        t += step;
    }
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555">time since the side started (call start) — faults injected marked below the line</text>"##,
        LEFT + plot_w / 2.0,
        top + PANEL + 34.0
    );
    let _ = writeln!(
        svg,
        r##"<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle" fill="#555">latency per call (log)</text>"##,
        top + plot_h / 2.0
    );
    // The fault rug.
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{bottom:.1}" x2="{:.1}" y2="{bottom:.1}" stroke="#ccc"/>"##,
        LEFT + plot_w
    );
    for m in &side.fault_marks {
        let fx = x(m.at.as_secs_f64().min(t_max));
        let _ = writeln!(
            svg,
            r#"<line x1="{fx:.1}" y1="{:.1}" x2="{fx:.1}" y2="{:.1}" stroke="{}" stroke-width="1.5"><title>{}</title></line>"#,
            bottom + 2.0,
            bottom + RUG - 2.0,
            fault_colour(&m.fault),
            escape(&m.fault)
        );
    }
    // The calls.
    for r in &side.records {
        let cx = x(r.start.as_secs_f64());
        let cy = y(r.latency.as_secs_f64() * 1000.0);
        let title = format!(
            "call {} {} {}: {:.0} ms, {} attempt(s){}",
            r.index,
            r.format,
            if r.stream { "stream" } else { "json" },
            r.latency.as_secs_f64() * 1000.0,
            r.attempts,
            if r.budget_refused {
                ", refused by the budget".to_owned()
            } else {
                r.failure
                    .as_deref()
                    .map_or_else(String::new, |f| format!(", failed: {f}"))
            }
        );
        if r.ok() {
            let fill = if r.attempts > 1 { "#e6a100" } else { "#2a9d4b" };
            let _ = writeln!(
                svg,
                r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="3" fill="{fill}" fill-opacity="0.8"><title>{}</title></circle>"#,
                escape(&title)
            );
        } else {
            let _ = writeln!(
                svg,
                r##"<path d="M{:.1} {:.1}l7 7m0 -7l-7 7" stroke="{}" stroke-width="2"><title>{}</title></path>"##,
                cx - 3.5,
                cy - 3.5,
                // A call the budget refused is not the provider's failure.
                if r.budget_refused {
                    "#888888"
                } else {
                    "#d62728"
                },
                escape(&title)
            );
        }
    }
    legend(svg, side, top);
}

fn legend(svg: &mut String, side: &SideReport, top: f64) {
    let lx = WIDTH - RIGHT + 12.0;
    let mut ly = top + 12.0;
    let item = |svg: &mut String, mark: String, text: &str, ly: &mut f64| {
        let _ = writeln!(
            svg,
            r##"{mark}<text x="{:.1}" y="{:.1}" fill="#333" font-size="11">{}</text>"##,
            lx + 14.0,
            *ly + 4.0,
            escape(text)
        );
        *ly += 16.0;
    };
    item(
        svg,
        format!(
            r##"<circle cx="{:.1}" cy="{ly:.1}" r="3" fill="#2a9d4b"/>"##,
            lx + 4.0
        ),
        "ok, first attempt",
        &mut ly,
    );
    item(
        svg,
        format!(
            r##"<circle cx="{:.1}" cy="{ly:.1}" r="3" fill="#e6a100"/>"##,
            lx + 4.0
        ),
        "ok after retries",
        &mut ly,
    );
    item(
        svg,
        format!(
            r##"<path d="M{:.1} {:.1}l7 7m0 -7l-7 7" stroke="#d62728" stroke-width="2"/>"##,
            lx + 0.5,
            ly - 3.5
        ),
        "failed",
        &mut ly,
    );
    let mut faults: Vec<&str> = side.fault_marks.iter().map(|m| m.fault.as_str()).collect();
    faults.sort_unstable();
    faults.dedup();
    if !faults.is_empty() {
        ly += 6.0;
        item(svg, String::new(), "faults (rug):", &mut ly);
        for f in faults {
            let colour = fault_colour(f);
            item(
                svg,
                format!(
                    r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{colour}" stroke-width="2"/>"#,
                    lx + 4.0,
                    ly - 5.0,
                    lx + 4.0,
                    ly + 5.0
                ),
                f,
                &mut ly,
            );
        }
    }
}

/// A round tick step giving about eight ticks over `span` seconds.
fn nice_step(span: f64) -> f64 {
    let raw = span / 8.0;
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

fn fmt_secs(t: f64) -> String {
    if t == 0.0 {
        "0".to_owned()
    } else if t >= 1.0 && t.fract().abs() < 1e-9 {
        format!("{t:.0} s")
    } else {
        format!("{t:.1} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_steps_are_round() {
        assert_eq!(nice_step(8.0), 1.0);
        assert_eq!(nice_step(15.0), 2.0);
        assert_eq!(nice_step(0.7), 0.1);
        assert_eq!(fmt_secs(2.0), "2 s");
        assert_eq!(fmt_secs(0.5), "0.5 s");
    }
}
