//! The Responses surface (`POST /v1/responses`), as pure functions and one
//! stream rewriter: values in, values or bytes out, no I/O.
//!
//! Tool calls are output items: `function_call` (arguments a JSON string) and
//! `custom_tool_call` (free-form `input`), each answered by its `call_id`, while
//! `id` names the item. Every other item type (messages, reasoning with its
//! `encrypted_content`, hosted tool calls, types this version does not know) is
//! left exactly as it came. Governed tools are injected flat, with an explicit
//! `strict` so that this surface's strict-by-default rule cannot reject their
//! schemas.
//!
//! [`StreamRewriter`] turns the upstream's event streams of one or more rounds into
//! one client stream: it holds each call's events until the call is decided,
//! drops hidden calls, renumbers `sequence_number` and `output_index`, suppresses
//! the later rounds' `response.created` and the intermediate terminals, and
//! builds the one final `response.completed`. An event it does not have to change
//! leaves with its upstream bytes, and is read only as far as its type, numbers,
//! item id and item type ([`EventData`]): the whole event is built only for the
//! items of calls, events it renumbers, and the `response.created` and terminal
//! events of a stream whose response object it has to make.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::OnceLock;

use bytes::Bytes;
use serde_json::{Value, json};

use super::{AdapterError, GovernedTool, add_usage};

/// Schema keywords strict mode refuses.
const NOT_STRICT: [&str; 8] = [
    "allOf",
    "not",
    "if",
    "then",
    "else",
    "dependentRequired",
    "dependentSchemas",
    "patternProperties",
];

/// Whether a schema meets the strict-mode subset: an object at the root, every
/// object closed (`additionalProperties: false`) with all its properties
/// required, and no keyword strict mode refuses. A governed tool whose schema
/// does not is injected with `strict: false`.
pub fn strict_compatible(schema: &Value) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("object") && strict_node(schema, 0)
}

fn strict_node(schema: &Value, depth: usize) -> bool {
    if depth > 32 {
        return false;
    }
    let Some(object) = schema.as_object() else {
        return schema.is_boolean();
    };
    if NOT_STRICT.iter().any(|k| object.contains_key(*k)) {
        return false;
    }
    let is_object = match object.get("type") {
        Some(Value::String(t)) => t == "object",
        Some(Value::Array(types)) => types.iter().any(|t| t == "object"),
        _ => object.contains_key("properties"),
    };
    if is_object {
        if object.get("additionalProperties") != Some(&Value::Bool(false)) {
            return false;
        }
        let required: Vec<&str> = object
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(properties) = object.get("properties").and_then(Value::as_object) {
            for (name, property) in properties {
                if !required.contains(&name.as_str()) || !strict_node(property, depth + 1) {
                    return false;
                }
            }
        }
    }
    let nested_ok = |key: &str| match object.get(key) {
        None => true,
        Some(Value::Array(list)) => list.iter().all(|s| strict_node(s, depth + 1)),
        Some(Value::Object(map)) if key == "$defs" || key == "definitions" => {
            map.values().all(|s| strict_node(s, depth + 1))
        }
        Some(other) => strict_node(other, depth + 1),
    };
    ["items", "anyOf", "$defs", "definitions"]
        .iter()
        .all(|k| nested_ok(k))
}

/// Adds the governed tools to a request's `tools`, in this surface's flat shape
/// with an explicit `strict`. A client function or custom tool with a governed
/// tool's name is refused.
pub fn inject_tools(request: &mut Value, governed: &[GovernedTool]) -> Result<(), AdapterError> {
    if governed.is_empty() {
        return Ok(());
    }
    // `tools: null` reads as no tools on this surface.
    if let Some(tools) = request.get_mut("tools").filter(|t| t.is_null()) {
        *tools = Value::Array(Vec::new());
    }
    super::refuse_name_clash(request, |name| governed.iter().any(|g| g.name == name))?;
    let list = super::tools_list(request)?;
    for g in governed {
        list.push(json!({
            "type": "function",
            "name": g.name,
            "description": g.description,
            "parameters": g.parameters,
            "strict": strict_compatible(&g.parameters),
        }));
    }
    Ok(())
}

/// What kind of call an item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// `function_call`, arguments a JSON string.
    Function,
    /// `custom_tool_call`, free-form `input`.
    Custom,
}

/// One call the model made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallItem {
    /// What the output answers (`call_…`).
    pub call_id: String,
    /// The item's own id (`fc_…`), if any.
    pub item_id: Option<String>,
    /// The tool.
    pub name: String,
    /// The arguments (function) or the input (custom).
    pub arguments: String,
    /// Which kind.
    pub kind: CallKind,
}

/// The call an output item holds, if it is a function or custom tool call.
pub fn call_item(item: &Value) -> Option<CallItem> {
    let (kind, field) = match item.get("type").and_then(Value::as_str)? {
        "function_call" => (CallKind::Function, "arguments"),
        "custom_tool_call" => (CallKind::Custom, "input"),
        _ => return None,
    };
    Some(CallItem {
        call_id: item.get("call_id").and_then(Value::as_str)?.to_owned(),
        item_id: item.get("id").and_then(Value::as_str).map(str::to_owned),
        name: item
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        arguments: item
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        kind,
    })
}

/// Whether an item type is a call tollgate decides.
pub fn is_call_type(kind: &str) -> bool {
    matches!(kind, "function_call" | "custom_tool_call")
}

/// The output items of a response.
pub fn output(response: &Value) -> &[Value] {
    response
        .get("output")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The calls among a response's output items, in order.
pub fn calls(response: &Value) -> Vec<CallItem> {
    output(response).iter().filter_map(call_item).collect()
}

/// The items of a response the client may see: all but the hidden calls.
pub fn shown_items<'a>(
    response: &'a Value,
    hidden: &'a [String],
) -> impl Iterator<Item = &'a Value> + 'a {
    output(response)
        .iter()
        .filter(|item| call_item(item).is_none_or(|c| !hidden.contains(&c.call_id)))
}

