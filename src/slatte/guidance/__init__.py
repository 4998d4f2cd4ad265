"""Classifier-free guidance and spatio-temporal skip guidance (STG), `shared/specs/STG.md`.

`guided_model_fn(model, y=..., cfg_scale=4.0, stg=[STG(1.0, blocks=(9,))])` returns the
`model_fn(x_t, t)` every sampler takes.
"""

from slatte._lazy import lazy_package

__all__ = lazy_package(
    __name__,
    {
        ".combine": ("BranchPrediction", "combine"),
        ".config": ("CFG", "STG", "in_window"),
        ".model_fn": ("guided_model_fn",),
        ".strategies": ("STRATEGIES", "Strategy"),
    },
)
