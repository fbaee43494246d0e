//! Formatting shared by the subcommands.

/// `println!` that returns the write error instead of panicking, so that
/// `oci-blocks inspect ... | head` ends quietly when the reader goes away.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?;
    }};
}
pub(crate) use outln;

use oci_blocks_core::validate::Report;

/// A byte count for people: `512 B`, `1.5 KiB`, `12.0 MiB` (core's one
/// formatting, as the shim and the errors that name limits use it).
pub use oci_blocks_core::limits::human as bytes;

/// Prints a report's violations to stdout, one per line, and a verdict line.
pub fn print_report(what: &str, report: &Report) -> std::io::Result<()> {
    for v in &report.violations {
        outln!("{v}");
    }
    let errors = report.errors().count();
    let warnings = report.warnings().count();
    if errors == 0 {
        if warnings == 0 {
            outln!("{what}: valid");
        } else {
            outln!("{what}: valid, {warnings} warning(s)");
        }
    } else {
        outln!("{what}: INVALID, {errors} error(s), {warnings} warning(s)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::bytes;

    #[test]
    fn sizes() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 * 1024 * 1024), "5.0 MiB");
    }
}
