//! The Chat Completions surface (`POST /v1/chat/completions`), as pure functions:
//! bytes or values in, values out, no I/O.
//!
//! Requests and responses stay `serde_json::Value`s with their key order kept, and
//! only the fields tollgate acts on are read or changed: `tools` (governed tools
//! injected), `messages` (tool results spliced in), `choices[].message.tool_calls`
//! and the legacy `function_call` (calls found, handled ones removed). For streams,
//! [`StreamAssembler`] puts tool-call fragments back together by choice and index
//! and says when each call is complete.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize as _;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

pub use super::{AdapterError, GovernedTool, add_usage};

/// After a round whose calls tollgate answered, a choice that forces a call
/// (`"required"`, a named function, or a legacy `function_call` name) would force
/// another and loop until `max_rounds`: the next round lets the model choose.
pub fn relax_tool_choice(request: &mut Value) {
    let Some(object) = request.as_object_mut() else {
        return;
    };
    if object
        .get("tool_choice")
        .is_some_and(|c| c == "required" || c.is_object())
    {
        object.insert("tool_choice".into(), json!("auto"));
    }
    if object.get("function_call").is_some_and(Value::is_object) {
        object.insert("function_call".into(), json!("auto"));
    }
}

/// Adds the governed tools to a request's `tools`. A request without tools gets a
/// `tools` list of its own; `tool_choice` is left as the client set it.
pub fn inject_tools(request: &mut Value, governed: &[GovernedTool]) -> Result<(), AdapterError> {
    if governed.is_empty() {
        return Ok(());
    }
    super::refuse_name_clash(request, |name| governed.iter().any(|g| g.name == name))?;
    let list = super::tools_list(request)?;
    for g in governed {
        list.push(json!({
            "type": "function",
            "function": {"name": g.name, "description": g.description, "parameters": g.parameters}
        }));
    }
    Ok(())
}

/// What kind of call the model made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// `tool_calls[]` of type `function`.
    Function,
    /// `tool_calls[]` of type `custom` (free-form input).
    Custom,
    /// The legacy `function_call` (no id).
    LegacyFunction,
}

/// One tool call in a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// The choice it belongs to.
    pub choice: u64,
    /// Its position among the choice's calls.
    pub position: usize,
    /// `call_…` (empty for the legacy form).
    pub id: String,
    /// The tool's name, as written.
    pub name: String,
    /// The arguments (a JSON string for functions, free text for custom tools).
    pub arguments: String,
    /// Which form.
    pub kind: CallKind,
}

/// Every tool call in a non-streaming response, in choice order.
pub fn tool_calls(response: &Value) -> Vec<ToolCall> {
    let mut out = Vec::new();
    let Some(choices) = response.get("choices").and_then(Value::as_array) else {
        return out;
    };
    for (i, choice) in choices.iter().enumerate() {
        let index = choice
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or(i as u64);
        let Some(message) = choice.get("message") else {
            continue;
        };
        if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
            for (position, call) in calls.iter().enumerate() {
                let custom = call.get("type").and_then(Value::as_str) == Some("custom");
                let (name, arguments) = if custom {
                    (call.pointer("/custom/name"), call.pointer("/custom/input"))
                } else {
                    (
                        call.pointer("/function/name"),
                        call.pointer("/function/arguments"),
                    )
                };
                out.push(ToolCall {
                    choice: index,
                    position,
                    id: call
                        .get("id")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    name: name.and_then(Value::as_str).unwrap_or_default().to_owned(),
                    arguments: arguments
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    kind: if custom {
                        CallKind::Custom
                    } else {
                        CallKind::Function
                    },
                });
            }
        }
        if let Some(call) = message.get("function_call") {
            out.push(ToolCall {
                choice: index,
                position: 0,
                id: String::new(),
                name: call
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                arguments: call
                    .get("arguments")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                kind: CallKind::LegacyFunction,
            });
        }
    }
    out
}

/// Removes the calls whose ids are in `handled` from a response, for the client.
/// A choice left with no calls gets `finish_reason: "stop"` and loses its empty
/// `tool_calls`; the remaining calls keep their order.
pub fn without_calls(response: &Value, handled: &[String]) -> Value {
    let mut out = response.clone();
    let Some(choices) = out.get_mut("choices").and_then(Value::as_array_mut) else {
        return out;
    };
    for choice in choices {
        let Some(message) = choice.get_mut("message").and_then(Value::as_object_mut) else {
            continue;
        };
        let emptied = match message.get_mut("tool_calls").and_then(Value::as_array_mut) {
            Some(calls) => {
                let before = calls.len();
                calls.retain(|c| {
                    !c.get("id")
                        .and_then(Value::as_str)
                        .is_some_and(|id| handled.iter().any(|h| h == id))
                });
                before > 0 && calls.is_empty()
            }
            None => false,
        };
        if emptied {
            message.remove("tool_calls");
            if let Some(obj) = choice.as_object_mut()
                && obj.get("finish_reason").and_then(Value::as_str) == Some("tool_calls")
            {
                obj.insert("finish_reason".into(), Value::String("stop".into()));
            }
        }
    }
    out
}

/// The assistant message of choice `choice`, as the conversation continues with it
/// (every call kept).
pub fn assistant_message(response: &Value, choice: u64) -> Option<Value> {
    response
        .get("choices")?
        .as_array()?
        .iter()
        .enumerate()
        .find(|(i, c)| c.get("index").and_then(Value::as_u64).unwrap_or(*i as u64) == choice)
        .and_then(|(_, c)| c.get("message").cloned())
}

/// A `role: tool` message answering call `id`.
pub fn tool_message(id: &str, content: &str) -> Value {
    json!({"role": "tool", "tool_call_id": id, "content": content})
}

/// One tool call put back together from stream fragments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AssembledCall {
    /// The call id (from the first fragment).
    pub id: String,
    /// The tool name (from the first fragment).
    pub name: String,
    /// The arguments, concatenated.
    pub arguments: String,
    /// `function` or `custom`.
    pub kind: String,
}

/// What one stream chunk meant.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// A call was completed (a later index started, or its choice finished).
    CallComplete {
        /// The choice.
        choice: u64,
        /// The call's index in the model's stream.
        index: u64,
        /// The call.
        call: AssembledCall,
    },
    /// A choice finished.
    Finish {
        /// The choice.
        choice: u64,
        /// Why.
        reason: String,
    },
    /// The usage chunk (`choices: []` with `usage`).
    Usage(Value),
}

/// Reassembles tool calls from `chat.completion.chunk`s, as the SDKs do: by choice
/// and by `index`; `id`, `type` and `name` from the first fragment, `arguments`
/// concatenated. A call is complete when a fragment of a later index arrives for
/// its choice, or when the choice finishes.
#[derive(Debug, Default)]
pub struct StreamAssembler {
    open: BTreeMap<u64, BTreeMap<u64, AssembledCall>>,
    /// Bytes of ids, names and arguments taken in so far, completed calls
    /// included.
    taken: usize,
}

impl StreamAssembler {
    /// A new assembler.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one parsed chunk; returns what it completed.
    pub fn push(&mut self, chunk: &Value) -> Vec<StreamEvent> {
        self.push_parts(Parts::from_value(chunk))
    }

