"""Two-point mutual information I_TP(d) = I(W_i; W_{i+d}) from pair counts (PAPER.md §3).

For each distance d the ordered pairs (w_i, w_{i+d}) inside documents are counted and

    Î_TP(d) = Ĥ(W_i) + Ĥ(W_{i+d}) − Ĥ(W_i, W_{i+d})

with an entropy estimator Ĥ (`method`: Grassberger by default, or NSB, plug-in, Miller–Madow).
Two conventions for the marginals (`marginals`):
  "unigrams"  both marginals are Ĥ of the histogram of all tokens: Î = 2·Ĥ(W) − Ĥ(pairs).
              The official code's form and PAPER.md §3's; the default.
  "pairs"     the marginals are the histograms of the first and of the second tokens of the
              pairs at that distance, so all three entropies see the same N pairs.
They agree once documents are much longer than d (a document of n tokens loses d tokens from
each end of its pairs); they differ by up to 0.04 nats at d = 4096 on SWORD.

Bias. In the undersampled regime of natural text (V²/N ≈ 400 on SWORD's 6M GPT-2 tokens)
every entropy estimator's bias of the pair entropy exceeds the signal at large d, and it grows
as pairs get fewer. A surrogate measures it: the same documents with their tokens shuffled
(`surrogate`), so that each distance has the same number of pairs and the same unigram
histogram but no order. "within" shuffles inside each document (it keeps each document's
composition, so the between-document part of I_TP, which does not decay with d, is removed
too); "global" shuffles across the corpus keeping document lengths (it keeps that floor).
A shuffle also destroys bursts (a token repeated a few positions on), which make the raw pairs
dependent and lower the raw pair entropy: on bursty data a shuffled surrogate under-corrects
at large d. "shift" keeps them: at every distance token i of a document of n tokens is paired
with token (i + e) mod n, e drawn once per document in [n/4, 3n/4), so each member keeps its
neighbourhood but the two lie far apart (n − d pairs, as for the raw estimate). It removes
I_TP(e) with the bias, so it holds for d well below n/4.
Over `shuffles` surrogates the corrected estimate is

    Î(d) = Î_raw(d) − mean_s Î_s(d),   stderr² = se_raw² + var_s(Î_s)/S,

se_raw being the delta-method standard error for iid pairs (with N pairs, G Grassberger's
function and marginal counts of the pairs' first and second tokens),

    t(a, b) = G(n_ab) − G(n_a) − G(n_b) + log N,   se_raw² = Σ (n_ab/N) (t(a, b) − Î)² / N.

Pairs from one document are not independent, so se_raw is a lower bound on the spread; on
bursty text (tokens that repeat within a few positions) a shuffled surrogate also misses
part of the raw estimate's bias, which leaves a positive remainder at large d.

The fit. With a surrogate the corrected curve is fitted by a plain power law A·d^−α (least
squares in log-log space) over `fit_range`. Without one, the paper's offset fit A·d^−α + C
(C in (0, min Î) absorbing the bias) is used; on biased estimates its residual over C has
two minima (C → 0 and C → min Î), which `offset_profile` shows. A document-block bootstrap
(`bootstrap` resamples of documents, each resample recounted from per-block tables) gives
α's percentile interval.

In a multi-process run (`jax.distributed`) each process passes its own documents: the pair
counts are summed across processes (`count_pairs`), surrogates shuffle or shift each
process's own documents, and a bootstrap uses process 0's resample weights on blocks that
every process fills from its share, so all processes return the same result.
"""

from __future__ import annotations

import concurrent.futures
import math
import threading
from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np

from l2m_jax import distributed
from l2m_jax.information.counting import (
    CountTable,
    PairCounts,
    _as_documents,
    _count_pairs,
    _host_workers,
    _key_dtype,
    _run_lengths,
    count_pairs,
    sum_pair_counts,
)
from l2m_jax.information.entropy import (
    METHODS,
    _count_of_counts,
    _grassberger_g_np,
    entropy_from_count_of_counts,
)
from l2m_jax.information.fits import (
    BootstrapInterval,
    OffsetProfile,
    PowerLawFit,
    fit_power_law,
    offset_profile,
)

__all__ = [
    "MARGINALS",
    "SURROGATES",
    "TwoPointEstimates",
    "TwoPointResult",
    "shifted_pair_counts",
    "shuffle_documents",
    "two_point_estimates",
    "two_point_mi",
    "two_point_mi_from_counts",
]

