"""Load-test fixtures: small stdlib HTTP servers with known behaviour, a real tuneserve server,
and Prometheus (a real server from the Debian package, on a free port)."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_sentences, write_tsv
from tests.service.conftest import Server, write_serving_config


class FakeServer:
    """A threaded stdlib server that answers /predict like tuneserve (two variants, chosen by
    user id) after ``before_answer()``: the hook that injects stalls or a fixed service time."""

    def __init__(self, before_answer: Callable[[], None] = lambda: None) -> None:
        self.before_answer = before_answer
        self.paused = threading.Lock()
        self.served = itertools.count()  # next() on a count is atomic under the GIL
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, body: dict[str, Any], variant: str | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if variant:
                    self.send_header("X-Model-Variant", variant)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer({"variants": [{"labels": ["negative", "positive"]}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.before_answer()
                int(body["user_id"].split("-")[1])  # the locustfile's sticky id, user-N
                # alternate per request: a run of two or more requests sees both variants (by
                # user-id parity, a run whose few users drew ids of one parity saw only one)
                variant = "ab"[next(fake.served) % 2]
                self._answer({"prediction_id": "p", "variant": variant}, variant)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_server() -> Iterator[Callable[..., FakeServer]]:
    servers: list[FakeServer] = []

    def start(before_answer: Callable[[], None] = lambda: None) -> FakeServer:
        servers.append(FakeServer(before_answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


class Staller:
    """Every ``every_s`` seconds the server stops answering for ``pause_s`` (a GC pause, a
    stuck disk): requests arriving meanwhile wait for the pause to end."""

    def __init__(self, pause_s: float = 0.2, every_s: float = 0.5) -> None:
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.pause_s, self.every_s = pause_s, every_s
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.every_s - self.pause_s):
            with self.lock:
                time.sleep(self.pause_s)

    def __call__(self) -> None:
        with self.lock:
            pass


@pytest.fixture(scope="session")
def traffic_tsv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Labelled sentences (integer labels 0/1, as SST-2 has them)."""
    return write_tsv(tmp_path_factory.mktemp("traffic") / "test.tsv", make_sentences(200, seed=5))


@pytest.fixture(scope="session")
def tuneserve_server(
    tiny_exports: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A real `bentoml serve` of two tiny INT8 variants (baseline and tuned), one worker.

    The accuracy guardrail is off: the tiny random models' accuracies differ by chance, and the
    feedback these tests post once took tuned out of rotation (p = 0.009 on 742 labels), leaving
    a later run without tuned traffic. The guardrails have their own tests."""
    root = tmp_path_factory.mktemp("loadtest-server")
    variants = {"baseline": tiny_exports["head"], "tuned": tiny_exports["lora"]}
    config = write_serving_config(
        root / "serving.toml", variants, "baseline", workers=1, guardrails={"accuracy": False}
    )
    server = Server(config, root / "bentoml-home", root / "server.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def within_precision(value_ms: float | None, exact_ms: float, digits: int = 3) -> bool:
    """A histogram's percentile is the exact sample rounded up to its bucket's end: at most
    1/1024 (3 digits) or 1/128 (2 digits) above it, plus the 1 us recording resolution."""
    relative = {3: 1 / 1024, 2: 1 / 128}[digits]
    return value_ms is not None and -0.0005 <= value_ms - exact_ms <= exact_ms * relative + 0.001


def require_tool(name: str) -> str:
    """The tool's path; in CI a missing tool fails the test, elsewhere it skips it."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed (Debian: apt-get install prometheus; .ci/run does it)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true but {message}")
    pytest.skip(message)
