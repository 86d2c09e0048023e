//! Value rules of typed `data` fields (wechat-api.md §3.3).
//!
//! Subscribe messages (Mini Program `subscribe/send`, Official Account `subscribe/bizsend`) and
//! Official Account category templates type every `data` field by the letters before its
//! trailing digits: `thing1` is a `thing`, `character_string2` a `character_string`. WeChat
//! enforces a rule per type and fails the whole send with errcode **47003** ("argument
//! invalid! data.phrase16.value invalid") when a value breaks it. Checking the same rules here,
//! before anything is sent, lets the gateway answer the caller with a 400 that names the field
//! and the rule, so a 47003 never has to reach WeChat (and never costs quota).
//!
//! Everything here is pure string checking: no IO, no regex, std only.
//!
//! # Decisions where WeChat's documentation is silent
//! - Lengths count Unicode scalar values (`char`s).
//! - Every typed value must be non-empty and contain no line break (`\n`, `\r`).
//! - A key is typed only if it ends with at least one digit and its letters are a known prefix
//!   (`thing1`, `thing01`). A key without digits (`name`, `time`, `amount`, as some legacy
//!   templates use) and every unknown prefix (`first`, `keyword1`, `remark`) is untyped.
//! - `number`: ASCII digits and at most one `.`, no sign, at least one digit.
//! - `symbol`: ASCII punctuation only. `character_string`: printable ASCII without spaces.
//! - `time`/`date`: dates are `YYYY年M月D日`, `YYYY-MM-DD` or `YYYY/MM/DD` (1 or 2 digit month
//!   and day) and must exist in the Gregorian calendar (no 2019-02-30); times are `H:MM` or
//!   `H:MM:SS`, 24-hour (hours 0-23, minutes and seconds 0-59). A date and a time are separated
//!   by one or more spaces (optional after `日`). A range is two values joined by `~` with
//!   optional spaces around it. No leading or trailing spaces.
//! - `amount`: an optional currency sign (see [`is_currency_symbol`]), ASCII digits with at most
//!   one `.` (at most 10 digits, at least one), and an optional trailing `元`. No sign, no
//!   thousands separators.
//! - `phone_number`: ASCII digits, `+`, `-`, `(`, `)` and space, at least one digit.
//! - `car_number`: the first and last char may be Chinese, the rest ASCII letters or digits; at
//!   least one ASCII letter or digit.
//! - `name`: with any non-ASCII char, at most 10 chars of anything; pure ASCII, at most 20
//!   chars of letters, spaces and punctuation (no digits).
//! - `enum`/`enum_string`: only non-empty here; the allowed values live in the template's
//!   `keywordEnumValueList`.
//! - Untyped (legacy) fields: see [`check_data`].

use std::fmt;

use crate::wire::MessageData;

/// Maximum length of a data key.
pub const MAX_KEY_CHARS: usize = 64;

/// Maximum length of an untyped (legacy) field's value. WeChat folds legacy values longer than
/// 20 chars instead of failing, so this is only a sanity bound against runaway payloads.
pub const UNTYPED_MAX_CHARS: usize = 200;

/// The type of a data field, from the letters before its trailing digits (`thing1` → `Thing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldType {
    Thing,
    ShortThing,
    Number,
    Letter,
    Symbol,
    CharacterString,
    Time,
    Date,
    Amount,
    PhoneNumber,
    CarNumber,
    Name,
    Phrase,
    Enum,
}

impl FieldType {
    /// Every field type.
    pub const ALL: [FieldType; 14] = [
        Self::Thing,
        Self::ShortThing,
        Self::Number,
        Self::Letter,
        Self::Symbol,
        Self::CharacterString,
        Self::Time,
        Self::Date,
        Self::Amount,
        Self::PhoneNumber,
        Self::CarNumber,
        Self::Name,
        Self::Phrase,
        Self::Enum,
    ];

