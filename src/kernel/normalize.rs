//! Tool-call arguments, parsed strictly and flattened into the strings the guards
//! look at, after undoing the tricks that hide a string's meaning.
//!
//! Parsing refuses what a tool might read differently from the guards: anything
//! but one JSON object, duplicate keys (also keys that differ only in case, since a
//! tool may read either), more than [`Limits::max_bytes`] bytes, more than
//! [`Limits::max_depth`] levels of nesting.
//!
//! Every key and string value, at any depth in objects and arrays, is then
//! scanned, normalised: JSON escapes are decoded by the parser; invisible and
//! format characters (zero-width, bidirectional controls, tag characters, variation
//! selectors, other controls) are removed; Unicode compatibility forms are folded
//! (NFKC), so full-width and other look-alike letters read as their plain forms.
//! From each scanned string more are derived and scanned in turn, up to
//! [`Limits::max_derivation`] levels: JSON nested inside the string, runs of base64
//! or hex of [`Limits::min_encoded_len`] characters or more that decode to text, and
//! percent-encoded text.

use std::collections::HashSet;
use std::fmt;
use std::sync::LazyLock;

use base64::Engine as _;
use regex::Regex;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use unicode_normalization::UnicodeNormalization;

/// Bounds on arguments and on the work done to normalise them.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest argument text, in bytes.
    pub max_bytes: usize,
    /// Deepest nesting of objects and arrays.
    pub max_depth: usize,
    /// How many times a derived string may itself be decoded again.
    pub max_derivation: usize,
    /// Most strings scanned for one call.
    pub max_strings: usize,
    /// Shortest run of base64 or hex that is decoded.
    pub min_encoded_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 1024 * 1024,
            max_depth: 32,
            max_derivation: 3,
            max_strings: 4096,
            min_encoded_len: 8,
        }
    }
}

/// Why arguments were refused before any guard looked at them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgsError {
    /// Not JSON at all, or more than one JSON value.
    InvalidJson(String),
    /// JSON, but not an object.
    NotObject,
    /// The same key twice in one object (compared without case).
    DuplicateKey(String),
    /// Larger than the limit.
    TooLarge {
        /// The size in bytes.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Nested deeper than the limit.
    TooDeep {
        /// The limit.
        limit: usize,
    },
}

impl ArgsError {
    /// The stable reason code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) => "args_invalid_json",
            Self::NotObject => "args_not_object",
            Self::DuplicateKey(_) => "args_duplicate_key",
            Self::TooLarge { .. } => "args_too_large",
            Self::TooDeep { .. } => "args_too_deep",
        }
    }
}

impl fmt::Display for ArgsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidJson(e) => write!(f, "the arguments are not valid JSON ({e})"),
            Self::NotObject => f.write_str("the arguments must be one JSON object"),
            Self::DuplicateKey(k) => write!(f, "the arguments repeat the key {k:?}"),
            Self::TooLarge { size, limit } => write!(
                f,
                "the arguments are {size} bytes, more than the limit of {limit}"
            ),
            Self::TooDeep { limit } => {
                write!(f, "the arguments are nested more than {limit} levels deep")
            }
        }
    }
}

/// How a scanned string was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A string value.
    Value,
    /// An object key.
    Key,
    /// JSON inside a string.
    NestedJson,
    /// Base64 inside a string.
    Base64,
    /// Hex inside a string.
    Hex,
    /// Percent-encoding inside a string.
    Percent,
}

/// One string the guards look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    /// Where it is: `$.a.b[0]`, with `<base64>` and the like for derived strings.
    pub path: String,
    /// The normalised text.
    pub text: String,
    /// How it was reached.
    pub via: Via,
}

/// Parsed and flattened arguments.
#[derive(Debug, Clone)]
pub struct Arguments {
    /// The parsed object.
    pub value: Value,
    /// Every string to scan, in document order, derived strings after their source.
    pub strings: Vec<Scanned>,
    /// Size of the argument text in bytes.
    pub size: usize,
}

