"""Two-point MI: exact on a Markov chain (well sampled) and on a copy source with V = 4096
(undersampled), the official convention on a hand-made table, and the formulas term by term."""

import collections
import json
import math

import jax
import numpy as np
import pytest
import scipy.special as sp

from l2m_jax.information import (
    count_pairs,
    fit_power_law,
    offset_profile,
    shifted_pair_counts,
    shuffle_documents,
    two_point_estimates,
    two_point_mi,
    two_point_mi_from_counts,
)
from l2m_jax.information.two_point import _resampled_mi
from l2m_jax.sources import copy_source, markov_chain


def _exact_markov_tp(transition, distances):
    """I(W_i; W_i+d) of a stationary chain from π and P^d, written out independently."""
    w, v = np.linalg.eig(transition.T)
    pi = np.real(v[:, np.argmin(np.abs(w - 1))])
    pi /= pi.sum()
    out = []
    for d in distances:
        pd = np.linalg.matrix_power(transition, d)
        joint = pi[:, None] * pd
        out.append(np.sum(joint * np.log(pd / pi[None, :])))
    return np.array(out)


def test_markov_chain_recovers_exact_two_point_mi():
    """≥ 1e6 tokens, V = 32, d = 1..64: within 3 standard errors or 1e-3 nats of exact."""
    src = markov_chain(32, seed=0)
    distances = np.arange(1, 65)
    exact = _exact_markov_tp(src.transition, distances)
    np.testing.assert_allclose(src.two_point_mi(distances), exact, rtol=1e-9, atol=1e-15)
    assert exact[0] > 1 and exact[4] > 1e-2 and exact[9] < 1e-3  # decays like λ^2d
    tokens = np.asarray(src.sample(jax.random.key(0), 1000, 1000))  # 1000 documents
    result = two_point_mi(tokens, distances, src.vocab_size, surrogate=None)
    assert result.fit == "offset" and result.mi_surrogate is None
    assert result.tokens == 10**6 and result.documents == 1000
    np.testing.assert_array_equal(result.pairs, 1000 * (1000 - distances))
    error = np.abs(result.mi - exact)
    assert np.all((error <= 3 * result.stderr) | (error <= 1e-3)), np.max(error / result.stderr)
    assert np.all(result.stderr > 0)
    # The bias-corrected fit uses the positive estimates and reports a decay.
    assert result.alpha is not None and result.alpha > 0 and result.alpha_stderr > 0
    stop = distances[np.argmin(result.mi)]  # "auto": up to the smallest estimate
    assert 10 < stop < 64 and result.fit_distances.max() == stop
    assert 0 < result.offset < result.mi[result.mi > 0].min()
    # Well sampled, the two conventions for the marginals agree: the pairs at d lose d
    # tokens at each end of a document of 1000, so the marginal entropies differ by noise.
    counts = count_pairs(tokens, distances, src.vocab_size)
    pairs = two_point_mi_from_counts(counts, marginals="pairs")
    np.testing.assert_array_equal(two_point_mi_from_counts(counts).mi, result.mi)
    np.testing.assert_array_less(np.abs(pairs.mi - result.mi), 3 * result.stderr)
    # The within-document surrogate is a small correction here (V²/N = 1e-3).
    some = distances[[0, 3, 15, 63]]
    corrected = two_point_mi(tokens, some, src.vocab_size, surrogate="within", shuffles=2)
    error = np.abs(corrected.mi - exact[[0, 3, 15, 63]])
    assert np.all((error <= 3 * corrected.stderr) | (error <= 1e-3)), error


