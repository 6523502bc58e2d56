"""Serving benchmark: tuneserve (INT8 unbatched, INT8 adaptive batching, fp32) vs a hand-written
PyTorch server, a bare BentoML endpoint over the same model (BentoML's own floor), and in-process
ONNX Runtime as the ceiling (measured before and after the servers; the higher counts, since on a
shared machine the ceiling moves), all measured in one run.

    .venv/bin/python benchmarks/serve_bench.py \
        --export artifacts/export/bench-sst2-r24-lora-cpu-int8 \
        --fp32-export artifacts/export/bench-sst2-r24-lora-cpu-fp32 [--py-spy]

For each server: resident memory per idle worker; a closed-loop sweep with Locust (users 1 to 32,
the first seconds of each run excluded) giving throughput and p50/p99 from the runner's HDR
histograms (nearest rank, 3 significant digits); the highest throughput with p99 <= 100 ms;
p50/p99 at 50 requests/s offered (open loop: arrivals at intended times, latency measured from
them); the server's CPU seconds per request.
Locust runs through loadtests' runner (the same locustfile and statistics as `tuneserve
loadtest`), on the same machine as the server, and takes its share of the cores: every report
says so. ``--py-spy`` adds, per BentoML server, one more run at the largest user count with
py-spy recording each worker, summarised by where the CPU went (benchmarks/profiles.py).
The sentences come from ``--data DIR``, else $TUNESERVE_DATA, else ../shared/data/sst2 next to
the repository (the data rule of the README). Writes bench.json, bench.md (the headline table
first) and bench.png.
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

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import profiles  # noqa: E402
from loadtests.config import LoadTestConfig  # noqa: E402
from loadtests.runner import read_traffic, run_locust  # noqa: E402
from service.config import ServingConfig  # noqa: E402
from service.launch import stop_process, wait_ready  # noqa: E402
from service.model import VariantModel  # noqa: E402
from tuneserve.data import resolve_source  # noqa: E402
from tuneserve.errors import DataError  # noqa: E402
from tuneserve.machine import describe_machine  # noqa: E402

DEFAULT_DATA = "../shared/data/sst2"  # relative to the repository root, as in the shipped configs
TEST_SPLIT = "test.tsv"
P99_SLO_MS = 100.0


def ms(value: float | None) -> str:
    """A latency for the tables; ``-`` when no request succeeded."""
    return "-" if value is None else f"{value:.1f}"


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


def worker_pids(pid: int, kind: str) -> list[int]:
    """The processes that serve requests (BentoML workers; the peer's one process)."""
    procs = tree(pid)
    if kind == "peer":
        return [procs[0].pid]
    return [p.pid for p in procs if "_bentoml_impl.worker" in " ".join(p.cmdline())]


def worker_rss_mb(pid: int, kind: str) -> list[float]:
    return [psutil.Process(p).memory_info().rss / 2**20 for p in worker_pids(pid, kind)]


def _popen(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def _bentoml_env(home: Path) -> dict[str, str]:
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


def start_tuneserve(config: Path, port: int, home: Path, log: Path) -> subprocess.Popen[bytes]:
    env = _bentoml_env(home) | {"TUNESERVE_SERVING_CONFIG": str(config)}
    command = [sys.executable, "-m", "bentoml", "serve", "service.app:Tuneserve",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    return _popen(command, env, log)


def start_bare(export: Path, port: int, home: Path, log: Path) -> subprocess.Popen[bytes]:
    """The bare BentoML endpoint over the same model (benchmarks/peers/bare_bentoml.py)."""
    env = _bentoml_env(home) | {"TUNESERVE_BARE_EXPORT": str(export.resolve())}
    command = [sys.executable, "-m", "bentoml", "serve", "benchmarks.peers.bare_bentoml:Bare",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    return _popen(command, env, log)


def start_peer(export: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, str(REPO / "benchmarks" / "peers" / "pytorch_server.py"),
               "--export", str(export), "--port", str(port)]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return _popen(command, env, log)


def test_split(data: str | None) -> Path:
    """The labelled test split: ``--data DIR``, else $TUNESERVE_DATA, else ../shared/data/sst2
    relative to the repository root."""
    source = resolve_source(DEFAULT_DATA, data)
    root = Path(source)
    if source == DEFAULT_DATA:
        root = REPO / root
    path = root / TEST_SPLIT
    if not path.is_file():
        raise DataError(
            f"no {TEST_SPLIT} in {root}: pass --data DIR (a directory holding {TEST_SPLIT} with "
            "sentence and label columns) or set $TUNESERVE_DATA"
        )
    return path


def load_config(url: str, args: argparse.Namespace, users: int, rate: float,
                open_loop: bool) -> LoadTestConfig:  # fmt: skip
    """One run's settings: ``users`` closed-loop users (no wait), or open loop at ``rate``."""
    return LoadTestConfig(
        host=url, users=users, spawn_rate=float(users), duration_s=args.seconds,
        warmup_s=args.warmup, open_loop=open_loop, rate=rate, texts=args.texts,
        out=args.work, run_id=f"{'open' if open_loop else 'closed'}-{users}-{rate:g}",
    )  # fmt: skip


def load_point(
    url: str, args: argparse.Namespace, traffic: list[list[Any]], users: int, rate: float = 0.0,
    open_loop: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """One headless Locust run through loadtests' runner; exact figures of the measured window.
    ``open_loop``: one scheduler sends ``rate`` requests/s at intended times (Poisson), latency
    from the intended send time; otherwise ``users`` closed-loop users sending back to back."""
    cfg = load_config(url, args, users, rate, open_loop)
    run_dir = args.work / f"{url.rsplit(':', 1)[-1]}-{cfg.run_id}"
    result = run_locust(cfg, run_dir, traffic)
    row = result["rows"][0]  # "all": every prediction of the window
    return {
        "users": users,
        "requests": row["requests"],
        "failures": row["failures"],
        "throughput_rps": (row["requests"] - row["failures"]) / cfg.duration_s,
        **{f"{k}_ms": row[f"{k}_ms"] for k in ("p50", "p90", "p99", "max")},
        # every request of the run, warm-up included (1 s windows): the CPU figures' divisor
        "total_requests": round(sum(w["sent_per_s"] for w in result["windows"])),
    }


def closed_point(
    url: str, pid: int, args: argparse.Namespace, traffic: list[list[Any]], users: int
) -> dict[str, Any]:
    """A closed-loop point with the server's CPU seconds per request (whole run, warm-up too)."""
    cpu_before = cpu_seconds(pid)
    point = load_point(url, args, traffic, users)
    point["server_cpu_s_per_request"] = (cpu_seconds(pid) - cpu_before) / max(
        point["total_requests"], 1
    )
    return point


def profile_point(
    name: str, kind: str, proc: subprocess.Popen[bytes], url: str, args: argparse.Namespace,
    traffic: list[list[Any]],
) -> dict[str, Any]:  # fmt: skip
    """One more run at the largest user count with py-spy on every worker (not in the sweep:
    sampling costs the workers a little)."""
    users = max(args.users)
    slug = "".join(c if c.isalnum() else "-" for c in name.lower())[:40].strip("-")
    prefix = args.out / f"py-spy-{slug}"
    pids = worker_pids(proc.pid, kind)
    spies = profiles.record(pids, args.warmup + args.seconds, prefix)
    cpu_before = profiles.thread_cpu(pids)
    point = closed_point(url, proc.pid, args, traffic, users)
    cpu_after = profiles.thread_cpu(pids)
    for spy in spies:
        spy.wait(60)
    raw = [p for pid in pids if (p := prefix.with_name(f"{prefix.name}-{pid}.txt")).is_file()]
    summary = profiles.summarize(raw) | {"users": users, "files": [p.name for p in raw]}
    names = {int(k): v for k, v in summary["thread_names"].items()}
    summary["cpu_ms_per_request"] = profiles.cpu_by_thread(
        cpu_before, cpu_after, names, point["total_requests"]
    )
    print(profiles.format_summary(name, summary), flush=True)
    return {"point": point, "summary": summary}


def measure_server(
    name: str, kind: str, proc: subprocess.Popen[bytes], url: str, args: argparse.Namespace,
    traffic: list[list[Any]],
) -> dict[str, Any]:  # fmt: skip
    wait_ready(url, proc)
    time.sleep(2)
    result: dict[str, Any] = {"name": name, "kind": kind}
    result["idle_worker_rss_mb"] = [round(x, 1) for x in worker_rss_mb(proc.pid, kind)]
    sweep = []
    for users in args.users:
        point = closed_point(url, proc.pid, args, traffic, users)
        sweep.append(point)
        print(f"  {name}: {users:>3} users {point['throughput_rps']:7.1f} req/s "
              f"p50 {ms(point['p50_ms'])} p99 {ms(point['p99_ms'])} ms "
              f"failures {point['failures']}, server CPU "
              f"{point['server_cpu_s_per_request'] * 1000:.2f} ms/request", flush=True)  # fmt: skip
    result["sweep"] = sweep
    meeting = [p for p in sweep if p["p99_ms"] is not None and p["p99_ms"] <= P99_SLO_MS
               and p["failures"] == 0]  # fmt: skip
    result["max_rps_p99_100ms"] = max((p["throughput_rps"] for p in meeting), default=0.0)
    # open loop: Poisson arrivals at args.rate, latency from the intended send time
    fixed = load_point(url, args, traffic, 1, args.rate, open_loop=True)
    result["fixed_rate"] = fixed | {"offered_rps": args.rate}
    print(f"  {name}: {args.rate:g} req/s offered -> p50 {ms(fixed['p50_ms'])} "
          f"p99 {ms(fixed['p99_ms'])} ms, failures {fixed['failures']}", flush=True)  # fmt: skip
    if args.py_spy and kind != "peer":
        result["py_spy"] = profile_point(name, kind, proc, url, args, traffic)
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


def best_of(first: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    """The in-process ceiling from two measurements (before and after the servers)."""
    return {
        "batch1_2threads_rps": max(first["batch1_2threads_rps"], last["batch1_2threads_rps"]),
        "cpu_s_per_inference": min(first["cpu_s_per_inference"], last["cpu_s_per_inference"]),
        "batch32_rps": max(first["batch32_rps"], last["batch32_rps"]),
        "runs": [first, last],
    }


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
        points = [p for p in r["sweep"] if p["p99_ms"] is not None]
        xs = [p["throughput_rps"] for p in points]
        ys = [p["p99_ms"] for p in points]
        ax.plot(xs, ys, marker="o", label=r["name"])
        for p in points:
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
        "server CPU per request (32 users) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        at32 = max(r["sweep"], key=lambda p: p["users"])
        fixed = r["fixed_rate"]
        lines.append(
            f"| {r['name']} | {', '.join(f'{x:.0f}' for x in r['idle_worker_rss_mb'])} | "
            f"{at32['throughput_rps']:.0f} | {ms(at32['p99_ms'])} | {r['max_rps_p99_100ms']:.0f} | "
            f"{ms(fixed['p50_ms'])} / {ms(fixed['p99_ms'])} | "
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
        p50, p99 = ms(fixed["p50_ms"]), ms(fixed["p99_ms"])
        lines.append(f"| {r['name']} | {r['max_rps_p99_100ms']:.0f} | {p50} / {p99} | "
                     f"{fixed['failures']} of {fixed['requests']} |")  # fmt: skip
    return "\n".join(lines)


SERVERS = ("int8", "adaptive", "fp32", "bare", "peer")


def ratios(results: list[dict[str, Any]], inproc: dict[str, Any], users: int) -> dict[str, Any]:
    """The serving issue's ratios, all from this run."""

    def at(r: dict[str, Any]) -> dict[str, Any]:
        return next(p for p in r["sweep"] if p["users"] == users)

    by_kind = {r["key"]: r for r in results}
    ceiling = inproc["batch1_2threads_rps"]
    out: dict[str, Any] = {"users": users}
    if "int8" in by_kind:
        int8 = by_kind["int8"]
        out["tuneserve_vs_in_process"] = at(int8)["throughput_rps"] / ceiling
        out["tuneserve_p99_100ms_vs_in_process"] = int8["max_rps_p99_100ms"] / ceiling
    if "bare" in by_kind:
        bare = by_kind["bare"]
        out["bare_bentoml_vs_in_process"] = at(bare)["throughput_rps"] / ceiling
        if "int8" in by_kind:
            out["tuneserve_vs_bare_bentoml"] = (
                at(by_kind["int8"])["throughput_rps"] / at(bare)["throughput_rps"]
            )
    peer = by_kind.get("peer")
    ours = [r["max_rps_p99_100ms"] for r in results if r["kind"] == "tuneserve"]
    if peer and peer["max_rps_p99_100ms"] and ours:
        out["tuneserve_best_vs_pytorch_p99_100ms"] = max(ours) / peer["max_rps_p99_100ms"]
    return out


def format_ratios(r: dict[str, Any]) -> str:
    names = {
        "tuneserve_vs_in_process": f"tuneserve INT8 / in-process ONNX Runtime, req/s at "
        f"{r['users']} users",
        "tuneserve_p99_100ms_vs_in_process": "tuneserve INT8 max req/s with p99 <= 100 ms / "
        "in-process ONNX Runtime",
        "bare_bentoml_vs_in_process": f"bare BentoML endpoint / in-process, req/s at "
        f"{r['users']} users",
        "tuneserve_vs_bare_bentoml": f"tuneserve INT8 / bare BentoML endpoint, req/s at "
        f"{r['users']} users",
        "tuneserve_best_vs_pytorch_p99_100ms": "tuneserve best / PyTorch server, max req/s "
        "with p99 <= 100 ms",
    }
    return "\n".join(f"{names[k]}: {v:.2f}" for k, v in r.items() if k in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, required=True, help="INT8 export (cpu-int8)")
    parser.add_argument("--fp32-export", type=Path, help="cpu-fp32 export of the same train run")
    parser.add_argument("--data", help="directory holding test.tsv (default: $TUNESERVE_DATA, "
                        "else ../shared/data/sst2 next to the repository)")  # fmt: skip
    parser.add_argument("--users", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--seconds", type=float, default=12.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds excluded per run")
    parser.add_argument("--rate", type=float, default=50.0, help="offered requests/s")
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS),
                        help="which servers to measure (fp32 needs --fp32-export)")  # fmt: skip
    parser.add_argument("--skip-peer", action="store_true", help="leave out the PyTorch server")
    parser.add_argument("--py-spy", action="store_true",
                        help="profile each BentoML server's workers in one more run")  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO / "artifacts" / "bench-serve" / "latest")
    args = parser.parse_args()
    try:
        args.texts = test_split(args.data)
    except DataError as exc:
        parser.error(str(exc))
    if args.py_spy and not profiles.available():
        parser.error("--py-spy needs py-spy: .venv/bin/pip install py-spy")
    args.out.mkdir(parents=True, exist_ok=True)
    args.work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    traffic = read_traffic(load_config("http://127.0.0.1:1", args, 1, 0.0, False))
    sentences = [text for text, _ in traffic]

    print("in-process ONNX Runtime ...", flush=True)
    inproc = in_process(args.export, sentences, args.seconds)
    print(f"  {inproc}", flush=True)
    work = args.work
    servers: list[tuple[str, str, str, Any]] = [
        ("int8", "tuneserve INT8, no batching (2 workers x 1 thread)", "tuneserve",
         write_config(work / "off.toml", args.export, "off")),
        ("adaptive", "tuneserve INT8, adaptive batching (2 workers)", "tuneserve",
         write_config(work / "adaptive.toml", args.export, "adaptive")),
        ("bare", "bare BentoML endpoint, same INT8 model (2 workers x 1 thread)", "bare", None),
        ("peer", "PyTorch + transformers, Starlette, no batching (1 worker)", "peer", None),
    ]  # fmt: skip
    if args.fp32_export:
        fp32 = write_config(work / "fp32.toml", args.fp32_export, "off")
        servers.insert(2, ("fp32", "tuneserve fp32, no batching (2 workers x 1 thread)",
                           "tuneserve", fp32))  # fmt: skip
    wanted = set(args.servers) - ({"peer"} if args.skip_peer else set())
    results = []
    for key, name, kind, config in servers:
        if key not in wanted:
            continue
        port = free_port()
        log = work / f"{key}-{port}.log"
        if kind == "peer":
            proc = start_peer(args.export, port, log)
        elif kind == "bare":
            proc = start_bare(args.export, port, work / f"home-{port}", log)
        else:
            proc = start_tuneserve(config, port, work / f"home-{port}", log)
        print(f"{name} ...", flush=True)
        try:
            url = f"http://127.0.0.1:{port}"
            results.append({"key": key} | measure_server(name, kind, proc, url, args, traffic))
        finally:
            stop_process(proc)
        (args.out / "partial.json").write_text(
            json.dumps(results, indent=2)
        )  # if a later one fails
    # again at the end: on a shared machine the ceiling moves; the higher one is the ceiling
    print("in-process ONNX Runtime again ...", flush=True)
    inproc = best_of(inproc, in_process(args.export, sentences, args.seconds))
    print(f"  {inproc}", flush=True)
    summary = ratios(results, inproc, max(args.users))
    report = {
        "machine": describe_machine(),
        "load_generator": "Locust (FastHttpUser, loadtests/locustfile.py through "
        "loadtests.runner) on the same host as the server (127.0.0.1), sharing its CPUs; sweep: "
        "closed loop; fixed rate: open loop, Poisson arrivals, latency from the intended send time",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "export": str(args.export),
        "texts": str(args.texts),
        "in_process": inproc,
        "servers": results,
        "ratios": summary,
    }
    (args.out / "bench.json").write_text(json.dumps(report, indent=2))
    md = headline(results, args.rate) + "\n\n" + table(results, inproc, args.rate)
    md += "\n\n" + format_ratios(summary)
    for r in results:
        if "py_spy" in r:
            md += "\n\n" + profiles.format_summary(r["name"], r["py_spy"]["summary"])
    (args.out / "bench.md").write_text(md + "\n")
    plot(results, args.out / "bench.png")
    print("\n" + md)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
