"""Fixtures for the real-SDK suite: the mock upstream and tollgate, both the real
binaries built by `scripts/test`, started on 127.0.0.1 with ports chosen by the
system, and stopped at the end of the session."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import threading
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
