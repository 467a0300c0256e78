"""The official OpenAI Python SDK through tollgate in relay mode: every call
behaves as it would against the API itself, and tollgate's own errors raise the
SDK's usual exception types."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import openai
import pytest

KEY = "sk-test-relay-0123456789"


def client(base: str, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=20, **kwargs)


def test_chat_completion(tollgate_url):
    completion = client(tollgate_url).chat.completions.create(
        model="gpt-4o-mock", messages=[{"role": "user", "content": "Say hello"}]
    )
    assert completion.choices[0].message.content == "Hello from the mock"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens == 16
    # The upstream's request id reaches the SDK untouched.
    assert completion._request_id == "req_mock_0123456789"


def test_chat_completion_stream(tollgate_url):
    stream = client(tollgate_url).chat.completions.create(
        model="gpt-4o-mock",
        messages=[{"role": "user", "content": "Say hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert text == "Hello from the mock"
    assert finish == "stop"
    assert usage.total_tokens == 16


def test_chat_completion_stream_with_a_tool_call(tollgate_url):
    with client(tollgate_url).chat.completions.stream(
        model="gpt-4o-mock",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        extra_headers={"x-mock-tool-call": "1"},
    ) as stream:
        final = stream.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert call.id == "call_mock_weather"
    assert call.function.name == "get_weather"
    assert call.function.arguments == '{"city":"Paris"}'
    assert final.choices[0].finish_reason == "tool_calls"


def test_responses_create(tollgate_url):
    response = client(tollgate_url).responses.create(model="gpt-4o-mock", input="Say hello")
    assert response.output_text == "Hello from the mock"
    assert response.status == "completed"
    assert response.usage.total_tokens == 16


def test_responses_stream(tollgate_url):
    events = list(client(tollgate_url).responses.create(model="gpt-4o-mock", input="Say hello", stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created"
    assert types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "Hello from the mock"


def test_responses_stream_helper(tollgate_url):
    with client(tollgate_url).responses.stream(
        model="gpt-4o-mock", input="Weather?", extra_headers={"x-mock-tool-call": "1"}
    ) as stream:
        final = stream.get_final_response()
    assert final.output_text == "Hello from the mock"
    call = final.output[1]
    assert call.type == "function_call"
    assert call.call_id == "call_mock_weather"
    assert call.arguments == '{"city":"Paris"}'


def test_models_list(tollgate_url):
    ids = [m.id for m in client(tollgate_url).models.list()]
    assert ids == ["gpt-4o-mock", "gpt-4o-mini-mock"]


def test_upstream_429_raises_rate_limit_error(tollgate_url):
    with pytest.raises(openai.RateLimitError) as caught:
        client(tollgate_url).chat.completions.create(model="mock-429", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 429
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.request_id == "req_mock_0123456789"


def test_upstream_500_raises_internal_server_error(tollgate_url):
    with pytest.raises(openai.InternalServerError) as caught:
        client(tollgate_url).responses.create(model="mock-500", input="x")
    assert caught.value.status_code == 500


def test_unreachable_upstream_is_a_502_internal_server_error(dead_upstream_tollgate_url):
    with pytest.raises(openai.InternalServerError) as caught:
        client(dead_upstream_tollgate_url).chat.completions.create(
            model="gpt-4o-mock", messages=[{"role": "user", "content": "x"}]
        )
    error = caught.value
    assert error.status_code == 502
    assert error.code == "upstream_unreachable"
    assert error.type == "upstream_error"
    # tollgate's own request id, where the SDK looks for one.
    assert error.request_id.startswith("tgr_")


def test_upstream_timeout_is_a_504_internal_server_error(impatient_tollgate_url):
    with pytest.raises(openai.InternalServerError) as caught:
        client(impatient_tollgate_url).chat.completions.create(
            model="mock-hang", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.status_code == 504
    assert caught.value.code == "upstream_timeout"


def test_oversized_headers_are_a_431_status_error(impatient_tollgate_url):
    with pytest.raises(openai.APIStatusError) as caught:
        client(impatient_tollgate_url).models.list(extra_headers={"x-padding": "p" * 5000})
    assert caught.value.status_code == 431
    assert caught.value.code == "request_headers_too_large"


def test_a_request_tollgate_cannot_relay_is_a_bad_request_error(tollgate_url):
    with pytest.raises(openai.BadRequestError) as caught:
        client(tollgate_url).get(
            "/realtime", cast_to=object, options={"headers": {"connection": "upgrade", "upgrade": "websocket"}}
        )
    assert caught.value.status_code == 400
    assert caught.value.code == "upgrade_not_supported"


def test_oversized_body_is_a_413_status_error(tollgate_url):
    with pytest.raises(openai.APIStatusError) as caught:
        client(tollgate_url).chat.completions.create(
            model="gpt-4o-mock", messages=[{"role": "user", "content": "x" * (17 * 1024 * 1024)}]
        )
    assert caught.value.status_code == 413
    assert caught.value.code == "request_body_too_large"


def test_https_with_the_dev_ca_trusted_through_ssl_cert_file(tls_tollgate):
    """What certs/README.md tells Python users to do, done in a fresh interpreter."""
    url, ca = tls_tollgate
    script = textwrap.dedent(
        f"""
        import openai
        c = openai.OpenAI(base_url="{url}/v1", api_key="{KEY}", max_retries=0, timeout=20)
        print(c.chat.completions.create(model="gpt-4o-mock", messages=[{{"role": "user", "content": "hi"}}]).choices[0].message.content)
        """
    )
    env = {**os.environ, "SSL_CERT_FILE": str(ca)}
    env.pop("SSL_CERT_DIR", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Hello from the mock"
    # Without trusting the CA, the same call fails verification.
    env.pop("SSL_CERT_FILE")
    refused = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert "APIConnectionError" in refused.stderr
