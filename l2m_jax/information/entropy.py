"""Entropy of a histogram from its counts, in nats: plug-in, Miller–Madow, Grassberger, NSB.

A histogram is either a vector of counts n_i (zeros ignored) or, in count-of-counts form, the
distinct count values c_j with their multiplicities m_j (how many bins hold exactly c_j). Every
estimator is a function of the count-of-counts alone, so called eagerly, `entropy` first
reduces the counts to it and evaluates the digamma function only at the distinct counts.

Formulas (N = Σ n_i, PAPER.md §3):
  plugin        Ĥ = log N − (1/N) Σ n_i log n_i
  miller_madow  Ĥ_plugin + (K − 1) / (2N),  K = number of occupied bins
  grassberger   Ĥ = log N − (1/N) Σ n_i G(n_i),  G(n) = ψ(⌊n/2⌋ + ½) + ln 2
Standard error (iid samples; the paper's form): sqrt(Σ (n_i/N)(g_i − log N)² − Ĥ²) / sqrt(N)
with g_i = G(n_i) for Grassberger and log n_i otherwise (Miller–Madow shares the plug-in's).

  nsb           Nemenman–Shafee–Bialek (2002): the posterior mean of H under a mixture of
                symmetric Dirichlet(a) priors over K bins, the mixture weight ∝ dE[H|a]/da so
                that the prior on H is nearly flat. It needs the number of bins K (`bins`, the
                alphabet: V for tokens, V² for pairs); its stderr is the posterior standard
                deviation. Host-only (NumPy/SciPy, float64): it integrates over a numerically.

NSB in count-of-counts form (value c with multiplicity m_c; K_0 = K − Σ m_c empty bins):
  log p(n | a) = lnΓ(Ka) − lnΓ(N + Ka) + Σ_c m_c [lnΓ(c + a) − lnΓ(a)]
  E[H | n, a]  = ψ(A + 1) − Σ_i (n_i + a)/A · ψ(n_i + a + 1),   A = N + K a
and E[H² | n, a] from Wolpert & Wolf (1995); the integral over log a runs on a coarse grid
over the whole prior range joined with a fine one around the posterior mode.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize, special

__all__ = ["EntropyEstimate", "entropy", "entropy_from_count_of_counts"]

METHODS = ("grassberger", "plugin", "miller_madow", "nsb")


class EntropyEstimate(NamedTuple):
    """An entropy estimate in nats and its standard error (iid samples)."""

    value: jax.Array | np.float64
    stderr: jax.Array | np.float64


def _grassberger_g(n):
    """G(n) = ψ(⌊n/2⌋ + ½) + ln 2, Grassberger's (2003) replacement for log n."""
    return jax.scipy.special.digamma(jnp.floor(n / 2) + 0.5) + math.log(2.0)


@functools.partial(jax.jit, static_argnames="method")
def _entropy(values_U, multiplicity_U, method):
    """Estimate from count-of-counts (values with multiplicities; zero values contribute 0)."""
    dtype = jnp.result_type(float)  # float64 under jax.enable_x64, else float32
    c_U = jnp.asarray(values_U).astype(dtype)
    m_U = jnp.asarray(multiplicity_U).astype(dtype)
    occupied_U = c_U > 0
    weight_U = jnp.where(occupied_U, m_U * c_U, 0.0)  # samples that fall in bins of count c
    total = weight_U.sum()
    log_total = jnp.log(total)
    safe_c_U = jnp.where(occupied_U, c_U, 1.0)
    g_U = _grassberger_g(safe_c_U) if method == "grassberger" else jnp.log(safe_c_U)
    value = log_total - (weight_U * g_U).sum() / total
    # centred form of Σ (n_i/N)(g_i − log N)² − Ĥ²: the same quantity, without cancellation
    variance = (weight_U * (log_total - g_U - value) ** 2).sum() / total
    if method == "miller_madow":
        bins = jnp.where(occupied_U, m_U, 0.0).sum()
        value = value + (bins - 1.0) / (2.0 * total)
    return EntropyEstimate(value, jnp.sqrt(variance / total))


