//! The comparison as a terminal table, Markdown, and one self-contained HTML
//! page whose charts are inline SVG (no script, no external asset): bytes per
//! pull per strategy, registry storage after each version, and requests per
//! pull.

use std::fmt::Write as _;

use super::{Report, Strategy};
use crate::output::bytes;

/// Colors of the strategies, in report order.
const COLORS: [&str; 5] = ["#7f7f7f", "#bcbd22", "#1f77b4", "#2ca02c", "#d62728"];

fn step_name(i: usize) -> String {
    if i == 0 {
        "cold pull of v0".to_string()
    } else {
        format!("update v{} → v{i}", i - 1)
    }
}

fn seconds(s: Option<f64>) -> String {
    s.map_or("–".to_string(), |s| format!("{s:.2} s"))
}

/// Rows of the summary: strategy, cold bytes, update bytes (total), storage,
/// layers, unpack cold, unpack warm.
fn rows(report: &Report) -> Vec<[String; 8]> {
    report
        .strategies
        .iter()
        .map(|s| {
            let cold = &s.steps[0];
            let updates: u64 = s.steps.iter().skip(1).map(|p| p.bytes).sum();
            let requests: usize = s
                .steps
                .iter()
                .skip(1)
                .map(|p| p.blob_requests + p.manifest_requests)
                .sum();
            [
                s.name.clone(),
                format!(
                    "{} ({} req)",
                    bytes(cold.bytes),
                    cold.blob_requests + cold.manifest_requests
                ),
                format!("{} ({requests} req)", bytes(updates)),
                bytes(*s.storage.last().unwrap_or(&0)),
                if s.blocks > 0 {
                    format!("{}/127, {} blocks", s.layers, s.blocks)
                } else {
                    format!("{}/127", s.layers)
                },
                seconds(s.unpack_cold),
                seconds(s.unpack_warm),
                s.id.clone(),
            ]
        })
        .collect()
}

const HEADERS: [&str; 7] = [
    "strategy",
    "cold pull",
    "updates",
    "registry storage",
    "layers",
    "unpack cold",
    "unpack warm",
];

/// A plain-text table for a terminal.
pub fn table(report: &Report) -> String {
    let rows = rows(report);
    let mut widths: Vec<usize> = HEADERS.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().take(7).enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        for (i, c) in cells.iter().enumerate() {
            let pad = widths[i] - c.chars().count();
            if i == 0 {
                let _ = write!(out, "{c}{}", " ".repeat(pad));
            } else {
                let _ = write!(out, "  {}{c}", " ".repeat(pad));
            }
        }
        out.push('\n');
    };
    line(HEADERS.to_vec(), &mut out);
    for r in &rows {
        line(r.iter().take(7).map(String::as_str).collect(), &mut out);
    }
    let _ = write!(
        out,
        "{} versions, {}; --json for every pull, --markdown or --html for the charts",
        report.images.len(),
        report.platform
    );
    out
}

