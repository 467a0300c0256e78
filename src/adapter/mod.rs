//! One module per wire surface: what calls a request or response holds, how
//! governed tools are injected, how handled calls are removed and their results
//! spliced back. Adapters do no I/O.
//!
//! - [`chat`]: Chat Completions.
//! - [`responses`]: the Responses API.

use serde_json::Value;

/// A request's `tools` list, an empty one added when the request has none.
fn tools_list(request: &mut Value) -> Result<&mut Vec<Value>, AdapterError> {
    request
        .as_object_mut()
        .ok_or(AdapterError::NotAnObject)?
        .entry("tools")
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
        .ok_or_else(|| AdapterError::Malformed {
            field: "tools",
            message: "not a list".into(),
        })
}

pub mod chat;
pub mod responses;

/// A tool tollgate hosts, as the model sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct GovernedTool {
    /// `server__tool`.
    pub name: String,
    /// What it does.
    pub description: String,
    /// JSON Schema of its arguments.
    pub parameters: Value,
}

/// A request tollgate cannot govern as sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdapterError {
    /// The body is not a JSON object.
    #[error("the request body is not a JSON object")]
    NotAnObject,
    /// A field has the wrong shape.
    #[error("`{field}` is malformed: {message}")]
    Malformed {
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A client tool has a governed tool's name.
    #[error("the tool `{0}` is provided by the gateway; a client tool cannot have the same name")]
    NameClash(String),
}

/// Adds `add`'s usage to `total` (prompt, completion and total tokens, and the
/// numeric details), for a response made of several rounds.
pub fn add_usage(total: &mut Value, add: &Value) {
    match (total, add) {
        (Value::Object(t), Value::Object(a)) => {
            for (key, value) in a {
                match t.get_mut(key) {
                    Some(existing) => add_usage(existing, value),
                    None => {
                        t.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (t @ Value::Number(_), Value::Number(a)) => {
            if let (Some(x), Some(y)) = (t.as_u64(), a.as_u64()) {
                *t = Value::from(x + y);
            }
        }
        _ => {}
    }
}
