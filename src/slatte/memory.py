"""Memory a run needs, estimated from shapes before anything is allocated, against what the
device has: a run that cannot fit is refused at once with the estimate, instead of growing until
the machine swaps or the process is killed.

The estimates are lower bounds (what is certainly held), so a refused run would not have fitted.
"""

from __future__ import annotations

import os

import torch

from .models.configs import VideoDiTConfig

_FLOAT_BYTES = 4
# Per token and block, a transformer block keeps at least this many hidden-size vectors for
# backward (the input, two norms, q/k/v, the attention output, the MLP's input); checkpointed
# blocks keep only their input.
_KEPT_PER_BLOCK = 8


def device_memory(device: torch.device) -> int | None:
    """Bytes the device holds: free memory on a CUDA device, physical memory on the host
    (None where the platform does not say)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def training_bytes(config: VideoDiTConfig, samples: int, *, grad_checkpointing: bool) -> int:
    """A lower bound of the activations one training step of `samples` clips keeps."""
    tokens = config.num_frames * (config.input_size // config.patch_size) ** 2
    kept = 1 if grad_checkpointing else _KEPT_PER_BLOCK
    return samples * config.depth * tokens * config.hidden_size * kept * _FLOAT_BYTES


def long_video_bytes(config: VideoDiTConfig, samples: int, frames: int, windows: int) -> int:
    """The bytes one batch of `samples` long videos of `frames` frames keeps on the device while
    it is sampled in `windows` windows: every window's frames and the assembled video, in the
    model's space."""
    pixels = config.in_channels * config.input_size**2
    return samples * (windows * config.num_frames + frames) * pixels * _FLOAT_BYTES


def output_bytes(
    samples: int, frames: int, frame_shape: tuple[int, int, int], formats: tuple[str, ...]
) -> int:
    """The host bytes `samples` decoded videos of `frames` frames of `frame_shape` (C, H, W)
    hold at their peak: gathered and concatenated (two float copies), or one copy while they are
    written in `formats`, beside the uint8 RGB frames being written (two copies, the frames and
    the writer's: mp4's padded frames, gif's images; of every video at once for the png grid,
    the frames and the grid)."""
    channels, height, width = frame_shape
    decoded = samples * frames * channels * height * width * _FLOAT_BYTES
    if not formats:
        return 2 * decoded
    rgb = 2 * frames * height * width * 3
    return max(2 * decoded, decoded + rgb * (samples if "png" in formats else 1))


def check_fits(needed: int, device: torch.device, what: str, hint: str) -> None:
    """Raise a ValueError with the estimate when `needed` bytes exceed the device's memory."""
    have = device_memory(device)
    if have is not None and needed > have:
        raise ValueError(
            f"{what} needs at least {_gib(needed)} of memory, more than the {_gib(have)} "
            f"{'free on' if device.type == 'cuda' else 'of'} {device}; {hint}"
        )


def _gib(size: int) -> str:
    return f"{size / 2**30:,.1f} GiB"
