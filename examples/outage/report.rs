//! Output: Markdown tables on stdout, CSV files, and an SVG chart.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::contention;
use crate::fleet::FleetFigures;
use crate::sim::{Answer, Condition, Figures, Kind, Phase, Run, Script, Second};
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

// The chart: small multiples, one row per stack on a shared time axis, so no stack's
// line can hide another's; two columns, what users got and what the downstream got.

/// Dark colours, each at least 3.8:1 against white (no yellow). Past the last, the
/// colours come round again with dashed lines.
const COLOURS: [RGBColor; 8] = [
    RGBColor(0x00, 0x72, 0xB2), // blue
    RGBColor(0xD5, 0x5E, 0x00), // vermillion
    RGBColor(0x00, 0x7D, 0x5A), // green
    RGBColor(0xAA, 0x33, 0x77), // purple
    RGBColor(0x8C, 0x6D, 0x00), // ochre
    RGBColor(0x33, 0x22, 0x88), // indigo
    RGBColor(0x1F, 0x6F, 0x78), // teal
    RGBColor(0x88, 0x22, 0x55), // wine
];
/// Shading where the downstream refuses every call (the outage, each flap down).
const DOWN: RGBColor = RGBColor(0xF6, 0xD5, 0xD5);
/// Shading where it answers slowly (the brownout).
const BROWN: RGBColor = RGBColor(0xF3, 0xE6, 0xC8);

/// The requests users sent, under each stack's calls.
const LOAD: RGBAColor = RGBAColor(0, 0, 0, 0.55);

const WIDTH: i32 = 1600;
/// The stack names, left of the panels.
const NAMES: i32 = 195;
/// Title, column headings and phase names, above the first row.
const HEAD: i32 = 112;
const ROW: i32 = 118;
/// The time axis, under the last row.
const TIME_AXIS: i32 = 46;
/// The key, under everything.
const KEY: i32 = 64;
/// A panel's vertical axis: tick labels and its description.
const Y_AXIS: i32 = 64;
/// Each column: its vertical axis and its panels.
const COLUMN: i32 = (WIDTH - NAMES) / 2;

/// What the chart draws of one stack, per second of the script.
struct Lane {
    name: &'static str,
    colour: RGBColor,
    dashed: bool,
    /// Share of the user requests sent in each second that succeeded, in %; `None` in a
    /// second in which none was sent.
    success: Vec<Option<f64>>,
    /// User requests sent in each second.
    sent: Vec<usize>,
    /// User calls that reached the downstream in each second (probes not counted).
    user_calls: Vec<usize>,
    /// When each watchdog probe reached the downstream, in seconds.
    probes: Vec<f64>,
}

impl Lane {
    fn new(i: usize, run: &Run, total: Duration) -> Self {
        let seconds = total.as_secs_f64().ceil() as usize;
        let mut sent = vec![(0usize, 0usize); seconds];
        for r in run.requests.iter().filter(|r| r.sent < total) {
            if let Some((all, ok)) = sent.get_mut(r.sent.as_secs() as usize) {
                *all += 1;
                *ok += usize::from(r.answer == Answer::Ok);
            }
        }
        let mut user_calls = vec![0; seconds];
        let mut probes = Vec::new();
        for c in run.calls.iter().filter(|c| c.at < total) {
            if c.kind == Kind::Probe {
                probes.push(c.at.as_secs_f64());
            } else if let Some(n) = user_calls.get_mut(c.at.as_secs() as usize) {
                *n += 1;
            }
        }
        Self {
            name: run.kind.name(),
            colour: COLOURS[i % COLOURS.len()],
            dashed: i >= COLOURS.len(),
            success: sent
                .iter()
                .map(|&(all, ok)| (all > 0).then(|| ok as f64 * 100.0 / all as f64))
                .collect(),
            sent: sent.iter().map(|&(all, _)| all).collect(),
            user_calls,
            probes,
        }
    }
}

/// A panel's vertical axis: its range and its ticks (position, label).
struct Scale {
    range: std::ops::Range<f64>,
    ticks: Vec<(f64, String)>,
    desc: &'static str,
}

/// Calls a second on a log scale that has room for zero: `log10(1 + n)`.
fn log_calls(n: usize) -> f64 {
    (1.0 + n as f64).log10()
}

/// Where the probe ticks go on the calls scale: a strip under its zero line.
const PROBE_STRIP: (f64, f64) = (-0.62, -0.16);

