//! The governed Chat Completions turn loop (SPEC section 2), plain and streaming.
//!
//! [`Governance`] holds what deciding needs (kernel, receipt log, governed tools,
//! splice store) and runs the loop against an upstream given as a function, so
//! that the HTTP side ([`crate::proxy::govern`]) and the tests can drive it alike.
//! Every call in a model turn is decided and receipted before anything happens to
//! it; handled calls (governed, denied, pending) are answered here and the
//! conversation goes upstream again; relayed calls go to the client with the
//! handled ones removed and remembered for the splice.
//!
//! A response without tool calls leaves unchanged: the plain loop says the first
//! upstream answer is final, and the stream driver forwards the upstream's own
//! event bytes until the first tool call appears.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::request::ClientRequest;
use super::responses::ResponsesTurn;
use super::{SpliceError, SpliceStore, Surface, Turn, refusal_output, splice_chat};
use crate::adapter::chat::{
    self as adapter, AdapterError, GovernedTool, RoundEnd, StreamOutput, StreamRewriter, add_usage,
    chunk_shape, function_message, inject_tools, tool_calls, tool_message, without_calls,
};
use crate::adapter::refuse_name_clash;
use crate::error::ProxyError;
use crate::kernel::capability::Scope;
use crate::kernel::policy::Policy;
use crate::kernel::{Call, Kernel, Now, Outcome};
use crate::receipt::{ActionRecord, Draft, DraftContext, Grouping, LogError, Reason, ReceiptLog};
use crate::tools::http::HttpTool;

/// Tunables of the loop.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Most upstream rounds per client request.
    pub max_rounds: u32,
    /// This gateway's id, in receipts.
    pub server_id: String,
    /// Most remembered turns awaiting the client's results.
    pub splice_turns: usize,
    /// Most bytes of remembered turns (their estimated size in memory).
    pub splice_bytes: usize,
    /// How long a remembered turn is kept.
    pub splice_ttl: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_rounds: crate::config::DEFAULT_MAX_ROUNDS,
            server_id: "tollgate".into(),
            splice_turns: crate::config::DEFAULT_REMEMBER_TURNS,
            splice_bytes: crate::config::DEFAULT_REMEMBER_BYTES,
            splice_ttl: crate::config::DEFAULT_REMEMBER_FOR,
        }
    }
}

/// Everything the loop needs besides the upstream.
#[derive(Debug)]
pub struct Governance {
    kernel: RwLock<Arc<Kernel>>,
    receipts: ReceiptLog,
    tools: Vec<HttpTool>,
    splice: SpliceStore,
    pub(super) responses: SpliceStore<ResponsesTurn>,
    settings: Settings,
    http: reqwest::Client,
}

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The agent id.
    pub agent_id: String,
    /// The capability scope, in tokens mode.
    pub scope: Option<Scope>,
}

