"""The serving config: variants, batching, limits, workers; TOML or YAML named by an env var."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from service.routing import check_weights
from tuneserve.config import (
    ClosedUnit,
    NonNegativeFloat,
    NonNegativeInt,
    OpenUnit,
    PositiveFloat,
    PositiveInt,
    StrictConfig,
    load_config,
)
from tuneserve.errors import ConfigError

if TYPE_CHECKING:
    from service.pool import PoolSize

CONFIG_ENV = "TUNESERVE_SERVING_CONFIG"
DEFAULT_CONFIG = Path("configs/serving.toml")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


class VariantConfig(StrictConfig):
    """One exported model the service serves."""

    name: str = Field(description="variant name: lowercase letters, digits, '-', '_'; 32 at most")
    path: Path = Field(description="export run directory (relative paths: to the working dir)")
    weight: NonNegativeFloat = Field(1.0, description="share of unforced traffic (normalised)")
    control: bool = Field(False, description="the control (baseline) of the experiment")

    @model_validator(mode="after")
    def _check_name(self) -> VariantConfig:
        if not _NAME.match(self.name):
            raise ValueError(
                f"variant name {self.name!r} must be 1-32 lowercase letters, digits, '-' or '_'"
            )
        return self


class BatchingConfig(StrictConfig):
    """How concurrent requests share a model call."""

    mode: Literal["auto", "adaptive", "off"] = Field(
        "auto",
        description="adaptive: concurrent requests of a variant are run as one padded batch; "
        "off: each request runs alone in a thread; auto: off on cpu, adaptive on cuda "
        "(measured, see BENCHMARKS.md)",
    )
    max_batch_size: PositiveInt = Field(32, description="most texts in one model call")
    max_latency_ms: NonNegativeFloat = Field(
        0.0,
        description="extra wait for a batch to fill after its first request; 0 takes only "
        "what queued while the model was busy",
    )


class ExperimentConfig(StrictConfig):
    """The A/B experiment: routing salt (sticky assignment is a pure function of it)."""

    salt: str = Field(
        "tuneserve-1",
        min_length=1,
        description="hashed with each user id into buckets; a new salt starts a new experiment",
    )
    alpha: OpenUnit = Field(0.05, description="significance level of the comparisons")
    power: OpenUnit = Field(0.8, description="power for the labelled samples still needed")
    minimum_effect: OpenUnit = Field(
        0.02, description="smallest accuracy difference worth detecting (absolute, 0.02 = 2 points)"
    )
    coverage: ClosedUnit = Field(
        1.0,
        description="share of users in the experiment; the others get the control and are "
        "left out of the statistics (raising it only adds users)",
    )
    msprt_tau: PositiveFloat = Field(
        0.05,
        description="prior scale of the always-valid test's normal mixture (the size of "
        "difference it is most sensitive to)",
    )
    revision: NonNegativeInt = Field(
        0,
        description="generation of this experiment definition (weights, salt, coverage, "
        "shadow): a replica whose revision is above the stored state's writes its config's "
        "state on start; at or below it, it follows the stored state. Bump it to roll a new "
        "definition out (old pods of a rolling update then never write theirs back)",
    )
    id_key_env: str = Field(
        "TUNESERVE_ID_KEY",
        description="environment variable with the key that signs prediction ids (share it "
        "between replicas)",
    )
    id_key_file: Path = Field(
        Path(".tuneserve/prediction-id.key"),
        description="where the signing key is kept when the environment variable is unset "
        "(created once, mode 0600)",
    )


class ShadowConfig(StrictConfig):
    """A variant that also scores a share of live requests after they are answered."""

    variant: str = Field("", description="the shadow variant (a served variant); empty: no shadow")
    share: ClosedUnit = Field(0.0, description="share of live requests also scored in shadow")
    max_pending: PositiveInt = Field(
        64,
        description="shadow jobs waiting per worker; beyond it they are skipped and counted "
        '(tuneserve_shadow_predictions_total{outcome="skipped"})',
    )
    max_age_ms: PositiveFloat = Field(
        2000.0, description="a shadow job not started within this time is skipped"
    )


class GuardrailConfig(StrictConfig):
    """Bounds that take a challenger out of rotation automatically (the control is never)."""

    enabled: bool = Field(True, description="check the bounds below")
    window_s: PositiveFloat = Field(
        60.0, description="sliding window of the error and latency checks"
    )
    min_requests: PositiveInt = Field(
        50, description="requests a challenger needs in the window before it is judged"
    )
    max_error_rate: ClosedUnit = Field(
        0.05, description="share of a challenger's requests that may fail (deadline, internal)"
    )
    max_p99_ms: PositiveFloat = Field(
        1000.0, description="p99 latency bound of a challenger's requests in the window"
    )
    accuracy: bool = Field(
        True,
        description="also trip a challenger whose online accuracy is significantly worse than "
        "the control's by the always-valid test (safe to check continuously)",
    )
    accuracy_alpha: OpenUnit = Field(0.01, description="significance level of the accuracy trip")
    check_interval_s: PositiveFloat = Field(
        2.0, description="how often the leader checks (and every worker renews or seeks the lease)"
    )
    leader_lease_s: PositiveFloat = Field(
        10.0,
        description="how long the experiment leader's lease lasts unrenewed; the leader renews "
        "it every check_interval_s, and another worker takes over once it has run out",
    )

    @model_validator(mode="after")
    def _check_lease(self) -> GuardrailConfig:
        if self.leader_lease_s <= 2 * self.check_interval_s:
            raise ValueError(
                f"guardrails.leader_lease_s ({self.leader_lease_s:g}) must exceed twice "
                f"check_interval_s ({self.check_interval_s:g}), or the lease lapses between "
                "renewals"
            )
        return self


class StoreConfig(StrictConfig):
    """Where predictions, feedback and the experiment history are kept."""

    path: Path = Field(
        Path(".tuneserve/experiment.sqlite"),
        description="SQLite file (WAL mode), shared by the workers of one machine; used when "
        "no PostgreSQL URL is given",
    )
    url: str | None = Field(
        None,
        description="PostgreSQL URL (postgresql://user:password@host:5432/db), the store of "
        "several replicas; unset: the SQLite file at path",
    )
    url_env: str = Field(
        "TUNESERVE_STORE_URL",
        description="environment variable with a PostgreSQL URL; when set it wins over url "
        "(keeps the password out of the config file)",
    )
    busy_timeout_ms: PositiveInt = Field(5000, description="how long a write waits for a lock")
    log_queue_size: PositiveInt = Field(
        10_000,
        description="prediction rows waiting to be written; beyond it rows are dropped "
        "and counted (tuneserve_log_dropped_total)",
    )
    log_text: bool = Field(
        False,
        description="also store the request text, masked first by [masking] (off: never stored)",
    )
    pool_min_size: PositiveInt = Field(
        1,
        description="PostgreSQL: connections each store pool of a worker keeps open (a worker "
        "has two pools: the prediction log's and the one for feedback, reports and the state)",
    )
    pool_max_size: PositiveInt = Field(
        4,
        description="PostgreSQL: most connections of the feedback/report/state pool of a "
        "worker (the log's pool keeps pool_min_size); a replica opens at most workers x "
        "(pool_max_size + pool_min_size)",
    )
    pool_wait_s: PositiveFloat = Field(
        5.0,
        description="PostgreSQL: how long a statement waits for a free connection (0.5 s at "
        "most while the store is known to be down) before it fails as unavailable",
    )
    connect_timeout_s: PositiveFloat = Field(
        5.0, description="PostgreSQL: how long one connection attempt may take"
    )
    reconnect_timeout_s: PositiveFloat = Field(
        10.0,
        description="PostgreSQL: a lost connection is retried with exponential backoff (1 s, "
        "2 s, 4 s ...) for this long, then afresh; it bounds how long after the store's "
        "return the service takes to heal",
    )
    retry_after_s: PositiveInt = Field(
        2,
        description="Retry-After of the 503 that POST /feedback (and the admin and report "
        "endpoints) answer while the store cannot be reached",
    )

    @model_validator(mode="after")
    def _check_url(self) -> StoreConfig:
        if self.url is not None:
            _check_store_url(self.url, "store.url")
        if self.pool_min_size > self.pool_max_size:
            raise ValueError(
                f"store.pool_min_size ({self.pool_min_size}) must not exceed store.pool_max_size "
                f"({self.pool_max_size})"
            )
        return self

    def pool(self, log: bool = False) -> PoolSize:
        """The size of a worker's PostgreSQL pool: the prediction log's (one writer thread),
        or the one for feedback, reports and the experiment state."""
        from service.pool import PoolSize

        high = self.pool_min_size if log else self.pool_max_size
        return PoolSize(
            min_size=self.pool_min_size,
            max_size=high,
            wait_s=self.pool_wait_s,
            connect_timeout_s=self.connect_timeout_s,
            reconnect_timeout_s=self.reconnect_timeout_s,
        )

    def location(self) -> Path | str:
        """Where the store is: ``$<url_env>``, else ``url``, else the SQLite ``path``."""
        from_env = os.environ.get(self.url_env, "").strip() if self.url_env else ""
        if from_env:
            try:
                return _check_store_url(from_env, f"${self.url_env}")
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        return self.url or self.path


def _check_store_url(url: str, where: str) -> str:
    if not url.startswith(("postgresql://", "postgres://")):
        shown = url.split("://", 1)[0] + "://..." if "://" in url else "a value without a scheme"
        raise ValueError(
            f"{where} must be a postgresql:// URL (postgresql://user:password@host:5432/db), "
            f"got {shown}; for SQLite set store.path instead"
        )
    return url


class LimitsConfig(StrictConfig):
    """Input limits, admission control and deadlines (the error contract's numbers)."""

    max_tokens: PositiveInt = Field(
        512,
        description="longest input in tokens (capped by the model's max length); longer "
        "texts are truncated and flagged",
    )
    max_body_bytes: PositiveInt = Field(1 << 20, description="largest request body (else 413)")
    max_batch_texts: PositiveInt = Field(256, description="most texts in /predict_batch (413)")
    max_inflight: PositiveInt = Field(
        256, description="prediction requests in flight per worker before 503 + Retry-After"
    )
    deadline_ms: PositiveFloat = Field(
        2000.0, description="time a prediction may take inside the service before 504"
    )
    retry_after_s: PositiveInt = Field(1, description="Retry-After sent with 503")


class AuthConfig(StrictConfig):
    """API keys (service/auth.py): off by default, so a localhost quick start needs none."""

    require_keys: bool = Field(
        False,
        description="every route but the public ones (probes, /metrics, the docs, /v2/health) "
        "needs an API key (`tuneserve keys create`) or the admin token; off: all open as before",
    )
    refresh_s: PositiveFloat = Field(
        1.0,
        description="how often each worker re-reads the keys from the store: a new or revoked "
        "key takes effect in every worker of every replica within this (plus one read)",
    )
    rate_per_s: NonNegativeFloat = Field(
        50.0,
        description="default rate limit of a key, requests/s per replica (split evenly across "
        "its workers); a key's own --rate wins; 0: unlimited",
    )
    burst: PositiveInt = Field(
        100, description="default burst of a key (token-bucket capacity per replica, split "
        "evenly across its workers); a key's own --burst wins",
    )  # fmt: skip


MaskKind = Literal["email", "phone", "card", "iban", "id"]
MASK_KINDS: tuple[MaskKind, ...] = ("email", "phone", "card", "iban", "id")


class MaskingConfig(StrictConfig):
    """What is masked in request text before it is stored (store.log_text; service/masking.py)."""

    kinds: list[MaskKind] = Field(
        default_factory=lambda: list(MASK_KINDS),
        description="built-in detectors: email, phone, card (13-19 digits passing Luhn), iban, "
        "id (national-id formats and runs of 9+ digits); [] masks only the patterns below",
    )
    patterns: dict[str, str] = Field(
        default_factory=dict,
        description="your own: name -> regular expression; each match becomes [NAME]",
    )

    @model_validator(mode="after")
    def _check_patterns(self) -> MaskingConfig:
        for name, pattern in self.patterns.items():
            if not _NAME.match(name):
                raise ValueError(
                    f"masking.patterns name {name!r} must be 1-32 lowercase letters, digits, "
                    "'-' or '_' (it becomes the [NAME] that replaces a match)"
                )
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"masking.patterns.{name} is not a valid regular expression ({exc}): "
                    f"{pattern!r}"
                ) from None
            if compiled.fullmatch(""):
                raise ValueError(
                    f"masking.patterns.{name} matches the empty string ({pattern!r}): it would "
                    "mask between every character; make it match at least one character"
                )
        return self


