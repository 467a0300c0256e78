"""Fixtures for the real-SDK suite: the mock upstream and tollgate, both the real
binaries built by `scripts/test`, started on 127.0.0.1 with ports chosen by the
system, and stopped at the end of the session.

`governed` (one per test module) is tollgate governing tool calls: a policy that
blocks `shell_exec`, its own signing key and receipt log, and one governed HTTP
tool, `weather__current`, served by a small HTTP server in this process."""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"
TOLLGATE = Path(os.environ.get("TOLLGATE_BIN", TARGET / "tollgate"))
MOCK = Path(os.environ.get("MOCK_UPSTREAM_BIN", TARGET / "examples" / "mock_upstream"))
WAIT_SECONDS = 20


class Process:
    """A child process whose output lines are collected on a thread."""

    def __init__(self, args: list[str], stream: str, env: dict[str, str] | None = None, cwd: Path | None = None):
        for binary in (Path(args[0]),):
            if not binary.exists():
                raise RuntimeError(f"{binary} is missing: run scripts/test, which builds it")
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE if stream == "stdout" else subprocess.DEVNULL,
            stderr=subprocess.PIPE if stream == "stderr" else subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        pipe = self.proc.stdout if stream == "stdout" else self.proc.stderr
        threading.Thread(target=self._pump, args=(pipe,), daemon=True).start()

    def _pump(self, pipe) -> None:
        for line in pipe:
            self.lines.put(line)

    def wait_for(self, needle: str) -> str:
        seen = []
        while True:
            try:
                line = self.lines.get(timeout=WAIT_SECONDS)
            except queue.Empty:
                raise RuntimeError(f"no line with {needle!r}; saw {seen}") from None
            seen.append(line)
            if needle in line:
                return line

    def url(self) -> str:
        line = self.wait_for("listening on ")
        return line.split("listening on ", 1)[1].split()[0]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_tollgate(upstream: str, tmp: Path, *extra: str) -> tuple[Process, str]:
    proc = Process(
        [str(TOLLGATE), "serve", "--listen", "127.0.0.1:0", "--upstream", upstream, *extra],
        "stderr",
        env={"TOLLGATE_LOG": "info"},
        cwd=tmp,
    )
    return proc, proc.url()


@pytest.fixture(scope="session")
def mock_url():
    proc = Process([str(MOCK), "--listen", "127.0.0.1:0"], "stdout")
    url = proc.url()
    yield url
    proc.stop()


@pytest.fixture(scope="session")
def tollgate_url(mock_url, tmp_path_factory):
    proc, url = start_tollgate(mock_url, tmp_path_factory.mktemp("tollgate"))
    yield url
    proc.stop()


@pytest.fixture(scope="session")
def impatient_tollgate_url(mock_url, tmp_path_factory):
    """tollgate that waits at most half a second for response headers and accepts
    small header sections only."""
    proc, url = start_tollgate(
        mock_url,
        tmp_path_factory.mktemp("impatient"),
        "--first-byte-timeout",
        "500ms",
        "--max-header-bytes",
        "4096",
    )
    yield url
    proc.stop()


@pytest.fixture(scope="session")
def dead_upstream_tollgate_url(tmp_path_factory):
    """tollgate in front of a port where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc, url = start_tollgate(f"http://127.0.0.1:{port}", tmp_path_factory.mktemp("dead"))
    yield url
    proc.stop()


@pytest.fixture(scope="session")
def tls_tollgate(mock_url, tmp_path_factory):
    """tollgate over HTTPS with the development certificates; yields (url, ca path)."""
    tmp = tmp_path_factory.mktemp("tls")
    subprocess.run([str(TOLLGATE), "certs", "dev", "--dir", "certs"], cwd=tmp, check=True, capture_output=True)
    proc, url = start_tollgate(
        mock_url, tmp, "--tls-cert", "certs/server.pem", "--tls-key", "certs/server-key.pem"
    )
    yield url.replace("127.0.0.1", "localhost"), tmp / "certs" / "ca.pem"
    proc.stop()


# The policy of the `governed` fixture: every tool is allowed except `shell_exec`.
BLOCK_SHELL_EXEC = """\
hushspec: "0.1.0"
name: sdk-block-shell-exec
rules:
  tool_access:
    block: [shell_exec]
    default: allow
