//! Property tests of the request decoder (`body::decode`) and the validators
//! (`validate::{template, subscribe, bizsend}`): whatever a caller sends, the gateway never
//! panics, and either accepts a message that really obeys the rules or answers a 4xx that
//! names what is wrong.
//!
//! Three kinds of input: arbitrary bytes (and mutations of a valid body), arbitrary JSON
//! values, and near-valid messages (the right shape with random strings, unicode, lengths, data
//! keys and values, wrong types and unknown fields now and then).

use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};
use wxgate_protocol::data_rules;
use wxgate_protocol::wire::{
    BizsendMessage, MessageData, MiniProgramLink, SubscribeMessage, TemplateMessage,
};

use crate::body::decode;
use crate::error::ApiError;
use crate::validate;

/// Cases per property; `PROPTEST_CASES=N` runs more (or fewer).
const CASES: u32 = 384;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(CASES),
        // Shrinking a failure is useful; thousands of shrink steps are not.
        max_shrink_iters: 2_000,
        // No regression files under the crate: a failure prints its minimal input instead.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The top-level fields of each message type (serde's names).
const TEMPLATE_FIELDS: &[&str] = &[
    "touser",
    "template_id",
    "url",
    "miniprogram",
    "data",
    "client_msg_id",
];
const SUBSCRIBE_FIELDS: &[&str] = &[
    "touser",
    "template_id",
    "page",
    "data",
    "miniprogram_state",
    "lang",
];
const BIZSEND_FIELDS: &[&str] = &["touser", "template_id", "page", "miniprogram", "data"];

// ---- what an answer must look like ---------------------------------------------------------

/// A decoder error: 400 `invalid_request`; `field`, when present, is non-empty.
fn check_decode_error(e: &ApiError) -> Result<(), TestCaseError> {
    prop_assert_eq!(e.status.as_u16(), 400, "{:?}", e);
    prop_assert_eq!(e.code, "invalid_request");
    if let Some(f) = &e.field {
        prop_assert!(!f.is_empty(), "an empty field name: {:?}", e);
    }
    prop_assert!(!e.message.is_empty());
    Ok(())
}

/// The field an error names must be something the caller can find: `body`, a field of the
/// message type, or a key of the body it sent, possibly followed by a path inside it
/// (`data.thing1.value`, `miniprogram[0]`).
fn check_field_is_findable(
    field: &str,
    known: &[&str],
    input: &Value,
) -> Result<(), TestCaseError> {
    let mut roots: Vec<String> = known.iter().map(|s| s.to_string()).collect();
    roots.push("body".into());
    if let Some(obj) = input.as_object() {
        roots.extend(obj.keys().cloned());
    }
    let ok = roots.iter().any(|r| {
        field == r || field.starts_with(&format!("{r}.")) || field.starts_with(&format!("{r}["))
    });
    prop_assert!(ok, "`{}` names nothing the body holds: {}", field, input);
    Ok(())
}

/// An error from decoding a well-formed JSON value, or from validating the decoded message:
/// a 4xx naming a non-empty field the caller can find.
fn check_named_error(e: &ApiError, known: &[&str], input: &Value) -> Result<(), TestCaseError> {
    prop_assert!(e.status.is_client_error(), "not a 4xx: {:?}", e);
    prop_assert!(
        matches!(
            (e.status.as_u16(), e.code.as_str()),
            (400, "invalid_request") | (422, "invalid_field")
        ),
        "{:?}",
        e
    );
    let field = e.field.as_deref().unwrap_or("");
    prop_assert!(!field.is_empty(), "no field named for {}: {:?}", input, e);
    check_field_is_findable(field, known, input)
}

/// What "valid" means, written independently of the validator: identifiers are 1 to 128
/// printable ASCII characters, `data` holds 1 to 32 well-formed keys whose values pass their
/// type's rule (untyped values at most 200 characters), URLs are http(s) without whitespace.
fn check_valid_ident(what: &str, v: &str) -> Result<(), TestCaseError> {
    prop_assert!(
        !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()),
        "{} accepted: {:?}",
        what,
        v
    );
    Ok(())
}