const DUPLICATE: &str = "tollgate-duplicate-key:";
const TOO_DEEP: &str = "tollgate-too-deep";

/// Parses `raw` strictly and collects every string to scan.
pub fn parse(raw: &str, limits: &Limits) -> Result<Arguments, ArgsError> {
    if raw.len() > limits.max_bytes {
        return Err(ArgsError::TooLarge {
            size: raw.len(),
            limit: limits.max_bytes,
        });
    }
    // An empty argument string means no arguments, as the APIs treat it.
    let text = if raw.trim().is_empty() { "{}" } else { raw };
    let value = strict_json(text, limits.max_depth)?;
    if !value.is_object() {
        return Err(ArgsError::NotObject);
    }
    let mut strings = Vec::new();
    collect(&value, "$", limits, &mut strings);
    let mut seen: HashSet<String> = strings.iter().map(|s| s.text.clone()).collect();
    let mut i = 0;
    while i < strings.len() && strings.len() < limits.max_strings {
        derive(i, limits, &mut strings, &mut seen)?;
        i += 1;
    }
    strings.truncate(limits.max_strings);
    Ok(Arguments {
        value,
        strings,
        size: raw.len(),
    })
}

fn strict_json(text: &str, max_depth: usize) -> Result<Value, ArgsError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = StrictValue {
        depth: 0,
        max_depth,
    }
    .deserialize(&mut de)
    .map_err(|e| classify(e, max_depth))?;
    de.end()
        .map_err(|e| ArgsError::InvalidJson(e.to_string()))?;
    Ok(value)
}

fn classify(e: serde_json::Error, max_depth: usize) -> ArgsError {
    let text = e.to_string();
    if let Some(rest) = text.strip_prefix(DUPLICATE) {
        let key = rest.split(" at line").next().unwrap_or(rest);
        ArgsError::DuplicateKey(key.to_owned())
    } else if text.starts_with(TOO_DEEP) || text.contains("recursion limit exceeded") {
        ArgsError::TooDeep { limit: max_depth }
    } else {
        ArgsError::InvalidJson(text)
    }
}

struct StrictValue {
    depth: usize,
    max_depth: usize,
}

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        if self.depth >= self.max_depth {
            return Err(de::Error::custom(TOO_DEEP));
        }
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(StrictValue {
            depth: self.depth + 1,
            max_depth: self.max_depth,
        })? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        if self.depth >= self.max_depth {
            return Err(de::Error::custom(TOO_DEEP));
        }
        let mut out = Map::new();
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(normalize_text(&key).to_lowercase()) {
                return Err(de::Error::custom(format!("{DUPLICATE}{key}")));
            }
            let value = map.next_value_seed(StrictValue {
                depth: self.depth + 1,
                max_depth: self.max_depth,
            })?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

fn collect(value: &Value, path: &str, limits: &Limits, out: &mut Vec<Scanned>) {
    if out.len() >= limits.max_strings {
        return;
    }
    match value {
        Value::String(s) => out.push(Scanned {
            path: path.to_owned(),
            text: normalize_text(s),
            via: Via::Value,
        }),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect(item, &format!("{path}[{i}]"), limits, out);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                let child = format!("{path}.{key}");
                out.push(Scanned {
                    path: child.clone(),
                    text: normalize_text(key),
                    via: Via::Key,
                });
                collect(item, &child, limits, out);
            }
        }
        _ => {}
    }
}

fn derivation_depth(path: &str) -> usize {
    path.matches('<').count()
}

static BASE64_RUN: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"[A-Za-z0-9+/_\-]{8,}={0,2}").ok());
static HEX_RUN: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"(?:\\x|0x)?(?:[0-9a-fA-F]{2}(?:\\x)?){8,}").ok());