"""


class ToolServer:
    """The governed HTTP tool: `POST /weather` with `{"city": ...}` answers
    `{"city": ..., "temp_c": 18}`. Every request body it receives is recorded."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"unparsed": raw.decode("utf-8", "replace")}
                server.requests.append({"path": self.path, "body": body})
                if self.path != "/weather" or not isinstance(body, dict):
                    self.send_error(404)
                    return
                answer = json.dumps({"city": body.get("city"), "temp_c": 18}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format, *args) -> None:  # noqa: A002
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def bodies(self, path: str = "/weather") -> list[dict]:
        return [r["body"] for r in self.requests if r["path"] == path]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class Governed:
    """A running governing tollgate and the files it writes."""

    url: str
    dir: Path
    receipts: Path
    signing_key: Path
    public_key: Path
    tools: ToolServer
    proc: Process = field(repr=False)

    def receipt_lines(self) -> list[dict]:
        if not self.receipts.exists():
            return []
        return [json.loads(line) for line in self.receipts.read_text().splitlines() if line.strip()]

    def verify(self, *keys: Path, log: Path | None = None) -> subprocess.CompletedProcess:
        args = [str(TOLLGATE), "receipts", "verify", str(log or self.receipts)]
        for key in keys:
            args += ["--public-key", str(key)]
        return subprocess.run(args, cwd=self.dir, capture_output=True, text=True, timeout=WAIT_SECONDS)


def generate_key(out: Path) -> Path:
    """Writes a signing key with `tollgate keys generate` and returns the path of a
    file holding its public half (as printed by the command)."""
    done = subprocess.run(
        [str(TOLLGATE), "keys", "generate", "--out", str(out)],
        capture_output=True, text=True, check=True, timeout=WAIT_SECONDS,
    )
    begin = done.stdout.index("-----BEGIN PUBLIC KEY-----")
    end = done.stdout.index("-----END PUBLIC KEY-----") + len("-----END PUBLIC KEY-----")
    public = out.with_name(out.stem + ".pub.pem")
    public.write_text(done.stdout[begin:end] + "\n")
    return public


def start_governed(upstream: str, tmp: Path, policy: str = BLOCK_SHELL_EXEC) -> Governed:
    tools = ToolServer()
    (tmp / "policy.yaml").write_text(policy)
    (tmp / "tollgate.toml").write_text(
        f"""\
[[tools.http]]
name = "weather__current"
url = "{tools.url}/weather"
description = "Current weather for a city"
parameters = {{ type = "object", properties = {{ city = {{ type = "string" }} }}, required = ["city"] }}
has_side_effects = false
timeout_ms = 5000
"""
    )
    public = generate_key(tmp / "signing-key.pem")
    proc, url = start_tollgate(
        upstream,
        tmp,
        "--config", str(tmp / "tollgate.toml"),
        "--policy", str(tmp / "policy.yaml"),
        "--receipts", str(tmp / "receipts.jsonl"),
        "--signing-key", str(tmp / "signing-key.pem"),
    )
    return Governed(url, tmp, tmp / "receipts.jsonl", tmp / "signing-key.pem", public, tools, proc)


@pytest.fixture(scope="module")
def governed(mock_url, tmp_path_factory):
    """A governing tollgate of this test module's own (policy blocking `shell_exec`,
    governed tool `weather__current`, signing key and receipt log in a temporary
    directory)."""
    g = start_governed(mock_url, tmp_path_factory.mktemp("governed"))
    yield g
    g.proc.stop()
    g.tools.stop()


# Helpers of the governed suites (Chat Completions and Responses).

# How the mock-agent model's answer to a run of tool outputs begins.
RESULTS = "Tool results: "


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def tool_outputs(text: str) -> list[str]:
    """The tool outputs the mock quotes in its answer to a run of outputs."""
    assert text.startswith(RESULTS), text
    return text[len(RESULTS):].split(" | ")


def denial(output: str) -> dict:
    """The `error` object of a denial the model received as a call's output."""
    body = json.loads(output)
    error = body["error"]
    assert error["type"] == "tool_call_denied", body
    assert error["code"], body
    assert error["message"], body
    assert error["receipt_id"], body
    assert isinstance(error["recovery"], list) and error["recovery"], body
    return error
