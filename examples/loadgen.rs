//! The benchmark load generator: drives one workload against one base URL and
//! prints one JSON object of results.
//!
//! - `--mode rate --rate R`: open loop. Request `i` is due at `start + i/R`
//!   whatever happened to earlier ones, and its latency and its time to first
//!   byte are measured from when it was due, not from when it was sent, so a
//!   stalled server is not hidden by a stalled generator (coordinated omission). With `--arrivals poisson` the
//!   same number of requests is due at random times instead (a Poisson process
//!   given its count: uniform, sorted; seeded by `--seed`, so every system meets
//!   the same schedule): on streams whose events come 10 ms apart, an even
//!   schedule makes every stream that began a whole number of 10 ms earlier send
//!   its event at the same instant, a burst each millisecond that no real traffic
//!   lines up.
//! - `--mode max --conns C`: closed loop, `C` connections each sending its next
//!   request as soon as the previous response ends: maximum throughput.
//!
//! Workloads, each on Chat Completions (`chat-`) and on the Responses API
//! (`responses-`), every answer ending with one tool call to `get_weather` (the
//! header `x-mock-tool-call: 1`), which a governing proxy decides:
//! - `tools-7k`: a 7 KiB request declaring eight tools, a JSON answer;
//! - `100k`: a 100 KiB request (forty earlier turns), a JSON answer;
//! - `sse-0` and `sse-50`: the 7 KiB request streamed, 20 events 10 ms apart,
//!   the first after 0 or 50 ms (`x-mock-first-ms`, `x-mock-interval-ms`).
//!
//! For streams, time to first byte, the time from the first to the last byte,
//! and the number of events are recorded too. A response that is not 200, a Chat
//! stream that does not end with `[DONE]`, a Responses stream without
//! `response.completed`, a response whose body does not carry the call
//! (`"name":"get_weather"`), or no complete answer within `--timeout`, is an
//! error: a proxy that governs the call must also relay it.
//!
//! Before measuring, 50 requests (10 at a time) warm the connections. In rate
//! mode, `--warmup D` also runs the schedule at the rate for `D` first: requests
//! due then are sent like the rest but not measured, so the measured ones meet
//! the steady state of the rate (at 1,000 streams a second, some 200 streams in
//! flight and as many connections open) instead of the first fifth of a second's
//! build-up of connections, which a proxy in steady use does not go through.
//!
//! The output counts the warm-up requests that succeeded (`warmup_ok`) and failed
//! (`warmup_errors`) besides the measured ones, so that a caller can tell how many
//! tool calls a proxy saw.
//!
//! `--trace FILE` (rate mode) writes one CSV line per answered request: when it was
//! due after the schedule's start, how late it left, its first byte after it left,
//! and its latency, all in microseconds, after a comment line giving the schedule's start
//! by the wall clock and the monotonic clock (to line it up with `perf` records).
//! It shows whether slow requests come alone or together, as behind a stall.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

struct Args {
    url: String,
    mode: String,
    workload: String,
    rate: u64,
    conns: usize,
    duration: Duration,
    timeout: Duration,
    /// Where to write one line per measured request (rate mode), if anywhere.
    trace: Option<String>,
    /// Rate mode: how long the schedule runs at the rate before the measured
    /// requests, whose answers are counted as warm-up and not measured.
    warmup: Duration,
    /// Rate mode: `uniform` (request `i` due at `i/R`) or `poisson`.
    arrivals: String,
    /// The seed of the `poisson` schedule.
    seed: u64,
}

