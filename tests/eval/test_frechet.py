import numpy as np
import pytest
import scipy.linalg
import torch

from slatte.eval.frechet import frechet_distance, frechet_distance_from_features, gaussian_stats


def _random_spd(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / (rank or d)


def test_matches_the_textbook_formula_with_scipy_sqrtm():
    rng = np.random.default_rng(0)
    for d in (1, 3, 8):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
        covmean = scipy.linalg.sqrtm(s1 @ s2).real
        direct = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(direct, rel=1e-9, abs=1e-10)


def test_diagonal_covariances_give_the_closed_form():
    # Commuting covariances: d² = |mu1 - mu2|² + Σ (sqrt(a_i) - sqrt(b_i))².
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = 1.0 + 4.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_identical_sets_are_at_distance_zero_even_when_rank_deficient():
    rng = np.random.default_rng(1)
    full = rng.normal(size=(200, 16))
    few = rng.normal(size=(5, 32))  # 5 samples in 32 dims: covariance of rank 4
    constant = np.concatenate([full, np.ones((200, 3))], axis=1)  # zero-variance features
    for x in (full, few, constant):
        assert frechet_distance_from_features(x, x) == pytest.approx(0.0, abs=1e-8)
        assert frechet_distance_from_features(torch.from_numpy(x), x) == pytest.approx(
            0.0, abs=1e-8
        )


def test_samples_of_one_gaussian_are_closer_than_of_another_and_symmetric():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(2000, 4)), rng.normal(size=(2000, 4))
    shifted = rng.normal(size=(2000, 4)) * 2.0 + 0.5
    near = frechet_distance_from_features(a, b)
    far = frechet_distance_from_features(a, shifted)
    # Theory: 4·0.25 + 4·(2 - 1)² = 5 for the shifted one; sampling noise is ~1e-2.
    assert near < 0.05
    assert far == pytest.approx(5.0, rel=0.1)
    assert frechet_distance_from_features(shifted, a) == pytest.approx(far, rel=1e-9)


def test_gaussian_stats_and_shape_errors():
    x = np.arange(12, dtype=float).reshape(4, 3)
    mu, sigma = gaussian_stats(x)
    np.testing.assert_allclose(mu, x.mean(0))
    np.testing.assert_allclose(sigma, np.cov(x.T))
    with pytest.raises(ValueError, match="N >= 2"):
        gaussian_stats(x[:1])
    with pytest.raises(ValueError, match="dimension"):
        frechet_distance_from_features(x, x[:, :2])
    with pytest.raises(ValueError, match="shapes do not match"):
        frechet_distance(mu, sigma, mu[:2], sigma)
