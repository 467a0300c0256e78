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

/// Refuses a request that offers the model a tool of its own under a name
/// `is_governed` claims: a call by that name would be taken for the governed
/// tool. Every place a client names a tool is looked at, on both surfaces:
/// Chat's `tools[].function.name` and `tools[].custom.name`, the legacy
/// `functions[].name`, the Responses API's flat `tools[].name` of a function or
/// custom tool, and the tools inside a `namespace`.
pub fn refuse_name_clash(
    request: &Value,
    is_governed: impl Fn(&str) -> bool,
) -> Result<(), AdapterError> {
    fn names<'a>(tool: &'a Value, out: &mut Vec<&'a str>) {
        for pointer in ["/function/name", "/custom/name"] {
            if let Some(name) = tool.pointer(pointer).and_then(Value::as_str) {
                out.push(name);
            }
        }
        match tool.get("type").and_then(Value::as_str) {
            Some("function" | "custom") => {
                if let Some(name) = tool.get("name").and_then(Value::as_str) {
                    out.push(name);
                }
            }
            Some("namespace") => {
                for inner in tool
                    .get("tools")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    names(inner, out);
                }
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    for tool in request
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        names(tool, &mut found);
    }
    for function in request
        .get("functions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(name) = function.get("name").and_then(Value::as_str) {
            found.push(name);
        }
    }
    match found.into_iter().find(|name| is_governed(name)) {
        Some(name) => Err(AdapterError::NameClash(name.to_owned())),
        None => Ok(()),
    }
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_governed_name_is_found_wherever_a_client_names_a_tool() {
        let governed = |name: &str| name == "g__t";
        for request in [
            json!({"tools": [{"type": "function", "function": {"name": "g__t"}}]}),
            json!({"tools": [{"type": "custom", "custom": {"name": "g__t"}}]}),
            json!({"functions": [{"name": "g__t"}]}),
            json!({"tools": [{"type": "function", "name": "g__t"}]}),
            json!({"tools": [{"type": "custom", "name": "g__t"}]}),
            json!({"tools": [{"type": "namespace", "name": "n", "tools": [{"type": "function", "name": "g__t"}]}]}),
        ] {
            assert_eq!(
                refuse_name_clash(&request, governed),
                Err(AdapterError::NameClash("g__t".into())),
                "{request}"
            );
        }
        // Other names, tools without a name, and a namespace's own name pass.
        let fine = json!({
            "tools": [
                {"type": "function", "function": {"name": "mine"}},
                {"type": "web_search"},
                {"type": "namespace", "name": "g__t", "tools": [{"type": "function", "name": "other"}]},
                {"type": "mcp", "server_label": "g__t"}
            ],
            "functions": [{"name": "legacy"}]
        });
        assert_eq!(refuse_name_clash(&fine, governed), Ok(()));
        assert_eq!(refuse_name_clash(&json!({"tools": null}), governed), Ok(()));
    }
}
