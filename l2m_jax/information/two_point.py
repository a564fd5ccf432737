"""Two-point mutual information I_TP(d) = I(W_i; W_{i+d}) from pair counts (PAPER.md §3).

For each distance d the ordered pairs (w_i, w_{i+d}) inside documents are counted; with
Grassberger's entropy estimator Ĥ_G,

    Î_TP(d) = Ĥ_G(W_i) + Ĥ_G(W_{i+d}) − Ĥ_G(W_i, W_{i+d}),

where both marginals are the histograms of the first and second tokens of the same pairs.
Its standard error is the delta-method one for iid pairs (the paper's entropy form carried
over to the sum): with N pairs and g(n) = G(n) Grassberger's function,

    t(a, b) = G(n_ab) − G(n_a) − G(n_b) + log N,   Î = Σ (n_ab/N) t(a, b),
    stderr² = Σ (n_ab/N) (t(a, b) − Î)² / N.

Pairs from one document are not independent, so treat it as a lower bound on the spread.
The estimator's positive bias dominates at large d; the paper's fit Î = A·d^−α + C with C in
(0, min Î) absorbs it as C and reports the decay exponent α.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np

from l2m_jax.information.counting import PairCounts, count_pairs
from l2m_jax.information.entropy import _count_of_counts, _grassberger_g_host, entropy
from l2m_jax.information.fits import fit_power_law

__all__ = ["TwoPointResult", "two_point_mi", "two_point_mi_from_counts"]


class TwoPointResult(NamedTuple):
    """I_TP(d) per distance and the bias-corrected power-law fit.

    Attributes:
      distances: [K] the distances d, ascending.
      mi: [K] Î_TP(d) in nats (Grassberger entropies).
      stderr: [K] delta-method standard error of `mi` (iid pairs).
      pairs: [K] number of pairs counted at each distance.
      alpha: decay exponent α of the fit Î = A·d^−α + C (None if fewer than 4 positive Î).
      alpha_stderr: standard error of α.
      amplitude: A.
      offset: C, the part of Î attributed to the estimator's bias.
      fit_distances: the distances the fit used (Î > 0, within `fit_range`).
      tokens: tokens counted; documents: non-empty documents counted.
    """

    distances: np.ndarray
    mi: np.ndarray
    stderr: np.ndarray
    pairs: np.ndarray
    alpha: float | None
    alpha_stderr: float | None
    amplitude: float | None
    offset: float | None
    fit_distances: np.ndarray
    tokens: int
    documents: int


def _entropy_and_g(counts: np.ndarray) -> tuple[float, np.ndarray]:
    """Grassberger entropy of a histogram and G(n) at each entry (0 where n = 0).

    One count-of-counts serves both: the digamma runs only at the distinct counts.
    """
    values, multiplicity = _count_of_counts(counts)
    h = float(entropy(values, multiplicity=multiplicity).value)
    g_values = _grassberger_g_host(values)
    if values[-1] <= 1 << 24:  # dense lookup table
        lookup = np.zeros(int(values[-1]) + 1)
        lookup[values] = g_values
        return h, lookup[counts]
    return h, np.where(counts > 0, g_values[np.searchsorted(values, counts)], 0.0)


def _one_distance(counts: PairCounts, k: int) -> tuple[float, float, int]:
    table, vocab = counts.tables[k], counts.vocab_size
    if table.keys.size == 0:
        raise ValueError(
            f"no pairs at distance {counts.distances[k]}: every document is shorter than "
            f"{counts.distances[k] + 1} tokens; drop that distance"
        )
    first, second = np.divmod(table.keys, table.keys.dtype.type(vocab))
    if first.dtype == np.uint64:  # 64-bit keys (V > 65 535): the ids themselves fit intp
        first, second = first.astype(np.intp), second.astype(np.intp)
    weights = table.counts.astype(np.float64)  # exact below 2^53
    n_first = np.bincount(first, weights=weights, minlength=vocab).astype(np.int64)
    n_second = np.bincount(second, weights=weights, minlength=vocab).astype(np.int64)
    h_first, g_first = _entropy_and_g(n_first)
    h_second, g_second = _entropy_and_g(n_second)
    h_pair, t = _entropy_and_g(table.counts)
    mi = h_first + h_second - h_pair
    total = int(table.counts.sum())
    # t(a, b) − Î = G(n_ab) − G(n_a) − G(n_b) + log N − Î, built in place
    t -= g_first[first]
    t -= g_second[second]
    t += math.log(total) - mi
    np.square(t, out=t)
    variance = float(np.dot(weights, t)) / total
    return mi, math.sqrt(variance / total), total


def two_point_mi_from_counts(
    counts: PairCounts, *, fit_range: tuple[int, int] | str = "auto"
) -> TwoPointResult:
    """I_TP(d) with standard errors and the bias-corrected fit, from `count_pairs` output.

    Which distances the fit uses (`fit_range`):
      "auto"      d up to the distance of the smallest estimate. Past it the estimates rise:
                  the bias grows as pairs get fewer, which a constant C cannot absorb.
      "all"       every distance.
      (lo, hi)    lo ≤ d ≤ hi.
    Only distances with Î > 0 enter the log-log fit, and at least 4 are needed.
    """
    per_d = [_one_distance(counts, k) for k in range(len(counts.distances))]
    distances = np.asarray(counts.distances, np.int64)
    mi = np.array([m for m, _, _ in per_d])
    stderr = np.array([s for _, s, _ in per_d])
    pairs = np.array([n for _, _, n in per_d], np.int64)
    positive = mi > 0
    if isinstance(fit_range, str) and fit_range == "auto":
        positive &= distances <= distances[np.argmin(mi)]
    elif isinstance(fit_range, str) and fit_range == "all":
        pass
    else:
        try:
            lo, hi = (int(v) for v in fit_range)
        except (TypeError, ValueError):
            lo = hi = 0
        if not 1 <= lo <= hi:
            raise ValueError(
                f'fit_range must be "auto", "all" or (lo, hi) with 1 ≤ lo ≤ hi, got {fit_range!r}'
            )
        positive &= (distances >= lo) & (distances <= hi)
    alpha = alpha_stderr = amplitude = offset = None
    if positive.sum() >= 4:  # A, α, C and one degree of freedom for the stderr
        fit = fit_power_law(distances[positive], mi[positive], offset=True)
        alpha, alpha_stderr = -fit.exponent, fit.exponent_stderr
        amplitude, offset = fit.amplitude, fit.offset
    return TwoPointResult(
        distances,
        mi,
        stderr,
        pairs,
        alpha,
        alpha_stderr,
        amplitude,
        offset,
        distances[positive] if alpha is not None else distances[:0],
        counts.tokens,
        counts.documents,
    )


def two_point_mi(
    tokens_or_docs,
    distances,
    vocab_size: int | None = None,
    *,
    chunk_tokens: int = 1 << 24,
    implementation: str = "auto",
    devices: Sequence[jax.Device] | None = None,
    progress: bool = True,
    fit_range: tuple[int, int] | str = "auto",
) -> TwoPointResult:
    """Two-point MI Î_TP(d) in nats for every distance, with standard errors and the fit.

    Args:
      tokens_or_docs: [T] int token ids (one document), [B, T] (B documents), a list of 1-D
        arrays, or any iterable of them (streamed in chunks; then `vocab_size` is required).
        Pairs never cross a document boundary.
      distances: distinct integers d ≥ 1.
      vocab_size: V (ids must lie in [0, V)); inferred as max id + 1 if None.
      chunk_tokens, implementation, devices, progress: passed to `count_pairs`.
      fit_range: distances the power-law fit uses: "auto" (up to the smallest estimate),
        "all", or (lo, hi); see `two_point_mi_from_counts`.
    """
    counts = count_pairs(
        tokens_or_docs,
        distances,
        vocab_size,
        chunk_tokens=chunk_tokens,
        implementation=implementation,
        devices=devices,
        progress=progress,
    )
    return two_point_mi_from_counts(counts, fit_range=fit_range)