/// The input item answering a call with `output`.
pub fn output_item(call: &CallItem, output: &str) -> Value {
    let kind = match call.kind {
        CallKind::Function => "function_call_output",
        CallKind::Custom => "custom_tool_call_output",
    };
    json!({"type": kind, "call_id": call.call_id, "output": output})
}

/// The call id an input item answers, if it is a call output.
pub fn answered_call(item: &Value) -> Option<&str> {
    match item.get("type").and_then(Value::as_str)? {
        "function_call_output" | "custom_tool_call_output" => {
            item.get("call_id").and_then(Value::as_str)
        }
        _ => None,
    }
}

/// The key an input item is found by in a remembered turn: a call's `call_id`,
/// otherwise the item's `id` (an `item_reference` included); call outputs have
/// none.
pub fn item_key(item: &Value) -> Option<&str> {
    let kind = item.get("type").and_then(Value::as_str).unwrap_or_default();
    if is_call_type(kind) {
        return item.get("call_id").and_then(Value::as_str);
    }
    if answered_call(item).is_some() {
        return None;
    }
    item.get("id").and_then(Value::as_str)
}

/// A request's `input` as a list of items: a string becomes one user message,
/// a missing input an empty list.
pub fn input_items(request: &mut Value) -> Result<&mut Vec<Value>, AdapterError> {
    let object = request.as_object_mut().ok_or(AdapterError::NotAnObject)?;
    let input = object.entry("input").or_insert(Value::Null);
    match input {
        Value::Null => *input = Value::Array(Vec::new()),
        Value::String(text) => {
            let text = std::mem::take(text);
            *input = json!([{"type": "message", "role": "user", "content": text}]);
        }
        _ => {}
    }
    input.as_array_mut().ok_or_else(|| AdapterError::Malformed {
        field: "input",
        message: "neither a string nor a list of items".into(),
    })
}

/// Continues a conversation after a round whose calls were all answered here:
/// with a `conversation`, the conversation holds the round and only the outputs
/// go; with `store` (the default), the request continues from the round's
/// response id; without it (`store: false`), the round's items are replayed
/// before the outputs.
pub fn continue_request(
    request: &mut Value,
    response: &Value,
    outputs: Vec<Value>,
) -> Result<(), AdapterError> {
    relax_tool_choice(request);
    let has_conversation = request.get("conversation").is_some_and(|c| !c.is_null());
    let stored = request.get("store").and_then(Value::as_bool) != Some(false);
    let response_id = response.get("id").and_then(Value::as_str);
    if has_conversation {
        request["input"] = Value::Array(outputs);
    } else if let (true, Some(id)) = (stored, response_id) {
        request["previous_response_id"] = Value::String(id.to_owned());
        request["input"] = Value::Array(outputs);
    } else {
        let items = input_items(request)?;
        items.extend(output(response).iter().cloned());
        items.extend(outputs);
    }
    Ok(())
}

/// After a round whose calls tollgate answered, a choice that forces a call
/// (`"required"`, a named function or custom tool, `allowed_tools` in `required`
/// mode) would force another and loop until `max_rounds`: the next round lets the
/// model choose.
pub fn relax_tool_choice(request: &mut Value) {
    let Some(choice) = request.get_mut("tool_choice") else {
        return;
    };
    let kind = choice.get("type").and_then(Value::as_str);
    if *choice == "required" || matches!(kind, Some("function" | "custom")) {
        *choice = json!("auto");
    } else if kind == Some("allowed_tools")
        && choice.get("mode").and_then(Value::as_str) == Some("required")
    {
        choice["mode"] = json!("auto");
    }
}

/// The one response a client receives for several rounds: the last round's
/// response with the first round's `id`, `created_at` and
/// `previous_response_id`, the output items the client may see, and the usage
/// of every round.
pub fn merge_response(
    first: &Value,
    mut last: Value,
    output: Vec<Value>,
    usage: Option<Value>,
) -> Value {
    if let Some(object) = last.as_object_mut() {
        for key in ["id", "created_at", "previous_response_id"] {
            if let Some(value) = first.get(key) {
                object.insert(key.into(), value.clone());
            }
        }
        object.insert("output".into(), Value::Array(output));
        if let Some(usage) = usage {
            object.insert("usage".into(), usage);
        }
    }
    last
}

/// What the client sent that tollgate changed and a response object echoes: a
/// `previous_response_id` that named a response tollgate had changed (upstream,
/// the request continued from another id), and the governed tools added to
/// `tools`. [`Echo::apply`] puts the client's view back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Echo {
    /// The client's `previous_response_id`, when tollgate sent another.
    pub previous_response_id: Option<Value>,
    /// The names of the governed tools tollgate added.
    pub injected: Vec<String>,
}

impl Echo {
    /// Whether there is nothing to put back.
    pub fn is_empty(&self) -> bool {
        self.previous_response_id.is_none() && self.injected.is_empty()
    }

    /// Puts the client's `previous_response_id` and `tools` back into a response
    /// object; returns whether anything changed.
    pub fn apply(&self, response: &mut Value) -> bool {
        let Some(object) = response.as_object_mut() else {
            return false;
        };
        let mut changed = false;
        if let Some(previous) = &self.previous_response_id
            && object.get("previous_response_id") != Some(previous)
        {
            object.insert("previous_response_id".into(), previous.clone());
            changed = true;
        }
        if !self.injected.is_empty()
            && let Some(tools) = object.get_mut("tools").and_then(Value::as_array_mut)
        {
            let before = tools.len();
            tools.retain(|t| {
                t.get("type").and_then(Value::as_str) != Some("function")
                    || !t
                        .get("name")
                        .and_then(Value::as_str)
                        .is_some_and(|n| self.injected.iter().any(|i| i == n))
            });
            changed |= tools.len() != before;
        }
        changed
    }
}

