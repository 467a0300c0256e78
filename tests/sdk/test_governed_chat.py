"""The official OpenAI Python SDK against tollgate governing Chat Completions.

The upstream is the mock's `mock-agent` model, which calls the tools the user's
message names (`call NAME {json}`) and, once it gets tool results, answers
`Tool results: <output> | <output>`. tollgate runs the governed HTTP tool
`weather__current` itself, answers blocked calls (`shell_exec`) with a denial the
model reads, relays calls to the client's own tools, and signs a receipt for every
decision. The client must see only its own tools' calls and a valid conversation
must reach the model at every round (the mock answers 400 otherwise)."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import openai
import pytest
from conftest import denial, generate_key, tool_outputs, user

KEY = "sk-test-governed-0123456789"
MODEL = "mock-agent"
# The mock reports 10 + 5 tokens per upstream round.
ROUND_TOKENS = 15

LOOKUP = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look something up",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
SHELL_EXEC = {
    "type": "function",
    "function": {
        "name": "shell_exec",
        "description": "Run a shell command",
        "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]},
    },
}


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=20)


def collect(stream) -> dict:
    """Reads a Chat Completions stream of the SDK: the text, the tool calls assembled
    by index, every finish_reason, every chunk id and every usage seen."""
    seen = {"text": "", "calls": {}, "finishes": [], "ids": set(), "usage": [], "indices": []}
    for chunk in stream:
        seen["ids"].add(chunk.id)
        if chunk.usage:
            seen["usage"].append(chunk.usage)
        for choice in chunk.choices:
            assert choice.index == 0
            seen["text"] += choice.delta.content or ""
            if choice.finish_reason:
                seen["finishes"].append(choice.finish_reason)
            for fragment in choice.delta.tool_calls or []:
                seen["indices"].append(fragment.index)
                call = seen["calls"].setdefault(fragment.index, {"id": "", "name": "", "arguments": ""})
                if fragment.id:
                    call["id"] += fragment.id
                if fragment.function and fragment.function.name:
                    call["name"] += fragment.function.name
                if fragment.function and fragment.function.arguments:
                    call["arguments"] += fragment.function.arguments
    return seen


def assistant_turn(message) -> dict:
    """The assistant message as the client sends it back."""
    return {
        "role": "assistant",
        "content": message.content,
        "tool_calls": [
            {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
            for c in message.tool_calls
        ],
    }


# (a) A governed tool, plain: tollgate runs it and loops; the client gets the end.
def test_governed_tool_runs_and_the_client_gets_only_the_final_answer(governed):
    completion = client(governed.url).chat.completions.create(
        model=MODEL, messages=user('call weather__current {"city":"Paris"}')
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert not choice.message.tool_calls
    [output] = tool_outputs(choice.message.content)
    assert json.loads(output) == {"city": "Paris", "temp_c": 18}
    assert {"city": "Paris"} in governed.tools.bodies()
    # Two upstream rounds, one usage: the sum.
    assert completion.usage.prompt_tokens == 20
    assert completion.usage.completion_tokens == 10
    assert completion.usage.total_tokens == 2 * ROUND_TOKENS


# (b) The same, streaming: one client stream across both rounds.
def test_governed_tool_streaming_continues_one_stream(governed):
    stream = client(governed.url).chat.completions.create(
        model=MODEL,
        messages=user('call weather__current {"city":"Lyon"}'),
        stream=True,
        stream_options={"include_usage": True},
    )
    seen = collect(stream)
    assert seen["calls"] == {}, "the governed call must not reach the client"
    assert seen["finishes"] == ["stop"], "exactly one finish, and not tool_calls"
    assert len(seen["ids"]) == 1, f"one completion id per client stream, saw {seen['ids']}"
    [output] = tool_outputs(seen["text"])
    assert json.loads(output) == {"city": "Lyon", "temp_c": 18}
    assert {"city": "Lyon"} in governed.tools.bodies()
    assert len(seen["usage"]) == 1, "at most one usage chunk"
    assert seen["usage"][0].total_tokens == 2 * ROUND_TOKENS


# (b, on the wire) The SDK stops reading at the first `[DONE]`; the raw stream shows
# that nothing of the first round's end leaks: one id, one finish, the usage after
# it, and one `[DONE]`, last.
def test_governed_tool_stream_on_the_wire(governed):
    where = urlsplit(governed.url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=20)
    body = {
        "model": MODEL,
        "messages": user('call shell_exec {"cmd":"reboot"}; call weather__current {"city":"Graz"}'),
        "tools": [SHELL_EXEC],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    conn.request(
        "POST", "/v1/chat/completions", json.dumps(body),
        {"content-type": "application/json", "authorization": f"Bearer {KEY}"},
    )
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("content-type", "").startswith("text/event-stream")
    assert response.getheader("x-tollgate-request-id", "").startswith("tgr_")
    raw = response.read().decode()
    conn.close()
    events = [e for e in raw.split("\n\n") if e.strip()]
    payloads = []
    for event in events:
        lines = [line for line in event.split("\n") if line and not line.startswith(":")]
        assert len(lines) == 1 and lines[0].startswith("data: "), event
        payloads.append(lines[0][len("data: "):])
    assert payloads.count("[DONE]") == 1 and payloads[-1] == "[DONE]", payloads[-3:]
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    finishes = [(i, ch["finish_reason"]) for i, c in enumerate(chunks) for ch in c["choices"] if ch.get("finish_reason")]
    assert [f for _, f in finishes] == ["stop"]
    usage = [(i, c["usage"]) for i, c in enumerate(chunks) if c.get("usage")]
    assert len(usage) == 1 and usage[0][0] > finishes[0][0]
    assert usage[0][1]["total_tokens"] == 2 * ROUND_TOKENS
    assert not [c for c in chunks for ch in c["choices"] if ch["delta"].get("tool_calls")]
    text = "".join(ch["delta"].get("content") or "" for c in chunks for ch in c["choices"])
    denied, weather = tool_outputs(text)
    denial(denied)
    assert json.loads(weather) == {"city": "Graz", "temp_c": 18}


# (c) The SDK's stream helper.
def test_governed_tool_with_the_stream_helper(governed):
    with client(governed.url).chat.completions.stream(
        model=MODEL, messages=user('call weather__current {"city":"Nice"}')
    ) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "stop"
    assert not choice.message.tool_calls
    [output] = tool_outputs(choice.message.content)
    assert json.loads(output) == {"city": "Nice", "temp_c": 18}
    assert not [e.type for e in events if e.type.startswith("tool_calls.")]
    finishes = [c.finish_reason for e in events if e.type == "chunk" for c in e.chunk.choices if c.finish_reason]
    assert finishes == ["stop"]
    assert [e for e in events if e.type == "content.done"][-1].content == choice.message.content


# (d) An allowed client tool is relayed; the client's result reaches the model.
@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "stream"])
def test_allowed_client_tool_is_relayed(governed, streaming):
    c = client(governed.url)
    messages = user('call lookup {"query":"tollgate"}')
    if streaming:
        with c.chat.completions.stream(model=MODEL, messages=messages, tools=[LOOKUP]) as stream:
            first = stream.get_final_completion()
    else:
        first = c.chat.completions.create(model=MODEL, messages=messages, tools=[LOOKUP])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "lookup"
    assert json.loads(call.function.arguments) == {"query": "tollgate"}
    assert call.id

    messages += [assistant_turn(choice.message), {"role": "tool", "tool_call_id": call.id, "content": "found: 42"}]
    final = c.chat.completions.create(model=MODEL, messages=messages, tools=[LOOKUP])
    assert final.choices[0].finish_reason == "stop"
    assert tool_outputs(final.choices[0].message.content) == ["found: 42"]


# (e) A blocked call never reaches the client; the model reads the denial.
@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "stream"])
def test_blocked_call_is_hidden_and_the_model_reads_the_denial(governed, streaming):
    c = client(governed.url)
    messages = user('call shell_exec {"cmd":"ls -l"}')
    if streaming:
        seen = collect(
            c.chat.completions.create(model=MODEL, messages=messages, tools=[SHELL_EXEC, LOOKUP], stream=True)
        )
        assert seen["calls"] == {}
        assert seen["finishes"] == ["stop"]
        text = seen["text"]
    else:
        completion = c.chat.completions.create(model=MODEL, messages=messages, tools=[SHELL_EXEC, LOOKUP])
        assert completion.choices[0].finish_reason == "stop"
        assert not completion.choices[0].message.tool_calls
        text = completion.choices[0].message.content
    assert "tool_call_denied" in text
    [output] = tool_outputs(text)
    error = denial(output)
    receipts = {r["receipt_id"]: r for r in governed.receipt_lines()}
    assert receipts[error["receipt_id"]]["decision"] == "deny"
    assert receipts[error["receipt_id"]]["action"]["tool_name"] == "shell_exec"


# (f) Parallel calls, one blocked and one the client's: the client sees its own
# call only, and after it answers, the model gets both outputs, in order.
@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "stream"])
def test_parallel_blocked_and_client_calls_are_spliced(governed, streaming):
    c = client(governed.url)
    messages = user('call shell_exec {"cmd":"rm -rf /tmp/x"}; call lookup {"query":"splice"}')
    tools = [SHELL_EXEC, LOOKUP]
    if streaming:
        seen = collect(c.chat.completions.create(model=MODEL, messages=messages, tools=tools, stream=True))
        assert seen["finishes"] == ["tool_calls"]
        assert len(seen["ids"]) == 1
        assert set(seen["indices"]) == {0}, "the relayed call is re-indexed from 0"
        assert list(seen["calls"]) == [0]
        call = seen["calls"][0]
        assert call["name"] == "lookup"
        assert json.loads(call["arguments"]) == {"query": "splice"}
        assistant = {
            "role": "assistant",
            "content": seen["text"] or None,
            "tool_calls": [
                {"id": call["id"], "type": "function", "function": {"name": "lookup", "arguments": call["arguments"]}}
            ],
        }
        call_id = call["id"]
    else:
        first = c.chat.completions.create(model=MODEL, messages=messages, tools=tools)
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert [t.function.name for t in choice.message.tool_calls] == ["lookup"]
        assert json.loads(choice.message.tool_calls[0].function.arguments) == {"query": "splice"}
        assistant = assistant_turn(choice.message)
        call_id = choice.message.tool_calls[0].id

    messages += [assistant, {"role": "tool", "tool_call_id": call_id, "content": "lookup says hi"}]
    final = c.chat.completions.create(model=MODEL, messages=messages, tools=tools)
    assert final.choices[0].finish_reason == "stop", final
    outputs = tool_outputs(final.choices[0].message.content)
    assert len(outputs) == 2, outputs
    denial(outputs[0])
    assert outputs[1] == "lookup says hi"


# A governed call and a client call in one turn: tollgate runs its own, the client
# runs its own, and the model gets both.
def test_governed_and_client_calls_in_one_turn(governed):
    c = client(governed.url)
    messages = user('call weather__current {"city":"Oslo"}; call lookup {"query":"fjords"}')
    first = c.chat.completions.create(model=MODEL, messages=messages, tools=[LOOKUP])
    choice = first.choices[0]
    assert [t.function.name for t in choice.message.tool_calls] == ["lookup"]
    messages += [
        assistant_turn(choice.message),
        {"role": "tool", "tool_call_id": choice.message.tool_calls[0].id, "content": "many fjords"},
    ]
    final = c.chat.completions.create(model=MODEL, messages=messages, tools=[LOOKUP])
    outputs = tool_outputs(final.choices[0].message.content)
    assert json.loads(outputs[0]) == {"city": "Oslo", "temp_c": 18}
    assert outputs[1:] == ["many fjords"]


# A client tool may not shadow a governed one (SPEC 6).
def test_client_tool_named_like_a_governed_tool_is_refused(governed):
    shadow = {"type": "function", "function": {"name": "weather__current", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as raised:
        client(governed.url).chat.completions.create(
            model=MODEL, messages=user('call weather__current {"city":"Rome"}'), tools=[shadow]
        )
    assert raised.value.status_code == 400
    assert {"city": "Rome"} not in governed.tools.bodies()


# Without any directive nothing is governed: the answer is relayed as it is.
def test_plain_text_passes_through(governed):
    completion = client(governed.url).chat.completions.create(model=MODEL, messages=user("Say hello"))
    assert completion.choices[0].message.content == "Hello from the mock"
    assert completion.usage.total_tokens == ROUND_TOKENS


# (g) Last in the module: the receipt log of everything above verifies, and holds
# both allow and deny decisions, each bound to tollgate's request id.
def test_receipt_log_verifies(governed, tmp_path):
    c = client(governed.url)
    raw = c.chat.completions.with_raw_response.create(
        model=MODEL, messages=user('call shell_exec {"cmd":"id"}'), tools=[SHELL_EXEC]
    )
    request_id = raw.headers["x-tollgate-request-id"]
    error = denial(tool_outputs(raw.parse().choices[0].message.content)[0])
    c.chat.completions.create(model=MODEL, messages=user('call weather__current {"city":"Bern"}'))
    c.chat.completions.create(model=MODEL, messages=user('call lookup {"query":"receipts"}'), tools=[LOOKUP])

    lines = governed.receipt_lines()
    decisions = [r["decision"] for r in lines]
    assert set(decisions) <= {"allow", "deny", "pending", "system"}, decisions
    assert "allow" in decisions and "deny" in decisions
    by_id = {r["receipt_id"]: r for r in lines}
    assert by_id[error["receipt_id"]]["request_id"] == request_id
    allowed = {r["action"]["tool_name"] for r in lines if r["decision"] == "allow"}
    denied = {r["action"]["tool_name"] for r in lines if r["decision"] == "deny"}
    assert {"weather__current", "lookup"} <= allowed
    assert denied == {"shell_exec"}

    for key in (governed.signing_key, governed.public_key):
        done = governed.verify(key)
        assert done.returncode == 0, done.stdout + done.stderr

    # The check has teeth: another key, or an edited record, fails it.
    other = generate_key(tmp_path / "other-key.pem")
    assert governed.verify(other).returncode != 0
    edited = tmp_path / "edited.jsonl"
    text = governed.receipts.read_text()
    assert '"decision":"deny"' in text
    edited.write_text(text.replace('"decision":"deny"', '"decision":"allow"', 1))
    assert governed.verify(governed.public_key, log=edited).returncode != 0
