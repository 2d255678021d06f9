//! The human-readable outcome of a run: `results.json` (the [`CheckResult`]) and `report.html`,
//! one self-contained page (inline SVG, no scripts, no network) with latency over time against
//! the nemesis schedule, availability per second and the anomalies found.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::checker::{CheckResult, FATAL_KINDS};
use crate::history::{History, OpF, OpKind};

/// A period during which one fault was active, on the history's clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NemesisInterval {
    pub name: String,
    pub start_ns: u64,
    /// A value below `start_ns` (e.g. 0) means the fault was never healed: it lasts to the end.
    pub end_ns: u64,
}

/// Writes `results.json` and `report.html` into `dir`, creating it if needed.
pub fn write_report(
    dir: &Path,
    history: &History,
    result: &CheckResult,
    nemesis: &[NemesisInterval],
) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = serde_json::to_vec_pretty(result)?;
    let path = dir.join("results.json");
    fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    let path = dir.join("report.html");
    fs::write(&path, render_html(history, result, nemesis))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Examples per kind shown in the HTML table; results.json has the rest.
const TABLE_EXAMPLES: usize = 5;

const WIDTH: f64 = 1100.0;
const MARGIN_LEFT: f64 = 70.0;
/// Room for the legend.
const MARGIN_RIGHT: f64 = 190.0;
const MARGIN_TOP: f64 = 20.0;
const MARGIN_BOTTOM: f64 = 45.0;
const PLOT_W: f64 = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
const LATENCY_H: f64 = 440.0;
const AVAIL_H: f64 = 200.0;

const OK_COLOR: &str = "#2ca02c";
const FAIL_COLOR: &str = "#d62728";
const INFO_COLOR: &str = "#ff7f0e";
const NEMESIS_COLORS: [&str; 6] = [
    "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
];

struct Series {
    f: OpF,
    kind: OpKind,
    color: &'static str,
    label: &'static str,
}

/// Drawn in this order, so the rare failures end up on top of the many successes.
const SERIES: [Series; 6] = [
    Series {
        f: OpF::Send,
        kind: OpKind::Ok,
        color: "#1f77b4",
        label: "send ok",
    },
    Series {
        f: OpF::Poll,
        kind: OpKind::Ok,
        color: "#2ca02c",
        label: "poll ok",
    },
    Series {
        f: OpF::Send,
        kind: OpKind::Info,
        color: "#ff7f0e",
        label: "send info",
    },
    Series {
        f: OpF::Poll,
        kind: OpKind::Info,
        color: "#bcbd22",
        label: "poll info",
    },
    Series {
        f: OpF::Send,
        kind: OpKind::Fail,
        color: "#d62728",
        label: "send fail",
    },
    Series {
        f: OpF::Poll,
        kind: OpKind::Fail,
        color: "#9467bd",
        label: "poll fail",
    },
];

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A round tick step (1, 2 or 5 times a power of ten) giving about `target` ticks over `span`.
fn nice_step(span: f64, target: f64) -> f64 {
    let raw = (span / target).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let m = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

fn decimals_for(step: f64) -> usize {
    if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    }
}

/// Maps test time to the shared x axis of both charts.
struct TimeAxis {
    end_ns: f64,
}

impl TimeAxis {
    fn x(&self, t_ns: u64) -> f64 {
        MARGIN_LEFT + (t_ns as f64 / self.end_ns).min(1.0) * PLOT_W
    }

    fn draw(&self, svg: &mut String, plot_bottom: f64, plot_top: f64) {
        let span_s = self.end_ns / 1e9;
        let step = nice_step(span_s, 10.0);
        let dec = decimals_for(step);
        let mut s = 0.0;
        while s <= span_s + step * 1e-9 {
            let x = MARGIN_LEFT + s / span_s * PLOT_W;
            let _ = write!(
                svg,
                r##"<line x1="{x:.1}" y1="{plot_top:.1}" x2="{x:.1}" y2="{plot_bottom:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" class="tick">{s:.dec$}</text>"##,
                plot_bottom + 16.0
            );
            s += step;
        }
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" class="axis">time (s)</text>"#,
            MARGIN_LEFT + PLOT_W / 2.0,
            plot_bottom + 36.0
        );
    }
}

