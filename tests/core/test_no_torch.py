"""The core never imports torch: a fresh interpreter proves it."""

from __future__ import annotations

import subprocess
import sys


def test_core_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "import tuneserve.cli, tuneserve.config, tuneserve.manifest, tuneserve.data\n"
        "import tuneserve.models, tuneserve.errors, tuneserve.logs\n"
        "tuneserve.cli.build_parser()\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
