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
