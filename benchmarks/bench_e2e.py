"""End to end: one forward (and one training step) of a Wan2.1-1.3B-shaped diffusers
`WanTransformer3DModel`, self-attention through diffusers' default dispatch vs slatte SLA
(95% sparsity; "slatte_fused": also the feed-forward's GEMM + GELU fused) vs the official SLA
(if `--official PATH` is given), eager and `torch.compile` (`--compile-modes`, e.g.
`default,reduce-overhead` for CUDA graphs too).

Shape (shared/BENCHMARKS.md): 30 blocks, 12 heads × 128, FFN 8960, text 512 × 4096, latents
(1, 16, 21, 60, 104) = 480p × 81 frames → 21 × 30 × 52 = 32,760 tokens; random weights; bf16.
Goal (issue 5): ≤ 200 ms per forward on one H100 / H200 (diffusers default ≈ 598 ms, official
SLA ≈ 327 ms on an H200).

    python benchmarks/bench_e2e.py                          # GPU, full shape
    python benchmarks/bench_e2e.py --official .external/SLA # + the official SLA (git-ignored)
    python benchmarks/bench_e2e.py --smoke                  # tiny shape, any device (dry run)
    python benchmarks/bench_e2e.py --no-train --profile     # + where each forward's time goes
    python benchmarks/bench_e2e.py --model mochi --no-train --no-compile --variants dense,slatte

`--model NAME`: another supported diffusers transformer at its native shape (`MODELS`: Wan2.2
5B, Wan-VACE 1.3B, SkyReels-V2 1.3B 540p, HunyuanVideo 720p, HunyuanVideo-1.5 720p, CogVideoX
5B, Mochi 1, LTX-2 with its audio), random weights, forward dense vs `enable_sla`; "slatte_fused" and "official" are
for `WanTransformer3DModel` (Wan2.1 / 2.2) only. `--smoke` shrinks any of them to a tiny shape.

`--official PATH`: a checkout of github.com/thu-ml/SLA (the folder holding the
`sparse_linear_attention` package); it is imported from there, never from the project.
Prints one JSON line (device, versions, every time, speed-ups over the dense eager forward) and
a table; a variant that fails (e.g. cannot compile here) is recorded with its error. `--profile`
adds each forward's GPU time by kind of kernel (`KERNEL_KINDS`) and its slowest kernels.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

from common import environment, kernel_ms, report
from slatte.bench import median_ms

WAN_1_3B = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 12,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 8960,
    "num_layers": 30,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}
LATENTS = (1, 16, 21, 60, 104)
TEXT = (1, 512, 4096)
SMOKE = {
    **WAN_1_3B,
    "num_attention_heads": 2,
    "attention_head_dim": 32,
    "in_channels": 4,
    "out_channels": 4,
    "text_dim": 32,
    "ffn_dim": 128,
    "num_layers": 2,
}
SMOKE_LATENTS, SMOKE_TEXT = (1, 4, 3, 16, 16), (1, 8, 32)


def _rotary_cogvideox(config: dict, latents: tuple, device: torch.device) -> tuple:
    """The (cos, sin) tables CogVideoXPipeline computes for these latents (B, F, C, H, W)."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    p = config["patch_size"]
    grid = (latents[3] // p, latents[4] // p)
    return get_3d_rotary_pos_embed(
        config["attention_head_dim"], ((0, 0), grid), grid, latents[1], device=device
    )


def _inputs(name: str, config: dict, latents: tuple, text: tuple, device, dtype) -> dict:
    """Forward keyword arguments of model `name` for latents / text of these shapes (B = 1)."""
    x = torch.randn(latents, device=device, dtype=dtype)
    context = torch.randn(text, device=device, dtype=dtype)
    text_mask = torch.ones(text[:2], device=device, dtype=torch.bool)
    timestep = torch.tensor([500], device=device)
    if name in ("wan2.1-1.3b", "wan2.2-5b", "skyreels-v2-1.3b"):
        return {"hidden_states": x, "timestep": timestep, "encoder_hidden_states": context}
    if name == "wan-vace-1.3b":
        control = (latents[0], config["vace_in_channels"], *latents[2:])
        return {
            "hidden_states": x, "timestep": timestep, "encoder_hidden_states": context,
            "control_hidden_states": torch.randn(control, device=device, dtype=dtype),
        }  # fmt: skip
    if name == "hunyuanvideo":
        return {
            "hidden_states": x, "timestep": timestep, "encoder_hidden_states": context,
            "encoder_attention_mask": text_mask,
            "pooled_projections": torch.randn(1, config["pooled_projection_dim"], device=device,
                                              dtype=dtype),
            "guidance": torch.tensor([6000.0], device=device, dtype=dtype),
        }  # fmt: skip
    if name == "hunyuanvideo-1.5":
        byt5 = torch.randn(1, 256, config["text_embed_2_dim"], device=device, dtype=dtype)
        return {
            "hidden_states": x, "timestep": timestep.to(dtype), "encoder_hidden_states": context,
            "encoder_attention_mask": text_mask, "encoder_hidden_states_2": byt5,
            "encoder_attention_mask_2": torch.ones(1, 256, device=device, dtype=torch.bool),
            "image_embeds": torch.zeros(1, 729, config["image_embed_dim"], device=device,
                                        dtype=dtype),
        }  # fmt: skip
    if name == "cogvideox-5b":
        return {
            "hidden_states": x, "timestep": timestep, "encoder_hidden_states": context,
            "image_rotary_emb": _rotary_cogvideox(config, latents, device),
        }  # fmt: skip
    if name == "mochi-1":
        return {
            "hidden_states": x, "timestep": timestep, "encoder_hidden_states": context,
            "encoder_attention_mask": text_mask,
        }  # fmt: skip
    if name == "ltx-2":  # packed latents (B, F·H·W, C), and the clip's audio latents
        audio_frames = _ltx2_audio_frames(latents[2])
        audio = (latents[0], audio_frames, config["audio_in_channels"])
        return {
            "hidden_states": x.flatten(2).transpose(1, 2),
            "audio_hidden_states": torch.randn(audio, device=device, dtype=dtype),
            "encoder_hidden_states": context, "audio_encoder_hidden_states": context,
            "timestep": timestep.to(dtype), "encoder_attention_mask": text_mask,
            "audio_encoder_attention_mask": text_mask, "num_frames": latents[2],
            "height": latents[3], "width": latents[4], "fps": LTX2_FPS,
            "audio_num_frames": audio_frames,
        }  # fmt: skip
    raise ValueError(name)


# LTX2Pipeline's defaults: 24 frames per second; audio latents at 16 kHz, hop 160, 4× in time.
LTX2_FPS, LTX2_AUDIO_LATENTS_PER_S = 24.0, 16000 / 160 / 4


def _ltx2_audio_frames(latent_frames: int) -> int:
    """Audio latents of the clip LTX2Pipeline makes for these video latent frames (8× in time)."""
    return round((8 * (latent_frames - 1) + 1) / LTX2_FPS * LTX2_AUDIO_LATENTS_PER_S)


# name: (diffusers class, native config, latents, text states, smoke overrides of the config,
# smoke latents, smoke text). Latents (B, C, F, H, W), CogVideoX (B, F, C, H, W); tokens after
# patching in the comments; CFG batches (2 rows) are left out: one conditional row.
_SMOKE_TRANSFORMER = {"num_attention_heads": 2, "attention_head_dim": 32, "num_layers": 2}
MODELS = {
    "wan2.1-1.3b": ("WanTransformer3DModel", WAN_1_3B, LATENTS, TEXT, SMOKE, SMOKE_LATENTS,
                    SMOKE_TEXT),
    # Wan2.2 TI2V-5B, 704 × 1280 × 121 frames: 31 × 22 × 40 = 27,280 tokens.
    "wan2.2-5b": ("WanTransformer3DModel",
                  {**WAN_1_3B, "num_attention_heads": 24, "in_channels": 48, "out_channels": 48,
                   "ffn_dim": 14336},
                  (1, 48, 31, 44, 80), TEXT, {**SMOKE, "in_channels": 48, "out_channels": 48},
                  (1, 48, 3, 16, 16), SMOKE_TEXT),
    # Wan2.1-VACE-1.3B, 480p × 81 frames (Wan2.1-1.3B's tokens), 15 control blocks.
    "wan-vace-1.3b": ("WanVACETransformer3DModel",
                      {**WAN_1_3B, "vace_layers": list(range(0, 30, 2)), "vace_in_channels": 96},
                      LATENTS, TEXT, {**SMOKE, "vace_layers": [0, 1], "vace_in_channels": 8},
                      SMOKE_LATENTS, SMOKE_TEXT),
    # SkyReels-V2-DF-1.3B-540P, 544 × 960 × 97 frames: 25 × 34 × 60 = 51,000 tokens.
    "skyreels-v2-1.3b": ("SkyReelsV2Transformer3DModel", WAN_1_3B, (1, 16, 25, 68, 120), TEXT,
                         SMOKE, SMOKE_LATENTS, SMOKE_TEXT),
    # HunyuanVideo (13B), 720 × 1280 × 129 frames: 33 × 45 × 80 = 118,800 tokens + 256 text.
    "hunyuanvideo": ("HunyuanVideoTransformer3DModel",
                     {"in_channels": 16, "out_channels": 16, "num_attention_heads": 24,
                      "attention_head_dim": 128, "num_layers": 20, "num_single_layers": 40,
                      "text_embed_dim": 4096, "pooled_projection_dim": 768},
                     (1, 16, 33, 90, 160), (1, 256, 4096),
                     {**_SMOKE_TRANSFORMER, "num_single_layers": 2, "num_refiner_layers": 1,
                      "text_embed_dim": 32, "pooled_projection_dim": 16,
                      "rope_axes_dim": (8, 12, 12)},
                     (1, 16, 3, 16, 16), SMOKE_TEXT),
    # HunyuanVideo-1.5 (8.3B) text-to-video, 720 × 1280 × 121 frames: 31 × 45 × 80 = 111,600
    # tokens + 1000 + 256 text (+ 729 image tokens, masked out for text-to-video).
    "hunyuanvideo-1.5": ("HunyuanVideo15Transformer3DModel", {},
                         (1, 65, 31, 45, 80), (1, 1000, 3584),
                         {**_SMOKE_TRANSFORMER, "num_refiner_layers": 1, "patch_size": 2,
                          "text_embed_dim": 32, "text_embed_2_dim": 16, "image_embed_dim": 16,
                          "rope_axes_dim": (8, 12, 12)},
                         (1, 65, 3, 16, 16), SMOKE_TEXT),
    # CogVideoX-5B, 480 × 720 × 49 frames: 13 × 30 × 45 = 17,550 tokens + 226 text.
    "cogvideox-5b": ("CogVideoXTransformer3DModel",
                     {"num_attention_heads": 48, "attention_head_dim": 64, "num_layers": 42,
                      "in_channels": 16, "out_channels": 16, "time_embed_dim": 512,
                      "text_embed_dim": 4096, "use_rotary_positional_embeddings": True},
                     (1, 13, 16, 60, 90), (1, 226, 4096),
                     {**_SMOKE_TRANSFORMER, "time_embed_dim": 32, "text_embed_dim": 32,
                      "sample_width": 16, "sample_height": 16, "sample_frames": 9,
                      "max_text_seq_length": 8},
                     (1, 3, 16, 16, 16), SMOKE_TEXT),
    # Mochi 1 (10B), 480 × 848 × 163 frames: 28 × 30 × 53 = 44,520 tokens + 256 text.
    "mochi-1": ("MochiTransformer3DModel", {}, (1, 12, 28, 60, 106), (1, 256, 4096),
                {**_SMOKE_TRANSFORMER, "pooled_projection_dim": 32, "text_embed_dim": 32,
                 "time_embed_dim": 32, "max_sequence_length": 8},
                (1, 12, 3, 16, 16), SMOKE_TEXT),
    # LTX-2 (19B: 48 blocks, video 32 × 128, audio 32 × 64), LTX2Pipeline's default 512 × 768
    # × 121 frames at 24 fps: 16 × 16 × 24 = 6,144 video tokens + 126 audio + 1024 text.
    "ltx-2": ("LTX2VideoTransformer3DModel", {}, (1, 128, 16, 16, 24), (1, 1024, 3840),
              {**_SMOKE_TRANSFORMER, "cross_attention_dim": 64, "audio_in_channels": 8,
               "audio_out_channels": 8, "audio_num_attention_heads": 2,
               "audio_attention_head_dim": 16, "audio_cross_attention_dim": 32,
               "caption_channels": 32},
              (1, 128, 3, 16, 16), SMOKE_TEXT),
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The official SLA as a diffusers processor (benchmark only)
# ---------------------------------------------------------------------------------------------


class OfficialSLAProcessor:
    """Self-attention through the official `SparseLinearAttention` module stored on the
    attention module as `official_sla`; it takes (B, H, N, D), so q, k, v are transposed."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 rotary_emb=None, **kwargs):  # fmt: skip
        from slatte.integrations.diffusers_qk import wan_qk
        from slatte.integrations.diffusers_sla import output_projection, project_qkv

        q, k, v = project_qkv(attn, hidden_states, wan_qk, rotary_emb)  # (B, N, H, D)
        out = attn.official_sla(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        out = out.transpose(1, 2).flatten(2).type_as(hidden_states)
        return output_projection(attn, out, hidden_states)


def enable_official(model, path: Path, critical: float) -> None:
    sys.path.insert(0, str(path))
    from sparse_linear_attention import SparseLinearAttention

    for block in model.blocks:
        attn = block.attn1
        attn.official_sla = SparseLinearAttention(
            head_dim=attn.to_q.out_features // attn.heads, topk=critical, feature_map="softmax",
            BLKQ=128, BLKK=64,
        ).to(block.attn1.to_q.weight.device)  # fmt: skip
        attn.set_processor(OfficialSLAProcessor())


def disable_official(model, originals) -> None:
    for block, processor in zip(model.blocks, originals, strict=True):
        block.attn1.set_processor(processor)
        if hasattr(block.attn1, "official_sla"):
            del block.attn1.official_sla


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------

# Kernel name patterns, first match wins: where a forward's GPU time goes. Inductor's kernels
# come first: their names list the graph nodes they read, "sla_fwd" included.
KERNEL_KINDS = {
    "fused_elementwise": r"^triton_",
    "sla": r"^sla_|mask_gemm|block_outer|classify",  # (its pooling and scores are torch ops)
    "dense_attention": r"flash|fmha|attention|cudnn",
    "gemm": r"gemm|nvjet|sm90_xmma|cutlass|cublas",
}


def kernel_kinds(kernels: dict[str, float]) -> dict[str, float]:
    """ms per forward summed by `KERNEL_KINDS` (the rest under "other")."""
    kinds = dict.fromkeys([*KERNEL_KINDS, "other"], 0.0)
    for name, ms in kernels.items():
        kind = next((k for k, pat in KERNEL_KINDS.items() if re.search(pat, name)), "other")
        kinds[kind] += ms
    return {k: round(v, 2) for k, v in kinds.items()}


def cast_like_from_pretrained(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast to `dtype` but keep the modules diffusers keeps in fp32 when loading with
    `torch_dtype` (Wan: rope, time embedder, modulation tables, norms), as a real pipeline runs."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or [])
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        wanted = torch.float32 if keep & set(name.split(".")) else dtype
        tensor.data = tensor.data.to(wanted)


def build(
    name: str, smoke: bool, device: torch.device, dtype: torch.dtype
) -> tuple[torch.nn.Module, dict, tuple]:
    """The transformer `name` of `MODELS` with random weights (seed 0), cast as a pipeline
    loads it; its forward keyword arguments (B = 1); its latents' shape. `smoke`: the tiny
    shape."""
    import diffusers

    class_name, config, latents, text, smoke_config, smoke_latents, smoke_text = MODELS[name]
    if smoke:
        config, latents, text = {**config, **smoke_config}, smoke_latents, smoke_text
    torch.manual_seed(0)
    with torch.device(device):
        model = getattr(diffusers, class_name)(**config)
    cast_like_from_pretrained(model, dtype)
    return model, _inputs(name, model.config, latents, text, device, dtype), latents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shape on any device")
    parser.add_argument(
        "--model", default="wan2.1-1.3b", choices=sorted(MODELS), help="which transformer"
    )
    parser.add_argument("--official", type=Path, default=None, help="official SLA checkout")
    parser.add_argument("--critical", type=float, default=0.05)
    parser.add_argument("--block-q", type=int, default=128)
    parser.add_argument("--block-k", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-train", action="store_true", help="skip the training step")
    parser.add_argument("--no-compile", action="store_true", help="eager only")
    parser.add_argument(
        "--compile-modes",
        default="default",
        help="comma list of torch.compile modes to time (default, reduce-overhead: CUDA graphs, "
        "max-autotune-no-cudagraphs, max-autotune)",
    )
    parser.add_argument(
        "--no-grad-ckpt", action="store_true", help="train without gradient checkpointing"
    )
    parser.add_argument(
        "--variants",
        default="dense,slatte,slatte_fused,official",
        help="dense: diffusers' attention; slatte: enable_sla; slatte_fused: enable_sla and "
        "enable_fused_gelu (the FFN's GEMM + GELU in one call, inference); official: its SLA",
    )
    parser.add_argument(
        "--profile", action="store_true", help="GPU time of each forward by kind of kernel"
    )
    args = parser.parse_args()

    import diffusers

    from slatte.integrations.diffusers_gelu import disable_fused_gelu, enable_fused_gelu
    from slatte.integrations.diffusers_sla import disable_sla, enable_sla

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.smoke and device.type != "cuda":
        raise SystemExit("bench_e2e.py needs a CUDA GPU for the full shape; use --smoke")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    class_name = MODELS[args.model][0]
    model, inputs, latents = build(args.model, args.smoke, device, dtype)
    # The Wan2.1 / 2.2 transformer: the fused GELU and the official SLA serve its blocks.
    wan = class_name == "WanTransformer3DModel"
    originals = [block.attn1.processor for block in model.blocks] if wan else None
    patch = model.config.patch_size
    spatial = patch[-1] if isinstance(patch, (tuple, list)) else patch  # 1 frame per token
    frames_first = class_name == "CogVideoXTransformer3DModel"  # (B, F, C, H, W)
    frames, height, width = (latents[1], *latents[3:]) if frames_first else latents[2:]
    tokens = frames * (height // spatial) * (width // spatial)
    target = None

    variants = [v for v in args.variants.split(",") if v]
    if "official" in variants and (args.official is None or device.type != "cuda" or not wan):
        variants.remove("official")
    if "slatte_fused" in variants and not wan:
        variants.remove("slatte_fused")  # enable_fused_gelu serves the Wan family's blocks
    compile_modes = [] if args.no_compile else [m for m in args.compile_modes.split(",") if m]
    # Row names: "compile" for the default mode (as in earlier reports), else "compile:<mode>".
    modes = ["eager"] + ["compile" if m == "default" else f"compile:{m}" for m in compile_modes]

    def switch(variant: str) -> None:
        disable_sla(model)
        if wan:
            disable_fused_gelu(model)
            disable_official(model, originals)
        if variant in ("slatte", "slatte_fused"):
            enable_sla(model, critical=args.critical, block_q=args.block_q, block_k=args.block_k)
        if variant == "slatte_fused":
            enable_fused_gelu(model)
        if variant == "official":
            enable_official(model, args.official, args.critical)
        model.to(device)

    def measure(variant: str, mode: str) -> dict:
        row: dict = {"variant": variant, "mode": mode}
        torch._dynamo.reset()
        if mode == "eager":
            run = model
        else:
            run = torch.compile(model, mode=mode.partition(":")[2] or "default")

        def forward():
            with torch.no_grad():
                return run(**inputs, return_dict=False)[0]

        row["forward_ms"] = median_ms(forward, device, warmup=args.warmup, repeats=args.reps)
        if args.profile and device.type == "cuda":
            kernels = kernel_ms(forward, repeats=2)
            row["kernel_kinds_ms"] = kernel_kinds(kernels)
            row["slowest_kernels_ms"] = {
                n[:90]: round(ms, 2) for n, ms in list(kernels.items())[:12]
            }
        if not args.no_train:
            model.train()
            if args.no_grad_ckpt:
                model.disable_gradient_checkpointing()
            else:
                model.enable_gradient_checkpointing()

            def train_step():
                nonlocal target
                out = run(**inputs, return_dict=False)[0]
                target = torch.randn_like(out) if target is None else target
                (out.float() - target.float()).square().mean().backward()
                model.zero_grad(set_to_none=True)

            try:
                row["train_step_ms"] = median_ms(
                    train_step, device, warmup=args.warmup, repeats=args.reps
                )
            finally:
                model.eval()
        return row

    rows = []
    # Eager first: a compiler crash that ends the process (it can) still leaves those rows,
    # which are printed as they complete.
    for mode in modes:
        for variant in variants:
            switch(variant)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            try:
                row = measure(variant, mode)
            except Exception as exc:  # one variant failing must not end the run
                row = {
                    "variant": variant,
                    "mode": mode,
                    "error": f"{type(exc).__name__}: {exc}"[:200],
                }
            if device.type == "cuda":
                row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            rows.append(row)
            print("row", json.dumps(row), flush=True)

    base = next(
        (r.get("forward_ms") for r in rows if (r["variant"], r["mode"]) == ("dense", "eager")), None
    )
    for row in rows:
        if base and "forward_ms" in row:
            row["speedup_vs_dense_eager"] = base / row["forward_ms"]

    record = {
        "benchmark": f"e2e_{args.model}_shape",
        "model": class_name,
        **environment(),
        "diffusers": diffusers.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "latents": list(latents),
        "tokens": tokens,
        "sla": {"critical": args.critical, "block_q": args.block_q, "block_k": args.block_k},
        "gradient_checkpointing": not args.no_grad_ckpt,
        "smoke": args.smoke,
    }
    columns = ["variant", "mode", "forward_ms", "train_step_ms", "speedup_vs_dense_eager"]
    report(record, rows, [*columns, "peak_memory_gib", "error"])


if __name__ == "__main__":
    main()
