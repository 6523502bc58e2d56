"""The floor BentoML sets: one bare ``@bentoml.api`` over the same ONNX model, nothing else.

No routing, store, metrics, middleware, ids or validation of ours: a text in, the label and
scores out, tokenised and run on the same ``VariantModel`` (ONNX Runtime session, threads) as
the service. serve_bench.py serves it beside tuneserve so that BentoML's own per-request cost
is measured in the same run; the service never uses it.

    TUNESERVE_BARE_EXPORT=artifacts/export/<run> bentoml serve benchmarks.peers.bare_bentoml:Bare
"""

from __future__ import annotations

import os
from typing import Any

import bentoml

from service.config import ServingConfig
from service.model import VariantModel

EXPORT_ENV = "TUNESERVE_BARE_EXPORT"
WORKERS = int(os.environ.get("TUNESERVE_BARE_WORKERS", "2"))


@bentoml.service(name="bare", workers=WORKERS, threads=1, logging={"access": {"enabled": False}})
class Bare:
    """One variant, one endpoint."""

    def __init__(self) -> None:
        settings = ServingConfig.model_validate(
            {
                "variants": [{"name": "bare", "path": os.environ[EXPORT_ENV], "control": True}],
                "workers": WORKERS,
            }
        )
        self.model = VariantModel(settings.variants[0], settings)
        self.model.warm_up(3)

    @bentoml.api(route="/predict")
    def predict(self, text: str, user_id: str | None = None) -> dict[str, Any]:
        """Classify one text (run by BentoML in its worker thread)."""
        encodings = self.model.encode([text])
        answer = self.model.answer(self.model.infer(encodings)[0], encodings[0])
        return {"label": answer.label, "score": answer.score, "scores": answer.scores}
