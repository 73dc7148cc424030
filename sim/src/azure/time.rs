//! ISO 8601 durations and the date-time format ARM uses.

use chrono::{DateTime, Duration, SecondsFormat, Utc};

/// Parses an ISO 8601 duration such as `PT8H`, `P90D`, `PT1H30M`, `PT2S`, `PT0.5S`.
/// Years count as 365 days and months as 30 days (ARM policies use days and hours).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let rest = s.strip_prefix('P').or_else(|| s.strip_prefix('p'))?;
    if rest.is_empty() {
        return None;
    }
    let mut in_time = false;
    let mut total_ms: i64 = 0;
    let mut num = String::new();
    let mut any = false;
    for c in rest.chars() {
        match c {
            'T' | 't' => {
                if in_time || !num.is_empty() {
                    return None;
                }
                in_time = true;
            }
            '0'..='9' | '.' | ',' => num.push(if c == ',' { '.' } else { c }),
            _ => {
                if num.is_empty() {
                    return None;
                }
                let v: f64 = num.parse().ok()?;
                if !v.is_finite() || v < 0.0 {
                    return None;
                }
                num.clear();
                let unit_ms: f64 = match (in_time, c.to_ascii_uppercase()) {
                    (false, 'Y') => 365.0 * 86_400_000.0,
                    (false, 'M') => 30.0 * 86_400_000.0,
                    (false, 'W') => 7.0 * 86_400_000.0,
                    (false, 'D') => 86_400_000.0,
                    (true, 'H') => 3_600_000.0,
                    (true, 'M') => 60_000.0,
                    (true, 'S') => 1000.0,
                    _ => return None,
                };
                let add = v * unit_ms;
                if add > 1e15 {
                    return None;
                }
                total_ms = total_ms.checked_add(add.round() as i64)?;
                any = true;
            }
        }
    }
    // Beyond ~31,000 years nothing is meaningful (and date arithmetic would overflow).
    if !num.is_empty() || !any || total_ms > 1_000_000_000_000_000 {
        return None;
    }
    Some(Duration::milliseconds(total_ms))
}

/// Formats a duration as ISO 8601 (`PT8H`, `P1D`, `PT1H30M`, `PT2S`).
pub fn format_duration(d: Duration) -> String {
    let total_ms = d.num_milliseconds().max(0);
    let mut secs = total_ms / 1000;
    let ms = total_ms % 1000;
    if ms == 0 && secs > 0 && secs % 86_400 == 0 {
        return format!("P{}D", secs / 86_400);
    }
    let days = secs / 86_400;
    secs %= 86_400;
    let h = secs / 3600;
    let m = (secs % 3600) / 60;
    let s = secs % 60;
    let mut out = String::from("P");
    if days > 0 {
        out.push_str(&format!("{days}D"));
    }
    out.push('T');
    if h > 0 {
        out.push_str(&format!("{h}H"));
    }
    if m > 0 {
        out.push_str(&format!("{m}M"));
    }
    if s > 0 || ms > 0 || (h == 0 && m == 0) {
        if ms > 0 {
            out.push_str(&format!("{s}.{ms:03}S"));
        } else {
            out.push_str(&format!("{s}S"));
        }
    }
    if out.ends_with('T') {
        out.pop();
    }
    out
}

/// Formats a UTC time as ARM does: RFC 3339, `Z`, seven fractional digits when there is a
/// fraction (`2018-07-12T09:53:03.3658798Z`), none otherwise.
pub fn fmt_time(t: DateTime<Utc>) -> String {
    let ticks = t.timestamp_subsec_nanos() / 100;
    if ticks == 0 {
        t.to_rfc3339_opts(SecondsFormat::Secs, true)
    } else {
        format!("{}.{ticks:07}Z", t.format("%Y-%m-%dT%H:%M:%S"))
    }
}

/// Parses an RFC 3339 date-time (any number of fractional digits, `Z` or an offset).
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
        .or_else(|| {
            // ARM also accepts a date-time without an offset (taken as UTC).
            chrono::NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|n| n.and_utc())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip() {
        assert_eq!(parse_duration("PT8H"), Some(Duration::hours(8)));
        assert_eq!(parse_duration("P90D"), Some(Duration::days(90)));
        assert_eq!(parse_duration("PT1H30M"), Some(Duration::minutes(90)));
        assert_eq!(parse_duration("PT0.5S"), Some(Duration::milliseconds(500)));
        assert_eq!(parse_duration("P"), None);
        assert_eq!(parse_duration("PT"), None);
        assert_eq!(parse_duration("8H"), None);
        assert_eq!(parse_duration("PTxH"), None);
        assert_eq!(format_duration(Duration::hours(8)), "PT8H");
        assert_eq!(format_duration(Duration::days(2)), "P2D");
        assert_eq!(format_duration(Duration::minutes(90)), "PT1H30M");
        assert_eq!(format_duration(Duration::seconds(2)), "PT2S");
        assert_eq!(format_duration(Duration::zero()), "PT0S");
    }

    #[test]
    fn times_parse() {
        assert!(parse_time("2018-07-12T09:53:03.3658798Z").is_some());
        assert!(parse_time("2021-03-17T02:54:27.167+00:00").is_some());
        assert!(parse_time("not a time").is_none());
    }
}
