"""The Open Inference Protocol v2 (KServe v2, Triton's HTTP API) beside the native API.

- ``tensors.py``: the JSON tensors: an inference request read into checked texts, the answers
  written as ``label``/``score``/``prediction_id``/``truncated`` outputs;
- ``routes.py``: ``V2Api``, the routes (health, server and model metadata, model ready, infer)
  over the worker's Predictor, and ``resolve``, which maps a model name to A/B or a variant;
- ``shape.py``: ``V2ErrorShape``, the middleware that answers errors under /v2 as
  ``{"error": message}``;
- ``openapi.py``: the protocol's paths in the service's OpenAPI document.
"""

from __future__ import annotations

from service.v2.openapi import SCHEMAS as OPENAPI_SCHEMAS
from service.v2.openapi import v2_paths
from service.v2.routes import V2Api
from service.v2.shape import V2ErrorShape

__all__ = ["OPENAPI_SCHEMAS", "V2Api", "V2ErrorShape", "v2_paths"]
