"""Power-law fits and exact Gaussian MI against closed forms."""

import numpy as np
import pytest

from l2m_jax.information import fit_power_law, gaussian_mi


def test_exact_power_law_is_recovered():
    x = np.array([2.0, 4, 8, 16, 32])
    fit = fit_power_law(x, 3.0 * x**0.7)
    assert fit.exponent == pytest.approx(0.7, abs=1e-12)
    assert fit.amplitude == pytest.approx(3.0, rel=1e-12)
    assert fit.exponent_stderr < 1e-12
    np.testing.assert_allclose(fit(x), 3.0 * x**0.7, rtol=1e-12)


def test_stderr_matches_the_spread_of_refits():
    # Log-normal noise of known σ: the reported stderr must match the empirical spread of
    # the exponent over many independent noisy data sets (to ~10%, 2000 draws).
    rng = np.random.default_rng(0)
    x = np.geomspace(2, 2048, 11)
    fits = [
        fit_power_law(x, 0.5 * x**0.8 * np.exp(0.1 * rng.standard_normal(x.size)))
        for _ in range(2000)
    ]
    slopes = np.array([f.exponent for f in fits])
    theory = 0.1 / np.sqrt(np.sum((np.log(x) - np.log(x).mean()) ** 2))
    assert slopes.mean() == pytest.approx(0.8, abs=4 * theory / np.sqrt(2000))
    assert slopes.std() == pytest.approx(theory, rel=0.1)
    assert np.mean([f.exponent_stderr for f in fits]) == pytest.approx(theory, rel=0.1)


def test_offset_fit_recovers_the_bias():
    d = np.geomspace(1, 4096, 13)
    y = 0.2 * d**-0.6 + 0.004
    fit = fit_power_law(d, y, offset=True)
    assert fit.exponent == pytest.approx(-0.6, abs=1e-4)
    assert fit.offset == pytest.approx(0.004, rel=1e-3)
    assert fit.amplitude == pytest.approx(0.2, rel=1e-3)
    assert 0 < fit.offset < y.min()


@pytest.mark.parametrize(
    "x,y,kw,match",
    [
        ([1, 2], [1, 2], {}, "at least 3"),
        ([1, 2, 3], [1, 2], {}, "same length"),
        ([1, 2, 3], [1, -2, 3], {}, "y > 0"),
        ([1, 2, np.nan], [1, 2, 3], {}, "finite"),
        ([1, 2, 3], [1, 2, 3], {"offset": True}, "at least 4"),
        ([2, 2, 2], [1, 2, 3], {}, "distinct"),
    ],
)
def test_bad_fit_input(x, y, kw, match):
    with pytest.raises(ValueError, match=match):
        fit_power_law(x, y, **kw)


def test_gaussian_mi_matches_slogdet():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((12, 12))
    cov = a @ a.T + 12 * np.eye(12)
    for s in (1, 5, 11):
        ref = 0.5 * (
            np.linalg.slogdet(cov[:s, :s])[1]
            + np.linalg.slogdet(cov[s:, s:])[1]
            - np.linalg.slogdet(cov)[1]
        )
        assert gaussian_mi(cov, s) == pytest.approx(ref, rel=1e-12)
    np.testing.assert_allclose(
        gaussian_mi(cov, np.array([1, 5])), [gaussian_mi(cov, 1), gaussian_mi(cov, 5)], rtol=1e-14
    )
    # Two unit-variance variables with correlation r: −½ log(1 − r²).
    r = 0.6
    assert gaussian_mi(np.array([[1, r], [r, 1]]), 1) == pytest.approx(-0.5 * np.log(1 - r * r))


def test_gaussian_mi_bad_input():
    with pytest.raises(ValueError, match="positive definite"):
        gaussian_mi(np.array([[1.0, 2.0], [2.0, 1.0]]), 1)
    with pytest.raises(ValueError, match="symmetric"):
        gaussian_mi(np.array([[1.0, 0.5], [0.1, 1.0]]), 1)
    with pytest.raises(ValueError, match="split"):
        gaussian_mi(np.eye(4), 4)
    with pytest.raises(ValueError, match="square"):
        gaussian_mi(np.ones((2, 3)), 1)


