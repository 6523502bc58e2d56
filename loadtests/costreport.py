"""`tuneserve cost`'s outputs: the side-by-side table, cost.json, cost.md and a bar chart."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtests.cost import Profile, plan
from loadtests.errors import LoadTestError

Row = tuple[str, Callable[[dict[str, Any]], str]]


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} MiB"


def _server(e: dict[str, Any]) -> str:
    server = e["server"]
    providers = sorted({str(p).removesuffix("ExecutionProvider") for p in
                        server.get("providers", {}).values()})  # fmt: skip
    return f"{server.get('device', '?')} ({', '.join(providers) or 'provider unknown'})"


def _rows(cur: str, target: float) -> list[Row]:
    def money(key: str, digits: int = 2) -> Callable[[dict[str, Any]], str]:
        return lambda e: f"{e[key]:,.{digits}f} {cur}"

    def mem(key: str) -> Callable[[dict[str, Any]], str]:
        return lambda e: _mib(e["memory"].get(key))

    def bench(key: str, fmt: str) -> Callable[[dict[str, Any]], str]:
        return lambda e: "-" if e.get("bench_model", {}).get(key) is None else fmt.format(
            e["bench_model"][key])  # fmt: skip

    return [
        ("server (device, providers)", _server),
        ("SLO of the find-max run", lambda e: e["slo"]),
        (
            "max rate at SLO (req/s)",
            lambda e: f"{e['max_rps_at_slo']:,.1f}" + (" (cap)" if e["capped"] else ""),
        ),
        ("planned per instance (req/s)", lambda e: f"{e['usable_rps_per_instance']:,.1f}"),
        (f"instances for {target:g} req/s", lambda e: str(e["instances"])),
        ("utilisation at the target", lambda e: f"{e['utilisation_at_target']:.0%}"),
        ("price per instance-hour", money("price_per_instance_hour", 3)),
        ("cost per hour", money("cost_per_hour")),
        ("cost per month (730 h)", money("cost_per_month")),
        ("per 1M predictions, at target", money("cost_per_million_at_target", 3)),
        ("per 1M predictions, full use", money("cost_per_million_at_full_utilisation", 3)),
        ("workers per instance", lambda e: str(e["memory"].get("workers_per_instance", "-"))),
        ("RSS per worker, peak", mem("rss_worker_peak_mib")),
        ("RSS per worker, mean", mem("rss_worker_mean_mib")),
        ("RSS per instance, peak", mem("rss_instance_peak_mib")),
        ("CUDA memory per worker, peak", mem("device_worker_peak_mib")),
        ("model alone, batch 32 (texts/s)", bench("batch32_per_s", "{:,.0f}")),
        ("model alone, batch-1 p50 (ms)", bench("batch1_p50_ms", "{:.2f}")),
        ("serving model file", bench("file_mb", "{:.1f} MB")),
    ]


def format_cost_table(result: dict[str, Any]) -> str:
    """One column per profile, one row per figure."""
    names = list(result["profiles"])
    lines = [["", *names]]
    for label, cell in _rows(result["currency"], result["target_rps"]):
        cells = [cell(result["profiles"][n]) for n in names]
        if any(c != "-" for c in cells):  # a figure no profile has (CUDA on CPU) is left out
            lines.append([label, *cells])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(line, widths, strict=True))).rstrip()
                     for line in lines)  # fmt: skip


def notes(result: dict[str, Any]) -> list[str]:
    """The sentences that go under the table: the cheapest, caps, what the figures are."""
    profiles, cur = result["profiles"], result["currency"]
    cheapest = profiles[result["cheapest"]]
    text = [f"cheapest at {result['target_rps']:g} req/s: {result['cheapest']} "
            f"({cheapest['cost_per_month']:,.2f} {cur}/month)"]  # fmt: skip
    for name, e in profiles.items():
        if name != result["cheapest"]:
            ratio = e["cost_per_hour"] / cheapest["cost_per_hour"]
            text.append(f"{name} costs {ratio:.2f}x as much")
        if e["capped"]:
            text.append(f"{name}: the find-max run stopped at its --max-rate cap, so the capacity "
                        "is at least that and the instance count at most this")  # fmt: skip
        if e["path"] != "/predict":
            text.append(f"{name}: measured on {e['path']}: a 'prediction' here is one request")
        if "note" in e["memory"]:
            text.append(f"{name}: no memory figures: {e['memory']['note']}")
    text.append(f"each instance is planned at {result['headroom']:.0%} of its max rate at SLO "
                "(--headroom); prices are yours, per instance-hour")  # fmt: skip
    return text


def plot_costs(result: dict[str, Any], path: Path) -> None:
    """Bars: cost per month at the target, and per million predictions at full use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, cur = list(result["profiles"]), result["currency"]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4))
    for ax, key, title in zip(axes, ("cost_per_month", "cost_per_million_at_full_utilisation"),
                              (f"per month at {result['target_rps']:g} req/s ({cur})",
                               f"per 1M predictions, full use ({cur})"),
                              strict=True):  # fmt: skip
        bars = ax.bar(names, [result["profiles"][n][key] for n in names], color="#37c")
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_cost(profiles: list[Profile], target_rps: float, headroom: float, currency: str,
             out: Path, run_id: str | None, command: list[str]) -> Path:  # fmt: skip
    """Estimate, print the table, write cost.json, cost.md and cost.png into OUT/RUN_ID."""
    result = plan(profiles, target_rps, headroom, currency) | {"command": " ".join(command)}
    run_dir = out / (run_id or time.strftime("%Y%m%d-%H%M%S"))
    if run_dir.exists():
        raise LoadTestError(f"{run_dir} already exists: pass another --run-id")
    run_dir.mkdir(parents=True)
    table = format_cost_table(result)
    text = notes(result)
    (run_dir / "cost.json").write_text(json.dumps(result, indent=2) + "\n")
    (run_dir / "cost.md").write_text("\n".join(
        [f"# Cost at {target_rps:g} req/s", "", f"- command: `{result['command']}`",
         *(f"- {line}" for line in text), "", "```", table, "```", ""]))  # fmt: skip
    plot_costs(result, run_dir / "cost.png")
    print(table)
    print("\n".join(text))
    print(f"-> {run_dir}")
    return run_dir
