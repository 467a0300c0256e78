//! The governed Responses API turn loop (SPEC section 2), plain and streaming,
//! on the same kernel, receipts and governed tools as Chat Completions.
//!
//! Calls are `function_call` and `custom_tool_call` output items, answered by
//! `call_id`. A round whose calls were all handled here continues upstream: from
//! the round's response id when the upstream stores responses (the default), by
//! replaying the round's items when it does not (`store: false`), inside the
//! client's `conversation` when there is one. The client gets one response: the
//! first round's id, the items of every round it may see, the usage of all.
//!
//! When something was hidden, the response is remembered ([`ResponsesTurn`]) so
//! that the client's next request can be completed: a `previous_response_id`
//! naming it continues from the last round's upstream response with the outputs
//! the upstream has not had yet; a request that replays the items it was shown
//! (found by item id and call id) gets every item of every round back, hidden
//! calls and their outputs included, so the model sees a complete conversation.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::chat::{
    Caller, EventSource, Finished, GovernError, Governance, Pending, Settled, StreamEnd, from_error,
};
use super::request::{ClientRequest, tree_size};
use super::{Footprint, SpliceStore, Surface};
use crate::adapter::responses::{
    self as adapter, CallItem, CallKind, Echo, EventData, StreamOutput, StreamRewriter, Terminal,
    TerminalKind, answered_call, continue_request, input_items, item_key, merge_response,
    message_item, output, output_item, sum_usage,
};
use crate::receipt::Grouping;

/// A prepared Responses request and what its responses must echo of the
/// client's own.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The request as it goes upstream.
    pub body: ClientRequest,
    /// What to put back into the response objects.
    pub echo: Echo,
}

/// A response tollgate changed, remembered for the client's next request.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponsesTurn {
    /// The agent whose response it is: only its own requests are completed with it.
    pub agent_id: String,
    /// The last round's response id upstream, which a continuation resumes from.
    pub upstream_id: Option<String>,
    /// Every item of every round as the model wrote it, with tollgate's outputs
    /// for the handled calls, in order.
    pub items: Vec<Value>,
    /// Outputs of handled calls the upstream has not been sent (the last
    /// round's).
    pub pending: Vec<Value>,
    /// The response object as the client was given it, for a client that fetches
    /// it by id: the upstream holds each round under its own id, and the first
    /// round's, which the client was given, still lists the calls tollgate hid.
    pub view: Value,
}

impl ResponsesTurn {
    /// The id the client was given.
    pub fn presented_id(&self) -> &str {
        self.view
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// The keys of the items the client was shown (call ids for calls, item ids
    /// otherwise).
    pub fn shown(&self) -> impl Iterator<Item = &str> {
        output(&self.view).iter().filter_map(item_key)
    }

    /// What the turn is remembered under: the keys of the items the client was
    /// shown, and the id it was given.
    pub fn keys(&self) -> Vec<String> {
        let id = Some(self.presented_id()).filter(|id| !id.is_empty());
        self.shown().chain(id).map(str::to_owned).collect()
    }
}

impl Footprint for ResponsesTurn {
    fn footprint(&self) -> usize {
        self.agent_id.len()
            + self.upstream_id.as_ref().map_or(0, String::len)
            + self
                .items
                .iter()
                .chain(&self.pending)
                .map(tree_size)
                .sum::<usize>()
            + tree_size(&self.view)
    }
}

/// Puts remembered responses back into an `input` list: the items of a
/// remembered response that the client replays (found by call id or item id,
/// wherever they are) are replaced, at the first one's place, by every item of
/// that response with the outputs of its handled calls. The client's own outputs
/// and other items keep their order after it. `skip` is a response already
/// continued by `previous_response_id`; only the responses of `agent_id` are used.
/// Returns how many responses were put back.
pub fn splice_responses(
    items: &mut Vec<Value>,
    store: &SpliceStore<ResponsesTurn>,
    now: Instant,
    skip: Option<&Arc<ResponsesTurn>>,
    agent_id: &str,
) -> usize {
    let mut done: Vec<Arc<ResponsesTurn>> = skip.into_iter().cloned().collect();
    let mut i = 0;
    while i < items.len() {
        let turn = item_key(&items[i])
            .and_then(|key| store.find(key, now))
            .filter(|t| t.agent_id == agent_id && !done.iter().any(|d| Arc::ptr_eq(d, t)));
        let Some(turn) = turn else {
            i += 1;
            continue;
        };
        let rest = items.split_off(i);
        let others: Vec<Value> = rest
            .into_iter()
            .filter(|item| item_key(item).is_none_or(|k| !turn.shown().any(|s| s == k)))
            .collect();
        items.extend(turn.items.iter().cloned());
        let added = turn.items.len();
        items.extend(others);
        i += added;
        done.push(turn);
    }
    done.len() - usize::from(skip.is_some())
}

/// A call item, to be decided.
fn pending(call: &CallItem) -> Pending<'_> {
    Pending {
        id: &call.call_id,
        name: &call.name,
        arguments: &call.arguments,
        custom: call.kind == CallKind::Custom,
    }
}

