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
    # The joint pass keeps every position: Y of each split and the curve h(t).
    assert joint.kind == "joint" and joint.length == 2048 and joint.scored == ((0, 2048),)
    for ell, marginal, shuffled in zip(plan.splits, rest[::2], rest[1::2], strict=True):
        assert marginal == ("marginal", ell, ell, ((0, ell),))
        assert shuffled == ("shuffled", ell, 2 * ell, ((ell, 2 * ell),))
    # Joint positions 1..2048 once, then Y (ℓ tokens) twice per split.
    assert plan.tokens_scored == 2048 + 2 * sum(plan.splits) == 6140
    assert plan.tokens_processed == 2048 + 3 * sum(plan.splits) == 8186
    # The official code: one shared pass of L, per split a marginal pass over W_ℓ+1:L and a
    # shuffled pass of L tokens, all scored.
    assert plan.tokens_official == 2048 + sum(2048 - ell for ell in plan.splits) + 10 * 2048
    assert plan.tokens_official == 40962
    assert plan.fraction_scored == pytest.approx(6140 / 40962, rel=1e-15)
    assert plan.fraction_processed == pytest.approx(8186 / 40962, rel=1e-15)
    # Gaps between splits are not scored by the marginal and shuffled passes; ratio 3 gives
    # Y of 2ℓ tokens.
    plan = scoring_plan([2, 100], 3)
    assert plan.passes[0].scored == ((0, 300),)
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
        if name == "markov":  # h(1) = H(π), h(t ≥ 2) = the entropy rate
            ebc = res.entropy_by_context
            np.testing.assert_array_equal(ebc.positions, np.arange(1, ratio * SPLITS[-1] + 1))
            nll = -res.logprobs.joint.astype(np.float64)
            np.testing.assert_allclose(ebc.mean, nll.mean(0), rtol=1e-12)
            h_pi = float(-np.sum(special.xlogy(src.stationary, src.stationary)))
            assert abs(ebc.mean[0] - h_pi) < 4 * ebc.stderr[0]
            z = (ebc.mean[1:] - src.entropy_rate()) / ebc.stderr[1:]
            assert np.all(np.abs(z) < 4.5), np.abs(z).max()  # 255 or 511 positions
            assert ebc.fit_from == 4 and ebc.bootstrap_resamples + ebc.bootstrap_failed == 200
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
    with pytest.warns(UserWarning, match="undersampled: 27% of its 2-grams are seen once"):
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
        # The per-position log-probs the run keeps, not only their sums.
        np.testing.assert_allclose(res.logprobs.marginal[s], lp(y), rtol=1e-6)
        shuffled = lp(np.concatenate([docs[sigma, :ell], y], axis=1))[:, ell:]
        np.testing.assert_allclose(res.logprobs.shuffled[s], shuffled, rtol=1e-6)
    np.testing.assert_allclose(res.logprobs.joint, lp(docs[:, : ratio * splits[-1]]), rtol=1e-6)
    assert res.logprobs.joint.dtype == np.float32
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


@pytest.mark.filterwarnings("ignore:the 2-gram histogram")
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


@pytest.mark.filterwarnings("ignore:the 2-gram histogram")
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
    with pytest.raises(ValueError, match="ratio must be an integer ≥ 2, got 1"):
        run(ratio=1)
    with pytest.raises(ValueError, match=r"ngram_weight must lie in \[0, 1\]"):
        run(ngram_weight=-0.2)
    with pytest.raises(ValueError, match="corpus has no 2-grams"):
        run(corpus=[np.array([1]), np.array([2])])
    with pytest.raises(ValueError, match="corpus is empty"):
        run(corpus=[])
    with pytest.raises(ValueError, match="hilberg_from must be an integer ≥ 1"):
        run(hilberg_from=0)
    with pytest.raises(TypeError, match="cache_key must be JSON"):
        run(cache_dir="unused", cache_key=object())
    with pytest.raises(ValueError, match="single token"):
        run(splits=(1, 2))
    with pytest.raises(TypeError, match="integer token ids"):
        run(d=docs.astype(np.float32))
    with pytest.raises(ValueError, match="at least 2 documents"):
        derangement(1)