    /// WeChat's key prefix of the type (`character_string`). `Enum` answers `enum`, although
    /// `enum_string` keys are of that type too.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Thing => "thing",
            Self::ShortThing => "short_thing",
            Self::Number => "number",
            Self::Letter => "letter",
            Self::Symbol => "symbol",
            Self::CharacterString => "character_string",
            Self::Time => "time",
            Self::Date => "date",
            Self::Amount => "amount",
            Self::PhoneNumber => "phone_number",
            Self::CarNumber => "car_number",
            Self::Name => "name",
            Self::Phrase => "phrase",
            Self::Enum => "enum",
        }
    }

    /// The type a key prefix (the key without its trailing digits) names, case-sensitively.
    pub fn from_prefix(prefix: &str) -> Option<Self> {
        Some(match prefix {
            "thing" => Self::Thing,
            "short_thing" => Self::ShortThing,
            "number" => Self::Number,
            "letter" => Self::Letter,
            "symbol" => Self::Symbol,
            "character_string" => Self::CharacterString,
            "time" => Self::Time,
            "date" => Self::Date,
            "amount" => Self::Amount,
            "phone_number" => Self::PhoneNumber,
            "car_number" => Self::CarNumber,
            "name" => Self::Name,
            "phrase" => Self::Phrase,
            "enum" | "enum_string" => Self::Enum,
            _ => return None,
        })
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a value breaks its field's rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError {
    pub reason: String,
}

impl ValueError {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for ValueError {}

/// A data field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataError {
    pub key: String,
    pub reason: String,
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "data.{}: {}", self.key, self.reason)
    }
}

impl std::error::Error for DataError {}

/// Whether `key` is a well-formed data key: 1 to 64 chars, ASCII letters and `_`, then
/// optional ASCII digits (`^[A-Za-z_]+[0-9]*$`).
pub fn valid_key(key: &str) -> bool {
    if key.is_empty() || key.len() > MAX_KEY_CHARS {
        // Every valid key is ASCII, so its byte length is its char length.
        return false;
    }
    let bytes = key.as_bytes();
    let letters = bytes
        .iter()
        .take_while(|b| b.is_ascii_alphabetic() || **b == b'_')
        .count();
    letters > 0 && bytes[letters..].iter().all(u8::is_ascii_digit)
}

/// The type of a data key: the letters before its trailing digits. `None` for an untyped key:
/// an invalid key, a key without trailing digits (`name`, `first`), or an unknown prefix
/// (`keyword1`, `remark`). Case-sensitive.
pub fn field_type(key: &str) -> Option<FieldType> {
    if !valid_key(key) {
        return None;
    }
    let prefix = key.trim_end_matches(|c: char| c.is_ascii_digit());
    if prefix.len() == key.len() {
        return None;
    }
    FieldType::from_prefix(prefix)
}

/// Checks a value against the rule of its field type (wechat-api.md §3.3, and the decisions in
/// the module doc). The reason is a short lowercase English phrase.
pub fn check_value(ty: FieldType, value: &str) -> Result<(), ValueError> {
    if value.is_empty() {
        return Err(ValueError::new("must not be empty"));
    }
    if value.contains(['\n', '\r']) {
        return Err(ValueError::new("must not contain line breaks"));
    }
    let chars = value.chars().count();
    let max = |limit: usize| {
        if chars > limit {
            Err(ValueError::new(format!("longer than {limit} characters")))
        } else {
            Ok(())
        }
    };
    match ty {
        FieldType::Thing => max(20),
        FieldType::ShortThing => max(5),
        FieldType::Number => {
            max(32)?;
            if decimal_digits(value).is_none() {
                return Err(ValueError::new(
                    "must be digits with at most one decimal point",
                ));
            }
            Ok(())
        }
        FieldType::Letter => {
            max(32)?;
            if !value.chars().all(|c| c.is_ascii_alphabetic()) {
                return Err(ValueError::new("must be letters only"));
            }
            Ok(())
        }
        FieldType::Symbol => {
            max(5)?;
            if !value.chars().all(|c| c.is_ascii_punctuation()) {
                return Err(ValueError::new("must be symbols only"));
            }
            Ok(())
        }
        FieldType::CharacterString => {
            max(32)?;
            if !value.chars().all(|c| c.is_ascii_graphic()) {
                return Err(ValueError::new(
                    "must be letters, digits or symbols only (no Chinese, no spaces)",
                ));
            }
            Ok(())
        }
        FieldType::Time => {
            if !time_or_date(value, Kind::Time) {
                return Err(ValueError::new(
                    "not a 24-hour time like 15:01 or 2019年10月1日 15:01",
                ));
            }
            Ok(())
        }
        FieldType::Date => {
            if !time_or_date(value, Kind::Date) {
                return Err(ValueError::new(
                    "not a date like 2019年10月1日 or 2019-10-01",
                ));
            }
            Ok(())
        }
        FieldType::Amount => check_amount(value),
        FieldType::PhoneNumber => {
            max(17)?;
            if !value
                .chars()
                .all(|c| c.is_ascii_digit() || "+-() ".contains(c))
            {
                return Err(ValueError::new("must be digits and + - ( ) or spaces only"));
            }
            if !value.chars().any(|c| c.is_ascii_digit()) {
                return Err(ValueError::new("must contain a digit"));
            }
            Ok(())
        }
        FieldType::CarNumber => {
            max(8)?;
            let last = chars - 1;
            let ok = value.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphanumeric() || ((i == 0 || i == last) && is_chinese(c))
            });
            if !ok || !value.chars().any(|c| c.is_ascii_alphanumeric()) {
                return Err(ValueError::new(
                    "not a car number like 粤A8Z888挂 or 京A12345",
                ));
            }
            Ok(())
        }
        FieldType::Name => {
            if !value.is_ascii() {
                return max(10);
            }
            max(20)?;
            if value.chars().any(|c| c.is_ascii_digit()) {
                return Err(ValueError::new("must not contain digits"));
            }
            if !value
                .chars()
                .all(|c| c.is_ascii_alphabetic() || c == ' ' || c.is_ascii_punctuation())
            {
                return Err(ValueError::new("must be letters, spaces or symbols only"));
            }
            Ok(())
        }
        FieldType::Phrase => {
            max(5)?;
            if !value.chars().all(is_chinese) {
                return Err(ValueError::new("must be Chinese characters only"));
            }
            Ok(())
        }
        FieldType::Enum => Ok(()),
    }
}

