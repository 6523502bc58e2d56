"""A real `bentoml serve` subprocess on 127.0.0.1, its own BENTOML_HOME and port, over HTTP."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, make_sentences
from tests.service.conftest import write_serving_config
from tests.service.test_app import metric_value
from tests.service.test_predictor import offline_probs

pytestmark = pytest.mark.slow

TEXTS = [t for t, _ in make_sentences(64, seed=11)]


def _config(tmp_path: Path, exports: dict[str, Path], **sections: Any) -> Path:
    variants = {"baseline": exports["head"], "tuned": exports["lora-cpu-fp32"]}
    return write_serving_config(tmp_path / "serving.toml", variants, "baseline", **sections)


async def _post_all(
    url: str, bodies: list[dict[str, Any]], concurrency: int | None = None
) -> list[httpx.Response]:
    """POST every body, ``concurrency`` at a time (default: all at once)."""
    concurrency = concurrency or len(bodies)
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def post(body: dict[str, Any]) -> httpx.Response:
            async with gate:
                return await client.post(url, json=body)

        return await asyncio.gather(*(post(b) for b in bodies))


def test_two_workers_predict_count_and_keep_text_out_of_logs(
    tmp_path: Path, tiny_exports: dict[str, Path], start_server: Any
) -> None:
    server = start_server(_config(tmp_path, tiny_exports, workers=2))
    expected = offline_probs(tiny_exports["lora-cpu-fp32"], TEXTS[:16])
    for text, probs in zip(TEXTS[:16], expected, strict=True):
        r = httpx.post(f"{server.url}/predict", json={"text": text, "variant": "tuned"})
        assert r.status_code == 200 and r.headers["x-model-variant"] == "tuned"
        got = [r.json()["scores"]["negative"], r.json()["scores"]["positive"]]
        np.testing.assert_allclose(got, probs, atol=1e-6)

    before = httpx.get(f"{server.url}/metrics").text
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(
            lambda t: httpx.post(f"{server.url}/predict", json={"text": t}).status_code,
            TEXTS,
        ))  # fmt: skip
    secret = "s3cret-customer-text"
    bad = [{"text": 5, "user_id": secret}, {"text": [secret]}, {"txt": secret}]
    for body in bad:
        assert httpx.post(f"{server.url}/predict", json=body).status_code == 400
    r = httpx.post(f"{server.url}/predict", content=b'{"text": "' + secret.encode() + b'"')
    assert r.status_code == 400
    after = httpx.get(f"{server.url}/metrics").text
    assert codes == [200] * 64
    sticky = {httpx.post(f"{server.url}/predict", json={"text": "good"},
                         headers={"X-User-Id": "user-7"}).json()["variant"]
              for _ in range(20)}  # fmt: skip
    assert len(sticky) == 1, "one user saw two variants across the two workers"

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta("tuneserve_requests_total", kind="predict", outcome="200") == 64
    assert delta("tuneserve_requests_total", kind="predict", outcome="400") == 4
    assert delta("tuneserve_predictions_total") == 64
    assert delta("tuneserve_inference_seconds_count") == 64
    assert metric_value(after, "tuneserve_ready") == 1
    assert metric_value(after, "tuneserve_model_info") == 2  # max over workers, per variant
    # each worker's own memory (service/memory.py): one series per BentoML worker index, its
    # figure the worker's RSS (sampled every 2 s), none for a device on CPU
    rss = {s.labels["worker"]: s.value for f in text_string_to_metric_families(after)
           for s in f.samples if s.name == "tuneserve_process_resident_memory_bytes"}  # fmt: skip
    assert rss.keys() == {"1", "2"}, rss
    workers = [c.memory_info().rss for c in psutil.Process(server.proc.pid).children(True)
               if any("_bentoml_impl.worker" in part for part in c.cmdline())]  # fmt: skip
    assert len(workers) == 2
    assert sum(rss.values()) == pytest.approx(sum(workers), rel=0.15)
    assert "tuneserve_device_memory_bytes{" not in after
    server.stop()
    log = server.log.read_text()
    assert "entry_service:tuneserve:2" in log, "the second worker never logged"
    assert secret not in log


def test_adaptive_batching_gives_each_caller_its_answer(
    tmp_path: Path, tiny_exports: dict[str, Path], start_server: Any
) -> None:
    config = _config(
        tmp_path, tiny_exports, workers=1, batching={"mode": "adaptive", "max_latency_ms": 5.0}
    )
    server = start_server(config)
    before = httpx.get(f"{server.url}/metrics").text
    bodies = [{"text": t, "variant": "tuned"} for t in TEXTS]
    responses = asyncio.run(_post_all(f"{server.url}/predict", bodies))
    after = httpx.get(f"{server.url}/metrics").text
    assert [r.status_code for r in responses] == [200] * 64
    expected = offline_probs(tiny_exports["lora-cpu-fp32"], TEXTS)
    got = np.array([[r.json()["scores"]["negative"], r.json()["scores"]["positive"]]
                    for r in responses])  # fmt: skip
    np.testing.assert_allclose(got, expected, atol=1e-5)
    calls = metric_value(after, "tuneserve_batch_size_count", variant="tuned") - metric_value(
        before, "tuneserve_batch_size_count", variant="tuned"
    )
    texts = metric_value(after, "tuneserve_batch_size_sum", variant="tuned") - metric_value(
        before, "tuneserve_batch_size_sum", variant="tuned"
    )
    assert texts == 64 and calls < 64, f"{calls} model calls for 64 concurrent requests"


def test_admission_control_sheds_with_retry_after(
    tmp_path: Path, tiny_exports: dict[str, Path], start_server: Any
) -> None:
    config = _config(  # BentoML's own 429 backstop well out of the way
        tmp_path, tiny_exports, workers=1, backstop_max_concurrency=10_000,
        limits={"max_inflight": 1},
    )  # fmt: skip
    server = start_server(config)
    bodies = [{"text": t} for t in TEXTS]
    responses = asyncio.run(_post_all(f"{server.url}/predict", bodies))
    shed = [r for r in responses if r.status_code == 503]
    assert {r.status_code for r in responses} <= {200, 503}
    assert shed, "64 concurrent requests never exceeded max_inflight=1"
    assert all(r.headers["retry-after"] == "1" for r in shed)
    assert all(r.json()["kind"] == "overloaded" for r in shed)


def test_readiness_waits_for_warm_up(
    tmp_path: Path, tiny_exports: dict[str, Path], start_server: Any
) -> None:
    server = start_server(_config(tmp_path, tiny_exports, workers=1, warmup_runs=4000), wait=False)
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline, server.log.read_text()[-2000:]
        try:
            if httpx.get(f"{server.url}/livez", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    assert httpx.get(f"{server.url}/readyz").status_code == 503
    early = httpx.post(f"{server.url}/predict", json={"text": "good"})
    assert early.status_code == 503 and early.headers["retry-after"] == "1"
    assert "warming up" in early.json()["error"]
    server.wait_ready()
    assert httpx.post(f"{server.url}/predict", json={"text": "good"}).status_code == 200


def test_readiness_means_every_worker_is_warm(
    tmp_path: Path, tiny_exports: dict[str, Path], start_server: Any
) -> None:
    """/readyz is answered by one worker, and says ready only once both have marked themselves
    warm (it never would if the marks and the live workers' pids did not match); then no
    request reaches a sibling still warming up. CI once saw 6 of 40 requests answered 503
    ("warming up") right after /readyz, when it answered for one worker alone; whether the two
    warm-ups end apart is up to the machine, so this test alone may pass without the fix:
    tests/service/test_workers.py checks the rule itself."""
    config = _config(tmp_path, tiny_exports, workers=2, warmup_runs=300)
    server = start_server(config)
    bodies = [{"text": t, "user_id": f"user-{i}"} for i, t in enumerate(TEXTS)]
    answers = asyncio.run(_post_all(f"{server.url}/predict", bodies, concurrency=16))
    assert [r.status_code for r in answers] == [200] * len(TEXTS)
    log = server.log.read_text()
    assert log.count("warm-up done") == 2, log[-2000:]


def test_corrupt_model_stops_start_up_with_a_clear_message(
    tmp_path: Path, tiny_exports: dict[str, Path]
) -> None:
    broken = tmp_path / "broken-export"
    shutil.copytree(tiny_exports["lora-cpu-fp32"], broken)
    model = broken / "onnx" / "model.fp32.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    config = write_serving_config(tmp_path / "serving.toml", {"only": broken}, "only")
    env = {"TUNESERVE_SERVING_CONFIG": str(config), "BENTOML_HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [sys.executable, "-m", "bentoml", "serve", "service.app:Tuneserve", "--port", "0"],
        cwd=REPO, env={**__import__("os").environ, **env}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "onnx/model.fp32.onnx" in proc.stderr and "sha256" in proc.stderr, proc.stderr[-2000:]


def test_cli_serve_try_out_prints_a_table_per_variant(
    tmp_path: Path, tiny_exports: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import write_tsv
    from tests.service.conftest import free_port
    from tuneserve.cli import main

    texts = write_tsv(tmp_path / "try.tsv", make_sentences(30, seed=5))
    config = _config(tmp_path, tiny_exports, workers=1)
    argv = ["serve", "--config", str(config), "--port", str(free_port()), "--try", "30"]
    assert main([*argv, "--texts", str(texts)]) == 0
    out = capsys.readouterr().out
    assert "30 texts" in out and ", 0 failed" in out
    assert "baseline" in out and "tuned" in out
    assert "feedback: 30 of 30 true labels stored" in out and "verdict:" in out
    assert main([*argv, "--texts", str(tmp_path / "absent.tsv")]) == 1
    assert main(["serve", "--config", str(tmp_path / "absent.toml")]) == 1


def test_tuneserve_serve_stops_on_sigterm_saying_so(
    tmp_path: Path, tiny_exports: dict[str, Path]
) -> None:
    """What `loadtest --serve` and process managers do: SIGTERM is the normal stop of a server,
    reported as such (not as an interrupted run)."""
    import os

    from service.launch import stop_process, wait_ready
    from tests.service.conftest import free_port

    config, port = _config(tmp_path, tiny_exports, workers=1), free_port()
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuneserve.cli", "serve", "--config", str(config), "--port",
         str(port)], cwd=REPO, env=env, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, timeout_s=120)
    finally:
        stop_process(proc)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert "stopped" in stderr.splitlines()[-1] and "unfinished run" not in stderr, stderr[-1500:]


def test_feedback_under_load_is_all_stored_and_the_log_flushed_on_shutdown(
    tmp_path: Path, tiny_exports: dict[str, Path], start_server: Any
) -> None:
    from service.store import Store

    config = _config(tmp_path, tiny_exports, workers=2)
    server = start_server(config)
    bodies = [{"text": t, "user_id": f"user-{i}"} for i, t in enumerate(TEXTS)]
    answers = asyncio.run(_post_all(f"{server.url}/predict", bodies, concurrency=16))
    feedback = [{"prediction_id": r.json()["prediction_id"], "label": "positive"} for r in answers]
    feedback_urls = f"{server.url}/feedback"
    acks = asyncio.run(_post_all(feedback_urls, feedback, concurrency=32))
    assert [r.json()["status"] for r in acks] == ["stored"] * 64
    server.stop()
    store = Store(tmp_path / "experiment.sqlite")
    assert store.count("feedback") == 64
    assert store.count("predictions") == 64  # the log was flushed when the workers stopped
    labelled = store.labelled()
    assert len(labelled) == 64
    by_variant = {v for v, _, _, _ in labelled}
    assert by_variant == {"baseline", "tuned"}
    rows = store.conn.execute("SELECT unit, unit_hash, forced, text FROM predictions").fetchall()
    assert all(
        unit == "user" and h and forced == 0 and text is None for unit, h, forced, text in rows
    )
