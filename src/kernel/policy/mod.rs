//! HushSpec 0.1 policies: strict parsing ([`model`]), `extends` ([`resolve`]) and
//! the merge strategies ([`merge`]), validation into a compiled [`Policy`]
//! ([`validate`]), evaluation of actions ([`evaluate`]) and the `*.test.yaml`
//! format policy authors test with ([`testfile`]).
//!
//! A policy is identified by its hash: the SHA-256 of the RFC 8785 canonical JSON
//! form of the resolved document, so that two files that resolve to the same rules
//! have the same hash whatever their layout.

pub mod evaluate;
pub mod glob;
pub mod merge;
pub mod model;
pub mod resolve;
pub mod testfile;
pub mod validate;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use evaluate::{Action, Evaluation, Verdict};
use model::Document;
use validate::CompiledRules;

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML is malformed or does not fit the HushSpec schema.
    #[error("{source_name}: {message}")]
    Parse {
        /// Where the text came from.
        source_name: String,
        /// The parser's message, with the location.
        message: String,
    },
    /// A value is not acceptable.
    #[error("invalid `{path}`: {message}")]
    Invalid {
        /// The field, as a path into the document.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// `extends` cannot be resolved.
    #[error("extends: {message}")]
    Extends {
        /// What is wrong.
        message: String,
    },
}

/// A resolved, validated and compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    document: Document,
    hash: String,
    pub(crate) rules: CompiledRules,
}

/// The parser options: YAML 1.2 booleans only, duplicate keys refused.
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        strict_booleans: true,
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
    }
}

/// Parses YAML text strictly into `T`.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(
    text: &str,
    source_name: &str,
) -> Result<T, PolicyError> {
    serde_saphyr::from_str_with_options(text, yaml_options()).map_err(|e| PolicyError::Parse {
        source_name: source_name.to_owned(),
        message: e.to_string(),
    })
}

/// Parses one HushSpec document (no `extends` resolution, no validation).
pub fn parse_document(text: &str, source_name: &str) -> Result<Document, PolicyError> {
    parse_yaml(text, source_name)
}

impl Policy {
    pub(crate) fn new(document: Document, rules: CompiledRules) -> Result<Self, PolicyError> {
        let value = serde_json::to_value(&document).map_err(|e| PolicyError::Invalid {
            path: String::new(),
            message: format!("cannot serialise the resolved policy: {e}"),
        })?;
        let canonical = serde_jcs::to_vec(&value).map_err(|e| PolicyError::Invalid {
            path: String::new(),
            message: format!("cannot canonicalise the resolved policy: {e}"),
        })?;
        let hash = hex::encode(Sha256::digest(&canonical));
        Ok(Self {
            document,
            hash,
            rules,
        })
    }

    /// Loads, resolves and validates the policy file at `path`.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        validate::compile(resolve::resolve_file(path)?)
    }

    /// Parses, resolves (relative to the working directory) and validates text.
    pub fn from_text(text: &str, source_name: &str) -> Result<Self, PolicyError> {
        let document = parse_document(text, source_name)?;
        Self::from_document(document)
    }

    /// Resolves and validates a parsed document.
    pub fn from_document(document: Document) -> Result<Self, PolicyError> {
        let resolved = resolve::resolve(document, resolve::Source::Inline, &mut Vec::new())?;
        validate::compile(resolved)
    }

    /// A bundled policy by name (`default`, `strict`, ...).
    pub fn bundled(name: &str) -> Result<Self, PolicyError> {
        let (name, text) = resolve::bundled(name).ok_or_else(|| PolicyError::Extends {
            message: format!("no bundled policy named {name:?}"),
        })?;
        let document = parse_document(text, &format!("bundled:{name}"))?;
        let resolved = resolve::resolve(document, resolve::Source::Bundled(name), &mut Vec::new())?;
        validate::compile(resolved)
    }

    /// The compiled regex of the policy's own secret pattern `name`.
    pub fn secret_pattern(&self, name: &str) -> Option<&regex::Regex> {
        self.rules
            .secret_patterns
            .as_ref()?
            .patterns
            .iter()
            .find(|p| p.name == name)
            .map(|p| &p.regex)
    }

    /// The rate limit, when enabled.
    pub fn velocity(&self) -> Option<&model::Velocity> {
        self.rules.velocity.as_ref()
    }

    /// Whether the egress allow list names `host` exactly (no wildcard), which is
    /// what it takes to reach an internal address.
    pub fn egress_names(&self, host: &str) -> bool {
        self.rules
            .egress
            .as_ref()
            .is_some_and(|e| e.allow.names(host))
    }

    /// The resolved document.
    pub fn document(&self) -> &Document {
        &self.document
    }

    /// SHA-256 (hex) of the canonical JSON form of the resolved document.
    pub fn hash(&self) -> &str {
        &self.hash
    }
}