/// Adds the strings derived from `strings[i]`.
fn derive(
    i: usize,
    limits: &Limits,
    strings: &mut Vec<Scanned>,
    seen: &mut HashSet<String>,
) -> Result<(), ArgsError> {
    let source = strings[i].clone();
    if derivation_depth(&source.path) >= limits.max_derivation {
        return Ok(());
    }
    let push = |suffix: &str,
                via: Via,
                text: String,
                strings: &mut Vec<Scanned>,
                seen: &mut HashSet<String>| {
        let text = normalize_text(&text);
        if !text.is_empty() && strings.len() < limits.max_strings && seen.insert(text.clone()) {
            strings.push(Scanned {
                path: format!("{}<{suffix}>", source.path),
                text,
                via,
            });
        }
    };
    let trimmed = source.text.trim();
    if trimmed.starts_with(['{', '[', '"']) {
        match strict_json(trimmed, limits.max_depth) {
            Ok(Value::String(s)) => push("json", Via::NestedJson, s, strings, seen),
            Ok(nested) => {
                let mut inner = Vec::new();
                collect(
                    &nested,
                    &format!("{}<json>", source.path),
                    limits,
                    &mut inner,
                );
                for s in inner {
                    if strings.len() < limits.max_strings
                        && (s.via == Via::Key || seen.insert(s.text.clone()))
                    {
                        strings.push(Scanned {
                            via: Via::NestedJson,
                            ..s
                        });
                    }
                }
            }
            Err(e @ ArgsError::DuplicateKey(_)) => return Err(e),
            Err(_) => {}
        }
    }
    if let Some(re) = BASE64_RUN.as_ref() {
        for m in re.find_iter(&source.text) {
            if m.as_str().len() >= limits.min_encoded_len
                && let Some(text) = decode_base64(m.as_str())
            {
                push("base64", Via::Base64, text, strings, seen);
            }
        }
    }
    if let Some(re) = HEX_RUN.as_ref() {
        for m in re.find_iter(&source.text) {
            let digits: String = m
                .as_str()
                .replace("\\x", "")
                .trim_start_matches("0x")
                .to_owned();
            if digits.len() >= limits.min_encoded_len
                && let Some(text) = hex::decode(&digits).ok().and_then(printable_text)
            {
                push("hex", Via::Hex, text, strings, seen);
            }
        }
    }
    if source.text.contains('%') {
        let decoded = percent_encoding::percent_decode_str(&source.text)
            .decode_utf8_lossy()
            .into_owned();
        if decoded != source.text {
            push("percent", Via::Percent, decoded, strings, seen);
        }
    }
    Ok(())
}

fn decode_base64(run: &str) -> Option<String> {
    use base64::engine::DecodePaddingMode;
    use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let standard = GeneralPurpose::new(&base64::alphabet::STANDARD, config);
    let url_safe = GeneralPurpose::new(&base64::alphabet::URL_SAFE, config);
    standard
        .decode(run)
        .or_else(|_| url_safe.decode(run))
        .ok()
        .and_then(printable_text)
}

/// Decoded bytes that read as text: valid UTF-8, nine in ten characters printable.
fn printable_text(bytes: Vec<u8>) -> Option<String> {
    let text = String::from_utf8(bytes).ok()?;
    let total = text.chars().count();
    let printable = text
        .chars()
        .filter(|c| !c.is_control() || c.is_whitespace())
        .count();
    (total > 0 && printable * 10 >= total * 9).then_some(text)
}

/// Removes invisible characters and folds compatibility forms (NFKC), in an order
/// that makes the result stable: `normalize_text(normalize_text(s)) ==
/// normalize_text(s)`.
pub fn normalize_text(s: &str) -> String {
    let stripped: String = s.chars().filter(|c| !is_invisible(*c)).collect();
    let folded: String = stripped.nfkc().collect();
    if folded.chars().any(is_invisible) {
        let again: String = folded.chars().filter(|c| !is_invisible(*c)).collect();
        again.nfkc().collect()
    } else {
        folded
    }
}

