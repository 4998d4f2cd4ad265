"""Retrain the shipped evaluation networks (CPU, a few minutes each), reproducibly.

    python -m slatte.eval.train classifier --out src/slatte/eval/weights/classifier
    python -m slatte.eval.train video_encoder --out src/slatte/eval/weights/video_encoder

Both learn from ``MovingDigits("train")`` clips in the default geometry (16 frames, 32 px) with
digit sizes from 10 to 20 px, so that a 64-px video resized to 32 px still reads, plus noise and
contrast augmentation, so that imperfect samples are read as their digits rather than as noise.
The test scores are measured on ``MovingDigits("test")`` (source images the training never saw)
in the default geometry and written into the JSON beside the weights.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from slatte.data import MovingDigits

from .classifier import FrameClassifier, digit_accuracy
from .video_encoder import NUM_DIRECTIONS, VideoEncoder
from .weights_io import save_net

TRAIN_DIGIT_SIZES = (10, 12, 14, 16, 16, 18, 20)
TRAIN_SPEED = (0.5, 4.0)


def make_clips(
    split: str, count: int, *, seed: int, digit_sizes=(16,), speed=(1.0, 3.0)
) -> dict[str, torch.Tensor]:
    """``count`` clips (N, 16, 1, 32, 32), their labels, initial direction bins and speeds."""
    videos, labels, directions, speeds = [], [], [], []
    per_size = math.ceil(count / len(digit_sizes))
    for k, digit_size in enumerate(digit_sizes):
        data = MovingDigits(
            split, digit_size=digit_size, speed=speed, length=per_size, seed=seed * 100 + k
        )
        for i in range(per_size):
            item, traj = data[i], data.trajectory(i)
            vy, vx = traj.velocities[0, 0]
            angle = math.atan2(vy, vx) % (2 * math.pi)
            videos.append(item["video"])
            labels.append(item["label"])
            directions.append(int(angle / (2 * math.pi) * NUM_DIRECTIONS) % NUM_DIRECTIONS)
            speeds.append(math.hypot(vy, vx))
    order = torch.randperm(len(videos), generator=torch.Generator().manual_seed(seed))[:count]
    return {
        "video": torch.stack(videos)[order],
        "label": torch.tensor(labels)[order],
        "direction": torch.tensor(directions)[order],
        "speed": torch.tensor(speeds, dtype=torch.float32)[order],
    }


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random contrast and Gaussian noise, one draw per clip/frame along dim 0."""
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    contrast = torch.empty(shape).uniform_(0.6, 1.0, generator=generator)
    sigma = torch.empty(shape).uniform_(0.0, 0.25, generator=generator)
    noise = torch.randn(x.shape, generator=generator) * sigma
    return ((x + 1.0) * contrast - 1.0 + noise).clamp(-1.0, 1.0)


def _lr(step: int, steps: int, base: float) -> float:
    warmup = max(steps // 20, 1)
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))


def train_classifier(args: argparse.Namespace) -> dict:
    gen = torch.Generator().manual_seed(args.seed)
    data = make_clips("train", args.clips, seed=args.seed, digit_sizes=TRAIN_DIGIT_SIZES)
    frames = data["video"].flatten(0, 1)  # (N·16, 1, 32, 32)
    frame_labels = data["label"].repeat_interleave(data["video"].shape[1])
    net = FrameClassifier(width=args.width)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    net.train()
    for step in range(args.steps):
        idx = torch.randint(len(frames), (args.batch_size,), generator=gen)
        for group in opt.param_groups:
            group["lr"] = _lr(step, args.steps, args.lr)
        loss = F.cross_entropy(net(augment(frames[idx], gen)), frame_labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}", flush=True)
    net.eval()
    test = make_clips("test", args.test_clips, seed=args.seed + 1)
    scores = digit_accuracy(test["video"], test["label"], classifier=net)
    print(f"test: {scores}", flush=True)
    return {
        "arch": {"width": args.width, "num_classes": 10},
        "final_train_loss": loss.item(),
        "test": {
            "frame_accuracy": scores.frame_accuracy,
            "video_accuracy": scores.video_accuracy,
            "video_accuracy_strict": scores.video_accuracy_strict,
            "data": f"MovingDigits('test', 16 frames, 32 px, digit_size 16), {args.test_clips} clips",
        },
    }, net


def train_video_encoder(args: argparse.Namespace) -> dict:
    gen = torch.Generator().manual_seed(args.seed)
    data = make_clips(
        "train", args.clips, seed=args.seed, digit_sizes=TRAIN_DIGIT_SIZES, speed=TRAIN_SPEED
    )
    clips = data["video"].transpose(1, 2)  # (N, 1, 16, 32, 32)
    net = VideoEncoder(width=args.width, feature_dim=args.feature_dim)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    net.train()
    for step in range(args.steps):
        idx = torch.randint(len(clips), (args.batch_size,), generator=gen)
        for group in opt.param_groups:
            group["lr"] = _lr(step, args.steps, args.lr)
        cls, direction, speed = net(augment(clips[idx], gen))
        loss = (
            F.cross_entropy(cls, data["label"][idx])
            + F.cross_entropy(direction, data["direction"][idx])
            + F.smooth_l1_loss(speed, data["speed"][idx])
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}", flush=True)
    net.eval()
    test = make_clips("test", args.test_clips, seed=args.seed + 1, speed=TRAIN_SPEED)
    with torch.no_grad():
        cls, direction, speed = net(test["video"].transpose(1, 2))
    scores = {
        "class_accuracy": (cls.argmax(-1) == test["label"]).float().mean().item(),
        "direction_accuracy": (direction.argmax(-1) == test["direction"]).float().mean().item(),
        "speed_mae": (speed - test["speed"]).abs().mean().item(),
        "data": f"MovingDigits('test', 16 frames, 32 px, digit_size 16, speed {TRAIN_SPEED}), "
        f"{args.test_clips} clips",
    }
    print(f"test: {scores}", flush=True)
    arch = {"width": args.width, "feature_dim": args.feature_dim, "num_classes": 10}
    return {"arch": arch, "final_train_loss": loss.item(), "test": scores}, net


TRAINERS = {"classifier": train_classifier, "video_encoder": train_video_encoder}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slatte.eval.train", description=__doc__)
    parser.add_argument("net", choices=tuple(TRAINERS))
    parser.add_argument("--out", required=True, help="file stem: writes OUT.safetensors + OUT.json")
    parser.add_argument("--clips", type=int, default=6000, help="training clips")
    parser.add_argument("--test-clips", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--feature-dim", type=int, default=64, help="video encoder only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    meta, net = TRAINERS[args.net](args)
    meta["training"] = {
        "command": shlex.join(["python", "-m", "slatte.eval.train", *(argv or sys.argv[1:])]),
        "seconds": round(time.time() - start, 1),
        "device": "cpu",
        "torch": torch.__version__,
    }
    path = save_net(net, args.out, meta)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