def test_exponent_fit_states_the_splits_it_uses():
    """The fit rule: splits with signal-to-noise ≥ 3 not below the bound; the rest listed."""
    from l2m_jax.information.bipartite import DataProcessingBound, _fit
    from l2m_jax.information.fits import fit_power_law

    rng = np.random.default_rng(0)
    splits = (2, 4, 8, 16, 32, 64)
    truth = np.array([-0.1, 2.0, 3.2, 5.1, 8.2, 13.0])  # ℓ = 2 ≤ 0, as corrected can be
    values = truth + 0.5 * rng.standard_normal((64, len(splits)))
    values -= values.mean(0) - truth  # exact means
    stderr = values.std(0, ddof=1) / 8
    fit = _fit(splits, values, None, resamples=200, confidence=0.95, seed=0)
    assert fit.splits == (4, 8, 16, 32, 64)
    snr = -0.1 / stderr[0]
    assert fit.excluded == ((2, f"signal-to-noise {snr:.2f} < 3"),)
    ref = fit_power_law(splits[1:], truth[1:], y_stderr=stderr[1:])
    assert fit.exponent == pytest.approx(ref.exponent, rel=1e-12)
    assert fit.exponent_stderr == pytest.approx(ref.exponent_stderr, rel=1e-12)
    assert fit.interval[0] < fit.exponent < fit.interval[1]
    assert fit.bootstrap_resamples + fit.bootstrap_failed == 200
    # A bound at 2.5 ± 0: ℓ = 4 (2.0 ± 0.06) lies 8 stderrs below it and is left out too.
    bound = DataProcessingBound(2.5, 0.0, 2.9, 0.0, 0.4, 0.0, 2, "unigrams")
    fit = _fit(splits, values, bound, resamples=200, confidence=0.95, seed=0)
    assert fit.splits == (8, 16, 32, 64)
    assert fit.excluded == (
        (2, f"signal-to-noise {snr:.2f} < 3; below the data-processing bound"),
        (4, "below the data-processing bound"),
    )
    ref = fit_power_law(splits[2:], truth[2:], y_stderr=stderr[2:])
    assert fit.exponent == pytest.approx(ref.exponent, rel=1e-12)
    # Fewer than 3 splits qualify: no fit.
    assert _fit(splits[:4], values[:, :4], bound, 200, 0.95, 0) is None


# ---- known answers with q ≠ p ---------------------------------------------------------------


def _expected_first_order(pair_VxV, log_q0_V, log_q_VxV, h2, w):
    """Exact expectations of the estimators when a first-order chain q (initial law q0,
    transitions Q) scores a stationary source with pair law p2 at distance 1.

    log q(Y|X) − log q(Y) = log Q(Y1 | W_ℓ) − log q0(Y1), whatever ℓ; Y1 Y2 is a pair drawn
    from p2; X_σ's last token is independent of Y1.
    """
    pi = pair_VxV.sum(axis=1)
    pair_term = float(np.sum(pair_VxV * log_q_VxV))  # E log Q(b | a) under p2
    start_term = float(pi @ log_q0_V)  # E log q0(Y1)
    independent = float(pi @ log_q_VxV @ pi)  # E log Q(b | a), a and b independent
    uncorrected = pair_term - start_term
    corrected = uncorrected + w * (start_term + pair_term + h2)
    return corrected, uncorrected, pair_term - independent


def _assert_within(res, expected, sigmas=3.0):
    for key, value in zip(("direct", "direct_uncorrected", "vclub"), expected, strict=True):
        z = (getattr(res, key) - value) / getattr(res, key + "_stderr")
        assert np.all(np.abs(z) < sigmas), (key, z)


