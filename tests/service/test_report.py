"""The A/B report from the store: figures, verdicts, sample-ratio warning, the CLI."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from service.config import load_serving_config
from service.report import build_report, format_report
from service.stats import two_proportion_test
from service.store import Store
from tests.service.conftest import free_port, write_serving_config
from tuneserve.cli import main
from tuneserve.percentiles import percentiles


def _fill(
    store: Store, counts: dict[str, tuple[int, float]], forced: int = 0, seed: int = 0
) -> None:
    """``counts``: variant -> (labelled predictions, accuracy); plus forced rows for 'tuned'."""
    rng = random.Random(seed)
    rows, feedback, t = [], [], 0.0
    for variant, (n, accuracy) in counts.items():
        for i in range(n):
            t += 1
            pid = f"{variant}-{i}"
            correct = rng.random() < accuracy
            rows.append({"id": pid, "ts": t, "variant": variant, "model_version": "m",
                         "unit": "user", "unit_hash": "h", "forced": 0, "label": "positive",
                         "score": 0.9, "latency_ms": float(i % 50), "text": None})  # fmt: skip
            feedback.append((pid, "positive" if correct else "negative"))
    for i in range(forced):
        rows.append({"id": f"f{i}", "ts": t + i, "variant": "tuned", "model_version": "m",
                     "unit": "forced", "unit_hash": None, "forced": 1, "label": "positive",
                     "score": 0.9, "latency_ms": 1.0, "text": None})  # fmt: skip
        feedback.append((f"f{i}", "negative"))
    rng.shuffle(rows)  # the order rows are logged in does not matter; time does
    store.log_predictions(rows)
    for pid, label in feedback:
        store.add_feedback(pid, label)


def _latency(values: list[float]) -> dict[str, float]:
    """The report's latency figures of ``values``, from the one percentile function."""
    return {f"p{q}": v for q, v in percentiles(values, (50, 95, 99)).items()}


@pytest.fixture
def settings(tmp_path: Path, tiny_exports: dict[str, Path]):  # type: ignore[no-untyped-def]
    path = write_serving_config(
        tmp_path / "serving.toml",
        {"baseline": tiny_exports["head"], "tuned": tiny_exports["lora"]},
        "baseline",
    )
    return load_serving_config(path)


def test_report_finds_the_better_model(
    new_store: Callable[[], Path | str],
    settings,  # type: ignore[no-untyped-def]
) -> None:
    store = Store(new_store())
    _fill(store, {"baseline": (1500, 0.80), "tuned": (1500, 0.88)}, forced=200)
    report = build_report(store, settings)
    by_name = {v["variant"]: v for v in report["variants"]}
    assert by_name["tuned"]["traffic"] == 1500 and by_name["tuned"]["forced"] == 200
    assert by_name["tuned"]["labelled"] == 1500  # forced feedback is left out
    comparison = report["comparisons"][0]
    rows = store.labelled()
    hits = {v: sum(ok for name, _, ok, _ in rows if name == v) for v in ("baseline", "tuned")}
    expected = two_proportion_test(hits["baseline"], 1500, hits["tuned"], 1500)
    assert comparison["p_value"] == pytest.approx(expected.p_value)
    assert comparison["p_value"] < 0.01 and comparison["always_valid_p_value"] < 0.05
    assert comparison["verdict"].startswith("tuned better than baseline by ")
    # latencies 0..49 ms, 30 requests each: nearest rank, observed values, never interpolated
    assert by_name["baseline"]["latency_ms"] == {"p50": 24.0, "p95": 47.0, "p99": 49.0}
    assert by_name["tuned"]["latency_ms"] == _latency([i % 50 for i in range(1500)])
    assert not report["sample_ratio"]["mismatch"]
    text = format_report(report)
    assert "verdict: tuned better" in text and "sample ratio" in text


def test_report_says_when_there_is_not_enough_data_and_flags_srm(
    new_store: Callable[[], Path | str],
    settings,  # type: ignore[no-untyped-def]
) -> None:
    store = Store(new_store())
    _fill(store, {"baseline": (52, 0.8), "tuned": (48, 0.82)})
    verdict = build_report(store, settings)["comparisons"][0]["verdict"]
    assert verdict.startswith("not enough data: about ")
    skewed = Store(new_store())
    _fill(skewed, {"baseline": (5200, 0.8), "tuned": (4800, 0.8)})
    report = build_report(skewed, settings)
    assert report["sample_ratio"]["mismatch"] and "SAMPLE RATIO MISMATCH" in format_report(report)


