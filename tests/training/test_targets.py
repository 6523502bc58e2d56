from __future__ import annotations

import re

import pytest

from training.model import linear_module_names
from training.targets import detect_lora_targets, target_regex
from tuneserve.errors import ModelError


def _tiny(model_type: str):  # type: ignore[no-untyped-def]
    from transformers import (
        BertConfig,
        BertModel,
        DistilBertConfig,
        DistilBertModel,
        RobertaConfig,
        RobertaModel,
    )

    if model_type == "bert":
        return BertModel(
            BertConfig(
                hidden_size=16,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=20,
                vocab_size=50,
            )
        )
    if model_type == "roberta":
        return RobertaModel(
            RobertaConfig(
                hidden_size=16,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=20,
                vocab_size=50,
            )
        )
    return DistilBertModel(
        DistilBertConfig(dim=16, n_layers=1, n_heads=2, hidden_dim=20, vocab_size=50)
    )


@pytest.mark.parametrize(
    ("model_type", "expected"),
    [
        ("bert", ["query", "key", "value", "dense"]),
        ("roberta", ["query", "key", "value", "dense"]),
        ("distilbert", ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"]),
    ],
)
def test_detects_each_naming_style(model_type: str, expected: list[str]) -> None:
    names = linear_module_names(_tiny(model_type))
    targets = detect_lora_targets(model_type, names)
    assert targets == expected
    pattern = re.compile(target_regex(targets))
    adapted = [n for n in names if pattern.match(n)]
    assert adapted and not any("pooler" in n for n in adapted)
    # every attention and feed-forward projection of the layer is adapted
    assert len(adapted) == 6  # one layer: q, k, v, attention out, two feed-forward


def test_unknown_type_falls_back_to_layer_names() -> None:
    names = linear_module_names(_tiny("distilbert"))
    assert detect_lora_targets("my-own-encoder", names)[:3] == ["q_lin", "k_lin", "v_lin"]


def test_undetectable_architecture() -> None:
    with pytest.raises(ModelError, match="set lora.target_modules"):
        detect_lora_targets("weird", ["encoder.mix.proj_in", "encoder.mix.proj_out"])
