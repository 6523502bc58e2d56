"""Shadow-traffic benchmark: what scoring live requests again in shadow costs the live path.

    .venv/bin/python benchmarks/shadow_bench.py \
        --baseline artifacts/export/demo-head-cpu-int8 --tuned artifacts/export/demo-lora-cpu-int8

Serves baseline (control) and tuned half and half, once without shadow and once with every
request that baseline answers also scored by tuned in shadow (share 1.0, the worst case), and
runs the same fixed offered rate against each (open loop: Poisson arrivals at intended times,
latency measured from them), in alternating rounds so that drift on a shared machine hits both
alike. Reports live p50/p99 from the load-test runner, and how many shadow jobs ran or were
skipped (bounded: a job starts only while its worker has no live request in flight, and runs at
the lowest CPU priority). Locust runs on the same cores as the server.
Writes shadow.json and shadow.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.serve_bench import (  # noqa: E402
    free_port,
    load_config,
    load_point,
    start_tuneserve,
    test_split,
)
from loadtests.runner import read_traffic  # noqa: E402
from service.launch import stop_process, wait_ready  # noqa: E402
from tuneserve.errors import DataError  # noqa: E402
from tuneserve.machine import describe_machine  # noqa: E402


def write_config(path: Path, baseline: Path, tuned: Path, share: float) -> Path:
    path.write_text(
        f'[[variants]]\nname = "baseline"\npath = "{baseline}"\ncontrol = true\n'
        f'[[variants]]\nname = "tuned"\npath = "{tuned}"\n'
        f'[shadow]\nvariant = "tuned"\nshare = {share}\n'
        "[limits]\nmax_inflight = 1024\n"
        f'[store]\npath = "{path.with_suffix(".sqlite")}"\n'
        f'[experiment]\nid_key_file = "{path.with_suffix(".key")}"\n'
    )
    return path


def shadow_counts(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == "tuneserve_shadow_predictions_total":
                outcome = sample.labels["outcome"]
                counts[outcome] = counts.get(outcome, 0.0) + sample.value
    return counts


def one_run(config: Path, args: argparse.Namespace, traffic: list[list[Any]]) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    work = args.work
    proc = start_tuneserve(config, port, work / f"home-{port}", work / f"server-{port}.log")
    try:
        wait_ready(url, proc)
        result = load_point(url, args, traffic, 1, args.rate, open_loop=True)
        result["shadow"] = shadow_counts(url)
    finally:
        stop_process(proc)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="control export")
    parser.add_argument("--tuned", type=Path, required=True, help="challenger and shadow export")
    parser.add_argument("--rate", type=float, default=50.0, help="offered requests/s")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds excluded per run")
    parser.add_argument("--rounds", type=int, default=3, help="off/on pairs")
    parser.add_argument("--data", help="directory holding test.tsv (default: $TUNESERVE_DATA, "
                        "else ../shared/data/sst2 next to the repository)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO / "artifacts" / "bench-shadow" / "latest")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        args.texts = test_split(args.data)
    except DataError as exc:
        parser.error(str(exc))
    work = args.work = Path(tempfile.mkdtemp(prefix="shadow-bench-"))
    traffic = read_traffic(load_config("http://127.0.0.1:1", args, 1, args.rate, True))
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for round_ in range(args.rounds):
        for name, share in (("off", 0.0), ("on", 1.0)):
            config = write_config(work / f"{name}-{round_}.toml", args.baseline, args.tuned, share)
            result = one_run(config, args, traffic)
            runs[name].append(result)
            print(f"round {round_ + 1} shadow {name}: p50 {result['p50_ms']:.1f} ms, p99 "
                  f"{result['p99_ms']:.1f} ms, {result['throughput_rps']:.1f} req/s, "
                  f"failures {result['failures']}, shadow {result['shadow']}",
                  flush=True)  # fmt: skip
    lines = [
        f"| shadow (tuned scores baseline's requests) | round | p50 ms | p99 ms | req/s "
        f"(offered {args.rate:g}) | shadow scored | shadow skipped |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("off", "on"):
        for i, r in enumerate(runs[name], start=1):
            scored = r["shadow"].get("agree", 0) + r["shadow"].get("disagree", 0)
            lines.append(f"| {name} | {i} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                         f"{r['throughput_rps']:.1f} | {scored:.0f} | "
                         f"{r['shadow'].get('skipped', 0):.0f} |")  # fmt: skip
    md = "\n".join(lines)
    report = {
        "machine": describe_machine(),
        "load_generator": "Locust (FastHttpUser), open loop with Poisson arrivals, latency from "
        "the intended send time, on the same host as the server (127.0.0.1), sharing its CPUs",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "runs": runs,
    }
    (args.out / "shadow.json").write_text(json.dumps(report, indent=2))
    (args.out / "shadow.md").write_text(md + "\n")
    print("\n" + md + f"\n-> {args.out}")


if __name__ == "__main__":
    main()
