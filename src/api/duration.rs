//! ISO 8601 durations as they appear in the API (`PT1H`, `P1D`, `PT90M`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

/// CEL shape check for an ISO 8601 duration without years or months (their length is not
/// fixed). The semantic check (value > 0, no overflow) lives in `crate::validate`.
/// Weeks stand alone (`P2W`), as ISO 8601 has them: `P1W1D` is not a duration.
pub const DURATION_CEL_SHAPE: &str =
    r"^P(?:\d+W|(?:\d+D)?(?:T(?:\d+H)?(?:\d+M)?(?:\d+(?:\.\d+)?S)?)?)$";

/// An ISO 8601 duration such as `PT1H`, `PT30M`, `P1D` or `P1DT2H`. Years and months are not
/// accepted because their length is not fixed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
#[schemars(transform = duration_schema)]
pub struct IsoDuration(pub String);

fn duration_schema(s: &mut schemars::Schema) {
    s.insert("type".into(), "string".into());
    s.insert("maxLength".into(), 64.into());
}

impl IsoDuration {
    /// Wraps a string without checking it (checks happen in `validate`).
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// Parses into a signed chrono duration. Errors name what is wrong in one sentence.
    pub fn parse(&self) -> Result<chrono::Duration, String> {
        parse_iso_duration(&self.0)
    }

    /// Formats a chrono duration as ISO 8601 (`PT1H30M`, `PT45S`, `P1DT2H`).
    pub fn from_chrono(d: chrono::Duration) -> Self {
        Self(format_iso_duration(d))
    }
}

impl fmt::Display for IsoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Longest duration accepted anywhere in the API: 366 days. Nothing temporary lasts longer,
/// and the bound keeps every timestamp computation far from overflow.
pub const MAX_DURATION_SECS: i64 = 366 * 24 * 3600;

/// Parses an ISO 8601 duration (via the `iso8601` crate) into a chrono duration.
pub fn parse_iso_duration(s: &str) -> Result<chrono::Duration, String> {
    if s.is_empty() {
        return Err("is empty; expected an ISO 8601 duration such as PT1H".into());
    }
    if s.len() > 64 {
        return Err("is longer than 64 characters".into());
    }
    // The iso8601 crate accepts a few lenient forms (e.g. lowercase, `P` alone); require the
    // canonical upper-case shape first so the CRD's CEL rule and this parser agree.
    if !is_canonical_shape(s) {
        return Err(format!(
            "{s:?} is not an ISO 8601 duration without years or months (examples: PT15M, PT1H, P1DT12H)"
        ));
    }
    // ISO 8601 has weeks only on their own (PnW); the iso8601 crate would read `P1W1D` as
    // one week and drop the day.
    if s.contains('W') && s.len() > s.find('W').map_or(0, |i| i + 1) {
        return Err(format!(
            "{s:?} combines weeks with other units, which ISO 8601 does not allow; write days instead (P8D for a week and a day)"
        ));
    }
    // Each number's size first: the iso8601 crate's 32-bit fields would wrap a huge one (to
    // zero or to something short) instead of saying it is too long.
    if magnitude_secs(s) > MAX_DURATION_SECS as u128 {
        return Err(format!("{s:?} is longer than the maximum of 366 days"));
    }
    let parsed: iso8601::Duration = s
        .parse()
        .map_err(|e| format!("{s:?} is not an ISO 8601 duration: {e}"))?;
    let secs: i64 = match parsed {
        iso8601::Duration::Weeks(w) => i64::from(w) * 7 * 86_400,
        iso8601::Duration::YMDHMS {
            year,
            month,
            day,
            hour,
            minute,
            second,
            millisecond,
        } => {
            if year != 0 || month != 0 {
                return Err(format!(
                    "{s:?} uses years or months, whose length is not fixed; use days (P30D)"
                ));
            }
            let total = i64::from(day) * 86_400
                + i64::from(hour) * 3_600
                + i64::from(minute) * 60
                + i64::from(second);
            if millisecond != 0 {
                return Err(format!("{s:?} has fractional seconds; use whole seconds"));
            }
            total
        }
    };
    if secs <= 0 {
        return Err(format!("{s:?} must be longer than zero"));
    }
    if secs > MAX_DURATION_SECS {
        return Err(format!("{s:?} is longer than the maximum of 366 days"));
    }
    Ok(chrono::Duration::seconds(secs))
}

/// An upper bound of the seconds a canonically shaped duration spells (fractions dropped;
/// saturating, so any number too big to hold counts as too long).
fn magnitude_secs(s: &str) -> u128 {
    let mut total: u128 = 0;
    let mut number: u128 = 0;
    let mut fraction = false;
    let mut in_time = false;
    for c in s.chars().skip(1) {
        match c {
            'T' => in_time = true,
            '0'..='9' if !fraction => {
                number = number
                    .saturating_mul(10)
                    .saturating_add(u128::from(c as u8 - b'0'));
            }
            '.' => fraction = true,
            unit => {
                let scale: u128 = match (unit, in_time) {
                    ('W', false) => 7 * 86_400,
                    ('D', false) => 86_400,
                    ('H', true) => 3_600,
                    ('M', true) => 60,
                    _ => 1,
                };
                total = total.saturating_add(number.saturating_mul(scale));
                number = 0;
                fraction = false;
            }
        }
    }
    total
}

