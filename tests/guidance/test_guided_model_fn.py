"""`guided_model_fn` on tiny random Latte models: forked == naive, the formula end to end, batch
layout, scope of perturbations, and the cost (block evaluations) of the forked evaluation."""

from collections import Counter

import pytest
import torch

from slatte.guidance import CFG, STG, guided_model_fn
from slatte.guidance.strategies import STRATEGIES
from slatte.models import VideoDiT, VideoDiTConfig

TOL = {"atol": 2e-5, "rtol": 1e-4}


def _model(block_pattern="alternating", depth=4, text_dim=None, num_classes=5, seed=0):
    torch.manual_seed(seed)
    config = VideoDiTConfig(
        input_size=4,
        num_frames=3,
        in_channels=2,
        hidden_size=32,
        depth=depth,
        num_heads=2,
        patch_size=2,
        num_classes=num_classes,
        block_pattern=block_pattern,
        text_dim=text_dim,
    )
    model = VideoDiT(config).eval()
    # adaLN-Zero starts every block as the identity, which would make every perturbation a
    # no-op; random values there give a model where each block matters.
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                param.normal_(std=0.3)
    return model


def _inputs(model, batch=3, seed=1):
    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(
        batch, cfg.num_frames, cfg.in_channels, cfg.input_size, cfg.input_size, generator=gen
    )
    t = torch.tensor([999, 640, 20, 333][:batch])
    y = torch.tensor([0, 3, 1, 4][:batch])
    return x, t, y


@pytest.fixture(scope="module")
def alternating():
    return _model("alternating", depth=4)


@pytest.fixture(scope="module")
def full():
    return _model("full", depth=3)


# (fixture, block): spatial first block, temporal, temporal last block, full first / middle / last
BLOCKS = [
    ("alternating", 0),
    ("alternating", 1),
    ("alternating", 3),
    ("full", 0),
    ("full", 1),
    ("full", 2),
]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(("which", "block"), BLOCKS)
def test_each_strategy_changes_the_output(which, block, strategy, request):
    model = request.getfixturevalue(which)
    x, t, y = _inputs(model)
    with torch.no_grad():
        plain = model(x, t, y)
        perturbed = model(x, t, y, perturbations={block: STRATEGIES[strategy]})
    # Every row changes: a strategy that silently does nothing, or hits only some rows, fails.
    change = (perturbed - plain).flatten(1).abs().amax(1)
    assert (change > 1e-3).all(), change


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(("which", "block"), BLOCKS)
def test_forked_equals_naive(which, block, strategy, request):
    model = request.getfixturevalue(which)
    x, t, y = _inputs(model)  # rows differ in x, t and y: a batch-layout bug shows
    term = STG(1.5, (block,), strategy)
    with torch.no_grad():
        forked = guided_model_fn(model, y=y, cfg_scale=3.0, stg=[term], rescale=0.5)(x, t)
        naive = guided_model_fn(model, y=y, cfg_scale=3.0, stg=[term], rescale=0.5, fork=False)(
            x, t
        )
        cfg_only = guided_model_fn(model, y=y, cfg_scale=3.0, rescale=0.5)(x, t)
    torch.testing.assert_close(forked, naive, **TOL)
    assert (forked - cfg_only).abs().amax() > 1e-3  # the STG term was applied


def test_forked_equals_naive_with_several_terms_windows_and_no_cfg(alternating):
    x, t, y = _inputs(alternating, batch=4)
    terms = [
        STG(1.0, (3,), "attention_values"),
        STG(0.7, (2, 1), "attention_skip", start=0.0, stop=0.5),  # rows with t = 999, 640
        STG(0.4, (0,), "attention_block", start=0.6),  # rows with t = 333, 20
    ]
    for cfg in (1.0, CFG(2.5, start=0.3)):
        with torch.no_grad():
            forked = guided_model_fn(alternating, y=y, cfg_scale=cfg, stg=terms)(x, t)
            naive = guided_model_fn(alternating, y=y, cfg_scale=cfg, stg=terms, fork=False)(x, t)
        torch.testing.assert_close(forked, naive, **TOL)


def test_per_depth_strategies_in_one_branch(alternating):
    x, t, y = _inputs(alternating)
    per_depth = STG(1.0, (3, 0), ("attention_values", "transformer_block"))
    singles = [STG(1.0, (0, 3), name) for name in ("transformer_block", "attention_values")]
    with torch.no_grad():
        forked = guided_model_fn(alternating, y=y, cfg_scale=3.0, stg=[per_depth])(x, t)
        naive = guided_model_fn(alternating, y=y, cfg_scale=3.0, stg=[per_depth], fork=False)
        outputs = [guided_model_fn(alternating, y=y, cfg_scale=3.0, stg=[s])(x, t) for s in singles]
    torch.testing.assert_close(forked, naive(x, t), **TOL)
    # Each block got its own strategy: the result is neither single-strategy one.
    for single in outputs:
        assert (forked - single).abs().amax() > 1e-3


