"""The one scope table: every route's scope, unknown routes the strictest, never open."""

from __future__ import annotations

import pytest

from service.scopes import ADMIN, ANY, PUBLIC, allows, scope_for


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [("GET", "/livez", PUBLIC), ("GET", "/readyz", PUBLIC), ("HEAD", "/metrics", PUBLIC),
     ("GET", "/docs.json", PUBLIC), ("GET", "/", PUBLIC), ("GET", "/static_content/x.js", PUBLIC),
     ("GET", "/v2/health/live", PUBLIC), ("GET", "/v2/health/ready", PUBLIC),
     ("POST", "/predict", "predict"), ("POST", "/predict_batch", "predict"),
     ("POST", "/v2/models/tuneserve/infer", "predict"),
     ("POST", "/v2/models/tuned/versions/3/infer", "predict"),
     ("POST", "/feedback", "feedback"),
     ("GET", "/models", ANY), ("GET", "/v2/models/tuned", ANY),
     ("GET", "/v2/models/tuned/ready", ANY),
     ("GET", "/ab/report", "report"), ("GET", "/ab/config", "report"),
     ("GET", "/ab/rollout", "report"),
     ("PUT", "/ab/config", ADMIN), ("PUT", "/ab/rollout", ADMIN),
     ("PUT", "/models/tuned", ADMIN), ("DELETE", "/models/tuned", ADMIN),
     # not in the table: the strictest scope, never open
     ("POST", "/livez", ADMIN), ("GET", "/predict", ADMIN), ("GET", "/secret/route", ADMIN),
     ("POST", "/v2/models/a/b/infer", ADMIN), ("GET", "/v2/health/other", ADMIN),
     ("DELETE", "/ab/config", ADMIN), ("PATCH", "/models/tuned", ADMIN)],
)  # fmt: skip
def test_every_route_has_its_scope(method: str, path: str, scope: str) -> None:
    assert scope_for(method, path) == scope


def test_scopes_are_separate_but_admin_holds_them_all() -> None:
    predict = frozenset({"predict"})
    assert allows(predict, "predict") and allows(predict, ANY) and allows(predict, PUBLIC)
    assert not allows(predict, "feedback") and not allows(predict, "report")
    assert not allows(predict, ADMIN)
    assert not allows(frozenset({"report"}), ADMIN)
    admin = frozenset({ADMIN})
    assert all(allows(admin, s) for s in ("predict", "feedback", "report", ADMIN, ANY))