fn check_valid_url(what: &str, v: &str) -> Result<(), TestCaseError> {
    prop_assert!(
        (v.starts_with("https://") || v.starts_with("http://"))
            && !v.contains(char::is_whitespace)
            && v.chars().count() <= 1024
            && !v.chars().any(char::is_control),
        "{} accepted: {:?}",
        what,
        v
    );
    Ok(())
}

fn check_valid_text(what: &str, v: &str) -> Result<(), TestCaseError> {
    prop_assert!(
        v.chars().count() <= 1024 && !v.chars().any(char::is_control),
        "{} accepted: {:?}",
        what,
        v
    );
    Ok(())
}

fn check_valid_miniprogram(mp: &MiniProgramLink) -> Result<(), TestCaseError> {
    prop_assert!(
        mp.appid.len() == 18
            && mp.appid.starts_with("wx")
            && mp.appid.bytes().all(|b| b.is_ascii_alphanumeric()),
        "miniprogram.appid accepted: {:?}",
        mp.appid
    );
    if let Some(p) = &mp.pagepath {
        check_valid_text("miniprogram.pagepath", p)?;
    }
    Ok(())
}

fn check_valid_data(d: &MessageData) -> Result<(), TestCaseError> {
    prop_assert!(
        !d.is_empty() && d.len() <= 32,
        "data with {} fields",
        d.len()
    );
    for (k, v) in d {
        prop_assert!(data_rules::valid_key(k), "data key accepted: {:?}", k);
        // Control and text-direction characters never pass; a legacy value may break lines.
        let untyped = data_rules::field_type(k).is_none();
        prop_assert!(
            !v.value.chars().any(|c| data_rules::is_hidden_control(c)
                && !(untyped && matches!(c, '\n' | '\r' | '\t'))),
            "data.{}.value accepted with a control character: {:?}",
            k,
            v.value
        );
        match data_rules::field_type(k) {
            Some(ty) => {
                prop_assert!(
                    data_rules::check_value(ty, &v.value).is_ok(),
                    "data.{}.value accepted: {:?}",
                    k,
                    v.value
                );
                prop_assert!(!v.value.is_empty() && !v.value.contains(['\n', '\r']));
            }
            None => prop_assert!(v.value.chars().count() <= data_rules::UNTYPED_MAX_CHARS),
        }
    }
    Ok(())
}

/// An accepted message re-serializes into a body that decodes to the same message and passes
/// validation again.
fn check_round_trip<T>(m: &T, validate: fn(&T) -> Result<(), ApiError>) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = serde_json::to_vec(m).expect("an accepted message serializes");
    let again: T = decode(&bytes).map_err(|e| {
        TestCaseError::fail(format!("re-serialized message refused: {e:?} for {m:?}"))
    })?;
    prop_assert_eq!(&again, m);
    prop_assert!(validate(&again).is_ok());
    Ok(())
}

fn accepted_template(m: &TemplateMessage) -> Result<(), TestCaseError> {
    check_valid_ident("touser", &m.touser)?;
    check_valid_ident("template_id", &m.template_id)?;
    if let Some(u) = &m.url {
        check_valid_url("url", u)?;
    }
    if let Some(mp) = &m.miniprogram {
        check_valid_miniprogram(mp)?;
    }
    if let Some(c) = &m.client_msg_id {
        check_valid_ident("client_msg_id", c)?;
    }
    check_valid_data(&m.data)?;
    check_round_trip(m, validate::template)
}

fn accepted_subscribe(m: &SubscribeMessage) -> Result<(), TestCaseError> {
    check_valid_ident("touser", &m.touser)?;
    check_valid_ident("template_id", &m.template_id)?;
    if let Some(p) = &m.page {
        check_valid_text("page", p)?;
    }
    check_valid_data(&m.data)?;
    check_round_trip(m, validate::subscribe)
}

fn accepted_bizsend(m: &BizsendMessage) -> Result<(), TestCaseError> {
    check_valid_ident("touser", &m.touser)?;
    check_valid_ident("template_id", &m.template_id)?;
    if let Some(p) = &m.page {
        check_valid_url("page", p)?;
    }
    if let Some(mp) = &m.miniprogram {
        check_valid_miniprogram(mp)?;
    }
    check_valid_data(&m.data)?;
    check_round_trip(m, validate::bizsend)
}