/// The assistant message item tollgate adds when it ends a response itself.
pub fn message_item(id: &str, text: &str) -> Value {
    json!({"id": id, "type": "message", "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}]})
}

/// Adds a round's usage to a running total.
pub fn sum_usage(total: &mut Option<Value>, response: &Value) {
    if let Some(u) = response.get("usage").filter(|u| u.is_object()) {
        match total {
            Some(t) => add_usage(t, u),
            None => *total = Some(u.clone()),
        }
    }
}

/// One event of a client stream, as the wire carries it.
pub fn event_bytes(data: &Value) -> Bytes {
    let kind = data
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

/// How an upstream round's stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TerminalKind {
    /// `response.completed`.
    Completed,
    /// `response.incomplete`.
    Incomplete,
    /// `response.failed`.
    Failed,
    /// `error`.
    Error,
}

impl TerminalKind {
    fn of(kind: &str) -> Option<Self> {
        Some(match kind {
            "response.completed" => Self::Completed,
            "response.incomplete" => Self::Incomplete,
            "response.failed" => Self::Failed,
            "error" => Self::Error,
            _ => return None,
        })
    }
}

/// A round's terminal event.
#[derive(Debug, Clone)]
pub struct Terminal {
    /// Which one.
    pub kind: TerminalKind,
    /// Its data, built whole only when asked for.
    pub event: EventData,
    /// Its bytes as received.
    pub raw: Bytes,
}

impl Terminal {
    /// Its data (`null` in the one case it could be read for its shape but not
    /// built, which valid JSON never is).
    pub fn data(&self) -> &Value {
        self.event.whole().unwrap_or(&Value::Null)
    }

    /// The response it carries (`Value::Null` for an `error` event).
    pub fn response(&self) -> &Value {
        self.data().get("response").unwrap_or(&Value::Null)
    }
}

/// What the rewriter asks of its driver.
#[derive(Debug)]
pub enum StreamOutput {
    /// Send these bytes to the client.
    Emit(Bytes),
    /// This call is complete: decide it, then call [`StreamRewriter::decided`].
    Decide(CallItem),
    /// The round ended with this event; nothing of it was sent.
    End(Box<Terminal>),
}

#[derive(Debug, Clone, PartialEq)]
enum Slot {
    /// A call whose events are held until it is decided.
    Held(Value),
    /// Shown to the client at this output index.
    Shown(u64),
    /// Not shown yet; it gets the next index with its first event.
    Waiting,
    /// Never shown.
    Hidden,
}

#[derive(Debug)]
struct Queued {
    raw: Bytes,
    data: EventData,
    index: Option<u64>,
}

/// One upstream event's `data`: read as far as the fields the rewriter needs of
/// every event (its type, numbers, item id, and its item's type and id), with its
/// text kept; built whole only when something asks for it ([`EventData::whole`]),
/// which for most events nothing does. Text that is JSON but not of the expected
/// form is built at once, and its fields are read from the tree.
#[derive(Debug, Clone)]
pub struct EventData {
    text: String,
    shape: Shape,
    whole: OnceLock<Option<Value>>,
}

/// The fields of an event every event is read for.
#[derive(Debug, Clone, Default)]
struct Shape {
    kind: String,
    sequence_number: Option<u64>,
    /// Present (even as `null`) or not.
    output_index: Option<Value>,
    item_id: Option<String>,
    has_response: bool,
    /// The `item` of an output item's event, when there is one.
    item: Option<ItemShape>,
}

/// What every event's `item` is read for.
#[derive(Debug, Clone, Default)]
struct ItemShape {
    kind: Option<String>,
    id: Option<String>,
}

#[derive(serde::Deserialize)]
struct PeekEvent<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    sequence_number: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    output_index: Option<Value>,
    #[serde(default, borrow)]
    item_id: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "present")]
    item: Option<Object<PeekItem<'a>>>,
    #[serde(default, deserialize_with = "present")]
    response: Option<serde::de::IgnoredAny>,
}

#[derive(serde::Deserialize)]
struct PeekItem<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
}

/// A struct read from a JSON object only: serde's derived structs take an array
/// too, field by field, which no event of this API is.
struct Object<T>(T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Fields<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(Fields(std::marker::PhantomData))
            .map(Object)
    }
}

/// A field that is there, `null` included (serde reads `null` as absent).
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

impl Shape {
    fn of(data: &Value) -> Self {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
        Self {
            kind: text(data.get("type")).unwrap_or_default(),
            sequence_number: data.get("sequence_number").and_then(Value::as_u64),
            output_index: data.get("output_index").cloned(),
            item_id: text(data.get("item_id")),
            has_response: data.get("response").is_some(),
            item: data.get("item").map(|item| ItemShape {
                kind: text(item.get("type")),
                id: text(item.get("id")),
            }),
        }
    }
}

