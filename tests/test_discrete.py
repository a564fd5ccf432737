"""Discrete sources: exact information against brute-force enumeration, samplers vs models."""

import itertools

import jax
import numpy as np
import pytest

from l2m_jax.sources.discrete import MarkovChain, hidden_markov, markov_chain

# Small sources whose every sequence of length ≤ 5 can be enumerated. The hidden Markov one
# reveals often and switches fast so that both of its information terms are sizeable.
SMALL = {
    "markov": lambda: markov_chain(3, seed=1),
    "hidden": lambda: hidden_markov(2, 2, reveal=0.4, switch=0.3, seed=1),
}


def _all_sequences(vocab_size: int, length: int) -> np.ndarray:
    return np.array(list(itertools.product(range(vocab_size), repeat=length)), np.int32)


@pytest.mark.parametrize("name", SMALL)
def test_exact_information_matches_enumeration(name):
    src = SMALL[name]()
    v, length = src.vocab_size, 5
    seqs = _all_sequences(v, length)
    logp = np.asarray(jax.jit(src.logprob_fn)(src.params, seqs), np.float64)
    p = np.exp(logp.sum(axis=1))
    # The model is a normalised distribution over whole sequences (float32 log-probs).
    assert abs(p.sum() - 1.0) < 1e-6
    code = seqs @ v ** np.arange(length)[::-1]  # sequence index in base V (first token high)
    for ell in range(1, length):
        x, y = code // v ** (length - ell), code % v ** (length - ell)
        p_x = np.bincount(x, weights=p)[x]
        p_y = np.bincount(y, weights=p)[y]
        brute = float(np.sum(p * np.log(p / (p_x * p_y))))
        # Sums of float32-rounded probabilities: ~1e-7 relative per term.
        assert src.bipartite_mi(ell, length) == pytest.approx(brute, abs=1e-6)
    for d in range(1, length):
        joint = np.zeros((v, v))
        np.add.at(joint, (seqs[:, 0], seqs[:, d]), p)
        pi = joint.sum(axis=1)
        brute = float(np.sum(joint * np.log(joint / np.outer(pi, pi))))
        assert src.two_point_mi(d) == pytest.approx(brute, abs=1e-6)
        # The exact pair law that q ≠ p tests compute expectations from.
        np.testing.assert_allclose(src.pair_distribution(d), joint, rtol=1e-5, atol=1e-9)
    # Stationary: Y scored from BOS has the law of Y inside a sequence (the marginal pass).
    tail = code % v ** (length - 1)
    p_tail = np.bincount(tail, weights=p, minlength=v ** (length - 1))
    from_bos = np.exp(
        np.asarray(src.logprob_fn(src.params, seqs[: v ** (length - 1), 1:]), np.float64).sum(
            axis=1
        )
    )
    np.testing.assert_allclose(from_bos, p_tail, rtol=1e-5)


def test_hidden_markov_information_grows_and_markov_is_constant():
    markov, hidden = markov_chain(), hidden_markov()
    ell = np.array([2, 4, 8, 16, 32, 64, 128])
    flat = markov.bipartite_mi(ell, 2 * ell)
    np.testing.assert_allclose(flat, markov.two_point_mi(1), rtol=1e-15)
    growing = hidden.bipartite_mi(ell, 2 * ell)
    assert np.all(np.diff(growing) > 0)
    # Towards I_content + log K: the tags pin the hidden state on both sides.
    limit = hidden.content.two_point_mi(1) + np.log(hidden.states)
    assert growing[0] < limit - 1.5 and growing[-1] < limit
    assert markov.vocab_size >= 32 and hidden.vocab_size >= 32


def test_samplers_agree_with_models():
    """Sampled statistics match the exact models within 4 standard errors."""
    markov = markov_chain()
    tokens = np.asarray(markov.sample(jax.random.key(0), 64, 256))
    assert tokens.dtype == np.int32 and tokens.shape == (64, 256)
    assert tokens.min() >= 0 and tokens.max() < markov.vocab_size
    # Mean log-prob after the first position is −H(W_t | W_t−1).
    logp = np.asarray(markov.logprob_fn(markov.params, tokens), np.float64)[:, 1:].mean(axis=1)
    stderr = logp.std(ddof=1) / np.sqrt(logp.size)
    assert abs(logp.mean() + markov.entropy_rate()) < 4 * stderr

    hidden = hidden_markov(reveal=0.5, switch=0.2)
    k = hidden.states
    tags = np.asarray(hidden.sample(jax.random.key(1), 64, 256)) % (k + 1)
    assert abs((tags > 0).mean() - hidden.reveal) < 4 * np.sqrt(0.25 / tags.size)
    for d in (1, 4):
        a, b = tags[:, :-d], tags[:, d:]
        both = (a > 0) & (b > 0)
        same = (a == b)[both].mean()  # P(h_i = h_i+d) = 1/K + (1 − 1/K)·λ^d
        expected = 1 / k + (1 - 1 / k) * (1 - hidden.switch) ** d
        # Pairs overlap along a sequence; 64 independent documents bound the spread.
        per_doc = np.array([(a[i] == b[i])[both[i]].mean() for i in range(64)])
        assert abs(same - expected) < 4 * per_doc.std(ddof=1) / np.sqrt(64)


def test_bad_input():
    with pytest.raises(ValueError, match="vocab_size"):
        markov_chain(1)
    with pytest.raises(ValueError, match="> 0"):
        MarkovChain(np.eye(3))
    with pytest.raises(ValueError, match="sum to 1"):
        MarkovChain(np.full((3, 3), 0.5))
    with pytest.raises(ValueError, match="switch"):
        hidden_markov(switch=0.0)
    with pytest.raises(ValueError, match="ell < length"):
        markov_chain().bipartite_mi(8, 8)
    with pytest.raises(ValueError, match="d must be integers ≥ 1"):
        hidden_markov().two_point_mi(0)
    with pytest.raises(ValueError, match="batch"):
        markov_chain().sample(jax.random.key(0), 0, 8)
