//! The three merge strategies of HushSpec, applied by the child document.
//!
//! - `replace`: the child alone.
//! - `merge`: the child's top-level fields where it has them, the base's
//!   otherwise; rule blocks and extensions taken whole from the child when it has
//!   them, from the base otherwise.
//! - `deep_merge` (the default): as `merge` for rule blocks (a block is never
//!   merged field by field, and lists are never concatenated: a child that names a
//!   block owns all of it); extensions combined key by key: posture states united
//!   (the child's win), origin profiles matched by id, detection settings field by
//!   field.
//!
//! The result never has `extends`; its `merge_strategy` is the child's as written.

use super::model::{Detection, Document, Extensions, MergeStrategy, Origins, Posture, Rules};

/// Combines `base` and `child` with the child's strategy.
pub fn merge(base: &Document, child: &Document) -> Document {
    let strategy = child.merge_strategy.unwrap_or(MergeStrategy::DeepMerge);
    let mut out = match strategy {
        MergeStrategy::Replace => child.clone(),
        MergeStrategy::Merge | MergeStrategy::DeepMerge => Document {
            hushspec: child.hushspec.clone(),
            name: child.name.clone().or_else(|| base.name.clone()),
            description: child
                .description
                .clone()
                .or_else(|| base.description.clone()),
            extends: None,
            merge_strategy: child.merge_strategy,
            rules: merge_rules(base.rules.as_ref(), child.rules.as_ref()),
            extensions: if strategy == MergeStrategy::Merge {
                merge_extensions_whole(base.extensions.as_ref(), child.extensions.as_ref())
            } else {
                deep_merge_extensions(base.extensions.as_ref(), child.extensions.as_ref())
            },
            metadata: child.metadata.clone().or_else(|| base.metadata.clone()),
        },
    };
    out.extends = None;
    out
}

fn pick<T: Clone>(base: &Option<T>, child: &Option<T>) -> Option<T> {
    child.clone().or_else(|| base.clone())
}

fn merge_rules(base: Option<&Rules>, child: Option<&Rules>) -> Option<Rules> {
    let (base, child) = match (base, child) {
        (None, None) => return None,
        (Some(b), None) => return Some(b.clone()),
        (None, Some(c)) => return Some(c.clone()),
        (Some(b), Some(c)) => (b, c),
    };
    Some(Rules {
        forbidden_paths: pick(&base.forbidden_paths, &child.forbidden_paths),
        path_allowlist: pick(&base.path_allowlist, &child.path_allowlist),
        egress: pick(&base.egress, &child.egress),
        secret_patterns: pick(&base.secret_patterns, &child.secret_patterns),
        patch_integrity: pick(&base.patch_integrity, &child.patch_integrity),
        shell_commands: pick(&base.shell_commands, &child.shell_commands),
        tool_access: pick(&base.tool_access, &child.tool_access),
        computer_use: pick(&base.computer_use, &child.computer_use),
        remote_desktop_channels: pick(
            &base.remote_desktop_channels,
            &child.remote_desktop_channels,
        ),
        input_injection: pick(&base.input_injection, &child.input_injection),
        browser_automation: pick(&base.browser_automation, &child.browser_automation),
        code_execution: pick(&base.code_execution, &child.code_execution),
        velocity: pick(&base.velocity, &child.velocity),
    })
}

fn merge_extensions_whole(
    base: Option<&Extensions>,
    child: Option<&Extensions>,
) -> Option<Extensions> {
    match (base, child) {
        (None, None) => None,
        (Some(b), None) => Some(b.clone()),
        (None, Some(c)) => Some(c.clone()),
        (Some(b), Some(c)) => Some(Extensions {
            posture: pick(&b.posture, &c.posture),
            origins: pick(&b.origins, &c.origins),
            detection: pick(&b.detection, &c.detection),
        }),
    }
}

fn deep_merge_extensions(
    base: Option<&Extensions>,
    child: Option<&Extensions>,
) -> Option<Extensions> {
    let (b, c) = match (base, child) {
        (Some(b), Some(c)) => (b, c),
        _ => return merge_extensions_whole(base, child),
    };
    let posture = match (&b.posture, &c.posture) {
        (Some(bp), Some(cp)) => {
            let mut states = bp.states.clone();
            states.extend(cp.states.clone());
            Some(Posture {
                initial: cp.initial.clone(),
                states,
                transitions: cp.transitions.clone(),
            })
        }
        (bp, cp) => pick(bp, cp),
    };
    let origins = match (&b.origins, &c.origins) {
        (Some(bo), Some(co)) => {
            let mut profiles = bo.profiles.clone();
            for profile in &co.profiles {
                match profiles.iter_mut().find(|p| p.id == profile.id) {
                    Some(existing) => *existing = profile.clone(),
                    None => profiles.push(profile.clone()),
                }
            }
            Some(Origins {
                default_behavior: co.default_behavior.or(bo.default_behavior),
                profiles,
            })
        }
        (bo, co) => pick(bo, co),
    };
    let detection = match (&b.detection, &c.detection) {
        (Some(bd), Some(cd)) => Some(merge_detection(bd, cd)),
        (bd, cd) => pick(bd, cd),
    };
    Some(Extensions {
        posture,
        origins,
        detection,
    })
}

