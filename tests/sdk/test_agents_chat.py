"""The OpenAI Agents SDK (`openai-agents`) on Chat Completions through a governing
tollgate.

The agent knows only its own function tools; tollgate adds the governed
`weather__current` and runs it itself, hides calls the policy blocks (`shell_exec`)
and answers them for the model with a denial. The upstream is the mock's
`mock-agent` model (see examples/mock_upstream.rs), so each run is deterministic."""

from __future__ import annotations

import asyncio
import json
import os

# Before `agents` is imported: no traces to api.openai.com.
os.environ["OPENAI_AGENTS_DISABLE_TRACING"] = "1"

from agents import Agent, OpenAIChatCompletionsModel, Runner, function_tool  # noqa: E402
from conftest import tool_outputs  # noqa: E402
from openai import AsyncOpenAI  # noqa: E402

KEY = "sk-test-agents-0123456789"


def make_agent(base: str, tools: list) -> Agent:
    client = AsyncOpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=20)
    return Agent(
        name="tollgate-sdk-test",
        instructions="Use the tools the user asks for.",
        model=OpenAIChatCompletionsModel(model="mock-agent", openai_client=client),
        tools=tools,
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


def test_agent_tool_and_governed_tool_in_one_run(governed):
    ran: list[str] = []
    agent = make_agent(governed.url, [lookup_tool(ran)])
    before = len(governed.tools.bodies())
    result = asyncio.run(
        Runner.run(agent, 'call lookup {"query":"tollgate"}; call weather__current {"city":"Paris"}')
    )
    # The agent ran its own tool once; tollgate ran the governed one once.
    assert ran == ["tollgate"]
    assert governed.tools.bodies()[before:] == [{"city": "Paris"}]
    # The model saw both results, in the order it made the calls.
    first, second = tool_outputs(result.final_output)
    assert first == "lookup found tollgate"
    assert json.loads(second) == {"city": "Paris", "temp_c": 18}
    # The agent never saw the governed call.
    seen_tools = [
        item.raw_item.name for item in result.new_items if item.type == "tool_call_item"
    ]
    assert seen_tools == ["lookup"]


def test_agent_tool_and_governed_tool_streamed(governed):
    ran: list[str] = []
    agent = make_agent(governed.url, [lookup_tool(ran)])

    async def run() -> tuple[object, list[str]]:
        streamed = Runner.run_streamed(
            agent, 'call lookup {"query":"streams"}; call weather__current {"city":"Turin"}'
        )
        names = []
        async for event in streamed.stream_events():
            if event.type == "run_item_stream_event" and event.item.type == "tool_call_item":
                names.append(event.item.raw_item.name)
        return streamed, names

    streamed, names = asyncio.run(run())
    assert ran == ["streams"]
    assert names == ["lookup"]
    first, second = tool_outputs(streamed.final_output)
    assert first == "lookup found streams"
    assert json.loads(second) == {"city": "Turin", "temp_c": 18}


def test_blocked_agent_tool_never_runs(governed):
    ran: list[str] = []

    @function_tool
    def shell_exec(command: str) -> str:
        """Run a shell command.

        Args:
            command: The command line.
        """
        ran.append(command)
        return "it ran"

    agent = make_agent(governed.url, [shell_exec])
    result = asyncio.run(Runner.run(agent, 'call shell_exec {"command":"cat /etc/passwd"}'))
    assert ran == [], "the policy blocks shell_exec: the agent must never run it"
    assert not [item for item in result.new_items if item.type == "tool_call_item"]
    [output] = tool_outputs(result.final_output)
    error = json.loads(output)["error"]
    assert error["type"] == "tool_call_denied"
    assert "shell_exec" in error["message"]
    receipts = {r["receipt_id"]: r for r in governed.receipt_lines()}
    assert receipts[error["receipt_id"]]["decision"] == "deny"


def test_blocked_and_allowed_agent_tools_in_one_turn_then_receipts_verify(governed):
    ran: list[str] = []

    @function_tool
    def shell_exec(command: str) -> str:
        """Run a shell command.

        Args:
            command: The command line.
        """
        ran.append(command)
        return "it ran"

    agent = make_agent(governed.url, [shell_exec, lookup_tool(ran)])
    result = asyncio.run(
        Runner.run(agent, 'call shell_exec {"command":"rm -rf /"}; call lookup {"query":"both"}')
    )
    assert ran == ["both"], "only the allowed tool runs"
    denied, looked_up = tool_outputs(result.final_output)
    assert json.loads(denied)["error"]["type"] == "tool_call_denied"
    assert looked_up == "lookup found both"

    lines = governed.receipt_lines()
    decisions = {(r["decision"], r["action"]["tool_name"]) for r in lines if r["decision"] != "system"}
    assert ("deny", "shell_exec") in decisions
    assert ("allow", "lookup") in decisions
    done = governed.verify(governed.public_key)
    assert done.returncode == 0, done.stdout + done.stderr
