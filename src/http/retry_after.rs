//! Reading the `Retry-After` header: how long a server asks the client to wait.
//!
//! A `503 Service Unavailable` or `429 Too Many Requests` may say when to come back,
//! either as a number of seconds (`Retry-After: 120`) or as a date
//! (`Retry-After: Fri, 31 Dec 1999 23:59:59 GMT`), per
//! [RFC 9110 §10.2.3](https://www.rfc-editor.org/rfc/rfc9110#section-10.2.3).
//! [`retry_after`] reads either form into a [`Duration`].
//!
//! # Why the rules are strict
//!
//! The header comes from the other side of the network, so it is read as untrusted
//! input: any byte sequence gives an answer or `None`, never a panic, and a value that
//! is not exactly one of the two forms is ignored rather than guessed at (`"1.5"`,
//! `"-1"`, `"+3"`, `"10 s"` all give `None`). A server cannot park a client for years
//! either: every answer is capped at [`MAX_RETRY_AFTER`] (one day, the longest delay
//! any steadfast setting accepts).
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use http::{header::RETRY_AFTER, HeaderMap, HeaderValue};
//! use steadfast::http::retry_after::retry_after;
//!
//! let mut headers = HeaderMap::new();
//! headers.insert(RETRY_AFTER, HeaderValue::from_static("120"));
//! assert_eq!(retry_after(&headers, SystemTime::now()), Some(Duration::from_secs(120)));
//!
//! let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_747); // 08:49:07
//! headers.insert(RETRY_AFTER, HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"));
//! assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(30)));
//!
//! headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
//! assert_eq!(retry_after(&headers, now), None);
//! ```

use std::time::{Duration, SystemTime};

use http::header::RETRY_AFTER;
use http::{HeaderMap, HeaderValue};

/// The longest delay [`retry_after`] returns: one day.
///
/// Larger delta-seconds, and dates further ahead, are capped to it. A longer wait is
/// almost certainly a mistake on the server's side, and the same limit bounds every
/// duration a steadfast builder accepts.
pub const MAX_RETRY_AFTER: Duration = crate::config::MAX_DURATION;

/// How long the `Retry-After` header in `headers` asks to wait, as of `now`.
///
/// - **delta-seconds** (`"120"`): ASCII digits only, no sign, no fraction, any
///   number of leading zeros. Values too large for any integer saturate.
/// - **HTTP-date** (IMF-fixdate `"Sun, 06 Nov 1994 08:49:37 GMT"`, or the obsolete
///   RFC 850 and asctime forms every recipient must accept), read with
///   [`httpdate::parse_http_date`]: the time from `now` until that date, or
///   [`Duration::ZERO`] for a date that is not after `now`.
///
/// Either way the result is capped at [`MAX_RETRY_AFTER`]. Leading and trailing
/// spaces and tabs are ignored, as HTTP ignores them around any field value.
///
/// `None` when there is no `Retry-After` header or its value is malformed: empty,
/// non-ASCII, a signed or fractional number, a date in no accepted form.
///
/// # More than one header
///
/// `Retry-After` is a singleton field; a response that carries it twice is
/// malformed. Only the **first** value is read (as [`HeaderMap::get`] does): if that one
/// is malformed the answer is `None`, and a later value is not used in its place, so
/// the answer never depends on which of several conflicting values happens to parse.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::{header::RETRY_AFTER, HeaderMap, HeaderValue};
/// use steadfast::http::retry_after::retry_after;
///
/// let mut headers = HeaderMap::new();
/// headers.append(RETRY_AFTER, HeaderValue::from_static("5"));
/// headers.append(RETRY_AFTER, HeaderValue::from_static("60"));
/// assert_eq!(retry_after(&headers, SystemTime::now()), Some(Duration::from_secs(5)));
/// ```
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    parse_retry_after(headers.get(RETRY_AFTER)?, now)
}

/// [`retry_after`] as of [`SystemTime::now`].
///
/// ```
/// use std::time::Duration;
/// use http::{header::RETRY_AFTER, HeaderMap, HeaderValue};
/// use steadfast::http::retry_after::retry_after_now;
///
/// let mut headers = HeaderMap::new();
/// assert_eq!(retry_after_now(&headers), None);
/// headers.insert(RETRY_AFTER, HeaderValue::from_static("3"));
/// assert_eq!(retry_after_now(&headers), Some(Duration::from_secs(3)));
/// ```
pub fn retry_after_now(headers: &HeaderMap) -> Option<Duration> {
    retry_after(headers, SystemTime::now())
}

