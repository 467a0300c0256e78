//! Governed tools: tools tollgate hosts and runs itself when the model calls them
//! and the kernel allows it. Each is exposed as `server__tool` with a description
//! and a JSON Schema for its arguments, which are validated before it runs.
//!
//! - [`http`]: plain HTTP tools (POST the arguments, JSON or text back).

pub mod http;

/// What the model receives from a governed tool: its output, or an error it can
/// read. A tool that fails or times out never hangs the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolOutput {
    /// The tool's answer (JSON text or plain text).
    Output(String),
    /// Why there is no answer, as a JSON object for the model.
    Error(String),
}

impl ToolOutput {
    /// The text that goes into the conversation.
    pub fn text(&self) -> &str {
        match self {
            Self::Output(s) | Self::Error(s) => s,
        }
    }

    pub(crate) fn error(code: &str, message: &str) -> Self {
        Self::Error(
            serde_json::json!({"error": {"type": "tool_error", "code": code, "message": message}})
                .to_string(),
        )
    }
}

/// Whether a name can be shown to every model API: `^[a-zA-Z0-9_-]{1,64}$`.
pub fn valid_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
