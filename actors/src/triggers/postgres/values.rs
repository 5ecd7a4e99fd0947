//! Postgres column values as JSON, by the column's type OID.
//!
//! pgoutput, the logical-replication output plugin, sends each column in text format: what a
//! type's output function prints (README.md, "Postgres triggers"). [`text_to_json`] turns that
//! text into typed JSON so that an event's `data` carries numbers, booleans and arrays rather
//! than strings only.
//!
//! What JSON cannot hold exactly stays a string: `numeric` always, `int8` past 2^53 - 1 (where
//! JSON readers lose precision), the floats' NaN and infinities. Timestamps become RFC 3339 where
//! Postgres' ISO output maps onto it, `bytea` becomes base64. Anything unexpected (another
//! DateStyle, a BC date, a multi-dimensional array, a type not listed) is the text as sent: the
//! input comes from the network, so nothing here panics, and the only refusal is a json/jsonb
//! value nested deeper than `[server] max_json_depth` (`crate::model::json`).

use base64::Engine as _;
use serde_json::Value;

use crate::model::json::{self, JsonError};

const BOOL: u32 = 16;
const BYTEA: u32 = 17;
const CHAR: u32 = 18;
const NAME: u32 = 19;
const INT8: u32 = 20;
const INT2: u32 = 21;
const INT4: u32 = 23;
const TEXT: u32 = 25;
const OID: u32 = 26;
const JSON: u32 = 114;
const FLOAT4: u32 = 700;
const FLOAT8: u32 = 701;
const BPCHAR: u32 = 1042;
const VARCHAR: u32 = 1043;
const DATE: u32 = 1082;
const TIME: u32 = 1083;
const TIMESTAMP: u32 = 1114;
const TIMESTAMPTZ: u32 = 1184;
const INTERVAL: u32 = 1186;
const TIMETZ: u32 = 1266;
const NUMERIC: u32 = 1700;
const UUID: u32 = 2950;
const JSONB: u32 = 3802;

/// The largest integer a JSON reader using doubles holds exactly (`Number.MAX_SAFE_INTEGER`).
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// The element type of an array type this module reads (`None` for any other type).
fn element_of(type_oid: u32) -> Option<u32> {
    Some(match type_oid {
        1000 => BOOL,
        1001 => BYTEA,
        1002 => CHAR,
        1003 => NAME,
        1005 => INT2,
        1007 => INT4,
        1028 => OID,
        1009 => TEXT,
        1014 => BPCHAR,
        1015 => VARCHAR,
        1016 => INT8,
        1021 => FLOAT4,
        1022 => FLOAT8,
        1231 => NUMERIC,
        1115 => TIMESTAMP,
        1185 => TIMESTAMPTZ,
        1182 => DATE,
        1183 => TIME,
        1270 => TIMETZ,
        1187 => INTERVAL,
        2951 => UUID,
        199 => JSON,
        3807 => JSONB,
        _ => return None,
    })
}

/// Whether `type_oid` is one of the array types [`text_to_json`] reads element by element.
pub fn is_array(type_oid: u32) -> bool {
    element_of(type_oid).is_some()
}

/// The JSON of a column's text value, by its type's OID. `Err` is why the value cannot be taken
/// (a json/jsonb value nested deeper than `[server] max_json_depth`).
pub fn text_to_json(type_oid: u32, text: &str) -> Result<Value, String> {
    if let Some(element) = element_of(type_oid) {
        return array_to_json(element, text);
    }
    Ok(match type_oid {
        BOOL => match text {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            _ => string(text),
        },
        INT2 | INT4 | OID => text
            .parse::<i64>()
            .map_or_else(|_| string(text), Value::from),
        INT8 => match text.parse::<i64>() {
            Ok(v) if v.unsigned_abs() <= MAX_SAFE_INTEGER => Value::from(v),
            _ => string(text),
        },
        FLOAT4 | FLOAT8 => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| string(text), Value::Number),
        JSON | JSONB => return json_value(text),
        TIMESTAMPTZ => timestamptz(text).map_or_else(|| string(text), Value::String),
        TIMESTAMP => timestamp(text).map_or_else(|| string(text), Value::String),
        BYTEA => bytea(text).map_or_else(|| string(text), Value::String),
        // numeric (exact, and NaN / infinities), the character types, date, time, timetz,
        // interval, uuid and every type not listed: the text as sent.
        _ => string(text),
    })
}

