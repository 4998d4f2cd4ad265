"""The guidance formula on synthetic predictions, against a per-row, per-element reference."""

import pytest
import torch

from slatte.guidance import BranchPrediction, combine


def _preds(batch=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, 2, 3, 4, 4)  # (B, F, C, H, W)
    return [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(4)]


def _reference(e_c, e_u, w_cfg, terms, rescale):
    """The spec's formula, one row at a time: terms are (scale, e_p, row list or None)."""
    out = torch.empty_like(e_c)
    for i in range(e_c.shape[0]):
        e = e_c[i].clone() if e_u is None else e_u[i] + w_cfg * (e_c[i] - e_u[i])
        for scale, e_p, rows in terms:
            if rows is None or i in rows:
                e = e + scale * (e_c[i] - e_p[i])
        if rescale:
            f = e_c[i].std() / e.std()
            e = (rescale * f + 1 - rescale) * e
        out[i] = e
    return out


def test_scale_zero_gives_unconditional_and_scale_one_conditional():
    e_c, e_u, _, _ = _preds()
    torch.testing.assert_close(combine(e_c, uncond=BranchPrediction(0.0, e_u)), e_u)
    torch.testing.assert_close(combine(e_c, uncond=BranchPrediction(1.0, e_u)), e_c)
    torch.testing.assert_close(combine(e_c), e_c)


def test_stg_scale_zero_is_no_change_and_moves_away_from_perturbed():
    e_c, _, e_p, _ = _preds()
    torch.testing.assert_close(combine(e_c, perturbed=[BranchPrediction(0.0, e_p)]), e_c)
    out = combine(e_c, perturbed=[BranchPrediction(2.0, e_p)])
    torch.testing.assert_close(out, 3 * e_c - 2 * e_p)


@pytest.mark.parametrize("rescale", [0.0, 0.7, 1.0])
@pytest.mark.parametrize("w_cfg", [0.0, 1.0, 4.5])
def test_cfg_and_several_terms_match_reference(w_cfg, rescale):
    e_c, e_u, e_p1, e_p2 = _preds()
    terms = [(1.5, e_p1, None), (0.5, e_p2, None)]
    out = combine(
        e_c,
        uncond=BranchPrediction(w_cfg, e_u),
        perturbed=[BranchPrediction(s, p) for s, p, _ in terms],
        rescale=rescale,
    )
    torch.testing.assert_close(out, _reference(e_c, e_u, w_cfg, terms, rescale))


def test_branches_covering_some_rows_only_touch_those_rows():
    e_c, e_u, e_p1, e_p2 = _preds(batch=4)
    cfg_rows, p1_rows, p2_rows = [1, 3], [0, 3], [2]
    idx = lambda rows: torch.tensor(rows)
    out = combine(
        e_c,
        # Each branch's prediction holds only its rows, in order.
        uncond=BranchPrediction(3.0, e_u[idx(cfg_rows)], idx(cfg_rows)),
        perturbed=[
            BranchPrediction(1.0, e_p1[idx(p1_rows)], idx(p1_rows)),
            BranchPrediction(2.0, e_p2[idx(p2_rows)], idx(p2_rows)),
        ],
        rescale=0.7,
    )
    e_u_full = e_c.clone()
    e_u_full[cfg_rows] = e_u[cfg_rows]  # rows without CFG: e_u = e_c makes the CFG term vanish
    expected = _reference(e_c, e_u_full, 3.0, [(1.0, e_p1, p1_rows), (2.0, e_p2, p2_rows)], 0.7)
    torch.testing.assert_close(out, expected)


def test_rescale_restores_conditional_std_per_sample():
    e_c, e_u, _, _ = _preds()
    e_c[1] *= 5  # rows with different spread: a global (not per-sample) std would fail
    out = combine(e_c, uncond=BranchPrediction(7.0, e_u), rescale=1.0)
    torch.testing.assert_close(out.flatten(1).std(1), e_c.flatten(1).std(1))
    unscaled = combine(e_c, uncond=BranchPrediction(7.0, e_u))
    assert not torch.allclose(out, unscaled)


def test_half_precision_is_combined_in_fp32_and_returned_in_its_dtype():
    e_c, e_u, _, _ = _preds()
    out = combine(e_c.bfloat16(), uncond=BranchPrediction(4.0, e_u.bfloat16()), rescale=0.7)
    assert out.dtype == torch.bfloat16
    expected = _reference(e_c.bfloat16().double(), e_u.bfloat16().double(), 4.0, [], 0.7)
    torch.testing.assert_close(out.double(), expected, atol=0.05, rtol=0.02)
