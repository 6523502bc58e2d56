"""tuneserve core: config, manifests, errors, dataset reading, logging and the CLI (no torch)."""

from __future__ import annotations

__version__ = "0.1.0"
