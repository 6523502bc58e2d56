"""Logging set-up, called only from entry points."""

from __future__ import annotations

import logging
import os
import warnings


def setup_logging(verbose: bool = False) -> None:
    """Configure the root logger once: INFO (or DEBUG) to stderr, quiet third-party chatter."""
    level = logging.DEBUG if verbose or os.environ.get("TUNESERVE_DEBUG") else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    noisy_loggers = (
        "urllib3",
        "filelock",
        "matplotlib",
        "PIL",
        "httpx",
        "fsspec",
        "onnx_model",
        "fusion_base",
        "onnx_model_bert",
        "fusion_utils",
        "fusion_attention",
    )
    for noisy in noisy_loggers:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:
        # transformers and peft warn about things we handle on purpose (a fresh head, say).
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="peft")
