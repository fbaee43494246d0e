//! How a test stops early, and the assertions that name the request, what was
//! expected and what came.

use super::http::{Reply, shorten};

/// Why a test stopped before passing.
#[derive(Clone, Debug)]
pub enum Stop {
    /// It failed.
    Fail {
        /// What went wrong, naming the request, the expected and the actual value.
        reason: String,
        /// A short description of a difference in bytes or JSON.
        diff: Option<String>,
    },
    /// It could not judge, for a reason the spec allows.
    Skip(String),
}

/// The result of a test body or one of its steps.
pub type Check<T = ()> = Result<T, Stop>;

impl Stop {
    /// The reason of a failure or the why of a skip.
    pub fn text(&self) -> &str {
        match self {
            Stop::Fail { reason, .. } => reason,
            Stop::Skip(why) => why,
        }
    }
}

impl From<anyhow::Error> for Stop {
    fn from(error: anyhow::Error) -> Stop {
        fail(format!("{error:#}"))
    }
}

/// A failure with a reason.
pub fn fail(reason: impl Into<String>) -> Stop {
    Stop::Fail {
        reason: reason.into(),
        diff: None,
    }
}

/// A skip with the reason.
pub fn skip(why: impl Into<String>) -> Stop {
    Stop::Skip(why.into())
}

/// Marks a failure as one of the test's setup, not of what it checks.
pub fn setup<T>(step: Check<T>) -> Check<T> {
    step.map_err(|stop| match stop {
        Stop::Fail { reason, diff } => Stop::Fail {
            reason: format!("setup failed: {reason}"),
            diff,
        },
        skip => skip,
    })
}

/// The reply's status is one of `expected`.
pub fn status(reply: &Reply, expected: &[u16]) -> Check {
    if expected.contains(&reply.status) {
        return Ok(());
    }
    let list: Vec<String> = expected.iter().map(u16::to_string).collect();
    Err(fail(format!(
        "{}: expected {}, got {}",
        reply.what(),
        list.join(" or "),
        reply.summary()
    )))
}

/// The reply's error body lists `code`.
pub fn code(reply: &Reply, code: &str) -> Check {
    if reply.has_code(code) {
        return Ok(());
    }
    Err(fail(format!(
        "{}: expected error code {code}, got {}",
        reply.what(),
        reply.summary()
    )))
}

/// If the reply has an error body, it lists `code`.
pub fn code_if_any(reply: &Reply, code: &str) -> Check {
    if reply.errors().is_empty() {
        Ok(())
    } else {
        self::code(reply, code)
    }
}

/// The header `name` is exactly `expected`.
pub fn header(reply: &Reply, name: &str, expected: &str) -> Check {
    match reply.header(name) {
        Some(actual) if actual == expected => Ok(()),
        Some(actual) => Err(fail(format!(
            "{}: expected header {name}: {expected}, got {actual:?}",
            reply.what()
        ))),
        None => Err(fail(format!(
            "{}: expected header {name}: {expected}, got no {name} header",
            reply.what()
        ))),
    }
}

/// The header `name`, if present, is exactly `expected`.
pub fn header_if_any(reply: &Reply, name: &str, expected: &str) -> Check {
    if reply.headers.contains_key(name) {
        header(reply, name, expected)
    } else {
        Ok(())
    }
}

/// The header `name` is present and not empty; its value.
pub fn present<'r>(reply: &'r Reply, name: &str) -> Check<&'r str> {
    reply.header(name).filter(|v| !v.is_empty()).ok_or_else(|| {
        fail(format!(
            "{}: expected a {name} header, got none",
            reply.what()
        ))
    })
}

/// The `Content-Type` (without parameters) is `expected`.
pub fn media_type(reply: &Reply, expected: &str) -> Check {
    match reply.media_type() {
        Some(actual) if actual == expected => Ok(()),
        actual => Err(fail(format!(
            "{}: expected Content-Type {expected}, got {}",
            reply.what(),
            actual.map_or("none".to_string(), |a| format!("{a:?}"))
        ))),
    }
}

