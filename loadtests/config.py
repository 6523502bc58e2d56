"""The settings of one `tuneserve loadtest` run: a house config (TOML, `--set`), validated before
Locust starts and again inside the locustfile, which reads them from one JSON file.

Imported by the locustfile under gevent: keep its imports light (no numpy, no service).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import Field, field_validator, model_validator

from tuneserve.config import StrictConfig, apply_overrides, read_config_file, validate_config

SETTINGS_ENV = "TUNESERVE_LOAD_CONFIG"  # the locustfile's one setting: the path of its JSON file


class LoadTestConfig(StrictConfig):
    """What to send, how, for how long, and where the reports go."""

    host: str = Field(
        "http://127.0.0.1:3000", description="base URL of the service, e.g. http://127.0.0.1:3000"
    )
    users: int = Field(10, ge=1, description="closed loop: concurrent users (the shape's peak)")
    spawn_rate: float = Field(10.0, gt=0, description="users started per second")
    duration_s: float = Field(60.0, gt=0, description="measured seconds, after the warm-up")
    warmup_s: float = Field(5.0, ge=0, description="seconds at the start left out of statistics")
    shape: Literal["constant", "step", "spike"] = Field(
        "constant", description="closed-loop user count over time; step and spike end by themselves"
    )
    open_loop: bool = Field(False, description="constant arrival rate instead of closed-loop users")
    rate: float = Field(
        0.0, ge=0, description="open loop: arrivals per second; closed loop: per user (0: no wait)"
    )
    arrivals: Literal["poisson", "fixed"] = Field("poisson", description="gaps between arrivals")
    max_outstanding: int = Field(
        256, ge=1, description="open loop: requests in flight at most; later arrivals are dropped"
    )
    late_ms: float = Field(10.0, ge=0, description="open loop: a send this late counts as late")
    path: str = Field("/predict", description="endpoint to load")
    texts: Path | None = Field(
        None,
        description="labelled split the texts (and true labels) come from (default: test.tsv "
        "in $TUNESERVE_DATA, else in ../shared/data/sst2)",
    )
    text_column: str | None = Field(
        None, description="text column of the split (default: the one the model was trained on)"
    )
    label_column: str | None = Field(
        None, description="label column of the split (default: the one the model was trained on)"
    )
    model: Path | None = Field(
        None,
        description="export run whose train run names the columns and label names (default: "
        "with --serve, the serving config's control; else the train config's defaults)",
    )
    feedback: float = Field(0.0, ge=0, le=1, description="probability of posting the true label")
    feedback_delay_s: float = Field(0.0, ge=0, description="seconds from answer to feedback")
    label_names: dict[str, str] = Field(
        default_factory=dict,
        description="dataset label -> model label (default: the model's train config, "
        "else GET /models)",
    )
    distinct_users: int = Field(10000, ge=1, description="sticky user ids drawn from")
    seed: int = Field(0, description="seed of the arrival schedule and the text draws")
    processes: int = Field(
        1, ge=1, description="load-generating processes on this machine: 1, one process; N > 1, "
        "a Locust master and N worker processes (Locust's --processes)",
    )  # fmt: skip
    raw_requests: bool = Field(
        False, description="also stream every request to requests-WORKER.jsonl in the run folder "
        "(audits, tests); the report comes from the merged histograms",
    )  # fmt: skip
    api_key_env: str = Field(
        "TUNESERVE_API_KEY",
        description="environment variable holding the API key every request sends (X-API-Key) "
        "when the service requires keys; unset: none sent. The key is never written anywhere",
    )
    out: Path = Field(Path("artifacts/loadtest"), description="reports go to OUT/RUN_ID/")
    run_id: str | None = Field(None, description="name of the run folder (default: a timestamp)")

    def key_headers(self) -> dict[str, str]:
        """The API-key header to send ({} while ``api_key_env`` is unset or empty)."""
        key = os.environ.get(self.api_key_env, "")
        return {"X-API-Key": key} if key else {}

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"expected a URL such as http://127.0.0.1:3000, got {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check_mode(self) -> LoadTestConfig:
        if self.open_loop and self.rate <= 0:
            raise ValueError("open loop needs --rate (arrivals per second) above 0")
        if self.open_loop and self.shape != "constant":
            raise ValueError("--shape applies to closed-loop users; open loop has a fixed rate")
        return self


class ClusterConfig(StrictConfig):
    """This process's part in a Locust run across machines (the flags Locust users know)."""

    role: Literal["local", "master", "worker"] = Field(
        "local", description="local: this machine alone (--processes N); master: waits for "
        "--expect-workers workers, runs no users, merges and reports; worker: runs users for a "
        "master at --master-host",
    )  # fmt: skip
    expect_workers: int = Field(1, ge=1, description="master: worker processes to wait for")
    master_host: str = Field("127.0.0.1", description="worker: the master's host name or address")
    master_port: int = Field(5557, ge=1, le=65535, description="the master's port")
    master_bind_host: str = Field("*", description="master: the interface to listen on")

    @model_validator(mode="after")
    def _check_role(self) -> ClusterConfig:
        if self.role != "master" and self.expect_workers != 1:
            raise ValueError("--expect-workers applies to --master only")
        return self


class LocustSettings(StrictConfig):
    """What the locustfile reads from the JSON file named by $TUNESERVE_LOAD_CONFIG."""

    config: LoadTestConfig = Field(description="the run's config (its rate: the one to offer)")
    traffic: Path = Field(description="JSON list of [text, label] pairs to draw requests from")
    results: Path = Field(description="where the master (or the one process) writes the merged "
                          "histograms and counts")  # fmt: skip
    raw: Path | None = Field(
        None, description="per-request dump: one JSON-lines file per process, NAME-INDEX.jsonl "
        "beside this path (None: no dump)",
    )  # fmt: skip


def load_loadtest_config(
    path: str | Path | None, overrides: Sequence[str] = (), flags: Mapping[str, Any] | None = None
) -> LoadTestConfig:
    """The config file (defaults without one), then ``--set`` overrides, then ``flags``: the
    command line's values, None where a flag was not given."""
    data = apply_overrides(read_config_file(path) if path is not None else {}, overrides)
    data |= {key: value for key, value in (flags or {}).items() if value is not None}
    return validate_config(LoadTestConfig, data, str(path or "load test options"))