MARGINALS = ("unigrams", "pairs")
SURROGATES = ("within", "global", "shift", None)


class TwoPointEstimates(NamedTuple):
    """Î_TP(d) of one set of pair counts (no surrogate, no fit).

    Attributes:
      mi: [K] the estimate per distance, nats.
      stderr: [K] delta-method standard error (iid pairs).
      pairs: [K] pairs counted per distance.
    """

    mi: np.ndarray
    stderr: np.ndarray
    pairs: np.ndarray


class TwoPointResult(NamedTuple):
    """I_TP(d) per distance, its bias correction and the power-law fit.

    Attributes:
      distances: [K] the distances d, ascending.
      mi: [K] the estimate in nats: `mi_raw − mi_surrogate` with a surrogate, else `mi_raw`.
      stderr: [K] standard error of `mi` (module docstring).
      pairs: [K] number of pairs counted at each distance.
      alpha: decay exponent α of the fit (None when too few distances qualify).
      alpha_stderr: standard error of α from the fit's residuals.
      amplitude: A.
      offset: C of the offset fit (None for the plain power law used with a surrogate).
      fit_distances: the distances the fit used.
      tokens: tokens counted; documents: non-empty documents counted.
      mi_raw: [K] the estimate on the corpus as it is.
      stderr_raw: [K] its delta-method standard error.
      mi_surrogate: [K] mean estimate over the shuffled surrogates (None without one).
      surrogate_spread: [K] standard deviation of the surrogate estimates over shuffles.
      marginals, surrogate, method, shuffles: the conventions used.
      fit: "power_law" (A·d^−α on `mi`) or "offset" (A·d^−α + C on `mi_raw`).
      fit_range: the rule that chose `fit_distances`, in words.
      offset_fit: the paper's offset fit of `mi_raw` (over distances up to its smallest
        value, or `fit_range` if given), whichever `fit` is; None if it does not apply.
      offset_profile: that fit's residual profiled over C (`fits.offset_profile`), or None.
      bootstrap: percentile interval of α under resampling of documents (None if not run).
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
    mi_raw: np.ndarray
    stderr_raw: np.ndarray
    mi_surrogate: np.ndarray | None
    surrogate_spread: np.ndarray | None
    marginals: str
    surrogate: str | None
    method: str
    shuffles: int
    fit: str
    fit_range: str
    offset_fit: PowerLawFit | None
    offset_profile: OffsetProfile | None
    bootstrap: BootstrapInterval | None


# ------------------------------------------------------------------------------- arguments


def _check_options(marginals, surrogate, method, shuffles=None) -> None:
    if marginals not in MARGINALS:
        raise ValueError(f"marginals must be one of {MARGINALS}, got {marginals!r}")
    if surrogate not in SURROGATES:
        raise ValueError(
            f"surrogate must be one of {SURROGATES} (None: no bias correction), got {surrogate!r}"
        )
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if shuffles is not None and surrogate is not None:
        if not isinstance(shuffles, (int, np.integer)) or isinstance(shuffles, bool):
            raise ValueError(f"shuffles must be an integer ≥ 2, got {shuffles!r}")
        if shuffles < 2:
            raise ValueError(
                f"shuffles must be ≥ 2 (their spread is part of the stderr), got {shuffles}"
            )


def _check_fit_range(fit_range):
    if isinstance(fit_range, str):
        if fit_range in ("auto", "all"):
            return fit_range
    else:
        try:
            lo, hi = (int(v) for v in fit_range)
        except (TypeError, ValueError):
            lo = hi = 0
        if 1 <= lo <= hi:
            return lo, hi
    raise ValueError(
        f'fit_range must be "auto", "all" or (lo, hi) with 1 ≤ lo ≤ hi, got {fit_range!r}'
    )


# ------------------------------------------------------------------------------- estimates


def _histogram_entropy(values: np.ndarray, mult: np.ndarray, method: str, bins: int) -> float:
    return float(entropy_from_count_of_counts(values, mult, method, bins=bins).value)


def _grassberger_table(counts: np.ndarray, limit: int | None = None) -> np.ndarray | None:
    """G(n) for n = 0 … max(counts) (G(0) = G(1)), or None when that table would be longer
    than `limit` (default: much longer than `counts`). G is constant on pairs (2k, 2k + 1):
    one digamma per pair."""
    top = int(counts.max())
    if top > (max(1 << 16, 4 * counts.size) if limit is None else limit):
        return None
    half = _grassberger_g_np(2.0 * np.arange(top // 2 + 1, dtype=np.float64))
    return np.repeat(half, 2)[: top + 1]


_BLOCK = 1 << 16  # pairs per block of `_one_distance`: 0.5 MiB per 8-byte work array


class _Scratch:
    """Per-thread work arrays of `_one_distance` for one block of pairs (two intp, two
    float64, and a uint64 one viewed in the keys' dtype, as intp or as float64), reused
    across blocks and distances."""

    def __init__(self, size: int):
        self.size = size
        self.local = threading.local()

    def arrays(self, n: int) -> tuple[np.ndarray, ...]:
        if not hasattr(self.local, "arrays"):
            size = self.size
            self.local.arrays = tuple(np.empty(size, t) for t in (np.intp, np.intp, float, float))
            self.local.arrays += (np.empty(size, np.uint64),)
        return tuple(a[:n] for a in self.local.arrays)


def _one_distance(
    table, vocab: int, method: str, h_unigram, scratch, known=None, g_marginal=None
) -> tuple[float, float, int]:
    """(Î, delta-method stderr, pairs) of one distance's pair table; `known`: its first- and
    second-token histograms ([V] each) where the counting made them, else None;
    `g_marginal`: G(n) for n up to the largest unigram count (≥ any marginal), or None.

    The table is read in blocks of `_BLOCK` pairs whose work arrays stay in the core's cache
    (the step is memory-bound). Unless `known`, a first read makes the marginals (the first
    token is sorted, so its sums come from run boundaries; the second token's need a
    bincount). One read then makes every sum over pairs at once: Σ n G(n), and Σ n t² with
    t(a, b) = G(n_ab) − G(n_a) − G(n_b) + log N, whose mean over pairs is Grassberger's Î
    exactly, so Σ n (t − Î)² = Σ n t² − N Î² (|t| ≲ 20 and Î ≈ 1: no digits lost).
    """
    keys, counts = table.keys, table.counts
    base = keys.dtype.type(vocab)
    spans = [(lo, min(lo + _BLOCK, keys.size)) for lo in range(0, keys.size, _BLOCK)]
    g_table = _grassberger_table(counts)

    def block(lo, hi):
        """Work arrays of pairs lo:hi: (first token, second token, n as float64, spare, spare
        keys); the tokens as intp, in which bincount and take index without a copy."""
        first, second, w, f, spare = scratch.arrays(hi - lo)
        key = spare.view(keys.dtype)[: hi - lo]
        np.floor_divide(keys[lo:hi], base, out=key)  # a division by a constant
        np.copyto(first, key, casting="unsafe")
        np.multiply(key, base, out=key)
        np.subtract(keys[lo:hi], key, out=second, casting="unsafe")
        np.copyto(w, counts[lo:hi])  # exact below 2^53
        return first, second, w, f, spare

    if known is not None:
        n_first, n_second = (np.asarray(n, np.float64) for n in known)
    else:
        n_first, n_second = np.zeros(vocab), np.zeros(vocab)
        for lo, hi in spans:
            first, second, w, _, _ = block(lo, hi)
            runs = np.concatenate(([0], np.flatnonzero(first[1:] != first[:-1]) + 1))
            n_first[first[runs]] += np.add.reduceat(w, runs)  # distinct within a block
            n_second += np.bincount(second, weights=w, minlength=vocab)
    total = float(n_first.sum())
    log_total = math.log(total)
    # Grassberger's G per marginal count (G(1) where a marginal is 0); log N goes into g_first
    if g_marginal is not None:
        g_first, g_second = (g_marginal.take(n.astype(np.intp)) for n in (n_first, n_second))
    else:
        g_first = _grassberger_g_np(np.maximum(n_first, 1.0))
        g_second = _grassberger_g_np(np.maximum(n_second, 1.0))
    h_first_g = log_total - float(np.einsum("i,i->", n_first, g_first)) / total
    h_second_g = log_total - float(np.einsum("i,i->", n_second, g_second)) / total
    g_first -= log_total
    sum_ng = sum_nt2 = 0.0
    for lo, hi in spans:
        first, second, w, f, spare = block(lo, hi)
        if g_table is not None:
            index = spare.view(np.intp)
            np.copyto(index, counts[lo:hi], casting="unsafe")
            g_table.take(index, out=f, mode="clip")  # in range: "clip" takes without a copy
        else:
            f[:] = _grassberger_g_np(w)
        # einsum's own loops, not `@`: BLAS's threads would spin on the cores that the other
        # distances run on
        sum_ng += float(np.einsum("i,i->", w, f))
        g = spare.view(float)
        f -= g_first.take(first, out=g, mode="clip")
        f -= g_second.take(second, out=g, mode="clip")
        sum_nt2 += float(np.einsum("i,i,i->", w, f, f))
    h_pair_g = log_total - sum_ng / total
    mi_g = h_first_g + h_second_g - h_pair_g
    if method == "grassberger":
        h_pair = h_pair_g
        h_marginals = h_first_g + h_second_g
    else:
        hist = np.bincount(counts)
        values = np.flatnonzero(hist)
        h_pair = _histogram_entropy(values, hist[values], method, vocab * vocab)
        if h_unigram is None:
            h_marginals = sum(
                _histogram_entropy(*_count_of_counts(n.astype(np.int64)), method, vocab)
                for n in (n_first, n_second)
            )
    value = (2.0 * h_unigram if h_unigram is not None else h_marginals) - h_pair
    variance = max(sum_nt2 - total * mi_g * mi_g, 0.0) / total
    return value, math.sqrt(variance / total), int(total)


def _estimator(
    unigrams: np.ndarray,
    marginals: str,
    method: str,
    largest: int | None = None,
    first: np.ndarray | None = None,
    second: np.ndarray | None = None,
):
    """The estimate of distance k's table as a function of (k, table) (None for an empty
    table), for tables of at most `largest` distinct pairs (None: any); the unigram entropy
    and the work arrays are shared. `first`, `second`: [K, V] token histograms of the pairs'
    first and second tokens where the counting made them (else the tables give them)."""
    vocab = unigrams.size
    h_unigram = None
    if marginals == "unigrams":
        h_unigram = _histogram_entropy(*_count_of_counts(unigrams), method, vocab)
    scratch = _Scratch(_BLOCK if largest is None else min(largest, _BLOCK))
    g_marginal = _grassberger_table(unigrams, limit=1 << 22)  # shared by every distance

    def one(k: int, table: CountTable):
        if not table.keys.size:
            return None
        known = None if first is None else (first[k], second[k])
        return _one_distance(table, vocab, method, h_unigram, scratch, known, g_marginal)

    return one


def _gathered(counts: PairCounts, per_d: list) -> TwoPointEstimates:
    for d, one in zip(counts.distances, per_d, strict=True):
        if one is None:
            raise ValueError(
                f"no pairs at distance {d}: every document is shorter than {d + 1} tokens; "
                "drop that distance (or pass longer documents)"
            )
    mi, stderr, pairs = (np.array(v) for v in zip(*per_d, strict=True))
    return TwoPointEstimates(mi, stderr, pairs.astype(np.int64))


def two_point_estimates(
    counts: PairCounts, *, marginals: str = "unigrams", method: str = "grassberger"
) -> TwoPointEstimates:
    """Î_TP(d) and its delta-method stderr at every distance of `count_pairs` output."""
    _check_options(marginals, None, method)
    tables = counts.tables
    one = _estimator(counts.unigrams, marginals, method, max(t.keys.size for t in tables))
    workers = min(len(tables), _host_workers())
    if workers > 1 and sum(t.keys.size for t in tables) >= 1 << 20:  # NumPy releases the GIL
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            per_d = list(pool.map(one, range(len(tables)), tables))
    else:
        per_d = [one(k, t) for k, t in enumerate(tables)]
    return _gathered(counts, per_d)


def _counted_estimates(tokens_or_docs, distances, vocab_size, marginals, method, count_kw):
    """(`count_pairs`, `two_point_estimates` of it); where the corpus is one host chunk, each
    distance is estimated while the others are counted (counting's `_pipelined`)."""
    _check_options(marginals, None, method)
    then = lambda unigrams, first, second: _estimator(
        unigrams, marginals, method, first=first, second=second
    )
    counts, per_d = _count_pairs(tokens_or_docs, distances, vocab_size, then=then, **count_kw)
    if per_d is None:
        return counts, two_point_estimates(counts, marginals=marginals, method=method)
    return counts, _gathered(counts, per_d)


# ------------------------------------------------------------------------------ surrogates


def shuffle_documents(docs: Sequence[np.ndarray], surrogate: str, seed=0) -> list[np.ndarray]:
    """Documents with their tokens shuffled: "within" each document, or "global" across the
    corpus (document lengths kept). `seed`: an int or a `np.random.Generator`."""
    if surrogate not in ("within", "global"):
        raise ValueError(f'surrogate must be "within" or "global", got {surrogate!r}')
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    docs = [np.asarray(d) for d in docs]
    if surrogate == "within":
        return [rng.permutation(d) for d in docs]
    lengths = np.array([d.size for d in docs], np.int64)
    return np.split(rng.permutation(np.concatenate(docs)), np.cumsum(lengths)[:-1])


def shifted_pair_counts(
    docs: Sequence[np.ndarray], distances, vocab_size: int, seed=0
) -> PairCounts:
    """Pair counts of the "shift" surrogate (module docstring): at every distance d, token i
    of a document of n > d tokens is paired with token (i + e) mod n for i < n − d, with one
    e per document drawn uniformly in [n/4, 3n/4). `seed`: an int or a `np.random.Generator`."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    docs = [np.asarray(d) for d in docs if np.asarray(d).size]
    distances = tuple(sorted(int(d) for d in distances))
    dtype = _key_dtype(vocab_size, 2)
    base = dtype(vocab_size)
    shifts = [n // 4 + int(rng.integers(0, max(n // 2, 1))) for n in (d.size for d in docs)]
    tables = []
    for dist in distances:
        parts = []
        for doc, shift in zip(docs, shifts, strict=True):
            n = doc.size
            if n > dist:
                partner = np.roll(doc, -shift)[: n - dist]  # token (i + e) mod n
                parts.append(doc[: n - dist].astype(dtype) * base + partner.astype(dtype))
        keys = np.concatenate(parts) if parts else np.zeros(0, dtype)
        keys.sort()
        tables.append(
            _run_lengths(keys, np.empty(keys.size, bool))
            if keys.size
            else CountTable(keys, np.zeros(0, np.int32))
        )
    tokens = np.concatenate(docs) if docs else np.zeros(0, np.int64)
    unigrams = np.bincount(tokens.astype(np.intp), minlength=vocab_size).astype(np.int64)
    counts = PairCounts(distances, vocab_size, tuple(tables), unigrams, tokens.size, len(docs))
    return sum_pair_counts(counts)  # every process's documents in a multi-process run


def _surrogate_estimates(docs, surrogate, distances, vocab, rng, options, count_kw):
    """`two_point_estimates` of one surrogate of `docs`; a shuffle is estimated while it is
    counted, as the corpus is (`_counted_estimates`). `options`: (marginals, method)."""
    marginals, method = options
    if surrogate == "shift":
        counts = shifted_pair_counts(docs, distances, vocab, rng)
        return two_point_estimates(counts, marginals=marginals, method=method)
    shuffled = shuffle_documents(docs, surrogate, rng)
    return _counted_estimates(shuffled, distances, vocab, marginals, method, count_kw)[1]


# ------------------------------------------------------------------------------------ fits


def _fit_mask(distances, mi, stderr, fit_range, corrected: bool) -> tuple[np.ndarray, str]:
    positive = mi > 0
    if fit_range == "auto" and corrected:
        significant = mi > 3.0 * stderr
        stop = len(mi) if significant.all() else int(np.argmin(significant))
        mask = np.arange(len(mi)) < stop
        return mask, "auto: from the smallest d while the estimate exceeds 3 standard errors"
    if fit_range == "auto":
        mask = positive & (distances <= distances[np.argmin(mi)])
        return (
            mask,
            "auto: d up to the smallest estimate (past it the bias grows as pairs get fewer)",
        )
    if fit_range == "all":
        return positive, "all: every d with a positive estimate"
    lo, hi = fit_range
    return positive & (distances >= lo) & (distances <= hi), f"{lo} ≤ d ≤ {hi}, positive estimates"


def _fit(distances, mi, mask, offset: bool) -> PowerLawFit | None:
    if mask.sum() < (4 if offset else 3):  # parameters + one degree of freedom for the stderr
        return None
    return fit_power_law(distances[mask], mi[mask], offset=offset)


def _assemble(
    distances, raw: TwoPointEstimates, surrogates, tokens, documents, options, fit_range, boot=None
) -> TwoPointResult:
    marginals, surrogate, method = options
    fit_range = _check_fit_range(fit_range)
    # the paper's offset fit of the raw estimates and its profile over C
    raw_mask, raw_rule = _fit_mask(distances, raw.mi, raw.stderr, fit_range, corrected=False)
    offset_fit = _fit(distances, raw.mi, raw_mask, offset=True)
    profile = None
    if offset_fit is not None:
        profile = offset_profile(distances[raw_mask], raw.mi[raw_mask], fit=offset_fit)
    if surrogates:
        sur_SxK = np.stack([s.mi for s in surrogates])
        mi_sur = sur_SxK.mean(axis=0)
        spread = sur_SxK.std(axis=0, ddof=1)
        mi = raw.mi - mi_sur
        stderr = np.sqrt(raw.stderr**2 + spread**2 / len(surrogates))
        mask, rule = _fit_mask(distances, mi, stderr, fit_range, corrected=True)
        fit, kind = _fit(distances, mi, mask, offset=False), "power_law"
    else:
        mi_sur = spread = None
        mi, stderr, mask, rule = raw.mi, raw.stderr, raw_mask, raw_rule
        fit, kind = offset_fit, "offset"
    alpha = alpha_stderr = amplitude = offset = None
    if fit is not None:
        alpha, alpha_stderr, amplitude = -fit.exponent, fit.exponent_stderr, fit.amplitude
        offset = fit.offset if kind == "offset" else None
    return TwoPointResult(
        distances,
        mi,
        stderr,
        raw.pairs,
        alpha,
        alpha_stderr,
        amplitude,
        offset,
        distances[mask] if fit is not None else distances[:0],
        tokens,
        documents,
        raw.mi,
        raw.stderr,
        mi_sur,
        spread,
        marginals,
        surrogate,
        method,
        len(surrogates),
        kind,
        rule,
        offset_fit,
        profile,
        boot,
    )


def two_point_mi_from_counts(
    counts: PairCounts,
    surrogate_counts: Sequence[PairCounts] = (),
    *,
    marginals: str = "unigrams",
    method: str = "grassberger",
    surrogate: str | None = None,
    fit_range: tuple[int, int] | str = "auto",
) -> TwoPointResult:
    """I_TP(d) with standard errors and the fit, from `count_pairs` output.

    Args:
      counts: pair counts of the corpus (summed over hosts or chunks as needed).
      surrogate_counts: pair counts of ≥ 2 shuffled copies of it (`shuffle_documents`),
        counted at the same distances; empty for no bias correction.
      marginals, method: as for `two_point_mi`.
      surrogate: the label of the surrogate used ("within", "global" or "shift"), stored in
        the result.
      fit_range: distances the fit uses:
        "auto"    with surrogates, from the smallest d while the corrected estimate exceeds
                  3 standard errors; without, d up to the distance of the smallest estimate
                  (past it the bias grows as pairs get fewer, which no constant absorbs).
        "all"     every distance with a positive estimate.
        (lo, hi)  lo ≤ d ≤ hi, positive estimates.
      A plain power law needs 3 such distances, the offset fit 4.
    """
    surrogate_counts = list(surrogate_counts)
    if surrogate_counts and surrogate is None:
        surrogate = "within"
    if not surrogate_counts:
        surrogate = None
    _check_options(marginals, surrogate, method, len(surrogate_counts) or None)
    _check_fit_range(fit_range)
    for s in surrogate_counts:
        if s.distances != counts.distances or s.vocab_size != counts.vocab_size:
            raise ValueError(
                "surrogate_counts must be counted at the distances and vocab_size of counts"
            )
    raw = two_point_estimates(counts, marginals=marginals, method=method)
    surrogates = [
        two_point_estimates(s, marginals=marginals, method=method) for s in surrogate_counts
    ]
    return _assemble(
        np.asarray(counts.distances, np.int64),
        raw,
        surrogates,
        counts.tokens,
        counts.documents,
        (marginals, surrogate, method),
        fit_range,
    )


# ------------------------------------------------------------------------------- bootstrap


def _resampled_mi(counts: PairCounts, weights_RxB, vocab, marginals, method) -> np.ndarray:
    """Î(d) [R, K] of block-resampled corpora from block-tagged pair counts.

    Token t of block b was counted as b·V + t, so every pair key carries its block; a
    resample weights block b's pairs and unigrams by weights_RxB[r, b].
    """
    blocks = weights_RxB.shape[1]
    tagged = np.uint64(blocks * vocab)
    unigram_RxV = weights_RxB @ counts.unigrams.reshape(blocks, vocab).astype(np.float64)
    h_unigram = None
    if marginals == "unigrams":
        h_unigram = [
            _histogram_entropy(*_count_of_counts(np.rint(u).astype(np.int64)), method, vocab)
            for u in unigram_RxV
        ]
    out = np.empty((weights_RxB.shape[0], len(counts.distances)))
    for k, table in enumerate(counts.tables):
        keys = table.keys.astype(np.uint64, copy=False)
        first, second = np.divmod(keys, tagged)
        block, first = np.divmod(first, np.uint64(vocab))
        second = second % np.uint64(vocab)
        pair_keys, pair_of = np.unique(first * np.uint64(vocab) + second, return_inverse=True)
        block = block.astype(np.intp)
        first, second = first.astype(np.intp), second.astype(np.intp)
        for r, w_B in enumerate(weights_RxB):
            w = w_B[block] * table.counts
            n_pair = np.rint(np.bincount(pair_of, weights=w, minlength=pair_keys.size))
            h_pair = _histogram_entropy(
                *_count_of_counts(n_pair.astype(np.int64)), method, vocab * vocab
            )
            if h_unigram is not None:
                out[r, k] = 2.0 * h_unigram[r] - h_pair
                continue
            h_marg = 0.0
            for ids in (first, second):
                n = np.rint(np.bincount(ids, weights=w, minlength=vocab)).astype(np.int64)
                h_marg += _histogram_entropy(*_count_of_counts(n), method, vocab)
            out[r, k] = h_marg - h_pair
    return out


def _document_bootstrap(
    docs, result: TwoPointResult, vocab, *, resamples, blocks, confidence, rng, count_kw
) -> BootstrapInterval | None:
    """Percentile interval of α when blocks of consecutive documents are resampled."""
    offset = result.fit == "offset"
    fit_mask = np.isin(result.distances, result.fit_distances)
    if result.alpha is None:
        return None
    sizes = [d for d in docs if d.size]
    # In a multi-process run each process splits its own documents into the same blocks
    # (block b: every process's b-th share), and all use process 0's resample weights.
    n_blocks = min(blocks, int(distributed.sum_arrays(np.array(len(sizes)))))
    if n_blocks < 2:
        raise ValueError("a document bootstrap needs at least 2 non-empty documents")
    block_of = (np.arange(len(sizes)) * n_blocks) // max(len(sizes), 1)

    def tagged(ds):
        return [d.astype(np.int64) + b * vocab for d, b in zip(ds, block_of, strict=True)]

    weights_RxB = distributed.on_primary(
        lambda: rng.multinomial(n_blocks, np.full(n_blocks, 1.0 / n_blocks), resamples).tolist()
    )
    weights_RxB = np.asarray(weights_RxB, np.float64)
    distances = list(result.distances)
    options = (vocab, result.marginals, result.method)
    counts = count_pairs(tagged(sizes), distances, n_blocks * vocab, **count_kw)
    mi_RxK = _resampled_mi(counts, weights_RxB, *options)
    del counts
    if result.surrogate is not None:  # one shuffle per resample, resampled by the same blocks
        if result.surrogate == "shift":  # blocks are tagged on the documents themselves
            counts = shifted_pair_counts(tagged(sizes), distances, n_blocks * vocab, rng)
        else:
            shuffled = shuffle_documents(sizes, result.surrogate, rng)
            counts = count_pairs(tagged(shuffled), distances, n_blocks * vocab, **count_kw)
        mi_RxK = mi_RxK - _resampled_mi(counts, weights_RxB, *options)
        del counts
    ok = np.all(mi_RxK[:, fit_mask] > 0, axis=1)
    if ok.sum() < 2:
        raise ValueError(
            "fewer than 2 bootstrap resamples have positive estimates at every fitted distance; "
            "narrow fit_range"
        )
    d_fit = result.distances[fit_mask]
    alphas = np.array(
        [-fit_power_law(d_fit, m[fit_mask], offset=offset).exponent for m in mi_RxK[ok]]
    )
    tail = 0.5 * (1.0 - confidence)
    low, high = np.quantile(alphas, [tail, 1.0 - tail])
    return BootstrapInterval(
        float(low), float(high), float(alphas.std(ddof=1)), int(ok.sum()), int((~ok).sum())
    )


# ----------------------------------------------------------------------------- entry point


def two_point_mi(
    tokens_or_docs,
    distances,
    vocab_size: int | None = None,
    *,
    marginals: str = "unigrams",
    surrogate: str | None = "within",
    shuffles: int = 4,
    method: str = "grassberger",
    fit_range: tuple[int, int] | str = "auto",
    bootstrap: int = 0,
    blocks: int = 100,
    confidence: float = 0.95,
    seed: int = 0,
    chunk_tokens: int = 1 << 24,
    implementation: str = "auto",
    devices: Sequence[jax.Device] | None = None,
    progress: bool = True,
) -> TwoPointResult:
    """Two-point MI Î_TP(d) in nats at every distance, bias-corrected, with the power-law fit.

    Args:
      tokens_or_docs: [T] int token ids (one document), [B, T] (B documents), a list of 1-D
        arrays, or any iterable of them (then `vocab_size` is required; with a surrogate or
        a bootstrap the documents are read into memory once). Pairs never cross a document
        boundary.
      distances: distinct integers d ≥ 1.
      vocab_size: V (ids must lie in [0, V)); inferred as max id + 1 if None.
      marginals: "unigrams" (2·Ĥ(W) − Ĥ(pairs), the paper's; default) or "pairs" (the
        marginals of each distance's pairs); see the module docstring.
      surrogate: "within" (shuffle tokens inside each document; default), "global" (across
        the corpus, document lengths kept), "shift" (pair each token with one a random
        quarter to three quarters of the document on; keeps bursts, for d ≪ document
        length / 4) or None (no bias correction: the paper's offset fit A·d^−α + C on the
        raw estimates).
      shuffles: surrogates averaged (≥ 2; each costs one more count of the corpus).
      method: entropy estimator: "grassberger" (default), "nsb" (K = V bins for tokens and
        V² for pairs), "miller_madow" or "plugin". The stderr is the delta-method one
        either way.
      fit_range: "auto", "all" or (lo, hi); see `two_point_mi_from_counts`.
      bootstrap: resamples of a document-block bootstrap of α (0: none). Each resample
        draws `blocks` blocks of consecutive documents with replacement and recomputes the
        (corrected) estimates from per-block pair tables; the fitted distances are fixed.
      blocks: number of blocks (at most the number of documents).
      confidence: level of the bootstrap's percentile interval.
      seed: seeds the shuffles and the bootstrap.
      chunk_tokens, implementation, devices, progress: passed to `count_pairs`.
    """
    _check_options(marginals, surrogate, method, shuffles)
    _check_fit_range(fit_range)
    if not isinstance(bootstrap, (int, np.integer)) or bootstrap < 0 or bootstrap == 1:
        raise ValueError(f"bootstrap must be 0 (none) or an integer ≥ 2, got {bootstrap!r}")
    if bootstrap and (not isinstance(blocks, (int, np.integer)) or blocks < 2):
        raise ValueError(f"blocks must be an integer ≥ 2, got {blocks!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    count_kw = dict(
        chunk_tokens=chunk_tokens, implementation=implementation, devices=devices, progress=progress
    )
    options = (marginals, surrogate, method)
    if surrogate is None and not bootstrap:  # one streaming pass
        counts, raw = _counted_estimates(
            tokens_or_docs, distances, vocab_size, marginals, method, count_kw
        )
        return _assemble(
            np.asarray(counts.distances, np.int64),
            raw,
            [],
            counts.tokens,
            counts.documents,
            options,
            fit_range,
        )
    docs = _as_documents(tokens_or_docs)
    docs = [np.asarray(d) for d in docs]
    counts, raw = _counted_estimates(docs, distances, vocab_size, marginals, method, count_kw)
    vocab = counts.vocab_size
    distances_K = np.asarray(counts.distances, np.int64)
    tokens, documents = counts.tokens, counts.documents
    del counts  # the tables of one corpus can be large (8 bytes per distinct pair)
    rng = np.random.default_rng(seed)
    surrogates = [
        _surrogate_estimates(
            docs, surrogate, list(distances_K), vocab, rng, (marginals, method), count_kw
        )
        for _ in range(shuffles if surrogate is not None else 0)
    ]
    result = _assemble(distances_K, raw, surrogates, tokens, documents, options, fit_range)
    if bootstrap:
        boot = _document_bootstrap(
            docs,
            result,
            vocab,
            resamples=int(bootstrap),
            blocks=int(blocks),
            confidence=confidence,
            rng=rng,
            count_kw=count_kw,
        )
        result = result._replace(bootstrap=boot)
    return result
