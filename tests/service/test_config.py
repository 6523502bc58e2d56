"""Serving config: valid files load; every mistake gets a message that names it."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import CONFIG_ENV, config_path, load_serving_config
from tuneserve.errors import ConfigError

VARIANTS = """
[[variants]]
name = "baseline"
path = "a"
control = true
[[variants]]
name = "tuned"
path = "b"
weight = 3
"""


def _write(tmp_path: Path, text: str, name: str = "serving.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_and_derived_settings(tmp_path: Path) -> None:
    cfg = load_serving_config(_write(tmp_path, "workers = 2\n" + VARIANTS))
    assert cfg.control.name == "baseline"
    assert cfg.variant_names() == ["baseline", "tuned"]
    assert cfg.batching_mode() == "off"  # auto on cpu
    assert cfg.model_copy(update={"device": "cuda"}).batching_mode() == "adaptive"
    assert cfg.ort_threads() >= 1
    assert cfg.model_copy(update={"intra_op_threads": 3}).ort_threads() == 3


def test_store_pools_are_sized_from_the_config(tmp_path: Path) -> None:
    text = VARIANTS + "[store]\npool_min_size = 2\npool_max_size = 6\nreconnect_timeout_s = 4\n"
    store = load_serving_config(_write(tmp_path, text)).store
    main, log = store.pool(), store.pool(log=True)
    assert (main.min_size, main.max_size, log.min_size, log.max_size) == (2, 6, 2, 2)
    assert main.reconnect_timeout_s == log.reconnect_timeout_s == 4.0
    assert main.wait_s == store.pool_wait_s == 5.0 and store.retry_after_s == 2


def test_yaml_and_env_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(
        tmp_path,
        "variants:\n  - {name: only, path: x, control: true}\nbatching: {mode: adaptive}\n",
        "serving.yaml",
    )
    monkeypatch.setenv(CONFIG_ENV, str(path))
    assert config_path() == path
    cfg = load_serving_config()
    assert cfg.batching_mode() == "adaptive"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("variants = []", "variants must list at least one exported model"),
        (VARIANTS.replace("weight = 3", "control = true"), "exactly one variant must be the"),
        (VARIANTS.replace('"tuned"', '"baseline"'), "variant names must be unique"),
        (VARIANTS.replace('"tuned"', '"Tuned!"'), "variant name 'Tuned!' must be 1-32"),
        (VARIANTS.replace("weight = 3", "weight = -1"), "weight must be non-negative, got -1"),
        ("workers = 0\n" + VARIANTS, "workers must be positive, got 0"),
        ("device = 'tpu'\n" + VARIANTS, "device: Input should be 'cpu' or 'cuda'"),
        ("[limits]\ndeadline_ms = 0\n" + VARIANTS, "deadline_ms must be positive, got 0"),
        ("[batching]\nmax_batch_size = 0\n" + VARIANTS, "max_batch_size must be positive"),
        ("wokers = 2\n" + VARIANTS, "wokers: unknown key"),
        (
            VARIANTS + "[store]\npool_min_size = 5\n",
            "store.pool_min_size .5. must not exceed store.pool_max_size .4.",
        ),
        (VARIANTS + "[store]\npool_wait_s = 0\n", "pool_wait_s must be positive, got 0"),
    ],
)
def test_invalid_configs_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("!", "!")):
        load_serving_config(_write(tmp_path, text))


def test_missing_file_says_how_to_point_at_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"set {CONFIG_ENV}"):
        load_serving_config(tmp_path / "absent.toml")


def test_a_challenger_cannot_outgrow_its_slot(tmp_path: Path) -> None:
    text = VARIANTS + '[[variants]]\nname = "third"\npath = "c"\n'
    # baseline 1, tuned 3, third 1: tuned wants 60% but two challengers get 50% slots
    with pytest.raises(ConfigError, match="'tuned' has 60% of the traffic, more than its slot"):
        load_serving_config(_write(tmp_path, text))


def test_a_rollout_plan_in_the_config(tmp_path: Path) -> None:
    from service.experiment.state import initial_state

    cfg = load_serving_config(_write(tmp_path, VARIANTS + '[rollout]\nchallenger = "tuned"\n'))
    assert cfg.rollout.steps == [0.01, 0.05, 0.25, 0.5] and cfg.rollout.alpha is None
    state = initial_state(cfg)
    assert state.rollout is not None and state.rollout.alpha == cfg.experiment.alpha
    assert state.weights["tuned"] == pytest.approx(0.01)  # the first step, not the weight 3
    off = initial_state(load_serving_config(_write(tmp_path, VARIANTS)))
    assert off.rollout is None and off.weights == {"baseline": 1.0, "tuned": 3.0}


@pytest.mark.parametrize(
    ("rollout", "message"),
    [
        ('challenger = "baseline"', "rollout.challenger 'baseline' must be a served variant other"),
        ('challenger = "x"', "rollout.challenger 'x' must be a served variant"),
        ('challenger = "tuned"\nsteps = [0.5, 0.2]', "rollout.steps must increase"),
        ('challenger = "tuned"\nsteps = [0.0, 0.5]', "rollout.steps must each be in .0, 1."),
        ('challenger = "tuned"\nsteps = []', "rollout.steps must list at least one"),
        ('challenger = "tuned"\nmin_samples = 0', "min_samples must be positive, got 0"),
        ('challenger = "tuned"\nalpha = 1.5', "alpha"),
    ],
)
def test_invalid_rollout_plans_name_the_problem(tmp_path: Path, rollout: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_serving_config(_write(tmp_path, VARIANTS + "[rollout]\n" + rollout + "\n"))


def test_rollout_steps_stay_within_the_challengers_slot(tmp_path: Path) -> None:
    text = (
        VARIANTS.replace("weight = 3", "weight = 1") + '[[variants]]\nname = "third"\npath = "c"\n'
    )
    plan = '[rollout]\nchallenger = "tuned"\nsteps = [0.1, 0.6]\n'
    with pytest.raises(ConfigError, match="more than a challenger's slot .0.5 with 2 challengers."):
        load_serving_config(_write(tmp_path, text + plan))