fn merge_detection(base: &Detection, child: &Detection) -> Detection {
    let prompt_injection = match (&base.prompt_injection, &child.prompt_injection) {
        (Some(b), Some(c)) => Some(super::model::PromptInjection {
            enabled: c.enabled.or(b.enabled),
            warn_at_or_above: c.warn_at_or_above.or(b.warn_at_or_above),
            block_at_or_above: c.block_at_or_above.or(b.block_at_or_above),
            max_scan_bytes: c.max_scan_bytes.or(b.max_scan_bytes),
        }),
        (b, c) => pick(b, c),
    };
    let jailbreak = match (&base.jailbreak, &child.jailbreak) {
        (Some(b), Some(c)) => Some(super::model::Jailbreak {
            enabled: c.enabled.or(b.enabled),
            block_threshold: c.block_threshold.or(b.block_threshold),
            warn_threshold: c.warn_threshold.or(b.warn_threshold),
            max_input_bytes: c.max_input_bytes.or(b.max_input_bytes),
        }),
        (b, c) => pick(b, c),
    };
    let threat_intel = match (&base.threat_intel, &child.threat_intel) {
        (Some(b), Some(c)) => Some(super::model::ThreatIntel {
            enabled: c.enabled.or(b.enabled),
            pattern_db: c.pattern_db.clone().or_else(|| b.pattern_db.clone()),
            similarity_threshold: c.similarity_threshold.or(b.similarity_threshold),
            top_k: c.top_k.or(b.top_k),
        }),
        (b, c) => pick(b, c),
    };
    Detection {
        prompt_injection,
        jailbreak,
        threat_intel,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::policy::parse_document;

    fn doc(text: &str) -> Document {
        parse_document(text, "t").unwrap()
    }

    const BASE: &str = "hushspec: \"0.1.0\"\nname: base\ndescription: the base\nrules:\n  egress: {allow: [a.com]}\n  tool_access: {block: [rm]}\nextensions:\n  posture:\n    initial: open\n    states: {open: {capabilities: [egress]}, locked: {}}\n    transitions: []\n";

    #[test]
    fn merge_takes_whole_blocks_and_whole_extensions() {
        let child = doc(
            "hushspec: \"0.1.0\"\nmerge_strategy: merge\nrules:\n  egress: {allow: [b.com]}\nextensions:\n  posture:\n    initial: calm\n    states: {calm: {}}\n    transitions: []\n",
        );
        let merged = merge(&doc(BASE), &child);
        let rules = merged.rules.as_ref().unwrap();
        assert_eq!(rules.egress.as_ref().unwrap().allow, vec!["b.com"]);
        assert_eq!(rules.tool_access.as_ref().unwrap().block, vec!["rm"]);
        assert_eq!(merged.name.as_deref(), Some("base"));
        assert_eq!(merged.merge_strategy, Some(MergeStrategy::Merge));
        let states = &merged
            .extensions
            .as_ref()
            .unwrap()
            .posture
            .as_ref()
            .unwrap()
            .states;
        assert_eq!(
            states.keys().collect::<Vec<_>>(),
            vec!["calm"],
            "merge replaces the posture whole"
        );
    }

    #[test]
    fn deep_merge_unites_posture_states() {
        let child = doc(
            "hushspec: \"0.1.0\"\nname: child\nextensions:\n  posture:\n    initial: calm\n    states: {calm: {}, open: {capabilities: [tool_call]}}\n    transitions: []\n",
        );
        let merged = merge(&doc(BASE), &child);
        let posture = merged.extensions.as_ref().unwrap().posture.clone().unwrap();
        assert_eq!(
            posture.states.keys().collect::<Vec<_>>(),
            vec!["calm", "locked", "open"]
        );
        assert_eq!(
            posture.states["open"].capabilities,
            vec!["tool_call"],
            "the child's state wins"
        );
        assert_eq!(posture.initial, "calm");
        assert_eq!(merged.description.as_deref(), Some("the base"));
        assert!(merged.extends.is_none());
    }

    #[test]
    fn replace_keeps_nothing_of_the_base() {
        let child = doc("hushspec: \"0.1.0\"\nmerge_strategy: replace\nextends: base.yaml\n");
        let merged = merge(&doc(BASE), &child);
        assert!(merged.rules.is_none() && merged.name.is_none() && merged.extends.is_none());
    }
}