def test_markov_with_a_wrong_initial_law():
    """q = the exact transitions but q0 ≠ π: direct = I + KL(π‖q0), corrected = I + (1 − w)·KL,
    with Ĥ_G from a large sample of the chain."""
    src = markov_chain()
    w, splits = 0.8, [2, 8, 32]
    rng = np.random.default_rng(0)
    q0 = 0.2 * src.stationary + 0.8 * rng.dirichlet(np.full(src.vocab_size, 0.5))
    kl = float(np.sum(special.rel_entr(src.stationary, q0)))
    params = src.params._replace(log_initial_V=jnp.asarray(np.log(q0), jnp.float32))
    corpus = np.asarray(src.sample(jax.random.key(11), 2048, 512))  # 2^20 tokens, V² = 1024
    docs = corpus[:512].reshape(4096, 64)  # consecutive chunks: stationary, nearly independent
    res = bipartite_mi(
        src.logprob_fn, params, docs, splits, 2, batch_size=1024, ngram_weight=w,
        corpus=corpus, vocab_size=src.vocab_size, bootstrap=20, progress=False,
    )  # fmt: skip
    exact = src.two_point_mi(1)
    expected = _expected_first_order(
        src.pair_distribution(1), np.log(q0), np.log(src.transition), np.nan, w
    )
    # Written as the issue states them (Ĥ_G → H(W1 W2) and the 2-gram terms cancel).
    assert expected[1] == pytest.approx(exact + kl, rel=1e-12)
    _assert_within(res, (exact + (1 - w) * kl, exact + kl, expected[2]))
    # The test has power: a weight of 1 − w (or a flipped sign) would move the corrected
    # estimate by (2w − 1)·KL (or 2w·KL), many standard errors.
    assert np.all((2 * w - 1) * kl > 6 * res.direct_stderr)
    assert res.ngram_tokens == 2**20 and res.ngram_missing_mass < 1e-3
    assert not res.direct_below_bound.any() and not res.direct_uncorrected_below_bound.any()


def test_markov_model_of_a_hidden_markov_source():
    """q a first-order chain (not p's own conditionals), p the hidden-Markov source: every
    estimator's expectation from p's exact pair law."""
    src = hidden_markov(reveal=0.3, switch=0.05)
    w, splits, v = 0.8, [2, 8, 32], src.vocab_size
    pair = src.pair_distribution(1)
    pi = pair.sum(axis=1)
    rng = np.random.default_rng(1)
    q = 0.7 * pair / pi[:, None] + 0.3 * rng.dirichlet(np.full(v, 0.5), size=v)
    q0 = 0.5 * pi + 0.5 * rng.dirichlet(np.full(v, 0.5))
    from l2m_jax.sources.discrete import MarkovParams, markov_logprob

    params = MarkovParams(jnp.asarray(np.log(q0), jnp.float32), jnp.asarray(np.log(q), jnp.float32))
    corpus = np.asarray(src.sample(jax.random.key(13), 2048, 512))
    docs = corpus[:512].reshape(4096, 64)
    res = bipartite_mi(
        markov_logprob, params, docs, splits, 2, batch_size=1024, ngram_weight=w,
        corpus=corpus, check_bound=False, vocab_size=v, bootstrap=20, progress=False,
    )  # fmt: skip
    h2 = float(-np.sum(special.xlogy(pair, pair)))
    expected = _expected_first_order(pair, np.log(q0), np.log(q), h2, w)
    _assert_within(res, expected)
    # q misses the hidden state: both direct estimates sit far below the exact I_BP(32; 64).
    exact = src.bipartite_mi(32, 64)
    assert np.all(res.direct[-1] + 10 * res.direct_stderr[-1] < exact)
    assert np.all(res.direct_uncorrected[-1] + 10 * res.direct_uncorrected_stderr[-1] < exact)
    assert abs(res.ngram_entropy - h2) < 3 * res.ngram_entropy_stderr + 0.01


# ---- the data-processing bound, h(t), the cache -------------------------------------------


def test_two_point_bound_in_the_undersampled_regime():
    """Pairs few against the V² possible (V = 300, V²/N ≈ 1.8): raw Î_TP(1) is biased high
    by many stderrs, which would make it a bound that flags good splits; less its shuffled
    surrogate it is within a quarter of that bias of the exact value."""
    from l2m_jax.information.bipartite import two_point_bound

    src = markov_chain(300, concentration=1.0, seed=2)
    docs = list(np.asarray(src.sample(jax.random.key(0), 50, 1000)))
    bound = two_point_bound(docs, src.vocab_size)
    exact = src.two_point_mi(1)
    assert bound.value == pytest.approx(bound.raw - bound.surrogate, rel=1e-12)
    assert bound.raw - exact > 8 * bound.raw_stderr
    assert abs(bound.value - exact) < 0.25 * (bound.raw - exact)
    assert bound.shuffles == 2 and bound.stderr > bound.raw_stderr


