"""The OpenAI Agents SDK (`openai-agents`) on the Responses API through a
governing tollgate.

The agent uses the SDK's default model, `OpenAIResponsesModel` (an `Agent` with a
model name and a default client set), and knows only its own function tools;
tollgate adds the governed `weather__current` and runs it itself, hides calls the
policy blocks (`shell_exec`) and answers them for the model with a denial. The
Runner continues a turn by replaying the items it was given (or, with
`auto_previous_response_id`, by `previous_response_id`), so each run also checks
that tollgate completes the conversation it changed: the mock (the `mock-agent`
model of examples/mock_upstream.rs) answers 400 on a call without its output."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

# Before `agents` is imported: no traces to api.openai.com.
os.environ["OPENAI_AGENTS_DISABLE_TRACING"] = "1"

from agents import (  # noqa: E402
    Agent,
    ModelSettings,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_default_openai_client,
)
from agents.models import _openai_shared  # noqa: E402
from agents.models.multi_provider import MultiProvider  # noqa: E402
from conftest import tool_outputs  # noqa: E402
from openai import AsyncOpenAI  # noqa: E402
from openai.types.shared import Reasoning  # noqa: E402

KEY = "sk-test-agents-responses-0123456789"
MODEL = "mock-agent"
ROUND_TOKENS = 15


@pytest.fixture
def default_client(governed):
    """Points the Agents SDK's default client at tollgate for one test (a new
    client per test: each test runs its own event loop), then puts back what was
    there."""
    previous = _openai_shared.get_default_openai_client()
    set_default_openai_client(
        AsyncOpenAI(base_url=f"{governed.url}/v1", api_key=KEY, max_retries=0, timeout=20),
        use_for_tracing=False,
    )
    yield
    _openai_shared.set_default_openai_client(previous)


def make_agent(tools: list, settings: ModelSettings | None = None) -> Agent:
    return Agent(
        name="tollgate-sdk-responses-test",
        instructions="Use the tools the user asks for.",
        model=MODEL,
        tools=tools,
        model_settings=settings or ModelSettings(),
    )


def lookup_tool(ran: list[str]):
    @function_tool
    def lookup(query: str) -> str:
        """Look something up.

        Args:
            query: What to look up.
        """
        ran.append(query)
        return f"lookup found {query}"

    return lookup


def shell_exec_tool(ran: list[str]):
    @function_tool
    def shell_exec(command: str) -> str:
        """Run a shell command.

        Args:
            command: The command line.
        """
        ran.append(command)
        return "it ran"

    return shell_exec


def called(result) -> list[str]:
    """The names of the tool calls the agent saw."""
    return [item.raw_item.name for item in result.new_items if item.type == "tool_call_item"]


def on_responses(result) -> None:
    """Every model call of the run went to the Responses API (the mock's ids)."""
    ids = [r.response_id for r in result.raw_responses]
    assert ids and all((i or "").startswith("resp_mockagent") for i in ids), ids


async def streamed_run(agent: Agent, text: str, **options):
    streamed = Runner.run_streamed(agent, text, **options)
    names = []
    async for event in streamed.stream_events():
        if event.type == "run_item_stream_event" and event.item.type == "tool_call_item":
            names.append(event.item.raw_item.name)
    return streamed, names


def test_the_default_model_is_the_responses_model(default_client):
    assert isinstance(MultiProvider().get_model(MODEL), OpenAIResponsesModel)


@pytest.mark.parametrize("streaming", [False, True], ids=["run", "run_streamed"])
def test_agent_tool_and_governed_tool_in_one_turn(governed, default_client, streaming):
    ran: list[str] = []
    agent = make_agent([lookup_tool(ran)])
    city = "Turin" if streaming else "Paris"
    query = "streams" if streaming else "tollgate"
    text = f'call weather__current {{"city":"{city}"}}; call lookup {{"query":"{query}"}}'
    before = len(governed.tools.bodies())
    if streaming:
        result, names = asyncio.run(streamed_run(agent, text))
        assert names == ["lookup"], "the governed call must not reach the agent"
    else:
        result = asyncio.run(Runner.run(agent, text))
    on_responses(result)
    # The agent ran its own tool once; tollgate ran the governed one once.
    assert ran == [query]
    assert governed.tools.bodies()[before:] == [{"city": city}]
    assert called(result) == ["lookup"]
    # The model saw both results.
    weather, looked_up = tool_outputs(result.final_output)
    assert json.loads(weather) == {"city": city, "temp_c": 18}
    assert looked_up == f"lookup found {query}"
    # Two model calls of one round each.
    assert len(result.raw_responses) == 2
    assert sum(r.usage.total_tokens for r in result.raw_responses) == 2 * ROUND_TOKENS


def test_next_turn_replays_the_run_and_is_accepted(governed, default_client):
    ran: list[str] = []
    agent = make_agent([lookup_tool(ran)])

    async def two_turns():
        # One event loop for both runs: the client's connections belong to it.
        first = await Runner.run(agent, 'call weather__current {"city":"Gent"}; call lookup {"query":"one"}')
        # The next turn: everything the agent has of the conversation, then a new
        # message.
        history = first.to_input_list() + [{"role": "user", "content": 'call lookup {"query":"two"}'}]
        return first, await Runner.run(agent, history)

    first, second = asyncio.run(two_turns())
    weather, _ = tool_outputs(first.final_output)
    assert json.loads(weather) == {"city": "Gent", "temp_c": 18}
    on_responses(second)
    assert ran == ["one", "two"]
    assert tool_outputs(second.final_output) == ["lookup found two"]
    assert governed.tools.bodies().count({"city": "Gent"}) == 1


def test_chained_by_previous_response_id(governed, default_client):
    ran: list[str] = []
    agent = make_agent([lookup_tool(ran)])
    result = asyncio.run(
        Runner.run(
            agent,
            'call weather__current {"city":"Bruges"}; call lookup {"query":"chained"}',
            auto_previous_response_id=True,
        )
    )
    on_responses(result)
    assert ran == ["chained"]
    assert called(result) == ["lookup"]
    weather, looked_up = tool_outputs(result.final_output)
    assert json.loads(weather) == {"city": "Bruges", "temp_c": 18}
    assert looked_up == "lookup found chained"


@pytest.mark.parametrize("streaming", [False, True], ids=["run", "run_streamed"])
def test_reasoning_without_storage(governed, default_client, streaming):
    """A reasoning model with `store: false`: the agent replays the reasoning item
    it was shown with its own call; the hidden governed call must come back with
    it (the mock refuses a call replayed without its reasoning item)."""
    ran: list[str] = []
    settings = ModelSettings(
        reasoning=Reasoning(effort="low"), store=False, response_include=["reasoning.encrypted_content"]
    )
    agent = make_agent([lookup_tool(ran)], settings)
    city = "Ghent-stream" if streaming else "Ghent-run"
    text = f'call weather__current {{"city":"{city}"}}; call lookup {{"query":"why"}}'
    if streaming:
        result, names = asyncio.run(streamed_run(agent, text))
        assert names == ["lookup"]
    else:
        result = asyncio.run(Runner.run(agent, text))
    on_responses(result)
    assert ran == ["why"]
    assert called(result) == ["lookup"]
    reasoning = [item.raw_item for item in result.new_items if item.type == "reasoning_item"]
    assert len(reasoning) == 2, "one reasoning item per model call"
    for item in reasoning:
        n = item.id.removeprefix("rs_mockagent")
        assert item.encrypted_content == f"gAAAAB-mock-opaque-{n}="
    weather, looked_up = tool_outputs(result.final_output)
    assert json.loads(weather) == {"city": city, "temp_c": 18}
    assert looked_up == "lookup found why"


@pytest.mark.parametrize("streaming", [False, True], ids=["run", "run_streamed"])
def test_blocked_agent_tool_never_runs(governed, default_client, streaming):
    ran: list[str] = []
    agent = make_agent([shell_exec_tool(ran)])
    text = 'call shell_exec {"command":"cat /etc/passwd"}'
    if streaming:
        result, names = asyncio.run(streamed_run(agent, text))
        assert names == []
    else:
        result = asyncio.run(Runner.run(agent, text))
    on_responses(result)
    assert ran == [], "the policy blocks shell_exec: the agent must never run it"
    assert called(result) == []
    [output] = tool_outputs(result.final_output)
    error = json.loads(output)["error"]
    assert error["type"] == "tool_call_denied"
    assert "shell_exec" in error["message"]
    receipts = {r["receipt_id"]: r for r in governed.receipt_lines()}
    assert receipts[error["receipt_id"]]["decision"] == "deny"
    assert receipts[error["receipt_id"]]["surface"] == "responses"


# Last in the module: blocked, allowed and governed calls in one turn, then the
# module's receipt log verifies.
def test_blocked_allowed_and_governed_in_one_turn_then_receipts_verify(governed, default_client):
    ran: list[str] = []
    agent = make_agent([shell_exec_tool(ran), lookup_tool(ran)])
    result = asyncio.run(
        Runner.run(
            agent,
            'call shell_exec {"command":"rm -rf /"}; call weather__current {"city":"Ypres"}; '
            'call lookup {"query":"all three"}',
        )
    )
    assert ran == ["all three"], "only the allowed client tool runs"
    assert called(result) == ["lookup"]
    denied, weather, looked_up = tool_outputs(result.final_output)
    assert json.loads(denied)["error"]["type"] == "tool_call_denied"
    assert json.loads(weather) == {"city": "Ypres", "temp_c": 18}
    assert looked_up == "lookup found all three"

    lines = [r for r in governed.receipt_lines() if r["decision"] != "system"]
    assert {r["surface"] for r in lines} == {"responses"}
    decisions = {(r["decision"], r["action"]["tool_name"]) for r in lines}
    assert decisions == {("deny", "shell_exec"), ("allow", "lookup"), ("allow", "weather__current")}
    call_ids = [r["action"]["tool_call_id"] for r in lines]
    assert len(call_ids) == len(set(call_ids)), "one receipt per call"
    done = governed.verify(governed.public_key)
    assert done.returncode == 0, done.stdout + done.stderr
