//! Resolving `extends`: a document's base is either a file, relative to the
//! directory of the document that names it, or one of the policies bundled into
//! the binary, named as `default`, `tollgate:default` or `hushspec:default` (and so
//! on for every file in `policies/`). The chain is resolved from the root down, each
//! child merged onto its resolved base with its own strategy; a cycle, a missing
//! base or a chain deeper than [`MAX_DEPTH`] is an error.

use std::path::{Path, PathBuf};

use super::merge::merge;
use super::model::Document;
use super::{PolicyError, parse_document};

/// The longest `extends` chain accepted.
pub const MAX_DEPTH: usize = 16;

/// The policies bundled into the binary: `(name, YAML text)`.
pub const BUNDLED: [(&str, &str); 4] = [
    ("default", include_str!("../../../policies/default.yaml")),
    ("strict", include_str!("../../../policies/strict.yaml")),
    (
        "openai-argument-guards",
        include_str!("../../../policies/openai-argument-guards.yaml"),
    ),
    (
        "pinned-tools",
        include_str!("../../../policies/pinned-tools.yaml"),
    ),
];

/// Where a document came from, for relative paths and cycle detection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file (canonical path).
    File(PathBuf),
    /// A bundled policy.
    Bundled(&'static str),
    /// Text with no location (relative `extends` are resolved from the working
    /// directory).
    Inline,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Bundled(name) => write!(f, "bundled:{name}"),
            Self::Inline => f.write_str("(inline)"),
        }
    }
}

/// The text of a bundled policy, by any of its names.
pub fn bundled(reference: &str) -> Option<(&'static str, &'static str)> {
    let name = reference
        .strip_prefix("tollgate:")
        .or_else(|| reference.strip_prefix("hushspec:"))
        .unwrap_or(reference);
    BUNDLED.iter().find(|(n, _)| *n == name).copied()
}

/// Reads, parses and resolves the policy file at `path`.
pub fn resolve_file(path: &Path) -> Result<Document, PolicyError> {
    let (document, source) = read_file(path)?;
    resolve(document, source, &mut Vec::new())
}

/// Reads and parses one policy file (no resolution).
fn read_file(path: &Path) -> Result<(Document, Source), PolicyError> {
    let read_error = |source| PolicyError::Read {
        path: path.to_path_buf(),
        source,
    };
    let canonical = path.canonicalize().map_err(read_error)?;
    let text = std::fs::read_to_string(&canonical).map_err(read_error)?;
    let document = parse_document(&text, &path.display().to_string())?;
    Ok((document, Source::File(canonical)))
}

/// Resolves the `extends` chain of a parsed document.
pub fn resolve(
    document: Document,
    source: Source,
    stack: &mut Vec<Source>,
) -> Result<Document, PolicyError> {
    if stack.contains(&source) {
        let mut chain: Vec<String> = stack.iter().map(ToString::to_string).collect();
        chain.push(source.to_string());
        return Err(PolicyError::Extends {
            message: format!("circular extends: {}", chain.join(" -> ")),
        });
    }
    if stack.len() >= MAX_DEPTH {
        return Err(PolicyError::Extends {
            message: format!("extends chain deeper than {MAX_DEPTH}"),
        });
    }
    let Some(reference) = document.extends.clone() else {
        return Ok(document);
    };
    stack.push(source.clone());
    let (base_doc, base_source) = load_base(&reference, &source)?;
    let base = resolve(base_doc, base_source, stack)?;
    stack.pop();
    Ok(merge(&base, &document))
}

fn load_base(reference: &str, from: &Source) -> Result<(Document, Source), PolicyError> {
    let looks_like_path =
        reference.contains('/') || reference.ends_with(".yaml") || reference.ends_with(".yml");
    if !looks_like_path {
        if let Some((name, text)) = bundled(reference) {
            let document = parse_document(text, &format!("bundled:{name}"))?;
            return Ok((document, Source::Bundled(name)));
        }
        if reference.contains(':') {
            return Err(PolicyError::Extends {
                message: format!(
                    "unknown bundled policy {reference:?}; bundled: {}",
                    BUNDLED.map(|(n, _)| n).join(", ")
                ),
            });
        }
    }
    let base_dir = match from {
        Source::File(path) => path.parent().map(Path::to_path_buf).unwrap_or_default(),
        Source::Bundled(name) => {
            return Err(PolicyError::Extends {
                message: format!(
                    "bundled policy {name} may only extend bundled policies, not {reference:?}"
                ),
            });
        }
        Source::Inline => PathBuf::from("."),
    };
    read_file(&base_dir.join(reference))
}
