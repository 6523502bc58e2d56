"""The settings of one `tuneserve loadtest` run, validated before Locust starts."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class LoadTestConfig(BaseModel):
    """What to send, how, for how long, and where the reports go."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field(description="base URL of the service, e.g. http://127.0.0.1:3000")
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
    texts: Path = Field(description="labelled split the sentences (and true labels) come from")
    text_column: str = Field("sentence", description="text column of the split")
    label_column: str = Field("label", description="label column of the split")
    feedback: float = Field(0.0, ge=0, le=1, description="probability of posting the true label")
    feedback_delay_s: float = Field(0.0, ge=0, description="seconds from answer to feedback")
    label_names: dict[str, str] = Field(
        default_factory=dict, description="dataset label -> model label (default: GET /models)"
    )
    distinct_users: int = Field(10000, ge=1, description="sticky user ids drawn from")
    seed: int = Field(0, description="seed of the arrival schedule and the text draws")
    out: Path = Field(Path("artifacts/loadtest"), description="reports go to OUT/RUN_ID/")
    run_id: str | None = Field(None, description="name of the run folder (default: a timestamp)")

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
