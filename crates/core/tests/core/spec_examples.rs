//! Every example in `spec/` is validated with its expected verdict: the document
//! examples of `spec/examples/` (verdicts in `expected.toml`), the image examples
//! of `spec/examples/images/` (verdicts inside each description), and the JSON
//! blocks of the spec's Markdown files.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use oci_blocks_core::layout::OciDir;
use oci_blocks_core::validate::{Report, Rule, Severity, check_image, validate_document};
use oci_blocks_fixture::{self as fixture, ImageSpec};

fn spec_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../spec")
}

#[derive(serde::Deserialize)]
struct Expected {
    examples: BTreeMap<String, Verdict>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Verdict {
    verdict: String,
    #[serde(default)]
    rule: Option<String>,
    #[serde(default)]
    pointer: Option<String>,
    /// The rule ids reported as warnings, exactly.
    #[serde(default)]
    warnings: Vec<String>,
    #[allow(dead_code)]
    description: String,
}

fn error_rules(report: &Report) -> BTreeSet<&'static str> {
    report.errors().map(|v| v.rule.id()).collect()
}

#[test]
fn document_examples_have_their_expected_verdicts() -> Result<()> {
    let dir = spec_dir().join("examples");
    let expected: Expected = toml::from_str(&fs::read_to_string(dir.join("expected.toml"))?)
        .context("spec/examples/expected.toml")?;
    let on_disk: BTreeSet<String> = fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    let listed: BTreeSet<String> = expected.examples.keys().cloned().collect();
    ensure!(
        on_disk == listed,
        "files without a verdict: {:?}; verdicts without a file: {:?}",
        on_disk.difference(&listed).collect::<Vec<_>>(),
        listed.difference(&on_disk).collect::<Vec<_>>()
    );
    ensure!(
        listed.len() >= 30,
        "expected a thorough set of examples, found {}",
        listed.len()
    );
    let mut failures = Vec::new();
    for (name, verdict) in &expected.examples {
        let bytes = fs::read(dir.join(name))?;
        let (_, report) = validate_document(&bytes, name);
        let rules = error_rules(&report);
        let warnings: BTreeSet<&str> = report.warnings().map(|v| v.rule.id()).collect();
        let expected_warnings: BTreeSet<&str> =
            verdict.warnings.iter().map(String::as_str).collect();
        if warnings != expected_warnings {
            failures.push(format!(
                "{name}: warnings {warnings:?}, expected {expected_warnings:?}:\n{report}"
            ));
        }
        match verdict.verdict.as_str() {
            "valid" => {
                if !report.is_valid() {
                    failures.push(format!("{name}: expected valid, got:\n{report}"));
                }
            }
            "invalid" => {
                let rule = verdict
                    .rule
                    .as_deref()
                    .context("invalid example without rule")?;
                ensure!(
                    Rule::from_id(rule).is_some(),
                    "{name}: unknown rule id {rule}"
                );
                if rules != BTreeSet::from([rule]) {
                    failures.push(format!(
                        "{name}: expected exactly [{rule}], got {rules:?}:\n{report}"
                    ));
                } else if let Some(p) = &verdict.pointer {
                    if !report.errors().any(|v| v.pointer.as_deref() == Some(p)) {
                        failures.push(format!("{name}: no violation at {p}:\n{report}"));
                    }
                }
            }
            other => bail!("{name}: verdict {other:?} is neither valid nor invalid"),
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

fn image_examples() -> Result<Vec<(String, ImageSpec)>> {
    let dir = spec_dir().join("examples/images");
    let mut out = Vec::new();
    for entry in fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let spec = ImageSpec::from_toml(&fs::read_to_string(&path)?, &name)?;
            out.push((name, spec));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

#[test]
fn image_examples_have_their_expected_verdicts() -> Result<()> {
    let examples = image_examples()?;
    ensure!(
        examples.len() >= 30,
        "found only {} image examples",
        examples.len()
    );
    let tmp = tempfile::tempdir()?;
    let mut failures = Vec::new();
    let mut rules_covered = BTreeSet::new();
    for (name, spec) in &examples {
        let expect = spec
            .expect
            .as_ref()
            .with_context(|| format!("{name}: no [expect]"))?;
        let path = tmp.path().join(name);
        fixture::build(spec, &path, "latest").with_context(|| name.clone())?;
        let result = check_image(&OciDir::open(&path)?, Some("latest"))?;
        let report = &result.report;
        let rules = error_rules(report);
        let warnings: BTreeSet<&str> = report.warnings().map(|v| v.rule.id()).collect();
        let expected_warnings: BTreeSet<&str> =
            expect.warnings.iter().map(String::as_str).collect();
        if warnings != expected_warnings {
            failures.push(format!(
                "{name}: warnings {warnings:?}, expected {expected_warnings:?}"
            ));
        }
        match expect.verdict.as_str() {
            "valid" if report.is_valid() => {}
            "valid" => failures.push(format!("{name}: expected valid, got:\n{report}")),
            "invalid" => {
                let rule = expect.rule.as_deref().context("invalid without rule")?;
                rules_covered.insert(rule.to_string());
                if rules != BTreeSet::from([rule]) {
                    failures.push(format!(
                        "{name}: expected exactly [{rule}], got {rules:?}:\n{report}"
                    ));
                    continue;
                }
                let located = report.errors().any(|v| {
                    expect
                        .subject
                        .as_ref()
                        .is_none_or(|s| v.subject.contains(s.as_str()))
                        && expect
                            .entry
                            .as_ref()
                            .is_none_or(|e| v.entry.as_ref() == Some(e))
                });
                if !located {
                    failures.push(format!(
                        "{name}: no {rule} at subject {:?} entry {:?}:\n{report}",
                        expect.subject, expect.entry
                    ));
                }
            }
            other => bail!("{name}: verdict {other:?}"),
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n\n"));
    // Every layer, block and import rule has an invalid image example.
    let needed: Vec<&str> = Rule::ALL
        .iter()
        .filter(|r| r.severity() == Severity::Error)
        .map(|r| r.id())
        .filter(|id| {
            id.starts_with("import.")
                || id.starts_with("block.")
                || id.starts_with("layer.")
                || *id == "fallback.anchor-incomplete"
                || *id == "blob.digest-mismatch"
                || *id == "blob.missing"
        })
        .collect();
    let missing: Vec<&&str> = needed
        .iter()
        .filter(|id| !rules_covered.contains(**id))
        .collect();
    ensure!(
        missing.is_empty(),
        "rules without an invalid image example: {missing:?}"
    );
    Ok(())
}

#[test]
fn json_blocks_in_the_spec_prose_are_valid() -> Result<()> {
    let mut checked = 0;
    let mut failures = Vec::new();
    for entry in fs::read_dir(spec_dir())? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let text = fs::read_to_string(&path)?;
        let mut rest = text.as_str();
        while let Some(start) = rest.find("```json\n") {
            let body = &rest[start + 8..];
            let end = body.find("```").context("unterminated json block")?;
            let name = format!("{} json block {}", path.display(), checked + 1);
            let (kind, report) = validate_document(&body.as_bytes()[..end], &name);
            if kind.is_none() || !report.is_valid() {
                failures.push(format!("{name}:\n{report}"));
            }
            checked += 1;
            rest = &body[end..];
        }
    }
    ensure!(
        checked >= 3,
        "found only {checked} JSON blocks in spec/*.md"
    );
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[test]
fn every_rule_is_stated_in_its_spec_file() -> Result<()> {
    for rule in Rule::ALL {
        let text = fs::read_to_string(spec_dir().join(rule.spec_file()))?;
        ensure!(
            text.contains(&format!("`{}`", rule.id())),
            "spec/{} does not state rule `{}`",
            rule.spec_file(),
            rule.id()
        );
    }
    Ok(())
}

#[test]
fn schemas_in_spec_are_the_embedded_ones() -> Result<()> {
    for (name, text) in oci_blocks_core::validate::SCHEMAS {
        let on_disk = fs::read_to_string(spec_dir().join("schemas").join(name))?;
        ensure!(on_disk == *text, "{name} differs from the embedded copy");
    }
    Ok(())
}
