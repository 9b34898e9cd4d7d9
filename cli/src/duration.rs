//! The one duration syntax of every flag: a number (decimals allowed) and a unit, `us`,
//! `ms`, `s`, `m` (or `min`) or `h`: `30s`, `500ms`, `2m`, `1.5s`. A bare number is in the
//! flag's own unit: milliseconds for the flags named `--*-ms` (so that `--baseline-ms 5000`
//! keeps working), seconds for the others.

use std::time::Duration;

/// The longest duration the syntax takes (a year): beyond it a flag is surely a typo, and
/// `Duration::from_secs_f64` must not overflow.
pub const DURATION_TEXT_MAX: Duration = Duration::from_secs(365 * 24 * 3600);

/// What the syntax is, for a flag's help text.
pub const SYNTAX: &str = "e.g. 30s, 500ms, 2m, 1.5s";

/// A text that is not a duration, and what would be one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{text}' is not a duration: use a number and a unit (us, ms, s, m, h), e.g. 30s, 500ms, 2m, 1.5s{bare}")]
pub struct DurationError {
    text: String,
    bare: &'static str,
}

/// Bare numbers are seconds: `30s`, `500ms`, `2m`, `1h`, `1.5s`, `250us`, `3` (3 s).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    parse(text, 1.0, "; a bare number is seconds")
}

/// For the `--*-ms` flags: the same syntax, bare numbers are milliseconds (`5000`: 5 s).
pub fn parse_duration_ms(text: &str) -> Result<Duration, DurationError> {
    parse(text, 1e-3, "; a bare number is milliseconds")
}

fn parse(text: &str, bare_unit_s: f64, bare: &'static str) -> Result<Duration, DurationError> {
    let bad = || DurationError {
        text: text.to_string(),
        bare,
    };
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let seconds_per_unit = match unit.trim() {
        "" => bare_unit_s,
        "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    let seconds = number * seconds_per_unit;
    if !seconds.is_finite() || seconds < 0.0 || seconds > DURATION_TEXT_MAX.as_secs_f64() {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        for parse in [parse_duration, parse_duration_ms] {
            assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
            assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
            assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
            assert_eq!(parse(" 2m "), Ok(Duration::from_secs(120)));
            assert_eq!(parse("250us"), Ok(Duration::from_micros(250)));
            assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
            for bad in ["", "s", "10x", "-1s", "1e9h", "1.2.3s", "9000h"] {
                assert!(parse(bad).is_err(), "{bad}");
            }
        }
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration_ms("3"), Ok(Duration::from_millis(3)));
        assert_eq!(parse_duration_ms("2.5"), Ok(Duration::from_micros(2500)));
    }

    #[test]
    fn a_bad_duration_says_what_would_do() {
        let e = parse_duration_ms("5 sec").unwrap_err().to_string();
        assert_eq!(
            e,
            "'5 sec' is not a duration: use a number and a unit (us, ms, s, m, h), e.g. 30s, \
             500ms, 2m, 1.5s; a bare number is milliseconds"
        );
    }
}