fn parse_args() -> Args {
    let mut args = Args {
        url: String::new(),
        mode: "rate".into(),
        workload: "chat-tools-7k".into(),
        rate: 1000,
        conns: 32,
        duration: Duration::from_secs(5),
        timeout: Duration::from_secs(10),
        trace: None,
        warmup: Duration::ZERO,
        arrivals: "uniform".into(),
        seed: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => args.url = value,
            "--mode" => args.mode = value,
            "--workload" => args.workload = value,
            "--rate" => args.rate = value.parse().unwrap(),
            "--conns" => args.conns = value.parse().unwrap(),
            "--duration" => args.duration = humantime::parse_duration(&value).unwrap(),
            "--timeout" => args.timeout = humantime::parse_duration(&value).unwrap(),
            "--trace" => args.trace = Some(value),
            "--warmup" => args.warmup = humantime::parse_duration(&value).unwrap(),
            "--arrivals" => args.arrivals = value,
            "--seed" => args.seed = value.parse().unwrap(),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(!args.url.is_empty(), "--url is required");
    assert!(
        ["uniform", "poisson"].contains(&args.arrivals.as_str()),
        "--arrivals is uniform or poisson"
    );
    args
}

/// The eight tools every workload's request declares, `get_weather` first: the
/// mock's tool call names it.
fn tools() -> Vec<(&'static str, &'static str, serde_json::Value)> {
    let city = json!({"type": "string", "description": "City name, optionally with its country, e.g. \"Paris, FR\""});
    vec![
        (
            "get_weather",
            "Current weather conditions for a city: temperature, wind, humidity and a short summary.",
            json!({"city": city, "units": {"type": "string", "enum": ["metric", "imperial"], "description": "Unit system"}}),
        ),
        (
            "get_forecast",
            "Hourly and daily forecast for a city for up to ten days ahead.",
            json!({"city": city, "days": {"type": "integer", "minimum": 1, "maximum": 10, "description": "Days ahead"}}),
        ),
        (
            "search_flights",
            "Search scheduled flights between two airports on a date, cheapest first.",
            json!({"from": {"type": "string", "description": "IATA code of the departure airport"},
                "to": {"type": "string", "description": "IATA code of the arrival airport"},
                "date": {"type": "string", "format": "date", "description": "Departure date, YYYY-MM-DD"}}),
        ),
        (
            "book_hotel",
            "Book a hotel room for the given nights; returns a confirmation number.",
            json!({"hotel_id": {"type": "string", "description": "Identifier from search_hotels"},
                "check_in": {"type": "string", "format": "date"}, "nights": {"type": "integer", "minimum": 1}}),
        ),
        (
            "search_hotels",
            "Find hotels in a city with availability for the given dates and guests.",
            json!({"city": city, "check_in": {"type": "string", "format": "date"},
                "guests": {"type": "integer", "minimum": 1, "maximum": 8}}),
        ),
        (
            "convert_currency",
            "Convert an amount between two currencies at today's reference rate.",
            json!({"amount": {"type": "number"}, "from": {"type": "string", "description": "ISO 4217 code"},
                "to": {"type": "string", "description": "ISO 4217 code"}}),
        ),
        (
            "send_email",
            "Send an email on the user's behalf to one recipient, plain text only.",
            json!({"to": {"type": "string", "format": "email"}, "subject": {"type": "string"},
                "body": {"type": "string", "description": "Plain text body"}}),
        ),
        (
            "create_calendar_event",
            "Create an event in the user's primary calendar and invite attendees.",
            json!({"title": {"type": "string"}, "start": {"type": "string", "format": "date-time"},
                "duration_minutes": {"type": "integer", "minimum": 5},
                "attendees": {"type": "array", "items": {"type": "string", "format": "email"}}}),
        ),
    ]
}

/// A passage of prose used to grow a conversation to its target size.
const PROSE: &str = "The itinerary so far covers three cities over nine days, with trains between them and one \
    flight home. The traveller prefers small hotels near the old town, walks most places, and wants the \
    evenings free. Budget matters less than quiet rooms. Weather decides what each day holds: museums when \
    it rains, the coast and the hills when it does not. ";

/// `n` bytes of prose (ASCII, nothing JSON escapes).
fn prose(n: usize) -> String {
    PROSE.chars().cycle().take(n).collect()
}

/// The model every request names.
const MODEL: &str = "gpt-4o-mini";

/// A request of `size` bytes, within a few bytes: the eight tools, a developer
/// message, `turns` earlier user and assistant messages sharing the prose that
/// brings it to its size, and the question.
fn request_body(responses: bool, stream: bool, size: usize, turns: usize) -> Bytes {
    let build = |fill: usize| {
        let tools: Vec<serde_json::Value> = tools()
            .into_iter()
            .map(|(name, about, properties)| {
                let required: Vec<&String> = properties.as_object().unwrap().keys().collect();
                let parameters =
                    json!({"type": "object", "properties": properties, "required": required});
                if responses {
                    json!({"type": "function", "name": name, "description": about,
                        "parameters": parameters, "strict": false})
                } else {
                    json!({"type": "function", "function": {"name": name, "description": about,
                        "parameters": parameters}})
                }
            })
            .collect();
        let mut messages = Vec::new();
        let developer = "You are a travel assistant. Answer briefly and precisely; use the tools for \
            anything that depends on today's data, and never book or send anything without asking.";
        if !responses {
            messages.push(json!({"role": "developer", "content": developer}));
        }
        let share = fill / turns.max(1);
        for i in 0..turns.max(1) {
            let text = prose(if i + 1 == turns.max(1) {
                fill - share * i
            } else {
                share
            });
            let role = if turns == 0 || i % 2 == 0 {
                "user"
            } else {
                "assistant"
            };
            if turns > 0 || !text.is_empty() {
                messages.push(json!({"role": role, "content": text}));
            }
        }
        messages.push(json!({"role": "user",
            "content": "What is the weather in Paris today, and should I bring an umbrella for the afternoon?"}));
        // A model the gateways know by name, as an agent's would be: LiteLLM fakes a
        // Responses stream (asks the upstream for the whole answer, then replays it
        // as events) for a model missing from its model map.
        let mut body = if responses {
            json!({"model": MODEL, "instructions": developer, "input": messages})
        } else {
            json!({"model": MODEL, "messages": messages})
        };
        body["tools"] = json!(tools);
        body["temperature"] = json!(0.2);
        body["stream"] = json!(stream);
        if stream && !responses {
            body["stream_options"] = json!({"include_usage": true});
        }
        body.to_string()
    };
    let bare = build(0).len();
    let body = build(size.saturating_sub(bare + 2));
    Bytes::from(body)
}

#[derive(Default)]
struct Outcome {
    ok: u64,
    errors: u64,
    /// The first few distinct error messages, with their counts.
    kinds: std::collections::BTreeMap<String, u64>,
}

impl Outcome {
    fn error(&mut self, message: String) {
        self.errors += 1;
        if self.kinds.len() < 8 || self.kinds.contains_key(&message) {
            *self.kinds.entry(message).or_default() += 1;
        }
    }
}

/// What the workload sends. Every answer ends with one tool call
/// (`get_weather`), which a governing proxy decides.
#[derive(Clone, Copy)]
struct Workload {
    /// `POST /v1/responses` rather than `/v1/chat/completions`.
    responses: bool,
    stream: bool,
    /// Request size in bytes.
    size: usize,
    /// Earlier user and assistant messages in the request.
    turns: usize,
    /// Pause before a stream's first event, then between events.
    first_ms: u64,
    interval_ms: u64,
}

/// Events in every stream, the tool call's and the terminal ones included.
const STREAM_EVENTS: u64 = 20;

impl Workload {
    /// `chat-` or `responses-`, then `tools-7k` (a 7 KiB request with eight tools,
    /// JSON answer), `100k` (a 100 KiB request, JSON answer), `sse-0` or `sse-50`
    /// (the 7 KiB request streamed: 20 events 10 ms apart, the first after 0 or
    /// 50 ms).
    fn parse(name: &str) -> Self {
        let (api, shape) = name
            .split_once('-')
            .unwrap_or_else(|| panic!("unknown workload {name}"));
        let responses = match api {
            "chat" => false,
            "responses" => true,
            _ => panic!("unknown workload {name}"),
        };
        let base = Self {
            responses,
            stream: false,
            size: 7 * 1024,
            turns: 0,
            first_ms: 0,
            interval_ms: 0,
        };
        match shape {
            "tools-7k" => base,
            "100k" => Self {
                size: 100 * 1024,
                turns: 40,
                ..base
            },
            "sse-0" | "sse-50" => Self {
                stream: true,
                first_ms: if shape == "sse-50" { 50 } else { 0 },
                interval_ms: 10,
                ..base
            },
            _ => panic!("unknown workload {name}"),
        }
    }

    /// Text deltas the mock sends so that, with the tool call and the
    /// stream's own events, there are `STREAM_EVENTS` in all.
    fn text_chunks(&self) -> u64 {
        // Chat: role chunk, the deltas, call opening, three argument
        // fragments, finish, usage, `[DONE]`. Responses: created, in_progress,
        // the message's added/part added, the deltas, text done/part
        // done/item done, the call's added, three argument deltas, done, item
        // done, completed.
        if self.responses {
            STREAM_EVENTS - 14
        } else {
            STREAM_EVENTS - 8
        }
    }
}

/// Requests in flight at once, at most, in the open loop: beyond, a due request
/// is counted as an error rather than sent (a server that far behind is saturated).
const MAX_IN_FLIGHT: usize = 4096;

/// The tool call the mock makes, as any compact JSON encoder writes its name.
const TOOL_CALL_MARK: &[u8] = br#""name":"get_weather""#;

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

struct Recorder {
    latency: Histogram<u64>,
    ttfb: Histogram<u64>,
    /// First to last byte of a stream.
    spread: Histogram<u64>,
    /// Events in the last stream.
    events: u64,
    outcome: Outcome,
    /// Per request, in rate mode: microseconds from the schedule's start to when
    /// it was due, from due to sent, to its first byte after being sent, and its
    /// latency.
    trace: Vec<[u64; 4]>,
    /// When the schedule started, by the wall clock.
    start_unix: std::time::SystemTime,
    start: Option<Instant>,
    /// Rate mode: the requests due in the warm-up, answered or not.
    warmup: Outcome,
}

impl Recorder {
    fn new() -> Self {
        Self {
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(),
            ttfb: Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(),
            spread: Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(),
            events: 0,
            outcome: Outcome::default(),
            trace: Vec::new(),
            start_unix: std::time::SystemTime::UNIX_EPOCH,
            start: None,
            warmup: Outcome::default(),
        }
    }

    /// One answer: `latency` and `ttfb` from when the request was due (open
    /// loop) or sent (closed loop).
    fn record(&mut self, latency: Duration, ttfb: Duration, timing: &Timing) {
        self.outcome.ok += 1;
        let _ = self.latency.record(micros(latency));
        let _ = self.ttfb.record(micros(ttfb));
        let _ = self.spread.record(micros(timing.spread));
        self.events = timing.events;
    }
}

/// When a response's bytes came.
struct Timing {
    /// When the request left.
    sent: Instant,
    /// To the first byte.
    ttfb: Duration,
    /// From the first byte to the last.
    spread: Duration,
    /// Events (blank-line separated) in the body.
    events: u64,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Sends one request; returns when its bytes came, on success.
async fn one(
    client: &HttpClient,
    url: &hyper::Uri,
    body: &Bytes,
    workload: Workload,
) -> Result<Timing, String> {
    let sent = Instant::now();
    let mut request = hyper::Request::post(url.clone())
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-bench-0123456789")
        .header("x-mock-tool-call", "1");
    if workload.stream {
        request = request
            .header("x-mock-chunks", workload.text_chunks().to_string())
            .header("x-mock-first-ms", workload.first_ms.to_string())
            .header("x-mock-interval-ms", workload.interval_ms.to_string());
    }
    let request = request.body(Full::new(body.clone())).unwrap();
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    if response.status() != 200 {
        return Err(format!("status {}", response.status()));
    }
    let mut body = response.into_body();
    let mut first = None;
    let mut last = sent.elapsed();
    let mut count = 0u64;
    let mut previous = 0u8;
    // The whole body: a few KiB at most.
    let mut kept = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Some(data) = frame.data_ref() {
            last = sent.elapsed();
            first.get_or_insert(last);
            for &b in data.iter() {
                if b == b'\n' && previous == b'\n' {
                    count += 1;
                }
                previous = b;
            }
            kept.extend_from_slice(data);
        }
    }
    if workload.stream && !workload.responses && !kept.ends_with(b"data: [DONE]\n\n") {
        return Err("stream did not end with [DONE]".into());
    }
    // With or without `event:` lines: some proxies send `data:` lines only.
    if workload.stream && workload.responses && !contains(&kept, br#""type":"response.completed""#)
    {
        return Err("stream did not end with response.completed".into());
    }
    if !contains(&kept, TOOL_CALL_MARK) {
        return Err("response does not carry the get_weather tool call".into());
    }
    let ttfb = first.unwrap_or(last);
    Ok(Timing {
        sent,
        ttfb,
        spread: last.saturating_sub(ttfb),
        events: count,
    })
}

/// `one`, given up on after `timeout`.
async fn timed(
    client: &HttpClient,
    url: &hyper::Uri,
    body: &Bytes,
    workload: Workload,
    timeout: Duration,
) -> Result<Timing, String> {
    tokio::time::timeout(timeout, one(client, url, body, workload))
        .await
        .unwrap_or_else(|_| Err(format!("no complete answer within {timeout:?}")))
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

async fn run(args: Args) -> serde_json::Value {
    let workload = Workload::parse(&args.workload);
    let body = request_body(
        workload.responses,
        workload.stream,
        workload.size,
        workload.turns,
    );
    let path = if workload.responses {
        "/v1/responses"
    } else {
        "/v1/chat/completions"
    };
    let url: hyper::Uri = format!("{}{path}", args.url).parse().unwrap();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(4096)
        .build(connector);
    // Warm up the connections and the server: 50 requests, 10 at a time.
    let mut warmup_ok = 0u64;
    for _ in 0..5 {
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            let timeout = args.timeout;
            batch.spawn(async move { timed(&client, &url, &body, workload, timeout).await });
        }
        while let Some(done) = batch.join_next().await {
            if matches!(done, Ok(Ok(_))) {
                warmup_ok += 1;
            }
        }
    }
    let recorder = Arc::new(Mutex::new(Recorder::new()));
    // Where the measured window starts: the schedule's measured part in rate mode.
    let mut measured_from = Instant::now();
    match args.mode.as_str() {
        "rate" => {
            let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
            // Requests due in the warm-up keep the same schedule, so the measured
            // ones start with the connections and the in-flight requests of the
            // rate's steady state rather than building them up.
            let warmup = (args.warmup.as_secs_f64() * args.rate as f64).round() as u64;
            let measured = args.rate * args.duration.as_secs().max(1);
            // The schedule is kept by a thread of its own: the runtime's timer has
            // a resolution of 1 ms, too coarse for 1,000 requests a second.
            let begin = Instant::now() + Duration::from_millis(10);
            let start = begin + interval.mul_f64(warmup as f64);
            let start_unix = std::time::SystemTime::now() + (start - Instant::now());
            recorder.lock().unwrap().start_unix = start_unix;
            recorder.lock().unwrap().start = Some(start);
            measured_from = start;
            let poisson = (args.arrivals == "poisson").then_some(args.seed);
            let offsets = schedule(interval, warmup, measured, poisson);
            let (tx, mut due_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
            std::thread::spawn(move || {
                for offset in offsets {
                    let due = begin + offset;
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    if tx.send(due).is_err() {
                        break;
                    }
                }
            });
            let inflight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let mut tasks = tokio::task::JoinSet::new();
            while let Some(due) = due_rx.recv().await {
                let warming = due < start;
                if inflight.load(std::sync::atomic::Ordering::Relaxed) >= MAX_IN_FLIGHT {
                    let mut r = recorder.lock().unwrap();
                    let outcome = if warming {
                        &mut r.warmup
                    } else {
                        &mut r.outcome
                    };
                    outcome.error(format!("more than {MAX_IN_FLIGHT} requests in flight"));
                    continue;
                }
                inflight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (client, url, body, recorder, inflight) = (
                    client.clone(),
                    url.clone(),
                    body.clone(),
                    recorder.clone(),
                    inflight.clone(),
                );
                let timeout = args.timeout;
                let tracing = args.trace.is_some();
                tasks.spawn(async move {
                    let result = timed(&client, &url, &body, workload, timeout).await;
                    let done = Instant::now();
                    let mut r = recorder.lock().unwrap();
                    match result {
                        Ok(_) if warming => r.warmup.ok += 1,
                        Err(e) if warming => r.warmup.error(e),
                        // Measured from when the request was due, not when it left.
                        Ok(timing) => {
                            let latency = done.saturating_duration_since(due);
                            let ttfb = timing.sent.saturating_duration_since(due) + timing.ttfb;
                            if tracing {
                                r.trace.push([
                                    micros(due.saturating_duration_since(start)),
                                    micros(timing.sent.saturating_duration_since(due)),
                                    micros(timing.ttfb),
                                    micros(latency),
                                ]);
                            }
                            r.record(latency, ttfb, &timing);
                        }
                        Err(e) => r.outcome.error(e),
                    }
                    inflight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                });
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        }
        "max" => {
            let deadline = Instant::now() + args.duration;
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..args.conns {
                let (client, url, body, recorder) =
                    (client.clone(), url.clone(), body.clone(), recorder.clone());
                let timeout = args.timeout;
                tasks.spawn(async move {
                    while Instant::now() < deadline {
                        let sent = Instant::now();
                        let result = timed(&client, &url, &body, workload, timeout).await;
                        let mut r = recorder.lock().unwrap();
                        match result {
                            Ok(timing) => r.record(sent.elapsed(), timing.ttfb, &timing),
                            Err(e) => r.outcome.error(e),
                        }
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
        }
        other => panic!("unknown mode {other}"),
    }
    let elapsed = Instant::now()
        .saturating_duration_since(measured_from)
        .as_secs_f64();
    let r = recorder.lock().unwrap();
    if let Some(path) = &args.trace {
        let mut lines = format!(
            "# schedule start {} us after the Unix epoch, {:?} on the monotonic clock\ndue_us,send_delay_us,ttfb_us,latency_us\n",
            r.start_unix
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros(),
            r.start
        );
        for [due, delay, ttfb, latency] in &r.trace {
            lines.push_str(&format!("{due},{delay},{ttfb},{latency}\n"));
        }
        std::fs::write(path, lines).unwrap();
    }
    let q = |h: &Histogram<u64>, p: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(p)
        }
    };
    let percentiles = |h: &Histogram<u64>| json!({"p50": q(h, 0.5), "p99": q(h, 0.99), "p999": q(h, 0.999), "max": h.max()});
    json!({
        "mode": args.mode,
        "workload": args.workload,
        "request_bytes": body.len(),
        "rate": if args.mode == "rate" { json!(args.rate) } else { json!(null) },
        "conns": if args.mode == "max" { json!(args.conns) } else { json!(null) },
        "seconds": elapsed,
        "ok": r.outcome.ok,
        "errors": r.outcome.errors,
        "error_kinds": r.outcome.kinds,
        "warmup_ok": warmup_ok + r.warmup.ok,
        "warmup_errors": r.warmup.errors,
        "warmup_error_kinds": r.warmup.kinds,
        "throughput_rps": r.outcome.ok as f64 / elapsed,
        "latency_us": percentiles(&r.latency),
        "ttfb_us": percentiles(&r.ttfb),
        "spread_us": percentiles(&r.spread),
        "events_per_response": r.events,
    })
}

/// When each request of a rate-mode run is due, from the schedule's beginning:
/// `warmup` requests in the warm-up, then `measured` in the run's duration, one
/// every `interval`, or at random times from the seed in `poisson`.
fn schedule(interval: Duration, warmup: u64, measured: u64, poisson: Option<u64>) -> Vec<Duration> {
    let Some(seed) = poisson else {
        return (0..warmup + measured)
            .map(|i| interval.mul_f64(i as f64))
            .collect();
    };
    // A Poisson process given how many arrivals fall in a span puts them
    // uniformly at random in it; warm-up and measured spans each keep the count
    // an even schedule gives them.
    use rand::{RngExt, SeedableRng};
    let mut rng = rand_pcg::Pcg64::seed_from_u64(seed);
    let span = |count: u64| interval.mul_f64(count as f64).as_secs_f64();
    let (warm_span, run_span) = (span(warmup), span(measured));
    let mut offsets: Vec<f64> = (0..warmup + measured)
        .map(|i| {
            let u = rng.random::<f64>();
            if i < warmup {
                u * warm_span
            } else {
                warm_span + u * run_span
            }
        })
        .collect();
    offsets.sort_by(f64::total_cmp);
    offsets.into_iter().map(Duration::from_secs_f64).collect()
}

fn main() {
    let args = parse_args();
    // One thread: the generator stays on the core it is pinned to.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = runtime.block_on(run(args));
    let mut out = std::io::stdout().lock();
    writeln!(out, "{result}").unwrap();
}
