"""The server a user would write by hand: Starlette + uvicorn, PyTorch + transformers, no batching.

One worker, torch threads = cores, one request at a time through the merged fine-tuned model
(encoder + mean pooling + linear head, as trained). It lives here, as the peer the serving
benchmark compares against; the service never uses it.

    python benchmarks/peers/pytorch_server.py --export artifacts/export/<run> --port 3100
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import uvicorn
from safetensors.torch import load_file
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from transformers import AutoModel, AutoTokenizer

from tuneserve.details import ExportDetails
from tuneserve.manifest import read_manifest


def build_app(export: Path) -> Starlette:
    details = read_manifest(export, stage="export", verify=False).details_as(ExportDetails)
    torch.set_num_threads(os.cpu_count() or 1)
    tokenizer = AutoTokenizer.from_pretrained(str(export / "tokenizer"))
    encoder = AutoModel.from_pretrained(str(export / "merged")).eval()
    head = torch.nn.Linear(encoder.config.hidden_size, len(details.id2label))
    head.load_state_dict(load_file(str(export / "merged" / "head.safetensors")))
    labels = details.labels()
    max_length = details.max_length

    @torch.inference_mode()
    def classify(text: str) -> dict[str, object]:
        batch = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
        states = encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        probs = torch.softmax(head((states * mask).sum(1) / mask.sum(1)), dim=-1)[0]
        best = int(probs.argmax())
        return {"label": labels[best], "score": float(probs[best])}

    async def predict(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse(classify(body["text"]))

    async def ready(_: Request) -> JSONResponse:
        return JSONResponse({"ready": True})

    return Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/readyz", ready)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", required=True, type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3100)
    args = parser.parse_args()
    uvicorn.run(build_app(args.export), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
