//! Test results and the reports made from them: a text summary, JSON, JUnit XML
//! and a self-contained HTML page, plus recorded expectations that a run is
//! held to.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// How one test ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Outcome {
    /// The implementation did what the proposal asks.
    Passed,
    /// It did not: why, and the difference when there is one to show.
    Failed {
        /// What went wrong, naming the request, entry or path.
        reason: String,
        /// The difference between what was expected and what was found.
        #[serde(skip_serializing_if = "Option::is_none")]
        diff: Option<String>,
    },
    /// The test could not judge: why.
    Skipped {
        /// Why the test did not run or could not conclude.
        why: String,
    },
}

impl Outcome {
    /// `passed`, `failed` or `skipped`.
    pub fn status(&self) -> Status {
        match self {
            Outcome::Passed => Status::Passed,
            Outcome::Failed { .. } => Status::Failed,
            Outcome::Skipped { .. } => Status::Skipped,
        }
    }

    /// A failure with a reason and no difference.
    pub fn failed(reason: impl Into<String>) -> Outcome {
        Outcome::Failed {
            reason: reason.into(),
            diff: None,
        }
    }
}

/// The three statuses, as recorded in expectation files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Passed.
    Passed,
    /// Failed.
    Failed,
    /// Skipped.
    Skipped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Passed => "passed",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        })
    }
}

/// One test's result.
#[derive(Clone, Debug, Serialize)]
pub struct TestResult {
    /// Stable id, `GROUP/NAME`, e.g. `push/chunked`. Recorded expectations key on it.
    pub id: String,
    /// What the test checks, one sentence.
    pub description: String,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// How long it took.
    #[serde(serialize_with = "seconds")]
    pub duration: Duration,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

impl TestResult {
    /// The group part of the id.
    pub fn group(&self) -> &str {
        self.id.split('/').next().unwrap_or(&self.id)
    }
}

/// A whole run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `registry` or `unpack`.
    pub suite: String,
    /// What was tested: the URL or the command template.
    pub target: String,
    /// The suite's version.
    pub version: String,
    /// Counts per group and in all.
    pub summary: BTreeMap<String, Counts>,
    /// Every result, in run order.
    pub results: Vec<TestResult>,
}

/// Passed, failed and skipped counts.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    /// Passed.
    pub passed: usize,
    /// Failed.
    pub failed: usize,
    /// Skipped.
    pub skipped: usize,
}

impl Counts {
    fn add(&mut self, status: Status) {
        match status {
            Status::Passed => self.passed += 1,
            Status::Failed => self.failed += 1,
            Status::Skipped => self.skipped += 1,
        }
    }
}

impl Report {
    /// A report of `results`.
    pub fn new(suite: &str, target: &str, results: Vec<TestResult>) -> Report {
        let mut summary: BTreeMap<String, Counts> = BTreeMap::new();
        for r in &results {
            summary
                .entry(r.group().to_string())
                .or_default()
                .add(r.outcome.status());
            summary
                .entry("total".into())
                .or_default()
                .add(r.outcome.status());
        }
        Report {
            suite: suite.into(),
            target: target.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            summary,
            results,
        }
    }

    /// Groups in the order their first test ran.
    fn groups(&self) -> Vec<&str> {
        let mut groups: Vec<&str> = Vec::new();
        for r in &self.results {
            if !groups.contains(&r.group()) {
                groups.push(r.group());
            }
        }
        groups
    }

    /// Whether any test failed.
    pub fn any_failed(&self) -> bool {
        self.results
            .iter()
            .any(|r| r.outcome.status() == Status::Failed)
    }