class ServingConfig(StrictConfig):
    """Everything `bentoml serve` needs to serve tuneserve's variants."""

    name: str = Field("tuneserve", description="BentoML service name")
    variants: list[VariantConfig] = Field(description="the exported models served")
    device: Literal["cpu", "cuda"] = Field("cpu", description="where models run")
    workers: PositiveInt = Field(2, description="server processes")
    threads: PositiveInt = Field(1, description="inference threads per worker")
    intra_op_threads: NonNegativeInt = Field(
        0, description="ONNX Runtime threads per inference; 0: cores // (workers * threads)"
    )
    access_log: bool = Field(
        False,
        description="BentoML's per-request access log; off by default: it costs about as much "
        "CPU per request as the rest of the HTTP path (BENCHMARKS.md), and tuneserve_requests "
        "counts every answer by endpoint and status",
    )
    warmup_runs: NonNegativeInt = Field(3, description="model calls per variant before ready")
    admin_token_env: str = Field(
        "TUNESERVE_ADMIN_TOKEN", description="environment variable holding the admin token"
    )
    batching: BatchingConfig = Field(
        default_factory=lambda: BatchingConfig.model_validate({}), description="batching"
    )
    experiment: ExperimentConfig = Field(
        default_factory=lambda: ExperimentConfig.model_validate({}), description="A/B routing"
    )
    store: StoreConfig = Field(
        default_factory=lambda: StoreConfig.model_validate({}), description="experiment store"
    )
    limits: LimitsConfig = Field(
        default_factory=lambda: LimitsConfig.model_validate({}), description="limits"
    )
    shadow: ShadowConfig = Field(
        default_factory=lambda: ShadowConfig.model_validate({}), description="shadow traffic"
    )
    guardrails: GuardrailConfig = Field(
        default_factory=lambda: GuardrailConfig.model_validate({}), description="guardrails"
    )
    auth: AuthConfig = Field(
        default_factory=lambda: AuthConfig.model_validate({}), description="API keys"
    )
    masking: MaskingConfig = Field(
        default_factory=lambda: MaskingConfig.model_validate({}),
        description="masking of stored request text",
    )
    backstop_timeout_s: PositiveInt = Field(
        30, description="BentoML's own request timeout, a backstop behind limits.deadline_ms"
    )
    backstop_max_concurrency: NonNegativeInt = Field(
        0,
        description="BentoML's own limit on requests in flight in the service (it answers 429 "
        "without Retry-After past it), a backstop behind limits.max_inflight; "
        "0: 4 x max_inflight x workers",
    )

    @model_validator(mode="after")
    def _check_variants(self) -> ServingConfig:
        if not self.variants:
            raise ValueError("variants must list at least one exported model")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        controls = [v.name for v in self.variants if v.control]
        if len(controls) != 1:
            raise ValueError(f"exactly one variant must be the control, got {controls or 'none'}")
        check_weights({v.name: v.weight for v in self.variants}, controls[0])
        if self.shadow.variant and self.shadow.variant not in names:
            raise ValueError(
                f"shadow.variant {self.shadow.variant!r} is not a served variant ({names})"
            )
        return self

    @property
    def control(self) -> VariantConfig:
        """The control variant."""
        return next(v for v in self.variants if v.control)

    def variant_names(self) -> list[str]:
        """Variant names in config order."""
        return [v.name for v in self.variants]

    def batching_mode(self) -> Literal["adaptive", "off"]:
        """The batching mode after resolving auto by device."""
        if self.batching.mode == "auto":
            return "adaptive" if self.device == "cuda" else "off"
        return self.batching.mode

    def backstop_concurrency(self) -> int:
        """BentoML's concurrency limit for the whole service."""
        return self.backstop_max_concurrency or 4 * self.limits.max_inflight * self.workers

    def ort_threads(self) -> int:
        """ONNX Runtime intra-op threads per inference."""
        if self.intra_op_threads:
            return self.intra_op_threads
        return max(1, (os.cpu_count() or 1) // (self.workers * self.threads))


def config_path() -> Path:
    """The serving config's path: ``$TUNESERVE_SERVING_CONFIG`` or configs/serving.toml."""
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def load_serving_config(path: Path | None = None) -> ServingConfig:
    """Load and validate the serving config."""
    path = path or config_path()
    if not path.is_file():
        raise ConfigError(
            f"serving config {path} not found: set {CONFIG_ENV} to a TOML or YAML file "
            f"(see configs/serving.toml)"
        )
    return load_config(ServingConfig, path)


__all__ = [
    "CONFIG_ENV",
    "AuthConfig",
    "BatchingConfig",
    "ExperimentConfig",
    "GuardrailConfig",
    "LimitsConfig",
    "MaskingConfig",
    "ServingConfig",
    "ShadowConfig",
    "StoreConfig",
    "VariantConfig",
    "config_path",
    "load_serving_config",
]