def _count_of_counts(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct positive count values (ascending) and how many bins hold each."""
    if counts.size and counts.min() <= 0:
        counts = counts[counts > 0]
    counts = counts.astype(np.int64, copy=False)
    if counts.size == 0:
        return counts, counts
    top = int(counts.max())
    if top <= max(1 << 20, 4 * counts.size):
        hist = np.bincount(counts)
        values = np.flatnonzero(hist)
        return values, hist[values]
    s = np.sort(counts)
    starts = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1])))
    return s[starts], np.diff(np.append(starts, s.size))


def _is_traced(x) -> bool:
    """True under jit/vmap tracing (the values are not known), without jax.core internals."""
    if x is None or not isinstance(x, jax.Array):
        return False
    try:
        np.asarray(x)
    except jax.errors.TracerArrayConversionError:
        return True
    return False


def _check_counts(counts, name: str) -> np.ndarray:
    arr = np.asarray(counts)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of counts, got shape {arr.shape}")
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise TypeError(f"{name} must hold integer counts, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"{name} must hold whole numbers (counts); pass integer counts")
        arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} must be non-negative; found {arr.min()}")
    return arr.astype(np.int64, copy=False)


def entropy(
    counts, method: str = "grassberger", *, multiplicity=None, bins: int | None = None
) -> EntropyEstimate:
    """Entropy (nats) of the distribution behind a histogram, with its standard error.

    Args:
      counts: [U] non-negative counts, one per bin (zeros are empty bins); or, with
        `multiplicity`, distinct count values.
      method: "grassberger" (bias-corrected; the paper's), "plugin", "miller_madow" or
        "nsb" (Nemenman–Shafee–Bialek; low bias when undersampled, needs K bins).
      multiplicity: optional [U] number of bins holding each value of `counts`
        (count-of-counts form, e.g. from a table of pair counts).
      bins: K, the number of bins of the distribution (the alphabet size), for "nsb";
        default: the number of entries of `counts` (zeros included; with `multiplicity`,
        its sum). Ignored by the other methods, which never see empty bins.

    Called eagerly, the sums run in float64 on the host and the result holds NumPy float64
    scalars; the counts are checked and reduced to count-of-counts first. Under `jax.jit`
    (not "nsb", which integrates numerically on the host) no checks run and the sums use the
    trace's float width: jit inside `with jax.enable_x64(True):` to accumulate in float64.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if _is_traced(counts) or _is_traced(multiplicity):
        if method == "nsb":
            raise ValueError(
                'method="nsb" runs eagerly on the host (a numerical integral); call entropy '
                "outside jax.jit, or use a closed-form method under jit"
            )
        m = jnp.ones_like(counts) if multiplicity is None else multiplicity
        return _entropy(counts, m, method)
    counts = _check_counts(counts, "counts")
    if multiplicity is None:
        entries = counts.size
        values, mult = _count_of_counts(counts)
    else:
        mult = _check_counts(multiplicity, "multiplicity")
        if mult.shape != counts.shape:
            raise ValueError(
                f"multiplicity must have the shape of counts {counts.shape}, got {mult.shape}"
            )
        entries = int(mult.sum())
        keep = (counts > 0) & (mult > 0)
        values, mult = counts[keep], mult[keep]
    if values.size == 0:
        raise ValueError("counts are empty (they sum to zero); an entropy needs samples")
    return entropy_from_count_of_counts(
        values, mult, method, bins=entries if bins is None else bins
    )


def entropy_from_count_of_counts(
    values: np.ndarray, multiplicity: np.ndarray, method: str = "grassberger", *, bins=None
) -> EntropyEstimate:
    """`entropy` from checked count-of-counts: distinct positive values, positive
    multiplicities (int64, as `_count_of_counts` returns them). Host float64, no checks
    beyond `bins`; the fast path for callers that already hold count-of-counts."""
    c = values.astype(np.float64)
    m = multiplicity.astype(np.float64)
    if method == "nsb":
        occupied = int(multiplicity.sum())
        if bins is None:
            bins = occupied
        if not isinstance(bins, (int, np.integer)) or bins < occupied:
            raise ValueError(
                f"bins must be an integer ≥ the {occupied} occupied bins (the alphabet size "
                f"K), got {bins!r}"
            )
        return _nsb(c, m, int(bins))
    weight = m * c
    total = weight.sum()
    log_total = math.log(total)
    g = _grassberger_g_np(c) if method == "grassberger" else np.log(c)
    value = log_total - float(weight @ g) / total
    variance = float(weight @ (log_total - g - value) ** 2) / total
    if method == "miller_madow":
        value += (float(m.sum()) - 1.0) / (2.0 * total)
    return EntropyEstimate(np.float64(value), np.float64(math.sqrt(variance / total)))


def _grassberger_g_np(c: np.ndarray) -> np.ndarray:
    """G(n) = ψ(⌊n/2⌋ + ½) + ln 2 at positive values, NumPy float64."""
    return special.digamma(np.floor(c / 2) + 0.5) + math.log(2.0)


# ---------------------------------------------------------------------------------- NSB

_NSB_COARSE = 192  # points over the whole prior range of log a
_NSB_FINE = 161  # points around the posterior mode


def _trigamma(x: np.ndarray) -> np.ndarray:
    """ψ'(x) for x > 0: recurrence up to 10, then the asymptotic series (error < 1e-14)."""
    x = np.array(x, np.float64, copy=True)
    acc = np.zeros_like(x)
    for _ in range(10):
        small = x < 10.0
        if not small.any():
            break
        acc[small] += 1.0 / x[small] ** 2
        x[small] += 1.0
    inv = 1.0 / x
    inv2 = inv * inv
    series = inv + inv2 * (
        0.5 + inv * (1 / 6 + inv2 * (-1 / 30 + inv2 * (1 / 42 + inv2 * (-1 / 30 + inv2 * 5 / 66))))
    )
    return acc + series


def _nsb_log_posterior(u: np.ndarray, c, m, bins: int, total: float) -> np.ndarray:
    """log p(a | n) + log a (the density in u = log a), up to a constant; u: [G]."""
    a = np.exp(u)
    ka = bins * a
    log_like = special.gammaln(ka) - special.gammaln(total + ka)
    log_like += (special.gammaln(c[None, :] + a[:, None]) - special.gammaln(a)[:, None]) @ m
    prior = bins * _trigamma(ka + 1.0) - _trigamma(a + 1.0)  # dE[H|a]/da > 0
    return log_like + np.log(np.maximum(prior, np.finfo(np.float64).tiny)) + u


def _nsb_moments(u: np.ndarray, c, m, bins: int, total: float):
    """E[H | n, a] and E[H² | n, a] at each a = exp(u), [G] each (Wolpert & Wolf 1995)."""
    a = np.exp(u)[:, None]
    empty = bins - m.sum()
    c = np.concatenate([[0.0], c])[None, :]
    m = np.concatenate([[empty], m])
    alpha = c + a  # [G, U+1]; the first column is the empty bins
    big_a = total + bins * a[:, 0]
    psi_a2 = special.digamma(big_a + 2.0)
    psi1 = special.digamma(alpha + 1.0)
    mean = special.digamma(big_a + 1.0) - (alpha * psi1) @ m / big_a
    x = alpha * (psi1 - psi_a2[:, None])
    tri_a2 = _trigamma(big_a + 2.0)
    cross = (x @ m) ** 2 - (x * x) @ m - tri_a2 * (big_a**2 - (alpha * alpha) @ m)
    psi2 = psi1 + 1.0 / (alpha + 1.0)  # ψ(α + 2)
    same = (
        alpha
        * (alpha + 1.0)
        * ((psi2 - psi_a2[:, None]) ** 2 + _trigamma(alpha + 2.0) - tri_a2[:, None])
    )
    second = (cross + same @ m) / (big_a * (big_a + 1.0))
    return mean, second


def _nsb(c: np.ndarray, m: np.ndarray, bins: int) -> EntropyEstimate:
    """NSB posterior mean and standard deviation of H from count-of-counts (host float64)."""
    if bins == 1:
        return EntropyEstimate(np.float64(0.0), np.float64(0.0))
    total = float(c @ m)
    # The prior mass of E[H|a] below a = 1e-12/K and above 1e10 is below ~1e-10 nats.
    lo, hi = math.log(1e-12 / bins), math.log(1e10)
    coarse = np.linspace(lo, hi, _NSB_COARSE)
    log_post = _nsb_log_posterior(coarse, c, m, bins, total)
    k = int(np.argmax(log_post))
    step = coarse[1] - coarse[0]

    def neg(v: float) -> float:
        return -float(_nsb_log_posterior(np.array([v]), c, m, bins, total)[0])

    mode = optimize.minimize_scalar(
        neg,
        bounds=(max(lo, coarse[k] - step), min(hi, coarse[k] + step)),
        method="bounded",
        options={"xatol": 1e-9},
    ).x
    h = 1e-4
    curvature = (neg(mode + h) - 2.0 * neg(mode) + neg(mode - h)) / h**2
    width = 1.0 / math.sqrt(curvature) if curvature > 0 else step
    # The fine grid spans ±12 widths and every coarse point within 40 nats of the peak.
    near = coarse[log_post >= log_post[k] - 40.0]
    left = max(lo, min(mode - 12.0 * width, near.min()))
    right = min(hi, max(mode + 12.0 * width, near.max()))
    fine = np.linspace(left, right, _NSB_FINE)
    u = np.union1d(coarse[(coarse < left) | (coarse > right)], fine)
    log_post = _nsb_log_posterior(u, c, m, bins, total)
    weight = np.exp(log_post - log_post.max())
    keep = weight > 1e-300
    u, weight = u[keep], weight[keep]
    mean, second = _nsb_moments(u, c, m, bins, total)
    norm = np.trapezoid(weight, u)
    value = np.trapezoid(weight * mean, u) / norm
    variance = np.trapezoid(weight * second, u) / norm - value**2
    return EntropyEstimate(np.float64(value), np.float64(math.sqrt(max(variance, 0.0))))
