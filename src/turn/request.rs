//! A client's request body as the governed path holds it: the bytes it came
//! with, the few top-level facts governing needs (whether it streams, its
//! tools' kinds, `n`, `background`, `previous_response_id`), and its JSON tree,
//! built only when something must change it: a splice, injected tools, or a
//! further round. A request that needs none of these goes upstream as it came
//! and is never built into a tree; reading its top level and sizing the rest
//! allocates next to nothing, where building and freeing the tree of a 7 KiB
//! request with eight tools costs more than deciding its call.
//!
//! The size a tree would take is estimated on that first read, so that the
//! governed memory budget charges a request's parsed form whether or not it is
//! ever built.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::error::ProxyError;

/// A slot in an array or an object: one JSON value.
const SLOT: usize = std::mem::size_of::<Value>();
/// An object entry: its value's slot, its key and its place in the index.
const ENTRY: usize = SLOT + std::mem::size_of::<String>() + 2 * std::mem::size_of::<usize>();

/// What governing reads off a request's top level.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head {
    /// `stream: true`.
    pub stream: bool,
    /// `stream_options.include_usage: true`.
    pub include_usage: bool,
    /// `n`, when it is a whole number.
    pub n: Option<u64>,
    /// `background: true`.
    pub background: bool,
    /// The legacy `functions` key is present.
    pub functions: bool,
    /// `tools` is a list with something in it.
    pub has_tools: bool,
    /// `tools` lists a tool the model calls by name (`function`, `custom`, or a
    /// `namespace` of them).
    pub callable_tools: bool,
    /// `previous_response_id`, when it is a string.
    pub previous_response_id: Option<String>,
    /// Roughly what the request's JSON tree holds on the heap: its strings, a
    /// slot for every array item, and for every object entry its key, slot and
    /// index.
    pub tree_bytes: usize,
}

/// A client's request: its bytes, its [`Head`], and its tree once built.
#[derive(Debug, Clone)]
pub struct ClientRequest {
    bytes: Bytes,
    head: Head,
    tree: Option<Value>,
    changed: bool,
}

impl ClientRequest {
    /// Reads a request body's top level; `None` if it is not a JSON object. The
    /// whole body is checked as JSON (the tree's depth limit included).
    pub fn read(bytes: Bytes) -> Option<Self> {
        let head = Head::read(&bytes)?;
        Some(Self {
            bytes,
            head,
            tree: None,
            changed: false,
        })
    }

    /// What was read off the top level.
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// Whether the tree has been built.
    #[cfg(test)]
    fn is_parsed(&self) -> bool {
        self.tree.is_some()
    }

    /// The tree, built on first use, for reading (and for changes the caller
    /// reports with [`ClientRequest::set_changed`]).
    pub fn parsed(&mut self) -> Result<&mut Value, ProxyError> {
        let tree = match self.tree.take() {
            Some(tree) => tree,
            None => serde_json::from_slice(&self.bytes).map_err(|e| ProxyError::Internal {
                detail: format!("a request read once could not be read again: {e}"),
            })?,
        };
        Ok(self.tree.insert(tree))
    }

    /// The tree, built on first use, to change: the next [`ClientRequest::body`]
    /// is written from it.
    pub fn edit(&mut self) -> Result<&mut Value, ProxyError> {
        self.changed = true;
        self.parsed()
    }

    /// Marks the tree as changed (or not) by what was done through
    /// [`ClientRequest::parsed`].
    pub fn set_changed(&mut self, changed: bool) {
        self.changed = changed && self.tree.is_some();
    }

    /// Whether the body going upstream differs from the client's bytes.
    #[cfg(test)]
    fn is_changed(&self) -> bool {
        self.changed
    }

    /// The body to send upstream: the client's own bytes until something
    /// changed the tree, then the tree written out.
    pub fn body(&self) -> Bytes {
        match &self.tree {
            Some(tree) if self.changed => Bytes::from(tree.to_string()),
            _ => self.bytes.clone(),
        }
    }
}