/// Decodes and validates a well-formed JSON body as each of the three message types: each
/// either accepts a valid message or answers a 4xx naming a field.
fn check_value_all_types(v: &Value) -> Result<(), TestCaseError> {
    let bytes = serde_json::to_vec(v).expect("a JSON value serializes");
    match decode::<TemplateMessage>(&bytes) {
        Ok(m) => match validate::template(&m) {
            Ok(()) => accepted_template(&m)?,
            Err(e) => check_named_error(&e, TEMPLATE_FIELDS, v)?,
        },
        Err(e) => check_named_error(&e, TEMPLATE_FIELDS, v)?,
    }
    match decode::<SubscribeMessage>(&bytes) {
        Ok(m) => match validate::subscribe(&m) {
            Ok(()) => accepted_subscribe(&m)?,
            Err(e) => check_named_error(&e, SUBSCRIBE_FIELDS, v)?,
        },
        Err(e) => check_named_error(&e, SUBSCRIBE_FIELDS, v)?,
    }
    match decode::<BizsendMessage>(&bytes) {
        Ok(m) => match validate::bizsend(&m) {
            Ok(()) => accepted_bizsend(&m)?,
            Err(e) => check_named_error(&e, BIZSEND_FIELDS, v)?,
        },
        Err(e) => check_named_error(&e, BIZSEND_FIELDS, v)?,
    }
    Ok(())
}

/// Arbitrary bytes: decoding never panics; an error is a 400 `invalid_request`; an accepted
/// body goes through validation without panicking, with a 422 naming a field or a valid
/// message.
fn check_bytes_all_types(bytes: &[u8]) -> Result<(), TestCaseError> {
    match decode::<TemplateMessage>(bytes) {
        Ok(m) => match validate::template(&m) {
            Ok(()) => accepted_template(&m)?,
            Err(e) => prop_assert!(e.status.as_u16() == 422 && e.field.is_some()),
        },
        Err(e) => check_decode_error(&e)?,
    }
    match decode::<SubscribeMessage>(bytes) {
        Ok(m) => match validate::subscribe(&m) {
            Ok(()) => accepted_subscribe(&m)?,
            Err(e) => prop_assert!(e.status.as_u16() == 422 && e.field.is_some()),
        },
        Err(e) => check_decode_error(&e)?,
    }
    match decode::<BizsendMessage>(bytes) {
        Ok(m) => match validate::bizsend(&m) {
            Ok(()) => accepted_bizsend(&m)?,
            Err(e) => prop_assert!(e.status.as_u16() == 422 && e.field.is_some()),
        },
        Err(e) => check_decode_error(&e)?,
    }
    Ok(())
}

// ---- strategies ----------------------------------------------------------------------------

/// Any JSON value, nested up to 4 levels; object keys favour the messages' own field names.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        short_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((json_key(), inner), 0..7)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Object keys: the messages' fields, data-like keys, or anything (empty and dotted included).
fn json_key() -> impl Strategy<Value = String> {
    let fields: Vec<&'static str> = TEMPLATE_FIELDS
        .iter()
        .chain(SUBSCRIBE_FIELDS)
        .chain(["value", "color", "appid", "pagepath"].iter())
        .copied()
        .collect();
    prop_oneof![
        3 => prop::sample::select(fields).prop_map(str::to_string),
        2 => data_key(),
        1 => any::<String>(),
    ]
}

/// Short strings of the characters that matter: ASCII, spaces, controls, Chinese, emoji.
fn short_string() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => proptest::char::range('!', '~'),
            1 => Just(' '),
            1 => prop::sample::select(vec!['\n', '\r', '\t', '\u{0}', '\u{7f}', '\u{85}']),
            2 => proptest::char::range('\u{4e00}', '\u{9fff}'),
            1 => prop::sample::select(vec!['é', 'ß', '😀', '\u{200b}', '￥', '$', '元', '年', '月', '日']),
            1 => any::<char>(),
        ],
        0..40,
    )
    .prop_map(|cs| cs.into_iter().collect())
}

/// Strings of every length class around the bounds (empty, short, 128/129, 1024/1025).
fn sized_string() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => short_string(),
        1 => Just(String::new()),
        1 => (120usize..=136).prop_map(|n| "o".repeat(n)),
        1 => (1020usize..=1030).prop_map(|n| format!("https://{}", "a".repeat(n - 8))),
        1 => any::<String>(),
    ]
}