    fn push_parts(&mut self, parts: Parts<'_>) -> Vec<StreamEvent> {
        let mut events = Vec::new();
        if let Some(usage) = parts.usage {
            events.push(StreamEvent::Usage(usage));
        }
        for choice in parts.choices {
            let c = choice.index;
            let open = self.open.entry(c).or_default();
            for f in choice.fragments {
                // Calls stream one after another: a new index closes the earlier ones.
                let earlier: Vec<u64> = open.keys().copied().filter(|k| *k < f.index).collect();
                for k in earlier {
                    if let Some(call) = open.remove(&k) {
                        events.push(StreamEvent::CallComplete {
                            choice: c,
                            index: k,
                            call,
                        });
                    }
                }
                let call = open.entry(f.index).or_default();
                if let Some(id) = f.id {
                    call.id.push_str(&id);
                    self.taken += id.len();
                }
                if let Some(kind) = f.kind {
                    call.kind = kind.into_owned();
                }
                if let Some(name) = f.name {
                    call.name.push_str(&name);
                    self.taken += name.len();
                }
                if let Some(piece) = f.arguments {
                    call.arguments.push_str(&piece);
                    self.taken += piece.len();
                }
            }
            // The legacy single `function_call`: one call, no id, completed by the finish.
            if let Some((name, arguments)) = choice.legacy {
                let call = open.entry(LEGACY_INDEX).or_default();
                call.kind = LEGACY_KIND.to_owned();
                if let Some(name) = name {
                    call.name.push_str(name);
                    self.taken += name.len();
                }
                if let Some(piece) = arguments {
                    call.arguments.push_str(piece);
                    self.taken += piece.len();
                }
            }
            if let Some(reason) = choice.finish {
                let done = std::mem::take(open);
                for (k, call) in done {
                    events.push(StreamEvent::CallComplete {
                        choice: c,
                        index: k,
                        call,
                    });
                }
                events.push(StreamEvent::Finish {
                    choice: c,
                    reason: reason.into_owned(),
                });
            }
        }
        events
    }

    /// Calls still open (for a stream that ended early: never release them).
    pub fn unfinished(&self) -> usize {
        self.open.values().map(BTreeMap::len).sum()
    }

    /// Bytes of ids, names and arguments taken in since this assembler was made,
    /// the calls it has completed included.
    pub fn taken(&self) -> usize {
        self.taken
    }
}

/// What a stream chunk holds, read without building it: enough to pass a chunk
/// with no tool call through untouched.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChunkShape {
    /// A tool-call or legacy function-call delta.
    pub call: bool,
    /// A `role` in choice 0's delta.
    pub role: bool,
    /// Choice 0's content delta.
    pub content: Option<String>,
    /// A finish reason, or the usage chunk (no choices): the end of a round.
    pub tail: bool,
    /// An `error` object instead of a chunk.
    pub error: bool,
}

#[derive(serde::Deserialize)]
struct PeekChunk<'a> {
    #[serde(default, borrow)]
    choices: Option<Vec<PeekChoice<'a>>>,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

#[derive(serde::Deserialize)]
struct PeekChoice<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default, borrow)]
    delta: Option<PeekDelta<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<std::borrow::Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct PeekDelta<'a> {
    #[serde(default)]
    role: Option<serde::de::IgnoredAny>,
    #[serde(default, borrow)]
    content: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    function_call: Option<serde::de::IgnoredAny>,
}

/// Reads the shape of one chunk's `data`; `None` if it is not a JSON object of
/// the expected form (the caller then reads it in full).
pub fn chunk_shape(data: &str) -> Option<ChunkShape> {
    let peek: PeekChunk<'_> = serde_json::from_str(data).ok()?;
    // The usage chunk has an empty `choices`; a chunk without the key is not a tail.
    let usage_only = peek.choices.as_ref().is_some_and(Vec::is_empty);
    let choices = peek.choices.unwrap_or_default();
    let call = choices.iter().any(|c| {
        c.delta
            .as_ref()
            .is_some_and(|d| d.tool_calls.is_some() || d.function_call.is_some())
    });
    let finished = choices.iter().any(|c| c.finish_reason.is_some());
    let first = choices
        .iter()
        .enumerate()
        .find(|(i, c)| c.index.unwrap_or(*i as u64) == 0)
        .and_then(|(_, c)| c.delta.as_ref());
    Some(ChunkShape {
        call,
        role: first.is_some_and(|d| d.role.is_some()),
        content: first.and_then(|d| d.content.as_deref().map(str::to_owned)),
        tail: finished || usage_only,
        error: peek.error.is_some(),
    })
}

/// What the assembler reads from one chunk: per choice, its call fragments, a
/// legacy `function_call` and its finish reason; and the usage of a usage chunk.
/// Taken from a parsed chunk ([`Parts::from_value`]) or, for the chunks of a call
/// being streamed, straight from the chunk's text ([`TextChunk::parts`]).
struct Parts<'a> {
    usage: Option<Value>,
    choices: Vec<ChoiceParts<'a>>,
}

struct ChoiceParts<'a> {
    index: u64,
    fragments: Vec<Fragment<'a>>,
    /// A legacy `function_call`: its name and arguments pieces.
    legacy: Option<(Option<&'a str>, Option<&'a str>)>,
    finish: Option<Cow<'a, str>>,
}

struct Fragment<'a> {
    index: u64,
    id: Option<Cow<'a, str>>,
    kind: Option<Cow<'a, str>>,
    name: Option<Cow<'a, str>>,
    arguments: Option<Cow<'a, str>>,
}

impl<'a> Parts<'a> {
    /// Reads a parsed chunk as the SDKs do: a choice's `index` defaults to its
    /// position, a fragment's to 0; fields of another type than expected are
    /// ignored.
    fn from_value(chunk: &'a Value) -> Self {
        let choices = chunk.get("choices").and_then(Value::as_array);
        let usage = if choices.is_some_and(Vec::is_empty) {
            chunk.get("usage").filter(|u| u.is_object()).cloned()
        } else {
            None
        };
        let text = |v: Option<&'a Value>| v.and_then(Value::as_str);
        let choices = choices
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, choice)| {
                let delta = choice.get("delta");
                let fragments = delta
                    .and_then(|d| d.get("tool_calls"))
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|f| {
                        let body = f.get("function").or_else(|| f.get("custom"));
                        Fragment {
                            index: f.get("index").and_then(Value::as_u64).unwrap_or(0),
                            id: text(f.get("id")).map(Cow::Borrowed),
                            kind: text(f.get("type")).map(Cow::Borrowed),
                            name: text(body.and_then(|b| b.get("name"))).map(Cow::Borrowed),
                            arguments: text(
                                body.and_then(|b| b.get("arguments").or_else(|| b.get("input"))),
                            )
                            .map(Cow::Borrowed),
                        }
                    })
                    .collect();
                ChoiceParts {
                    index: choice
                        .get("index")
                        .and_then(Value::as_u64)
                        .unwrap_or(i as u64),
                    fragments,
                    legacy: delta
                        .and_then(|d| d.get("function_call"))
                        .map(|f| (text(f.get("name")), text(f.get("arguments")))),
                    finish: text(choice.get("finish_reason")).map(Cow::Borrowed),
                }
            })
            .collect();
        Self { usage, choices }
    }
}

