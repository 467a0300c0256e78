"""The official OpenAI Python SDK against tollgate governing the Responses API.

The upstream is the mock's `mock-agent` model on `POST /v1/responses`: the user's
`call NAME {json}` directives become `function_call` items, a trailing run of
`function_call_output` items is answered `Tool results: <output> | <output>`,
responses are stored unless `store: false` (so `previous_response_id` works), the
API's pairing errors are enforced, and with `reasoning` set a `reasoning` item
(with `encrypted_content`) comes first and must be replayed before its calls.

tollgate runs the governed HTTP tool `weather__current` itself, answers blocked
calls (`shell_exec`) with a denial the model reads, relays calls to the client's
own tools and signs a receipt for every decision. The client gets one response
per request (the first round's id, every round's visible items, the summed
usage), and whatever it sends next, the model must see a complete conversation
(the mock answers 400 otherwise, which the SDK raises)."""

from __future__ import annotations

import json
import re

import openai
import pytest
from conftest import denial, generate_key, tool_outputs, user

KEY = "sk-test-governed-responses-0123456789"
MODEL = "mock-agent"
# The mock reports 10 input + 5 output tokens per upstream round.
ROUND_INPUT, ROUND_OUTPUT = 10, 5
ROUND_TOKENS = ROUND_INPUT + ROUND_OUTPUT
TERMINAL = {"response.completed", "response.failed", "response.incomplete", "error"}

LOOKUP = {
    "type": "function",
    "name": "lookup",
    "description": "Look something up",
    "parameters": {
        "type": "object",
        "properties": {"query": {"type": "string"}},
        "required": ["query"],
        "additionalProperties": False,
    },
    "strict": True,
}
SHELL_EXEC = {
    "type": "function",
    "name": "shell_exec",
    "description": "Run a shell command",
    "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]},
    "strict": False,
}


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=20)


def number(identifier: str, prefix: str) -> int:
    """The mock's counter in one of its ids (`resp_mockagent7` -> 7)."""
    match = re.fullmatch(re.escape(prefix) + r"(\d+)", identifier or "")
    assert match, f"{identifier!r} is not a {prefix}<n> id"
    return int(match.group(1))


def types(response) -> list[str]:
    return [item.type for item in response.output]


def as_input(items) -> list[dict]:
    """Output items as the client sends them back in `input`."""
    return [item.model_dump(exclude_none=True) for item in items]


def result(call, output: str) -> dict:
    return {"type": "function_call_output", "call_id": call.call_id, "output": output}


def check_stream(events: list) -> dict:
    """Checks the events of one client stream (raw events or the stream helper's)
    against the Responses framing: one `response.created`, first; sequence numbers
    0, 1, 2, ... without gaps; output indices handed out 0, 1, 2, ... by
    `output_item.added`, every item event naming an index already added and the
    item id it was added with; exactly one terminal event, `response.completed`,
    last. Returns the created and completed responses and the items added."""
    kinds = [e.type for e in events]
    assert kinds and kinds[0] == "response.created", kinds[:3]
    assert kinds.count("response.created") == 1, kinds
    assert kinds.count("response.in_progress") <= 1, kinds
    # The stream helper adds no events of its own numbering: every event carries
    # the number it had on the wire.
    assert [e.sequence_number for e in events] == list(range(len(events))), [
        (e.type, e.sequence_number) for e in events
    ]
    terminals = [k for k in kinds if k in TERMINAL]
    assert terminals == ["response.completed"], terminals
    assert kinds[-1] == "response.completed", kinds[-3:]
    added: dict[int, object] = {}
    for event in events:
        index = getattr(event, "output_index", None)
        if event.type == "response.output_item.added":
            assert index == len(added), f"output_index {index} added after {sorted(added)}"
            added[index] = event.item
        elif index is not None:
            assert index in added, f"{event.type} at output_index {index} before its item was added"
            item_id = getattr(event, "item_id", None) or getattr(getattr(event, "item", None), "id", None)
            if item_id is not None:
                assert item_id == added[index].id, (event.type, index, item_id, added[index].id)
    created = events[0].response
    completed = events[-1].response
    assert completed.id == created.id, "one response id across the whole stream"
    assert completed.status == "completed"
    return {"created": created, "completed": completed, "added": [added[i] for i in sorted(added)]}


