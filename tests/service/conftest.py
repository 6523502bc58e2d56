"""Service fixtures: serving configs over the tiny exports, the app in process, a real server."""

from __future__ import annotations

import importlib
import itertools
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from service.dialect import redact
from tests.conftest import REPO

PG_URL_ENV = "TUNESERVE_TEST_PG_URL"


@pytest.fixture(autouse=True)
def _no_store_url_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """A TUNESERVE_STORE_URL in the developer's shell must not point the tests at a database."""
    monkeypatch.delenv("TUNESERVE_STORE_URL", raising=False)


def _pg_unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() in ("1", "true"):
        pytest.fail(f"{reason}; CI=true: the PostgreSQL store tests must run (.ci/run starts one)")
    pytest.skip(reason)


def with_search_path(url: str, schema: str) -> str:
    """``url`` with its connections' search_path set to ``schema`` (libpq's options)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query["options"] = f"{query.get('options', '')} -c search_path={schema}".strip()
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


@pytest.fixture
def pg_url() -> Iterator[Callable[[], str]]:
    """A factory of PostgreSQL store URLs, each to a fresh empty schema of the database named by
    $TUNESERVE_TEST_PG_URL (dropped afterwards); skips without a server, fails so under CI."""
    base = os.environ.get(PG_URL_ENV, "").strip()
    if not base:
        _pg_unavailable(f"{PG_URL_ENV} is not set (a PostgreSQL database for the store tests)")
    import psycopg

    try:
        admin = psycopg.connect(base, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        detail = " ".join(str(exc).split())
        _pg_unavailable(f"PostgreSQL at {redact(base)} is unreachable: {detail}")
    admin.execute("SET lock_timeout = '20s'")
    schemas: list[str] = []

    def new() -> str:
        schema = f"test_{uuid.uuid4().hex[:16]}"
        admin.execute(f"CREATE SCHEMA {schema}")
        schemas.append(schema)
        return with_search_path(base, schema)

    yield new
    for schema in schemas:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
    admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Path | str]:
    """A factory of fresh, empty store locations: SQLite files, or PostgreSQL schemas."""
    if request.param == "postgresql":
        factory: Callable[[], str] = request.getfixturevalue("pg_url")
        return factory
    numbers = itertools.count()
    return lambda: tmp_path / f"store-{next(numbers)}.sqlite"


def write_serving_config(
    path: Path, variants: dict[str, Path], control: str, **sections: dict[str, Any] | Any
) -> Path:
    """A serving TOML: ``variants`` name -> export dir, equal weights; extra top-level keys and
    sections (``batching={...}``, ``limits={...}``)."""
    lines = []
    tables = []
    experiment = {"id_key_file": str(path.parent / "prediction-id.key")}
    store = {"path": str(path.parent / "experiment.sqlite")}
    sections = {
        **sections,
        "experiment": experiment | dict(sections.get("experiment", {})),
        "store": store | dict(sections.get("store", {})),
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            tables.append(f"[{key}]")
            tables += [f"{k} = {_toml(v)}" for k, v in value.items()]
        else:
            lines.append(f"{key} = {_toml(value)}")
    for name, export in variants.items():
        lines += ["[[variants]]", f'name = "{name}"', f'path = "{export}"']
        lines.append(f"control = {'true' if name == control else 'false'}")
    path.write_text("\n".join(lines + tables) + "\n")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def load_app(config: Path) -> Any:
    """The service module imported afresh for ``config`` (it reads its config at import)."""
    os.environ["TUNESERVE_SERVING_CONFIG"] = str(config)
    import service.app

    return importlib.reload(service.app)


def asgi_app(config: Path) -> Any:
    """A fresh ASGI app of the service for ``config``, for Starlette's test client.

    BentoML registers its own request metrics in prometheus_client's global registry when an
    app is built; a second app in the same process would collide, so they are removed first.
    """
    from prometheus_client import REGISTRY

    for collector in list(REGISTRY._collector_to_names):
        if any(n.startswith("bentoml_") for n in REGISTRY._collector_to_names[collector]):
            REGISTRY.unregister(collector)
    return load_app(config).Tuneserve.to_asgi()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A real `bentoml serve` subprocess on 127.0.0.1 with its own BENTOML_HOME."""

    def __init__(self, config: Path, home: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {
            **os.environ,
            "TUNESERVE_SERVING_CONFIG": str(config),
            "BENTOML_HOME": str(home),
            "BENTOML_DO_NOT_TRACK": "true",
            "PYTHONUNBUFFERED": "1",  # every log line reaches the file before the server stops
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # bentoml serve sets up its own
        env.pop("TUNESERVE_STORE_URL", None)  # the config names the store
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", "service.app:Tuneserve",
             "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bentoml serve exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready in {timeout_s} s: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(10)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Any]:
    """Start servers for a test (``start_server(config)``); all are stopped afterwards."""
    servers: list[Server] = []

    def start(config: Path, wait: bool = True) -> Server:
        n = len(servers)
        server = Server(config, tmp_path / f"bentoml-home-{n}", tmp_path / f"server-{n}.log")
        servers.append(server)
        if wait:
            server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()
