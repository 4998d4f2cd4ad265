"""STG (spatio-temporal skip guidance) for diffusers video transformers, from an unmodified
pipeline call.

    handle = enable_stg(pipe, scale=1.0, blocks=[19], strategy="transformer_block")
    video = pipe(prompt, ...)        # STG on every denoising call
    handle.remove()                  # or: with enable_stg(...): pipe(...)

How it works (spec: shared/specs/STG.md). PyTorch hooks on the transformer and its blocks, no
patched methods:
- before the transformer runs, the conditional rows of the batch are appended once more to every
  per-sample input (the arguments the model's `ModelSpec.sample_inputs` names: latents,
  timestep, text states, masks; never a shared argument, whatever its shape) — these extra rows
  are the perturbed branch;
- models with one block row per sample (Wan, LTX, HunyuanVideo, CogVideoX, Mochi, ...): the
  blocks before the first perturbed one run on the original rows only, and the perturbed branch
  is forked from the conditional rows' states (every stream of a two-stream block) at that
  block ("fork, don't recompute"). Latte folds frames / patches into the block batch, and
  Wan-VACE adds control hints between blocks, so there the perturbed rows run through every
  block;
- the chosen blocks apply the strategy (`slatte.guidance.strategies`) to the perturbed rows only
  (batch-safe);
- after the transformer, the conditional rows become `e_c + s'·(e_c − e_p)` and the extra rows
  are dropped, so the pipeline sees its usual batch (every output: LTX-2's audio too, guided
  with its own CFG scale, `ModelSpec.side_outputs`). With the pipeline's CFG
  (`e_u + g·(e_c' − e_u)`), `s' = scale / g` makes the result the spec's
  `e_u + g·(e_c − e_u) + scale·(e_c − e_p)`.
All per-call state is reset at the start of every call, so an error mid-call leaks nothing into
the next; `remove()` (or `disable_stg(model)`) takes every hook off.
`capture_perturbed` (`e_c` returned, `e_p` handed over: STGGuidance) and `perturbed_pass`
(`e_p` alone, every row perturbed: the STG search) install the same hooks for callers that
combine the branches themselves.

Which rows are conditional: with a pipeline, LTX-Video, LTX-2, Latte, CogVideoX and Mochi
pipelines batch [uncond; cond] when CFG is on (second half conditional); the Wan-family and
HunyuanVideo-1.5 pipelines call the transformer separately, conditional first, so of two
consecutive calls with the same timestep only the first is guided (`ModelSpec.batched_cfg`);
the CFG scale comes from `ModelSpec.cfg_scale`. With a bare transformer every row is
conditional unless `cond_rows` says otherwise.

Block indices: in the order the forward runs the blocks (`execution_blocks`): Wan `blocks[i]`,
LTX `transformer_blocks[i]`, HunyuanVideo its dual-stream blocks then its single-stream ones;
Latte even indices spatial (`transformer_blocks[i // 2]`), odd temporal
(`temporal_transformer_blocks[i // 2]`). Published choices: LTX-Video 2B block 19 (the STG
authors' LTX-Video command: `--stg_block_idx 19 --stg_scale 1.0`, with rescaling); LTX-2.0
block 29 and LTX-2.3 block 28 (diffusers' LTX2Pipeline docs, for the model's own STG, which is
`attention_values` on the video and audio self-attention); Mochi blocks 34/35. For the other models we know of no published STG block; the
generic skip-layer-guidance default for DiTs (blocks 7, 8, 9, ComfyUI's `SkipLayerGuidanceDiT`)
is a starting point to tune from.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..guidance.config import in_window, per_block_strategies
from ..guidance.options import check_window
from ..guidance.strategies import STRATEGIES, Strategy
from .diffusers_common import ModelSpec, execution_blocks, model_spec, resolve_transformers
from .diffusers_sla import output_projection, qkv_projections

# ---------------------------------------------------------------------------------------------
# Per-call state
# ---------------------------------------------------------------------------------------------


@dataclass
class _Call:
    """One transformer call with STG: B original rows, the conditional rows among them, the
    scale to use inside the model for each guided output (`sample`, then the model's
    `ModelSpec.side_outputs`)."""

    batch: int
    cond_rows: list[int]
    scales: tuple[float, ...]
    forked: bool = False

    @property
    def total(self) -> int:
        return self.batch + len(self.cond_rows)


def map_tensors(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """`value` with `fn` applied to every tensor in it (walking tuples and lists)."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple):
        return tuple(map_tensors(v, fn) for v in value)
    if isinstance(value, list):
        return [map_tensors(v, fn) for v in value]
    return value


