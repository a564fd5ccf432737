"""Plain-JAX decode attention over a preallocated KV cache, and the cache append.

The cache is `[B, K, S, E]` (K key/value heads, capacity S) with int32 `lengths_B`: sequence b
owns cache rows `0 .. lengths[b] - 1`; everything beyond may hold garbage (even NaN) and is
never used. Query heads H are a multiple of K (grouped-query attention: query head h reads
KV head h // (H // K)).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

try:  # public in jax 0.10; kept importable across versions
    from jax.core import Tracer
except ImportError:  # pragma: no cover
    from jax._src.core import Tracer

__all__ = ["append_kv", "decode_attention_reference"]


def append_kv(k_cache_BxKxSxE, v_cache_BxKxSxE, k_BxKxE, v_BxKxE, lengths_B):
    """Writes one token's K/V at row `lengths[b]` of each sequence; returns the new caches.

    The caller increments `lengths` afterwards. Donate the caches under `jit`
    (`jax.jit(..., donate_argnums=(0, 1))`) so XLA updates them in place.

    A row outside 0 .. S − 1 (a full cache, or a negative length) is never written: with
    concrete lengths this raises a ValueError; under `jit` (traced lengths) that sequence's
    write is dropped and every other row of every sequence is left as it was (no clamping onto
    the last row, no wrap-around of negative indices).
    """
    B, K, S, E = k_cache_BxKxSxE.shape
    if lengths_B.shape != (B,) or not jnp.issubdtype(lengths_B.dtype, jnp.integer):
        raise ValueError(
            f"lengths_B must be an integer array of shape ({B},), got {lengths_B.dtype} "
            f"{tuple(lengths_B.shape)}"
        )
    for name, a in (("k_BxKxE", k_BxKxE), ("v_BxKxE", v_BxKxE)):
        if tuple(a.shape) != (B, K, E):
            raise ValueError(f"{name} has shape {tuple(a.shape)}; expected [B={B}, K={K}, E={E}]")
    if not isinstance(lengths_B, Tracer):
        lengths = np.asarray(lengths_B)
        bad = np.flatnonzero((lengths < 0) | (lengths >= S))
        if bad.size:
            raise ValueError(
                f"append_kv: sequence {int(bad[0])} has length {int(lengths[bad[0]])}, so its "
                f"next row is outside the cache's {S} rows; size the cache for the longest "
                "sequence (a larger capacity in init_cache)"
            )
    lengths_B = lengths_B.astype(jnp.int32)
    rows_B = jnp.where((lengths_B >= 0) & (lengths_B < S), lengths_B, S)  # S: dropped
    b_B = jnp.arange(B)
    k_cache = k_cache_BxKxSxE.at[b_B, :, rows_B].set(
        k_BxKxE.astype(k_cache_BxKxSxE.dtype), mode="drop"
    )
    v_cache = v_cache_BxKxSxE.at[b_B, :, rows_B].set(
        v_BxKxE.astype(v_cache_BxKxSxE.dtype), mode="drop"
    )
    return k_cache, v_cache


def decode_attention_reference(q_BxHxE, k_cache_BxKxSxE, v_cache_BxKxSxE, lengths_B, *, scale):
    """softmax(q·kᵀ·scale) v over rows < lengths[b], in float32; output in q's dtype.

    Rows beyond the length are masked in both the scores and the values, so NaN there cannot
    leak. A sequence of length 0 gets a zero output.
    """
    B, H, E = q_BxHxE.shape
    K, S = k_cache_BxKxSxE.shape[1:3]
    q_BxKxRxE = q_BxHxE.astype(jnp.float32).reshape(B, K, H // K, E)
    valid_BxS = jnp.arange(S)[None, :] < lengths_B[:, None]
    valid_Bx1x1xS = valid_BxS[:, None, None, :]
    k = jnp.where(valid_BxS[:, None, :, None], k_cache_BxKxSxE.astype(jnp.float32), 0.0)
    v = jnp.where(valid_BxS[:, None, :, None], v_cache_BxKxSxE.astype(jnp.float32), 0.0)
    s_BxKxRxS = jnp.einsum("bkre,bkse->bkrs", q_BxKxRxE, k) * scale
    s_BxKxRxS = jnp.where(valid_Bx1x1xS, s_BxKxRxS, -jnp.inf)
    m_BxKxRx1 = jnp.max(s_BxKxRxS, axis=-1, keepdims=True)
    m_BxKxRx1 = jnp.where(jnp.isfinite(m_BxKxRx1), m_BxKxRx1, 0.0)
    p_BxKxRxS = jnp.exp(s_BxKxRxS - m_BxKxRx1)
    denom_BxKxRx1 = jnp.sum(p_BxKxRxS, axis=-1, keepdims=True)
    o_BxKxRxE = jnp.einsum("bkrs,bkse->bkre", p_BxKxRxS, v)
    o_BxKxRxE = o_BxKxRxE / jnp.where(denom_BxKxRx1 > 0, denom_BxKxRx1, 1.0)
    return o_BxKxRxE.reshape(B, H, E).astype(q_BxHxE.dtype)