/// The id of tollgate's own message when it ends a response itself.
fn own_message_id(request_id: &str) -> String {
    let clean: String = request_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    format!("msg_tollgate_{clean}")
}

/// The items of a response across rounds, for the record.
#[derive(Debug, Default)]
struct Rounds {
    /// Every item and tollgate output so far.
    items: Vec<Value>,
    /// Whether any call was handled here.
    handled_any: bool,
}

impl Governance {
    /// Readies a client's Responses request: a `previous_response_id` naming a
    /// response tollgate changed continues from its last upstream round, with
    /// the outputs the upstream has not had; replayed items of such a response
    /// get every item back; governed tools are added to `tools`. Returns what
    /// the responses must echo of the client's own request. The request's tree
    /// is built only when one of these can apply.
    pub fn prepare_responses(
        &self,
        caller: &Caller,
        request: &mut ClientRequest,
    ) -> Result<Echo, GovernError> {
        let now = Instant::now();
        let continued = request
            .head()
            .previous_response_id
            .as_deref()
            .and_then(|id| {
                self.responses
                    .find(id, now)
                    .filter(|t| t.presented_id() == id && t.agent_id == caller.agent_id)
            });
        let visible = self.visible_tools(caller);
        let clash_possible = self.names_a_tool(request);
        if continued.is_none() && self.responses.is_empty() && visible.is_empty() && !clash_possible
        {
            return Ok(Echo::default());
        }
        let mut echo = Echo::default();
        let mut changed = false;
        let tree = request.parsed()?;
        if clash_possible {
            crate::adapter::refuse_name_clash(tree, |name| self.governed(name).is_some())?;
        }
        if let Some(turn) = &continued {
            if let Some(upstream_id) = turn
                .upstream_id
                .as_deref()
                .filter(|u| *u != turn.presented_id())
            {
                echo.previous_response_id = tree.get("previous_response_id").cloned();
                tree["previous_response_id"] = Value::String(upstream_id.to_owned());
            }
            if !turn.pending.is_empty() {
                let items = input_items(tree)?;
                let missing: Vec<Value> = turn
                    .pending
                    .iter()
                    .filter(|p| {
                        let id = answered_call(p);
                        !items.iter().any(|i| answered_call(i) == id)
                    })
                    .cloned()
                    .collect();
                items.splice(0..0, missing);
            }
            changed = true;
        }
        if let Some(items) = tree.get_mut("input").and_then(Value::as_array_mut) {
            changed |= splice_responses(
                items,
                &self.responses,
                now,
                continued.as_ref(),
                &caller.agent_id,
            ) > 0;
        }
        adapter::inject_tools(tree, &visible)?;
        changed |= !visible.is_empty();
        request.set_changed(changed);
        echo.injected = visible.into_iter().map(|t| t.name).collect();
        Ok(echo)
    }

