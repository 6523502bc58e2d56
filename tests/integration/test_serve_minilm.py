"""The real MiniLM INT8 export behind a real `bentoml serve`: answers equal the export's own."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import SHARED_DATA
from tests.service.conftest import write_serving_config
from tests.service.test_predictor import offline_probs
from tests.service.test_server import _post_all

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _sst2_test(n: int) -> tuple[list[str], list[int]]:
    lines = (SHARED_DATA / "test.tsv").read_text().splitlines()[1 : n + 1]
    rows = [line.split("\t") for line in lines]
    return [r[0] for r in rows], [int(r[1]) for r in rows]


@pytest.mark.parametrize("mode", ["off", "adaptive"])
def test_minilm_service_matches_offline_predictions(
    minilm_int8_export: Path, tmp_path: Path, start_server: Any, mode: str
) -> None:
    config = write_serving_config(
        tmp_path / "serving.toml", {"tuned": minilm_int8_export}, "tuned",
        workers=2, batching={"mode": mode},
    )  # fmt: skip
    server = start_server(config)
    texts, labels = _sst2_test(120)
    bodies = [{"text": t} for t in texts]
    responses = asyncio.run(_post_all(f"{server.url}/predict", bodies, concurrency=16))
    assert [r.status_code for r in responses] == [200] * len(texts)
    expected = offline_probs(minilm_int8_export, texts)
    got = np.array([[r.json()["scores"]["negative"], r.json()["scores"]["positive"]]
                    for r in responses])  # fmt: skip
    agreement = float(np.mean(got.argmax(1) == expected.argmax(1)))
    if mode == "off":  # each request alone, as offline at batch 1: the same numbers
        np.testing.assert_allclose(got, expected, atol=1e-6)
    else:
        # Dynamic INT8 shifts a little with batch composition, so predictions on near-ties may
        # flip: this 1-epoch model has 13 of these 120 sentences within 0.2 logits of the
        # boundary, and 20 random batchings offline gave 95-99% agreement. Each caller still
        # gets its own answer: the largest probability shift offline was 0.05, while answers
        # mixed up between callers would differ by up to 0.9. The 97% target is measured on
        # the real models by `tuneserve bench-model` (batch-32 agreement with batch 1).
        np.testing.assert_allclose(got, expected, atol=0.15)
        assert agreement >= 0.9
    accuracy = float(np.mean(got.argmax(1) == np.array(labels)))
    # a 1-epoch model on 1,200 sentences: well above chance, far from the full run's 0.89
    assert accuracy >= 0.7, f"served accuracy {accuracy} on SST-2 test"
    models = httpx.get(f"{server.url}/models").json()
    assert models["variants"][0]["quantization"].startswith("int8-dynamic")