/// How long one `Retry-After` value asks to wait, as of `now`: the rules of
/// [`retry_after`] for a single value.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::HeaderValue;
/// use steadfast::http::retry_after::{parse_retry_after, MAX_RETRY_AFTER};
///
/// let now = SystemTime::now();
/// assert_eq!(parse_retry_after(&HeaderValue::from_static(" 7 "), now), Some(Duration::from_secs(7)));
/// assert_eq!(parse_retry_after(&HeaderValue::from_static("99999999999999999999999"), now), Some(MAX_RETRY_AFTER));
/// assert_eq!(parse_retry_after(&HeaderValue::from_static("-1"), now), None);
/// ```
pub fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let bytes = trim_ows(value.as_bytes());
    let first = *bytes.first()?;
    if first.is_ascii_digit() {
        // No HTTP-date starts with a digit: this is delta-seconds or nothing.
        return delta_seconds(bytes);
    }
    // Non-UTF-8 obs-text stops here; `parse_http_date` refuses any other non-ASCII.
    let text = std::str::from_utf8(bytes).ok()?;
    let date = httpdate::parse_http_date(text).ok()?;
    let wait = date.duration_since(now).unwrap_or(Duration::ZERO);
    Some(wait.min(MAX_RETRY_AFTER))
}

/// `1*DIGIT`, saturating, capped at [`MAX_RETRY_AFTER`].
fn delta_seconds(bytes: &[u8]) -> Option<Duration> {
    let mut secs: u64 = 0;
    for &b in bytes {
        if !b.is_ascii_digit() {
            return None;
        }
        secs = secs.saturating_mul(10).saturating_add(u64::from(b - b'0'));
    }
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// Strips optional whitespace (spaces and horizontal tabs) from both ends.
fn trim_ows(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::UNIX_EPOCH;

    const DAY: u64 = 24 * 60 * 60;
    /// The last second httpdate can format (31 Dec 9999 23:59:59).
    const LAST_DATE: u64 = 253_402_300_799;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(RETRY_AFTER, HeaderValue::from_bytes(v).unwrap());
        }
        map
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn read(value: &str, now: SystemTime) -> Option<Duration> {
        retry_after(&headers(&[value.as_bytes()]), now)
    }

    #[test]
    fn no_header_is_none() {
        assert_eq!(retry_after(&HeaderMap::new(), SystemTime::now()), None);
        let mut other = HeaderMap::new();
        other.insert(http::header::DATE, HeaderValue::from_static("120"));
        assert_eq!(retry_after(&other, SystemTime::now()), None);
    }

    #[test]
    fn delta_seconds_forms() {
        let now = SystemTime::now();
        assert_eq!(read("0", now), Some(Duration::ZERO));
        assert_eq!(read("1", now), Some(Duration::from_secs(1)));
        assert_eq!(read("120", now), Some(Duration::from_secs(120)));
        assert_eq!(read("000042", now), Some(Duration::from_secs(42)));
        assert_eq!(read(" \t10\t ", now), Some(Duration::from_secs(10)));
        assert_eq!(read("86400", now), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn huge_delta_seconds_are_capped() {
        let now = SystemTime::now();
        assert_eq!(read("86401", now), Some(MAX_RETRY_AFTER));
        assert_eq!(read(&u64::MAX.to_string(), now), Some(MAX_RETRY_AFTER));
        assert_eq!(read(&"9".repeat(500), now), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn malformed_values_are_none() {
        let now = SystemTime::now();
        for bad in [
            "",
            " ",
            "\t",
            "-1",
            "+1",
            "1.5",
            "1e3",
            "10 s",
            "1 0",
            "0x10",
            "ten",
            "soon",
            "١٢",
            "10,20",
            "Sun, 06 Nov 1994 08:49:37",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Mon, 06 Nov 1994 08:49:37 GMT", // wrong weekday
            "Sun, 06 Nov 1969 08:49:37 GMT", // before what httpdate accepts
        ] {
            assert_eq!(read(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn non_ascii_bytes_are_none() {
        let now = SystemTime::now();
        for bad in [
            &b"\xff"[..],
            b"12\x80",
            b"\xe2\x80\x8b5",
            b"Sun, 06 Nov 1994 08:49:37 GMT\xa0",
        ] {
            assert_eq!(retry_after(&headers(&[bad]), now), None, "{bad:?}");
        }
    }

    #[test]
    fn http_dates_in_every_accepted_form() {
        let date = 784_111_777; // Sun, 06 Nov 1994 08:49:37 GMT
        let now = at(date - 30);
        for form in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "  Sun, 06 Nov 1994 08:49:37 GMT\t",
        ] {
            assert_eq!(read(form, now), Some(Duration::from_secs(30)), "{form:?}");
        }
    }

    #[test]
    fn http_date_fractions_of_now_are_kept() {
        let now = at(784_111_777 - 30) + Duration::from_millis(250);
        assert_eq!(
            read("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_millis(29_750))
        );
    }

    #[test]
    fn past_and_present_dates_are_zero() {
        let date = 784_111_777;
        let value = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert_eq!(read(value, at(date)), Some(Duration::ZERO));
        assert_eq!(read(value, at(date + 1)), Some(Duration::ZERO));
        assert_eq!(read(value, at(date + 100 * DAY)), Some(Duration::ZERO));
        assert_eq!(read(value, SystemTime::now()), Some(Duration::ZERO));
    }

    #[test]
    fn far_future_dates_are_capped() {
        assert_eq!(
            read("Fri, 31 Dec 9999 23:59:59 GMT", SystemTime::now()),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            read("Sun, 06 Nov 1994 08:49:37 GMT", UNIX_EPOCH),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn only_the_first_header_is_read() {
        let now = SystemTime::now();
        let map = headers(&[b"5", b"60"]);
        assert_eq!(retry_after(&map, now), Some(Duration::from_secs(5)));
        // A malformed first value is not replaced by a later valid one.
        let map = headers(&[b"soon", b"60"]);
        assert_eq!(retry_after(&map, now), None);
        let map = headers(&[b"", b"60"]);
        assert_eq!(retry_after(&map, now), None);
    }

    #[test]
    fn now_variant_reads_the_header() {
        assert_eq!(
            retry_after_now(&headers(&[b"3"])),
            Some(Duration::from_secs(3))
        );
        assert_eq!(retry_after_now(&headers(&[b"x"])), None);
        let soon = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(100));
        let wait = retry_after_now(&headers(&[soon.as_bytes()])).unwrap();
        assert!(wait > Duration::from_secs(97) && wait <= Duration::from_secs(100));
    }

    #[test]
    fn trim_ows_strips_only_spaces_and_tabs() {
        assert_eq!(trim_ows(b""), b"");
        assert_eq!(trim_ows(b" \t "), b"");
        assert_eq!(trim_ows(b"\t a b \t"), b"a b");
        assert_eq!(trim_ows(b"\x0b1"), b"\x0b1");
    }

    /// Header values that look like what servers send, and near misses.
    fn plausible() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            "[ \t]{0,2}[0-9+-.]{0,30}[ \t]{0,2}".prop_map(String::into_bytes),
            "(Sun|Mon|Sunday|Monday)[, ]{1,2}[0-9 ]{1,3}[- ](Nov|Feb|Xyz)[- ][0-9]{1,5} [0-9:]{1,9}( GMT)?"
                .prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..64),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in plausible(), now_secs in 0u64..=LAST_DATE + DAY) {
            let Ok(value) = HeaderValue::from_bytes(&bytes) else {
                return Ok(());
            };
            let mut map = HeaderMap::new();
            map.insert(RETRY_AFTER, value);
            if let Some(wait) = retry_after(&map, at(now_secs)) {
                prop_assert!(wait <= MAX_RETRY_AFTER);
            }
            let _ = retry_after_now(&map);
        }

        #[test]
        fn any_u32_delta_seconds_round_trips(secs in any::<u32>(), zeros in 0usize..4) {
            let value = format!("{}{secs}", "0".repeat(zeros));
            let expected = Duration::from_secs(u64::from(secs)).min(MAX_RETRY_AFTER);
            prop_assert_eq!(read(&value, SystemTime::now()), Some(expected));
            prop_assert_eq!(
                retry_after(&headers(&[HeaderValue::from(secs).as_bytes()]), UNIX_EPOCH),
                Some(expected)
            );
        }

        #[test]
        fn formatted_dates_parse_back(
            date_secs in 0u64..=LAST_DATE,
            date_nanos in 0u32..1_000_000_000,
            offset in -(3 * DAY as i64)..=(3 * DAY as i64),
            now_nanos in 0u32..1_000_000_000,
        ) {
            let date = at(date_secs) + Duration::from_nanos(u64::from(date_nanos));
            let Some(now_secs) = date_secs.checked_add_signed(-offset) else {
                return Ok(());
            };
            let now = at(now_secs) + Duration::from_nanos(u64::from(now_nanos));
            let value = httpdate::fmt_http_date(date);
            let got = read(&value, now).expect("a formatted date parses");
            // The header has whole seconds: the date loses its fraction.
            let exact = at(date_secs).duration_since(now).unwrap_or(Duration::ZERO);
            prop_assert_eq!(got, exact.min(MAX_RETRY_AFTER));
            let ideal = date.duration_since(now).unwrap_or(Duration::ZERO).min(MAX_RETRY_AFTER);
            let diff = got.abs_diff(ideal);
            prop_assert!(diff < Duration::from_secs(1), "{got:?} vs {ideal:?}");
        }
    }
}