impl EventData {
    /// Reads one event's `data` text for its shape, or builds it whole when it is
    /// JSON of another form (an `item` that is not an object, a
    /// `sequence_number` that is not a number, not an object at all). `None`
    /// when it is not JSON.
    pub fn read(text: String) -> Option<Self> {
        let whole = OnceLock::new();
        let shape = match serde_json::from_str::<Object<PeekEvent<'_>>>(&text) {
            Ok(Object(peek)) => Shape {
                kind: peek.kind.map(Cow::into_owned).unwrap_or_default(),
                sequence_number: peek.sequence_number,
                output_index: peek.output_index,
                item_id: peek.item_id.map(Cow::into_owned),
                has_response: peek.response.is_some(),
                item: peek.item.map(|Object(item)| ItemShape {
                    kind: item.kind.map(Cow::into_owned),
                    id: item.id.map(Cow::into_owned),
                }),
            },
            Err(_) => {
                let data = serde_json::from_str::<Value>(&text).ok()?;
                let shape = Shape::of(&data);
                let _ = whole.set(Some(data));
                shape
            }
        };
        Some(Self { text, shape, whole })
    }

    fn kind(&self) -> &str {
        &self.shape.kind
    }

    fn sequence_number(&self) -> Option<u64> {
        self.shape.sequence_number
    }

    fn output_index(&self) -> Option<&Value> {
        self.shape.output_index.as_ref()
    }

    fn item_id(&self) -> Option<&str> {
        self.shape.item_id.as_deref()
    }

    fn has_response(&self) -> bool {
        self.shape.has_response
    }

    /// The event built whole, once; `None` only if its text, which was read
    /// once already, is not JSON after all.
    pub fn whole(&self) -> Option<&Value> {
        self.whole
            .get_or_init(|| serde_json::from_str(&self.text).ok())
            .as_ref()
    }

    /// Whether it was built whole (for tests of what is built when).
    #[cfg(test)]
    fn built(&self) -> bool {
        self.whole.get().is_some()
    }

    /// The event built whole, as [`EventData::whole`], taken.
    fn into_value(self) -> Option<Value> {
        self.whole();
        self.whole.into_inner().flatten()
    }

    /// The `item` of an output item's event, built.
    fn item(&self) -> Option<&Value> {
        self.whole().and_then(|d| d.get("item"))
    }
}

/// Rewrites the rounds of one governed Responses stream into one client stream.
#[derive(Debug, Default)]
pub struct StreamRewriter {
    /// The next client `sequence_number`.
    seq: u64,
    /// The next client `output_index`.
    next_index: u64,
    /// Rounds ended so far.
    round: u32,
    /// This round's items, by upstream output index.
    slots: HashMap<u64, Slot>,
    /// This round's upstream output index of each item id.
    by_item: HashMap<String, u64>,
    /// Events not sent yet, in arrival order.
    queue: VecDeque<Queued>,
    /// Bytes of the events in `queue`, as received.
    queued_bytes: usize,
    /// This round's hidden call ids.
    hidden: Vec<String>,
    /// The first round's `response.created`, whose response is the envelope of
    /// the client's (built only if a response object has to be made).
    envelope: Option<EventData>,
    /// The output items the client was shown in ended rounds.
    shown: Vec<Value>,
    /// Usage of ended rounds.
    usage: Option<Value>,
    /// Whether any call was hidden in any round.
    changed: bool,
    /// What response objects must echo of the client's request.
    echo: Echo,
}

impl StreamRewriter {
    /// A rewriter for a new client stream whose response objects get `echo`
    /// applied.
    pub fn new(echo: Echo) -> Self {
        Self {
            echo,
            ..Self::default()
        }
    }

    /// Takes one upstream event (its bytes and its data, see [`EventData::read`]).
    pub fn push(&mut self, raw: Bytes, data: EventData) -> Vec<StreamOutput> {
        let kind = data.kind();
        let index = data
            .output_index()
            .and_then(Value::as_u64)
            .or_else(|| data.item_id().and_then(|id| self.by_item.get(id).copied()));
        let mut decide = None;
        if let (Some(i), Some(item)) = (index, data.shape.item.as_ref()) {
            if kind == "response.output_item.added" {
                if let Some(id) = &item.id {
                    self.by_item.insert(id.clone(), i);
                }
                let call = item.kind.as_deref().is_some_and(is_call_type);
                self.slots.insert(
                    i,
                    if call {
                        Slot::Held(data.item().cloned().unwrap_or_default())
                    } else {
                        Slot::Waiting
                    },
                );
            } else if kind == "response.output_item.done"
                && let Some(Slot::Held(added)) = self.slots.get(&i)
            {
                decide = data.item().and_then(|done| complete_call(added, done));
            }
        }
        self.queued_bytes += raw.len();
        self.queue.push_back(Queued { raw, data, index });
        let mut out = self.drain();
        if let Some(call) = decide {
            out.push(StreamOutput::Decide(call));
        }
        out
    }

    /// Records the decision on the call at the front of the stream: relayed
    /// (its held events go to the client) or handled (they never do).
    pub fn decided(&mut self, call: &CallItem, relayed: bool) -> Vec<StreamOutput> {
        let index = self.slots.iter().find_map(|(i, slot)| match slot {
            Slot::Held(item)
                if item.get("call_id").and_then(Value::as_str) == Some(&call.call_id) =>
            {
                Some(*i)
            }
            _ => None,
        });
        if let Some(i) = index {
            if relayed {
                self.slots.insert(i, Slot::Waiting);
            } else {
                self.slots.insert(i, Slot::Hidden);
                self.hidden.push(call.call_id.clone());
                self.changed = true;
            }
        }
        self.drain()
    }

    /// Whether a call's events are held, undecided (the stream must not end so).
    pub fn call_open(&self) -> bool {
        self.slots.values().any(|s| matches!(s, Slot::Held(_)))
    }

    /// Bytes of the events held back, as received: those queued behind a call
    /// that is not decided yet. Charged against the stream's share of the memory
    /// budget as it grows.
    pub fn held_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Whether the client's stream differs from the upstream's so far.
    pub fn changed(&self) -> bool {
        self.changed || self.round > 0
    }