def calls_in(events: list) -> list:
    """The events of a stream that carry or belong to a function call."""
    return [
        e
        for e in events
        if e.type.startswith("response.function_call_arguments.")
        or getattr(getattr(e, "item", None), "type", None) == "function_call"
    ]


def ask(c: openai.OpenAI, streaming: bool, **request):
    """One request, plain or through the SDK's stream helper (whose stream is
    checked); returns the response the client ends up with."""
    if not streaming:
        return c.responses.create(model=MODEL, **request)
    with c.responses.stream(model=MODEL, **request) as stream:
        events = list(stream)
        final = stream.get_final_response()
    seen = check_stream(events)
    assert final.id == seen["created"].id
    assert [item.type for item in seen["added"]] == types(final)
    return final


def receipts_of(governed, request_id: str) -> list[dict]:
    return [r for r in governed.receipt_lines() if r["request_id"] == request_id and r["decision"] != "system"]


# 1. A governed tool, plain: tollgate runs it, loops, and the client gets one
# response holding only the final answer.
def test_governed_tool_runs_and_the_client_gets_one_response(governed):
    raw = client(governed.url).responses.with_raw_response.create(
        model=MODEL, input=user('call weather__current {"city":"Paris"}')
    )
    request_id = raw.headers["x-tollgate-request-id"]
    response = raw.parse()
    assert response.status == "completed"
    assert types(response) == ["message"], "the governed call must not reach the client"
    [output] = tool_outputs(response.output_text)
    assert json.loads(output) == {"city": "Paris", "temp_c": 18}
    assert {"city": "Paris"} in governed.tools.bodies()
    # The client's id is the first round's; the message is the second round's.
    first = number(response.id, "resp_mockagent")
    assert response.output[0].id == f"msg_mockagent{first + 1}"
    # Two upstream rounds, one usage: the sum.
    assert response.usage.input_tokens == 2 * ROUND_INPUT
    assert response.usage.output_tokens == 2 * ROUND_OUTPUT
    assert response.usage.total_tokens == 2 * ROUND_TOKENS
    # The mock echoes the tools it was offered (the governed one among them); the
    # client reads back its own request, which had none.
    assert response.tools == []
    # One signed receipt for the one call.
    [receipt] = receipts_of(governed, request_id)
    assert receipt["decision"] == "allow"
    assert receipt["surface"] == "responses"
    assert receipt["action"]["tool_name"] == "weather__current"
    assert receipt["action"]["parameters"] == {"city": "Paris"}
    done = governed.verify(governed.public_key)
    assert done.returncode == 0, done.stdout + done.stderr


# 2. The same with `stream=True`: one client stream across both rounds, with the
# Responses framing intact and nothing of the governed call in it.
def test_governed_tool_streaming_is_one_stream(governed):
    stream = client(governed.url).responses.create(
        model=MODEL, input=user('call weather__current {"city":"Lyon"}'), stream=True
    )
    events = list(stream)
    seen = check_stream(events)
    assert calls_in(events) == [], [e.type for e in calls_in(events)]
    assert [item.type for item in seen["added"]] == ["message"]
    completed = seen["completed"]
    assert types(completed) == ["message"]
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == completed.output_text
    [output] = tool_outputs(text)
    assert json.loads(output) == {"city": "Lyon", "temp_c": 18}
    assert {"city": "Lyon"} in governed.tools.bodies()
    assert completed.usage.input_tokens == 2 * ROUND_INPUT
    assert completed.usage.output_tokens == 2 * ROUND_OUTPUT
    assert completed.usage.total_tokens == 2 * ROUND_TOKENS