/// Checks a whole `data` object and answers the first field at fault, in key order.
///
/// - Every key must pass [`valid_key`] (reason "invalid field name").
/// - A typed key's value (see [`field_type`]) must pass [`check_value`].
/// - An untyped (legacy) key's value may be empty and may contain line breaks (WeChat folds or
///   strips those instead of failing); it must only be at most [`UNTYPED_MAX_CHARS`] chars.
///
/// Whether the keys match the template's placeholders is not checked here.
pub fn check_data(data: &MessageData) -> Result<(), DataError> {
    for (key, value) in data {
        let fail = |reason: String| DataError {
            key: key.clone(),
            reason,
        };
        if !valid_key(key) {
            return Err(fail("invalid field name".into()));
        }
        let value = value.value.as_str();
        let typed = field_type(key);
        // Typed values are text WeChat shows on one line; legacy values may break lines.
        if let Some(c) = value.chars().find(|&c| {
            is_hidden_control(c) && !(typed.is_none() && matches!(c, '\n' | '\r' | '\t'))
        }) {
            return Err(fail(format!(
                "contains the control character U+{:04X}: control and text-direction characters are refused",
                c as u32
            )));
        }
        match typed {
            Some(ty) => check_value(ty, value).map_err(|e| fail(e.reason))?,
            None => {
                if value.chars().count() > UNTYPED_MAX_CHARS {
                    return Err(fail(format!("longer than {UNTYPED_MAX_CHARS} characters")));
                }
            }
        }
    }
    Ok(())
}

