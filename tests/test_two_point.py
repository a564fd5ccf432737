"""Two-point MI: exact on a Markov chain, and the estimator's formulas checked term by term."""

import collections

import jax
import numpy as np
import pytest
import scipy.special as sp

from l2m_jax.information import count_pairs, fit_power_law, two_point_mi, two_point_mi_from_counts
from l2m_jax.sources import markov_chain


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
    result = two_point_mi(tokens, distances, src.vocab_size)
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
    got = two_point_mi(docs, distances, 40)
    for k, d in enumerate(distances):
        mi, stderr = _reference(docs, d)
        np.testing.assert_allclose(got.mi[k], mi, rtol=1e-10)
        np.testing.assert_allclose(got.stderr[k], stderr, rtol=1e-10)
    # Relabelled into a 2^18 + 1 vocabulary (64-bit pair keys): the same estimates.
    big = two_point_mi([doc * 6553 + 7 for doc in docs], distances, 2**18 + 1)
    np.testing.assert_allclose(big.mi, got.mi, rtol=1e-12)
    np.testing.assert_allclose(big.stderr, got.stderr, rtol=1e-12)


def test_fit_is_the_offset_power_law_of_the_estimates():
    rng = np.random.default_rng(1)
    docs = [rng.integers(0, 8, 3000) for _ in range(4)]
    docs = [np.repeat(doc, 3)[: doc.size] for doc in docs]  # short-range structure
    counts = count_pairs(docs, [1, 2, 3, 4, 6, 8], 8)
    result = two_point_mi_from_counts(counts, fit_range="all")
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


def test_bad_input():
    with pytest.raises(ValueError, match="no pairs at distance 10"):
        two_point_mi([np.arange(5), np.arange(7)], [1, 10])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        two_point_mi(np.array([0, 5, 1]), [1], vocab_size=5)
    with pytest.raises(ValueError, match="empty"):
        two_point_mi([], [1], vocab_size=3)


def test_cli_on_a_token_file_and_a_source(tmp_path, capsys):
    import json

    from l2m_jax.cli import main

    rng = np.random.default_rng(2)
    docs = {f"doc{i}": rng.integers(0, 20, n) for i, n in enumerate([300, 50, 900])}
    np.savez(tmp_path / "docs.npz", **docs)
    out = tmp_path / "tp.json"
    argv = ["two-point", "--tokens", str(tmp_path / "docs.npz"), "--distances", "1-6"]
    assert main([*argv, "--json", str(out), "--plot", str(tmp_path / "tp.png"), "--quiet"]) == 0
    res = json.loads(out.read_text())
    want = two_point_mi(list(docs.values()), range(1, 7))
    np.testing.assert_allclose(res["mi"], want.mi, rtol=1e-12)
    assert res["tokens"] == 1250 and res["documents"] == 3
    assert (tmp_path / "tp.png").stat().st_size > 0
    assert main(["two-point", "--source", "markov", "--docs", "20", "--length", "100",
                 "--distances", "1,2", "--quiet"]) == 0  # fmt: skip
    assert "exact" in capsys.readouterr().out
    # bad input: one clear line, exit status 2
    np.save(tmp_path / "neg.npy", np.array([3, -1, 2]))
    assert main(["two-point", "--tokens", str(tmp_path / "neg.npy"), "--distances", "1"]) == 2
    assert "negative token id" in capsys.readouterr().err
    assert main(["two-point", "--distances", "1"]) == 2
    assert "exactly one of" in capsys.readouterr().err