    fn drain(&mut self) -> Vec<StreamOutput> {
        let mut out = Vec::new();
        while let Some(front) = self.queue.front() {
            let slot = front.index.and_then(|i| self.slots.get(&i));
            match slot {
                Some(Slot::Held(_)) => break,
                Some(Slot::Hidden) => {
                    if let Some(dropped) = self.queue.pop_front() {
                        self.queued_bytes -= dropped.raw.len();
                    }
                    continue;
                }
                _ => {}
            }
            let Some(event) = self.queue.pop_front() else {
                break;
            };
            self.queued_bytes -= event.raw.len();
            let kind = event.data.kind();
            if let Some(terminal) = TerminalKind::of(kind) {
                out.push(StreamOutput::End(Box::new(Terminal {
                    kind: terminal,
                    event: event.data,
                    raw: event.raw,
                })));
                self.queue.clear();
                self.queued_bytes = 0;
                break;
            }
            match kind {
                "response.created" | "response.in_progress" | "response.queued" => {
                    if self.round > 0 {
                        continue;
                    }
                    if kind == "response.created"
                        && self.envelope.is_none()
                        && event.data.has_response()
                    {
                        if !self.echo.is_empty() {
                            // Rebuilt for the echo below: built once, for both.
                            event.data.whole();
                        }
                        self.envelope = Some(event.data.clone());
                    }
                    out.push(StreamOutput::Emit(
                        self.renumber(event.raw, event.data, None),
                    ));
                }
                _ => {
                    let client_index = event.index.map(|i| match self.slots.get(&i) {
                        Some(Slot::Shown(n)) => *n,
                        _ => {
                            let n = self.next_index;
                            self.next_index += 1;
                            self.slots.insert(i, Slot::Shown(n));
                            n
                        }
                    });
                    out.push(StreamOutput::Emit(self.renumber(
                        event.raw,
                        event.data,
                        client_index,
                    )));
                }
            }
        }
        out
    }

    /// The event with the client's numbers: its own bytes when they already
    /// carry them (and then it is never built whole).
    fn renumber(&mut self, raw: Bytes, data: EventData, index: Option<u64>) -> Bytes {
        let seq = self.seq;
        self.seq += 1;
        let same_seq = data.sequence_number() == Some(seq);
        let has_index = data.output_index().is_some();
        let same_index =
            !has_index || index.is_none() || data.output_index().and_then(Value::as_u64) == index;
        let echo = !self.echo.is_empty() && data.has_response();
        if same_seq && same_index && !echo {
            return raw;
        }
        // Read once already as JSON, so this cannot fail; if it did, the bytes as
        // they came are all there is to send.
        let Some(mut data) = data.into_value() else {
            return raw;
        };
        let echoed = echo && data.get_mut("response").is_some_and(|r| self.echo.apply(r));
        if same_seq && same_index && !echoed {
            return raw;
        }
        if let Some(object) = data.as_object_mut() {
            object.insert("sequence_number".into(), Value::from(seq));
            if let (true, Some(n)) = (has_index, index) {
                object.insert("output_index".into(), Value::from(n));
            }
        }
        event_bytes(&data)
    }

    /// An event of tollgate's own, numbered next.
    fn own_event(&mut self, mut data: Value) -> Bytes {
        if let Some(response) = data.get_mut("response") {
            self.echo.apply(response);
        }
        if let Some(object) = data.as_object_mut() {
            object.insert("sequence_number".into(), Value::from(self.seq));
        }
        self.seq += 1;
        event_bytes(&data)
    }

    /// Ends a round that completed: its shown items and usage are kept for the
    /// final response, and the next round's events start afresh.
    pub fn end_round(&mut self, response: &Value) {
        let hidden = std::mem::take(&mut self.hidden);
        self.shown.extend(shown_items(response, &hidden).cloned());
        sum_usage(&mut self.usage, response);
        self.slots.clear();
        self.by_item.clear();
        self.queue.clear();
        self.queued_bytes = 0;
        self.round += 1;
    }

    /// The terminal event as the upstream sent it, renumbered if need be (a
    /// stream nothing was changed in).
    pub fn pass_terminal(&mut self, terminal: Terminal) -> Bytes {
        self.renumber(terminal.raw, terminal.event, None)
    }

    /// The first round's response, from its `response.created`.
    fn envelope(&self) -> Option<&Value> {
        self.envelope
            .as_ref()
            .and_then(EventData::whole)
            .and_then(|d| d.get("response"))
    }

    /// The id the client knows this response by.
    pub fn response_id(&self) -> Option<&str> {
        self.envelope()
            .and_then(|r| r.get("id"))
            .and_then(Value::as_str)
    }

    /// The final terminal event (`kind` `response.completed` or
    /// `response.incomplete`) carrying `response`, the object
    /// [`Self::final_response`] made.
    pub fn final_event(&mut self, kind: &str, response: Value) -> Bytes {
        self.own_event(json!({"type": kind, "sequence_number": 0, "response": response}))
    }

    /// The response object the stream ends with, as the client sees it: the
    /// first round's envelope, `last`'s state, every item shown, usage summed.
    pub fn final_response(&self, last: &Value) -> Value {
        let envelope = self.envelope().unwrap_or(last);
        let mut response = merge_response(
            envelope,
            last.clone(),
            self.shown.clone(),
            self.usage.clone(),
        );
        self.echo.apply(&mut response);
        response
    }

    /// An upstream `error` event with the client's numbers, or an upstream
    /// `response.failed` made the client's: the failing round's status and
    /// error on the client's response (its id, creation time, echo), with the
    /// items the client was shown in every round, this one's included (never a
    /// call it was not given), and the usage of every round.
    pub fn pass_failure(&mut self, terminal: Terminal) -> Bytes {
        if !terminal.response().is_object() {
            return self.renumber(terminal.raw, terminal.event, None);
        }
        let response = terminal.response();
        let shown_now: Vec<Value> = (0u64..)
            .zip(output(response))
            .filter(|(i, _)| matches!(self.slots.get(i), Some(Slot::Shown(_))))
            .map(|(_, item)| item.clone())
            .collect();
        self.shown.extend(shown_now);
        sum_usage(&mut self.usage, response);
        let view = self.final_response(response);
        let kind = terminal
            .data()
            .get("type")
            .cloned()
            .unwrap_or_else(|| json!("response.failed"));
        self.own_event(json!({"type": kind, "sequence_number": 0, "response": view}))
    }