fn nemesis_colors(nemesis: &[NemesisInterval]) -> Vec<(&str, &'static str)> {
    let mut names: Vec<(&str, &'static str)> = Vec::new();
    for n in nemesis {
        if !names.iter().any(|(name, _)| *name == n.name) {
            names.push((&n.name, NEMESIS_COLORS[names.len() % NEMESIS_COLORS.len()]));
        }
    }
    names
}

fn draw_nemesis(
    svg: &mut String,
    axis: &TimeAxis,
    nemesis: &[NemesisInterval],
    top: f64,
    height: f64,
    labels: bool,
) {
    let colors = nemesis_colors(nemesis);
    for n in nemesis {
        let lane = colors
            .iter()
            .position(|(name, _)| *name == n.name)
            .unwrap_or(0);
        let color = colors[lane].1;
        let end = if n.end_ns < n.start_ns {
            axis.end_ns as u64
        } else {
            n.end_ns
        };
        let x0 = axis.x(n.start_ns);
        let w = (axis.x(end) - x0).max(1.0);
        let _ = write!(
            svg,
            r#"<rect x="{x0:.1}" y="{top:.1}" width="{w:.1}" height="{height:.1}" fill="{color}" fill-opacity="0.15"><title>{} {:.3}s to {:.3}s</title></rect>"#,
            esc(&n.name),
            n.start_ns as f64 / 1e9,
            end as f64 / 1e9
        );
        if labels {
            let _ = write!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" class="nem" fill="{color}">{}</text>"#,
                x0 + 2.0,
                top + 12.0 + 12.0 * (lane % 4) as f64,
                esc(&n.name)
            );
        }
    }
}

fn latency_svg(history: &History, axis: &TimeAxis, nemesis: &[NemesisInterval]) -> String {
    let ops = history.ops();
    // (series, completion time, latency in ms)
    let mut points: Vec<(usize, u64, f64)> = Vec::new();
    for pair in history.pairs() {
        let Some(c) = pair.completion else { continue };
        let (inv, comp) = (&ops[pair.invoke], &ops[c]);
        let Some(series) = SERIES
            .iter()
            .position(|s| s.f == inv.f && s.kind == comp.kind)
        else {
            continue;
        };
        let ms = comp.time_ns.saturating_sub(inv.time_ns) as f64 / 1e6;
        points.push((series, comp.time_ns, ms.max(1e-3)));
    }
    let (mut lo, mut hi) = points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.2), hi.max(p.2))
        });
    if points.is_empty() {
        (lo, hi) = (0.1, 1000.0);
    }
    let lo = lo.log10().floor();
    let hi = hi.log10().ceil().max(lo + 1.0);
    let plot_h = LATENCY_H - MARGIN_TOP - MARGIN_BOTTOM;
    let bottom = MARGIN_TOP + plot_h;
    let y = |ms: f64| bottom - (ms.log10() - lo) / (hi - lo) * plot_h;

    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{LATENCY_H}" viewBox="0 0 {WIDTH} {LATENCY_H}">"#
    );
    draw_nemesis(&mut svg, axis, nemesis, MARGIN_TOP, plot_h, true);
    let mut decade = lo;
    while decade <= hi {
        let ms = 10f64.powf(decade);
        let yy = y(ms);
        let label = if ms >= 1.0 {
            format!("{ms:.0}")
        } else {
            format!("{ms}")
        };
        let _ = write!(
            svg,
            r##"<line x1="{MARGIN_LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end" class="tick">{label}</text>"##,
            MARGIN_LEFT + PLOT_W,
            MARGIN_LEFT - 6.0,
            yy + 4.0
        );
        decade += 1.0;
    }
    axis.draw(&mut svg, bottom, MARGIN_TOP);
    let _ = write!(
        svg,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle" class="axis">latency (ms, log)</text>"#,
        MARGIN_TOP + plot_h / 2.0
    );

    // One mark per pixel per series: the picture is the same and a million ops stay a few MB.
    for (i, s) in SERIES.iter().enumerate() {
        let mut seen: HashSet<(i32, i32)> = HashSet::new();
        let _ = write!(svg, r#"<g fill="{}" fill-opacity="0.7">"#, s.color);
        for &(_, t, ms) in points.iter().filter(|p| p.0 == i) {
            let (px, py) = (axis.x(t), y(ms));
            if !seen.insert((px.round() as i32, py.round() as i32)) {
                continue;
            }
            if s.f == OpF::Send {
                let _ = write!(svg, r#"<circle cx="{px:.1}" cy="{py:.1}" r="1.8"/>"#);
            } else {
                let _ = write!(
                    svg,
                    r#"<rect x="{:.1}" y="{:.1}" width="3" height="3"/>"#,
                    px - 1.5,
                    py - 1.5
                );
            }
        }
        svg.push_str("</g>");
    }
    let _ = write!(
        svg,
        r##"<rect x="{MARGIN_LEFT}" y="{MARGIN_TOP}" width="{PLOT_W}" height="{plot_h:.1}" fill="none" stroke="#999"/>"##
    );

    let lx = MARGIN_LEFT + PLOT_W + 15.0;
    let mut ly = MARGIN_TOP + 10.0;
    for s in &SERIES {
        let n = points
            .iter()
            .filter(|p| SERIES[p.0].label == s.label)
            .count();
        if s.f == OpF::Send {
            let _ = write!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{}"/>"#,
                lx + 4.0,
                ly,
                s.color
            );
        } else {
            let _ = write!(
                svg,
                r#"<rect x="{lx:.1}" y="{:.1}" width="8" height="8" fill="{}"/>"#,
                ly - 4.0,
                s.color
            );
        }
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" class="tick">{} ({n})</text>"#,
            lx + 14.0,
            ly + 4.0,
            s.label
        );
        ly += 18.0;
    }
    ly += 10.0;
    for (name, color) in nemesis_colors(nemesis) {
        let _ = write!(
            svg,
            r#"<rect x="{lx:.1}" y="{:.1}" width="10" height="10" fill="{color}" fill-opacity="0.4"/><text x="{:.1}" y="{:.1}" class="tick">{}</text>"#,
            ly - 5.0,
            lx + 14.0,
            ly + 4.0,
            esc(name)
        );
        ly += 18.0;
    }
    svg.push_str("</svg>");
    svg
}

