"""Sticky routing: the published vectors, the split, ramps that move nobody back, salts."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from service.errors import InvalidInputError
from service.routing import BUCKETS, Router, bucket_of

VECTORS = Path(__file__).with_name("routing_vectors.json")


def reference_bucket(salt: str, unit_id: str) -> int:
    """The spec of the bucket, written out again independently of service/routing.py."""
    return int.from_bytes(hashlib.sha256(f"{salt}:{unit_id}".encode()).digest()[:8], "big") % 10000


def test_published_vectors_reproduce() -> None:
    doc = json.loads(VECTORS.read_text(encoding="utf-8"))
    assert doc["buckets"] == BUCKETS
    assert len(doc["vectors"]) >= 30
    for v in doc["vectors"]:
        assert (
            bucket_of(v["salt"], v["unit_id"])
            == v["bucket"]
            == reference_bucket(v["salt"], v["unit_id"])
        )
        router = Router(v["weights"], v["control"], v["salt"])
        assert router.choose(user_id=v["unit_id"]).variant == v["variant"], v


@pytest.mark.parametrize(
    ("weights", "control"),
    [
        ({"baseline": 1, "tuned": 1}, "baseline"),
        ({"baseline": 0.9, "tuned": 0.1}, "baseline"),
        ({"control": 0.5, "a": 0.3, "b": 0.2}, "control"),
    ],
)
def test_observed_split_is_within_one_point_over_100k_ids(
    weights: dict[str, float], control: str
) -> None:
    router = Router(weights, control, salt="split-test")
    counts = Counter(router.choose(user_id=f"user-{i}").variant for i in range(100_000))
    total = sum(weights.values())
    for name, weight in weights.items():
        assert abs(counts[name] / 100_000 - weight / total) <= 0.01, (name, counts)


def test_a_ramp_moves_users_only_from_control_to_the_challenger() -> None:
    ids = [f"u{i}" for i in range(20_000)]
    previous = None
    for share in (0.01, 0.05, 0.1, 0.25, 0.5):
        router = Router({"control": 1 - share, "tuned": share}, "control", salt="ramp")
        now = {uid: router.choose(user_id=uid).variant for uid in ids}
        if previous is not None:
            moved = [uid for uid in ids if previous[uid] != now[uid]]
            assert moved and all(previous[u] == "control" and now[u] == "tuned" for u in moved)
        previous = now


def test_raising_one_challenger_leaves_the_other_alone() -> None:
    ids = [f"u{i}" for i in range(20_000)]
    before = Router({"control": 0.8, "a": 0.1, "b": 0.1}, "control", salt="two")
    after = Router({"control": 0.6, "a": 0.3, "b": 0.1}, "control", salt="two")
    for uid in ids:
        old, new = before.choose(user_id=uid).variant, after.choose(user_id=uid).variant
        if old != new:
            assert (old, new) == ("control", "a")
        if old == "b":
            assert new == "b"


def test_sticky_across_instances_and_a_new_salt_reshuffles() -> None:
    ids = [f"u{i}" for i in range(5_000)]
    first = Router({"baseline": 1, "tuned": 1}, "baseline", salt="exp-1")
    second = Router({"baseline": 1, "tuned": 1}, "baseline", salt="exp-1")  # a restart
    assert all(first.choose(user_id=u) == second.choose(user_id=u) for u in ids)
    renamed = Router({"baseline": 1, "tuned": 1}, "baseline", salt="exp-2")
    changed = sum(first.choose(user_id=u).variant != renamed.choose(user_id=u).variant for u in ids)
    assert 0.4 < changed / len(ids) < 0.6


def test_without_user_id_each_request_is_drawn_and_recorded_as_such() -> None:
    router = Router({"baseline": 3, "tuned": 1}, "baseline", salt="s", rng=random.Random(0))
    draws = [router.choose() for _ in range(20_000)]
    assert {d.unit for d in draws} == {"request"} and not any(d.forced for d in draws)
    share = sum(d.variant == "tuned" for d in draws) / len(draws)
    assert abs(share - 0.25) < 0.015


def test_forced_and_unknown_variants() -> None:
    router = Router({"baseline": 1, "tuned": 1}, "baseline", salt="s")
    forced = router.choose(user_id="u1", forced="tuned")
    assert (forced.variant, forced.forced, forced.unit) == ("tuned", True, "forced")
    with pytest.raises(InvalidInputError, match="unknown variant 'x'"):
        router.choose(forced="x")
    sticky = router.choose(user_id="u1")
    assert sticky.unit == "user" and sticky.bucket == bucket_of("s", "u1")


def test_coverage_keeps_the_rest_out_and_raising_it_only_adds_users() -> None:
    ids = [f"user-{i}" for i in range(100_000)]
    weights = {"baseline": 1.0, "tuned": 1.0}
    routers = {c: Router(weights, "baseline", salt="s", coverage=c) for c in (0.2, 0.5, 1.0)}
    out = {
        c: {i for i in ids if r.choose(user_id=i).unit == "excluded"} for c, r in routers.items()
    }
    assert abs(len(out[0.2]) / len(ids) - 0.8) < 0.01
    assert abs(len(out[0.5]) / len(ids) - 0.5) < 0.01 and out[1.0] == set()
    assert out[0.5] <= out[0.2]  # raising the coverage only brings users in
    excluded = [routers[0.5].choose(user_id=i) for i in list(out[0.5])[:100]]
    assert {(a.variant, a.forced) for a in excluded} == {("baseline", False)}
    # the users inside keep the variant the full experiment gives them
    inside = [i for i in ids[:5000] if i not in out[0.5]]
    assert all(
        routers[0.5].choose(user_id=i).variant == routers[1.0].choose(user_id=i).variant
        for i in inside
    )
    partial = Router(weights, "baseline", "s", random.Random(1), coverage=0.3)
    drawn = Counter(partial.choose().unit for _ in range(20_000))
    assert abs(drawn["excluded"] / 20_000 - 0.7) < 0.02
