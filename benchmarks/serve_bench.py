"""Serving benchmark: tuneserve (INT8 unbatched, INT8 adaptive batching, fp32) vs a hand-written
PyTorch server, and in-process ONNX Runtime as the ceiling, all measured in one run.

    .venv/bin/python benchmarks/serve_bench.py \
        --export artifacts/export/bench-sst2-r24-lora-cpu-int8 \
        --fp32-export artifacts/export/bench-sst2-r24-lora-cpu-fp32

For each server: resident memory per idle worker; a closed-loop sweep with Locust (users 1 to 32,
the first seconds of each run excluded) giving throughput and exact p50/p99 from raw per-request
rows; the highest throughput with p99 <= 100 ms; p50/p99 at 50 requests/s offered (open loop:
arrivals at intended times, latency measured from them); the server's CPU seconds per request.
Locust runs on the same machine as the server and takes its share of the cores: every report
says so. Writes bench.json, bench.md (the headline table first) and bench.png.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.config import ServingConfig  # noqa: E402
from service.launch import stop_process, wait_ready  # noqa: E402
from service.model import VariantModel  # noqa: E402
from tuneserve.machine import describe_machine  # noqa: E402
from tuneserve.percentiles import percentiles  # noqa: E402

SST2_TEST = REPO.parent / "shared" / "data" / "sst2" / "test.tsv"
P99_SLO_MS = 100.0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for proc in tree(pid):
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def worker_rss_mb(pid: int, kind: str) -> list[float]:
    """RSS of each process that serves requests (BentoML workers; the peer's one process)."""
    procs = tree(pid)
    if kind == "peer":
        return [procs[0].memory_info().rss / 2**20]
    workers = [p for p in procs if "_bentoml_impl.worker" in " ".join(p.cmdline())]
    return [p.memory_info().rss / 2**20 for p in workers]


def start_tuneserve(config: Path, port: int, home: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TUNESERVE_SERVING_CONFIG": str(config), "BENTOML_HOME": str(home),
           "BENTOML_DO_NOT_TRACK": "true"}  # fmt: skip
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    command = [sys.executable, "-m", "bentoml", "serve", "service.app:Tuneserve",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def start_peer(export: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, str(REPO / "benchmarks" / "peers" / "pytorch_server.py"),
               "--export", str(export), "--port", str(port)]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def sst2_texts(work: Path) -> tuple[list[str], Path]:
    """The SST-2 test sentences, and a JSON file of them in ``work`` for the locustfile."""
    sentences = [line.split("\t")[0] for line in SST2_TEST.read_text().splitlines()[1:] if line]
    texts = work / "texts.json"
    texts.write_text(json.dumps(sentences))
    return sentences, texts


def run_locust(
    url: str, users: int, rate: float, seconds: float, warmup_s: float, texts: Path, work: Path,
    open_loop: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """One headless Locust run; statistics from raw rows after the warm-up. ``open_loop``: one
    scheduler sends ``rate`` requests/s at fixed intended times (Poisson), latency measured
    from the intended send time; otherwise ``users`` closed-loop users, ``rate`` each."""
    raw = work / f"raw-{users}-{rate}-{'open' if open_loop else 'closed'}.json"
    env = {**os.environ, "TUNESERVE_LOAD_TEXTS": str(texts), "TUNESERVE_LOAD_RAW": str(raw),
           "TUNESERVE_LOAD_RATE": str(rate), "TUNESERVE_LOAD_MODE": "open" if open_loop else
           "closed", "TUNESERVE_LOAD_DURATION_S": str(warmup_s + seconds)}  # fmt: skip
    users, user_class = (1, "OpenLoopUser") if open_loop else (users, "PredictUser")
    run_time = warmup_s + seconds + (30 if open_loop else 0)  # open loop quits by itself
    command = [sys.executable, "-m", "locust", "-f", str(REPO / "loadtests" / "locustfile.py"),
               "--headless", "-u", str(users), "-r", str(users), "--host", url,
               "--run-time", f"{run_time:.0f}s", "--only-summary",
               "--stop-timeout", "5", "--loglevel", "ERROR", user_class]  # fmt: skip
    subprocess.run(command, env=env, cwd=REPO, check=False, capture_output=True, timeout=600)
    data = json.loads(raw.read_text())
    rows = [r for r in data["rows"] if r[4] in ("predict", "dropped")]
    start = data["meta"]["started_at"] + warmup_s
    end = start + seconds
    window = [r for r in rows if start <= r[0] < end]
    ok = np.array([r[1] for r in window if r[2] == 200])
    exact = percentiles(ok, (50, 90, 99)) if len(ok) else {}
    return {
        "users": users,
        "offered_rps_per_user": rate or None,
        "requests": len(window),
        "failures": sum(1 for r in window if r[2] != 200),
        "throughput_rps": len(ok) / seconds,
        "p50_ms": exact[50] if len(ok) else None,  # nearest rank (tuneserve.percentiles)
        "p90_ms": exact[90] if len(ok) else None,
        "p99_ms": exact[99] if len(ok) else None,
        "max_ms": float(ok.max()) if len(ok) else None,
        "total_requests": len(rows),
    }


def measure_server(
    name: str, kind: str, proc: subprocess.Popen[bytes], url: str, args: argparse.Namespace,
    texts: Path, work: Path,
) -> dict[str, Any]:  # fmt: skip
    wait_ready(url, proc)
    time.sleep(2)
    result: dict[str, Any] = {"name": name, "kind": kind}
    result["idle_worker_rss_mb"] = [round(x, 1) for x in worker_rss_mb(proc.pid, kind)]
    sweep = []
    for users in args.users:
        cpu_before = cpu_seconds(proc.pid)
        point = run_locust(url, users, 0, args.seconds, args.warmup, texts, work)
        point["server_cpu_s_per_request"] = (cpu_seconds(proc.pid) - cpu_before) / max(
            point["total_requests"], 1
        )
        sweep.append(point)
        print(f"  {name}: {users:>3} users {point['throughput_rps']:7.1f} req/s "
              f"p50 {point['p50_ms']:.1f} p99 {point['p99_ms']:.1f} ms "
              f"failures {point['failures']}", flush=True)  # fmt: skip
    result["sweep"] = sweep
    meeting = [p for p in sweep if p["p99_ms"] is not None and p["p99_ms"] <= P99_SLO_MS
               and p["failures"] == 0]  # fmt: skip
    result["max_rps_p99_100ms"] = max((p["throughput_rps"] for p in meeting), default=0.0)
    # open loop: Poisson arrivals at args.rate, latency from the intended send time
    fixed = run_locust(url, 1, args.rate, args.seconds, args.warmup, texts, work, open_loop=True)
    result["fixed_rate"] = fixed | {"offered_rps": args.rate}
    print(f"  {name}: {args.rate:g} req/s offered -> p50 {fixed['p50_ms']:.1f} "
          f"p99 {fixed['p99_ms']:.1f} ms", flush=True)  # fmt: skip
    return result


def in_process(export: Path, sentences: list[str], seconds: float) -> dict[str, Any]:
    """ONNX Runtime without a server: 2 threads x 1 intra-op thread, batch 1 (as the service's
    2 workers x 1 thread); and one call of 32 texts padded to the longest, 2 threads."""
    settings = ServingConfig.model_validate(
        {"variants": [{"name": "m", "path": str(export), "control": True}], "workers": 2}
    )
    model = VariantModel(settings.variants[0], settings)
    model.warm_up(5)
    count = [0, 0]
    stop_at = time.perf_counter() + seconds

    def loop(slot: int) -> None:
        rng = random.Random(slot)
        while time.perf_counter() < stop_at:
            text = rng.choice(sentences)
            encodings = model.encode([text])
            model.answer(model.infer(encodings)[0], encodings[0])
            count[slot] += 1

    cpu0, wall0 = time.process_time(), time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    total = sum(count)
    result = {"batch1_2threads_rps": total / wall, "cpu_s_per_inference": cpu / total}
    settings2 = settings.model_copy(update={"workers": 1})
    model2 = VariantModel(settings2.variants[0], settings2)
    rng = random.Random(0)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = [rng.choice(sentences) for _ in range(32)]
        model2.infer(model2.encode(batch))
        n += 32
    result["batch32_rps"] = n / (time.perf_counter() - start)
    return result


def write_config(path: Path, export: Path, batching: str) -> Path:
    path.write_text(
        f'[[variants]]\nname = "tuned"\npath = "{export}"\ncontrol = true\n'
        f'[batching]\nmode = "{batching}"\nmax_batch_size = 32\n'
        "[limits]\nmax_inflight = 1024\n"
        f'[store]\npath = "{path.with_suffix(".sqlite")}"\n'
        f'[experiment]\nid_key_file = "{path.with_suffix(".key")}"\n'
    )
    return path


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in results:
        xs = [p["throughput_rps"] for p in r["sweep"]]
        ys = [p["p99_ms"] for p in r["sweep"]]
        ax.plot(xs, ys, marker="o", label=r["name"])
        for p in r["sweep"]:
            ax.annotate(str(p["users"]), (p["throughput_rps"], p["p99_ms"]), fontsize=7)
    ax.axhline(P99_SLO_MS, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("p99 latency (ms), log scale")
    ax.set_yscale("log")
    ax.set_title("closed-loop Locust sweep (labels: users); Locust on the same 2 cores")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(results: list[dict[str, Any]], inproc: dict[str, Any], rate: float) -> str:
    lines = [
        "| server | idle RSS per worker (MB) | req/s at 32 users | p99 at 32 users (ms) | "
        f"max req/s with p99 <= 100 ms | p50 / p99 at {rate:g} req/s (ms) | "
        "server CPU s per request (32 users) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        at32 = next((p for p in r["sweep"] if p["users"] == 32), r["sweep"][-1])
        fixed = r["fixed_rate"]
        lines.append(
            f"| {r['name']} | {', '.join(f'{x:.0f}' for x in r['idle_worker_rss_mb'])} | "
            f"{at32['throughput_rps']:.0f} | {at32['p99_ms']:.1f} | {r['max_rps_p99_100ms']:.0f} | "
            f"{fixed['p50_ms']:.1f} / {fixed['p99_ms']:.1f} | "
            f"{at32['server_cpu_s_per_request'] * 1000:.2f} ms |"
        )
    lines.append(
        f"| in-process ONNX Runtime INT8 (no server) | | {inproc['batch1_2threads_rps']:.0f} "
        f"(batch 1, 2 threads); {inproc['batch32_rps']:.0f} (batch 32) | | | | "
        f"{inproc['cpu_s_per_inference'] * 1000:.2f} ms per inference |"
    )
    return "\n".join(lines)


def headline(results: list[dict[str, Any]], rate: float) -> str:
    """BENCHMARKS.md's headline serving table: one row per server, all from this run."""
    lines = [
        f"| server | max req/s with p99 <= {P99_SLO_MS:.0f} ms (closed-loop sweep) | "
        f"p50 / p99 at {rate:g} req/s offered, open loop (ms) | failures at {rate:g} req/s |",
        "|---|---:|---:|---:|",
    ]
    for r in results:
        fixed = r["fixed_rate"]
        p50 = "-" if fixed["p50_ms"] is None else f"{fixed['p50_ms']:.1f}"
        p99 = "-" if fixed["p99_ms"] is None else f"{fixed['p99_ms']:.1f}"
        lines.append(f"| {r['name']} | {r['max_rps_p99_100ms']:.0f} | {p50} / {p99} | "
                     f"{fixed['failures']} of {fixed['requests']} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, required=True, help="INT8 export (cpu-int8)")
    parser.add_argument("--fp32-export", type=Path, help="cpu-fp32 export of the same train run")
    parser.add_argument("--users", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--seconds", type=float, default=12.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds excluded per run")
    parser.add_argument("--rate", type=float, default=50.0, help="offered requests/s")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "artifacts" / "bench-serve" / "latest")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    sentences, texts = sst2_texts(work)

    print("in-process ONNX Runtime ...", flush=True)
    inproc = in_process(args.export, sentences, args.seconds)
    print(f"  {inproc}", flush=True)
    servers: list[tuple[str, str, Any]] = [
        ("tuneserve INT8, no batching (2 workers x 1 thread)", "tuneserve",
         write_config(work / "off.toml", args.export, "off")),
        ("tuneserve INT8, adaptive batching (2 workers)", "tuneserve",
         write_config(work / "adaptive.toml", args.export, "adaptive")),
    ]  # fmt: skip
    if args.fp32_export:
        servers.append(("tuneserve fp32, no batching (2 workers x 1 thread)", "tuneserve",
                        write_config(work / "fp32.toml", args.fp32_export, "off")))  # fmt: skip
    if not args.skip_peer:
        servers.append(("PyTorch + transformers, Starlette, no batching (1 worker)", "peer", None))
    results = []
    for name, kind, config in servers:
        port = free_port()
        log = work / f"{kind}-{port}.log"
        if kind == "peer":
            proc = start_peer(args.export, port, log)
        else:
            proc = start_tuneserve(config, port, work / f"home-{port}", log)
        print(f"{name} ...", flush=True)
        try:
            results.append(measure_server(
                name, kind, proc, f"http://127.0.0.1:{port}", args, texts, work))  # fmt: skip
        finally:
            stop_process(proc)
    report = {
        "machine": describe_machine(),
        "load_generator": "Locust 2.47 (FastHttpUser) on the same host as the server "
        "(127.0.0.1), sharing its CPUs; sweep: closed loop; fixed rate: open loop, Poisson "
        "arrivals, latency from the intended send time",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "export": str(args.export),
        "in_process": inproc,
        "servers": results,
    }
    (args.out / "bench.json").write_text(json.dumps(report, indent=2))
    md = headline(results, args.rate) + "\n\n" + table(results, inproc, args.rate)
    (args.out / "bench.md").write_text(md + "\n")
    plot(results, args.out / "bench.png")
    print("\n" + md)
    tuned = results[0]
    at32 = next(p for p in tuned["sweep"] if p["users"] == 32)
    print(f"\nservice / in-process throughput at 32 users: "
          f"{at32['throughput_rps'] / inproc['batch1_2threads_rps']:.2f}")  # fmt: skip
    peer = next((r for r in results if r["kind"] == "peer"), None)
    if peer and peer["max_rps_p99_100ms"]:
        best = max(r["max_rps_p99_100ms"] for r in results if r["kind"] == "tuneserve")
        print(f"tuneserve best / PyTorch server, max req/s with p99 <= 100 ms: "
              f"{best / peer['max_rps_p99_100ms']:.2f}")  # fmt: skip
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
