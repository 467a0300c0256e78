//! The splice store of the turn loop (SPEC section 2).
//!
//! When a model turn holds both calls tollgate handles (governed, denied, pending)
//! and calls the client runs, the client sees only its own calls. The turn as the
//! model wrote it (every call) and the outputs of the handled calls are remembered
//! here, keyed by the ids of the client's calls; when the client's next request
//! brings the results for those ids, [`splice_chat`] puts the whole turn back, so
//! that the model always sees a complete conversation: every call answered, in the
//! original order.
//!
//! The store lives in memory, holds at most a fixed number of turns and of
//! bytes (each turn's size estimated as the governed budget estimates a parsed
//! body), and forgets turns after an expiry; past either bound the oldest turns
//! go first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::adapter::chat::tool_message;
use crate::kernel::{Decision, Outcome};

/// One remembered turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    /// The agent whose turn it is: only its own follow-ups are completed with it.
    pub agent_id: String,
    /// The assistant message with every call, as the model wrote it.
    pub assistant: Value,
    /// The outputs of the calls tollgate handled: `(call id, output)`.
    pub handled: Vec<(String, String)>,
    /// The ids of the calls the client received.
    pub relayed: Vec<String>,
}

/// What a remembered turn holds in memory, estimated: its JSON trees as
/// [`request::tree_size`] estimates them, and its strings.
pub trait Footprint {
    /// Bytes, estimated.
    fn footprint(&self) -> usize;
}

impl Footprint for Turn {
    fn footprint(&self) -> usize {
        self.agent_id.len()
            + request::tree_size(&self.assistant)
            + self
                .handled
                .iter()
                .map(|(id, out)| id.len() + out.len())
                .sum::<usize>()
            + self.relayed.iter().map(String::len).sum::<usize>()
    }
}

/// Remembered turns, each under one or more keys (call ids, item ids, response
/// ids).
#[derive(Debug)]
pub struct SpliceStore<T = Turn> {
    max_turns: usize,
    max_bytes: usize,
    ttl: Duration,
    inner: Mutex<Inner<T>>,
}

/// One remembered turn: when, under which keys, its size.
type Entry<T> = (Instant, Vec<String>, Arc<T>, usize);

#[derive(Debug)]
struct Inner<T> {
    by_key: HashMap<String, Arc<T>>,
    order: VecDeque<Entry<T>>,
    bytes: usize,
}

impl<T> Default for Inner<T> {
    fn default() -> Self {
        Self {
            by_key: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
        }
    }
}

