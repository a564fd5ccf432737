"""Bipartite MI: scoring plan, estimators against exact sources (q = p), devices, bad input."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from l2m_jax.information.bipartite import (
    bipartite_mi,
    derangement,
    scoring_plan,
)
from l2m_jax.information.fits import bootstrap_power_law
from l2m_jax.sources.discrete import hidden_markov, markov_chain

SPLITS = [2, 4, 8, 16, 32, 64, 128]


def test_scoring_plan_scores_only_what_the_estimates_use():
    plan = scoring_plan(2 ** np.arange(1, 11), 2, length=2048)  # ℓ = 2..1024, L = 2048
    joint, *rest = plan.passes
    assert joint.kind == "joint" and joint.length == 2048 and joint.scored == ((2, 2048),)
    for ell, marginal, shuffled in zip(plan.splits, rest[::2], rest[1::2], strict=True):
        assert marginal == ("marginal", ell, ell, ((0, ell),))
        assert shuffled == ("shuffled", ell, 2 * ell, ((ell, 2 * ell),))
    # Joint positions 3..2048 once, then Y (ℓ tokens) twice per split.
    assert plan.tokens_scored == 2046 + 2 * sum(plan.splits)
    assert plan.tokens_full == 3 * sum(2048 - ell for ell in plan.splits)
    assert plan.fraction_scored <= 1 / 5
    # Gaps between splits are not scored; ratio 3 gives Y of 2ℓ tokens.
    plan = scoring_plan([2, 100], 3)
    assert plan.passes[0].scored == ((2, 6), (100, 300))
    assert plan.passes[1].scored == ((0, 4),) and plan.passes[4].scored == ((100, 300),)
    with pytest.raises(ValueError, match=r"splits \[1024\] need r·ℓ up to 4096"):
        scoring_plan(2 ** np.arange(1, 11), 4, length=2048)


def test_derangement():
    for n in (2, 3, 17):
        sigma = derangement(n, seed=n)
        assert sorted(sigma) == list(range(n)) and np.all(sigma != np.arange(n))


def _sources():
    return {"markov": markov_chain(), "hidden": hidden_markov()}


@pytest.mark.parametrize("name", ["markov", "hidden"])
def test_recovers_exact_information_with_true_model(name):
    """q = p: direct within 3 stderr of exact I_BP, vCLUB not below it by more than 3."""
    src = _sources()[name]
    docs = src.sample(jax.random.key(0), 256, 4 * SPLITS[-1])
    for ratio in (2, 4):
        res = bipartite_mi(
            src.logprob_fn,
            src.params,
            docs,
            SPLITS,
            ratio,
            batch_size=128,
            vocab_size=src.vocab_size,
            bootstrap=200,
            progress=False,
        )
        ell = np.array(SPLITS)
        exact = src.bipartite_mi(ell, ratio * ell)
        for key in ("direct", "direct_uncorrected"):
            z = (getattr(res, key) - exact) / getattr(res, key + "_stderr")
            assert np.all(np.abs(z) < 3), (key, ratio, z)
        assert np.all(res.vclub > exact - 3 * res.vclub_stderr), (ratio, res.vclub, exact)
        assert np.all(res.n_docs == 256)
        np.testing.assert_array_equal(res.tokens_scored, 256 * 3 * (ratio - 1) * ell)
        # The fitted growth exponent: ~0 for the Markov chain, > 0 for the hidden one.
        fit = res.direct_fit
        assert fit.interval[0] <= fit.exponent <= fit.interval[1]
        if name == "markov":
            assert abs(fit.exponent) < 3 * fit.exponent_stderr
        else:
            assert fit.exponent > 3 * fit.exponent_stderr


def test_driver_matches_a_plain_reference():
    """Per-document sums equal separate full passes; estimates follow their formulas."""
    src = markov_chain()
    docs = np.asarray(src.sample(jax.random.key(3), 12, 40))
    splits, ratio, w = [2, 3, 5], 3, 0.8
    res = bipartite_mi(
        src.logprob_fn, src.params, list(docs), splits, ratio, batch_size=5, ngram_weight=w,
        bootstrap=50, progress=False,
    )  # fmt: skip
    model = jax.jit(src.logprob_fn)
    lp = lambda toks: np.asarray(model(src.params, toks), np.float64)
    sigma = derangement(len(docs), seed=0)
    for s, ell in enumerate(splits):
        y = docs[:, ell : ratio * ell]
        want = {
            "joint": lp(docs[:, : ratio * ell])[:, ell:].sum(axis=1),
            "marginal": lp(y).sum(axis=1),
            "marginal_head": lp(y)[:, :2].sum(axis=1),
            "shuffled": lp(np.concatenate([docs[sigma, :ell], y], axis=1))[:, ell:].sum(axis=1),
        }
        for key, value in want.items():
            np.testing.assert_allclose(getattr(res.scores, key)[:, s], value, rtol=1e-6)
    # Grassberger entropy of the 2-gram histogram, from an independent count.
    counts = np.array(
        list(
            collections.Counter(
                zip(docs[:, :-1].ravel(), docs[:, 1:].ravel(), strict=True)
            ).values()
        )
    )
    n = counts.sum()
    g = special.digamma(np.floor(counts / 2) + 0.5) + np.log(2)
    assert res.ngram_entropy == pytest.approx(np.log(n) - np.sum(counts * g) / n, rel=1e-12)
    sc = res.scores
    direct = sc.joint - sc.marginal + w * (sc.marginal_head + res.ngram_entropy)
    np.testing.assert_allclose(res.direct, direct.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(
        res.direct_uncorrected, (sc.joint - sc.marginal).mean(axis=0), rtol=1e-12
    )
    vclub = sc.joint - sc.shuffled
    np.testing.assert_allclose(res.vclub, vclub.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(
        res.vclub_stderr, vclub.std(axis=0, ddof=1) / np.sqrt(len(docs)), rtol=1e-12
    )
    assert res.total_tokens_scored == 12 * scoring_plan(splits, ratio).tokens_scored


def test_eight_devices_equal_one():
    src = markov_chain()
    docs = src.sample(jax.random.key(4), 20, 64)
    devices = jax.devices()
    assert len(devices) == 8
    results = [
        bipartite_mi(
            src.logprob_fn,
            src.params,
            docs,
            [2, 4, 8, 16],
            4,
            batch_size=8,
            devices=d,
            bootstrap=100,
            progress=False,
        )
        for d in (devices[:1], devices)
    ]
    one, eight = results
    for key in ("direct", "direct_stderr", "direct_uncorrected", "vclub", "vclub_stderr"):
        np.testing.assert_allclose(getattr(eight, key), getattr(one, key), rtol=1e-12)
    for a, b in zip(one.scores, eight.scores, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-12)
    assert one.direct_fit == eight.direct_fit


def test_bootstrap_interval():
    x = np.array([2.0, 4.0, 8.0, 16.0, 32.0])
    exact = 0.6 * x**0.8
    # Identical units: every resample refits the same means.
    boot = bootstrap_power_law(x, np.tile(exact, (10, 1)), resamples=20)
    assert boot.low == pytest.approx(0.8, abs=1e-12) and boot.high == pytest.approx(0.8, abs=1e-12)
    # Noisy units: the 95% interval covers the true exponent and shrinks with more units.
    rng = np.random.default_rng(0)
    noise = lambda n: exact * np.exp(0.3 * rng.standard_normal((n, x.size)))
    small = bootstrap_power_law(x, noise(50), resamples=400, seed=1)
    large = bootstrap_power_law(x, noise(800), resamples=400, seed=1)
    assert small.low < 0.8 < small.high and large.low < 0.8 < large.high
    assert large.high - large.low < 0.5 * (small.high - small.low)
    assert small.failed == 0 and small.resamples == 400


def _nan_after(position):
    def logprob_fn(params, tokens_BxT):
        logp = jnp.full(tokens_BxT.shape, -1.0)
        return jnp.where(jnp.arange(tokens_BxT.shape[1]) >= position, -jnp.inf, logp)

    return logprob_fn


def test_bad_input():
    src = markov_chain()
    docs = np.asarray(src.sample(jax.random.key(5), 4, 32))
    run = lambda fn=src.logprob_fn, d=docs, splits=(2, 4), **kw: bipartite_mi(
        fn, src.params, d, list(splits), progress=False, bootstrap=10, **kw
    )
    with pytest.raises(ValueError, match="non-finite log-prob"):
        run(_nan_after(5))
    with pytest.raises(ValueError, match=r"splits \[32, 64\] need r·ℓ = \[64, 128\]"):
        run(splits=(4, 32, 64))
    with pytest.raises(ValueError, match="at least 2 documents"):
        run(d=docs[:1])
    with pytest.raises(ValueError, match="docs is empty"):
        run(d=[])
    with pytest.raises(ValueError, match="negative token id"):
        run(d=np.where(docs == docs[0, 0], -1, docs))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        run(vocab_size=int(docs.max()))
    with pytest.raises(ValueError, match="increasing"):
        run(splits=(4, 2))
    with pytest.raises(ValueError, match="ratio"):
        run(ratio=1)
    with pytest.raises(ValueError, match="single token"):
        run(splits=(1, 2))
    with pytest.raises(TypeError, match="integer token ids"):
        run(d=docs.astype(np.float32))
    with pytest.raises(ValueError, match="at least 2 documents"):
        derangement(1)


def test_exponent_fit_drops_leading_non_positive_splits():
    from l2m_jax.information.bipartite import _fit
    from l2m_jax.information.fits import fit_power_law

    rng = np.random.default_rng(0)
    splits = (2, 4, 8, 16, 32)
    truth = np.array([-0.1, 2.0, 3.2, 5.1, 8.2])  # ℓ = 2 has a mean ≤ 0, as corrected often does
    values = truth + 0.05 * rng.standard_normal((64, len(splits)))
    values -= values.mean(0) - truth  # exact means
    fit = _fit(splits, values, resamples=200, confidence=0.95, seed=0)
    assert fit.splits == (4, 8, 16, 32)
    ref = fit_power_law(splits[1:], truth[1:])
    assert fit.exponent == pytest.approx(ref.exponent, rel=1e-12)
    assert fit.interval[0] < fit.exponent < fit.interval[1]
    # Only two splits above the last non-positive one: no fit.
    assert _fit(splits, values * np.array([1, 1, -1, 1, 1]), 200, 0.95, 0) is None
