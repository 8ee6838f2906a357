//! Parsing context values into the kinds targeting compares: semantic
//! versions, timestamps and numbers.

use chrono::{DateTime, NaiveDate, NaiveDateTime};
use std::cmp::Ordering;

/// A version as (major, minor, patch, tag); anything unparsable is zero, so
/// it sorts first instead of failing the request.
pub type VersionTuple = (u64, u64, u64, u64);

/// Parses `a.b`, `a.b.c` or `a.b.c.d` (pre-release suffix after `-` ignored).
/// A third part longer than three digits is a build tag: `1.2.1234` is
/// `(1, 2, 0, 1234)`.
pub fn parse_version(s: &str) -> Option<VersionTuple> {
    let core = s.split('-').next().unwrap_or("");
    let mut parts = [0u64; 4];
    let mut lens = [0usize; 4];
    let mut n = 0;
    for part in core.split('.') {
        if n == 4 || part.is_empty() || part.len() > 10 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *parts.get_mut(n)? = part.parse().ok()?;
        *lens.get_mut(n)? = part.len();
        n += 1;
    }
    let [a, b, c, d] = parts;
    match n {
        2 => Some((a, b, 0, 0)),
        3 if lens[2] > 3 => Some((a, b, 0, c)),
        3 => Some((a, b, c, 0)),
        4 => Some((a, b, c, d)),
        _ => None,
    }
}

pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let z = (0, 0, 0, 0);
    parse_version(a).unwrap_or(z).cmp(&parse_version(b).unwrap_or(z))
}

/// Seconds and nanos since the epoch, UTC.
pub type Instant = (i64, u32);

/// RFC 3339, naive `YYYY-MM-DD[T ]HH:MM:SS[.f]` (as UTC), or a bare date.
pub fn parse_timestamp(s: &str) -> Option<Instant> {
    if let Some(pos) = s.find(['T', ' ']) {
        let time = &s[pos + 1..];
        if time.contains(['Z', '+', '-']) {
            let dt = DateTime::parse_from_rfc3339(s).ok()?;
            return Some((dt.timestamp(), dt.timestamp_subsec_nanos()));
        }
        for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
            if let Ok(dt) = NaiveDateTime::parse_from_str(s, fmt) {
                let utc = dt.and_utc();
                return Some((utc.timestamp(), utc.timestamp_subsec_nanos()));
            }
        }
        return None;
    }
    let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    let utc = d.and_hms_opt(0, 0, 0)?.and_utc();
    Some((utc.timestamp(), 0))
}

/// A number read as a timestamp: epoch milliseconds from 1e12 up, else
/// epoch seconds. Fractions are truncated.
pub fn number_to_timestamp(n: f64) -> Option<Instant> {
    if !n.is_finite() || n.abs() >= 9.2e18 {
        return None;
    }
    let v = n as i64;
    if v.abs() >= 1_000_000_000_000 {
        Some((v.div_euclid(1000), (v.rem_euclid(1000) as u32) * 1_000_000))
    } else {
        Some((v, 0))
    }
}

/// A number compared as a string: Rust's shortest round-trip form without
/// exponent (`123`, `123.4`, `1e21` as all its digits).
pub fn number_to_string(n: f64) -> String {
    format!("{n}")
}

/// A string compared as a number. Surrounding whitespace is not a number.
pub fn parse_number(s: &str) -> Option<f64> {
    s.parse::<f64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("1.2"), Some((1, 2, 0, 0)));
        assert_eq!(parse_version("1.2.3"), Some((1, 2, 3, 0)));
        assert_eq!(parse_version("1.2.1234"), Some((1, 2, 0, 1234)));
        assert_eq!(parse_version("1.2.3.4"), Some((1, 2, 3, 4)));
        assert_eq!(parse_version("1.2.3-beta.1"), Some((1, 2, 3, 0)));
        assert_eq!(parse_version("1"), None);
        assert_eq!(parse_version("1.2.3.4.5"), None);
        assert_eq!(parse_version("1..2"), None);
        assert_eq!(parse_version("1.x"), None);
        assert_eq!(parse_version("12345678901.0"), None);
        assert_eq!(compare_versions("1.10.0", "1.9.9"), Ordering::Greater);
        assert_eq!(compare_versions("1.0", "1.0.0"), Ordering::Equal);
        assert_eq!(compare_versions("garbage", "0.0"), Ordering::Equal);
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("2024-01-02"), Some((1704153600, 0)));
        assert_eq!(parse_timestamp("2024-01-02T03:04:05Z"), Some((1704164645, 0)));
        assert_eq!(parse_timestamp("2024-01-02T03:04:05+01:00"), Some((1704161045, 0)));
        assert_eq!(parse_timestamp("2024-01-02T03:04:05"), Some((1704164645, 0)));
        assert_eq!(parse_timestamp("2024-01-02 03:04:05.5"), Some((1704164645, 500_000_000)));
        assert_eq!(parse_timestamp(""), None);
        assert_eq!(parse_timestamp("not-a-timestamp"), None);
        assert_eq!(number_to_timestamp(1704164645.9), Some((1704164645, 0)));
        assert_eq!(number_to_timestamp(1704164645123.0), Some((1704164645, 123_000_000)));
        assert_eq!(number_to_timestamp(f64::NAN), None);
    }

    #[test]
    fn numbers() {
        assert_eq!(number_to_string(123.0), "123");
        assert_eq!(number_to_string(123.4), "123.4");
        assert_eq!(number_to_string(1e21), "1000000000000000000000");
        assert_eq!(number_to_string(1.5e-7), "0.00000015");
        assert_eq!(number_to_string(-0.0), "-0");
        assert_eq!(parse_number("1e2"), Some(100.0));
        assert_eq!(parse_number("+5"), Some(5.0));
        assert_eq!(parse_number(" 100"), None);
        assert_eq!(parse_number("abc"), None);
    }
}
