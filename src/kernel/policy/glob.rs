//! The two pattern languages of HushSpec: path globs (`*` within one path segment,
//! `**` across segments, `?` one character; case-sensitive) and host patterns (`*`
//! is exactly one DNS label, `**` one or more; a `*` inside a label matches within
//! that label; case-insensitive). A host pattern never matches a raw suffix:
//! `*.example.com` matches `api.example.com` but neither `example.com` nor
//! `evilexample.com`.

use globset::{Glob, GlobBuilder, GlobMatcher};

/// A compiled list of path globs, in order.
#[derive(Debug, Clone, Default)]
pub struct PathGlobs {
    globs: Vec<(String, GlobMatcher)>,
}

impl PathGlobs {
    /// Compiles `patterns`; names the first invalid one.
    pub fn new(patterns: &[String]) -> Result<Self, String> {
        let mut globs = Vec::with_capacity(patterns.len());
        for pattern in patterns {
            let glob = GlobBuilder::new(pattern)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| format!("invalid glob {pattern:?}: {e}"))?;
            globs.push((pattern.clone(), glob.compile_matcher()));
        }
        Ok(Self { globs })
    }

    /// Whether any glob matches `path`.
    pub fn matches(&self, path: &str) -> bool {
        self.globs.iter().any(|(_, g)| g.is_match(path))
    }

    /// Whether there are no globs.
    pub fn is_empty(&self) -> bool {
        self.globs.is_empty()
    }
}

/// Checks that a glob compiles (used by validation for lists not compiled here).
pub fn check_glob(pattern: &str) -> Result<(), String> {
    Glob::new(pattern)
        .map(|_| ())
        .map_err(|e| format!("invalid glob {pattern:?}: {e}"))
}

/// A compiled list of host patterns, in order.
#[derive(Debug, Clone, Default)]
pub struct HostPatterns {
    patterns: Vec<Vec<String>>,
}

impl HostPatterns {
    /// Compiles `patterns` (lowercased, one trailing dot removed); names the first
    /// invalid one.
    pub fn new(patterns: &[String]) -> Result<Self, String> {
        let mut out = Vec::with_capacity(patterns.len());
        for pattern in patterns {
            let lowered = pattern.trim().to_ascii_lowercase();
            let trimmed = lowered.strip_suffix('.').unwrap_or(&lowered);
            if trimmed.is_empty() || trimmed.split('.').any(str::is_empty) {
                return Err(format!("invalid host pattern {pattern:?}: empty label"));
            }
            if trimmed.contains(['/', ':', '@', ' ']) {
                return Err(format!(
                    "invalid host pattern {pattern:?}: give a host name, not a URL"
                ));
            }
            out.push(trimmed.split('.').map(str::to_owned).collect());
        }
        Ok(Self { patterns: out })
    }

    /// Whether a pattern without wildcards names `host` exactly.
    pub fn names(&self, host: &str) -> bool {
        self.patterns
            .iter()
            .any(|p| !p.iter().any(|l| l.contains('*')) && p.join(".") == host)
    }

    /// Whether any pattern matches `host` (already lowercased and normalised).
    pub fn matches(&self, host: &str) -> bool {
        let labels: Vec<&str> = host.split('.').collect();
        self.patterns.iter().any(|p| match_labels(p, &labels))
    }
}

fn match_labels(pattern: &[String], host: &[&str]) -> bool {
    match pattern.split_first() {
        None => host.is_empty(),
        Some((first, rest)) if first == "**" => {
            (1..=host.len()).any(|taken| match_labels(rest, &host[taken..]))
        }
        Some((first, rest)) => match host.split_first() {
            Some((label, host_rest)) => match_label(first, label) && match_labels(rest, host_rest),
            None => false,
        },
    }
}

/// One label against one pattern label, where `*` matches any run of characters
/// within the label (and a lone `*` any whole label).
fn match_label(pattern: &str, label: &str) -> bool {
    if pattern == "*" {
        return !label.is_empty();
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == label;
    }
    let mut rest = label;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(p: &[&str]) -> HostPatterns {
        HostPatterns::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn paths(p: &[&str]) -> PathGlobs {
        PathGlobs::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn host_wildcards_are_whole_labels_never_suffixes() {
        let p = hosts(&["*.example.com"]);
        assert!(p.matches("api.example.com"));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("evilexample.com"));
        assert!(!p.matches("a.b.example.com"));
        assert!(!p.matches("example.com.evil.net"));
        let deep = hosts(&["**.example.com"]);
        assert!(deep.matches("a.b.example.com"));
        assert!(!deep.matches("example.com"));
        let exact = hosts(&["API.OpenAI.com."]);
        assert!(exact.matches("api.openai.com"));
        assert!(!exact.matches("api.openai.com.evil.net"));
        let inner = hosts(&["api-*.example.com"]);
        assert!(inner.matches("api-eu.example.com"));
        assert!(!inner.matches("web-eu.example.com"));
        assert!(HostPatterns::new(&["https://x.com".to_string()]).is_err());
    }

    #[test]
    fn path_globs_keep_star_within_a_segment() {
        let p = paths(&["**/.ssh/**", "/etc/*"]);
        assert!(p.matches("/home/user/.ssh/id_rsa"));
        assert!(p.matches("/etc/passwd"));
        assert!(!p.matches("/etc/ssl/certs/x"));
        assert!(!p.matches("/home/user/src/main.rs"));
        assert!(paths(&["**/test/**"]).matches("/test/fixtures/sample.js"));
    }
}