    /// The response object `caller` was given under `id`, when tollgate hid
    /// something from it and still remembers it: what a client fetching the
    /// response by id must see, instead of the upstream's first round. Only the
    /// agent it was made for gets it.
    pub fn presented_response(&self, caller: &Caller, id: &str) -> Option<Value> {
        self.responses
            .find(id, Instant::now())
            .filter(|turn| turn.presented_id() == id && turn.agent_id == caller.agent_id)
            .map(|turn| turn.view.clone())
    }

    /// Remembers a response something was hidden from, for the client's next
    /// request.
    fn remember_response(
        &self,
        caller: &Caller,
        upstream_id: Option<&Value>,
        rounds: Rounds,
        pending: Vec<Value>,
        view: &Value,
    ) {
        if !rounds.handled_any {
            return;
        }
        let turn = ResponsesTurn {
            agent_id: caller.agent_id.clone(),
            upstream_id: upstream_id.and_then(Value::as_str).map(str::to_owned),
            items: rounds.items,
            pending,
            view: view.clone(),
        };
        self.responses.remember(turn.keys(), turn, Instant::now());
    }

    /// Decides every call of a round; returns the outputs of the handled ones
    /// (as input items) and the ids of the relayed ones.
    async fn settle_round(
        &self,
        caller: &Caller,
        request_id: &str,
        response: &Value,
        round: u32,
    ) -> Result<(Vec<Value>, Vec<String>), GovernError> {
        let mut handled = Vec::new();
        let mut relayed = Vec::new();
        for call in adapter::calls(response) {
            match self
                .settle(
                    caller,
                    request_id,
                    pending(&call),
                    round,
                    Surface::Responses,
                    Grouping::Now,
                )
                .await?
            {
                Settled::Relay => relayed.push(call.call_id.clone()),
                Settled::Handled(text) => handled.push(output_item(&call, &text)),
            }
        }
        Ok((handled, relayed))
    }

    /// Runs the plain loop on a prepared Responses request.
    pub async fn run_responses<F, Fut>(
        &self,
        caller: &Caller,
        request_id: &str,
        prepared: Prepared,
        mut upstream: F,
    ) -> Result<Finished, GovernError>
    where
        F: FnMut(Bytes) -> Fut,
        Fut: Future<Output = Result<Value, GovernError>>,
    {
        let Prepared {
            body: mut request,
            echo,
        } = prepared;
        let echo = &echo;
        let mut usage: Option<Value> = None;
        let mut envelope = Value::Null;
        let mut shown: Vec<Value> = Vec::new();
        let mut rounds = Rounds::default();
        let mut last = Value::Null;
        let mut pending = Vec::new();
        for round in 0..self.settings().max_rounds {
            let response = upstream(request.body()).await?;
            sum_usage(&mut usage, &response);
            if round == 0 {
                envelope = envelope_of(&response);
            }
            let (handled, relayed) = self
                .settle_round(caller, request_id, &response, round)
                .await?;
            if round == 0 && handled.is_empty() {
                // Nothing hidden: the answer leaves as it came, but for what it
                // echoes of the request.
                let mut response = response;
                let rewritten = echo.apply(&mut response);
                return Ok(Finished {
                    response,
                    rewritten,
                });
            }
            let hidden: Vec<String> = handled
                .iter()
                .filter_map(|o| answered_call(o).map(str::to_owned))
                .collect();
            shown.extend(adapter::shown_items(&response, &hidden).cloned());
            rounds.items.extend(output(&response).iter().cloned());
            rounds.items.extend(handled.iter().cloned());
            rounds.handled_any |= !handled.is_empty();
            if handled.is_empty() || !relayed.is_empty() || is_incomplete(&response) {
                let upstream_id = response.get("id").cloned();
                let mut merged = merge_response(&envelope, response, shown, usage);
                echo.apply(&mut merged);
                self.remember_response(caller, upstream_id.as_ref(), rounds, handled, &merged);
                return Ok(Finished {
                    response: merged,
                    rewritten: true,
                });
            }
            if round + 1 == self.settings().max_rounds {
                last = response;
                pending = handled;
                break;
            }
            continue_request(request.edit()?, &response, handled)?;
        }
        // Out of rounds: say so, and record it.
        let message = self
            .stop_at_max_rounds(caller, request_id, Surface::Responses)
            .await?;
        let item = message_item(&own_message_id(request_id), &message);
        shown.push(item.clone());
        rounds.items.push(without_id(item));
        let upstream_id = last.get("id").cloned();
        if let Some(object) = last.as_object_mut() {
            object.insert("status".into(), json!("completed"));
            object.insert("incomplete_details".into(), Value::Null);
        }
        let mut merged = merge_response(&envelope, last, shown, usage);
        echo.apply(&mut merged);
        self.remember_response(caller, upstream_id.as_ref(), rounds, pending, &merged);
        Ok(Finished {
            response: merged,
            rewritten: true,
        })
    }