def _reference(docs, d):
    """Î_TP and its delta-method stderr from a Counter, with G in Grassberger's (−1)^n form."""

    def g(n):
        n = np.asarray(n, np.float64)
        return sp.digamma(n) + 0.5 * (-1.0) ** n * (sp.digamma((n + 1) / 2) - sp.digamma(n / 2))

    pairs = collections.Counter()
    for doc in docs:
        seq = doc.tolist()
        pairs.update(zip(seq, seq[d:], strict=False))
    first, second = collections.Counter(), collections.Counter()
    for (a, b), n in pairs.items():
        first[a] += n
        second[b] += n
    total = sum(pairs.values())

    def h(counter):
        n = np.array(list(counter.values()), np.float64)
        return np.log(total) - np.sum(n * g(n)) / total

    mi = h(first) + h(second) - h(pairs)
    terms = [(n, g(n) - g(first[a]) - g(second[b]) + np.log(total)) for (a, b), n in pairs.items()]
    var = sum(n * (t - mi) ** 2 for n, t in terms) / total
    return mi, np.sqrt(var / total)


def test_estimate_and_stderr_match_reference_formulas():
    rng = np.random.default_rng(0)
    docs = [rng.zipf(1.6, n) % 40 for n in rng.integers(5, 400, 20)]
    distances = [1, 3, 30]
    got = two_point_mi(docs, distances, 40, marginals="pairs", surrogate=None)
    for k, d in enumerate(distances):
        mi, stderr = _reference(docs, d)
        np.testing.assert_allclose(got.mi[k], mi, rtol=1e-10)
        np.testing.assert_allclose(got.stderr[k], stderr, rtol=1e-10)
    # Relabelled into a 2^18 + 1 vocabulary (64-bit pair keys): the same estimates.
    big = two_point_mi(
        [doc * 6553 + 7 for doc in docs], distances, 2**18 + 1, marginals="pairs", surrogate=None
    )
    np.testing.assert_allclose(big.mi, got.mi, rtol=1e-12)
    np.testing.assert_allclose(big.stderr, got.stderr, rtol=1e-12)


def test_fit_is_the_offset_power_law_of_the_estimates():
    rng = np.random.default_rng(1)
    docs = [rng.integers(0, 8, 3000) for _ in range(4)]
    docs = [np.repeat(doc, 3)[: doc.size] for doc in docs]  # short-range structure
    counts = count_pairs(docs, [1, 2, 3, 4, 6, 8], 8)
    result = two_point_mi_from_counts(counts, fit_range="all")
    assert result.fit == "offset" and result.surrogate is None
    positive = result.mi > 0
    np.testing.assert_array_equal(result.fit_distances, result.distances[positive])
    assert positive.sum() >= 4
    fit = fit_power_law(result.distances[positive], result.mi[positive], offset=True)
    assert result.alpha == pytest.approx(-fit.exponent)
    assert result.alpha_stderr == pytest.approx(fit.exponent_stderr)
    assert result.amplitude == pytest.approx(fit.amplitude)
    assert result.offset == pytest.approx(fit.offset)
    ranged = two_point_mi_from_counts(counts, fit_range=(1, 6))
    np.testing.assert_array_equal(ranged.fit_distances, [1, 2, 3, 4, 6])
    fit = fit_power_law(ranged.fit_distances, result.mi[:5], offset=True)
    assert ranged.alpha == pytest.approx(-fit.exponent)
    # "auto" stops at the smallest estimate (past it the bias grows as pairs get fewer)
    auto = two_point_mi_from_counts(counts)
    last = result.distances[np.argmin(result.mi)]
    np.testing.assert_array_equal(auto.fit_distances, result.distances[result.distances <= last])
    for bad in [(5, 2), "some", (0, 3)]:
        with pytest.raises(ValueError, match="fit_range"):
            two_point_mi_from_counts(counts, fit_range=bad)
    # fewer than 4 positive estimates: no fit, and no made-up numbers
    short = two_point_mi_from_counts(count_pairs(docs, [1, 2, 3], 8), fit_range="all")
    assert short.alpha is None and short.offset is None and short.fit_distances.size == 0
    # with surrogate counts: a plain power law on the corrected estimates, and the profile
    # of the paper's offset fit of the raw ones
    rng = np.random.default_rng(3)
    shuffled = [count_pairs(shuffle_documents(docs, "within", rng), counts.distances, 8)
                for _ in range(3)]  # fmt: skip
    corrected = two_point_mi_from_counts(counts, shuffled, fit_range="all")
    assert corrected.fit == "power_law" and corrected.shuffles == 3
    sur = np.stack([two_point_estimates(c).mi for c in shuffled])
    np.testing.assert_allclose(corrected.mi_surrogate, sur.mean(0), rtol=1e-12)
    np.testing.assert_allclose(corrected.mi, result.mi_raw - sur.mean(0), rtol=1e-12)
    np.testing.assert_allclose(
        corrected.stderr, np.sqrt(result.stderr**2 + sur.var(0, ddof=1) / 3), rtol=1e-12
    )
    keep = corrected.mi > 0
    fit = fit_power_law(corrected.distances[keep], corrected.mi[keep])
    assert corrected.alpha == pytest.approx(-fit.exponent) and corrected.offset is None
    assert corrected.offset_fit.offset == pytest.approx(result.offset)
    np.testing.assert_allclose(corrected.offset_profile.offsets, result.offset_profile.offsets)


