"""What a served model was trained on, read along its manifest chain (export -> train run)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tuneserve.data import RawSplit, read_split, resolve_source
from tuneserve.errors import DataError, ManifestError
from tuneserve.manifest import MANIFEST_NAME, Manifest, read_manifest

# the train config's defaults (training/config.py DataConfig): the house's default data set
DEFAULT_SOURCE = "../shared/data/sst2"
DEFAULT_TEXT_COLUMN = "sentence"
DEFAULT_LABEL_COLUMN = "label"
COLUMN_FLAGS = "--text-column/--label-column"


@dataclass(frozen=True)
class DataColumns:
    """The text and label columns of a labelled split, and the model's name for each raw label."""

    text: str
    label: str
    origin: str  # where the names came from, for messages
    label_names: dict[str, str] = field(default_factory=dict)  # raw label -> model label

    def model_label(self, raw: object) -> str:
        """The model's label for a raw dataset label (``1`` -> ``positive``)."""
        return self.label_names.get(str(raw), str(raw))


def train_run_dir(export: Manifest) -> Path:
    """The train run an export was made from (its recorded input)."""
    entry = next((i for i in export.inputs if i.role == "train_run"), None)
    if entry is None:
        raise ManifestError(f"export {export.run_id} does not record its train run")
    return Path(entry.path).parent


def trained_columns(export_dir: Path) -> DataColumns:
    """The columns (and label names) in the resolved train config of ``export_dir``'s train run."""
    hint = f"pass {COLUMN_FLAGS} to name the columns yourself"
    try:
        train_dir = train_run_dir(read_manifest(export_dir, stage="export", verify=False))
        train = read_manifest(train_dir, stage="train", verify=False)
    except ManifestError as exc:
        raise ManifestError(
            f"cannot tell the data columns of {export_dir} ({exc}); {hint}"
        ) from exc
    data = train.config.get("data", {})
    text, label = data.get("text_column"), data.get("label_column")
    if not isinstance(text, str) or not isinstance(label, str):
        raise ManifestError(f"{train_dir / MANIFEST_NAME} records no data.text_column and "
                            f"data.label_column; {hint}")  # fmt: skip
    names = {str(k): str(v) for k, v in (data.get("label_names") or {}).items()}
    return DataColumns(text, label, f"the train run {train_dir}", names)


def resolve_columns(
    model: Path | None, text_column: str | None = None, label_column: str | None = None
) -> DataColumns:
    """Columns named explicitly first, then those ``model`` (an export run) was trained on, then
    the train config's defaults (both named: the manifests are not read)."""
    if text_column and label_column:
        return DataColumns(text_column, label_column, COLUMN_FLAGS)
    if model is not None:
        trained = trained_columns(model)
        return DataColumns(
            text_column or trained.text,
            label_column or trained.label,
            trained.origin,
            trained.label_names,
        )
    return DataColumns(
        text_column or DEFAULT_TEXT_COLUMN,
        label_column or DEFAULT_LABEL_COLUMN,
        COLUMN_FLAGS if text_column or label_column else "the train config's defaults",
    )


def default_test_split() -> Path:
    """``test.tsv`` of the default data: $TUNESERVE_DATA, else ``../shared/data/sst2``."""
    return Path(resolve_source(DEFAULT_SOURCE)) / "test.tsv"


def read_labelled(name: str, path: Path, columns: DataColumns) -> RawSplit:
    """Read a labelled split with ``columns``; a missing column names the flags that fix it."""
    split = read_split(
        name, path, columns.text, columns.label,
        hint=f"the columns come from {columns.origin}; pass {COLUMN_FLAGS}",
    )  # fmt: skip
    if not any(str(t or "").strip() for t in split.texts):
        raise DataError(f"{path} has no texts in column {columns.text!r}: pass {COLUMN_FLAGS}")
    return split
