"""Prometheus metrics, prefix ``tuneserve_``, low-cardinality labels only.

Under ``bentoml serve`` every worker writes to the multiprocess directory BentoML sets up
(``PROMETHEUS_MULTIPROC_DIR``) and ``/metrics`` merges them, so counts add up across workers.
Histogram buckets are floats (BentoML 1.4 requires it).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# 0.5 ms to 10 s, roughly x2 per step.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)
SCORE_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)

REQUESTS = Counter(
    "tuneserve_requests",
    "HTTP requests answered, by endpoint (kind) and status code (outcome)",
    ["kind", "outcome"],
)
REQUEST_SECONDS = Histogram(
    "tuneserve_request_seconds",
    "Time from request received to answer sent, by endpoint",
    ["kind"],
    buckets=LATENCY_BUCKETS,
)
ERRORS = Counter("tuneserve_errors", "Error answers by kind", ["kind"])
PREDICTIONS = Counter(
    "tuneserve_predictions", "Texts predicted, by variant and predicted label", ["variant", "label"]
)
FORCED = Counter("tuneserve_forced_predictions", "Texts predicted by a forced variant", ["variant"])
INFERENCE_SECONDS = Histogram(
    "tuneserve_inference_seconds",
    "Model call time (tokens padded, ONNX Runtime run, softmax), by variant",
    ["variant"],
    buckets=LATENCY_BUCKETS,
)
QUEUE_WAIT_SECONDS = Histogram(
    "tuneserve_queue_wait_seconds",
    "Time a text waited for a model call, by variant",
    ["variant"],
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "tuneserve_batch_size", "Texts per model call, by variant", ["variant"], buckets=BATCH_BUCKETS
)
SCORE = Histogram(
    "tuneserve_score",
    "Probability of the predicted label, by variant",
    ["variant"],
    buckets=SCORE_BUCKETS,
)
TRUNCATED = Counter(
    "tuneserve_truncations", "Texts cut at the model's maximum length, by variant", ["variant"]
)
INFLIGHT = Gauge(
    "tuneserve_inflight_requests",
    "Prediction requests being handled, summed over live workers",
    multiprocess_mode="livesum",
)
WEIGHT = Gauge(
    "tuneserve_variant_weight",
    "Configured traffic share of each variant",
    ["variant"],
    multiprocess_mode="mostrecent",
)
MODEL_INFO = Gauge(
    "tuneserve_model_info",
    "1 for each served variant, with its version, quantization and execution provider",
    ["variant", "version", "quantization", "provider"],
    multiprocess_mode="max",
)
READY = Gauge(
    "tuneserve_ready",
    "1 when every variant of the worker is loaded and warmed (minimum over live workers)",
    multiprocess_mode="livemin",
)
LOG_WRITTEN = Counter("tuneserve_log_written", "Prediction rows written to the store")
LOG_DROPPED = Counter(
    "tuneserve_log_dropped",
    "Prediction rows not written to the store, by kind (queue_full, write_failed)",
    ["kind"],
)
LOG_QUEUED = Gauge(
    "tuneserve_log_queued_rows",
    "Prediction rows waiting in the log queue to be written (they wait there while the store "
    "cannot be reached), summed over live workers",
    multiprocess_mode="livesum",
)
STORE_UP = Gauge(
    "tuneserve_store_up",
    "1 while the experiment store answers, 0 while it cannot be reached (minimum over live "
    "workers: 0 when any worker cannot reach it)",
    multiprocess_mode="livemin",
)
FEEDBACK = Counter(
    "tuneserve_feedback",
    "Feedback posts by variant (pending: its prediction row is not written yet) and outcome "
    "(stored, duplicate, unknown_id, invalid_label, unavailable: the store could not be reached)",
    ["variant", "outcome"],
)
SHADOW = Counter(
    "tuneserve_shadow_predictions",
    "Requests also scored by a shadow variant, by shadow variant and outcome (agree, disagree: "
    "with the live answer; skipped: the shadow queue was full or the worker busy; failed)",
    ["variant", "outcome"],
)
GUARDRAIL_TRIPS = Counter(
    "tuneserve_guardrail_trips",
    "Challengers taken out of rotation by a guardrail, by variant and kind "
    "(error_rate, p99_latency, accuracy)",
    ["variant", "kind"],
)
VARIANT_ENABLED = Gauge(
    "tuneserve_variant_enabled",
    "1 while a variant is in rotation, 0 once disabled (by the admin API or a guardrail)",
    ["variant"],
    multiprocess_mode="mostrecent",
)
SAMPLE_RATIO_P_VALUE = Gauge(
    "tuneserve_sample_ratio_p_value",
    "p-value of the sample-ratio check on the logged unforced traffic (below 0.001: mismatch)",
    multiprocess_mode="mostrecent",
)
SAMPLE_RATIO_MISMATCH = Gauge(
    "tuneserve_sample_ratio_mismatch",
    "1 while the logged traffic split differs from the configured shares (p < 0.001)",
    multiprocess_mode="mostrecent",
)
EXPERIMENT_LEADER = Gauge(
    "tuneserve_experiment_leader",
    "1 while this worker is the deployment's experiment leader (it alone makes the guardrail "
    "and sample-ratio decisions, from store-wide figures); summed over a pod's live workers",
    multiprocess_mode="livesum",
)
EXPERIMENT_STATE_VERSION = Gauge(
    "tuneserve_experiment_state_version",
    "Version of the experiment state this pod's workers route by (the highest among them); "
    "every pod converges to the stored one within seconds",
    multiprocess_mode="livemax",
)
# deployment cost (issue 18): each worker's memory, sampled by service/memory.py
PROCESS_MEMORY = Gauge(
    "tuneserve_process_resident_memory_bytes",
    "Resident set size of each worker process, by BentoML worker index (sampled every 2 s; a "
    "dead worker's series is dropped)",
    ["worker"],
    multiprocess_mode="livemostrecent",
)
DEVICE_MEMORY = Gauge(
    "tuneserve_device_memory_bytes",
    "CUDA device memory each worker process holds (NVML's per-process figure, as nvidia-smi "
    "shows it), by worker index and device (cuda:N); absent on CPU",
    ["worker", "device"],
    multiprocess_mode="livemostrecent",
)
KEY_REQUESTS = Counter(
    "tuneserve_key_requests",
    "Requests made with an API key (auth.require_keys), by key id (never the key or its name; "
    "admin-token for the admin token) and status code (outcome)",
    ["key_id", "outcome"],
)
AUTH_REFUSALS = Counter(
    "tuneserve_auth_refusals",
    "Requests refused for their key, by reason (missing, unknown, revoked, scope, "
    "rate_limited, not_loaded)",
    ["reason"],
)
ROLLOUT_STEP = Gauge(
    "tuneserve_rollout_step",
    "Traffic share the progressive rollout plan gives its challenger now (1 once promoted, 0 "
    "once rolled back or aborted; 0 without a plan)",
    multiprocess_mode="mostrecent",
)
ROLLOUT_TRANSITIONS = Counter(
    "tuneserve_rollout_transitions",
    "Transitions of progressive rollout plans by kind (start, advance, promote, rollback, pause, "
    "resume, abort), counted once by the worker that stored each",
    ["kind"],
)
MODEL_SWAPS = Counter(
    "tuneserve_model_swaps",
    "Hot model swaps by variant and outcome (added, replaced, removed: switched in this "
    "worker; failed: the model did not verify or load, the old one keeps serving), counted by "
    "every worker",
    ["variant", "outcome"],
)
MODEL_CATALOG_VERSION = Gauge(
    "tuneserve_model_catalog_version",
    "Version of the runtime variant catalog this pod's workers serve (minimum over live "
    "workers: below the stored one while a worker still loads a swapped model)",
    multiprocess_mode="livemin",
)
