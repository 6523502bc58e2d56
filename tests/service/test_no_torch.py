"""The service never imports torch: a fresh interpreter loads the whole service and checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.service.conftest import write_serving_config


def test_service_imports_no_torch(tmp_path: Path, tiny_exports: dict[str, Path]) -> None:
    config = write_serving_config(
        tmp_path / "serving.toml", {"only": tiny_exports["lora"]}, "only", workers=1
    )
    code = (
        "import sys\n"
        "import service.app\n"
        "from service.predictor import Predictor\n"
        "p = Predictor(service.app.SETTINGS)\n"
        "p.warm_up()\n"
        "heavy = ('torch', 'transformers', 'peft', 'optimum')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    env = {**os.environ, "TUNESERVE_SERVING_CONFIG": str(config)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO, env=env
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"
