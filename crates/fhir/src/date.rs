//! FHIR dates as half-open millisecond ranges, and the search prefixes over them.
//!
//! `2020` is the whole year, `2020-03-04` the whole day, a dateTime with seconds a
//! one-second range; a Period spans from its start's range to its end's. Comparison
//! follows the R4 search rules for ranges (`ge` means "overlaps or is after").

use time::format_description::well_known::Rfc3339;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

/// `[lo, hi)` in milliseconds since the Unix epoch (negative before 1970).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub lo: i64,
    pub hi: i64,
}

fn ms(dt: OffsetDateTime) -> i64 {
    (dt.unix_timestamp_nanos() / 1_000_000) as i64
}

fn day_start(d: Date) -> i64 {
    ms(PrimitiveDateTime::new(d, Time::MIDNIGHT).assume_utc())
}

/// Parses a FHIR date, dateTime or instant (or a search value, where a time without
/// zone is taken as UTC) into the range it denotes.
pub fn parse(s: &str) -> Option<Range> {
    // Every valid form is ASCII; checking first keeps all the byte slicing below on
    // character boundaries (a multi-byte character at byte 16 used to panic).
    if !s.is_ascii() {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<i32> {
        let p = s.get(r)?;
        p.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| p.parse().ok())?
    };
    match s.len() {
        4 => {
            let y = digits(0..4)?;
            let lo = Date::from_calendar_date(y, Month::January, 1).ok()?;
            let hi = Date::from_calendar_date(y + 1, Month::January, 1).ok()?;
            Some(Range {
                lo: day_start(lo),
                hi: day_start(hi),
            })
        }
        7 if s.as_bytes()[4] == b'-' => {
            let (y, m) = (digits(0..4)?, digits(5..7)?);
            let month = Month::try_from(u8::try_from(m).ok()?).ok()?;
            let lo = Date::from_calendar_date(y, month, 1).ok()?;
            let (ny, nm) = if month == Month::December {
                (y + 1, Month::January)
            } else {
                (y, month.next())
            };
            let hi = Date::from_calendar_date(ny, nm, 1).ok()?;
            Some(Range {
                lo: day_start(lo),
                hi: day_start(hi),
            })
        }
        10 if s.as_bytes()[4] == b'-' && s.as_bytes()[7] == b'-' => {
            let month = Month::try_from(u8::try_from(digits(5..7)?).ok()?).ok()?;
            let d =
                Date::from_calendar_date(digits(0..4)?, month, u8::try_from(digits(8..10)?).ok()?)
                    .ok()?;
            let lo = day_start(d);
            Some(Range {
                lo,
                hi: lo + 86_400_000,
            })
        }
        n if n > 10 && s.as_bytes()[10] == b'T' => parse_datetime(s),
        _ => None,
    }
}

fn parse_datetime(s: &str) -> Option<Range> {
    let has_zone = s.ends_with('Z') || {
        let t = &s[11..];
        t.contains('+') || t.contains('-')
    };
    let full = if has_zone {
        s.to_owned()
    } else {
        format!("{s}Z")
    };
    // RFC 3339 needs seconds; FHIR search values may stop at minutes.
    let (full, width) = match OffsetDateTime::parse(&full, &Rfc3339) {
        Ok(dt) => return Some(precision(&full, dt)),
        Err(_) if full.len() >= 17 && full.as_bytes()[16] != b':' => {
            (format!("{}:00{}", &full[..16], &full[16..]), 60_000)
        }
        Err(_) => return None,
    };
    let dt = OffsetDateTime::parse(&full, &Rfc3339).ok()?;
    let lo = ms(dt);
    Some(Range { lo, hi: lo + width })
}

/// A dateTime covers its stated precision: a second, or a millisecond with fractions.
fn precision(s: &str, dt: OffsetDateTime) -> Range {
    let lo = ms(dt);
    let fraction = s.len() > 19 && s.as_bytes()[19] == b'.';
    Range {
        lo,
        hi: lo + if fraction { 1 } else { 1000 },
    }
}

/// A search prefix (R4 §3.1.1.4.1.1; `ap` is not supported).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
}