/// Identifier-like strings: mostly printable ASCII, sometimes not.
fn ident_string() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[!-~]{1,40}",
        2 => "o[A-Za-z0-9_-]{20,30}",
        1 => sized_string(),
    ]
}

fn url_string() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => ("https?://", "[!-~]{0,60}").prop_map(|(s, r)| format!("{s}{r}")),
        1 => ("https?://", short_string()).prop_map(|(s, r)| format!("{s}{r}")),
        1 => sized_string(),
    ]
}

fn appid_string() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "wx[a-z0-9]{16}",
        1 => "wx[a-zA-Z0-9]{10,20}",
        1 => short_string(),
    ]
}

/// Data keys: typed (`thing1`), untyped (`remark`, `first`), and malformed ones.
fn data_key() -> impl Strategy<Value = String> {
    let prefixes: Vec<&'static str> = data_rules::FieldType::ALL
        .iter()
        .map(|t| t.as_str())
        .chain(["enum_string", "first", "keyword", "remark", "Thing"])
        .collect();
    prop_oneof![
        6 => (prop::sample::select(prefixes), "[0-9]{0,3}").prop_map(|(p, d)| format!("{p}{d}")),
        1 => "[A-Za-z_]{1,70}[0-9]{0,3}",
        1 => short_string(),
    ]
}

/// Data values shaped for the rules: numbers, amounts, dates, times, Chinese phrases, names,
/// and arbitrary text.
fn data_value() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => short_string(),
        // Mostly without controls, which every data value refuses.
        3 => short_string().prop_map(|s| s
            .chars()
            .filter(|c| !data_rules::is_hidden_control(*c))
            .collect::<String>()),
        1 => "[0-9]{1,12}(\\.[0-9]{1,3})?",
        1 => "[$￥¥]?[0-9]{1,11}(\\.[0-9]{1,2})?元?",
        1 => "(19|20)[0-9]{2}[-/](0?[1-9]|1[0-2])[-/](0?[1-9]|[12][0-9]|3[01])( [0-2]?[0-9]:[0-5][0-9](:[0-5][0-9])?)?",
        1 => "[0-2]?[0-9]:[0-6][0-9]( ?~ ?[0-2]?[0-9]:[0-6][0-9])?",
        1 => "[\\u{4e00}-\\u{9fff}]{1,7}",
        1 => "[A-Za-z .,'-]{1,24}",
        1 => "[+0-9() -]{1,20}",
        1 => sized_string(),
    ]
}

/// Strings matching a regex.
fn re(pattern: &str) -> BoxedStrategy<String> {
    proptest::string::string_regex(pattern)
        .unwrap_or_else(|e| panic!("bad regex {pattern}: {e}"))
        .boxed()
}

/// A value that fits a field type's rule (most of the time: lengths reach just past the
/// bounds now and then).
fn value_for(ty: data_rules::FieldType) -> BoxedStrategy<String> {
    use data_rules::FieldType as T;
    let cjk = "[\\u{4e00}-\\u{9fff}]";
    match ty {
        T::Thing => re(&format!("([A-Za-z0-9 ]|{cjk}){{1,21}}")),
        T::ShortThing => re(&format!("([A-Za-z0-9]|{cjk}){{1,6}}")),
        T::Number => "[0-9]{1,10}(\\.[0-9]{1,3})?".boxed(),
        T::Letter => "[A-Za-z]{1,33}".boxed(),
        T::Symbol => "[!-/:-@]{1,6}".boxed(),
        T::CharacterString => "[!-~]{1,33}".boxed(),
        T::Time => prop_oneof![
            "20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8]) ([01][0-9]|2[0-3]):[0-5][0-9]",
            "([01]?[0-9]|2[0-4]):[0-5][0-9](:[0-5][0-9])?",
            "20[0-9]{2}年([1-9]|1[0-2])月([1-9]|1[0-9]|2[0-9])日 ?[0-9]{1,2}:[0-9]{2}",
        ]
        .boxed(),
        T::Date => prop_oneof![
            "20[0-9]{2}[-/](0?[1-9]|1[0-2])[-/](0?[1-9]|[12][0-9]|3[01])",
            "20[0-9]{2}年([1-9]|1[0-2])月([1-9]|[12][0-9]|3[01])日",
        ]
        .boxed(),
        T::Amount => "[$￥¥]?[0-9]{1,11}(\\.[0-9]{1,2})?元?".boxed(),
        T::PhoneNumber => "\\+?[0-9]{2,4}[ -]?[0-9]{3,12}".boxed(),
        T::CarNumber => re(&format!("{cjk}?[A-Z][0-9A-Z]{{4,6}}{cjk}?")),
        T::Name => prop_oneof![re(&format!("{cjk}{{1,11}}")), re("[A-Za-z .'-]{1,21}")].boxed(),
        T::Phrase => re(&format!("{cjk}{{1,6}}")),
        T::Enum => "[^\\n\\r]{1,10}".boxed(),
    }
}