    /// The text summary: one line per test, reasons and differences indented
    /// below failures, then the counts per group.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "oci-blocks-conformance {} {}: {}",
            self.version, self.suite, self.target
        );
        for r in &self.results {
            match &r.outcome {
                Outcome::Passed => {
                    let _ = writeln!(out, "PASS  {}", r.id);
                }
                Outcome::Failed { reason, diff } => {
                    let _ = writeln!(out, "FAIL  {}: {}", r.id, first_line(reason));
                    for line in reason.lines().skip(1) {
                        let _ = writeln!(out, "        {line}");
                    }
                    for line in diff.iter().flat_map(|d| d.lines()) {
                        let _ = writeln!(out, "        {line}");
                    }
                }
                Outcome::Skipped { why } => {
                    let _ = writeln!(out, "SKIP  {}: {}", r.id, why);
                }
            }
        }
        let _ = writeln!(out);
        for g in self.groups() {
            let c = self.summary.get(g).copied().unwrap_or_default();
            let _ = writeln!(
                out,
                "{g:<12} {:>3} passed {:>3} failed {:>3} skipped",
                c.passed, c.failed, c.skipped
            );
        }
        let t = self.summary.get("total").copied().unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<12} {:>3} passed {:>3} failed {:>3} skipped",
            "total", t.passed, t.failed, t.skipped
        );
        out
    }

    /// The report as JSON.
    pub fn json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// The report as JUnit XML: one suite per group.
    pub fn junit(&self) -> Result<String> {
        use quick_junit::{NonSuccessKind, TestCase, TestCaseStatus, TestSuite};
        let mut report = quick_junit::Report::new(format!("oci-blocks-conformance {}", self.suite));
        for g in self.groups() {
            let mut suite = TestSuite::new(format!("{}.{g}", self.suite));
            for r in self.results.iter().filter(|r| r.group() == g) {
                let status = match &r.outcome {
                    Outcome::Passed => TestCaseStatus::success(),
                    Outcome::Failed { reason, diff } => {
                        let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                        s.set_message(first_line(reason));
                        let mut text = reason.clone();
                        if let Some(d) = diff {
                            text.push('\n');
                            text.push_str(d);
                        }
                        s.set_description(text);
                        s
                    }
                    Outcome::Skipped { why } => {
                        let mut s = TestCaseStatus::skipped();
                        s.set_message(why.as_str());
                        s
                    }
                };
                let mut case = TestCase::new(r.id.as_str(), status);
                case.set_classname(format!("{}.{g}", self.suite));
                case.set_time(r.duration);
                suite.add_test_case(case);
            }
            report.add_test_suite(suite);
        }
        report.to_string().context("write JUnit XML")
    }

    /// A self-contained HTML page: the counts per group and the results table.
    pub fn html(&self) -> String {
        let mut out = String::new();
        let title = format!("oci-blocks-conformance {}: {}", self.suite, self.target);
        let _ = write!(
            out,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>{}</title><style>{STYLE}</style></head><body>\n<h1>{}</h1>\n\
             <p>oci-blocks-conformance {}</p>\n<table class=\"summary\">\
             <tr><th>group</th><th>passed</th><th>failed</th><th>skipped</th></tr>\n",
            escape(&title),
            escape(&title),
            escape(&self.version)
        );
        let mut groups = self.groups();
        groups.push("total");
        for g in groups {
            let c = self.summary.get(g).copied().unwrap_or_default();
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(g),
                c.passed,
                c.failed,
                c.skipped
            );
        }
        out.push_str(
            "</table>\n<table class=\"results\"><tr><th>status</th><th>test</th>\
             <th>checks</th><th>details</th></tr>\n",
        );
        for r in &self.results {
            let (class, details) = match &r.outcome {
                Outcome::Passed => ("passed", String::new()),
                Outcome::Failed { reason, diff } => {
                    let mut d = format!("<pre>{}</pre>", escape(reason));
                    if let Some(diff) = diff {
                        let _ = write!(d, "<pre class=\"diff\">{}</pre>", escape(diff));
                    }
                    ("failed", d)
                }
                Outcome::Skipped { why } => ("skipped", format!("<pre>{}</pre>", escape(why))),
            };
            let _ = writeln!(
                out,
                "<tr class=\"{class}\"><td>{class}</td><td><code>{}</code></td><td>{}</td><td>{details}</td></tr>",
                escape(&r.id),
                escape(&r.description)
            );
        }
        out.push_str("</table>\n</body></html>\n");
        out
    }
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}\
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}\
tr.passed td:first-child{background:#d4f7d4}tr.failed td:first-child{background:#f7d4d4}\
tr.skipped td:first-child{background:#eee}pre{margin:0;white-space:pre-wrap;font-size:.85em}\
pre.diff{color:#555;margin-top:.4em}";

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

/// Escapes text for HTML content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
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

/// Recorded outcomes: the status each test is expected to end with.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectations {
    /// Test id to status.
    pub outcomes: BTreeMap<String, Status>,
}

impl Expectations {
    /// Reads an expectations file; one that records nothing is an error.
    pub fn load(path: &Path) -> Result<Expectations> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let e: Expectations = toml::from_str(&text)
            .with_context(|| format!("{}: not an expectations file", path.display()))?;
        if e.outcomes.is_empty() {
            bail!("{}: records no outcome", path.display());
        }
        Ok(e)
    }

    /// The outcomes of `report`, to record.
    pub fn of(report: &Report) -> Expectations {
        Expectations {
            outcomes: report
                .results
                .iter()
                .map(|r| (r.id.clone(), r.outcome.status()))
                .collect(),
        }
    }

    /// The file text, with a header that says what it records.
    pub fn to_toml(&self, report: &Report) -> Result<String> {
        let mut out = format!(
            "# Recorded outcomes of `oci-blocks-conformance {}` against\n# {}\n\
             # A run with --expect fails on any difference, in either direction.\n\n",
            report.suite, report.target
        );
        out.push_str(&toml::to_string(self)?);
        Ok(out)
    }

    /// Every difference between the recorded outcomes and `report`, one line
    /// each; empty when the run matches.
    pub fn compare(&self, report: &Report) -> Vec<String> {
        let mut out = Vec::new();
        for r in &report.results {
            let got = r.outcome.status();
            match self.outcomes.get(&r.id) {
                None => out.push(format!("{}: {got}, and no outcome is recorded", r.id)),
                Some(want) if *want != got => {
                    let why = match &r.outcome {
                        Outcome::Passed => String::new(),
                        Outcome::Failed { reason, .. } => format!(": {}", first_line(reason)),
                        Outcome::Skipped { why } => format!(": {why}"),
                    };
                    out.push(format!("{}: recorded {want}, now {got}{why}", r.id));
                }
                Some(_) => {}
            }
        }
        for id in self.outcomes.keys() {
            if !report.results.iter().any(|r| &r.id == id) {
                out.push(format!("{id}: recorded, but no such test ran"));
            }
        }
        out
    }
}

/// Writes `text` to `path` through a temporary name in the same directory.
pub fn write_file(path: &Path, text: &str) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("create a file in {}", dir.display()))?;
    std::io::Write::write_all(&mut tmp, text.as_bytes())?;
    tmp.persist(path)
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(id: &str, outcome: Outcome) -> TestResult {
        TestResult {
            id: id.into(),
            description: "checks <things> & more".into(),
            outcome,
            duration: Duration::from_millis(12),
        }
    }

    fn sample() -> Report {
        Report::new(
            "unpack",
            "cmd {layout}",
            vec![
                result("plain/a", Outcome::Passed),
                result(
                    "plain/b",
                    Outcome::Failed {
                        reason: "exit 1\nsecond line".into(),
                        diff: Some("- x  file".into()),
                    },
                ),
                result(
                    "imports/c",
                    Outcome::Skipped {
                        why: "no <tool>".into(),
                    },
                ),
            ],
        )
    }

    #[test]
    fn every_format_carries_every_result() -> Result<()> {
        let r = sample();
        assert_eq!(
            r.summary.get("plain"),
            Some(&Counts {
                passed: 1,
                failed: 1,
                skipped: 0
            })
        );
        let text = r.text();
        assert!(
            text.contains("FAIL  plain/b: exit 1\n        second line\n        - x  file"),
            "{text}"
        );
        assert!(
            text.contains("total          1 passed   1 failed   1 skipped"),
            "{text}"
        );

        let json: serde_json::Value = serde_json::from_str(&r.json()?)?;
        assert_eq!(json["results"][1]["status"], "failed");
        assert_eq!(json["results"][1]["diff"], "- x  file");
        assert_eq!(json["results"][2]["why"], "no <tool>");
        assert_eq!(json["summary"]["total"]["failed"], 1);

        let xml = r.junit()?;
        assert!(
            xml.contains("tests=\"3\"") && xml.contains("failures=\"1\""),
            "{xml}"
        );
        assert!(
            xml.contains("<skipped message=\"no &lt;tool&gt;\""),
            "{xml}"
        );

        let html = r.html();
        assert!(html.contains("<tr class=\"failed\">"), "{html}");
        assert!(html.contains("checks &lt;things&gt; &amp; more"), "{html}");
        assert!(!html.contains("<tool>"), "text is escaped");
        Ok(())
    }

    #[test]
    fn expectations_catch_changes_in_both_directions() -> Result<()> {
        let r = sample();
        let recorded = Expectations::of(&r);
        assert!(recorded.compare(&r).is_empty());
        let text = recorded.to_toml(&r)?;
        let back: Expectations = toml::from_str(&text)?;
        assert_eq!(back.outcomes, recorded.outcomes);

        let mut better = r.clone();
        better.results[1].outcome = Outcome::Passed;
        assert_eq!(
            recorded.compare(&better),
            vec!["plain/b: recorded failed, now passed".to_string()]
        );
        let mut worse = r.clone();
        worse.results[0].outcome = Outcome::failed("broke");
        assert_eq!(
            recorded.compare(&worse),
            vec!["plain/a: recorded passed, now failed: broke".to_string()]
        );
        let mut fewer = r.clone();
        fewer.results.pop();
        assert_eq!(
            recorded.compare(&fewer),
            vec!["imports/c: recorded, but no such test ran".to_string()]
        );
        let empty = Expectations::default();
        assert_eq!(empty.compare(&r).len(), 3);
        let tmp = tempfile::tempdir()?;
        let file = tmp.path().join("x.toml");
        std::fs::write(&file, "[outcomes]\n")?;
        let err = Expectations::load(&file).err();
        assert!(format!("{err:?}").contains("records no outcome"), "{err:?}");
        Ok(())
    }
}
