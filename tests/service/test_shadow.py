"""Shadow traffic: scored after the answer, bounded, logged, compared; McNemar in the report."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from service import metrics
from service.config import ServingConfig, load_serving_config
from service.predictor import Predictor
from service.report import build_report, format_report
from service.shadow import ShadowJob
from service.stats import mcnemar_exact
from service.store import Store
from tests.conftest import make_sentences
from tests.service.conftest import write_serving_config
from tests.service.test_predictor import offline_probs

ROWS = make_sentences(40, seed=5)


def _settings(tmp_path: Path, exports: dict[str, Path], **shadow: Any) -> ServingConfig:
    variants = {"baseline": exports["head"], "tuned": exports["lora-cpu-fp32"]}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = write_serving_config(
        tmp_path / "serving.toml", variants, "baseline", shadow={"variant": "tuned", **shadow}
    )
    return load_serving_config(path)


def _shadow_count(variant: str, outcome: str) -> float:
    return metrics.SHADOW.labels(variant=variant, outcome=outcome)._value.get()


async def _serve(predictor: Predictor, forced: str | None = None) -> list[dict[str, Any]]:
    answers = []
    for text, _ in ROWS:
        answers += (await predictor.predict([text], forced=forced)).predictions
    await predictor.close()  # flushes the shadow queue, then the prediction log
    return answers


def test_shadow_scores_live_requests_and_the_report_pairs_them(
    tmp_path: Path, tiny_exports: dict[str, Path]
) -> None:
    settings = _settings(tmp_path, tiny_exports, share=1.0)
    predictor = Predictor(settings)
    predictor.warm_up()
    before = {o: _shadow_count("tuned", o) for o in ("agree", "disagree", "skipped")}
    answers = asyncio.run(_serve(predictor, forced="baseline"))
    live = [a["label"] for a in answers]
    store = Store(settings.store.path)
    assert store.count("shadow") == len(ROWS)
    # the shadow's answers are the tuned export's own predictions
    expected = offline_probs(tiny_exports["lora-cpu-fp32"], [t for t, _ in ROWS])
    shadow_labels = [["negative", "positive"][int(np.argmax(p))] for p in expected]
    pairs = store.shadow_pairs()
    by_id = dict(zip([a["prediction_id"] for a in answers], zip(live, shadow_labels, strict=True),
                     strict=True))  # fmt: skip
    rows = store.conn.execute("SELECT prediction_id, live_label, label FROM shadow").fetchall()
    assert {pid: (lv, sh) for pid, lv, sh in rows} == by_id
    agree = sum(lv == sh for lv, sh in by_id.values())
    counted = {o: _shadow_count("tuned", o) - before[o] for o in before}
    assert counted == {"agree": agree, "disagree": len(ROWS) - agree, "skipped": 0}
    assert {p[:2] for p in pairs} == {("tuned", "baseline")}

    truth = ["negative", "positive"]
    for answer, (_, label) in zip(answers, ROWS, strict=True):
        store.add_feedback(answer["prediction_id"], truth[label])
    report = build_report(store, settings)
    (shadow,) = report["shadow"]
    assert shadow["scored"] == len(ROWS) and shadow["labelled"] == len(ROWS)
    assert shadow["agreement"] == agree / len(ROWS)
    live_right = [lv == truth[y] for lv, (_, y) in zip(live, ROWS, strict=True)]
    shadow_right = [sh == truth[y] for sh, (_, y) in zip(shadow_labels, ROWS, strict=True)]
    only_live = sum(a and not b for a, b in zip(live_right, shadow_right, strict=True))
    only_shadow = sum(b and not a for a, b in zip(live_right, shadow_right, strict=True))
    assert shadow["mcnemar"] == {
        "live_only": only_live,
        "shadow_only": only_shadow,
        "p_value": mcnemar_exact(only_live, only_shadow).p_value,
    }
    assert shadow["live_accuracy"] == sum(live_right) / len(ROWS)
    assert "shadow tuned: 40 scored" in format_report(report)
    # shadow rows are not traffic: the live variant's counts are untouched
    assert {v["variant"]: v["forced"] for v in report["variants"]} == {"baseline": 40, "tuned": 0}


def test_requests_served_by_the_shadow_variant_and_unsampled_ones_are_not_shadowed(
    tmp_path: Path, tiny_exports: dict[str, Path]
) -> None:
    settings = _settings(tmp_path, tiny_exports, share=1.0)
    predictor = Predictor(settings)
    predictor.warm_up()
    asyncio.run(_serve(predictor, forced="tuned"))
    assert Store(settings.store.path).count("shadow") == 0
    off = _settings(tmp_path / "off", tiny_exports, share=0.0)
    predictor = Predictor(off)
    predictor.warm_up()
    asyncio.run(_serve(predictor, forced="baseline"))
    assert Store(off.store.path).count("shadow") == 0


def test_shadow_work_is_bounded_and_skipped_work_is_counted(
    tmp_path: Path, tiny_exports: dict[str, Path]
) -> None:
    # a job must start within max_age_ms of its request: at 0.001 ms none can, so every one is
    # skipped and counted, and none is run late
    settings = _settings(tmp_path, tiny_exports, share=1.0, max_age_ms=0.001)
    predictor = Predictor(settings)
    predictor.warm_up()
    skipped = _shadow_count("tuned", "skipped")
    asyncio.run(_serve(predictor, forced="baseline"))
    assert Store(settings.store.path).count("shadow") == 0
    assert _shadow_count("tuned", "skipped") - skipped == len(ROWS)
    # a full queue refuses at once (the request never waits for the shadow)
    settings = _settings(tmp_path / "q", tiny_exports, share=1.0, max_pending=1)
    predictor = Predictor(settings)
    predictor.warm_up()
    predictor.idle.clear()  # as while a live request is in flight: the shadow thread waits
    model = predictor.models["tuned"]
    accepted = [
        predictor.shadow.offer(
            ShadowJob(model, ["good"], [f"id{i}"], "baseline", ["positive"], time.monotonic())
        )
        for i in range(5)
    ]
    assert accepted.count(False) >= 3  # one waiting in the thread, one in the queue at most
    if sys.platform == "linux":  # the shadow thread yields the cores to live requests
        thread = predictor.shadow._thread
        assert os.getpriority(os.PRIO_PROCESS, thread.native_id or 0) == 19
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < 19
    predictor.idle.set()
    asyncio.run(predictor.close())