/// Splits `ge2020-01-01` into its prefix and range.
pub fn parse_search(v: &str) -> Option<(Prefix, Range)> {
    let (p, rest) = match v.get(..2) {
        Some("eq") => (Prefix::Eq, &v[2..]),
        Some("ne") => (Prefix::Ne, &v[2..]),
        Some("gt") => (Prefix::Gt, &v[2..]),
        Some("lt") => (Prefix::Lt, &v[2..]),
        Some("ge") => (Prefix::Ge, &v[2..]),
        Some("le") => (Prefix::Le, &v[2..]),
        Some("sa") => (Prefix::Sa, &v[2..]),
        Some("eb") => (Prefix::Eb, &v[2..]),
        _ => (Prefix::Eq, v),
    };
    Some((p, parse(rest)?))
}

/// Whether a resource value `r` matches the search `(prefix, p)`.
pub fn matches(prefix: Prefix, p: Range, r: Range) -> bool {
    match prefix {
        Prefix::Eq => r.lo >= p.lo && r.hi <= p.hi,
        Prefix::Ne => !(r.lo >= p.lo && r.hi <= p.hi),
        Prefix::Gt => r.hi > p.hi,
        Prefix::Lt => r.lo < p.lo,
        Prefix::Ge => r.hi > p.lo,
        Prefix::Le => r.lo < p.hi,
        Prefix::Sa => r.lo >= p.hi,
        Prefix::Eb => r.hi <= p.lo,
    }
}

/// An instant for `meta.lastUpdated` (UTC, millisecond precision).
pub fn instant(ms: u64) -> String {
    let dt = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    dt.format(&f)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: `2020-01-01T00:0é` (a multi-byte character at byte 16) panicked while
    /// slicing, which dropped the connection on search, create and Consent alike.
    #[test]
    fn multibyte_character_in_a_datetime_is_refused_not_a_panic() {
        for s in [
            "2020-01-01T00:0\u{e9}",
            "2020-01-01T00:00\u{e9}",
            "2020-01-01T\u{e9}0:00",
            "2020-01-01T00:0\u{1F600}Z",
            "202\u{e9}",
            "2020-\u{e9}",
            "2020-01-0\u{e9}",
        ] {
            assert_eq!(parse(s), None, "{s:?}");
        }
        // Every prefix of a valid dateTime with any character appended parses or is
        // refused, never panics.
        let valid = "2020-01-01T00:00:00.000+01:00";
        for i in 0..=valid.len() {
            for c in ['\u{e9}', '\u{1F600}', 'T', ':', '-', '+', 'Z', '0'] {
                let _ = parse(&format!("{}{c}{}", &valid[..i], &valid[i..]));
            }
        }
    }

    #[test]
    fn partial_dates_are_their_whole_span() {
        let y = parse("2020").unwrap();
        assert_eq!(y.hi - y.lo, 366 * 86_400_000);
        let m = parse("2021-02").unwrap();
        assert_eq!(m.hi - m.lo, 28 * 86_400_000);
        let d = parse("1969-12-31").unwrap();
        assert_eq!((d.lo, d.hi), (-86_400_000, 0));
        let t = parse("1970-01-01T01:00:00+01:00").unwrap();
        assert_eq!((t.lo, t.hi), (0, 1000));
        assert_eq!(parse("1970-01-01T00:01").unwrap().lo, 60_000);
        for bad in [
            "20",
            "2020-13",
            "2020-02-30",
            "abcd",
            "2020-01-01T25:00:00Z",
            "",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn prefixes_follow_range_semantics() {
        let day = parse("2020-06-15").unwrap();
        let (ge, p) = parse_search("ge2020-06-15").unwrap();
        assert!(matches(ge, p, day));
        let (lt, p) = parse_search("lt2020-06-15").unwrap();
        assert!(!matches(lt, p, day));
        let (eq, p) = parse_search("2020").unwrap();
        assert!(matches(eq, p, day));
        let (gt, p) = parse_search("gt2020").unwrap();
        assert!(!matches(gt, p, day));
        assert!(parse_search("ap2020").is_none());
    }

    #[test]
    fn instants_have_milliseconds() {
        assert_eq!(instant(1_000), "1970-01-01T00:00:01.000Z");
    }
}
