//! Human approvals for calls a policy marks `require_confirmation` (decision
//! `warn`).
//!
//! A request is bound to the agent, the tool, the SHA-256 of the canonical
//! arguments and the policy hash, and expires. An operator approves or rejects it;
//! an approved request lets exactly one identical call through and is then used
//! up, so a replay needs a new approval. A call with other arguments, from another
//! agent or under another policy is a different request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// What an approval request is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Binding {
    /// The agent.
    pub agent_id: String,
    /// The tool.
    pub tool: String,
    /// SHA-256 of the canonical arguments.
    pub arguments_hash: String,
    /// Hash of the policy that asked for approval.
    pub policy_hash: String,
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for an operator.
    Pending,
    /// Approved; the next identical call may run.
    Approved,
    /// Refused by an operator.
    Rejected,
    /// Approved and used by a call.
    Consumed,
}

/// One request.
#[derive(Debug, Clone)]
pub struct Request {
    /// Its id (`apr_…`).
    pub id: String,
    /// What it covers.
    pub binding: Binding,
    /// Where it stands.
    pub state: State,
    /// When it was made.
    pub created: SystemTime,
    /// When it lapses if not used.
    pub expires: SystemTime,
}

/// What the store says about a call that needs approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// An approved request was used by this call.
    Granted(String),
    /// A request waits (made now or earlier).
    Pending(String),
    /// The operator refused the request.
    Rejected(String),
}

/// The store of approval requests.
#[derive(Debug)]
pub struct Approvals {
    ttl: Duration,
    requests: Mutex<HashMap<String, Request>>,
}

impl Approvals {
    /// A store whose requests expire after `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            requests: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Request>> {
        match self.requests.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Uses an approved request for this call, or reports (creating if needed) the
    /// request it waits on.
    pub fn check(&self, binding: &Binding, now: SystemTime) -> Verdict {
        let mut requests = self.lock();
        requests.retain(|_, r| {
            r.expires > now || r.state == State::Consumed && r.expires + self.ttl > now
        });
        let mut live: Vec<&mut Request> = requests
            .values_mut()
            .filter(|r| &r.binding == binding && r.state != State::Consumed)
            .collect();
        live.sort_by_key(|r| r.created);
        if let Some(r) = live.iter_mut().find(|r| r.state == State::Approved) {
            r.state = State::Consumed;
            return Verdict::Granted(r.id.clone());
        }
        if let Some(r) = live.iter().rev().find(|r| r.state == State::Pending) {
            return Verdict::Pending(r.id.clone());
        }
        if let Some(r) = live.iter().rev().find(|r| r.state == State::Rejected) {
            return Verdict::Rejected(r.id.clone());
        }
        let id = format!("apr_{}", uuid::Uuid::now_v7().simple());
        requests.insert(
            id.clone(),
            Request {
                id: id.clone(),
                binding: binding.clone(),
                state: State::Pending,
                created: now,
                expires: now + self.ttl,
            },
        );
        Verdict::Pending(id)
    }

    /// Approves a pending request; false if there is none by that id.
    pub fn approve(&self, id: &str) -> bool {
        self.settle(id, State::Approved)
    }

    /// Rejects a pending request; false if there is none by that id.
    pub fn reject(&self, id: &str) -> bool {
        self.settle(id, State::Rejected)
    }

    fn settle(&self, id: &str, to: State) -> bool {
        match self.lock().get_mut(id) {
            Some(r) if r.state == State::Pending => {
                r.state = to;
                true
            }
            _ => false,
        }
    }

    /// Every request still remembered, oldest first.
    pub fn list(&self) -> Vec<Request> {
        let mut all: Vec<Request> = self.lock().values().cloned().collect();
        all.sort_by_key(|r| r.created);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(args: &str) -> Binding {
        Binding {
            agent_id: "key:abc".into(),
            tool: "git_push".into(),
            arguments_hash: args.into(),
            policy_hash: "p1".into(),
        }
    }

    #[test]
    fn one_approval_lets_one_identical_call_through() {
        let store = Approvals::new(Duration::from_secs(600));
        let now = SystemTime::now();
        let Verdict::Pending(id) = store.check(&binding("h1"), now) else {
            panic!()
        };
        // Asking again waits on the same request.
        assert_eq!(
            store.check(&binding("h1"), now),
            Verdict::Pending(id.clone())
        );
        assert!(store.approve(&id));
        // Other arguments are not covered.
        assert!(matches!(store.check(&binding("h2"), now), Verdict::Pending(other) if other != id));
        assert_eq!(
            store.check(&binding("h1"), now),
            Verdict::Granted(id.clone())
        );
        // The replay needs a new approval.
        assert!(matches!(store.check(&binding("h1"), now), Verdict::Pending(other) if other != id));
        assert!(
            !store.approve(&id),
            "a used request cannot be approved again"
        );
    }

    #[test]
    fn rejected_and_expired_requests() {
        let store = Approvals::new(Duration::from_secs(60));
        let now = SystemTime::now();
        let Verdict::Pending(id) = store.check(&binding("h"), now) else {
            panic!()
        };
        assert!(store.reject(&id));
        assert_eq!(
            store.check(&binding("h"), now),
            Verdict::Rejected(id.clone())
        );
        // After expiry the rejection is forgotten and a new request is made.
        let later = now + Duration::from_secs(61);
        assert!(
            matches!(store.check(&binding("h"), later), Verdict::Pending(other) if other != id)
        );
        let Verdict::Pending(id2) = store.check(&binding("h"), later) else {
            panic!()
        };
        assert!(store.approve(&id2));
        assert!(
            matches!(
                store.check(&binding("h"), later + Duration::from_secs(61)),
                Verdict::Pending(_)
            ),
            "an approval expires unused"
        );
    }
}