def parameter_names(module: nn.Module) -> tuple[str, ...]:
    """The names of `module.forward`'s parameters, in order (to name positional arguments)."""
    return tuple(inspect.signature(module.forward).parameters)


def _map_named(
    params: tuple[str, ...],
    names: tuple[str, ...],
    args: tuple,
    kwargs: dict,
    fn: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[tuple, dict]:
    """Apply `fn` to the tensors of the arguments called `names` (positional ones named by
    `params`); every other argument passes unchanged."""
    args = tuple(
        map_tensors(a, fn) if i < len(params) and params[i] in names else a
        for i, a in enumerate(args)
    )
    return args, {k: map_tensors(v, fn) if k in names else v for k, v in kwargs.items()}


def _dotted(obj: Any, path: str) -> Any:
    """`obj.a.b` for path "a.b"; None where an attribute is missing."""
    for name in path.split("."):
        obj = getattr(obj, name, None)
    return obj


def _argument(params: tuple[str, ...], args: tuple, kwargs: dict, name: str) -> Any:
    """The argument called `name` (None when not given)."""
    if name in kwargs:
        return kwargs[name]
    i = params.index(name) if name in params else len(args)
    return args[i] if i < len(args) else None


def _identity_map(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A diffusers attention's output under the identity attention map: out_proj(V)."""
    return output_projection(attn, qkv_projections(attn, x)[2], x)


@dataclass
class STGHandle:
    """The installed STG hooks of one transformer; `remove()` (or leaving the `with` block)
    takes them all off."""

    transformer: nn.Module
    spec: ModelSpec
    scale: float
    blocks: tuple[int, ...]
    # One per block of `blocks`, in the same order.
    strategies: tuple[Strategy, ...]
    fork: bool
    cond_rows: Callable[[int], Sequence[int]] | None
    start: float = 0.0
    stop: float = 1.0
    pipeline: Any = None
    # The pipeline attribute with this transformer's CFG scale (`ModelSpec.cfg_scale`; Wan2.2's
    # low-noise expert, `transformer_2`, runs with `guidance_scale_2`); None: no CFG to read.
    guidance_attr: str | None = "guidance_scale"
    # Every row of a call is the perturbed branch: no extra rows, the output is e_p
    # (`perturbed_pass`).
    perturb_all: bool = False
    _companions: list[STGHandle] = field(default_factory=list)
    _handles: list[RemovableHandle] = field(default_factory=list)
    _call: _Call | None = None
    _last_timestep: torch.Tensor | None = None

    # -- deciding the rows ---------------------------------------------------------------------

    def _plan(self, batch: int, timestep: Any) -> _Call | None:
        call = self._rows(batch, timestep)
        if call is None or (self.start == 0.0 and self.stop == 1.0):
            return call
        if not isinstance(timestep, torch.Tensor):
            raise ValueError("an STG step window needs the transformer's timestep tensor")
        scheduler_config = getattr(getattr(self.pipeline, "scheduler", None), "config", None)
        steps = getattr(scheduler_config, "num_train_timesteps", 1000)
        t = timestep.detach().float().cpu().reshape(batch, -1)[:, 0]
        inside = in_window(t, self.start, self.stop, steps)
        call.cond_rows = [r for r in call.cond_rows if bool(inside[r])]
        # Outside the window the perturbed branch is not computed at all.
        return call if call.cond_rows else None

    def _guidance(self, attr: str) -> float:
        """The pipeline's CFG scale at `attr` (its `guidance_scale` where that is missing)."""
        guidance = _dotted(self.pipeline, attr)
        if guidance is None:
            guidance = getattr(self.pipeline, "guidance_scale", 1.0)
        return float(guidance)

    def _rows(self, batch: int, timestep: Any) -> _Call | None:
        unscaled = (self.scale,) * (1 + len(self.spec.side_outputs))
        if self.perturb_all:
            # No original rows: the blocks see every row as a perturbed one.
            return _Call(0, list(range(batch)), (0.0,) * len(unscaled))
        if self.cond_rows is not None:
            rows = [int(r) for r in self.cond_rows(batch)]
            if not rows or any(not 0 <= r < batch for r in rows) or len(set(rows)) != len(rows):
                raise ValueError(
                    f"cond_rows({batch}) must give distinct row indices in [0, {batch}), got {rows}"
                )
            return _Call(batch, rows, unscaled)
        pipe = self.pipeline
        if pipe is None or self.guidance_attr is None:
            return _Call(batch, list(range(batch)), unscaled)
        # CogVideoX's pipeline decides CFG locally, from guidance_scale > 1, as the rest say.
        cfg = getattr(pipe, "do_classifier_free_guidance", None)
        cfg = self._guidance(self.guidance_attr) > 1 if cfg is None else bool(cfg)
        attrs = (self.guidance_attr, *(attr for _, attr in self.spec.side_outputs))
        scales = tuple(self.scale / self._guidance(a) for a in attrs) if cfg else unscaled
        if self.spec.batched_cfg:
            if cfg and batch % 2:
                raise ValueError(f"a CFG batch [uncond; cond] must be even, got {batch} rows")
            return _Call(batch, list(range(batch // 2 if cfg else 0, batch)), scales)
        # Separate calls: the first call of a step (new timestep) is the conditional one.
        if cfg and isinstance(timestep, torch.Tensor):
            same = (
                self._last_timestep is not None
                and self._last_timestep.shape == timestep.shape
                and bool(torch.equal(self._last_timestep, timestep.detach().cpu()))
            )
            self._last_timestep = None if same else timestep.detach().cpu()
            if same:
                return None
        return _Call(batch, list(range(batch)), scales)

    # -- the transformer's hooks ---------------------------------------------------------------

    def _model_pre(
        self, params: tuple[str, ...], module: nn.Module, args: tuple, kwargs: dict
    ) -> tuple[tuple, dict]:
        self._call = None  # never carry state over from an earlier (possibly failed) call
        for name in self.spec.own_guidance_inputs:
            value = _argument(params, args, kwargs, name)
            if value:
                raise ValueError(
                    f"{type(module).__name__} was called with {name}={value!r}: the pipeline is "
                    "running its own guidance pass beside CFG, which slatte's STG cannot tell from "
                    "the calls it guides. Call the pipeline with stg_scale=0.0 and "
                    "modality_scale=1.0 (LTX2Pipeline's defaults are 1.0 and 3.0) to use slatte's "
                    "STG, or remove slatte's STG to use the pipeline's own."
                )
        x = _argument(params, args, kwargs, "hidden_states")
        call = self._plan(x.shape[0], _argument(params, args, kwargs, "timestep"))
        if call is None:
            return args, kwargs
        index = torch.tensor(call.cond_rows, device=x.device)

        def extend(t: torch.Tensor) -> torch.Tensor:
            # A per-sample input gets the conditional rows once more; one row (or none) is
            # broadcast over the batch by the model, so it stays as it is.
            if t.dim() >= 1 and t.shape[0] == call.batch:
                return torch.cat([t, t.index_select(0, index.to(t.device))])
            return t

        call.forked = self.fork and self.spec.fork_inputs is not None
        self._call = call
        return _map_named(params, self.spec.sample_inputs, args, kwargs, extend)

    def _model_post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        call, self._call = self._call, None
        # output is None when the forward raised; without original rows it is e_p as it is.
        if call is None or output is None or call.batch == 0:
            return output
        names = ("sample", *(name for name, _ in self.spec.side_outputs))
        if isinstance(output, tuple):
            results = [self._guide(call, i, out) for i, out in enumerate(output[: len(names)])]
            return (*results, *output[len(names) :])
        for i, name in enumerate(names):
            setattr(output, name, self._guide(call, i, getattr(output, name)))
        return output

    def _guide(self, call: _Call, index: int, sample: torch.Tensor) -> torch.Tensor:
        """Output `index` of the extended batch → the caller's batch, its conditional rows
        guided: e_c + s'·(e_c − e_p)."""
        e, e_p = sample[: call.batch], sample[call.batch :]
        rows = torch.tensor(call.cond_rows, device=e.device)
        e_c = e.index_select(0, rows)
        guided = e_c + call.scales[index] * (e_c - e_p)
        channels = guided_channels(self.transformer) if index == 0 else None
        if channels is not None:
            # Learned variance: only the mean channels are guided (the rest stays e_c's).
            guided = torch.cat([guided[:, :channels], e_c[:, channels:]], dim=1)
        return e.index_copy(0, rows, guided.to(e.dtype))

    # -- the blocks' hooks ---------------------------------------------------------------------

    def _perturbed_rows(self, rows: int) -> slice:
        # Blocks see each sample as rows / total consecutive rows (Latte folds frames or
        # patches, sample-major); the perturbed samples are the last ones.
        call = self._call
        per_sample, rest = divmod(rows, call.total)
        if rest:
            raise RuntimeError(f"block batch {rows} is not a multiple of {call.total} samples")
        return slice(call.batch * per_sample, rows)

    def _prefix_pre(
        self, params: tuple[str, ...], module: nn.Module, args: tuple, kwargs: dict
    ) -> tuple[tuple, dict] | None:
        call = self._call
        if call is None or not call.forked:
            return None

        def drop(t: torch.Tensor) -> torch.Tensor:
            return t[: call.batch] if t.dim() >= 1 and t.shape[0] == call.total else t

        return _map_named(params, self.spec.fork_inputs, args, kwargs, drop)

    def _fork_pre(
        self, params: tuple[str, ...], module: nn.Module, args: tuple, kwargs: dict
    ) -> tuple[tuple, dict] | None:
        call = self._call
        if call is None or not call.forked:
            return None
        h = _argument(params, args, kwargs, "hidden_states")  # the shared prefix's output
        if h.shape[0] != call.batch:  # perturbed block 0: no prefix, the rows exist already
            return None
        rows = torch.tensor(call.cond_rows, device=h.device)

        def fork(t: torch.Tensor) -> torch.Tensor:
            # Every per-sample block input, each stream (video, text) included, gets the
            # conditional rows once more: the perturbed branch starts from them.
            if t.dim() >= 1 and t.shape[0] == call.batch:
                return torch.cat([t, t.index_select(0, rows.to(t.device))])
            return t

        return _map_named(params, self.spec.fork_inputs, args, kwargs, fork)

    def _block_post(
        self, params: tuple[str, ...], module: nn.Module, args: tuple, kwargs: dict, output: Any
    ) -> Any:
        if self._call is None:
            return output
        outputs = output if isinstance(output, tuple) else (output,)
        rows = self._perturbed_rows(outputs[0].shape[0])
        # Each stream the block updates comes back as it went in for the perturbed rows.
        skipped = tuple(
            torch.cat(
                [out[: rows.start], _argument(params, args, kwargs, name)[rows].to(out.dtype)]
            )
            for name, out in zip(self.spec.block_streams, outputs, strict=False)
        )
        skipped += outputs[len(skipped) :]
        return skipped if isinstance(output, tuple) else skipped[0]

    def _attention_post(
        self,
        strategy: Strategy,
        params: tuple[str, ...],
        module: nn.Module,
        args: tuple,
        kwargs: dict,
        output: Any,
    ) -> Any:
        if self._call is None:
            return output
        joint = self.spec.joint
        x = _argument(params, args, kwargs, "hidden_states")
        if joint is None:
            rows = self._perturbed_rows(output.shape[0])
            replacement = strategy.attention_output(x[rows], partial(_identity_map, module))
            return torch.cat([output[: rows.start], replacement.to(output.dtype)])
        # Joint video + text attention: both outputs are perturbed, each from its own input.
        rows = self._perturbed_rows(output[0].shape[0])
        inputs = (x[rows], _argument(params, args, kwargs, "encoder_hidden_states")[rows])
        identity = None

        def identity_map(stream: int, _: torch.Tensor) -> torch.Tensor:
            nonlocal identity
            if identity is None:
                identity = joint.identity_map(module, *inputs)
            return identity[stream]

        def perturbed(stream: int, inp: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
            if inp.shape[1:] != out.shape[1:]:
                # Not a residual branch of its input: the text output of Mochi's last block,
                # which the block discards. It stays as computed.
                return out[rows]
            return strategy.attention_output(inp, partial(identity_map, stream))

        return tuple(
            torch.cat([out[: rows.start], perturbed(stream, inp, out).to(out.dtype)])
            for stream, (inp, out) in enumerate(zip(inputs, output, strict=True))
        )

    # -- install / remove ----------------------------------------------------------------------

    def install(self) -> STGHandle:
        spec = self.spec
        blocks = execution_blocks(self.transformer)
        model_pre = partial(self._model_pre, parameter_names(self.transformer))
        self._handles.append(
            self.transformer.register_forward_pre_hook(model_pre, with_kwargs=True)
        )
        self._handles.append(
            self.transformer.register_forward_hook(
                self._model_post, with_kwargs=True, always_call=True
            )
        )
        if self.fork and spec.fork_inputs is not None:
            first = min(self.blocks)
            for block in blocks[:first]:
                prefix_pre = partial(self._prefix_pre, parameter_names(block))
                self._handles.append(block.register_forward_pre_hook(prefix_pre, with_kwargs=True))
            fork_pre = partial(self._fork_pre, parameter_names(blocks[first]))
            self._handles.append(
                blocks[first].register_forward_pre_hook(fork_pre, with_kwargs=True)
            )
        for index, strategy in zip(self.blocks, self.strategies, strict=True):
            block = blocks[index]
            if strategy.skips_block:
                targets, post = [block], self._block_post
            else:
                names = (spec.self_attention, *spec.side_self_attentions)
                targets = [getattr(block, n) for n in names]
                post = partial(self._attention_post, strategy)
            for target in targets:
                hook = partial(post, parameter_names(target))
                self._handles.append(target.register_forward_hook(hook, with_kwargs=True))
        self.transformer._slatte_stg = self
        return self

    def remove(self) -> None:
        for companion in self._companions:
            companion.remove()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._call = None
        if getattr(self.transformer, "_slatte_stg", None) is self:
            del self.transformer._slatte_stg

    def __enter__(self) -> STGHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def enable_stg(
    model: Any,
    *,
    scale: float = 1.0,
    blocks: Sequence[int],
    strategy: str | Sequence[str] = "transformer_block",
    fork: bool = True,
    cond_rows: Callable[[int], Sequence[int]] | None = None,
    start: float = 0.0,
    stop: float = 1.0,
    scale_2: float | None = None,
    blocks_2: Sequence[int] | None = None,
    strategy_2: str | Sequence[str] | None = None,
) -> STGHandle:
    """Apply STG on every call of a diffusers video transformer until the handle is removed.

    Args:
        model: a pipeline (its `.transformer`, and `.transformer_2` where it has one (Wan2.2's
            two experts), get the hooks; its CFG settings are read at each call) or a bare
            transformer of a class in `SUPPORTED` (every row conditional, unless `cond_rows`
            is given).
        scale: the STG weight w in `e = e_u + w_cfg (e_c − e_u) + w (e_c − e_p)`.
        blocks: indices of the perturbed blocks (see the module docstring for Latte's order).
        strategy: the name of one of `slatte.guidance.strategies.STRATEGIES`, or one name per
            block of `blocks` (different strategies at different depths, one perturbed branch).
        fork: share the blocks before the first perturbed one between the conditional and
            perturbed branches (Wan, LTX); False runs the perturbed rows through every block.
        cond_rows: `cond_rows(batch) -> row indices` of the conditional rows of a bare
            transformer's batch.
        start, stop: the step window, as fractions of the schedule from the noisy end
            (`slatte.guidance` convention: progress = 1 − t / (T − 1), T the scheduler's
            `num_train_timesteps`, 1000 by default); outside it STG is not computed.
        scale_2, blocks_2, strategy_2: Wan2.2's low-noise expert (`transformer_2`) on its own
            terms, as the pipeline's `guidance_scale_2` is its CFG scale (the STG search's
            `guider_2` config); None: the first expert's `scale` / `blocks` / `strategy`.
    Returns an `STGHandle` (also a context manager; with two experts, the first one's, which
    removes both); a transformer holds at most one.
    """
    check_window("stg window", start, stop)
    transformers = resolve_transformers(model)
    second = {"scale_2": scale_2, "blocks_2": blocks_2, "strategy_2": strategy_2}
    given = [name for name, value in second.items() if value is not None]
    if given and len(transformers) == 1:
        raise ValueError(
            f"{', '.join(given)} set the STG of a second expert (a pipeline's transformer_2, "
            f"Wan2.2); {type(model).__name__} has one transformer"
        )
    terms = [(scale, blocks, strategy)]
    if len(transformers) == 2:
        terms.append(
            (
                scale if scale_2 is None else scale_2,
                blocks if blocks_2 is None else blocks_2,
                strategy if strategy_2 is None else strategy_2,
            )
        )
    handles = []
    for i, (transformer, suffix) in enumerate(zip(transformers, ("", "_2"), strict=False)):
        # Every expert's terms are checked before any hook goes on.
        expert_scale, expert_blocks, expert_strategies = _check_terms(transformer, terms[i], suffix)
        handles.append(
            STGHandle(
                transformer=transformer,
                spec=model_spec(transformer),
                scale=float(expert_scale),
                blocks=expert_blocks,
                strategies=expert_strategies,
                fork=fork,
                cond_rows=cond_rows,
                start=float(start),
                stop=float(stop),
                pipeline=model if model is not transformers[0] else None,
                guidance_attr=model_spec(transformer).cfg_scale if i == 0 else "_guidance_scale_2",
            )
        )
    for handle in handles:
        handle.install()
    handles[0]._companions = handles[1:]
    return handles[0]


def _check_terms(
    transformer: nn.Module, terms: tuple[float, Sequence[int], str | Sequence[str]], suffix: str
) -> tuple[float, tuple[int, ...], tuple[Strategy, ...]]:
    """One expert's (scale, blocks, strategy) (`enable_stg`'s arguments ending in `suffix`),
    checked: the blocks as a tuple, one strategy per block."""
    scale, blocks, strategy = terms
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ValueError(f"scale{suffix} must be a number, got {scale!r}")
    blocks = tuple(blocks)
    _check_blocks(transformer, blocks, f"blocks{suffix}")
    names = (strategy,) * len(blocks) if isinstance(strategy, str) else strategy
    return scale, blocks, tuple(STRATEGIES[name] for name in per_block_strategies(names, blocks))


def capture_perturbed(
    transformer: nn.Module,
    *,
    blocks: Sequence[int],
    strategy: str | Sequence[str],
    store: Callable[[torch.Tensor], None],
    fork: bool = True,
) -> STGHandle:
    """STG hooks on a bare `transformer` that leave its output as it is (`e_c`: every row
    conditional, weight 0) and hand each call's perturbed prediction `e_p`, one row per input
    row, to `store`: for callers that combine the branches themselves (`STGGuidance`, the STG
    search). `blocks`, `strategy`, `fork` as in `enable_stg`; `remove()` takes every hook off.
    """
    handle = enable_stg(
        transformer, scale=0.0, blocks=blocks, strategy=strategy, fork=fork, cond_rows=range
    )

    def keep(module: nn.Module, args: tuple, output: Any) -> None:
        if output is None:  # the forward raised
            return
        sample = output[0] if isinstance(output, tuple) else output.sample
        store(sample[sample.shape[0] // 2 :])

    # Prepended, it sees the raw output [e_c; e_p] before the STG hook drops the perturbed rows.
    handle._handles.append(transformer.register_forward_hook(keep, prepend=True, always_call=True))
    return handle


def perturbed_pass(
    transformer: nn.Module, *, blocks: Sequence[int], strategy: str | Sequence[str]
) -> STGHandle:
    """Hooks under which every call of a bare `transformer` returns the perturbed prediction
    `e_p` of all its rows: a plain third pass (no extra rows, no fork), for callers that have
    `e_c` already (the STG search). `blocks`, `strategy` as in `enable_stg`."""
    handle = enable_stg(transformer, scale=0.0, blocks=blocks, strategy=strategy, fork=False)
    handle.perturb_all = True
    return handle


def guided_channels(transformer: nn.Module) -> int | None:
    """With a learned variance, (mean; variance) along dim 1 of the output: the number of mean
    channels, the only ones guidance acts on; None where the whole output is the prediction."""
    config = getattr(transformer, "config", None)
    in_ch, out_ch = getattr(config, "in_channels", None), getattr(config, "out_channels", None)
    if model_spec(transformer).learned_sigma and out_ch == 2 * in_ch:
        return in_ch
    return None


def _check_blocks(transformer: nn.Module, blocks: tuple, name: str = "blocks") -> None:
    model_spec(transformer)
    depth = len(execution_blocks(transformer))
    if not blocks or any(
        isinstance(b, bool) or not isinstance(b, int) or not 0 <= b < depth for b in blocks
    ):
        raise ValueError(
            f"{name} must be a non-empty list of indices in [0, {depth}), got {blocks}"
        )
    if len(set(blocks)) != len(blocks):
        raise ValueError(f"{name} must be distinct, got {blocks}")
    if getattr(transformer, "_slatte_stg", None) is not None:
        raise ValueError("STG is already enabled on this transformer; remove its handle first")


def disable_stg(model: Any) -> None:
    """Remove the STG hooks of `model` (a pipeline, each of its transformers, or a
    transformer), if any: the way to undo
    `enable_stg` where its handle is not at hand, as `disable_sla` undoes `enable_sla`."""
    for transformer in resolve_transformers(model):
        handle = getattr(transformer, "_slatte_stg", None)
        if handle is not None:
            handle.remove()


__all__ = [
    "STGHandle",
    "capture_perturbed",
    "disable_stg",
    "enable_stg",
    "guided_channels",
    "perturbed_pass",
]