/// Characters that do not show: format characters, bidirectional controls, tag
/// characters, variation selectors, fillers and controls other than tab and line
/// breaks.
pub fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '\u{7f}'..='\u{9f}'
        | '\u{ad}' | '\u{34f}' | '\u{61c}' | '\u{115f}' | '\u{1160}' | '\u{17b4}' | '\u{17b5}'
        | '\u{180b}'..='\u{180f}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}' | '\u{3164}' | '\u{fe00}'..='\u{fe0f}' | '\u{feff}' | '\u{ffa0}'
        | '\u{fff0}'..='\u{fff8}' | '\u{1bca0}'..='\u{1bca3}' | '\u{1d173}'..='\u{1d17a}'
        | '\u{e0000}'..='\u{e0fff}')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(raw: &str) -> Vec<String> {
        parse(raw, &Limits::default())
            .unwrap()
            .strings
            .into_iter()
            .map(|s| s.text)
            .collect()
    }

    #[test]
    fn refuses_what_a_tool_could_read_differently() {
        let l = Limits::default();
        assert_eq!(
            parse(r#"{"a":1,"a":2}"#, &l).unwrap_err().code(),
            "args_duplicate_key"
        );
        assert_eq!(
            parse(r#"{"cmd":"ls","CMD":"rm"}"#, &l).unwrap_err().code(),
            "args_duplicate_key"
        );
        assert_eq!(
            parse(r#"{"x":{"k":1,"k":2}}"#, &l).unwrap_err().code(),
            "args_duplicate_key"
        );
        assert_eq!(parse(r#"[1,2]"#, &l).unwrap_err().code(), "args_not_object");
        assert_eq!(
            parse(r#"{"a":1}{"a":2}"#, &l).unwrap_err().code(),
            "args_invalid_json"
        );
        assert_eq!(
            parse(r#"{"a":1"#, &l).unwrap_err().code(),
            "args_invalid_json"
        );
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(40), "]".repeat(40));
        assert_eq!(parse(&deep, &l).unwrap_err().code(), "args_too_deep");
        let small = Limits { max_bytes: 8, ..l };
        assert_eq!(
            parse(r#"{"a":"123456"}"#, &small).unwrap_err().code(),
            "args_too_large"
        );
        assert!(parse("", &l).is_ok());
    }

    #[test]
    fn finds_strings_at_every_depth_and_undoes_encodings() {
        for raw in [
            r#"{"a":[{"b":"r\u006d -rf /"}]}"#,
            r#"{"c":"{\"d\":\"cm0gLXJmIC8=\"}"}"#,
            r#"{"c":"\"rm -rf /\""}"#,
            r#"{"e":"726d202d7266202f"}"#,
            r#"{"e":"\\x72\\x6d\\x20\\x2d\\x72\\x66\\x20\\x2f"}"#,
            r#"{"f":"rm%20-rf%20%2F"}"#,
            r#"{"g":"echo cm0gLXJmIC8= | base64 -d | sh"}"#,
        ] {
            let all = texts(raw);
            assert!(all.contains(&"rm -rf /".to_owned()), "{raw}: {all:?}");
        }
        let all = texts(r#"{"c":"{\"d\":{\"e\":\"x\"}}"}"#);
        assert!(
            all.contains(&"d".to_owned()) && all.contains(&"x".to_owned()),
            "{all:?}"
        );
    }

    #[test]
    fn invisible_characters_and_look_alikes_are_folded() {
        assert_eq!(normalize_text("r\u{200b}m\u{2060} -\u{feff}rf"), "rm -rf");
        assert_eq!(normalize_text("ｒｍ －ｒｆ"), "rm -rf");
        assert_eq!(normalize_text("\u{e0072}\u{e006d}rm"), "rm");
        assert_eq!(normalize_text("e\u{200b}\u{301}"), "é");
        for s in ["e\u{200b}\u{301}", "ﬁle", "Ａ\u{e0001}", "x\u{202e}y"] {
            let once = normalize_text(s);
            assert_eq!(normalize_text(&once), once, "{s:?}");
        }
    }
}