fn availability_svg(result: &CheckResult, axis: &TimeAxis, nemesis: &[NemesisInterval]) -> String {
    let plot_h = AVAIL_H - MARGIN_TOP - MARGIN_BOTTOM;
    let bottom = MARGIN_TOP + plot_h;
    let max = result
        .availability
        .iter()
        .map(|b| b.ok + b.fail + b.info)
        .max()
        .unwrap_or(0)
        .max(1);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{AVAIL_H}" viewBox="0 0 {WIDTH} {AVAIL_H}">"#
    );
    draw_nemesis(&mut svg, axis, nemesis, MARGIN_TOP, plot_h, false);
    axis.draw(&mut svg, bottom, MARGIN_TOP);
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="end" class="tick">{max}</text><text x="{:.1}" y="{bottom:.1}" text-anchor="end" class="tick">0</text>"#,
        MARGIN_LEFT - 6.0,
        MARGIN_TOP + 4.0,
        MARGIN_LEFT - 6.0
    );
    let _ = write!(
        svg,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle" class="axis">ops / s</text>"#,
        MARGIN_TOP + plot_h / 2.0
    );
    for b in &result.availability {
        let x0 = axis.x(b.second * 1_000_000_000);
        let w = (axis.x((b.second + 1) * 1_000_000_000) - x0).max(0.5);
        let mut y = bottom;
        for (n, color) in [(b.ok, OK_COLOR), (b.fail, FAIL_COLOR), (b.info, INFO_COLOR)] {
            if n == 0 {
                continue;
            }
            let h = n as f64 / max as f64 * plot_h;
            y -= h;
            let _ = write!(
                svg,
                r#"<rect x="{x0:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="{color}"><title>{}s: {n}</title></rect>"#,
                b.second
            );
        }
    }
    let _ = write!(
        svg,
        r##"<rect x="{MARGIN_LEFT}" y="{MARGIN_TOP}" width="{PLOT_W}" height="{plot_h:.1}" fill="none" stroke="#999"/>"##
    );
    let lx = MARGIN_LEFT + PLOT_W + 15.0;
    for (i, (label, color)) in [("ok", OK_COLOR), ("fail", FAIL_COLOR), ("info", INFO_COLOR)]
        .iter()
        .enumerate()
    {
        let ly = MARGIN_TOP + 10.0 + 18.0 * i as f64;
        let _ = write!(
            svg,
            r#"<rect x="{lx:.1}" y="{:.1}" width="10" height="10" fill="{color}"/><text x="{:.1}" y="{:.1}" class="tick">{label}</text>"#,
            ly - 5.0,
            lx + 14.0,
            ly + 4.0
        );
    }
    svg.push_str("</svg>");
    svg
}

