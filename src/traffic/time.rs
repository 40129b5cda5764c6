//! Timestamps of traffic files: RFC 3339 (`2026-11-30T12:00:00.123Z`, `...+01:00`), as HAR
//! writes `startedDateTime` and as `serve --record` writes `ts`, in Unix nanoseconds.
//!
//! Small and exact on purpose: the proleptic Gregorian calendar, no leap seconds (`:60` is
//! refused, as Unix time has none), fractions of any length truncated to nanoseconds.

/// Nanoseconds since 1970-01-01T00:00:00Z of an RFC 3339 date-time; `None` if it is not one
/// or is before 1970. A space or lowercase `t` may separate date and time, `z` may be lowercase.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.trim().as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let digits = b.get(r)?;
        digits.iter().try_fold(0u64, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
        })
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0u64;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                nanos = nanos * 10 + u64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..9 {
            nanos *= 10;
        }
    }
    let offset_secs: i64 = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let hh = num(i + 1..i + 3)?;
            let mm = num(i + 4..i + 6)?;
            if hh > 23 || mm > 59 {
                return None;
            }
            let secs = (hh * 3600 + mm * 60) as i64;
            if *sign == b'+' { secs } else { -secs }
        }
        _ => return None,
    };
    let days = days_from_civil(year as i64, month, day);
    let local = days * 86_400 + (hour * 3600 + minute * 60 + second) as i64;
    let utc = local - offset_secs;
    let utc = u64::try_from(utc).ok()?;
    utc.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// `2026-11-30T12:00:00.123456Z` (microseconds) for Unix nanoseconds `t`.
pub fn format_rfc3339(t: u64) -> String {
    let secs = t / 1_000_000_000;
    let micros = (t % 1_000_000_000) / 1_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn is_leap(y: u64) -> bool {
    (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400)
}

fn days_in_month(y: u64, m: u64) -> u64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u64, d: u64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count since 1970-01-01 (the inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, u64, u64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn parses_the_forms_har_writers_use() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        // 2026-11-30 is day 20_787 of the Unix epoch.
        let noon = (20_787 * 86_400 + 12 * 3600) * S;
        assert_eq!(parse_rfc3339("2026-11-30T12:00:00Z"), Some(noon));
        assert_eq!(
            parse_rfc3339("2026-11-30T12:00:00.123Z"),
            Some(noon + 123_000_000)
        );
        // Chrome writes milliseconds and Z; Firefox and Charles an offset; Fiddler 7 digits.
        assert_eq!(
            parse_rfc3339("2026-11-30T13:00:00.5+01:00"),
            Some(noon + 500_000_000)
        );
        assert_eq!(
            parse_rfc3339("2026-11-30T07:30:00.1234567-04:30"),
            Some(noon + 123_456_700)
        );
        assert_eq!(parse_rfc3339("2026-11-30 12:00:00.0000000001z"), Some(noon));
        assert_eq!(
            parse_rfc3339("2024-02-29T00:00:00Z"),
            Some(19_782 * 86_400 * S)
        );
    }

    #[test]
    fn refuses_what_is_not_a_date_time() {
        for bad in [
            "",
            "2026-11-30",
            "2026-11-30T12:00:00",
            "2026-11-30T12:00:00+0100",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-11-31T00:00:00Z",
            "2026-11-30T24:00:00Z",
            "2026-11-30T12:00:60Z",
            "2026-11-30T12:00:00.Z",
            "1969-12-31T23:59:59Z",
            "2026-11-30T12:00:00Zjunk",
            "２０２６-11-30T12:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formats_and_parses_back() {
        for t in [
            0,
            1_795_000_000_123_456_000,
            951_782_400 * S,
            4_102_444_799 * S,
        ] {
            let text = format_rfc3339(t);
            assert_eq!(parse_rfc3339(&text), Some(t), "{text}");
        }
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000000Z");
    }
}
