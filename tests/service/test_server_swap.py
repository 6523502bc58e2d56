"""Hot model swap in a real `bentoml serve` with two workers, under steady load, over HTTP and
through `tuneserve models`."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.model import model_version, read_export
from tests.conftest import make_sentences
from tests.service.conftest import write_serving_config
from tests.service.test_app import metric_value
from tests.service.test_swap import _tampered
from tuneserve.cli import main

pytestmark = pytest.mark.slow

TEXTS = [t for t, _ in make_sentences(40, seed=17)]
TOKEN = "swap-admin-token"
TOKEN_ENV = "TUNESERVE_ADMIN_TOKEN"


class Load:
    """Steady traffic from a few threads, each request on a new connection (so both workers
    get some): forced to ``tuned``, and sticky users; every answer is recorded."""

    def __init__(self, url: str, threads: int = 3) -> None:
        self.url = url
        self.answers: list[tuple[int, str, str]] = []  # status, variant, model_version
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,)) for n in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self, n: int) -> None:
        i = 0
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                body: dict[str, Any] = {"text": TEXTS[i % len(TEXTS)]}
                body |= {"variant": "tuned"} if i % 2 else {"user_id": f"user-{n}-{i}"}
                try:
                    r = client.post(f"{self.url}/predict", json=body,
                                    headers={"Connection": "close"})  # fmt: skip
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                finally:
                    i += 1
                if r.status_code != 200:
                    self.failures.append(f"{r.status_code} {r.text}")
                    continue
                answer = r.json()
                self.answers.append((r.status_code, answer["variant"], answer["model_version"]))

    def tuned_versions(self, since: int = 0) -> list[str]:
        return [version for _, variant, version in self.answers[since:] if variant == "tuned"]

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def _wait(check: Any, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _catalog_version(url: str) -> float:
    return metric_value(httpx.get(f"{url}/metrics").text, "tuneserve_model_catalog_version")


def test_a_swap_under_load_fails_no_request_and_reaches_both_workers(
    tmp_path: Path,
    tiny_exports: dict[str, Path],
    start_server: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)  # the server and the CLI read it
    variants = {"baseline": tiny_exports["head"], "tuned": tiny_exports["lora-cpu-fp32"]}
    config = write_serving_config(tmp_path / "serving.toml", variants, "baseline", workers=2)
    server = start_server(config)
    url = server.url
    old = model_version(read_export(tiny_exports["lora-cpu-fp32"])[0])
    new_export = tiny_exports["lora-cpu-int8"]
    new = model_version(read_export(new_export)[0])
    cli = ["--url", url, "--config", str(config)]

    load = Load(url)
    try:
        _wait(lambda: len(load.tuned_versions()) >= 30, "no steady load")
        assert main(["models", "replace", "tuned", str(new_export), *cli]) == 0
        assert f"tuned: now {new}" in capsys.readouterr().out
        _wait(lambda: _catalog_version(url) == 1, "a worker never followed the catalog")
        time.sleep(0.5)  # requests that took the old model before the switch have finished
        switched = len(load.answers)
        _wait(lambda: len(load.tuned_versions(switched)) >= 40, "no load after the switch")
        # a bad hash is refused with the reason, and the new model keeps serving
        bad = _tampered(tiny_exports["lora-cpu-fp32"], tmp_path, rehash=False)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        r = httpx.put(f"{url}/models/tuned", json={"path": str(bad)}, headers=headers, timeout=60)
        assert r.status_code == 422, r.text
        assert r.json()["kind"] == "model_rejected" and r.json()["status"] == 422
        assert "does not match its recorded sha256" in r.json()["error"]
        assert main(["models", "replace", "tuned", str(bad), *cli]) == 1
        assert "does not match its recorded sha256" in capsys.readouterr().err
        assert httpx.put(f"{url}/models/tuned", json={"path": str(bad)}).status_code == 401
        refused = len(load.answers)
        _wait(lambda: len(load.tuned_versions(refused)) >= 20, "no load after the refusal")
    finally:
        load.stop()
    assert load.failures == [], load.failures[:5]
    versions = load.tuned_versions()
    assert set(versions) == {old, new}  # each answer came from exactly one of the two
    assert set(load.tuned_versions(switched)) == {new}, "a worker still answered the old model"
    assert {variant for _, variant, _ in load.answers} == {"baseline", "tuned"}

    metrics = httpx.get(f"{url}/metrics").text
    assert metric_value(metrics, "tuneserve_model_swaps_total", variant="tuned",
                        outcome="replaced") == 2  # one per worker  # fmt: skip
    assert metric_value(metrics, "tuneserve_model_swaps_total", variant="tuned",
                        outcome="failed") >= 2  # fmt: skip
    assert metric_value(metrics, "tuneserve_model_info", variant="tuned", version=new) == 1
    assert metric_value(metrics, "tuneserve_model_info", variant="tuned", version=old) == 0

    # add a variant (weight 0, reachable forced), list it, remove it
    assert main(["models", "add", "fresh", str(tiny_exports["head-cpu-int8"]), *cli]) == 0
    _wait(lambda: _catalog_version(url) == 2, "a worker never loaded the added variant")
    for _ in range(6):
        r = httpx.post(f"{url}/predict", json={"text": "good", "variant": "fresh"},
                       headers={"Connection": "close"})  # fmt: skip
        assert r.status_code == 200 and r.json()["variant"] == "fresh"
    assert main(["models", "list", "--url", url]) == 0
    listed = capsys.readouterr().out
    assert "fresh" in listed and new in listed and "catalog version 2" in listed
    assert main(["models", "remove", "baseline", *cli]) == 1
    assert "409 conflict: 'baseline' is the control" in capsys.readouterr().err
    assert main(["models", "remove", "fresh", *cli]) == 0
    _wait(lambda: _catalog_version(url) == 3, "a worker kept the removed variant")
    r = httpx.post(f"{url}/predict", json={"text": "good", "variant": "fresh"})
    assert r.status_code == 400 and "unknown variant 'fresh'" in r.json()["error"]
    server.stop()
    log = server.log.read_text()
    for worker in ("tuneserve:1]", "tuneserve:2]"):  # each worker switched by itself
        assert any(worker in line and f"hot swap: tuned replaced, now {new}" in line
                   for line in log.splitlines()), f"worker {worker} never switched"  # fmt: skip
