//! A caller's capability scope: the tools it may call, by exact name or as a
//! whole governed server (`server__*`). A scope can only narrow what the policy
//! allows; it never widens it.

/// The tools a caller may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    tools: Vec<String>,
}

impl Scope {
    /// A scope of tool names and `server__*` patterns.
    pub fn new(tools: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            tools: tools.into_iter().map(Into::into).collect(),
        }
    }

    /// The entries as given.
    pub fn entries(&self) -> &[String] {
        &self.tools
    }

    /// Whether `tool` is inside the scope: byte-for-byte equal to an entry, or
    /// `server__<anything>` under a `server__*` entry.
    pub fn allows(&self, tool: &str) -> bool {
        self.tools
            .iter()
            .any(|entry| match entry.strip_suffix('*') {
                Some(prefix) if prefix.ends_with("__") && prefix.len() > 2 => {
                    tool.len() > prefix.len() && tool.starts_with(prefix)
                }
                _ => entry == tool,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_and_server_wildcards() {
        let s = Scope::new(["get_weather", "github__*"]);
        assert!(s.allows("get_weather"));
        assert!(s.allows("github__search"));
        assert!(!s.allows("github__"));
        assert!(!s.allows("github_search"));
        assert!(!s.allows("get_weather2"));
        assert!(!s.allows("Get_Weather"));
        // A bare `*` or a pattern without the server separator is not a wildcard.
        let odd = Scope::new(["*", "git*"]);
        assert!(!odd.allows("anything"));
        assert!(!odd.allows("github__x"));
        assert!(odd.allows("*"));
    }
}