    /// The `response.failed` event that ends a stream tollgate cannot finish:
    /// the items shown so far, the usage so far, and why.
    pub fn failed(&mut self, code: &str, message: &str) -> Bytes {
        let mut response = self.envelope().cloned().unwrap_or_else(
            || json!({"id": null, "object": "response", "created_at": null, "model": null}),
        );
        if let Some(object) = response.as_object_mut() {
            object.insert("status".into(), json!("failed"));
            object.insert("error".into(), json!({"code": code, "message": message}));
            object.insert("output".into(), Value::Array(self.shown.clone()));
            object.insert("usage".into(), self.usage.clone().unwrap_or(Value::Null));
        }
        self.own_event(
            json!({"type": "response.failed", "sequence_number": 0, "response": response}),
        )
    }

    /// The events of an assistant message tollgate adds at the end (its whole
    /// text at once); the item joins the shown items.
    pub fn message(&mut self, id: &str, text: &str) -> Vec<Bytes> {
        let index = self.next_index;
        self.next_index += 1;
        let item = message_item(id, text);
        let part = json!({"type": "output_text", "text": text, "annotations": []});
        let empty_part = json!({"type": "output_text", "text": "", "annotations": []});
        let events = vec![
            json!({"type": "response.output_item.added", "output_index": index,
                "item": {"id": id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}}),
            json!({"type": "response.content_part.added", "item_id": id, "output_index": index,
                "content_index": 0, "part": empty_part}),
            json!({"type": "response.output_text.delta", "item_id": id, "output_index": index,
                "content_index": 0, "delta": text, "logprobs": []}),
            json!({"type": "response.output_text.done", "item_id": id, "output_index": index,
                "content_index": 0, "text": text, "logprobs": []}),
            json!({"type": "response.content_part.done", "item_id": id, "output_index": index,
                "content_index": 0, "part": part}),
            json!({"type": "response.output_item.done", "output_index": index, "item": item.clone()}),
        ];
        self.shown.push(item);
        events.into_iter().map(|e| self.own_event(e)).collect()
    }
}