/// Why a request could not be governed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GovernError {
    /// The request is not acceptable.
    #[error(transparent)]
    Request(#[from] AdapterError),
    /// The conversation cannot be completed.
    #[error(transparent)]
    Splice(#[from] SpliceError),
    /// A receipt could not be made durable; nothing took effect.
    #[error(transparent)]
    Receipts(#[from] LogError),
    /// The upstream answered with an error status (status, parsed body).
    #[error("upstream answered {0}")]
    Upstream(u16, Value),
    /// The upstream could not be used (unreachable, timed out, unreadable).
    #[error(transparent)]
    Relay(#[from] ProxyError),
}

/// The end of a plain loop.
#[derive(Debug)]
pub struct Finished {
    /// The response for the client.
    pub response: Value,
    /// False when the response is the first upstream answer, unchanged, which the
    /// caller may then send with its original bytes.
    pub rewritten: bool,
}

/// One raw server-sent event at a time, from an upstream stream.
pub trait EventSource: Send {
    /// The next whole event (its bytes as received, blank line included); `None`
    /// at a clean end; an error (with a message for the client) when the stream
    /// broke.
    fn next_event(&mut self) -> impl Future<Output = Option<Result<Bytes, String>>> + Send;

    /// Told, between events, how many bytes the stream's rewriting holds for the
    /// round so far (text, calls, events queued behind a call); an error ends the
    /// stream with an error event of its type, code and message, and nothing held
    /// is released. The default holds without limit.
    fn hold(&mut self, bytes: usize) -> Result<(), ProxyError> {
        let _ = bytes;
        Ok(())
    }
}

/// How a governed stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// One final finish and `[DONE]` were sent.
    Completed,
    /// An error event was sent (the message).
    Failed(String),
    /// The client went away.
    ClientGone,
}

/// What happens to one decided call.
pub(super) enum Settled {
    /// Goes to the client.
    Relay,
    /// Answered here, with this output.
    Handled(String),
}

/// One call to decide, in any surface's form.
pub(super) struct Pending<'a> {
    pub(super) id: &'a str,
    pub(super) name: &'a str,
    pub(super) arguments: &'a str,
    pub(super) custom: bool,
}

/// What a failed round tells the client.
pub(super) fn from_error(error: &GovernError) -> String {
    match error {
        GovernError::Upstream(status, body) => body
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map_or_else(
                || format!("the upstream answered {status}"),
                |m| format!("the upstream answered {status}: {m}"),
            ),
        other => other.to_string(),
    }
}

impl Governance {
    /// A loop deciding with `kernel`, writing to `receipts`, hosting `tools`.
    pub fn new(
        kernel: Kernel,
        receipts: ReceiptLog,
        tools: Vec<HttpTool>,
        settings: Settings,
    ) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| format!("the HTTP client for governed tools: {e}"))?;
        Ok(Self {
            kernel: RwLock::new(Arc::new(kernel)),
            receipts,
            tools,
            splice: SpliceStore::new(
                settings.splice_turns,
                settings.splice_bytes,
                settings.splice_ttl,
            ),
            responses: SpliceStore::new(
                settings.splice_turns,
                settings.splice_bytes,
                settings.splice_ttl,
            ),
            settings,
            http,
        })
    }

    /// The kernel deciding now.
    pub fn kernel(&self) -> Arc<Kernel> {
        match self.kernel.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Decides with `policy` from now on, keeping velocity counts and approval
    /// requests. Calls being decided finish under the policy they started with.
    pub fn replace_policy(&self, policy: Policy) {
        let next = Arc::new(self.kernel().with_policy(policy));
        match self.kernel.write() {
            Ok(mut k) => *k = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
    }

    /// The receipt log.
    pub fn receipts(&self) -> &ReceiptLog {
        &self.receipts
    }

    /// The governed tools.
    pub fn tools(&self) -> &[HttpTool] {
        &self.tools
    }

    /// The governed tools' names. No client tool may carry one
    /// ([`adapter::refuse_name_clash`]), so a function tool of such a name in a
    /// request tollgate sent is one it added.
    pub fn tool_names(&self) -> Vec<String> {
        self.tools.iter().map(|t| t.spec().name.clone()).collect()
    }

    /// Remembered turns.
    pub fn splice(&self) -> &SpliceStore {
        &self.splice
    }

    /// The loop's settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub(super) fn governed(&self, name: &str) -> Option<&HttpTool> {
        self.tools.iter().find(|t| t.spec().name == name)
    }

    /// Whether a request offers the model tools of its own while governed tools
    /// are configured: then a client tool must not share a governed tool's name,
    /// whether or not this caller may see that tool (a call by the name would be
    /// taken for the governed tool's).
    pub(super) fn names_a_tool(&self, request: &ClientRequest) -> bool {
        let head = request.head();
        !self.tools.is_empty() && (head.callable_tools || head.functions)
    }

    /// The governed tools this caller may see.
    pub fn visible_tools(&self, caller: &Caller) -> Vec<GovernedTool> {
        self.tools
            .iter()
            .filter(|t| {
                caller
                    .scope
                    .as_ref()
                    .is_none_or(|s| s.allows(&t.spec().name))
            })
            .map(|t| t.spec().clone())
            .collect()
    }

    /// Readies a client's request: remembered turns spliced back into
    /// `messages`, governed tools added to `tools`. Returns whether governed
    /// tools were added. The request's tree is built only when the splice store
    /// holds a turn or there are tools to add; otherwise its bytes go upstream
    /// as they came.
    pub fn prepare(
        &self,
        caller: &Caller,
        request: &mut ClientRequest,
    ) -> Result<bool, GovernError> {
        // A request on the legacy `functions` API cannot also carry `tools`.
        let visible = if request.head().functions {
            Vec::new()
        } else {
            self.visible_tools(caller)
        };
        let clash_possible = self.names_a_tool(request);
        if visible.is_empty() && self.splice.is_empty() && !clash_possible {
            return Ok(false);
        }
        let tree = request.parsed()?;
        if clash_possible {
            refuse_name_clash(tree, |name| self.governed(name).is_some())?;
        }
        let mut changed = false;
        if let Some(messages) = tree.get_mut("messages").and_then(Value::as_array_mut) {
            changed |= splice_chat(messages, &self.splice, Instant::now(), &caller.agent_id)? > 0;
        }
        inject_tools(tree, &visible)?;
        changed |= !visible.is_empty();
        request.set_changed(changed);
        Ok(!visible.is_empty())
    }

    /// Decides one call, makes its receipt durable, then acts: a governed tool
    /// runs, a refusal becomes the model's tool output, a client call is relayed.
    /// `grouping` says whether its receipt may wait to share a sync (a call in a
    /// stream, whose client is already being answered).
    pub(super) async fn settle(
        &self,
        caller: &Caller,
        request_id: &str,
        call: Pending<'_>,
        round: u32,
        surface: Surface,
        grouping: Grouping,
    ) -> Result<Settled, GovernError> {
        let kernel = self.kernel();
        let governed = self.governed(call.name);
        // A custom tool's free-form input is inspected like any argument.
        let wrapped;
        let arguments = if call.custom {
            wrapped = json!({ "input": call.arguments }).to_string();
            wrapped.as_str()
        } else {
            call.arguments
        };
        let kernel_call = Call {
            agent_id: &caller.agent_id,
            scope: caller.scope.as_ref(),
            tool: call.name,
            arguments,
            has_side_effects: governed.is_none_or(HttpTool::has_side_effects),
        };
        let decision = kernel.decide(&kernel_call, Now::current());
        let route = if governed.is_some() {
            "governed"
        } else {
            "client"
        };
        let draft = Draft::from_decision(
            &decision,
            &kernel_call,
            call.id,
            DraftContext {
                server_id: &self.settings.server_id,
                request_id,
                surface: surface.name(),
                metadata: json!({"adapter": surface.adapter(), "route": route, "round": round}),
            },
        );
        // No receipt, no effect.
        let receipt = self.receipts.append_grouped(draft, grouping).await?;
        Ok(match (decision.outcome(), governed) {
            (Outcome::Allow, Some(tool)) => {
                let output = match serde_json::from_str::<Value>(call.arguments) {
                    Ok(args) => tool.call(&self.http, &args).await,
                    Err(e) => crate::tools::ToolOutput::error(
                        "invalid_arguments",
                        &format!("the arguments are not JSON: {e}"),
                    ),
                };
                Settled::Handled(output.text().to_owned())
            }
            (Outcome::Allow, None) => Settled::Relay,
            (_, _) => Settled::Handled(refusal_output(&decision, &receipt.receipt_id)),
        })
    }

    /// Records that the loop stopped at the round limit; returns the message the
    /// client gets.
    pub(super) async fn stop_at_max_rounds(
        &self,
        caller: &Caller,
        request_id: &str,
        surface: Surface,
    ) -> Result<String, GovernError> {
        let rounds = self.settings.max_rounds;
        let message = format!(
            "tollgate stopped this request after {rounds} rounds of tool calls without a final answer."
        );
        self.receipts
            .append(Draft {
                decision: "deny".into(),
                reason: Reason {
                    code: "max_rounds".into(),
                    message: message.clone(),
                    matched_rule: None,
                },
                server_id: self.settings.server_id.clone(),
                agent_id: caller.agent_id.clone(),
                request_id: request_id.to_owned(),
                surface: surface.name().into(),
                action: ActionRecord {
                    tool_name: String::new(),
                    tool_call_id: String::new(),
                    parameters: json!({}),
                    parameters_hash: String::new(),
                },
                policy_hash: self.kernel().policy().hash().to_owned(),
                metadata: json!({"adapter": surface.adapter(), "rounds": rounds}),
            })
            .await?;
        Ok(message)
    }

    /// Runs the plain loop on a prepared request: call upstream, decide every call,
    /// answer the handled ones, repeat while only handled calls come back.
    pub async fn run<F, Fut>(
        &self,
        caller: &Caller,
        request_id: &str,
        mut request: ClientRequest,
        mut upstream: F,
    ) -> Result<Finished, GovernError>
    where
        F: FnMut(Bytes) -> Fut,
        Fut: Future<Output = Result<Value, GovernError>>,
    {
        let now = Instant::now();
        let mut usage: Option<Value> = None;
        let mut last = Value::Null;
        for round in 0..self.settings.max_rounds {
            let response = upstream(request.body()).await?;
            if let Some(u) = response.get("usage").filter(|u| u.is_object()) {
                match &mut usage {
                    Some(total) => add_usage(total, u),
                    None => usage = Some(u.clone()),
                }
            }
            let calls = tool_calls(&response);
            if calls.is_empty() {
                if round == 0 {
                    return Ok(Finished {
                        response,
                        rewritten: false,
                    });
                }
                return Ok(Finished {
                    response: with_usage(response, usage),
                    rewritten: true,
                });
            }
            let mut handled: Vec<(String, String)> = Vec::new();
            let mut relayed: Vec<String> = Vec::new();
            for call in &calls {
                let pending = Pending {
                    id: &call.id,
                    name: &call.name,
                    arguments: &call.arguments,
                    custom: call.kind == adapter::CallKind::Custom,
                };
                match self
                    .settle(
                        caller,
                        request_id,
                        pending,
                        round,
                        Surface::Chat,
                        Grouping::Now,
                    )
                    .await?
                {
                    Settled::Relay => relayed.push(call.id.clone()),
                    Settled::Handled(output) => handled.push((call.id.clone(), output)),
                }
            }
            if !relayed.is_empty() && handled.is_empty() && round == 0 {
                // Every call goes to the client: the answer leaves as it came.
                return Ok(Finished {
                    response,
                    rewritten: false,
                });
            }
            if !relayed.is_empty() {
                if !handled.is_empty()
                    && let Some(assistant) = adapter::assistant_message(&response, 0)
                {
                    self.splice.remember(
                        relayed.clone(),
                        Turn {
                            agent_id: caller.agent_id.clone(),
                            assistant,
                            handled: handled.clone(),
                            relayed,
                        },
                        now,
                    );
                }
                let ids: Vec<String> = handled.into_iter().map(|(id, _)| id).collect();
                return Ok(Finished {
                    response: with_usage(without_calls(&response, &ids), usage),
                    rewritten: true,
                });
            }
            // Only handled calls: answer them and go round again.
            let tree = request.edit()?;
            if let (Some(assistant), Some(messages)) = (
                adapter::assistant_message(&response, 0),
                tree.get_mut("messages").and_then(Value::as_array_mut),
            ) {
                answer_turn(messages, assistant, &handled);
            }
            adapter::relax_tool_choice(tree);
            last = response;
        }
        // Out of rounds: say so, and record it.
        let message = self
            .stop_at_max_rounds(caller, request_id, Surface::Chat)
            .await?;
        let mut final_response = last;
        if let Some(choice) = final_response.pointer_mut("/choices/0") {
            choice["message"] = json!({"role": "assistant", "content": message, "refusal": null});
            choice["finish_reason"] = json!("stop");
        }
        Ok(Finished {
            response: with_usage(final_response, usage),
            rewritten: true,
        })
    }

    /// Runs the streaming loop on a prepared request whose first upstream stream
    /// is `first`, writing the client's stream to `out`. Later rounds are asked
    /// of `upstream`. Never leaves the client without an end: one finish and
    /// `[DONE]`, or an error event.
    pub async fn run_stream<F, Fut, E>(
        &self,
        caller: &Caller,
        request_id: &str,
        mut request: ClientRequest,
        first: E,
        mut upstream: F,
        out: &mpsc::Sender<Bytes>,
    ) -> StreamEnd
    where
        F: FnMut(Bytes) -> Fut,
        Fut: Future<Output = Result<E, GovernError>>,
        E: EventSource,
    {
        let include_usage = request.head().include_usage;
        let mut driver = Driver {
            rw: StreamRewriter::new(),
            out,
            include_usage,
        };
        let mut events = first;
        for round in 0..self.settings.max_rounds {
            let end = match self
                .stream_round(&mut driver, caller, request_id, &mut events, round)
                .await
            {
                Ok(RoundResult::Done(end)) => end,
                Ok(RoundResult::Passed) => return StreamEnd::Completed,
                Err(end) => return end,
            };
            if end.relayed > 0 || end.handled.is_empty() {
                return driver.finish(&end).await;
            }
            // Only handled calls: answer them and go round again.
            if round + 1 == self.settings.max_rounds {
                break;
            }
            let tree = match request.edit() {
                Ok(tree) => tree,
                Err(error) => return driver.fail(&from_error(&error.into())).await,
            };
            if let Some(messages) = tree.get_mut("messages").and_then(Value::as_array_mut) {
                answer_turn(messages, end.assistant.clone(), &end.handled);
            }
            adapter::relax_tool_choice(tree);
            events = match upstream(request.body()).await {
                Ok(next) => next,
                Err(error) => return driver.fail(&from_error(&error)).await,
            };
        }
        let message = match self
            .stop_at_max_rounds(caller, request_id, Surface::Chat)
            .await
        {
            Ok(m) => m,
            Err(error) => return driver.fail(&from_error(&error)).await,
        };
        let chunk = driver.rw.text(&message);
        if !driver.send_chunk(&chunk).await {
            return StreamEnd::ClientGone;
        }
        let end = driver.rw.end_round();
        driver
            .finish(&RoundEnd {
                finish_reason: Some("stop".into()),
                ..end
            })
            .await
    }

    async fn stream_round<E: EventSource>(
        &self,
        driver: &mut Driver<'_>,
        caller: &Caller,
        request_id: &str,
        events: &mut E,
        round: u32,
    ) -> Result<RoundResult, StreamEnd> {
        // Round 0 passes the upstream's own bytes until a tool call shows up; the
        // finish and usage events are held back in case one still does.
        let mut transparent = round == 0;
        let mut held: Vec<Bytes> = Vec::new();
        let mut relayed: Vec<String> = Vec::new();
        let mut clean_end = false;
        loop {
            let holding = driver.rw.held_bytes() + held.iter().map(Bytes::len).sum::<usize>();
            if let Err(error) = events.hold(holding) {
                return Err(driver
                    .fail_as(error.error_type(), error.code(), &error.to_string())
                    .await);
            }
            let Some(next) = events.next_event().await else {
                break;
            };
            let raw = match next {
                Ok(raw) => raw,
                Err(message) => return Err(driver.fail(&message).await),
            };
            let Some(event) = crate::proxy::sse::parse_event(&raw) else {
                // Comments and keep-alives.
                if !driver.send(raw).await {
                    return Err(StreamEnd::ClientGone);
                }
                continue;
            };
            if event.data.is_empty() {
                continue;
            }
            if event.data.trim() == "[DONE]" {
                if transparent {
                    held.push(raw);
                }
                clean_end = true;
                break;
            }
            if transparent {
                // Read only the chunk's shape: one without a call leaves as it came.
                match chunk_shape(&event.data) {
                    Some(shape) if !shape.call && !shape.error => {
                        // The pieces out share the event's bytes, which `event`
                        // still reads.
                        if shape.tail {
                            held.push(raw.clone());
                        } else {
                            for piece in held.drain(..).chain(std::iter::once(raw.clone())) {
                                if !driver.send(piece).await {
                                    return Err(StreamEnd::ClientGone);
                                }
                            }
                        }
                        // The rewriter learns what passed (text, role, envelope),
                        // in case a call comes later in the round.
                        let first = if driver.rw.has_envelope() {
                            None
                        } else {
                            serde_json::from_str::<Value>(&event.data).ok()
                        };
                        driver.rw.passed(first.as_ref(), &shape);
                        continue;
                    }
                    _ => {
                        // A call: from here the round is rewritten.
                        transparent = false;
                        held.clear();
                    }
                }
            }
            // A call's fragments, its finish and the usage are read straight from
            // the text; anything else is parsed in full.
            let outputs = match driver.rw.push_text(&event.data) {
                Some(outputs) => outputs,
                None => {
                    let chunk: Value = match serde_json::from_str(&event.data) {
                        Ok(v) => v,
                        Err(_) => {
                            return Err(driver
                                .fail("the upstream sent an event tollgate cannot read")
                                .await);
                        }
                    };
                    if chunk.get("error").is_some() {
                        // The upstream's own error event ends the stream as it is.
                        let end = StreamEnd::Failed(from_error(&GovernError::Upstream(200, chunk)));
                        return Err(if driver.send(raw).await {
                            end
                        } else {
                            StreamEnd::ClientGone
                        });
                    }
                    driver.rw.push(&chunk)
                }
            };
            for output in outputs {
                match output {
                    StreamOutput::Emit(chunk) => {
                        if !driver.send_chunk(&chunk).await {
                            return Err(StreamEnd::ClientGone);
                        }
                    }
                    StreamOutput::Decide(call) => {
                        let pending = Pending {
                            id: &call.id,
                            name: &call.name,
                            arguments: &call.arguments,
                            custom: call.kind == "custom",
                        };
                        match self
                            .settle(
                                caller,
                                request_id,
                                pending,
                                round,
                                Surface::Chat,
                                Grouping::MayWait,
                            )
                            .await
                        {
                            Ok(Settled::Relay) => {
                                relayed.push(call.id.clone());
                                let chunk = driver.rw.relay(&call);
                                if !driver.send_chunk(&chunk).await {
                                    return Err(StreamEnd::ClientGone);
                                }
                            }
                            Ok(Settled::Handled(output)) => driver.rw.handle(&call.id, &output),
                            Err(error) => return Err(driver.fail(&from_error(&error)).await),
                        }
                    }
                }
            }
        }
        if !clean_end && driver.rw.call_open() {
            // Cut off inside a tool call: it is never released.
            return Err(driver
                .fail("the upstream stream ended in the middle of a tool call")
                .await);
        }
        if transparent {
            // No tool call at all: the upstream's own ending.
            for piece in held {
                if !driver.send(piece).await {
                    return Err(StreamEnd::ClientGone);
                }
            }
            return Ok(RoundResult::Passed);
        }
        let end = driver.rw.end_round();
        if !relayed.is_empty() && !end.handled.is_empty() {
            self.splice.remember(
                relayed.clone(),
                Turn {
                    agent_id: caller.agent_id.clone(),
                    assistant: end.assistant.clone(),
                    handled: end.handled.clone(),
                    relayed,
                },
                Instant::now(),
            );
        }
        Ok(RoundResult::Done(end))
    }
}

