"""API-key benchmark: what the key middleware adds per request, in process (no HTTP, no model).

    .venv/bin/python benchmarks/auth_bench.py [--requests 20000] [--out artifacts/bench-auth]

Calls the real AuthMiddleware (service/auth.py) over an ASGI app that answers at once, with a
real SQLite key store read by its cache, and times each case per request: keys off (the one
branch every request pays by default), a public route with keys on, a valid key (unlimited, then
rate-limited: bucket + RateLimit headers), and refusals (401 unknown key, 403 scope). The
figures are the middleware's own cost, to set beside a prediction's (BENCHMARKS.md).
Writes auth.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.apikeys import KeyStore  # noqa: E402
from service.auth import AuthMiddleware  # noqa: E402
from service.config import ServingConfig  # noqa: E402
from service.store import Store  # noqa: E402
from tuneserve.machine import describe_machine  # noqa: E402


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Any) -> None:
    return None


def _settings(store: Path, require: bool) -> ServingConfig:
    return ServingConfig.model_validate({
        "variants": [{"name": "a", "path": ".", "control": True}], "workers": 1,
        "store": {"path": str(store)}, "auth": {"require_keys": require, "refresh_s": 60.0},
    })  # fmt: skip


async def _time(middleware: Any, scope: dict[str, Any], n: int, rounds: int) -> list[float]:
    """Microseconds per request, one figure per round of ``n`` calls."""
    per_round = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(n):
            await middleware(dict(scope), _receive, _send)
        per_round.append((time.perf_counter() - started) / n * 1e6)
    return per_round


async def run(n: int, rounds: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        store_path = Path(tmp) / "keys.sqlite"
        keys = KeyStore(Store(store_path))
        _, unlimited = keys.create("bench", ["predict"], rate_per_s=0.0)
        _, limited = keys.create("bench-limited", ["predict"], rate_per_s=1e9, burst=10**9)
        keys.store.close()
        off = AuthMiddleware(_app, _settings(store_path, False))
        on = AuthMiddleware(_app, _settings(store_path, True))
        while on.cache.keys is None:
            time.sleep(0.01)

        def scope(path: str, key: str | None, method: str = "POST") -> dict[str, Any]:
            headers = [(b"content-type", b"application/json"), (b"user-agent", b"bench")]
            if key:
                headers.append((b"authorization", b"Bearer " + key.encode()))
            return {"type": "http", "method": method, "path": path, "headers": headers}

        cases = [
            ("bare app (no middleware)", _app, scope("/predict", None)),
            ("keys off (default)", off, scope("/predict", None)),
            ("keys on, public route (/livez)", on, scope("/livez", None, "GET")),
            ("keys on, valid key, unlimited", on, scope("/predict", unlimited)),
            ("keys on, valid key, rate-limited", on, scope("/predict", limited)),
            ("keys on, unknown key (401)", on, scope("/predict", unlimited[:-3] + "AAA")),
            ("keys on, key without the scope (403)", on, scope("/feedback", unlimited)),
        ]
        figures: dict[str, list[float]] = {name: [] for name, _, _ in cases}
        for _name, middleware, case_scope in cases:  # warm up
            await _time(middleware, case_scope, n // 10, 1)
        for _ in range(rounds):  # rounds interleave the cases: drift on a shared machine hits all
            for name, middleware, case_scope in cases:
                figures[name] += await _time(middleware, case_scope, n, 1)
        results = [{"case": name, "us_per_request_median": statistics.median(values),
                    "us_per_request_min": min(values), "rounds": rounds,
                    "requests_per_round": n} for name, values in figures.items()]  # fmt: skip
        on.cache.close()
    bare = results[0]["us_per_request_median"]
    for row in results:
        row["added_us"] = row["us_per_request_median"] - bare
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per case (median kept)")
    parser.add_argument("--out", default="artifacts/bench-auth", help="where auth.json goes")
    args = parser.parse_args()
    results = asyncio.run(run(args.requests, args.rounds))
    print(f"{'case':<40} {'us/request':>11} {'added us':>9}")
    for row in results:
        print(f"{row['case']:<40} {row['us_per_request_median']:>11.2f} {row['added_us']:>9.2f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "auth.json").write_text(json.dumps(
        {"machine": describe_machine(), "results": results}, indent=2, default=str))  # fmt: skip
    print(f"results written to {out / 'auth.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