def _assert_identical(a, b, path="result"):
    """Every array, number and nested tuple of two results equal bit for bit."""
    if isinstance(a, tuple):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            name = a._fields[i] if hasattr(a, "_fields") else str(i)
            if name != "cached_batches":
                _assert_identical(x, y, f"{path}.{name}")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True), path
    else:
        assert a == b or (a != a and b != b), path


@pytest.mark.filterwarnings("ignore:the 2-gram histogram")
def test_interrupted_run_resumes_with_identical_results(tmp_path, monkeypatch):
    from l2m_jax.information import bipartite as bp

    src = markov_chain()
    docs = src.sample(jax.random.key(9), 24, 64)
    kw = dict(batch_size=4, devices=jax.devices()[:1], corpus=docs, bootstrap=50, progress=False)
    run = lambda params=src.params, d=docs, **more: bipartite_mi(
        src.logprob_fn, params, d, [2, 4, 8, 16, 32], 2, **kw, **more
    )
    reference = run()
    cache = tmp_path / "cache"
    saved = []
    save = bp._Cache.save

    def save_then_stop(self, b, arrays):  # the run is interrupted after 2 of 6 batches
        if len(saved) == 2:
            raise KeyboardInterrupt
        save(self, b, arrays)
        saved.append(b)

    monkeypatch.setattr(bp._Cache, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run(cache_dir=cache, cache_key={"model": "markov"})
    monkeypatch.setattr(bp._Cache, "save", save)
    assert sorted(p.name for p in cache.glob("batch-*.npz")) == [
        "batch-000000.npz",
        "batch-000001.npz",
    ]
    resumed = run(cache_dir=cache, cache_key={"model": "markov"})
    assert resumed.cached_batches == 2 and len(list(cache.glob("batch-*.npz"))) == 6
    _assert_identical(resumed, reference)
    again = run(cache_dir=cache, cache_key={"model": "markov"})  # everything from the cache
    assert again.cached_batches == 6
    _assert_identical(again, reference)
    # A cache is refused for other inputs, and for another model.
    with pytest.raises(ValueError, match="different model"):
        run(cache_dir=cache, cache_key={"model": "other"})
    with pytest.raises(ValueError, match="different documents, partners"):
        run(d=np.roll(np.asarray(docs), 1, axis=0), cache_dir=cache, cache_key={"model": "markov"})
    wrong = src.params._replace(log_initial_V=src.params.log_initial_V[::-1])
    with pytest.raises(ValueError, match="written by another model"):
        run(params=wrong, cache_dir=cache, cache_key={"model": "markov"})


def test_headline_fit_covers_the_true_exponent_with_a_noisy_split():
    """The fit behind every reported exponent, on per-document values whose first split has
    signal-to-noise 0.8: over 400 data sets its ±1.96 stderr and its bootstrap interval each
    cover the true β = 0.6 in 95% ± 3% (binomial spread 1.1%), with no failed resamples."""
    from l2m_jax.information.bipartite import _fit

    rng = np.random.default_rng(1)
    splits = (2, 4, 8, 16, 32, 64, 128)
    truth = 1.2 * np.array(splits, np.float64) ** 0.6
    sigma = truth / np.array([0.8, 3, 6, 10, 15, 20, 25])
    hits, boot_hits = [], []
    for s in range(400):
        values = truth + 8 * sigma * rng.standard_normal((64, len(splits)))
        fit = _fit(splits, values, None, resamples=200, confidence=0.95, seed=s)
        hits.append(abs(fit.exponent - 0.6) < 1.96 * fit.exponent_stderr)
        boot_hits.append(fit.interval[0] < 0.6 < fit.interval[1])
        assert fit.bootstrap_failed == 0 and fit.bootstrap_resamples == 200
    assert 0.92 <= np.mean(hits) <= 0.98 and 0.92 <= np.mean(boot_hits) <= 0.98
