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
from jax.sharding import PartitionSpec as P

from l2m_jax.models import _layers

__all__ = ["LOGIT_CHUNK_ELEMENTS", "STD_FLOOR", "GaussianPrediction"]

STD_FLOOR = 1e-3
# Logits per chunk of the fused token head (B x chunk x V): 64 MiB of float32 logits.
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


def _rows(table_NxD, index_BxL):
    """table[index] (a gather), sharded like the index when it is sharded over explicit mesh
    axes (the gather's output sharding cannot be inferred there)."""
    mesh = _explicit_mesh(index_BxL)
    if mesh is None:
        return jnp.take(table_NxD, index_BxL, axis=0)
    spec = jax.typeof(index_BxL).sharding.spec
    return table_NxD.at[index_BxL].get(
        out_sharding=jax.sharding.NamedSharding(mesh, P(*spec, None))
    )


def embed(config, params, inputs, positions_BxL):
    """inputs [B, L] tokens or [B, L, C] vectors -> x_BxLxD in config.dtype (+ positions)."""
    if config.head == "tokens":
        x_BxLxD = _rows(params["embed"]["tokens"], inputs)
    else:
        p = params["embed"]
        h = jax.nn.gelu(_layers.dense(inputs, p["w1"], p["b1"], config.dtype))
        x_BxLxD = _layers.dense(h, p["w2"], p["b2"], config.dtype)
    if config.num_positions:
        x_BxLxD = x_BxLxD + _rows(params["positions"], positions_BxL)
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
    """a [B, L, ...] -> [L / chunk, B, chunk, ...], zero-padded at the end of L (the batch
    axis stays whole, so a batch sharded over devices stays sharded)."""
    B, L = a.shape[:2]
    n = -(-L // chunk)
    a = jnp.pad(a, [(0, 0), (0, n * chunk - L)] + [(0, 0)] * (a.ndim - 2))
    return jnp.moveaxis(a.reshape(B, n, chunk, *a.shape[2:]), 1, 0)


def _unchunked(a, L):
    n, B, chunk = a.shape[:3]
    return jnp.moveaxis(a, 0, 1).reshape(B, n * chunk, *a.shape[3:])[:, :L]


def _dot(spec, a, b, **kwargs):
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32, **kwargs)


def _explicit_mesh(x):
    """The mesh of x when x is sharded over explicit mesh axes, else None."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    spec = getattr(sharding, "spec", None)
    return sharding.mesh if spec and any(a is not None for a in spec) else None


def _fused_forward(x_BxLxD, w, targets_BxL, chunk, tied, dtype):
    def body(_, xs):
        x_BxCxD, t_BxC = xs
        logits_BxCxV = _logits(x_BxCxD, w, tied, dtype)
        lse_BxC = jax.nn.logsumexp(logits_BxCxV, axis=-1)
        picked_BxC = jnp.take_along_axis(logits_BxCxV, t_BxC[..., None], axis=-1)[..., 0]
        return None, (picked_BxC - lse_BxC, lse_BxC)

    L = x_BxLxD.shape[1]
    xs = (_chunked(x_BxLxD, chunk), _chunked(targets_BxL, chunk))
    _, (logp, lse) = lax.scan(body, None, xs)
    return _unchunked(logp, L), _unchunked(lse, L)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _fused_logprobs(x_BxLxD, w, targets_BxL, chunk, tied, dtype):
    return _fused_forward(x_BxLxD, w, targets_BxL, chunk, tied, dtype)[0]


def _fused_fwd(x_BxLxD, w, targets_BxL, chunk, tied, dtype):
    logp, lse = _fused_forward(x_BxLxD, w, targets_BxL, chunk, tied, dtype)
    return logp, (x_BxLxD, w, targets_BxL, lse)


def _fused_bwd(chunk, tied, dtype, residuals, g_BxL):
    """d logp / d logits = onehot(target) − softmax: recomputed chunk by chunk from the saved
    log-sum-exp; dW accumulates in the loop carry (float32)."""
    x_BxLxD, w, targets_BxL, lse_BxL = residuals
    L = x_BxLxD.shape[1]
    w_op = w.astype(dtype)
    mesh = _explicit_mesh(x_BxLxD)  # dW sums over a sharded batch: say it is replicated
    dw_kwargs = {} if mesh is None else {"out_sharding": jax.sharding.NamedSharding(mesh, P())}

    def body(dw, xs):
        x_BxCxD, t_BxC, lse_BxC, g_BxC = xs
        logits_BxCxV = _logits(x_BxCxD, w, tied, dtype)
        p_BxCxV = jnp.exp(logits_BxCxV - lse_BxC[..., None])
        hit_BxCxV = jnp.arange(logits_BxCxV.shape[-1])[None, None] == t_BxC[..., None]
        dlogits = (g_BxC[..., None] * (hit_BxCxV.astype(jnp.float32) - p_BxCxV)).astype(dtype)
        x_op = x_BxCxD.astype(dtype)
        if tied:  # w [V, D]
            dx_BxCxD = _dot("bcv,vd->bcd", dlogits, w_op)
            dw_c = _dot("bcv,bcd->vd", dlogits, x_op, **dw_kwargs)
        else:  # w [D, V]
            dx_BxCxD = _dot("bcv,dv->bcd", dlogits, w_op)
            dw_c = _dot("bcd,bcv->dv", x_op, dlogits, **dw_kwargs)
        return dw + dw_c, dx_BxCxD

    xs = tuple(
        _chunked(a, chunk) for a in (x_BxLxD, targets_BxL, lse_BxL, g_BxL.astype(jnp.float32))
    )
    dw, dx = lax.scan(body, jnp.zeros(w.shape, jnp.float32), xs)
    return _unchunked(dx, L).astype(x_BxLxD.dtype), dw.astype(w.dtype), None


_fused_logprobs.defvjp(_fused_fwd, _fused_bwd)


def logit_chunk(vocab_size: int, batch: int, length: int) -> int:
    """Positions per chunk of the fused head: about LOGIT_CHUNK_ELEMENTS logits per chunk
    (batch x chunk x V), at most `length`."""
    return max(1, min(length, LOGIT_CHUNK_ELEMENTS // (vocab_size * batch)))


def token_logprobs(config, params, x_BxLxD, targets_BxL, *, chunk_size=None):
    """log softmax(x @ unembedding)[target] per position, float32 [B, L], without the logits.

    The unembedding and the log-softmax run over chunks of `chunk_size` positions of every
    sequence (default `logit_chunk`) in the forward and, by a `custom_vjp` recomputing each
    chunk's logits from the saved log-sum-exp, in the backward: memory O(B · chunk · V)
    instead of O(B · L · V). When one chunk covers the sequence (small vocabularies, short
    sequences) it is the plain log-softmax of the logits, differentiated as usual.
    """
    if config.head != "tokens":
        raise ValueError(f"token_logprobs needs head='tokens', got head={config.head!r}")
    B, L, _ = x_BxLxD.shape
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
        chunk_size = logit_chunk(config.vocab_size, B, L)
    _layers.check_positive("chunk_size", chunk_size)
    w, tied = _unembedding(config, params)
    targets_BxL = targets_BxL.astype(jnp.int32)
    if chunk_size >= L:  # one chunk holds it all: plain autodiff is the same memory, faster
        logits_BxLxV = _logits(x_BxLxD, w, tied, config.dtype)
        picked_BxL = jnp.take_along_axis(logits_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
        return picked_BxL - jax.nn.logsumexp(logits_BxLxV, axis=-1)
    return _fused_logprobs(x_BxLxD, w, targets_BxL, int(chunk_size), tied, config.dtype)
