"""Entropy of a histogram from its counts, in nats: plug-in, Miller–Madow and Grassberger.

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
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["EntropyEstimate", "entropy"]

METHODS = ("grassberger", "plugin", "miller_madow")


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


@functools.cache
def _host_device():
    """This process's CPU device: eager estimates from host counts stay in host float64
    (TPUs lack it)."""
    try:
        return jax.local_devices(backend="cpu")[0]
    except RuntimeError:  # JAX_PLATFORMS without cpu: use the default device
        return None


def _padded(x: np.ndarray, fill=0) -> np.ndarray:
    """Pads to 4096 · 4^k entries so eager calls compile very few shapes (zeros are inert)."""
    size = 4096
    while size < x.size:
        size *= 4
    return np.concatenate([x, np.full(size - x.size, fill, x.dtype)])


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


def entropy(counts, method: str = "grassberger", *, multiplicity=None) -> EntropyEstimate:
    """Entropy (nats) of the distribution behind a histogram, with its standard error.

    Args:
      counts: [U] non-negative counts, one per bin (zeros ignored); or, with `multiplicity`,
        distinct count values.
      method: "grassberger" (bias-corrected; the paper's), "plugin" or "miller_madow".
      multiplicity: optional [U] number of bins holding each value of `counts`
        (count-of-counts form, e.g. from a table of pair counts).

    Called eagerly, the sums run in float64 (under `jax.enable_x64`) and the result holds
    NumPy float64 scalars; the counts are checked and reduced to count-of-counts first. Under
    `jax.jit` no checks run and the sums use the trace's float width: jit inside
    `with jax.enable_x64(True):` to accumulate in float64.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if _is_traced(counts) or _is_traced(multiplicity):
        m = jnp.ones_like(counts) if multiplicity is None else multiplicity
        return _entropy(counts, m, method)
    counts = _check_counts(counts, "counts")
    if multiplicity is None:
        values, mult = _count_of_counts(counts)
    else:
        mult = _check_counts(multiplicity, "multiplicity")
        if mult.shape != counts.shape:
            raise ValueError(
                f"multiplicity must have the shape of counts {counts.shape}, got {mult.shape}"
            )
        values, mult = counts, mult
    if not np.any((values > 0) & (mult > 0)):
        raise ValueError("counts are empty (they sum to zero); an entropy needs samples")
    with jax.enable_x64(True), jax.default_device(_host_device()):
        est = _entropy(_padded(values), _padded(mult), method)
        return EntropyEstimate(np.float64(est.value), np.float64(est.stderr))


def _grassberger_g_host(values: np.ndarray) -> np.ndarray:
    """G at positive integer values, in float64, as a NumPy array (same G as `entropy`)."""
    with jax.enable_x64(True), jax.default_device(_host_device()):
        g = _g_jit(_padded(np.asarray(values, np.float64), 1.0))
        return np.asarray(g)[: len(values)]


_g_jit = jax.jit(_grassberger_g)
