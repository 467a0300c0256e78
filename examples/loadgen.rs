//! The benchmark load generator: drives one workload against one base URL and
//! prints one JSON object of results.
//!
//! - `--mode rate --rate R`: open loop. Request `i` is due at `start + i/R`
//!   whatever happened to earlier ones, and its latency is measured from when it
//!   was due, not from when it was sent, so a stalled server is not hidden by a
//!   stalled generator (coordinated omission).
//! - `--mode max --conns C`: closed loop, `C` connections each sending its next
//!   request as soon as the previous response ends: maximum throughput.
//!
//! Workloads: `chat-json` (a Chat Completions request of about 1 KiB with tools,
//! JSON response) and `chat-sse` (the same with `stream: true`, 20 content events);
//! `chat-tool-json` and `chat-tool-sse` are the same requests with the header
//! `x-mock-tool-call: 1`, so that every answer of the mock ends with one tool call
//! to `get_weather`. `responses-sse` and `responses-tool-sse` are the same on the
//! Responses API (`POST /v1/responses`, a stream of `event:`/`data:` events that
//! ends with `response.completed`). For streams, time to first byte, the time from
//! the first to the last byte, and the number of events are recorded too. A
//! response that is not 200, a Chat stream that does not end with `[DONE]`, a
//! Responses stream without `response.completed`, or,
//! for the tool workloads, a response whose body does not carry the call
//! (`"name":"get_weather"`), is an error: a proxy that governs the call must also
//! relay it.
//!
//! The output counts the warm-up requests that succeeded (`warmup_ok`) besides the
//! measured ones, so that a caller can tell how many tool calls a proxy saw.

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
    events: u64,
}

fn parse_args() -> Args {
    let mut args = Args {
        url: String::new(),
        mode: "rate".into(),
        workload: "chat-json".into(),
        rate: 1000,
        conns: 32,
        duration: Duration::from_secs(5),
        events: 20,
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
            "--events" => args.events = value.parse().unwrap(),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(!args.url.is_empty(), "--url is required");
    args
}

/// A request body of about 1 KiB: a short conversation and two tools.
fn chat_body(stream: bool) -> Bytes {
    let tool = |name: &str, about: &str| {
        json!({"type": "function", "function": {"name": name, "description": about,
            "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"},
                "units": {"type": "string", "enum": ["c", "f"]}}, "required": ["city"]}}})
    };
    let body = json!({
        "model": "gpt-4o-mock",
        "messages": [
            {"role": "developer", "content": "You are a helpful assistant that answers weather questions briefly and precisely."},
            {"role": "user", "content": "What is the weather in Paris today, and should I bring an umbrella for the afternoon?"}
        ],
        "tools": [tool("get_weather", "Current weather for a city"), tool("get_forecast", "Forecast for the next days")],
        "temperature": 0.2,
        "stream": stream,
        "stream_options": if stream { json!({"include_usage": true}) } else { serde_json::Value::Null },
    });
    Bytes::from(body.to_string())
}

/// The same conversation on the Responses API.
fn responses_body(stream: bool) -> Bytes {
    let tool = |name: &str, about: &str| {
        json!({"type": "function", "name": name, "description": about,
            "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"},
                "units": {"type": "string", "enum": ["c", "f"]}}, "required": ["city"]}, "strict": false})
    };
    let body = json!({
        "model": "gpt-4o-mock",
        "instructions": "You are a helpful assistant that answers weather questions briefly and precisely.",
        "input": [
            {"role": "user", "content": "What is the weather in Paris today, and should I bring an umbrella for the afternoon?"}
        ],
        "tools": [tool("get_weather", "Current weather for a city"), tool("get_forecast", "Forecast for the next days")],
        "temperature": 0.2,
        "stream": stream,
    });
    Bytes::from(body.to_string())
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

/// What the workload sends and what a good answer must contain.
#[derive(Clone, Copy)]
struct Workload {
    stream: bool,
    tool_call: bool,
    responses: bool,
}

impl Workload {
    fn parse(name: &str) -> Self {
        match name {
            "chat-json" => Self {
                stream: false,
                tool_call: false,
                responses: false,
            },
            "chat-sse" => Self {
                stream: true,
                tool_call: false,
                responses: false,
            },
            "chat-tool-json" => Self {
                stream: false,
                tool_call: true,
                responses: false,
            },
            "chat-tool-sse" => Self {
                stream: true,
                tool_call: true,
                responses: false,
            },
            "responses-sse" => Self {
                stream: true,
                tool_call: false,
                responses: true,
            },
            "responses-tool-sse" => Self {
                stream: true,
                tool_call: true,
                responses: true,
            },
            other => panic!("unknown workload {other}"),
        }
    }
}

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
}

impl Recorder {
    fn new() -> Self {
        Self {
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(),
            ttfb: Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(),
            spread: Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(),
            events: 0,
            outcome: Outcome::default(),
        }
    }

