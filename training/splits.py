"""Reading a config's splits and running the data checks on them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training import checks
from training.config import TrainingConfig
from tuneserve.data import RawSplit, is_hub_id, read_hub_split, read_split, resolve_source
from tuneserve.errors import DataError
from tuneserve.models import BaseModelRef

_HUB_SPLITS = {"train": "train", "test": "validation"}


def read_raw_splits(
    cfg: TrainingConfig, data: str | None
) -> tuple[RawSplit, RawSplit | None, RawSplit]:
    """Read train, dev (optional) and test from the resolved source."""
    d = cfg.data
    source = resolve_source(d.source, data)
    if is_hub_id(source):

        def hub(name: str) -> RawSplit:
            return read_hub_split(name, source, _HUB_SPLITS[name], d.text_column, d.label_column)

        # the hub's GLUE-style datasets have no labelled dev split: it is carved from train
        return hub("train"), None, hub("test")
    root = Path(source)
    if not root.exists():
        raise DataError(
            f"data source {root} not found: pass --data DIR, set $TUNESERVE_DATA, "
            "or set data.source"
        )

    def local(name: str, file: str) -> RawSplit:
        path = Path(file) if Path(file).is_absolute() else root / file
        return read_split(name, path, d.text_column, d.label_column, d.format)

    train, test = local("train", d.train), local("test", d.test)
    return train, None if d.dev is None else local("dev", d.dev), test


def prepare_data(
    cfg: TrainingConfig, data: str | None, ref: BaseModelRef, tokenizer: Any, show: bool = True
) -> checks.CheckedData:
    """Read the splits and run the data checks, printing the summary when ``show``."""
    train, dev, test = read_raw_splits(cfg, data)
    checked = checks.check_data(
        cfg.data,
        train,
        dev,
        test,
        checks.token_lengths_from(tokenizer),
        cfg.model.max_length,
        cfg.train.seed,
    )
    if show:
        print("\n".join(checks.summary_lines(checked.report)))
    return checked
