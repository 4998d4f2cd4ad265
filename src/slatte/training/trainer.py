"""The training loop: AdamW, EMA, mixed precision, checkpoints, metrics, exact resume.

What is trained, on what data and towards which objective is a task's to say (`task.py`):
`VideoDiTTask` for `slatte train`, `integrations.finetune.DiffusersFinetuneTask` for
`slatte finetune`; everything below holds for both.

Exact resume holds by construction: the batch of step s (which dataset indices, which
timesteps, which noise, which labels are dropped) is a pure function of (seed, step, position in
the global batch), and everything that carries over between steps (weights, EMA, optimizer, grad
scaler) is checkpointed. Since no random number depends on the process, the same global batch
gives the same training on 1 process or N (DDP or FSDP), up to float rounding.

Several processes (torchrun): DDP replicates the model; FSDP2 shards it (`fsdp.py`) and then
checkpoints are sharded (`sharded_checkpoint.py`) and load on any number of processes. With
sequence parallelism, groups of processes share their samples and split the frames
(`ops.sequence_parallel`); each computes the loss on its frames, and averaging the gradients
over all processes (what DDP and FSDP do) is then exactly the gradient of the global loss.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from ..models import load_model
from ..parallel import sequence_shard
from .checkpoint import (
    latest_checkpoint,
    load_training_state,
    remove_stale_temporaries,
    save_checkpoint,
)
from .config import TrainConfig
from .distributed import (
    DistInfo,
    barrier,
    close_distributed,
    init_distributed,
    mean_over_processes,
    parallel_layout,
)
from .ema import make_ema, update_ema
from .interrupt import DeferredInterrupt
from .plots import plot_loss_curve
from .run_folder import CONFIG_FILE, METRICS_FILE, prepare_run_folder, trim_metrics
from .sharded_checkpoint import (
    full_model_state_dict,
    is_sharded_checkpoint,
    load_sharded_checkpoint,
    save_sharded_checkpoint,
)
from .task import TrainTask
from .video_task import VideoDiTTask

IMAGE_STREAM_OFFSET = 1 << 24  # global positions of image samples start here


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became non-finite); the message says what to do."""


class TrainingInterrupted(TrainingError):
    """Ctrl-C or SIGTERM stopped training; the message says which checkpoint holds the run."""


def step_seed(seed: int, step: int, index: int) -> int:
    """A distinct, reproducible seed for each (run seed, step, position in the global batch)."""
    return (seed * 1_000_003 + step * 8_191 + index * 131_071) % (2**63 - 1)