def test_bad_input():
    docs = [np.arange(5), np.arange(7)]
    with pytest.raises(ValueError, match="no pairs at distance 10"):
        two_point_mi(docs, [1, 10])  # 10 ≥ the length of every document
    with pytest.raises(ValueError, match="no pairs at distance 7"):
        two_point_mi(docs, [1, 7], surrogate=None)
    for kwargs, match in [
        ({"marginals": "first"}, "marginals must be one of"),
        ({"surrogate": "sideways"}, "surrogate must be one of"),
        ({"method": "shannon"}, "method must be one of"),
        ({"shuffles": 1}, "shuffles must be ≥ 2"),
        ({"bootstrap": 1}, "bootstrap must be 0"),
        ({"fit_range": (4, 2)}, "fit_range"),
        ({"confidence": 1.5}, "confidence"),
    ]:
        with pytest.raises(ValueError, match=match):
            two_point_mi(docs, [1], **kwargs)
    with pytest.raises(ValueError, match="surrogate must be"):
        shuffle_documents(docs, "sideways")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        two_point_mi(np.array([0, 5, 1]), [1], vocab_size=5)
    with pytest.raises(ValueError, match="empty"):
        two_point_mi([], [1], vocab_size=3)


def test_cli_on_a_token_file_and_a_source(tmp_path, capsys):
    from l2m_jax.cli import main

    chain = np.asarray(markov_chain(20, seed=3).sample(jax.random.key(3), 1, 1250))[0]
    docs = {f"doc{i}": part for i, part in enumerate(np.split(chain, [300, 350]))}
    np.savez(tmp_path / "docs.npz", **docs)
    out = tmp_path / "tp.json"
    argv = ["two-point", "--tokens", str(tmp_path / "docs.npz"), "--distances", "1-6"]
    argv += ["--shuffles", "2"]
    assert main([*argv, "--json", str(out), "--plot", str(tmp_path / "tp.png"), "--quiet"]) == 0
    res = json.loads(out.read_text())
    want = two_point_mi(list(docs.values()), range(1, 7), shuffles=2)
    np.testing.assert_allclose(res["mi"], want.mi, rtol=1e-12)
    np.testing.assert_allclose(res["mi_raw"], want.mi_raw, rtol=1e-12)
    assert (res["marginals"], res["surrogate"], res["method"]) == (
        "unigrams",
        "within",
        "grassberger",
    )
    assert res["fit"]["kind"] == "power_law" and len(res["offset_profile"]["minima"]) >= 1
    assert res["tokens"] == 1250 and res["documents"] == 3
    from l2m_jax.experiments.report import _fmt, _two_point_summary

    summary = "\n".join(_two_point_summary(res))
    assert "marginals from unigrams, bias surrogate: within (2 shuffles)" in summary
    assert f"α = {_fmt(res['fit']['alpha'])}" in summary and "offset fit" in summary
    assert (tmp_path / "tp.png").stat().st_size > 0
    assert main(["two-point", "--source", "markov", "--docs", "20", "--length", "100",
                 "--distances", "1,2", "--surrogate", "none", "--quiet"]) == 0  # fmt: skip
    assert "exact" in capsys.readouterr().out
    # bad input: one clear line, exit status 2
    np.save(tmp_path / "neg.npy", np.array([3, -1, 2]))
    assert main(["two-point", "--tokens", str(tmp_path / "neg.npy"), "--distances", "1"]) == 2
    assert "negative token id" in capsys.readouterr().err
    assert main(["two-point", "--distances", "1"]) == 2
    assert "exactly one of" in capsys.readouterr().err