def test_matches_the_formula_on_separate_forward_passes(alternating):
    """Reference: one model forward per row and branch, combined by hand as in the spec."""
    model = alternating
    x, t, y = _inputs(model, batch=3)  # t = 999, 640, 20: progress 0, 0.36, 0.98
    cfg = CFG(4.0, start=0.0, stop=0.9)  # rows 0, 1
    terms = [STG(1.5, (1,), "attention_values"), STG(0.5, (2,), "transformer_block", 0.3, 1.0)]
    with torch.no_grad():
        out = guided_model_fn(model, y=y, cfg_scale=cfg, stg=terms, rescale=0.7)(x, t)
        expected = []
        for i in range(3):
            xi, ti, yi = x[i : i + 1], t[i : i + 1], y[i : i + 1]
            full_c = model(xi, ti, yi)
            e_c = full_c[:, :, :2]  # learned sigma: 2 of the 4 output channels are the mean
            e = e_c.clone()
            if i in (0, 1):
                e_u = model(xi, ti, torch.tensor([model.config.num_classes]))[:, :, :2]
                e = e_u + 4.0 * (e_c - e_u)
            values = {1: STRATEGIES["attention_values"]}
            e = e + 1.5 * (e_c - model(xi, ti, yi, perturbations=values)[:, :, :2])
            if i in (1, 2):
                skip = {2: STRATEGIES["transformer_block"]}
                e_p = model(xi, ti, yi, perturbations=skip)[:, :, :2]
                e = e + 0.5 * (e_c - e_p)
            e = (0.7 * e_c.std() / e.std() + 0.3) * e
            expected.append(torch.cat([e, full_c[:, :, 2:]], dim=2))
    torch.testing.assert_close(out, torch.cat(expected), **TOL)


def test_rows_are_guided_independently_of_their_batch(full):
    x, t, y = _inputs(full, batch=3)
    make = lambda **kw: guided_model_fn(
        full, cfg_scale=3.0, stg=[STG(2.0, (1,))], rescale=0.7, **kw
    )
    with torch.no_grad():
        batched = make(y=y)(x, t)
        single = [make(y=y[i : i + 1])(x[i : i + 1], t[i : i + 1]) for i in range(3)]
    torch.testing.assert_close(batched, torch.cat(single), **TOL)


def test_text_model_forked_equals_naive_with_null_text_of_another_length():
    model = _model("alternating", depth=2, text_dim=6, num_classes=0)
    x, t, _ = _inputs(model, batch=2)
    gen = torch.Generator().manual_seed(3)
    text, null_text = torch.randn(2, 5, 6, generator=gen), torch.randn(1, 2, 6, generator=gen)
    text_mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    term = STG(1.0, (1,), "attention_values")
    for null in ({"null_text": null_text}, {}):  # an encoded empty prompt, or no text at all
        kwargs = {"text": text, "text_mask": text_mask, "cfg_scale": 5.0, "stg": [term], **null}
        with torch.no_grad():
            forked = guided_model_fn(model, **kwargs)(x, t)
            naive = guided_model_fn(model, **kwargs, fork=False)(x, t)
        torch.testing.assert_close(forked, naive, **TOL)


def test_a_call_that_raises_leaves_the_model_unperturbed(alternating):
    model = alternating
    x, t, y = _inputs(model)
    stg = [STG(2.0, (1,), "attention_block")]
    with torch.no_grad():
        plain_before = model(x, t, y)
        cfg_before = guided_model_fn(model, y=y, cfg_scale=3.0)(x, t)
        stg_before = guided_model_fn(model, y=y, cfg_scale=3.0, stg=stg)(x, t)

    def fail(module, args):
        # Block 2 is first reached inside the perturbed branch (forked at block 1).
        raise RuntimeError("boom")

    handle = model.blocks[2].register_forward_pre_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="boom"), torch.no_grad():
            guided_model_fn(model, y=y, cfg_scale=3.0, stg=stg)(x, t)
    finally:
        handle.remove()
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y), plain_before, rtol=0, atol=0)
        torch.testing.assert_close(guided_model_fn(model, y=y, cfg_scale=3.0)(x, t), cfg_before)
        torch.testing.assert_close(
            guided_model_fn(model, y=y, cfg_scale=3.0, stg=stg)(x, t), stg_before
        )
    assert not torch.allclose(stg_before, cfg_before)


class _BlockRows:
    """Counts rows × calls per block (forward pre-hooks) and rows through embed / final."""

    def __init__(self, model):
        self.blocks, self.embed, self.final = Counter(), 0, 0
        self.handles = [
            block.register_forward_pre_hook(lambda m, args, i=i: self._block(i, args[0]))
            for i, block in enumerate(model.blocks)
        ]
        self.handles.append(model.x_embedder.register_forward_pre_hook(self._embed))
        self.handles.append(model.final_layer.register_forward_pre_hook(self._final))
        self.frames = model.config.num_frames

    def _block(self, i, h):
        self.blocks[i] += h.shape[0]

    def _embed(self, module, args):
        self.embed += args[0].shape[0] // self.frames  # (B·F, C, H, W)

    def _final(self, module, args):
        self.final += args[0].shape[0]

    def per_block(self, depth):
        return [self.blocks[i] for i in range(depth)]

    def remove(self):
        for handle in self.handles:
            handle.remove()


