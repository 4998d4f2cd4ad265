"""LoRA adapters through peft: add them to a model for training, save and load them as a peft
adapter folder (`adapter_config.json` + `adapter_model.safetensors`), merge them into the
weights.

Adapters are injected in place (peft's `LoraModel` tuner), so the adapted model is still the
same class (a `VideoDiT` keeps its three-step forward, gradient checkpointing and sequence
parallelism) and its state dict names the base weights `….base_layer.weight` beside
`….lora_A.default.weight` / `….lora_B.default.weight`. B starts at zero: the adapted model
computes exactly what the base model does until it is trained.

Targets are named by group (`TARGET_GROUPS`): the module-name suffixes of each group differ
between slatte's VideoDiT and the diffusers transformers (peft's usual names for Wan). VideoDiT's
self-attention keeps its fused `qkv` Linear and gets one adapter on it: a rank-R update of the
(3D, D) matrix, i.e. q, k and v share the down-projection A. Splitting qkv would change the
checkpoint format of every model for no gain in what a rank-R update can express per
projection beyond sharing A; and the fused adapter merges into the fused weight as it is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # `slatte train --help` reads the defaults here without importing torch
    import torch
    from torch import nn

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_NAME = "default"
ADAPTER_DIR = "adapter"  # a LoRA run's adapter folder, beside its model directory
# Module-name suffixes (peft matches a target as the name or its dotted tail) per target group.
TARGET_GROUPS: dict[str, dict[str, tuple[str, ...]]] = {
    "video_dit": {
        "attn": (
            "attn.qkv",
            "attn.proj",
            "cross_attn.q",
            "cross_attn.kv",
            "cross_attn.proj",
        ),
        "mlp": ("mlp.fc1", "mlp.fc2"),
        "adaln": ("adaLN_modulation.1",),
    },
    "diffusers": {
        "attn": ("to_q", "to_k", "to_v", "to_out.0"),
        # diffusers' FeedForward is `ffn` in the Wan family, `ff` in the others (LTX, Latte,
        # CogVideoX, Mochi, HunyuanVideo's dual-stream blocks, LTX-2's video stream).
        "mlp": ("ffn.net.0.proj", "ffn.net.2", "ff.net.0.proj", "ff.net.2"),
        "adaln": ("time_embedder.linear_1", "time_embedder.linear_2", "time_proj"),
    },
}
DEFAULT_TARGETS = "attn,mlp"
LORA_TRAINABLE = ("lora", "lora+sla")  # what trains beside the frozen base model
SLA_PROJECTION = ".sla.proj_l."  # trained beside the adapters with trainable "lora+sla"
_LORA_KEY = ".lora_"


def _peft():
    try:
        import peft
    except ImportError:
        raise ImportError("LoRA needs peft: pip install 'slatte[lora]'") from None
    return peft


def parse_targets(targets: str) -> tuple[str, ...]:
    """'attn,mlp' -> ("attn", "mlp"), each checked against the target groups."""
    groups = tuple(t.strip() for t in targets.split(",") if t.strip())
    allowed = tuple(TARGET_GROUPS["video_dit"])
    unknown = [g for g in groups if g not in allowed]
    if not groups or unknown:
        raise ValueError(f"lora targets must be a comma list of {allowed}, got {targets!r}")
    return groups


def check_lora_options(rank: int | None, alpha: float | None, targets: str) -> None:
    """Validate LoRA options as configs take them (rank None: no LoRA)."""
    if rank is None:
        if alpha is not None:
            raise ValueError(f"lora_alpha ({alpha}) needs lora_rank")
        return
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"lora_rank must be an integer >= 1, got {rank!r}")
    if alpha is not None and not alpha > 0:
        raise ValueError(f"lora_alpha must be > 0 (default: the rank), got {alpha!r}")
    parse_targets(targets)


def resolve_trainable(trainable: str | None, rank: int | None, allowed: tuple[str, ...]) -> str:
    """What a run trains: `trainable` (one of `allowed`), by default "lora" with a LoRA rank and
    "all" without; the LoRA choices need a rank and the others exclude one."""
    if trainable is not None and trainable not in allowed:
        raise ValueError(f"trainable must be one of {allowed}, got {trainable!r}")
    if trainable is None:
        return "all" if rank is None else "lora"
    lora = trainable in LORA_TRAINABLE
    if rank is None and lora:
        raise ValueError(f"trainable {trainable!r} needs lora_rank (the adapters' rank)")
    if rank is not None and not lora:
        raise ValueError(
            f"lora_rank={rank} trains adapters on a frozen model: trainable must be one of "
            f"{LORA_TRAINABLE}, got {trainable!r}"
        )
    return trainable


def add_lora(
    model: nn.Module,
    *,
    rank: int,
    alpha: float | None = None,
    targets: str = DEFAULT_TARGETS,
    family: str = "video_dit",
) -> nn.Module:
    """Inject fresh LoRA adapters (B = 0) of `rank` into `model`'s target modules, in place;
    `alpha` defaults to the rank (scaling 1). Returns `model`."""
    check_lora_options(rank, alpha, targets)
    peft = _peft()
    modules = [name for group in parse_targets(targets) for name in TARGET_GROUPS[family][group]]
    config = peft.LoraConfig(
        r=rank, lora_alpha=float(rank if alpha is None else alpha), target_modules=modules
    )
    return _inject(model, config, f"targets {targets!r}")


def _inject(model: nn.Module, config: Any, what: str) -> nn.Module:
    peft = _peft()
    try:
        peft.LoraModel(model, config, ADAPTER_NAME)
    except ValueError as err:  # no target module found in the model
        raise ValueError(
            f"LoRA {what} match no module of this {type(model).__name__} "
            f"(looked for names ending in {sorted(config.target_modules)}): {err}"
        ) from None
    return model


def has_lora(model: nn.Module) -> bool:
    return any(_LORA_KEY in name for name, _ in model.named_parameters())


def set_trainable(model: nn.Module, trainable: str) -> None:
    """Freeze all but the SLA projections ("sla"), the adapters ("lora") or both ("lora+sla");
    the error names what the model lacks."""
    if trainable not in ("sla", *LORA_TRAINABLE):
        raise ValueError(
            f"trainable must be one of {('sla', *LORA_TRAINABLE)} here, got {trainable!r}"
        )
    model.requires_grad_(False)
    found_sla = False
    for name, param in model.named_parameters():
        sla = "sla" in trainable.split("+") and SLA_PROJECTION in name
        found_sla |= sla
        param.requires_grad_(sla or (trainable != "sla" and _LORA_KEY in name))
    if "sla" in trainable.split("+") and not found_sla:
        raise ValueError(
            f"trainable {trainable!r} trains the SLA projections, but the model has none: "
            "use an SLA attention backend (e.g. --attention sla)"
        )


def split_state_dict(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """An adapted model's state dict as (the base model's, the adapter's in peft's file format:
    keys without the adapter name)."""
    base, adapter = {}, {}
    for key, value in state_dict.items():
        if _LORA_KEY in key:
            adapter[key.replace(f".{ADAPTER_NAME}.", ".")] = value
        else:
            base[key.replace(".base_layer.", ".")] = value
    return base, adapter


def save_adapter(
    model: nn.Module, adapter_state: Mapping[str, torch.Tensor], directory: str | os.PathLike
) -> Path:
    """Write `model`'s LoRA config and `adapter_state` (`split_state_dict`'s second part) as a
    peft adapter folder."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _config_of(model).save_pretrained(str(directory))
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in adapter_state.items()}
    save_file(tensors, str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    return directory


def _config_of(model: nn.Module):
    configs = getattr(model, "peft_config", None)
    if not configs or ADAPTER_NAME not in configs:
        raise ValueError(f"{type(model).__name__} has no LoRA adapter to save")
    return configs[ADAPTER_NAME]


def load_adapter(
    model: nn.Module, directory: str | os.PathLike, *, scale: float = 1.0
) -> nn.Module:
    """Inject the peft adapter in `directory` into `model` (in place) with its weights, its
    update multiplied by `scale`. An adapter made for another model (target names or shapes
    that do not match) is a ValueError naming the differences."""
    peft = _peft()
    directory = Path(directory)
    config_path, weights_path = directory / ADAPTER_CONFIG, directory / ADAPTER_WEIGHTS
    if not directory.is_dir():
        raise FileNotFoundError(f"LoRA adapter folder {directory} does not exist")
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: a LoRA adapter folder holds {ADAPTER_CONFIG} and "
                f"{ADAPTER_WEIGHTS}"
            )
    try:
        config = peft.LoraConfig.from_pretrained(str(directory))
    except (TypeError, ValueError, json.JSONDecodeError) as err:
        raise ValueError(f"{config_path} is not a peft LoRA config: {err}") from None
    from safetensors.torch import load_file

    weights = load_file(str(weights_path))
    _inject(model, config, f"targets of the adapter {directory}")
    _, expected = split_state_dict(model.state_dict())
    problems = []
    missing, unexpected = (
        sorted(expected.keys() - weights.keys()),
        sorted(weights.keys() - expected.keys()),
    )
    if missing:
        problems.append(f"missing {missing[:4]}{' …' if len(missing) > 4 else ''}")
    if unexpected:
        problems.append(f"unexpected {unexpected[:4]}{' …' if len(unexpected) > 4 else ''}")
    mismatched = [
        f"{k}: {tuple(weights[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(expected.keys() & weights.keys())
        if weights[k].shape != expected[k].shape
    ]
    if mismatched:
        problems.append(f"shape mismatches {mismatched[:4]}")
    if problems:
        raise ValueError(
            f"the LoRA adapter {directory} was made for another model: " + "; ".join(problems)
        )
    peft.set_peft_model_state_dict(model, weights, adapter_name=ADAPTER_NAME)
    for module in model.modules():
        if isinstance(module, peft.tuners.lora.LoraLayer):
            module.set_scale(ADAPTER_NAME, scale)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the adapters of `model` into its weights (peft's `merge`) and put the base layers
    back in place of the adapted ones: `model`, now plain, computing what the adapted one did."""
    peft = _peft()
    for name, module in list(model.named_modules()):
        if isinstance(module, peft.tuners.lora.LoraLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    return model


__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_DIR",
    "ADAPTER_WEIGHTS",
    "DEFAULT_TARGETS",
    "LORA_TRAINABLE",
    "TARGET_GROUPS",
    "add_lora",
    "check_lora_options",
    "has_lora",
    "load_adapter",
    "merge_lora",
    "parse_targets",
    "resolve_trainable",
    "save_adapter",
    "set_trainable",
    "split_state_dict",
]