    /// Runs the streaming loop on a prepared Responses request whose first
    /// upstream stream is `first`, writing the client's stream to `out`. Never
    /// leaves the client without one terminal event.
    pub async fn run_responses_stream<F, Fut, E>(
        &self,
        caller: &Caller,
        request_id: &str,
        prepared: Prepared,
        first: E,
        mut upstream: F,
        out: &mpsc::Sender<Bytes>,
    ) -> StreamEnd
    where
        F: FnMut(Bytes) -> Fut,
        Fut: Future<Output = Result<E, GovernError>>,
        E: EventSource,
    {
        let Prepared {
            body: mut request,
            echo,
        } = prepared;
        let mut client = Client {
            rw: StreamRewriter::new(echo),
            out,
        };
        let mut events = first;
        let mut rounds = Rounds::default();
        let mut last = Value::Null;
        let mut pending = Vec::new();
        for round in 0..self.settings().max_rounds {
            let (terminal, handled, relayed) = match self
                .responses_round(&mut client, caller, request_id, &mut events, round)
                .await
            {
                Ok(r) => r,
                Err(end) => return end,
            };
            match terminal.kind {
                TerminalKind::Failed => {
                    let message = failure_message(terminal.response());
                    let bytes = client.rw.pass_failure(terminal);
                    return client.end(bytes, StreamEnd::Failed(message)).await;
                }
                TerminalKind::Error => {
                    let message = terminal
                        .data()
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("the upstream reported an error")
                        .to_owned();
                    let bytes = client.rw.pass_failure(terminal);
                    if !client.send(bytes).await {
                        return StreamEnd::ClientGone;
                    }
                    return client.fail(&message).await;
                }
                TerminalKind::Completed | TerminalKind::Incomplete => {}
            }
            if handled.is_empty() && !client.rw.changed() {
                // Nothing was changed: the upstream's own ending.
                let bytes = client.rw.pass_terminal(terminal);
                return client.end(bytes, StreamEnd::Completed).await;
            }
            let response = terminal.response().clone();
            client.rw.end_round(&response);
            rounds.items.extend(output(&response).iter().cloned());
            rounds.items.extend(handled.iter().cloned());
            rounds.handled_any |= !handled.is_empty();
            let incomplete = terminal.kind == TerminalKind::Incomplete;
            if handled.is_empty() || relayed > 0 || incomplete {
                let view = client.rw.final_response(&response);
                self.remember_response(caller, response.get("id"), rounds, handled, &view);
                let kind = if incomplete {
                    "response.incomplete"
                } else {
                    "response.completed"
                };
                let bytes = client.rw.final_event(kind, view);
                return client.end(bytes, StreamEnd::Completed).await;
            }
            if round + 1 == self.settings().max_rounds {
                last = response;
                pending = handled;
                break;
            }
            let continued = request.edit().map_err(GovernError::from).and_then(|tree| {
                continue_request(tree, &response, handled).map_err(GovernError::from)
            });
            if let Err(error) = continued {
                return client.fail(&error.to_string()).await;
            }
            events = match upstream(request.body()).await {
                Ok(next) => next,
                Err(error) => return client.fail(&from_error(&error)).await,
            };
        }
        let message = match self
            .stop_at_max_rounds(caller, request_id, Surface::Responses)
            .await
        {
            Ok(m) => m,
            Err(error) => return client.fail(&from_error(&error)).await,
        };
        let id = own_message_id(request_id);
        for bytes in client.rw.message(&id, &message) {
            if !client.send(bytes).await {
                return StreamEnd::ClientGone;
            }
        }
        rounds.items.push(without_id(message_item(&id, &message)));
        let upstream_id = last.get("id").cloned();
        if let Some(object) = last.as_object_mut() {
            object.insert("status".into(), json!("completed"));
        }
        let view = client.rw.final_response(&last);
        self.remember_response(caller, upstream_id.as_ref(), rounds, pending, &view);
        let bytes = client.rw.final_event("response.completed", view);
        client.end(bytes, StreamEnd::Completed).await
    }

