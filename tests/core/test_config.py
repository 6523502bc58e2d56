from __future__ import annotations

from pathlib import Path

import pytest

from training.config import TrainingConfig
from tuneserve.config import apply_overrides, load_config, parse_override_value
from tuneserve.errors import ConfigError


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lora.r=0", "lora.r: r must be positive, got 0"),
        (
            "lora.learning_rate=1.5",
            "lora.learning_rate: learning_rate must be in \\(0, 1\\), got 1.5",
        ),
        ("head.learning_rate=0", "head.learning_rate: learning_rate must be in \\(0, 1\\), got 0"),
        ("lora.epochs=0", "lora.epochs: epochs must be positive, got 0"),
        ("lora.dropout=1", "lora.dropout: dropout must be in \\[0, 1\\), got 1"),
        ("lora.alpha=-1", "lora.alpha: alpha must be positive, got -1"),
        ("lora.target_modules=[]", "target_modules must name at least one module"),
        ("train.batch_size=0", "train.batch_size: batch_size must be positive, got 0"),
        ("train.warmup_ratio=1", "warmup_ratio must be in \\[0, 1\\), got 1"),
        ("data.dev_fraction=0", "dev_fraction must be in \\(0, 1\\), got 0"),
        ("model.max_length=4", "max_length must be between 8 and 8192, got 4"),
        ("model.pooling=max", "model.pooling: Input should be 'mean' or 'cls'"),
        ("method=full", "method: Input should be 'head', 'lora', 'both' or 'distill'"),
        ("lora.rank=8", "lora.rank: unknown key"),
    ],
)
def test_validation_messages(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(TrainingConfig, None, [override])


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(ConfigError, match="lora.r: .*; train.batch_size: "):
        load_config(TrainingConfig, None, ["lora.r=0", "train.batch_size=0"])


def test_config_is_frozen() -> None:
    cfg = TrainingConfig()
    with pytest.raises(ValueError, match="frozen"):
        cfg.lora.r = 2  # type: ignore[misc]


def test_every_field_is_described() -> None:
    def walk(model: type) -> None:
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                walk(annotation)

    walk(TrainingConfig)


@pytest.mark.parametrize("suffix", [".toml", ".yaml"])
def test_load_toml_and_yaml_with_overrides(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"c{suffix}"
    if suffix == ".toml":
        path.write_text('method = "head"\n[lora]\nr = 8\n')
    else:
        path.write_text("method: head\nlora:\n  r: 8\n")
    cfg = load_config(
        TrainingConfig,
        path,
        ["lora.alpha=4", "lora.target_modules=[query,value]", "lora.learning_rate=5e-4"],
    )
    assert cfg.method == "head"
    assert cfg.lora.r == 8
    assert cfg.lora.alpha == 4
    assert cfg.lora.target_modules == ["query", "value"]
    assert cfg.lora.learning_rate == pytest.approx(5e-4)


def test_checked_in_configs_are_valid() -> None:
    from loadtests.config import LoadTestConfig
    from service.config import ServingConfig

    root = Path(__file__).resolve().parents[2] / "configs"
    files = sorted(root.glob("*.toml"))
    assert {p.name for p in files} >= {
        "sst2.toml",
        "serving.toml",
        "serving-gpu.toml",
        "loadtest.toml",
    }
    for path in files:
        kind = path.name.split("-")[0].split(".")[0]
        load_config(
            {"serving": ServingConfig, "loadtest": LoadTestConfig}.get(kind, TrainingConfig), path
        )


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("method = ", ".toml", "is unreadable"),
        ("a: [1, 2", ".yaml", "is unreadable"),
        ("- 1\n- 2\n", ".yaml", "must hold a mapping"),
        ("x", ".ini", "use .toml, .yaml or .yml"),
    ],
)
def test_unreadable_config(tmp_path: Path, content: str, suffix: str, message: str) -> None:
    path = tmp_path / f"bad{suffix}"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_config(TrainingConfig, path)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(TrainingConfig, tmp_path / "nope.toml")


def test_override_parsing() -> None:
    assert parse_override_value("3") == 3
    assert parse_override_value("1e-3") == pytest.approx(1e-3)
    assert parse_override_value("true") is True
    assert parse_override_value("hello") == "hello"
    assert parse_override_value('"a b"') == "a b"
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["no-equals-sign"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"method": "lora"}, ["method.x=1"])
