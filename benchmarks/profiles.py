"""py-spy profiles of a server's worker processes under load, summarised by where the CPU went.

``record`` starts one ``py-spy record`` per worker (raw collapsed stacks per thread, idle threads
left out, so a sample is a moment a thread was running); ``summarize`` sorts every sample by the
file of its innermost Python frame (native code counts for the Python call that entered it: ONNX
Runtime's ``run``, the tokenizer's ``encode_batch``) into model work and everything else.
Two kinds of sample are not work of one's own: lock and condition hand-offs between the event
loop and the other threads (``wait``: waking one, being woken), and uvloop's C loop, whose epoll
wait py-spy cannot tell from its work without ``--native`` (``loop``).
``thread_cpu`` reads each thread's exact CPU time, which sorts the shares into milliseconds.
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
    (
        "wait",
        "lock or condition hand-offs (waking, woken)",
        r"^Condition\.|^Event\.wait|^Queue\.get",
    ),
    ("loop", "uvloop's C loop (its work and its epoll wait)", r"^Runner\.run \(asyncio/"),
    ("model", "ONNX Runtime run", r"onnxruntime"),
    ("model", "tokenizer", r"tokenizers/|encode_batch|VariantModel\.encode "),
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
_FRAME = re.compile(r"^thread \((?P<tid>\d+)\): (?P<stack>.*) (?P<count>\d+)$")


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
        command = [binary, "record", "--pid", str(pid), "--duration", f"{seconds:.0f}",
                   "--rate", "100", "--format", "raw", "--threads", "--nonblocking",
                   "--output", str(out)]  # fmt: skip
        log = out.with_suffix(".log").open("wb")
        procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
    return procs


def category(frame: str) -> tuple[str, str]:
    """The (group, what) of an innermost frame."""
    for group, what, pattern in CATEGORIES:
        if re.search(pattern, frame):
            return group, what
    return "server", "other"


def read_raw(path: Path) -> tuple[Counter[str], Counter[str], dict[int, str]]:
    """Samples per innermost frame and per thread name of a raw ``--threads`` py-spy file, and
    each thread id's name."""
    leaves: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    names: dict[int, str] = {}
    for line in path.read_text().splitlines():
        match = _FRAME.match(line)
        if match:
            name, *frames = match["stack"].split(";")
            names[int(match["tid"])] = name
            threads[name] += int(match["count"])
            if frames:
                leaves[frames[-1]] += int(match["count"])
    return leaves, threads, names


def thread_cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds so far of every thread of ``pids``, by thread id."""
    import psutil

    out: dict[int, float] = {}
    for pid in pids:
        try:
            for thread in psutil.Process(pid).threads():
                out[thread.id] = thread.user_time + thread.system_time
        except psutil.NoSuchProcess:
            pass
    return out


def cpu_by_thread(
    before: dict[int, float], after: dict[int, float], names: dict[int, str], requests: int
) -> dict[str, float]:
    """Milliseconds of CPU per request by thread name (summed over workers)."""
    out: Counter[str] = Counter()
    for tid, seconds in after.items():
        out[names.get(tid, "other threads")] += seconds - before.get(tid, 0.0)
    return {k: round(v * 1000 / max(requests, 1), 3) for k, v in out.most_common() if v > 0}


def summarize(paths: list[Path], top: int = 12) -> dict[str, Any]:
    """Shares of running samples by category, group and thread, and the busiest frames."""
    leaves: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    names: dict[int, str] = {}
    for path in paths:
        file_leaves, file_threads, file_names = read_raw(path)
        leaves.update(file_leaves)
        threads.update(file_threads)
        names |= file_names
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
        "threads": {k: share(v) for k, v in threads.most_common()},
        "top_frames": [[frame, share(n)] for frame, n in leaves.most_common(top)],
        "thread_names": {str(k): v for k, v in names.items()},
    }


def format_summary(name: str, summary: dict[str, Any]) -> str:
    """A few lines for the console and bench.md."""
    groups = ", ".join(f"{k} {v:.0%}" for k, v in summary["groups"].items())
    lines = [f"py-spy, {name}: {summary['samples']} running samples; {groups}"]
    lines += [f"  {v:6.1%}  {k}" for k, v in summary["categories"].items()]
    threads = ", ".join(f"{k} {v:.0%}" for k, v in summary["threads"].items())
    lines.append(f"  samples by thread: {threads}")
    if "cpu_ms_per_request" in summary:
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in summary["cpu_ms_per_request"].items())
        lines.append(f"  exact CPU ms per request by thread (psutil): {cpu}")
    return "\n".join(lines)