/// One `data` entry: a typed key with a value made for its type, an untyped key, or a random
/// key and value; the entry itself usually `{"value": ...}`, sometimes with a `color`, a
/// missing or wrong-typed `value`, an unknown inner field, or not an object at all.
fn data_entry() -> impl Strategy<Value = (String, Value)> {
    let typed = (
        prop::sample::select(data_rules::FieldType::ALL.to_vec()),
        "[0-9]{1,2}",
    )
        .prop_flat_map(|(ty, digits)| (Just(format!("{ty}{digits}")), value_for(ty)));
    let untyped = (
        prop::sample::select(vec![
            "first", "remark", "keyword1", "name", "time", "amount",
        ]),
        short_string(),
    )
        .prop_map(|(k, v)| (k.to_string(), v));
    let pair = prop_oneof![
        8 => typed,
        2 => untyped,
        1 => (data_key(), data_value()),
    ];
    let shape = prop_oneof![
        20 => Just(Shape::Plain),
        1 => short_string().prop_map(Shape::Color),
        1 => Just(Shape::Empty),
        1 => Just(Shape::NotAString),
        1 => short_string().prop_map(Shape::Unknown),
        1 => arb_json().prop_map(Shape::Junk),
    ];
    (pair, shape).prop_map(|((k, v), shape)| {
        let entry = match shape {
            Shape::Plain => json!({ "value": v }),
            Shape::Color(c) => json!({ "value": v, "color": c }),
            Shape::Empty => json!({}),
            Shape::NotAString => json!({ "value": 7 }),
            Shape::Unknown(other) => {
                let mut m = Map::new();
                m.insert("value".into(), v.into());
                m.insert(other, 1.into());
                Value::Object(m)
            }
            Shape::Junk(j) => j,
        };
        (k, entry)
    })
}

/// How a `data` entry is dressed.
#[derive(Debug, Clone)]
enum Shape {
    Plain,
    Color(String),
    Empty,
    NotAString,
    Unknown(String),
    Junk(Value),
}

/// A `data` object: usually 1 to 5 entries, sometimes none, 30 to 35 (around the bound of
/// 32), or not an object.
fn data_object() -> impl Strategy<Value = Value> {
    let obj = |n: std::ops::Range<usize>| {
        prop::collection::vec(data_entry(), n)
            .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>()))
    };
    prop_oneof![
        16 => obj(1..6),
        1 => obj(0..1),
        1 => obj(30..36),
        1 => arb_json(),
    ]
}

fn miniprogram_object() -> impl Strategy<Value = Value> {
    prop_oneof![
        10 => (appid_string(), prop::option::of(sized_string())).prop_map(|(a, p)| match p {
            Some(p) => json!({ "appid": a, "pagepath": p }),
            None => json!({ "appid": a }),
        }),
        1 => Just(json!({})),
        1 => arb_json(),
    ]
}

/// Now and then: a field of the wrong type, an unknown field, a field removed.
fn perturb(fields: &'static [&'static str]) -> impl Strategy<Value = Option<(String, Value)>> {
    prop_oneof![
        16 => Just(None),
        1 => (prop::sample::select(fields), arb_json()).prop_map(|(f, v)| Some((f.to_string(), v))),
        1 => (json_key(), arb_json()).prop_map(|(f, v)| Some((f, v))),
        1 => prop::sample::select(fields).prop_map(|f| Some((f.to_string(), Value::Null))),
    ]
}