/// `P[nW][nD][T[nH][nM][n[.n]S]]` with at least one component and nothing after a lone `T`.
fn is_canonical_shape(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('P') else {
        return false;
    };
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) => {
            if t.is_empty() {
                return false;
            }
            (d, Some(t))
        }
        None => (rest, None),
    };
    if date.is_empty() && time.is_none() {
        return false;
    }
    components_ok(date, &['W', 'D']) && time.is_none_or(|t| components_ok(t, &['H', 'M', 'S']))
}

fn components_ok(part: &str, units: &[char]) -> bool {
    let mut next_unit = 0usize;
    let mut digits = 0usize;
    let mut dot = false;
    for c in part.chars() {
        if c.is_ascii_digit() {
            digits += 1;
        } else if c == '.' && !dot && digits > 0 {
            dot = true;
            digits = 0;
        } else {
            let Some(pos) = units[next_unit..].iter().position(|u| *u == c) else {
                return false;
            };
            if digits == 0 || (dot && c != 'S') {
                return false;
            }
            next_unit += pos + 1;
            digits = 0;
            dot = false;
        }
    }
    digits == 0 && !dot
}

/// Formats whole seconds as a compact ISO 8601 duration.
pub fn format_iso_duration(d: chrono::Duration) -> String {
    let mut secs = d.num_seconds().max(0);
    if secs == 0 {
        return "PT0S".into();
    }
    let days = secs / 86_400;
    secs %= 86_400;
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::from("P");
    if days > 0 {
        out.push_str(&format!("{days}D"));
    }
    if h + m + s > 0 {
        out.push('T');
        if h > 0 {
            out.push_str(&format!("{h}H"));
        }
        if m > 0 {
            out.push_str(&format!("{m}M"));
        }
        if s > 0 {
            out.push_str(&format!("{s}S"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        for (s, secs) in [
            ("PT1H", 3600),
            ("PT30M", 1800),
            ("PT45S", 45),
            ("P1D", 86_400),
            ("P1DT2H", 93_600),
            ("P2W", 14 * 86_400),
            ("PT1H30M", 5400),
        ] {
            assert_eq!(
                parse_iso_duration(s).map(|d| d.num_seconds()),
                Ok(secs),
                "{s}"
            );
        }
    }

    #[test]
    fn rejects_bad_forms() {
        for s in [
            "", "P", "PT", "1H", "pt1h", "PT0S", "P1Y", "P1M", "PT1.5S", "P1DT", "PTH", "PT1H1H",
            "PT1M1H", "P400D", "PT-1H", "P1D2W",
        ] {
            assert!(parse_iso_duration(s).is_err(), "{s} should be rejected");
        }
    }

    #[test]
    fn the_misleading_cases_get_the_right_message() {
        for s in ["P1W1D", "P1WT1H", "P2W3D"] {
            let e = parse_iso_duration(s).expect_err(s);
            assert!(e.contains("combines weeks with other units"), "{s}: {e}");
        }
        for s in [
            "PT4294967296H",
            "PT18446744073709551616S",
            "P99999999999999999999999999999999999999999D",
            "P53W",
        ] {
            let e = parse_iso_duration(s).expect_err(s);
            assert!(
                e.contains("longer than the maximum of 366 days"),
                "{s}: {e}"
            );
        }
        assert!(
            parse_iso_duration("PT0S")
                .expect_err("zero")
                .contains("longer than zero")
        );
        // The CRD's CEL shape agrees: weeks alone, nothing with them.
        let re = regex_lite_shape();
        for ok in ["P2W", "P1D", "PT1H", "P1DT2H"] {
            assert!(re(ok), "{ok}");
        }
        for bad in ["P1W1D", "P1WT1H", "P1D1W"] {
            assert!(!re(bad), "{bad}");
        }
    }

    /// `DURATION_CEL_SHAPE` as the API server would apply it (CEL `matches` is RE2; the shape
    /// uses only what the `regex` crate reads the same way).
    fn regex_lite_shape() -> impl Fn(&str) -> bool {
        let re = regex::Regex::new(DURATION_CEL_SHAPE).expect("shape compiles");
        move |s| re.is_match(s)
    }

    #[test]
    fn formats_round_trip() {
        for secs in [1, 59, 60, 3600, 5400, 86_400, 93_784] {
            let s = format_iso_duration(chrono::Duration::seconds(secs));
            assert_eq!(
                parse_iso_duration(&s).map(|d| d.num_seconds()),
                Ok(secs),
                "{s}"
            );
        }
    }
}
