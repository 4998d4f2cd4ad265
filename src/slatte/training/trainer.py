"""The training loop: diffusion loss, AdamW, EMA, mixed precision, checkpoints, exact resume.

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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from ..data import CachedLatents, MovingDigits, VideoFolder
from ..diffusion import create_diffusion
from ..memory import check_fits, training_bytes
from ..models import VideoDiT, load_model, model_config
from ..ops.sequence_parallel import check_heads, sequence_parallel
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
from .fsdp import shard_model
from .interrupt import DeferredInterrupt
from .plots import plot_loss_curve
from .run_folder import CONFIG_FILE, METRICS_FILE, prepare_run_folder, trim_metrics
from .sharded_checkpoint import (
    full_model_state_dict,
    is_sharded_checkpoint,
    load_sharded_checkpoint,
    save_sharded_checkpoint,
)

IMAGE_STREAM_OFFSET = 1 << 24  # global positions of image samples start here


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became non-finite); the message says what to do."""


class TrainingInterrupted(TrainingError):
    """Ctrl-C stopped training; the message says which checkpoint holds the run."""


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


def build_dataset(cfg: TrainConfig) -> tuple[Dataset, int]:
    """The training dataset and its number of classes (0 when unlabelled)."""
    if cfg.data == "digits":
        data = MovingDigits(
            "train",
            num_frames=cfg.num_frames,
            size=cfg.size,
            digit_size=cfg.size // 2,
            num_digits=cfg.num_digits,
            seed=cfg.seed,
        )
        return data, (MovingDigits.num_classes if cfg.num_digits == 1 else 0)
    data = VideoFolder(
        cfg.data,
        num_frames=cfg.num_frames,
        size=cfg.size,
        frame_interval=cfg.frame_interval,
        channels=cfg.channels,
    )
    data.check_files()  # hours into a run is too late to find a broken video
    return data, data.num_classes


def build_codec(cfg: TrainConfig, device: torch.device):
    from ..data import PixelSpace, VAELatents

    if cfg.vae is None:
        return PixelSpace()
    return VAELatents(cfg.vae, device=device)