type Panel<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// One row per stack (taken from `runs`, in their order), sharing the time axis: on the
/// left the share of user requests that succeeded each second, on the right the user
/// calls that reached the downstream each second (log scale) with a tick per watchdog
/// probe; the downstream's condition shaded and the phases named.
pub fn chart(path: &Path, script: &Script, runs: &[Run]) -> Result<(), Box<dyn std::error::Error>> {
    let total = script.total();
    let lanes: Vec<Lane> = runs
        .iter()
        .enumerate()
        .map(|(i, run)| Lane::new(i, run, total))
        .collect();
    let rows = i32::try_from(lanes.len().max(1))?;
    let height = HEAD + rows * ROW + TIME_AXIS + KEY;
    let root = SVGBackend::new(path, (WIDTH as u32, height as u32)).into_drawing_area();
    root.fill(&WHITE)?;

    let success = Scale {
        range: -7.0..107.0,
        ticks: [0, 50, 100].map(|p| (f64::from(p), p.to_string())).to_vec(),
        desc: "succeeded (%)",
    };
    let most = lanes
        .iter()
        .flat_map(|l| l.user_calls.iter().copied())
        .max()
        .unwrap_or(0);
    let top = log_calls(most).max(1.0) + 0.2;
    // No tick at 1: it would sit on the one at 0.
    let ticks = std::iter::once(0)
        .chain(std::iter::successors(Some(10usize), |n| n.checked_mul(10)))
        .take_while(|&n| log_calls(n) <= top)
        .map(|n| (log_calls(n), n.to_string()))
        .collect();
    let calls = Scale {
        range: PROBE_STRIP.0 - 0.08..top,
        ticks,
        desc: "calls / s (log)",
    };

    let shading = shading(script);
    let total = total.as_secs_f64();
    let title = ("sans-serif", 22).into_font().style(FontStyle::Bold);
    root.draw(&Text::new(
        "The incident, stack by stack: what users got, and what reached the downstream",
        (16, 12),
        title,
    ))?;

    let grid = root.margin(HEAD, KEY, 0, 0);
    let breaks: Vec<i32> = (1..rows).map(|r| r * ROW).collect();
    let row_areas = grid.split_by_breakpoints(Vec::<i32>::new(), breaks);
    for (r, (lane, row)) in lanes.iter().zip(&row_areas).enumerate() {
        let last = r + 1 == lanes.len();
        let parts = row.split_by_breakpoints([NAMES, NAMES + COLUMN], Vec::<i32>::new());
        let mut left = panel(&parts[1], &success, total, last, &shading, script)?;
        let mut right = panel(&parts[2], &calls, total, last, &shading, script)?;
        line(&mut left, lane, segments(&lane.success, total))?;
        let load = lane
            .sent
            .iter()
            .map(|&n| Some(log_calls(n)))
            .collect::<Vec<_>>();
        for points in segments(&load, total) {
            right.draw_series(DashedLineSeries::new(points, 5, 4, LOAD.stroke_width(1)))?;
        }
        let user = lane
            .user_calls
            .iter()
            .map(|&n| Some(log_calls(n)))
            .collect::<Vec<_>>();
        line(&mut right, lane, segments(&user, total))?;
        right.draw_series(lane.probes.iter().map(|&t| {
            PathElement::new(
                vec![(t, PROBE_STRIP.0), (t, PROBE_STRIP.1)],
                BLACK.stroke_width(1),
            )
        }))?;
        let (_, top_px) = left.backend_coord(&(0.0, success.range.end));
        let (_, bottom_px) = left.backend_coord(&(0.0, success.range.start));
        name(&root, lane, (top_px + bottom_px) / 2)?;
        if r == 0 {
            headings(&root, script, &left, &right)?;
        }
    }
    key(&root, height - KEY + 16)?;
    root.present()?;
    Ok(())
}

/// The stretches, in seconds, in which the downstream is down or slow, with their
/// shading (read from the script at each millisecond, so flaps come out too).
fn shading(script: &Script) -> Vec<(f64, f64, RGBColor)> {
    let step = Duration::from_millis(1);
    let steps = u32::try_from(script.total().as_millis()).unwrap_or(u32::MAX);
    let mut out: Vec<(f64, f64, RGBColor)> = Vec::new();
    for k in 0..steps {
        let t = step * k;
        let colour = match script.condition_at(t) {
            Condition::Down => DOWN,
            Condition::Brown => BROWN,
            Condition::Up => continue,
        };
        let (from, to) = (t.as_secs_f64(), (t + step).as_secs_f64());
        match out.last_mut() {
            Some(last) if last.2 == colour && (last.1 - from).abs() < 1e-9 => last.1 = to,
            _ => out.push((from, to, colour)),
        }
    }
    out
}