    /// Reads one round's stream to its terminal event, sending the client what it
    /// may see and deciding each call as it completes. Returns the terminal
    /// event, the outputs of the handled calls and how many were relayed.
    async fn responses_round<E: EventSource>(
        &self,
        client: &mut Client<'_>,
        caller: &Caller,
        request_id: &str,
        events: &mut E,
        round: u32,
    ) -> Result<(Terminal, Vec<Value>, usize), StreamEnd> {
        let mut handled = Vec::new();
        let mut relayed = 0;
        loop {
            if let Err(error) = events.hold(client.rw.held_bytes()) {
                return Err(client.fail_as(error.code(), &error.to_string()).await);
            }
            let Some(next) = events.next_event().await else {
                break;
            };
            let raw = match next {
                Ok(raw) => raw,
                Err(message) => return Err(client.fail(&message).await),
            };
            let Some(event) = crate::proxy::sse::parse_event(&raw) else {
                // Comments and keep-alives.
                if !client.send(raw).await {
                    return Err(StreamEnd::ClientGone);
                }
                continue;
            };
            if event.data.is_empty() || event.data.trim() == "[DONE]" {
                continue;
            }
            let Some(data) = EventData::read(event.data.into_owned()) else {
                return Err(client
                    .fail("the upstream sent an event tollgate cannot read")
                    .await);
            };
            let mut work: VecDeque<StreamOutput> = client.rw.push(raw, data).into();
            while let Some(step) = work.pop_front() {
                match step {
                    StreamOutput::Emit(bytes) => {
                        if !client.send(bytes).await {
                            return Err(StreamEnd::ClientGone);
                        }
                    }
                    StreamOutput::End(terminal) => return Ok((*terminal, handled, relayed)),
                    StreamOutput::Decide(call) => {
                        let settled = self
                            .settle(
                                caller,
                                request_id,
                                pending(&call),
                                round,
                                Surface::Responses,
                                Grouping::MayWait,
                            )
                            .await;
                        match settled {
                            Ok(Settled::Relay) => {
                                relayed += 1;
                                work.extend(client.rw.decided(&call, true));
                            }
                            Ok(Settled::Handled(text)) => {
                                handled.push(output_item(&call, &text));
                                work.extend(client.rw.decided(&call, false));
                            }
                            Err(error) => return Err(client.fail(&from_error(&error)).await),
                        }
                    }
                }
            }
        }
        let message = if client.rw.call_open() {
            "the upstream stream ended in the middle of a tool call"
        } else {
            "the upstream stream ended before the response was complete"
        };
        Err(client.fail(message).await)
    }
}

/// The client side of a governed Responses stream.
struct Client<'a> {
    rw: StreamRewriter,
    out: &'a mpsc::Sender<Bytes>,
}

impl Client<'_> {
    async fn send(&self, bytes: Bytes) -> bool {
        self.out.send(bytes).await.is_ok()
    }

    async fn end(&self, bytes: Bytes, end: StreamEnd) -> StreamEnd {
        if self.send(bytes).await {
            end
        } else {
            StreamEnd::ClientGone
        }
    }

    /// Ends the stream with `response.failed`.
    async fn fail(&mut self, message: &str) -> StreamEnd {
        self.fail_as("upstream_stream_interrupted", message).await
    }

    /// Ends the stream with `response.failed` of this error code.
    async fn fail_as(&mut self, code: &str, message: &str) -> StreamEnd {
        let bytes = self.rw.failed(code, message);
        self.end(bytes, StreamEnd::Failed(message.to_owned())).await
    }
}

