"""Discrete sources with exact information, to validate the estimators with q = p.

Each source samples documents of token ids, knows its exact two-point MI I(W_i; W_i+d) and
bipartite MI I(W_1:ℓ ; W_ℓ+1:L), and carries an exact autoregressive `logprob_fn` with the
estimator convention (interface 4): `logprob_fn(params, tokens_BxT) -> logp_BxT`, entry t
being log p(tokens[t] | tokens[:t]) and entry 0 the probability from BOS alone. `params` are
the source's own arrays (`source.params`), so `bipartite_mi(src.logprob_fn, src.params, …)`
runs the estimators with the true distribution as the model.

- `markov_chain`: a stationary first-order chain. I_TP(d) = Σ π_i P^d_ij log(P^d_ij / π_j)
  from transition-matrix powers; I_BP(ℓ; L) = I(W_ℓ; W_ℓ+1) for every ℓ < L (the past acts
  on the future only through the last token), constant in ℓ.
- `hidden_markov`: a Markov "content" symbol alongside a tag that reveals a slowly switching
  hidden state h ∈ {0..K−1} at random positions (an erasure HMM). Each position's token is
  content·(K+1) + tag; tag 0 hides h (probability 1 − s), tag h+1 shows it (probability s).
  The hidden chain keeps its state with probability λ = 1 − `switch` and is otherwise redrawn
  uniformly, so P(h_i = h_i+k) = 1/K + (1 − 1/K)·λ^k. Content and tags are independent, so
  informations add. For the tags, X tells about Y exactly through its last reveal (age a
  before the split) and Y's first reveal (b positions after it):

      I_BP(ℓ; L) = I_content + Σ_{a ≤ ℓ, b ≤ L−ℓ} s²(1−s)^{a+b−2} · I_K(a + b − 1),
      I_K(k) = log K + p log p + (1 − p) log((1 − p)/(K − 1)),  p = 1/K + (1 − 1/K)·λ^k,

  which grows with ℓ from ≈ 0 towards about log K (the hidden state is seen on both sides).
  Its exact `logprob_fn` is the forward algorithm over the hidden state.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

__all__ = [
    "CopySource",
    "HiddenMarkov",
    "HiddenMarkovParams",
    "MarkovChain",
    "MarkovParams",
    "copy_source",
    "hidden_markov",
    "hidden_markov_logprob",
    "markov_chain",
    "markov_logprob",
]


# ---- log-probability functions (pure, jittable; interface 4) ---------------------------


class MarkovParams(NamedTuple):
    log_initial_V: jax.Array  # float32, log π (the chain starts stationary)
    log_transition_VxV: jax.Array  # float32, log P[i, j] = log p(next = j | current = i)


def markov_logprob(params: MarkovParams, tokens_BxT: jax.Array) -> jax.Array:
    """log p(tokens[t] | tokens[:t]) of a first-order chain, float32 [B, T]."""
    tokens_BxT = jnp.asarray(tokens_BxT, jnp.int32)
    first_Bx1 = params.log_initial_V[tokens_BxT[:, :1]]
    rest_BxT1 = params.log_transition_VxV[tokens_BxT[:, :-1], tokens_BxT[:, 1:]]
    return jnp.concatenate([first_Bx1, rest_BxT1], axis=1)


class HiddenMarkovParams(NamedTuple):
    content: MarkovParams
    initial_K: jax.Array  # float32, the hidden state's distribution at the first position
    log_reveal: jax.Array  # float32 scalar, log s
    log_hide: jax.Array  # float32 scalar, log(1 − s)
    keep: jax.Array  # float32 scalar, λ: probability the hidden state is not redrawn


def hidden_markov_logprob(params: HiddenMarkovParams, tokens_BxT: jax.Array) -> jax.Array:
    """Exact log p(tokens[t] | tokens[:t]) of `HiddenMarkov`, float32 [B, T].

    The forward algorithm in closed form: t − i steps after the last reveal (at i, state z)
    the belief over the hidden state is λ^(t−i)·e_z + (1 − λ^(t−i))/K, and before any reveal
    λ^t·initial + (1 − λ^t)/K — so no sequential scan is needed.
    """
    tokens_BxT = jnp.asarray(tokens_BxT, jnp.int32)
    (k,) = params.initial_K.shape
    content_BxT, tag_BxT = tokens_BxT // (k + 1), tokens_BxT % (k + 1)
    revealed_BxT = tag_BxT > 0
    # The last reveal before t as one key, position·(K+1) + tag, carried by a running max.
    pos_1xT = jnp.arange(tokens_BxT.shape[1], dtype=jnp.int32)[None, :]
    key_BxT = jax.lax.cummax(jnp.where(revealed_BxT, pos_1xT * (k + 1) + tag_BxT, -1), axis=1)
    prev_BxT = jnp.pad(key_BxT[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
    seen_BxT = prev_BxT >= 0
    steps_BxT = jnp.where(seen_BxT, pos_1xT - prev_BxT // (k + 1), pos_1xT)
    decay_BxT = params.keep ** steps_BxT.astype(jnp.float32)
    anchor_BxT = jnp.where(
        seen_BxT,
        (prev_BxT % (k + 1) == tag_BxT).astype(jnp.float32),
        jnp.take(params.initial_K, jnp.maximum(tag_BxT - 1, 0)),
    )
    p_state_BxT = decay_BxT * anchor_BxT + (1.0 - decay_BxT) / k
    logp_tag_BxT = jnp.where(
        revealed_BxT, params.log_reveal + jnp.log(p_state_BxT), params.log_hide
    )
    return markov_logprob(params.content, content_BxT) + logp_tag_BxT


# ---- samplers --------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("batch", "length"))
def _sample_markov(key, log_initial_V, log_transition_VxV, *, batch: int, length: int):
    key_first, key_rest = jax.random.split(key)
    first_B = jax.random.categorical(key_first, log_initial_V, shape=(batch,))

    def step(prev_B, key_t):
        nxt_B = jax.random.categorical(key_t, log_transition_VxV[prev_B])
        return nxt_B, nxt_B

    _, rest_LxB = jax.lax.scan(step, first_B, jax.random.split(key_rest, length - 1))
    return jnp.concatenate([first_B[:, None], rest_LxB.T], axis=1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("batch", "length", "states"))
def _sample_hidden(key, reveal, keep, *, batch: int, length: int, states: int):
    """Tags of the hidden chain: the state is the uniform draw at the last redraw event."""
    key_draw, key_redraw, key_tag = jax.random.split(key, 3)
    draws_BxL = jax.random.randint(key_draw, (batch, length), 0, states)
    redraw_BxL = jax.random.bernoulli(key_redraw, 1.0 - keep, (batch, length))
    redraw_BxL = redraw_BxL.at[:, 0].set(True)  # position 0 draws from the uniform start
    pos_1xL = jnp.arange(length, dtype=jnp.int32)[None, :]
    last_BxL = jax.lax.cummax(jnp.where(redraw_BxL, pos_1xL, 0), axis=1)
    hidden_BxL = jnp.take_along_axis(draws_BxL, last_BxL, axis=1)
    shown_BxL = jax.random.bernoulli(key_tag, reveal, (batch, length))
    return jnp.where(shown_BxL, hidden_BxL + 1, 0).astype(jnp.int32)


def _check_count(name: str, value, lo: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < lo:
        raise ValueError(f"{name} must be an integer ≥ {lo}, got {value!r}")
    return int(value)


def _check_positions(ell, length) -> tuple[np.ndarray, np.ndarray]:
    ell_a, length_a = np.asarray(ell), np.asarray(length)
    for name, a in (("ell", ell_a), ("length", length_a)):
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} must be integers, got {a!r}")
    if np.any(ell_a < 1) or np.any(length_a <= ell_a):
        raise ValueError(
            f"need 1 ≤ ell < length (X = W_1:ell and Y = W_ell+1:length both non-empty); "
            f"got ell={ell!r}, length={length!r}"
        )
    return np.broadcast_arrays(ell_a.astype(np.int64), length_a.astype(np.int64))


def _check_distances(d) -> np.ndarray:
    d_a = np.asarray(d)
    if not np.issubdtype(d_a.dtype, np.integer) or np.any(d_a < 1):
        raise ValueError(f"distances d must be integers ≥ 1, got {d!r}")
    return d_a.astype(np.int64)


def _scalar_or_array(a: np.ndarray):
    return float(a) if a.ndim == 0 else a


# ---- Markov chain ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class MarkovChain:
    """A stationary first-order Markov chain over V tokens (first token drawn from π).

    Attributes:
      transition: float64 [V, V] with positive entries and unit rows; P[i, j] is the
        probability of token j after token i. Positive entries keep every log-probability
        finite (vCLUB scores each Y after another document's X).
      name: a label for tables and plots.
    """

    transition: np.ndarray
    name: str = "markov"

    def __post_init__(self):
        p = np.array(self.transition, np.float64)
        if p.ndim != 2 or p.shape[0] != p.shape[1] or p.shape[0] < 2:
            raise ValueError(f"transition must be a square [V, V] matrix, got shape {p.shape}")
        if not np.all(np.isfinite(p)) or np.any(p <= 0):
            raise ValueError("transition entries must be finite and > 0 (mix in a floor)")
        if np.max(np.abs(p.sum(axis=1) - 1.0)) > 1e-9:
            raise ValueError("transition rows must sum to 1 (normalise each row)")
        p.setflags(write=False)
        object.__setattr__(self, "transition", p)

    @property
    def vocab_size(self) -> int:
        return self.transition.shape[0]

    @functools.cached_property
    def stationary(self) -> np.ndarray:
        """π with π P = π, float64 [V]."""
        v = self.vocab_size
        a = self.transition.T - np.eye(v)
        a[-1] = 1.0
        rhs = np.zeros(v)
        rhs[-1] = 1.0
        pi = np.linalg.solve(a, rhs)
        pi.setflags(write=False)
        return pi

    @functools.cached_property
    def params(self) -> MarkovParams:
        return MarkovParams(
            jnp.asarray(np.log(self.stationary), jnp.float32),
            jnp.asarray(np.log(self.transition), jnp.float32),
        )

    logprob_fn = staticmethod(markov_logprob)

    def sample(self, key: jax.Array, batch: int, length: int) -> jax.Array:
        """`batch` documents of `length` tokens, int32 [B, L]."""
        batch, length = _check_count("batch", batch, 1), _check_count("length", length, 1)
        p = self.params
        return _sample_markov(
            key, p.log_initial_V, p.log_transition_VxV, batch=batch, length=length
        )

    def two_point_mi(self, d):
        """Exact I(W_i ; W_i+d) in nats for distances d ≥ 1 (int or array)."""
        d_a = _check_distances(d)
        pi = self.stationary
        out = {}
        for dist in np.unique(d_a):
            pd = np.linalg.matrix_power(self.transition, int(dist))
            joint = pi[:, None] * pd
            out[dist] = float(np.sum(special.xlogy(joint, pd / pi[None, :])))
        return _scalar_or_array(np.vectorize(out.__getitem__, otypes=[np.float64])(d_a))

    def pair_distribution(self, d: int = 1) -> np.ndarray:
        """Exact joint law of (W_i, W_i+d), float64 [V, V]: π_a · (P^d)_ab."""
        (dist,) = _check_distances([d])
        return self.stationary[:, None] * np.linalg.matrix_power(self.transition, int(dist))

    def bipartite_mi(self, ell, length):
        """Exact I(W_1:ℓ ; W_ℓ+1:length) = I(W_ℓ ; W_ℓ+1), nats (ℓ, length ints or arrays)."""
        ell_a, _ = _check_positions(ell, length)
        return _scalar_or_array(np.full(ell_a.shape, self.two_point_mi(1)))

    def entropy_rate(self) -> float:
        """H(W_t | W_t−1) = −Σ π_i P_ij log P_ij, nats per token."""
        p = self.transition
        return float(-np.sum(self.stationary[:, None] * special.xlogy(p, p)))


def markov_chain(
    vocab_size: int = 32,
    *,
    concentration: float = 0.5,
    stickiness: float = 0.5,
    floor: float = 1e-3,
    seed: int = 0,
) -> MarkovChain:
    """A random stationary chain: P = stickiness·I + (1 − stickiness)·R, floored.

    R has Dirichlet(`concentration`) rows (small values make rows peaked and I_TP(1)
    large); `stickiness` slows mixing (I_TP(d) decays like the second eigenvalue ≥
    stickiness to the power 2d); `floor` is mixed in uniformly so every transition has
    probability ≥ floor/V.
    """
    vocab_size = _check_count("vocab_size", vocab_size, 2)
    if not concentration > 0:
        raise ValueError(f"concentration must be > 0, got {concentration}")
    if not 0.0 <= stickiness < 1.0:
        raise ValueError(f"stickiness must lie in [0, 1), got {stickiness}")
    if not 0.0 < floor <= 1.0:
        raise ValueError(f"floor must lie in (0, 1] so every transition is possible, got {floor}")
    rng = np.random.default_rng(seed)
    r = rng.dirichlet(np.full(vocab_size, concentration), size=vocab_size)
    p = stickiness * np.eye(vocab_size) + (1.0 - stickiness) * r
    p = (1.0 - floor) * p + floor / vocab_size
    return MarkovChain(p / p.sum(axis=1, keepdims=True), name=f"markov{vocab_size}")


# ---- hidden Markov (erasure) source ----------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class HiddenMarkov:
    """Markov content plus tags revealing a slowly switching hidden state (module docstring).

    Attributes:
      content: the content chain (V_c tokens); tokens are content·(K+1) + tag.
      states: K ≥ 2 hidden states.
      reveal: s in (0, 1), probability that a position shows the hidden state.
      switch: in (0, 1], probability per step that the hidden state is redrawn uniformly
        (> 0 keeps every log-probability finite).
      name: a label for tables and plots.
    """

    content: MarkovChain
    states: int = 8
    reveal: float = 0.05
    switch: float = 0.002
    name: str = "hidden_markov"

    def __post_init__(self):
        if not isinstance(self.content, MarkovChain):
            raise TypeError(f"content must be a MarkovChain, got {type(self.content).__name__}")
        _check_count("states", self.states, 2)
        if not 0.0 < self.reveal < 1.0:
            raise ValueError(f"reveal must lie in (0, 1), got {self.reveal}")
        if not 0.0 < self.switch <= 1.0:
            raise ValueError(
                f"switch must lie in (0, 1] (0 makes log-probs −inf), got {self.switch}"
            )

    @property
    def vocab_size(self) -> int:
        return self.content.vocab_size * (self.states + 1)

    @functools.cached_property
    def params(self) -> HiddenMarkovParams:
        k = self.states
        return HiddenMarkovParams(
            self.content.params,
            jnp.full((k,), 1.0 / k, jnp.float32),
            jnp.asarray(math.log(self.reveal), jnp.float32),
            jnp.asarray(math.log1p(-self.reveal), jnp.float32),
            jnp.asarray(1.0 - self.switch, jnp.float32),
        )

    logprob_fn = staticmethod(hidden_markov_logprob)

    def sample(self, key: jax.Array, batch: int, length: int) -> jax.Array:
        """`batch` documents of `length` tokens, int32 [B, L]."""
        batch, length = _check_count("batch", batch, 1), _check_count("length", length, 1)
        key_content, key_tag = jax.random.split(key)
        content_BxL = self.content.sample(key_content, batch, length)
        tag_BxL = _sample_hidden(
            key_tag,
            self.reveal,
            1.0 - self.switch,
            batch=batch,
            length=length,
            states=self.states,
        )
        return content_BxL * (self.states + 1) + tag_BxL

    def _tag_mi(self, k: np.ndarray) -> np.ndarray:
        """I(h_i ; h_i+k) for the uniform, symmetric hidden chain (k ≥ 1)."""
        n = self.states
        same = 1.0 / n + (1.0 - 1.0 / n) * (1.0 - self.switch) ** k
        other = (1.0 - same) / (n - 1)
        return math.log(n) + special.xlogy(same, same) + (n - 1) * special.xlogy(other, other)

    def pair_distribution(self, d: int = 1) -> np.ndarray:
        """Exact joint law of (W_i, W_i+d), float64 [V, V], tokens content·(K+1) + tag.

        Content and tags are independent, so it is the Kronecker product of the content
        chain's pair law and the tags': both hidden (1 − s)², one shown (1 − s)·s/K, both
        shown s²/K · (λ^d·[same state] + (1 − λ^d)/K).
        """
        (dist,) = _check_distances([d])
        k, s = self.states, self.reveal
        keep = (1.0 - self.switch) ** int(dist)
        tags = np.empty((k + 1, k + 1))
        tags[0, 0] = (1.0 - s) ** 2
        tags[0, 1:] = tags[1:, 0] = (1.0 - s) * s / k
        tags[1:, 1:] = s * s / k * (keep * np.eye(k) + (1.0 - keep) / k)
        return np.kron(self.content.pair_distribution(int(dist)), tags)

    def two_point_mi(self, d):
        """Exact I(W_i ; W_i+d) = I_content(d) + s²·I_K(d), nats (d ≥ 1, int or array)."""
        d_a = _check_distances(d)
        tag = self.reveal**2 * self._tag_mi(d_a.astype(np.float64))
        return _scalar_or_array(np.asarray(self.content.two_point_mi(d_a)) + tag)

    def bipartite_mi(self, ell, length):
        """Exact I(W_1:ℓ ; W_ℓ+1:length), nats (ℓ, length ints or arrays)."""
        ell_a, length_a = _check_positions(ell, length)
        s = self.reveal
        out = np.empty(ell_a.shape, np.float64)
        for idx in np.ndindex(ell_a.shape):
            lx, ly = int(ell_a[idx]), int(length_a[idx] - ell_a[idx])
            k = np.arange(1, lx + ly, dtype=np.float64)  # distance between the two reveals
            pairs = np.minimum(lx, k) - np.maximum(1, k + 1 - ly) + 1
            weight = s**2 * (1.0 - s) ** (k - 1) * pairs
            out[idx] = float(np.sum(weight * self._tag_mi(k)))
        return _scalar_or_array(out + self.content.two_point_mi(1))


def hidden_markov(
    content_size: int = 8,
    states: int = 8,
    *,
    reveal: float = 0.05,
    switch: float = 0.002,
    seed: int = 0,
    **content_kwargs,
) -> HiddenMarkov:
    """A `HiddenMarkov` source with a random content chain (`markov_chain` keywords)."""
    content = markov_chain(content_size, seed=seed, **content_kwargs)
    return HiddenMarkov(content, states, reveal, switch, name=f"hidden_markov{states}")


# ---- copy source: Zipfian tokens that repeat earlier ones (any V, exact I_TP) -----------


@functools.partial(jax.jit, static_argnames=("batch", "total", "hops"))
def _sample_copies(key, cdf_V, cdf_K, copy, *, batch: int, total: int, hops: int):
    """[B, total] tokens: each position copies the token `lag` back with probability
    `copy`, else draws afresh; copies resolve to their fresh ancestor by pointer doubling."""
    key_fresh, key_copy, key_lag = jax.random.split(key, 3)
    draw = lambda k, cdf: jnp.searchsorted(cdf, jax.random.uniform(k, (batch, total)), "right")
    fresh_BxT = jnp.minimum(draw(key_fresh, cdf_V), cdf_V.shape[0] - 1).astype(jnp.int32)
    lag_BxT = jnp.minimum(draw(key_lag, cdf_K), cdf_K.shape[0] - 1) + 1
    copies_BxT = jax.random.bernoulli(key_copy, copy, (batch, total))
    pos_1xT = jnp.arange(total)[None, :]
    ptr_BxT = jnp.where(copies_BxT & (pos_1xT >= lag_BxT), pos_1xT - lag_BxT, pos_1xT)
    ptr_BxT = jax.lax.fori_loop(
        0, hops, lambda _, p: jnp.take_along_axis(p, p, axis=1), ptr_BxT.astype(jnp.int32)
    )
    return jnp.take_along_axis(fresh_BxT, ptr_BxT, axis=1)


@dataclasses.dataclass(frozen=True, eq=False)
class CopySource:
    """Tokens that repeat earlier tokens at random lags, else are drawn afresh from π.

    At each position, with probability `copy` the token copies the one `k` positions back
    (k ~ `lags`, 1 ≤ k ≤ K), otherwise it is a fresh draw from `unigram`; the choices are
    independent of the tokens. Two positions share a token by descent with probability
    r(d) (below) and are otherwise independent draws from π, so the pair distribution is
    exactly p(a, b) = r(d)·π_a·[a = b] + (1 − r(d))·π_a·π_b and

      I_TP(d) = Σ_a p_aa log(p_aa / π_a²) + (1 − r)(1 − Σ_a π_a²) log(1 − r).

    r(d) is the probability that the copy chains of positions i and i + d meet: following
    the later position back one step (a copy at lag k) gives the gap |d − k|, so with
    r(0) = 1, r(d) = copy · Σ_k q_k r(|d − k|): a K-by-K linear system for d ≤ K, then a
    recursion. It is a Markov chain of order K over V tokens with a bursty, Zipfian
    character like text's repetitions, for any V (nothing V×V is stored).

    Attributes:
      unigram: float64 [V], π (positive, sums to 1).
      copy: probability in [0, 1) that a position copies.
      lags: float64 [K], q_k for k = 1..K (positive, sums to 1).
      name: a label for tables and plots.
    """

    unigram: np.ndarray
    copy: float
    lags: np.ndarray
    name: str = "copy"

    def __post_init__(self):
        for field in ("unigram", "lags"):
            p = np.array(getattr(self, field), np.float64)
            if p.ndim != 1 or p.size < 1 or not np.all(np.isfinite(p)) or np.any(p <= 0):
                raise ValueError(f"{field} must be a 1-D array of positive probabilities")
            if abs(p.sum() - 1.0) > 1e-9:
                raise ValueError(f"{field} must sum to 1 (normalise it)")
            p.setflags(write=False)
            object.__setattr__(self, field, p)
        if self.unigram.size < 2:
            raise ValueError("unigram needs at least 2 tokens")
        if not 0.0 <= self.copy < 1.0:
            raise ValueError(f"copy must lie in [0, 1), got {self.copy}")

    @property
    def vocab_size(self) -> int:
        return self.unigram.size

    @functools.cached_property
    def _coalescence(self) -> np.ndarray:
        """r(0..K) from the linear system (the recursion extends it)."""
        q, c = self.lags, self.copy
        k = q.size
        gap = np.abs(np.arange(1, k + 1)[:, None] - np.arange(1, k + 1)[None, :])  # |x − lag|
        system = np.eye(k)
        rows, lag_idx = np.nonzero(gap)
        np.subtract.at(system, (rows, gap[rows, lag_idx] - 1), c * q[lag_idx])
        r = np.linalg.solve(system, c * q)  # the lag = x term: r(0) = 1
        return np.concatenate([[1.0], r])

    def same_token_by_descent(self, d) -> np.ndarray:
        """r(d): probability that positions i and i + d copy one fresh draw (d ≥ 1)."""
        d_a = _check_distances(d)
        base = self._coalescence
        top = int(d_a.max(initial=0))
        if top >= base.size:
            r = np.empty(top + 1)
            r[: base.size] = base
            q_rev = self.copy * self.lags[::-1]
            k = self.lags.size
            for x in range(base.size, top + 1):
                r[x] = q_rev @ r[x - k : x]
            base = r
        return base[d_a]

    def two_point_mi(self, d):
        """Exact I(W_i ; W_i+d) in nats for distances d ≥ 1 (int or array)."""
        r = np.asarray(self.same_token_by_descent(d), np.float64)
        pi = self.unigram
        same = r[..., None] * pi + (1.0 - r[..., None]) * pi**2
        diagonal = np.sum(special.xlogy(same, same / pi**2), axis=-1)
        rest = (1.0 - r) * (1.0 - pi @ pi) * np.log1p(-r)
        return _scalar_or_array(diagonal + rest)

    def entropy(self) -> float:
        """H(W) of one token, nats."""
        return float(-np.sum(special.xlogy(self.unigram, self.unigram)))

    def sample(self, key: jax.Array, batch: int, length: int) -> jax.Array:
        """`batch` stationary documents of `length` tokens, int32 [B, L].

        A burn-in of the copy chains' reach (m·K positions with copy^m < 1e-12) precedes
        each document, so a copy reaches past the start with probability below 1e-12.
        """
        batch, length = _check_count("batch", batch, 1), _check_count("length", length, 1)
        reach = math.ceil(math.log(1e-12) / math.log(self.copy)) if self.copy > 0 else 0
        burn = reach * self.lags.size
        total = burn + length
        cdf_v = np.cumsum(self.unigram)
        cdf_k = np.cumsum(self.lags)
        tokens = _sample_copies(
            key,
            jnp.asarray(cdf_v / cdf_v[-1], jnp.float32),
            jnp.asarray(cdf_k / cdf_k[-1], jnp.float32),
            self.copy,
            batch=batch,
            total=total,
            hops=max(1, (total - 1).bit_length()),
        )
        return tokens[:, burn:]


def copy_source(
    vocab_size: int = 4096,
    *,
    zipf: float = 1.1,
    copy: float = 0.7,
    max_lag: int = 256,
    lag_exponent: float = 1.0,
) -> CopySource:
    """A `CopySource` with Zipfian unigrams π_r ∝ r^−zipf (r = 1..V) and power-law lags
    q_k ∝ k^−lag_exponent (k = 1..max_lag), so I_TP(d) decays slowly up to max_lag."""
    vocab_size = _check_count("vocab_size", vocab_size, 2)
    max_lag = _check_count("max_lag", max_lag, 1)
    if not zipf >= 0 or not lag_exponent >= 0:
        raise ValueError(f"zipf and lag_exponent must be ≥ 0, got {zipf}, {lag_exponent}")
    pi = np.arange(1, vocab_size + 1, dtype=np.float64) ** -zipf
    q = np.arange(1, max_lag + 1, dtype=np.float64) ** -lag_exponent
    return CopySource(pi / pi.sum(), copy, q / q.sum(), name=f"copy{vocab_size}")