impl Head {
    /// Reads `body`'s top level; `None` if it is not a JSON object.
    pub fn read(body: &[u8]) -> Option<Self> {
        // One check of the whole body as UTF-8 (word by word over ASCII) instead of
        // one per string: JSON text is UTF-8 throughout, so it accepts and refuses
        // the same bodies, and the parser then takes the strings as they are.
        let text = std::str::from_utf8(body).ok()?;
        let top: Top<'_> = serde_json::from_str(text).ok()?;
        let value =
            |raw: Option<&RawValue>| raw.and_then(|r| serde_json::from_str::<Value>(r.get()).ok());
        let is_true = |raw: Option<&RawValue>| raw.is_some_and(|r| r.get() == "true");
        let mut tree_bytes = top.other_bytes;
        for raw in [
            top.stream,
            top.stream_options,
            top.n,
            top.background,
            top.functions,
            top.previous_response_id,
        ]
        .into_iter()
        .flatten()
        {
            tree_bytes += size_of_json(raw.get()).ok()?;
        }
        Some(Self {
            stream: is_true(top.stream),
            include_usage: value(top.stream_options)
                .and_then(|o| o.get("include_usage").and_then(Value::as_bool))
                == Some(true),
            n: value(top.n).and_then(|n| n.as_u64()),
            background: is_true(top.background),
            functions: top.functions.is_some(),
            has_tools: top.tools.listed,
            callable_tools: top.tools.callable,
            previous_response_id: value(top.previous_response_id)
                .and_then(|v| v.as_str().map(str::to_owned)),
            tree_bytes,
        })
    }
}

/// The estimated size in memory of a built JSON tree, as [`Head::read`]
/// estimates it from the text: every string's bytes, a [`SLOT`] per array item
/// and an [`ENTRY`] plus the key per object entry.
pub fn tree_size(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len(),
        Value::Array(items) => items.iter().map(|v| SLOT + tree_size(v)).sum(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| ENTRY + k.len() + tree_size(v))
            .sum(),
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
    }
}

/// The estimated tree size of one JSON text.
pub fn size_of_json(text: &str) -> Result<usize, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let read = Read::Any.deserialize(&mut de)?;
    de.end()?;
    Ok(read.bytes)
}

/// A request's top level: the small keys governing reads, kept as their raw
/// text, what the `tools` list says, and the estimated tree size of every entry
/// but the raw ones' values.
#[derive(Default)]
struct Top<'a> {
    stream: Option<&'a RawValue>,
    stream_options: Option<&'a RawValue>,
    n: Option<&'a RawValue>,
    background: Option<&'a RawValue>,
    functions: Option<&'a RawValue>,
    previous_response_id: Option<&'a RawValue>,
    tools: Sized,
    other_bytes: usize,
}

impl<'de> Deserialize<'de> for Top<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(TopVisitor)
    }
}

struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Top<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top<'de>, A::Error> {
        let mut top = Top::default();
        while let Some(Key(key)) = map.next_key()? {
            top.other_bytes += ENTRY + key.len();
            // A repeated key counts twice and its last value is kept, as the
            // tree keeps it.
            let slot = match &*key {
                "stream" => &mut top.stream,
                "stream_options" => &mut top.stream_options,
                "n" => &mut top.n,
                "background" => &mut top.background,
                "functions" => &mut top.functions,
                "previous_response_id" => &mut top.previous_response_id,
                "tools" => {
                    top.tools = map.next_value_seed(Read::ToolList)?;
                    top.other_bytes += top.tools.bytes;
                    continue;
                }
                _ => {
                    top.other_bytes += map.next_value_seed(Read::Any)?.bytes;
                    continue;
                }
            };
            *slot = Some(map.next_value()?);
        }
        Ok(top)
    }
}

/// An object key, borrowed from the body when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// What reading one JSON value without building it found: its estimated tree
/// size and, where it was read as a tools list, what the list holds.
#[derive(Debug, Clone, Copy, Default)]
struct Sized {
    bytes: usize,
    /// A list with something in it.
    listed: bool,
    /// A tool the model calls by name (`function`, `custom`, `namespace`).
    callable: bool,
}

/// Reads one JSON value for its [`Sized`] facts; what else it notes depends on
/// where the value stands. The parser's depth limit (128) bounds the recursion
/// as it bounds the tree's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// Any value: its size only.
    Any,
    /// A request's `tools`.
    ToolList,
    /// One item of `tools`.
    Tool,
    /// A tool's `type`.
    ToolType,
}

