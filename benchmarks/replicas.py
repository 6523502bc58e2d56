"""Replicas benchmark: requests/s of one `tuneserve serve` replica on a PostgreSQL store, then of
two replicas on the same store, in one run, and the store's write rate at each load.

    .venv/bin/python benchmarks/replicas.py --control EXPORT --challenger EXPORT \
        --store-url postgresql://tuneserve:tuneserve@127.0.0.1:5432/tuneserve_test

Each phase sends predict + feedback pairs for ``--seconds`` from ``--concurrency`` clients (the
same number in both phases, so the comparison is capacity, not offered load): phase 1 all to
replica A; phase 2 predictions alternately to A and B, each feedback to the other replica. The
store's write rate is the rows the phase added to the prediction log and the feedback table
(counted in the store after the replicas flushed), per second. The store is a fresh schema of
the database (dropped afterwards). Prints one Markdown line and writes
artifacts/benchmarks/replicas.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import httpx
import psycopg

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["a gripping, beautifully acted film", "dull and far too long", "not bad at all",
         "the plot makes no sense whatsoever", "one of the best of the year"]  # fmt: skip


def with_schema(url: str, schema: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query)) | {"options": f"-c search_path={schema}"}
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_replica(config: Path, port: int, store_url: str, work: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TUNESERVE_STORE_URL": store_url, "BENTOML_DO_NOT_TRACK": "true",
           "BENTOML_HOME": str(work / f"home-{port}"),
           "TUNESERVE_ID_KEY": "bench-" + "k" * 32}  # fmt: skip
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = (work / f"replica-{port}.log").open("wb")
    command = [str(Path(sys.executable).with_name("tuneserve")), "serve", "--config", str(config),
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip


def wait_ready(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} not ready in {timeout_s} s")


async def load(urls: list[str], seconds: float, concurrency: int) -> dict[str, int]:
    """Predict + feedback pairs until the time is up; answers counted by status."""
    counts: dict[str, int] = {}
    stop_at = time.monotonic() + seconds

    async def client(n: int) -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            i = n
            while time.monotonic() < stop_at:
                i += 1
                at, other = urls[i % len(urls)], urls[(i + 1) % len(urls)]
                r = await http.post(f"{at}/predict", json={"text": TEXTS[i % len(TEXTS)]})
                counts[str(r.status_code)] = counts.get(str(r.status_code), 0) + 1
                if r.status_code == 200:
                    body = {"prediction_id": r.json()["prediction_id"], "label": "positive"}
                    f = await http.post(f"{other}/feedback", json=body)
                    counts[str(f.status_code)] = counts.get(str(f.status_code), 0) + 1

    await asyncio.gather(*(client(n) for n in range(concurrency)))
    return counts


def rows(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        return sum(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]  # type: ignore[index]
                   for t in ("predictions", "feedback"))  # fmt: skip


def phase(urls: list[str], store: str, seconds: float, concurrency: int) -> dict[str, Any]:
    before = rows(store)
    started = time.monotonic()
    counts = asyncio.run(load(urls, seconds, concurrency))
    elapsed = time.monotonic() - started
    time.sleep(1.0)  # the prediction log writes every 0.2 s
    written = rows(store) - before
    ok = sum(n for code, n in counts.items() if code.startswith("2"))
    return {"replicas": len(urls), "seconds": round(elapsed, 1), "answers": counts,
            "requests_per_s": round(ok / elapsed, 1),
            "store_rows_per_s": round(written / elapsed, 1)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--control", required=True, help="export run directory of the control")
    parser.add_argument("--challenger", required=True, help="export run directory")
    parser.add_argument("--store-url", default=os.environ.get("TUNESERVE_TEST_PG_URL"))
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="workers per replica")
    args = parser.parse_args()
    if not args.store_url:
        raise SystemExit("--store-url (or $TUNESERVE_TEST_PG_URL) is required")
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(args.store_url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    store = with_schema(args.store_url, schema)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            config = work / "serving.toml"
            config.write_text(
                f"workers = {args.workers}\naccess_log = false\n"
                f'[[variants]]\nname = "baseline"\npath = "{Path(args.control).resolve()}"\n'
                f'control = true\n[[variants]]\nname = "tuned"\n'
                f'path = "{Path(args.challenger).resolve()}"\n'
            )
            ports = [free_port(), free_port()]
            urls = [f"http://127.0.0.1:{p}" for p in ports]
            procs.append(start_replica(config, ports[0], store, work))
            wait_ready(urls[0])
            one = phase(urls[:1], store, args.seconds, args.concurrency)
            procs.append(start_replica(config, ports[1], store, work))
            wait_ready(urls[1])
            two = phase(urls, store, args.seconds, args.concurrency)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(60)
        with psycopg.connect(args.store_url, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")
    result = {"one_replica": one, "two_replicas": two, "concurrency": args.concurrency,
              "workers_per_replica": args.workers}  # fmt: skip
    out = REPO / "artifacts" / "benchmarks" / "replicas.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(
        f"| {one['requests_per_s']} req/s, store {one['store_rows_per_s']} rows/s | "
        f"{two['requests_per_s']} req/s, store {two['store_rows_per_s']} rows/s | "
        f"{two['requests_per_s'] / one['requests_per_s']:.2f}x |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