def test_cli_prints_the_report(
    tmp_path: Path,
    new_store: Callable[[], Path | str],
    settings,
    capsys: pytest.CaptureFixture[str],  # type: ignore[no-untyped-def]
) -> None:
    db = new_store()  # a SQLite file or a postgresql:// URL
    _fill(Store(db), {"baseline": (300, 0.8), "tuned": (300, 0.9)})
    config = tmp_path / "serving.toml"
    assert main(["ab-report", "--db", str(db), "--config", str(config)]) == 0
    assert "A/B report" in capsys.readouterr().out
    assert main(["ab-report", "--db", str(db), "--config", str(config), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [v["labelled"] for v in report["variants"]] == [300, 300] and report["comparisons"]
    assert main(["ab-report", "--db", str(tmp_path / "none.sqlite"), "--config", str(config)]) == 1
    assert "no experiment store" in capsys.readouterr().err
    empty = new_store()  # a fresh location: no store there yet, and the report makes none
    assert main(["ab-report", "--db", str(empty), "--config", str(config)]) == 1
    assert "no experiment store at" in capsys.readouterr().err
    if isinstance(empty, str):
        from service.dialect import connect

        conn = connect(empty, 1000, durable=True)
        assert not conn.table_exists("schema_version")
        conn.close()
    else:
        assert not empty.exists()
    unreachable = f"postgresql://u:pw-s3cret@127.0.0.1:{free_port()}/x"
    assert main(["ab-report", "--db", unreachable, "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "cannot open the experiment store postgresql://u:***@127.0.0.1" in err
    assert "pw-s3cret" not in err


def test_html_page_draws_accuracy_over_time_and_escapes(
    tmp_path: Path,
    settings,  # type: ignore[no-untyped-def]
) -> None:
    from html.parser import HTMLParser

    from service.report_page import render_page

    store = Store(tmp_path / "s.sqlite")
    _fill(store, {"baseline": (400, 0.8), "tuned": (400, 0.9)})
    report = build_report(store, settings)
    for name in ("baseline", "tuned"):
        points = report["timeline"][name]
        assert 30 <= len(points) <= 61 and points[-1][1] == 400.0
        assert points[-1][2] == next(
            v["accuracy"] for v in report["variants"] if v["variant"] == name
        )
        assert all(low <= acc <= high for _, _, acc, low, high in points)
    report["salt"] = "<script>alert(1)</script>"
    page = render_page(report)

    class Tags(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tags: list[str] = []

        def handle_starttag(self, tag: str, attrs: object) -> None:
            self.tags.append(tag)

    parser = Tags()
    parser.feed(page)
    assert "script" not in parser.tags and "&lt;script&gt;" in page
    assert parser.tags.count("polyline") == 2 and parser.tags.count("polygon") == 2
    assert "tuned better than baseline" in page
    empty = build_report(Store(tmp_path / "empty.sqlite"), settings)
    assert "no labelled predictions yet" in render_page(empty)
    out = tmp_path / "report.html"
    args = [
        "ab-report",
        "--db",
        str(tmp_path / "s.sqlite"),
        "--config",
        str(tmp_path / "serving.toml"),
    ]
    assert main([*args, "--html", str(out)]) == 0
    assert "<svg" in out.read_text() and "polyline" in out.read_text()


def test_report_counts_errors_and_excluded_traffic(
    tmp_path: Path,
    settings,  # type: ignore[no-untyped-def]
) -> None:
    store = Store(tmp_path / "s.sqlite")
    _fill(store, {"baseline": (100, 0.8), "tuned": (100, 0.8)})
    rows = [{"id": f"e{i}", "ts": 1e6 + i, "variant": "tuned", "model_version": "m",
             "unit": "user", "unit_hash": "h", "forced": 0, "label": "", "score": 0.0,
             "latency_ms": 2000.0, "error": "deadline"} for i in range(25)]  # fmt: skip
    rows += [{"id": f"x{i}", "ts": 1e6 + i, "variant": "baseline", "model_version": "m",
              "unit": "excluded", "unit_hash": "h", "forced": 0, "label": "positive",
              "score": 0.9, "latency_ms": 1.0} for i in range(30)]  # fmt: skip
    store.log_predictions(rows)
    store.add_feedback("x0", "negative")  # feedback outside the coverage is not counted
    by_name = {v["variant"]: v for v in build_report(store, settings)["variants"]}
    assert by_name["tuned"]["errors"] == 25 and by_name["tuned"]["traffic"] == 125
    assert by_name["tuned"]["error_rate"] == pytest.approx(0.2)
    assert by_name["tuned"]["latency_ms"]["p99"] == 49.0  # failed requests have no latency row
    assert by_name["baseline"]["excluded"] == 30 and by_name["baseline"]["traffic"] == 100
    assert by_name["baseline"]["labelled"] == 100 and by_name["baseline"]["error_rate"] == 0


def test_report_covers_the_current_experiment_only(
    tmp_path: Path,
    settings,  # type: ignore[no-untyped-def]
) -> None:
    store = Store(tmp_path / "s.sqlite")
    _fill(store, {"baseline": (200, 0.8), "tuned": (200, 0.8)})  # no salt: counted everywhere
    old = [{"id": f"o{i}", "ts": 5e5 + i, "variant": "tuned", "model_version": "m",
            "unit": "user", "unit_hash": "h", "forced": 0, "label": "positive", "score": 0.9,
            "latency_ms": 1.0, "salt": "an-old-experiment"} for i in range(70)]  # fmt: skip
    store.log_predictions(old)
    for row in old:
        store.add_feedback(row["id"], "negative")
    by_name = {v["variant"]: v for v in build_report(store, settings)["variants"]}
    assert by_name["tuned"]["traffic"] == 200 and by_name["tuned"]["labelled"] == 200
    assert len(store.labelled()) == 470  # all experiments, when no salt is given


def test_verdict_words_for_each_case() -> None:
    from service.report import verdict

    base = {
        "difference": 0.075, "difference_ci": [0.027, 0.12], "minimum_effect": 0.02,
        "labelled": {"control": 418, "challenger": 454}, "samples_needed_per_arm": 6455,
    }  # fmt: skip
    confirmed = verdict(
        "tuned", "baseline", base | {"p_value": 0.001, "always_valid_p_value": 0.01}, 0.05
    )
    assert (
        confirmed
        == "tuned better than baseline by 7.5 points [2.7, 12.0], p = 0.001 (always-valid p = 0.01)"
    )
    early = verdict(
        "tuned", "baseline", base | {"p_value": 0.004, "always_valid_p_value": 0.08}, 0.05
    )
    assert early.startswith(
        "tuned better than baseline by 7.5 points [2.7, 12.0], p = 0.004 at this"
    )
    assert "not yet confirmed by the always-valid test (p = 0.08)" in early
    unclear = verdict(
        "tuned", "baseline", base | {"p_value": 0.3, "always_valid_p_value": 1.0}, 0.05
    )
    assert unclear.startswith("not enough data: about 6,455 labelled predictions per arm")
    done = base | {"labelled": {"control": 7000, "challenger": 7000}}
    flat = verdict("tuned", "baseline", done | {"p_value": 0.3, "always_valid_p_value": 1.0}, 0.05)
    assert flat.startswith("no significant difference between tuned and baseline: +7.5 points")


def test_report_reads_the_store_in_five_queries_and_no_latency_rows_on_postgres(
    new_store: Callable[[], Path | str],
    settings,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The experiment state, its history, per-variant counts with latency percentiles, the
    labelled predictions (the always-valid test needs them in order), shadow counts; SQLite
    has no percentile_disc and reads the answered latencies in one more query."""
    store = Store(new_store())
    _fill(store, {"baseline": (100, 0.8), "tuned": (100, 0.9)}, forced=10)
    unlabelled = [{"id": f"u{i}", "ts": 1e6 + i, "variant": ["baseline", "tuned"][i % 2],
                   "model_version": "m", "unit": "user", "unit_hash": "h", "forced": 0,
                   "label": "positive", "score": 0.9, "latency_ms": float(i % 7)}
                  for i in range(2000)]  # fmt: skip
    store.log_predictions(unlabelled)
    store.record_change({"by": "admin", "weights": {"baseline": 0.5, "tuned": 0.5}})
    reads: list[tuple[str, int]] = []
    rows = Store._rows

    def counted(self: Store, statement: str, params: Sequence[Any] = ()) -> list[Any]:
        found = rows(self, statement, params)
        if self is store:  # not another test's experiment still polling its own store
            reads.append((statement, len(found)))
        return found

    executed: list[str] = []
    execute = store.conn.execute

    def every(statement: str, params: Sequence[Any] = ()) -> Any:
        executed.append(statement)
        return execute(statement, params)

    monkeypatch.setattr(Store, "_rows", counted)
    monkeypatch.setattr(store.conn, "execute", every)
    report = build_report(store, settings)
    on_postgres = store.url is not None
    assert len(reads) == (5 if on_postgres else 6), [statement for statement, _ in reads]
    assert executed == [statement for statement, _ in reads]  # no statement bypasses _rows
    # every row read is a labelled prediction, a history entry or a per-variant figure; only
    # SQLite reads the answered latencies (2200 rows) to take their percentiles in Python
    latency_rows = 0 if on_postgres else 2200
    assert sum(n for _, n in reads) == 200 + 1 + 2 + latency_rows
    by_name = {v["variant"]: v for v in report["variants"]}
    expected = [float(i % 50) for i in range(100)] + [float(i % 7) for i in range(0, 2000, 2)]
    assert by_name["baseline"]["latency_ms"] == _latency(expected)
    assert by_name["baseline"]["traffic"] == 1100 and by_name["tuned"]["forced"] == 10
