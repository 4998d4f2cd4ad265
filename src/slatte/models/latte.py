"""Latte: a latent video diffusion transformer (Ma et al., 2024), built DiT-style.

Shapes used throughout:
    B batch, F frames, C channels, H = W = input size, p patch size,
    S = (H/p)·(W/p) patches per frame, D hidden size, L text tokens.

Video (B, F, C, H, W) → `embed` → hidden states h (B, F, S, D) + a BlockContext
    → `run_blocks` (spatial / temporal / full adaLN-Zero blocks) → `final` → (B, F, C_out, H, W).

The forward is split in these three steps so that guidance (STG) can run the blocks shared by
several branches once and fork the batch at any block; every per-sample tensor the blocks need
travels in the BlockContext. A block can be told per call to apply an STG perturbation (a
`slatte.guidance.strategies.Strategy`); nothing about it outlives the call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..nn.attention import Attention, CrossAttention
from ..nn.embeddings import LabelEmbedder, PatchEmbed, TimestepEmbedder, sincos_1d, sincos_2d
from ..nn.mlp import Mlp
from ..nn.norm import FP32LayerNorm
from ..nn.sla import SparseLinearAttention
from ..ops.backends import check_backend
from ..ops.sla.config import SLAConfig
from ..parallel import SequenceShard
from .configs import VideoDiTConfig

if TYPE_CHECKING:
    from ..guidance.strategies import Strategy


def _check_perturbation(perturbation: object) -> None:
    """A block is told what to perturb by an STG strategy object (`slatte.guidance.strategies`:
    the model calls its operations and never imports guidance, which sits above the models)."""
    if not isinstance(getattr(perturbation, "skips_block", None), bool):
        raise ValueError(
            "a perturbation must be an STG strategy from slatte.guidance.strategies.STRATEGIES "
            f"(e.g. STRATEGIES['transformer_block']), got {perturbation!r}"
        )


# ---------------------------------------------------------------------------------------------
# Per-sample conditioning shared by all blocks
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockContext:
    """What the blocks and the final layer need besides the hidden states.

    Per-sample tensors (batch first): `c` (B, D) conditioning vector (timestep + class);
    `text` (B, L, D) projected text states and `text_mask` (B, L) bool, True = real token, or
    None for models without text; `modulation` (B, 6D) the shared block modulation of a
    `block_modulation="table"` model, else None. Static: `num_frames` (of h, i.e. this process's frames under
    sequence parallelism), `grid_size` (patches per side), and `sequence`: the frame split of a
    `VideoDiT.sequence_parallel` block the model was called in (None outside one).
    """

    c: torch.Tensor
    text: torch.Tensor | None
    text_mask: torch.Tensor | None
    num_frames: int
    grid_size: int
    sequence: SequenceShard | None = None
    modulation: torch.Tensor | None = None

    def map_batch(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> BlockContext:
        """Apply `fn` to every per-sample tensor, e.g. `ctx.map_batch(lambda t: t[rows])`."""
        return replace(
            self,
            c=fn(self.c),
            text=None if self.text is None else fn(self.text),
            text_mask=None if self.text_mask is None else fn(self.text_mask),
            modulation=None if self.modulation is None else fn(self.modulation),
        )

    @property
    def batch_size(self) -> int:
        return self.c.shape[0]


def cat_contexts(contexts: Sequence[BlockContext]) -> BlockContext:
    """Concatenate contexts along the batch (the order of `contexts`).

    Text of different lengths is right-padded with masked-out tokens, which changes no output.
    """
    if not contexts:
        raise ValueError("cat_contexts needs at least one BlockContext")
    first = contexts[0]
    for ctx in contexts[1:]:
        if (ctx.num_frames, ctx.grid_size) != (first.num_frames, first.grid_size):
            raise ValueError(
                "cannot concatenate contexts of different geometry: "
                f"(num_frames, grid_size) {(first.num_frames, first.grid_size)} vs "
                f"{(ctx.num_frames, ctx.grid_size)}"
            )
        if (ctx.text is None) != (first.text is None):
            raise ValueError("cannot concatenate contexts with and without text")
        if (ctx.modulation is None) != (first.modulation is None):
            raise ValueError("cannot concatenate contexts with and without a shared modulation")
    c = torch.cat([ctx.c for ctx in contexts])
    if first.modulation is not None:
        first = replace(first, modulation=torch.cat([ctx.modulation for ctx in contexts]))
    if first.text is None:
        return replace(first, c=c)
    length = max(ctx.text.shape[1] for ctx in contexts)
    texts, masks = [], []
    for ctx in contexts:
        pad = length - ctx.text.shape[1]
        texts.append(F.pad(ctx.text, (0, 0, 0, pad)))  # (B_i, L, D)
        masks.append(F.pad(ctx.text_mask, (0, pad), value=False))  # (B_i, L)
    return replace(first, c=c, text=torch.cat(texts), text_mask=torch.cat(masks))


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def add_modulation(module: nn.Module, hidden_size: int, count: int, modulation: str) -> None:
    """Give `module` the source of its `count` (B, D) modulation vectors: its own
    `adaLN_modulation` = Linear(SiLU(c)) ("adaln", DiT) or a `scale_shift_table` (count, D) added
    to a shared vector ("table", PixArt-α); the other attribute is None."""
    if modulation == "adaln":
        module.adaLN_modulation = nn.Sequential(
            nn.SiLU(), nn.Linear(hidden_size, count * hidden_size)
        )
        module.register_parameter("scale_shift_table", None)
    elif modulation == "table":
        module.adaLN_modulation = None
        module.scale_shift_table = nn.Parameter(torch.empty(count, hidden_size))
    else:
        raise ValueError(f"modulation must be 'adaln' or 'table', got {modulation!r}")


class LatteBlock(nn.Module):
    """adaLN-Zero transformer block over h (B, F, S, D).

    `modulation` "adaln": the block's own `adaLN_modulation` maps c to its six (B, D) shift /
    scale / gate vectors; "table": they are the context's shared `modulation` plus this block's
    `scale_shift_table` (6, D), PixArt-α's adaLN-single.

    `kind` decides which tokens attend to each other: "spatial" (the S patches of one frame),
    "temporal" (the F frames of one patch position) or "full" (all F·S tokens of a sample).
    Spatial and full blocks of a text model cross-attend to the text after self-attention,
    reading the LayerNorm-ed hidden states (`cross_attn_norm`) or, PixArt-style, the raw ones.
    """

    def __init__(
        self,
        kind: str,
        hidden_size: int,
        num_heads: int,
        *,
        mlp_ratio: float,
        cross_attention: bool,
        cross_attn_norm: bool,
        modulation: str,
        qk_norm: bool,
        backend: str,
        sla: SLAConfig,
    ):
        super().__init__()
        if kind not in ("spatial", "temporal", "full"):
            raise ValueError(f"block kind must be 'spatial', 'temporal' or 'full', got {kind!r}")
        self.kind = kind
        self.norm1 = FP32LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, qk_norm=qk_norm, backend=backend, sla=sla)
        if cross_attention:
            self.norm_cross = FP32LayerNorm(hidden_size, eps=1e-6) if cross_attn_norm else None
            self.cross_attn = CrossAttention(hidden_size, hidden_size, num_heads, qk_norm=qk_norm)
        else:
            self.norm_cross = None
            self.cross_attn = None
        self.norm2 = FP32LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        add_modulation(self, hidden_size, 6, modulation)

    def self_attention(
        self, x: torch.Tensor, *, sequence_group: torch.distributed.ProcessGroup | None = None
    ) -> torch.Tensor:
        """x (B, F, S, D) → (B, F, S, D), attending within this block's token groups.

        `sequence_group`: x holds this process's frames of a video split frame-wise over the
        group. Spatial attention stays within a frame, so it needs no exchange; temporal and full
        attention gather their sequence through Ulysses all-to-alls.
        """
        _, f, s, _ = x.shape
        if self.kind == "spatial":
            out = self.attn(rearrange(x, "b f s d -> (b f) s d"))
            return rearrange(out, "(b f) s d -> b f s d", f=f)
        if self.kind == "temporal":
            out = self.attn(rearrange(x, "b f s d -> (b s) f d"), sequence_group=sequence_group)
            return rearrange(out, "(b s) f d -> b f s d", s=s)
        # Frame-contiguous chunks in rank order make up the (f s) sequence of the whole video.
        out = self.attn(rearrange(x, "b f s d -> b (f s) d"), sequence_group=sequence_group)
        return rearrange(out, "b (f s) d -> b f s d", f=f)

    def forward(
        self, h: torch.Tensor, ctx: BlockContext, perturbation: Strategy | None = None
    ) -> torch.Tensor:
        if perturbation is not None:
            _check_perturbation(perturbation)
            if perturbation.skips_block:
                return h
        if self.scale_shift_table is None:
            mod = self.adaLN_modulation(ctx.c)  # (B, 6D)
        else:
            mod = ctx.modulation + self.scale_shift_table.flatten()  # (B, 6D) + (6D,)
        # (B, 6D) → six (B, 1, 1, D) tensors, broadcast over frames and patches.
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = rearrange(
            mod, "b (six d) -> six b 1 1 d", six=6
        ).unbind(0)

        x = modulate(self.norm1(h), shift_msa, scale_msa)
        if perturbation is None:
            sequence_group = None if ctx.sequence is None else ctx.sequence.group
            attn_out = self.self_attention(x, sequence_group=sequence_group)
        else:  # the identity map acts on each token alone: no token groups, no exchange
            attn_out = perturbation.attention_output(x, self.attn.identity_map)
        h = h + gate_msa * attn_out

        if self.cross_attn is not None and ctx.text is not None:
            # Cross-attention treats every query token on its own, so all F·S tokens of a sample
            # share one call against that sample's text (no per-frame copies of the text).
            f = h.shape[1]
            x = h if self.norm_cross is None else self.norm_cross(h)
            x = rearrange(x, "b f s d -> b (f s) d")
            out = self.cross_attn(x, ctx.text, ctx.text_mask)
            h = h + rearrange(out, "b (f s) d -> b f s d", f=f)

        h = h + gate_mlp * self.mlp(modulate(self.norm2(h), shift_mlp, scale_mlp))
        return h


class FinalLayer(nn.Module):
    """Modulated LayerNorm + linear: h (B, F, S, D) → per-patch outputs (B, F, S, p·p·C_out).

    `modulation` "adaln" (DiT): (shift, scale) = Linear(SiLU(c)) through `adaLN_modulation`;
    "table" (PixArt-α, diffusers Latte): (shift, scale) = `scale_shift_table` (2, D) + c.
    """

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, modulation: str):
        super().__init__()
        self.norm_final = FP32LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        add_modulation(self, hidden_size, 2, modulation)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if self.scale_shift_table is None:
            mod = rearrange(self.adaLN_modulation(c), "b (two d) -> two b 1 1 d", two=2)
        else:
            mod = rearrange(self.scale_shift_table + c[:, None], "b two d -> two b 1 1 d")
        shift, scale = mod.unbind(0)
        return self.linear(modulate(self.norm_final(h), shift, scale))


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


class VideoDiT(nn.Module):
    """Latte-style video DiT; see the module docstring and `VideoDiTConfig`."""

    def __init__(self, config: VideoDiTConfig):
        super().__init__()
        if not isinstance(config, VideoDiTConfig):
            raise ValueError(f"config must be a VideoDiTConfig, got {type(config).__name__}")
        self.config = config
        self.gradient_checkpointing = False
        # The frame shard of the calls inside `sequence_parallel(...)` (None: the whole video).
        self.sequence: SequenceShard | None = None
        d = config.hidden_size

        self.x_embedder = PatchEmbed(config.in_channels, d, config.patch_size)
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = (
            LabelEmbedder(config.num_classes, d, config.class_dropout_prob)
            if config.num_classes > 0
            else None
        )
        # One modulation linear for all blocks ("table" blocks add their own tables to it).
        self.shared_modulation = (
            nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
            if config.block_modulation == "table"
            else None
        )
        # Text embeddings (B, L, text_dim) → (B, L, D), as PixArt / Latte-T2V's caption projection.
        self.text_embedder = Mlp(config.text_dim, d, d) if config.text_dim is not None else None
        # Fixed tables, recomputed from the config rather than stored in checkpoints.
        self.register_buffer(
            "pos_embed", sincos_2d(d, config.grid_size, config.grid_size), persistent=False
        )  # (S, D)
        self.register_buffer(
            "temp_embed", sincos_1d(d, torch.arange(config.num_frames)), persistent=False
        )  # (num_frames, D)

        self.blocks = nn.ModuleList(
            LatteBlock(
                kind,
                d,
                config.num_heads,
                mlp_ratio=config.mlp_ratio,
                cross_attention=config.text_dim is not None and kind != "temporal",
                cross_attn_norm=config.cross_attn_norm,
                modulation=config.block_modulation,
                qk_norm=config.qk_norm,
                backend=config.attention_backend,
                sla=config.sla,
            )
            for kind in config.block_kinds()
        )
        self.final_layer = FinalLayer(
            d, config.patch_size, config.out_channels, config.final_modulation
        )
        self.initialize_weights()

    # -- initialisation (all of it) ------------------------------------------------------------

    def initialize_weights(self) -> None:
        """DiT's initialisation; every block (and the model) starts as the identity map on h.

        Linears: xavier-uniform, zero bias (the patch embedding too: it is a linear). Label table:
        normal(0, `class_embed_init_std`); timestep / text MLPs: normal(0, 0.02). adaLN
        modulations, the final linear and the cross-attention output projections: zero; so are
        the shared modulation linear and the `scale_shift_table`s of "table" modulation, which
        keeps every block the identity. SLA projections `proj_l`: left at zero.
        """
        sla_projections = {
            id(m.proj_l) for m in self.modules() if isinstance(m, SparseLinearAttention)
        }
        for module in self.modules():
            if isinstance(module, nn.Linear) and id(module) not in sla_projections:
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        if self.y_embedder is not None:
            nn.init.normal_(
                self.y_embedder.embedding_table.weight, std=self.config.class_embed_init_std
            )
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.text_embedder is not None:
            nn.init.normal_(self.text_embedder.fc1.weight, std=0.02)
            nn.init.normal_(self.text_embedder.fc2.weight, std=0.02)

        modulated = [*self.blocks, self.final_layer]
        zero = [m.adaLN_modulation[-1] for m in modulated if m.adaLN_modulation is not None]
        zero += [block.cross_attn.proj for block in self.blocks if block.cross_attn is not None]
        zero += [self.final_layer.linear]
        if self.shared_modulation is not None:
            zero.append(self.shared_modulation[-1])
        for linear in zero:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)
        for m in modulated:
            if m.scale_shift_table is not None:
                nn.init.zeros_(m.scale_shift_table)

    # -- step 1: inputs → hidden states + context ----------------------------------------------

    def embed(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, BlockContext]:
        """x (B, F, C, H, W), t (B,) or scalar, y (B,) long or None, text (B, L, text_dim),
        text_mask (B, L) bool → h (B, F, S, D) and the BlockContext.

        y = None on a class-conditional model means the null class (unconditional); a text model
        given no text cross-attends to nothing (the cross-attention adds zero).

        Inside `self.sequence_parallel(shard)` the frames are split over the shard's group: h
        holds this process's F/P frames (x is either the whole video, split here, or already
        this process's frames; see `parallel.SequenceShard.full_sequence`).
        """
        cfg = self.config
        b, f = self._check_inputs(x, t, y, text, text_mask)
        shard = self.sequence
        if shard is not None:
            if shard.full_sequence:
                x = shard.split_frames(x)
            elif f * shard.size > cfg.num_frames:
                raise ValueError(
                    f"the model takes up to {cfg.num_frames} frames, got {f} frames on each of "
                    f"{shard.size} sequence-parallel processes"
                )
            f = x.shape[1]

        # Inputs follow the weights' dtype (e.g. fp32 noise into a bf16 model); autocast, when
        # on, still decides the compute dtype.
        x = x.to(self.x_embedder.proj.weight.dtype)
        h = self.x_embedder(rearrange(x, "b f c h w -> (b f) c h w"))  # (B·F, S, D)
        h = rearrange(h + self.pos_embed.to(h.dtype), "(b f) s d -> b f s d", b=b)

        t = t.expand(b) if t.dim() == 0 else t
        c = self.t_embedder(t)  # (B, D) fp32
        if self.y_embedder is not None:
            if y is None:
                y = torch.full((b,), cfg.num_classes, dtype=torch.long, device=x.device)
            c = c + self.y_embedder(y).float()
        c = c.to(h.dtype)

        text_states = None
        if self.text_embedder is not None:
            if text is None:
                # One masked-out token: keeps a uniform context layout; adds exactly zero.
                text = x.new_zeros(b, 1, cfg.text_dim)
                text_mask = torch.zeros(b, 1, dtype=torch.bool, device=x.device)
            elif text_mask is None:
                text_mask = torch.ones(text.shape[:2], dtype=torch.bool, device=x.device)
            text_states = self.text_embedder(text.to(h.dtype))  # (B, L, D)
        ctx = BlockContext(
            c=c,
            text=text_states,
            text_mask=text_mask,
            num_frames=f,
            grid_size=cfg.grid_size,
            sequence=shard,
            modulation=None if self.shared_modulation is None else self.shared_modulation(c),
        )
        return h, ctx

    def _check_inputs(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None,
        text: torch.Tensor | None,
        text_mask: torch.Tensor | None,
    ) -> tuple[int, int]:
        cfg = self.config
        size, ch = cfg.input_size, cfg.in_channels
        if x.dim() != 5 or x.shape[2] != ch or x.shape[3] != size or x.shape[4] != size:
            raise ValueError(
                f"x must be (B, F, {ch}, {size}, {size}) for this model, got {tuple(x.shape)}"
            )
        b, f = x.shape[:2]
        if not 1 <= f <= cfg.num_frames:
            raise ValueError(f"the model takes 1 to {cfg.num_frames} frames, got {f}")
        if not (t.dim() == 0 or t.shape == (b,)):
            raise ValueError(f"t must be a scalar or of shape ({b},), got {tuple(t.shape)}")
        if y is not None:
            if self.y_embedder is None:
                raise ValueError("this model is unconditional (num_classes=0); pass y=None")
            if y.shape != (b,) or y.dtype not in (torch.int32, torch.int64):
                raise ValueError(
                    f"y must be integer labels of shape ({b},), got {y.dtype} {tuple(y.shape)}"
                )
            # A data-dependent check (one host sync); skipped while tracing for torch.compile.
            if not torch.compiler.is_compiling() and bool(((y < 0) | (y > cfg.num_classes)).any()):
                raise ValueError(
                    f"class labels must lie in [0, {cfg.num_classes}] ({cfg.num_classes} = null "
                    f"class), got values in [{int(y.min())}, {int(y.max())}]"
                )
        if text is not None or text_mask is not None:
            if cfg.text_dim is None:
                raise ValueError(
                    "this model has no text conditioning (text_dim=None); pass text=None"
                )
            if (
                text is None
                or text.dim() != 3
                or text.shape[0] != b
                or text.shape[2] != cfg.text_dim
            ):
                raise ValueError(
                    f"text must be (B={b}, L, {cfg.text_dim}), got "
                    f"{None if text is None else tuple(text.shape)}"
                )
            if text_mask is not None and (
                text_mask.dtype != torch.bool or text_mask.shape != text.shape[:2]
            ):
                raise ValueError(
                    f"text_mask must be a bool tensor of shape {tuple(text.shape[:2])}, got "
                    f"{text_mask.dtype} {tuple(text_mask.shape)}"
                )
        return b, f

    # -- step 2: the blocks ----------------------------------------------------------------------

    def temporal_embed_index(self) -> int | None:
        """Index of the first block that mixes frames (temporal or full); the fixed temporal
        embedding is added right before it (to a single-frame input only if the config's
        `single_frame_temporal_embed`). None if no block does."""
        return next((i for i, blk in enumerate(self.blocks) if blk.kind != "spatial"), None)

    def run_blocks(
        self,
        h: torch.Tensor,
        ctx: BlockContext,
        start: int = 0,
        stop: int | None = None,
        *,
        perturbations: Mapping[int, Strategy] | None = None,
    ) -> torch.Tensor:
        """Run blocks[start:stop] on h (B, F, S, D), applying the STG strategy
        `perturbations[i]` (`slatte.guidance.strategies.STRATEGIES`) to block i.

        Keys of `perturbations` outside [start, stop) are ignored (so one mapping can serve a
        run split in pieces); keys outside [0, depth) are an error.
        """
        depth = len(self.blocks)
        stop = depth if stop is None else stop
        if not 0 <= start <= stop <= depth:
            raise ValueError(
                f"need 0 <= start <= stop <= depth={depth}, got start={start}, stop={stop}"
            )
        perturbations = dict(perturbations or {})
        for index, strategy in perturbations.items():
            if not 0 <= index < depth:
                raise ValueError(f"perturbation block index {index} out of range [0, {depth})")
            _check_perturbation(strategy)

        temporal_index = self.temporal_embed_index()
        first_frame = 0 if ctx.sequence is None else ctx.sequence.frame_offset(h.shape[1])
        video_frames = h.shape[1] * (1 if ctx.sequence is None else ctx.sequence.size)
        if video_frames == 1 and not self.config.single_frame_temporal_embed:
            temporal_index = None  # an image, by Latte's convention: no temporal embedding
        for i in range(start, stop):
            if i == temporal_index:
                frames = self.temp_embed[first_frame : first_frame + h.shape[1], None]
                h = h + frames.to(h.dtype)  # (F, 1, D) over S
            block, perturbation = self.blocks[i], perturbations.get(i)
            if self.gradient_checkpointing and torch.is_grad_enabled():
                h = checkpoint(block, h, ctx, perturbation, use_reentrant=False)
            else:
                h = block(h, ctx, perturbation)
        return h

    # -- step 3: hidden states → prediction ------------------------------------------------------

    def final(self, h: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        """h (B, F, S, D) → (B, F, out_channels, H, W) (all frames again when the model was
        given the whole video inside a `VideoDiT.sequence_parallel` block)."""
        out = self.unpatchify(self.final_layer(h, ctx.c), ctx.grid_size)
        if ctx.sequence is not None and ctx.sequence.full_sequence:
            out = ctx.sequence.gather_frames(out)
        return out

    def unpatchify(self, patches: torch.Tensor, grid_size: int) -> torch.Tensor:
        """(B, F, S, p·p·C) with feature order (p, q, c) → (B, F, C, H, W)."""
        p = self.config.patch_size
        return rearrange(
            patches, "b f (h w) (p q c) -> b f c (h p) (w q)", h=grid_size, w=grid_size, p=p, q=p
        )

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        perturbations: Mapping[int, Strategy] | None = None,
    ) -> torch.Tensor:
        """x (B, F, C, H, W) → (B, F, out_channels, H, W); with learned sigma the first
        in_channels channels are the noise prediction, the rest the variance values."""
        h, ctx = self.embed(x, t, y, text=text, text_mask=text_mask)
        h = self.run_blocks(h, ctx, perturbations=perturbations)
        return self.final(h, ctx)

    # -- utilities -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def sequence_parallel(self, shard: SequenceShard | None) -> Iterator[None]:
        """Run this model's calls inside the block on `shard` (`parallel.sequence_shard`; None
        changes nothing): every process of its group calls the model alike, and attention
        runs over the whole sequence through Ulysses all-to-alls."""
        if shard is not None and not isinstance(shard, SequenceShard):
            raise ValueError(f"shard must be a SequenceShard or None, got {type(shard).__name__}")
        previous, self.sequence = self.sequence, shard
        try:
            yield
        finally:
            self.sequence = previous

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block's activations in backward (same gradients, less memory)."""
        self.gradient_checkpointing = enabled

    def set_attention_backend(self, backend: str, sla: SLAConfig | None = None) -> None:
        """Switch every self-attention layer (and the config) to `backend`.

        Dense → SLA adds zero-initialised `proj_l` projections and changes nothing else;
        SLA → "sdpa" removes them. `sla` replaces the SLA options (else the config's are kept).
        """
        check_backend(backend)
        if sla is not None and not isinstance(sla, SLAConfig):
            raise ValueError(f"sla must be an SLAConfig or None, got {type(sla).__name__}")
        self.config = self.config.replace(attention_backend=backend, sla=sla or self.config.sla)
        for block in self.blocks:
            block.attn.set_backend(backend, self.config.sla)

    def num_parameters(self, *, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def flops_per_sample(self, num_frames: int | None = None, text_length: int = 0) -> int:
        """Forward FLOPs of one sample (2 per multiply-add), matmuls and attention.

        Attention is counted dense (4·N²·D per sequence) whatever the backend, so that MFU
        compares models, not kernels. A training step costs about 3× this (forward + backward).
        """
        cfg = self.config
        f = cfg.num_frames if num_frames is None else num_frames
        d, s, p = cfg.hidden_size, cfg.patches_per_frame, cfg.patch_size
        tokens = f * s
        mlp_hidden = int(d * cfg.mlp_ratio)
        freq = self.t_embedder.frequency_size

        flops = 2 * tokens * (p * p * cfg.in_channels) * d  # patch embedding
        flops += 2 * (freq * d + d * d)  # timestep MLP
        if cfg.text_dim is not None:
            flops += 2 * text_length * (cfg.text_dim * d + d * d)  # text projection
        # adaLN modulation: one linear per block, or one shared ("table" blocks only add).
        flops += 2 * d * 6 * d * (len(self.blocks) if cfg.block_modulation == "adaln" else 1)
        for block in self.blocks:
            flops += 2 * tokens * d * (3 * d + d + 2 * mlp_hidden)  # qkv, proj, MLP
            if block.kind == "spatial":
                flops += 4 * f * s * s * d
            elif block.kind == "temporal":
                flops += 4 * s * f * f * d
            else:
                flops += 4 * tokens * tokens * d
            if block.cross_attn is not None:
                # q and out projections, k/v of the text, attention to L tokens.
                flops += 2 * tokens * 2 * d * d + 2 * text_length * d * 2 * d
                flops += 4 * tokens * text_length * d
        if cfg.final_modulation == "adaln":
            flops += 2 * d * 2 * d  # final adaLN modulation ("table" only adds)
        flops += 2 * tokens * d * (p * p * cfg.out_channels)  # final linear
        return flops
