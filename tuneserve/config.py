"""Config models: frozen pydantic, unknown keys rejected, from TOML or YAML plus overrides."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, ValidationInfo

from tuneserve.errors import ConfigError

C = TypeVar("C", bound="StrictConfig")


def rule(check: Callable[[Any], bool], expectation: str) -> AfterValidator:
    """A field validator whose message reads ``<field> must be <expectation>, got <value>``."""

    def validate(value: Any, info: ValidationInfo) -> Any:
        if not check(value):
            raise ValueError(f"{info.field_name} must be {expectation}, got {value}")
        return value

    return AfterValidator(validate)


PositiveInt = Annotated[int, rule(lambda v: v > 0, "positive")]
NonNegativeInt = Annotated[int, rule(lambda v: v >= 0, "non-negative")]
PositiveFloat = Annotated[float, rule(lambda v: v > 0, "positive")]
NonNegativeFloat = Annotated[float, rule(lambda v: v >= 0, "non-negative")]
OpenUnit = Annotated[float, rule(lambda v: 0 < v < 1, "in (0, 1)")]
HalfOpenUnit = Annotated[float, rule(lambda v: 0 <= v < 1, "in [0, 1)")]
ClosedUnit = Annotated[float, rule(lambda v: 0 <= v <= 1, "in [0, 1]")]


def int_between(low: int, high: int) -> Any:
    """An int field that must lie in [low, high]."""
    return Annotated[int, rule(lambda v: low <= v <= high, f"between {low} and {high}")]


class StrictConfig(BaseModel):
    """Base of every config: immutable, no unknown keys, every field described."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (.toml) or YAML (.yaml/.yml) file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found: pass an existing TOML or YAML file")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"config file {path} has suffix {suffix!r}: use .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"config file {path} is unreadable: {detail}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def parse_override_value(raw: str) -> Any:
    """Parse the value of ``--set key=value``: a TOML literal, then YAML, else the plain string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    return raw if value is None and raw.strip() not in ("null", "~") else value


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``a.b.c=value`` override applied."""
    result = json.loads(json.dumps(data))  # deep copy of plain data
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        parts = key.strip().split(".")
        node = result
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = parse_override_value(raw.strip())
    return result


def format_validation_error(exc: ValidationError) -> str:
    """Turn pydantic's report into ``section.field: message`` lines."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the config reference in README.md)"
        lines.append(f"{where}: {msg}")
    return "; ".join(lines)


def validate_config(cls: type[C], data: Mapping[str, Any], origin: str = "config") -> C:
    """Validate ``data`` as ``cls`` or raise one ConfigError naming every problem."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid {origin}: {format_validation_error(exc)}") from exc


def load_config(cls: type[C], path: str | Path | None, overrides: Sequence[str] = ()) -> C:
    """Load ``cls`` from a file (or defaults when ``path`` is None) with ``--set`` overrides."""
    data = read_config_file(path) if path is not None else {}
    return validate_config(cls, apply_overrides(data, overrides), origin=str(path or "config"))