# 3. The SDK's stream helper: the final response is the mock's final round less
# the handled call, under the id of the first `response.created`.
def test_governed_tool_with_the_stream_helper(governed):
    with client(governed.url).responses.stream(
        model=MODEL, input=user('call weather__current {"city":"Nice"}')
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    seen = check_stream(events)
    assert calls_in(events) == []
    assert final.id == seen["created"].id
    first = number(final.id, "resp_mockagent")
    # Only the final round's message, as the mock wrote it.
    assert types(final) == ["message"]
    message = final.output[0]
    assert message.id == f"msg_mockagent{first + 1}"
    assert message.role == "assistant" and message.status == "completed"
    [output] = tool_outputs(final.output_text)
    assert json.loads(output) == {"city": "Nice", "temp_c": 18}
    assert [e for e in events if e.type == "response.output_text.done"][-1].text == final.output_text
    assert final.usage.total_tokens == 2 * ROUND_TOKENS


# The governed tool of the `governed` fixture, which tollgate adds to every
# request it governs.
GOVERNED_TOOL = "weather__current"


def upstream_object(mock_url: str, response_id: str) -> dict:
    """A response the mock stored, as the JSON it returned it in, fetched from the
    mock itself (not through tollgate)."""
    return json.loads(client(mock_url).responses.with_raw_response.retrieve(response_id).text)


def as_sent(response) -> dict:
    """A response object the SDK parsed, as the JSON it was sent as: the fields
    that were on the wire (`to_dict()`), less what the stream helper adds to
    what it parses (`parsed` in output text, `parsed_arguments` in calls)."""
    data = response.to_dict()
    for item in data.get("output") or []:
        item.pop("parsed_arguments", None)
        for part in item.get("content") or []:
            part.pop("parsed", None)
    return data


def summed(usages: list[dict]) -> dict:
    """Usage objects added up, field by field (details included)."""
    total: dict = {}
    for usage in usages:
        for key, value in usage.items():
            if isinstance(value, dict):
                total[key] = summed([total.get(key, {}), value])
            else:
                total[key] = total.get(key, 0) + value
    return total


def one_response_of(rounds: list[dict]) -> dict:
    """The one response a client must get for these upstream rounds (the mock's
    own objects, first to last): the last round's object, under the first
    round's `id`, `created_at` and `previous_response_id`, listing every round's
    items but the calls tollgate handled (those to its governed tool), with the
    usage of all rounds; the tools echoed are the client's own (the governed tool
    tollgate added to the request is not)."""
    first, last = rounds[0], rounds[-1]
    expected = dict(last)
    for key in ("id", "created_at", "previous_response_id"):
        expected[key] = first[key]
    expected["output"] = [
        item for r in rounds for item in r["output"] if item.get("name") != GOVERNED_TOOL
    ]
    expected["usage"] = summed([r["usage"] for r in rounds])
    expected["tools"] = [t for t in last["tools"] if t.get("name") != GOVERNED_TOOL]
    return expected


def assert_same_response(got: dict, expected: dict) -> None:
    """Field by field, then whole."""
    assert sorted(got) == sorted(expected), set(got) ^ set(expected)
    for key in expected:
        assert got[key] == expected[key], f"{key}: {got[key]!r} != {expected[key]!r}"
    assert got == expected


# 3b. The stream helper's final response is exactly the mock's final round less
# what tollgate handled: for a turn that ends with a governed and a client call
# (one round, the governed call hidden) and for a turn that loops (the governed
# call, then the answer; with reasoning, so the first round shows an item too).
@pytest.mark.parametrize("turn", ["governed-and-client-call", "loop"])
def test_the_stream_helpers_final_response_is_the_mocks_final_round_less_handled_calls(
    governed, mock_url, turn
):
    if turn == "loop":
        request = {
            "input": user('call weather__current {"city":"Turin-helper"}'),
            "reasoning": {"effort": "low"},
            "include": ["reasoning.encrypted_content"],
        }
        rounds = 2
    else:
        request = {
            "input": user('call weather__current {"city":"Bern-helper"}; call lookup {"query":"helper"}'),
            "tools": [LOOKUP],
        }
        rounds = 1
    with client(governed.url).responses.stream(model=MODEL, **request) as stream:
        events = list(stream)
        final = stream.get_final_response()
    seen = check_stream(events)
    assert final.id == seen["created"].id
    first = number(final.id, "resp_mockagent")
    mock_rounds = [upstream_object(mock_url, f"resp_mockagent{first + k}") for k in range(rounds)]
    # The mock's rounds hold what tollgate hid: the governed call, run once.
    assert [i["name"] for i in mock_rounds[0]["output"] if i["type"] == "function_call"][0] == GOVERNED_TOOL
    city = "Turin-helper" if turn == "loop" else "Bern-helper"
    assert governed.tools.bodies().count({"city": city}) == 1
    expected = one_response_of(mock_rounds)
    if turn == "loop":
        assert [i["type"] for i in expected["output"]] == ["reasoning", "reasoning", "message"]
        assert expected["previous_response_id"] is None
        assert mock_rounds[-1]["previous_response_id"] == final.id, "round 2 continued round 1"
    else:
        assert [i["name"] for i in expected["output"]] == ["lookup"]
        assert expected["tools"] == [LOOKUP]
    assert expected["usage"]["total_tokens"] == rounds * ROUND_TOKENS
    assert_same_response(as_sent(final), expected)


# 3c. A response tollgate changed, fetched by id through tollgate, is the one the
# client was given, not the upstream's first round (which lists the hidden call);
# a response tollgate did not change (through a tollgate that adds no governed
# tool) is the upstream's own.
@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "stream"])
def test_retrieving_a_response_returns_what_the_client_was_given(governed, tollgate_url, mock_url, streaming):
    c = client(governed.url)
    city = f"Graz-{'stream' if streaming else 'plain'}"
    conversation = user(f'call weather__current {{"city":"{city}"}}; call lookup {{"query":"again"}}')
    if streaming:
        events = list(c.responses.create(model=MODEL, input=conversation, tools=[LOOKUP], stream=True))
        given = check_stream(events)["completed"].to_dict()
    else:
        given = json.loads(
            c.responses.with_raw_response.create(model=MODEL, input=conversation, tools=[LOOKUP]).text
        )
    assert [i["name"] for i in given["output"]] == ["lookup"]
    upstream = upstream_object(mock_url, given["id"])
    assert GOVERNED_TOOL in json.dumps(upstream), "upstream, the id names a round with the hidden call"

    raw = c.responses.with_raw_response.retrieve(given["id"])
    assert raw.headers["x-tollgate-request-id"]
    fetched = json.loads(raw.text)
    assert_same_response(fetched, given)
    assert GOVERNED_TOOL not in raw.text
    assert c.responses.retrieve(given["id"]).output[0].name == "lookup"

    # Unchanged responses (a plain answer, a turn with only the client's call)
    # are fetched from the upstream.
    c = client(tollgate_url)
    for request in (
        {"input": "Say hello"},
        {"input": user(f'call lookup {{"query":"{city}"}}'), "tools": [LOOKUP]},
    ):
        if streaming:
            events = list(c.responses.create(model=MODEL, stream=True, **request))
            answered = check_stream(events)["completed"].to_dict()
        else:
            answered = json.loads(c.responses.with_raw_response.create(model=MODEL, **request).text)
        fetched = json.loads(c.responses.with_raw_response.retrieve(answered["id"]).text)
        assert_same_response(fetched, upstream_object(mock_url, answered["id"]))
        assert_same_response(fetched, answered)
    with pytest.raises(openai.NotFoundError) as raised:
        c.responses.retrieve("resp_never_made")
    assert "resp_never_made" in raised.value.message


