"""slatte inside other codebases: SLA and STG for diffusers video transformers (Wan2.1 / 2.2,
Wan-VACE, SkyReels-V2, LTX-Video, Latte, HunyuanVideo / 1.5, CogVideoX, Mochi), Latte checkpoint
conversion, SLA fine-tuning of diffusers transformers.

    import slatte.integrations as si
    si.enable_sla(pipe.transformer, critical=0.05)           # SLA self-attention
    with si.enable_stg(pipe, scale=1.0, blocks=[19]):        # STG for the calls inside
        video = pipe(prompt).frames
    si.enable_fused_gelu(pipe.transformer)                   # GEMM + GELU fused (inference)

diffusers itself is imported only where needed.
"""

from .diffusers_common import SUPPORTED
from .diffusers_gelu import disable_fused_gelu, enable_fused_gelu
from .diffusers_sla import (
    SLAAttnProcessor,
    disable_sla,
    enable_sla,
    from_pretrained_sla,
    load_sla_projections,
    save_pretrained_sla,
    sla_config_of,
)
from .diffusers_stg import STGHandle, disable_stg, enable_stg
from .finetune import FinetuneConfig, finetune
from .latte_convert import convert_diffusers_latte, convert_official_latte, load_official_checkpoint

__all__ = [
    "SUPPORTED",
    "FinetuneConfig",
    "SLAAttnProcessor",
    "STGHandle",
    "convert_diffusers_latte",
    "convert_official_latte",
    "disable_fused_gelu",
    "disable_sla",
    "disable_stg",
    "enable_fused_gelu",
    "enable_sla",
    "enable_stg",
    "finetune",
    "from_pretrained_sla",
    "load_official_checkpoint",
    "load_sla_projections",
    "save_pretrained_sla",
    "sla_config_of",
]