/// The complete call from its `output_item.done` item, with what the
/// `output_item.added` item said where the later one is silent.
fn complete_call(added: &Value, done: &Value) -> Option<CallItem> {
    let mut merged = added.clone();
    if let (Some(m), Some(d)) = (merged.as_object_mut(), done.as_object()) {
        for (k, v) in d {
            if !v.is_null() {
                m.insert(k.clone(), v.clone());
            }
        }
    }
    call_item(&merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn governed(name: &str, parameters: Value) -> GovernedTool {
        GovernedTool {
            name: name.into(),
            description: "d".into(),
            parameters,
        }
    }

    #[test]
    fn governed_tools_are_injected_flat_with_an_explicit_strict() {
        let closed = json!({"type": "object", "properties": {"city": {"type": "string"}},
            "required": ["city"], "additionalProperties": false});
        let open = json!({"type": "object", "properties": {"city": {"type": "string"},
            "units": {"type": "string"}}, "required": ["city"]});
        let mut request = json!({"model": "m", "input": "hi"});
        inject_tools(
            &mut request,
            &[
                governed("a__closed", closed.clone()),
                governed("a__open", open),
            ],
        )
        .unwrap();
        let tools = request["tools"].as_array().unwrap();
        assert_eq!(tools[0]["type"], "function");
        assert_eq!(tools[0]["name"], "a__closed");
        assert_eq!(tools[0]["parameters"], closed);
        assert_eq!(tools[0]["strict"], true);
        assert_eq!(
            tools[1]["strict"], false,
            "an open schema must not be strict"
        );
    }

    #[test]
    fn a_client_tool_with_a_governed_name_is_refused() {
        let mut request =
            json!({"tools": [{"type": "function", "name": "a__x", "parameters": {}}]});
        assert_eq!(
            inject_tools(&mut request, &[governed("a__x", json!({"type": "object"}))]),
            Err(AdapterError::NameClash("a__x".into()))
        );
    }

    #[test]
    fn strict_compatibility_follows_the_subset() {
        assert!(!strict_compatible(&json!({"type": "object"})));
        assert!(strict_compatible(
            &json!({"type": "object", "properties": {}, "additionalProperties": false})
        ));
        let nested_open = json!({"type": "object", "additionalProperties": false,
            "required": ["a"], "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}}}}});
        assert!(!strict_compatible(&nested_open));
        let with_all_of = json!({"type": "object", "additionalProperties": false,
            "required": ["a"], "properties": {"a": {"allOf": [{"type": "string"}]}}});
        assert!(!strict_compatible(&with_all_of));
        let array = json!({"type": "object", "additionalProperties": false, "required": ["a"],
            "properties": {"a": {"type": "array", "items": {"type": "object", "properties": {"x": {"type": ["string", "null"]}},
            "required": ["x"], "additionalProperties": false}}}});
        assert!(strict_compatible(&array));
    }

    #[test]
    fn calls_are_found_by_call_id_and_other_items_ignored() {
        let response = json!({"output": [
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "xyz"},
            {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f", "arguments": "{\"a\":1}"},
            {"type": "web_search_call", "id": "ws_1", "status": "completed"},
            {"type": "custom_tool_call", "id": "ctc_1", "call_id": "call_2", "name": "g", "input": "raw text"},
            {"type": "something_new", "id": "x_1"}]});
        let found = calls(&response);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].call_id, "call_1");
        assert_eq!(found[0].item_id.as_deref(), Some("fc_1"));
        assert_eq!(found[0].kind, CallKind::Function);
        assert_eq!(found[1].arguments, "raw text");
        assert_eq!(
            output_item(&found[1], "out")["type"],
            "custom_tool_call_output"
        );
    }

    #[test]
    fn a_string_input_becomes_one_user_message() {
        let mut request = json!({"input": "hello"});
        let items = input_items(&mut request).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["role"], "user");
        assert_eq!(items[0]["content"], "hello");
    }

    #[test]
    fn a_round_continues_from_its_response_unless_nothing_is_stored() {
        let response =
            json!({"id": "resp_1", "output": [{"type": "function_call", "call_id": "c"}]});
        let outputs = vec![json!({"type": "function_call_output", "call_id": "c", "output": "x"})];
        let mut stored = json!({"input": [{"role": "user", "content": "q"}]});
        continue_request(&mut stored, &response, outputs.clone()).unwrap();
        assert_eq!(stored["previous_response_id"], "resp_1");
        assert_eq!(stored["input"], json!(outputs));

        let mut stateless = json!({"store": false, "input": "q"});
        continue_request(&mut stateless, &response, outputs.clone()).unwrap();
        assert!(stateless.get("previous_response_id").is_none());
        let input = stateless["input"].as_array().unwrap();
        assert_eq!(input.len(), 3);
        assert_eq!(input[1]["type"], "function_call");
        assert_eq!(input[2], outputs[0]);

        let mut conversation = json!({"conversation": "conv_1", "input": "q"});
        continue_request(&mut conversation, &response, outputs.clone()).unwrap();
        assert!(conversation.get("previous_response_id").is_none());
        assert_eq!(conversation["input"], json!(outputs));
    }

    #[test]
    fn a_forced_choice_is_relaxed_in_the_next_round() {
        let response = json!({"id": "resp_1", "output": []});
        for (forced, relaxed) in [
            (json!("required"), json!("auto")),
            (json!({"type": "function", "name": "gov__x"}), json!("auto")),
            (
                json!({"type": "allowed_tools", "mode": "required", "tools": []}),
                json!({"type": "allowed_tools", "mode": "auto", "tools": []}),
            ),
            (json!("none"), json!("none")),
            (
                json!({"type": "file_search"}),
                json!({"type": "file_search"}),
            ),
        ] {
            let mut request = json!({"tool_choice": forced});
            continue_request(&mut request, &response, vec![]).unwrap();
            assert_eq!(request["tool_choice"], relaxed);
        }
    }

    fn event(data: Value) -> (Bytes, EventData) {
        let read = EventData::read(data.to_string()).unwrap();
        (event_bytes(&data), read)
    }

    fn emitted(out: &[StreamOutput]) -> Vec<Value> {
        out.iter()
            .filter_map(|o| match o {
                StreamOutput::Emit(b) => {
                    let text = std::str::from_utf8(b).unwrap();
                    let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
                    Some(serde_json::from_str(data).unwrap())
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_untouched_event_keeps_its_bytes_and_a_hidden_call_renumbers_the_rest() {
        let mut rw = StreamRewriter::new(Echo::default());
        let raw = Bytes::from_static(b"event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_a\"}}\n\n");
        let data = EventData::read(
            "{\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_a\"}}"
                .to_owned(),
        )
        .unwrap();
        let out = rw.push(raw.clone(), data);
        assert!(matches!(&out[..], [StreamOutput::Emit(b)] if *b == raw));

        let call = json!({"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "gov", "arguments": ""});
        let (r, d) = event(
            json!({"type": "response.output_item.added", "sequence_number": 1, "output_index": 0, "item": call}),
        );
        assert!(rw.push(r, d).is_empty(), "a call's events are held");
        let (r, d) = event(
            json!({"type": "response.function_call_arguments.delta", "sequence_number": 2, "item_id": "fc_1", "output_index": 0, "delta": "{}"}),
        );
        assert!(rw.push(r, d).is_empty());
        let mut done = call.clone();
        done["arguments"] = json!("{}");
        let (r, d) = event(
            json!({"type": "response.output_item.done", "sequence_number": 3, "output_index": 0, "item": done}),
        );
        let out = rw.push(r, d);
        let StreamOutput::Decide(decided) = &out[0] else {
            panic!("expected a decision")
        };
        assert_eq!(decided.arguments, "{}");
        assert!(
            rw.decided(decided, false).is_empty(),
            "a hidden call never shows"
        );
        let message = json!({"id": "msg_1", "type": "message", "role": "assistant", "content": []});
        let (r, d) = event(
            json!({"type": "response.output_item.added", "sequence_number": 4, "output_index": 1, "item": message}),
        );
        let got = emitted(&rw.push(r, d));
        assert_eq!(got[0]["sequence_number"], 1);
        assert_eq!(got[0]["output_index"], 0);
        let (r, d) = event(
            json!({"type": "response.output_text.delta", "sequence_number": 5, "item_id": "msg_1", "output_index": 1, "delta": "hi"}),
        );
        let got = emitted(&rw.push(r, d));
        assert_eq!(
            (
                got[0]["sequence_number"].as_u64(),
                got[0]["output_index"].as_u64()
            ),
            (Some(2), Some(0))
        );
        let (r, d) = event(
            json!({"type": "response.completed", "sequence_number": 6, "response": {"id": "resp_a",
            "output": [done, message], "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}}}),
        );
        let out = rw.push(r, d);
        let StreamOutput::End(terminal) = &out[0] else {
            panic!("expected the round's end")
        };
        rw.end_round(terminal.response());
        let last = terminal.response().clone();
        let final_event = rw.final_event("response.completed", rw.final_response(&last));
        let text = std::str::from_utf8(&final_event).unwrap();
        let data: Value =
            serde_json::from_str(text.lines().nth(1).unwrap().strip_prefix("data: ").unwrap())
                .unwrap();
        assert_eq!(data["sequence_number"], 3);
        assert_eq!(data["response"]["output"].as_array().unwrap().len(), 1);
        assert_eq!(data["response"]["output"][0]["id"], "msg_1");
    }

    #[test]
    fn an_echo_puts_back_the_clients_previous_response_id_and_tools() {
        let echo = Echo {
            previous_response_id: Some(json!("resp_client")),
            injected: vec!["gov__tool".into()],
        };
        let mut response = json!({"id": "resp_9", "previous_response_id": "resp_upstream",
            "tools": [{"type": "function", "name": "mine"}, {"type": "function", "name": "gov__tool"},
                {"type": "web_search"}]});
        assert!(echo.apply(&mut response));
        assert_eq!(response["previous_response_id"], "resp_client");
        assert_eq!(
            response["tools"],
            json!([{"type": "function", "name": "mine"}, {"type": "web_search"}])
        );
        assert!(!echo.apply(&mut response), "applying twice changes nothing");

        // In a stream, the events carrying the response object are rewritten.
        let mut rw = StreamRewriter::new(echo);
        let (r, d) = event(json!({"type": "response.created", "sequence_number": 0,
            "response": {"id": "resp_9", "previous_response_id": "resp_upstream", "tools": []}}));
        let got = emitted(&rw.push(r, d));
        assert_eq!(got[0]["response"]["previous_response_id"], "resp_client");
        // `response.in_progress` is read only by its shape, and rebuilt for the echo.
        let (r, d) = event(json!({"type": "response.in_progress", "sequence_number": 1,
            "response": {"id": "resp_9", "previous_response_id": "resp_upstream", "tools": []}}));
        assert!(!d.built());
        let got = emitted(&rw.push(r, d));
        assert_eq!(got[0]["response"]["previous_response_id"], "resp_client");
        assert_eq!(got[0]["sequence_number"], 1);
    }

    #[test]
    fn events_are_built_whole_only_where_the_rewriter_needs_them() {
        let read = |data: &str| EventData::read(data.to_owned()).unwrap();
        // Every event of the expected form is read for its shape alone.
        for data in [
            r#"{"type":"response.created","sequence_number":0,"response":{"id":"r"}}"#,
            r#"{"type":"response.output_item.added","output_index":0,"item":{"type":"message","id":"m"}}"#,
            r#"{"type":"response.completed","response":{"output":[]}}"#,
            r#"{"type":"error","message":"x"}"#,
        ] {
            assert!(!read(data).built(), "{data}");
        }
        // JSON of another form is built at once, and answers from its tree.
        for data in [
            r#"{"type":"response.output_item.done","sequence_number":4,"output_index":1,"item":null}"#,
            r#"{"type":"response.output_text.delta","sequence_number":"3"}"#,
            r#"{"type":"response.output_item.added","output_index":0,"item":["function_call"]}"#,
            r#"["response.completed"]"#,
            "[1,2]",
        ] {
            assert!(read(data).built(), "{data}");
        }
        // An array is no event of this API, whatever it holds.
        assert_eq!(read(r#"["response.completed"]"#).kind(), "");
        let listed = read(
            r#"{"type":"response.output_item.added","output_index":0,"item":["function_call"]}"#,
        );
        assert!(listed.shape.item.as_ref().is_some_and(|i| i.kind.is_none()));
        let odd = read(
            r#"{"type":"response.output_item.done","sequence_number":4,"output_index":1,"item":null}"#,
        );
        assert_eq!(odd.kind(), "response.output_item.done");
        assert_eq!(odd.sequence_number(), Some(4));
        assert!(odd.shape.item.is_some(), "a null item is still there");
        assert!(EventData::read("{not json".to_owned()).is_none());

        let shaped = read(
            r#"{"type":"response.output_text.delta","sequence_number":3,"output_index":null,"item_id":"msg_1","delta":"hi"}"#,
        );
        assert_eq!(shaped.kind(), "response.output_text.delta");
        assert_eq!(shaped.sequence_number(), Some(3));
        assert_eq!(
            shaped.output_index(),
            Some(&Value::Null),
            "present, as null"
        );
        assert_eq!(shaped.item_id(), Some("msg_1"));
        assert!(!shaped.has_response());
        assert_eq!(shaped.into_value().unwrap()["delta"], "hi");

        // In a stream nothing is changed in, only the call's items are built.
        let mut rw = StreamRewriter::new(Echo::default());
        let push = |rw: &mut StreamRewriter, data: Value| {
            let text = data.to_string();
            rw.push(event_bytes(&data), EventData::read(text).unwrap())
        };
        push(
            &mut rw,
            json!({"type": "response.created", "sequence_number": 0, "response": {"id": "resp_1"}}),
        );
        assert!(rw.envelope.as_ref().is_some_and(|e| !e.built()));
        let call = json!({"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "f", "arguments": ""});
        push(
            &mut rw,
            json!({"type": "response.output_item.added", "sequence_number": 1, "output_index": 0, "item": call}),
        );
        assert_eq!(
            rw.slots.get(&0),
            Some(&Slot::Held(call)),
            "a call's item is built"
        );
        // A message behind the held call waits in the queue, unbuilt.
        push(
            &mut rw,
            json!({"type": "response.output_item.added", "sequence_number": 2, "output_index": 1,
                "item": {"id": "msg_1", "type": "message", "content": []}}),
        );
        assert_eq!(rw.slots.get(&1), Some(&Slot::Waiting));
        assert!(rw.queue.back().is_some_and(|q| !q.data.built()));
        let out = push(
            &mut rw,
            json!({"type": "response.output_item.done", "sequence_number": 3, "output_index": 0,
                "item": {"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"}}),
        );
        let Some(StreamOutput::Decide(decided)) = out.last() else {
            panic!("the completed call is decided: {out:?}");
        };
        assert_eq!(decided.call_id, "call_1");
        rw.decided(decided, true);
        let out = push(
            &mut rw,
            json!({"type": "response.completed", "sequence_number": 4, "response": {"id": "resp_1", "output": []}}),
        );
        let Some(StreamOutput::End(terminal)) = out.last() else {
            panic!("the round ends: {out:?}");
        };
        assert!(!terminal.event.built(), "a terminal is built only if asked");
        assert_eq!(terminal.response()["id"], "resp_1");
        // The envelope is built when a response object is made.
        assert_eq!(rw.response_id(), Some("resp_1"));
    }
}
