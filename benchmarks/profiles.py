"""py-spy profiles of a server's worker processes under load, summarised by where the CPU went.

``record`` starts one ``py-spy record`` per worker (raw collapsed stacks, idle threads left out,
so a sample is a moment a thread was running); ``summarize`` sorts every sample by the file of
its innermost Python frame (native code counts for the Python call that entered it: ONNX
Runtime's ``run``, the tokenizer's ``encode_batch``) into model work and everything else.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

# (group, what, pattern on the innermost frame "function (file:line)"), first match wins.
CATEGORIES: tuple[tuple[str, str, str], ...] = (
    ("model", "ONNX Runtime run", r"onnxruntime"),
    ("model", "tokenizer", r"tokenizers/|encode_batch"),
    ("model", "padding, softmax, answer", r"tuneserve/inference\.py|service/model\.py|numpy/"),
    ("server", "prediction log + store", r"service/(predlog|store|dialect)\.py|sqlite3|psycopg"),
    ("server", "Prometheus metrics", r"prometheus_client/|service/metrics\.py"),
    ("server", "tuneserve request path", r"service/|hmac|secrets|hashlib"),
    ("server", "JSON", r"json/|orjson"),
    ("server", "pydantic", r"pydantic"),
    ("server", "OpenTelemetry", r"opentelemetry"),
    ("server", "BentoML", r"bentoml|simple_di"),
    ("server", "Starlette", r"starlette/|anyio/"),
    ("server", "uvicorn + httptools", r"uvicorn/|httptools|h11"),
    ("server", "asyncio, threads", r"asyncio/|uvloop|threading\.py|concurrent/|queue\.py"),
    ("server", "logging", r"logging/"),
)
_FRAME = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")


def available() -> bool:
    """True when py-spy can be run (``pip install py-spy``; it needs ptrace rights)."""
    return _binary() is not None


def _binary() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.is_file() else shutil.which("py-spy")


def record(pids: list[int], seconds: float, prefix: Path) -> list[subprocess.Popen[bytes]]:
    """One ``py-spy record`` per pid for ``seconds``, writing ``<prefix>-<pid>.txt``."""
    binary = _binary()
    if binary is None:
        raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
    procs = []
    for pid in pids:
        out = prefix.with_name(f"{prefix.name}-{pid}.txt")
        command = [binary, "record", "--pid", str(pid), "--duration", f"{seconds:.0f}", "--rate",
                   "100", "--format", "raw", "--nonblocking", "--output", str(out)]  # fmt: skip
        log = out.with_suffix(".log").open("wb")
        procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
    return procs


def category(frame: str) -> tuple[str, str]:
    """The (group, what) of an innermost frame."""
    for group, what, pattern in CATEGORIES:
        if re.search(pattern, frame):
            return group, what
    return "server", "other"


def read_raw(path: Path) -> Counter[str]:
    """Samples per innermost frame of a raw py-spy file."""
    leaves: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        match = _FRAME.match(line)
        if match:
            leaves[match["stack"].split(";")[-1]] += int(match["count"])
    return leaves


def summarize(paths: list[Path], top: int = 12) -> dict[str, Any]:
    """Shares of running samples by category and group, and the busiest innermost frames."""
    leaves: Counter[str] = Counter()
    for path in paths:
        leaves.update(read_raw(path))
    total = sum(leaves.values())
    by_what: Counter[str] = Counter()
    by_group: Counter[str] = Counter()
    for frame, count in leaves.items():
        group, what = category(frame)
        by_what[f"{group}: {what}"] += count
        by_group[group] += count
    share = (lambda n: round(n / total, 4)) if total else (lambda n: 0.0)
    return {
        "samples": total,
        "groups": {k: share(v) for k, v in by_group.most_common()},
        "categories": {k: share(v) for k, v in by_what.most_common()},
        "top_frames": [[frame, share(n)] for frame, n in leaves.most_common(top)],
    }


def format_summary(name: str, summary: dict[str, Any]) -> str:
    """A few lines for the console and bench.md."""
    groups = ", ".join(f"{k} {v:.0%}" for k, v in summary["groups"].items())
    lines = [f"py-spy, {name}: {summary['samples']} running samples; {groups}"]
    lines += [f"  {v:6.1%}  {k}" for k, v in summary["categories"].items()]
    return "\n".join(lines)
