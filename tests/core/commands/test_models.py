"""`tuneserve models`: the admin token's variable and clear errors when the service is not there
or refuses (the calls against a live service: tests/service/test_server_swap.py)."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from tuneserve.cli import main


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the block ends


def test_an_unreachable_service_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    assert main(["models", "list", "--url", url]) == 1
    err = capsys.readouterr().err
    assert f"error: cannot reach the service at {url}" in err and "Point --url at it" in err


class _Refusing(BaseHTTPRequestHandler):
    """A service that lists one variant and refuses every change as the service does."""

    def do_GET(self) -> None:
        self._answer(200, b'{"control": "baseline", "variants": [{"name": "baseline", '
                          b'"model_version": "r@1", "weight": 1.0, "path": "/m"}]}')  # fmt: skip

    def do_DELETE(self) -> None:
        self._answer(409, b'{"error": "\'baseline\' is the control", "kind": "conflict", '
                          b'"status": 409}')  # fmt: skip

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        return None


def test_refusals_and_a_missing_token_say_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    config = tmp_path / "serving.toml"
    config.write_text('admin_token_env = "MY_ADMIN"\n[[variants]]\nname = "baseline"\n'
                      'path = "/m"\ncontrol = true\n')  # fmt: skip
    monkeypatch.delenv("MY_ADMIN", raising=False)
    try:
        assert main(["models", "remove", "baseline", "--url", url, "--config", str(config)]) == 1
        assert "set MY_ADMIN to the service's admin token" in capsys.readouterr().err
        monkeypatch.setenv("MY_ADMIN", "t")
        assert main(["models", "remove", "baseline", "--url", url, "--config", str(config)]) == 1
        err = capsys.readouterr().err
        assert "refused DELETE /models/baseline: 409 conflict: 'baseline' is the control" in err
        assert (
            main(["models", "add", "baseline", "/x", "--url", url, "--token-env", "MY_ADMIN"]) == 1
        )
        assert "'baseline' is served already: use `tuneserve models replace`" in (
            capsys.readouterr().err
        )
        assert (
            main(["models", "replace", "other", "/x", "--url", url, "--token-env", "MY_ADMIN"]) == 1
        )
        assert "'other' is not served (baseline): use `tuneserve models add`" in (
            capsys.readouterr().err
        )
        assert main(["models", "list", "--url", url]) == 0
        out = capsys.readouterr().out
        assert "baseline" in out and "r@1" in out and "(control)" in out
    finally:
        server.shutdown()