/// What identifies the client's response: the first round's id, creation time
/// and `previous_response_id`.
fn envelope_of(response: &Value) -> Value {
    let mut envelope = serde_json::Map::new();
    for key in ["id", "created_at", "previous_response_id"] {
        if let Some(value) = response.get(key) {
            envelope.insert(key.into(), value.clone());
        }
    }
    Value::Object(envelope)
}

fn is_incomplete(response: &Value) -> bool {
    response.get("status").and_then(Value::as_str) == Some("incomplete")
}

fn without_id(mut item: Value) -> Value {
    if let Some(object) = item.as_object_mut() {
        object.remove("id");
        object.remove("status");
    }
    item
}

fn failure_message(response: &Value) -> String {
    response
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("the upstream response failed")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn remembered() -> ResponsesTurn {
        ResponsesTurn {
            agent_id: "agent-1".into(),
            upstream_id: Some("resp_2".into()),
            items: vec![
                json!({"type": "reasoning", "id": "rs_1", "encrypted_content": "opaque"}),
                json!({"type": "function_call", "id": "fc_1", "call_id": "call_gov", "name": "w", "arguments": "{}"}),
                json!({"type": "function_call", "id": "fc_2", "call_id": "call_client", "name": "c", "arguments": "{}"}),
                json!({"type": "function_call_output", "call_id": "call_gov", "output": "18C"}),
            ],
            pending: vec![
                json!({"type": "function_call_output", "call_id": "call_gov", "output": "18C"}),
            ],
            view: json!({"id": "resp_1", "object": "response", "output": [
                {"type": "reasoning", "id": "rs_1", "encrypted_content": "opaque"},
                {"type": "function_call", "id": "fc_2", "call_id": "call_client", "name": "c", "arguments": "{}"},
            ]}),
        }
    }

    fn store() -> SpliceStore<ResponsesTurn> {
        let store = SpliceStore::new(8, 1 << 20, Duration::from_secs(60));
        let turn = remembered();
        store.remember(turn.keys(), turn, Instant::now());
        store
    }

    #[test]
    fn replayed_items_get_the_hidden_call_and_its_output_back() {
        let store = store();
        let mut input = vec![
            json!({"role": "user", "content": "q"}),
            json!({"type": "reasoning", "id": "rs_1", "encrypted_content": "opaque"}),
            json!({"type": "function_call", "call_id": "call_client", "name": "c", "arguments": "{}"}),
            json!({"type": "function_call_output", "call_id": "call_client", "output": "done"}),
        ];
        let before = input.clone();
        let mut other = before.clone();
        assert_eq!(
            splice_responses(&mut other, &store, Instant::now(), None, "agent-2"),
            0,
            "another agent's request is never completed with this response"
        );
        assert_eq!(other, before);
        assert_eq!(
            splice_responses(&mut input, &store, Instant::now(), None, "agent-1"),
            1
        );
        let kinds: Vec<(&str, &str)> = input
            .iter()
            .map(|i| {
                (
                    i["type"].as_str().unwrap_or("message"),
                    i["call_id"].as_str().or(i["id"].as_str()).unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("message", ""),
                ("reasoning", "rs_1"),
                ("function_call", "call_gov"),
                ("function_call", "call_client"),
                ("function_call_output", "call_gov"),
                ("function_call_output", "call_client"),
            ]
        );
    }

    #[test]
    fn a_request_without_remembered_items_is_left_alone() {
        let store = store();
        let mut input = vec![json!({"role": "user", "content": "q", "id": "msg_other"})];
        let before = input.clone();
        assert_eq!(
            splice_responses(&mut input, &store, Instant::now(), None, "agent-1"),
            0
        );
        assert_eq!(input, before);
    }
}