fn apply(mut obj: Map<String, Value>, p: Option<(String, Value)>, drop_it: bool) -> Value {
    if let Some((k, v)) = p {
        if drop_it {
            obj.remove(&k);
        } else {
            obj.insert(k, v);
        }
    }
    Value::Object(obj)
}

fn put(obj: &mut Map<String, Value>, k: &str, v: Option<Value>) {
    if let Some(v) = v {
        obj.insert(k.to_string(), v);
    }
}

fn near_template() -> impl Strategy<Value = Value> {
    (
        (ident_string(), ident_string()),
        prop::option::of(url_string()),
        prop::option::of(miniprogram_object()),
        data_object(),
        prop::option::of(ident_string()),
        perturb(TEMPLATE_FIELDS),
        any::<bool>(),
    )
        .prop_map(|((touser, tid), url, mp, data, cmid, p, drop_it)| {
            let mut o = Map::new();
            o.insert("touser".into(), touser.into());
            o.insert("template_id".into(), tid.into());
            put(&mut o, "url", url.map(Value::from));
            put(&mut o, "miniprogram", mp);
            o.insert("data".into(), data);
            put(&mut o, "client_msg_id", cmid.map(Value::from));
            apply(o, p, drop_it)
        })
}

fn near_subscribe() -> impl Strategy<Value = Value> {
    let state = prop_oneof![
        3 => prop::sample::select(vec!["developer", "trial", "formal"]).prop_map(str::to_string),
        1 => short_string(),
    ];
    let lang = prop_oneof![
        3 => prop::sample::select(vec!["zh_CN", "en_US", "zh_HK", "zh_TW"]).prop_map(str::to_string),
        1 => short_string(),
    ];
    (
        (ident_string(), ident_string()),
        prop::option::of(sized_string()),
        data_object(),
        prop::option::of(state),
        prop::option::of(lang),
        perturb(SUBSCRIBE_FIELDS),
        any::<bool>(),
    )
        .prop_map(|((touser, tid), page, data, state, lang, p, drop_it)| {
            let mut o = Map::new();
            o.insert("touser".into(), touser.into());
            o.insert("template_id".into(), tid.into());
            put(&mut o, "page", page.map(Value::from));
            o.insert("data".into(), data);
            put(&mut o, "miniprogram_state", state.map(Value::from));
            put(&mut o, "lang", lang.map(Value::from));
            apply(o, p, drop_it)
        })
}

fn near_bizsend() -> impl Strategy<Value = Value> {
    (
        (ident_string(), ident_string()),
        prop::option::of(url_string()),
        prop::option::of(miniprogram_object()),
        data_object(),
        perturb(BIZSEND_FIELDS),
        any::<bool>(),
    )
        .prop_map(|((touser, tid), page, mp, data, p, drop_it)| {
            let mut o = Map::new();
            o.insert("touser".into(), touser.into());
            o.insert("template_id".into(), tid.into());
            put(&mut o, "page", page.map(Value::from));
            put(&mut o, "miniprogram", mp);
            o.insert("data".into(), data);
            apply(o, p, drop_it)
        })
}

