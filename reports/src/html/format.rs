//! How numbers, times and text are written in a report. An engineer compares latencies
//! across rows and phases at a glance, so every latency is scaled to the unit that keeps
//! two or three significant digits ("850 µs", "1.2 ms", "41 ms"), never a raw count of
//! microseconds; and everything that came from a file is escaped before it meets HTML.

/// Escapes text for element content and for quoted attribute values alike.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A latency in microseconds, in the unit that keeps it short.
pub fn latency_us(us: u64) -> String {
    let us_f = us as f64;
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 100_000 {
        format!("{:.1} ms", us_f / 1e3)
    } else if us < 1_000_000 {
        format!("{:.0} ms", us_f / 1e3)
    } else {
        format!("{:.2} s", us_f / 1e6)
    }
}

/// An axis tick of latency: ticks are round values, so "10 ms" rather than "10.0 ms".
pub fn latency_tick_us(us: f64) -> String {
    latency_us(us.round() as u64)
        .replace(".0 ", " ")
        .replace(".00 ", " ")
}

/// An axis tick of a rate: whole numbers grouped, fractions only on a sub-unit axis.
pub fn rate_tick(per_s: f64) -> String {
    if per_s.fract() == 0.0 {
        thousands(per_s as u64)
    } else {
        format!("{per_s:.1}")
    }
}

/// Milliseconds as a bare number for a column whose header carries the unit.
pub fn ms(value_ms: f64) -> String {
    if !value_ms.is_finite() {
        return "–".into();
    }
    if value_ms.abs() < 10.0 {
        format!("{value_ms:.2}")
    } else if value_ms.abs() < 1_000.0 {
        format!("{value_ms:.1}")
    } else {
        thousands(value_ms.round() as u64)
    }
}

/// Seconds with one decimal, for offsets and durations in a run of seconds to hours.
pub fn seconds(value_ms: u64) -> String {
    format!("{:.1}", value_ms as f64 / 1e3)
}

/// A signed offset from the run start in seconds (an event may precede the load).
pub fn offset_seconds(t_ms: u64, origin_ms: u64) -> String {
    if t_ms >= origin_ms {
        seconds(t_ms - origin_ms)
    } else {
        format!("−{}", seconds(origin_ms - t_ms))
    }
}

/// A signed offset from the run start in seconds to the millisecond, for events that a
/// few milliseconds apart (the phases of an upgrade).
pub fn offset_seconds_ms(t_ms: u64, origin_ms: u64) -> String {
    let (sign, d) = if t_ms >= origin_ms {
        ("", t_ms - origin_ms)
    } else {
        ("−", origin_ms - t_ms)
    };
    format!("{sign}{}.{:03}", d / 1000, d % 1000)
}

/// A duration in a table where phases last from milliseconds to minutes: "40 ms",
/// "3.2 s", "12 min 05 s".
pub fn ms_duration(value_ms: u64) -> String {
    if value_ms < 1_000 {
        format!("{value_ms} ms")
    } else if value_ms < 10_000 {
        format!("{:.2} s", value_ms as f64 / 1e3)
    } else {
        duration(value_ms)
    }
}

