"""Entropy estimators against independent float64 implementations of each formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special as sp

from l2m_jax.information import entropy
from l2m_jax.information.entropy import _count_of_counts

RTOL = 1e-10  # float64 sums of ≤ 1e4 terms: ~1e-13 expected; 1e-10 is the bar


def _reference(counts, method):
    """Direct float64 implementation, written from the formulas (Grassberger's (−1)^n form)."""
    n = np.asarray(counts, np.float64)
    n = n[n > 0]
    total = n.sum()
    if method == "grassberger":
        g = sp.digamma(n) + 0.5 * (-1.0) ** n * (sp.digamma((n + 1) / 2) - sp.digamma(n / 2))
    else:
        g = np.log(n)
    value = np.log(total) - np.sum(n * g) / total
    variance = np.sum(n / total * (g - np.log(total)) ** 2) - value**2
    stderr = np.sqrt(max(variance, 0.0)) / np.sqrt(total)  # rounding can dip below 0 for 1 bin
    if method == "miller_madow":
        value += (n.size - 1) / (2 * total)
    return value, stderr


def _count_vectors():
    rng = np.random.default_rng(0)
    yield np.array([1, 1, 2, 2, 1, 2, 0, 1])  # only counts of 1 and 2 (and an empty bin)
    yield np.array([7])  # a single bin: zero entropy, zero spread
    for size, scale in [(50, 1.5), (1000, 40.0), (5000, 3.0)]:
        yield rng.geometric(1 / scale, size) - rng.integers(0, 2, size)  # many 0, 1, 2
    yield np.concatenate([rng.integers(1, 3, 300), rng.integers(1, 10**6, 20)])


@pytest.mark.parametrize("method", ["grassberger", "plugin", "miller_madow"])
def test_matches_reference(method):
    for counts in _count_vectors():
        want_value, want_stderr = _reference(counts, method)
        got = entropy(counts, method)
        assert isinstance(got.value, np.float64)
        np.testing.assert_allclose(got.value, want_value, rtol=RTOL, atol=1e-15)
        np.testing.assert_allclose(got.stderr, want_stderr, rtol=RTOL, atol=1e-15)


def test_grassberger_closed_form_at_small_counts():
    # Single bins of count n: H_G = log n − G(n); G(1) = −γ − ln 2, G(2) = 2 − γ − ln 2.
    for n, g in [(1, -np.euler_gamma - np.log(2)), (2, 2 - np.euler_gamma - np.log(2))]:
        np.testing.assert_allclose(entropy([n]).value, np.log(n) - g, rtol=RTOL)


def test_count_of_counts_form_equals_expanded():
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 30, 2000)
    values, mult = _count_of_counts(counts)
    assert values.size <= 30  # digamma runs on ≤ 30 distinct values, not 2000 bins
    np.testing.assert_array_equal(np.repeat(values, mult), np.sort(counts[counts > 0]))
    for method in ["grassberger", "plugin", "miller_madow"]:
        a = entropy(counts, method)
        b = entropy(values, method, multiplicity=mult)
        np.testing.assert_allclose(a, b, rtol=1e-13)
    # big counts take the sort path of the count-of-counts
    big = np.array([10**9, 3, 10**9, 5, 3])
    values, mult = _count_of_counts(big)
    np.testing.assert_array_equal(values, [3, 5, 10**9])
    np.testing.assert_array_equal(mult, [2, 1, 2])


def test_jit_in_float64(x64):
    counts = np.random.default_rng(2).integers(0, 50, 700)
    fn = jax.jit(entropy, static_argnames="method")
    for method in ["grassberger", "miller_madow"]:
        got = fn(jnp.asarray(counts), method=method)
        assert got.value.dtype == jnp.float64
        want = _reference(counts, method)
        np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL)


def test_bad_input():
    with pytest.raises(ValueError, match="method"):
        entropy([1, 2], "shannon")
    with pytest.raises(ValueError, match="non-negative"):
        entropy([3, -1])
    with pytest.raises(ValueError, match="empty"):
        entropy([0, 0])
    with pytest.raises(ValueError, match="empty"):
        entropy(np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="whole numbers"):
        entropy([1.5, 2.0])
    with pytest.raises(TypeError, match="integer"):
        entropy(np.array(["a"]))
    with pytest.raises(ValueError, match="multiplicity"):
        entropy([1, 2], multiplicity=[1, 2, 3])