# ---- weighted fits, bootstraps and Hilberg's law ------------------------------------------


def test_weighted_fit_is_exact_on_exact_data_and_matches_the_formula():
    x = np.array([2.0, 4, 8, 16, 32])
    y = 3.0 * x**0.7
    fit = fit_power_law(x, y, y_stderr=0.1 * y**0.5)
    assert fit.exponent == pytest.approx(0.7, abs=1e-12) and fit.chi2 == pytest.approx(0, abs=1e-20)
    assert fit.amplitude == pytest.approx(3.0, rel=1e-12) and fit.dof == 3
    # At the exact fit the weights are (y/σ)²: the stderr is that of weighted least squares.
    w = (y / (0.1 * y**0.5)) ** 2
    u = np.log(x) - np.sum(w * np.log(x)) / w.sum()
    assert fit.exponent_stderr == pytest.approx(1 / np.sqrt(np.sum(w * u * u)), rel=1e-12)


def _snr_below_one_data(rng, n_sets: int, n_docs: int = 64):
    """[sets, documents, splits] values of a power law 1.2·ℓ^0.6, the first split at SNR 0.8."""
    x = np.array([2.0, 4, 8, 16, 32, 64, 128])
    truth = 1.2 * x**0.6
    sigma = truth / np.array([0.8, 3, 6, 10, 15, 20, 25])  # stderr of each split's mean
    noise = rng.standard_normal((n_sets, n_docs, x.size))
    return x, truth + sigma * np.sqrt(n_docs) * noise


def test_weighted_fit_covers_the_true_exponent_with_a_noisy_split():
    """One split with signal-to-noise below 1, the splits chosen as the bipartite fit does
    (mean ≥ 3 stderr): the weighted fit's ±1.96 stderr (Birge-scaled) covers β = 0.6 in
    95% ± 3% of 4000 data sets (binomial spread 0.3%), and ±2 stderr likewise; the
    unweighted fit of the same splits does not."""
    from l2m_jax.information.fits import _weighted_log_fits

    rng = np.random.default_rng(0)
    x, values_SxNxX = _snr_below_one_data(rng, n_sets=4000)
    means, stderr = values_SxNxX.mean(1), values_SxNxX.std(1, ddof=1) / 8
    keep = means >= 3 * stderr
    assert keep[:, 2:].mean() > 0.999 and 0.3 < keep[:, 1].mean() < 0.7 and keep[:, 0].mean() < 0.1
    # All sets at once through the function behind fit_power_law(..., y_stderr=...).
    _, slope, slope_se, chi2, converged = _weighted_log_fits(np.log(x), means, stderr, keep)
    assert converged.all()
    slope_se *= np.sqrt(np.maximum(1.0, chi2 / (keep.sum(1) - 2)))
    for s in range(3):
        one = fit_power_law(x[keep[s]], means[s, keep[s]], y_stderr=stderr[s, keep[s]])
        assert one.exponent == pytest.approx(slope[s], rel=1e-12)
        assert one.exponent_stderr == pytest.approx(slope_se[s], rel=1e-12)
    z = np.abs(slope - 0.6) / slope_se
    assert 0.92 <= np.mean(z < 1.96) <= 0.98 and 0.925 <= np.mean(z < 2) <= 0.985
    assert abs(np.mean(slope) - 0.6) < 0.1 * np.std(slope)  # bias under a tenth of the spread
    # The unweighted fit of the same splits does not hold its nominal coverage.
    ols = [fit_power_law(x[k], m[k]) for k, m in zip(keep[:400], means[:400], strict=True)]
    assert np.mean([abs(f.exponent - 0.6) < 1.96 * f.exponent_stderr for f in ols]) < 0.85


