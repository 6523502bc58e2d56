"""The experiment store's tables (the migrations that build them, in order) and the named rows
its queries return."""

from __future__ import annotations

from typing import Any, NamedTuple

MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE predictions (
            id TEXT PRIMARY KEY,
            ts DOUBLE PRECISION NOT NULL,
            variant TEXT NOT NULL,
            model_version TEXT NOT NULL,
            unit TEXT NOT NULL,
            unit_hash TEXT,
            forced INTEGER NOT NULL,
            label TEXT NOT NULL,
            score DOUBLE PRECISION NOT NULL,
            latency_ms DOUBLE PRECISION NOT NULL,
            text TEXT
        )""",
        "CREATE INDEX predictions_ts ON predictions (ts)",
        """CREATE TABLE feedback (
            prediction_id TEXT PRIMARY KEY,
            ts DOUBLE PRECISION NOT NULL,
            label TEXT NOT NULL
        )""",
        """CREATE TABLE experiment_history (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts DOUBLE PRECISION NOT NULL,
            change TEXT NOT NULL
        )""",
    ],
]
MIGRATIONS.append(
    [
        """CREATE TABLE experiment_state (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            version INTEGER NOT NULL,
            state TEXT NOT NULL
        )""",
    ]
)
MIGRATIONS.append(
    [
        # a request that failed after it was routed (deadline, internal error): label '' and
        # score 0, error names the kind; the report's error rate per variant counts them
        "ALTER TABLE predictions ADD COLUMN error TEXT",
        # the experiment (routing salt) a row belongs to; the report reads one experiment
        "ALTER TABLE predictions ADD COLUMN salt TEXT",
        """CREATE TABLE shadow (
            prediction_id TEXT PRIMARY KEY,
            ts DOUBLE PRECISION NOT NULL,
            variant TEXT NOT NULL,
            model_version TEXT NOT NULL,
            live_variant TEXT NOT NULL,
            live_label TEXT NOT NULL,
            label TEXT NOT NULL,
            score DOUBLE PRECISION NOT NULL,
            latency_ms DOUBLE PRECISION NOT NULL
        )""",
    ]
)
MIGRATIONS.append(
    [
        # the background monitors read feedback by arrival time, a few seconds' worth at a time
        "CREATE INDEX feedback_ts ON feedback (ts)",
    ]
)
MIGRATIONS.append(
    [
        # the lease of the deployment's experiment leader (service/experiment/leader.py): who
        # holds it, its term (raised at every change of holder), until when (the store's clock)
        """CREATE TABLE experiment_leader (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            holder TEXT NOT NULL,
            term INTEGER NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL
        )""",
        # the leader's guardrail reads each challenger's recent requests store-wide
        "CREATE INDEX predictions_variant_ts ON predictions (variant, ts)",
    ]
)
MIGRATIONS.append(
    [
        # API keys (service/apikeys.py): only a sha256 of each key is kept; scopes is a
        # comma-separated list; revoked is when (NULL: in force); rate_per_s and burst NULL: the
        # serving config's [auth] defaults
        """CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            hash TEXT NOT NULL,
            scopes TEXT NOT NULL,
            created DOUBLE PRECISION NOT NULL,
            revoked DOUBLE PRECISION,
            rate_per_s DOUBLE PRECISION,
            burst INTEGER
        )""",
    ]
)
SCHEMA_VERSION = len(MIGRATIONS)

PREDICTION_COLUMNS = (
    "id", "ts", "variant", "model_version", "unit", "unit_hash", "forced", "label", "score",
    "latency_ms", "text", "error", "salt",
)  # fmt: skip
SHADOW_COLUMNS = (
    "prediction_id", "ts", "variant", "model_version", "live_variant", "live_label", "label",
    "score", "latency_ms",
)  # fmt: skip
TABLE_COLUMNS = {"predictions": PREDICTION_COLUMNS, "shadow": SHADOW_COLUMNS}


class StoredState(NamedTuple):
    """The stored experiment state (as JSON data) and its version; (0, None) before any."""

    version: int
    state: dict[str, Any] | None


class Lease(NamedTuple):
    """The experiment leader's lease: its holder, its term, until when (the store's clock)."""

    holder: str
    term: int
    expires_at: float


class WindowFigures(NamedTuple):
    """One challenger's requests in the guardrail window, store-wide: how many, how many
    failed, and the p99 latency of those answered (0 without any)."""

    requests: int
    failed: int
    p99_ms: float


class HistoryEntry(NamedTuple):
    """One recorded change of the experiment state, and when it was made."""

    ts: float
    change: dict[str, Any]


class VariantSummary(NamedTuple):
    """One variant's logged requests of an experiment, counted in the database, and the
    latency percentiles of those answered (one row of ``Store.variant_summary``)."""

    variant: str
    traffic: int  # the experiment's requests: not forced, not excluded (failed ones too)
    current: int  # of those, stamped at or after the ``since`` asked for
    errors: int  # of those, failed
    forced: int
    excluded: int
    latency_ms: dict[float, float]  # q -> nearest-rank percentile of the answered traffic's
    # latencies (tuneserve.percentiles); empty when none was answered


class NewTraffic(NamedTuple):
    """Requests of one variant stamped after a cursor: all of them, and those already settled."""

    variant: str
    settled: int
    requests: int


class FeedbackOutcome(NamedTuple):
    """A labelled prediction as the monitors read it: when the feedback came, and whether the
    variant was right."""

    ts: float
    variant: str
    correct: bool


class Labelled(NamedTuple):
    """A prediction with feedback: its variant, when it was answered, whether it was right."""

    variant: str
    ts: float
    correct: bool
    latency_ms: float


class ShadowPair(NamedTuple):
    """A shadow-scored prediction: both variants and labels, and the true label once known."""

    variant: str
    live_variant: str
    live_label: str
    label: str
    truth: str | None


class ShadowCounts(NamedTuple):
    """One shadow variant's scored predictions, counted in the database: all of them, those
    agreeing with the live answer, those with a true label, and of these, how many each side
    got right and how many only one side got right (McNemar's discordant pairs)."""

    variant: str
    scored: int
    agree: int
    labelled: int
    live_right: int
    shadow_right: int
    live_only: int
    shadow_only: int
