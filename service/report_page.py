"""The A/B report as one HTML page: the tables, the verdicts, and online accuracy over time with
its 95% intervals drawn as inline SVG (no JavaScript, no plotting library, nothing fetched)."""

from __future__ import annotations

import time
from html import escape
from typing import Any

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
WIDTH, HEIGHT, PAD = 760, 300, 48
RIGHT = 90  # room for the variant names at the line ends


def render_page(report: dict[str, Any], refresh_s: int = 30) -> str:
    """The whole page for ``report`` (from :func:`service.report.build_report`)."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<meta http-equiv='refresh' content='{int(refresh_s)}'>",
        "<title>tuneserve A/B report</title><style>",
        "body{font:14px system-ui,sans-serif;margin:2em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{padding:4px 10px;"
        "border-bottom:1px solid #ddd;text-align:right}th:first-child,td:first-child"
        "{text-align:left}.warn{background:#fdd;border:2px solid #c00;padding:8px;"
        "font-weight:bold}.verdict{font-size:16px;margin:4px 0}",
        "</style></head><body>",
        f"<h1>A/B report</h1><p>salt <code>{escape(report['salt'])}</code>, control "
        f"<b>{escape(report['control'])}</b>, coverage {report['coverage']:.0%}; "
        f"made {escape(time.strftime('%Y-%m-%d %H:%M:%S'))}; forced traffic and traffic "
        "outside the coverage are left out.</p>",
    ]
    if report["sample_ratio"]["warning"]:
        parts.append(f"<p class='warn'>{escape(report['sample_ratio']['warning'])}</p>")
    for trip in report["guardrail_trips"]:
        parts.append(
            f"<p class='warn'>guardrail: {escape(str(trip['variant']))} was taken out of "
            f"rotation ({escape(str(trip['kind']))}) at "
            f"{escape(time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(trip['ts'])))}</p>"
        )
    parts += [f"<p class='verdict'>{escape(c['verdict'])}</p>" for c in report["comparisons"]]
    parts.append(_variants_table(report["variants"]))
    parts.append("<h2>Online accuracy over time (cumulative, 95% Wilson interval)</h2>")
    parts.append(accuracy_chart(report["timeline"]))
    parts.append(_comparisons_table(report["comparisons"]))
    if report["shadow"]:
        parts.append(_shadow_table(report["shadow"]))
    if report.get("rollout", {}).get("plan"):
        parts.append(rollout_timeline(report["rollout"]))
    srm = report["sample_ratio"]
    parts.append(
        f"<p>sample ratio since the last change: chi2 {srm['chi2']:.2f}, "
        f"p = {srm['p_value']:.3g} (mismatch below {srm['alpha']})</p></body></html>"
    )
    return "".join(parts)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _num(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _variants_table(variants: list[dict[str, Any]]) -> str:
    rows = []
    for v in variants:
        lat = v["latency_ms"] or {}
        ci = v["accuracy_ci95"]
        name = v["variant"] + (" (control)" if v["control"] else "")
        rows.append([
            name + ("" if v["enabled"] else " (off)"),
            f"{v['share']:.2f}", str(v["traffic"]), _num(v["error_rate"], ".2%"),
            str(v["forced"]), str(v["labelled"]), _num(v["accuracy"]),
            f"[{ci[0]:.3f}, {ci[1]:.3f}]" if v["labelled"] else "-",
            _num(lat.get("p50"), ".1f"), _num(lat.get("p95"), ".1f"), _num(lat.get("p99"), ".1f"),
        ])  # fmt: skip
    headers = ["variant", "share", "traffic", "errors", "forced", "labelled", "accuracy",
               "95% CI", "p50 ms", "p95 ms", "p99 ms"]  # fmt: skip
    return _table(headers, rows)


def _comparisons_table(comparisons: list[dict[str, Any]]) -> str:
    rows = [
        [c["challenger"], f"{c['labelled']['control']} / {c['labelled']['challenger']}",
         f"{c['difference'] * 100:+.1f}",
         f"[{c['difference_ci'][0] * 100:.1f}, {c['difference_ci'][1] * 100:.1f}]",
         f"{c['p_value']:.2g}", f"{c['always_valid_p_value']:.2g}",
         f"{c['samples_needed_per_arm']:,}"]
        for c in comparisons
    ]  # fmt: skip
    headers = ["challenger vs control", "labelled", "points", "CI", "p (z-test)",
               "always-valid p", "needed per arm"]  # fmt: skip
    return "<h2>Comparisons</h2>" + _table(headers, rows)


def _shadow_table(shadow: list[dict[str, Any]]) -> str:
    rows = [
        [s["variant"], str(s["scored"]), f"{s['agreement']:.3f}", str(s["labelled"]),
         _num(s["live_accuracy"]), _num(s["shadow_accuracy"]),
         f"{s['mcnemar']['live_only']} / {s['mcnemar']['shadow_only']}",
         f"{s['mcnemar']['p_value']:.2g}"]
        for s in shadow
    ]  # fmt: skip
    headers = ["shadow", "scored", "agreement", "labelled", "live acc", "shadow acc",
               "live only / shadow only right", "McNemar p"]  # fmt: skip
    return "<h2>Shadow traffic</h2>" + _table(headers, rows)


def accuracy_chart(timeline: dict[str, list[list[float]]]) -> str:
    """Cumulative accuracy per variant against time, with its interval as a shaded band."""
    points = [p for series in timeline.values() for p in series]
    if not points:
        return "<p>no labelled predictions yet</p>"
    t0, t1 = min(p[0] for p in points), max(p[0] for p in points)
    low = max(0.0, min(p[3] for p in points) - 0.02)
    high = min(1.0, max(p[4] for p in points) + 0.02)
    span_t, span_y = (t1 - t0) or 1.0, (high - low) or 1.0

    def xy(ts: float, y: float) -> str:
        x = PAD + (ts - t0) / span_t * (WIDTH - PAD - RIGHT)
        return f"{x:.1f},{HEIGHT - PAD - (y - low) / span_y * (HEIGHT - 2 * PAD):.1f}"

    svg = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{HEIGHT}' "
           "role='img' aria-label='online accuracy over time'>"]  # fmt: skip
    for i in range(5):  # y grid and labels
        y = low + span_y * i / 4
        x0, y0 = xy(t0, y).split(",")
        svg.append(f"<line x1='{PAD}' x2='{WIDTH - RIGHT}' y1='{y0}' y2='{y0}' stroke='#eee'/>"
                   f"<text x='{float(x0) - 6}' y='{float(y0) + 4}' font-size='11' "
                   f"text-anchor='end'>{y:.2f}</text>")  # fmt: skip
    svg.append(f"<text x='{PAD}' y='{HEIGHT - 12}' font-size='11'>{_clock(t0)}</text>"
               f"<text x='{WIDTH - RIGHT}' y='{HEIGHT - 12}' font-size='11' text-anchor='end'>"
               f"{_clock(t1)}</text>")  # fmt: skip
    for i, (name, series) in enumerate(timeline.items()):
        if not series:
            continue
        colour = COLOURS[i % len(COLOURS)]
        band = [xy(p[0], p[4]) for p in series] + [xy(p[0], p[3]) for p in reversed(series)]
        svg.append(f"<polygon points='{' '.join(band)}' fill='{colour}' fill-opacity='0.15'/>")
        line = " ".join(xy(p[0], p[2]) for p in series)
        svg.append(f"<polyline points='{line}' fill='none' stroke='{colour}' stroke-width='2'/>")
        last = series[-1]
        svg.append(f"<text x='{WIDTH - RIGHT + 6}' y='{xy(last[0], last[2]).split(',')[1]}' "
                   f"font-size='12' fill='{colour}'>{escape(name)}</text>")  # fmt: skip
    svg.append("</svg>")
    return "".join(svg)


def _clock(ts: float) -> str:
    return escape(time.strftime("%H:%M:%S", time.localtime(ts)))


EVENT_COLOURS = {"start": "#1f77b4", "advance": "#1f77b4", "promote": "#2ca02c",
                 "rollback": "#d62728", "abort": "#d62728", "pause": "#ff7f0e",
                 "resume": "#ff7f0e"}  # fmt: skip


def rollout_timeline(status: dict[str, Any]) -> str:
    """The rollout plan's challenger share over time, one marked point per event, and the
    events as a table (when, what, from, to, why)."""
    plan, events = status["plan"], status["events"]
    head = (f"<h2>Rollout timeline</h2><p>{escape(plan['challenger'])} against "
            f"{escape(plan['control'])}: <b>{escape(status['status'])}</b>, share now "
            f"{status['share']:.1%}</p>")  # fmt: skip
    if not events:
        return head
    t0, t1 = events[0]["ts"], max(events[-1]["ts"], time.time())
    span = (t1 - t0) or 1.0

    def xy(ts: float, share: float) -> tuple[float, float]:
        return (PAD + (ts - t0) / span * (WIDTH - PAD - RIGHT),
                HEIGHT - PAD - share * (HEIGHT - 2 * PAD))  # fmt: skip

    svg = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{HEIGHT}' "
           "role='img' aria-label='rollout share over time'>"]  # fmt: skip
    for share in (0.0, 0.25, 0.5, 0.75, 1.0):
        _, y = xy(t0, share)
        svg.append(f"<line x1='{PAD}' x2='{WIDTH - RIGHT}' y1='{y:.1f}' y2='{y:.1f}' "
                   f"stroke='#eee'/><text x='{PAD - 6}' y='{y + 4:.1f}' font-size='11' "
                   f"text-anchor='end'>{share:.0%}</text>")  # fmt: skip
    steps, share = [], events[0]["from_step"]
    for event in events:  # a step line: the share holds until the next event
        steps += [xy(event["ts"], share), xy(event["ts"], event["to_step"])]
        share = event["to_step"]
    steps.append(xy(t1, share))
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in steps)
    svg.append(f"<polyline points='{line}' fill='none' stroke='#555' stroke-width='2'/>")
    for event in events:
        x, y = xy(event["ts"], event["to_step"])
        colour = EVENT_COLOURS.get(event["kind"], "#555")
        svg.append(
            f"<circle cx='{x:.1f}' cy='{y:.1f}' r='5' fill='{colour}'>"
            f"<title>{escape(event['kind'])}: {escape(event['why'])}</title></circle>"
        )
    svg.append("</svg>")
    rows = [
        [
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["ts"])),
            e["kind"],
            f"{e['from_step']:.1%}",
            f"{e['to_step']:.1%}",
            e["why"],
        ]
        for e in events
    ]
    return head + "".join(svg) + _table(["when", "event", "from", "to", "why"], rows)
