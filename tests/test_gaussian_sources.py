"""The hierarchical Gaussian families against exact and brute-force references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2m_jax.information import fit_power_law
from l2m_jax.sources import GaussianFamily, log_gaussian, subvolume_gaussian
from l2m_jax.sources.gaussian import conditionals


def _mid_mi(family_fn, layers, **kw):
    return np.array([family_fn(l, **kw).bipartite_mi(4**l // 2) for l in layers])


def test_matches_the_papers_numbers():
    # PAPER.md §4 (no coupling) and §7 (coupling 0.3 after every layer), 3 decimals.
    np.testing.assert_allclose(
        _mid_mi(subvolume_gaussian, range(1, 6), coupling=0.0),
        [0.294, 0.882, 2.645, 7.935, 23.805],
        atol=6e-4,
    )
    np.testing.assert_allclose(
        _mid_mi(subvolume_gaussian, range(2, 6)), [1.172, 3.593, 10.909, 32.835], atol=6e-4
    )
    np.testing.assert_allclose(
        _mid_mi(log_gaussian, range(1, 6)), [0.294, 0.482, 0.840, 1.224, 1.609], atol=6e-4
    )
    np.testing.assert_allclose(_mid_mi(log_gaussian, range(1, 5), coupling=0.0), 0.294, atol=6e-4)


def test_subvolume_exponent_and_log_law():
    layers = range(2, 7)  # L = 16 … 4096
    L = [4**l for l in layers]
    sub = fit_power_law(L, _mid_mi(subvolume_gaussian, layers))
    assert 0.78 <= sub.exponent <= 0.82, sub
    log_mi = _mid_mi(log_gaussian, layers)
    steps = np.diff(log_mi)
    # ∝ log L: a nearly constant gain per layer (within 8% of each other after layer 2).
    assert steps.min() > 0 and steps.max() / steps.min() < 1.08, steps
    assert fit_power_law(L, log_mi).exponent < 0.35


def test_antipodal_two_point_mi_is_shared_and_decays():
    tp_sub = np.array([subvolume_gaussian(l).two_point_mi(0, 4**l - 1) for l in range(1, 7)])
    tp_log = np.array([log_gaussian(l).two_point_mi(0, 4**l - 1) for l in range(1, 7)])
    np.testing.assert_allclose(tp_sub, tp_log, rtol=1e-9)
    np.testing.assert_allclose(tp_sub[:5], [3.23e-2, 3.06e-3, 2.98e-4, 2.91e-5, 2.84e-6], rtol=2e-3)
    fit = fit_power_law([4**l for l in range(1, 7)], tp_sub)
    assert fit.exponent < -1.5 and fit.residual_std < 0.05  # a clean power-law decay in L


@pytest.mark.parametrize("branching,copies", [(4, 2), (4, 3), (4, 4)])
def test_generalised_exponent_tracks_log_b_k(branching, copies):
    layers = range(2, 6)
    L = [branching**l for l in layers]
    beta = math.log(copies) / math.log(branching)
    exact = [
        GaussianFamily(l, branching=branching, copies=copies, coupling=0.0).bipartite_mi(
            branching**l // 2
        )
        for l in layers
    ]
    assert abs(fit_power_law(L, exact).exponent - beta) < 1e-6
    coupled = [
        GaussianFamily(l, branching=branching, copies=copies).bipartite_mi(branching**l // 2)
        for l in layers
    ]
    # The coupling adds a positive share that grows only like log L (PAPER.md §4: β ≈ 0.80
    # for log_4 3 ≈ 0.79); its relative weight is largest for few copies (k = 2: +0.051).
    assert 0.0 <= fit_power_law(L, coupled).exponent - beta < 0.06


@pytest.mark.parametrize(
    "fam", [subvolume_gaussian(3), log_gaussian(3), GaussianFamily(3, branching=3, copies=2)]
)
def test_covariance_unit_diagonal_and_positive_definite(fam):
    np.testing.assert_allclose(np.diag(fam.cov), 1.0, atol=1e-12)
    np.testing.assert_allclose(fam.cov, fam.cov.T, atol=1e-14)
    assert np.linalg.eigvalsh(fam.cov).min() > 1e-3


def test_samples_reproduce_the_covariance():
    fam = subvolume_gaussian(3, channels=2)  # L = 64
    n = 20_000
    z = np.asarray(fam.sample(jax.random.key(1), n // 2), np.float64)  # 2 channels → 20 000
    z = z.transpose(0, 2, 1).reshape(n, fam.length)
    emp = z.T @ z / n
    # Each entry of a sample covariance of unit-variance Gaussians has std √((1 + r²)/n)
    # (≤ 0.01 here). Over 64² entries, allow 5.5 of them (two-sided tail 4e-8 per entry).
    sd = np.sqrt((1 + fam.cov**2) / n)
    assert np.max(np.abs(emp - fam.cov) / sd) < 5.5
    assert np.abs(z.mean(0)).max() < 5.5 / math.sqrt(n)


def test_bos_token_and_shapes():
    fam = log_gaussian(2, channels=3)
    z = fam.sample(jax.random.key(0), 5, bos=True)
    assert z.shape == (5, 17, 3) and z.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(z[:, 0]), 0.0)
    assert np.all(np.asarray(z[:, 1:]) != 0.0)


@pytest.mark.parametrize("layers", [2, 3])  # L = 16, 64
def test_conditionals_match_schur_complements(x64, layers):
    fam = subvolume_gaussian(layers)
    cov, L = fam.cov, fam.length
    z = np.random.default_rng(0).standard_normal((3, L, 1))
    mean, std = conditionals(fam.linear_predictor(jnp.float64), jnp.asarray(z))
    for i in range(L):
        if i == 0:
            mu, var = np.zeros(3), 1.0
        else:
            w = np.linalg.solve(cov[:i, :i], cov[:i, i])
            mu, var = z[:, :i, 0] @ w, cov[i, i] - cov[i, :i] @ w
        np.testing.assert_allclose(np.asarray(mean[:, i, 0]), mu, atol=1e-8)
        np.testing.assert_allclose(np.asarray(std[:, i, 0]), math.sqrt(var), atol=1e-8)
    # The float32 path used in training agrees to float32 precision.
    mean32, std32 = fam.conditionals(jnp.asarray(z, jnp.float32))
    np.testing.assert_allclose(np.asarray(mean32), np.asarray(mean), atol=2e-5)
    np.testing.assert_allclose(np.asarray(std32), np.asarray(std), rtol=1e-6)


def test_exact_nll_matches_joint_entropy():
    fam = subvolume_gaussian(3, channels=4)
    z = fam.sample(jax.random.key(7), 2000)
    mean, std = fam.conditionals(z)
    nll = np.asarray(
        jnp.sum(
            jnp.log(std) + 0.5 * math.log(2 * math.pi) + 0.5 * ((z - mean) / std) ** 2, axis=(1, 2)
        ),
        np.float64,
    )
    # Per sequence NLL = ½ log det(2πΣ)·C + ½ χ²_{L·C}: mean within 4 standard errors.
    se = nll.std(ddof=1) / math.sqrt(nll.size)
    assert abs(nll.mean() - fam.entropy()) < 4 * se, (nll.mean(), fam.entropy(), se)


def test_structured_sampler_matches_dense_in_distribution():
    fam = log_gaussian(2, channels=1)
    z = np.asarray(fam.sample(jax.random.key(3), 20_000))[..., 0]
    d = np.asarray(fam.dense_sample(jax.random.key(4), 20_000))[..., 0]
    n = z.shape[0]
    for emp in (z.T @ z / n, d.T @ d / n):
        assert np.max(np.abs(emp - fam.cov) / np.sqrt((1 + fam.cov**2) / n)) < 5.5


def test_totals_scale_with_channels():
    one, four = subvolume_gaussian(2), subvolume_gaussian(2, channels=4)
    assert four.bipartite_mi(8) == pytest.approx(4 * one.bipartite_mi(8), rel=1e-12)
    assert four.two_point_mi(0, 15) == pytest.approx(4 * one.two_point_mi(0, 15), rel=1e-12)
    assert four.entropy() == pytest.approx(4 * one.entropy(), rel=1e-12)
    np.testing.assert_allclose(
        one.bipartite_mi(np.array([4, 8])), [one.bipartite_mi(4), one.bipartite_mi(8)]
    )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(layers=0), "layers"),
        (dict(layers=2, copies=0), "copies"),
        (dict(layers=2, copies=5), "copies"),
        (dict(layers=2, coupling=0.9), "coupling"),
        (dict(layers=2, branching=1), "branching"),
        (dict(layers=2, channels=0), "channels"),
    ],
)
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianFamily(**kwargs)


def test_bad_queries():
    fam = subvolume_gaussian(2)
    for ell in (0, 16, -1):
        with pytest.raises(ValueError, match="ell"):
            fam.bipartite_mi(ell)
    with pytest.raises(ValueError, match="distinct"):
        fam.two_point_mi(3, 3)
    with pytest.raises(ValueError, match="batch"):
        fam.sample(jax.random.key(0), 0)
    with pytest.raises(ValueError, match="shape"):
        fam.conditionals(jnp.zeros((2, 17, 1)))


def test_first_use_inside_jit_caches_constants_not_tracers():
    fam = GaussianFamily(2, channels=2, copies=2)  # fresh object: nothing cached yet

    @jax.jit
    def step(key):
        z = fam.sample(key, 3)
        mean, std = fam.conditionals(z)
        return jnp.sum(((z - mean) / std) ** 2)

    first, second = step(jax.random.key(0)), step(jax.random.key(0))
    assert np.isfinite(float(first)) and float(first) == float(second)
    z = fam.sample(jax.random.key(0), 3)  # and the cached pieces still work outside jit
    assert z.shape == (3, 16, 2)
