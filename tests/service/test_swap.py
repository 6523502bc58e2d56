"""Hot model swap on the Predictor: verify, load and warm beside the old model, switch
atomically, follow the catalog on another worker and after a restart; a failed load changes
nothing."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service import metrics
from service.catalog import Catalog
from service.config import ServingConfig, load_serving_config
from service.errors import ConflictError, InvalidInputError, ModelRejectedError, NotFoundError
from service.model import model_version, read_export
from service.predictor import Predictor
from service.report import build_report
from service.store import Store
from tests.conftest import make_sentences
from tests.service.conftest import write_serving_config
from tests.service.test_predictor import offline_probs
from tuneserve.manifest import sha256_file

TEXTS = [t for t, _ in make_sentences(64, seed=5)]


def _settings(tmp_path: Path, exports: dict[str, Path], **sections: Any) -> ServingConfig:
    variants = {"baseline": exports["head"], "tuned": exports["lora-cpu-fp32"]}
    config = write_serving_config(tmp_path / "serving.toml", variants, "baseline", **sections)
    return load_serving_config(config)


def _version(export: Path) -> str:
    return model_version(read_export(export)[0])


def _swaps(variant: str, outcome: str) -> float:
    for metric in metrics.MODEL_SWAPS.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels == {
                "variant": variant,
                "outcome": outcome,
            }:
                return float(sample.value)
    return 0.0


def _wait(check: Any, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.parametrize("mode", ["adaptive", "off"])
def test_a_swap_under_load_answers_every_request_from_exactly_one_version(
    tmp_path: Path, tiny_exports: dict[str, Path], mode: str
) -> None:
    old_export, new_export = tiny_exports["lora-cpu-fp32"], tiny_exports["lora-cpu-int8"]
    predictor = Predictor(_settings(tmp_path, tiny_exports, batching={"mode": mode}))
    predictor.warm_up()
    expected = {
        _version(old_export): offline_probs(old_export, TEXTS),
        _version(new_export): offline_probs(new_export, TEXTS),
    }
    replaced = _swaps("tuned", "replaced")

    async def under_load() -> tuple[list[Any], dict[str, Any]]:
        loop = asyncio.get_running_loop()
        swap = loop.run_in_executor(None, predictor.variants.put, "tuned",
                                    {"path": str(new_export)})  # fmt: skip
        answers = []
        while not swap.done() or len(answers) < 4 * len(TEXTS):
            i = len(answers) % len(TEXTS)
            batch = [predictor.predict([TEXTS[i]], forced="tuned") for _ in range(8)]
            answers += [(i, a) for a in await asyncio.gather(*batch)]
        return answers, await swap

    answers, result = asyncio.run(under_load())
    assert result["changed"] and result["model_version"] == _version(new_export)
    versions = [a.model_version for _, a in answers]
    assert set(versions) == set(expected), "the swap was not seen under load"
    first_new = versions.index(_version(new_export))
    assert set(versions[first_new + 8 :]) == {_version(new_export)}  # never back to the old
    for i, answers_of in answers:  # each answer is that version's own, never a mix
        scores = answers_of.predictions[0]["scores"]
        got = [scores["negative"], scores["positive"]]
        np.testing.assert_allclose(got, expected[answers_of.model_version][i], atol=1e-5)
    assert predictor.models["tuned"].version == _version(new_export)
    assert _swaps("tuned", "replaced") - replaced == 1
    summary = predictor.summary()
    tuned = next(v for v in summary["variants"] if v["name"] == "tuned")
    assert tuned["model_version"] == _version(new_export) and summary["catalog"]["version"] == 1
    asyncio.run(predictor.close())


def test_a_request_in_flight_finishes_on_the_model_it_started_with(
    tmp_path: Path, tiny_exports: dict[str, Path]
) -> None:
    predictor = Predictor(_settings(tmp_path, tiny_exports, batching={"mode": "adaptive"}))
    predictor.warm_up()
    started = predictor.variants.acquire("tuned")  # as a request between routing and answer
    predictor.variants.put("tuned", {"path": str(tiny_exports["lora-cpu-int8"])})
    assert started.retired and predictor.models["tuned"] is not started.model

    async def finish() -> np.ndarray:
        probs = await started.runner.run(started.model.encode(TEXTS[:3]))
        predictor.variants.release(started)  # the last request on it: its batcher stops
        await asyncio.sleep(0.05)
        task = getattr(started.runner, "_task", None)
        assert task is not None and task.cancelled()
        return probs

    probs = asyncio.run(finish())
    np.testing.assert_allclose(probs, offline_probs(tiny_exports["lora-cpu-fp32"], TEXTS[:3]),
                               atol=1e-5)  # fmt: skip
    asyncio.run(predictor.close())


def _tampered(export: Path, tmp_path: Path, rehash: bool) -> Path:
    """A copy of ``export`` whose serving model is garbage; with ``rehash`` the manifest records
    the garbage's hash (so the hashes pass and ONNX Runtime refuses the file)."""
    copy = tmp_path / f"tampered-{int(rehash)}"
    shutil.copytree(export, copy)
    serving = read_export(export)[1].serving_model
    (copy / serving).write_bytes(b"not an onnx model at all")
    if rehash:
        path = copy / "manifest.json"
        raw = json.loads(path.read_text())
        for entry in raw["artifacts"].values():
            if entry["path"] == serving:
                entry |= {"sha256": sha256_file(copy / serving), "bytes": 24}
        path.write_text(json.dumps(raw))
    return copy