/// Deserialises any value as "the field is there", `null` included.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

/// A struct read only from a JSON object: a derived one also reads an array, field
/// by position, where a parsed chunk has no fields at all.
struct Obj<T>(T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Obj<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Fields<T> {
            type Value = Obj<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Obj<T>, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Obj)
            }
        }
        d.deserialize_map(Fields(std::marker::PhantomData))
    }
}

/// Any JSON value, read as a tree is built (every string decoded, every number in
/// range, within the parser's depth limit) but not built. [`TextChunk::parts_of`]
/// checks a chunk's text with it, since the fields it skips are only scanned, so
/// that it takes no text a parsed chunk would refuse or read otherwise. That
/// includes an object with serde_json's private raw-value key ([`RAW_VALUE_KEY`]),
/// which a tree reads as the JSON text in its value: it is refused here, so such a
/// chunk goes the parsed way.
struct Checked;

/// The key by which serde_json (with its `raw_value` feature) marks an object that
/// stands for the JSON text in its one value: a tree built from
/// `{"$serde_json::private::RawValue":"[1]"}` is `[1]`.
const RAW_VALUE_KEY: &str = "$serde_json::private::RawValue";

/// An object key, refused if it is [`RAW_VALUE_KEY`].
struct CheckedKey;

impl<'de> serde::Deserialize<'de> for CheckedKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Key;
        impl serde::de::Visitor<'_> for Key {
            type Value = CheckedKey;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<CheckedKey, E> {
                if key == RAW_VALUE_KEY {
                    Err(E::custom("serde_json's private raw-value key"))
                } else {
                    Ok(CheckedKey)
                }
            }
        }
        d.deserialize_str(Key)
    }
}

impl<'de> serde::Deserialize<'de> for Checked {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Any;
        impl<'de> serde::de::Visitor<'de> for Any {
            type Value = Checked;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_unit<E>(self) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Checked, A::Error> {
                while seq.next_element::<Checked>()?.is_some() {}
                Ok(Checked)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Checked, A::Error> {
                while map.next_entry::<CheckedKey, Checked>()?.is_some() {}
                Ok(Checked)
            }
        }
        d.deserialize_any(Any)
    }
}

/// Whether JSON text the parser has already read through, skipping values, holds
/// none of what a skipped value is not checked for, so that [`Checked`] would take
/// it too: no `\u` escape (it could be a lone surrogate), no number that could be
/// out of range (one with an exponent, or over 18 characters long), nesting far
/// inside the parser's limit of 128, and no string starting as serde_json's private
/// keys do (`$serde_json::private::`, see [`RAW_VALUE_KEY`]). A scan of the bytes;
/// `false` sends the text to the full check, so it may be `false` for text that
/// would pass it.
fn plain(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut at = 0;
    while let Some(&b) = bytes.get(at) {
        match b {
            b'"' => {
                // To the closing quote; an escape takes the next byte with it.
                at += 1;
                if bytes
                    .get(at..)
                    .is_some_and(|rest| rest.starts_with(b"$serde_json::private::"))
                {
                    return false;
                }
                loop {
                    match bytes.get(at) {
                        Some(b'"') => break,
                        Some(b'\\') if bytes.get(at + 1) == Some(&b'u') => return false,
                        Some(b'\\') => at += 2,
                        Some(_) => at += 1,
                        None => return false,
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > 64 {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'-' | b'0'..=b'9' => {
                let start = at;
                while let Some(b'0'..=b'9' | b'.' | b'-' | b'+' | b'e' | b'E') = bytes.get(at + 1) {
                    at += 1;
                }
                let number = bytes.get(start..=at).unwrap_or_default();
                if number.len() > 18 || number.iter().any(|b| matches!(b, b'e' | b'E')) {
                    return false;
                }
            }
            _ => {}
        }
        at += 1;
    }
    true
}

/// A chunk read straight from its text, in the one form whose meaning is plain
/// without building it: every field of the expected type, no field in the deltas
/// but `role`, `content`, `refusal`, `tool_calls` and `function_call`. Anything
/// else fails to read here and is parsed in full instead.
#[derive(serde::Deserialize)]
struct TextChunk<'a> {
    #[serde(default, borrow)]
    choices: Option<Vec<Obj<TextChoice<'a>>>>,
    #[serde(default, borrow)]
    usage: Option<&'a RawValue>,
    #[serde(default, deserialize_with = "present")]
    error: bool,
}

#[derive(serde::Deserialize)]
struct TextChoice<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default, borrow)]
    delta: Option<Obj<TextDelta<'a>>>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TextDelta<'a> {
    #[serde(default, deserialize_with = "present")]
    role: bool,
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    refusal: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<Obj<TextFragment<'a>>>>,
    #[serde(default, deserialize_with = "present")]
    function_call: bool,
}

#[derive(serde::Deserialize)]
struct TextFragment<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    function: Option<Obj<TextBody<'a>>>,
    #[serde(default, borrow)]
    custom: Option<Obj<TextBody<'a>>>,
}

#[derive(serde::Deserialize)]
struct TextBody<'a> {
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    arguments: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    input: Option<Cow<'a, str>>,
}

impl<'a> TextChunk<'a> {
    /// What the assembler takes from a chunk's text, if the text is in this form
    /// and that is all there is to it ([`TextChunk::parts`]).
    fn parts_of(data: &'a str, role_sent: bool) -> Option<Parts<'a>> {
        let parts = serde_json::from_str::<Obj<Self>>(data)
            .ok()?
            .0
            .parts(role_sent)?;
        // The fields read here were only scanned where skipped, so the whole text is
        // checked as a parsed chunk would take it; only a chunk taken this way pays
        // for that, not one that goes the parsed way anyway, and a plain one only
        // for a scan of its bytes.
        if !plain(data) {
            serde_json::from_str::<Checked>(data).ok()?;
        }
        Some(parts)
    }

    /// What the assembler takes from it, if that is all there is to it: `None` for
    /// an error, a legacy call, or anything the client is to see of the first
    /// choice's delta (text, a refusal, or a role not sent yet), and where a `null`
    /// could mean something other than a missing field (`function: null` beside
    /// `custom`, `arguments: null` beside `input`).
    fn parts(self, role_sent: bool) -> Option<Parts<'a>> {
        if self.error {
            return None;
        }
        let nonempty = |s: &Option<Cow<'_, str>>| s.as_deref().is_some_and(|s| !s.is_empty());
        if let Some(d) = self
            .choices
            .as_ref()
            .and_then(|c| c.first())
            .and_then(|c| c.0.delta.as_ref())
            .map(|d| &d.0)
            && ((d.role && !role_sent) || nonempty(&d.content) || nonempty(&d.refusal))
        {
            return None;
        }
        let usage = match (&self.choices, self.usage) {
            (Some(c), Some(raw)) if c.is_empty() => serde_json::from_str::<Value>(raw.get())
                .ok()
                .filter(Value::is_object),
            _ => None,
        };
        let mut choices = Vec::new();
        for (i, Obj(choice)) in self.choices.into_iter().flatten().enumerate() {
            let mut fragments = Vec::new();
            if let Some(Obj(delta)) = choice.delta {
                if delta.function_call {
                    return None;
                }
                for Obj(f) in delta.tool_calls.into_iter().flatten() {
                    if f.function.is_none() && f.custom.is_some() {
                        return None;
                    }
                    let body = f.function.or(f.custom).map(|b| b.0);
                    let (name, arguments) = match body {
                        Some(b) if b.arguments.is_none() && b.input.is_some() => return None,
                        Some(b) => (b.name, b.arguments),
                        None => (None, None),
                    };
                    fragments.push(Fragment {
                        index: f.index.unwrap_or(0),
                        id: f.id,
                        kind: f.kind,
                        name,
                        arguments,
                    });
                }
            }
            choices.push(ChoiceParts {
                index: choice.index.unwrap_or(i as u64),
                fragments,
                legacy: None,
                finish: choice.finish_reason,
            });
        }
        Some(Parts { usage, choices })
    }
}

