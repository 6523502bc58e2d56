"""The prediction path without HTTP: variant models, runners, batching, deadlines, readiness."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service import metrics
from service.batching import AdaptiveBatcher, DirectRunner
from service.config import ServingConfig, load_serving_config
from service.errors import DeadlineError, InvalidInputError, OverloadedError
from service.model import VariantModel
from service.predictor import Predictor
from tests.conftest import make_sentences
from tests.service.conftest import write_serving_config
from tuneserve.details import ExportDetails
from tuneserve.inference import load_tokenizer, make_session, session_logits, softmax
from tuneserve.manifest import read_manifest

TEXTS = [text for text, _ in make_sentences(200, seed=7)]


def _settings(tmp_path: Path, exports: dict[str, Path], **sections: Any) -> ServingConfig:
    variants = {"baseline": exports["head"], "tuned": exports["lora-cpu-fp32"]}
    return load_serving_config(
        write_serving_config(tmp_path / "serving.toml", variants, "baseline", **sections)
    )


def offline_probs(export: Path, texts: list[str]) -> np.ndarray:
    """What the export stage's own code predicts, one text at a time."""
    details = read_manifest(export, stage="export").details_as(ExportDetails)
    tokenizer = load_tokenizer(export / details.tokenizer, details.max_length)
    session = make_session(export / details.serving_model, threads=1)
    return softmax(session_logits(session, tokenizer, texts, 1, details.pad_token_id))


def _histogram_count(histogram: Any, variant: str) -> float:
    for metric in histogram.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count") and sample.labels.get("variant") == variant:
                return float(sample.value)
    return 0.0


@pytest.mark.parametrize("export_key", ["lora-cpu-int8", "lora-cpu-fp32", "head-cpu-int8"])
def test_variant_model_matches_offline_predictions(
    tmp_path: Path, tiny_exports: dict[str, Path], export_key: str
) -> None:
    settings = _settings(tmp_path, tiny_exports)
    variant = settings.variants[0].model_copy(update={"path": tiny_exports[export_key]})
    model = VariantModel(variant, settings)
    served = model.predict(TEXTS[:50], batch_size=1)
    expected = offline_probs(tiny_exports[export_key], TEXTS[:50])
    got = np.array([[p.scores[label] for label in model.labels] for p in served])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert [p.label for p in served] == [model.labels[i] for i in expected.argmax(1)]


def test_batched_answers_equal_unbatched_for_fp32_and_agree_for_int8(
    tmp_path: Path, tiny_exports: dict[str, Path]
) -> None:
    settings = _settings(tmp_path, tiny_exports)
    for key in ("lora-cpu-fp32", "lora-cpu-int8"):
        variant = settings.variants[0].model_copy(update={"path": tiny_exports[key]})
        model = VariantModel(variant, settings)
        encodings = model.encode(TEXTS)
        alone = np.concatenate([model.infer([e]) for e in encodings])
        batched = model.infer_sorted(encodings, batch_size=32)
        unsorted = np.concatenate([model.infer(encodings[i : i + 32]) for i in range(0, 200, 32)])
        if key.endswith("fp32"):
            np.testing.assert_allclose(batched, alone, atol=1e-5)
            np.testing.assert_allclose(unsorted, alone, atol=1e-5)
        else:
            agreement = float(np.mean(batched.argmax(1) == alone.argmax(1)))
            assert agreement >= 0.97, f"INT8 batched vs unbatched agreement {agreement}"


def test_truncation_is_flagged(tmp_path: Path, tiny_exports: dict[str, Path]) -> None:
    settings = _settings(tmp_path, tiny_exports, limits={"max_tokens": 8})
    model = VariantModel(settings.variants[1], settings)
    short, long = model.predict(["good film", " ".join(["good film"] * 40)])
    assert not short.truncated
    assert long.truncated
    assert model.max_tokens == 8


@pytest.mark.parametrize("mode", ["adaptive", "off"])
def test_concurrent_callers_each_get_their_own_answer(
    tmp_path: Path, tiny_exports: dict[str, Path], mode: str
) -> None:
    settings = _settings(tmp_path, tiny_exports, batching={"mode": mode, "max_batch_size": 16})
    predictor = Predictor(settings)
    predictor.warm_up()
    texts = TEXTS[:64]
    expected = offline_probs(tiny_exports["lora-cpu-fp32"], texts)
    before = _histogram_count(metrics.BATCH_SIZE, "tuned")

    async def call_all() -> list[dict[str, Any]]:
        calls = [predictor.predict([t], forced="tuned") for t in texts]
        results = await asyncio.gather(*calls)
        await predictor.close()
        return [answers.predictions[0] for answers in results]

    answers = asyncio.run(call_all())
    got = np.array([[a["scores"]["negative"], a["scores"]["positive"]] for a in answers])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert len({a["prediction_id"] for a in answers}) == 64
    assert all(predictor.ids.is_ours(a["prediction_id"]) for a in answers)
    assert all(a["forced"] and a["variant"] == "tuned" for a in answers)
    model_calls = _histogram_count(metrics.BATCH_SIZE, "tuned") - before
    if mode == "adaptive":
        assert model_calls < 64, "adaptive batching ran every request alone"
    else:
        assert model_calls == 64