def build_model(
    cfg: TrainConfig, *, in_channels: int, input_size: int, num_classes: int
) -> VideoDiT:
    if cfg.init_from is not None:
        overrides = dict(cfg.model_overrides)
        return load_model(
            cfg.init_from,
            attention_backend=overrides.pop("attention_backend", None),
            sla=overrides.pop("sla", None),
        )
    return VideoDiT(
        model_config(
            cfg.model,
            input_size=input_size,
            num_frames=cfg.num_frames,
            in_channels=in_channels,
            num_classes=num_classes,
            **cfg.model_overrides,
        )
    )


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay with a warm-up, so short runs are not dominated by the random initialisation."""
    return min(decay, (1.0 + step) / (10.0 + step))


class Trainer:
    """`resume`: continue the run in `cfg.out_dir` from its latest checkpoint. Otherwise the
    folder must be empty or new, unless `overwrite`, which moves a previous run aside."""

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False):
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
        # FSDP runs always write sharded checkpoints (also on one process, where the model
        # itself stays whole), so a run can move between any numbers of processes.
        self.sharded = cfg.parallel == "fsdp" and self.info.enabled
        self.sharded_checkpoints = cfg.parallel == "fsdp"
        self.dataset, num_classes = build_dataset(cfg)
        self.codec = build_codec(cfg, self.device)
        if cfg.latent_cache is not None:  # items are latents from here on: no encode per step
            self.dataset = CachedLatents(self.dataset, self.codec, cfg.latent_cache)
        torch.manual_seed(cfg.seed)  # the same initial weights in every process and every run
        self.model = build_model(
            cfg,
            in_channels=self.codec.channels(cfg.channels),
            input_size=cfg.size // self.codec.downsample,
            num_classes=num_classes,
        ).to(self.device)
        self.model.enable_gradient_checkpointing(cfg.grad_checkpointing)
        check_heads(self.model.config.num_heads, self.layout.sequence_size)  # fail before step 1
        check_fits(
            training_bytes(
                self.model.config,
                max(1, cfg.batch_size // self.info.world_size),
                grad_checkpointing=cfg.grad_checkpointing,
            ),
            self.device,
            f"training with batch size {cfg.batch_size}",
            "lower --batch-size (or --frames / --size), or add --grad-checkpointing",
        )
        self.ema = make_ema(self.model)
        if self.sharded:
            # The EMA is sharded like the model, so its update touches local shards only.
            shard_model(self.model, precision=cfg.precision)
            shard_model(self.ema)
        self.diffusion = create_diffusion(learn_sigma=self.model.config.learn_sigma)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
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
            "train_config": json.dumps(self.cfg.for_run_folder()),
        }
        if self.sharded_checkpoints:
            return save_sharded_checkpoint(
                self.run_dir,
                self.step,
                model=self.model,
                ema=self.ema,
                optimizer=self.optimizer,
                state=state,
                keep_last=self.cfg.keep_checkpoints,
            )
        if not self.info.is_main:
            return None
        state.update(model=self.model.state_dict(), optimizer=self.optimizer.state_dict())
        return save_checkpoint(
            self.run_dir, self.step, ema=self.ema, state=state, keep_last=self.cfg.keep_checkpoints
        )

    def _whole_ema(self) -> VideoDiT | None:
        """The EMA model with whole weights on the first process (None elsewhere), for sampling.
        Collective under FSDP, where the EMA is sharded."""
        if not self.sharded:
            return self.ema if self.info.is_main else None
        weights = full_model_state_dict(self.ema)
        if not self.info.is_main:
            return None
        whole = VideoDiT(self.ema.config).to(self.device)
        whole.load_state_dict(weights)
        return whole.eval()

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
        """Timestep (b,), noise (b, ...) and label-dropout flag (b,) of this process's samples,
        each drawn from a generator seeded by (seed, step, the sample's global position);
        `stream` 1 (the joint-training images) draws from positions no video sample uses."""
        first = self.layout.data.rank * shape[0] + stream * IMAGE_STREAM_OFFSET
        drop_prob = self.model.config.class_dropout_prob
        ts, noises, drops = [], [], []
        for i in range(shape[0]):
            seed = step_seed(self.cfg.seed, step, first + i)
            gen = torch.Generator().manual_seed(seed)
            ts.append(torch.randint(0, self.diffusion.num_timesteps, (1,), generator=gen))
            drops.append(torch.rand(1, generator=gen) < drop_prob)
            # The noise is drawn on the training device: a per-sample CPU draw and copy cost
            # ~21 ms per step (batch 256, one core) on the host that feeds the GPU.
            self.noise_generator.manual_seed(seed)
            noises.append(
                torch.randn(shape[1:], generator=self.noise_generator, device=self.device)
            )
        return torch.cat(ts), torch.stack(noises), torch.cat(drops)

    def _losses(
        self, videos: torch.Tensor, labels: torch.Tensor, *, stream: int
    ) -> dict[str, torch.Tensor]:
        """Per-sample diffusion losses of a batch of clips (in data space) at the current step."""
        x0 = videos.to(self.device)
        if self.cfg.latent_cache is None:
            with torch.no_grad():
                x0 = self.codec.encode(x0)
        labels = labels.to(self.device)
        has_labels = self.model.config.num_classes > 0
        t, noise, drop = self._sample_randomness(self.step, x0.shape, stream)
        t, noise = t.to(self.device), noise.to(self.device, x0.dtype)
        if has_labels:  # classifier-free guidance training: the null class replaces dropped labels
            null = torch.full_like(labels, self.model.config.num_classes)
            labels = torch.where(drop.to(self.device), null, labels)

        def model_fn(x_t: torch.Tensor, t_: torch.Tensor) -> torch.Tensor:
            return self.forward_model(x_t, t_, labels if has_labels else None)

        group = self.layout.sequence_group if stream == 0 else None
        with self._autocast(), sequence_parallel(group, full_sequence=False) as shard:
            if shard is not None:  # this process's frames; the loss is computed on them
                x0, noise = shard.split_frames(x0), shard.split_frames(noise)
            return self.diffusion.training_losses(
                model_fn, x0, t, noise=noise, min_snr_gamma=self.cfg.min_snr_gamma
            )

    def _single_frames(self, videos: torch.Tensor) -> torch.Tensor:
        """One frame of each clip, (K, F, ...) -> (K, 1, ...), chosen by (seed, step, position)."""
        first = self.layout.data.rank * videos.shape[0]
        picks = []
        for i in range(videos.shape[0]):
            position = 2 * IMAGE_STREAM_OFFSET + first + i  # apart from the noise streams
            gen = torch.Generator().manual_seed(step_seed(self.cfg.seed, self.step, position))
            picks.append(int(torch.randint(0, videos.shape[1], (1,), generator=gen)))
        return videos[torch.arange(videos.shape[0]), picks].unsqueeze(1)

    def train_step(
        self, batch: dict[str, Any], images: dict[str, Any] | None = None
    ) -> dict[str, float]:
        """One optimisation step on a batch of clips (and, for joint training, of clips to take
        single frames from)."""
        step = self.step
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr_at(step)
        losses = self._losses(batch["video"], batch["label"], stream=0)
        if images is not None:
            frames = self._single_frames(images["video"])
            image_losses = self._losses(frames, images["label"], stream=1)
            losses = {k: torch.cat([losses[k], image_losses[k]]) for k in losses}
        loss = losses["loss"].float().mean()
        parts = [
            losses[k].float().mean() if k in losses else loss.new_zeros(()) for k in ("mse", "vb")
        ]
        # Logged figures are means over the global batch (and all frames), as on one process.
        global_loss, global_mse, global_vb = mean_over_processes(
            torch.stack([loss.detach(), *parts]).tolist(),
            self.device,  # one device sync
        )
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
            "loss": global_loss,
            "mse": global_mse,
            "vb": global_vb,
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
            pin_memory=self.device.type == "cuda",
        )

    def _sample(self) -> list[Path]:
        """Sample from the EMA on the first process (every process must call this)."""
        from ..sampling import SampleOptions, generate_and_save

        ema = self._whole_ema()
        if ema is None:
            return []
        opts = SampleOptions(
            num_samples=min(4, max(1, self.model.config.num_classes or 4)),
            steps=self.cfg.sample_steps,
            seed=self.cfg.seed,
            # Previews need no video encoder (mp4 needs ffmpeg, which a GPU host may lack, and
            # a run must not fail after its last checkpoint for want of a preview).
            formats=("gif", "png"),
        )
        return generate_and_save(
            ema, opts, self.run_dir / "samples" / f"step_{self.step:07d}", codec=self.codec
        )

    def fit(self) -> dict[str, Any]:
        cfg, main = self.cfg, self.info.is_main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            config_text = json.dumps(cfg.for_run_folder(), indent=2)
            (self.run_dir / CONFIG_FILE).write_text(config_text)
        metrics_path = self.run_dir / METRICS_FILE
        writer = _tensorboard_writer(self.run_dir) if main else None
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not main, desc="train", unit="step")
        self.model.train()
        if self.model.y_embedder is not None:
            # Label dropout is drawn per sample in `train_step` (independent of the number of
            # processes); eval mode keeps the embedder from dropping labels a second time.
            self.model.y_embedder.eval()
        window_start, window_clips = time.perf_counter(), 0
        last: dict[str, float] = {}
        samples: list[Path] = []
        loader = iter(self._loader())
        image_loader = iter(self._loader(images=True)) if cfg.image_batch else None
        interrupt = DeferredInterrupt(enabled=not self.info.enabled)
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
                if interrupt.requested and not at_end:
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
        }

    def _interrupted(self, saved_step: int) -> str:
        """Save the run at the current step after Ctrl-C (a step boundary: the state is whole)
        and say what holds it."""
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
