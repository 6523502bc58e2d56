"""The load-test report: where the generator ran, the summary table, report.json and report.md."""

from __future__ import annotations

import ipaddress
import json
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from loadtests.memory import memory_line
from tuneserve.machine import describe_machine


def _local_addresses() -> set[str]:
    names = {socket.gethostname(), socket.getfqdn(), "localhost"}
    found: set[str] = set()
    for name in names:
        try:
            found |= {str(info[4][0]) for info in socket.getaddrinfo(name, None)}
        except OSError:
            continue
    return found


def placement(host: str) -> str:
    """One sentence: does the load generator share the server's machine (and so its CPUs)?"""
    hostname = urlparse(host).hostname or host
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(hostname, None)}
    except OSError:
        addresses = set()
    loopback = any(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)
    if loopback or addresses & _local_addresses():
        return (
            f"load generator on the same host as the server ({hostname}), sharing its CPUs: "
            "the generator's own work is part of every latency measured here"
        )
    return (
        f"load generator on {socket.gethostname()}, server at {hostname} (another machine): "
        "latencies include the network between them"
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_table(rows: list[dict[str, Any]], open_loop: bool = False) -> str:
    """A fixed-width table: one row for all predictions, one per variant, one for feedback."""
    head = ["name", "requests", "req/s", "failures", "p50", "p90", "p99", "p99.9", "max"]
    if open_loop:
        head += ["late", "dropped"]
    lines = [head]
    for r in rows:
        cells = [r["name"], str(r["requests"]), f"{r['rps']:.1f}",
                 f"{r['failures']} ({r['failure_pct']:.2f}%)",
                 *(_ms(r[f"{k}_ms"]) for k in ("p50", "p90", "p99", "p99.9", "max"))]  # fmt: skip
        if open_loop:
            cells += [str(r.get("late", 0)), str(r.get("dropped", 0))]
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                      enumerate(zip(line, widths, strict=True))) for line in lines]  # fmt: skip
    note = "   (latencies in ms: nearest rank, from HDR histograms of 3 significant digits)"
    return "\n".join([text[0] + note, *text[1:]])


def base_report(host: str, command: list[str]) -> dict[str, Any]:
    """What every report starts with: the machine, the generator's placement, the command."""
    return {
        "host": host,
        "load_generator": placement(host),
        "machine": describe_machine(),
        "command": " ".join(command),
    }


def write_report(run_dir: Path, report: dict[str, Any], table: str) -> None:
    """report.json (everything) and report.md (the placement, the table, the SLO verdict)."""
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"# Load test {run_dir.name}",
        "",
        f"- command: `{report['command']}`",
        f"- target: {report['host']}",
        f"- {report['load_generator']}",
        f"- machine: {report['machine']}",
        f"- mode: {report['mode']}",
    ]
    if report.get("slo"):
        verdict = "met" if not report["breaches"] else "BROKEN: " + "; ".join(report["breaches"])
        lines.append(f"- SLO `{report['slo']}`: {verdict}")
    if report.get("max_rate_rps") is not None:
        lines.append(f"- highest offered rate meeting the SLO: {report['max_rate_rps']:.1f} req/s")
    if "server_memory" in report:
        lines.append(f"- {memory_line(report['server_memory'])}")
    lines += ["", "```", table, "```", ""]
    (run_dir / "report.md").write_text("\n".join(lines))