class StepBatchSampler(Sampler[list[int]]):
    """Yields this rank's share of the global batch of steps start, start+1, … (forever).

    Global positions s·B … (s+1)·B − 1 index an endless sequence of epoch permutations, each
    drawn from (seed, epoch), so the data of any step is known without replaying earlier steps.
    """

    def __init__(self, length: int, global_batch: int, dist_info: DistInfo, seed: int, start: int):
        if global_batch % dist_info.world_size:
            raise ValueError(
                f"batch_size {global_batch} must be divisible by the number of data-parallel "
                f"processes ({dist_info.world_size})"
            )
        self.length, self.global_batch, self.info = length, global_batch, dist_info
        self.seed, self.start = seed, start
        self._perm_epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, self.length)
        if epoch != self._perm_epoch:
            gen = torch.Generator().manual_seed(self.seed * 7_919 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.length, generator=gen), epoch
        return int(self._perm[offset])

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self.global_batch // self.info.world_size
        step = self.start
        while True:
            first = step * self.global_batch + self.info.rank * per_rank
            yield [self._index(p) for p in range(first, first + per_rank)]
            step += 1


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay with a warm-up, so short runs are not dominated by the random initialisation."""
    return min(decay, (1.0 + step) / (10.0 + step))


class Trainer:
    """Trains the model of the task that `task(cfg, device)` builds (default: slatte's video
    DiT as `cfg` describes it). `resume`: continue the run in `cfg.out_dir` from its latest
    checkpoint. Otherwise the folder must be empty or new, unless `overwrite`, which moves a
    previous run aside."""

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        resume: bool = False,
        overwrite: bool = False,
        task: Callable[[TrainConfig, torch.device], TrainTask] = VideoDiTTask,
    ):
        self.cfg = cfg
        self.run_dir = Path(cfg.out_dir)
        self.info, self.device = init_distributed(cfg.device)
        if self.info.is_main:
            moved = prepare_run_folder(self.run_dir, resume=resume, overwrite=overwrite)
            if moved:
                print(moved, file=sys.stderr)
        barrier()
        self.noise_generator = torch.Generator(device=self.device)
        if cfg.precision != "fp32" and self.device.type != "cuda":
            raise ValueError(
                f"precision {cfg.precision!r} needs a CUDA device (mixed precision runs under "
                f"autocast on CUDA only); on {self.device.type!r} use --precision fp32"
            )
        # Which samples this process trains on, and with whom it splits their frames.
        self.layout = parallel_layout(self.info, cfg.sequence_parallel)
        self.sharded = cfg.parallel == "fsdp" and self.info.enabled
        torch.manual_seed(cfg.seed)  # the same initial weights in every process and every run
        self.task = task(cfg, self.device)
        # FSDP runs always write sharded checkpoints (also on one process, where the model
        # itself stays whole), so a run can move between any numbers of processes; so do tasks
        # whose model directory is not slatte's (`checkpoint.py` writes slatte's).
        self.sharded_checkpoints = cfg.parallel == "fsdp" or not self.task.whole_checkpoints
        self.model, self.dataset, self.objective = (
            self.task.model,
            self.task.dataset,
            self.task.objective,
        )
        self.ema = make_ema(self.model)
        if self.sharded:
            # The EMA is sharded like the model, so its update touches local shards only.
            self.task.shard(self.model, cfg.precision)
            self.task.shard(self.ema, "fp32")
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.parameter_counts = {
            "trainable_parameters": sum(p.numel() for p in trainable),
            "total_parameters": sum(p.numel() for p in self.model.parameters()),
        }
        self.optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16")
        self.step = 0
        if resume:
            self._resume()
        self.ddp_model: nn.Module = (
            DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
            if self.info.enabled and not self.sharded
            else self.model
        )
        self.forward_model = torch.compile(self.ddp_model) if cfg.compile else self.ddp_model

    # ------------------------------------------------------------------ state
    def _resume(self) -> None:
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {self.run_dir} (no 'latest' file)")
        if is_sharded_checkpoint(ckpt):
            # Written by FSDP on any number of processes; loads sharded or whole.
            state = load_sharded_checkpoint(
                ckpt, model=self.model, ema=self.ema, optimizer=self.optimizer
            )
        elif self.sharded_checkpoints:
            raise ValueError(
                f"{ckpt} was written without FSDP (whole weights, optimizer state by position): "
                "resume it with --parallel ddp"
            )
        else:
            state = load_training_state(ckpt)
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(load_model(ckpt / "model").state_dict())
            self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        if self.step >= self.cfg.steps:
            raise ValueError(
                f"nothing to do: the run in {self.run_dir} is at step {self.step} and its target "
                f"is {self.cfg.steps} steps; give a larger --steps to train on"
            )
        if self.info.is_main:  # what a killed run left: half-written checkpoints, replayed steps
            remove_stale_temporaries(self.run_dir)
            trim_metrics(self.run_dir, self.step)

    def _save(self) -> Path | None:
        """Write a checkpoint. Called by every process: FSDP writes shards from all of them; DDP
        writes from the first process only (returning None elsewhere)."""
        state = {
            "scaler": self.scaler.state_dict(),
            "train_config": json.dumps(self.cfg.for_run_folder(self.run_dir)),
        }
        if self.sharded_checkpoints:
            return save_sharded_checkpoint(
                self.run_dir,
                self.step,
                model=self.model,
                ema=self.ema,
                optimizer=self.optimizer,
                state=state,
                write_model=self.task.save_model,
                keep_last=self.cfg.keep_checkpoints,
            )
        if not self.info.is_main:
            return None
        state.update(model=self.model.state_dict(), optimizer=self.optimizer.state_dict())
        return save_checkpoint(
            self.run_dir, self.step, ema=self.ema, state=state, keep_last=self.cfg.keep_checkpoints
        )

    def _whole_ema(self) -> nn.Module | None:
        """The EMA model with whole weights on the first process (None elsewhere), for sampling.
        Collective under FSDP, where the EMA is sharded."""
        if not self.sharded:
            return self.ema if self.info.is_main else None
        weights = full_model_state_dict(self.ema)
        if not self.info.is_main:
            return None
        return self.task.whole_model(weights).to(self.device).eval()

    # ------------------------------------------------------------------ one step
    def _autocast(self):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.cfg.precision)
        return torch.autocast("cuda", dtype=dtype, enabled=dtype is not None)

    def _lr_at(self, step: int) -> float:
        if self.cfg.warmup_steps == 0:
            return self.cfg.lr
        return self.cfg.lr * min(1.0, (step + 1) / self.cfg.warmup_steps)

    def _sample_randomness(
        self, step: int, shape: torch.Size, stream: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Noise level (b,) (the objective's), noise (b, ...) and label-dropout flag (b,) of this
        process's samples, each drawn from a generator seeded by (seed, step, the sample's
        global position); `stream` 1 (the joint-training images) draws from positions no video
        sample uses."""
        first = self.layout.data.rank * shape[0] + stream * IMAGE_STREAM_OFFSET
        ts, noises, drops = [], [], []
        for i in range(shape[0]):
            seed = step_seed(self.cfg.seed, step, first + i)
            gen = torch.Generator().manual_seed(seed)
            ts.append(self.objective.draw_t(gen))
            drops.append(torch.rand(1, generator=gen) < self.task.label_dropout)
            # The noise is drawn on the training device: a per-sample CPU draw and copy cost
            # ~21 ms per step (batch 256, one core) on the host that feeds the GPU.
            self.noise_generator.manual_seed(seed)
            noises.append(
                torch.randn(shape[1:], generator=self.noise_generator, device=self.device)
            )
        return torch.cat(ts), torch.stack(noises), torch.cat(drops)

    def _losses(self, batch: Any, *, stream: int) -> dict[str, torch.Tensor]:
        """Per-sample losses of the task's objective on a batch at the current step."""
        x0, cond = self.task.inputs(batch, self.device)
        t, noise, drop = self._sample_randomness(self.step, x0.shape, stream)
        t, noise = t.to(self.device), noise.to(self.device, x0.dtype)
        model_fn = self.task.model_fn(self.forward_model, cond, drop)
        teacher_fn = self.task.teacher_fn(cond) if self.objective.needs_teacher else None
        group = self.layout.sequence_group if stream == 0 else None
        shard = sequence_shard(group, full_sequence=False)
        # Only a task whose model splits frames over a group gets one (`VideoDiTTask`).
        split = self.model.sequence_parallel(shard) if shard is not None else nullcontext()
        with self._autocast(), split:
            if shard is not None:  # this process's frames; the loss is computed on them
                x0, noise = shard.split_frames(x0), shard.split_frames(noise)
            return self.objective.losses(model_fn, x0, t, noise, teacher_fn=teacher_fn)

    def _single_frames(self, videos: torch.Tensor) -> torch.Tensor:
        """One frame of each clip, (K, F, ...) -> (K, 1, ...), chosen by (seed, step, position)."""
        first = self.layout.data.rank * videos.shape[0]
        picks = []
        for i in range(videos.shape[0]):
            position = 2 * IMAGE_STREAM_OFFSET + first + i  # apart from the noise streams
            gen = torch.Generator().manual_seed(step_seed(self.cfg.seed, self.step, position))
            picks.append(int(torch.randint(0, videos.shape[1], (1,), generator=gen)))
        return videos[torch.arange(videos.shape[0]), picks].unsqueeze(1)

    def train_step(self, batch: Any, images: dict[str, Any] | None = None) -> dict[str, float]:
        """One optimisation step on a batch of the task's data (and, for joint training, of
        clips to take single frames from)."""
        step = self.step
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr_at(step)
        losses = self._losses(batch, stream=0)
        if images is not None:
            frames = {"video": self._single_frames(images["video"]), "label": images["label"]}
            image_losses = self._losses(frames, stream=1)
            losses = {k: torch.cat([losses[k], image_losses[k]]) for k in losses}
        # The objective's per-sample figures ("loss" and its parts, e.g. "mse" and "vb").
        names = ["loss", *sorted(k for k in losses if k != "loss")]
        means = [losses[k].float().mean() for k in names]
        loss = means[0]
        # Logged figures are means over the global batch (and all frames), as on one process.
        figures = dict(
            zip(
                names,
                mean_over_processes(
                    torch.stack([m.detach() for m in means]).tolist(),
                    self.device,  # one device sync
                ),
                strict=True,
            )
        )
        global_loss = figures["loss"]
        if not math.isfinite(global_loss):
            last = latest_checkpoint(self.run_dir)
            raise TrainingError(
                f"the training loss became non-finite ({global_loss}) at step {step}; nothing was "
                f"saved after it. Last good checkpoint: {last or 'none'}. Try a lower --lr, "
                "--precision bf16 instead of fp16, or a smaller --grad-clip."
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        )
        if isinstance(grad_norm, DTensor):  # FSDP: the norm over all shards
            grad_norm = grad_norm.full_tensor()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        update_ema(self.ema, self.model, ema_decay_at(step, self.cfg.ema_decay))
        self.step += 1
        return {
            **figures,
            "grad_norm": float(grad_norm),
            "lr": self._lr_at(step),
        }

    # ------------------------------------------------------------------ loop
    def _loader(self, *, images: bool = False) -> DataLoader:
        """Clips of each step; with `images`, the clips that joint training takes frames from
        (another order of the same data)."""
        batch = self.cfg.image_batch if images else self.cfg.batch_size
        seed = self.cfg.seed + 1 if images else self.cfg.seed
        sampler = StepBatchSampler(len(self.dataset), batch, self.layout.data, seed, self.step)
        return DataLoader(
            self.dataset,
            batch_sampler=sampler,
            num_workers=self.cfg.num_workers,
            collate_fn=self.task.collate_fn,
            pin_memory=self.device.type == "cuda",
        )

    def _sample(self) -> list[Path]:
        """Sample from the EMA on the first process (every process must call this)."""
        if self.task.preview is None:
            return []
        ema = self._whole_ema()
        if ema is None:
            return []
        return self.task.preview(ema, self.run_dir / "samples" / f"step_{self.step:07d}")

    def fit(self) -> dict[str, Any]:
        cfg, main = self.cfg, self.info.is_main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            config_text = json.dumps(cfg.for_run_folder(self.run_dir), indent=2)
            (self.run_dir / CONFIG_FILE).write_text(config_text)
        metrics_path = self.run_dir / METRICS_FILE
        writer = _tensorboard_writer(self.run_dir) if main else None
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not main, desc="train", unit="step")
        if main:
            counts = self.parameter_counts
            print(
                f"trainable parameters: {counts['trainable_parameters']:,} of "
                f"{counts['total_parameters']:,}; peak memory: "
                + ("in metrics.jsonl" if self.device.type == "cuda" else "n/a on the cpu"),
                file=sys.stderr,
            )
        self.task.train_mode()
        window_start, window_clips = time.perf_counter(), 0
        last: dict[str, float] = {}
        samples: list[Path] = []
        loader = iter(self._loader())
        image_loader = iter(self._loader(images=True)) if cfg.image_batch else None
        interrupt = DeferredInterrupt()
        saved_step = self.step
        with interrupt:
            while self.step < cfg.steps:
                last = self.train_step(
                    next(loader), next(image_loader) if image_loader is not None else None
                )
                window_clips += cfg.batch_size
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    elapsed = time.perf_counter() - window_start
                    last["clips_per_s"] = window_clips / max(elapsed, 1e-9)
                    if self.device.type == "cuda":
                        last["peak_memory_gib"] = self._peak_memory()
                    window_start, window_clips = time.perf_counter(), 0
                    bar.set_postfix(
                        loss=f"{last['loss']:.4f}", clips_s=f"{last['clips_per_s']:.1f}"
                    )
                    if main:
                        with metrics_path.open("a") as f:
                            f.write(json.dumps({"step": self.step, **last}) + "\n")
                        if writer is not None:
                            for key, value in last.items():
                                writer.add_scalar(f"train/{key}", value, self.step)
                at_end = self.step == cfg.steps
                if self.step % cfg.ckpt_every == 0 or at_end:
                    self._save()
                    saved_step = self.step
                    if main and metrics_path.exists():  # nothing logged yet when log_every > step
                        plot_loss_curve(metrics_path, self.run_dir / "loss_curve.png")
                if at_end or (cfg.sample_every and self.step % cfg.sample_every == 0):
                    samples = self._sample()
                # Every process stops at the same step (the save is collective): any signalled.
                stop = mean_over_processes([float(interrupt.requested)], self.device)[0] > 0
                if stop and not at_end:
                    bar.close()
                    raise TrainingInterrupted(self._interrupted(saved_step))
        bar.close()
        if writer is not None:
            writer.close()
        barrier()  # the others wait while the first process samples, then all leave together
        close_distributed()
        return {
            "step": self.step,
            "last": last,
            "samples": [str(p) for p in samples],
            "checkpoint": str(latest_checkpoint(self.run_dir)) if main else None,
            **self.parameter_counts,
            "peak_memory_gib": self._peak_memory() if self.device.type == "cuda" else "n/a (cpu)",
        }

    def _peak_memory(self) -> float:
        """GiB of CUDA memory this process's tensors have held at most."""
        return torch.cuda.max_memory_allocated(self.device) / 2**30

    def _interrupted(self, saved_step: int) -> str:
        """Save the run at the current step after Ctrl-C or SIGTERM (a step boundary: the state
        is whole) and say what holds it."""
        if self.step > saved_step:
            self._save()
            saved = latest_checkpoint(self.run_dir)
            return (
                f"interrupted at step {self.step}; saved checkpoint {saved} (--resume continues it)"
            )
        last = latest_checkpoint(self.run_dir)
        if last is None:
            return f"interrupted at step {self.step}; nothing to save, no checkpoint written"
        return (
            f"interrupted at step {self.step}; its checkpoint {last} holds the run "
            "(--resume continues it)"
        )


def _tensorboard_writer(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # TensorBoard is optional: slatte[tensorboard]
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) training as `cfg` says; returns the final step, last metrics, file paths."""
    return Trainer(cfg, resume=resume, overwrite=overwrite).fit()
