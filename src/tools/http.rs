//! Plain HTTP tools, declared in the configuration:
//!
//! ```toml
//! [[tools.http]]
//! name = "weather__current"
//! url = "http://127.0.0.1:9000/weather"
//! description = "Current weather for a city"
//! parameters = { type = "object", properties = { city = { type = "string" } }, required = ["city"] }
//! has_side_effects = false
//! timeout_ms = 5000
//! ```
//!
//! tollgate validates the arguments against `parameters`, POSTs them as JSON and
//! gives the model the JSON (or text) that comes back. Non-2xx answers, timeouts and
//! connection failures become error outputs the model can read.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::{ToolOutput, valid_tool_name};
use crate::adapter::chat::GovernedTool;

/// The largest tool answer passed to the model.
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;

/// One `[[tools.http]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpToolConfig {
    /// The name the model sees (`server__tool`).
    pub name: String,
    /// Where the arguments are POSTed.
    pub url: String,
    /// What the tool does, for the model.
    #[serde(default)]
    pub description: String,
    /// JSON Schema of the arguments.
    #[serde(default = "empty_object_schema")]
    pub parameters: Value,
    /// Whether the tool changes things.
    #[serde(default = "yes")]
    pub has_side_effects: bool,
    /// How long the tool may take.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn empty_object_schema() -> Value {
    serde_json::json!({"type": "object", "properties": {}})
}
fn yes() -> bool {
    true
}
fn default_timeout_ms() -> u64 {
    10_000
}

/// Why a tool's configuration is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ToolConfigError {
    /// The name is not `^[a-zA-Z0-9_-]{1,64}$`.
    #[error("tool name {0:?} must be 1 to 64 of a-z A-Z 0-9 _ -")]
    Name(String),
    /// The URL is not http or https.
    #[error("tool {name}: url {url:?} must be an http or https URL")]
    Url {
        /// The tool.
        name: String,
        /// The URL.
        url: String,
    },
    /// The parameters are not a usable JSON Schema of an object.
    #[error("tool {name}: parameters: {message}")]
    Schema {
        /// The tool.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A timeout of zero.
    #[error("tool {0}: timeout_ms must be at least 1")]
    Timeout(String),
}

/// A validated HTTP tool.
pub struct HttpTool {
    spec: GovernedTool,
    url: url::Url,
    validator: jsonschema::Validator,
    has_side_effects: bool,
    timeout: Duration,
}

impl std::fmt::Debug for HttpTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTool")
            .field("name", &self.spec.name)
            .field("url", &self.url.as_str())
            .finish()
    }
}

impl HttpTool {
    /// Checks a configuration entry.
    pub fn new(config: HttpToolConfig) -> Result<Self, ToolConfigError> {
        if !valid_tool_name(&config.name) {
            return Err(ToolConfigError::Name(config.name));
        }
        let url = url::Url::parse(&config.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| ToolConfigError::Url {
                name: config.name.clone(),
                url: config.url.clone(),
            })?;
        if config.parameters.get("type").and_then(Value::as_str) != Some("object") {
            return Err(ToolConfigError::Schema {
                name: config.name,
                message: "the root must be {\"type\": \"object\", ...}".into(),
            });
        }
        let validator =
            jsonschema::validator_for(&config.parameters).map_err(|e| ToolConfigError::Schema {
                name: config.name.clone(),
                message: e.to_string(),
            })?;
        if config.timeout_ms == 0 {
            return Err(ToolConfigError::Timeout(config.name));
        }
        Ok(Self {
            spec: GovernedTool {
                name: config.name,
                description: config.description,
                parameters: config.parameters,
            },
            url,
            validator,
            has_side_effects: config.has_side_effects,
            timeout: Duration::from_millis(config.timeout_ms),
        })
    }

    /// How the model sees the tool.
    pub fn spec(&self) -> &GovernedTool {
        &self.spec
    }

    /// Whether it changes things.
    pub fn has_side_effects(&self) -> bool {
        self.has_side_effects
    }

    /// Every way `arguments` break the schema, or `Ok`.
    pub fn validate(&self, arguments: &Value) -> Result<(), Vec<String>> {
        let problems: Vec<String> = self
            .validator
            .iter_errors(arguments)
            .map(|e| e.to_string())
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    fn timed_out(&self) -> ToolOutput {
        ToolOutput::error(
            "tool_timeout",
            &format!(
                "the tool did not answer within {} ms",
                self.timeout.as_millis()
            ),
        )
    }

    /// Validates and runs the tool. Never fails: every problem is an error output.
    pub async fn call(&self, client: &reqwest::Client, arguments: &Value) -> ToolOutput {
        if let Err(problems) = self.validate(arguments) {
            return ToolOutput::error(
                "invalid_arguments",
                &format!(
                    "the arguments do not match the tool's schema: {}",
                    problems.join("; ")
                ),
            );
        }
        let request = client
            .post(self.url.clone())
            .json(arguments)
            .timeout(self.timeout)
            .send();
        let response = match request.await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return self.timed_out(),
            Err(e) => {
                return ToolOutput::error(
                    "tool_unreachable",
                    &format!("the tool could not be reached: {}", e.without_url()),
                );
            }
        };
        let status = response.status();
        let json = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"));
        let body = match response.bytes().await {
            Ok(b) => b,
            Err(e) if e.is_timeout() => return self.timed_out(),
            Err(e) => {
                return ToolOutput::error(
                    "tool_failed",
                    &format!("reading the tool's answer failed: {}", e.without_url()),
                );
            }
        };
        if body.len() > MAX_OUTPUT_BYTES {
            return ToolOutput::error(
                "tool_output_too_large",
                &format!("the tool answered with more than {MAX_OUTPUT_BYTES} bytes"),
            );
        }
        let text = String::from_utf8_lossy(&body).into_owned();
        if !status.is_success() {
            let excerpt: String = text.chars().take(500).collect();
            return ToolOutput::error(
                "tool_failed",
                &format!("the tool answered {status}: {excerpt}"),
            );
        }
        if json {
            // Compact, valid JSON; a tool that says JSON but sends something else is
            // passed on as text.
            return ToolOutput::Output(
                serde_json::from_str::<Value>(&text).map_or(text, |v| v.to_string()),
            );
        }
        ToolOutput::Output(text)
    }
}
