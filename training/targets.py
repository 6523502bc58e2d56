"""LoRA target detection: the attention and feed-forward projections of each naming style."""

from __future__ import annotations

from collections.abc import Iterable

from tuneserve.errors import ModelError

# Leaf names of nn.Linear modules per style. BERT and RoBERTa share names: attention
# query/key/value, attention.output.dense, intermediate.dense and output.dense.
_STYLES: dict[str, tuple[str, ...]] = {
    "bert": ("query", "key", "value", "dense"),
    "distilbert": ("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"),
    "deberta": ("query_proj", "key_proj", "value_proj", "dense"),
}
_MODEL_TYPES = {
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "camembert": "bert",
    "electra": "bert",
    "mpnet": "bert",
    "distilbert": "distilbert",
    "deberta": "deberta",
    "deberta-v2": "deberta",
}


def detect_lora_targets(model_type: str, linear_names: Iterable[str]) -> list[str]:
    """LoRA target leaf names for an encoder, from its model type or, failing that, its layers.

    ``linear_names`` are the dotted names of the encoder's ``nn.Linear`` modules. Pooler layers
    are left out: mean pooling does not use them and the CLS pooler is outside the adapter.
    """
    leaves = {name.rsplit(".", 1)[-1] for name in linear_names if "pooler" not in name}
    style = _MODEL_TYPES.get(model_type)
    candidates = [_STYLES[style]] if style else list(_STYLES.values())
    for names in candidates:
        found = [n for n in names if n in leaves]
        if len(found) >= 3:
            return found
    raise ModelError(
        f"cannot detect LoRA targets for model type {model_type!r} (linear layers: "
        f"{', '.join(sorted(leaves)) or 'none'}): set lora.target_modules to the projection names"
    )


def target_regex(targets: Iterable[str]) -> str:
    """A peft target_modules regex matching the targets inside the encoder, never the pooler."""
    alternatives = "|".join(sorted(set(targets)))
    return rf"^(?!.*pooler).*\.({alternatives})$"