def _grassberger_reference(counts):
    """Ĥ_G from a list of counts, with G in Grassberger's (−1)^n form (PAPER.md §3)."""
    n = np.asarray([c for c in counts if c > 0], np.float64)
    g = sp.digamma(n) + 0.5 * (-1.0) ** n * (sp.digamma((n + 1) / 2) - sp.digamma(n / 2))
    return np.log(n.sum()) - np.sum(n * g) / n.sum()


def test_official_convention_on_a_hand_made_table():
    """marginals="unigrams" is the official 2·Ĥ_G(all unigrams) − Ĥ_G(pairs)."""
    docs = [np.array([0, 1, 2, 0, 1, 1]), np.array([2, 2, 0]), np.array([1])]
    # all unigrams: 0 ×3, 1 ×4, 2 ×3; pairs at d = 1: (0,1) ×2, (1,2), (2,0), (1,1),
    # (2,2), (2,0) → counts 2, 1, 2, 1, 1; at d = 2: (0,2), (1,0), (2,1), (0,1), (2,0)
    h_uni = _grassberger_reference([3, 4, 3])
    want = [2 * h_uni - _grassberger_reference([2, 1, 2, 1, 1]),
            2 * h_uni - _grassberger_reference([1, 1, 1, 1, 1])]  # fmt: skip
    got = two_point_mi(docs, [1, 2], 3, surrogate=None)
    np.testing.assert_allclose(got.mi, want, rtol=1e-13)
    assert got.marginals == "unigrams" and got.method == "grassberger"
    # the other convention on the same table: marginals of the pairs' first and second tokens
    pairs = two_point_mi(docs, [1], 3, surrogate=None, marginals="pairs")
    first, second = [2, 2, 3], [2, 3, 2]  # tokens 0, 1, 2 as first / second of a pair
    want_pairs = (_grassberger_reference(first) + _grassberger_reference(second)
                  - _grassberger_reference([2, 1, 2, 1, 1]))  # fmt: skip
    np.testing.assert_allclose(pairs.mi, [want_pairs], rtol=1e-13)


def test_undersampled_copy_source_is_corrected_by_the_surrogate():
    """V = 4096 Zipf(1.1) tokens, N = 160 000 (V²/N = 105): exact I_TP(d) from `CopySource`.

    The raw Grassberger estimate is off by ≥ 0.59 nats at every distance; subtracting any
    surrogate leaves at most a quarter of that wherever the exact value exceeds 3 standard
    errors (d = 1..128). Measured remaining error: ≤ 0.085 nats (within), ≤ 0.089 (global),
    ≤ 0.106 (shift, at d = 1), against raw errors 0.59–0.71. The shuffles' remainder is
    positive and grows with d: the raw pairs repeat in bursts (copies), which lowers the
    raw pair entropy beyond what a shuffle reproduces; the shift surrogate keeps the bursts
    and is left with an under-correction where I_TP is large (−0.106 at d = 1).
    """
    src = copy_source(4096, zipf=1.1, copy=0.7, max_lag=256, lag_exponent=1.0)
    tokens = np.asarray(src.sample(jax.random.key(0), 16, 10_000))
    distances = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256, 512])
    exact = src.two_point_mi(distances)
    assert src.vocab_size**2 / tokens.size >= 100
    results = {}
    for surrogate in ("within", "global", "shift"):
        shuffles = 4 if surrogate == "within" else 2  # the default, and two for the others
        result = results[surrogate] = two_point_mi(
            tokens, distances, src.vocab_size, surrogate=surrogate, shuffles=shuffles
        )
        shown = exact > 3 * result.stderr
        assert shown.sum() >= 6, distances[shown]
        raw_error = np.abs(result.mi_raw - exact)[shown]
        error = np.abs(result.mi - exact)[shown]
        assert raw_error.min() > 0.5, raw_error  # the case is one where the bias dominates
        np.testing.assert_array_less(error, 0.25 * raw_error)
    # Far from d = 1 the shift surrogate, which keeps the bursts, is exact within 3 stderr
    # (measured ≤ 0.0074 nats at d ≥ 64), where the shuffle leaves ≥ 0.076 (≈ 19 stderr).
    far = distances >= 64
    shift, within = results["shift"], results["within"]
    np.testing.assert_array_less(np.abs(shift.mi - exact)[far], 3 * shift.stderr[far])
    np.testing.assert_array_less(6 * within.stderr[far], (within.mi - exact)[far])


