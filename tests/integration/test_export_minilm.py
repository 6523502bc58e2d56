"""Export of a real MiniLM LoRA run: gates pass; the serving model's accuracy recomputes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.integration.conftest import MAX_DROP
from tuneserve.details import ExportDetails
from tuneserve.inference import load_tokenizer, make_session, session_logits
from tuneserve.manifest import read_manifest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_export_passes_gates_and_recomputes(
    minilm_lora_run: Path, minilm_int8_export: Path
) -> None:
    run = minilm_int8_export
    manifest = read_manifest(run, stage="export")
    d, m = manifest.details_as(ExportDetails), manifest.metrics
    assert m["onnx_max_abs_diff"] <= 1e-4
    assert m["dev_agreement"] >= 0.97 and m["dev_accuracy_drop"] <= MAX_DROP
    assert sum(d.integer_operators.values()) > 0
    assert d.fused_operators.get("Attention", 0) == 6  # one fused attention per layer
    # recompute the serving model's dev accuracy from the files alone, as the service would
    rows = [
        json.loads(x) for x in (minilm_lora_run / "eval" / "dev.jsonl").read_text().splitlines()
    ]
    tokenizer = load_tokenizer(run / d.tokenizer, d.max_length)
    session = make_session(run / d.serving_model)
    logits = session_logits(
        session,
        tokenizer,
        [r["text"] for r in rows],
        d.serving_policy.batch_size,
        d.pad_token_id,
    )
    accuracy = float(np.mean(logits.argmax(1) == np.array([r["label"] for r in rows])))
    assert accuracy == pytest.approx(m["dev_accuracy_serving"], abs=1e-9)
    assert m["dev_examples"] == len(rows) == 300
    serving = (run / d.serving_model).stat().st_size
    # the fp32-fallback model is exempt from the size target
    if d.quantization is not None and d.quantization.fallback_used:
        attempts = json.loads((run / "parity.json").read_text())["quantization_attempts"]
        assert [a["passed"] for a in attempts] == [False, True]
        assert len(d.quantization.nodes_excluded) == 6
    else:
        assert serving <= 0.30 * (run / d.fp32_model).stat().st_size