fn examples_cell(examples: Option<&serde_json::Value>) -> String {
    let Some(list) = examples.and_then(|v| v.as_array()) else {
        return String::new();
    };
    list.iter()
        .take(TABLE_EXAMPLES)
        .map(|e| format!("<code>{}</code>", esc(&e.to_string())))
        .collect::<Vec<_>>()
        .join("<br>")
}

/// The report page as a string.
pub fn render_html(history: &History, result: &CheckResult, nemesis: &[NemesisInterval]) -> String {
    let end_ns = history
        .ops()
        .iter()
        .map(|o| o.time_ns)
        .chain(nemesis.iter().flat_map(|n| [n.start_ns, n.end_ns]))
        .max()
        .unwrap_or(0)
        .max(1_000_000_000);
    let axis = TimeAxis {
        end_ns: end_ns as f64,
    };

    let mut h = String::new();
    h.push_str(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>raftlog Jepsen report</title>
<style>
body { font-family: sans-serif; margin: 20px; color: #222; }
table { border-collapse: collapse; margin: 8px 0 20px; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
code { font-size: 12px; }
.valid { color: #2ca02c; } .invalid { color: #d62728; }
.tick { font-size: 11px; fill: #444; } .axis { font-size: 12px; fill: #222; } .nem { font-size: 11px; }
.zero { color: #999; }
</style></head><body>
<h1>raftlog Jepsen report</h1>
"#,
    );
    if result.valid {
        h.push_str(r#"<h2 class="valid">Valid: no anomalies found</h2>"#);
    } else {
        let _ = write!(
            h,
            r#"<h2 class="invalid">Invalid: {}</h2>"#,
            esc(&result.anomaly_types.join(", "))
        );
    }
    let _ = write!(
        h,
        "<p>{} ops over {:.1} s; {} nemesis intervals.</p>",
        history.len(),
        end_ns as f64 / 1e9,
        nemesis.len()
    );

    h.push_str(
        "<h3>Operations</h3><table><tr><th>f</th><th>ok</th><th>fail</th><th>info</th></tr>",
    );
    for (f, c) in &result.op_counts {
        let _ = write!(
            h,
            "<tr><td>{f}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            c.ok, c.fail, c.info
        );
    }
    h.push_str("</table>");

    h.push_str("<h3>Latency of send and poll</h3>");
    h.push_str(&latency_svg(history, &axis, nemesis));
    h.push_str("<h3>Completions per second</h3>");
    h.push_str(&availability_svg(result, &axis, nemesis));

    h.push_str(
        "<h3>Anomalies</h3><table><tr><th>kind</th><th>count</th><th>first examples</th></tr>",
    );
    let anomalies = serde_json::to_value(&result.anomalies).unwrap_or_default();
    for (kind, count) in result.anomalies.counts() {
        debug_assert!(FATAL_KINDS.contains(&kind));
        let class = if count == 0 { r#" class="zero""# } else { "" };
        let _ = write!(
            h,
            "<tr{class}><td>{kind}</td><td>{count}</td><td>{}</td></tr>",
            examples_cell(anomalies.get(kind).and_then(|k| k.get("examples")))
        );
    }
    let unseen = serde_json::to_value(&result.unseen).unwrap_or_default();
    let _ = write!(
        h,
        r#"<tr class="zero"><td>unseen (informational)</td><td>{}</td><td>{}</td></tr>"#,
        result.unseen.count,
        examples_cell(unseen.get("examples"))
    );
    let landed = &result.landed_unknowns;
    let _ = write!(
        h,
        r#"<tr class="zero"><td>unknown outcomes that took effect (informational)</td><td>{}</td><td>latest {} ms after its invocation (bound {} ms); {} never took effect</td></tr>"#,
        landed.count, landed.max_late_ms, landed.bound_ms, landed.never_landed
    );
    h.push_str("</table>");

    if !result.node_logs.is_empty() {
        let _ = write!(
            h,
            "<h3>Node logs</h3><table><tr><th>node</th><th>lines</th><th>busiest second</th>\
             <th>lines in it (at most {})</th></tr>",
            crate::logs::LINES_PER_SECOND_MAX
        );
        for r in &result.node_logs {
            let class = if r.busiest_second_lines > crate::logs::LINES_PER_SECOND_MAX {
                r#" class="invalid""#
            } else {
                ""
            };
            let _ = write!(
                h,
                "<tr{class}><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                r.node,
                r.lines,
                esc(&r.busiest_second),
                r.busiest_second_lines
            );
        }
        h.push_str("</table>");
    }

    if !result.history_errors.is_empty() {
        h.push_str(
            "<h3 class=\"invalid\">History errors (harness bug: verdict unreliable)</h3><ul>",
        );
        for e in result.history_errors.iter().take(20) {
            let _ = write!(h, "<li><code>{}</code></li>", esc(e));
        }
        h.push_str("</ul>");
    }

    if !nemesis.is_empty() {
        h.push_str(
            "<h3>Nemesis</h3><table><tr><th>name</th><th>start (s)</th><th>end (s)</th></tr>",
        );
        for n in nemesis {
            let end = if n.end_ns < n.start_ns {
                "never healed".to_owned()
            } else {
                format!("{:.3}", n.end_ns as f64 / 1e9)
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{:.3}</td><td>{end}</td></tr>",
                esc(&n.name),
                n.start_ns as f64 / 1e9
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::check;
    use crate::history::OpValue;

    #[test]
    fn writes_results_json_and_html() {
        let mut h = History::new();
        let s = 1_000_000_000;
        h.invoke(0, 0, OpValue::send(0, 1));
        h.complete(s / 100, 0, OpKind::Ok, OpValue::send_ok(0, 1, 0));
        h.invoke(s / 2, 1, OpValue::send(0, 2));
        h.complete(2 * s, 1, OpKind::Info, OpValue::send(0, 2));
        h.invoke(2 * s, 2, OpValue::send(0, 3));
        h.complete(2 * s + 5_000, 2, OpKind::Fail, OpValue::send(0, 3));
        h.invoke(3 * s, 3, OpValue::poll(0));
        h.complete(
            3 * s + 2_000_000,
            3,
            OpKind::Ok,
            OpValue::poll_ok(0, [(0, 1)]),
        );
        h.invoke(4 * s, 4, OpValue::final_read(1, 0));
        h.complete(4 * s, 4, OpKind::Ok, OpValue::final_read_ok(1, 0, []));
        let result = check(&h);
        assert_eq!(result.anomaly_types, vec!["lost-write".to_owned()]);
        let nemesis = vec![
            NemesisInterval {
                name: "partition <majority>".into(),
                start_ns: s / 4,
                end_ns: 2 * s,
            },
            NemesisInterval {
                name: "kill".into(),
                start_ns: 3 * s,
                end_ns: 0,
            },
        ];

        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        write_report(&out, &h, &result, &nemesis).unwrap();

        let json = fs::read_to_string(out.join("results.json")).unwrap();
        let back: CheckResult = serde_json::from_str(&json).unwrap();
        assert_eq!(back, result);

        let html = fs::read_to_string(out.join("report.html")).unwrap();
        assert!(html.contains("<svg"));
        assert!(html.contains("lost-write"));
        assert!(html.contains("partition &lt;majority&gt;"));
        assert!(html.contains("never healed"));
        assert!(!html.contains("<script"));
        // Self-contained: nothing fetched from elsewhere.
        assert!(!html.contains("src=") && !html.contains("href="));
        // Three latency marks (send ok, send fail, poll ok) plus legend marks.
        assert!(html.matches("<circle").count() >= 2);
    }

    #[test]
    fn empty_history_renders() {
        let h = History::new();
        let html = render_html(&h, &check(&h), &[]);
        assert!(html.contains("<svg"));
        assert!(html.contains("Valid"));
    }

    #[test]
    fn nice_steps() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(nice_step(100.0, 10.0), 10.0));
        assert!(close(nice_step(30.0, 10.0), 5.0));
        assert!(close(nice_step(1.5, 10.0), 0.2));
        assert_eq!(decimals_for(0.2), 1);
        assert_eq!(decimals_for(5.0), 0);
    }
}