enum RoundResult {
    /// The round had no tool call and was passed through, ending included.
    Passed,
    /// The round ended; the loop decides what comes next.
    Done(RoundEnd),
}

/// The client side of a governed stream.
struct Driver<'a> {
    rw: StreamRewriter,
    out: &'a mpsc::Sender<Bytes>,
    include_usage: bool,
}

impl Driver<'_> {
    async fn send(&self, bytes: Bytes) -> bool {
        self.out.send(bytes).await.is_ok()
    }

    /// Sends one chunk (JSON text) as an event.
    async fn send_chunk(&self, chunk: &str) -> bool {
        self.send(Bytes::from(format!("data: {chunk}\n\n"))).await
    }

    /// Sends the closing events together, in one write.
    async fn finish(&self, end: &RoundEnd) -> StreamEnd {
        let mut events = String::new();
        for line in self.rw.finish(end, self.include_usage) {
            events.push_str("data: ");
            events.push_str(&line);
            events.push_str("\n\n");
        }
        if self.send(Bytes::from(events)).await {
            StreamEnd::Completed
        } else {
            StreamEnd::ClientGone
        }
    }

    async fn fail(&self, message: &str) -> StreamEnd {
        self.fail_as("upstream_error", "upstream_stream_interrupted", message)
            .await
    }

    async fn fail_as(&self, kind: &str, code: &str, message: &str) -> StreamEnd {
        let event = json!({"error": {
            "message": message,
            "type": kind,
            "param": null,
            "code": code,
        }});
        if self.send(Bytes::from(format!("data: {event}\n\n"))).await {
            StreamEnd::Failed(message.to_owned())
        } else {
            StreamEnd::ClientGone
        }
    }
}

/// Continues a conversation with an assistant turn and the answers to its
/// handled calls: tool messages, or the function message of a legacy
/// `function_call` (which has no id).
fn answer_turn(messages: &mut Vec<Value>, assistant: Value, handled: &[(String, String)]) {
    let legacy = assistant
        .pointer("/function_call/name")
        .and_then(Value::as_str)
        .map(str::to_owned);
    messages.push(assistant);
    for (id, output) in handled {
        match &legacy {
            Some(name) if id.is_empty() => messages.push(function_message(name, output)),
            _ => messages.push(tool_message(id, output)),
        }
    }
}

fn with_usage(mut response: Value, usage: Option<Value>) -> Value {
    if let (Some(u), Some(obj)) = (usage, response.as_object_mut()) {
        obj.insert("usage".into(), u);
    }
    response
}
