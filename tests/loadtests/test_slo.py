"""SLO and duration parsing, and the gate's verdict on summary rows."""

from __future__ import annotations

from typing import Any

import pytest

from loadtests.histograms import Recorder
from loadtests.slo import check_slo, parse_duration_s, parse_slo
from loadtests.stats import Sample, summary_rows
from tuneserve.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("60s", 60.0), ("250ms", 0.25), ("2m", 120.0), ("1h", 3600.0), ("1.5", 1.5), (" 3 s", 3.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10x", "-5s", "fast", "1e3s"])
def test_bad_durations_are_named(text: str) -> None:
    with pytest.raises(ConfigError, match=r"--duration .* is not a duration: use a number with"):
        parse_duration_s(text, "--duration")


def test_slo_terms() -> None:
    bounds = parse_slo("p99=100ms, fail=1%,p99.9=0.5s,max=2s,rps=50,p50=10")
    assert [(b.key, b.limit) for b in bounds] == [
        ("p99", 100.0), ("fail", 1.0), ("p99.9", 500.0), ("max", 2000.0), ("rps", 50.0),
        ("p50", 10000.0),
    ]  # fmt: skip


def test_bad_slo_names_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        parse_slo("p99=fast,fail=150%,p42=1ms,latency")
    message = str(info.value)
    for part in ("'p99=fast'", "'fail=150%': expected a percentage", "unknown key 'p42'",
                 "'latency' is not KEY=VALUE", "expected comma-separated bounds"):  # fmt: skip
        assert part in message
    with pytest.raises(ConfigError, match="is empty"):
        parse_slo(" , ")


def _samples() -> list[Sample]:
    rows = [Sample(10.0 + i * 0.01, 5.0 + (i % 100), 200, "a" if i % 2 else "b", "predict", 0.0,
                   True) for i in range(1000)]  # fmt: skip
    rows += [Sample(10.5, 1.0, 503, "a", "predict", 0.0, True)] * 20  # 2% failures, all on a
    rows += [Sample(9.0, 900.0, 200, "a", "predict", 0.0, False)]  # in the warm-up: left out
    return rows


def _results(samples: list[Sample]) -> dict[str, Any]:
    """What the locustfile writes for these requests (its recorder, late beyond 10 ms)."""
    recorder = Recorder()
    for s in samples:
        recorder.record(s.kind, s.variant, s.status, s.latency_ms, s.late_ms > 10, s.measured,
                        None)  # fmt: skip
    return recorder.dump()


def test_summary_is_nearest_rank_and_excludes_the_warmup() -> None:
    rows = summary_rows(_results(_samples()), seconds=10.0)
    overall, a, b = rows
    assert (overall["name"], a["name"], b["name"]) == ("all", "a", "b")
    assert overall["requests"] == 1020 and overall["failures"] == 20
    assert overall["max_ms"] == 104.0  # the 900 ms request was in the warm-up
    # the 500th of 1000 latencies (nearest rank), within the histogram's 1/1024, not rounded to
    # two digits like Locust's
    assert 54.0 <= overall["p50_ms"] <= 54.0 * (1 + 1 / 1024)
    assert overall["rps"] == pytest.approx(102.0)
    assert a["failure_pct"] == pytest.approx(100 * 20 / 520)
    assert b["failures"] == 0


def test_gate_names_each_breach_and_the_row() -> None:
    rows = summary_rows(_results(_samples()), seconds=10.0)
    assert check_slo(parse_slo("p99=1s,fail=5%"), rows) == []
    breaches = check_slo(parse_slo("p99=100ms,fail=3%,rps=60"), rows)
    assert breaches == [
        "p99 103.0 ms > 100ms (all)",  # 102 req/s overall: no throughput breach
        "p99 104.0 ms > 100ms (a)",
        "failures 3.85% > 3% (a)",
        "throughput 52.0 req/s < 60 req/s (a)",
        "p99 103.0 ms > 100ms (b)",
        "throughput 50.0 req/s < 60 req/s (b)",
    ]