/// The assembler's slot for a legacy `function_call` (never a real index).
pub const LEGACY_INDEX: u64 = u64::MAX;
/// The `kind` of an assembled legacy `function_call`.
pub const LEGACY_KIND: &str = "function_call";

/// The message answering a legacy `function_call` named `name`.
pub fn function_message(name: &str, content: &str) -> Value {
    json!({"role": "function", "name": name, "content": content})
}

/// Reads a request body: a JSON object.
pub fn parse_request(body: &[u8]) -> Result<Map<String, Value>, AdapterError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(AdapterError::NotAnObject),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn governed() -> Vec<GovernedTool> {
        vec![GovernedTool {
            name: "weather__current".into(),
            description: "Current weather".into(),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
        }]
    }

    #[test]
    fn injection_keeps_the_request_and_refuses_a_name_clash() {
        let mut request: Value =
            serde_json::from_str(r#"{"model":"gpt-4o","messages":[],"temperature":0.2}"#).unwrap();
        inject_tools(&mut request, &governed()).unwrap();
        let text = request.to_string();
        assert!(
            text.starts_with(
                r#"{"model":"gpt-4o","messages":[],"temperature":0.2,"tools":[{"type":"function""#
            ),
            "{text}"
        );
        let mut clash = json!({"model": "x", "tools": [{"type": "function", "function": {"name": "weather__current"}}]});
        assert_eq!(
            inject_tools(&mut clash, &governed()),
            Err(AdapterError::NameClash("weather__current".into()))
        );
    }

    #[test]
    fn calls_are_found_in_every_choice_and_form() {
        let response = json!({"choices": [
            {"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_b", "type": "custom", "custom": {"name": "sql", "input": "SELECT 1"}}]}, "finish_reason": "tool_calls"},
            {"index": 1, "message": {"role": "assistant", "function_call": {"name": "legacy", "arguments": "{}"}}, "finish_reason": "function_call"}
        ]});
        let calls = tool_calls(&response);
        assert_eq!(calls.len(), 3);
        assert_eq!(
            (calls[0].id.as_str(), calls[0].name.as_str(), calls[0].kind),
            ("call_a", "get_weather", CallKind::Function)
        );
        assert_eq!(
            (calls[1].arguments.as_str(), calls[1].kind),
            ("SELECT 1", CallKind::Custom)
        );
        assert_eq!(
            (calls[2].choice, calls[2].kind),
            (1, CallKind::LegacyFunction)
        );
        let client = without_calls(&response, &["call_a".into()]);
        assert_eq!(tool_calls(&client).len(), 2);
        let all_handled = without_calls(&response, &["call_a".into(), "call_b".into()]);
        assert!(
            all_handled["choices"][0]["message"]
                .get("tool_calls")
                .is_none()
        );
        assert_eq!(all_handled["choices"][0]["finish_reason"], "stop");
    }

    #[test]
    fn usage_adds_up_across_rounds() {
        let mut total = json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15, "completion_tokens_details": {"reasoning_tokens": 1}});
        add_usage(
            &mut total,
            &json!({"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27, "completion_tokens_details": {"reasoning_tokens": 2}}),
        );
        assert_eq!(
            total,
            json!({"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42, "completion_tokens_details": {"reasoning_tokens": 3}})
        );
    }

    #[test]
    fn the_recorded_tool_call_streams_reassemble() {
        let root = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/fixtures/recorded/chat/"
        );
        for (file, id, name, arguments) in [
            (
                "chat-stream-tool-call-get-weather.sse",
                "call_4XzlGBLtUe9dy3GVNV4jhq7h",
                "get_weather",
                r#"{"city":"New York City"}"#,
            ),
            (
                "chat-stream-tool-call-strict-getweatherargs.sse",
                "call_c91SqDXlYFuETYv8mUHzz6pp",
                "GetWeatherArgs",
                r#"{"city":"Edinburgh","country":"UK","units":"c"}"#,
            ),
        ] {
            let text = std::fs::read_to_string(format!("{root}{file}")).unwrap();
            let mut assembler = StreamAssembler::new();
            let mut events = Vec::new();
            for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
                if line == "[DONE]" {
                    break;
                }
                events.extend(assembler.push(&serde_json::from_str(line).unwrap()));
            }
            let call = events
                .iter()
                .find_map(|e| match e {
                    StreamEvent::CallComplete { call, .. } => Some(call.clone()),
                    _ => None,
                })
                .unwrap();
            assert_eq!(
                (
                    call.id.as_str(),
                    call.name.as_str(),
                    call.arguments.as_str()
                ),
                (id, name, arguments),
                "{file}"
            );
            assert!(events.iter().any(
                |e| matches!(e, StreamEvent::Finish { reason, .. } if reason == "tool_calls")
            ));
            assert!(events.iter().any(|e| matches!(e, StreamEvent::Usage(_))));
            assert_eq!(assembler.unfinished(), 0);
        }
    }

    #[test]
    fn a_new_index_completes_the_previous_call() {
        let mut a = StreamAssembler::new();
        let frag = |index: u64, extra: Value| json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": index, "function": extra}]}}]});
        assert!(a.push(&json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_A", "type": "function", "function": {"name": "f", "arguments": ""}}]}}]})).is_empty());
        assert!(
            a.push(&frag(0, json!({"arguments": "{\"x\":1}"})))
                .is_empty()
        );
        let events = a.push(&json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 1, "id": "call_B", "type": "function", "function": {"name": "g", "arguments": ""}}]}}]}));
        assert!(
            matches!(&events[..], [StreamEvent::CallComplete { index: 0, call, .. }] if call.arguments == "{\"x\":1}" && call.id == "call_A")
        );
        // A stream that stops here never releases call B.
        assert_eq!(a.unfinished(), 1);
    }
}

/// What the stream rewriter needs from its driver, or gives to the client.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamOutput {
    /// A chunk for the client (already rewritten), as JSON text.
    Emit(String),
    /// A tool call is complete: decide it, then call [`StreamRewriter::relay`] or
    /// [`StreamRewriter::handle`].
    Decide(AssembledCall),
}

/// How a round ended, for the driver: loop again (only handled calls), or finish.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundEnd {
    /// The upstream's finish reason for choice 0.
    pub finish_reason: Option<String>,
    /// The assistant message of the round, every call included (to continue the
    /// conversation with).
    pub assistant: Value,
    /// Calls the client received this round.
    pub relayed: usize,
    /// Calls tollgate handled this round: `(id, output)`.
    pub handled: Vec<(String, String)>,
}