# 4. A governed call and an allowed client call in one turn: the client gets only
# its own call, then continues either by `previous_response_id` or by replaying
# the whole conversation; either way the model gets both outputs.
@pytest.mark.parametrize("style", ["previous_response_id", "replay"])
@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "stream"])
def test_governed_and_client_calls_in_one_turn_then_the_client_continues(governed, style, streaming):
    c = client(governed.url)
    city = f"Oslo-{style}-{'stream' if streaming else 'plain'}"
    conversation = user(f'call weather__current {{"city":"{city}"}}; call lookup {{"query":"fjords"}}')
    raw = c.responses.with_raw_response.create(model=MODEL, input=conversation, tools=[LOOKUP], stream=streaming)
    request_id = raw.headers["x-tollgate-request-id"]
    if streaming:
        events = list(raw.parse())
        seen = check_stream(events)
        first = seen["completed"]
        assert [e.output_index for e in calls_in(events)] == [0] * len(calls_in(events)), "re-indexed from 0"
    else:
        first = raw.parse()
    assert types(first) == ["function_call"], "only the client's own call"
    [call] = first.output
    assert call.name == "lookup"
    assert json.loads(call.arguments) == {"query": "fjords"}
    assert call.call_id and call.id
    # Only one round so far (the client's call ends it); the governed tool ran.
    assert first.usage.total_tokens == ROUND_TOKENS
    assert governed.tools.bodies().count({"city": city}) == 1
    decided = {r["action"]["tool_name"]: r for r in receipts_of(governed, request_id)}
    assert set(decided) == {"weather__current", "lookup"}
    assert all(r["decision"] == "allow" for r in decided.values())
    assert decided["lookup"]["action"]["tool_call_id"] == call.call_id

    answer = result(call, "many fjords")
    if style == "previous_response_id":
        final = c.responses.create(model=MODEL, previous_response_id=first.id, input=[answer], tools=[LOOKUP])
        # The client continued what it was given, and is told so.
        assert final.previous_response_id == first.id
    else:
        final = c.responses.create(
            model=MODEL, input=conversation + as_input(first.output) + [answer], tools=[LOOKUP]
        )
    assert final.status == "completed"
    assert types(final) == ["message"]
    weather, looked_up = tool_outputs(final.output_text)
    assert json.loads(weather) == {"city": city, "temp_c": 18}
    assert looked_up == "many fjords"
    # The governed tool is not run again for the continuation.
    assert governed.tools.bodies().count({"city": city}) == 1
    assert final.usage.total_tokens == ROUND_TOKENS