def test_a_failed_load_changes_nothing_and_says_why(
    tmp_path: Path, tiny_exports: dict[str, Path]
) -> None:
    settings = _settings(tmp_path, tiny_exports)
    predictor = Predictor(settings)
    predictor.warm_up()
    before = predictor.models["tuned"]
    failed = _swaps("tuned", "failed")
    int8 = tiny_exports["lora-cpu-int8"]
    refused = [
        ({"path": str(_tampered(int8, tmp_path, rehash=False))}, "does not match its recorded"),
        ({"path": str(_tampered(int8, tmp_path, rehash=True))}, "was not loaded: .*onnx|ONNX"),
        ({"path": str(tmp_path / "nowhere")}, "no such export run directory"),
        ({"path": str(int8), "model_version": "t-x@000"}, "not the expected t-x@000"),
        ({"path": str(int8), "sha256": "ab" * 32}, "serving model's sha256 is [0-9a-f]{64}, not"),
    ]
    for body, reason in refused:
        with pytest.raises(ModelRejectedError, match=reason) as info:
            predictor.variants.put("tuned", body)
        assert info.value.status == 422 and info.value.kind == "model_rejected"
    for body, reason in [
        ({"path": 5}, "must be non-empty strings"),
        ({"path": "a\x00b"}, "not a usable path"),
        ({"model": "x"}, "must be a JSON object"),
        ([], "must be a JSON object"),
    ]:
        with pytest.raises(InvalidInputError, match=reason):
            predictor.variants.put("tuned", body)
    with pytest.raises(InvalidInputError, match="lowercase letters"):
        predictor.variants.put("Bad Name", {"path": str(int8)})
    assert _swaps("tuned", "failed") - failed == len(refused)
    assert predictor.models["tuned"] is before  # the old model keeps serving
    assert Catalog(predictor.store).version() == 0
    answer = asyncio.run(predictor.predict(["good film"], forced="tuned"))
    assert answer.model_version == before.version
    asyncio.run(predictor.close())


def test_an_added_variant_starts_at_weight_0_and_is_removed_only_without_traffic(
    tmp_path: Path, tiny_exports: dict[str, Path]
) -> None:
    predictor = Predictor(_settings(tmp_path, tiny_exports))
    predictor.warm_up()
    predictor.experiment.change({"weights": {"tuned": 3}})  # 75%: more than a slot of two
    with pytest.raises(ConflictError, match=r"'fresh' cannot be added .* 'tuned' has 75%"):
        predictor.variants.put("fresh", {"path": str(tiny_exports["lora-cpu-int8"])})
    assert "fresh" not in predictor.models
    predictor.experiment.change({"weights": {"tuned": 1}})
    predictor.variants.put("fresh", {"path": str(tiny_exports["lora-cpu-int8"])})
    assert predictor.experiment.router.shares["fresh"] == 0.0
    unforced = asyncio.run(_variants_of(predictor, 40))
    assert "fresh" not in unforced
    forced = asyncio.run(predictor.predict(["good"], forced="fresh"))
    assert forced.model_version == _version(tiny_exports["lora-cpu-int8"])
    predictor.experiment.change({"weights": {"fresh": 1.0}})  # a catalog variant is served
    assert predictor.experiment.router.shares["fresh"] == pytest.approx(1 / 3)
    with pytest.raises(ConflictError, match="'fresh' still has weight 1: set it to 0"):
        predictor.variants.remove("fresh")
    with pytest.raises(ConflictError, match="'baseline' is the control and cannot be removed"):
        predictor.variants.remove("baseline")
    with pytest.raises(NotFoundError, match="no variant 'ghost'"):
        predictor.variants.remove("ghost")
    predictor.experiment.change({"weights": {"fresh": 0}, "shadow": {"variant": "fresh"}})
    with pytest.raises(ConflictError, match="'fresh' is the shadow variant"):
        predictor.variants.remove("fresh")
    predictor.experiment.change({"shadow": {"variant": ""}})
    assert predictor.variants.remove("fresh") == {"variant": "fresh", "removed": True}
    assert "fresh" not in predictor.models and "fresh" not in predictor.experiment.router.shares
    assert "fresh" not in predictor.experiment.state.weights  # the state no longer names it
    with pytest.raises(InvalidInputError, match="unknown variant 'fresh'"):
        asyncio.run(predictor.predict(["good"], forced="fresh"))
    history = predictor.store.history()
    assert history[-1].change["removed_variant"] == "fresh"
    asyncio.run(predictor.close())