/// Rewrites one client stream of Chat Completions chunks, across loop rounds:
/// text and refusal deltas pass at once; tool-call fragments are held until the
/// call is complete and decided; relayed calls go out whole, with indices
/// contiguous over what the client sees; a round's finish is held back so that the
/// driver can loop or end the stream with one finish, one usage chunk and one
/// `[DONE]`. Choice 0 only (`n` > 1 is not governed by this type).
#[derive(Debug, Default)]
pub struct StreamRewriter {
    assembler: StreamAssembler,
    /// The envelope's members as JSON text, without the braces (`"id":"...",
    /// "object":...`), written once and put in front of every chunk tollgate makes.
    envelope: Option<String>,
    role_sent: bool,
    client_index: u64,
    round_content: String,
    round_calls: Vec<AssembledCall>,
    round_finish: Option<String>,
    round_relayed: usize,
    round_handled: Vec<(String, String)>,
    round_handled_bytes: usize,
    usage: Option<Value>,
    legacy_relayed: bool,
}

impl StreamRewriter {
    /// A rewriter for a new client stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// A chunk of tollgate's own: the envelope, then one choice with `delta`.
    fn chunk(&self, delta: &Value, finish: &Value) -> String {
        self.enveloped(format_args!(
            r#""choices":[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{finish}}}]"#
        ))
    }

    /// An object of the envelope's members followed by `rest` (members as text):
    /// the bytes a JSON object of the envelope's keys and then `rest`'s would
    /// serialise to.
    fn enveloped(&self, rest: std::fmt::Arguments<'_>) -> String {
        match self.envelope.as_deref() {
            Some(members) if !members.is_empty() => format!("{{{members},{rest}}}"),
            _ => format!("{{{rest}}}"),
        }
    }

