"""Bipartite mutual information I(X ; Y) estimated with an autoregressive model (PAPER.md §2).

For a split ℓ at ratio r, X = W_1:ℓ and Y = W_ℓ+1:rℓ (Y has (r − 1)·ℓ tokens). With q the
model and σ a derangement of the documents (no document paired with itself):

  direct        I = E[log q(Y | X) − log q(Y | BOS)]              (paired: the same Y in both)
  corrected     the joint cross-entropy of Y's first two tokens in −log q(Y | BOS) replaced
                by (1 − w)·(−log q(Y1 Y2 | BOS)) + w·Ĥ_G(2-grams),  w = `ngram_weight`
                (the paper's 4/5); Ĥ_G is the Grassberger entropy of the corpus's 2-grams
  vCLUB         I = E[log q(Y | X) − log q(Y | X_σ)]              (Y after another X)

Each estimate is a mean over documents; its standard error is the standard deviation of the
per-document values over √n (for the corrected estimate, w·stderr(Ĥ_G) is added in
quadrature). Per-document sums of log-probabilities are accumulated in float64 on the host.

Checks that come with every result:
  n-gram histogram  Ĥ_G comes from `corpus` (default: the documents themselves, which for
                    samples of a larger corpus is far too few 2-grams); its token count,
                    distinct 2-grams and Good–Turing missing mass (the share of 2-grams seen
                    once) are reported, with a warning when that share exceeds 0.1.
  data processing   for stationary text I_BP(ℓ; rℓ) ≥ I(W_ℓ ; W_ℓ+1) = I_TP(1). The bound is
                    Î_TP(1) of the corpus minus the same estimate on the corpus shuffled
                    across documents: the Grassberger bias (≈ 0.4 nats at V ≈ 50k and 6M
                    tokens) would otherwise make the bound too high and flag good splits.
                    The surrogate measures the bias of independent pairs; that of the real
                    pairs differs (on undersampled Markov chains it left the bound 0.6 nats
                    low at V²/N = 10 and 0.04 high at V²/N ≈ 1, where the raw value was 0.6
                    and 0.08 too high). Splits whose estimate lies below the bound by more
                    than 3 standard errors are flagged and kept out of the fits.
  fits              `FIT_RULE` below, with a document bootstrap applying the same rule:
                    weighted log-space least squares over the splits with signal-to-noise
                    ≥ 3 that pass the bound check, Birge-scaled stderr.
  h(t)              the joint pass's per-position log-probs give the entropy-by-context curve
                    h(t) = E[−log q(W_t | BOS, W_<t)], fitted with Hilberg's law
                    h(t) = h∞ + A·t^(β−1): a second β from the same scoring.

The scoring plan runs only the passes and scores only the positions these terms use:
  joint      one pass over the document's first r·ℓ_max tokens serves every split's
             log q(Y | X) and h(t); every position is kept.
  marginal   per split, Y alone after BOS: (r − 1)·ℓ tokens, all scored.
  shuffled   per split, X_σ (ℓ tokens of another document) followed by Y: scored on Y only.
The official code runs one shared pass over all L tokens and, per split, a marginal pass over
W_ℓ+1:L and a shuffled pass of L tokens, scoring every position: L + Σ_ℓ (2L − ℓ) per
document (40 962 at L = 2048, ℓ = 2, 4, …, 1024, against our 8 186 run and 6 140 used).

`bipartite_mi` drives a model's log-probability function (`logprob_fn(params, tokens_BxT)
-> logp_BxT`, entry t = log q(tokens[t] | BOS, tokens[:t]); the model adds its BOS and must be
causal) over the documents through `score_documents`: batches of a fixed size padded to a
multiple of the device count, the batch axis sharded over a 1-D mesh of the local devices,
pass lengths padded at the end to shape buckets {2^k, 3·2^k} (one compilation per bucket), a
progress bar, and — with `cache_dir` — every finished batch's per-position log-probs on disk,
so an interrupted run resumes where it stopped with identical results.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
import tqdm
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from l2m_jax import distributed
from l2m_jax.information.counting import count_ngrams
from l2m_jax.information.entropy import entropy
from l2m_jax.information.fits import (
    HilbergFit,
    bootstrap_hilberg,
    bootstrap_power_law,
    fit_hilberg,
    fit_power_law,
)
from l2m_jax.information.two_point import two_point_mi

__all__ = [
    "FIT_RULE",
    "BipartiteEstimates",
    "BipartiteResult",
    "DataProcessingBound",
    "DocumentScores",
    "EntropyByContext",
    "ExponentFit",
    "NgramEntropy",
    "PositionLogprobs",
    "ScoringPass",
    "ScoringPlan",
    "ScoringRun",
    "bipartite_estimates",
    "bipartite_mi",
    "derangement",
    "document_scores",
    "ngram_entropy",
    "score_documents",
    "scoring_plan",
    "two_point_bound",
]

PASS_KINDS = ("joint", "marginal", "shuffled")
FIT_RULE = (
    "weighted least squares of log I on log ℓ, weights (Î/σ)² at the fitted Î, stderr "
    "scaled by sqrt(χ²/dof) when above 1; a split enters when its mean is at least 3 "
    "standard errors above 0 (below that its logarithm is far from normal) and not below the "
    "data-processing bound by more than 3 standard errors; every bootstrap resample applies "
    "the same rule to its own means and standard errors, and one left with fewer than 3 "
    "splits counts as failed"
)
MIN_SNR = 3.0  # a split enters a log-space fit when mean ≥ MIN_SNR · stderr
UNDERSAMPLED_MISSING_MASS = 0.1  # Good–Turing share of unseen 2-grams that triggers a warning
BOUND_SIGMAS = 3.0


# ---- the scoring plan --------------------------------------------------------------------


class ScoringPass(NamedTuple):
    """One model pass per document.

    Attributes:
      kind: "joint" (the document's prefix), "marginal" (Y after BOS) or "shuffled"
        (another document's X, then Y).
      split: the split ℓ it serves (0 for the joint pass, which serves every split).
      length: tokens fed to the model (it adds its own BOS in front).
      scored: half-open ranges [start, stop) of pass positions whose log-probs are used.
    """

    kind: str
    split: int
    length: int
    scored: tuple[tuple[int, int], ...]

    @property
    def tokens_scored(self) -> int:
        return sum(stop - start for start, stop in self.scored)


class ScoringPlan(NamedTuple):
    """The passes and positions a set of splits needs, per document (see module docstring).

    Attributes:
      splits: split points ℓ, ascending.
      ratio: r = L/ℓ; Y is W_ℓ+1:rℓ.
      length: L of the official code's passes (r·ℓ_max unless given).
      passes: the joint pass first, then a marginal and a shuffled pass per split.
    """

    splits: tuple[int, ...]
    ratio: int
    length: int
    passes: tuple[ScoringPass, ...]

    @property
    def tokens_scored(self) -> int:
        """Log-probs used per document (shared joint positions counted once)."""
        return sum(p.tokens_scored for p in self.passes)

    @property
    def tokens_processed(self) -> int:
        """Positions run through the model per document (sum of pass lengths)."""
        return sum(p.length for p in self.passes)

    @property
    def tokens_official(self) -> int:
        """What the official code runs and scores per document: one shared pass over all L
        tokens, then per split a marginal pass over W_ℓ+1:L and a shuffled pass of L tokens
        (another document's X, then W_ℓ+1:L): L + Σ_ℓ (2L − ℓ)."""
        return self.length + sum(2 * self.length - ell for ell in self.splits)

    @property
    def fraction_scored(self) -> float:
        """tokens_scored / tokens_official."""
        return self.tokens_scored / self.tokens_official

    @property
    def fraction_processed(self) -> float:
        """tokens_processed / tokens_official: the share of the official code's model work."""
        return self.tokens_processed / self.tokens_official


def _check_int(name: str, value, lo: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < lo:
        raise ValueError(f"{name} must be an integer ≥ {lo}, got {value!r}")
    return int(value)


def _check_splits(splits) -> tuple[int, ...]:
    arr = np.atleast_1d(np.asarray(splits))
    if arr.size == 0:
        raise ValueError("splits is empty; pass split points ℓ ≥ 1, e.g. [2, 4, 8, 16]")
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer) or arr.min() < 1:
        raise ValueError(f"splits must be a 1-D list of integers ℓ ≥ 1, got {splits!r}")
    if np.any(np.diff(arr) <= 0):
        raise ValueError(f"splits must be distinct and increasing, got {arr.tolist()}")
    return tuple(int(s) for s in arr)


def scoring_plan(splits, ratio: int = 2, *, length: int | None = None) -> ScoringPlan:
    """The passes and scored positions for split points ℓ at ratio r = L/ℓ ∈ {2, 3, …}.

    `length` (default r·ℓ_max) only sets the sequence length L of the official code's passes
    that `tokens_official` and `fraction_scored` compare with.
    """
    splits = _check_splits(splits)
    ratio = _check_int("ratio", ratio, 2)
    need = ratio * splits[-1]
    if length is None:
        length = need
    elif _check_int("length", length, 1) < need:
        too_long = [ell for ell in splits if ratio * ell > length]
        raise ValueError(
            f"splits {too_long} need r·ℓ up to {need} tokens at ratio {ratio}, beyond "
            f"length={length}; drop those splits or raise the length"
        )
    passes = [ScoringPass("joint", 0, need, ((0, need),))]  # Y of every split, and h(t)
    for ell in splits:
        y = (ratio - 1) * ell
        passes.append(ScoringPass("marginal", ell, y, ((0, y),)))
        passes.append(ScoringPass("shuffled", ell, ratio * ell, ((ell, ratio * ell),)))
    return ScoringPlan(splits, ratio, length, tuple(passes))


def derangement(n: int, seed: int = 0) -> np.ndarray:
    """A random permutation σ of range(n) with σ[i] ≠ i (one n-cycle); needs n ≥ 2."""
    n = _check_int("n", n, 0)
    if n < 2:
        raise ValueError(
            f"vCLUB pairs each Y with another document's X: need at least 2 documents, got {n}"
        )
    order = np.random.default_rng(seed).permutation(n)
    sigma = np.empty(n, np.int64)
    sigma[order] = np.roll(order, -1)
    return sigma


# ---- estimates from per-document log-probability sums -------------------------------------


class DocumentScores(NamedTuple):
    """Per-document sums of model log-probabilities, float64 [n_docs, S] (nats).

    Attributes:
      joint: Σ log q(Y | X) over Y's positions.
      marginal: Σ log q(Y | BOS).
      marginal_head: log q(Y1 Y2 | BOS), the first two of them.
      shuffled: Σ log q(Y | X_σ), Y after another document's X.
    """

    joint: np.ndarray
    marginal: np.ndarray
    marginal_head: np.ndarray
    shuffled: np.ndarray


class BipartiteEstimates(NamedTuple):
    """Per-split means over documents and their standard errors, float64 [S] (nats)."""

    direct: np.ndarray
    direct_stderr: np.ndarray
    direct_uncorrected: np.ndarray
    direct_uncorrected_stderr: np.ndarray
    vclub: np.ndarray
    vclub_stderr: np.ndarray


def _per_document(
    scores: DocumentScores, ngram_entropy: float, ngram_weight: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-document (corrected direct, uncorrected direct, vCLUB) values, [n_docs, S]."""
    uncorrected = scores.joint - scores.marginal
    # −log q(Y) with its first two tokens' cross-entropy blended with Ĥ_G:
    # −marginal + marginal_head − (1 − w)·marginal_head + w·Ĥ_G.
    corrected = uncorrected + ngram_weight * (scores.marginal_head + ngram_entropy)
    return corrected, uncorrected, scores.joint - scores.shuffled


def _mean_stderr(values_NxS: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = values_NxS.shape[0]
    return values_NxS.mean(axis=0), values_NxS.std(axis=0, ddof=1) / math.sqrt(n)


def bipartite_estimates(
    scores: DocumentScores,
    *,
    ngram_entropy: tuple[float, float] = (0.0, 0.0),
    ngram_weight: float = 0.8,
) -> BipartiteEstimates:
    """Direct (with and without the n-gram correction) and vCLUB estimates per split.

    Args:
      scores: per-document log-probability sums (at least 2 documents).
      ngram_entropy: (Ĥ_G, its stderr) of the corpus's 2-gram histogram, in nats.
      ngram_weight: w in [0, 1], weight of Ĥ_G in the first two tokens' cross-entropy.
    """
    n = scores.joint.shape[0]
    if n < 2:
        raise ValueError(f"standard errors over documents need at least 2 documents, got {n}")
    if not 0.0 <= ngram_weight <= 1.0:
        raise ValueError(f"ngram_weight must lie in [0, 1], got {ngram_weight}")
    h, h_se = (float(v) for v in ngram_entropy)
    corrected, uncorrected, vclub = _per_document(scores, h, ngram_weight)
    direct, direct_se = _mean_stderr(corrected)
    return BipartiteEstimates(
        direct,
        np.sqrt(direct_se**2 + (ngram_weight * h_se) ** 2),
        *_mean_stderr(uncorrected),
        *_mean_stderr(vclub),
    )


# ---- checks that come with the estimates ----------------------------------------------------


class NgramEntropy(NamedTuple):
    """Grassberger entropy of a corpus's 2-gram histogram, with how well it is sampled.

    Attributes:
      value, stderr: Ĥ_G(2-grams) in nats and its standard error.
      tokens: tokens in the corpus.
      distinct: distinct 2-grams seen.
      missing_mass: the share of 2-gram occurrences that are singletons, n1/N — the
        Good–Turing estimate of the probability of a 2-gram never seen. Large values mean an
        undersampled histogram and Ĥ_G biased low.
    """

    value: float
    stderr: float
    tokens: int
    distinct: int
    missing_mass: float


def _corpus_list(corpus, name: str) -> list[np.ndarray]:
    if isinstance(corpus, (str, bytes)):
        raise TypeError(f"{name} must hold integer token ids, not text; tokenize first")
    if isinstance(corpus, (np.ndarray, jax.Array)) and np.ndim(corpus) == 1:
        corpus = [corpus]
    out = [np.asarray(d) for d in corpus]
    if not out or sum(d.size for d in out) < 2:
        raise ValueError(f"{name} is empty; pass documents of token ids")
    for i, d in enumerate(out):
        if d.ndim != 1 or (d.size and not np.issubdtype(d.dtype, np.integer)):
            raise ValueError(f"{name}[{i}] must be a 1-D array of integer token ids")
    return out


def ngram_entropy(corpus, vocab_size: int | None = None) -> NgramEntropy:
    """Ĥ_G of the 2-gram histogram of `corpus` (documents of token ids; 2-grams never cross
    a document boundary), with its token count, distinct 2-grams and missing mass."""
    docs = _corpus_list(corpus, "corpus")
    table = count_ngrams(docs, 2, vocab_size, progress=False)
    counts = np.asarray(table.counts)
    if counts.size == 0:
        raise ValueError("corpus has no 2-grams: every document is shorter than 2 tokens")
    h = entropy(counts, "grassberger")
    total = int(counts.sum())
    return NgramEntropy(
        float(h.value),
        float(h.stderr),
        int(distributed.sum_arrays(np.array(sum(d.size for d in docs), np.int64))),
        int(counts.size),
        float(np.count_nonzero(counts == 1) / total),
    )


class DataProcessingBound(NamedTuple):
    """The lower bound I_BP(ℓ; rℓ) ≥ I(W_ℓ ; W_ℓ+1) = I_TP(1) (stationary text), estimated.

    Attributes:
      value, stderr: raw − surrogate, the bound the estimates are checked against, and its
        standard error (`two_point_mi`'s, the shuffles' spread included).
      raw, raw_stderr: `two_point_mi` at distance 1 on the corpus, uncorrected.
      surrogate, surrogate_spread: the same on the corpus's tokens shuffled across documents
        (document lengths kept), the mean over `shuffles` shuffles — the estimator's bias —
        and the spread between shuffles.
      shuffles: number of shuffles.
      marginals: the two-point convention (`two_point_mi`'s default, the paper's).
    """

    value: float
    stderr: float
    raw: float
    raw_stderr: float
    surrogate: float
    surrogate_spread: float
    shuffles: int
    marginals: str


def two_point_bound(
    corpus, vocab_size: int | None = None, *, shuffles: int = 2, seed: int = 0
) -> DataProcessingBound:
    """Î_TP(1) of `corpus` less its shuffled surrogate (`two_point_mi` with
    surrogate="global"): the data-processing lower bound of I_BP (module docstring)."""
    docs = _corpus_list(corpus, "corpus")
    shuffles = _check_int("shuffles", shuffles, 2)
    res = two_point_mi(
        docs, [1], vocab_size, surrogate="global", shuffles=shuffles, seed=seed, progress=False
    )
    return DataProcessingBound(
        float(res.mi[0]),
        float(res.stderr[0]),
        float(res.mi_raw[0]),
        float(res.stderr_raw[0]),
        float(res.mi_surrogate[0]),
        float(res.surrogate_spread[0]),
        int(res.shuffles),
        str(res.marginals),
    )


def _below(means, stderr, bound: DataProcessingBound | None):
    """True where an estimate lies below the bound by more than BOUND_SIGMAS stderrs."""
    if bound is None:
        return np.zeros(np.shape(means), bool)
    return means + BOUND_SIGMAS * np.sqrt(stderr**2 + bound.stderr**2) < bound.value


class ExponentFit(NamedTuple):
    """Power law I ≈ amplitude · ℓ^exponent over the splits `FIT_RULE` keeps.

    Attributes:
      exponent, exponent_stderr, amplitude: the weighted log-space fit
        (`fit_power_law(..., y_stderr=...)`); the stderr is from the known variances.
      chi2, dof: its χ² and degrees of freedom (χ²/dof ≫ 1: not a power law within errors).
      interval: (low, high) exponent interval from the document bootstrap (None when fewer
        than 2 resamples could be fitted).
      bootstrap_std: standard deviation of the bootstrap exponents.
      bootstrap_resamples, bootstrap_failed: resamples fitted, and those the rule left
        with fewer than 3 splits.
      splits: the splits fitted.
      excluded: (split, reason) for every split left out.
    """

    exponent: float
    exponent_stderr: float
    amplitude: float
    chi2: float
    dof: int
    interval: tuple[float, float] | None
    bootstrap_std: float | None
    bootstrap_resamples: int
    bootstrap_failed: int
    splits: tuple[int, ...]
    excluded: tuple[tuple[int, str], ...]


def _fit(
    splits: tuple[int, ...],
    values_NxS: np.ndarray,
    bound: DataProcessingBound | None,
    resamples: int,
    confidence: float,
    seed: int,
) -> ExponentFit | None:
    """`FIT_RULE` applied to per-document values; None when fewer than 3 splits remain."""

    def select(means, stderr):
        return (stderr > 0) & (means >= MIN_SNR * stderr) & ~_below(means, stderr, bound)

    means, stderr = _mean_stderr(values_NxS)
    keep = select(means[None], stderr[None])[0]
    excluded = []
    below = _below(means, stderr, bound)
    for ell, m, se, k, low in zip(splits, means, stderr, keep, below, strict=True):
        if k:
            continue
        if se <= 0:
            excluded.append((ell, "zero standard error"))
            continue
        reasons = [f"signal-to-noise {m / se:.2f} < {MIN_SNR:g}"] if m < MIN_SNR * se else []
        excluded.append(
            (ell, "; ".join([*reasons, *(["below the data-processing bound"] if low else [])]))
        )
    if keep.sum() < 3:
        return None
    x = np.asarray(splits, np.float64)
    fit = fit_power_law(x[keep], means[keep], y_stderr=stderr[keep])
    try:
        boot = bootstrap_power_law(
            x,
            values_NxS,
            resamples=resamples,
            confidence=confidence,
            seed=seed,
            weighted=True,
            select=select,
        )
        interval, boot_std, fitted, failed = (
            (boot.low, boot.high),
            boot.std,
            boot.resamples,
            boot.failed,
        )
    except ValueError:  # fewer than 2 resamples kept 3 splits
        interval, boot_std, fitted, failed = None, None, 0, resamples
    return ExponentFit(
        fit.exponent,
        fit.exponent_stderr,
        fit.amplitude,
        float(fit.chi2),
        int(fit.dof),
        interval,
        boot_std,
        fitted,
        failed,
        tuple(int(e) for e in x[keep]),
        tuple(excluded),
    )


class EntropyByContext(NamedTuple):
    """h(t) = E[−log q(W_t | BOS, W_<t)] from the joint pass, and Hilberg's law fitted to it.

    Attributes:
      positions: [T] t = 1 … r·ℓ_max (t = 1 is the first token after BOS).
      mean, stderr: [T] h(t) in nats and its standard error over documents.
      fit_from: the first position fitted (earlier ones are dominated by the document start).
      fit: `fit_hilberg` over t ≥ fit_from (None with fewer than 4 positions); its β is a
        second estimate of the exponent of I_BP (β_stderr treats positions as independent).
      interval, bootstrap_std, bootstrap_resamples, bootstrap_failed: the document bootstrap
        of β (`bootstrap_hilberg`; failed: no interior optimum in a resample).
    """

    positions: np.ndarray
    mean: np.ndarray
    stderr: np.ndarray
    fit_from: int
    fit: HilbergFit | None
    interval: tuple[float, float] | None
    bootstrap_std: float | None
    bootstrap_resamples: int
    bootstrap_failed: int


def _entropy_by_context(
    joint_NxT: np.ndarray, fit_from: int, resamples: int, confidence: float, seed: int
) -> EntropyByContext:
    nll = -joint_NxT.astype(np.float64)
    mean, stderr = _mean_stderr(nll)
    t = np.arange(1, nll.shape[1] + 1)
    fitted = slice(fit_from - 1, None)
    fit, interval, boot_std, boot_n, failed = None, None, None, 0, 0
    if t[fitted].size >= 4 and np.all(stderr[fitted] > 0):
        fit = fit_hilberg(t[fitted], mean[fitted], stderr[fitted])
        try:
            boot = bootstrap_hilberg(
                t[fitted], nll[:, fitted], resamples=resamples, confidence=confidence, seed=seed
            )
            interval, boot_std, boot_n, failed = (
                (boot.low, boot.high),
                boot.std,
                boot.resamples,
                boot.failed,
            )
        except ValueError:
            failed = resamples
    return EntropyByContext(t, mean, stderr, fit_from, fit, interval, boot_std, boot_n, failed)


# ---- scoring documents -------------------------------------------------------------------


class PositionLogprobs(NamedTuple):
    """Every log-probability a scoring run keeps, float32, one row per document.

    Attributes:
      joint: [n_docs, r·ℓ_max], log q(W_t | BOS, W_<t) at every position of the joint pass.
      marginal: per split, [n_docs, (r − 1)·ℓ], log q(Y_t | BOS, Y_<t).
      shuffled: per split, [n_docs, (r − 1)·ℓ], log q(Y_t | X_σ, Y_<t).
    """

    joint: np.ndarray
    marginal: tuple[np.ndarray, ...]
    shuffled: tuple[np.ndarray, ...]


class ScoringRun(NamedTuple):
    """What `score_documents` returns.

    Attributes:
      logprobs: the per-position log-probs.
      tokens_processed: positions run through the model by the whole plan, bucket and batch
        padding included (the same whether or not batches came from the cache).
      batches: document batches; cached_batches: how many were read from `cache_dir`.
    """

    logprobs: PositionLogprobs
    tokens_processed: int
    batches: int
    cached_batches: int


def document_scores(logprobs: PositionLogprobs, splits, ratio: int) -> DocumentScores:
    """The per-document sums (float64) that the estimators use, from per-position log-probs."""
    joint = logprobs.joint.astype(np.float64)
    cols = {k: [] for k in DocumentScores._fields}
    for ell, marginal, shuffled in zip(splits, logprobs.marginal, logprobs.shuffled, strict=True):
        m = marginal.astype(np.float64)
        cols["joint"].append(joint[:, ell : ratio * ell].sum(axis=1))
        cols["marginal"].append(m.sum(axis=1))
        cols["marginal_head"].append(m[:, :2].sum(axis=1))
        cols["shuffled"].append(shuffled.astype(np.float64).sum(axis=1))
    return DocumentScores(**{k: np.stack(v, axis=1) for k, v in cols.items()})


_CACHE_FORMAT = 1
_CACHE_ATOL = 1e-3  # nats: a resumed run re-scores one cached batch and must agree this well


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(repr((part.dtype.str, part.shape)).encode())
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True).encode())
    return h.hexdigest()


class _Cache:
    """Per-batch log-probs under a folder: manifest.json, then batch-NNNNNN.npz files."""

    def __init__(self, folder, manifest: dict):
        self.folder = pathlib.Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"cache_dir {self.folder} is a file; pass a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "manifest.json"
        if path.is_file():
            try:
                stored = json.loads(path.read_text())
            except ValueError:
                raise ValueError(f"{path} is corrupt; delete {self.folder} to start over") from None
            differ = sorted(
                k for k in manifest.keys() | stored.keys() if stored.get(k) != manifest.get(k)
            )
            if differ:
                raise ValueError(
                    f"cache_dir {self.folder} holds a scoring run with different "
                    f"{', '.join(differ)}; use another folder or delete this one"
                )
        else:
            _write_atomic(path, (json.dumps(manifest, indent=2) + "\n").encode())

    def path(self, b: int) -> pathlib.Path:
        return self.folder / f"batch-{b:06d}.npz"

    def load(self, b: int, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray] | None:
        path = self.path(b)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = {k: stored[k] for k in shapes}
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"cached batch {path} is unreadable ({err}); delete it") from None
        for k, shape in shapes.items():
            if arrays[k].shape != shape or arrays[k].dtype != np.float32:
                raise ValueError(f"cached batch {path}: {k} is not float32 {shape}; delete it")
            if not np.all(np.isfinite(arrays[k])):
                raise ValueError(f"cached batch {path}: {k} is not finite; delete it")
        return arrays

    def save(self, b: int, arrays: dict[str, np.ndarray]) -> None:
        tmp = self.path(b).with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, self.path(b))


def _write_atomic(path: pathlib.Path, data: bytes) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def score_documents(
    logprob_fn: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    tokens_NxL: np.ndarray,
    partners_NxP: np.ndarray,
    plan: ScoringPlan,
    *,
    batch_size: int = 16,
    max_len: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    cache_dir: str | os.PathLike | None = None,
    cache_key: Any = None,
    progress: bool = True,
) -> ScoringRun:
    """Runs the plan's passes over documents and keeps every log-prob, batch by batch.

    This is the one step that touches the model: documents in, per-document arrays out (a
    multi-process run gives each process its own rows and gathers the outputs).

    Args:
      logprob_fn, params: as for `bipartite_mi`.
      tokens_NxL: int32 [N, r·ℓ_max], each document's first r·ℓ_max tokens.
      partners_NxP: int32 [N, ℓ_max], the X that precedes each document's Y in the shuffled
        passes (another document's first ℓ_max tokens; its first ℓ serve split ℓ).
      plan: `scoring_plan(splits, ratio)`.
      batch_size: documents per model call (rounded up to a multiple of the device count).
      max_len: the longest sequence the model accepts (caps the padding of shape buckets).
      devices: devices to shard the batch over (default: all local devices).
      cache_dir: keep each finished batch's log-probs in this folder and reuse those found
        there (same documents, partners, plan, batch size, devices and `cache_key`, else a
        ValueError). A resumed run first re-scores the joint pass of one cached batch and
        stops with an error if it differs by more than 1e-3 nats (another model wrote it).
        None: nothing is written.
      cache_key: JSON-serialisable identity of the model stored with the cache (e.g. the
        checkpoint path and BOS id); a cache written under another key is refused.
      progress: show a progress bar.
    """
    splits, ratio = plan.splits, plan.ratio
    need = ratio * splits[-1]
    tokens_NxL = np.asarray(tokens_NxL, np.int32)
    partners_NxP = np.asarray(partners_NxP, np.int32)
    n_docs = tokens_NxL.shape[0]
    if tokens_NxL.ndim != 2 or tokens_NxL.shape[1] != need:
        raise ValueError(f"tokens_NxL must be [N, r·ℓ_max = {need}], got {tokens_NxL.shape}")
    if partners_NxP.shape != (n_docs, splits[-1]):
        raise ValueError(
            f"partners_NxP must be [N = {n_docs}, ℓ_max = {splits[-1]}], got {partners_NxP.shape}"
        )
    batch_size = _check_int("batch_size", batch_size, 1)
    devices = list(jax.local_devices() if devices is None else devices)
    mesh = Mesh(np.array(devices), ("batch",), axis_types=(AxisType.Auto,))
    rows = P("batch")
    batch = -(-min(batch_size, n_docs) // len(devices)) * len(devices)
    score = jax.jit(logprob_fn, out_shardings=NamedSharding(mesh, rows))
    params = jax.device_put(params, NamedSharding(mesh, P()))
    starts = list(range(0, n_docs, batch))

    def width(p: ScoringPass) -> int:
        return p.length if p.kind == "joint" else (ratio - 1) * p.split

    names = ["joint"] + [f"{p.kind}_{p.split}" for p in plan.passes[1:]]
    out = {
        name: np.zeros((n_docs, width(p)), np.float32)
        for name, p in zip(names, plan.passes, strict=True)
    }

    def inputs(p: ScoringPass, docs_B: np.ndarray) -> np.ndarray:
        if p.kind == "joint":
            return tokens_NxL[docs_B, : p.length]
        y = tokens_NxL[docs_B, p.split : ratio * p.split]
        if p.kind == "marginal":
            return y
        return np.concatenate([partners_NxP[docs_B, : p.split], y], axis=1)

    def launch(p: ScoringPass, docs_B: np.ndarray):
        tokens_BxT = inputs(p, docs_B)
        padded = np.zeros((batch, _bucket(p.length, max_len)), np.int32)
        padded[: docs_B.size, : p.length] = tokens_BxT
        padded[docs_B.size :, : p.length] = tokens_BxT[:1]  # filler rows, dropped
        logp = score(params, jax.device_put(padded, NamedSharding(mesh, rows)))
        if logp.shape != padded.shape:
            raise ValueError(
                f"logprob_fn returned shape {logp.shape} for tokens of shape {padded.shape}; "
                "it must return one log-prob per input token, [B, T] (BOS not included)"
            )
        return logp

    def kept(p: ScoringPass, docs_B: np.ndarray, logp_BxT) -> np.ndarray:
        logp = np.asarray(logp_BxT)[: docs_B.size]
        ((start, stop),) = p.scored
        part = logp[:, start:stop].astype(np.float32)
        bad = ~np.isfinite(part)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ValueError(
                f"the model returned a non-finite log-prob ({part[row, col]}) in the {p.kind} "
                f"pass{f' of split {p.split}' if p.split else ''}, document "
                f"{int(docs_B[row])}, position {start + col}; check the model and its inputs"
            )
        return part

    cache = None
    cached = {}
    if cache_dir is not None:
        try:
            key = json.loads(json.dumps(cache_key))
        except TypeError:
            raise TypeError(f"cache_key must be JSON-serialisable, got {cache_key!r}") from None
        manifest = {
            "format": _CACHE_FORMAT,
            "documents": _digest(tokens_NxL),
            "partners": _digest(partners_NxP),
            "plan": [list(splits), ratio],
            "batch": batch,
            "devices": len(devices),
            "max_len": max_len,
            "logprob_fn": f"{getattr(logprob_fn, '__module__', '')}."
            f"{getattr(logprob_fn, '__qualname__', type(logprob_fn).__name__)}",
            "model": key,
        }
        cache = _Cache(cache_dir, manifest)
        for b, start in enumerate(starts):
            size = min(batch, n_docs - start)
            arrays = cache.load(b, {k: (size, v.shape[1]) for k, v in out.items()})
            if arrays is not None:
                cached[b] = arrays
        if cached:  # the model must be the one that wrote the cache
            b = min(cached)
            docs_B = np.arange(starts[b], min(starts[b] + batch, n_docs))
            fresh = kept(plan.passes[0], docs_B, launch(plan.passes[0], docs_B))
            diff = float(np.max(np.abs(fresh - cached[b]["joint"])))
            if not diff <= _CACHE_ATOL:
                raise ValueError(
                    f"cache_dir {cache.folder} was written by another model or setup: "
                    f"re-scoring batch {b} differs by up to {diff:.3g} nats from the cached "
                    "log-probs; use another folder or delete this one"
                )
        for b, arrays in cached.items():
            docs_B = np.arange(starts[b], starts[b] + arrays["joint"].shape[0])
            for k, v in arrays.items():
                out[k][docs_B] = v

    work = [(b, i) for b in range(len(starts)) if b not in cached for i in range(len(names))]
    bar = tqdm.tqdm(
        total=len(starts) * len(names),
        initial=len(cached) * len(names),
        desc="bipartite passes",
        unit="pass",
        disable=not progress,
    )

    def collect(b: int, i: int, docs_B: np.ndarray, logp_BxT) -> None:
        out[names[i]][docs_B] = kept(plan.passes[i], docs_B, logp_BxT)
        bar.update(1)
        if cache is not None and i == len(names) - 1:
            cache.save(b, {k: v[docs_B] for k, v in out.items()})

    pending = None
    for b, i in work:  # dispatch a pass, then collect the previous one while it runs
        docs_B = np.arange(starts[b], min(starts[b] + batch, n_docs))
        logp = launch(plan.passes[i], docs_B)
        if pending is not None:
            collect(*pending)
        pending = (b, i, docs_B, logp)
    if pending is not None:
        collect(*pending)
    bar.close()
    processed = len(starts) * batch * sum(_bucket(p.length, max_len) for p in plan.passes)
    logprobs = PositionLogprobs(
        out["joint"],
        tuple(out[f"marginal_{ell}"] for ell in splits),
        tuple(out[f"shuffled_{ell}"] for ell in splits),
    )
    return ScoringRun(logprobs, processed, len(starts), len(cached))


# ---- the driver ----------------------------------------------------------------------------


class BipartiteResult(NamedTuple):
    """Estimates of I(W_1:ℓ ; W_ℓ+1:rℓ) per split, in nats (arrays are [S]), and their checks.

    Attributes:
      splits, ratio: the split points ℓ and the ratio r.
      direct, direct_stderr: direct estimate with the n-gram correction of Y1 Y2.
      direct_uncorrected, direct_uncorrected_stderr: without it.
      vclub, vclub_stderr: the vCLUB estimate.
      n_docs: documents per split.
      tokens_scored: log-probs entering each split's estimates (all documents).
      total_tokens_scored: log-probs kept (joint positions counted once), all documents.
      tokens_processed: positions run through the model, bucket and batch padding included.
      tokens_official: what the official code runs and scores for the same documents.
      ngram_weight, ngram_entropy, ngram_entropy_stderr: the correction's w and Ĥ_G(2-grams)
        (0 when w = 0).
      ngram_tokens, ngram_distinct, ngram_missing_mass: the 2-gram histogram behind Ĥ_G:
        corpus tokens, distinct 2-grams, Good–Turing missing mass (`NgramEntropy`).
      bound: the data-processing bound (None when not checked).
      direct_below_bound, direct_uncorrected_below_bound, vclub_below_bound: [S] bool, the
        estimate lies below the bound by more than 3 standard errors (kept out of the fits).
      direct_fit, direct_uncorrected_fit, vclub_fit: `FIT_RULE` fits over ℓ (None when
        fewer than 3 splits qualify).
      entropy_by_context: h(t) from the joint pass and its Hilberg fit.
      scores: the per-document log-probability sums behind every figure.
      logprobs: every per-position log-prob the run kept.
      cached_batches: document batches read from `cache_dir` instead of scored.
    """

    splits: np.ndarray
    ratio: int
    direct: np.ndarray
    direct_stderr: np.ndarray
    direct_uncorrected: np.ndarray
    direct_uncorrected_stderr: np.ndarray
    vclub: np.ndarray
    vclub_stderr: np.ndarray
    n_docs: np.ndarray
    tokens_scored: np.ndarray
    total_tokens_scored: int
    tokens_processed: int
    tokens_official: int
    ngram_weight: float
    ngram_entropy: float
    ngram_entropy_stderr: float
    ngram_tokens: int
    ngram_distinct: int
    ngram_missing_mass: float
    bound: DataProcessingBound | None
    direct_below_bound: np.ndarray
    direct_uncorrected_below_bound: np.ndarray
    vclub_below_bound: np.ndarray
    direct_fit: ExponentFit | None
    direct_uncorrected_fit: ExponentFit | None
    vclub_fit: ExponentFit | None
    entropy_by_context: EntropyByContext
    scores: DocumentScores
    logprobs: PositionLogprobs
    cached_batches: int


def _documents(
    docs, need: int, splits: tuple[int, ...], ratio: int, vocab_size, least: int = 2
) -> list:
    if isinstance(docs, (str, bytes)):
        raise TypeError("docs must hold integer token ids, not text; tokenize first")
    if isinstance(docs, (np.ndarray, jax.Array)):
        docs = np.asarray(docs)
        if docs.ndim != 2:
            raise ValueError(f"docs as one array must be [n_docs, T], got shape {docs.shape}")
    docs = list(docs)
    if not docs:
        raise ValueError("docs is empty; pass at least 2 documents of token ids")
    if len(docs) < least:
        raise ValueError(
            "vCLUB pairs each Y with another document's X and standard errors need spread: "
            f"pass at least 2 documents, got {len(docs)}"
        )
    out = []
    for i, doc in enumerate(docs):
        arr = np.asarray(doc)
        if arr.ndim != 1:
            raise ValueError(f"document {i} must be a 1-D array of token ids, got {arr.shape}")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"document {i} must hold integer token ids, got dtype {arr.dtype}")
        out.append(arr)
    shortest = min(a.size for a in out)
    if shortest < need:
        too_long = [ell for ell in splits if ratio * ell > shortest]
        raise ValueError(
            f"splits {too_long} need r·ℓ = {[ratio * ell for ell in too_long]} tokens at "
            f"ratio {ratio}, but the shortest of the {len(out)} documents has {shortest}; "
            "drop those splits or the short documents"
        )
    for i, arr in enumerate(out):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0:
            raise ValueError(f"document {i} holds a negative token id ({lo}); ids are ≥ 0")
        if vocab_size is not None and hi >= vocab_size:
            raise ValueError(
                f"document {i} holds token id {hi}, outside the vocabulary "
                f"(vocab_size={vocab_size})"
            )
    return out


def _bucket(length: int, cap: int | None) -> int:
    """Smallest of {2^k, 3·2^k} ≥ length (at most `cap`)."""
    b = 1 << max(length - 1, 0).bit_length()
    if 3 * b // 4 >= length and b >= 4:
        b = 3 * b // 4
    return b if cap is None else min(b, cap)


def bipartite_mi(
    logprob_fn: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    docs,
    splits,
    ratio: int = 2,
    *,
    batch_size: int = 16,
    ngram_weight: float = 0.8,
    corpus=None,
    check_bound: bool = True,
    hilberg_from: int = 4,
    vocab_size: int | None = None,
    max_len: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    cache_key: Any = None,
    progress: bool = True,
) -> BipartiteResult:
    """Direct (± n-gram correction) and vCLUB estimates of I_BP(ℓ; rℓ) for every split,
    with the checks of the module docstring and the entropy-by-context curve.

    Args:
      logprob_fn: `logprob_fn(params, tokens_BxT int32) -> logp_BxT float32`, entry t =
        log q(tokens[t] | BOS, tokens[:t]); causal (padding at the end changes nothing).
      params: the model's parameters (replicated on every device).
      docs: [n_docs, T] int array or a list of 1-D int arrays (≥ 2 documents, each at least
        r·ℓ_max tokens; only the first r·ℓ_max are scored). In a multi-process run
        (`jax.distributed`) each process passes its own documents (≥ 1) and scores them on
        its own devices; the result, the same on every process, covers all of them (process
        0's documents first), as one process given them all. `corpus` is then each
        process's own share too (its counts are summed across processes).
      splits: increasing split points ℓ ≥ 1 (ℓ ≥ 2 at r = 2 when ngram_weight > 0).
      ratio: r ≥ 2; Y = W_ℓ+1:rℓ.
      batch_size: documents per model call (at most n_docs, rounded up to a multiple of the
        device count; filler rows are dropped).
      ngram_weight: w in [0, 1] of the n-gram correction (0.8, the paper's; 0 disables it).
      corpus: the documents `docs` were drawn from; its 2-gram histogram gives Ĥ_G and its
        two-point MI the data-processing bound. Default: `docs` themselves (in full), which
        is right for samples of a source but far too few 2-grams when `docs` are samples of
        a text corpus — a warning says so when the histogram is undersampled.
      check_bound: compute the data-processing bound and flag splits below it.
      hilberg_from: the first position t of h(t) that Hilberg's law is fitted from.
      vocab_size: if given, token ids are checked to lie in [0, vocab_size).
      max_len: the longest sequence the model accepts (caps the padding of shape buckets).
      devices: devices to shard the batch over (default: all local devices).
      bootstrap: document resamples for the exponent intervals.
      confidence: level of the bootstrap intervals.
      seed: seeds the derangement, the shuffled surrogate and the bootstrap.
      cache_dir, cache_key: keep per-batch log-probs on disk and resume from them
        (`score_documents`); None keeps the function free of side effects.
      progress: show a progress bar.
    """
    plan = scoring_plan(splits, ratio)
    splits, ratio = plan.splits, plan.ratio
    need = ratio * splits[-1]
    bootstrap = _check_int("bootstrap", bootstrap, 2)
    hilberg_from = _check_int("hilberg_from", hilberg_from, 1)
    if not 0.0 <= ngram_weight <= 1.0:
        raise ValueError(
            f"ngram_weight must lie in [0, 1] (the paper's 0.8; 0 turns the n-gram "
            f"correction off), got {ngram_weight}"
        )
    if ngram_weight > 0 and (ratio - 1) * splits[0] < 2:
        raise ValueError(
            f"split {splits[0]} at ratio {ratio} leaves Y a single token, but the n-gram "
            "correction replaces Y's first two; use splits ≥ 2 or ngram_weight=0"
        )
    if max_len is not None and _check_int("max_len", max_len, 1) < need:
        raise ValueError(f"max_len={max_len} is shorter than r·ℓ_max = {need}; drop large splits")
    distributed.initialize()
    n_proc = jax.process_count()
    with distributed.agreed_errors():  # at least 2 documents in all; each process ≥ 1
        doc_list = _documents(docs, need, splits, ratio, vocab_size, 2 if n_proc == 1 else 1)
    # Each process scores its own documents; all of them are process 0's, then 1's, ...
    # (X_σ of the shuffled pass may come from another process's documents).
    parts = distributed.gather_arrays(np.stack([d[:need] for d in doc_list]).astype(np.int32))
    tokens_NxL = np.concatenate(parts)
    n_docs = len(tokens_NxL)
    first = sum(len(p) for p in parts[: jax.process_index()])
    mine = np.arange(first, first + len(doc_list))
    sigma = derangement(n_docs, seed)
    if n_proc > 1 and cache_dir is not None:  # one cache per process
        cache_dir = pathlib.Path(cache_dir) / f"process-{jax.process_index()}-of-{n_proc}"
    corpus_docs = doc_list if corpus is None else _corpus_list(corpus, "corpus")

    if ngram_weight > 0:
        ngram = ngram_entropy(corpus_docs, vocab_size)
        if ngram.missing_mass > UNDERSAMPLED_MISSING_MASS:
            source = "docs (no corpus given)" if corpus is None else "corpus"
            warnings.warn(
                f"the 2-gram histogram of {source} is undersampled: {ngram.missing_mass:.0%} "
                f"of its 2-grams are seen once ({ngram.distinct} distinct in "
                f"{ngram.tokens} tokens), so Ĥ_G = {ngram.value:.3f} nats is biased low and "
                "the n-gram correction with it; pass corpus= the whole corpus",
                UserWarning,
                stacklevel=2,
            )
    else:
        ngram = NgramEntropy(0.0, 0.0, 0, 0, 0.0)
    bound = two_point_bound(corpus_docs, vocab_size, seed=seed) if check_bound else None

    run = score_documents(
        logprob_fn,
        params,
        tokens_NxL[mine],
        tokens_NxL[sigma[mine], : splits[-1]],
        plan,
        batch_size=batch_size,
        max_len=max_len,
        devices=devices,
        cache_dir=cache_dir,
        cache_key=cache_key,
        progress=progress,
    )
    if n_proc > 1:  # every process's rows, on every process
        rows = lambda a: np.concatenate(distributed.gather_arrays(a))
        logprobs = run.logprobs
        run = run._replace(
            logprobs=PositionLogprobs(
                rows(logprobs.joint),
                tuple(rows(a) for a in logprobs.marginal),
                tuple(rows(a) for a in logprobs.shuffled),
            ),
            tokens_processed=int(distributed.sum_arrays(np.array(run.tokens_processed))),
        )
    scores = document_scores(run.logprobs, splits, ratio)
    h = (ngram.value, ngram.stderr)
    est = bipartite_estimates(scores, ngram_entropy=h, ngram_weight=ngram_weight)
    per_doc = _per_document(scores, ngram.value, ngram_weight)
    below = [
        _below(getattr(est, key), getattr(est, f"{key}_stderr"), bound)
        for key in ("direct", "direct_uncorrected", "vclub")
    ]
    per_split = np.array([3 * (ratio - 1) * ell for ell in splits], np.int64) * n_docs
    return BipartiteResult(
        np.asarray(splits, np.int64),
        ratio,
        *est,
        np.full(len(splits), n_docs, np.int64),
        per_split,
        plan.tokens_scored * n_docs,
        run.tokens_processed,
        plan.tokens_official * n_docs,
        float(ngram_weight),
        ngram.value,
        ngram.stderr,
        ngram.tokens,
        ngram.distinct,
        ngram.missing_mass,
        bound,
        *below,
        *(_fit(splits, v, bound, bootstrap, confidence, seed) for v in per_doc),
        _entropy_by_context(run.logprobs.joint, hilberg_from, bootstrap, confidence, seed),
        scores,
        run.logprobs,
        run.cached_batches,
    )