def test_copy_source_is_exact():
    """r(d) solves its recursion; sampled tokens repeat at distance d as often as it says."""
    one_lag = copy_source(30, copy=0.6, max_lag=1)
    np.testing.assert_allclose(one_lag.same_token_by_descent([1, 2, 7]), 0.6 ** np.array([1, 2, 7]))
    src = copy_source(30, zipf=1.0, copy=0.5, max_lag=8, lag_exponent=1.0)
    r = src.same_token_by_descent(np.arange(1, 40))
    q = src.lags
    full = np.concatenate([[1.0], r])
    for d in range(1, 40):  # r(d) = copy · Σ_k q_k r(|d − k|), checked at every d
        want = 0.5 * sum(q[k - 1] * full[abs(d - k)] for k in range(1, 9))
        np.testing.assert_allclose(full[d], want, rtol=1e-12)
    tokens = np.asarray(src.sample(jax.random.key(1), 20, 20_000))
    collide = src.unigram @ src.unigram
    for d in (1, 3, 8, 9, 20):
        same = np.mean(tokens[:, d:] == tokens[:, :-d])
        want = r[d - 1] + (1 - r[d - 1]) * collide
        # the pairs are dependent (bursts): 4 standard errors of 20 × (20 000 − d) pairs
        # with the variance inflated tenfold
        assert abs(same - want) < 4 * math.sqrt(10 * want * (1 - want) / tokens[:, d:].size)


def test_offset_profile_shows_both_minima():
    """SWORD's raw estimates (GPT-2 tokens, d = 1..512, pair marginals): two minima.

    Near C = 0 a shallow power law (α ≈ 0.21, where the official optimiser lands) and at
    C → min Î a steep one (α ≈ 1.17, the global minimum, which `fit_power_law` returns).
    """
    d = 2.0 ** np.arange(10)
    y = np.array([2.29998, 1.33866, 0.77968, 0.60356, 0.53796, 0.51032, 0.49527, 0.48639,
                  0.4832, 0.48157])  # fmt: skip
    profile = offset_profile(d, y)
    offsets = [m.offset for m in profile.minima]
    assert len(offsets) == 2 and offsets[0] == 0.0 and 0.99 * y.min() < offsets[1] < y.min()
    shallow, steep = profile.minima
    assert shallow.exponent == pytest.approx(-0.212, abs=1e-3)
    assert steep.exponent == pytest.approx(-1.166, abs=1e-3)
    returned = fit_power_law(d, y, offset=True)
    assert profile.chosen == 1 and steep.residual_std < shallow.residual_std
    assert steep.offset == pytest.approx(returned.offset, rel=1e-4)
    assert steep.exponent == pytest.approx(returned.exponent, rel=1e-3)
    for m in profile.minima:  # each is a minimum of the residual over the grid
        assert m.residual_std <= np.interp(m.offset, profile.offsets, profile.residual_std) + 1e-12
    # an exact offset power law: the profile's best minimum is at the true C
    exact = offset_profile(d[:8], 0.1 + 2.0 * d[:8] ** -0.7)
    best = min(exact.minima, key=lambda m: m.residual_std)
    assert best.offset == pytest.approx(0.1, rel=1e-6) and best.exponent == pytest.approx(-0.7)