def test_adaptive_batcher_respects_max_batch_size(
    tmp_path: Path, tiny_exports: dict[str, Path]
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    settings = _settings(tmp_path, tiny_exports)
    model = VariantModel(settings.variants[1], settings)
    sizes: list[int] = []
    infer = model.infer_sorted

    def recording(encodings: list[Any], batch_size: int) -> np.ndarray:
        sizes.append(len(encodings))
        return infer(encodings, batch_size)

    model.infer_sorted = recording  # type: ignore[method-assign]
    executor = ThreadPoolExecutor(1)
    batcher = AdaptiveBatcher(model, executor, max_batch_size=5, max_latency_ms=50)

    async def go() -> np.ndarray:
        probs = await batcher.run(model.encode(TEXTS[:23]))
        await batcher.close()
        return probs

    probs = asyncio.run(go())
    assert probs.shape == (23, 2)
    assert max(sizes) == 5 and sum(sizes) == 23


def test_deadline_and_readiness(tmp_path: Path, tiny_exports: dict[str, Path]) -> None:
    settings = _settings(tmp_path, tiny_exports, limits={"deadline_ms": 0.001})
    predictor = Predictor(settings)
    with pytest.raises(OverloadedError, match="warming up") as info:
        asyncio.run(predictor.predict(["good"]))
    assert info.value.headers["Retry-After"] == "1"
    predictor.warm_up()
    assert predictor.ready
    with pytest.raises(DeadlineError, match="within 0.001 ms"):
        asyncio.run(predictor.predict(["good"]))
    with pytest.raises(InvalidInputError, match="unknown variant 'nope'"):
        asyncio.run(predictor.predict(["good"], forced="nope"))


def test_direct_runner_matches_model(tmp_path: Path, tiny_exports: dict[str, Path]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    settings = _settings(tmp_path, tiny_exports)
    model = VariantModel(settings.variants[1], settings)
    runner = DirectRunner(model, ThreadPoolExecutor(1), 32)
    encodings = model.encode(TEXTS[:10])
    got = asyncio.run(runner.run(encodings))
    np.testing.assert_allclose(got, model.infer_sorted(encodings, 32), atol=1e-6)


def test_io_binding_gives_the_same_logits(tiny_exports: dict[str, Path]) -> None:
    """The CUDA path binds inputs and outputs; the binding itself also runs on CPU."""
    from tuneserve.inference import encode_batch, run_logits

    export = tiny_exports["lora-cpu-fp32"]
    details = read_manifest(export, stage="export").details_as(ExportDetails)
    tokenizer = load_tokenizer(export / details.tokenizer, details.max_length)
    session = make_session(export / details.serving_model, threads=1)
    feed = encode_batch(tokenizer, TEXTS[:8], details.input_names, details.pad_token_id)
    np.testing.assert_allclose(
        run_logits(session, feed, io_binding=True), run_logits(session, feed), atol=1e-6
    )


def test_cuda_without_gpu_falls_back_to_cpu_with_a_warning(
    tiny_exports: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA: the fallback does not apply")
    export = tiny_exports["lora"]
    model_path = (
        export / read_manifest(export, stage="export").details_as(ExportDetails).serving_model
    )
    with caplog.at_level("WARNING"):
        session = make_session(model_path, threads=1, provider="cuda")
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert "running model.int8.onnx on CPU" in caplog.text


def test_logged_unit_hash_uses_the_salt_in_force(
    tmp_path: Path, tiny_exports: dict[str, Path]
) -> None:
    """A salt changed at runtime starts a new experiment: its rows must not be linkable to the
    old experiment's by the unit hash, so the log hashes with the salt in force."""
    from service.store import Store, unit_hash

    predictor = Predictor(_settings(tmp_path, tiny_exports))
    predictor.warm_up()
    old_salt = predictor.experiment.router.salt
    asyncio.run(predictor.predict(["good"], user_id="user-1"))
    predictor.experiment.change({"salt": "fresh-salt"})
    assert predictor.experiment.router.salt == "fresh-salt"
    asyncio.run(predictor.predict(["good"], user_id="user-1"))
    asyncio.run(predictor.close())
    store = Store(predictor.settings.store.location())
    rows = store.conn.execute("SELECT salt, unit_hash FROM predictions ORDER BY ts").fetchall()
    assert [tuple(r) for r in rows] == [
        (old_salt, unit_hash(old_salt, "user-1")),
        ("fresh-salt", unit_hash("fresh-salt", "user-1")),
    ]