    /// Takes one upstream chunk (parsed `data:` JSON).
    pub fn push(&mut self, chunk: &Value) -> Vec<StreamOutput> {
        let mut out = Vec::new();
        if self.envelope.is_none() {
            self.set_envelope(chunk);
        }
        let first = chunk
            .get("choices")
            .and_then(|c| c.get(0))
            .and_then(|c| c.get("delta"));
        if let Some(delta) = first.and_then(Value::as_object) {
            let mut visible = Map::new();
            for (key, value) in delta {
                match key.as_str() {
                    "tool_calls" | "function_call" => {}
                    "role" if self.role_sent => {}
                    "content" | "refusal" => {
                        if let Some(text) = value.as_str()
                            && key == "content"
                        {
                            self.round_content.push_str(text);
                        }
                        visible.insert(key.clone(), value.clone());
                    }
                    _ => {
                        visible.insert(key.clone(), value.clone());
                    }
                }
            }
            let has_text = visible
                .get("content")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
                || visible
                    .get("refusal")
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty());
            if visible.contains_key("role") || has_text {
                if visible.contains_key("role") {
                    self.role_sent = true;
                }
                out.push(StreamOutput::Emit(
                    self.chunk(&Value::Object(visible), &Value::Null),
                ));
            }
        }
        let events = self.assembler.push(chunk);
        self.assembled(events, &mut out);
        out
    }

    /// Takes one upstream chunk straight from its `data` text, without building
    /// it, when nothing in it is for the client as it stands: a call's fragments,
    /// a finish, the usage. `None` when it must be parsed in full and given to
    /// [`StreamRewriter::push`] instead: it carries text or a role for the client,
    /// a field the short form does not know, a legacy call or an error, or it is the
    /// first chunk the rewriter sees.
    pub fn push_text(&mut self, data: &str) -> Option<Vec<StreamOutput>> {
        // The first chunk sets the envelope, from the chunk parsed.
        self.envelope.as_ref()?;
        let parts = TextChunk::parts_of(data, self.role_sent)?;
        let events = self.assembler.push_parts(parts);
        let mut out = Vec::new();
        self.assembled(events, &mut out);
        Some(out)
    }

    /// What the assembler completed: calls to decide, the round's finish, usage.
    fn assembled(&mut self, events: Vec<StreamEvent>, out: &mut Vec<StreamOutput>) {
        for event in events {
            match event {
                StreamEvent::CallComplete {
                    choice: 0, call, ..
                } => {
                    self.round_calls.push(call.clone());
                    out.push(StreamOutput::Decide(call));
                }
                StreamEvent::Finish { choice: 0, reason } => self.round_finish = Some(reason),
                StreamEvent::Usage(u) => match &mut self.usage {
                    Some(total) => add_usage(total, &u),
                    None => self.usage = Some(u),
                },
                _ => {}
            }
        }
    }

    /// Sends a decided call to the client, whole, at the next client index.
    pub fn relay(&mut self, call: &AssembledCall) -> String {
        if call.kind == LEGACY_KIND {
            self.legacy_relayed = true;
            self.round_relayed += 1;
            return self.chunk(
                &json!({"function_call": {"name": call.name, "arguments": call.arguments}}),
                &Value::Null,
            );
        }
        let kind = if call.kind.is_empty() {
            "function"
        } else {
            call.kind.as_str()
        };
        let fragment = json!({"index": self.client_index, "id": call.id, "type": kind,
            "function": {"name": call.name, "arguments": call.arguments}});
        self.client_index += 1;
        self.round_relayed += 1;
        self.chunk(&json!({"tool_calls": [fragment]}), &Value::Null)
    }

    /// Learns from a chunk that went to the client as the upstream sent it:
    /// the stream's envelope (from `chunk`, given for the first such chunk only),
    /// whether the role was sent, and the text, for the round's assistant message.
    pub fn passed(&mut self, chunk: Option<&Value>, shape: &ChunkShape) {
        if self.envelope.is_none()
            && let Some(chunk) = chunk
        {
            self.set_envelope(chunk);
        }
        self.role_sent |= shape.role;
        if let Some(text) = &shape.content {
            self.round_content.push_str(text);
        }
    }

    /// Whether the stream's envelope (id, model, ...) is known yet.
    pub fn has_envelope(&self) -> bool {
        self.envelope.is_some()
    }

    fn set_envelope(&mut self, chunk: &Value) {
        if let Some(obj) = chunk.as_object() {
            // One id, created, model and fingerprint for the whole client stream,
            // written as members of an object (the keys need no escaping).
            let members: Vec<String> = [
                "id",
                "object",
                "created",
                "model",
                "service_tier",
                "system_fingerprint",
            ]
            .into_iter()
            .filter_map(|key| obj.get(key).map(|v| format!("\"{key}\":{v}")))
            .collect();
            self.envelope = Some(members.join(","));
        }
    }

    /// A content chunk of tollgate's own (e.g. why the loop stopped), part of
    /// the current round's assistant text.
    pub fn text(&mut self, text: &str) -> String {
        self.round_content.push_str(text);
        let mut delta = json!({"content": text});
        if !self.role_sent {
            self.role_sent = true;
            delta = json!({"role": "assistant", "content": text});
        }
        self.chunk(&delta, &Value::Null)
    }

    /// Whether a call of the current round is still being received.
    pub fn call_open(&self) -> bool {
        self.assembler.unfinished() > 0
    }

    /// Records the output of a call tollgate handled.
    pub fn handle(&mut self, id: &str, output: &str) {
        self.round_handled_bytes += output.len();
        self.round_handled.push((id.to_owned(), output.to_owned()));
    }

    /// What the round holds so far, in bytes: its text, its calls (complete or
    /// still arriving) and the outputs of its handled calls. Charged against the
    /// stream's share of the memory budget as it grows.
    pub fn held_bytes(&self) -> usize {
        self.round_content.len() + self.assembler.taken() + self.round_handled_bytes
    }

    /// Ends the round (after the upstream's `[DONE]` or end of stream). Calls still
    /// open were cut off and are never released.
    pub fn end_round(&mut self) -> RoundEnd {
        let legacy = self
            .round_calls
            .iter()
            .position(|c| c.kind == LEGACY_KIND)
            .map(|at| self.round_calls.remove(at));
        let calls: Vec<Value> = self
            .round_calls
            .drain(..)
            .map(|c| json!({"id": c.id, "type": if c.kind.is_empty() { "function".to_owned() } else { c.kind }, "function": {"name": c.name, "arguments": c.arguments}}))
            .collect();
        let content = std::mem::take(&mut self.round_content);
        let mut assistant = json!({"role": "assistant", "content": if content.is_empty() { Value::Null } else { Value::String(content) }});
        if !calls.is_empty() {
            assistant["tool_calls"] = Value::Array(calls);
        }
        if let Some(c) = legacy {
            assistant["function_call"] = json!({"name": c.name, "arguments": c.arguments});
        }
        self.assembler = StreamAssembler::new();
        self.round_handled_bytes = 0;
        RoundEnd {
            finish_reason: self.round_finish.take(),
            assistant,
            relayed: std::mem::take(&mut self.round_relayed),
            handled: std::mem::take(&mut self.round_handled),
        }
    }

    /// The closing chunks: one finish (`tool_calls` if the client received calls,
    /// else the upstream's reason, `stop` for a turn whose calls were all handled),
    /// the summed usage when asked for, and `[DONE]` (as a string).
    pub fn finish(&self, end: &RoundEnd, include_usage: bool) -> Vec<String> {
        let reason = if self.legacy_relayed {
            "function_call".to_owned()
        } else if self.client_index > 0 {
            "tool_calls".to_owned()
        } else {
            match end.finish_reason.as_deref() {
                Some("tool_calls" | "function_call") | None => "stop".to_owned(),
                Some(other) => other.to_owned(),
            }
        };
        let mut out = vec![self.chunk(&json!({}), &Value::String(reason))];
        if include_usage && let Some(usage) = &self.usage {
            out.push(self.enveloped(format_args!(r#""choices":[],"usage":{usage}"#)));
        }
        out.push("[DONE]".to_owned());
        out
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;

    /// Feeds `chunks` to two rewriters, one parsing every chunk, the other reading
    /// from the text what it can; they must give the same outputs, round end and
    /// closing chunks. Returns how many chunks were read from their text.
    fn both_ways(chunks: &[String]) -> usize {
        let (mut parsed, mut read) = (StreamRewriter::new(), StreamRewriter::new());
        let mut from_text = 0;
        for (at, text) in chunks.iter().enumerate() {
            let value: Value = serde_json::from_str(text).unwrap();
            let expected = parsed.push(&value);
            let got = match read.push_text(text) {
                Some(out) => {
                    from_text += 1;
                    out
                }
                None => read.push(&value),
            };
            assert_eq!(got, expected, "chunk {at}: {text}");
            for out in expected {
                if let StreamOutput::Decide(call) = out {
                    assert_eq!(read.relay(&call), parsed.relay(&call));
                }
            }
            assert_eq!(read.held_bytes(), parsed.held_bytes());
            assert_eq!(read.call_open(), parsed.call_open());
        }
        let (a, b) = (parsed.end_round(), read.end_round());
        assert_eq!(b, a);
        assert_eq!(read.finish(&b, true), parsed.finish(&a, true));
        from_text
    }

    #[test]
    fn chunks_of_our_own_are_the_envelope_then_the_choice() {
        // The envelope's keys in their fixed order, whatever the upstream's, and
        // strings escaped as JSON writes them; other keys stay out.
        let first = json!({"model": "m\"\u{2028}é", "extra": 1, "id": "c\\1", "created": 17,
            "system_fingerprint": null, "object": "chat.completion.chunk", "service_tier": "default",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]});
        let mut rw = StreamRewriter::new();
        rw.push(&first);
        let envelope = |choices: Value| {
            json!({"id": "c\\1", "object": "chat.completion.chunk", "created": 17,
                "model": "m\"\u{2028}é", "service_tier": "default", "system_fingerprint": null,
                "choices": choices})
        };
        let call = AssembledCall {
            id: "call_1".into(),
            kind: String::new(),
            name: "f".into(),
            arguments: "{\"q\":\"\\n\"}".into(),
        };
        assert_eq!(
            rw.relay(&call),
            envelope(
                json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1",
                "type": "function", "function": {"name": "f", "arguments": "{\"q\":\"\\n\"}"}}]},
                "logprobs": null, "finish_reason": null}])
            )
            .to_string()
        );
        assert_eq!(
            rw.text("done"),
            envelope(
                json!([{"index": 0, "delta": {"content": "done"}, "logprobs": null,
                "finish_reason": null}])
            )
            .to_string()
        );
        rw.push(&json!({"choices": [], "usage": {"total_tokens": 3}}));
        let end = rw.end_round();
        let mut usage = envelope(json!([]));
        usage["usage"] = json!({"total_tokens": 3});
        assert_eq!(
            rw.finish(&end, true),
            vec![
                envelope(json!([{"index": 0, "delta": {}, "logprobs": null,
                    "finish_reason": "tool_calls"}]))
                .to_string(),
                usage.to_string(),
                "[DONE]".to_owned()
            ]
        );
        // No envelope keys, or no chunk seen yet: the choice alone.
        let mut bare = StreamRewriter::new();
        assert_eq!(
            bare.text("x"),
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":"x"},"logprobs":null,"finish_reason":null}]}"#
        );
        bare.push(&json!({"choices": []}));
        assert_eq!(
            bare.text("y"),
            r#"{"choices":[{"index":0,"delta":{"content":"y"},"logprobs":null,"finish_reason":null}]}"#
        );
    }

    #[test]
    fn the_scan_leaves_to_the_full_check_all_it_does_not_rule_out() {
        // Values a skipping read takes. `plain` must pass only text that the full
        // check and the tree parser take too, and must pass the everyday ones.
        // Whether each passes the scan (inside an object, one level down).
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let values = [
            (r#""plain""#.to_owned(), true),
            (
                r#""quote \" slash \/ backslash \\ newline \n tab \t""#.to_owned(),
                true,
            ),
            (
                r#""an escaped backslash, then u: \\u0041""#.to_owned(),
                true,
            ),
            (r#""\u0041""#.to_owned(), false),
            (r#""\ud83d\ude00""#.to_owned(), false),
            (r#""\ud800""#.to_owned(), false),
            (r#""\udc00x""#.to_owned(), false),
            ("0".to_owned(), true),
            ("-0".to_owned(), true),
            ("-0.0".to_owned(), true),
            ("1.5".to_owned(), true),
            ("999999999999999999".to_owned(), true),
            ("-99999999999999999".to_owned(), true),
            ("12345678.123456789".to_owned(), true),
            ("18446744073709551615".to_owned(), false),
            ("-9223372036854775809".to_owned(), false),
            ("1e5".to_owned(), false),
            ("1E400".to_owned(), false),
            ("-1e-400".to_owned(), false),
            ("1.7976931348623157e308".to_owned(), false),
            ("1.8e308".to_owned(), false),
            ("9".repeat(309), false),
            (format!("1.{}", "0".repeat(400)), false),
            ("true".to_owned(), true),
            ("false".to_owned(), true),
            ("null".to_owned(), true),
            (r#"{"e":[1,true,false,null,"E"]}"#.to_owned(), true),
            (deep(63), true),
            (format!("[{}[]]", "[],".repeat(200)), true),
            (r#""$dollar""#.to_owned(), true),
            (r#"{"$serde_json::private::RawValue":0}"#.to_owned(), false),
            (
                r#"{"$serde_json::private::RawValue":"{}"}"#.to_owned(),
                false,
            ),
            (
                r#"{"a":"$serde_json::private::RawValue"}"#.to_owned(),
                false,
            ),
            (deep(64), false),
            (deep(127), false),
            (deep(128), false),
            (deep(300), false),
        ];
        for (value, passes) in &values {
            let text = format!(r#"{{"choices":[],"x":{value}}}"#);
            assert!(
                serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok(),
                "{text}"
            );
            assert_eq!(plain(&text), *passes, "{text}");
            if plain(&text) {
                assert!(serde_json::from_str::<Checked>(&text).is_ok(), "{text}");
                assert!(serde_json::from_str::<Value>(&text).is_ok(), "{text}");
            }
        }
        // A call's fragments and the usage, as the API streams them, are plain.
        for text in [
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1733300000,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\""}}]},"logprobs":null,"finish_reason":null}]}"#,
            r#"{"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":80,"completion_tokens":17,"total_tokens":97,"prompt_tokens_details":{"cached_tokens":0}}}"#,
        ] {
            assert!(plain(text), "{text}");
        }
    }

    #[test]
    fn chunks_read_from_their_text_mean_what_they_mean_parsed() {
        let root = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/fixtures/recorded/chat/"
        );
        let mut total = 0;
        for file in std::fs::read_dir(root).unwrap() {
            let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
            let chunks: Vec<String> = text
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .filter(|l| *l != "[DONE]")
                .map(str::to_owned)
                .collect();
            total += both_ways(&chunks);
        }
        // The recorded calls' fragments, finishes and usage chunks.
        assert!(total >= 10, "only {total} chunks were read from their text");

        // Edge cases, after an ordinary first chunk that sets the envelope.
        let first = r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#;
        let cases: &[&[&str]] = &[
            // Two calls, escapes in the arguments, the usage at the end.
            &[
                r#"{"id":"c1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"f","arguments":""}}]},"logprobs":null,"finish_reason":null}]}"#,
                r#"{"id":"c1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"q\":\"\u00e9\\n\"}"}}]}}]}"#,
                r#"{"id":"c1","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"g","arguments":"{}"}}]}}]}"#,
                r#"{"id":"c1","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
                r#"{"id":"c1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#,
            ],
            // A role not sent yet, text, a refusal and an unknown delta field all go
            // the parsed way; so do a legacy call and `null`s that could mean more.
            &[
                r#"{"choices":[{"index":0,"delta":{"refusal":"no"}}]}"#,
                r#"{"choices":[{"index":0,"delta":{"content":"hi","tool_calls":[{"index":0,"id":"x","function":{"name":"f"}}]}}]}"#,
                r#"{"choices":[{"index":0,"delta":{"audio":{"id":"a"},"tool_calls":[{"index":0,"function":{"arguments":"1"}}]}}]}"#,
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"y","function":null,"custom":{"name":"c","input":"raw"}}]}}]}"#,
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":2,"id":"z","custom":{"name":"c","arguments":null,"input":"raw"}}]}}]}"#,
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":3,"id":"w","custom":{"name":"c","input":"raw"}}]}}]}"#,
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":3,"function":{"input":"in"}}]}}]}"#,
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":3,"function":null,"custom":{"name":"c","arguments":"a"}}]}}]}"#,
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":3,"function":{"arguments":null,"input":"in"}}]}}]}"#,
                r#"{"choices":[{"index":0,"delta":{"function_call":{"name":"legacy","arguments":"{}"}}}]}"#,
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1.0,"id":7,"function":{"name":["f"]}}]}}]}"#,
                r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":4,"id":"d","id":"e"}]}}]}"#,
                r#"{"choices":[{"index":"0","delta":"x","finish_reason":5}]}"#,
                r#"{"choices":[{"delta":{"tool_calls":null,"content":null}},{"index":1,"delta":{"content":"other choice"},"finish_reason":"stop"}]}"#,
                r#"{"choices":[{"index":0,"delta":null,"finish_reason":"tool_calls"}],"usage":null}"#,
                r#"{"choices":[],"usage":"not an object"}"#,
                r#"[[{"index":0,"delta":{"tool_calls":[{"index":9,"id":"arr"}]},"finish_reason":"stop"}]]"#,
                r#"{"choices":null}"#,
            ],
        ];
        for case in cases {
            let chunks: Vec<String> = std::iter::once(first)
                .chain(case.iter().copied())
                .map(str::to_owned)
                .collect();
            both_ways(&chunks);
        }
        // Arrays where objects belong have no fields for a parsed chunk; a struct
        // would read them field by position. Each follows an open call.
        let open = r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"f","arguments":"{}"}}]}}]}"#;
        for probe in [
            r#"{"choices":[[0,null,"tool_calls"]]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[[1,"call_b","function",["g","{}"]]]}}]}"#,
            r#"{"choices":[{"index":0,"delta":[null,null,null,[{"index":1,"id":"call_b"}]]}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":["x","MORE"]}]},"finish_reason":"tool_calls"}]}"#,
        ] {
            both_ways(&[first.to_owned(), open.to_owned(), probe.to_owned()]);
        }
        // An object with serde_json's private raw-value key is, as a tree, the JSON
        // text in its value: here a call. It goes the parsed way.
        let raw = json!({RAW_VALUE_KEY: r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_r","type":"function","function":{"name":"f","arguments":"{}"}}]},"finish_reason":"tool_calls"}]}"#}).to_string();
        assert_eq!(
            both_ways(&[first.to_owned(), open.to_owned(), raw]),
            both_ways(&[first.to_owned(), open.to_owned()]),
            "not read from its text"
        );
        // Text a parsed chunk refuses (too deep, a lone surrogate, a number out of
        // range), even in fields the short form skips, is never read from the text:
        // it goes the parsed way and fails there.
        let deep = format!(
            r#"{{"choices":[],"x":{}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        for probe in [
            deep.as_str(),
            r#"{"id":"\ud800","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[{"index":0,"delta":{"role":"\udc00"},"finish_reason":"tool_calls"}]}"#,
            r#"{"x":-1e999,"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":1e400}}"#,
            &format!(
                r#"{{"choices":[],"usage":{{"prompt_tokens":{}}}}}"#,
                "9".repeat(400)
            ),
            r#"{"choices":[],"usage":{"total_tokens":1},"x":{"$serde_json::private::RawValue":0}}"#,
        ] {
            assert!(serde_json::from_str::<Value>(probe).is_err(), "{probe}");
            let mut rw = StreamRewriter::new();
            rw.push(&serde_json::from_str(first).unwrap());
            rw.push(&serde_json::from_str(open).unwrap());
            assert!(rw.push_text(probe).is_none(), "{probe}");
        }
        // A role the client has not had yet is never taken from the text.
        let mut rw = StreamRewriter::new();
        rw.push(&json!({"id": "c", "choices": []}));
        assert!(
            rw.push_text(r#"{"choices":[{"index":0,"delta":{"role":null}}]}"#)
                .is_none()
        );
        assert!(rw.push_text(r#"{"error":null}"#).is_none());
        assert!(rw.push_text(r#"{"choices":[]}"#).is_some());
        assert!(
            StreamRewriter::new()
                .push_text(r#"{"choices":[]}"#)
                .is_none()
        );
    }

    #[test]
    fn the_shape_of_a_chunk_is_read_without_building_it() {
        let shape = |s: &str| chunk_shape(s).unwrap();
        assert_eq!(
            shape(
                r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":"hi"},"finish_reason":null}]}"#
            ),
            ChunkShape {
                role: true,
                content: Some("hi".into()),
                ..ChunkShape::default()
            }
        );
        assert!(shape(r#"{"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}"#).call);
        assert!(shape(r#"{"choices":[{"delta":{"function_call":{"name":"f"}}}]}"#).call);
        assert!(!shape(r#"{"choices":[{"delta":{"tool_calls":null}}]}"#).call);
        assert!(shape(r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#).tail);
        assert!(shape(r#"{"choices":[],"usage":{"total_tokens":3}}"#).tail);
        assert!(shape(r#"{"error":{"message":"x"}}"#).error);
        assert!(
            !shape(r#"{"n":1}"#).tail,
            "no choices at all is not the end"
        );
        assert_eq!(chunk_shape("not json"), None);
        assert_eq!(chunk_shape("[1]"), None);
    }

    fn data_lines(file: &str) -> Vec<Value> {
        let root = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/fixtures/recorded/chat/"
        );
        std::fs::read_to_string(format!("{root}{file}"))
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|l| *l != "[DONE]")
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn a_relayed_recorded_call_reaches_the_client_whole() {
        let mut rw = StreamRewriter::new();
        let mut emitted = Vec::new();
        for chunk in data_lines("chat-stream-tool-call-get-weather.sse") {
            for out in rw.push(&chunk) {
                match out {
                    StreamOutput::Emit(c) => emitted.push(serde_json::from_str(&c).unwrap()),
                    StreamOutput::Decide(call) => {
                        emitted.push(serde_json::from_str(&rw.relay(&call)).unwrap())
                    }
                }
            }
        }
        let end = rw.end_round();
        assert_eq!(end.relayed, 1);
        let closing = rw.finish(&end, true);
        assert_eq!(closing.last().map(String::as_str), Some("[DONE]"));
        // What an SDK would assemble: one call, the original id, name and arguments.
        let mut client = StreamAssembler::new();
        let mut events = Vec::new();
        for c in emitted.iter().chain(
            closing[..closing.len() - 1]
                .iter()
                .map(|s| serde_json::from_str::<Value>(s).unwrap())
                .collect::<Vec<_>>()
                .iter(),
        ) {
            events.extend(client.push(c));
        }
        let calls: Vec<&AssembledCall> = events
            .iter()
            .filter_map(|e| match e {
                StreamEvent::CallComplete { call, .. } => Some(call),
                _ => None,
            })
            .collect();
        assert_eq!(calls.len(), 1);
        assert_eq!(
            (
                calls[0].id.as_str(),
                calls[0].name.as_str(),
                calls[0].arguments.as_str()
            ),
            (
                "call_4XzlGBLtUe9dy3GVNV4jhq7h",
                "get_weather",
                r#"{"city":"New York City"}"#
            )
        );
        assert!(
            events
                .iter()
                .any(|e| matches!(e, StreamEvent::Finish { reason, .. } if reason == "tool_calls"))
        );
        assert!(
            events
                .iter()
                .any(|e| matches!(e, StreamEvent::Usage(u) if u["total_tokens"] == 60))
        );
        // Every emitted chunk keeps the upstream's envelope.
        assert!(
            emitted
                .iter()
                .all(|c| c["id"] == "chatcmpl-ABfwERreu9s99xXsVuOWtIB2UOx62")
        );
    }

    #[test]
    fn a_handled_call_never_reaches_the_client_and_the_round_can_loop() {
        let mut rw = StreamRewriter::new();
        let mut emitted = Vec::new();
        for chunk in data_lines("chat-stream-tool-call-get-weather.sse") {
            for out in rw.push(&chunk) {
                match out {
                    StreamOutput::Emit(c) => {
                        emitted.push(serde_json::from_str::<Value>(&c).unwrap())
                    }
                    StreamOutput::Decide(call) => rw.handle(&call.id, "{\"error\":\"denied\"}"),
                }
            }
        }
        let end = rw.end_round();
        assert_eq!((end.relayed, end.handled.len()), (0, 1));
        assert_eq!(
            end.assistant["tool_calls"][0]["function"]["arguments"],
            r#"{"city":"New York City"}"#
        );
        assert!(
            emitted
                .iter()
                .all(|c| c.pointer("/choices/0/delta/tool_calls").is_none()),
            "no fragment of a handled call leaks"
        );
        // Round two: text; the role is not repeated; one finish, `stop`.
        for chunk in data_lines("chat-stream-text-finish-stop.sse") {
            for out in rw.push(&chunk) {
                if let StreamOutput::Emit(c) = out {
                    emitted.push(serde_json::from_str(&c).unwrap());
                }
            }
        }
        let end = rw.end_round();
        let closing = rw.finish(&end, true);
        let finish: Value = serde_json::from_str(&closing[0]).unwrap();
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        let usage: Value = serde_json::from_str(&closing[1]).unwrap();
        assert_eq!(
            usage["usage"]["total_tokens"],
            60 + 44,
            "usage summed over both rounds"
        );
        assert_eq!(
            emitted
                .iter()
                .filter(|c| c.pointer("/choices/0/delta/role").is_some())
                .count(),
            1
        );
        assert!(
            emitted
                .iter()
                .all(|c| c["choices"][0]["finish_reason"].is_null()),
            "no intermediate finish"
        );
    }

    #[test]
    fn a_forced_choice_is_relaxed_after_a_handled_round() {
        for forced in [
            json!("required"),
            json!({"type": "function", "function": {"name": "x"}}),
        ] {
            let mut request = json!({"tool_choice": forced});
            relax_tool_choice(&mut request);
            assert_eq!(request["tool_choice"], "auto");
        }
        let mut none = json!({"tool_choice": "none", "function_call": {"name": "f"}});
        relax_tool_choice(&mut none);
        assert_eq!(none["tool_choice"], "none");
        assert_eq!(none["function_call"], "auto");
    }
}
