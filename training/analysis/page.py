"""The analysis as one self-contained HTML page (figures embedded as base64 PNG)."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from typing import Any

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; vertical-align: top; }
th { background: #f3f3f3; } td.text { text-align: left; max-width: 40em; }
img { max-width: 100%; } .figs { display: flex; gap: 2em; flex-wrap: wrap; }
.note { color: #a40; }
"""


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else escape(str(value))


def _table(header: list[str], rows: list[list[Any]], text_columns: tuple[int, ...] = ()) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="text">{escape(str(v))}</td>'
            if i in text_columns
            else f"<td>{_num(v)}</td>"
            for i, v in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _image(directory: Path, name: str, alt: str) -> str:
    data = base64.b64encode((directory / name).read_bytes()).decode("ascii")
    return f'<figure><img alt="{escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def _calibration(cal: dict[str, Any]) -> str:
    rows = [["as trained", cal["test"]]]
    if cal["test_scaled"] is not None:
        rows.append(
            [f"temperature T = {cal['temperature']['T']:.3f} (fitted on dev)", cal["test_scaled"]]
        )
    html = f"<p>Binning: {escape(cal['binning'])}.</p>" + _table(
        ["test predictions", "ECE", "MCE", "NLL", "Brier", "mean confidence", "accuracy"],
        [
            [name, f["ece"], f["mce"], f["nll"], f["brier"], f["mean_confidence"], f["accuracy"]]
            for name, f in rows
        ],
        text_columns=(0,),
    )
    t = cal["temperature"]
    if t is not None:
        html += (
            f"<p>Temperature scaling: {escape(t['method'])} on {t['dev_examples']} dev examples; "
            f"dev NLL {t['dev_nll_before']:.4f} &rarr; {t['dev_nll_after']:.4f}. It changes no "
            "prediction, only the confidence.</p>"
        )
    if cal["note"]:
        html += f'<p class="note">{escape(cal["note"])}</p>'
    return html


def _against(a: dict[str, Any], run_id: str) -> str:
    cells, test = a["cells"], a["mcnemar"]
    base = a["baseline_run_id"]
    html = _table(
        ["", f"{base} right", f"{base} wrong"],
        [
            [f"{run_id} right", cells["both_right"], cells["only_run_right"]],
            [f"{run_id} wrong", cells["only_baseline_right"], cells["both_wrong"]],
        ],
        text_columns=(0,),
    ) + (
        f"<p>Accuracy {a['run_accuracy']:.4f} ({escape(run_id)}) vs {a['baseline_accuracy']:.4f} "
        f"({escape(base)}); McNemar p = {test['p_value']:.3g} ({escape(test['method'])}).</p>"
    )
    for key, title in (
        ("only_run_right", f"only {run_id} right"),
        ("only_baseline_right", f"only {base} right"),
    ):
        html += f"<h3>{escape(title)}</h3>" + _table(
            [
                "#",
                "text",
                "label",
                f"{run_id}",
                f"{base}",
                f"p(label) {run_id}",
                f"p(label) {base}",
            ],
            [
                [
                    x["index"],
                    x["text"],
                    x["label"],
                    x["run_pred"],
                    x["baseline_pred"],
                    x["run_p_label"],
                    x["baseline_p_label"],
                ]
                for x in a["samples"][key]
            ],
            text_columns=(1,),
        )
    return html


def to_html(analysis: dict[str, Any], directory: Path) -> str:
    """The page: headline, per-class table, figures, calibration, mistakes, slices, against."""
    run, m = analysis["run"], analysis["metrics"]
    title = f"Error analysis: {run['run_id']} ({run['method']})"
    per_class = [
        [n, c["precision"], c["recall"], c["f1"], c["support"]] for n, c in m["per_class"].items()
    ]
    per_class += [
        [f"{avg} avg", m[f"precision_{avg}"], m[f"recall_{avg}"], m[f"f1_{avg}"], m["examples"]]
        for avg in ("macro", "weighted")
    ]
    slices = [
        [s["slice"], s["count"], s["errors"], s["accuracy"]]
        for group in ("label", "length", "truncation")
        for s in analysis["slices"][group]
    ]
    mistakes = analysis["confident_mistakes"]
    parts = [
        f"<h1>{escape(title)}</h1>",
        f"<p>{analysis['test_examples']} test examples; base model {escape(run['base_model'])}, "
        f"max length {run['max_length']} tokens. Accuracy {m['accuracy']:.4f}, macro F1 "
        f"{m['f1_macro']:.4f}.</p>",
        "<h2>Per class</h2>",
        _table(["class", "precision", "recall", "F1", "support"], per_class, text_columns=(0,)),
        '<div class="figs">',
        _image(directory, analysis["files"]["confusion_png"], "confusion matrix"),
        _image(directory, analysis["files"]["reliability_png"], "reliability diagram"),
        "</div>",
        "<h2>Calibration</h2>",
        _calibration(analysis["calibration"]),
        "<h2>Slices</h2>",
        _table(["slice", "count", "errors", "accuracy"], slices, text_columns=(0,)),
        f"<h2>Most confident mistakes ({len(mistakes['shown'])} of "
        f"{mistakes['total_mistakes']})</h2>",
        _table(
            ["#", "text", "label", "predicted", "confidence", "tokens", "truncated"],
            [
                [
                    x["index"],
                    x["text"],
                    x["label"],
                    x["pred"],
                    x["confidence"],
                    x["tokens"],
                    x["truncated"],
                ]
                for x in mistakes["shown"]
            ],
            text_columns=(1,),
        ),
    ]
    if analysis["against"] is not None:
        parts += [
            f"<h2>Against {escape(analysis['against']['baseline_run_id'])}</h2>",
            _against(analysis["against"], run["run_id"]),
        ]
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}'
        f"</title><style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>\n"
    )