/// A percentile's number without trailing zeros: "50", "99", "99.9", "99.99".
pub fn percent(p: f64) -> String {
    if !p.is_finite() {
        return "–".into();
    }
    let s = format!("{p:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A percentile rounded down to two significant digits of its distance to 100 (94.9881 ->
/// 94.9, 99.9749 -> 99.97), for saying how far a curve reaches without claiming more.
pub fn round_down_percentile(p: f64) -> f64 {
    let rest = 100.0 - p;
    if !(rest > 0.0 && rest.is_finite()) {
        return p;
    }
    let scale = 10f64.powf(rest.log10().floor() - 1.0);
    let rest = (rest / scale - 1e-9).ceil() * scale;
    let decimals = (-(scale.log10().round())).max(0.0) as i32;
    let p = 100.0 - rest;
    let f = 10f64.powi(decimals);
    (p * f).round() / f
}

/// Milliseconds with a sign, a true minus for the negative ones: "−25", "+40", "0".
pub fn signed_ms(ms: i64) -> String {
    match ms {
        0 => "0".into(),
        m if m < 0 => format!("−{}", m.unsigned_abs()),
        m => format!("+{m}"),
    }
}

/// A duration for a headline: "62.4 s", "12 min 05 s", "1 h 02 min".
pub fn duration(value_ms: u64) -> String {
    let s = value_ms / 1000;
    if s < 120 {
        format!("{} s", seconds(value_ms))
    } else if s < 3600 {
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        format!("{} h {:02} min", s / 3600, (s % 3600) / 60)
    }
}

/// An integer grouped by threes: "1,204,331".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let head = (digits.len() - 1) % 3 + 1;
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    out.push_str(&digits[..head]);
    for group in digits.as_bytes()[head..].chunks(3) {
        out.push(',');
        out.extend(group.iter().map(|&b| char::from(b)));
    }
    out
}

/// A rate: grouped integer above 100, one decimal below (a slow closed-loop run).
pub fn rate(per_s: f64) -> String {
    if !per_s.is_finite() || per_s < 0.0 {
        "–".into()
    } else if per_s >= 100.0 {
        thousands(per_s.round() as u64)
    } else {
        format!("{per_s:.1}")
    }
}

/// A ratio b/a as "1.07×", or a dash when a is zero.
pub fn ratio(b: f64, a: f64) -> Option<f64> {
    (a > 0.0 && b.is_finite() && a.is_finite()).then(|| b / a)
}

pub fn times(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}×")
    } else if r >= 10.0 {
        format!("{r:.1}×")
    } else {
        format!("{r:.2}×")
    }
}

/// Milliseconds since the Unix epoch as a UTC date and time ("2024-12-24 09:26:40 UTC"),
/// without a calendar crate: days to civil date after Howard Hinnant's algorithm.
pub fn utc(t_ms: u64) -> String {
    let secs = t_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_keep_two_or_three_digits() {
        assert_eq!(latency_us(0), "0 µs");
        assert_eq!(latency_us(850), "850 µs");
        assert_eq!(latency_us(1_240), "1.2 ms");
        assert_eq!(latency_us(41_030), "41.0 ms");
        assert_eq!(latency_us(412_000), "412 ms");
        assert_eq!(latency_us(2_500_000), "2.50 s");
        assert_eq!(latency_tick_us(10_000.0), "10 ms");
        assert_eq!(latency_tick_us(2_000.0), "2 ms");
        assert_eq!(latency_tick_us(1_000_000.0), "1 s");
        assert_eq!(latency_tick_us(500.0), "500 µs");
        assert_eq!(rate_tick(0.0), "0");
        assert_eq!(rate_tick(25_000.0), "25,000");
        assert_eq!(rate_tick(0.2), "0.2");
    }

    #[test]
    fn numbers_and_times() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_204_331), "1,204,331");
        assert_eq!(rate(20_113.4), "20,113");
        assert_eq!(rate(12.34), "12.3");
        assert_eq!(ms(3.8), "3.80");
        assert_eq!(ms(11.63), "11.6");
        assert_eq!(seconds(24_050), "24.1");
        assert_eq!(offset_seconds(900, 1_000), "−0.1");
        assert_eq!(duration(62_400), "62.4 s");
        assert_eq!(duration(725_000), "12 min 05 s");
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_735_032_400_000), "2024-12-24 09:26:40 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(times(1.0 / 0.96), "1.04×");
        assert_eq!(percent(99.9), "99.9");
        assert_eq!(percent(round_down_percentile(94.9881)), "94.9");
        assert_eq!(percent(round_down_percentile(99.9749)), "99.974");
        assert_eq!(percent(round_down_percentile(99.0)), "99");
        assert_eq!(percent(round_down_percentile(50.0)), "50");
        assert_eq!(percent(99.0), "99");
        assert_eq!(percent(99.99), "99.99");
        assert_eq!(ms_duration(40), "40 ms");
        assert_eq!(ms_duration(3_200), "3.20 s");
        assert_eq!(ms_duration(62_400), "62.4 s");
        assert_eq!(offset_seconds_ms(15_010, 0), "15.010");
    }

    #[test]
    fn escaping_covers_content_and_attributes() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
