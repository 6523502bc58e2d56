"""`tuneserve cost`: from measured find-max results and the user's price per instance-hour, the
instances a target request rate needs, what they cost, and the memory each worker takes.

An instance is one server as measured (its workers, on its machine). Each one is planned at
``headroom`` of the highest offered rate that met the SLO (0.7: 30 % spare for bursts and for a
replica lost), so the count is ceil(target / (max rate at SLO x headroom)).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneserve.errors import ConfigError

HOURS_PER_MONTH = 730.0  # 365 x 24 / 12
DEFAULT_HEADROOM = 0.7
CUDA = "CUDAExecutionProvider"


@dataclass(frozen=True)
class Profile:
    """One deployment option: a find-max report, its price per instance-hour, maybe a
    bench-model JSON of the same model."""

    name: str
    report: Path
    price_per_hour: float
    bench: Path | None = None


def parse_profile(text: str) -> Profile:
    """``NAME=REPORT:PRICE`` (e.g. ``cpu=artifacts/loadtest/max/report.json:0.34``)."""
    name, sep, rest = text.partition("=")
    path, colon, price = rest.rpartition(":")
    if not sep or not colon or not name.strip() or not path.strip():
        raise ConfigError(f"--profile {text!r} is not NAME=REPORT:PRICE: e.g. --profile "
                          "cpu=artifacts/loadtest/max/report.json:0.34")  # fmt: skip
    return Profile(name.strip(), Path(path.strip()), _price(price, f"--profile {text!r}"))


def _price(text: str, what: str) -> float:
    try:
        price = float(text)
    except ValueError:
        raise ConfigError(f"{what}: price {text!r} is not a number (per instance-hour)") from None
    return check_price(price, what)


def check_price(price: float, what: str) -> float:
    """The price, refused unless above 0 (and finite)."""
    if not price > 0 or not math.isfinite(price):
        raise ConfigError(f"{what}: the price per instance-hour must be above 0, got {price:g}")
    return price


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what} {path} is not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} is not a JSON object")
    return data


def read_find_max(path: Path) -> dict[str, Any]:
    """A find-max report.json, refused unless some offered rate met its SLO."""
    report = _read_json(path, "report")
    if "trials" not in report or "max_rate_rps" not in report or not report.get("slo"):
        mode = report.get("mode", "no mode recorded")
        raise ConfigError(
            f"{path} is not a find-max load test ({mode}): measure the capacity with "
            "`tuneserve loadtest --find-max --slo p99=100ms,fail=1% ...` and pass its report.json"
        )
    if not report["max_rate_rps"]:
        tried = ", ".join(f"{t['offered_rps']:g}" for t in report["trials"])
        raise ConfigError(
            f"{path}: no offered rate met the SLO {report['slo']} (tried {tried} req/s): no "
            "capacity to plan with; start lower (--rate) or serve a faster model"
        )
    return report


def _claims_gpu(name: str, server: dict[str, Any]) -> bool:
    return name.lower().startswith(("gpu", "cuda")) or server.get("device") == "cuda"


def check_gpu(profile: Profile, memory: dict[str, Any]) -> None:
    """A GPU profile (named gpu/cuda, or served with device cuda) needs its server to have run
    on CUDA and CUDA memory figures."""
    server = memory.get("server", {})
    if not _claims_gpu(profile.name, server):
        return
    providers = set(server.get("providers", {}).values())
    where = f"profile {profile.name} ({profile.report})"
    if CUDA not in providers:
        ran = ", ".join(sorted(str(p) for p in providers)) or "no provider recorded"
        raise ConfigError(f"{where} is a GPU profile, but its server ran on {ran}, not CUDA: "
                          "load-test the GPU server, or name the profile cpu")  # fmt: skip
    if "device_worker_peak_mib" not in memory:
        raise ConfigError(f"{where} is a GPU profile without CUDA figures (no "
                          "tuneserve_device_memory_bytes samples in server_memory): load-test "
                          "a server of this version on the GPU")  # fmt: skip


def _bench_figures(path: Path) -> dict[str, Any]:
    """The serving model's figures from a bench-model JSON (the last model it timed)."""
    bench = _read_json(path, "bench-model JSON")
    if not isinstance(bench.get("models"), dict) or not bench["models"]:
        raise ConfigError(f"{path} is not a bench-model JSON (no models): pass the bench.json "
                          "that `tuneserve bench-model` wrote")  # fmt: skip
    name, model = list(bench["models"].items())[-1]
    return {
        "bench": str(path),
        "model": name,
        "file_mb": model.get("file_mb"),
        "batch1_p50_ms": model.get("batch1_p50_ms"),
        "batch32_per_s": model.get("batch32_sentences_per_s"),
        "process_memory": bench.get("process_memory"),
    }