/// A panel: the downstream's condition shaded, the phases' starts marked, the mesh.
fn panel<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, Shift>,
    scale: &Scale,
    total: f64,
    last: bool,
    shading: &[(f64, f64, RGBColor)],
    script: &Script,
) -> Result<Panel<'a, 'b>, Box<dyn std::error::Error>> {
    let mut chart = ChartBuilder::on(area)
        .margin_top(6)
        .margin_bottom(6)
        .margin_right(18)
        .x_label_area_size(if last { TIME_AXIS } else { 0 })
        .y_label_area_size(Y_AXIS)
        .build_cartesian_2d(0f64..total, scale.range.clone())?;
    let (lo, hi) = (scale.range.start, scale.range.end);
    chart.draw_series(
        shading
            .iter()
            .map(|&(from, to, colour)| Rectangle::new([(from, lo), (to, hi)], colour.filled())),
    )?;
    let starts = Phase::ALL
        .into_iter()
        .skip(1)
        .filter(|&p| !script.length(p).is_zero())
        .map(|p| script.start_of(p).as_secs_f64());
    chart.draw_series(
        starts.map(|at| PathElement::new(vec![(at, lo), (at, hi)], BLACK.mix(0.5).stroke_width(1))),
    )?;
    let x_label = |x: &f64| {
        if x.fract() == 0.0 {
            format!("{x:.0}")
        } else {
            format!("{x:.1}")
        }
    };
    chart
        .configure_mesh()
        .x_labels(18)
        .x_label_formatter(&x_label)
        .y_labels(0)
        .x_desc("time since the incident began (s)")
        .y_desc(scale.desc)
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(TRANSPARENT)
        .axis_style(BLACK.mix(0.6))
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 13))
        .draw()?;
    // The vertical axis's ticks by hand: plotters picks evenly spaced ones.
    chart.draw_series(scale.ticks.iter().map(|&(y, _)| {
        PathElement::new(vec![(0.0, y), (total, y)], BLACK.mix(0.12).stroke_width(1))
    }))?;
    let font =
        TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
    let (left, top) = area.get_base_pixel();
    for (y, text) in &scale.ticks {
        let (x, y) = chart.backend_coord(&(0.0, *y));
        let (x, y) = (x - left, y - top);
        area.draw(&Text::new(text.as_str(), (x - 6, y), font.clone()))?;
        area.draw(&PathElement::new(vec![(x - 4, y), (x, y)], BLACK.mix(0.6)))?;
    }
    Ok(chart)
}

