"""`add_lora` on every diffusers transformer slatte supports: the adapters reach the attention
projections and the feed-forward layers of each model, and start as a no-op."""

from __future__ import annotations

import pytest
import torch
from diffusers_testing import (
    model_inputs,
    tiny_cogvideox,
    tiny_hunyuan,
    tiny_hunyuan15,
    tiny_latte,
    tiny_ltx,
    tiny_ltx2,
    tiny_mochi,
    tiny_skyreels,
    tiny_vace,
    tiny_wan,
)

pytest.importorskip("peft")

from slatte.lora import add_lora  # noqa: E402

BUILDERS = {
    "wan": tiny_wan, "ltx": tiny_ltx, "latte": tiny_latte, "vace": tiny_vace,
    "skyreels": tiny_skyreels, "hunyuan": tiny_hunyuan, "hunyuan15": tiny_hunyuan15,
    "cogvideox": tiny_cogvideox, "mochi": tiny_mochi, "ltx2": tiny_ltx2,
}  # fmt: skip


def _adapted(model: torch.nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if hasattr(module, "lora_A")]


def _forward(name: str, model: torch.nn.Module):
    with torch.no_grad():
        return model(**model_inputs(name), return_dict=False)[0]


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_lora_reaches_attention_and_feed_forward(name):
    model = BUILDERS[name]()
    before = _forward(name, model)
    add_lora(model, rank=2, targets="attn,mlp", family="diffusers")
    adapted = _adapted(model)
    attention = [n for n in adapted if n.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v", "0")]
    feed_forward = [n for n in adapted if ".ff" in n or ".ffn" in n]
    assert attention, f"{name}: no attention projection adapted ({adapted})"
    assert feed_forward, f"{name}: no feed-forward layer adapted ({adapted})"
    # B starts at zero: the adapted model computes what the base model does.
    torch.testing.assert_close(_forward(name, model), before, rtol=0, atol=0)