    fn record(&mut self, latency: Duration, timing: &Timing) {
        self.outcome.ok += 1;
        let _ = self.latency.record(micros(latency));
        let _ = self.ttfb.record(micros(timing.ttfb));
        let _ = self.spread.record(micros(timing.spread));
        self.events = timing.events;
    }
}

/// When a response's bytes came.
struct Timing {
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
    events: u64,
) -> Result<Timing, String> {
    let stream = workload.stream;
    let sent = Instant::now();
    let mut request = hyper::Request::post(url.clone())
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-bench-0123456789");
    if stream {
        request = request.header("x-mock-chunks", events.to_string());
    }
    if workload.tool_call {
        request = request.header("x-mock-tool-call", "1");
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
    // The whole body for the tool and Responses workloads (a few KiB), its last
    // bytes otherwise.
    let keep_all = workload.tool_call || workload.responses;
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
            if !keep_all && kept.len() > 64 {
                kept.drain(..kept.len() - 64);
            }
        }
    }
    if stream && !workload.responses && !kept.ends_with(b"data: [DONE]\n\n") {
        return Err("stream did not end with [DONE]".into());
    }
    if stream && workload.responses && !contains(&kept, b"event: response.completed\n") {
        return Err("stream did not end with response.completed".into());
    }
    if workload.tool_call && !contains(&kept, TOOL_CALL_MARK) {
        return Err("response does not carry the get_weather tool call".into());
    }
    let ttfb = first.unwrap_or(last);
    Ok(Timing {
        ttfb,
        spread: last.saturating_sub(ttfb),
        events: count,
    })
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

async fn run(args: Args) -> serde_json::Value {
    let workload = Workload::parse(&args.workload);
    let (body, path) = if workload.responses {
        (responses_body(workload.stream), "/v1/responses")
    } else {
        (chat_body(workload.stream), "/v1/chat/completions")
    };
    let url: hyper::Uri = format!("{}{path}", args.url).parse().unwrap();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(4096)
        .build(connector);
    // Warm up the connections and the server.
    let mut warmup_ok = 0u64;
    for _ in 0..50 {
        if one(&client, &url, &body, workload, args.events)
            .await
            .is_ok()
        {
            warmup_ok += 1;
        }
    }
    let recorder = Arc::new(Mutex::new(Recorder::new()));
    let started = Instant::now();
    match args.mode.as_str() {
        "rate" => {
            let total = args.rate * args.duration.as_secs().max(1);
            let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
            // The schedule is kept by a thread of its own: the runtime's timer has
            // a resolution of 1 ms, too coarse for 1,000 requests a second.
            let start = Instant::now() + Duration::from_millis(10);
            let (tx, mut due_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
            std::thread::spawn(move || {
                for i in 0..total {
                    let due = start + interval.mul_f64(i as f64);
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
                if inflight.load(std::sync::atomic::Ordering::Relaxed) >= 2048 {
                    recorder
                        .lock()
                        .unwrap()
                        .outcome
                        .error("more than 2048 requests in flight".into());
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
                let events = args.events;
                tasks.spawn(async move {
                    let result = one(&client, &url, &body, workload, events).await;
                    let done = Instant::now();
                    let mut r = recorder.lock().unwrap();
                    match result {
                        // Measured from when the request was due, not when it left.
                        Ok(timing) => r.record(done.saturating_duration_since(due), &timing),
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
                let events = args.events;
                tasks.spawn(async move {
                    while Instant::now() < deadline {
                        let sent = Instant::now();
                        let result = one(&client, &url, &body, workload, events).await;
                        let mut r = recorder.lock().unwrap();
                        match result {
                            Ok(timing) => r.record(sent.elapsed(), &timing),
                            Err(e) => r.outcome.error(e),
                        }
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
        }
        other => panic!("unknown mode {other}"),
    }
    let elapsed = started.elapsed().as_secs_f64();
    let r = recorder.lock().unwrap();
    let q = |h: &Histogram<u64>, p: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(p)
        }
    };
    json!({
        "mode": args.mode,
        "workload": args.workload,
        "rate": if args.mode == "rate" { json!(args.rate) } else { json!(null) },
        "conns": if args.mode == "max" { json!(args.conns) } else { json!(null) },
        "seconds": elapsed,
        "ok": r.outcome.ok,
        "errors": r.outcome.errors,
        "error_kinds": r.outcome.kinds,
        "warmup_ok": warmup_ok,
        "throughput_rps": r.outcome.ok as f64 / elapsed,
        "latency_us": {"p50": q(&r.latency, 0.5), "p99": q(&r.latency, 0.99), "p999": q(&r.latency, 0.999), "max": r.latency.max()},
        "ttfb_us": {"p50": q(&r.ttfb, 0.5), "p99": q(&r.ttfb, 0.99)},
        "spread_us": {"p50": q(&r.spread, 0.5), "p99": q(&r.spread, 0.99)},
        "events_per_response": r.events,
    })
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