# 5. A blocked call never reaches the client; the model's next round reads the
# denial as the call's output.
@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "stream"])
def test_blocked_call_is_hidden_and_the_model_reads_the_denial(governed, streaming):
    c = client(governed.url)
    request = {"input": user('call shell_exec {"cmd":"ls -l"}'), "tools": [SHELL_EXEC, LOOKUP]}
    if streaming:
        events = list(c.responses.create(model=MODEL, stream=True, **request))
        assert calls_in(events) == [], [e.type for e in calls_in(events)]
        response = check_stream(events)["completed"]
    else:
        response = c.responses.create(model=MODEL, **request)
    assert types(response) == ["message"]
    assert "tool_call_denied" in response.output_text
    [output] = tool_outputs(response.output_text)
    error = denial(output)
    assert "shell_exec" in error["message"]
    receipts = {r["receipt_id"]: r for r in governed.receipt_lines()}
    receipt = receipts[error["receipt_id"]]
    assert receipt["decision"] == "deny"
    assert receipt["surface"] == "responses"
    assert receipt["action"]["tool_name"] == "shell_exec"
    assert receipt["action"]["parameters"] == {"cmd": "ls -l"}
    assert response.usage.total_tokens == 2 * ROUND_TOKENS


# 5b. A blocked call and a client call in one turn: the client answers its own,
# and the model gets the denial and the client's output, for both styles of
# continuation.
@pytest.mark.parametrize("style", ["previous_response_id", "replay"])
def test_blocked_and_client_calls_in_one_turn(governed, style):
    c = client(governed.url)
    conversation = user(f'call shell_exec {{"cmd":"rm -rf /tmp/{style}"}}; call lookup {{"query":"splice"}}')
    first = ask(c, True, input=conversation, tools=[SHELL_EXEC, LOOKUP])
    assert types(first) == ["function_call"]
    [call] = first.output
    assert call.name == "lookup"
    answer = result(call, "lookup says hi")
    if style == "previous_response_id":
        final = c.responses.create(
            model=MODEL, previous_response_id=first.id, input=[answer], tools=[SHELL_EXEC, LOOKUP]
        )
    else:
        final = c.responses.create(
            model=MODEL, input=conversation + as_input(first.output) + [answer], tools=[SHELL_EXEC, LOOKUP]
        )
    denied, looked_up = tool_outputs(final.output_text)
    denial(denied)
    assert looked_up == "lookup says hi"


