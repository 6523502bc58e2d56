"""`serve --try`: its split checked before the server starts, labels named as the model names
them, and a client that honours Retry-After (against a real HTTP server on 127.0.0.1)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from service import launch
from tests.service.conftest import write_serving_config
from tuneserve.errors import DataError
from tuneserve.lineage import DataColumns


class _Answers(BaseHTTPRequestHandler):
    """Answers each POST with the next (status, headers) of the server's script."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        server: Any = self.server
        status, headers = server.script.pop(0) if server.script else (200, {})
        server.seen += 1
        body = json.dumps({"kind": "overloaded"} if status != 200 else {"label": "ok"}).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Any]:
    httpd: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    httpd.script, httpd.seen = [], 0
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()


def test_a_503_with_retry_after_is_retried_until_it_succeeds(server: Any) -> None:
    url = f"http://127.0.0.1:{server.server_address[1]}/predict"
    server.script = [(503, {"Retry-After": "0"}), (429, {"Retry-After": "0"})]
    status, body, _ = launch._post(url, {"text": "x"})
    assert (status, body, server.seen) == (200, {"label": "ok"}, 3)


def test_other_errors_and_a_503_without_retry_after_are_not_retried(server: Any) -> None:
    url = f"http://127.0.0.1:{server.server_address[1]}/predict"
    server.script = [(503, {}), (200, {})]
    assert launch._post(url, {"text": "x"})[0] == 503 and server.seen == 1
    server.script = [(400, {"Retry-After": "0"})]
    assert launch._post(url, {"text": "x"})[0] == 400 and server.seen == 2
    server.script = [(503, {"Retry-After": "0"})] * (launch.RETRIES + 1)
    assert launch._post(url, {"text": "x"})[0] == 503 and server.seen == 3 + launch.RETRIES


def test_the_split_is_checked_against_the_models_columns_before_serving(
    tmp_path: Path, tiny_exports: dict[str, Path]
) -> None:
    variants = {"baseline": tiny_exports["head"], "tuned": tiny_exports["lora"]}
    config = write_serving_config(tmp_path / "serving.toml", variants, "baseline", workers=1)
    texts = tmp_path / "topics.csv"
    texts.write_text("text,label\nStocks rise,Business\nNew GPU ships,Sci/Tech\n")
    # the tiny models were trained on `sentence` columns (their train runs' data.text_column)
    with pytest.raises(
        DataError,
        match=r"no column 'sentence' \(columns: text, label\): the "
        r"columns come from the train run .*; pass --text-column/--label-column",
    ):
        launch.serve(config, port=9, try_n=2, texts=texts)  # port 9: nothing would answer
    with pytest.raises(DataError, match=r"no column 'topic'"):
        launch.serve(config, port=9, try_n=2, texts=texts, text_column="text", label_column="topic")


def test_raw_labels_get_the_models_names() -> None:
    labels = ["negative", "positive"]
    assert launch.model_label(1, labels, None) == "positive"  # label i: the i-th label
    assert launch.model_label("Sci/Tech", ["Business", "Sci/Tech"], None) == "Sci/Tech"
    named = DataColumns("text", "label", "test", {"pos": "positive", "neg": "negative"})
    assert launch.model_label("pos", labels, named) == "positive"  # the train config's names
    assert named.model_label("other") == "other"


@pytest.mark.slow
def test_try_sends_the_split_and_prints_the_table(
    tmp_path: Path, tiny_exports: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import make_sentences, write_tsv
    from tests.service.conftest import free_port

    variants = {"baseline": tiny_exports["head"], "tuned": tiny_exports["lora"]}
    config = write_serving_config(tmp_path / "serving.toml", variants, "baseline", workers=1)
    texts = write_tsv(tmp_path / "test.tsv", make_sentences(12, seed=3))
    assert launch.serve(config, port=free_port(), try_n=12, texts=texts) == 0
    out = capsys.readouterr().out
    assert f"12 texts from {texts}, 0 failed" in out
    assert "feedback: 12 of 12 true labels stored" in out  # 0/1 named as the models name them
