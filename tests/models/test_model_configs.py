"""VideoDiTConfig validation, serialisation and the registry of named architectures."""

from __future__ import annotations

import pytest
import torch
from model_testing import PIXART, TINY, tiny_config

from slatte.models import MODEL_CONFIGS, VideoDiT, VideoDiTConfig, model_config
from slatte.ops.sla import SLAConfig


@pytest.mark.parametrize(
    "change,match",
    [
        ({"input_size": 0}, "input_size must be an int >= 1, got 0"),
        ({"input_size": 9}, r"input_size \(9\) must be divisible by patch_size \(2\)"),
        ({"num_frames": 2.0}, "num_frames must be an int"),
        ({"num_heads": 3}, r"hidden_size \(32\) must be divisible by num_heads \(3\)"),
        ({"hidden_size": 6, "num_heads": 3}, "multiple of 4"),
        ({"depth": 3}, "depth must be even; got depth=3"),
        ({"num_heads": True}, "num_heads must be an int"),
        ({"mlp_ratio": 0}, "mlp_ratio must be a positive number"),
        ({"num_classes": -1}, "num_classes must be an int >= 0"),
        ({"class_dropout_prob": 1.0}, r"class_dropout_prob must lie in \[0, 1\)"),
        ({"class_embed_init_std": 0}, "class_embed_init_std must be a positive number, got 0"),
        ({"learn_sigma": 1}, "learn_sigma must be a bool"),
        ({"block_pattern": "factorized"}, "block_pattern must be one of"),
        ({"text_dim": 0}, "text_dim must be an int >= 1"),
        ({"attention_backend": "flash"}, "attention_backend must be one of"),
        ({"sla": {"critical": 0.1}}, "sla must be an SLAConfig"),
        ({"qk_norm": "yes"}, "qk_norm must be a bool"),
        ({"cross_attn_norm": 0}, "cross_attn_norm must be a bool"),
        ({"single_frame_temporal_embed": None}, "single_frame_temporal_embed must be a bool"),
        ({"block_modulation": "single"}, r"block_modulation must be one of \('adaln', 'table'\)"),
        ({"final_modulation": "pixart"}, r"final_modulation must be one of \('adaln', 'table'\)"),
    ],
)
def test_validation_errors_name_the_field_and_value(change, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**change)


def test_class_embed_init_std_sets_the_label_table_scale():
    for std in (0.02, 1.0):
        torch.manual_seed(0)
        table = VideoDiT(tiny_config(num_classes=50, class_embed_init_std=std)).y_embedder
        measured = table.embedding_table.weight.std().item()
        assert abs(measured - std) < 0.15 * std, (std, measured)


def test_full_pattern_allows_odd_depth():
    assert tiny_config(block_pattern="full", depth=3).block_kinds() == ("full",) * 3


def test_dict_round_trip_and_unknown_keys():
    cfg = tiny_config(text_dim=7, attention_backend="sla", sla=SLAConfig(critical=0.2))
    data = cfg.to_dict()
    assert data["sla"]["critical"] == 0.2
    assert VideoDiTConfig.from_dict(data) == cfg
    # Configs written before an option existed load with its default, the old behaviour.
    old = {k: v for k, v in data.items() if k not in PIXART}
    assert VideoDiTConfig.from_dict(old) == cfg
    pixart = cfg.replace(**PIXART)
    assert VideoDiTConfig.from_dict(pixart.to_dict()) == pixart
    with pytest.raises(ValueError, match=r"unknown model config key\(s\) \['widht'\]"):
        VideoDiTConfig.from_dict({**TINY, "widht": 3})
    with pytest.raises(ValueError, match="unknown SLA option"):
        VideoDiTConfig.from_dict({**TINY, "sla": {"sparsity": 0.9}})


def test_registry():
    sizes = {
        "Latte-S/2": (12, 384, 6),
        "Latte-B/2": (12, 768, 12),
        "Latte-L/2": (24, 1024, 16),
        "Latte-XL/2": (28, 1152, 16),
        "Latte-T/2": (2, 64, 2),
    }
    for name, (depth, width, heads) in sizes.items():
        cfg = model_config(name)
        assert (cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.patch_size) == (
            depth,
            width,
            heads,
            2,
        )
    digits = model_config("Latte-digits")
    assert (digits.input_size, digits.num_frames, digits.in_channels, digits.num_classes) == (
        32,
        16,
        1,
        10,
    )
    assert model_config("Latte-T/2", num_classes=0, depth=4).depth == 4
    assert set(MODEL_CONFIGS) >= set(sizes) | {"Latte-digits"}
    with pytest.raises(
        ValueError, match=r"unknown model config 'Latte-XXL/2'; known: \['Latte-B/2'"
    ):
        model_config("Latte-XXL/2")


def test_paper_sizes_have_the_paper_parameter_counts():
    # Latte-S/2 ~ DiT-S/2 (33M): same blocks, plus 1 more embedding row at most.
    model = VideoDiT(model_config("Latte-S/2"))
    assert 32.0e6 < model.num_parameters() < 33.5e6