fn string(text: &str) -> Value {
    Value::String(text.to_owned())
}

fn json_value(text: &str) -> Result<Value, String> {
    match json::parse(text.as_bytes()) {
        Ok(v) => Ok(v),
        Err(e @ JsonError::TooDeep { .. }) => Err(format!("value refused: {e}")),
        // Postgres only sends valid JSON; should it not, the text is still worth keeping.
        Err(JsonError::Invalid(_)) => Ok(string(text)),
    }
}

/// `2026-12-05 10:00:00.123+05:30` (ISO DateStyle) as RFC 3339; `None` for anything else
/// (infinities, BC dates, offsets with seconds, which RFC 3339 cannot write).
fn timestamptz(text: &str) -> Option<String> {
    let (date, rest) = text.split_once(' ')?;
    let (time, offset) = rest.split_at_checked(rest.find(['+', '-'])?)?;
    if !is_date(date) || !is_time(time) {
        return None;
    }
    let (sign, zone) = offset.split_at_checked(1)?;
    let zone = match zone.split(':').collect::<Vec<_>>().as_slice() {
        [h] if digits(h, 2) => format!("{h}:00"),
        [h, m] if digits(h, 2) && digits(m, 2) => format!("{h}:{m}"),
        _ => return None,
    };
    Some(format!("{date}T{time}{sign}{zone}"))
}

/// `2026-12-05 10:00:00.5` as `2026-12-05T10:00:00.5`; `None` for anything else.
fn timestamp(text: &str) -> Option<String> {
    let (date, time) = text.split_once(' ')?;
    (is_date(date) && is_time(time)).then(|| format!("{date}T{time}"))
}

/// `YYYY-MM-DD` (years past 9999 have more digits, which RFC 3339 cannot write).
fn is_date(s: &str) -> bool {
    matches!(s.split('-').collect::<Vec<_>>().as_slice(),
        [y, m, d] if digits(y, 4) && digits(m, 2) && digits(d, 2))
}

/// `HH:MM:SS` with an optional fraction of a second.
fn is_time(s: &str) -> bool {
    let (hms, fraction) = match s.split_once('.') {
        Some((hms, fraction)) => (hms, fraction),
        None => (s, "0"),
    };
    let hms_ok = matches!(hms.split(':').collect::<Vec<_>>().as_slice(),
        [h, m, s] if digits(h, 2) && digits(m, 2) && digits(s, 2));
    hms_ok && !fraction.is_empty() && fraction.bytes().all(|b| b.is_ascii_digit())
}

fn digits(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit())
}