# 6. A conversation chained by `previous_response_id` over several requests, each
# continuing the id the client was given (governed loops in between).
@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "stream"])
def test_previous_response_id_chain(governed, streaming):
    c = client(governed.url)
    tag = "stream" if streaming else "plain"

    r1 = ask(c, streaming, input=f'call weather__current {{"city":"Rome-{tag}"}}')
    assert types(r1) == ["message"]
    assert json.loads(tool_outputs(r1.output_text)[0]) == {"city": f"Rome-{tag}", "temp_c": 18}

    # Without tollgate completing it, the upstream would continue a response whose
    # call has no output, and answer 400.
    r2 = ask(c, streaming, previous_response_id=r1.id, input=user(f'call weather__current {{"city":"Milan-{tag}"}}'))
    assert types(r2) == ["message"]
    assert json.loads(tool_outputs(r2.output_text)[0]) == {"city": f"Milan-{tag}", "temp_c": 18}
    assert r2.usage.total_tokens == 2 * ROUND_TOKENS

    r3 = ask(c, streaming, previous_response_id=r2.id, input=user('call lookup {"query":"chain"}'), tools=[LOOKUP])
    assert types(r3) == ["function_call"]
    [call] = r3.output
    assert call.name == "lookup"

    r4 = ask(c, streaming, previous_response_id=r3.id, input=[result(call, "chained")], tools=[LOOKUP])
    assert tool_outputs(r4.output_text) == ["chained"]

    r5 = ask(c, streaming, previous_response_id=r4.id, input="Say hello")
    assert r5.output_text == "Hello from the mock"
    assert len({r1.id, r2.id, r3.id, r4.id, r5.id}) == 5


# 6b. A response that continues another names, as its `previous_response_id`,
# the id the client gave: not the id of a round tollgate kept to itself.
@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "stream"])
def test_a_continuation_names_the_id_the_client_gave(governed, streaming):
    c = client(governed.url)
    # A two-round response: the client knows it by its first round's id only.
    looped = ask(c, streaming, input=user('call weather__current {"city":"Bonn"}'))
    assert types(looped) == ["message"]
    # Continued by a plain answer (relayed as it came) and by another loop.
    plain = ask(c, streaming, previous_response_id=looped.id, input="Say hello")
    assert plain.output_text == "Hello from the mock"
    again = ask(c, streaming, previous_response_id=looped.id, input=user('call weather__current {"city":"Linz"}'))
    assert json.loads(tool_outputs(again.output_text)[0]) == {"city": "Linz", "temp_c": 18}
    assert (plain.previous_response_id, again.previous_response_id) == (looped.id, looped.id), (
        f"the client continued {looped.id}"
    )


# 7. Reasoning items: the governed call is hidden, the reasoning item reaches the
# client with its `encrypted_content` unchanged, and a stateless follow-up that
# replays what the client was shown is accepted (the mock answers 400 when a call
# comes without its reasoning item, or a call without its output).
@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "stream"])
def test_reasoning_item_is_kept_and_a_stateless_follow_up_is_accepted(governed, streaming):
    c = client(governed.url)
    settings = {
        "reasoning": {"effort": "low"},
        "store": False,
        "include": ["reasoning.encrypted_content"],
        "tools": [LOOKUP],
    }
    city = f"Kyiv-{'stream' if streaming else 'plain'}"
    conversation = user(f'call weather__current {{"city":"{city}"}}; call lookup {{"query":"thoughts"}}')
    first = ask(c, streaming, input=conversation, **settings)
    assert types(first) == ["reasoning", "function_call"]
    reasoning, call = first.output
    n = number(first.id, "resp_mockagent")
    assert reasoning.id == f"rs_mockagent{n}"
    assert reasoning.encrypted_content == f"gAAAAB-mock-opaque-{n}="
    assert call.name == "lookup"
    assert governed.tools.bodies().count({"city": city}) == 1

    final = ask(c, streaming, input=conversation + as_input(first.output) + [result(call, "deep")], **settings)
    assert types(final) == ["reasoning", "message"]
    m = number(final.id, "resp_mockagent")
    assert final.output[0].encrypted_content == f"gAAAAB-mock-opaque-{m}="
    weather, looked_up = tool_outputs(final.output_text)
    assert json.loads(weather) == {"city": city, "temp_c": 18}
    assert looked_up == "deep"
    assert governed.tools.bodies().count({"city": city}) == 1


