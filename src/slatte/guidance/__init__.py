"""Classifier-free guidance and spatio-temporal skip guidance (STG), `shared/specs/STG.md`.

`guided_model_fn(model, y=..., cfg_scale=4.0, stg=[STG(1.0, blocks=(9,))])` returns the
`model_fn(x_t, t)` every sampler takes.
"""

from .combine import BranchPrediction, combine
from .config import CFG, STG, in_window
from .model_fn import guided_model_fn
from .strategies import STRATEGIES, Strategy

__all__ = [
    "CFG",
    "STG",
    "STRATEGIES",
    "BranchPrediction",
    "Strategy",
    "combine",
    "guided_model_fn",
    "in_window",
]
