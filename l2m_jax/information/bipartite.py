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

The scoring plan runs only the passes and scores only the positions these terms use:
  joint      one pass over the document's first r·ℓ_max tokens serves every split's
             log q(Y | X); it is scored at the union of positions ℓ+1 … rℓ.
  marginal   per split, Y alone after BOS: (r − 1)·ℓ tokens, all scored.
  shuffled   per split, X_σ (ℓ tokens of another document) followed by Y: scored on Y only.
The official code instead scores every position after the split through the end of the
sequence (L) in a joint, a marginal and a shuffled pass for each split: 3·Σ_ℓ (L − ℓ).

`bipartite_mi` drives a model's log-probability function (`logprob_fn(params, tokens_BxT)
-> logp_BxT`, entry t = log q(tokens[t] | BOS, tokens[:t]); the model adds its BOS and must be
causal) over the documents: batches of a fixed size padded to a multiple of the device count,
the batch axis sharded over a 1-D mesh of the local devices, pass lengths padded at the end
to shape buckets {2^k, 3·2^k} (one compilation per bucket), a progress bar, and the count
of tokens scored.
"""

from __future__ import annotations

import math
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
from l2m_jax.information.fits import bootstrap_power_law, fit_power_law

__all__ = [
    "BipartiteEstimates",
    "BipartiteResult",
    "DocumentScores",
    "ExponentFit",
    "ScoringPass",
    "ScoringPlan",
    "bipartite_estimates",
    "bipartite_mi",
    "derangement",
    "scoring_plan",
]

PASS_KINDS = ("joint", "marginal", "shuffled")


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
      length: L for the full-scoring baseline (r·ℓ_max unless given).
      passes: the joint pass first, then a marginal and a shuffled pass per split.
    """

    splits: tuple[int, ...]
    ratio: int
    length: int
    passes: tuple[ScoringPass, ...]

    @property
    def tokens_scored(self) -> int:
        """Positions scored per document (shared joint positions counted once)."""
        return sum(p.tokens_scored for p in self.passes)

    @property
    def tokens_processed(self) -> int:
        """Positions run through the model per document (sum of pass lengths)."""
        return sum(p.length for p in self.passes)

    @property
    def tokens_full(self) -> int:
        """The official way: joint, marginal and shuffled passes per split, each scored at
        every position after the split through L — 3·Σ_ℓ (L − ℓ) per document."""
        return 3 * sum(self.length - ell for ell in self.splits)

    @property
    def fraction_scored(self) -> float:
        """tokens_scored / tokens_full."""
        return self.tokens_scored / self.tokens_full


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

    `length` (default r·ℓ_max) only sets the document length of the full-scoring baseline
    that `tokens_full` and `fraction_scored` compare with.
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
    ranges: list[list[int]] = []
    for ell in splits:  # union of [ℓ, rℓ), merged (splits ascend, so starts ascend)
        if ranges and ell <= ranges[-1][1]:
            ranges[-1][1] = max(ranges[-1][1], ratio * ell)
        else:
            ranges.append([ell, ratio * ell])
    passes = [ScoringPass("joint", 0, need, tuple((a, b) for a, b in ranges))]
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


# ---- the driver ----------------------------------------------------------------------------


class ExponentFit(NamedTuple):
    """Power law I ≈ amplitude · ℓ^exponent fitted to the per-split means (log-log OLS).

    Attributes:
      exponent, exponent_stderr, amplitude: the OLS fit (`fit_power_law`).
      interval: (low, high) exponent interval from a document-level bootstrap.
      bootstrap_std: standard deviation of the bootstrap exponents.
      splits: the splits fitted: all of them, or — when the smallest splits have means ≤ 0
        (the n-gram-corrected estimate at ℓ = 2 is often ≈ 0 with a small model) — the
        splits above the last non-positive one.
    """

    exponent: float
    exponent_stderr: float
    amplitude: float
    interval: tuple[float, float]
    bootstrap_std: float
    splits: tuple[int, ...] = ()


class BipartiteResult(NamedTuple):
    """Estimates of I(W_1:ℓ ; W_ℓ+1:rℓ) per split, in nats (arrays are [S]).

    Attributes:
      splits, ratio: the split points ℓ and the ratio r.
      direct, direct_stderr: direct estimate with the n-gram correction of Y1 Y2.
      direct_uncorrected, direct_uncorrected_stderr: without it.
      vclub, vclub_stderr: the vCLUB estimate.
      n_docs: documents per split.
      tokens_scored: log-probs entering each split's estimates (all documents).
      total_tokens_scored: distinct positions scored (the joint pass counted once).
      tokens_processed: positions run through the model, bucket and batch padding included.
      tokens_full: what scoring every remaining position of every pass would take.
      ngram_weight, ngram_entropy, ngram_entropy_stderr: the correction's w and Ĥ_G(2-grams).
      direct_fit, direct_uncorrected_fit, vclub_fit: power-law fits over ℓ (None when there
        are fewer than 3 splits or a mean is ≤ 0, where log-log fits do not apply).
      scores: the per-document log-probability sums behind every figure.
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
    tokens_full: int
    ngram_weight: float
    ngram_entropy: float
    ngram_entropy_stderr: float
    direct_fit: ExponentFit | None
    direct_uncorrected_fit: ExponentFit | None
    vclub_fit: ExponentFit | None
    scores: DocumentScores


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


def _fit(
    splits: tuple[int, ...],
    values_NxS: np.ndarray,
    resamples: int,
    confidence: float,
    seed: int,
) -> ExponentFit | None:
    means = values_NxS.mean(axis=0)
    bad = np.flatnonzero(means <= 0)
    first = int(bad[-1]) + 1 if bad.size else 0  # a log-log fit needs positive means
    splits, values_NxS = tuple(splits[first:]), values_NxS[:, first:]
    if len(splits) < 3:
        return None
    fit = fit_power_law(np.asarray(splits, np.float64), means[first:])
    boot = bootstrap_power_law(
        splits, values_NxS, resamples=resamples, confidence=confidence, seed=seed
    )
    return ExponentFit(
        fit.exponent, fit.exponent_stderr, fit.amplitude, (boot.low, boot.high), boot.std, splits
    )


def bipartite_mi(
    logprob_fn: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    docs,
    splits,
    ratio: int = 2,
    *,
    batch_size: int = 16,
    ngram_weight: float = 0.8,
    ngram_docs=None,
    vocab_size: int | None = None,
    max_len: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    progress: bool = True,
) -> BipartiteResult:
    """Direct (± n-gram correction) and vCLUB estimates of I_BP(ℓ; rℓ) for every split.

    Args:
      logprob_fn: `logprob_fn(params, tokens_BxT int32) -> logp_BxT float32`, entry t =
        log q(tokens[t] | BOS, tokens[:t]); causal (padding at the end changes nothing).
      params: the model's parameters (replicated on every device).
      docs: [n_docs, T] int array or a list of 1-D int arrays (≥ 2 documents, each at least
        r·ℓ_max tokens; only the first r·ℓ_max are scored, all feed the 2-gram histogram).
        In a multi-process run (`jax.distributed`) each process passes its own documents
        (≥ 1) and scores them on its own devices; the result, the same on every process,
        covers all of them (process 0's documents first), as one process given them all.
      splits: increasing split points ℓ ≥ 1 (ℓ ≥ 2 at r = 2 when ngram_weight > 0).
      ratio: r ≥ 2; Y = W_ℓ+1:rℓ.
      batch_size: documents per model call (at most n_docs, rounded up to a multiple of the
        device count; filler rows are dropped).
      ngram_weight: w of the n-gram correction (0.8, the paper's; 0 disables it).
      ngram_docs: documents whose 2-gram histogram gives Ĥ_G (default: `docs`); pass the
        whole corpus when `docs` are samples of it (per process: the counts are summed).
      vocab_size: if given, token ids are checked to lie in [0, vocab_size).
      max_len: the longest sequence the model accepts (caps the padding of shape buckets).
      devices: devices to shard the batch over (default: all local devices).
      bootstrap: document resamples for the exponent intervals.
      confidence: level of the bootstrap intervals.
      seed: seeds the derangement and the bootstrap.
      progress: show a progress bar.
    """
    plan = scoring_plan(splits, ratio)
    splits, ratio = plan.splits, plan.ratio
    need = ratio * splits[-1]
    batch_size = _check_int("batch_size", batch_size, 1)
    bootstrap = _check_int("bootstrap", bootstrap, 2)
    if not 0.0 <= ngram_weight <= 1.0:
        raise ValueError(f"ngram_weight must lie in [0, 1], got {ngram_weight}")
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

    if ngram_weight > 0:
        corpus = doc_list if ngram_docs is None else ngram_docs
        bigrams = count_ngrams(corpus, 2, vocab_size, progress=False)
        h = entropy(bigrams.counts, "grassberger")
        ngram = (float(h.value), float(h.stderr))
    else:
        ngram = (0.0, 0.0)

    devices = list(jax.local_devices() if devices is None else devices)
    mesh = Mesh(np.array(devices), ("batch",), axis_types=(AxisType.Auto,))
    rows = P("batch")
    batch = -(-min(batch_size, len(mine)) // len(devices)) * len(devices)
    score = jax.jit(logprob_fn, out_shardings=NamedSharding(mesh, rows))
    params = jax.device_put(params, NamedSharding(mesh, P()))

    sums = {k: np.zeros((n_docs, len(splits))) for k in DocumentScores._fields}
    column = {ell: s for s, ell in enumerate(splits)}
    starts = range(0, len(mine), batch)
    processed = 0

    def inputs(p: ScoringPass, docs_B: np.ndarray) -> np.ndarray:
        if p.kind == "joint":
            return tokens_NxL[docs_B, : p.length]
        y = tokens_NxL[docs_B, p.split : ratio * p.split]
        if p.kind == "marginal":
            return y
        return np.concatenate([tokens_NxL[sigma[docs_B], : p.split], y], axis=1)

    def collect(p: ScoringPass, docs_B: np.ndarray, logp_BxT: np.ndarray) -> None:
        logp = np.asarray(logp_BxT)[: docs_B.size].astype(np.float64)
        for start, stop in p.scored:
            bad = ~np.isfinite(logp[:, start:stop])
            if bad.any():
                row, col = np.argwhere(bad)[0]
                raise ValueError(
                    f"the model returned a non-finite log-prob ({logp[row, start + col]}) in "
                    f"the {p.kind} pass{f' of split {p.split}' if p.split else ''}, document "
                    f"{int(docs_B[row])}, position {start + col}; check the model and its inputs"
                )
        if p.kind == "joint":
            for ell, s in column.items():
                sums["joint"][docs_B, s] = logp[:, ell : ratio * ell].sum(axis=1)
        elif p.kind == "marginal":
            s = column[p.split]
            sums["marginal"][docs_B, s] = logp[:, : p.length].sum(axis=1)
            sums["marginal_head"][docs_B, s] = logp[:, :2].sum(axis=1)
        else:
            sums["shuffled"][docs_B, column[p.split]] = logp[:, p.split : p.length].sum(axis=1)

    work = [(p, b) for p in plan.passes for b in starts]
    pending = None
    bar = tqdm.tqdm(total=len(work), desc="bipartite passes", unit="batch", disable=not progress)
    for p, b in work:
        docs_B = mine[b : b + batch]
        tokens_BxT = inputs(p, docs_B)
        width = _bucket(p.length, max_len)
        padded = np.zeros((batch, width), np.int32)
        padded[: docs_B.size, : p.length] = tokens_BxT
        padded[docs_B.size :, : p.length] = tokens_BxT[:1]  # filler rows, dropped
        processed += batch * width
        out = score(params, jax.device_put(padded, NamedSharding(mesh, rows)))
        if out.shape != padded.shape:
            raise ValueError(
                f"logprob_fn returned shape {out.shape} for tokens of shape {padded.shape}; "
                "it must return one log-prob per input token, [B, T] (BOS not included)"
            )
        if pending is not None:  # collect the previous batch while this one runs
            collect(*pending)
            bar.update(1)
        pending = (p, docs_B, out)
    collect(*pending)
    bar.update(1)
    bar.close()

    if n_proc > 1:  # every process's rows, on every process
        sums = {k: np.concatenate(distributed.gather_arrays(v[mine])) for k, v in sums.items()}
        processed = int(distributed.sum_arrays(np.array(processed, np.int64)))
    scores = DocumentScores(**sums)
    est = bipartite_estimates(scores, ngram_entropy=ngram, ngram_weight=ngram_weight)
    corrected, uncorrected, vclub = _per_document(scores, ngram[0], ngram_weight)
    per_split = np.array([3 * (ratio - 1) * ell for ell in splits], np.int64) * n_docs
    return BipartiteResult(
        np.asarray(splits, np.int64),
        ratio,
        *est,
        np.full(len(splits), n_docs, np.int64),
        per_split,
        plan.tokens_scored * n_docs,
        processed,
        plan.tokens_full * n_docs,
        float(ngram_weight),
        *ngram,
        *(_fit(splits, v, bootstrap, confidence, seed) for v in (corrected, uncorrected, vclub)),
        scores,
    )
