"""slatte: fast video diffusion transformers (Latte-style DiT, SLA attention, STG guidance).

SLA and STG on a diffusers transformer (Wan2.1, LTX-Video, Latte):
    enable_sla(transformer, ...) / disable_sla(transformer)
    enable_stg(transformer, ...) / disable_stg(handle)
    enable_fused_gelu(transformer) / disable_fused_gelu(transformer)

Packages:
    slatte.ops           attention operators (SDPA, SLA sparse-linear attention, linear)
    slatte.nn            attention, embedding and MLP modules
    slatte.models        the video DiT, its named configs, save / load
    slatte.guidance      classifier-free guidance and STG
    slatte.diffusion     noise schedules, samplers, long videos
    slatte.training      the trainer, run folders and checkpoints
    slatte.data          moving digits, video folders, VAE latents
    slatte.eval          metrics (digit accuracy, Fréchet distances, FVD, motion)
    slatte.integrations  diffusers: SLA processor, STG hooks, converters, fine-tuning
    slatte.pretrained    the models that ship with slatte
    slatte.sampling      from a trained model to video files

The command line is `slatte` (`python -m slatte.cli`): train, sample, bench, eval, convert,
finetune. Everything is imported on first use, so `import slatte` stays light.
"""

from slatte._lazy import lazy_package

__version__ = "0.1.0"

lazy_package(
    __name__,
    {
        ".integrations": (
            "enable_sla",
            "disable_sla",
            "enable_stg",
            "disable_stg",
            "enable_fused_gelu",
            "disable_fused_gelu",
        )
    },
    submodules=(
        "ops",
        "nn",
        "models",
        "guidance",
        "diffusion",
        "training",
        "data",
        "eval",
        "integrations",
        "pretrained",
        "sampling",
    ),
)
