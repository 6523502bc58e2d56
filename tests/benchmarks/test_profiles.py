"""The py-spy summary of serve_bench: samples sorted into model work, waits and the rest."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import profiles

MAIN = "thread (101): MainThread;"
RAW = "\n".join(
    [
        MAIN + "Runner.run (asyncio/runners.py:118) 30",
        MAIN + "Predictor.predict (service/predictor.py:310);"
        "VariantModel.encode (service/model.py:92) 10",
        MAIN + "GuardMiddleware.__call__ (service/middleware.py:106);"
        "RequestResponseCycle.send (uvicorn/protocols/http/httptools_impl.py:522) 5",
        "thread (202): tuneserve-infer_0;_worker (concurrent/futures/thread.py:83);"
        "Session.run (onnxruntime/capi/onnxruntime_inference_collection.py:406) 50",
        "thread (303): tuneserve-log;Queue.get (queue.py:180);Condition.wait (threading.py:331) 5",
    ]
)


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ("Session.run (onnxruntime/capi/onnxruntime_inference_collection.py:406)", "model"),
        ("VariantModel.encode (service/model.py:92)", "model"),
        ("Condition.wait (threading.py:331)", "wait"),
        ("Runner.run (asyncio/runners.py:118)", "loop"),
        ("PredictionLog.submit (service/predlog.py:50)", "server"),
        ("something (unknown.py:1)", "server"),
    ],
)
def test_innermost_frames_fall_into_their_group(frame: str, expected: str) -> None:
    assert profiles.category(frame)[0] == expected


def test_summary_shares_add_up_by_category_group_and_thread(tmp_path: Path) -> None:
    raw = tmp_path / "py-spy-x-101.txt"
    raw.write_text(RAW)
    summary = profiles.summarize([raw])
    assert summary["samples"] == 100
    assert summary["groups"] == {"model": 0.6, "loop": 0.3, "server": 0.05, "wait": 0.05}
    assert summary["categories"]["model: ONNX Runtime run"] == 0.5
    assert summary["categories"]["model: tokenizer"] == 0.1
    assert summary["threads"] == {
        "tuneserve-infer_0": 0.5,
        "MainThread": 0.45,
        "tuneserve-log": 0.05,
    }
    assert summary["thread_names"]["202"] == "tuneserve-infer_0"
    assert abs(sum(summary["categories"].values()) - 1.0) < 1e-9


def test_cpu_per_request_by_thread_name() -> None:
    names = {1: "MainThread", 2: "tuneserve-infer_0"}
    before = {1: 1.0, 2: 2.0, 3: 0.5}
    after = {1: 1.5, 2: 3.0, 3: 0.5, 4: 0.1}
    got = profiles.cpu_by_thread(before, after, names, requests=100)
    assert got == {"tuneserve-infer_0": 10.0, "MainThread": 5.0, "other threads": 1.0}