def test_bootstrap_applies_the_rule_and_counts_failures():
    from l2m_jax.information import bootstrap_power_law

    x = np.array([2.0, 4, 8, 16, 32])
    rng = np.random.default_rng(3)
    values = 0.6 * x**0.8 + 0.5 * rng.standard_normal((40, x.size))
    values[:, 0] -= values[:, 0].mean()  # ℓ = 2 has mean 0: in about half the resamples ≤ 0
    boot = bootstrap_power_law(x, values, resamples=300, weighted=True)
    assert boot.resamples == 300 and boot.failed == 0
    # A rule that keeps 3 points only when ℓ = 4 is above 1.0: the rest fail, and are counted.
    rule = lambda m, s: np.broadcast_to(m[:, 1:2] > 1.0, m.shape) & (np.arange(5) < 3)
    boot = bootstrap_power_law(x, values, resamples=300, weighted=True, select=rule)
    means = values.mean(0)
    assert boot.failed > 0 and boot.resamples + boot.failed == 300
    assert means[1] > 1.0  # the rule holds on the data itself
    with pytest.raises(ValueError, match="could be fitted"):
        bootstrap_power_law(x, values, resamples=50, select=lambda m, s: m < 0)
    with pytest.raises(ValueError, match="not supported"):
        bootstrap_power_law(x, values, weighted=True, offset=True)
    with pytest.raises(ValueError, match="y_stderr"):
        fit_power_law(x, values.mean(0) + 1, y_stderr=np.zeros(5))
    with pytest.raises(ValueError, match="offset"):
        fit_power_law(x, values.mean(0) + 1, offset=True, y_stderr=np.ones(5))


def test_hilberg_fit_recovers_its_law():
    from l2m_jax.information import bootstrap_hilberg, fit_hilberg

    t = np.arange(1, 513, dtype=np.float64)
    h = 2.0 + 1.5 * t**-0.4  # β = 0.6, h∞ = 2
    fit = fit_hilberg(t, h, np.full(t.size, 0.05))
    assert fit.beta == pytest.approx(0.6, abs=1e-9)
    assert fit.entropy_rate == pytest.approx(2.0, abs=1e-9)
    assert fit.amplitude == pytest.approx(1.5, abs=1e-9) and not fit.at_boundary
    np.testing.assert_allclose(fit(t), h, rtol=1e-10)
    # Noisy documents (independent positions): the stderr matches the spread of 400 refits
    # (to 15%: the spread of a 400-sample std is 3.5%), the bootstrap covers β.
    from l2m_jax.information.fits import _hilberg_fits

    rng = np.random.default_rng(0)
    docs_SxNxT = h + 0.6 * rng.standard_normal((400, 32, t.size))
    means, stderr = docs_SxNxT.mean(1), docs_SxNxT.std(1, ddof=1) / np.sqrt(32)
    gamma, *_, interior = _hilberg_fits(t, means, stderr)  # every set at once
    assert interior.all()
    fits = [fit_hilberg(t, means[s], stderr[s]) for s in range(5)]
    for f, g in zip(fits, gamma, strict=False):
        assert f.beta == pytest.approx(1 - g, rel=1e-12)
    betas = 1 - gamma
    assert np.std(betas) == pytest.approx(np.mean([f.beta_stderr for f in fits]), rel=0.15)
    assert abs(np.mean(betas) - 0.6) < 4 * np.std(betas) / np.sqrt(400)
    docs = docs_SxNxT[0]
    boot = bootstrap_hilberg(t, docs, resamples=200)
    assert boot.low < 0.6 < boot.high and boot.resamples + boot.failed == 200
    # A flat curve has no interior optimum: flagged, not a confident exponent.
    flat = fit_hilberg(t, np.full(t.size, 3.0) + 1e-3 * np.sin(t), np.full(t.size, 0.05))
    assert flat.at_boundary or flat.beta_stderr > 1
    with pytest.raises(ValueError, match="≥ 4 points"):
        fit_hilberg(t[:3], h[:3], np.ones(3))
    with pytest.raises(ValueError, match="h_stderr"):
        fit_hilberg(t, h, np.zeros(t.size))