/// A valid body, then bytes flipped, inserted, removed or the body cut short.
fn mutated_valid_body() -> impl Strategy<Value = Vec<u8>> {
    let valid = r#"{"touser":"o-demo-user-0001","template_id":"demo-order-shipped","url":"https://example.com/o/42","miniprogram":{"appid":"wxfedcba9876543210","pagepath":"pages/a"},"client_msg_id":"m-1","page":"pages/b","lang":"zh_CN","miniprogram_state":"formal","data":{"character_string1":{"value":"SO-1"},"thing2":{"value":"蓝色杯子"},"time3":{"value":"2026-11-27 10:30"}}}"#
        .as_bytes()
        .to_vec();
    let len = valid.len();
    prop::collection::vec((0..len, any::<u8>(), 0u8..4), 1..6).prop_map(move |edits| {
        let mut b = valid.clone();
        for (at, byte, op) in edits {
            let at = at.min(b.len().saturating_sub(1));
            match op {
                0 => b[at] = byte,
                1 => b.insert(at, byte),
                2 => {
                    b.remove(at);
                }
                _ => b.truncate(at),
            }
            if b.is_empty() {
                break;
            }
        }
        b
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic_and_errors_are_400(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check_bytes_all_types(&bytes)?;
    }

    #[test]
    fn mutated_valid_bodies_never_panic_and_errors_are_4xx(bytes in mutated_valid_body()) {
        check_bytes_all_types(&bytes)?;
    }

    #[test]
    fn arbitrary_json_is_accepted_valid_or_refused_naming_a_field(v in arb_json()) {
        check_value_all_types(&v)?;
    }

    #[test]
    fn near_valid_template_messages(v in near_template()) {
        check_value_all_types(&v)?;
    }

    #[test]
    fn near_valid_subscribe_messages(v in near_subscribe()) {
        check_value_all_types(&v)?;
    }

    #[test]
    fn near_valid_bizsend_messages(v in near_bizsend()) {
        check_value_all_types(&v)?;
    }
}

/// The near-valid strategies must really reach the "accepted" branch, else the properties
/// above would only ever test refusals.
#[test]
fn near_valid_strategies_produce_accepted_messages() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut t, mut s, mut b) = (0, 0, 0);
    for _ in 0..200 {
        let v = near_template().new_tree(&mut runner).unwrap().current();
        let bytes = serde_json::to_vec(&v).unwrap();
        if let Ok(m) = decode::<TemplateMessage>(&bytes) {
            t += usize::from(validate::template(&m).is_ok());
        }
        let v = near_subscribe().new_tree(&mut runner).unwrap().current();
        let bytes = serde_json::to_vec(&v).unwrap();
        if let Ok(m) = decode::<SubscribeMessage>(&bytes) {
            s += usize::from(validate::subscribe(&m).is_ok());
        }
        let v = near_bizsend().new_tree(&mut runner).unwrap().current();
        let bytes = serde_json::to_vec(&v).unwrap();
        if let Ok(m) = decode::<BizsendMessage>(&bytes) {
            b += usize::from(validate::bizsend(&m).is_ok());
        }
    }
    assert!(
        t >= 10 && s >= 10 && b >= 10,
        "accepted of 200: template {t}, subscribe {s}, bizsend {b}"
    );
}

/// The smallest inputs the properties above found, kept as plain examples: well-formed JSON of
/// the wrong shape must be a 400 naming the field (never "not valid JSON" without a field, never
/// an empty field name), and a struct given as an array is a wrong type like any other. All
/// four fail with the `body::decode` of this commit: serde_json reports a wrong-typed enum and
/// an over-long array as syntax errors (`Category::Syntax`), which `decode` then calls "not
/// valid JSON" without a field; an unknown empty key becomes the field `""`; and serde accepts a
/// struct written as an array.
#[test]
fn wrong_shapes_found_by_the_properties_name_their_field() {
    let cases: [(&str, &[u8], &str); 4] = [
        // An unknown field whose name is empty was named `""`.
        ("template", br#"{"":null}"#, ""),
        // A data entry that is an array of 3: "not valid JSON: trailing characters", no field.
        (
            "template",
            br#"{"touser":"o","template_id":"t","data":{"thing1":["x",null,null]}}"#,
            "data.thing1",
        ),
        // An enum field of the wrong type: "not valid JSON: expected value", no field.
        (
            "subscribe",
            br#"{"touser":"o","template_id":"t","data":{"thing1":{"value":"x"}},"miniprogram_state":false}"#,
            "miniprogram_state",
        ),
        // A data entry that is an array of 1 was accepted as `{"value": "x"}`.
        (
            "template",
            br#"{"touser":"o","template_id":"t","data":{"thing1":["x"]}}"#,
            "data.thing1",
        ),
    ];
    let mut wrong = Vec::new();
    for (kind, body, want) in cases {
        let got = match kind {
            "template" => decode::<TemplateMessage>(body).map(drop),
            _ => decode::<SubscribeMessage>(body).map(drop),
        };
        let ok = matches!(&got, Err(e) if e.status.as_u16() == 400
            && e.field.as_deref().is_some_and(|f| !f.is_empty() && f.starts_with(want)));
        if !ok {
            wrong.push(format!(
                "{} -> {:?}",
                String::from_utf8_lossy(body),
                got.map_err(|e| (e.field, e.message))
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "decoder answers without the field:\n{}",
        wrong.join("\n")
    );
}