impl<T: Footprint> SpliceStore<T> {
    /// A store of at most `max_turns` turns and `max_bytes` bytes of them (keys
    /// included), each kept for `ttl`.
    pub fn new(max_turns: usize, max_bytes: usize, ttl: Duration) -> Self {
        Self {
            max_turns: max_turns.max(1),
            max_bytes,
            ttl,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Remembers a turn under `keys` at `now`, dropping expired and (past the
    /// bounds) oldest turns. Returns false, remembering nothing, for a turn
    /// larger than the whole byte bound.
    pub fn remember(&self, keys: Vec<String>, turn: T, now: Instant) -> bool {
        let size = turn.footprint() + keys.iter().map(String::len).sum::<usize>();
        if size > self.max_bytes {
            tracing::warn!(
                size,
                max = self.max_bytes,
                "a turn larger than remember_bytes is not remembered: the client's follow-up will reach the model without its hidden calls"
            );
            return false;
        }
        let turn = Arc::new(turn);
        let mut inner = self.lock();
        Self::expire(&mut inner, now, self.ttl);
        while inner.order.len() >= self.max_turns
            || size > self.max_bytes.saturating_sub(inner.bytes)
        {
            if inner.order.is_empty() {
                break;
            }
            Self::forget_oldest(&mut inner);
        }
        for key in &keys {
            inner.by_key.insert(key.clone(), turn.clone());
        }
        inner.bytes += size;
        inner.order.push_back((now, keys, turn, size));
        true
    }

    fn forget_oldest(inner: &mut Inner<T>) {
        if let Some((_, keys, old, size)) = inner.order.pop_front() {
            inner.bytes = inner.bytes.saturating_sub(size);
            for key in &keys {
                // A key a newer turn took over stays with it.
                if inner.by_key.get(key).is_some_and(|t| Arc::ptr_eq(t, &old)) {
                    inner.by_key.remove(key);
                }
            }
        }
    }

    fn expire(inner: &mut Inner<T>, now: Instant, ttl: Duration) {
        while inner
            .order
            .front()
            .is_some_and(|(t, ..)| now.saturating_duration_since(*t) >= ttl)
        {
            Self::forget_oldest(inner);
        }
    }

    /// The turn remembered under `key`, if still there.
    pub fn find(&self, key: &str, now: Instant) -> Option<Arc<T>> {
        let mut inner = self.lock();
        Self::expire(&mut inner, now, self.ttl);
        inner.by_key.get(key).cloned()
    }

    /// How many turns are remembered.
    pub fn len(&self) -> usize {
        self.lock().order.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of the turns remembered, as counted against the bound.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

/// Why a conversation could not be completed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpliceError {
    /// The client answered some of a remembered turn's calls but not all.
    #[error("the conversation answers only some of the calls of one assistant turn; missing: {0}")]
    Incomplete(String),
}

/// Puts remembered turns back into a Chat Completions `messages` list: each
/// assistant message whose calls belong to a remembered turn is replaced by the
/// full message, and the tool messages that follow it are rebuilt in the original
/// call order from the handled outputs and the client's own results. Only the
/// turns of `agent_id` are used. Returns how many turns were spliced.
pub fn splice_chat(
    messages: &mut Vec<Value>,
    store: &SpliceStore<Turn>,
    now: Instant,
    agent_id: &str,
) -> Result<usize, SpliceError> {
    let mut spliced = 0;
    let mut i = 0;
    while i < messages.len() {
        let turn = messages[i]
            .get("tool_calls")
            .and_then(Value::as_array)
            .and_then(|calls| {
                calls
                    .iter()
                    .find_map(|c| c.get("id").and_then(Value::as_str))
            })
            .filter(|_| messages[i].get("role").and_then(Value::as_str) == Some("assistant"))
            .and_then(|id| store.find(id, now))
            .filter(|t| t.agent_id == agent_id);
        let Some(turn) = turn else {
            i += 1;
            continue;
        };
        // The client's tool messages right after the assistant message.
        let mut end = i + 1;
        let mut client_results: Vec<(String, Value)> = Vec::new();
        while end < messages.len()
            && messages[end].get("role").and_then(Value::as_str) == Some("tool")
        {
            let id = messages[end]
                .get("tool_call_id")
                .and_then(Value::as_str)
                .unwrap_or_default();
            client_results.push((id.to_owned(), messages[end].clone()));
            end += 1;
        }
        let order: Vec<String> = turn
            .assistant
            .get("tool_calls")
            .and_then(Value::as_array)
            .map(|calls| {
                calls
                    .iter()
                    .filter_map(|c| c.get("id").and_then(Value::as_str).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let mut rebuilt = vec![turn.assistant.clone()];
        let mut missing = Vec::new();
        for id in &order {
            if let Some((_, output)) = turn.handled.iter().find(|(h, _)| h == id) {
                rebuilt.push(tool_message(id, output));
            } else if let Some(at) = client_results.iter().position(|(c, _)| c == id) {
                rebuilt.push(client_results.remove(at).1);
            } else {
                missing.push(id.clone());
            }
        }
        if !missing.is_empty() {
            return Err(SpliceError::Incomplete(missing.join(", ")));
        }
        // Results for calls outside the turn stay, after the turn's own.
        rebuilt.extend(client_results.into_iter().map(|(_, m)| m));
        let added = rebuilt.len();
        messages.splice(i..end, rebuilt);
        i += added;
        spliced += 1;
    }
    Ok(spliced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn turn() -> Turn {
        Turn {
            agent_id: "agent-1".into(),
            assistant: json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_gov", "type": "function", "function": {"name": "weather__current", "arguments": "{}"}},
                {"id": "call_client", "type": "function", "function": {"name": "lookup", "arguments": "{}"}},
                {"id": "call_denied", "type": "function", "function": {"name": "shell", "arguments": "{}"}}]}),
            handled: vec![
                ("call_gov".into(), "{\"temp_c\":18}".into()),
                ("call_denied".into(), "{\"error\":{}}".into()),
            ],
            relayed: vec!["call_client".into()],
        }
    }

    #[test]
    fn the_client_follow_up_gets_the_whole_turn_back_in_order() {
        let store: SpliceStore = SpliceStore::new(8, 1 << 20, Duration::from_secs(60));
        let now = Instant::now();
        store.remember(turn().relayed, turn(), now);
        let mut messages = vec![
            json!({"role": "user", "content": "hi"}),
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_client", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]}),
            json!({"role": "tool", "tool_call_id": "call_client", "content": "found it"}),
            json!({"role": "user", "content": "thanks"}),
        ];
        assert_eq!(
            splice_chat(&mut messages, &store, now, "agent-1").unwrap(),
            1
        );
        assert_eq!(messages.len(), 6);
        assert_eq!(messages[1], turn().assistant);
        let ids: Vec<&str> = messages[2..5]
            .iter()
            .map(|m| m["tool_call_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["call_gov", "call_client", "call_denied"]);
        assert_eq!(messages[3]["content"], "found it");
        assert_eq!(messages[5]["content"], "thanks");
    }

    #[test]
    fn another_agent_never_gets_a_turn_it_did_not_have() {
        let store: SpliceStore = SpliceStore::new(8, 1 << 20, Duration::from_secs(60));
        let now = Instant::now();
        store.remember(turn().relayed, turn(), now);
        let mut messages = vec![
            json!({"role": "assistant", "tool_calls": [{"id": "call_client"}]}),
            json!({"role": "tool", "tool_call_id": "call_client", "content": "x"}),
        ];
        let before = messages.clone();
        assert_eq!(
            splice_chat(&mut messages, &store, now, "agent-2").unwrap(),
            0
        );
        assert_eq!(messages, before);
    }

    #[test]
    fn a_missing_client_result_is_an_error_not_a_broken_conversation() {
        let store: SpliceStore = SpliceStore::new(8, 1 << 20, Duration::from_secs(60));
        let now = Instant::now();
        store.remember(turn().relayed, turn(), now);
        let mut messages =
            vec![json!({"role": "assistant", "tool_calls": [{"id": "call_client"}]})];
        assert_eq!(
            splice_chat(&mut messages, &store, now, "agent-1"),
            Err(SpliceError::Incomplete("call_client".into()))
        );
    }

    #[test]
    fn the_store_is_bounded_in_bytes_too() {
        // A turn counts as its trees' estimated size, its strings and its keys.
        let footprint = turn().footprint();
        assert_eq!(
            footprint,
            "agent-1".len()
                + request::tree_size(&turn().assistant)
                + "call_gov{\"temp_c\":18}call_denied{\"error\":{}}".len()
                + "call_client".len()
        );
        let size = footprint + "call_0".len();
        // Room for two turns, not three.
        let bound = 2 * size + size / 2;
        let store: SpliceStore = SpliceStore::new(100, bound, Duration::from_secs(60));
        let now = Instant::now();
        for n in 0..3 {
            assert!(store.remember(vec![format!("call_{n}")], turn(), now));
            assert!(store.bytes() <= bound);
        }
        assert_eq!((store.len(), store.bytes()), (2, 2 * size));
        assert!(store.find("call_0", now).is_none(), "the oldest went first");
        assert!(store.find("call_2", now).is_some());
        // A turn larger than the whole bound is not remembered and pushes nothing out.
        let mut large = turn();
        large.handled[0].1 = "x".repeat(bound);
        assert!(!store.remember(vec!["call_big".into()], large, now));
        assert_eq!(store.len(), 2);
        assert!(store.find("call_big", now).is_none());
        // Forgotten turns give their bytes back.
        assert!(
            store
                .find("call_2", now + Duration::from_secs(61))
                .is_none()
        );
        assert_eq!(store.bytes(), 0);
    }

    #[test]
    fn turns_expire_and_the_store_is_bounded() {
        let store: SpliceStore = SpliceStore::new(2, 1 << 20, Duration::from_secs(60));
        let now = Instant::now();
        for n in 0..3 {
            let mut t = turn();
            t.relayed = vec![format!("call_{n}")];
            store.remember(t.relayed.clone(), t, now);
        }
        assert_eq!(store.len(), 2);
        assert!(
            store.find("call_0", now).is_none(),
            "the oldest turn is dropped"
        );
        assert!(store.find("call_2", now).is_some());
        assert!(
            store
                .find("call_2", now + Duration::from_secs(61))
                .is_none(),
            "expired"
        );
        assert!(store.is_empty());
    }
}

pub mod chat;
pub mod request;
pub mod responses;

/// The surface a governed request came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/responses`.
    Responses,
}

impl Surface {
    /// The name receipts carry.
    pub fn name(self) -> &'static str {
        match self {
            Self::Chat => "chat.completions",
            Self::Responses => "responses",
        }
    }

    /// The adapter's name, in receipt metadata.
    pub fn adapter(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Responses => "responses",
        }
    }
}

/// What a model is told to do after a refusal.
const RECOVERY: [&str; 3] = [
    "Do not repeat this call with the same arguments.",
    "Use another tool, or other arguments that the policy allows.",
    "If the call is necessary, tell the user why it was refused; an operator can change the policy.",
];

/// The tool output the model receives for a call tollgate refused or holds for
/// approval: JSON it can act on, with the receipt that records the decision.
pub fn refusal_output(decision: &Decision, receipt_id: &str) -> String {
    match (decision.outcome(), decision.approval_id()) {
        (Outcome::Pending, Some(approval)) => json!({"error": {
            "type": "tool_call_pending_approval",
            "code": decision.code(),
            "message": decision.message(),
            "approval_id": approval,
            "receipt_id": receipt_id,
            "recovery": [
                format!("An operator must approve request {approval} (`tollgate approvals approve {approval}`)."),
                "Once it is approved, make exactly the same call again, with the same arguments: it will run once.".to_owned(),
                "Until then, tell the user the call is waiting for approval, or carry on without it.".to_owned(),
            ],
        }}),
        _ => json!({"error": {
            "type": "tool_call_denied",
            "code": decision.code(),
            "message": decision.message(),
            "receipt_id": receipt_id,
            "recovery": RECOVERY,
        }}),
    }
    .to_string()
}