@pytest.mark.parametrize(
    ("cfg", "stg", "fork", "per_block"),
    [
        # batch 2, depth 4: CFG runs 4 rows through every block.
        (3.0, [], True, [4, 4, 4, 4]),
        # The branch forks at block 2: blocks 0, 1 run once for the shared rows.
        (3.0, [STG(1.0, (2,))], True, [4, 4, 6, 6]),
        # Naive: a full third pass.
        (3.0, [STG(1.0, (2,))], False, [6, 6, 6, 6]),
        # CFG scale 1: no unconditional rows.
        (1.0, [STG(1.0, (2,))], True, [2, 2, 4, 4]),
        # Two terms fork at their own first blocks, the prefix still once.
        (3.0, [STG(1.0, (3,)), STG(0.5, (3, 1), "attention_values")], True, [4, 6, 6, 8]),
        # Different strategies at blocks 1 and 3: one branch, forked once at block 1.
        (3.0, [STG(1.0, (3, 1), ("attention_values", "transformer_block"))], True, [4, 6, 6, 6]),
        # Outside its window (both rows are at progress < 0.5) a term is not computed at all.
        (3.0, [STG(1.0, (0,), start=0.5)], True, [4, 4, 4, 4]),
        # A term with scale 0 is not computed either.
        (3.0, [STG(0.0, (0,))], True, [4, 4, 4, 4]),
        # CFG outside its window: only the conditional rows.
        (CFG(3.0, start=0.5), [STG(1.0, (1,))], True, [2, 4, 4, 4]),
    ],
)
def test_cost_in_block_evaluations(alternating, cfg, stg, fork, per_block):
    x, t, y = _inputs(alternating, batch=2)  # t = 999, 640
    counter = _BlockRows(alternating)
    try:
        with torch.no_grad():
            guided_model_fn(alternating, y=y, cfg_scale=cfg, stg=stg, fork=fork)(x, t)
    finally:
        counter.remove()
    assert counter.per_block(4) == per_block
    if fork:  # the embedding runs once per shared row; each branch only adds a final layer
        assert counter.embed == per_block[0]
        assert counter.final == per_block[-1]


def test_window_selects_rows_and_computes_only_those(alternating):
    x, t, y = _inputs(alternating, batch=3)  # progress 0, 0.36, 0.98
    counter = _BlockRows(alternating)
    try:
        with torch.no_grad():
            guided_model_fn(alternating, y=y, stg=[STG(1.0, (1,), stop=0.5)])(x, t)
    finally:
        counter.remove()
    assert counter.per_block(4) == [3, 5, 5, 5]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"stg": [STG(1.0, (4,))]}, r"stg blocks \(4,\) out of range: the model has 4 blocks"),
        ({"stg": [(1.0, 2)]}, r"stg must be a sequence of STG terms"),
        ({"rescale": 1.5}, r"rescale must lie in \[0, 1\]"),
        ({"cfg_scale": -2.0}, r"cfg scale must be >= 0"),
        ({"y": None, "cfg_scale": 2.0}, r"cfg scale != 1 needs a condition"),
        (
            {"null_text": torch.zeros(1, 2, 6), "cfg_scale": 2.0},
            r"null_text was given without text",
        ),
        ({"num_train_timesteps": 1}, r"num_train_timesteps must be an int >= 2, got 1"),
    ],
)
def test_bad_arguments(alternating, kwargs, match):
    _, _, y = _inputs(alternating)
    with pytest.raises(ValueError, match=match):
        guided_model_fn(alternating, **{"y": y, **kwargs})


def test_bad_call(alternating):
    x, t, y = _inputs(alternating)
    model_fn = guided_model_fn(alternating, y=y, cfg_scale=2.0)
    with pytest.raises(ValueError, match=r"model_fn takes t of shape \(3,\).*got \(2,\)"):
        model_fn(x, t[:2])
    with pytest.raises(ValueError, match="y has batch 3 but the sampler's x_t has batch 2"):
        model_fn(x[:2], t[:2])


def test_fork_needs_the_three_step_forward():
    class OnePass(torch.nn.Module):
        config = VideoDiTConfig(
            input_size=4, num_frames=1, in_channels=1, hidden_size=4, depth=2, num_heads=1
        )
        blocks = torch.nn.ModuleList([torch.nn.Identity(), torch.nn.Identity()])

    with pytest.raises(ValueError, match=r"fork=True needs a model with the three-step forward"):
        guided_model_fn(OnePass(), stg=[STG(1.0, (1,))])
    guided_model_fn(OnePass(), stg=[STG(1.0, (1,))], fork=False)
