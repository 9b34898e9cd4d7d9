//! How a command ends: its exit code, and an error as one line, `error: <message>`, the
//! message followed by its causes joined with ": " (each said once).

use std::fmt::Write;

/// It did what was asked.
pub const OK: i32 = 0;
/// An error (said on stderr as `error: ...`).
pub const ERROR: i32 = 1;
/// Bad usage: an unknown flag, a missing or malformed value (clap's own code).
pub const USAGE: i32 = 2;

/// The error and its causes on one line: `reading pair.json: No such file or directory`.
/// A cause whose text the line already ends with (an error that prints its source, as
/// `#[error("...: {0}")]` does) is not repeated.
pub fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = without_os_error(&cause.to_string());
        let text = text.trim();
        if text.is_empty() || line.ends_with(text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        let _ = write!(line, "{text}");
    }
    line.replace('\n', " ")
}

/// "No such file or directory (os error 2)" -> "No such file or directory": the number says
/// nothing more to a reader.
fn without_os_error(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(" (os error ") {
        let tail = &rest[at + " (os error ".len()..];
        let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && tail[digits..].starts_with(')') {
            out.push_str(&rest[..at]);
            rest = &tail[digits + 1..];
        } else {
            out.push_str(&rest[..at + 1]);
            rest = &rest[at + 1..];
        }
    }
    out.push_str(rest);
    out
}

/// Says `error: ...` on stderr and exits with [`ERROR`].
pub fn fail(error: &anyhow::Error) -> ! {
    eprintln!("error: {}", one_line(error));
    std::process::exit(ERROR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open the run: {0}")]
    struct Wraps(#[source] std::io::Error);

    #[test]
    fn causes_are_joined_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(Wraps(io)).context("reading summary.json");
        assert_eq!(
            one_line(&e),
            "reading summary.json: cannot open the run: no such file"
        );
        let os = std::io::Error::from_raw_os_error(2);
        let e = anyhow::Error::new(os).context("creating /x");
        assert_eq!(one_line(&e), "creating /x: No such file or directory");
        assert_eq!(without_os_error("a (os error x) b"), "a (os error x) b");
        let plain = anyhow::anyhow!("the pair is not up");
        assert_eq!(one_line(&plain), "the pair is not up");
    }
}
