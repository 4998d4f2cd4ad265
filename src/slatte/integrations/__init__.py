"""slatte inside other codebases: SLA and STG for diffusers video transformers (Wan2.1 / 2.2,
Wan-VACE, SkyReels-V2, LTX-Video, LTX-2, Latte, HunyuanVideo / 1.5, CogVideoX, Mochi), Latte checkpoint
conversion, SLA fine-tuning of diffusers transformers.

    import slatte.integrations as si
    si.enable_sla(pipe.transformer, critical=0.05)           # SLA self-attention
    with si.enable_stg(pipe, scale=1.0, blocks=[19]):        # STG for the calls inside
        video = pipe(prompt).frames
    si.enable_fused_gelu(pipe.transformer)                   # GEMM + GELU fused (inference)

diffusers itself is imported only where needed.
"""

from slatte._lazy import lazy_package

__all__ = lazy_package(
    __name__,
    {
        ".diffusers_common": ("SUPPORTED",),
        ".diffusers_gelu": ("disable_fused_gelu", "enable_fused_gelu"),
        ".diffusers_sla": (
            "SLAAttnProcessor",
            "disable_sla",
            "enable_sla",
            "from_pretrained_sla",
            "load_sla_projections",
            "save_pretrained_sla",
            "sla_config_of",
        ),
        ".diffusers_stg": ("STGHandle", "disable_stg", "enable_stg"),
        ".finetune": ("FinetuneConfig", "finetune"),
        ".latte_convert": (
            "convert_diffusers_latte",
            "convert_official_latte",
            "load_official_checkpoint",
        ),
    },
)
