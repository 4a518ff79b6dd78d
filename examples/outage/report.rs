//! Output: Markdown tables on stdout, CSV files, and an SVG chart.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;

use crate::contention;
use crate::sim::{Figures, Phase, Script, Second};
use crate::stacks::StackKind;

/// The per-phase table: success, latency, amplification, probes.
pub fn phase_table(figures: &[Figures]) -> String {
    let mut out = String::from(
        "| stack | phase | requests | success | p50 | p99 | downstream calls / request | probes |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for f in figures {
        for p in &f.phases {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.1}% | {} | {} | {:.2} | {} |",
                f.kind.name(),
                p.phase.name(),
                p.requests,
                p.success * 100.0,
                ms(p.p50),
                ms(p.p99),
                p.amplification,
                p.probes
            );
        }
    }
    out
}

/// The incident table: the hard outage and the recovery, per stack.
pub fn incident_table(figures: &[Figures]) -> String {
    let bare = figures
        .iter()
        .find(|f| f.kind == StackKind::Bare)
        .map(|f| f.outage_calls);
    let mut out = String::from(
        "| stack | calls to the dead downstream | vs bare | user calls after detection | \
         time to detect | time to recover (worst return) |\n| --- | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for f in figures {
        let vs_bare = match bare {
            Some(b) if b > 0 => format!("{:.1}%", f.outage_calls as f64 * 100.0 / b as f64),
            _ => "-".into(),
        };
        let after = f
            .user_calls_after_detect
            .map_or("-".into(), |n| n.to_string());
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            f.kind.name(),
            f.outage_calls,
            vs_bare,
            after,
            f.detect.map_or("-".into(), secs),
            f.recover.map_or("never".into(), secs),
        );
    }
    out
}

pub fn contention_table(rows: &[contention::Row]) -> String {
    let mut out = String::from(
        "| clients | jitter | calls | vs no jitter | time to completion |\n\
         | ---: | --- | ---: | ---: | ---: |\n",
    );
    for row in rows {
        let none = rows
            .iter()
            .find(|r| r.clients == row.clients && r.jitter == "none")
            .map_or(f64::NAN, |r| r.calls);
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.0}% | {} |",
            row.clients,
            row.jitter,
            row.calls,
            row.calls * 100.0 / none,
            secs(row.completion)
        );
    }
    out
}

pub fn phases_csv(figures: &[Figures]) -> String {
    let mut out = String::from(
        "stack,phase,requests,success,p50_ms,p99_ms,user_calls,probes,amplification,\
         outage_calls,detect_s,user_calls_after_detect,recover_s\n",
    );
    for f in figures {
        for p in &f.phases {
            let _ = writeln!(
                out,
                "{},{},{},{:.4},{:.3},{:.3},{},{},{:.4},{},{},{},{}",
                f.kind.name(),
                p.phase.name(),
                p.requests,
                p.success,
                p.p50.as_secs_f64() * 1e3,
                p.p99.as_secs_f64() * 1e3,
                p.user_calls,
                p.probes,
                p.amplification,
                f.outage_calls,
                f.detect
                    .map_or(String::new(), |d| format!("{:.3}", d.as_secs_f64())),
                f.user_calls_after_detect
                    .map_or(String::new(), |n| n.to_string()),
                f.recover
                    .map_or(String::new(), |d| format!("{:.3}", d.as_secs_f64())),
            );
        }
    }
    out
}

pub fn timeline_csv(timelines: &[(StackKind, Vec<Second>)]) -> String {
    let mut out = String::from("stack,second,requests,success,downstream_calls\n");
    for (kind, seconds) in timelines {
        for s in seconds {
            let _ = writeln!(
                out,
                "{},{},{},{:.4},{}",
                kind.name(),
                s.second,
                s.requests,
                s.success,
                s.downstream_calls
            );
        }
    }
    out
}

pub fn contention_csv(rows: &[contention::Row]) -> String {
    let mut out = String::from("clients,jitter,calls,completion_s\n");
    for r in rows {
        let _ = writeln!(
            out,
            "{},{},{:.1},{:.3}",
            r.clients,
            r.jitter,
            r.calls,
            r.completion.as_secs_f64()
        );
    }
    out
}

/// What a chart panel plots of each second.
type Value = fn(&Second) -> f64;

/// Two panels over time, one line per stack: client success rate, and calls reaching
/// the downstream per second; phases marked.
pub fn chart(
    path: &Path,
    script: &Script,
    timelines: &[(StackKind, Vec<Second>)],
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1200, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(450);
    let total = script.total().as_secs_f64();
    let max_calls = timelines
        .iter()
        .flat_map(|(_, s)| s.iter().map(|s| s.downstream_calls))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.1;
    let success: Value = |s| s.success * 100.0;
    let calls: Value = |s| s.downstream_calls as f64;
    let panels = [
        (&top, "client success rate (%)", 105.0, success),
        (
            &bottom,
            "calls reaching the downstream per second",
            max_calls,
            calls,
        ),
    ];
    for (area, title, y_max, value) in panels {
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..total, 0f64..y_max)?;
        chart
            .configure_mesh()
            .x_desc("time (s)")
            .light_line_style(WHITE)
            .draw()?;
        for phase in Phase::ALL {
            if script.length(phase).is_zero() {
                continue;
            }
            let at = script.start_of(phase).as_secs_f64();
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(at, 0.0), (at, y_max)],
                BLACK.mix(0.25),
            )))?;
            chart.draw_series(std::iter::once(Text::new(
                phase.name(),
                (at + total * 0.005, y_max * 0.97),
                ("sans-serif", 13),
            )))?;
        }
        for (i, (kind, seconds)) in timelines.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    seconds.iter().map(|s| (s.second as f64 + 0.5, value(s))),
                    color.stroke_width(2),
                ))?
                .label(kind.name())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

pub fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

pub fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}