impl<'de> DeserializeSeed<'de> for Read {
    type Value = Sized;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Sized, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Read {
    type Value = Sized;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Sized, E> {
        Ok(Sized::default())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Sized, E> {
        Ok(Sized::default())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Sized, E> {
        Ok(Sized::default())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Sized, E> {
        Ok(Sized::default())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Sized, E> {
        Ok(Sized::default())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Sized, E> {
        Ok(Sized {
            bytes: v.len(),
            callable: self == Read::ToolType && matches!(v, "function" | "custom" | "namespace"),
            ..Sized::default()
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Sized, A::Error> {
        let item = if self == Read::ToolList {
            Read::Tool
        } else {
            Read::Any
        };
        let mut read = Sized::default();
        while let Some(one) = seq.next_element_seed(item)? {
            read.bytes = read.bytes.saturating_add(SLOT + one.bytes);
            read.listed = self == Read::ToolList;
            read.callable |= one.callable;
        }
        Ok(read)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Sized, A::Error> {
        let mut read = Sized::default();
        while let Some(Key(key)) = map.next_key()? {
            let typed = self == Read::Tool && key == "type";
            let value = map.next_value_seed(if typed { Read::ToolType } else { Read::Any })?;
            read.bytes = read.bytes.saturating_add(ENTRY + key.len() + value.bytes);
            if typed {
                // A repeated `type` counts as the tree keeps it: the last.
                read.callable = value.callable;
            }
        }
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(value: &Value) -> ClientRequest {
        ClientRequest::read(Bytes::from(value.to_string())).unwrap()
    }

    #[test]
    fn the_head_reads_what_governing_needs_off_the_top_level() {
        let request = json!({
            "model": "gpt-4o",
            "stream": true,
            "stream_options": {"include_usage": true},
            "n": 2,
            "background": false,
            "previous_response_id": "resp_1",
            "tools": [
                {"type": "web_search"},
                {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
            ],
            "messages": [{"role": "user", "content": "hi \"there\" \u{e9}"}]
        });
        let head = read(&request).head().clone();
        assert_eq!(
            head,
            Head {
                stream: true,
                include_usage: true,
                n: Some(2),
                background: false,
                functions: false,
                has_tools: true,
                callable_tools: true,
                previous_response_id: Some("resp_1".into()),
                tree_bytes: tree_size(&request),
            }
        );
    }

    #[test]
    fn odd_values_read_as_absent_not_as_errors() {
        let request = json!({
            "stream": "yes",
            "stream_options": null,
            "n": -1,
            "background": 1,
            "functions": null,
            "tools": [1, "x", [], {"type": 3}, {"type": "web_search_preview"}],
            "previous_response_id": 7
        });
        let head = read(&request).head().clone();
        assert!(!head.stream && !head.include_usage && !head.background);
        assert_eq!(head.n, None);
        assert!(
            head.functions,
            "a present `functions` counts even when null"
        );
        assert!(head.has_tools && !head.callable_tools);
        assert_eq!(head.previous_response_id, None);
        assert_eq!(head.tree_bytes, tree_size(&request));
        let empty = read(&json!({"tools": []})).head().clone();
        assert!(!empty.has_tools && !empty.callable_tools);
        let not_a_list = read(&json!({"tools": {"type": "function"}})).head().clone();
        assert!(!not_a_list.has_tools && !not_a_list.callable_tools);
    }

    #[test]
    fn only_a_json_object_is_read() {
        for body in [
            &b"[1,2]"[..],
            b"\"text\"",
            b"{\"a\":1",
            b"{\"a\":1} x",
            b"{\"a\":tru}",
            b"",
            // Not UTF-8: in a string, in a key, in an ignored value, outside strings.
            b"{\"messages\":[{\"content\":\"caf\xe9\"}]}",
            b"{\"k\xff\":1}",
            b"{\"stream\":true,\"tools\":[{\"type\":\"function\",\"x\":\"\xc3\"}]}",
            b"{\"a\":1}\xa0",
        ] {
            assert!(
                ClientRequest::read(Bytes::copy_from_slice(body)).is_none(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let accented = "{\"messages\":[{\"content\":\"caf\u{e9} \u{1f600}\"}],\"stream\":true}";
        assert!(ClientRequest::read(Bytes::from(accented)).is_some_and(|r| r.head().stream));
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert!(
            ClientRequest::read(Bytes::from(deep)).is_none(),
            "past the depth limit"
        );
    }

    #[test]
    fn the_client_bytes_go_upstream_until_the_tree_changes() {
        let text = "{ \"model\" : \"m\",\n \"messages\": [] }";
        let mut request = ClientRequest::read(Bytes::from(text)).unwrap();
        assert_eq!(request.body(), text.as_bytes());
        assert!(!request.is_parsed());
        // Read but not changed: still the client's bytes.
        assert_eq!(request.parsed().unwrap()["model"], "m");
        request.set_changed(false);
        assert_eq!(request.body(), text.as_bytes());
        request.edit().unwrap()["model"] = json!("n");
        assert!(request.is_changed());
        let sent: Value = serde_json::from_slice(&request.body()).unwrap();
        assert_eq!(sent, json!({"model": "n", "messages": []}));
    }
}