def test_document_bootstrap():
    """Block-tagged tables with unit weights reproduce the estimates; the interval holds α."""
    src = markov_chain(16, seed=2)
    tokens = np.asarray(src.sample(jax.random.key(2), 40, 500))
    docs, distances = list(tokens), [1, 2, 3, 4, 6]
    blocks = 8
    block_of = (np.arange(40) * blocks) // 40
    tagged = [d.astype(np.int64) + b * 16 for d, b in zip(docs, block_of, strict=True)]
    counts = count_pairs(tagged, distances, blocks * 16)
    for marginals in ("unigrams", "pairs"):
        want = two_point_estimates(count_pairs(docs, distances, 16), marginals=marginals).mi
        got = _resampled_mi(counts, np.ones((1, blocks)), 16, marginals, "grassberger")
        np.testing.assert_allclose(got[0], want, rtol=1e-12)
    result = two_point_mi(docs, distances, 16, bootstrap=30, blocks=blocks, fit_range="all")
    boot = result.bootstrap
    assert boot.resamples + boot.failed == 30 and boot.resamples >= 24
    assert boot.low < result.alpha < boot.high and boot.std > 0


def test_shift_surrogate_pairs_each_token_with_a_far_one():
    """At distance d, token i of a document of n tokens pairs with token (i + e) mod n."""
    rng = np.random.default_rng(5)
    docs = [rng.integers(0, 9, n) for n in (40, 7, 3, 100)]
    got = shifted_pair_counts(docs, [5, 1], 9, seed=11)
    draw = np.random.default_rng(11)
    shifts = [n // 4 + int(draw.integers(0, max(n // 2, 1))) for n in (40, 7, 3, 100)]
    assert got.distances == (1, 5) and got.tokens == 150 and got.documents == 4
    for table, d in zip(got.tables, got.distances, strict=True):
        want = collections.Counter()
        for doc, e in zip(docs, shifts, strict=True):
            assert doc.size // 4 <= e < max(3 * doc.size // 4, doc.size // 4 + 1)
            for i in range(doc.size - d):
                want[int(doc[i]) * 9 + int(doc[(i + e) % doc.size])] += 1
        assert dict(zip(table.keys.tolist(), table.counts.tolist(), strict=True)) == want
    np.testing.assert_array_equal(got.unigrams, np.bincount(np.concatenate(docs), minlength=9))


def test_estimates_while_counting_equal_counting_then_estimating():
    """One host chunk: each distance is estimated in the pool while the others are counted;
    the result is that of `count_pairs` then `two_point_estimates`, bit for bit, and so is a
    corpus counted in several chunks (which estimates after merging)."""
    rng = np.random.default_rng(11)
    docs = [rng.zipf(1.3, n).clip(max=3999) for n in (90_000, 60_000, 50_000, 120, 1)]
    distances = (1, 2, 5, 17, 300)
    for chunk_tokens in (1 << 24, 1 << 15):
        counts = count_pairs(docs, distances, 4000, chunk_tokens=chunk_tokens, progress=False)
        for marginals in ("unigrams", "pairs"):
            want = two_point_estimates(counts, marginals=marginals)
            got = two_point_mi(
                docs,
                distances,
                4000,
                marginals=marginals,
                surrogate=None,
                chunk_tokens=chunk_tokens,
                progress=False,
            )
            np.testing.assert_array_equal(got.mi_raw, want.mi)
            np.testing.assert_array_equal(got.stderr, want.stderr)
            np.testing.assert_array_equal(got.pairs, want.pairs)