/// Control characters (C0, DEL, C1) and the invisible text-direction controls (LRM, RLM, the
/// embeddings, overrides and isolates U+202A..U+202E, U+2066..U+2069) that can make a message
/// display differently from what was sent. WeChat's rules allow none of them in a value ("Chinese,
/// digits, letters, symbols").
pub fn is_hidden_control(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

/// Whether `c` is a Chinese character: CJK Unified Ideographs (U+4E00..=U+9FFF) or extension A
/// (U+3400..=U+4DBF).
pub fn is_chinese(c: char) -> bool {
    matches!(c, '\u{4E00}'..='\u{9FFF}' | '\u{3400}'..='\u{4DBF}')
}

/// Whether `c` may lead an `amount`: `$ ¢ £ ¤ ¥`, their full-width forms `＄ ￠ ￡ ￥ ￦`, `฿`,
/// and the Currency Symbols block (U+20A0..=U+20CF: `€ ₩ ₹ ₽ ...`).
pub fn is_currency_symbol(c: char) -> bool {
    matches!(
        c,
        '$' | '¢' | '£' | '¤' | '¥' | '＄' | '￠' | '￡' | '￥' | '￦' | '฿' | '\u{20A0}'
            ..='\u{20CF}'
    )
}

/// The number of digits of `s` if it is ASCII digits with at most one `.` and at least one
/// digit.
fn decimal_digits(s: &str) -> Option<usize> {
    let mut digits = 0;
    let mut points = 0;
    for c in s.chars() {
        match c {
            '0'..='9' => digits += 1,
            '.' => points += 1,
            _ => return None,
        }
    }
    (digits > 0 && points <= 1).then_some(digits)
}

fn check_amount(value: &str) -> Result<(), ValueError> {
    let mut rest = value;
    if let Some(c) = rest.chars().next().filter(|c| is_currency_symbol(*c)) {
        rest = &rest[c.len_utf8()..];
    }
    rest = rest.strip_suffix('元').unwrap_or(rest);
    match decimal_digits(rest) {
        None => Err(ValueError::new("not an amount like ¥100.50 or 100元")),
        Some(n) if n > 10 => Err(ValueError::new("more than 10 digits")),
        Some(_) => Ok(()),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Time,
    Date,
}

/// What one side of a time or date value holds.
#[derive(Clone, Copy)]
struct Point {
    date: bool,
    clock: bool,
}

/// Whether `value` is a `time` (each side holds a clock) or a `date` (the first side holds a
/// date; the second holds a date, or only a clock if the first holds one too).
fn time_or_date(value: &str, kind: Kind) -> bool {
    let mut c = Cursor { s: value, pos: 0 };
    let Some(first) = point(&mut c) else {
        return false;
    };
    let save = c.pos;
    c.skip_spaces();
    let second = if c.eat('~') {
        c.skip_spaces();
        match point(&mut c) {
            Some(p) => Some(p),
            None => return false,
        }
    } else {
        c.pos = save;
        None
    };
    if !c.at_end() {
        return false;
    }
    match kind {
        Kind::Time => first.clock && second.is_none_or(|p| p.clock),
        Kind::Date => first.date && second.is_none_or(|p| p.date || (first.clock && p.clock)),
    }
}

/// `date`, `clock`, or `date clock`.
fn point(c: &mut Cursor) -> Option<Point> {
    if let Some(chinese) = date(c) {
        let after = c.pos;
        let spaces = c.skip_spaces();
        if (spaces > 0 || chinese) && clock(c) {
            return Some(Point {
                date: true,
                clock: true,
            });
        }
        c.pos = after;
        return Some(Point {
            date: true,
            clock: false,
        });
    }
    clock(c).then_some(Point {
        date: false,
        clock: true,
    })
}

/// `YYYY年M月D日` (answers `Some(true)`), `YYYY-MM-DD` or `YYYY/MM/DD` (`Some(false)`), a real
/// calendar date. Leaves the cursor where it was on failure.
fn date(c: &mut Cursor) -> Option<bool> {
    let start = c.pos;
    let parsed = date_inner(c);
    if parsed.is_none() {
        c.pos = start;
    }
    parsed
}

fn date_inner(c: &mut Cursor) -> Option<bool> {
    let year = c.digits(4, 4)?;
    let (chinese, month, day) = if c.eat('年') {
        let month = c.digits(1, 2)?;
        c.eat('月').then_some(())?;
        let day = c.digits(1, 2)?;
        c.eat('日').then_some(())?;
        (true, month, day)
    } else {
        let sep = c.peek().filter(|s| *s == '-' || *s == '/')?;
        c.eat(sep);
        let month = c.digits(1, 2)?;
        c.eat(sep).then_some(())?;
        let day = c.digits(1, 2)?;
        (false, month, day)
    };
    ((1..=12).contains(&month) && (1..=days_in_month(year, month)).contains(&day))
        .then_some(chinese)
}

/// `H:MM` or `H:MM:SS`, 24-hour. Leaves the cursor where it was on failure.
fn clock(c: &mut Cursor) -> bool {
    let start = c.pos;
    let parsed = clock_inner(c).is_some();
    if !parsed {
        c.pos = start;
    }
    parsed
}

fn clock_inner(c: &mut Cursor) -> Option<()> {
    let hour = c.digits(1, 2)?;
    c.eat(':').then_some(())?;
    let minute = c.digits(2, 2)?;
    if c.eat(':') {
        let second = c.digits(2, 2)?;
        (second <= 59).then_some(())?;
    }
    (hour <= 23 && minute <= 59).then_some(())
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A position in a string being parsed.
struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<char> {
        self.s[self.pos..].chars().next()
    }

    fn at_end(&self) -> bool {
        self.pos == self.s.len()
    }

    fn eat(&mut self, want: char) -> bool {
        if self.peek() == Some(want) {
            self.pos += want.len_utf8();
            true
        } else {
            false
        }
    }

    /// Skips ASCII spaces; answers how many.
    fn skip_spaces(&mut self) -> usize {
        let n = self.s[self.pos..]
            .bytes()
            .take_while(|b| *b == b' ')
            .count();
        self.pos += n;
        n
    }

    /// Reads `min..=max` ASCII digits (stopping at `max`) as a number.
    fn digits(&mut self, min: usize, max: usize) -> Option<u32> {
        let n = self.s[self.pos..]
            .bytes()
            .take(max)
            .take_while(u8::is_ascii_digit)
            .count();
        if n < min {
            return None;
        }
        let v = self.s[self.pos..self.pos + n].parse().ok()?;
        self.pos += n;
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::DataValue;

    /// `key_or_type` is a key (`thing1`) or a type prefix (`thing`).
    #[track_caller]
    fn check(key_or_type: &str, value: &str, ok: bool) {
        let ty = field_type(key_or_type)
            .or_else(|| FieldType::from_prefix(key_or_type))
            .unwrap_or_else(|| panic!("{key_or_type:?} is not typed"));
        let got = check_value(ty, value);
        assert_eq!(got.is_ok(), ok, "{ty} {value:?}: {got:?}");
    }

    #[track_caller]
    fn table(ty: &str, valid: &[&str], invalid: &[&str]) {
        for v in valid {
            check(ty, v, true);
        }
        for v in invalid {
            check(ty, v, false);
        }
    }

    #[test]
    fn keys() {
        for k in [
            "thing1",
            "a",
            "_",
            "keyword1",
            "first",
            "thing01",
            "character_string2",
            "withdrawMoney",
        ] {
            assert!(valid_key(k), "{k}");
        }
        assert!(valid_key(&"a".repeat(64)));
        for k in [
            "",
            "1thing",
            "thing1a",
            "thing-1",
            "thing 1",
            "事项1",
            "thing.DATA",
            "Ｔhing1",
        ] {
            assert!(!valid_key(k), "{k}");
        }
        assert!(!valid_key(&"a".repeat(65)));
    }

    #[test]
    fn field_types() {
        let cases = [
            ("thing1", Some(FieldType::Thing)),
            ("thing01", Some(FieldType::Thing)),
            ("short_thing3", Some(FieldType::ShortThing)),
            ("number2", Some(FieldType::Number)),
            ("letter2", Some(FieldType::Letter)),
            ("symbol2", Some(FieldType::Symbol)),
            ("character_string2", Some(FieldType::CharacterString)),
            ("time3", Some(FieldType::Time)),
            ("date2", Some(FieldType::Date)),
            ("amount12", Some(FieldType::Amount)),
            ("phone_number4", Some(FieldType::PhoneNumber)),
            ("car_number5", Some(FieldType::CarNumber)),
            ("name1", Some(FieldType::Name)),
            ("phrase16", Some(FieldType::Phrase)),
            ("enum1", Some(FieldType::Enum)),
            ("enum_string1", Some(FieldType::Enum)),
            ("first", None),
            ("remark", None),
            ("keyword1", None),
            ("name", None),
            ("thing", None),
            ("Thing1", None),
            ("things1", None),
            ("thing1a", None),
            ("", None),
        ];
        for (key, want) in cases {
            assert_eq!(field_type(key), want, "{key}");
        }
    }

    #[test]
    fn as_str_round_trips() {
        for ty in FieldType::ALL {
            assert_eq!(FieldType::from_prefix(ty.as_str()), Some(ty));
            assert_eq!(field_type(&format!("{ty}7")), Some(ty));
        }
        assert_eq!(FieldType::CharacterString.as_str(), "character_string");
    }

    #[test]
    fn every_type_rejects_empty_and_line_breaks() {
        for ty in FieldType::ALL {
            assert!(check_value(ty, "").is_err(), "{ty}");
            assert!(check_value(ty, "1\n2").is_err(), "{ty}");
            assert!(check_value(ty, "1\r").is_err(), "{ty}");
        }
        assert_eq!(
            check_value(FieldType::Thing, "").unwrap_err().reason,
            "must not be empty"
        );
    }

    #[test]
    fn thing() {
        let c20 = "中".repeat(20);
        let a20 = "a".repeat(20);
        table(
            "thing1",
            &["配送中", "Order 123!", &a20, &c20, "😀"],
            &["", "a\nb", &"a".repeat(21), &"中".repeat(21)],
        );
        assert_eq!(
            check_value(FieldType::Thing, &"a".repeat(21))
                .unwrap_err()
                .reason,
            "longer than 20 characters"
        );
    }

    #[test]
    fn short_thing() {
        table(
            "short_thing",
            &["已完成", "abcde", "中文abc"],
            &["abcdef", "中文中文中文", ""],
        );
    }

    #[test]
    fn number() {
        let d32 = "9".repeat(32);
        table(
            "number",
            &["0", "123", "3.14", &d32, ".5"],
            &[
                "-1",
                "1.2.3",
                "1,000",
                "abc",
                ".",
                "１２",
                &"9".repeat(33),
                "1e5",
            ],
        );
    }

    #[test]
    fn letter() {
        table(
            "letter",
            &["abc", "ABCxyz", &"z".repeat(32)],
            &["abc1", "a b", "中", "a-b", &"z".repeat(33)],
        );
    }

    #[test]
    fn symbol() {
        table(
            "symbol",
            &["!", "#$%", "-+*/.", "@@@@@"],
            &["a", "1", "!!!!!!", " ", "＃", "! !"],
        );
    }

    #[test]
    fn character_string() {
        table(
            "character_string",
            &["ORDER-2024-0001", "abc123", "a_b.c#d", &"x".repeat(32)],
            &["订单123", "abc 123", &"x".repeat(33), "abc\t1", "ｘ"],
        );
    }

    #[test]
    fn time() {
        table(
            "time",
            &[
                "15:01",
                "0:00",
                "23:59:59",
                "2019年10月1日 15:01",
                "2019年10月1日15:01",
                "2019-10-01 15:01",
                "2019/10/01 15:01:30",
                "15:01~16:30",
                "15:01 ~ 16:30",
                "2019年10月1日 15:01 ~ 2019年10月1日 18:00",
                "2019-10-01 15:01~18:00",
            ],
            &[
                "25:00",
                "24:00",
                "12:60",
                "12:5",
                "3pm",
                "tomorrow",
                "2019-10-01",
                "2019-10-0115:01",
                "15:01~",
                "~15:01",
                "15:01~2019-10-02",
                " 15:01",
                "15:01 ",
                "15:01:60",
                "2019-13-01 15:01",
                "15：01",
            ],
        );
    }

    #[test]
    fn date() {
        table(
            "date",
            &[
                "2019年10月1日",
                "2019年1月01日",
                "2019-10-01",
                "2019/10/01",
                "2019-1-1",
                "2020-02-29",
                "2019年10月1日 15:01",
                "2019-10-01~2019-10-07",
                "2019-10-01 ~ 2019-10-07",
                "2019-10-01 09:00~18:00",
                "2019年10月1日 09:00 ~ 2019年10月2日 18:00",
            ],
            &[
                "15:01",
                "2019-13-01",
                "2019-00-10",
                "2019-10-32",
                "2019-02-29",
                "2019-04-31",
                "19-10-01",
                "2019-10/01",
                "2019年10月1",
                "2019.10.01",
                "2019-10-01~18:00",
                "2019-10-01~",
                "tomorrow",
                "2019-10-01 25:00",
            ],
        );
    }

    #[test]
    fn amount() {
        table(
            "amount",
            &[
                "¥100.50",
                "100元",
                "￥8",
                "$0.99",
                "€12",
                "1234567890",
                "¥123456789.5",
                "¥100元",
                "0",
            ],
            &[
                "abc",
                "¥12345678901",
                "12345678901",
                "¥",
                "元",
                "¥¥1",
                "-5",
                "1,000",
                "¥1.2.3",
                "100 元",
                "RMB100",
            ],
        );
        assert_eq!(
            check_value(FieldType::Amount, "¥12345678901")
                .unwrap_err()
                .reason,
            "more than 10 digits"
        );
    }

    #[test]
    fn phone_number() {
        table(
            "phone_number",
            &[
                "+86-0766-66888866",
                "13800138000",
                "(010) 6666 8888",
                &"1".repeat(17),
            ],
            &[
                "+-()",
                "1380013800a",
                "电话13800",
                &"1".repeat(18),
                "138/0013",
            ],
        );
    }

    #[test]
    fn car_number() {
        table(
            "car_number",
            &["粤A8Z888挂", "京A12345", "A12345", "粤B12345", "WJ12345"],
            &[
                "粤A8Z888挂1",
                "京A-12345",
                "京京12345",
                "粤A 12345",
                "粤挂",
                "A1234567X",
            ],
        );
    }

    #[test]
    fn name() {
        table(
            "name",
            &[
                "张三",
                "欧阳娜娜",
                "John Smith",
                "O'Brien-Smith",
                &"中".repeat(10),
                &"a".repeat(20),
                "张三abc",
            ],
            &[
                &"中".repeat(11),
                &"a".repeat(21),
                "Agent 007",
                "张三abcdefghi",
                "a\tb",
            ],
        );
    }

    #[test]
    fn phrase() {
        table(
            "phrase",
            &["配送中", "已完成", "中", "五个汉字哦"],
            &["六个汉字哦哦", "配送A", "OK", "配 送", "配送中！"],
        );
        assert_eq!(
            check_value(FieldType::Phrase, "OK").unwrap_err().reason,
            "must be Chinese characters only"
        );
    }

    #[test]
    fn enumeration() {
        table(
            "enum",
            &["1", "已发货", "anything at all"],
            &["", "a\nb", "\r"],
        );
        check("enum_string2", "x", true);
    }

    fn data(pairs: &[(&str, &str)]) -> MessageData {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    DataValue {
                        value: v.to_string(),
                        color: None,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn check_data_answers_first_fault_in_key_order() {
        assert_eq!(check_data(&data(&[])), Ok(()));
        assert_eq!(
            check_data(&data(&[
                ("thing1", "配送中"),
                ("date2", "2019-10-01"),
                ("first", "")
            ])),
            Ok(())
        );
        let e =
            check_data(&data(&[("thing1", &"a".repeat(21)), ("phrase2", "配送中")])).unwrap_err();
        assert_eq!(
            e,
            DataError {
                key: "thing1".into(),
                reason: "longer than 20 characters".into()
            }
        );
        // BTreeMap order, not insertion order: `phrase2` comes before `thing1`.
        let e = check_data(&data(&[("thing1", &"a".repeat(21)), ("phrase2", "OK")])).unwrap_err();
        assert_eq!(e.key, "phrase2");
        let e = check_data(&data(&[("thing-1", "x")])).unwrap_err();
        assert_eq!(e.reason, "invalid field name");
        assert_eq!(e.to_string(), "data.thing-1: invalid field name");
    }

    #[test]
    fn check_data_untyped_fields() {
        let long = "字".repeat(UNTYPED_MAX_CHARS);
        assert_eq!(
            check_data(&data(&[("keyword1", &long), ("remark", "a\nb")])),
            Ok(())
        );
        let longer = "字".repeat(UNTYPED_MAX_CHARS + 1);
        let e = check_data(&data(&[("keyword1", &longer)])).unwrap_err();
        assert_eq!(e.reason, "longer than 200 characters");
    }

    #[test]
    fn control_and_direction_characters_are_refused() {
        let data = |k: &str, v: &str| -> MessageData {
            [(
                k.to_string(),
                crate::wire::DataValue {
                    value: v.into(),
                    color: None,
                },
            )]
            .into_iter()
            .collect()
        };
        for bad in ["a\u{0}b", "abc\u{202E}", "x\u{7F}", "\u{2066}y", "a\nb"] {
            let e = check_data(&data("thing1", bad)).unwrap_err();
            assert!(
                e.reason.contains("control character"),
                "{bad:?}: {}",
                e.reason
            );
        }
        // A legacy (untyped) value may break lines, but not hide direction controls or NUL.
        assert!(check_data(&data("first", "line 1\nline 2")).is_ok());
        assert!(check_data(&data("first", "a\u{202E}b")).is_err());
        assert!(check_data(&data("first", "a\u{0}b")).is_err());
        assert!(check_data(&data("thing1", "配送中 A-1")).is_ok());
    }
}