async def _variants_of(predictor: Predictor, n: int) -> set[str]:
    answers = [await predictor.predict(["good"], user_id=f"user-{i}") for i in range(n)]
    return {a.variant for a in answers}


def test_other_workers_follow_the_catalog_and_a_restart_keeps_it(
    tmp_path: Path, tiny_exports: dict[str, Path]
) -> None:
    settings = _settings(tmp_path, tiny_exports)
    first, second = Predictor(settings), Predictor(settings)  # two workers of one store
    new = _version(tiny_exports["lora-cpu-int8"])
    first.variants.put("tuned", {"path": str(tiny_exports["lora-cpu-int8"])})
    first.variants.put("fresh", {"path": str(tiny_exports["head-cpu-int8"])})
    _wait(lambda: second.variants.seen_version == 2, "the second worker never followed")
    assert second.models["tuned"].version == new and "fresh" in second.models
    assert "fresh" in second.experiment.router.shares
    first.variants.remove("fresh")
    _wait(lambda: "fresh" not in second.models, "the second worker kept a removed variant")
    for worker in (first, second):
        asyncio.run(worker.close())
    restarted = Predictor(settings)  # the catalog is in the store: a restart serves it
    assert restarted.models["tuned"].version == new and "fresh" not in restarted.models
    assert [e.status for e in Catalog(Store(settings.store.path)).entries()] == [
        "active",
        "removed",
    ]
    asyncio.run(restarted.close())


def test_the_report_covers_added_variants_and_survives_a_removed_config_variant(
    tmp_path: Path, tiny_exports: dict[str, Path]
) -> None:
    settings = _settings(tmp_path, tiny_exports)
    predictor = Predictor(settings)
    predictor.warm_up()
    predictor.variants.put("fresh", {"path": str(tiny_exports["lora-cpu-int8"])})
    report = build_report(predictor.store, predictor.experiment.settings)
    assert [(v["variant"], v["share"]) for v in report["variants"]] == [
        ("baseline", 0.5), ("tuned", 0.5), ("fresh", 0.0),
    ]  # fmt: skip
    predictor.experiment.change({"weights": {"tuned": 0}})
    predictor.variants.remove("tuned")  # a config variant: removed until the catalog says else
    assert list(predictor.models) == ["baseline", "fresh"]
    shares = {v["variant"]: v["share"] for v in build_report(predictor.store, settings)["variants"]}
    assert shares == {"baseline": 1.0, "tuned": 0.0}  # the offline report reads the config's
    asyncio.run(predictor.close())
    restarted = Predictor(settings)
    assert list(restarted.models) == ["baseline", "fresh"]  # and so after a restart
    asyncio.run(restarted.close())


def test_a_restart_says_when_a_swapped_export_changed_on_disk(
    tmp_path: Path, tiny_exports: dict[str, Path]
) -> None:
    settings = _settings(tmp_path, tiny_exports)
    export = tmp_path / "served-export"
    shutil.copytree(tiny_exports["lora-cpu-int8"], export)
    predictor = Predictor(settings)
    predictor.variants.put("tuned", {"path": str(export)})
    asyncio.run(predictor.close())
    shutil.rmtree(export)  # another run written over the directory the catalog names
    shutil.copytree(tiny_exports["head-cpu-int8"], export)
    restarted = Predictor(settings)
    assert restarted.models["tuned"].version == _version(tiny_exports["head-cpu-int8"])
    reason = restarted.summary()["catalog"]["errors"]["tuned"]
    assert f"holds {_version(tiny_exports['head-cpu-int8'])}, not the " in reason
    assert _version(tiny_exports["lora-cpu-int8"]) in reason
    asyncio.run(restarted.close())