def estimate(
    profile: Profile, target_rps: float, headroom: float = DEFAULT_HEADROOM
) -> dict[str, Any]:
    """Instances, cost and memory of one profile at ``target_rps``."""
    report = read_find_max(profile.report)
    memory = report.get("server_memory") or {}
    check_gpu(profile, memory)
    max_rps = float(report["max_rate_rps"])
    usable = max_rps * headroom
    instances = max(1, math.ceil(target_rps / usable - 1e-9))
    per_hour = instances * profile.price_per_hour
    result: dict[str, Any] = {
        "report": str(profile.report),
        "slo": report["slo"],
        "machine": report.get("machine"),
        "server": memory.get("server", {}),
        "path": report.get("config", {}).get("path", "/predict"),
        "max_rps_at_slo": max_rps,
        "capped": bool(report.get("capped")),
        "usable_rps_per_instance": usable,
        "instances": instances,
        "utilisation_at_target": target_rps / (instances * max_rps),
        "price_per_instance_hour": profile.price_per_hour,
        "cost_per_hour": per_hour,
        "cost_per_month": per_hour * HOURS_PER_MONTH,
        "cost_per_million_at_target": per_hour / (target_rps * 3600) * 1e6,
        "cost_per_million_at_full_utilisation": profile.price_per_hour / (max_rps * 3600) * 1e6,
        "memory": _memory(memory, instances),
    }
    if profile.bench is not None:
        result["bench_model"] = _bench_figures(profile.bench)
    return result


def _memory(memory: dict[str, Any], instances: int) -> dict[str, Any]:
    """Per worker and per instance (peak over the best trial), and for the whole fleet."""
    if not memory.get("samples"):
        return {
            "note": memory.get(
                "note",
                "the report has no server_memory section (a report "
                "from before it, or a server without the gauges)",
            )
        }
    figures = {
        "workers_per_instance": memory["workers"],
        "rss_worker_peak_mib": memory["rss_worker_peak_mib"],
        "rss_worker_mean_mib": memory["rss_worker_mean_mib"],
        "rss_instance_peak_mib": memory["rss_total"]["peak_mib"],
        "rss_fleet_peak_mib": memory["rss_total"]["peak_mib"] * instances,
    }
    if "device_worker_peak_mib" in memory:
        figures |= {
            "device_worker_peak_mib": memory["device_worker_peak_mib"],
            "device_instance_peak_mib": memory["device_total"]["peak_mib"],
        }
    return figures


def plan(
    profiles: list[Profile], target_rps: float, headroom: float = DEFAULT_HEADROOM,
    currency: str = "USD",
) -> dict[str, Any]:  # fmt: skip
    """Every profile's estimate, side by side, and the cheapest at the target rate."""
    if not profiles:
        raise ConfigError("no profile: pass REPORT --price-per-hour P, or --profile "
                          "NAME=REPORT:PRICE (once per profile, e.g. cpu and gpu)")  # fmt: skip
    names = [p.name for p in profiles]
    if len(set(names)) != len(names):
        raise ConfigError(f"profile names repeat ({', '.join(names)}): give each its own name")
    if not target_rps > 0 or not math.isfinite(target_rps):
        raise ConfigError(f"--target-rps must be above 0, got {target_rps}")
    if not 0 < headroom <= 1:
        raise ConfigError(f"--headroom is the utilisation planned per instance, above 0 and at "
                          f"most 1 (e.g. 0.7), got {headroom}")  # fmt: skip
    for profile in profiles:
        check_price(profile.price_per_hour, f"profile {profile.name}")
    estimates = {p.name: estimate(p, target_rps, headroom) for p in profiles}
    cheapest = min(estimates, key=lambda n: estimates[n]["cost_per_hour"])
    return {
        "target_rps": target_rps,
        "headroom": headroom,
        "hours_per_month": HOURS_PER_MONTH,
        "currency": currency,
        "prices": "the user's input (--price-per-hour / --profile), not looked up",
        "profiles": estimates,
        "cheapest": cheapest,
    }