/// The reply's body is exactly `expected`.
pub fn bytes(reply: &Reply, expected: &[u8]) -> Check {
    if reply.body == expected {
        return Ok(());
    }
    Err(Stop::Fail {
        reason: format!(
            "{}: the body differs from what was pushed ({} bytes expected, {} received)",
            reply.what(),
            expected.len(),
            reply.body.len()
        ),
        diff: Some(diff(expected, &reply.body)),
    })
}

/// A short description of how `actual` differs from `expected`: the lengths
/// and first differing offset, and for text a line diff.
pub fn diff(expected: &[u8], actual: &[u8]) -> String {
    let first = expected
        .iter()
        .zip(actual)
        .position(|(a, b)| a != b)
        .unwrap_or(expected.len().min(actual.len()));
    let show = |b: Option<&u8>| b.map_or("end of data".to_string(), |b| format!("0x{b:02x}"));
    let mut out = format!(
        "expected {} bytes, got {}; first difference at offset {first} (expected {}, got {})",
        expected.len(),
        actual.len(),
        show(expected.get(first)),
        show(actual.get(first))
    );
    if let (Ok(e), Ok(a)) = (std::str::from_utf8(expected), std::str::from_utf8(actual))
        && (e.contains('\n') || a.contains('\n') || looks_like_json(e) || looks_like_json(a))
    {
        out.push('\n');
        out.push_str(&line_diff(&json_lines(e), &json_lines(a)));
    }
    out
}

fn looks_like_json(text: &str) -> bool {
    text.trim_start().starts_with(['{', '['])
}

/// The lines of a text; one-line JSON is pretty-printed first so that a line
/// diff shows where it differs.
fn json_lines(text: &str) -> Vec<String> {
    if !text.trim_end().contains('\n')
        && let Ok(value) = serde_json::from_str::<serde_json::Value>(text)
        && let Ok(pretty) = serde_json::to_string_pretty(&value)
    {
        return pretty.lines().map(str::to_string).collect();
    }
    text.lines().map(str::to_string).collect()
}

/// A unified-style diff (`-` expected, `+` actual) of two short line lists,
/// at most 40 lines of output.
fn line_diff(expected: &[String], actual: &[String]) -> String {
    const MAX_LINES: usize = 400;
    const MAX_OUTPUT: usize = 40;
    if expected.len() > MAX_LINES || actual.len() > MAX_LINES {
        return format!(
            "(texts of {} and {} lines; too long to diff)",
            expected.len(),
            actual.len()
        );
    }
    // Longest common subsequence, then walk it.
    let (n, m) = (expected.len(), actual.len());
    let mut lcs = vec![vec![0u16; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if expected[i] == actual[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut lines = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && expected[i] == actual[j] {
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            lines.push(format!("+{}", shorten(&actual[j], 160)));
            j += 1;
        } else {
            lines.push(format!("-{}", shorten(&expected[i], 160)));
            i += 1;
        }
    }
    if lines.is_empty() {
        return "(same lines; the difference is in whitespace or line endings)".to_string();
    }
    let more = lines.len().saturating_sub(MAX_OUTPUT);
    lines.truncate(MAX_OUTPUT);
    if more > 0 {
        lines.push(format!("... {more} more changed lines"));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_diffs_name_lengths_and_offset() {
        let d = diff(b"\x00\x01\x02", b"\x00\x01");
        assert!(d.starts_with("expected 3 bytes, got 2; first difference at offset 2"));
        assert!(d.contains("got end of data"), "{d}");
    }

    #[test]
    fn json_diffs_show_lines() {
        let d = diff(br#"{"a":1,"b":2}"#, br#"{"a":1,"b":3}"#);
        assert!(d.contains("-  \"b\": 2"), "{d}");
        assert!(d.contains("+  \"b\": 3"), "{d}");
    }
}