# 7b. A fully governed turn on a reasoning model without storage: tollgate replays
# the round's items itself, the client gets both rounds' reasoning items, and the
# next stateless turn (everything the client was shown, then a new message) is
# accepted: the hidden call comes back with its reasoning item and output.
def test_reasoning_governed_loop_without_storage_then_next_turn(governed):
    c = client(governed.url)
    settings = {"reasoning": {"effort": "low"}, "store": False, "include": ["reasoning.encrypted_content"]}
    conversation = user('call weather__current {"city":"Riga"}')
    first = c.responses.create(model=MODEL, input=conversation, **settings)
    assert types(first) == ["reasoning", "reasoning", "message"]
    n = number(first.id, "resp_mockagent")
    assert [r.id for r in first.output[:2]] == [f"rs_mockagent{n}", f"rs_mockagent{n + 1}"]
    assert [r.encrypted_content for r in first.output[:2]] == [
        f"gAAAAB-mock-opaque-{n}=",
        f"gAAAAB-mock-opaque-{n + 1}=",
    ]
    assert json.loads(tool_outputs(first.output_text)[0]) == {"city": "Riga", "temp_c": 18}
    assert first.usage.total_tokens == 2 * ROUND_TOKENS

    follow = c.responses.create(
        model=MODEL,
        input=conversation + as_input(first.output) + user('call lookup {"query":"next turn"}'),
        tools=[LOOKUP],
        **settings,
    )
    assert types(follow) == ["reasoning", "function_call"]
    assert follow.output[1].name == "lookup"
    assert json.loads(follow.output[1].arguments) == {"query": "next turn"}


# A client tool may not shadow a governed one (SPEC 6).
def test_client_tool_named_like_a_governed_tool_is_refused(governed):
    shadow = {"type": "function", "name": "weather__current", "parameters": {"type": "object"}, "strict": False}
    with pytest.raises(openai.BadRequestError) as raised:
        client(governed.url).responses.create(
            model=MODEL, input=user('call weather__current {"city":"Rome-shadow"}'), tools=[shadow]
        )
    assert raised.value.status_code == 400
    assert {"city": "Rome-shadow"} not in governed.tools.bodies()


# Without any directive nothing is governed: the answer is relayed as it is.
def test_plain_text_passes_through(governed):
    response = client(governed.url).responses.create(model=MODEL, input="Say hello")
    assert types(response) == ["message"]
    assert response.output_text == "Hello from the mock"
    assert response.usage.total_tokens == ROUND_TOKENS


# Last in the module: the receipt log of everything above verifies, every decision
# is on the Responses surface, and the check has teeth.
def test_receipt_log_verifies(governed, tmp_path):
    lines = governed.receipt_lines()
    decided = [r for r in lines if r["decision"] != "system"]
    assert decided, "the tests above made decisions"
    assert {r["surface"] for r in decided} == {"responses"}
    allowed = {r["action"]["tool_name"] for r in decided if r["decision"] == "allow"}
    denied = {r["action"]["tool_name"] for r in decided if r["decision"] == "deny"}
    assert {"weather__current", "lookup"} <= allowed
    assert denied == {"shell_exec"}
    # One receipt per call: no call id is decided twice.
    call_ids = [r["action"]["tool_call_id"] for r in decided]
    assert len(call_ids) == len(set(call_ids)), [i for i in call_ids if call_ids.count(i) > 1]

    for key in (governed.signing_key, governed.public_key):
        done = governed.verify(key)
        assert done.returncode == 0, done.stdout + done.stderr

    other = generate_key(tmp_path / "other-key.pem")
    assert governed.verify(other).returncode != 0
    edited = tmp_path / "edited.jsonl"
    text = governed.receipts.read_text()
    assert '"decision":"deny"' in text
    edited.write_text(text.replace('"decision":"deny"', '"decision":"allow"', 1))
    assert governed.verify(governed.public_key, log=edited).returncode != 0