/// The base64 of a `bytea` in hex output (`\x0a0bff`); `None` for the escape format.
fn bytea(text: &str) -> Option<String> {
    let hex = text.strip_prefix("\\x")?.as_bytes();
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes = hex
        .chunks_exact(2)
        .map(|pair| match pair {
            [hi, lo] => Some((nibble(*hi)? << 4) | nibble(*lo)?),
            _ => None,
        })
        .collect::<Option<Vec<u8>>>()?;
    Some(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn nibble(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// A one-dimensional array as a JSON array of its elements, each by `element`'s rule; any other
/// array text (dimension decorations, nested braces, malformed) as a string.
fn array_to_json(element: u32, text: &str) -> Result<Value, String> {
    let Some(items) = array_elements(text) else {
        return Ok(string(text));
    };
    items
        .into_iter()
        .map(|item| match item {
            None => Ok(Value::Null),
            Some(item) => text_to_json(element, &item),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

/// The elements of a one-dimensional array literal (`None` for a NULL), or `None` when the text
/// is not one. Elements are separated by commas (every type read here uses the comma), may be
/// quoted (`"x\"y"`, `"NULL"` is the string) or bare (surrounding whitespace dropped, `NULL` in
/// any case is null), and a backslash takes the next character literally in both.
fn array_elements(text: &str) -> Option<Vec<Option<String>>> {
    let inner = text.strip_prefix('{')?.strip_suffix('}')?;
    let mut elements = Vec::new();
    if inner.trim().is_empty() {
        return Some(elements);
    }
    let mut chars = inner.chars().peekable();
    loop {
        skip_whitespace(&mut chars);
        let element = match chars.peek()? {
            '"' => {
                chars.next();
                Some(quoted(&mut chars)?)
            }
            '{' => return None,
            _ => bare(&mut chars)?,
        };
        elements.push(element);
        skip_whitespace(&mut chars);
        match chars.next() {
            None => return Some(elements),
            Some(',') => {}
            Some(_) => return None,
        }
    }
}

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

fn skip_whitespace(chars: &mut Chars<'_>) {
    while chars.next_if(|c| c.is_whitespace()).is_some() {}
}

/// A quoted element's text, after its opening quote, up to and including the closing quote.
fn quoted(chars: &mut Chars<'_>) -> Option<String> {
    let mut s = String::new();
    loop {
        match chars.next()? {
            '"' => return Some(s),
            '\\' => s.push(chars.next()?),
            c => s.push(c),
        }
    }
}

/// A bare element up to the next comma: `Some(None)` for NULL, `None` when malformed.
fn bare(chars: &mut Chars<'_>) -> Option<Option<String>> {
    let (mut s, mut kept, mut escaped) = (String::new(), 0, false);
    while let Some(c) = chars.next_if(|&c| c != ',') {
        match c {
            '"' | '{' | '}' => return None,
            '\\' => {
                s.push(chars.next()?);
                kept = s.len();
                escaped = true;
            }
            c => {
                s.push(c);
                if !c.is_whitespace() {
                    kept = s.len();
                }
            }
        }
    }
    s.truncate(kept);
    if s.is_empty() {
        return None;
    }
    Some((escaped || !s.eq_ignore_ascii_case("NULL")).then_some(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn value(type_oid: u32, text: &str) -> Value {
        text_to_json(type_oid, text).unwrap()
    }

    #[test]
    fn small_integers_and_oids_are_numbers() {
        assert_eq!(value(INT2, "-32768"), json!(-32768));
        assert_eq!(value(INT4, "2147483647"), json!(2_147_483_647));
        assert_eq!(value(INT4, "0"), json!(0));
        assert_eq!(value(OID, "4294967295"), json!(4_294_967_295u32));
        assert_eq!(value(INT4, "twelve"), json!("twelve"));
    }

    #[test]
    fn bigints_past_2_53_stay_exact_as_strings() {
        assert_eq!(
            value(INT8, "9007199254740991"),
            json!(9_007_199_254_740_991i64)
        );
        assert_eq!(
            value(INT8, "-9007199254740991"),
            json!(-9_007_199_254_740_991i64)
        );
        assert_eq!(value(INT8, "9007199254740992"), json!("9007199254740992"));
        assert_eq!(value(INT8, "-9007199254740992"), json!("-9007199254740992"));
        assert_eq!(
            value(INT8, "9223372036854775807"),
            json!("9223372036854775807")
        );
        assert_eq!(
            value(INT8, "-9223372036854775808"),
            json!("-9223372036854775808")
        );
        assert_eq!(value(INT8, "42"), json!(42));
    }

    #[test]
    fn floats_are_numbers_and_their_specials_strings() {
        assert_eq!(value(FLOAT8, "1.5"), json!(1.5));
        assert_eq!(value(FLOAT8, "-2.5e-05"), json!(-2.5e-5));
        assert_eq!(value(FLOAT8, "1e+300"), json!(1e300));
        assert_eq!(value(FLOAT4, "0.1"), json!(0.1));
        assert_eq!(value(FLOAT4, "3"), json!(3.0));
        for special in ["NaN", "Infinity", "-Infinity"] {
            assert_eq!(value(FLOAT4, special), json!(special));
            assert_eq!(value(FLOAT8, special), json!(special));
        }
    }

    #[test]
    fn booleans() {
        assert_eq!(value(BOOL, "t"), json!(true));
        assert_eq!(value(BOOL, "f"), json!(false));
        assert_eq!(value(BOOL, "maybe"), json!("maybe"));
    }

    #[test]
    fn numerics_are_always_strings_as_sent() {
        for text in [
            "123.4500",
            "-0.001",
            "1e5",
            "99999999999999999999.99",
            "NaN",
            "Infinity",
            "-Infinity",
        ] {
            assert_eq!(value(NUMERIC, text), json!(text));
        }
    }

    #[test]
    fn character_and_unknown_types_are_their_text() {
        for oid in [TEXT, VARCHAR, BPCHAR, NAME, CHAR, 600, 0, u32::MAX] {
            assert_eq!(value(oid, "a b \"c\" é"), json!("a b \"c\" é"));
            assert_eq!(value(oid, ""), json!(""));
        }
        assert_eq!(value(TEXT, "123"), json!("123"));
        assert_eq!(value(TEXT, "{1,2}"), json!("{1,2}"));
    }

    #[test]
    fn json_and_jsonb_are_parsed() {
        for oid in [JSON, JSONB] {
            assert_eq!(
                value(oid, r#"{"a": [1, "x", null]}"#),
                json!({"a": [1, "x", null]})
            );
            assert_eq!(value(oid, "12"), json!(12));
            assert_eq!(value(oid, "null"), Value::Null);
            assert_eq!(value(oid, "\"s\""), json!("s"));
            // Not JSON (Postgres never sends that): kept as text.
            assert_eq!(value(oid, "{oops"), json!("{oops"));
        }
    }

    #[test]
    fn json_nested_past_the_limit_is_refused() {
        let deep = format!("{}{}", "[".repeat(70), "]".repeat(70));
        for oid in [JSON, JSONB] {
            let err = text_to_json(oid, &deep).unwrap_err();
            assert!(err.starts_with("value refused: "), "{err}");
            assert!(err.contains("max_json_depth"), "{err}");
        }
        let within = format!("{}{}", "[".repeat(10), "]".repeat(10));
        assert!(text_to_json(JSONB, &within).is_ok());
    }

    #[test]
    fn timestamptz_becomes_rfc3339() {
        for (text, expected) in [
            (
                "2026-12-05 10:00:00.123+00",
                "2026-12-05T10:00:00.123+00:00",
            ),
            ("2026-12-05 10:00:00+05:30", "2026-12-05T10:00:00+05:30"),
            ("1999-01-08 04:05:06-08", "1999-01-08T04:05:06-08:00"),
            (
                "0099-01-08 04:05:06.000001-03:30",
                "0099-01-08T04:05:06.000001-03:30",
            ),
        ] {
            assert_eq!(value(TIMESTAMPTZ, text), json!(expected), "{text}");
        }
    }

    #[test]
    fn timestamptz_that_rfc3339_cannot_write_stays_text() {
        for text in [
            "infinity",
            "-infinity",
            "1850-01-01 00:00:00+00:53:28",
            "0044-03-15 12:00:00+00 BC",
            "10000-01-01 00:00:00+00",
            "Sat Dec 05 10:00:00 2026 UTC",
            "2026-12-05 10:00:00",
            "2026-12-05 10:00:00.+00",
            "2026-12-05 10:00:00+5",
            "2026-12-05 10:00+00",
            "",
        ] {
            assert_eq!(value(TIMESTAMPTZ, text), json!(text), "{text}");
        }
    }

    #[test]
    fn timestamp_without_zone() {
        assert_eq!(
            value(TIMESTAMP, "2026-12-05 10:00:00.5"),
            json!("2026-12-05T10:00:00.5")
        );
        assert_eq!(
            value(TIMESTAMP, "2026-12-05 10:00:00"),
            json!("2026-12-05T10:00:00")
        );
        for text in [
            "infinity",
            "-infinity",
            "0044-03-15 12:00:00 BC",
            "2026-12-05 10:00:00+00",
            "x",
        ] {
            assert_eq!(value(TIMESTAMP, text), json!(text), "{text}");
        }
    }

    #[test]
    fn dates_times_intervals_and_uuids_are_as_sent() {
        for (oid, text) in [
            (DATE, "2026-12-05"),
            (DATE, "infinity"),
            (DATE, "0044-03-15 BC"),
            (TIME, "10:00:00.5"),
            (TIMETZ, "10:00:00+05:30"),
            (INTERVAL, "1 year 2 mons 3 days 04:05:06"),
            (UUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        ] {
            assert_eq!(value(oid, text), json!(text), "{text}");
        }
    }

    #[test]
    fn bytea_hex_becomes_base64() {
        assert_eq!(value(BYTEA, "\\x0a0bff"), json!("Cgv/"));
        assert_eq!(value(BYTEA, "\\xDEADBEEF"), json!("3q2+7w=="));
        assert_eq!(value(BYTEA, "\\x"), json!(""));
        for text in ["\\x0a0", "\\xzz", "abc\\000", "\\x0a é"] {
            assert_eq!(value(BYTEA, text), json!(text), "{text}");
        }
    }

    #[test]
    fn arrays_of_numbers_with_nulls() {
        assert_eq!(value(1007, "{1,2,NULL}"), json!([1, 2, null]));
        assert_eq!(value(1005, "{}"), json!([]));
        assert_eq!(
            value(1016, "{1,9007199254740992}"),
            json!([1, "9007199254740992"])
        );
        assert_eq!(
            value(1022, "{1.5,NaN,-Infinity}"),
            json!([1.5, "NaN", "-Infinity"])
        );
        assert_eq!(value(1231, "{1.50,NaN}"), json!(["1.50", "NaN"]));
        assert_eq!(value(1000, "{t,f,null}"), json!([true, false, null]));
        assert_eq!(value(1028, "{ 1 , 2 }"), json!([1, 2]));
    }

    #[test]
    fn arrays_of_text_with_quotes_escapes_and_null() {
        assert_eq!(
            value(1009, r#"{"a b","x\"y",NULL,"NULL"}"#),
            json!(["a b", "x\"y", null, "NULL"])
        );
        assert_eq!(
            value(1015, r#"{"a\\b",plain,"",é}"#),
            json!(["a\\b", "plain", "", "é"])
        );
        assert_eq!(value(1009, r#"{"{x}","a,b"}"#), json!(["{x}", "a,b"]));
        assert_eq!(value(1009, r#"{""}"#), json!([""]));
        assert_eq!(value(1009, r"{N\ULL, a b }"), json!(["NULL", "a b"]));
        assert_eq!(value(1014, "{nUlL}"), json!([null]));
        assert_eq!(value(1003, "{pg_class}"), json!(["pg_class"]));
        assert_eq!(value(1002, "{a,\"\\\\\"}"), json!(["a", "\\"]));
    }

    #[test]
    fn arrays_of_times_bytes_uuids_and_json() {
        assert_eq!(
            value(1185, r#"{"2026-12-05 10:00:00+00",infinity}"#),
            json!(["2026-12-05T10:00:00+00:00", "infinity"])
        );
        assert_eq!(
            value(1115, r#"{"2026-12-05 10:00:00.5"}"#),
            json!(["2026-12-05T10:00:00.5"])
        );
        assert_eq!(
            value(1182, "{2026-12-05,infinity}"),
            json!(["2026-12-05", "infinity"])
        );
        assert_eq!(value(1183, "{10:00:00}"), json!(["10:00:00"]));
        assert_eq!(value(1270, "{10:00:00+02}"), json!(["10:00:00+02"]));
        assert_eq!(value(1187, r#"{"1 day"}"#), json!(["1 day"]));
        assert_eq!(value(1001, r#"{"\\x0a0bff",NULL}"#), json!(["Cgv/", null]));
        assert_eq!(
            value(2951, "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}"),
            json!(["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"])
        );
        assert_eq!(
            value(3807, r#"{"{\"a\": 1}","[1, 2]",NULL,3}"#),
            json!([{"a": 1}, [1, 2], null, 3])
        );
        assert_eq!(value(199, r#"{"\"s\""}"#), json!(["s"]));
    }

    #[test]
    fn json_array_element_past_the_limit_is_refused() {
        let deep = format!("{}{}", "[".repeat(70), "]".repeat(70));
        let text = format!("{{1,\"{deep}\"}}");
        for oid in [199, 3807] {
            let err = text_to_json(oid, &text).unwrap_err();
            assert!(err.starts_with("value refused: "), "{err}");
        }
    }

    #[test]
    fn multi_dimensional_decorated_or_malformed_arrays_are_text() {
        for text in [
            "{{1,2},{3,4}}",
            "{{}}",
            "[1:2]={1,2}",
            "[0:1][1:1]={{1},{2}}",
            "{1,,2}",
            "{1,}",
            "{,1}",
            r#"{"a}"#,
            r#"{"a"b}"#,
            r#"{a"b"}"#,
            "{1,2",
            "1,2}",
            "{a}b}",
            "{a\\}",
            "",
        ] {
            assert_eq!(value(1007, text), json!(text), "{text}");
        }
    }

    #[test]
    fn array_oids() {
        for oid in [
            1000, 1001, 1002, 1003, 1005, 1007, 1028, 1009, 1014, 1015, 1016, 1021, 1022, 1231,
            1115, 1185, 1182, 1183, 1270, 1187, 2951, 199, 3807,
        ] {
            assert!(is_array(oid), "{oid}");
        }
        for oid in [0, BOOL, INT4, TEXT, JSONB, NUMERIC, 1017, 2277, u32::MAX] {
            assert!(!is_array(oid), "{oid}");
        }
        // An unlisted array type (point[]) is its text.
        assert_eq!(value(1017, r#"{"(1,2)"}"#), json!(r#"{"(1,2)"}"#));
    }

    /// Every OID read here, scalar and array, and one that is not.
    const OIDS: [u32; 47] = [
        BOOL,
        BYTEA,
        CHAR,
        NAME,
        INT8,
        INT2,
        INT4,
        TEXT,
        OID,
        JSON,
        FLOAT4,
        FLOAT8,
        BPCHAR,
        VARCHAR,
        DATE,
        TIME,
        TIMESTAMP,
        TIMESTAMPTZ,
        INTERVAL,
        TIMETZ,
        NUMERIC,
        UUID,
        JSONB,
        1000,
        1001,
        1002,
        1003,
        1005,
        1007,
        1028,
        1009,
        1014,
        1015,
        1016,
        1021,
        1022,
        1231,
        1115,
        1185,
        1182,
        1183,
        1270,
        1187,
        2951,
        199,
        3807,
        600,
    ];

    /// An element as Postgres' array output writes it: quoted, with `"` and `\` escaped.
    fn quote(element: &str) -> String {
        format!("\"{}\"", element.replace('\\', "\\\\").replace('"', "\\\""))
    }

    proptest! {
        #[test]
        fn any_text_is_taken_without_panicking(
            text in "[{}\\[\\]\"\\\\,: .+\\-0-9a-fA-FxtTNUL\u{e9}]{0,24}",
            oid in prop::sample::select(OIDS.to_vec()),
        ) {
            let _ = text_to_json(oid, &text);
        }

        #[test]
        fn quoted_text_arrays_read_back(elements in prop::collection::vec(".{0,8}", 0..6)) {
            let text = format!(
                "{{{}}}",
                elements.iter().map(|e| quote(e)).collect::<Vec<_>>().join(",")
            );
            let expected: Vec<Value> = elements.iter().map(|e| json!(e)).collect();
            prop_assert_eq!(value(1009, &text), Value::Array(expected));
        }
    }
}
