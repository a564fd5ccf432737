"""Inputs and outputs of every architecture: token or Gaussian-vector heads, positions.

`config.head == "tokens"`: int32 tokens [B, L] are embedded with `embed/tokens` [V, D]; the
output is logits [B, L, V] through the same matrix (tied) or `head/unembed` [D, V].

`config.head == "gaussian"` (PAPER.md §6): a float32 vector [B, L, C] per position is embedded
by a 2-layer MLP (C -> D -> D, GELU between), and a 2-layer MLP head (D -> D -> 2C) gives the
conditional means and standard deviations of the next vector:
`std = softplus(raw) + STD_FLOOR` (smooth, never below the floor; the exact conditional stds
of the Gaussian families are 0.5-1, far above it). The output is a `GaussianPrediction`.

Learned absolute positions `positions` [P, D] are added to the embedding when the config's
`num_positions` P > 0 (PAPER.md §7: Gaussian models need the position).

`token_logprobs` is the token head fused with the log-softmax: log q(target) per position from
the final hidden states, computed over chunks of positions in the forward and the backward, so
no [B, L, V] array exists (at L = 16 384 and V = 50 257 the logits alone are 3.3 GB in float32,
and their gradient as much again). `output` still gives the full logits.

Mixed precision: with `config.dtype == "bfloat16"` the embedding output and every activation
are bf16 and the matmuls take bf16 operands with float32 accumulation; logits, log-probs and
the Gaussian (mean, std) are float32.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from l2m_jax.models import _layers

__all__ = ["LOGIT_CHUNK_ELEMENTS", "STD_FLOOR", "GaussianPrediction"]

STD_FLOOR = 1e-3
# Logits per chunk of the fused token head (rows = this // V): 64 MiB of float32 logits.
LOGIT_CHUNK_ELEMENTS = 1 << 24
_SOFTPLUS_INV_1 = math.log(math.e - 1.0)  # softplus(x) = 1 at this x


class GaussianPrediction(NamedTuple):
    """Conditional p(z_{t+1} | z_<=t) = N(mean, std²) per channel; both [..., C] float32."""

    mean: jax.Array
    std: jax.Array


def init(config, key, *, embed_std: float = 0.02) -> dict:
    """Input/output parameters: {"embed": ..., "positions"?: [P, D], "head"?: ...}."""
    D, C, V = config.d_model, config.channels, config.vocab_size
    k_embed, k_pos, k_h1, k_h2, k_e2 = jax.random.split(key, 5)
    params: dict = {}
    if config.head == "tokens":
        params["embed"] = {"tokens": _layers.normal(k_embed, (V, D), embed_std)}
        if not config.tie_embeddings:
            params["head"] = {"unembed": _layers.normal(k_h1, (D, V), embed_std)}
    else:
        params["embed"] = {
            "w1": _layers.normal(k_embed, (C, D), 1.0 / math.sqrt(C)),
            "b1": jnp.zeros((D,), jnp.float32),
            "w2": _layers.normal(k_e2, (D, D), 1.0 / math.sqrt(D)),
            "b2": jnp.zeros((D,), jnp.float32),
        }
        params["head"] = {
            "w1": _layers.normal(k_h1, (D, D), 1.0 / math.sqrt(D)),
            "b1": jnp.zeros((D,), jnp.float32),
            "w2": _layers.normal(k_h2, (D, 2 * C), 0.02),
            "b2": jnp.concatenate(
                [jnp.zeros((C,), jnp.float32), jnp.full((C,), _SOFTPLUS_INV_1, jnp.float32)]
            ),
        }
    if config.num_positions:
        params["positions"] = _layers.normal(k_pos, (config.num_positions, D), 0.01)
    return params


def check_inputs(config, inputs, *, step: bool) -> None:
    """Static checks of shapes and dtypes (and token ids when their values are known)."""
    name = "input_B" if step else "inputs"
    if config.head == "tokens":
        want = "[B]" if step else "[B, L]"
        if inputs.ndim != (1 if step else 2) or not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise TypeError(
                f"{name} must be integer tokens {want} for head='tokens', got "
                f"{inputs.dtype} {tuple(inputs.shape)}"
            )
        values = _layers.concrete(inputs)
        if (
            values is not None
            and values.size
            and (values.min() < 0 or values.max() >= config.vocab_size)
        ):
            raise ValueError(
                f"{name} holds token ids outside the vocabulary [0, {config.vocab_size}) "
                f"(min {values.min()}, max {values.max()}); re-tokenize or enlarge vocab_size"
            )
    else:
        want = f"[B, C={config.channels}]" if step else f"[B, L, C={config.channels}]"
        ndim = 2 if step else 3
        if (
            inputs.ndim != ndim
            or inputs.shape[-1] != config.channels
            or not jnp.issubdtype(inputs.dtype, jnp.floating)
        ):
            raise TypeError(
                f"{name} must be float vectors {want} for head='gaussian', got "
                f"{inputs.dtype} {tuple(inputs.shape)}"
            )
    if not step and inputs.shape[1] < 1:
        raise ValueError(f"{name} has length 0; pass at least one position")


def embed(config, params, inputs, positions_BxL):
    """inputs [B, L] tokens or [B, L, C] vectors -> x_BxLxD in config.dtype (+ positions)."""
    if config.head == "tokens":
        x_BxLxD = jnp.take(params["embed"]["tokens"], inputs, axis=0)
    else:
        p = params["embed"]
        h = jax.nn.gelu(_layers.dense(inputs, p["w1"], p["b1"], config.dtype))
        x_BxLxD = _layers.dense(h, p["w2"], p["b2"], config.dtype)
    if config.num_positions:
        x_BxLxD = x_BxLxD + jnp.take(params["positions"], positions_BxL, axis=0)
    return x_BxLxD.astype(config.dtype)


def output(config, params, x_BxLxD):
    """Final hidden states -> logits [B, L, V] or GaussianPrediction([B, L, C], [B, L, C]),
    float32 either way."""
    if config.head == "tokens":
        w, tied = _unembedding(config, params)
        return _logits(x_BxLxD, w, tied, config.dtype)
    p = params["head"]
    h = jax.nn.gelu(_layers.dense(x_BxLxD, p["w1"], p["b1"], config.dtype))
    raw = _layers.dense(h, p["w2"], p["b2"], config.dtype, out_dtype=jnp.float32)
    C = config.channels
    return GaussianPrediction(raw[..., :C], jax.nn.softplus(raw[..., C:]) + STD_FLOOR)


def check_positions(config, length: int, offset_known: int = 0) -> None:
    """Raises when positions up to `offset_known + length` exceed the learned positions."""
    P = config.num_positions
    if P and offset_known + length > P:
        raise ValueError(
            f"{offset_known + length} positions exceed max_positions={P} (learned absolute "
            "positions); raise max_positions in the config"
        )


# ----------------------------------------------------------------------------- fused token head


def _unembedding(config, params):
    """(w, tied): the tied embedding [V, D] or the untied unembedding [D, V]."""
    if config.tie_embeddings:
        return params["embed"]["tokens"], True
    return params["head"]["unembed"], False


def _logits(x_NxD, w, tied, dtype):
    spec = "...d,vd->...v" if tied else "...d,dv->...v"
    return jnp.einsum(
        spec, x_NxD.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32
    )


def _chunked(a, chunk):
    """a [N, ...] -> [N / chunk, chunk, ...], zero-padded at the end."""
    n = -(-a.shape[0] // chunk)
    a = jnp.pad(a, [(0, n * chunk - a.shape[0])] + [(0, 0)] * (a.ndim - 1))
    return a.reshape(n, chunk, *a.shape[1:])


def _unchunked(a, N):
    return a.reshape(-1, *a.shape[2:])[:N]


def _fused_forward(x_NxD, w, targets_N, chunk, tied, dtype):
    def body(_, xs):
        x_CxD, t_C = xs
        logits_CxV = _logits(x_CxD, w, tied, dtype)
        lse_C = jax.nn.logsumexp(logits_CxV, axis=-1)
        picked_C = jnp.take_along_axis(logits_CxV, t_C[:, None], axis=-1)[:, 0]
        return None, (picked_C - lse_C, lse_C)

    N = x_NxD.shape[0]
    _, (logp, lse) = lax.scan(body, None, (_chunked(x_NxD, chunk), _chunked(targets_N, chunk)))
    return _unchunked(logp, N), _unchunked(lse, N)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _fused_logprobs(x_NxD, w, targets_N, chunk, tied, dtype):
    return _fused_forward(x_NxD, w, targets_N, chunk, tied, dtype)[0]


def _fused_fwd(x_NxD, w, targets_N, chunk, tied, dtype):
    logp, lse = _fused_forward(x_NxD, w, targets_N, chunk, tied, dtype)
    return logp, (x_NxD, w, targets_N, lse)


def _fused_bwd(chunk, tied, dtype, residuals, g_N):
    """d logp_n / d logits_n = onehot(target_n) − softmax_n: recomputed chunk by chunk from the
    saved log-sum-exp; dW accumulates in the loop carry (float32)."""
    x_NxD, w, targets_N, lse_N = residuals
    N = x_NxD.shape[0]
    w_op = w.astype(dtype)

    def body(dw, xs):
        x_CxD, t_C, lse_C, g_C = xs
        logits_CxV = _logits(x_CxD, w, tied, dtype)
        p_CxV = jnp.exp(logits_CxV - lse_C[:, None])
        hit_CxV = jnp.arange(logits_CxV.shape[1])[None, :] == t_C[:, None]
        dlogits_CxV = (g_C[:, None] * (hit_CxV.astype(jnp.float32) - p_CxV)).astype(dtype)
        if tied:
            dx_CxD = jnp.einsum("cv,vd->cd", dlogits_CxV, w_op, preferred_element_type=jnp.float32)
            dw_c = jnp.einsum(
                "cv,cd->vd", dlogits_CxV, x_CxD.astype(dtype), preferred_element_type=jnp.float32
            )
        else:
            dx_CxD = jnp.einsum("cv,dv->cd", dlogits_CxV, w_op, preferred_element_type=jnp.float32)
            dw_c = jnp.einsum(
                "cd,cv->dv", x_CxD.astype(dtype), dlogits_CxV, preferred_element_type=jnp.float32
            )
        return dw + dw_c, dx_CxD

    xs = tuple(_chunked(a, chunk) for a in (x_NxD, targets_N, lse_N, g_N.astype(jnp.float32)))
    dw, dx = lax.scan(body, jnp.zeros(w.shape, jnp.float32), xs)
    return _unchunked(dx, N).astype(x_NxD.dtype), dw.astype(w.dtype), None


_fused_logprobs.defvjp(_fused_fwd, _fused_bwd)


def logit_chunk(vocab_size: int, rows: int) -> int:
    """Positions per chunk of the fused head: LOGIT_CHUNK_ELEMENTS logits, at most `rows`."""
    return max(1, min(rows, LOGIT_CHUNK_ELEMENTS // vocab_size))


def token_logprobs(config, params, x_BxLxD, targets_BxL, *, chunk_size=None):
    """log softmax(x @ unembedding)[target] per position, float32 [B, L], without the logits.

    The unembedding and the log-softmax run over chunks of `chunk_size` positions (default
    `logit_chunk`) in the forward and, by a `custom_vjp` recomputing each chunk's logits from
    the saved log-sum-exp, in the backward: memory O(chunk · V) instead of O(B · L · V).
    """
    if config.head != "tokens":
        raise ValueError(f"token_logprobs needs head='tokens', got head={config.head!r}")
    B, L, D = x_BxLxD.shape
    if targets_BxL.shape != (B, L) or not jnp.issubdtype(targets_BxL.dtype, jnp.integer):
        raise ValueError(
            f"targets_BxL must be integer tokens of shape ({B}, {L}), got {targets_BxL.dtype} "
            f"{tuple(targets_BxL.shape)}"
        )
    values = _layers.concrete(targets_BxL)
    if (
        values is not None
        and values.size
        and (values.min() < 0 or values.max() >= config.vocab_size)
    ):
        raise ValueError(
            f"targets_BxL holds token ids outside the vocabulary [0, {config.vocab_size}) "
            f"(min {values.min()}, max {values.max()})"
        )
    if chunk_size is None:
        chunk_size = logit_chunk(config.vocab_size, B * L)
    _layers.check_positive("chunk_size", chunk_size)
    w, tied = _unembedding(config, params)
    logp_N = _fused_logprobs(
        x_BxLxD.reshape(B * L, D),
        w,
        targets_BxL.reshape(B * L).astype(jnp.int32),
        int(chunk_size),
        tied,
        config.dtype,
    )
    return logp_N.reshape(B, L)