/// The report as Markdown: the summary, every pull, and how each figure was
/// computed.
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Versions, oldest first ({}):\n", report.platform);
    for (i, image) in report.images.iter().enumerate() {
        let _ = writeln!(out, "- v{i}: `{image}`");
    }
    let _ = writeln!(out, "\n| {} |", HEADERS.join(" | "));
    let _ = writeln!(out, "|---|{}", "---:|".repeat(HEADERS.len() - 1));
    for r in rows(report) {
        let _ = writeln!(out, "| {} |", r[..7].join(" | "));
    }
    let _ = writeln!(out, "\nEvery pull (bytes; blob and manifest requests):\n");
    let steps = report.strategies.first().map_or(0, |s| s.steps.len());
    let _ = write!(out, "| pull |");
    for s in &report.strategies {
        let _ = write!(out, " {} |", s.id);
    }
    let _ = writeln!(out, "\n|---|{}", "---:|".repeat(report.strategies.len()));
    for i in 0..steps {
        let _ = write!(out, "| {} |", step_name(i));
        for s in &report.strategies {
            let p = &s.steps[i];
            let _ = write!(
                out,
                " {} ({}+{}) |",
                bytes(p.bytes),
                p.blob_requests,
                p.manifest_requests
            );
        }
        out.push('\n');
    }
    let _ = writeln!(out, "\nHow each figure is computed:\n");
    for (k, v) in &report.method {
        let _ = writeln!(out, "- **{k}**: {v}");
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A grouped bar chart on a log scale: one group per label, one bar per
/// series (strategy).
fn bar_chart(
    title: &str,
    labels: &[String],
    series: &[(&Strategy, Vec<f64>)],
    format: &dyn Fn(f64) -> String,
) -> String {
    let (width, height, left, top, bottom) = (900.0, 380.0, 70.0, 40.0, 70.0);
    let plot_h = height - top - bottom;
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(1.0_f64, f64::max);
    let decades = max.log10().ceil().max(1.0);
    let y = |v: f64| top + plot_h - plot_h * (v.max(1.0).log10() / decades);
    let group_w = (width - left - 20.0) / labels.len().max(1) as f64;
    let bar_w = (group_w * 0.8) / series.len().max(1) as f64;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{t}"><title>{t}</title><rect width="100%" height="100%" fill="white"/><text x="{left}" y="22" font-family="sans-serif" font-size="15" font-weight="bold">{t}</text>"#,
        t = escape(title)
    );
    for d in 0..=(decades as i32) {
        let v = 10f64.powi(d);
        let yy = y(v);
        let _ = write!(
            svg,
            r##"<line x1="{left}" y1="{yy:.1}" x2="{x2}" y2="{yy:.1}" stroke="#ddd"/><text x="{tx}" y="{ty:.1}" font-family="sans-serif" font-size="10" text-anchor="end">{label}</text>"##,
            x2 = width - 20.0,
            tx = left - 6.0,
            ty = yy + 3.0,
            label = escape(&format(v))
        );
    }
    for (g, label) in labels.iter().enumerate() {
        let gx = left + g as f64 * group_w + group_w * 0.1;
        for (k, (s, values)) in series.iter().enumerate() {
            let v = values.get(g).copied().unwrap_or(0.0);
            let (x, yy) = (gx + k as f64 * bar_w, y(v));
            let _ = write!(
                svg,
                r#"<rect class="bar" x="{x:.1}" y="{yy:.1}" width="{w:.1}" height="{h:.1}" fill="{c}"><title>{name}: {value}</title></rect>"#,
                w = (bar_w - 1.0).max(1.0),
                h = (top + plot_h - yy).max(0.0),
                c = COLORS[k % COLORS.len()],
                name = escape(&s.name),
                value = escape(&format(v))
            );
        }
        let _ = write!(
            svg,
            r#"<text x="{x:.1}" y="{y:.1}" font-family="sans-serif" font-size="11" text-anchor="middle">{l}</text>"#,
            x = gx + group_w * 0.4,
            y = top + plot_h + 16.0,
            l = escape(label)
        );
    }
    for (k, (s, _)) in series.iter().enumerate() {
        let x = left + (k % 3) as f64 * 270.0;
        let yy = height - 28.0 + (k / 3) as f64 * 16.0;
        let _ = write!(
            svg,
            r#"<rect x="{x}" y="{r:.1}" width="10" height="10" fill="{c}"/><text x="{tx}" y="{yy:.1}" font-family="sans-serif" font-size="11">{n}</text>"#,
            r = yy - 9.0,
            c = COLORS[k % COLORS.len()],
            tx = x + 14.0,
            n = escape(&s.id)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The three charts: (file name, SVG).
pub fn charts(report: &Report) -> Vec<(&'static str, String)> {
    let steps = report.strategies.first().map_or(0, |s| s.steps.len());
    let labels: Vec<String> = (0..steps).map(step_name).collect();
    let byte_format = |v: f64| bytes(v as u64);
    let count_format = |v: f64| format!("{v:.0}");
    let of = |f: &dyn Fn(&Strategy) -> Vec<f64>| -> Vec<(&Strategy, Vec<f64>)> {
        report.strategies.iter().map(|s| (s, f(s))).collect()
    };
    let transfer = of(&|s| s.steps.iter().map(|p| p.bytes as f64).collect());
    let storage = of(&|s| s.storage.iter().map(|b| *b as f64).collect());
    let requests = of(&|s| {
        s.steps
            .iter()
            .map(|p| (p.blob_requests + p.manifest_requests) as f64)
            .collect()
    });
    let versions: Vec<String> = (0..report.images.len())
        .map(|i| format!("after v{i}"))
        .collect();
    vec![
        (
            "bytes",
            bar_chart(
                "Bytes per pull (log scale)",
                &labels,
                &transfer,
                &byte_format,
            ),
        ),
        (
            "storage",
            bar_chart(
                "Registry storage after each version (log scale)",
                &versions,
                &storage,
                &byte_format,
            ),
        ),
        (
            "requests",
            bar_chart(
                "Requests per pull: blobs and manifests (log scale)",
                &labels,
                &requests,
                &count_format,
            ),
        ),
    ]
}

/// One self-contained page: the tables and the charts.
pub fn html(report: &Report) -> String {
    let mut out = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>oci-blocks compare</title>\
<style>body{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}\
td:first-child,th:first-child{text-align:left}</style></head><body>\n<h1>oci-blocks compare</h1>\n",
    );
    let _ = writeln!(
        out,
        "<p>Platform {}; versions, oldest first:</p><ol start=\"0\">",
        escape(&report.platform)
    );
    for image in &report.images {
        let _ = writeln!(out, "<li><code>{}</code></li>", escape(image));
    }
    out.push_str("</ol>\n<table><tr>");
    for h in HEADERS {
        let _ = write!(out, "<th>{h}</th>");
    }
    out.push_str("</tr>\n");
    for r in rows(report) {
        out.push_str("<tr>");
        for c in &r[..7] {
            let _ = write!(out, "<td>{}</td>", escape(c));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    for (_, svg) in charts(report) {
        // Inline SVG in HTML needs no namespace declaration.
        let svg = svg.replacen(r#" xmlns="http://www.w3.org/2000/svg""#, "", 1);
        let _ = writeln!(out, "<figure>{svg}</figure>");
    }
    out.push_str("<h2>How each figure is computed</h2>\n<ul>\n");
    for (k, v) in &report.method {
        let _ = writeln!(out, "<li><b>{}</b>: {}</li>", escape(k), escape(v));
    }
    out.push_str("</ul>\n</body></html>\n");
    out
}