/// The points of one value a second as steps, each value held over its second (the
/// last one cut at `end`), broken where a second has none.
fn segments(values: &[Option<f64>], end: f64) -> Vec<Vec<(f64, f64)>> {
    let mut out = vec![Vec::new()];
    for (i, value) in values.iter().enumerate() {
        let from = i as f64;
        match (value, out.last_mut()) {
            (Some(v), Some(steps)) => steps.extend([(from, *v), ((from + 1.0).min(end), *v)]),
            (None, Some(steps)) if !steps.is_empty() => out.push(Vec::new()),
            _ => {}
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

fn line(
    chart: &mut Panel<'_, '_>,
    lane: &Lane,
    segments: Vec<Vec<(f64, f64)>>,
) -> Result<(), Box<dyn std::error::Error>> {
    let style = lane.colour.stroke_width(2);
    for points in segments {
        if lane.dashed {
            chart.draw_series(DashedLineSeries::new(points, 8, 4, style))?;
        } else {
            chart.draw_series(LineSeries::new(points, style))?;
        }
    }
    Ok(())
}

/// A stretch of a lane's line, as in the key.
fn swatch(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    lane: &Lane,
    (x, y): (i32, i32),
) -> Result<(), Box<dyn std::error::Error>> {
    let points = vec![(x, y), (x + 64, y)];
    let style = lane.colour.stroke_width(2);
    if lane.dashed {
        root.draw(&DashedPathElement::new(points, 8, 4, style))?;
    } else {
        root.draw(&PathElement::new(points, style))?;
    }
    Ok(())
}

/// The stack's name, left of its row, in its colour, over a stretch of its line.
fn name(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    lane: &Lane,
    middle: i32,
) -> Result<(), Box<dyn std::error::Error>> {
    let lines = wrap(lane.name, 21);
    let font = ("sans-serif", 16)
        .into_font()
        .style(FontStyle::Bold)
        .color(&lane.colour);
    let mut y = middle - (20 * i32::try_from(lines.len())? + 10) / 2;
    for text in lines {
        root.draw(&Text::new(text, (16, y), font.clone()))?;
        y += 20;
    }
    swatch(root, lane, (16, y + 6))
}

/// Breaks `text` between words into lines of at most `width` characters (a longer word
/// keeps its own line).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(line) if line.chars().count() + 1 + word.chars().count() <= width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines
}

/// Above the first row: each column's heading, and the phases' names over their spans.
fn headings<'a, 'b>(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    script: &Script,
    left: &Panel<'a, 'b>,
    right: &Panel<'a, 'b>,
) -> Result<(), Box<dyn std::error::Error>> {
    let centred = Pos::new(HPos::Center, VPos::Bottom);
    let heading =
        TextStyle::from(("sans-serif", 15).into_font().style(FontStyle::Bold)).pos(centred);
    let phase = ("sans-serif", 14)
        .into_font()
        .color(&BLACK.mix(0.75))
        .pos(centred);
    let columns = [
        (
            left,
            "User requests that succeeded (% of those sent each second)",
        ),
        (
            right,
            "User calls reaching the downstream per second (log scale); a tick per probe",
        ),
    ];
    let total = script.total().as_secs_f64();
    for (chart, text) in columns {
        let y = chart.backend_coord(&(0.0, chart.y_range().end)).1;
        let x0 = chart.backend_coord(&(0.0, 0.0)).0;
        let x1 = chart.backend_coord(&(total, 0.0)).0;
        root.draw(&Text::new(text, ((x0 + x1) / 2, y - 30), heading.clone()))?;
        for p in Phase::ALL
            .into_iter()
            .filter(|&p| !script.length(p).is_zero())
        {
            let mid = (script.start_of(p) + script.end_of(p)).as_secs_f64() / 2.0;
            let x = chart.backend_coord(&(mid, 0.0)).0;
            root.draw(&Text::new(p.name(), (x, y - 6), phase.clone()))?;
        }
    }
    Ok(())
}

/// A sample in the key.
#[derive(Clone, Copy)]
enum Sample {
    Shade(RGBColor),
    Load,
    Probes,
}

/// Under the time axis: what the shading, the dashed line and the ticks mean.
fn key(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    y: i32,
) -> Result<(), Box<dyn std::error::Error>> {
    let font =
        TextStyle::from(("sans-serif", 14).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    let rows: [[(Sample, &str); 2]; 2] = [
        [
            (
                Sample::Shade(DOWN),
                "downstream down: every call refused at once",
            ),
            (
                Sample::Shade(BROWN),
                "brownout: slow answers, many past the client's timeout",
            ),
        ],
        [
            (
                Sample::Load,
                "user requests sent per second (one call each, as with no retries)",
            ),
            (Sample::Probes, "a watchdog probe reaching the downstream"),
        ],
    ];
    // Two columns, lined up with the panels' plotting areas.
    for (row, items) in (0..).zip(rows) {
        let y = y + 22 * row;
        for ((sample, text), column) in items.into_iter().zip(0..) {
            let x = NAMES + column * COLUMN + Y_AXIS;
            match sample {
                Sample::Shade(colour) => {
                    root.draw(&Rectangle::new(
                        [(x, y - 8), (x + 28, y + 8)],
                        colour.filled(),
                    ))?;
                }
                Sample::Load => {
                    let points = vec![(x, y), (x + 28, y)];
                    root.draw(&DashedPathElement::new(points, 5, 4, LOAD.stroke_width(1)))?;
                }
                Sample::Probes => {
                    for dx in [3, 9, 14, 22, 26] {
                        let points = vec![(x + dx, y - 7), (x + dx, y + 7)];
                        root.draw(&PathElement::new(points, BLACK.stroke_width(1)))?;
                    }
                }
            }
            root.draw(&Text::new(text, (x + 38, y), font.clone()))?;
        }
    }
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

// --- the fleet --------------------------------------------------------------------------

fn maybe_secs(d: Option<Duration>) -> String {
    d.map_or_else(
        || "never".to_owned(),
        |d| format!("{:.1} s", d.as_secs_f64()),
    )
}

pub fn fleet_table(rows: &[FleetFigures]) -> String {
    let mut out = String::from(
        "| fault | cap | success during fault | user calls to bad endpoints \
         | after detection (of requests) | in the fault's 2nd half \
         | probes/s to bad, fleet (per process) | ejected after | rejoined after \
         | processes out, most |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {:.0}% | {:.2}% | {} | {} ({:.3}%) | {} | {:.1} ({:.2}) | {} | {} | {} |",
            r.fault.name(),
            r.max_ejected * 100.0,
            r.success_rate() * 100.0,
            r.to_bad,
            r.to_bad_after_detection,
            r.bad_share_after_detection() * 100.0,
            r.to_bad_late,
            r.probes_to_bad,
            r.probes_per_process,
            maybe_secs(r.detected),
            maybe_secs(r.rejoined),
            r.out_of_rotation,
        );
    }
    for r in rows
        .iter()
        .filter(|r| r.fault == crate::fleet::Fault::ClientNetwork)
    {
        let _ = writeln!(
            out,
            "\n{}: the orchestrator took the faulty process out {} after the fault began; \
             breakers opened meanwhile in the other processes: {}.",
            r.fault.name(),
            maybe_secs(r.faulty_out),
            r.healthy_trips
        );
    }
    out
}

/// One small chart: its axis description, its top, its points.
type Series<'a> = (&'a str, f64, Vec<(f64, f64)>);

/// The fleet's chart: one row per run, what users got (success per second) and how
/// many processes the orchestrator kept in rotation.
pub fn fleet_chart(
    path: &Path,
    rows: &[FleetFigures],
    fault: (f64, f64),
    processes: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    const ROW_H: i32 = 150;
    let n = i32::try_from(rows.len().max(1))?;
    let root = SVGBackend::new(path, (1_000, (60 + n * ROW_H) as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    root.draw(&Text::new(
        "The fleet, fault by fault: what users got, and the processes in rotation",
        (16, 12),
        ("sans-serif", 20).into_font().style(FontStyle::Bold),
    ))?;
    let grid = root.margin(40, 10, 0, 10);
    let areas = grid.split_evenly((rows.len().max(1), 2));
    for (i, r) in rows.iter().enumerate() {
        let end = r.timeline.len() as f64;
        let title = format!("{}, cap {:.0}%", r.fault.name(), r.max_ejected * 100.0);
        let panels: [Series; 2] = [
            (
                "succeeded (%)",
                105.0,
                r.timeline
                    .iter()
                    .enumerate()
                    .map(|(t, &(sent, ok, _))| {
                        (
                            t as f64 + 0.5,
                            if sent == 0 {
                                0.0
                            } else {
                                ok as f64 * 100.0 / sent as f64
                            },
                        )
                    })
                    .collect(),
            ),
            (
                "processes in rotation",
                processes as f64 * 1.05,
                r.timeline
                    .iter()
                    .enumerate()
                    .map(|(t, &(_, _, ready))| (t as f64 + 1.0, ready as f64))
                    .collect(),
            ),
        ];
        for (j, (desc, top, points)) in panels.into_iter().enumerate() {
            let mut chart = ChartBuilder::on(&areas[i * 2 + j])
                .caption(
                    if j == 0 { title.clone() } else { String::new() },
                    ("sans-serif", 14),
                )
                .margin(6)
                .x_label_area_size(22)
                .y_label_area_size(44)
                .build_cartesian_2d(0.0..end, 0.0..top)?;
            chart
                .configure_mesh()
                .x_desc("s")
                .y_desc(desc)
                .x_labels(8)
                .y_labels(4)
                .x_label_formatter(&|v| format!("{v:.0}"))
                .y_label_formatter(&|v| format!("{v:.0}"))
                .light_line_style(WHITE)
                .draw()?;
            chart.draw_series(std::iter::once(Rectangle::new(
                [(fault.0, 0.0), (fault.1, top)],
                RGBColor(0xEE, 0xEE, 0xEE).filled(),
            )))?;
            chart.draw_series(LineSeries::new(points, COLOURS[j].stroke_width(2)))?;
        }
    }
    root.present()?;
    Ok(())
}

pub fn fleet_csv(rows: &[FleetFigures]) -> String {
    let mut out = String::from(
        "fault,max_ejected,requests,succeeded,no_process,to_bad,to_bad_after_detection,\
         requests_after_detection,to_bad_late,probes_to_bad_per_s,probes_per_process_per_s,detected_s,\
         rejoined_s,most_out,faulty_out_s,healthy_trips\n",
    );
    let s = |d: Option<Duration>| d.map_or(String::new(), |d| format!("{:.1}", d.as_secs_f64()));
    for r in rows {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{:.2},{:.3},{},{},{},{},{}",
            r.fault.name(),
            r.max_ejected,
            r.requests,
            r.succeeded,
            r.no_process,
            r.to_bad,
            r.to_bad_after_detection,
            r.requests_after_detection,
            r.to_bad_late,
            r.probes_to_bad,
            r.probes_per_process,
            s(r.detected),
            s(r.rejoined),
            r.out_of_rotation,
            s(r.faulty_out),
            r.healthy_trips
        );
    }
    out
}
