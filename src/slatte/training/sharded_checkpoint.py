"""Sharded training checkpoints through `torch.distributed.checkpoint` (DCP).

Each process writes only its own shards of the weights, the EMA and the optimizer state; the
files record the global shapes, so a checkpoint written by N processes loads on M processes
(FSDP over any number of GPUs, DDP, or one process without a process group). Optimizer state is
keyed by parameter name (not by position), which is what makes that resharding possible.

Layout, beside the unsharded checkpoints of `checkpoint.py` so that `latest_checkpoint`,
`slatte sample --checkpoint RUN` and the other readers of a run folder work unchanged:
    run/checkpoints/step_0001000/model/              EMA weights, gathered (config.json + safetensors)
    run/checkpoints/step_0001000/training_state.pt   step, grad scaler, train config, "sharded"
    run/checkpoints/step_0001000/sharded/            DCP: model, ema, optimizer (one file per rank)
    run/latest                                       the newest complete checkpoint's name
All processes write into a temporary folder; the first process renames it into place and only
then moves `latest`, so a crash at any moment leaves the previous checkpoint usable.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from .checkpoint import (
    STATE_FILE,
    checkpoint_paths,
    load_training_state,
    publish_checkpoint,
    start_checkpoint,
)
from .distributed import barrier

SHARDED_DIR = "sharded"


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _is_main() -> bool:
    return not _distributed() or dist.get_rank() == 0


@contextlib.contextmanager
def _single_process_is_intended() -> Iterator[None]:
    # DCP warns whenever it runs without a process group; here that is the intent (one process
    # reading or writing every shard), not a forgotten init_process_group.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def is_sharded_checkpoint(checkpoint: str | Path) -> bool:
    return (Path(checkpoint) / SHARDED_DIR).is_dir()


def full_model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole, unsharded state dict of a (possibly FSDP-sharded) model, on the CPU of the
    first process (an empty dict elsewhere). Collective: every process must call it."""
    if not _distributed():
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def save_sharded_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model: nn.Module,
    ema: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    write_model: Callable[[nn.Module, dict[str, torch.Tensor], Path], None],
    keep_last: int = 3,
) -> Path:
    """Write checkpoint `step` of a run, every process its shards. Collective.

    `model` / `ema` may be FSDP-sharded or plain (one process needs no process group); the
    first process writes the gathered EMA weights as the checkpoint's model directory with
    ``write_model(ema, whole_state_dict, directory)`` (the task's format). `state` holds small
    picklable extras (grad scaler, train config), written by the first process.
    Returns the checkpoint folder.
    """
    tmp = start_checkpoint(run_dir, step) if _is_main() else checkpoint_paths(run_dir, step)[0]
    barrier()  # the folder exists before anyone writes into it

    model_sd, optim_sd = get_state_dict(model, optimizer)
    with _single_process_is_intended():
        dcp.save(
            {"model": model_sd, "optimizer": optim_sd, "ema": get_model_state_dict(ema)},
            checkpoint_id=tmp / SHARDED_DIR,
            no_dist=not _distributed(),
        )
    ema_full = full_model_state_dict(ema)
    if _is_main():
        write_model(ema, ema_full, tmp / "model")
        torch.save({**state, "step": step, "sharded": True}, tmp / STATE_FILE)
        publish_checkpoint(run_dir, step, keep_last=keep_last)
    barrier()  # nobody moves on (or resumes) before the checkpoint is complete
    return checkpoint_paths(run_dir, step)[1]


def load_sharded_checkpoint(
    checkpoint: str | Path,
    *,
    model: nn.Module,
    ema: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> dict[str, Any]:
    """Load a sharded checkpoint into `model`, `ema` and `optimizer`, whatever the number of
    processes that wrote it and however they are sharded now. Collective when distributed.

    Returns the small training state (step, grad scaler, train config).
    """
    checkpoint = Path(checkpoint)
    if not is_sharded_checkpoint(checkpoint):
        raise ValueError(
            f"{checkpoint} is not a sharded checkpoint (no {SHARDED_DIR}/ folder); it was written "
            "by a DDP / single-process run: resume it with --parallel ddp"
        )
    if optimizer is None:
        target: dict[str, Any] = {"model": get_model_state_dict(model)}
    else:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        target = {"model": model_sd, "optimizer": optim_sd}
    target["ema"] = get_model_state_dict(ema)
    # DCP fills the tensors of `target` in place, each process reading the parts it holds.
    with _single_process_is_intended():
        dcp.load(target, checkpoint_id=checkpoint / SHARDED_DIR, no_dist=not _distributed())
    if optimizer is None:
        set_model_state_dict(model, target["model"])
    else:
        set_state_dict(
            model,
            optimizer,
            model_state_dict=target["model"],
            optim_state_dict=target["optimizer"],
        )
    set_model_state_dict(ema, target["ema"])
    return load_training_state(checkpoint)


__all__ = [
    "full_model_state_dict",
    "is_sharded_checkpoint",
    "load_sharded_checkpoint",
    "save_sharded_checkpoint",
]
