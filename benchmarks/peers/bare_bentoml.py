"""The floor BentoML sets: one bare ``@bentoml.api`` over the same ONNX model, nothing else.

No routing, store, metrics, middleware, ids or validation of ours: a text in, the label and
scores out, run the way the service runs it (tokenised on the event loop, the same
``VariantModel`` called in one inference thread per worker, ONNX Runtime on one thread), so
tuneserve minus this is what tuneserve's own request path costs, and this minus in-process ONNX
Runtime is BentoML's (uvicorn, its middleware, its endpoint). serve_bench.py serves it beside
tuneserve in the same run; the service never uses it.

    TUNESERVE_BARE_EXPORT=artifacts/export/<run> bentoml serve benchmarks.peers.bare_bentoml:Bare
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import bentoml
from starlette.responses import JSONResponse

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
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="bare-infer")

    @bentoml.api(route="/predict")
    async def predict(self, text: str, user_id: str | None = None) -> dict[str, Any]:
        """Classify one text."""
        encodings = self.model.encode([text])
        loop = asyncio.get_running_loop()
        probs = await loop.run_in_executor(self.executor, self.model.infer, encodings)
        answer = self.model.answer(probs[0], encodings[0])
        body = {"label": answer.label, "score": answer.score, "scores": answer.scores}
        # a Response skips BentoML's output model (as tuneserve's endpoints do): its cheapest path
        return JSONResponse(body)  # type: ignore[return-value]
